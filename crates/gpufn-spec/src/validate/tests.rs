use super::*;

const FULL: &str = r#"
name: sd-turbo
runtime: process
command: ["python3", "server.py"]
workdir: .
env: {MODEL: sd-turbo}
gpu: {type: tesla-t4, memory_gb: 4}
cpu: 2
memory_mb: 8192
disk_mb: 10240
instance_concurrency: 1
health_check: {path: /health, startup_timeout_s: 600}
scaling: {min_instances: 0, max_instances: 30, idle_timeout_s: 300, max_queue: 1000}
request_timeout_s: 600
"#;

fn errors_of(yaml: &str) -> Vec<String> {
    match parse_yaml(yaml).and_then(|raw| raw.validate()) {
        Ok(_) => vec![],
        Err(e) => e.errors().iter().map(ToString::to_string).collect(),
    }
}

fn minimal(extra: &str) -> String {
    format!("name: f\ncommand: [python3, s.py]\ngpu: {{memory_gb: 1}}\n{extra}")
}

#[test]
fn the_issue_example_validates_with_its_values() {
    let spec = parse_yaml(FULL).and_then(|r| r.validate()).expect("valid");
    assert_eq!(spec.name, "sd-turbo");
    assert_eq!(spec.gpu.card_type.as_deref(), Some("tesla-t4"));
    assert_eq!(spec.gpu.memory_gb, 4);
    assert_eq!(spec.cpu, 2.0);
    assert_eq!(spec.env.get("MODEL").map(String::as_str), Some("sd-turbo"));
    assert_eq!(spec.scaling.idle_timeout.as_secs(), 300);
    assert_eq!(spec.scaling.max_queue, 1000);
}

#[test]
fn defaults_are_filled_in() {
    let spec = parse_yaml(&minimal(""))
        .and_then(|r| r.validate())
        .expect("valid");
    assert_eq!(spec.instance_concurrency, 1);
    assert_eq!(spec.runtime, Runtime::Process);
    assert_eq!(spec.workdir, ".");
    assert_eq!(spec.health_check.path, "/health");
    assert_eq!(spec.health_check.startup_timeout.as_secs(), 600);
    assert_eq!(spec.scaling.min_instances, 0);
    assert_eq!(spec.scaling.max_instances, 30);
    assert_eq!(spec.scaling.idle_timeout.as_secs(), 300);
    // The queue timeout follows the startup deadline unless set.
    assert_eq!(spec.scaling.queue_timeout.as_secs(), 660);
    assert_eq!(spec.request_timeout.as_secs(), 600);
    assert_eq!(spec.async_invoke.max_retries, 3);
    assert_eq!(spec.async_invoke.max_event_age.as_secs(), 18_000);
    assert_eq!(spec.async_invoke.on_success, None);
}

#[test]
fn broken_rules_name_the_field_and_the_rule() {
    let cases: &[(&str, &str)] = &[
        ("gpu: {memory_gb: 0}", "gpu.memory_gb: must be >= 1 (got 0)"),
        (
            "gpu: {memory_gb: -3}",
            "gpu.memory_gb: must be >= 1 (got -3)",
        ),
        ("gpu: {}", "gpu.memory_gb: is required"),
        (
            "instance_concurrency: 0",
            "instance_concurrency: must be >= 1 (got 0)",
        ),
        (
            "instance_concurrency: 201",
            "instance_concurrency: must be <= 200 (got 201)",
        ),
        (
            "scaling: {min_instances: 5, max_instances: 2}",
            "scaling.min_instances: must be <= scaling.max_instances",
        ),
        (
            "scaling: {max_queue: 0}",
            "scaling.max_queue: must be >= 1 (got 0)",
        ),
        (
            "scaling: {idle_timeout_s: -1}",
            "scaling.idle_timeout_s: must be >= 0 (got -1)",
        ),
        (
            "health_check: {path: health}",
            "health_check.path: must start with '/'",
        ),
        (
            "health_check: {startup_timeout_s: 0}",
            "health_check.startup_timeout_s: must be >= 1 (got 0)",
        ),
        (
            "request_timeout_s: 0",
            "request_timeout_s: must be >= 1 (got 0)",
        ),
        ("cpu: 0", "cpu: must be >= 0.05 (got 0)"),
        ("env: {PORT: '1'}", "env.PORT: is set by gpufn"),
        ("env: {GPUFN_X: '1'}", "env.GPUFN_X: is set by gpufn"),
        ("env: {'1BAD': x}", "env.1BAD: name must match"),
        ("runtime: docker", "runtime: must be one of: process"),
        ("command: []", "command: must not be empty"),
        (
            "async: {max_retries: 9}",
            "async.max_retries: must be <= 8 (got 9)",
        ),
        (
            "async: {max_event_age_s: 0}",
            "async.max_event_age_s: must be >= 1 (got 0)",
        ),
        (
            "async: {on_success: 'ftp://x'}",
            "async.on_success: must be an http:// URL",
        ),
        (
            "async: {on_failure: 'http://'}",
            "async.on_failure: must be an http:// URL with a host",
        ),
    ];
    for (extra, want) in cases {
        // Later keys override earlier ones in YAML mappings only when unique, so build each case
        // from scratch and replace the key it sets.
        let key = extra.split(':').next().unwrap_or_default();
        let base: String = minimal("")
            .lines()
            .filter(|l| !l.starts_with(&format!("{key}:")))
            .map(|l| format!("{l}\n"))
            .collect();
        let errs = errors_of(&format!("{base}{extra}\n"));
        assert!(
            errs.iter().any(|e| e.starts_with(want)),
            "case {extra:?}: want an error starting {want:?}, got {errs:?}"
        );
    }
}

