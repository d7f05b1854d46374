//! Abuse and faults from outside (issue 18): what a caller can send that is not what a client
//! should, answered clearly and at no cost to anyone else. (The gateway's framing and body cases
//! are in `gateway.rs`.)

use serde_json::Value;

use crate::common::*;

/// Sends `req`; the status, the content type and the body as JSON (or `Null`).
async fn json_of(req: reqwest::RequestBuilder) -> (u16, String, Value) {
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.bytes().await.expect("body");
    (
        status,
        ct,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Issue 18, point 10: the framework's own refusals are the documented JSON error, naming the
/// field when there is one.
#[tokio::test]
async fn the_apis_own_refusals_are_json_errors_that_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("f", "").await;
    for (what, req, status, code, field) in [
        (
            "a negative limit",
            s.http.get(s.url("/api/v1/tasks?limit=-1")),
            400,
            "invalid_request",
            Some("limit"),
        ),
        (
            "a fractional step",
            s.http.get(s.url("/api/v1/functions/f/usage?step_s=0.5")),
            400,
            "invalid_request",
            Some("step_s"),
        ),
        (
            "a body over the limit",
            s.http
                .put(s.url("/api/v1/quota"))
                .header("content-type", "application/json")
                .body(vec![b' '; 3 << 20]),
            413,
            "body_too_large",
            None,
        ),
        (
            "a method the path does not take",
            s.http.delete(s.url("/api/v1/gpus")),
            405,
            "method_not_allowed",
            None,
        ),
    ] {
        let (got, ct, body) = json_of(req).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(ct.starts_with("application/json"), "{what}: {ct}");
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        match field {
            Some(f) => assert_eq!(body["error"]["field"], f, "{what}: {body}"),
            None => assert!(
                body["error"]["message"].as_str().is_some(),
                "{what}: {body}"
            ),
        }
        let text = body.to_string();
        assert!(
            !text.contains(&dir.path().display().to_string()),
            "{what}: no paths: {text}"
        );
    }
}

/// Issue 18, point 7: an instance log is rotated past `--log-max-mb` (keeping `--log-keep`
/// files), and a tail is read from the end.
#[tokio::test]
async fn instance_logs_are_rotated_and_tails_read_from_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--log-max-mb",
            "1",
            "--log-keep",
            "1",
        ],
    );
    s.deploy_testfn("f", "").await;
    let resp = s
        .http
        .get(s.url("/function/f/spam?kb=1536"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let instance = resp.headers()["x-gpufn-instance-id"]
        .to_str()
        .unwrap()
        .to_string();
    let log = dir.path().join("logs/f").join(format!("{instance}.log"));
    let rotated = dir.path().join("logs/f").join(format!("{instance}.log.1"));
    s.wait_for(
        "the log to be rotated",
        std::time::Duration::from_secs(30),
        || {
            let rotated = rotated.clone();
            async move { rotated.exists() }
        },
    )
    .await;
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size < 1 << 20, "the live log was cut: {size} bytes");
    assert!(
        std::fs::metadata(&rotated).unwrap().len() > 1 << 20,
        "the rotated file holds what was written"
    );
    // More output, rotated again: only one older file is kept.
    let resp = s
        .http
        .get(s.url("/function/f/spam?kb=1536"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    s.wait_for(
        "the second rotation",
        std::time::Duration::from_secs(30),
        || {
            let log = log.clone();
            async move { std::fs::metadata(&log).is_ok_and(|m| m.len() < 1 << 20) }
        },
    )
    .await;
    assert!(
        !dir.path()
            .join("logs/f")
            .join(format!("{instance}.log.2"))
            .exists()
    );
    // The tail: the last line written, whichever file holds it now.
    let text = s
        .get_text(&format!(
            "/api/v1/functions/f/instances/{instance}/logs?tail=1"
        ))
        .await;
    assert!(
        text.trim_end().ends_with("spam done") || text.contains("GET /spam"),
        "{text:.200}"
    );
}

/// Issue 18, point 4: the FC API refuses before it reads a body — with no key configured, and
/// for a head whose signature does not verify — so a stranger's 60 MB upload costs nothing. (A
/// request that is never sent whole is answered at once; reading it first would wait forever.)
#[tokio::test]
async fn the_fc_api_refuses_before_reading_a_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for keys in [&[][..], &["--access-key", "LTAIabuse:s3cr3t"][..]] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--simulate-gpus", "1xtesla-t4:16"];
        args.extend_from_slice(keys);
        let s = Server::start(dir.path(), &args);
        let addr = s.addr();
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /2023-03-30/functions HTTP/1.1\r\nhost: 127.0.0.1\r\n\
             authorization: ACS3-HMAC-SHA256 Credential=LTAIabuse,SignedHeaders=host;x-acs-date;x-acs-signature-nonce;x-acs-content-sha256,Signature=00\r\n\
             x-acs-date: 2026-01-01T00:00:00Z\r\nx-acs-signature-nonce: n1\r\n\
             x-acs-content-sha256: {}\r\ncontent-type: application/json\r\n\
             content-length: 60000000\r\n\r\n{{\"functionName\":",
            "0".repeat(64)
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        let mut got = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut got))
            .await
            .expect("answered without the body")
            .unwrap();
        let text = String::from_utf8_lossy(&got[..n]);
        assert!(text.starts_with("HTTP/1.1 403"), "keys {keys:?}: {text}");
    }
}

