//! A real registry (Debian's `docker-registry`) on loopback, and OCI images built in the test from
//! files on this machine: the `gpufn-testapp` binary plus the shared libraries `ldd` says it needs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpufn_oci::oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use gpufn_oci::oci_client::secrets::RegistryAuth;
use gpufn_oci::oci_client::{Client, Reference};

pub const TESTAPP: &str = env!("CARGO_BIN_EXE_gpufn-testapp");

/// Fails the test with a clear message when a tool the container tests need is missing (CI
/// installs them; see .ci/run).
pub fn require(tool: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} is not installed; the container tests need it (apt-get install {tool})");
}

/// A `docker-registry serve` on 127.0.0.1, storage in a temp dir; killed on drop.
pub struct Registry {
    child: Child,
    pub host: String,
    /// Basic-auth login the registry demands, if any.
    pub login: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

/// The login of [`Registry::start_with_login`]; the hash is bcrypt of the password (htpasswd).
pub const LOGIN: (&str, &str) = ("gpufn", "gpufn-secret");
const HTPASSWD: &str = "gpufn:$2b$04$OMyUsYSU8YBZD4wCgGgVfuoK.9dvG6WChZ0kt2LhBeJBRl4DOr/DS\n";

impl Registry {
    pub async fn start() -> Registry {
        Self::start_inner(false).await
    }

    /// A registry that refuses anonymous access (htpasswd basic auth).
    pub async fn start_with_login() -> Registry {
        Self::start_inner(true).await
    }

    async fn start_inner(login: bool) -> Registry {
        let bin = require("docker-registry");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let config = dir.path().join("config.yml");
        let mut text = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if login {
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, HTPASSWD).expect("htpasswd");
            text.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: gpufn-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, text).expect("registry config");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let host = format!("127.0.0.1:{port}");
        let http = super::http_client();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("http://{host}/v2/")).send().await {
                // 401 is a registry that is up and wants a login.
                if r.status().is_success() || r.status().as_u16() == 401 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Registry {
            child,
            host,
            login: login.then(|| (LOGIN.0.to_string(), LOGIN.1.to_string())),
            _dir: dir,
        }
    }