#[test]
fn name_rules() {
    for bad in [
        "",
        "Upper",
        "has_underscore",
        "-lead",
        "trail-",
        &"a".repeat(64),
    ] {
        let errs = errors_of(&format!(
            "name: {bad:?}\ncommand: [x]\ngpu: {{memory_gb: 1}}\n"
        ));
        assert!(
            errs.iter().any(|e| e.starts_with("name: must be")),
            "{bad:?}: {errs:?}"
        );
    }
    for good in ["a", "sd-turbo", "x1-2-3", &"a".repeat(63)] {
        let errs = errors_of(&format!(
            "name: {good:?}\ncommand: [x]\ngpu: {{memory_gb: 1}}\n"
        ));
        assert!(errs.is_empty(), "{good:?}: {errs:?}");
    }
}

#[test]
fn unknown_fields_are_errors_with_their_path() {
    let errs = errors_of(&minimal("scaling: {max_instance: 3}"));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("scaling.max_instance: unknown field `max_instance`"),
        "{errs:?}"
    );
    let errs = errors_of(&minimal("gpus: 1"));
    assert!(errs[0].contains("unknown field `gpus`"), "{errs:?}");
}

#[test]
fn wrong_types_name_the_field() {
    let errs = errors_of(&minimal("instance_concurrency: lots"));
    assert!(
        errs[0].starts_with("instance_concurrency: invalid type"),
        "{errs:?}"
    );
    let errs = errors_of("name: f\ncommand: python3 s.py\ngpu: {memory_gb: 1}\n");
    assert!(errs[0].starts_with("command: invalid type"), "{errs:?}");
}

#[test]
fn all_broken_rules_are_reported_at_once() {
    let errs = errors_of("gpu: {memory_gb: 0}\ninstance_concurrency: 0\n");
    let fields: Vec<&str> = errs
        .iter()
        .map(|e| e.split(':').next().unwrap_or_default())
        .collect();
    assert_eq!(
        fields,
        ["name", "command", "gpu.memory_gb", "instance_concurrency"]
    );
}

#[test]
fn not_a_mapping_is_refused() {
    assert!(errors_of("- a\n- b\n")[0].starts_with("(document): must be a mapping"));
    // A syntax error names where it is.
    let errs = errors_of("name: [unclosed");
    assert!(errs[0].starts_with("name:"), "{errs:?}");
}

