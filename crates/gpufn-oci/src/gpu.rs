//! Giving a container its GPU the way the ecosystem does it.
//!
//! First choice: the Container Device Interface. A CDI spec (`/etc/cdi/*.yaml|json`,
//! `/var/run/cdi/*`), as `nvidia-ctk cdi generate` writes it, lists per device (by index, UUID or
//! `all`) the device nodes, mounts, environment and hooks a container needs; gpufn applies the
//! spec-wide edits plus those of the allocated card. Without a CDI spec: the card's
//! `/dev/nvidiaN`, the control nodes and the driver's user-space libraries bind-mounted read-only.
//! Either way `NVIDIA_VISIBLE_DEVICES` names the host card index.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Finds a host device node's `(kind, major, minor)` by path.
pub type NumbersFn = dyn Fn(&str) -> Option<(char, i64, i64)>;

/// A device node to create in the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    /// Major number.
    pub major: i64,
    /// Minor number.
    pub minor: i64,
}

/// A bind mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Host path.
    pub host_path: String,
    /// Path inside the container.
    pub container_path: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// An OCI hook from a CDI spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// OCI hook list: `createContainer`, `startContainer`, `prestart`, ...
    pub hook_name: String,
    /// Program.
    pub path: String,
    /// argv.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<String>,
}

/// What to add to a container's config for its GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuEdits {
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// Device nodes (also allowed in the device cgroup).
    pub devices: Vec<DeviceNode>,
    /// Bind mounts.
    pub mounts: Vec<BindMount>,
    /// Hooks.
    pub hooks: Vec<Hook>,
    /// Where the edits came from, for logs: `cdi:<file>`, `devices`, or `none`.
    pub source: String,
}

/// A CDI spec file (the fields gpufn uses).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiSpec {
    /// `vendor/class`, e.g. `nvidia.com/gpu`.
    pub kind: String,
    /// Devices.
    #[serde(default)]
    pub devices: Vec<CdiDevice>,
    /// Edits for any device of this spec.
    #[serde(default)]
    pub container_edits: CdiEdits,
}

/// One CDI device.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiDevice {
    /// `0`, `GPU-<uuid>`, `all`.
    pub name: String,
    /// Its edits.
    #[serde(default)]
    pub container_edits: CdiEdits,
}

/// CDI container edits.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiEdits {
    /// `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// Device nodes.
    #[serde(default)]
    pub device_nodes: Vec<CdiDeviceNode>,
    /// Mounts.
    #[serde(default)]
    pub mounts: Vec<CdiMount>,
    /// Hooks.
    #[serde(default)]
    pub hooks: Vec<CdiHook>,
}

/// CDI device node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiDeviceNode {
    /// Path in the container.
    pub path: String,
    /// Host path, when different.
    pub host_path: Option<String>,
    /// `c` / `b`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Major.
    pub major: Option<i64>,
    /// Minor.
    pub minor: Option<i64>,
}

/// CDI mount.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiMount {
    /// Host path.
    pub host_path: String,
    /// Container path.
    pub container_path: String,
    /// Options.
    #[serde(default)]
    pub options: Vec<String>,
}

/// CDI hook.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdiHook {
    /// OCI hook list name.
    pub hook_name: String,
    /// Program.
    pub path: String,
    /// argv.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment.
    #[serde(default)]
    pub env: Vec<String>,
}

/// Directories CDI specs are read from, in order.
pub const CDI_DIRS: &[&str] = &["/etc/cdi", "/var/run/cdi"];

/// Reads every CDI spec (YAML or JSON) in `dirs`; unreadable files are logged and skipped.
pub fn load_cdi_specs(dirs: &[&str]) -> Vec<(PathBuf, CdiSpec)> {
    let mut out = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if !matches!(ext, "yaml" | "yml" | "json") {
                continue;
            }
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|t| parse_cdi(&t));
            match parsed {
                Ok(spec) => out.push((path, spec)),
                Err(e) => tracing::warn!(path = %path.display(), "ignoring CDI spec: {e}"),
            }
        }
    }
    out
}

/// Parses one CDI spec (JSON is YAML).
pub fn parse_cdi(text: &str) -> Result<CdiSpec, String> {
    serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
}

/// What the host offers when there is no CDI spec.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostGpuFiles {
    /// Existing NVIDIA device nodes with their numbers: (path, kind, major, minor).
    pub devices: Vec<(String, char, i64, i64)>,
    /// Driver libraries found on the host (full paths).
    pub libraries: Vec<String>,
    /// Driver tools (`nvidia-smi`).
    pub binaries: Vec<String>,
}

