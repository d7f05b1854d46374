//! Reading a spec file the way the CLI sends it: a gpufn spec (relative `workdir` resolved against
//! the file), or a Serverless Devs `s.yaml` (edition 3.0.0, FC 3.0 props, plus the FC 2.0 GPU
//! fields), mapped to gpufn specs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use gpufn_spec::RawSpec;
use serde_json::Value;

/// One spec from a file, and the fields of the file that gpufn did not use (Serverless Devs).
#[derive(Debug)]
pub struct Loaded {
    pub spec: RawSpec,
    pub ignored: Vec<String>,
}

fn base_of(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn absolute(base: &Path, rel: &str) -> String {
    let p = base.join(rel);
    p.canonicalize().unwrap_or(p).to_string_lossy().into_owned()
}

/// Reads `file`: one gpufn spec, or every function of a Serverless Devs file.
pub fn load_all(file: &Path) -> anyhow::Result<Vec<Loaded>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or_default();
    if doc.get("edition").is_some() && doc.get("resources").is_some() {
        return serverless_devs(file, &doc);
    }
    let mut raw = gpufn_spec::parse_yaml(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    // A container's workdir is a path inside its image, not on this machine.
    if raw.runtime.as_deref() != Some("container") {
        raw.workdir = Some(absolute(
            &base_of(file),
            raw.workdir.as_deref().unwrap_or("."),
        ));
    }
    Ok(vec![Loaded {
        spec: raw,
        ignored: Vec::new(),
    }])
}

/// Props gpufn maps (FC 3.0 names and the FC 2.0 GPU fields).
const USED_PROPS: &[&str] = &[
    "functionName",
    "runtime",
    "cpu",
    "memorySize",
    "diskSize",
    "timeout",
    "instanceConcurrency",
    "environmentVariables",
    "gpuConfig",
    "customContainerConfig",
    "customRuntimeConfig",
    "code",
    "asyncInvokeConfig",
    "caPort",
    "instanceType",
    "gpuMemorySize",
];

fn serverless_devs(file: &Path, doc: &serde_yaml_ng::Value) -> anyhow::Result<Vec<Loaded>> {
    let edition = doc
        .get("edition")
        .and_then(|e| e.as_str())
        .unwrap_or_default();
    if !edition.starts_with("3.") {
        bail!(
            "{}: Serverless Devs edition {edition:?} is not supported (3.0.0 is)",
            file.display()
        );
    }
    let resources: BTreeMap<String, serde_yaml_ng::Value> = doc
        .get("resources")
        .cloned()
        .map(serde_yaml_ng::from_value)
        .transpose()
        .map_err(|e| anyhow!("{}: resources: {e}", file.display()))?
        .unwrap_or_default();
    let base = base_of(file);
    let gpu_types: BTreeMap<String, String> = gpufn_fc::mapping::DEFAULT_GPU_TYPES
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut out = Vec::new();
    for (key, res) in resources {
        let props: Value = serde_json::to_value(res.get("props").cloned().unwrap_or_default())
            .map_err(|e| anyhow!("resources.{key}.props: {e}"))?;
        let mut props = props;
        let name = props
            .get("functionName")
            .and_then(Value::as_str)
            .unwrap_or(&key)
            .to_string();
        // FC 2.0 GPU fields → FC 3.0.
        if let Some(obj) = props.as_object_mut() {
            let ca_port = obj.get("caPort").cloned();
            let instance_type = obj.get("instanceType").cloned();
            let gpu_mb = obj.get("gpuMemorySize").cloned();
            if gpu_mb.is_some() || instance_type.is_some() {
                let gpu = obj
                    .entry("gpuConfig")
                    .or_insert_with(|| serde_json::json!({}));
                if let Some(mb) = gpu_mb {
                    gpu["gpuMemorySize"] = mb;
                }
                if let Some(t) =
                    instance_type.filter(|t| t.as_str().is_some_and(|s| s.starts_with("fc.gpu")))
                {
                    gpu["gpuType"] = t;
                }
            }
            if let Some(port) = ca_port {
                for k in ["customContainerConfig", "customRuntimeConfig"] {
                    if let Some(c) = obj.get_mut(k) {
                        if c.get("port").is_none() {
                            c["port"] = port.clone();
                        }
                    }
                }
            }
        }
        let code_dir = props
            .get("code")
            .and_then(Value::as_str)
            .map(|c| absolute(&base, c));
        let spec = gpufn_fc::mapping::to_spec(&name, &props, code_dir.as_deref(), &gpu_types)
            .map_err(|e| anyhow!("{}: resources.{key}.props: {}", file.display(), e.0))?;
        let mut ignored: Vec<String> = props
            .as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !USED_PROPS.contains(&k.as_str()))
                    .map(|k| format!("resources.{key}.props.{k}"))
                    .collect()
            })
            .unwrap_or_default();
        ignored.sort();
        out.push(Loaded { spec, ignored });
    }
    if out.is_empty() {
        bail!("{}: no resources with props", file.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serverless_devs_file_maps_to_gpufn_specs_and_names_what_it_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("code")).expect("code");
        let file = dir.path().join("s.yaml");
        std::fs::write(
            &file,
            "edition: 3.0.0\nname: app\naccess: default\nvars:\n  region: cn-hangzhou\n\
             resources:\n  sd:\n    component: fc3\n    props:\n      region: ${vars.region}\n\
             \x20     functionName: sd-turbo\n      runtime: custom-container\n      cpu: 2\n\
             \x20     memorySize: 8192\n      instanceConcurrency: 1\n      role: acs:ram::1:role/x\n\
             \x20     customContainerConfig:\n        image: registry.example.com/sd:1\n\
             \x20     caPort: 9000\n      instanceType: fc.gpu.tesla.1\n      gpuMemorySize: 16384\n\
             \x20 web:\n    component: fc3\n    props:\n      functionName: web\n\
             \x20     runtime: custom.debian10\n      code: ./code\n\
             \x20     customRuntimeConfig: {command: [python3, app.py]}\n\
             \x20     gpuConfig: {gpuMemorySize: 4096}\n      vpcConfig: {vpcId: v}\n",
        )
        .expect("write");
        let loaded = load_all(&file).expect("load");
        assert_eq!(loaded.len(), 2);
        let sd = &loaded[0];
        assert_eq!(sd.spec.name.as_deref(), Some("sd-turbo"));
        assert_eq!(sd.spec.port, Some(9000));
        let gpu = sd.spec.gpu.clone().expect("gpu");
        assert_eq!(
            (gpu.card_type.as_deref(), gpu.memory_gb),
            (Some("tesla-t4"), Some(16))
        );
        assert_eq!(
            sd.ignored,
            ["resources.sd.props.region", "resources.sd.props.role"]
        );
        assert!(sd.spec.validate().is_ok());
        let web = &loaded[1];
        assert!(
            web.spec
                .workdir
                .as_deref()
                .is_some_and(|w| w.ends_with("/code"))
        );
        assert_eq!(web.ignored, ["resources.web.props.vpcConfig"]);
    }

    #[test]
    fn a_container_spec_keeps_its_workdir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gpufn.yaml");
        std::fs::write(
            &file,
            "name: c\nruntime: container\nimage: x/y:1\nport: 80\nworkdir: /srv\ngpu: {memory_gb: 1}\n",
        )
        .expect("write");
        assert_eq!(
            load_all(&file).expect("load")[0].spec.workdir.as_deref(),
            Some("/srv")
        );
    }
}
