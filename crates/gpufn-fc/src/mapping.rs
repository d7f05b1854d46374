//! Function Compute 3.0 function documents ↔ gpufn specs. Pure: the zip, if any, is unpacked by
//! the caller, which passes its directory.

use std::collections::BTreeMap;

use gpufn_spec::{
    RawAsync, RawGpu, RawHealthCheck, RawHook, RawLifecycle, RawScaling, RawSchedule, RawSpec,
};
use serde_json::{Map, Value, json};

/// FC GPU type names → local card types, unless the server config says otherwise.
pub const DEFAULT_GPU_TYPES: &[(&str, &str)] = &[
    ("fc.gpu.tesla.1", "tesla-t4"),
    ("fc.gpu.ampere.1", "ampere-a10"),
    ("fc.gpu.ada.1", "ada-l20"),
    ("fc.gpu.hopper.1", "hopper-h100"),
];

/// An FC request that gpufn cannot take, in FC's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn i(v: &Value, k: &str) -> Result<Option<i64>, Invalid> {
    match v.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_i64()
            .or_else(|| x.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or_else(|| Invalid(format!("{k} must be a number"))),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Maps an FC function document (CreateFunction input, or the merged record of an update) to a
/// gpufn spec. `code_dir` is where a `custom*` runtime's zip was unpacked.
pub fn to_spec(
    name: &str,
    fc: &Value,
    code_dir: Option<&str>,
    gpu_types: &BTreeMap<String, String>,
) -> Result<RawSpec, Invalid> {
    let runtime = s(fc, "runtime").ok_or_else(|| Invalid("runtime is required".into()))?;
    let gpu = fc
        .get("gpuConfig")
        .filter(|g| !g.is_null())
        .ok_or_else(|| Invalid("gpuConfig is required: gpufn runs GPU functions".into()))?;
    let mb = i(gpu, "gpuMemorySize")?.ok_or_else(|| {
        Invalid("gpuConfig.gpuMemorySize is required (MB, a multiple of 1024)".into())
    })?;
    if mb <= 0 || mb % 1024 != 0 {
        return Err(Invalid(format!(
            "gpuConfig.gpuMemorySize must be a positive multiple of 1024 MB (got {mb})"
        )));
    }
    let card_type = match s(gpu, "gpuType") {
        None => None,
        Some(t) => Some(gpu_types.get(t).cloned().ok_or_else(|| {
            Invalid(format!(
                "gpuConfig.gpuType {t:?} is not mapped to a card type on this server (known: {})",
                gpu_types.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?),
    };
    let mut spec = RawSpec {
        name: Some(name.to_string()),
        gpu: Some(RawGpu {
            card_type,
            memory_gb: Some(mb / 1024),
        }),
        cpu: fc.get("cpu").and_then(Value::as_f64),
        memory_mb: i(fc, "memorySize")?,
        disk_mb: i(fc, "diskSize")?,
        instance_concurrency: i(fc, "instanceConcurrency")?,
        request_timeout_s: i(fc, "timeout")?,
        env: fc
            .get("environmentVariables")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_string),
                        )
                    })
                    .collect()
            }),
        ..RawSpec::default()
    };
    let health = |cfg: Option<&Value>| RawHealthCheck {
        path: Some(
            cfg.and_then(|c| c.get("healthCheckConfig"))
                .and_then(|h| s(h, "httpGetUrl"))
                .unwrap_or("/")
                .to_string(),
        ),
        startup_timeout_s: None,
    };
    match runtime {
        "custom-container" => {
            let c = fc.get("customContainerConfig").ok_or_else(|| {
                Invalid("customContainerConfig is required for custom-container".into())
            })?;
            spec.runtime = Some("container".into());
            spec.image = Some(
                s(c, "image")
                    .ok_or_else(|| Invalid("customContainerConfig.image is required".into()))?
                    .to_string(),
            );
            spec.port = Some(i(c, "port")?.unwrap_or(9000));
            let argv: Vec<String> = strings(c.get("entrypoint"))
                .into_iter()
                .chain(strings(c.get("command")))
                .collect();
            spec.command = (!argv.is_empty()).then_some(argv);
            spec.health_check = Some(health(Some(c)));
        }
        "custom" | "custom.debian10" | "custom.debian11" | "custom.debian12" => {
            let c = fc.get("customRuntimeConfig");
            let argv: Vec<String> = strings(c.and_then(|c| c.get("command")))
                .into_iter()
                .chain(strings(c.and_then(|c| c.get("args"))))
                .collect();
            if argv.is_empty() {
                return Err(Invalid(
                    "customRuntimeConfig.command is required for custom runtimes".into(),
                ));
            }
            spec.runtime = Some("process".into());
            spec.command = Some(argv);
            spec.workdir = Some(
                code_dir
                    .ok_or_else(|| Invalid("code.zipFile is required for custom runtimes".into()))?
                    .to_string(),
            );
            spec.health_check = Some(health(c));
        }
        other => {
            return Err(Invalid(format!(
                "runtime {other:?} is not supported: use custom-container, custom, custom.debian10, custom.debian11 or custom.debian12"
            )));
        }
    }
    if let Some(l) = fc.get("instanceLifecycleConfig").filter(|l| !l.is_null()) {
        // FC calls a custom runtime's hooks at fixed paths; a hook is on when it has a handler.
        let hook = |key: &str, path: &str| -> Result<Option<RawHook>, Invalid> {
            let Some(h) = l
                .get(key)
                .filter(|h| s(h, "handler").is_some_and(|v| !v.is_empty()))
            else {
                return Ok(None);
            };
            Ok(Some(RawHook {
                path: Some(path.to_string()),
                command: None,
                timeout_s: i(h, "timeout")?,
            }))
        };
        let lifecycle = RawLifecycle {
            initializer: hook("initializer", "/initialize")?,
            pre_stop: hook("preStop", "/pre-stop")?,
            pre_freeze: hook("preFreeze", "/pre-freeze")?,
        };
        spec.lifecycle = (lifecycle != RawLifecycle::default()).then_some(lifecycle);
    }
    if let Some(a) = fc.get("asyncInvokeConfig").filter(|a| !a.is_null()) {
        let dest = |k: &str| {
            a.get("destinationConfig")
                .and_then(|d| d.get(k))
                .and_then(|d| s(d, "destination"))
                .map(str::to_string)
        };
        spec.async_invoke = Some(RawAsync {
            max_retries: i(a, "maxAsyncRetryAttempts")?,
            max_event_age_s: i(a, "maxAsyncEventAgeInSeconds")?,
            on_success: dest("onSuccess"),
            on_failure: dest("onFailure"),
            ..RawAsync::default()
        });
    }
    Ok(spec)
}

