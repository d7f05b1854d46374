//! `runtime: container`: real images in a real registry, pulled by gpufn and run under runc.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::oci::{
    LOGIN, Registry, manifest_of, push_index, push_testapp, push_testapp_with, require,
};
use crate::common::{Server, unsafe_kill};

/// A gpufn for container tests: stopped with SIGTERM on drop, so its containers are removed even
/// when a test fails (a plain SIGKILL would leave them to the next start).
struct ContainerServer(Server);

impl std::ops::Deref for ContainerServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.0
    }
}

impl Drop for ContainerServer {
    fn drop(&mut self) {
        if self.0.child.try_wait().ok().flatten().is_none() {
            self.0.terminate();
        }
    }
}

fn start(data: &Path) -> ContainerServer {
    require("runc");
    ContainerServer(Server::start(
        data,
        &[
            "--simulate-gpus",
            "2xtesla-t4:16",
            "--shutdown-grace-s",
            "5",
        ],
    ))
}

fn spec(name: &str, image: &str, extra: &str) -> String {
    format!(
        "name: {name}\nruntime: container\nimage: {image}\nport: 9000\n\
         gpu: {{memory_gb: 2}}\nhealth_check: {{path: /health, startup_timeout_s: 30}}\n{extra}"
    )
}

fn deploy_cli(server: &Server, dir: &Path, yaml: &str) -> std::process::Output {
    let file = dir.join(format!("spec-{}.yaml", uuid_like()));
    std::fs::write(&file, yaml).expect("spec");
    server.cli(&["deploy", "-f", file.to_str().expect("path")])
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn get(server: &Server, path: &str) -> (u16, String) {
    let resp = server
        .http
        .get(server.url(path))
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Every instance log under the data dir, for failure messages.
fn instance_logs(data: &Path) -> String {
    let mut out = String::new();
    for f in std::fs::read_dir(data.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        for l in std::fs::read_dir(f.path()).into_iter().flatten().flatten() {
            out.push_str(&format!("--- {}\n", l.path().display()));
            out.push_str(&std::fs::read_to_string(l.path()).unwrap_or_default());
        }
    }
    out
}

fn runc_list(data: &Path) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("run/runc"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.canonicalize().expect("canonical").display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_function_is_pre_pulled_pinned_and_served_from_the_cache() {
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "team/app", "1.0", "a").await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());

    // Deploy through the CLI: it pre-pulls (progress), then deploys; the revision is pinned.
    let out = deploy_cli(
        &server,
        dir.path(),
        &spec("app", &image, "env: {GREETING: from-spec}\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy: {stderr}\n{}", server.log());
    assert!(stderr.contains("pulled 127.0.0.1"), "{stderr}");
    let f = server.get_json("/api/v1/functions/app").await;
    let pinned = f["spec"]["image"].as_str().unwrap().to_string();
    assert!(pinned.starts_with(&format!("{image}@sha256:")), "{pinned}");

    // First call: a cold start from the cache (no pull), the app answers from inside.
    let (status, body) = get(&server, "/function/app/whoami").await;
    assert_eq!(
        status,
        200,
        "{body}\n{}\n{}",
        server.log(),
        instance_logs(dir.path())
    );
    let who: Value = serde_json::from_str(&body).unwrap();
    let instances = server.instances("app").await;
    assert_eq!(instances.len(), 1);
    let id = instances[0]["id"].as_str().unwrap();
    assert_eq!(
        who["hostname"], id,
        "the container has its own UTS namespace"
    );
    assert_eq!(who["instance"], id);
    assert_eq!(
        who["greeting"], "from-spec",
        "spec env overrides the image's"
    );
    assert_eq!(who["port"], "9000");
    assert_eq!(
        who["nvidia_visible_devices"],
        instances[0]["gpu"].to_string()
    );
    assert_eq!(who["pid"], 1, "the app is PID 1 of its own PID namespace");
    let phases = &instances[0]["cold_start"];
    assert_eq!(phases["image_pull_ms"], 0.0, "pre-pulled: {phases}");
    assert!(phases["start_ms"].as_f64().unwrap() > 0.0, "{phases}");

    // The container's root is writable, in a layer of its own.
    let (status, body) = get(&server, "/function/app/write?name=one").await;
    assert_eq!((status, body.as_str()), (200, "one"));

    // `gpufn images` lists the cached image.
    let out = server.cli(&["images"]);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(&pinned), "{listing}");

    // A second image sharing the base layer downloads only its own layer.
    let image_b = push_testapp(&registry, "team/app", "2.0", "b").await;
    let resp = server
        .http
        .post(server.url("/api/v1/images/pull"))
        .json(&serde_json::json!({"image": image_b}))
        .send()
        .await
        .unwrap();
    let events: Vec<Value> = resp
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let done: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "layer_done")
        .collect();
    assert_eq!(done.len(), 2, "{events:?}");
    assert_eq!(
        done[0]["cached"], true,
        "the shared base layer is reused: {events:?}"
    );
    assert_eq!(done[1]["cached"], false, "{events:?}");
    assert_eq!(events.last().unwrap()["event"], "done", "{events:?}");

    // Deleting the function stops its container without waiting out the 120 s grace: the app
    // cannot receive SIGTERM as PID 1 without a handler, so gpufn kills it at once.
    let resp = server
        .http
        .delete(server.url("/api/v1/functions/app"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    // `runc delete` comes before the rootfs is unmounted: wait for both.
    server
        .wait_for(
            "the container and its mounts gone",
            Duration::from_secs(30),
            || async { runc_list(dir.path()).is_empty() && mounts_under(dir.path()).is_empty() },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_one_image_listen_on_the_same_port_side_by_side() {
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "side", "1", "s").await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (status, body) = server
        .deploy_yaml(&spec("side", &image, "instance_concurrency: 1\n"))
        .await;
    assert!(status == 201, "{status} {body}");
    // Two requests at once at concurrency 1: two containers, both listening on port 9000 in
    // their own network namespaces.
    let slow = |ms: u64| {
        let http = server.http.clone();
        let url = server.url(&format!("/function/side/work?ms={ms}"));
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let a = slow(3000);
    server
        .wait_for(
            "the first instance busy",
            Duration::from_secs(20),
            || async {
                server
                    .instances("side")
                    .await
                    .iter()
                    .any(|i| i["in_flight"] == 1)
            },
        )
        .await;
    let b = slow(10);
    let (sa, _) = a.await.unwrap();
    let (sb, _) = b.await.unwrap();
    assert_eq!((sa, sb), (200, 200), "{}", instance_logs(dir.path()));
    let instances = server.instances("side").await;
    assert_eq!(instances.len(), 2, "{instances:?}");
    assert_eq!(runc_list(dir.path()).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_over_its_memory_limit_is_killed_and_reported() {
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "hog", "1", "h").await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (status, body) = server
        .deploy_yaml(&spec("hog", &image, "memory_mb: 64\n"))
        .await;
    assert!(status == 201, "{status} {body}");
    // Within the limit: fine.
    let (status, body) = get(&server, "/function/hog/alloc?mb=8").await;
    assert_eq!(status, 200, "{body}\n{}", instance_logs(dir.path()));
    let id = server.instances("hog").await[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Past it: the kernel kills the app; the caller gets 502 and the log says why.
    let (status, _) = get(&server, "/function/hog/alloc?mb=256").await;
    assert_eq!(status, 502);
    server
        .wait_for(
            "the OOM note in the log",
            Duration::from_secs(20),
            || async {
                let out = server.cli(&["logs", "hog", &id]);
                String::from_utf8_lossy(&out.stdout).contains("out of memory")
            },
        )
        .await;
    let out = server.cli(&["logs", "hog", &id]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("memory_mb = 64 MB"), "{log}");
    assert!(log.contains("killed by signal 9"), "{log}");
    // The next request gets a fresh container.
    let (status, _) = get(&server, "/function/hog/alloc?mb=1").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_images_and_unreachable_registries_are_refused_with_the_reason() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    // An image the registry does not have: its own words ("manifest unknown") reach the user.
    let missing = format!("{}/nope:1", registry.host);
    let (status, body) = server.deploy_yaml(&spec("missing", &missing, "")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "image");
    let msg = body["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("manifest unknown"), "{msg}");
    // Through the CLI, the same reason, and a failing exit code.
    let out = deploy_cli(&server, dir.path(), &spec("missing", &missing, ""));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("manifest unknown"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A registry nobody listens on.
    let port = crate::common::free_port();
    let (status, body) = server
        .deploy_yaml(&spec("offline", &format!("127.0.0.1:{port}/x:1"), ""))
        .await;
    assert_eq!(status, 422, "{body}");
    let msg = body["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("connect"), "{msg}");
    // Not a reference at all.
    let (status, body) = server.deploy_yaml(&spec("bad", "UPPER/Case:tag", "")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "image");
    // Nothing was deployed.
    let list = server.get_json("/api/v1/functions").await;
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_kill_9_removes_every_container_mount_and_network() {
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "crash", "1", "c").await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let (status, body) = server.deploy_yaml(&spec("crash", &image, "")).await;
    assert!(status == 201, "{status} {body}");
    let (status, _) = get(&server, "/function/crash/whoami").await;
    assert_eq!(status, 200);
    let containers = runc_list(dir.path());
    assert_eq!(containers.len(), 1);
    let id = &containers[0];
    let slot = std::fs::read_to_string(dir.path().join(format!("run/containers/{id}/net")))
        .unwrap()
        .trim()
        .to_string();
    assert!(netns_exists(&slot));
    assert!(!mounts_under(dir.path()).is_empty());

    unsafe_kill(server.pid(), libc::SIGKILL);
    server.0.child.wait().unwrap();
    // The container outlives a SIGKILLed gpufn (runc's parent is gone, not the container)...
    assert_eq!(runc_list(dir.path()), containers);

    // ...until gpufn starts again on the same data dir.
    let server = start(dir.path());
    assert!(runc_list(dir.path()).is_empty());
    assert!(
        mounts_under(dir.path()).is_empty(),
        "{:?}",
        mounts_under(dir.path())
    );
    assert!(
        !netns_exists(&slot),
        "network namespace gfn{slot} left behind"
    );
    assert!(!dir.path().join(format!("run/containers/{id}")).exists());
    assert!(!cgroup_exists(id), "the container's cgroup was left behind");
    // And the function still works.
    let (status, _) = get(&server, "/function/crash/whoami").await;
    assert_eq!(status, 200);
}

fn netns_exists(slot: &str) -> bool {
    Path::new(&format!("/var/run/netns/gfn{slot}")).exists()
}

fn cgroup_exists(id: &str) -> bool {
    std::fs::read_dir("/sys/fs/cgroup/memory")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("gpufn-") && n.ends_with(id)
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_network_eviction_and_a_pull_at_cold_start_when_the_cache_lost_the_image() {
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "hostnet", "1", "h").await;
    let dir = tempfile::tempdir().unwrap();
    require("runc");
    let server = ContainerServer(Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--shutdown-grace-s",
            "5",
            "--image-cache-max-mb",
            "1",
        ],
    ));
    let (status, body) = server
        .deploy_yaml(&spec(
            "hostnet",
            &image,
            "network: host\nscaling: {idle_timeout_s: 1}\n",
        ))
        .await;
    assert!(status == 201, "{status} {body}");
    // With the host's network the app must listen on $PORT, which gpufn picks.
    let (status, body) = get(&server, "/function/hostnet/whoami").await;
    assert_eq!(status, 200, "{body}\n{}", instance_logs(dir.path()));
    let who: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(who["port"], "9000", "{who}");

    // The cache is over its 1 MB limit: a second image, pinned by nobody, is evicted right after
    // its pull, while the deployed one stays, and so does the layer both share.
    let other = push_testapp(&registry, "other", "1", "o").await;
    let resp = server
        .http
        .post(server.url("/api/v1/images/pull"))
        .json(&serde_json::json!({"image": other}))
        .send()
        .await
        .unwrap();
    assert!(resp.text().await.unwrap().contains("\"event\":\"done\""));
    let blobs = dir.path().join("images/blobs/sha256");
    let count = |d: &Path| std::fs::read_dir(d).unwrap().count();
    server
        .wait_for(
            "the unpinned image and its own layer evicted",
            Duration::from_secs(20),
            || async {
                server
                    .get_json("/api/v1/images")
                    .await
                    .as_array()
                    .unwrap()
                    .len()
                    == 1
                    && count(&blobs) == 2
            },
        )
        .await;
    let images = server.get_json("/api/v1/images").await;
    assert!(
        images[0]["reference"].as_str().unwrap().starts_with(&image),
        "{images}"
    );
    // The two blobs left are the deployed image's own (the base layer is shared with the evicted).
    for layer in images[0]["layers"].as_array().unwrap() {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        assert!(blobs.join(hex).exists());
    }

    // The cache loses the image while the function is at zero: the next cold start pulls it
    // again, and says so in its phases.
    server
        .wait_for("scale to zero", Duration::from_secs(30), || async {
            server.instances("hostnet").await.is_empty()
        })
        .await;
    std::fs::remove_dir_all(dir.path().join("images")).unwrap();
    std::fs::create_dir_all(dir.path().join("images/blobs/sha256")).unwrap();
    std::fs::create_dir_all(dir.path().join("images/rootfs")).unwrap();
    std::fs::create_dir_all(dir.path().join("images/images")).unwrap();
    let (status, body) = get(&server, "/function/hostnet/whoami").await;
    assert_eq!(status, 200, "{body}");
    let cold = server
        .get_json("/api/v1/functions/hostnet/cold-starts?limit=1")
        .await;
    let pull_ms = cold[0]["image_pull_ms"].as_f64().unwrap();
    assert!(pull_ms > 0.0, "{cold}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_platform_index_resolves_to_linux_amd64_and_zstd_layers_run() {
    let registry = Registry::start().await;
    // The amd64 image's app layer is zstd-compressed; the "arm64" entry points elsewhere.
    let amd64 = push_testapp_with(&registry, "multi", "amd64", "amd", true).await;
    let other = push_testapp(&registry, "multi", "other", "arm").await;
    let index = push_index(&registry, "multi", "1", &amd64, &other).await;
    let (amd_digest, _) = manifest_of(&registry, &amd64).await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (status, body) = server.deploy_yaml(&spec("multi", &index, "")).await;
    assert!(status == 201, "{status} {body}");
    assert_eq!(
        body["spec"]["image"],
        format!("{index}@{amd_digest}"),
        "pinned to the linux/amd64 manifest"
    );
    let (status, body) = get(&server, "/function/multi/whoami").await;
    assert_eq!(status, 200, "{body}\n{}", instance_logs(dir.path()));
    // The variant file of the amd64 image is there, unpacked from the zstd layer.
    let images = server.get_json("/api/v1/images").await;
    let digest = images[0]["digest"].as_str().unwrap();
    let rootfs = dir
        .path()
        .join("images/rootfs")
        .join(digest.trim_start_matches("sha256:"));
    assert!(rootfs.join("app/variant-amd").exists());
    assert!(!rootfs.join("app/variant-arm").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_needs_the_login_named_by_registry_auth() {
    let registry = Registry::start_with_login().await;
    let image = push_testapp(&registry, "private/app", "1", "p").await;
    let dir = tempfile::tempdir().unwrap();
    require("runc");
    let server = ContainerServer(Server::start_with_env(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--shutdown-grace-s",
            "5",
            "--registry-env",
            "REG_USER",
            "--registry-env",
            "REG_PASS",
        ],
        &[("REG_USER", LOGIN.0), ("REG_PASS", LOGIN.1)],
    ));
    // Anonymous: the registry's refusal is the reason.
    let (status, body) = server.deploy_yaml(&spec("private", &image, "")).await;
    assert_eq!(status, 422, "{body}");
    let msg = body["error"]["message"].as_str().unwrap().to_lowercase();
    assert!(msg.contains("not authorized"), "{msg}");
    // A variable the server does not have: named, before any network.
    let (status, body) = server
        .deploy_yaml(&spec(
            "private",
            &image,
            "registry_auth: {username_env: REG_USER, password_env: NO_SUCH_VAR}\n",
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "registry_auth.password_env");
    // A variable the server has but the admin did not list with --registry-env: refused, so a
    // caller cannot have gpufn send it to a registry of their choosing.
    let (status, body) = server
        .deploy_yaml(&spec(
            "private",
            &image,
            "registry_auth: {username_env: REG_USER, password_env: SECRET_OF_SERVER}\n",
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "registry_auth.password_env");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--registry-env"),
        "{body}"
    );
    assert!(!body.to_string().contains("must-not-leak"), "{body}");
    // The same through the pull API.
    let resp = server
        .http
        .post(server.url("/api/v1/images/pull"))
        .json(&serde_json::json!({"image": image, "registry_auth": {"username_env": "REG_USER", "password_env": "SECRET_OF_SERVER"}}))
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("registry_auth.password_env") && !text.contains("must-not-leak"),
        "{text}"
    );
    // A login kept as a secret (user:password) works without any variable.
    let resp = server
        .http
        .put(server.url("/api/v1/secrets/reg-login"))
        .json(&serde_json::json!({"value": format!("{}:{}", LOGIN.0, LOGIN.1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // (another image, not in the cache yet: the pull must log in with the secret)
    let other = push_testapp(&registry, "private/other", "1", "s").await;
    let (status, body) = server
        .deploy_yaml(&spec(
            "private-s",
            &other,
            "registry_auth: {secret: reg-login}\n",
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["spec"]["registry_auth"]["secret"], "reg-login");
    assert!(!body.to_string().contains(LOGIN.1), "{body}");
    // With the login from the server's environment: pulled, deployed, served.
    let (status, body) = server
        .deploy_yaml(&spec(
            "private",
            &image,
            "registry_auth: {username_env: REG_USER, password_env: REG_PASS}\n",
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = get(&server, "/function/private/whoami").await;
    assert_eq!(status, 200, "{body}\n{}", instance_logs(dir.path()));
    // The password never shows in the stored spec.
    let f = server.get_json("/api/v1/functions/private").await;
    assert!(!f.to_string().contains(LOGIN.1), "{f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_oci_runtime_is_refused_at_deploy_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--oci-runtime",
            "/nonexistent/runc",
        ],
    );
    let (status, body) = server.deploy_yaml(&spec("x", "127.0.0.1:1/x:1", "")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "runtime");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/runc"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_initializer_runs_inside_the_container_before_its_first_request() {
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "hooked", "1", "k").await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (status, body) = server
        .deploy_yaml(&spec(
            "hooked",
            &image,
            "lifecycle: {initializer: {command: [/app/gpufn-testapp, mark, initialized], timeout_s: 20}}\n",
        ))
        .await;
    assert!(status == 201, "{status} {body}");
    // The file the hook wrote is in the container's own writable layer, before any request.
    let (status, listing) = get(&server, "/function/hooked/write?name=probe").await;
    assert_eq!(status, 200, "{listing}\n{}", instance_logs(dir.path()));
    assert!(listing.contains("initialized"), "{listing}");
    let starts = server
        .get_json("/api/v1/functions/hooked/cold-starts")
        .await;
    assert!(
        starts[0]["initialize_ms"].as_f64().unwrap() > 0.0,
        "{starts}"
    );
}

/// The container's status as runc reports it (`running`, `paused`, ...).
fn runc_status(data: &Path, id: &str) -> String {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("run/runc"))
        .args(["state", id])
        .output()
        .expect("runc state");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v["status"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_provisioned_container_is_paused_and_resumed_for_a_request() {
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "idle", "1", "i").await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (status, body) = server
        .deploy_yaml(&spec(
            "idle",
            &image,
            "scaling: {min_instances: 1, idle_mode: freeze}\n",
        ))
        .await;
    assert!(status == 201, "{status} {body}");
    let frozen = || async {
        let list = server.instances("idle").await;
        list.len() == 1 && list[0]["frozen"] == true
    };
    server
        .wait_for("the container frozen", Duration::from_secs(30), frozen)
        .await;
    let id = runc_list(dir.path()).pop().expect("one container");
    assert_eq!(runc_status(dir.path(), &id), "paused");
    // A request resumes it: warm, answered.
    let resp = server
        .http
        .get(server.url("/function/idle/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "false");
    server
        .wait_for("paused again", Duration::from_secs(30), frozen)
        .await;
    assert_eq!(runc_status(dir.path(), &id), "paused");
}
