//! Harness for end-to-end tests: a real `gpufn serve` process on a loopback port, real function
//! processes (tests/fixtures/testfn.py), real HTTP.
#![allow(dead_code)]

pub mod oci;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_gpufn");

/// A reqwest client (after installing the TLS crypto provider reqwest is built to expect).
pub fn http_client() -> reqwest::Client {
    gpufn_oci::ensure_crypto_provider();
    reqwest::Client::new()
}

/// A reqwest client that sends `token` on every request.
pub fn client_with_token(token: &str) -> reqwest::Client {
    gpufn_oci::ensure_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

/// The first admin token a server wrote to its data dir.
pub fn admin_token(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.token"))
        .expect("admin.token")
        .trim()
        .to_string()
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A running `gpufn serve`. Killed (SIGKILL) on drop if the test did not stop it.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub log: Arc<Mutex<String>>,
    /// Sends the admin token (every test acts as the owner unless it says otherwise).
    pub http: reqwest::Client,
    /// The first admin token (`<data-dir>/admin.token`).
    pub token: String,
}

impl Server {
    /// Starts gpufn on a free port with `extra` flags; waits until it listens.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_with_env(data_dir, extra, &[])
    }

    /// [`Server::start`] with extra environment variables for the server.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info,gpufn_server=debug")
            .env("SECRET_OF_SERVER", "must-not-leak")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gpufn");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("gpufn listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("gpufn did not start:\n{}", log.lock().unwrap());
            }
        };
        let token = admin_token(data_dir);
        Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            log,
            http: client_with_token(&token),
            token,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// `host:port` it listens on, for raw sockets.
    pub fn addr(&self) -> String {
        self.url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Runs the gpufn CLI against this server (it finds the admin token in the data dir, as on
    /// the server's own machine).
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(args)
            .env("GPUFN_SERVER", &self.url)
            .env("GPUFN_DATA_DIR", &self.data_dir)
            .env_remove("GPUFN_TOKEN")
            .output()
            .expect("run gpufn cli")
    }

    pub async fn deploy_yaml(&self, yaml: &str) -> (u16, Value) {
        let resp = self
            .http
            .post(self.url("/api/v1/functions"))
            .header("content-type", "application/yaml")
            .body(yaml.to_string())
            .send()
            .await
            .expect("deploy");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("json"))
    }

    /// Deploys a test function; panics unless the server accepts it.
    pub async fn deploy_testfn(&self, name: &str, extra_yaml: &str) {
        let yaml = testfn_spec(name, extra_yaml);
        let (status, body) = self.deploy_yaml(&yaml).await;
        assert!(
            status == 200 || status == 201,
            "deploy {name}: {status} {body}\n{}",
            self.log()
        );
    }

    /// GET `path` as the admin; the body as text, whatever the status.
    pub async fn get_text(&self, path: &str) -> String {
        let resp = self.http.get(self.url(path)).send().await.expect("get");
        resp.text().await.expect("text")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.http.get(self.url(path)).send().await.expect("get");
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("json")
    }

    pub async fn instances(&self, name: &str) -> Vec<Value> {
        self.get_json(&format!("/api/v1/functions/{name}/instances"))
            .await
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `cond` until it holds or `within` passes (then panics with `what` and the log).
    /// Waiting for a state, not sleeping for a time: the poll interval only bounds how late we see it.
    pub async fn wait_for<F, Fut>(&self, what: &str, within: Duration, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + within;
        while !cond().await {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n--- gpufn log ---\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `/work` held by `latch` to `function` and waits until its (only) instance is busy with
    /// it; resolves to the status once the latch is released.
    pub async fn hold(&self, function: &str, latch: &Latch) -> tokio::task::JoinHandle<u16> {
        let url = self.url(&format!("/function/{function}/work?{}", latch.query()));
        let http = self.http.clone();
        let held =
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() });
        self.wait_for(
            &format!("{function} busy"),
            Duration::from_secs(15),
            || async {
                self.instances(function)
                    .await
                    .first()
                    .is_some_and(|i| i["in_flight"] == 1)
            },
        )
        .await;
        held
    }

    /// Sends SIGTERM and waits for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        unsafe_kill(self.pid(), libc::SIGTERM);
        self.child.wait().expect("wait").code()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failed test stops gpufn as a user would, so its containers and processes go with it
        // (a SIGKILL leaves them to the next start of gpufn on the same data dir, which a test's
        // temporary dir never has); a passing test has already checked what it needed.
        if std::thread::panicking() {
            unsafe_kill(self.pid(), libc::SIGTERM);
            let until = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < until {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
pub fn unsafe_kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// True while a process exists and is not a zombie.
pub fn process_alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// A spec for tests/fixtures/testfn.py with extra YAML lines appended.
pub fn testfn_spec(name: &str, extra_yaml: &str) -> String {
    format!(
        "name: {name}\ncommand: [python3, testfn.py]\nworkdir: {}\ngpu: {{type: tesla-t4, memory_gb: 4}}\n{extra_yaml}\n",
        fixture_dir().display()
    )
}

/// A file-based latch: `/work?until_file=PATH` holds a request until `release()` creates the file.
pub struct Latch {
    pub path: PathBuf,
}

impl Latch {
    pub fn new(dir: &Path, name: &str) -> Latch {
        Latch {
            path: dir.join(format!("latch-{name}")),
        }
    }

    pub fn query(&self) -> String {
        format!("until_file={}", self.path.display())
    }

    pub fn release(&self) {
        std::fs::write(&self.path, b"go").expect("write latch");
    }
}

/// tests/fixtures/testfn.py run by hand on `port` (a webhook receiver: POST /record, GET /records).
pub struct Receiver {
    pub child: Child,
    pub port: u16,
}

impl Receiver {
    pub fn start(port: u16) -> Receiver {
        let child = Command::new("python3")
            .arg(fixture_dir().join("testfn.py"))
            .env("PORT", port.to_string())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn receiver");
        Receiver { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/record", self.port)
    }

    pub async fn records(&self) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/records", self.port);
        match reqwest::get(url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
/// The value of one series (`name{labels}`) in a Prometheus text exposition.
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
