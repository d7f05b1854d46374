//! Billing, cold-start records and /metrics, read back after real invocations.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn invocations_are_billed_per_second_recorded_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("m", "").await; // gpu.memory_gb: 4
    // A 1.2 s request (billed 2 s) and a short one right after it, inside the second already paid
    // for (it adds nothing): 2 s × 4 GB = 8 GB-s.
    let r = s
        .http
        .get(s.url("/function/m/work?ms=1200"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-gpufn-cold-start"], "true");
    r.bytes().await.unwrap();
    let r = s
        .http
        .get(s.url("/function/m/work?ms=50"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-gpufn-cold-start"], "false");
    r.bytes().await.unwrap();
    s.wait_for("both periods closed", Duration::from_secs(5), || async {
        s.instances("m").await[0]["in_flight"] == 0
    })
    .await;

    let bill = s.get_json("/api/v1/billing?function=m").await;
    let row = &bill[0];
    assert_eq!(row["function"], "m");
    assert_eq!(row["invocations"], 2, "{bill}");
    assert_eq!(row["billed_seconds"], 2, "{bill}");
    assert_eq!(row["gb_seconds"], 8.0, "{bill}");
    assert_eq!(
        row["idle_gb_seconds"], 0.0,
        "on-demand instances pay no idle time"
    );
    assert!(
        (row["cost_usd"].as_f64().unwrap() - 8.0 * 0.000_018).abs() < 1e-12,
        "{bill}"
    );
    // A window after the calls bills nothing (a deployed function still has its row); a bad
    // bound names its field.
    let empty = s
        .get_json("/api/v1/billing?function=m&from=2099-01-01T00:00:00Z")
        .await;
    assert_eq!(empty[0]["invocations"], 0, "{empty}");
    assert_eq!(empty[0]["cost_usd"], 0.0, "{empty}");
    let resp = s
        .http
        .get(s.url("/api/v1/billing?from=yesterday"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["field"],
        "from"
    );

    // One cold start, with every phase.
    let cold = s.get_json("/api/v1/functions/m/cold-starts").await;
    let cold = cold.as_array().unwrap();
    assert_eq!(cold.len(), 1, "{cold:?}");
    let c = &cold[0];
    for phase in [
        "gpu_allocate_ms",
        "image_pull_ms",
        "start_ms",
        "ready_ms",
        "first_response_ms",
        "total_ms",
    ] {
        assert!(c[phase].as_f64().unwrap() >= 0.0, "{phase}: {c}");
    }
    assert_eq!(c["image_pull_ms"], 0.0);
    assert!(c["first_response_ms"].as_f64().unwrap() >= 1200.0, "{c}");
    let total = c["total_ms"].as_f64().unwrap();
    assert!(
        total >= c["ready_ms"].as_f64().unwrap() + c["first_response_ms"].as_f64().unwrap(),
        "{c}"
    );

    // The function view shows probability, percentiles and cost.
    let stats = &s.get_json("/api/v1/functions/m").await["stats"];
    assert_eq!(stats["invocations"], 2, "{stats}");
    assert_eq!(stats["cold_starts"], 1);
    assert_eq!(stats["cold_start_rate"], 0.5);
    assert_eq!(stats["cold_start_p50_ms"].as_f64(), Some(total));
    assert!((stats["cost_usd"].as_f64().unwrap() - 8.0 * 0.000_018).abs() < 1e-12);

    // Prometheus.
    let text = s.get_text("/metrics").await;
    assert_eq!(
        metric(
            &text,
            r#"gpufn_invocations_total{function="m",status="200"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"gpufn_cold_starts_total{function="m"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, r#"gpufn_billed_gb_seconds_total{function="m"}"#),
        Some(8.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"gpufn_cold_start_duration_seconds_count{function="m",phase="ready"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            r#"gpufn_request_duration_seconds_count{function="m"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, r#"gpufn_queue_wait_seconds_count{function="m"}"#),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, r#"gpufn_instances{function="m",state="ready"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, r#"gpufn_queue_depth{function="m"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, r#"gpufn_gpu_cards{state="allocated"}"#),
        Some(1.0)
    );
    assert_eq!(metric(&text, r#"gpufn_gpu_cards{state="free"}"#), Some(0.0));

    // The CLI.
    let out = s.cli(&["bill", "--function", "m"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("FUNCTION") && table.contains("0.000144"),
        "{table}"
    );

    // A restart loses no billed time.
    assert_eq!(s.terminate(), Some(0));
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let bill = s.get_json("/api/v1/billing?function=m").await;
    assert_eq!(bill[0]["billed_seconds"], 2, "{bill}");
    assert_eq!(
        s.get_json("/api/v1/functions/m/cold-starts")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn provisioned_instances_are_billed_for_idle_time_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    s.deploy_testfn("p", "scaling: {min_instances: 1}").await;
    s.wait_for(
        "the provisioned instance",
        Duration::from_secs(15),
        || async {
            s.instances("p")
                .await
                .first()
                .is_some_and(|i| i["state"] == "ready")
        },
    )
    .await;
    // Idle time accrues by the second while nothing runs; the active part stays zero.
    s.wait_for("idle GB-seconds", Duration::from_secs(10), || async {
        let b = s.get_json("/api/v1/billing?function=p").await;
        b[0]["idle_gb_seconds"].as_f64().unwrap_or(0.0) >= 8.0
    })
    .await;
    let b = s.get_json("/api/v1/billing?function=p").await;
    assert_eq!(b[0]["billed_seconds"], 0, "{b}");
    let idle = b[0]["idle_gb_seconds"].as_f64().unwrap();
    assert!(
        (b[0]["cost_usd"].as_f64().unwrap() - idle * 0.000_007).abs() < 1e-12,
        "{b}"
    );
}

/// Rows in the store's busy_periods table for `function`, and the requests they count.
fn busy_rows(data_dir: &std::path::Path, function: &str) -> (i64, i64) {
    let db = rusqlite::Connection::open_with_flags(
        data_dir.join("gpufn.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT COUNT(*), COALESCE(SUM(requests), 0) FROM busy_periods WHERE function = ?1",
        [function],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[tokio::test]
async fn a_busy_instance_writes_a_record_per_second_not_per_request() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("b", "scaling: {idle_timeout_s: 1}").await;
    // One call at a time: every request closes a busy period of its own (and leaves the instance
    // idle, which no longer wakes the reconciler each time).
    let started = std::time::Instant::now();
    for _ in 0..40 {
        let r = s
            .http
            .get(s.url("/function/b/work?ms=0"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
    }
    let took = started.elapsed();
    // Billing sees all 40 at once, recorded or not yet.
    let bill = s.get_json("/api/v1/billing?function=b").await;
    assert_eq!(bill[0]["invocations"], 40, "{bill}");
    // The last batch reaches the store once its one-second window has passed, with no request
    // to push it out.
    s.wait_for(
        "all 40 requests in the store",
        Duration::from_secs(10),
        || async { busy_rows(dir.path(), "b").1 == 40 },
    )
    .await;
    let (rows, _) = busy_rows(dir.path(), "b");
    // One record per second the calls took (the first, cold, one is its own), not 40.
    let most = i64::try_from(took.as_secs()).unwrap() + 2;
    assert!(rows <= most, "{rows} records for 40 requests in {took:?}");
    let bill = s.get_json("/api/v1/billing?function=b").await;
    assert_eq!(bill[0]["invocations"], 40, "nothing counted twice: {bill}");
    // Keep-alive still sees the last idle transition: back to zero after idle_timeout_s.
    s.wait_for("scale to zero", Duration::from_secs(15), || async {
        s.instances("b").await.is_empty()
    })
    .await;
    assert_eq!(busy_rows(dir.path(), "b").1, 40);
}
