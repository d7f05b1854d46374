//! A tiny HTTP app, std only, that the container tests put in an OCI image (with the shared
//! libraries it needs) to run under runc. It listens on `0.0.0.0:$PORT` (default 9000).
//!
//! Routes: `GET /health` (503 until `READY_DELAY_MS` has passed), `GET /whoami` (host name, pid,
//! uid, instance id, GPU variables, as JSON), `GET /work?ms=N` (answers after N ms),
//! `GET /alloc?mb=N` (allocates and touches N MB, to cross a memory limit), `GET /write?name=X`
//! (writes /scratch/X into the container's writable layer and lists /scratch), `POST /echo`.
//! `POST /initialize` counts lifecycle initializer calls (`initialized` in `/whoami`).
//! `gpufn-testapp mark NAME` (a lifecycle hook command) writes `$GPUFN_INSTANCE_ID` to
//! /scratch/NAME and exits.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Calls of the lifecycle initializer (`POST /initialize`) this process has had.
static INITIALIZED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, mark, name] = args.as_slice() {
        if mark == "mark" {
            let _ = std::fs::create_dir_all("/scratch");
            let id = std::env::var("GPUFN_INSTANCE_ID").unwrap_or_default();
            let ok = std::fs::write(format!("/scratch/{name}"), id).is_ok();
            std::process::exit(if ok { 0 } else { 1 });
        }
    }
    let port = std::env::var("PORT").unwrap_or_else(|_| "9000".into());
    let delay = std::env::var("READY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    let listener = match TcpListener::bind(format!("0.0.0.0:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("testapp: cannot listen on {port}: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("testapp: listening on {port}");
    let started = Instant::now();
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream, started, delay));
    }
}

fn serve(stream: TcpStream, started: Instant, delay_ms: u64) {
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut out = write_half;
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    content_length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (status, reply) = route(&method, &target, body, started, delay_ms);
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
            reply.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(&reply).is_err() {
            return;
        }
    }
}

fn query(target: &str, key: &str) -> Option<String> {
    let (_, q) = target.split_once('?')?;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_string())
}

fn route(
    method: &str,
    target: &str,
    body: Vec<u8>,
    started: Instant,
    delay_ms: u64,
) -> (&'static str, Vec<u8>) {
    let path = target.split('?').next().unwrap_or("/");
    match (method, path) {
        ("GET", "/health") => {
            if started.elapsed() >= Duration::from_millis(delay_ms) {
                ("200 OK", b"ok".to_vec())
            } else {
                ("503 Service Unavailable", b"loading".to_vec())
            }
        }
        ("POST", "/initialize") => {
            INITIALIZED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            ("200 OK", b"initialized".to_vec())
        }
        ("GET", "/whoami") => {
            let host = std::fs::read_to_string("/etc/hostname")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .unwrap_or_default();
            let env = |k: &str| std::env::var(k).unwrap_or_default();
            let uid = std::fs::read_to_string("/proc/self/status")
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Uid:")
                        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                })
                .unwrap_or_default();
            let text = format!(
                "{{\"hostname\":\"{}\",\"pid\":{},\"uid\":\"{}\",\"instance\":\"{}\",\"port\":\"{}\",\"nvidia_visible_devices\":\"{}\",\"greeting\":\"{}\",\"initialized\":{}}}",
                host.trim(),
                std::process::id(),
                uid,
                env("GPUFN_INSTANCE_ID"),
                env("PORT"),
                env("NVIDIA_VISIBLE_DEVICES"),
                env("GREETING"),
                INITIALIZED.load(std::sync::atomic::Ordering::SeqCst),
            );
            ("200 OK", text.into_bytes())
        }
        ("GET", "/work") => {
            let ms = query(target, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            std::thread::sleep(Duration::from_millis(ms));
            ("200 OK", format!("worked {ms} ms").into_bytes())
        }
        ("GET", "/alloc") => {
            let mb: usize = query(target, "mb")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut blocks: Vec<Vec<u8>> = Vec::new();
            for _ in 0..mb {
                // Touch every page so the memory is really charged to the cgroup.
                blocks.push(vec![1u8; 1024 * 1024]);
            }
            let total: usize = blocks.iter().map(Vec::len).sum();
            ("200 OK", format!("allocated {total} bytes").into_bytes())
        }
        ("GET", "/write") => {
            let name = query(target, "name").unwrap_or_else(|| "file".into());
            let _ = std::fs::create_dir_all("/scratch");
            let written = std::fs::write(format!("/scratch/{name}"), b"x");
            let mut names: Vec<String> = std::fs::read_dir("/scratch")
                .map(|d| {
                    d.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            match written {
                Ok(()) => ("200 OK", names.join(",").into_bytes()),
                Err(e) => ("500 Internal Server Error", e.to_string().into_bytes()),
            }
        }
        ("POST", "/echo") => ("200 OK", body),
        // Function Compute's event-function convention: the invocation payload is POSTed here.
        ("POST", "/invoke") => {
            let mut out = b"testapp-invoke:".to_vec();
            out.extend_from_slice(&body);
            ("200 OK", out)
        }
        _ => ("404 Not Found", b"no such route".to_vec()),
    }
}