/// Issue 18, point 4: a signed caller's large bodies are received on disk, not in memory: eight
/// 40 MB function documents held one byte short of their end keep gpufn's RSS far below the
/// 320 MB they add up to (reading them into memory, as before, took it past 350 MB); once they
/// end, each is checked against its signed hash (not 403) and handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_fc_bodies_in_flight_are_held_on_disk() {
    use gpufn_server::fc_auth::{SignedRequest, authorization, content_sha256};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 40 << 20;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--access-key",
            "LTAIbig:s3cr3t",
        ],
    );
    let addr = s.addr();
    let rss_mb = |pid: i32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            / 1024
    };
    let before = rss_mb(s.pid());
    let mut held = Vec::new();
    for i in 0..8 {
        let prefix = format!("{{\"functionName\":\"big-{i}\",\"description\":\"");
        let mut body = prefix.into_bytes();
        body.resize(SIZE - 2, b'x');
        body.extend_from_slice(b"\"}");
        let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let headers: Vec<(String, String)> = [
            ("host", addr.as_str()),
            ("x-acs-date", date.as_str()),
            ("x-acs-signature-nonce", &format!("big-{i}")),
            ("x-acs-content-sha256", &content_sha256(&body)),
            ("content-type", "application/json"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let auth = authorization(
            "LTAIbig",
            "s3cr3t",
            &SignedRequest {
                method: "POST",
                path: "/2023-03-30/functions",
                query: Vec::new(),
                headers: headers.clone(),
                body: None,
            },
        );
        let mut head = String::from("POST /2023-03-30/functions HTTP/1.1\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!(
            "authorization: {auth}\r\ncontent-length: {SIZE}\r\n\r\n"
        ));
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&body[..SIZE - 1]).await.unwrap();
        held.push((conn, body[SIZE - 1]));
    }
    // Everything written but the last byte has been read by gpufn once its spool files hold
    // it: wait for the bytes to be on disk rather than guessing a time.
    // The sizes of the large files gpufn holds open (its spool files).
    let spooled = || -> Vec<u64> {
        std::fs::read_dir(format!("/proc/{}/fd", s.pid()))
            .unwrap()
            .filter_map(|e| std::fs::metadata(e.ok()?.path()).ok())
            .filter(|m| m.is_file() && m.len() >= 1 << 20)
            .map(|m| m.len())
            .collect()
    };
    // Up to a write buffer (64 KiB) of each may not be in its file yet.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let files = spooled();
        if files
            .iter()
            .filter(|len| **len >= (SIZE as u64) - (128 << 10))
            .count()
            == 8
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "8 bodies not on disk: {files:?}, RSS {} MB\n{}",
            rss_mb(s.pid()),
            s.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let during = rss_mb(s.pid());
    assert!(
        during < before + 100,
        "RSS {before} MB → {during} MB with 8 × 40 MB bodies in flight"
    );
    for (mut conn, last) in held {
        conn.write_all(&[last]).await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(std::time::Duration::from_secs(60), conn.read(&mut buf))
            .await
            .expect("answered")
            .unwrap();
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let status: u16 = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        assert!(
            status != 403 && status < 500 && status != 0,
            "the whole body was not accepted: {text:.300}"
        );
        assert!(!text.contains("not JSON"), "{text:.300}");
    }
}

