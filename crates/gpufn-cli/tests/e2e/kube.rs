//! `--backend kubernetes` on the testbed (`scripts/kube-testbed.sh`): a real API server, scheduler
//! and controller manager on loopback, and gpufn's test node agent, whose Pods really run under
//! runc. Each test has a namespace and nodes of its own (its own GPU type, so only its Pods land
//! there), and may run beside the others.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::common::Server;
use crate::common::oci::{Registry, push_testapp, require};

/// The testbed's kubeconfig: `GPUFN_KUBE_TESTBED` (scripts/test.sh brings the testbed up).
fn kubeconfig() -> PathBuf {
    let path = std::env::var_os("GPUFN_KUBE_TESTBED").map(PathBuf::from);
    match path {
        Some(p) if p.exists() => p,
        _ => panic!(
            "the Kubernetes tests need the testbed: scripts/kube-testbed.sh up --nodes 0, then \
             export GPUFN_KUBE_TESTBED=$KUBECONFIG (scripts/test.sh does both)"
        ),
    }
}

fn kubectl(args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(args)
        .output()
        .expect("kubectl");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn kubectl_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let (ok, text) = kubectl(&all);
    assert!(ok, "kubectl {args:?}: {text}");
    serde_json::from_str(&text).expect("json")
}

/// A namespace, nodes and a node agent of one test; all removed on drop.
struct Cluster {
    ns: String,
    gpu_type: String,
    agent: Child,
    _state: tempfile::TempDir,
}

impl Cluster {
    /// `gpu_nodes` nodes with `gpus` cards each, of a type only this test uses, and `cpu_nodes`
    /// without GPUs.
    async fn start(test: &str, gpu_nodes: u32, gpus: impl ToString, cpu_nodes: u32) -> Cluster {
        require("runc");
        let tag = format!("{test}-{:04x}", rand_u16());
        let ns = format!("t-{tag}");
        let (ok, text) = kubectl(&["create", "namespace", &ns]);
        assert!(ok, "{text}");
        let state = tempfile::tempdir().expect("tempdir");
        let agent = Command::new(node_agent())
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(["--nodes", &gpu_nodes.to_string()])
            .args(["--gpus-per-node", &gpus.to_string()])
            .args(["--cpu-nodes", &cpu_nodes.to_string()])
            .args(["--gpu-types", &format!("gpu-{tag}")])
            .args(["--node-prefix", &tag])
            .arg("--state-dir")
            .arg(state.path())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(state.path().join("agent.log")).expect("log"),
            ))
            .spawn()
            .expect("node agent");
        let cluster = Cluster {
            ns,
            gpu_type: format!("gpu-{tag}"),
            agent,
            _state: state,
        };
        // Pods are admitted once the namespace has its default service account, and placed
        // once the nodes are Ready.
        let want = gpu_nodes + cpu_nodes;
        wait_until("the namespace's service account and the nodes", 60, || {
            let (sa, _) = kubectl(&["get", "serviceaccount", "default", "-n", &cluster.ns]);
            let (_, nodes) = kubectl(&["get", "nodes", "--no-headers"]);
            let ready = nodes
                .lines()
                .filter(|l| l.starts_with(&tag) && l.contains(" Ready"))
                .count();
            sa && ready == want as usize
        })
        .await;
        cluster
    }

    /// gpufn's Pods in the namespace.
    fn pods(&self) -> Vec<Value> {
        kubectl_json(&[
            "get",
            "pods",
            "-n",
            &self.ns,
            "-l",
            "app.kubernetes.io/managed-by=gpufn",
        ])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// gpufn on this cluster.
    fn gpufn(&self, data: &Path, extra: &[&str]) -> Server {
        let config = kubeconfig();
        let mut args = vec![
            "--backend",
            "kubernetes",
            "--kubeconfig",
            config.to_str().expect("path"),
            "--kube-namespace",
            &self.ns,
            "--shutdown-grace-s",
            "5",
            "--instance-stop-grace-s",
            "2",
        ];
        args.extend_from_slice(extra);
        Server::start(data, &args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        crate::common::unsafe_kill(self.agent.id() as i32, libc::SIGTERM);
        let _ = self.agent.wait();
        let _ = kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
        let tag = self.ns.trim_start_matches("t-").to_string();
        let (_, nodes) = kubectl(&["get", "nodes", "--no-headers", "-o", "name"]);
        for n in nodes.lines().filter(|n| n.contains(&tag)) {
            let _ = kubectl(&["delete", n, "--wait=false"]);
        }
    }
}

fn node_agent() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/gpufn-node-agent");
    assert!(
        p.exists(),
        "{} missing: cargo build -p gpufn-node-agent (scripts/test.sh does)",
        p.display()
    );
    p
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .expect("urandom");
    u16::from_le_bytes(b)
}

async fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A test's cluster, a registry holding the test app's image, and a data dir for gpufn.
struct Bed {
    cluster: Cluster,
    _registry: Registry,
    image: String,
    dir: tempfile::TempDir,
}

impl Bed {
    async fn start(test: &str, gpu_nodes: u32, gpus: impl ToString, cpu_nodes: u32) -> Bed {
        let cluster = Cluster::start(test, gpu_nodes, gpus, cpu_nodes).await;
        let registry = Registry::start().await;
        let image = push_testapp(&registry, "kube/app", "1", "k").await;
        Bed {
            cluster,
            _registry: registry,
            image,
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

/// GET `path` on `server`, as its admin.
async fn call(server: &Server, path: &str) -> reqwest::Response {
    server.http.get(server.url(path)).send().await.unwrap()
}

fn spec(name: &str, image: &str, gpu_type: &str, extra: &str) -> String {
    format!(
        "name: {name}\nruntime: container\nimage: {image}\nport: 9000\n\
         gpu: {{type: {gpu_type}, memory_gb: 2}}\n\
         health_check: {{path: /health, startup_timeout_s: 60}}\n{extra}"
    )
}

/// Deploy → one Pod asking for one whole card, bound by the real scheduler to a GPU node (never
/// the GPU-less one) → cold call, then a warm call on the same instance → idle → Pod deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_runs_as_a_pod_on_a_gpu_node_and_scales_to_zero() {
    let bed = Bed::start("basic", 1, 1, 1).await;
    let (cluster, image, dir) = (&bed.cluster, &bed.image, &bed.dir);
    let server = cluster.gpufn(dir.path(), &[]);
    let (status, body) = server
        .deploy_yaml(&spec(
            "kf",
            image,
            &cluster.gpu_type,
            "scaling: {idle_timeout_s: 2}\n",
        ))
        .await;
    assert_eq!(status, 201, "{body}\n{}", server.log());
    // Pinned to its digest, pulled by the node, not by gpufn.
    assert!(
        body["spec"]["image"].as_str().unwrap().contains("@sha256:"),
        "{body}"
    );
    let blobs = std::fs::read_dir(dir.path().join("images/blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(blobs, 0, "gpufn pulled the image itself");
    let cold = call(&server, "/function/kf/whoami").await;
    let headers = cold.headers().clone();
    let status = cold.status();
    let text = cold.text().await.unwrap_or_default();
    assert_eq!(status, 200, "{text}\n{}", server.log());
    let instance = headers["x-gpufn-instance-id"].to_str().unwrap().to_string();
    assert_eq!(headers["x-gpufn-cold-start"], "true");
    let pods = cluster.pods();
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    assert_eq!(pod["metadata"]["name"], instance.as_str());
    assert_eq!(pod["metadata"]["labels"]["gpufn.dev/function"], "kf");
    let node = pod["spec"]["nodeName"].as_str().unwrap();
    assert!(
        !node.contains("-cpu-"),
        "a GPU Pod landed on the GPU-less node {node}"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"],
        "1"
    );
    let warm = call(&server, "/function/kf/whoami").await;
    assert_eq!(warm.status(), 200);
    assert_eq!(warm.headers()["x-gpufn-cold-start"], "false");
    assert_eq!(warm.headers()["x-gpufn-instance-id"], instance.as_str());
    // The cold start's phases came from the Pod.
    let starts = server.get_json("/api/v1/functions/kf/cold-starts").await;
    let phases = &starts[0];
    assert!(
        phases["gpu_allocate_ms"].as_f64().unwrap() > 0.0,
        "{starts}"
    );
    // The node's pull, from its event (this node had never pulled the image).
    assert!(phases["image_pull_ms"].as_f64().unwrap() > 0.0, "{starts}");
    // Idle past its timeout: released, and its Pod deleted.
    wait_until("the idle Pod to be deleted", 60, || {
        cluster.pods().is_empty()
    })
    .await;
    let mut server = server;
    server.terminate();
}

/// A card held by a Pod that is not gpufn's: gpufn's Pod cannot be placed, the request waits its
/// queue timeout and gets 429 `no_capacity` with the cluster scheduler's reason, and the Pod is
/// deleted once nobody waits for it. With the card free again, the next call is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplaceable_pod_answers_429_with_the_schedulers_reason_and_is_deleted() {
    let bed = Bed::start("full", 1, 1, 0).await;
    let (cluster, image) = (&bed.cluster, &bed.image);
    // Someone else's Pod takes the node's only card.
    let other = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "not-gpufn", "namespace": cluster.ns},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "nodeSelector": {"nvidia.com/gpu.product": cluster.gpu_type},
            "containers": [{"name": "app", "image": image,
                "env": [{"name": "PORT", "value": "9000"}],
                "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
        },
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), other.to_string()).unwrap();
    let (ok, text) = kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    wait_until("the other Pod to run", 60, || {
        let (_, phase) = kubectl(&[
            "get",
            "pod",
            "not-gpufn",
            "-n",
            &cluster.ns,
            "-o",
            "jsonpath={.status.phase}",
        ]);
        phase == "Running"
    })
    .await;
    let dir = &bed.dir;
    let server = cluster.gpufn(dir.path(), &[]);
    let (status, body) = server
        .deploy_yaml(&spec(
            "kq",
            image,
            &cluster.gpu_type,
            "scaling: {queue_timeout_s: 3}\n",
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    let resp = call(&server, "/function/kq/whoami").await;
    let status = resp.status();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "no_capacity", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "the scheduler's reason: {message}"
    );
    // Nobody waits for it any more: its Pod goes.
    wait_until("gpufn's unplaced Pod to be deleted", 30, || {
        cluster.pods().is_empty()
    })
    .await;
    // The card frees: the next call gets it.
    let (ok, text) = kubectl(&["delete", "pod", "not-gpufn", "-n", &cluster.ns]);
    assert!(ok, "{text}");
    let resp = call(&server, "/function/kq/whoami").await;
    assert_eq!(resp.status(), 200, "{}", server.log());
    let mut server = server;
    server.terminate();
}

/// gpufn killed with SIGKILL and started again on the same store takes its ready Pod back: the
/// next call is warm, on the same instance. A gpufn Pod of a function that no longer exists is
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_adopts_ready_pods_and_deletes_stray_ones() {
    let bed = Bed::start("adopt", 1, 2, 0).await;
    let (cluster, image, dir) = (&bed.cluster, &bed.image, &bed.dir);
    let server = cluster.gpufn(dir.path(), &[]);
    // With an initializer: the Pod's first gpufn runs it; the one that adopts the Pod does not.
    let (status, body) = server
        .deploy_yaml(&spec(
            "ka",
            image,
            &cluster.gpu_type,
            "lifecycle: {initializer: {path: /initialize}}\n",
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    let first = call(&server, "/function/ka/whoami").await;
    assert_eq!(first.status(), 200, "{}", server.log());
    let instance = first.headers()["x-gpufn-instance-id"]
        .to_str()
        .unwrap()
        .to_string();
    let who: serde_json::Value = first.json().await.unwrap();
    assert_eq!(who["initialized"], 1, "{who}");
    // A Pod of gpufn's for a function this gpufn does not have.
    let stray = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gone-00000001", "namespace": cluster.ns, "labels": {
            "app.kubernetes.io/managed-by": "gpufn", "gpufn.dev/function": "gone",
            "gpufn.dev/revision": "1", "gpufn.dev/instance": "gone-00000001"}},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": false,
            "nodeSelector": {"nvidia.com/gpu.product": cluster.gpu_type},
            "containers": [{"name": "app", "image": image,
                "env": [{"name": "PORT", "value": "9000"}]}]},
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), stray.to_string()).unwrap();
    let (ok, text) = kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    assert!(ok, "{text}");
    let mut server = server;
    crate::common::unsafe_kill(server.pid(), libc::SIGKILL);
    let _ = server.child.wait();
    drop(server);
    let server = cluster.gpufn(dir.path(), &[]);
    let again = call(&server, "/function/ka/whoami").await;
    assert_eq!(again.status(), 200, "{}", server.log());
    assert_eq!(
        again.headers()["x-gpufn-cold-start"],
        "false",
        "{}",
        server.log()
    );
    assert_eq!(again.headers()["x-gpufn-instance-id"], instance.as_str());
    let who: serde_json::Value = again.json().await.unwrap();
    assert_eq!(
        who["initialized"], 1,
        "adopted, not initialized again: {who}"
    );
    wait_until("the stray Pod to be deleted", 30, || {
        let (found, _) = kubectl(&["get", "pod", "gone-00000001", "-n", &cluster.ns]);
        !found
    })
    .await;
    // Deleting the function deletes its Pods.
    let resp = server
        .http
        .delete(server.url("/api/v1/functions/ka"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    wait_until("the function's Pods to be deleted", 30, || {
        cluster.pods().is_empty()
    })
    .await;
    let mut server = server;
    server.terminate();
}

/// `deploy/kubernetes/` applies on the testbed (server-side dry run), and the service account
/// it makes can manage Pods in the functions namespace, read nodes, and nothing else: no
/// Secrets anywhere, no Pods elsewhere.
#[tokio::test]
async fn the_manifests_apply_and_grant_least_privilege() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes");
    // Namespaced objects are checked against existing namespaces: those two are made for real,
    // and the RBAC objects too (to ask what they allow). Applying them again changes nothing.
    for f in ["00-namespaces.yaml", "10-rbac.yaml"] {
        let (ok, text) = kubectl(&["apply", "-f", dir.join(f).to_str().unwrap()]);
        assert!(ok, "{f}: {text}");
    }
    let (ok, text) = kubectl(&["apply", "--dry-run=server", "-f", dir.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(text.contains("deployment.apps/gpufn"), "{text}");
    let can = |verb: &str, what: &str, ns: Option<&str>| {
        let mut args = vec![
            "auth",
            "can-i",
            verb,
            what,
            "--as=system:serviceaccount:gpufn:gpufn",
        ];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        // (A warning on stderr for cluster-scoped resources.)
        let (_, text) = kubectl(&args);
        text.lines().any(|l| l.trim() == "yes")
    };
    assert!(can("create", "pods", Some("gpufn-functions")));
    assert!(can("delete", "pods", Some("gpufn-functions")));
    assert!(can("watch", "pods", Some("gpufn-functions")));
    assert!(can("list", "nodes", None));
    assert!(!can("get", "secrets", Some("gpufn-functions")));
    assert!(!can("list", "secrets", Some("gpufn")));
    assert!(!can("get", "secrets", Some("kube-system")));
    assert!(!can("create", "pods", Some("default")));
    assert!(!can("create", "deployments", Some("gpufn-functions")));
    assert!(!can("update", "nodes", None));
}

/// Three instances wanted on two cards: the third request waits in gpufn's queue and is served
/// when a card frees. `GET /api/v1/gpus` lists the cluster's cards by node, with their holders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_instance_waits_for_one_of_two_cards() {
    let bed = Bed::start("three", 2, 1, 0).await;
    let (cluster, image, dir) = (&bed.cluster, &bed.image, &bed.dir);
    let server = cluster.gpufn(dir.path(), &[]);
    let (status, body) = server
        .deploy_yaml(&spec(
            "k3",
            image,
            &cluster.gpu_type,
            "scaling: {queue_timeout_s: 60, idle_timeout_s: 1}\n",
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    // Two slow requests hold both cards (`/work?ms=` keeps the instance busy).
    let slow = |ms: u64| {
        let http = server.http.clone();
        let url = server.url(&format!("/function/k3/work?ms={ms}"));
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            let id = r.headers()["x-gpufn-instance-id"]
                .to_str()
                .unwrap()
                .to_string();
            (r.status().as_u16(), id)
        })
    };
    let a = slow(4000);
    let b = slow(4000);
    wait_until("two Pods", 60, || cluster.pods().len() == 2).await;
    let gpus = server.get_json("/api/v1/gpus").await;
    let ours: Vec<&Value> = gpus["cards"]
        .as_array()
        .or(gpus.as_array())
        .unwrap()
        .iter()
        .filter(|c| c["type"] == cluster.gpu_type.as_str())
        .collect();
    assert_eq!(ours.len(), 2, "{gpus}");
    let nodes: std::collections::BTreeSet<&str> =
        ours.iter().map(|c| c["node"].as_str().unwrap()).collect();
    assert_eq!(nodes.len(), 2, "one card on each node: {gpus}");
    assert!(
        ours.iter().all(|c| c["function"] == "k3"),
        "both held by gpufn's Pods: {gpus}"
    );
    // The third waits for a card, and gets one when a slow request ends.
    let third = call(&server, "/function/k3/whoami").await;
    assert_eq!(third.status(), 200, "{}", server.log());
    assert!(cluster.pods().len() <= 2, "never more Pods than cards");
    let (sa, ia) = a.await.unwrap();
    let (sb, ib) = b.await.unwrap();
    assert_eq!((sa, sb), (200, 200));
    assert_ne!(ia, ib, "two instances");
    let mut server = server;
    server.terminate();
}

/// A GPU type reaches its own nodes, through `--kube-gpu-type` where the cluster's label value
/// differs from gpufn's type name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_type_maps_to_its_nodes_label() {
    let bed = Bed::start("typed", 1, 1, 0).await;
    let (cluster, image, dir) = (&bed.cluster, &bed.image, &bed.dir);
    // gpufn calls the type `big-card`; the nodes label it with the test's own value.
    let mapping = format!("big-card={}", cluster.gpu_type);
    let server = cluster.gpufn(dir.path(), &["--kube-gpu-type", &mapping]);
    let (status, body) = server.deploy_yaml(&spec("kt", image, "big-card", "")).await;
    assert_eq!(status, 201, "{body}\n{}", server.log());
    let resp = call(&server, "/function/kt/whoami").await;
    assert_eq!(resp.status(), 200, "{}", server.log());
    let pod = &cluster.pods()[0];
    assert_eq!(
        pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"],
        cluster.gpu_type.as_str()
    );
    assert!(
        pod["spec"]["nodeName"]
            .as_str()
            .unwrap()
            .starts_with("typed-")
    );
    // A process function is refused on this backend, naming the field.
    let (status, body) = server
        .deploy_yaml("name: p\nruntime: process\ncommand: [sleep, '1']\ngpu: {memory_gb: 1}\n")
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "runtime", "{body}");
    // So are idle mode (a Pod's processes cannot be frozen from here) and command hooks.
    for (extra, field) in [
        (
            "scaling: {min_instances: 1, idle_mode: freeze}
",
            "scaling.idle_mode",
        ),
        (
            "lifecycle: {initializer: {command: [/app/gpufn-testapp, mark, x]}}
",
            "lifecycle",
        ),
    ] {
        let (status, body) = server
            .deploy_yaml(&spec("kx", image, "big-card", extra))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    let mut server = server;
    server.terminate();
}