/// Applies capacity settings (provisioned target, reserved concurrency) to a spec.
pub fn apply_capacity(spec: &mut RawSpec, min_instances: Option<i64>, max_instances: Option<i64>) {
    let scaling = spec.scaling.get_or_insert_with(RawScaling::default);
    if let Some(m) = min_instances {
        scaling.min_instances = Some(m);
    }
    if let Some(m) = max_instances {
        scaling.max_instances = Some(m);
    }
}

/// PutProvisionConfig's body as the spec's scaling fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Provisioning {
    /// `target`: provisioned instances (`min_instances`; at least target tracking's
    /// `minCapacity`).
    pub min_instances: i64,
    /// `scheduledActions`.
    pub schedules: Vec<RawSchedule>,
    /// `targetTrackingPolicies[0].metricTarget`.
    pub target_utilization: Option<f64>,
    /// `targetTrackingPolicies[0].maxCapacity`.
    pub max_provisioned: Option<i64>,
}

/// FC's `cron(…)` schedule expression (six fields, seconds first, as FC writes them; or five) →
/// a five-field pattern.
fn cron_from_fc(expr: &str) -> Result<String, Invalid> {
    let inner = expr
        .trim()
        .strip_prefix("cron(")
        .and_then(|e| e.strip_suffix(')'))
        .ok_or_else(|| {
            Invalid(format!(
                "scheduleExpression {expr:?}: only cron(...) expressions are supported (not at(...))"
            ))
        })?;
    let fields: Vec<&str> = inner.split_whitespace().collect();
    match fields.as_slice() {
        [seconds, rest @ ..] if rest.len() == 5 => {
            if *seconds != "0" {
                return Err(Invalid(format!(
                    "scheduleExpression {expr:?}: the seconds field must be 0 (provisioning changes at most once a minute)"
                )));
            }
            Ok(rest.join(" "))
        }
        five if five.len() == 5 => Ok(five.join(" ")),
        _ => Err(Invalid(format!(
            "scheduleExpression {expr:?}: cron(...) needs six fields (seconds minutes hours day month weekday)"
        ))),
    }
}

