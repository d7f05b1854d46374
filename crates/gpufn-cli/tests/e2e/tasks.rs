//! Asynchronous invocation: durable acceptance, retries, destinations, cancel, and no task lost to
//! a SIGKILL.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;

use crate::common::*;

async fn task(s: &Server, id: &str) -> Value {
    s.get_json(&format!("/api/v1/tasks/{id}")).await
}

async fn wait_state(s: &Server, id: &str, state: &str) -> Value {
    s.wait_for(
        &format!("task {id} {state}"),
        Duration::from_secs(30),
        || async { task(s, id).await["state"] == state },
    )
    .await;
    task(s, id).await
}

async fn submit(
    s: &Server,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value, Option<String>) {
    let mut req = s
        .http
        .post(s.url(&format!("/async-function/{path}")))
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().await.unwrap_or(Value::Null), location)
}

#[tokio::test]
async fn tasks_are_accepted_run_retried_reported_and_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "2xtesla-t4:16",
            "--task-retry-base-ms",
            "50",
            // The receivers here are on loopback, which callbacks may not reach by default.
            "--allow-callback-to",
            "127.0.0.1/32",
        ],
    );
    let dest = Receiver::start(free_port());
    s.deploy_testfn(
        "a",
        &format!(
            "instance_concurrency: 2\nasync: {{max_retries: 2, on_success: '{0}', on_failure: '{0}'}}",
            dest.url()
        ),
    )
    .await;

    // Accepted: 202, Location, the caller's id; the callback receiver is down for now.
    let late_port = free_port();
    let callback = format!("http://127.0.0.1:{late_port}/record");
    let headers = [
        ("x-gpufn-task-id", "t1"),
        ("x-gpufn-callback-url", callback.as_str()),
    ];
    let (status, body, location) = submit(&s, "a/echo?x=1", &headers, "payload").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["task_id"], "t1");
    assert_eq!(location.as_deref(), Some("/api/v1/tasks/t1"));
    // The same id again is the same task, not a second run.
    let (status, body, _) = submit(&s, "a/echo?x=1", &headers, "other").await;
    assert_eq!((status, body["task_id"].as_str()), (202, Some("t1")));

    let t = wait_state(&s, "t1", "succeeded").await;
    assert_eq!(t["attempts"], 1, "{t}");
    assert_eq!(t["result"]["status"], 200);
    let echoed: Value = serde_json::from_str(t["result"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        (echoed["body"].as_str(), echoed["query"].as_str()),
        (Some("payload"), Some("x=1"))
    );
    assert_eq!(echoed["headers"]["x-gpufn-task-id"], "t1");
    assert!(t["instance"].as_str().unwrap().starts_with("a-"));

    // on_success got the record.
    s.wait_for("the on_success record", Duration::from_secs(10), || async {
        dest.records()
            .await
            .iter()
            .any(|r| r["task_id"] == "t1" && r["state"] == "succeeded")
    })
    .await;
    // The callback receiver comes up late: the delivery is retried until it lands.
    s.wait_for(
        "a failed delivery attempt",
        Duration::from_secs(10),
        || async {
            task(&s, "t1").await["deliveries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["url"] == callback.as_str() && d["attempts"].as_i64().unwrap() >= 1)
        },
    )
    .await;
    let late = Receiver::start(late_port);
    s.wait_for("the late callback", Duration::from_secs(20), || async {
        late.records().await.iter().any(|r| r["task_id"] == "t1")
    })
    .await;

    // A function that always fails ends `failed` after 1 + max_retries attempts, with its answer.
    let (status, body, _) = submit(&s, "a/fail", &[], "").await;
    assert_eq!(status, 202);
    let id = body["task_id"].as_str().unwrap().to_string();
    let t = wait_state(&s, &id, "failed").await;
    assert_eq!(t["attempts"], 3, "{t}");
    assert_eq!(t["result"]["status"], 500, "{t}");
    assert!(
        t["error"].as_str().unwrap().contains("after 3 attempts"),
        "{t}"
    );
    s.wait_for("the on_failure record", Duration::from_secs(10), || async {
        dest.records()
            .await
            .iter()
            .any(|r| r["task_id"] == id.as_str() && r["state"] == "failed")
    })
    .await;

    // Cancel a running task.
    let latch = Latch::new(dir.path(), "cancel");
    let (_, body, _) = submit(&s, &format!("a/work?{}", latch.query()), &[], "").await;
    let id = body["task_id"].as_str().unwrap().to_string();
    let t = wait_state(&s, &id, "running").await;
    s.wait_for(
        "the attempt to reach the instance",
        Duration::from_secs(10),
        || async { task(&s, &id).await["attempts"] == 1 },
    )
    .await;
    let resp = s
        .http
        .post(s.url(&format!("/api/v1/tasks/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{t}");
    assert_eq!(resp.json::<Value>().await.unwrap()["state"], "cancelled");
    latch.release();
    let resp = s
        .http
        .post(s.url(&format!("/api/v1/tasks/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409, "a final task cannot be cancelled again");
    s.wait_for("the held slot back", Duration::from_secs(10), || async {
        s.instances("a").await.iter().all(|i| i["in_flight"] == 0)
    })
    .await;
    assert_eq!(
        task(&s, &id).await["state"],
        "cancelled",
        "the late answer does not undo the cancel"
    );

    // Listing and filters.
    let failed = s.get_json("/api/v1/tasks?function=a&state=failed").await;
    assert_eq!(failed.as_array().unwrap().len(), 1);
    let resp = s
        .http
        .get(s.url("/api/v1/tasks?state=done"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["field"],
        "state"
    );
    // Refusals.
    let (status, _, _) = submit(&s, "nope/x", &[], "").await;
    assert_eq!(status, 404);
    let (status, body, _) = submit(&s, "a/x", &[("x-gpufn-task-id", "bad id")], "").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("x-gpufn-task-id"))
    );
    let (status, body, _) = submit(&s, "a/x", &[("x-gpufn-callback-url", "ftp://x")], "").await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("x-gpufn-callback-url"))
    );
}

#[tokio::test]
async fn no_accepted_task_is_lost_when_gpufn_is_killed() {
    const N: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--simulate-gpus",
        "3xtesla-t4:16",
        "--task-retry-base-ms",
        "50",
    ];
    let mut s = Server::start(dir.path(), &args);
    s.deploy_testfn(
        "bulk",
        "instance_concurrency: 2\nscaling: {max_instances: 3}",
    )
    .await;
    let accepted: Vec<String> = futures_util::stream::iter(0..N)
        .map(|i| {
            let s = &s;
            async move {
                let (status, body, _) =
                    submit(s, "bulk/work?ms=40", &[], &format!("task {i}")).await;
                assert_eq!(status, 202, "{body}");
                body["task_id"].as_str().unwrap().to_string()
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(accepted.len(), N);
    // Kill it while tasks are queued and one is mid-attempt.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let victim = loop {
        let running = s.get_json("/api/v1/tasks?state=running").await;
        let found = running
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["attempts"] == 1)
            .map(|t| t["task_id"].as_str().unwrap().to_string());
        if let Some(id) = found {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no running attempt seen\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    s.child.kill().unwrap();
    s.child.wait().unwrap();

    let s = Server::start(dir.path(), &args);
    s.wait_for("every task final", Duration::from_secs(120), || async {
        let queued = s.get_json("/api/v1/tasks?state=queued&limit=1").await;
        let running = s.get_json("/api/v1/tasks?state=running&limit=1").await;
        queued.as_array().unwrap().is_empty() && running.as_array().unwrap().is_empty()
    })
    .await;
    let all = s.get_json(&format!("/api/v1/tasks?limit={}", N + 10)).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), N, "every accepted task is there");
    let ids: std::collections::HashSet<&str> =
        all.iter().map(|t| t["task_id"].as_str().unwrap()).collect();
    assert!(accepted.iter().all(|id| ids.contains(id.as_str())));
    let not_ok: Vec<&Value> = all.iter().filter(|t| t["state"] != "succeeded").collect();
    assert!(not_ok.is_empty(), "{not_ok:?}");
    // The attempt cut short by the kill was run again: at-least-once, and the count shows it.
    let t = task(&s, &victim).await;
    assert!(t["attempts"].as_i64().unwrap() >= 2, "{t}");
}

#[tokio::test]
async fn the_cli_invokes_asynchronously_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("c", "").await;
    let out = s.cli(&[
        "invoke",
        "c",
        "/echo",
        "-d",
        "hi",
        "--async",
        "--wait",
        "--task-id",
        "cli-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["body"], "hi");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("succeeded after 1 attempt(s), status 200")
    );
    let out = s.cli(&["invoke", "c", "/echo", "--async"]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 32, "{id}");
    let out = s.cli(&["task", &id, "--wait"]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "succeeded");
    let out = s.cli(&["tasks", "--function", "c"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cli-1") && text.contains(&id) && text.contains("succeeded"),
        "{text}"
    );
}
