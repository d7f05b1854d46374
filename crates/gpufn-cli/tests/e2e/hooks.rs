//! Lifecycle hooks: the initializer before an instance's first request, pre_stop before its stop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::common::*;

/// A directory the instances (another user) can write into, for what outlives them.
fn shared_dir(dir: &Path) -> PathBuf {
    let out = dir.join("shared");
    std::fs::create_dir(&out).unwrap();
    for d in [dir, out.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    out
}

async fn work(s: &Server, function: &str) -> (reqwest::StatusCode, bool, Value) {
    let resp = s
        .http
        .get(s.url(&format!("/function/{function}/work")))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let cold = resp
        .headers()
        .get("x-gpufn-cold-start")
        .is_some_and(|v| v == "true");
    (status, cold, resp.json().await.unwrap())
}

#[tokio::test]
async fn the_initializer_runs_once_per_instance_before_its_first_request_and_is_billed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn(
        "init",
        "env: {INIT_MS: '300'}\nlifecycle: {initializer: {path: /initialize, timeout_s: 10}}",
    )
    .await;
    let (status, cold, first) = work(&s, "init").await;
    assert_eq!(status, 200, "{first}");
    assert!(cold);
    assert_eq!(
        first["initialized"], 1,
        "initialized before the first request"
    );
    let h = &first["init_headers"];
    assert_eq!(h["x-fc-control-path"], "/initialize", "{h}");
    assert_eq!(h["x-fc-function-name"], "init");
    assert_eq!(h["x-fc-instance-id"], first["instance"]);
    assert!(h["x-fc-request-id"].as_str().is_some_and(|v| v.len() >= 32));
    let (_, cold, second) = work(&s, "init").await;
    assert!(!cold);
    assert_eq!(second["initialized"], 1, "once per instance");

    // Its own cold-start phase, in the record and the metrics.
    let starts = s.get_json("/api/v1/functions/init/cold-starts").await;
    let init_ms = starts[0]["initialize_ms"].as_f64().unwrap();
    assert!(init_ms >= 300.0, "{starts}");
    let metrics = s.get_text("/metrics").await;
    assert!(
        metric(
            &metrics,
            "gpufn_cold_start_duration_seconds_count{function=\"init\",phase=\"initialize\"}"
        ) == Some(1.0),
        "{metrics}"
    );
    // Billed as an invocation: two calls and the initializer.
    s.wait_for("calls done", Duration::from_secs(5), || async {
        s.instances("init").await[0]["in_flight"] == 0
    })
    .await;
    let bill = s.get_json("/api/v1/billing?function=init").await;
    assert_eq!(bill[0]["invocations"], 3, "{bill}");
}

#[tokio::test]
async fn a_failing_initializer_fails_the_start_with_its_reason_and_frees_the_card() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn(
        "badinit",
        "env: {INIT_FAIL: '1'}\nlifecycle: {initializer: {path: /initialize}}",
    )
    .await;
    let (status, _, v) = work(&s, "badinit").await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "start_failed", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("initializer POST /initialize failed: answered 500")
            && msg.contains("weights not found"),
        "{msg}"
    );
    // The instance's log says why, and nothing is left holding the card.
    let id = msg
        .split("instance ")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap();
    let log = s
        .get_text(&format!("/api/v1/functions/badinit/instances/{id}/logs"))
        .await;
    assert!(log.contains("cold start failed: initializer"), "{log}");
    s.wait_for("card released", Duration::from_secs(10), || async {
        s.get_json("/api/v1/gpus").await[0]["instance"].is_null()
    })
    .await;
    assert!(s.instances("badinit").await.is_empty());

    // A command initializer that outlives its timeout fails the start the same way.
    s.deploy_testfn(
        "slowinit",
        "lifecycle: {initializer: {command: [sleep, '30'], timeout_s: 1}}",
    )
    .await;
    let (status, _, v) = work(&s, "slowinit").await;
    assert_eq!(status, 504, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("initializer command [\"sleep\", \"30\"] did not finish within 1s"),
        "{msg}"
    );
}

#[tokio::test]
async fn pre_stop_runs_before_an_idle_release_and_before_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let out = shared_dir(dir.path());
    let file = out.join("pre-stop.log");
    let marker = out.join("init-command.log");
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn(
        "stopper",
        &format!(
            "env: {{PRE_STOP_FILE: {file:?}}}\nscaling: {{idle_timeout_s: 1}}\n\
             lifecycle:\n  pre_stop: {{path: /pre-stop, timeout_s: 5}}\n  \
             initializer: {{command: [sh, -c, 'echo init $GPUFN_INSTANCE_ID >> {}']}}",
            marker.display()
        ),
    )
    .await;
    let (_, _, first) = work(&s, "stopper").await;
    let a = first["instance"].as_str().unwrap().to_string();
    // The command ran inside the instance (its environment).
    let inits = std::fs::read_to_string(&marker).unwrap();
    assert_eq!(inits, format!("init {a}\n"));
    s.wait_for("idle release", Duration::from_secs(10), || async {
        s.instances("stopper").await.is_empty()
    })
    .await;
    let log = std::fs::read_to_string(&file).unwrap();
    assert_eq!(log, format!("pre-stop {a} GET /pre-stop\n"));

    let (_, cold, second) = work(&s, "stopper").await;
    assert!(cold);
    let b = second["instance"].as_str().unwrap().to_string();
    let resp = s
        .http
        .delete(s.url("/api/v1/functions/stopper"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    s.wait_for("deleted", Duration::from_secs(10), || async {
        std::fs::read_to_string(&file).is_ok_and(|l| l.lines().count() == 2)
    })
    .await;
    let log = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        log,
        format!("pre-stop {a} GET /pre-stop\npre-stop {b} GET /pre-stop\n")
    );
}