/// Reads PutProvisionConfig's body. A target-tracking policy's `startTime` / `endTime` are refused
/// rather than ignored (gpufn's target tracking has no bounds); scheduled actions keep theirs.
pub fn provisioning_from_fc(body: &Value) -> Result<Provisioning, Invalid> {
    let target = i(body, "target")?.ok_or_else(|| Invalid("target is required".into()))?;
    if target < 0 {
        return Err(Invalid("target must be >= 0".into()));
    }
    let unbounded = |kind: &str, v: &Value| -> Result<(), Invalid> {
        for k in ["startTime", "endTime"] {
            if s(v, k).is_some_and(|t| !t.is_empty()) {
                return Err(Invalid(format!(
                    "{kind}.{k} is not supported: gpufn's schedules have no start or end"
                )));
            }
        }
        Ok(())
    };
    let mut out = Provisioning {
        min_instances: target,
        ..Provisioning::default()
    };
    for a in body
        .get("scheduledActions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let expr = s(a, "scheduleExpression")
            .ok_or_else(|| Invalid("scheduledActions.scheduleExpression is required".into()))?;
        let time = |k: &str| s(a, k).filter(|t| !t.is_empty()).map(str::to_string);
        out.schedules.push(RawSchedule {
            name: s(a, "name").map(str::to_string),
            cron: Some(cron_from_fc(expr)?),
            timezone: s(a, "timeZone").map(str::to_string),
            min_instances: i(a, "target")?,
            start_time: time("startTime"),
            end_time: time("endTime"),
        });
    }
    let policies = body
        .get("targetTrackingPolicies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    match policies.as_slice() {
        [] => {}
        [t] => {
            unbounded("targetTrackingPolicies", t)?;
            if let Some(m) = s(t, "metricType") {
                if m != "ProvisionedConcurrencyUtilization" {
                    return Err(Invalid(format!(
                        "targetTrackingPolicies.metricType {m:?} is not supported (only ProvisionedConcurrencyUtilization)"
                    )));
                }
            }
            out.target_utilization = Some(
                t.get("metricTarget")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| {
                        Invalid("targetTrackingPolicies.metricTarget is required".into())
                    })?,
            );
            out.max_provisioned = i(t, "maxCapacity")?;
            if let Some(min) = i(t, "minCapacity")? {
                out.min_instances = out.min_instances.max(min);
            }
        }
        _ => {
            return Err(Invalid(
                "targetTrackingPolicies: at most one policy is supported".into(),
            ));
        }
    }
    Ok(out)
}

/// Puts PutProvisionConfig's settings into a spec (replacing any schedules and tracking).
pub fn apply_provisioning(spec: &mut RawSpec, p: &Provisioning) {
    let scaling = spec.scaling.get_or_insert_with(RawScaling::default);
    scaling.min_instances = Some(p.min_instances);
    scaling.schedules = (!p.schedules.is_empty()).then(|| p.schedules.clone());
    scaling.target_utilization = p.target_utilization;
    scaling.max_provisioned = p.target_utilization.and(p.max_provisioned);
}

/// Keeps the provisioning of `current` (set through PutProvisionConfig) in `spec` (an update of
/// the function document, which does not carry it).
pub fn keep_provisioning(spec: &mut RawSpec, current: &RawScaling) {
    let scaling = spec.scaling.get_or_insert_with(RawScaling::default);
    scaling.schedules.clone_from(&current.schedules);
    scaling.target_utilization = current.target_utilization;
    scaling.max_provisioned = current.max_provisioned;
}

/// GetProvisionConfig's `scheduledActions` and `targetTrackingPolicies` for a spec's scaling.
pub fn provisioning_to_fc(scaling: &RawScaling) -> (Value, Value) {
    let actions: Vec<Value> = scaling
        .schedules
        .iter()
        .flatten()
        .map(|a| {
            let mut v = json!({
                "name": a.name,
                "target": a.min_instances,
                "scheduleExpression": format!("cron(0 {})", a.cron.as_deref().unwrap_or_default()),
                "timeZone": a.timezone.as_deref().unwrap_or("UTC"),
            });
            if let Some(t) = &a.start_time {
                v["startTime"] = json!(t);
            }
            if let Some(t) = &a.end_time {
                v["endTime"] = json!(t);
            }
            v
        })
        .collect();
    let policies: Vec<Value> = scaling
        .target_utilization
        .map(|t| {
            json!({
                "name": "target-tracking",
                "metricType": "ProvisionedConcurrencyUtilization",
                "metricTarget": t,
                "minCapacity": scaling.min_instances,
                "maxCapacity": scaling.max_provisioned,
            })
        })
        .into_iter()
        .collect();
    (Value::Array(actions), Value::Array(policies))
}