    fn auth(&self) -> RegistryAuth {
        match &self.login {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    fn client(&self) -> Client {
        gpufn_oci::ensure_crypto_provider();
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..ClientConfig::default()
        })
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file to put in an image: its bytes, mode, and path inside the image.
struct Entry {
    path: String,
    data: Vec<u8>,
    mode: u32,
}

fn tar_gz(entries: &[Entry]) -> Vec<u8> {
    let tar = tar_of(entries);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for e in entries {
        // Parent directories first, so the layer is complete on its own.
        let mut acc = String::new();
        let parents: Vec<&str> = e.path.split('/').collect();
        for part in &parents[..parents.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !dirs.contains(&acc) {
                dirs.push(acc.clone());
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_size(0);
                builder
                    .append_data(&mut h, format!("{acc}/"), std::io::empty())
                    .expect("dir");
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(e.data.len() as u64);
        builder
            .append_data(&mut h, &e.path, e.data.as_slice())
            .expect("file");
    }
    builder.into_inner().expect("tar")
}

/// The shared libraries `ldd` lists for `bin`, as (path as the loader asks for it, real file).
fn shared_libraries(bin: &str) -> Vec<(String, PathBuf)> {
    let out = Command::new("ldd").arg(bin).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap_or(""),
            None => line.split_whitespace().next().unwrap_or(""),
        };
        if path.starts_with('/') {
            let real = std::fs::canonicalize(path).expect("library");
            libs.push((path.trim_start_matches('/').to_string(), real));
        }
    }
    libs
}

/// Pushes an image running `gpufn-testapp`: layer 1 holds the shared libraries and /etc files
/// (identical in every image built here, so images share it), layer 2 the app and a file named
/// after `variant` (so two variants are two images).
pub async fn push_testapp(registry: &Registry, repo: &str, tag: &str, variant: &str) -> String {
    push_testapp_with(registry, repo, tag, variant, false).await
}

/// [`push_testapp`], with the app layer compressed with zstd when `zstd` is set.
pub async fn push_testapp_with(
    registry: &Registry,
    repo: &str,
    tag: &str,
    variant: &str,
    zstd: bool,
) -> String {
    let mut base: Vec<Entry> = shared_libraries(TESTAPP)
        .into_iter()
        .map(|(path, real)| Entry {
            path,
            data: std::fs::read(real).expect("read library"),
            mode: 0o755,
        })
        .collect();
    base.push(Entry {
        path: "etc/passwd".into(),
        data: b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".to_vec(),
        mode: 0o644,
    });
    base.push(Entry {
        path: "etc/group".into(),
        data: b"root:x:0:\napp:x:1000:\n".to_vec(),
        mode: 0o644,
    });
    let app = vec![
        Entry {
            path: "app/gpufn-testapp".into(),
            data: std::fs::read(TESTAPP).expect("read testapp"),
            mode: 0o755,
        },
        Entry {
            path: format!("app/variant-{variant}"),
            data: variant.as_bytes().to_vec(),
            mode: 0o644,
        },
    ];
    let media = "application/vnd.oci.image.layer.v1.tar+gzip";
    let app_layer = if zstd {
        ImageLayer::new(
            zstd::encode_all(tar_of(&app).as_slice(), 3).expect("zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd".to_string(),
            None,
        )
    } else {
        ImageLayer::new(tar_gz(&app), media.to_string(), None)
    };
    let layers = vec![
        ImageLayer::new(tar_gz(&base), media.to_string(), None),
        app_layer,
    ];
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/app/gpufn-testapp"],
            "Env": ["PATH=/app:/bin", "GREETING=from-image"],
            "WorkingDir": "/app",
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    let config = Config::new(
        serde_json::to_vec(&config).expect("config"),
        "application/vnd.oci.image.config.v1+json".to_string(),
        None,
    );
    let client = registry.client();
    let reference: Reference = format!("{}/{repo}:{tag}", registry.host)
        .parse()
        .expect("reference");
    client
        .push(&reference, &layers, config, &registry.auth(), None)
        .await
        .expect("push image");
    format!("{}/{repo}:{tag}", registry.host)
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The manifest digest and size of a pushed image.
pub async fn manifest_of(registry: &Registry, image: &str) -> (String, usize) {
    let reference: Reference = image.parse().expect("reference");
    let (bytes, digest) = registry
        .client()
        .pull_manifest_raw(&reference, &registry.auth(), &[OCI_MANIFEST])
        .await
        .expect("manifest");
    (digest, bytes.len())
}

/// Pushes an image index (multi-platform image) at `repo:tag` whose first entry is `arm64`
/// (pointing at `other`) and second `amd64` (pointing at `amd64`); returns the reference.
pub async fn push_index(
    registry: &Registry,
    repo: &str,
    tag: &str,
    amd64: &str,
    other: &str,
) -> String {
    let (amd_digest, amd_size) = manifest_of(registry, amd64).await;
    let (arm_digest, arm_size) = manifest_of(registry, other).await;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": arm_digest, "size": arm_size,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": OCI_MANIFEST, "digest": amd_digest, "size": amd_size,
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    });
    let reference: Reference = format!("{}/{repo}:{tag}", registry.host)
        .parse()
        .expect("reference");
    let client = registry.client();
    // A push needs a token/session first; pulling the manifest set it up for this client.
    client
        .store_auth_if_needed(reference.resolve_registry(), &registry.auth())
        .await;
    client
        .push_manifest_raw(
            &reference,
            serde_json::to_vec(&index).expect("index"),
            reqwest::header::HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
        )
        .await
        .expect("push index");
    format!("{}/{repo}:{tag}", registry.host)
}
