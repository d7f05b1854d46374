//! Deploy → cold start → serve → scale to zero, and what a call carries both ways.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn a_call_is_forwarded_whole_and_answered_with_gpufn_headers() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    s.deploy_testfn("echo", "env: {GREETING: hello}").await;

    let resp = s
        .http
        .put(s.url("/function/echo/echo?x=1&y=two"))
        .header("x-custom", "abc")
        .header("x-gpufn-request-id", "trace-123")
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers().clone();
    assert_eq!(h["x-gpufn-request-id"], "trace-123");
    assert_eq!(
        h["x-gpufn-cold-start"], "true",
        "first call at zero is a cold start"
    );
    assert_eq!(
        h["x-app-header"], "from-app",
        "the app's own headers come back"
    );
    let instance = h["x-gpufn-instance-id"].to_str().unwrap().to_string();
    assert!(instance.starts_with("echo-"), "{instance}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/echo");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["body"], "the body");
    assert_eq!(v["headers"]["x-custom"], "abc");
    assert_eq!(v["headers"]["x-gpufn-request-id"], "trace-123");
    assert_eq!(v["headers"]["x-forwarded-for"], "127.0.0.1");
    // The environment the instance gets.
    let env = &v["env"];
    assert_eq!(env["GPUFN_FUNCTION"], "echo");
    assert_eq!(env["GPUFN_INSTANCE_ID"], instance.as_str());
    assert_eq!(env["GPUFN_GPU_MEMORY_GB"], "4");
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["CUDA_VISIBLE_DEVICES"], env["NVIDIA_VISIBLE_DEVICES"]);
    assert!(env["CUDA_VISIBLE_DEVICES"] == "0" || env["CUDA_VISIBLE_DEVICES"] == "1");
    assert!(env["PORT"].as_str().unwrap().parse::<u16>().is_ok());
    assert_eq!(
        env["SECRET_OF_SERVER"],
        Value::Null,
        "the server's environment does not leak"
    );

    // Second call: warm, same instance; and a fresh request id when none is sent.
    let resp = s
        .http
        .get(s.url("/function/echo/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "false");
    assert_eq!(resp.headers()["x-gpufn-instance-id"], instance.as_str());
    assert_eq!(resp.headers()["x-gpufn-request-id"].len(), 32);

    // The slot is given back once the body has been sent.
    resp.bytes().await.unwrap();
    s.wait_for("the slot back", Duration::from_secs(5), || async {
        s.instances("echo").await[0]["in_flight"] == 0
    })
    .await;

    // The instance list and the GPU list agree.
    let insts = s.instances("echo").await;
    assert_eq!(insts.len(), 1);
    assert_eq!(insts[0]["id"], instance.as_str());
    assert_eq!(insts[0]["state"], "ready");
    assert!(insts[0]["started_at"].as_str().unwrap().ends_with('Z'));
    assert!(insts[0]["cold_start"]["ready_ms"].as_f64().unwrap() > 0.0);
    let gpus = s.get_json("/api/v1/gpus").await;
    let held: Vec<&Value> = gpus
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["instance"] == instance.as_str())
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["allocated_gb"], 4);
    assert_eq!(held[0]["memory_gb"], 16);
    assert_eq!(held[0]["index"], insts[0]["gpu"]);

    // Unknown function: 404 with the error shape.
    let resp = s.http.get(s.url("/function/nope/")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "function_not_found");
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("stream", "instance_concurrency: 2").await;

    // Response streaming: the first chunk arrives while the app still holds the rest back.
    let resp = s
        .http
        .get(s.url("/function/stream/hold?key=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"first\n");
    // While the body streams, the request holds its slot.
    assert_eq!(s.instances("stream").await[0]["in_flight"], 1);
    // Only now let the app finish (a second request on the same instance's free slot).
    let r = s
        .http
        .post(s.url("/function/stream/release?key=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"second\n");

    // Request streaming: each line sent comes back before the next one is sent.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let req = s
        .http
        .post(s.url("/function/stream/stream-echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    tx.send(Ok(b"one\n".to_vec())).await.unwrap();
    let resp = req.await.unwrap();
    let mut body = resp.bytes_stream();
    assert_eq!(&body.next().await.unwrap().unwrap()[..], b"echo:one\n");
    tx.send(Ok(b"two\n".to_vec())).await.unwrap();
    assert_eq!(&body.next().await.unwrap().unwrap()[..], b"echo:two\n");
    drop(tx);
    let mut rest = Vec::new();
    while let Some(chunk) = body.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"done\n");
}

#[tokio::test]
async fn idle_instances_scale_to_zero_and_give_their_card_back() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("idle", "scaling: {idle_timeout_s: 1}")
        .await;
    let resp = s
        .http
        .get(s.url("/function/idle/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pid = s.instances("idle").await[0]["pid"].as_i64().unwrap();
    assert!(process_alive(pid));
    s.wait_for("scale to zero", Duration::from_secs(15), || async {
        s.instances("idle").await.is_empty()
    })
    .await;
    assert!(!process_alive(pid), "the instance process was stopped");
    let gpus = s.get_json("/api/v1/gpus").await;
    assert_eq!(gpus[0]["instance"], Value::Null, "card released");
    assert_eq!(s.get_json("/api/v1/quota").await["used"], 0);
    // And the next call is a cold start again.
    let resp = s
        .http
        .get(s.url("/function/idle/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "true");
}

#[tokio::test]
async fn min_instances_are_started_at_deploy_and_kept_warm() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    s.deploy_testfn("warm", "scaling: {min_instances: 1, idle_timeout_s: 1}")
        .await;
    s.wait_for(
        "a provisioned instance",
        Duration::from_secs(15),
        || async {
            s.instances("warm")
                .await
                .first()
                .is_some_and(|i| i["state"] == "ready")
        },
    )
    .await;
    let first = s.instances("warm").await[0]["id"].clone();
    // Served warm, no cold start.
    let resp = s
        .http
        .get(s.url("/function/warm/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "false");
    // Two requests at once need a second instance; once idle, that one goes and the first stays.
    let latch = Latch::new(dir.path(), "warm");
    let a = s
        .http
        .get(s.url(&format!("/function/warm/work?{}", latch.query())))
        .send();
    let b = async {
        s.wait_for(
            "the provisioned instance busy",
            Duration::from_secs(15),
            || async {
                s.instances("warm")
                    .await
                    .first()
                    .is_some_and(|i| i["in_flight"] == 1)
            },
        )
        .await;
        // The only instance is busy: this one needs (and cold-starts) a second instance.
        let r = s
            .http
            .get(s.url("/function/warm/work"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-gpufn-cold-start"], "true");
        assert_eq!(s.instances("warm").await.len(), 2);
        latch.release();
        r
    };
    let (ra, rb) = tokio::join!(a, b);
    assert_eq!(ra.unwrap().status(), 200);
    assert_eq!(rb.status(), 200);
    s.wait_for(
        "back to the one provisioned instance",
        Duration::from_secs(15),
        || async { s.instances("warm").await.len() == 1 },
    )
    .await;
    // Proving an absence takes time: two idle timeouts later the provisioned one is still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let insts = s.instances("warm").await;
    assert_eq!(insts.len(), 1);
    assert_eq!(insts[0]["id"], first);
}

#[tokio::test]
async fn redeploying_a_changed_spec_replaces_instances() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("rev", "env: {GREETING: one}").await;
    let v: Value = s
        .http
        .get(s.url("/function/rev/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["env"]["GREETING"], "one");
    // Same spec: no new revision.
    let (status, body) = s
        .deploy_yaml(&testfn_spec("rev", "env: {GREETING: one}"))
        .await;
    assert_eq!((status, body["revision"].as_i64()), (200, Some(1)));
    let (status, body) = s
        .deploy_yaml(&testfn_spec("rev", "env: {GREETING: two}"))
        .await;
    assert_eq!((status, body["revision"].as_i64()), (200, Some(2)));
    // With one card, the new revision can only start once the old instance is gone.
    let v: Value = s
        .http
        .get(s.url("/function/rev/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["env"]["GREETING"], "two");
}

#[tokio::test]
async fn the_histogram_keep_alive_releases_at_once_and_prewarms_before_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    // One-second bins: a caller that comes back 2.5 s after each answer puts every idle time in
    // bin 2, so once ten are seen the policy releases the instance at once, starts one again at
    // 1.8 s (90 % of the bin's start) less the last start's duration, and keeps it until 3.3 s.
    s.deploy_testfn(
        "pw",
        "scaling: {keep_alive: histogram, histogram_bin_s: 1, idle_timeout_s: 1}",
    )
    .await;
    let call = || async {
        let resp = s.http.get(s.url("/function/pw/work")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers()["x-gpufn-cold-start"]
            .to_str()
            .unwrap()
            .to_string()
    };
    // Learning: eleven calls, 2.5 s apart — the gap is the workload being modelled, not a wait
    // for some state. Ten idle times; while fewer, idle_timeout_s (1 s) applies: all cold.
    for i in 0..11 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        assert_eq!(
            call().await,
            "true",
            "call {i} comes after the 1 s fallback keep-alive"
        );
    }
    // Released at once (not kept for idle_timeout_s, not kept until the tail)…
    s.wait_for("the instance released", Duration::from_secs(3), || async {
        s.instances("pw").await.is_empty()
    })
    .await;
    // …and started again, with no request, ahead of the next expected call.
    s.wait_for("a pre-warmed instance", Duration::from_secs(5), || async {
        s.instances("pw")
            .await
            .first()
            .is_some_and(|i| i["state"] == "ready")
    })
    .await;
    assert_eq!(
        call().await,
        "false",
        "the next call finds the pre-warmed instance"
    );
    let v = s.get_json("/api/v1/functions/pw").await;
    assert_eq!(v["spec"]["scaling"]["histogram_bin_s"], 1);
    assert_eq!(v["stats"]["cold_starts"], 11, "{v}");
}

#[tokio::test]
async fn the_histogram_keep_alive_falls_back_to_idle_timeout_until_it_has_learned() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("h", "scaling: {keep_alive: histogram, idle_timeout_s: 1}")
        .await;
    let v = s.get_json("/api/v1/functions/h").await;
    assert_eq!(v["spec"]["scaling"]["keep_alive"], "histogram");
    let resp = s.http.get(s.url("/function/h/work")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // Fewer than ten idle times seen: the fixed idle_timeout_s applies, and it scales to zero.
    s.wait_for("scale to zero", Duration::from_secs(15), || async {
        s.instances("h").await.is_empty()
    })
    .await;
}

/// Issue 20, point 4: `keep_alive: predictive` live. A caller every 2 s: once the policy has seen
/// a few gaps, each instance is released as soon as its call is done (the card is free between
/// calls) and pre-warmed before the next one, which is warm.
#[tokio::test]
async fn a_periodic_caller_is_prewarmed_between_released_instances() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn(
        "periodic",
        "scaling: {keep_alive: predictive, idle_timeout_s: 1, cold_cost_s: 60}",
    )
    .await;
    let period = Duration::from_secs(2);
    let t0 = std::time::Instant::now();
    let mut warm_after_release = 0;
    for i in 0..9u32 {
        // The caller's own schedule (the workload), not a synchronization.
        tokio::time::sleep_until((t0 + period * i).into()).await;
        let resp = s
            .http
            .get(s.url("/function/periodic/work"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let cold = resp.headers()["x-gpufn-cold-start"] == "true";
        // Released after each call: the card is free before the next is due.
        let released = tokio::time::timeout(Duration::from_millis(900), async {
            loop {
                if s.instances("periodic").await.is_empty() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .is_ok();
        if i >= 6 {
            assert!(!cold, "call {i} was cold\n{}", s.log());
            assert!(released, "call {i}: the instance was kept through the gap");
            warm_after_release += 1;
        }
    }
    assert_eq!(warm_after_release, 3);
    // It says what it decided (gpufn get shows the same view).
    let view = s.get_json("/api/v1/functions/periodic").await;
    let why = view["status"]["keep_alive"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("releases idle instances at once, then pre-warms one"),
        "{view}"
    );
    // And counts its pre-warms' hits (the last three calls at least).
    let metrics = s.get_text("/metrics").await;
    let hits = metric(&metrics, "gpufn_prewarm_hits_total{function=\"periodic\"}").unwrap_or(0.0);
    assert!(hits >= 3.0, "{metrics}");
}

#[tokio::test]
async fn an_app_that_says_ready_on_notify_socket_is_served_without_waiting_for_a_probe() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    // Every probe made before the app's READY=1 hangs past the probe's 5 s timeout: only the
    // probe gpufn makes on the notification can pass quickly.
    s.deploy_testfn("notified", "env: {READY_BY_NOTIFY_MS: '300'}")
        .await;
    let t0 = std::time::Instant::now();
    let resp = s
        .http
        .get(s.url("/function/notified/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "true");
    let took = t0.elapsed();
    let starts = s.get_json("/api/v1/functions/notified/cold-starts").await;
    let ready_ms = starts[0]["ready_ms"].as_f64().unwrap();
    assert!(
        ready_ms < 4000.0 && took < Duration::from_secs(4),
        "ready after {ready_ms} ms, answered after {took:?}: the notification was not used\n{}",
        s.log()
    );
}
