//! `gpufn-node-agent`: test-only stand-in for kubelets on the Kubernetes testbed
//! (`scripts/kube-testbed.sh`), like SIG Scheduling's kwok except that the Pods really run.
//!
//! It registers N nodes whose status advertises simulated GPUs (`nvidia.com/gpu`, and
//! `aliyun.com/gpu-mem` for memory-sharing tests) with a GPU product label, keeps their Leases and
//! Ready condition fresh, watches the Pods the real scheduler binds to them, runs each Pod's
//! container with gpufn's own OCI runtime (runc, a network namespace and address of its own), and
//! writes the Pod's status — `podIP`, container states, `Ready` after its readiness probe — as a
//! kubelet would. Deleting a Pod stops its container within the grace period, then removes it.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use futures_util::StreamExt;
use gpufn_oci::{ContainerConfig, ContainerRuntime, ImageStore};
use gpufn_runtime::{ContainerLaunch, Ended, Exit, InstanceRuntime, LaunchSpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Mutex, oneshot};

const MANAGER: &str = "gpufn-node-agent";
const HEARTBEAT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(about = "Simulated GPU nodes for the Kubernetes testbed; their Pods really run")]
struct Args {
    /// kubeconfig of the testbed (admin).
    #[arg(long)]
    kubeconfig: PathBuf,
    /// GPU nodes to register.
    #[arg(long, default_value_t = 2)]
    nodes: u32,
    /// Simulated cards per GPU node: one number, or one per node in turn (`8,8,7,7`).
    #[arg(long, default_value = "1")]
    gpus_per_node: String,
    /// GPU types, one per node in turn (`tesla-t4,a10`: node 0 T4, node 1 A10, node 2 T4...).
    #[arg(long, default_value = "tesla-t4")]
    gpu_types: String,
    /// Memory of each card, GB.
    #[arg(long, default_value_t = 16)]
    gpu_memory_gb: u32,
    /// Nodes without GPUs, besides the GPU nodes (labelled with the first GPU type).
    #[arg(long, default_value_t = 0)]
    cpu_nodes: u32,
    /// Node label carrying the GPU type.
    #[arg(long, default_value = "nvidia.com/gpu.product")]
    gpu_type_label: String,
    /// Where images, bundles and container logs go.
    #[arg(long)]
    state_dir: PathBuf,
    /// Node names are `<prefix>-<n>` (`<prefix>-cpu-<n>` for GPU-less ones).
    #[arg(long, default_value = "node")]
    node_prefix: String,
    /// OCI runtime.
    #[arg(long, default_value = "runc")]
    oci_runtime: PathBuf,
}

/// One registered node.
#[derive(Debug, Clone)]
struct NodeDef {
    name: String,
    gpus: u32,
    gpu_type: Option<String>,
}