const LIBRARY_PREFIXES: &[&str] = &[
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-opencl.so",
    "libnvidia-gpucomp.so",
];
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/lib/x86_64-linux-gnu",
];

impl HostGpuFiles {
    /// Looks at the real host for card `index`.
    pub fn probe(index: u32) -> Self {
        let mut devices = Vec::new();
        for path in [
            format!("/dev/nvidia{index}"),
            "/dev/nvidiactl".into(),
            "/dev/nvidia-uvm".into(),
            "/dev/nvidia-uvm-tools".into(),
            "/dev/nvidia-modeset".into(),
        ] {
            if let Some((kind, major, minor)) = device_numbers(Path::new(&path)) {
                devices.push((path, kind, major, minor));
            }
        }
        let mut libraries = Vec::new();
        for dir in LIBRARY_DIRS {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if LIBRARY_PREFIXES.iter().any(|p| name.starts_with(p)) {
                    libraries.push(e.path().to_string_lossy().into_owned());
                }
            }
        }
        libraries.sort();
        let binaries = ["/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump"]
            .iter()
            .filter(|p| Path::new(p).exists())
            .map(ToString::to_string)
            .collect();
        HostGpuFiles {
            devices,
            libraries,
            binaries,
        }
    }
}

/// `(kind, major, minor)` of a device node.
pub fn device_numbers(path: &Path) -> Option<(char, i64, i64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    let kind = if m.file_type().is_char_device() {
        'c'
    } else if m.file_type().is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = m.rdev();
    Some((
        kind,
        i64::from(libc::major(rdev)),
        i64::from(libc::minor(rdev)),
    ))
}

/// The edits for host card `index` (with optional `uuid`): from the first CDI spec of kind
/// `nvidia.com/gpu` that names the card, else from the host's device nodes and libraries.
/// `numbers` finds a device node's numbers when a CDI spec leaves them out.
pub fn gpu_edits(
    index: u32,
    uuid: Option<&str>,
    cdi: &[(PathBuf, CdiSpec)],
    host: &HostGpuFiles,
    numbers: &NumbersFn,
) -> GpuEdits {
    let visible = format!("NVIDIA_VISIBLE_DEVICES={index}");
    let wanted = index.to_string();
    for (path, spec) in cdi {
        if spec.kind != "nvidia.com/gpu" {
            continue;
        }
        let Some(device) = spec
            .devices
            .iter()
            .find(|d| d.name == wanted || Some(d.name.as_str()) == uuid)
        else {
            continue;
        };
        let mut edits = GpuEdits {
            source: format!("cdi:{}", path.display()),
            ..GpuEdits::default()
        };
        for e in [&spec.container_edits, &device.container_edits] {
            apply_cdi(&mut edits, e, numbers);
        }
        // The spec's own NVIDIA_VISIBLE_DEVICES (often `void`) is replaced: gpufn names the card.
        edits
            .env
            .retain(|v| !v.starts_with("NVIDIA_VISIBLE_DEVICES="));
        edits.env.push(visible);
        return edits;
    }
    if host.devices.is_empty() {
        return GpuEdits {
            env: vec![visible],
            source: "none".into(),
            ..GpuEdits::default()
        };
    }
    let bind = |p: &String| BindMount {
        host_path: p.clone(),
        container_path: p.clone(),
        options: vec!["ro".into(), "nosuid".into(), "nodev".into(), "rbind".into()],
    };
    GpuEdits {
        env: vec![visible],
        devices: host
            .devices
            .iter()
            .map(|(path, kind, major, minor)| DeviceNode {
                path: path.clone(),
                kind: *kind,
                major: *major,
                minor: *minor,
            })
            .collect(),
        mounts: host
            .libraries
            .iter()
            .chain(&host.binaries)
            .map(bind)
            .collect(),
        hooks: Vec::new(),
        source: "devices".into(),
    }
}