/// CPU time used so far by the cgroup of process `pid`, in nanoseconds (cgroup v1 `cpuacct` or
/// v2 `cpu.stat`).
fn cgroup_cpu_ns(pid: i64) -> u64 {
    let map = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in map.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        if ctrls.split(',').any(|c| c == "cpuacct") {
            let dir = format!("/sys/fs/cgroup/{ctrls}{path}");
            let dir = if Path::new(&dir).exists() {
                dir
            } else {
                format!("/sys/fs/cgroup/cpuacct{path}")
            };
            return std::fs::read_to_string(format!("{dir}/cpuacct.usage"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
        }
        if ctrls.is_empty() && Path::new(&format!("/sys/fs/cgroup{path}/cpu.stat")).exists() {
            let stat = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.stat")).unwrap();
            let usec: u64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            return usec * 1000;
        }
    }
    panic!("no cpu accounting cgroup for {pid}:\n{map}");
}

#[tokio::test]
async fn an_idle_provisioned_instance_is_frozen_uses_no_cpu_and_thaws_for_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let out = shared_dir(dir.path());
    let hooks = out.join("pre-freeze.log");
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn(
        "frozen",
        &format!(
            "env: {{BUSY_TICK_MS: '5', PRE_FREEZE_FILE: {hooks:?}}}\n\
             scaling: {{min_instances: 1, idle_mode: freeze}}\n\
             lifecycle: {{pre_freeze: {{path: /pre-freeze, timeout_s: 5}}}}"
        ),
    )
    .await;
    let frozen = || async {
        let list = s.instances("frozen").await;
        list.len() == 1 && list[0]["frozen"] == true
    };
    s.wait_for(
        "the provisioned instance frozen",
        Duration::from_secs(30),
        frozen,
    )
    .await;
    let inst = s.instances("frozen").await[0].clone();
    let pid = inst["pid"].as_i64().unwrap();
    // Frozen: its background thread (a little work every 5 ms) gets no CPU at all.
    let before = cgroup_cpu_ns(pid);
    tokio::time::sleep(Duration::from_millis(500)).await; // the measurement window
    let after = cgroup_cpu_ns(pid);
    assert_eq!(before, after, "a frozen instance used CPU");
    assert_eq!(
        std::fs::read_to_string(&hooks).unwrap(),
        format!("pre-freeze {}\n", inst["id"].as_str().unwrap())
    );

    // A request thaws it: warm, same instance.
    let (status, cold, body) = work(&s, "frozen").await;
    assert_eq!(status, 200, "{body}");
    assert!(!cold, "a thaw is not a cold start");
    assert_eq!(body["instance"], inst["id"]);
    let metrics = s.get_text("/metrics").await;
    assert!(
        metric(&metrics, "gpufn_thaws_total{function=\"frozen\"}").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    // And it is frozen again once idle; thawed, it had used CPU.
    s.wait_for("frozen again", Duration::from_secs(30), frozen)
        .await;
    assert!(cgroup_cpu_ns(pid) > after);
    // Billed: its request at the active price (one second of 4 GB), the rest of its life at
    // the idle price (which grows by the second).
    s.wait_for("idle time billed", Duration::from_secs(10), || async {
        let bill = s.get_json("/api/v1/billing?function=frozen").await;
        bill[0]["idle_gb_seconds"].as_f64().unwrap() > 0.0
    })
    .await;
    let bill = s.get_json("/api/v1/billing?function=frozen").await;
    assert_eq!(bill[0]["gb_seconds"], 4.0, "{bill}");
    assert_eq!(bill[0]["invocations"], 1, "{bill}");

    // Deleting it stops it promptly though it is frozen (thawed first, then SIGTERM).
    s.wait_for("frozen before the delete", Duration::from_secs(30), frozen)
        .await;
    let t0 = std::time::Instant::now();
    let resp = s
        .http
        .delete(s.url("/api/v1/functions/frozen"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    s.wait_for("the process gone", Duration::from_secs(20), || async {
        !process_alive(pid)
    })
    .await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "stopping a frozen instance waited for the kill: {:?}",
        t0.elapsed()
    );
}