/// Issue 18, point 9: a callback cannot make gpufn call loopback or private addresses (SSRF):
/// refused at accept for an IP literal, given up at delivery for a name that resolves there
/// (checked on the address connected to) — unless `--allow-callback-to` lists the range.
#[tokio::test]
async fn callbacks_do_not_reach_loopback_or_private_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("f", "").await;
    let receiver = Receiver::start(free_port());
    s.wait_for(
        "the receiver",
        std::time::Duration::from_secs(10),
        || async {
            reqwest::get(format!("http://127.0.0.1:{}/health", receiver.port))
                .await
                .is_ok()
        },
    )
    .await;
    let submit = |callback: String| {
        let s = &s;
        async move {
            let resp = s
                .http
                .post(s.url("/async-function/f/echo"))
                .header("x-gpufn-callback-url", callback)
                .body("x")
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = submit(format!("http://127.0.0.1:{}/record", receiver.port)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "x-gpufn-callback-url", "{body}");

    let (status, body) = submit(format!("http://localhost:{}/record", receiver.port)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["task_id"].as_str().unwrap().to_string();
    s.wait_for(
        "the delivery to be given up",
        std::time::Duration::from_secs(30),
        || {
            let url = s.url(&format!("/api/v1/tasks/{id}"));
            let http = s.http.clone();
            async move {
                let t: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                t["deliveries"][0]["state"] == "failed"
            }
        },
    )
    .await;
    assert!(
        receiver.records().await.is_empty(),
        "nothing reached the loopback receiver"
    );
}

/// Issue 18, point 11: an HTTP/1.1 request without a Host, or with two, is refused (400, naming
/// `host`) on every path (RFC 9112 §3.2), before anything else looks at it.
#[tokio::test]
async fn http_1_1_requests_need_exactly_one_host() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("f", "").await;
    let addr = s.addr();
    let auth = format!("authorization: Bearer {}\r\n", s.token);
    for path in ["/function/f/echo", "/api/v1/functions", "/healthz"] {
        for hosts in ["", "host: 127.0.0.1\r\nhost: 127.0.0.1\r\n"] {
            let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\n{auth}{hosts}connection: close\r\n\r\n");
            conn.write_all(req.as_bytes()).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                conn.read_to_end(&mut got),
            )
            .await;
            let text = String::from_utf8_lossy(&got);
            assert!(text.starts_with("HTTP/1.1 400"), "{path} {hosts:?}: {text}");
            assert!(
                text.contains("\"field\":\"host\""),
                "{path} {hosts:?}: {text}"
            );
        }
    }
}

