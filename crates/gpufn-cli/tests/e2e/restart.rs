//! Restarts and shutdown: functions persist, SIGTERM drains and leaves no orphans, and even a
//! SIGKILLed gpufn takes its instances with it.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn deployed_functions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(
        dir.path(),
        &["--simulate-gpus", "1xtesla-t4:16", "--quota-cards", "5"],
    );
    s.deploy_testfn("keep", "instance_concurrency: 3").await;
    assert_eq!(
        s.http
            .get(s.url("/function/keep/work"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(s.terminate(), Some(0), "{}", s.log());

    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let v = s.get_json("/api/v1/functions/keep").await;
    assert_eq!(v["spec"]["instance_concurrency"], 3);
    assert_eq!(v["revision"], 1);
    assert_eq!(
        s.get_json("/api/v1/quota").await["cards"],
        5,
        "the quota is stored too"
    );
    let resp = s
        .http
        .get(s.url("/function/keep/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "true");
}

#[tokio::test]
async fn sigterm_drains_requests_in_flight_and_stops_every_instance() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "2xtesla-t4:16",
            "--shutdown-grace-s",
            "20",
        ],
    );
    s.deploy_testfn("drain", "").await;
    s.deploy_testfn("other", "scaling: {min_instances: 1}")
        .await;
    let latch = Latch::new(dir.path(), "drain");
    let inflight = tokio::spawn({
        let url = s.url(&format!("/function/drain/work?{}", latch.query()));
        let http = s.http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    });
    s.wait_for(
        "a request in flight and a provisioned instance",
        Duration::from_secs(15),
        || async {
            s.instances("drain")
                .await
                .first()
                .is_some_and(|i| i["in_flight"] == 1)
                && s.instances("other")
                    .await
                    .first()
                    .is_some_and(|i| i["state"] == "ready")
        },
    )
    .await;
    let pids: Vec<i64> = [s.instances("drain").await, s.instances("other").await]
        .concat()
        .iter()
        .map(|i| i["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);

    super::common::unsafe_kill(s.pid(), libc::SIGTERM);
    // Draining: new work is refused, the request in flight goes on.
    s.wait_for("shutdown to begin", Duration::from_secs(10), || async {
        s.log().contains("shutting down")
    })
    .await;
    assert!(!inflight.is_finished());
    latch.release();
    let (status, body) = inflight.await.unwrap();
    assert_eq!(status, 200, "the request in flight completed: {body}");
    let code = s.child.wait().unwrap().code();
    assert_eq!(code, Some(0), "{}", s.log());
    for pid in pids {
        assert!(!process_alive(pid), "instance process {pid} outlived gpufn");
    }
}

#[tokio::test]
async fn a_sigkilled_gpufn_leaves_no_instance_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("orphan", "").await;
    assert_eq!(
        s.http
            .get(s.url("/function/orphan/work"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let pid = s.instances("orphan").await[0]["pid"].as_i64().unwrap();
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while process_alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "instance {pid} survived a SIGKILLed gpufn"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next gpufn starts clean.
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let v: Value = s.get_json("/api/v1/functions/orphan/instances").await;
    assert_eq!(v, serde_json::json!([]));
}