/// Instances needed for `reserved` requests in flight at `concurrency` each (at least one).
pub fn instances_for(reserved: i64, concurrency: i64) -> i64 {
    (reserved / concurrency.max(1)).max(1)
}

/// The FC `Function` object for a gpufn function: the stored FC document's own fields, then what
/// the spec says, then the read-only fields.
pub fn to_fc(
    name: &str,
    spec: &RawSpec,
    fc_record: Option<&Value>,
    created: &str,
    modified: &str,
    gpu_types: &BTreeMap<String, String>,
) -> Value {
    let mut out: Map<String, Value> = fc_record
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    out.remove("code");
    let container = spec.runtime.as_deref() == Some("container");
    out.entry("runtime").or_insert_with(|| {
        json!(if container {
            "custom-container"
        } else {
            "custom.debian12"
        })
    });
    let gpu = spec.gpu.clone().unwrap_or_default();
    let fc_type = gpu.card_type.as_ref().and_then(|t| {
        gpu_types
            .iter()
            .find(|(_, local)| *local == t)
            .map(|(fc, _)| fc.clone())
    });
    let mut gpu_config = json!({"gpuMemorySize": gpu.memory_gb.unwrap_or(0) * 1024});
    if let Some(t) = fc_type {
        gpu_config["gpuType"] = json!(t);
    }
    out.insert("gpuConfig".into(), gpu_config);
    out.insert("functionName".into(), json!(name));
    out.insert("functionId".into(), json!(format!("gpufn-{name}")));
    out.insert(
        "functionArn".into(),
        json!(format!("acs:fc:local:gpufn:functions/{name}")),
    );
    out.insert("cpu".into(), json!(spec.cpu));
    out.insert("memorySize".into(), json!(spec.memory_mb));
    out.insert("diskSize".into(), json!(spec.disk_mb));
    out.insert("timeout".into(), json!(spec.request_timeout_s));
    out.insert(
        "instanceConcurrency".into(),
        json!(spec.instance_concurrency),
    );
    out.insert(
        "environmentVariables".into(),
        json!(spec.env.clone().unwrap_or_default()),
    );
    if container {
        let c = out
            .entry("customContainerConfig")
            .or_insert_with(|| json!({}));
        c["image"] = json!(spec.image);
        c["port"] = json!(spec.port);
        c["resolvedImageUri"] = json!(spec.image);
    }
    // The hooks as FC shows them: the stored document's handlers, the spec's timeouts.
    let stored = out
        .get("instanceLifecycleConfig")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let lifecycle = spec.lifecycle.clone().unwrap_or_default();
    let mut config = Map::new();
    for (key, hook) in [
        ("initializer", &lifecycle.initializer),
        ("preStop", &lifecycle.pre_stop),
        ("preFreeze", &lifecycle.pre_freeze),
    ] {
        if let Some(h) = hook {
            let handler = stored
                .get(key)
                .and_then(|v| s(v, "handler"))
                .unwrap_or(key)
                .to_string();
            config.insert(
                key.into(),
                json!({"handler": handler, "timeout": h.timeout_s}),
            );
        }
    }
    if config.is_empty() {
        out.remove("instanceLifecycleConfig");
    } else {
        out.insert("instanceLifecycleConfig".into(), Value::Object(config));
    }
    out.insert("createdTime".into(), json!(created));
    out.insert("lastModifiedTime".into(), json!(modified));
    out.insert("state".into(), json!("Active"));
    out.insert("lastUpdateStatus".into(), json!("Successful"));
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types() -> BTreeMap<String, String> {
        DEFAULT_GPU_TYPES
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn a_custom_container_function_maps_to_a_container_spec() {
        let fc = json!({
            "functionName": "sd", "runtime": "custom-container", "cpu": 2, "memorySize": 8192,
            "diskSize": 10240, "timeout": 300, "instanceConcurrency": 4,
            "environmentVariables": {"A": "1"},
            "gpuConfig": {"gpuMemorySize": 16384, "gpuType": "fc.gpu.tesla.1"},
            "customContainerConfig": {"image": "127.0.0.1:5000/sd:1", "port": 9000,
                "entrypoint": ["/app"], "command": ["--fp16"],
                "healthCheckConfig": {"httpGetUrl": "/ready"}},
            "asyncInvokeConfig": {"maxAsyncRetryAttempts": 2, "maxAsyncEventAgeInSeconds": 600}
        });
        let spec = to_spec("sd", &fc, None, &types()).expect("maps");
        assert_eq!(spec.runtime.as_deref(), Some("container"));
        assert_eq!(spec.image.as_deref(), Some("127.0.0.1:5000/sd:1"));
        assert_eq!(spec.port, Some(9000));
        assert_eq!(spec.command, Some(vec!["/app".into(), "--fp16".into()]));
        let gpu = spec.gpu.clone().expect("gpu");
        assert_eq!(
            (gpu.card_type.as_deref(), gpu.memory_gb),
            (Some("tesla-t4"), Some(16))
        );
        assert_eq!(
            spec.health_check.clone().and_then(|h| h.path).as_deref(),
            Some("/ready")
        );
        assert_eq!(
            spec.async_invoke.clone().and_then(|a| a.max_retries),
            Some(2)
        );
        assert!(spec.validate().is_ok(), "{:?}", spec.validate());
        let back = to_fc("sd", &spec, Some(&fc), "t0", "t1", &types());
        assert_eq!(
            back["gpuConfig"],
            json!({"gpuMemorySize": 16384, "gpuType": "fc.gpu.tesla.1"})
        );
        assert_eq!(back["functionName"], "sd");
        assert_eq!(back["state"], "Active");
    }

    #[test]
    fn instance_lifecycle_hooks_map_to_the_fixed_paths_and_back() {
        let fc = json!({"runtime": "custom-container", "gpuConfig": {"gpuMemorySize": 4096},
            "customContainerConfig": {"image": "r/i:1"},
            "instanceLifecycleConfig": {
                "initializer": {"handler": "true", "timeout": 120},
                "preStop": {"handler": "true", "timeout": 10}}});
        let spec = to_spec("f", &fc, None, &types()).expect("maps");
        let l = spec.lifecycle.clone().expect("lifecycle");
        assert_eq!(
            l.initializer,
            Some(RawHook {
                path: Some("/initialize".into()),
                command: None,
                timeout_s: Some(120)
            })
        );
        assert_eq!(
            l.pre_stop.and_then(|h| h.path).as_deref(),
            Some("/pre-stop")
        );
        let valid = spec.validate().expect("valid");
        let back = to_fc("f", &valid.to_raw(), Some(&fc), "t0", "t1", &types());
        assert_eq!(
            back["instanceLifecycleConfig"],
            json!({"initializer": {"handler": "true", "timeout": 120},
                   "preStop": {"handler": "true", "timeout": 10}})
        );
        // No handler: no hook.
        let off = json!({"runtime": "custom-container", "gpuConfig": {"gpuMemorySize": 4096},
            "customContainerConfig": {"image": "r/i:1"},
            "instanceLifecycleConfig": {"initializer": {"handler": "", "timeout": 3}}});
        let spec = to_spec("f", &off, None, &types()).expect("maps");
        assert!(spec.lifecycle.is_none());
        assert!(
            to_fc("f", &spec, None, "t0", "t1", &types())
                .get("instanceLifecycleConfig")
                .is_none()
        );
    }

    #[test]
    fn provision_config_schedules_and_tracking_map_both_ways() {
        let body = json!({"target": 1,
            "scheduledActions": [
                {"name": "day", "target": 4, "scheduleExpression": "cron(0 0 8 * * 1-5)", "timeZone": "Asia/Shanghai"},
                {"name": "night", "target": 0, "scheduleExpression": "cron(0 0 20 * * *)"}],
            "targetTrackingPolicies": [{"name": "t", "metricType": "ProvisionedConcurrencyUtilization",
                "metricTarget": 0.6, "minCapacity": 2, "maxCapacity": 10}]});
        let p = provisioning_from_fc(&body).expect("maps");
        assert_eq!(p.min_instances, 2, "minCapacity raises the floor");
        assert_eq!(p.schedules[0].cron.as_deref(), Some("0 8 * * 1-5"));
        assert_eq!(p.schedules[1].timezone, None);
        assert_eq!(
            (p.target_utilization, p.max_provisioned),
            (Some(0.6), Some(10))
        );
        let fc = json!({"runtime": "custom-container", "gpuConfig": {"gpuMemorySize": 4096},
            "customContainerConfig": {"image": "r/i:1"}});
        let mut spec = to_spec("f", &fc, None, &types()).expect("maps");
        spec.scaling = Some(RawScaling {
            max_instances: Some(12),
            ..RawScaling::default()
        });
        apply_provisioning(&mut spec, &p);
        let valid = spec.validate().expect("valid");
        let (actions, policies) = provisioning_to_fc(&valid.to_raw().scaling.expect("scaling"));
        assert_eq!(actions[0]["scheduleExpression"], "cron(0 0 8 * * 1-5)");
        assert_eq!(actions[0]["timeZone"], "Asia/Shanghai");
        assert_eq!(actions[1]["timeZone"], "UTC");
        assert_eq!(actions[0]["target"], 4);
        assert_eq!(policies[0]["metricTarget"], 0.6);
        // A bounded action keeps its bounds both ways.
        let bounded = json!({"target": 0, "scheduledActions": [{"name": "launch", "target": 2,
            "scheduleExpression": "cron(0 0 8 * * *)", "timeZone": "UTC",
            "startTime": "2026-12-01T00:00:00.000Z", "endTime": "2026-12-08T00:00:00.000Z"}]});
        let p = provisioning_from_fc(&bounded).expect("maps");
        assert_eq!(
            p.schedules[0].start_time.as_deref(),
            Some("2026-12-01T00:00:00.000Z")
        );
        let mut spec = to_spec("f", &fc, None, &types()).expect("maps");
        apply_provisioning(&mut spec, &p);
        let raw = spec.validate().expect("valid").to_raw();
        let (actions, _) = provisioning_to_fc(&raw.scaling.expect("scaling"));
        assert_eq!(actions, bounded["scheduledActions"]);
        assert_eq!(policies[0]["maxCapacity"], 10);

        for (bad, says) in [
            (
                json!({"target": 0, "scheduledActions": [{"scheduleExpression": "at(2026-01-01T00:00:00Z)"}]}),
                "only cron",
            ),
            (
                json!({"target": 0, "scheduledActions": [{"scheduleExpression": "cron(30 0 8 * * *)"}]}),
                "seconds field",
            ),
            (
                json!({"target": 0, "scheduledActions": [{"scheduleExpression": "cron(0 8 *)"}]}),
                "six fields",
            ),
            (
                json!({"target": 0, "targetTrackingPolicies": [{"metricTarget": 0.5, "startTime": "2026-01-01T00:00:00Z"}]}),
                "startTime",
            ),
            (
                json!({"target": 0, "targetTrackingPolicies": [{"metricType": "CPU", "metricTarget": 0.5}]}),
                "metricType",
            ),
            (json!({"target": -1}), ">= 0"),
        ] {
            let e = provisioning_from_fc(&bad).expect_err("refused").0;
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn a_custom_runtime_runs_its_command_in_the_unpacked_code() {
        let fc = json!({"runtime": "custom.debian10", "gpuConfig": {"gpuMemorySize": 4096},
            "customRuntimeConfig": {"command": ["python3"], "args": ["app.py"], "port": 9000}});
        let spec = to_spec("f", &fc, Some("/data/fc-code/f/abc"), &types()).expect("maps");
        assert_eq!(spec.runtime.as_deref(), Some("process"));
        assert_eq!(spec.command, Some(vec!["python3".into(), "app.py".into()]));
        assert_eq!(spec.workdir.as_deref(), Some("/data/fc-code/f/abc"));
        assert_eq!(spec.health_check.and_then(|h| h.path).as_deref(), Some("/"));
    }

    #[test]
    fn what_cannot_be_mapped_is_named() {
        let bad = |fc: Value| {
            to_spec("f", &fc, Some("/x"), &types())
                .expect_err("invalid")
                .0
        };
        assert!(
            bad(json!({"runtime": "python3.10", "gpuConfig": {"gpuMemorySize": 1024}}))
                .contains("python3.10")
        );
        assert!(bad(json!({"runtime": "custom"})).contains("gpuConfig"));
        assert!(
            bad(json!({"runtime": "custom", "gpuConfig": {"gpuMemorySize": 1000}}))
                .contains("1024")
        );
        assert!(bad(json!({"runtime": "custom", "gpuConfig": {"gpuMemorySize": 1024, "gpuType": "fc.gpu.x"}})).contains("fc.gpu.x"));
        assert!(
            bad(json!({"runtime": "custom", "gpuConfig": {"gpuMemorySize": 1024}}))
                .contains("command")
        );
    }

    #[test]
    fn capacity_in_instances() {
        assert_eq!(instances_for(10, 4), 2);
        assert_eq!(instances_for(1, 4), 1);
    }
}
