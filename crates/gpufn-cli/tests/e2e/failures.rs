//! Instances that never become ready, crash mid-request, or cannot even be started.

use std::time::Duration;

use serde_json::Value;

use crate::common::*;

#[tokio::test]
async fn an_app_that_never_becomes_ready_fails_its_cold_start_and_releases_its_card() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--instance-stop-grace-s",
            "1",
        ],
    );
    s.deploy_testfn(
        "stuck",
        "env: {NEVER_READY: '1'}\nhealth_check: {startup_timeout_s: 1}",
    )
    .await;
    let t0 = std::time::Instant::now();
    let resp = s
        .http
        .get(s.url("/function/stuck/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 504);
    assert!(resp.headers().contains_key("retry-after"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "startup_timeout", "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("startup_timeout_s (1s)"), "{msg}");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    // The card is free again and no instance is left.
    s.wait_for("card released", Duration::from_secs(10), || async {
        s.get_json("/api/v1/gpus").await[0]["instance"].is_null()
    })
    .await;
    assert!(s.instances("stuck").await.is_empty());
}

#[tokio::test]
async fn an_app_that_exits_at_start_fails_fast_with_503_and_its_log_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let yaml = format!(
        "name: exits\ncommand: [sh, -c, 'echo model file missing >&2; exit 7']\nworkdir: {}\ngpu: {{memory_gb: 1}}\n",
        dir.path().display()
    );
    let (status, body) = s.deploy_yaml(&yaml).await;
    assert_eq!(status, 201, "{body}");
    let resp = s.http.get(s.url("/function/exits/")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "start_failed");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("exited with code 7"), "{msg}");
    // The log named in the message holds what the app said.
    let id = msg
        .split("instance ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let log = s
        .get_text(&format!("/api/v1/functions/exits/instances/{id}/logs"))
        .await;
    assert!(log.contains("model file missing"), "{log}");
    assert!(s.get_json("/api/v1/gpus").await[0]["instance"].is_null());
}

#[tokio::test]
async fn a_crash_mid_request_gives_502_and_the_next_request_gets_a_new_instance() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("crashy", "").await;
    let resp = s
        .http
        .get(s.url("/function/crashy/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.headers()["x-gpufn-instance-id"]
        .to_str()
        .unwrap()
        .to_string();

    let resp = s
        .http
        .get(s.url("/function/crashy/crash"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["x-gpufn-instance-id"], first.as_str());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "instance_error");

    // Replaced next time: a cold start on a new instance, with the same (only) card.
    let resp = s
        .http
        .get(s.url("/function/crashy/work"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", s.log());
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "true");
    assert_ne!(resp.headers()["x-gpufn-instance-id"], first.as_str());
    let insts = s.instances("crashy").await;
    assert_eq!(insts.len(), 1, "{insts:?}");
}

/// Reads from `conn` until the server closes it (or 10 s pass); returns what it sent.
async fn read_until_closed(conn: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .ok()
        .map(|()| got)
}

#[tokio::test]
async fn connections_that_send_no_request_head_are_closed() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--client-idle-timeout-s",
            "1",
        ],
    );
    let addr = s
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    // A slowloris: half a request head, then nothing.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let got = read_until_closed(&mut slow).await;
    assert!(
        got.is_some(),
        "a half-sent request head keeps its connection open"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout: {:?}",
        started.elapsed()
    );

    // An idle keep-alive connection: answered, then closed once idle past the timeout.
    let mut idle = tokio::net::TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut idle)
        .await
        .expect("idle connection kept open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // A request that takes longer than the timeout, sending nothing meanwhile, is in flight: its
    // connection stays open until it is answered.
    s.deploy_testfn("slow", "").await;
    let r = s
        .http
        .get(s.url("/function/slow/work?ms=2500"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.bytes().await.unwrap().is_empty());
}
