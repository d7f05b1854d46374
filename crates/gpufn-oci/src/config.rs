//! The OCI runtime `config.json` of one container, generated from the image config, the function
//! spec and the GPU edits. Pure: everything it needs comes in the [`ContainerPlan`].

use std::path::Path;

use serde_json::{Value, json};

use crate::gpu::GpuEdits;
use crate::image::ImageConfig;

/// Everything the config is made from.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    /// argv.
    pub args: Vec<String>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Working directory inside the container.
    pub cwd: String,
    /// User and group ids.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Container host name.
    pub hostname: String,
    /// Memory limit (MB); also the swap limit, so the limit is real.
    pub memory_mb: Option<u64>,
    /// vCPUs, as a CFS quota.
    pub cpu: Option<f64>,
    /// Network namespace to join; `None` shares the host's network.
    pub netns: Option<String>,
    /// cgroup path (one level, unique on the machine).
    pub cgroups_path: String,
    /// Files bind-mounted read-only: (host path, container path), e.g. `/etc/hosts`.
    pub files: Vec<(String, String)>,
    /// GPU devices, mounts, env and hooks.
    pub gpu: GpuEdits,
    /// `RLIMIT_NOFILE` (soft, hard): a container cannot be given more than gpufn itself has.
    pub nofile: (u64, u64),
}

/// The argv a container runs: the spec's `command` when given (it replaces both ENTRYPOINT and
/// CMD), else ENTRYPOINT followed by CMD.
pub fn container_args(image: &ImageConfig, command: &[String]) -> Result<Vec<String>, String> {
    let args: Vec<String> = if command.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        command.to_vec()
    };
    if args.is_empty() {
        return Err("the image has no ENTRYPOINT or CMD; set `command` in the spec".into());
    }
    Ok(args)
}

/// The container's environment: the image's, then the spec's, then gpufn's own (later wins).
pub fn container_env<'a>(
    image: &ImageConfig,
    layers: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if let Some(slot) = env.iter_mut().find(|(key, _)| key == k) {
            slot.1 = v.to_string();
        } else {
            env.push((k.to_string(), v.to_string()));
        }
    };
    set(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    for kv in &image.env {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k, v);
    }
    for (k, v) in layers {
        set(k, v);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Resolves an image `USER` (`name`, `uid`, `uid:gid`, `name:group`) against the image's own
/// `/etc/passwd` and `/etc/group`.
pub fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let lookup = |table: &str, name: &str| -> Option<(u32, Option<u32>)> {
        table.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.first() == Some(&name)).then(|| {
                (
                    f.get(2).and_then(|s| s.parse().ok()).unwrap_or(0),
                    f.get(3).and_then(|s| s.parse().ok()),
                )
            })
        })
    };
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => lookup(&passwd, u)
            .ok_or_else(|| format!("the image's USER {u:?} is not in its /etc/passwd"))?,
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                lookup(&group, g)
                    .ok_or_else(|| format!("the image's group {g:?} is not in its /etc/group"))?
                    .0
            }
        },
        None => primary_gid.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The capabilities Docker gives a container by default.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// CFS period; the quota is `cpu × period`.
const CPU_PERIOD_US: u64 = 100_000;