struct Agent {
    client: kube::Client,
    args: Args,
    nodes: Vec<NodeDef>,
    runtime: ContainerRuntime,
    /// Pods started here (`namespace/name`) → the stop request (grace) of each.
    running: Mutex<HashMap<String, oneshot::Sender<Duration>>>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .init();
    gpufn_oci::ensure_crypto_provider();
    let args = Args::parse();
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await?;
    let client = kube::Client::try_from(config)?;
    let types: Vec<String> = args
        .gpu_types
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let counts: Vec<u32> = args
        .gpus_per_node
        .split(',')
        .map(|n| n.trim().parse::<u32>())
        .collect::<Result<_, _>>()
        .context("--gpus-per-node: numbers, comma-separated")?;
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        nodes.push(NodeDef {
            name: format!("{}-{i}", args.node_prefix),
            gpus: counts
                .get(i as usize % counts.len().max(1))
                .copied()
                .unwrap_or(1),
            gpu_type: types.get(i as usize % types.len().max(1)).cloned(),
        });
    }
    for i in 0..args.cpu_nodes {
        nodes.push(NodeDef {
            name: format!("{}-cpu-{i}", args.node_prefix),
            gpus: 0,
            // Labelled like the GPU nodes (as a node whose device plugin found no card would
            // be): only the GPU resource keeps GPU Pods off it.
            gpu_type: types.first().cloned(),
        });
    }
    let images = ImageStore::open(&args.state_dir.join("images"), Vec::new(), 8 << 30)
        .map_err(|e| anyhow::anyhow!("image store: {e}"))?;
    let runtime = ContainerRuntime::new(
        Arc::new(images),
        ContainerConfig {
            oci_runtime: args.oci_runtime.clone(),
            state_dir: args.state_dir.join("run"),
            inject_gpus: false,
        },
    )
    .context("container runtime")?;
    if let Some(why) = runtime.unavailable() {
        anyhow::bail!("{why}");
    }
    runtime.reap_orphans();
    let agent = Arc::new(Agent {
        client,
        args,
        nodes,
        runtime,
        running: Mutex::new(HashMap::new()),
    });
    for node in &agent.nodes {
        agent.register(node).await?;
    }
    tracing::info!(nodes = agent.nodes.len(), "nodes registered");
    let beat = agent.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            for node in &beat.nodes {
                if let Err(e) = beat.heartbeat(node).await {
                    tracing::warn!(node = %node.name, "heartbeat: {e}");
                }
            }
        }
    });
    let watching = agent.clone();
    tokio::spawn(async move { watching.watch_pods().await });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    // Stop every container before leaving: nothing of the testbed may outlive `down`.
    let stops: Vec<_> = agent.running.lock().await.drain().collect();
    for (_, stop) in stops {
        let _ = stop.send(Duration::ZERO);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.runtime.reap_orphans();
    Ok(())
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl Agent {
    async fn register(&self, node: &NodeDef) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), node.name.clone()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ]);
        if let Some(t) = &node.gpu_type {
            labels.insert(self.args.gpu_type_label.clone(), t.clone());
            labels.insert(
                "nvidia.com/gpu.memory".into(),
                (u64::from(self.args.gpu_memory_gb) * 1024).to_string(),
            );
        }
        let object = json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": node.name, "labels": labels},
        });
        nodes
            .patch(
                &node.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("registering node {}", node.name))?;
        self.heartbeat(node).await
    }

    /// The node's status (capacity, Ready) and its Lease, renewed.
    async fn heartbeat(&self, node: &NodeDef) -> anyhow::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut capacity = json!({
            "cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi",
        });
        if node.gpus > 0 {
            capacity["nvidia.com/gpu"] = json!(node.gpus.to_string());
            capacity["aliyun.com/gpu-mem"] =
                json!((node.gpus * self.args.gpu_memory_gb).to_string());
        }
        let t = now();
        let condition = |type_: &str, status: &str, reason: &str| {
            json!({"type": type_, "status": status, "reason": reason,
                   "lastHeartbeatTime": t, "lastTransitionTime": t})
        };
        let status = json!({"status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                condition("Ready", "True", "KubeletReady"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": node.name},
            ],
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                "osImage": "gpufn testbed", "containerRuntimeVersion": "runc",
                "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }});
        nodes
            .patch_status(&node.name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("status of node {}", node.name))?;
        let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client.clone(), "kube-node-lease");
        let micro = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": node.name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": node.name, "leaseDurationSeconds": 40, "renewTime": micro},
        });
        leases
            .patch(
                &node.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .with_context(|| format!("lease of node {}", node.name))?;
        Ok(())
    }

    fn ours(&self, pod: &Pod) -> bool {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| self.nodes.iter().any(|d| d.name == n))
    }

    async fn watch_pods(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let stream = watcher(pods, watcher::Config::default()).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let pod = match ev {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::Delete(p)) => {
                    if let Some(stop) = self.running.lock().await.remove(&key(&p)) {
                        let _ = stop.send(Duration::ZERO);
                    }
                    continue;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!("watching pods: {e}");
                    continue;
                }
            };
            if !self.ours(&pod) {
                continue;
            }
            let k = key(&pod);
            if let Some(deleted) = pod.metadata.deletion_timestamp.as_ref() {
                let _ = deleted;
                let grace = Duration::from_secs(
                    pod.metadata
                        .deletion_grace_period_seconds
                        .and_then(|s| u64::try_from(s).ok())
                        .unwrap_or(0),
                );
                match self.running.lock().await.remove(&k) {
                    Some(stop) => {
                        let _ = stop.send(grace);
                    }
                    // Never started here, or already ended: remove it now.
                    None => self.finalize(&pod).await,
                }
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Failed") | Some("Succeeded")) {
                continue;
            }
            let mut running = self.running.lock().await;
            if running.contains_key(&k) {
                continue;
            }
            let (tx, rx) = oneshot::channel();
            running.insert(k.clone(), tx);
            drop(running);
            let agent = self.clone();
            tokio::spawn(async move {
                agent.run(pod, rx).await;
                agent.running.lock().await.remove(&k);
            });
        }
    }

    /// Removes a deleted Pod for good, as a kubelet does once its containers are gone.
    async fn finalize(&self, pod: &Pod) {
        let (ns, name) = names(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        if let Err(e) = api.delete(&name, &params).await {
            if !matches!(&e, kube::Error::Api(s) if s.code == 404) {
                tracing::warn!(pod = %name, "removing: {e}");
            }
        }
    }

    /// Records an event on `pod`, as its kubelet would.
    async fn event(&self, pod: &Pod, reason: &str, message: &str) {
        let (ns, name) = names(pod);
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), &ns);
        let t = now();
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": format!("{name}."), "namespace": ns},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
                "uid": pod.metadata.uid, "fieldPath": "spec.containers{app}"},
            "reason": reason, "message": message, "type": "Normal",
            "source": {"component": "kubelet", "host": node},
            "firstTimestamp": t, "lastTimestamp": t, "count": 1,
        });
        let event = match serde_json::from_value(event) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("event: {e}");
                return;
            }
        };
        if let Err(e) = api.create(&kube::api::PostParams::default(), &event).await {
            tracing::warn!(pod = %name, "event: {e}");
        }
    }

    async fn status(&self, pod: &Pod, status: Value) {
        let (ns, name) = names(pod);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(&json!({ "status": status })),
            )
            .await
        {
            tracing::warn!(pod = %name, "status: {e}");
        }
    }

    /// Runs one Pod: its container from start to end, its status all along.
    async fn run(self: &Arc<Self>, pod: Pod, mut stop: oneshot::Receiver<Duration>) {
        let (_, name) = names(&pod);
        let started = now();
        let container = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .cloned()
            .unwrap_or_default();
        let cname = container.name.clone();
        let image = container.image.clone().unwrap_or_default();
        let cstatus = |ready: bool, state: Value| {
            json!([{"name": cname, "image": image, "imageID": image, "ready": ready,
                    "restartCount": 0, "started": ready, "state": state}])
        };
        let conditions = |ready: bool| {
            let r = if ready { "True" } else { "False" };
            json!([
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": started},
                {"type": "Initialized", "status": "True", "lastTransitionTime": started},
                {"type": "ContainersReady", "status": r, "lastTransitionTime": now()},
                {"type": "Ready", "status": r, "lastTransitionTime": now()},
            ])
        };
        self.status(
            &pod,
            json!({
                "phase": "Pending", "hostIP": "127.0.0.1", "startTime": started,
                "conditions": conditions(false),
                "containerStatuses": cstatus(false, json!({"waiting": {"reason": "ContainerCreating"}})),
            }),
        )
        .await;
        let spec = self.launch_spec(&pod, &container);
        let mut inst = match self.runtime.launch(&spec).await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(pod = %name, "cannot start: {e}");
                self.status(
                    &pod,
                    json!({
                        "phase": "Failed", "conditions": conditions(false),
                        "containerStatuses": cstatus(false, json!({"terminated": {
                            "exitCode": 128, "reason": "StartError", "message": e.to_string(),
                            "finishedAt": now()}})),
                    }),
                )
                .await;
                // Wait for the deletion, then remove it.
                let _ = stop.await;
                self.finalize(&pod).await;
                return;
            }
        };
        let addr = inst.addr();
        // As a kubelet does: the pull's event, before the container shows as running.
        let pulled = inst.image_pull();
        let message = if pulled.is_zero() {
            format!("Container image \"{image}\" already present on machine")
        } else {
            format!(
                "Successfully pulled image \"{image}\" in {:.6}s",
                pulled.as_secs_f64()
            )
        };
        self.event(&pod, "Pulled", &message).await;
        self.status(
            &pod,
            json!({
                "phase": "Running", "podIP": addr.ip().to_string(),
                "podIPs": [{"ip": addr.ip().to_string()}],
                "conditions": conditions(false),
                "containerStatuses": cstatus(false, json!({"running": {"startedAt": now()}})),
            }),
        )
        .await;
        let probe_path = container
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone());
        let ready = async {
            let Some(path) = probe_path else {
                return;
            };
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()
                .unwrap_or_default();
            let url = format!("http://{addr}{path}");
            loop {
                if http
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        let running = json!({"running": {"startedAt": now()}});
        let outcome = tokio::select! {
            how = inst.wait() => Some(how),
            grace = &mut stop => {
                let how = inst.stop(grace.unwrap_or(Duration::ZERO)).await;
                self.ended(&pod, &how, &cstatus, &conditions).await;
                self.finalize(&pod).await;
                return;
            }
            () = ready => None,
        };
        let how = match outcome {
            Some(how) => how,
            None => {
                self.status(
                    &pod,
                    json!({"conditions": conditions(true), "containerStatuses": cstatus(true, running)}),
                )
                .await;
                tokio::select! {
                    how = inst.wait() => how,
                    grace = &mut stop => {
                        let how = inst.stop(grace.unwrap_or(Duration::ZERO)).await;
                        self.ended(&pod, &how, &cstatus, &conditions).await;
                        self.finalize(&pod).await;
                        return;
                    }
                }
            }
        };
        // Ended by itself: reported, then kept until it is deleted (restartPolicy Never).
        self.ended(&pod, &how, &cstatus, &conditions).await;
        drop(inst);
        let _ = stop.await;
        self.finalize(&pod).await;
    }

    async fn ended(
        &self,
        pod: &Pod,
        how: &Ended,
        cstatus: &impl Fn(bool, Value) -> Value,
        conditions: &impl Fn(bool) -> Value,
    ) {
        let (code, signal) = match how.exit {
            Exit::Code(c) => (c, None),
            Exit::Signal(s) => (128 + s, Some(s)),
            _ => (0, None),
        };
        let mut terminated = json!({"exitCode": code, "finishedAt": now(),
            "reason": if how.out_of_memory.is_some() { "OOMKilled" } else if code == 0 { "Completed" } else { "Error" }});
        if let Some(s) = signal {
            terminated["signal"] = json!(s);
        }
        self.status(
            pod,
            json!({
                "phase": if code == 0 { "Succeeded" } else { "Failed" },
                "conditions": conditions(false),
                "containerStatuses": cstatus(false, json!({"terminated": terminated})),
            }),
        )
        .await;
    }

    fn launch_spec(&self, pod: &Pod, c: &k8s_openapi::api::core::v1::Container) -> LaunchSpec {
        let (ns, name) = names(pod);
        let env: BTreeMap<String, String> = c
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect();
        let limit = |r: &str| {
            c.resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(r))
                .map(|q| q.0.clone())
        };
        let memory_mb = limit("memory")
            .and_then(|m| m.strip_suffix("Mi").and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(1024);
        let cpu = limit("cpu")
            .and_then(|m| m.strip_suffix('m').and_then(|v| v.parse::<f64>().ok()))
            .map_or(1.0, |m| m / 1000.0);
        let port = c
            .ports
            .iter()
            .flatten()
            .next()
            .and_then(|p| u16::try_from(p.container_port).ok())
            .unwrap_or(8080);
        let mut command: Vec<String> = c.command.clone().unwrap_or_default();
        command.extend(c.args.clone().unwrap_or_default());
        LaunchSpec {
            instance_id: name.clone(),
            function: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("gpufn.dev/function"))
                .cloned()
                .unwrap_or_else(|| name.clone()),
            command,
            workdir: PathBuf::from("/"),
            env,
            gpu_index: 0,
            gpu_memory_gb: 0,
            log_path: self
                .args
                .state_dir
                .join("logs")
                .join(format!("{ns}.{name}.log")),
            container: Some(ContainerLaunch {
                image: c.image.clone().unwrap_or_default(),
                port,
                host_network: false,
                memory_mb: Some(memory_mb),
                cpu: Some(cpu),
                workdir: c.working_dir.clone(),
                credentials: None,
            }),
            memory_mb,
            cpu,
            revision: 0,
            gpu_type: None,
            disk_mb: 0,
            health_path: "/".into(),
            startup_timeout: Duration::from_secs(600),
            progress: gpufn_runtime::StartProgress::default(),
        }
    }
}

fn names(pod: &Pod) -> (String, String) {
    (
        pod.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

fn key(pod: &Pod) -> String {
    let (ns, name) = names(pod);
    format!("{ns}/{name}")
}