/// Benchmark (not run by default: `cargo test -p gpufn-cli --test e2e -- --ignored --nocapture
/// kube::bench_zero_to_thirty`, with the testbed up): 30 requests at once for a function with
/// concurrency 1 on 30 simulated cards over 4 nodes (8, 8, 7, 7): how long until all 30 are
/// answered (every instance cold-started), and where each start's time went — gpufn's own API
/// calls and the watch's delivery, the cluster scheduler's placement, the node agent's start and
/// gpufn's probe. Figures in BENCHMARKS.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand with --ignored"]
async fn bench_zero_to_thirty() {
    let bed = Bed::start("bench", 4, "8,8,7,7", 0).await;
    let (cluster, image, dir) = (&bed.cluster, &bed.image, &bed.dir);
    let server = cluster.gpufn(dir.path(), &["--quota-cards", "30"]);
    let (status, body) = server
        .deploy_yaml(&spec(
            "kb",
            image,
            &cluster.gpu_type,
            "scaling: {max_instances: 30, max_queue: 100, queue_timeout_s: 120, idle_timeout_s: 600}\n",
        ))
        .await;
    assert_eq!(status, 201, "{body}");
    let t0 = std::time::Instant::now();
    let calls: Vec<_> = (0..30)
        .map(|_| {
            let http = server.http.clone();
            // Each request holds its instance a moment, so 30 instances are needed at once.
            let url = server.url("/function/kb/work?ms=3000");
            tokio::spawn(async move {
                let r = http.get(url).send().await.unwrap();
                (r.status().as_u16(), t0.elapsed())
            })
        })
        .collect();
    let mut done = Vec::new();
    for c in calls {
        done.push(c.await.unwrap());
    }
    assert!(done.iter().all(|(s, _)| *s == 200), "{done:?}");
    let all_answered = done.iter().map(|(_, t)| *t).max().unwrap();
    let pods = cluster.pods();
    let starts = server
        .get_json("/api/v1/functions/kb/cold-starts?limit=100")
        .await;
    let starts = starts.as_array().unwrap();
    let field = |name: &str| -> Vec<f64> {
        let mut v: Vec<f64> = starts.iter().filter_map(|s| s[name].as_f64()).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let log = server.log();
    let from_log = |key: &str| -> Vec<f64> {
        let mut v: Vec<f64> = log
            .lines()
            .filter(|l| l.contains("Pod running"))
            .filter_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(&format!("{key}=")))
                    .and_then(|x| x.parse().ok())
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let p = |v: &[f64], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
    };
    println!(
        "instances: {} Pods, {} cold starts",
        pods.len(),
        starts.len()
    );
    println!(
        "all 30 answered after {:.0} ms (each request works 3000 ms)",
        all_answered.as_secs_f64() * 1e3
    );
    for name in ["gpu_allocate_ms", "image_pull_ms", "start_ms", "ready_ms"] {
        let v = field(name);
        println!("{name}: p50 {:?} max {:?}", p(&v, 0.5), p(&v, 1.0));
    }
    for key in [
        "apply_ms",
        "watch_ms",
        "placed_ms",
        "running_ms",
        "events_ms",
    ] {
        let v = from_log(key);
        println!(
            "{key}: p50 {:?} max {:?} (n={})",
            p(&v, 0.5),
            p(&v, 1.0),
            v.len()
        );
    }
    let mut server = server;
    server.terminate();
}