#[test]
fn non_finite_numbers_and_duplicate_keys_are_refused_naming_the_field() {
    for (yaml, field) in [
        ("cpu: .nan", "cpu"),
        ("cpu: .inf", "cpu"),
        ("memory_mb: -.inf", "memory_mb"),
    ] {
        let errs = errors_of(&minimal(&format!("{yaml}\n")));
        assert!(
            errs.len() == 1 && errs[0].starts_with(&format!("{field}: must be a finite number")),
            "{yaml}: {errs:?}"
        );
    }
    let json = |text: &str| match parse_json(text.as_bytes()).and_then(|r| r.validate()) {
        Ok(_) => vec![],
        Err(e) => e
            .errors()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    };
    let base = r#""name": "f", "command": ["a"], "gpu": {"memory_gb": 1}"#;
    let errs = json(&format!(r#"{{{base}, "cpu": 1e309}}"#));
    assert!(errs[0].starts_with("cpu:"), "{errs:?}");
    let errs = json(r#"{"name": "f", "command": ["a"], "gpu": {"memory_gb": 1e999}}"#);
    assert!(errs[0].starts_with("gpu.memory_gb:"), "{errs:?}");
    let errs = json(&format!(r#"{{{base}, "name": "g"}}"#));
    assert!(
        errs[0].starts_with("name:") && errs[0].contains("twice"),
        "{errs:?}"
    );
    let errs = json(&format!(r#"{{{base}, "env": {{"A": "1", "A": "2"}}}}"#));
    assert!(
        errs[0].starts_with("env.A:") && errs[0].contains("twice"),
        "{errs:?}"
    );
    // Trailing bytes after the document are still refused.
    let errs = json(&format!(r#"{{{base}}} x"#));
    assert!(errs[0].starts_with("(document):"), "{errs:?}");
    assert!(json(&format!(r#"{{{base}}}"#)).is_empty());
}

#[test]
fn to_raw_round_trips() {
    let spec = parse_yaml(FULL).and_then(|r| r.validate()).expect("valid");
    let again = spec.to_raw().validate().expect("still valid");
    assert_eq!(spec, again);
    let json = serde_json::to_vec(&spec.to_raw()).expect("json");
    assert_eq!(
        parse_json(&json).and_then(|r| r.validate()).expect("valid"),
        spec
    );
}

const CONTAINER: &str = r#"
name: sd-turbo
runtime: container
image: registry.example.com/team/sd-turbo:1.2
port: 9000
registry_auth: {username_env: REG_USER, password_env: REG_PASS}
gpu: {memory_gb: 4}
memory_mb: 4096
"#;

#[test]
fn the_container_example_validates_and_round_trips() {
    let spec = parse_yaml(CONTAINER)
        .and_then(|r| r.validate())
        .expect("valid");
    assert_eq!(spec.runtime, Runtime::Container);
    let c = spec.container.clone().expect("container");
    assert_eq!(c.image, "registry.example.com/team/sd-turbo:1.2");
    assert_eq!(c.port, 9000);
    assert!(!c.host_network);
    assert_eq!(
        c.registry_auth,
        Some(RegistryAuth::Env {
            username_env: "REG_USER".into(),
            password_env: "REG_PASS".into()
        })
    );
    // No command: the image's ENTRYPOINT/CMD; no workdir: the image's WORKDIR.
    assert!(spec.command.is_empty());
    assert_eq!(spec.workdir, "");
    assert_eq!(spec.to_raw().validate().expect("again"), spec);
}

#[test]
fn container_rules_name_their_fields() {
    let errs = errors_of("name: f\nruntime: container\ngpu: {memory_gb: 1}\n");
    assert!(
        errs.iter().any(|e| e.starts_with("image: is required")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("port: is required")),
        "{errs:?}"
    );
    let errs = errors_of(
        "name: f\nruntime: container\nimage: 'a b'\nport: 70000\nnetwork: bridge\n\
         workdir: rel\nregistry_auth: {username_env: '1x'}\ngpu: {memory_gb: 1}\n",
    );
    for field in [
        "image:",
        "port:",
        "network:",
        "workdir:",
        "registry_auth.username_env:",
        "registry_auth.password_env:",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(field)),
            "{field} in {errs:?}"
        );
    }
    // Container fields on a process function are mistakes, not silently ignored.
    let errs = errors_of(&minimal("image: x\nport: 80\n"));
    assert!(
        errs.iter()
            .any(|e| e == "image: is only for runtime: container"),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("port: is only")),
        "{errs:?}"
    );
}

#[test]
fn trigger_auth_defaults_to_token_and_takes_anonymous() {
    let base = "name: f\ncommand: [x]\ngpu: {memory_gb: 1}\n";
    let spec = crate::parse_yaml(base).unwrap().validate().unwrap();
    assert_eq!(spec.auth, crate::TriggerAuth::Token);
    let anon = crate::parse_yaml(&format!("{base}auth: {{type: anonymous}}\n"))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(anon.auth, crate::TriggerAuth::Anonymous);
    assert_eq!(
        anon.to_raw().validate().unwrap().auth,
        crate::TriggerAuth::Anonymous
    );
    let bad = crate::parse_yaml(&format!("{base}auth: {{type: public}}\n"))
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(bad.contains("auth.type") && bad.contains("public"), "{bad}");
}

#[test]
fn secrets_are_named_never_inlined() {
    let base = "name: f\ncommand: [x]\ngpu: {memory_gb: 1}\n";
    let spec = crate::parse_yaml(&format!(
        "{base}env: {{A: b}}\nenv_from_secrets: {{HF_TOKEN: hf-token}}\n"
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(spec.env_from_secrets["HF_TOKEN"], "hf-token");
    assert_eq!(spec.to_raw().validate().unwrap(), spec);
    let errs = errors_of(&format!(
        "{base}env: {{A: b}}\nenv_from_secrets: {{A: x, PORT: y, B: 'Bad Name'}}\n"
    ));
    assert!(
        errs.iter().any(|e| e.starts_with("env_from_secrets.A")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("env_from_secrets.PORT")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.starts_with("env_from_secrets.B")),
        "{errs:?}"
    );
}

#[test]
fn registry_auth_takes_a_secret_or_two_variables() {
    let base =
        "name: f\nruntime: container\nimage: r.example/a:1\nport: 9000\ngpu: {memory_gb: 1}\n";
    let spec = crate::parse_yaml(&format!("{base}registry_auth: {{secret: reg-login}}\n"))
        .unwrap()
        .validate()
        .unwrap();
    assert_eq!(
        spec.container.as_ref().unwrap().registry_auth,
        Some(crate::RegistryAuth::Secret {
            secret: "reg-login".into()
        })
    );
    assert_eq!(spec.to_raw().validate().unwrap(), spec);
    let errs = errors_of(&format!(
        "{base}registry_auth: {{secret: x, username_env: U, password_env: P}}\n"
    ));
    assert!(
        errs.iter().any(|e| e.starts_with("registry_auth")),
        "{errs:?}"
    );
}

#[test]
fn lifecycle_hooks_are_a_path_or_a_command_with_a_timeout() {
    let spec = parse_yaml(&minimal(
        "lifecycle:\n  initializer: {path: /initialize, timeout_s: 120}\n  pre_stop: {command: [sh, -c, 'echo bye'], timeout_s: 5}\n",
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(
        spec.lifecycle.initializer,
        Some(Hook {
            action: HookAction::Http {
                path: "/initialize".into()
            },
            timeout: Duration::from_secs(120)
        })
    );
    assert!(spec.lifecycle.has_command());
    assert_eq!(spec.to_raw().validate().unwrap(), spec);
    // Defaults: 300 s for the initializer, 30 s for pre_stop; none at all without `lifecycle`.
    let d = parse_yaml(&minimal(
        "lifecycle: {initializer: {path: /i}, pre_stop: {path: /p}}\n",
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(d.lifecycle.initializer.unwrap().timeout.as_secs(), 300);
    assert_eq!(d.lifecycle.pre_stop.unwrap().timeout.as_secs(), 30);
    let none = parse_yaml(&minimal("")).unwrap().validate().unwrap();
    assert_eq!(none.lifecycle, Lifecycle::default());
    assert!(none.to_raw().lifecycle.is_none());

    let errors = errors_of(&minimal(
        "lifecycle:\n  initializer: {path: /i, command: [x]}\n  pre_stop: {path: 'no slash', timeout_s: 0}\n",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("lifecycle.initializer") && e.contains("exactly one")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("lifecycle.pre_stop.path")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("lifecycle.pre_stop.timeout_s")),
        "{errors:?}"
    );
    let errors = errors_of(&minimal("lifecycle: {initializer: {command: []}}\n"));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("lifecycle.initializer.command")),
        "{errors:?}"
    );
    assert!(!errors_of(&minimal("lifecycle: {initialiser: {path: /i}}\n")).is_empty());
}

#[test]
fn schedules_and_target_tracking_are_checked_and_round_trip() {
    let spec = parse_yaml(&minimal(
        "scaling:\n  max_instances: 12\n  schedules:\n    - {name: workday, cron: '0 8 * * 1-5', timezone: Asia/Shanghai, min_instances: 4}\n    - {name: night, cron: '0 20 * * *', timezone: Asia/Shanghai, min_instances: 0}\n  target_utilization: 0.6\n  max_provisioned: 10\n",
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(spec.scaling.schedules.len(), 2);
    assert_eq!(spec.scaling.schedules[0].timezone, "Asia/Shanghai");
    assert!(spec.scaling.schedules[0].to_policy().is_some());
    assert_eq!(spec.scaling.target_utilization(), Some(0.6));
    assert_eq!(spec.scaling.max_provisioned, 10);
    assert_eq!(spec.to_raw().validate().unwrap(), spec);
    // The zone defaults to UTC.
    let utc = parse_yaml(&minimal(
        "scaling: {schedules: [{name: a, cron: '@hourly', min_instances: 1}]}\n",
    ))
    .unwrap()
    .validate()
    .unwrap();
    assert_eq!(utc.scaling.schedules[0].timezone, "UTC");

    let errors = errors_of(&minimal(
        "scaling:\n  max_instances: 3\n  schedules:\n    - {name: a, cron: '0 8 * *', timezone: Mars/Base, min_instances: 5}\n    - {name: a, cron: '0 8 * * *'}\n  target_utilization: 1.5\n",
    ));
    for want in [
        "scaling.schedules[0].cron",
        "scaling.schedules[0].timezone",
        "scaling.schedules[0].min_instances",
        "scaling.schedules[1].name",
        "scaling.target_utilization",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{want}: {errors:?}"
        );
    }
    let errors = errors_of(&minimal("scaling: {max_provisioned: 3}\n"));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("scaling.max_provisioned") && e.contains("target_utilization")),
        "{errors:?}"
    );
    let errors = errors_of(&minimal(
        "scaling: {min_instances: 2, target_utilization: 0.5, max_provisioned: 1}\n",
    ));
    assert!(
        errors.iter().any(|e| e.contains("scaling.max_provisioned")),
        "{errors:?}"
    );
}

#[test]
fn the_default_keep_alive_is_predictive_unless_an_idle_timeout_is_given() {
    let spec = |extra: &str| parse_yaml(&minimal(extra)).unwrap().validate().unwrap();
    assert_eq!(spec("").scaling.keep_alive, KeepAliveMode::Predictive);
    assert_eq!(
        spec("scaling: {idle_timeout_s: 60}\n").scaling.keep_alive,
        KeepAliveMode::Fixed
    );
    assert_eq!(
        spec("scaling: {keep_alive: fixed}\n").scaling.keep_alive,
        KeepAliveMode::Fixed
    );
    // Stored specs say which, so a later default does not change a deployed function.
    assert_eq!(
        spec("").to_raw().scaling.unwrap().keep_alive.as_deref(),
        Some("predictive")
    );
}

#[test]
fn a_schedule_that_never_matches_is_refused() {
    let errors = errors_of(&minimal(
        "scaling: {schedules: [{name: never, cron: '0 0 31 2 *', min_instances: 1}]}\n",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("scaling.schedules[0].cron") && e.contains("within a year")),
        "{errors:?}"
    );
}

#[test]
fn a_schedule_may_be_bounded_in_time() {
    let spec = parse_yaml(&minimal(
        "scaling: {schedules: [{name: launch, cron: '0 8 * * *', min_instances: 2, start_time: '2026-12-01T00:00:00Z', end_time: '2026-12-08T00:00:00+08:00'}]}\n",
    ))
    .unwrap()
    .validate()
    .unwrap();
    let s = &spec.scaling.schedules[0];
    assert_eq!(s.start_time.as_deref(), Some("2026-12-01T00:00:00Z"));
    assert!(s.to_policy().is_some());
    assert_eq!(spec.to_raw().validate().unwrap(), spec);
    let errors = errors_of(&minimal(
        "scaling: {schedules: [{name: a, cron: '0 8 * * *', start_time: tomorrow, end_time: '2026-01-01T00:00:00Z'}, {name: b, cron: '0 8 * * *', start_time: '2026-02-01T00:00:00Z', end_time: '2026-01-01T00:00:00Z'}]}\n",
    ));
    assert!(
        errors
            .iter()
            .any(|e| e.contains("scaling.schedules[0].start_time") && e.contains("RFC 3339")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("scaling.schedules[1].end_time") && e.contains("after")),
        "{errors:?}"
    );
}
