//! The Pod of one instance, and what its status says — both pure.

use std::collections::BTreeMap;
use std::net::IpAddr;

use gpufn_runtime::{Ended, Exit, LaunchSpec};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::KubeSettings;

/// gpufn's field manager (server-side apply) and `app.kubernetes.io/managed-by` value.
pub const MANAGER: &str = "gpufn";
/// Label: who manages the Pod.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label: the function.
pub const LABEL_FUNCTION: &str = "gpufn.dev/function";
/// Label: the function's revision.
pub const LABEL_REVISION: &str = "gpufn.dev/revision";
/// Label: the instance id.
pub const LABEL_INSTANCE: &str = "gpufn.dev/instance";
/// The extended resource of a whole card.
pub const WHOLE_CARD: &str = "nvidia.com/gpu";
/// The container's name in every Pod.
pub const CONTAINER: &str = "app";

/// The label selector of every Pod gpufn manages.
pub fn selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGER}")
}

/// Why a Pod cannot be made for a launch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    /// Only container functions run on Kubernetes.
    #[error("runtime: process cannot run on the Kubernetes backend (a Pod runs an image)")]
    NotAContainer,
}

/// The Pod for `spec`, as gpufn applies it: one container running the function's pinned image
/// with its port, command, environment (with `PORT` and `GPUFN_*`), `cpu`/`memory_mb`/`disk_mb` as
/// requests and limits, the GPU as an extended resource (`nvidia.com/gpu: 1`, or GB of the
/// memory-sharing resource), the GPU type as a node selector, gpufn's labels, and a readiness
/// probe on the health path for `kubectl` users (gpufn's own prober decides when to route).
/// `restartPolicy: Never`: gpufn replaces an instance that exits, as on the local backend.
pub fn manifest(spec: &LaunchSpec, settings: &KubeSettings) -> Result<Value, PodError> {
    let c = spec.container.as_ref().ok_or(PodError::NotAContainer)?;
    let mut env: BTreeMap<String, String> = spec.env.clone();
    env.insert("PORT".into(), c.port.to_string());
    env.insert("GPUFN_FUNCTION".into(), spec.function.clone());
    env.insert("GPUFN_INSTANCE_ID".into(), spec.instance_id.clone());
    env.insert("GPUFN_GPU_MEMORY_GB".into(), spec.gpu_memory_gb.to_string());
    let env: Vec<Value> = env
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect();
    let gpu_amount = if settings.gpu_resource == WHOLE_CARD {
        "1".to_string()
    } else {
        spec.gpu_memory_gb.to_string()
    };
    let mut resources = serde_json::Map::new();
    resources.insert("cpu".into(), json!(millicores(spec.cpu)));
    resources.insert("memory".into(), json!(format!("{}Mi", spec.memory_mb)));
    if spec.disk_mb > 0 {
        resources.insert(
            "ephemeral-storage".into(),
            json!(format!("{}Mi", spec.disk_mb)),
        );
    }
    resources.insert(settings.gpu_resource.clone(), json!(gpu_amount));
    let mut container = json!({
        "name": CONTAINER,
        "image": c.image,
        "env": env,
        "ports": [{"containerPort": c.port, "protocol": "TCP", "name": "http"}],
        "resources": {"requests": resources.clone(), "limits": resources},
        "readinessProbe": {
            "httpGet": {"path": spec.health_path, "port": c.port},
            "periodSeconds": 1,
            "failureThreshold": 1,
        },
    });
    if !spec.command.is_empty() {
        container["command"] = json!(spec.command);
    }
    if let Some(dir) = &c.workdir {
        container["workingDir"] = json!(dir);
    }
    let mut pod_spec = json!({
        "containers": [container],
        "restartPolicy": "Never",
        // An instance needs nothing from the API server: no token in the Pod.
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
    });
    if let Some(t) = &spec.gpu_type {
        pod_spec["nodeSelector"] = json!({settings.gpu_type_label.clone(): settings.type_value(t)});
    }
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.instance_id,
            "namespace": settings.namespace,
            "labels": {
                LABEL_MANAGED_BY: MANAGER,
                LABEL_FUNCTION: spec.function,
                LABEL_REVISION: spec.revision.to_string(),
                LABEL_INSTANCE: spec.instance_id,
            },
        },
        "spec": pod_spec,
    }))
}

/// A CPU quantity in millicores (`0.5` → `500m`).
fn millicores(cpu: f64) -> String {
    let m = (cpu * 1000.0).round().max(1.0);
    format!("{m:.0}m")
}