fn apply_cdi(edits: &mut GpuEdits, e: &CdiEdits, numbers: &NumbersFn) {
    edits.env.extend(e.env.iter().cloned());
    for d in &e.device_nodes {
        let host = d.host_path.as_deref().unwrap_or(&d.path);
        let found = match (d.kind.as_deref(), d.major, d.minor) {
            (Some(k), Some(major), Some(minor)) => {
                Some((k.chars().next().unwrap_or('c'), major, minor))
            }
            _ => numbers(host),
        };
        if let Some((kind, major, minor)) = found {
            edits.devices.push(DeviceNode {
                path: d.path.clone(),
                kind,
                major,
                minor,
            });
        } else {
            tracing::warn!(path = %host, "CDI device node not found on the host; skipped");
        }
    }
    for m in &e.mounts {
        edits.mounts.push(BindMount {
            host_path: m.host_path.clone(),
            container_path: m.container_path.clone(),
            options: if m.options.is_empty() {
                vec!["rbind".into(), "ro".into()]
            } else {
                m.options.clone()
            },
        });
    }
    for h in &e.hooks {
        edits.hooks.push(Hook {
            hook_name: h.hook_name.clone(),
            path: h.path.clone(),
            args: h.args.clone(),
            env: h.env.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVIDIA_CDI: &str = r#"
cdiVersion: 0.5.0
kind: nvidia.com/gpu
devices:
- name: "0"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia0
- name: "1"
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
- name: GPU-1234
  containerEdits:
    deviceNodes:
    - path: /dev/nvidia1
containerEdits:
  env:
  - NVIDIA_VISIBLE_DEVICES=void
  deviceNodes:
  - path: /dev/nvidiactl
  - path: /dev/nvidia-uvm
    type: c
    major: 510
    minor: 0
  hooks:
  - hookName: createContainer
    path: /usr/bin/nvidia-cdi-hook
    args: [nvidia-cdi-hook, update-ldcache, --folder, /usr/lib/x86_64-linux-gnu]
  mounts:
  - hostPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    containerPath: /usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15
    options: [ro, nosuid, nodev, bind]
"#;

    fn numbers(path: &str) -> Option<(char, i64, i64)> {
        match path {
            "/dev/nvidiactl" => Some(('c', 195, 255)),
            "/dev/nvidia0" => Some(('c', 195, 0)),
            "/dev/nvidia1" => Some(('c', 195, 1)),
            _ => None,
        }
    }

    fn cdi() -> Vec<(PathBuf, CdiSpec)> {
        vec![(
            PathBuf::from("/etc/cdi/nvidia.yaml"),
            parse_cdi(NVIDIA_CDI).expect("cdi"),
        )]
    }

    #[test]
    fn a_cdi_spec_gives_the_card_its_nodes_mounts_and_hooks() {
        let e = gpu_edits(1, None, &cdi(), &HostGpuFiles::default(), &numbers);
        assert_eq!(e.source, "cdi:/etc/cdi/nvidia.yaml");
        assert_eq!(e.env, ["NVIDIA_VISIBLE_DEVICES=1"]);
        let paths: Vec<&str> = e.devices.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia1"]);
        assert_eq!(e.devices[1].major, 510);
        assert_eq!(e.devices[2].minor, 1);
        assert_eq!(e.mounts.len(), 1);
        assert_eq!(e.hooks[0].hook_name, "createContainer");
    }

    #[test]
    fn a_card_can_be_found_by_uuid() {
        let e = gpu_edits(
            7,
            Some("GPU-1234"),
            &cdi(),
            &HostGpuFiles::default(),
            &numbers,
        );
        assert!(e.devices.iter().any(|d| d.path == "/dev/nvidia1"));
        assert_eq!(e.env, ["NVIDIA_VISIBLE_DEVICES=7"]);
    }

    #[test]
    fn without_cdi_the_host_nodes_and_driver_libraries_are_used() {
        let host = HostGpuFiles {
            devices: vec![
                ("/dev/nvidia2".into(), 'c', 195, 2),
                ("/dev/nvidiactl".into(), 'c', 195, 255),
            ],
            libraries: vec!["/usr/lib/x86_64-linux-gnu/libcuda.so.1".into()],
            binaries: vec!["/usr/bin/nvidia-smi".into()],
        };
        // A CDI spec that does not name card 2 is not used.
        let e = gpu_edits(2, None, &[], &host, &numbers);
        assert_eq!(e.source, "devices");
        assert_eq!(e.devices.len(), 2);
        assert_eq!(e.mounts.len(), 2);
        assert!(
            e.mounts
                .iter()
                .all(|m| m.options.contains(&"ro".to_string()))
        );
        let e = gpu_edits(5, None, &cdi(), &host, &numbers);
        assert_eq!(e.source, "devices");
    }

    #[test]
    fn no_gpu_on_the_host_means_only_the_variable() {
        let e = gpu_edits(0, None, &[], &HostGpuFiles::default(), &numbers);
        assert_eq!(e.source, "none");
        assert!(e.devices.is_empty() && e.mounts.is_empty());
        assert_eq!(e.env, ["NVIDIA_VISIBLE_DEVICES=0"]);
    }
}