/// Issue 18, point 6: a caller's task id is per function and per token: the same id sent to
/// another function (or by another token) is another task, with its own payload and result, and
/// does not show the first one; sent again, it is the same task.
#[tokio::test]
async fn task_ids_are_per_function_and_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    s.deploy_testfn("a", "").await;
    s.deploy_testfn("b", "").await;
    let submit = |function: &'static str, token: String, body: &'static str| {
        let s = &s;
        async move {
            let resp = reqwest::Client::new()
                .post(s.url(&format!("/async-function/{function}/echo")))
                .header("authorization", format!("Bearer {token}"))
                .header("x-gpufn-task-id", "same")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 202);
            let v: Value = resp.json().await.unwrap();
            v["task_id"].as_str().unwrap().to_string()
        }
    };
    let (status, _, invoker) = json_of(
        s.http
            .post(s.url("/api/v1/tokens"))
            .header("content-type", "application/json")
            .body(r#"{"role": "invoker"}"#),
    )
    .await;
    assert_eq!(status, 201, "{invoker}");
    let invoker = invoker["token"].as_str().unwrap().to_string();

    let on_a = submit("a", s.token.clone(), "from-a").await;
    assert_eq!(on_a, "same");
    let on_b = submit("b", s.token.clone(), "from-b").await;
    assert_ne!(on_b, on_a, "another function: another task");
    assert_eq!(
        submit("b", s.token.clone(), "again").await,
        on_b,
        "idempotent"
    );
    let by_invoker = submit("a", invoker, "from-invoker").await;
    assert!(
        by_invoker != on_a && by_invoker != on_b,
        "another token: another task"
    );

    for (id, function, body) in [
        (&on_a, "a", "from-a"),
        (&on_b, "b", "from-b"),
        (&by_invoker, "a", "from-invoker"),
    ] {
        s.wait_for(
            "the task to succeed",
            std::time::Duration::from_secs(30),
            || {
                let (http, url) = (s.http.clone(), s.url(&format!("/api/v1/tasks/{id}")));
                async move {
                    let t: Value = http.get(url).send().await.unwrap().json().await.unwrap();
                    t["state"] == "succeeded"
                }
            },
        )
        .await;
        let t: Value = s
            .http
            .get(s.url(&format!("/api/v1/tasks/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(t["function"], function, "{t}");
        let echoed: Value = serde_json::from_str(t["result"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(echoed["body"], body, "{t}");
    }
}

/// Issue 18, point 5: what async tasks may hold is bounded — per function by
/// `async.max_pending` (429 past it), and in all by `--task-max-pending-mb` of bodies (507).
/// The function here never becomes ready, so its tasks stay pending.
#[tokio::test]
async fn pending_async_tasks_are_bounded_per_function_and_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--task-max-pending-mb",
            "1",
        ],
    );
    s.deploy_testfn(
        "stuck",
        "env: {NEVER_READY: '1'}\nhealth_check: {startup_timeout_s: 60}\nasync: {max_pending: 2}",
    )
    .await;
    s.deploy_testfn(
        "other",
        "env: {NEVER_READY: '1'}\nhealth_check: {startup_timeout_s: 60}",
    )
    .await;
    let submit = |function: &'static str, body: Vec<u8>| {
        let s = &s;
        async move {
            json_of(
                s.http
                    .post(s.url(&format!("/async-function/{function}/work")))
                    .body(body),
            )
            .await
        }
    };
    for _ in 0..2 {
        let (status, _, body) = submit("stuck", b"x".to_vec()).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, _, body) = submit("stuck", b"x".to_vec()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_tasks", "{body}");
    // The byte budget is the store's: another function's 600 KB fits once, not twice.
    let (status, _, body) = submit("other", vec![b'a'; 600 << 10]).await;
    assert_eq!(status, 202, "{body}");
    let (status, _, body) = submit("other", vec![b'b'; 600 << 10]).await;
    assert_eq!(status, 507, "{body}");
    assert_eq!(body["error"]["code"], "task_store_full", "{body}");
    // Lists carry no request bodies.
    let (status, _, list) = json_of(s.http.get(s.url("/api/v1/tasks"))).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(3), "{list}");
}

/// Issue 18, point 9: an image pull's failure does not tell a developer which local ports answer:
/// its reason (addresses, connection errors) is for admins and the server log.
#[tokio::test]
async fn pull_errors_name_no_address_to_a_developer() {
    crate::common::oci::require("runc");
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let (status, _, dev) = json_of(
        s.http
            .post(s.url("/api/v1/tokens"))
            .header("content-type", "application/json")
            .body(r#"{"role": "developer"}"#),
    )
    .await;
    assert_eq!(status, 201, "{dev}");
    let dev = dev["token"].as_str().unwrap().to_string();
    // A loopback port nobody listens on.
    let port = free_port();
    let yaml = format!(
        "name: probe\nruntime: container\nimage: 127.0.0.1:{port}/x:1\nport: 9000\ngpu: {{memory_gb: 2}}\n"
    );
    let deploy = |token: String| {
        let (s, yaml) = (&s, yaml.clone());
        async move {
            json_of(
                reqwest::Client::new()
                    .post(s.url("/api/v1/functions"))
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/yaml")
                    .body(yaml),
            )
            .await
        }
    };
    let (status, _, body) = deploy(dev).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "image_pull_failed", "{body}");
    let text = body.to_string();
    assert!(
        !text.contains(&port.to_string()) && !text.contains("127.0.0.1"),
        "{text}"
    );
    // An admin sees the reason.
    let (status, _, body) = deploy(s.token.clone()).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains(&port.to_string()), "{body}");
}