/// What a Pod's status says, as gpufn needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodView {
    /// The node it is bound to.
    pub node: Option<String>,
    /// The scheduler's reason it could not place the Pod (`PodScheduled=False`), while unbound.
    pub unschedulable: Option<String>,
    /// Its address.
    pub ip: Option<IpAddr>,
    /// The app's container is running.
    pub running: bool,
    /// The Pod's own readiness (its probe, as the node reports it).
    pub ready: bool,
    /// The container ended, or the Pod failed: how.
    pub ended: Option<Ended>,
    /// The Pod's own reason when it failed as a whole (`Evicted`, ...).
    pub failure: Option<String>,
    /// Being deleted.
    pub deleting: bool,
}

impl PodView {
    /// Reads `pod`.
    pub fn of(pod: &Pod) -> PodView {
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_deref()).unwrap_or(&[]);
        let node = spec.and_then(|s| s.node_name.clone());
        let unschedulable = conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .filter(|_| node.is_none())
            .map(|c| {
                c.message
                    .clone()
                    .or_else(|| c.reason.clone())
                    .unwrap_or_else(|| "unschedulable".into())
            });
        let ready = conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let app = status
            .and_then(|s| s.container_statuses.as_deref())
            .and_then(|cs| cs.iter().find(|c| c.name == CONTAINER));
        let state = app.and_then(|c| c.state.as_ref());
        let running = state.is_some_and(|s| s.running.is_some());
        let terminated = state.and_then(|s| s.terminated.as_ref()).map(|t| {
            let exit = match t.signal {
                Some(sig) => Exit::Signal(sig),
                None => Exit::Code(t.exit_code),
            };
            Ended {
                exit,
                out_of_memory: (t.reason.as_deref() == Some("OOMKilled")).then_some(None),
                killed_after: None,
            }
        });
        let phase = status.and_then(|s| s.phase.as_deref());
        let ended = terminated.or_else(|| {
            matches!(phase, Some("Failed") | Some("Succeeded")).then(|| Ended::exit(Exit::Gone))
        });
        let failure = status.and_then(|s| s.reason.clone());
        PodView {
            node,
            unschedulable,
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            running,
            ready,
            ended,
            failure,
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// How long a node took to pull the image, from its `Pulled` event's message (kubelet's words:
/// `Successfully pulled image "x" in 1.234567s`; `Container image "x" already present on machine`
/// is a pull of zero).
pub fn pull_time(message: &str) -> Option<std::time::Duration> {
    if message.contains("already present") {
        return Some(std::time::Duration::ZERO);
    }
    let (_, tail) = message.rsplit_once(" in ")?;
    go_duration(tail.split_whitespace().next()?)
}

/// A Go `time.Duration` string (`1.5s`, `2m3.25s`, `850ms`, `1h0m0s`).
fn go_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s.trim().trim_end_matches(['.', ',', ')']);
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0f64;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    (total.is_finite() && total >= 0.0).then(|| std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use std::path::PathBuf;

    use gpufn_runtime::ContainerLaunch;

    use super::*;

    fn launch() -> LaunchSpec {
        LaunchSpec {
            instance_id: "sd-0000abcd".into(),
            function: "sd".into(),
            command: vec!["python".into(), "serve.py".into()],
            workdir: PathBuf::from("/"),
            env: BTreeMap::from([("MODEL".to_string(), "sdxl".to_string())]),
            gpu_index: 0,
            gpu_memory_gb: 24,
            log_path: PathBuf::from("/tmp/x.log"),
            container: Some(ContainerLaunch {
                image: "registry.local/sd:1@sha256:abc".into(),
                port: 9000,
                host_network: false,
                memory_mb: Some(8192),
                cpu: Some(2.5),
                workdir: None,
                credentials: None,
            }),
            memory_mb: 8192,
            cpu: 2.5,
            revision: 7,
            gpu_type: Some("tesla-t4".into()),
            disk_mb: 10240,
            health_path: "/healthz".into(),
            startup_timeout: std::time::Duration::from_secs(60),
            progress: gpufn_runtime::StartProgress::default(),
        }
    }

    #[test]
    fn a_pod_carries_the_spec_as_requests_limits_labels_and_a_node_selector() {
        let settings = KubeSettings::default();
        let v = manifest(&launch(), &settings).unwrap();
        // It is a valid Pod.
        let pod: Pod = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("sd-0000abcd"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("gpufn-functions"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels[LABEL_MANAGED_BY], "gpufn");
        assert_eq!(labels[LABEL_FUNCTION], "sd");
        assert_eq!(labels[LABEL_REVISION], "7");
        assert_eq!(labels[LABEL_INSTANCE], "sd-0000abcd");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(
            spec.node_selector.unwrap()["nvidia.com/gpu.product"],
            "tesla-t4"
        );
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("registry.local/sd:1@sha256:abc"));
        assert_eq!(c.command.as_deref().unwrap(), ["python", "serve.py"]);
        let env: BTreeMap<_, _> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(env["PORT"], "9000");
        assert_eq!(env["MODEL"], "sdxl");
        assert_eq!(env["GPUFN_INSTANCE_ID"], "sd-0000abcd");
        assert_eq!(env["GPUFN_GPU_MEMORY_GB"], "24");
        let r = c.resources.as_ref().unwrap();
        for side in [r.requests.as_ref().unwrap(), r.limits.as_ref().unwrap()] {
            assert_eq!(side["cpu"].0, "2500m");
            assert_eq!(side["memory"].0, "8192Mi");
            assert_eq!(side["ephemeral-storage"].0, "10240Mi");
            assert_eq!(side["nvidia.com/gpu"].0, "1");
        }
        let probe = c
            .readiness_probe
            .as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap();
        assert_eq!(probe.path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn memory_sharing_clusters_get_gigabytes_and_mapped_type_values() {
        let settings = KubeSettings {
            gpu_resource: "aliyun.com/gpu-mem".into(),
            gpu_type_label: "aliyun.accelerator/nvidia_name".into(),
            gpu_type_values: BTreeMap::from([("tesla-t4".into(), "Tesla-T4".into())]),
            ..KubeSettings::default()
        };
        let v = manifest(&launch(), &settings).unwrap();
        let limits = &v["spec"]["containers"][0]["resources"]["limits"];
        assert_eq!(limits["aliyun.com/gpu-mem"], "24");
        assert!(limits.get("nvidia.com/gpu").is_none());
        assert_eq!(
            v["spec"]["nodeSelector"]["aliyun.accelerator/nvidia_name"],
            "Tesla-T4"
        );
        // No type: no selector.
        let mut any = launch();
        any.gpu_type = None;
        let v = manifest(&any, &settings).unwrap();
        assert!(v["spec"].get("nodeSelector").is_none());
    }

    #[test]
    fn pull_times_are_read_from_the_nodes_events() {
        use std::time::Duration;
        let ms = |m: &str| pull_time(m).map(|d| d.as_millis());
        assert_eq!(
            ms(r#"Successfully pulled image "registry/x:1" in 1.234567891s"#),
            Some(1234)
        );
        assert_eq!(
            ms(r#"Successfully pulled image "x" in 2m3.5s"#),
            Some(123_500)
        );
        assert_eq!(ms(r#"Successfully pulled image "x" in 850ms"#), Some(850));
        assert_eq!(
            pull_time(r#"Container image "x" already present on machine"#),
            Some(Duration::ZERO)
        );
        assert_eq!(pull_time("Pulling image \"x\""), None);
        assert_eq!(pull_time("Successfully pulled image in soon"), None);
    }

    #[test]
    fn a_process_launch_is_refused() {
        let mut l = launch();
        l.container = None;
        assert_eq!(
            manifest(&l, &KubeSettings::default()),
            Err(PodError::NotAContainer)
        );
    }

    fn pod(status: Value, node: Option<&str>) -> Pod {
        let mut v = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "app"}]},
            "status": status,
        });
        if let Some(n) = node {
            v["spec"]["nodeName"] = json!(n);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn status_maps_to_what_gpufn_waits_for() {
        let pending = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}),
            None,
        );
        let v = PodView::of(&pending);
        assert_eq!(
            v.unschedulable.as_deref(),
            Some("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
        );
        assert!(!v.running && v.node.is_none() && v.ended.is_none());

        let creating = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}]}),
            Some("gpu-node-0"),
        );
        let v = PodView::of(&creating);
        assert_eq!(v.node.as_deref(), Some("gpu-node-0"));
        assert!(v.unschedulable.is_none() && !v.running);

        let running = pod(
            json!({"phase": "Running", "podIP": "10.88.0.5",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {"startedAt": "2026-11-29T03:00:00Z"}}}]}),
            Some("gpu-node-0"),
        );
        let v = PodView::of(&running);
        assert!(v.running && v.ready);
        assert_eq!(v.ip, Some("10.88.0.5".parse().unwrap()));

        let oom = pod(
            json!({"phase": "Failed",
                "containerStatuses": [{"name": "app", "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
            Some("gpu-node-0"),
        );
        assert_eq!(
            PodView::of(&oom).ended.unwrap().to_string(),
            "exited with code 137 (out of memory: killed by the kernel)"
        );
        let evicted = PodView::of(&pod(
            json!({"phase": "Failed", "reason": "Evicted"}),
            Some("n"),
        ));
        assert_eq!(evicted.ended, Some(Ended::exit(Exit::Gone)));
        assert_eq!(evicted.failure.as_deref(), Some("Evicted"));
    }
}