/// A memory-sharing cluster (`--kube-gpu-resource aliyun.com/gpu-mem`): Pods ask for their GB,
/// and two 6 GB instances share one 16 GB card on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sharing_puts_two_instances_on_one_card() {
    let bed = Bed::start("shared", 1, 1, 0).await;
    let (cluster, image, dir) = (&bed.cluster, &bed.image, &bed.dir);
    let server = cluster.gpufn(dir.path(), &["--kube-gpu-resource", "aliyun.com/gpu-mem"]);
    let yaml = spec(
        "km",
        image,
        &cluster.gpu_type,
        "scaling: {queue_timeout_s: 60}\n",
    )
    .replace("memory_gb: 2", "memory_gb: 6");
    let (status, body) = server.deploy_yaml(&yaml).await;
    assert_eq!(status, 201, "{body}");
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let http = server.http.clone();
            let url = server.url("/function/km/work?ms=3000");
            tokio::spawn(async move { http.get(url).send().await.unwrap().status().as_u16() })
        })
        .collect();
    wait_until("two running Pods", 60, || {
        cluster
            .pods()
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count()
            == 2
    })
    .await;
    let pods = cluster.pods();
    for p in &pods {
        let limits = &p["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(limits["aliyun.com/gpu-mem"], "6", "{limits}");
        assert!(limits.get("nvidia.com/gpu").is_none(), "{limits}");
    }
    assert_eq!(pods[0]["spec"]["nodeName"], pods[1]["spec"]["nodeName"]);
    let gpus = server.get_json("/api/v1/gpus").await;
    let card = gpus["cards"]
        .as_array()
        .or(gpus.as_array())
        .unwrap()
        .iter()
        .find(|c| c["type"] == cluster.gpu_type.as_str())
        .cloned()
        .unwrap();
    assert_eq!(card["shared"], true, "{card}");
    assert_eq!(card["allocated_gb"], 12, "{card}");
    assert_eq!(card["instances"].as_array().unwrap().len(), 2, "{card}");
    for c in calls {
        assert_eq!(c.await.unwrap(), 200);
    }
    let mut server = server;
    server.terminate();
}