/// Builds `config.json`.
pub fn runtime_config(plan: &ContainerPlan) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        // Inference frameworks (PyTorch data loaders, NCCL) use shared memory heavily.
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=1g"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
               "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    for (host, inside) in &plan.files {
        mounts.push(
            json!({"destination": inside, "type": "bind", "source": host,
                           "options": ["rbind", "ro", "nosuid", "nodev"]}),
        );
    }
    for m in &plan.gpu.mounts {
        mounts.push(json!({"destination": m.container_path, "type": "bind",
                           "source": m.host_path, "options": m.options}));
    }
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if let Some(netns) = &plan.netns {
        namespaces.push(json!({"type": "network", "path": netns}));
    }
    let mut device_rules = vec![json!({"allow": false, "access": "rwm"})];
    let mut devices = Vec::new();
    for d in &plan.gpu.devices {
        devices.push(
            json!({"path": d.path, "type": d.kind.to_string(), "major": d.major,
                            "minor": d.minor, "fileMode": 0o666, "uid": 0, "gid": 0}),
        );
        device_rules.push(
            json!({"allow": true, "type": d.kind.to_string(), "major": d.major,
                                 "minor": d.minor, "access": "rwm"}),
        );
    }
    let mut resources = json!({"devices": device_rules});
    if let Some(mb) = plan.memory_mb {
        let bytes = mb.saturating_mul(1024 * 1024);
        resources["memory"] = json!({"limit": bytes, "swap": bytes});
    }
    if let Some(cpu) = plan.cpu {
        // Float → integer: a positive vCPU count times the period, rounded; at least 1 ms.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let quota = ((cpu * CPU_PERIOD_US as f64).round() as u64).max(1000);
        resources["cpu"] = json!({"quota": quota, "period": CPU_PERIOD_US});
    }
    let mut env = plan.env.clone();
    for kv in &plan.gpu.env {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        env.retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        env.push(kv.clone());
    }
    let mut config = json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": plan.uid, "gid": plan.gid},
            "args": plan.args,
            "env": env,
            "cwd": if plan.cwd.is_empty() { "/" } else { plan.cwd.as_str() },
            "capabilities": {
                "bounding": CAPABILITIES, "effective": CAPABILITIES, "permitted": CAPABILITIES,
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": plan.nofile.0, "hard": plan.nofile.1}],
            "noNewPrivileges": true,
        },
        // The root is an overlay whose upper layer is the instance's own: writable, and thrown
        // away with the instance; the image's layer below it is never written.
        "root": {"path": "rootfs", "readonly": false},
        "hostname": plan.hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": plan.cgroups_path,
            "resources": resources,
            "namespaces": namespaces,
            "devices": devices,
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug",
                "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                "/proc/sysrq-trigger"],
        },
    });
    if !plan.gpu.hooks.is_empty() {
        let mut hooks = serde_json::Map::new();
        for h in &plan.gpu.hooks {
            let list = hooks
                .entry(h.hook_name.clone())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = list {
                list.push(json!({"path": h.path, "args": h.args, "env": h.env}));
            }
        }
        config["hooks"] = Value::Object(hooks);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::{BindMount, DeviceNode, Hook};

    fn plan() -> ContainerPlan {
        ContainerPlan {
            args: vec!["/app/server".into()],
            env: vec!["PATH=/bin".into(), "NVIDIA_VISIBLE_DEVICES=all".into()],
            cwd: "/srv".into(),
            uid: 1000,
            gid: 100,
            hostname: "fn-1".into(),
            memory_mb: Some(256),
            cpu: Some(1.5),
            netns: Some("/var/run/netns/gfn7".into()),
            cgroups_path: "/gpufn-abc-fn-1".into(),
            files: vec![("/data/fn-1/hosts".into(), "/etc/hosts".into())],
            gpu: GpuEdits::default(),
            nofile: (1024, 4096),
        }
    }

    #[test]
    fn limits_namespaces_and_process_come_from_the_plan() {
        let c = runtime_config(&plan());
        assert_eq!(c["process"]["args"], json!(["/app/server"]));
        assert_eq!(c["process"]["cwd"], "/srv");
        assert_eq!(c["process"]["user"], json!({"uid": 1000, "gid": 100}));
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(
            c["process"]["rlimits"][0],
            json!({"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 4096})
        );
        let mem = &c["linux"]["resources"]["memory"];
        assert_eq!(mem["limit"], 256 * 1024 * 1024);
        assert_eq!(mem["swap"], 256 * 1024 * 1024);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 150_000);
        assert_eq!(c["linux"]["cgroupsPath"], "/gpufn-abc-fn-1");
        let ns: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .expect("namespaces")
            .iter()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(c["linux"]["namespaces"][4]["path"], "/var/run/netns/gfn7");
        assert_eq!(c["root"]["readonly"], false);
        assert!(
            c["mounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["destination"] == "/etc/hosts" && m["source"] == "/data/fn-1/hosts")
        );
        assert!(c.get("hooks").is_none());
    }

    #[test]
    fn host_network_has_no_network_namespace_and_no_limits_when_unset() {
        let mut p = plan();
        p.netns = None;
        p.memory_mb = None;
        p.cpu = None;
        let c = runtime_config(&p);
        assert!(
            !c["linux"]["namespaces"]
                .as_array()
                .expect("ns")
                .iter()
                .any(|n| n["type"] == "network")
        );
        assert!(c["linux"]["resources"].get("memory").is_none());
        assert!(c["linux"]["resources"].get("cpu").is_none());
    }

    #[test]
    fn gpu_edits_add_devices_allow_rules_mounts_hooks_and_replace_env() {
        let mut p = plan();
        p.gpu = GpuEdits {
            env: vec!["NVIDIA_VISIBLE_DEVICES=3".into()],
            devices: vec![DeviceNode {
                path: "/dev/nvidia3".into(),
                kind: 'c',
                major: 195,
                minor: 3,
            }],
            mounts: vec![BindMount {
                host_path: "/usr/lib/libcuda.so.1".into(),
                container_path: "/usr/lib/libcuda.so.1".into(),
                options: vec!["ro".into(), "rbind".into()],
            }],
            hooks: vec![Hook {
                hook_name: "createContainer".into(),
                path: "/usr/bin/nvidia-cdi-hook".into(),
                args: vec!["nvidia-cdi-hook".into(), "update-ldcache".into()],
                env: vec![],
            }],
            source: "cdi:x".into(),
        };
        let c = runtime_config(&p);
        assert_eq!(c["linux"]["devices"][0]["path"], "/dev/nvidia3");
        assert_eq!(c["linux"]["devices"][0]["minor"], 3);
        let rules = c["linux"]["resources"]["devices"]
            .as_array()
            .expect("rules");
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
        assert_eq!(rules[1]["allow"], true);
        assert_eq!(rules[1]["major"], 195);
        let env = c["process"]["env"].as_array().expect("env");
        assert!(env.contains(&json!("NVIDIA_VISIBLE_DEVICES=3")));
        assert!(!env.contains(&json!("NVIDIA_VISIBLE_DEVICES=all")));
        assert_eq!(
            c["hooks"]["createContainer"][0]["path"],
            "/usr/bin/nvidia-cdi-hook"
        );
        assert!(
            c["mounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .any(|m| m["destination"] == "/usr/lib/libcuda.so.1")
        );
    }

    #[test]
    fn the_command_replaces_entrypoint_and_cmd() {
        let img = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["--flag".into()],
            ..ImageConfig::default()
        };
        assert_eq!(
            container_args(&img, &[]).expect("args"),
            ["/entry", "--flag"]
        );
        assert_eq!(
            container_args(&img, &["/other".to_string()]).expect("args"),
            ["/other"]
        );
        let err = container_args(&ImageConfig::default(), &[]).expect_err("none");
        assert!(err.contains("command"), "{err}");
    }

    #[test]
    fn env_layers_override_in_order() {
        let img = ImageConfig {
            env: vec!["A=image".into(), "B=image".into(), "PATH=/opt/bin".into()],
            ..ImageConfig::default()
        };
        let env = container_env(&img, [("B", "spec"), ("C", "gpufn")]);
        assert_eq!(env, ["PATH=/opt/bin", "A=image", "B=spec", "C=gpufn"]);
    }

    #[test]
    fn users_resolve_against_the_image_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("etc")).expect("etc");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1001:1002::/home/app:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nvideo:x:44:\n").expect("group");
        assert_eq!(resolve_user("", dir.path()), Ok((0, 0)));
        assert_eq!(resolve_user("app", dir.path()), Ok((1001, 1002)));
        assert_eq!(resolve_user("app:video", dir.path()), Ok((1001, 44)));
        assert_eq!(resolve_user("5:6", dir.path()), Ok((5, 6)));
        assert!(resolve_user("ghost", dir.path()).is_err());
    }
}
