//! Authentication and access control: tokens and roles on the API, protected triggers, the
//! browser rules (content type, Host on loopback, CORS), the first admin token, the audit log.

use std::os::unix::fs::PermissionsExt;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// Creates a token through the API as the admin; returns its text and id.
async fn token(s: &Server, body: Value) -> (String, String) {
    let resp = s
        .http
        .post(s.url("/api/v1/tokens"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{body}");
    let v: Value = resp.json().await.unwrap();
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// Status and JSON body of a request.
async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Sends raw bytes on a new connection and returns the whole answer's first 4 KiB as text.
async fn raw(s: &Server, request: String) -> String {
    let addr = s.url("").trim_start_matches("http://").to_string();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(request.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(20), c.read(&mut buf))
        .await
        .expect("answer within 20 s")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn the_first_start_writes_an_admin_token_and_every_api_call_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let file = dir.path().join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "admin.token is private");
    let log = s.log();
    assert!(log.contains("admin.token"), "the log says where it is");
    assert!(!log.contains(&s.token), "the log never shows the token");

    let anon = http_client();
    for (method, path) in [
        ("GET", "/api/v1/functions"),
        ("GET", "/api/v1/quota"),
        ("PUT", "/api/v1/quota"),
        ("GET", "/api/v1/tasks"),
        ("GET", "/metrics"),
        ("GET", "/api/v1/tokens"),
        (
            "GET",
            "/api/v1/estimate?invocations=1&duration_s=1&gpu_memory_gb=1",
        ),
    ] {
        let (status, body) = call(anon.request(method.parse().unwrap(), s.url(path))).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{method} {path}");
    }
    let resp = anon.get(s.url("/api/v1/functions")).send().await.unwrap();
    assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"gpufn\"");
    let bad = client_with_token("gpufn_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let (status, _) = call(bad.get(s.url("/api/v1/functions"))).await;
    assert_eq!(status, 401);
    // Health and the console's files need none (the console asks for a token itself).
    assert_eq!(call(anon.get(s.url("/healthz"))).await.0, 200);
    assert_eq!(call(anon.get(s.url("/console"))).await.0, 200);
    // The admin token works.
    assert_eq!(call(s.http.get(s.url("/api/v1/functions"))).await.0, 200);
    let (status, me) = call(s.http.get(s.url("/api/v1/whoami"))).await;
    assert_eq!(status, 200);
    assert_eq!(me["role"], "admin");
    assert_eq!(me["can"]["deploy_process"], true);
    // A restart keeps it: no second bootstrap, the same token still works.
    let mut s = s;
    s.terminate();
    let again = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    assert_eq!(again.token, s.token);
    assert_eq!(
        call(again.http.get(again.url("/api/v1/functions"))).await.0,
        200
    );
    assert!(!again.log().contains("created the first admin token"));
}

#[tokio::test]
async fn roles_scopes_revocation_and_expiry_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    // A token that expired yesterday, written into the store before the server starts.
    let expired = gpufn_auth::mint().unwrap();
    {
        let store = gpufn_store::Store::open(&dir.path().join("gpufn.db")).unwrap();
        store
            .insert_token(&gpufn_store::StoredToken {
                id: expired.id.clone(),
                hash: expired.hash.clone(),
                role: "admin".into(),
                functions: None,
                name: None,
                created_ms: 0,
                expires_ms: Some(1_000),
                revoked_ms: None,
                created_by: "test".into(),
            })
            .unwrap();
    }
    // The store had a token already, so no admin.token is bootstrapped: make one to drive the
    // test through the API, as an admin would, by inserting it the same way.
    let admin = gpufn_auth::mint().unwrap();
    {
        let store = gpufn_store::Store::open(&dir.path().join("gpufn.db")).unwrap();
        store
            .insert_token(&gpufn_store::StoredToken {
                id: admin.id.clone(),
                hash: admin.hash.clone(),
                role: "admin".into(),
                functions: None,
                name: None,
                created_ms: 0,
                expires_ms: None,
                revoked_ms: None,
                created_by: "test".into(),
            })
            .unwrap();
    }
    std::fs::write(dir.path().join("admin.token"), &admin.token).unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    let (status, body) =
        call(client_with_token(&expired.token).get(s.url("/api/v1/functions"))).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired")
    );

    s.deploy_testfn("team-a-echo", "").await;
    s.deploy_testfn("other", "").await;
    let (viewer, _) = token(&s, json!({"role": "viewer"})).await;
    let (invoker, invoker_id) = token(&s, json!({"role": "invoker", "name": "ci"})).await;
    let (developer, _) = token(&s, json!({"role": "developer", "expires": "30d"})).await;
    let (scoped, _) = token(&s, json!({"role": "invoker", "functions": "team-a-"})).await;
    let viewer = client_with_token(&viewer);
    let invoker = client_with_token(&invoker);
    let developer = client_with_token(&developer);
    let scoped = client_with_token(&scoped);

    // Tokens are listed without their text, and with their state.
    let (_, list) = call(s.http.get(s.url("/api/v1/tokens"))).await;
    let text = list.to_string();
    assert!(
        !text.contains("gpufn_"),
        "no token text in the list: {text}"
    );
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == invoker_id.as_str()
                && t["role"] == "invoker"
                && t["state"] == "active"
                && t["name"] == "ci")
    );

    // viewer: reads, never calls or changes.
    assert_eq!(call(viewer.get(s.url("/api/v1/functions"))).await.0, 200);
    assert_eq!(call(viewer.get(s.url("/function/other/echo"))).await.0, 403);
    let (status, body) = call(viewer.delete(s.url("/api/v1/functions/other"))).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        call(
            viewer
                .put(s.url("/api/v1/quota"))
                .json(&json!({"cards": 0}))
        )
        .await
        .0,
        403
    );

    // invoker: calls (sync and async), does not read the platform.
    let (status, body) = call(invoker.get(s.url("/function/other/echo"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["headers"]["authorization"],
        Value::Null,
        "the token never reaches the app"
    );
    assert_eq!(call(invoker.get(s.url("/api/v1/functions"))).await.0, 403);
    let (status, body) = call(
        s.http
            .post(s.url("/api/v1/functions"))
            .header("content-type", "application/yaml")
            .body(testfn_spec("sneaky", "")),
    )
    .await;
    assert_eq!(status, 201, "the admin deploys a process function: {body}");
    assert_eq!(
        call(
            invoker
                .post(s.url("/api/v1/functions"))
                .header("content-type", "application/yaml")
                .body(testfn_spec("sneaky2", ""))
        )
        .await
        .0,
        403
    );

    // developer: may not deploy or delete a process function (it runs a host command line).
    let (status, body) = call(
        developer
            .post(s.url("/api/v1/functions"))
            .header("content-type", "application/yaml")
            .body(testfn_spec("devfn", "")),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("admin"),
        "{body}"
    );
    assert_eq!(
        call(developer.delete(s.url("/api/v1/functions/sneaky")))
            .await
            .0,
        403
    );
    assert_eq!(
        call(developer.get(s.url("/api/v1/functions/sneaky/instances")))
            .await
            .0,
        200
    );
    assert_eq!(
        call(developer.get(s.url("/function/other/echo"))).await.0,
        200
    );
    assert_eq!(call(developer.get(s.url("/api/v1/tokens"))).await.0, 403);

    // A scoped token reaches only its functions.
    assert_eq!(
        call(scoped.get(s.url("/function/team-a-echo/echo")))
            .await
            .0,
        200
    );
    let (status, body) = call(scoped.get(s.url("/function/other/echo"))).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team-a-")
    );

    // A scoped viewer sees that a card is taken, not by which function outside its prefix.
    let (scoped_viewer, _) = token(&s, json!({"role": "viewer", "functions": "team-a-"})).await;
    let (status, cards) = call(client_with_token(&scoped_viewer).get(s.url("/api/v1/gpus"))).await;
    assert_eq!(status, 200);
    assert!(
        cards
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["allocated_gb"] != 0),
        "{cards}"
    );
    assert!(!cards.to_string().contains("other"), "{cards}");
    let (_, list) = call(client_with_token(&scoped_viewer).get(s.url("/api/v1/functions"))).await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "only team-a-echo: {list}"
    );

    // Triggers without a token: 401 on both gateways' paths (a small body goes direct, a
    // chunked one through hyper), and for async invocation.
    let anon = http_client();
    assert_eq!(call(anon.get(s.url("/function/other/echo"))).await.0, 401);
    let chunked =
        reqwest::Body::wrap_stream(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
            bytes::Bytes::from_static(b"x"),
        )]));
    assert_eq!(
        call(anon.post(s.url("/function/other/echo")).body(chunked))
            .await
            .0,
        401
    );
    assert_eq!(
        call(anon.post(s.url("/async-function/other/echo")).body("x"))
            .await
            .0,
        401
    );

    // Async tasks: an invoker reads its own, not another's.
    let (status, accepted) =
        call(invoker.post(s.url("/async-function/other/echo")).body("hi")).await;
    assert_eq!(status, 202, "{accepted}");
    let task = accepted["task_id"].as_str().unwrap().to_string();
    assert_eq!(
        call(invoker.get(s.url(&format!("/api/v1/tasks/{task}"))))
            .await
            .0,
        200
    );
    let (status, _) = call(scoped.get(s.url(&format!("/api/v1/tasks/{task}")))).await;
    assert_eq!(status, 404, "another caller's task is not found");
    let (_, mine) = call(invoker.get(s.url("/api/v1/tasks"))).await;
    assert_eq!(mine.as_array().unwrap().len(), 1, "{mine}");
    let (_, theirs) = call(scoped.get(s.url("/api/v1/tasks"))).await;
    assert_eq!(theirs.as_array().unwrap().len(), 0, "{theirs}");

    // Revoked: 401 at once.
    let (status, body) = call(
        s.http
            .delete(s.url(&format!("/api/v1/tokens/{invoker_id}"))),
    )
    .await;
    assert_eq!(
        (status, body["state"].as_str()),
        (200, Some("revoked")),
        "{body}"
    );
    let (status, body) = call(invoker.get(s.url("/function/other/echo"))).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("revoked")
    );

    // Every change is in the audit log, with the token that made it; only admins read it.
    let (status, log) = call(s.http.get(s.url("/api/v1/audit?limit=100"))).await;
    assert_eq!(status, 200);
    let entries = log.as_array().unwrap();
    let has = |action: &str, target: &str| {
        entries.iter().any(|e| {
            e["action"] == action && e["target"] == target && e["token_id"] == admin.id.as_str()
        })
    };
    assert!(has("function.deploy", "sneaky"), "{log}");
    assert!(has("token.create", &invoker_id), "{log}");
    assert!(has("token.revoke", &invoker_id), "{log}");
    assert!(
        !log.to_string().contains("gpufn_"),
        "no token text in the audit log"
    );
    assert_eq!(call(viewer.get(s.url("/api/v1/audit"))).await.0, 403);
    // Bad token requests name the field.
    let (status, body) = call(
        s.http
            .post(s.url("/api/v1/tokens"))
            .json(&json!({"role": "boss"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("role"))
    );
    let (status, body) = call(
        s.http
            .post(s.url("/api/v1/tokens"))
            .json(&json!({"role": "viewer", "expires": "forever"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (400, Some("expires"))
    );
}

#[tokio::test]
async fn an_anonymous_function_is_public_and_keeps_its_own_authorization_header() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("public", "auth: {type: anonymous}").await;
    let anon = http_client();
    let (status, body) = call(
        anon.get(s.url("/function/public/echo"))
            .header("authorization", "Basic YXBwOnVzZXI="),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["authorization"], "Basic YXBwOnVzZXI=");
    let (status, _) = call(anon.post(s.url("/async-function/public/echo")).body("x")).await;
    assert_eq!(status, 202);
    let (_, f) = call(s.http.get(s.url("/api/v1/functions/public"))).await;
    assert_eq!(f["spec"]["auth"]["type"], "anonymous");
}

#[tokio::test]
async fn a_browser_page_cannot_deploy_or_rebind() {
    for gateway in ["direct", "hyper"] {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(
            dir.path(),
            &["--simulate-gpus", "1xtesla-t4:16", "--gateway", gateway],
        );
        // A cross-origin fetch with text/plain needs no preflight: refused without a token, and
        // refused with one too (415), deploying nothing.
        let spec = format!(
            "{{\"name\": \"x\", \"command\": [\"python3\", \"testfn.py\"], \"workdir\": {:?}, \"gpu\": {{\"memory_gb\": 1}}}}",
            fixture_dir().display()
        );
        let (status, _) = call(
            http_client()
                .post(s.url("/api/v1/functions"))
                .header("content-type", "text/plain")
                .header("origin", "https://evil.example")
                .body(spec.clone()),
        )
        .await;
        assert_eq!(status, 401, "{gateway}");
        let (status, body) = call(
            s.http
                .post(s.url("/api/v1/functions"))
                .header("content-type", "text/plain")
                .body(spec.clone()),
        )
        .await;
        assert_eq!(status, 415, "{gateway}: {body}");
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        let (_, list) = call(s.http.get(s.url("/api/v1/functions"))).await;
        assert_eq!(
            list.as_array().unwrap().len(),
            0,
            "{gateway}: nothing deployed"
        );
        // No CORS headers for anyone by default.
        let resp = http_client()
            .request(reqwest::Method::OPTIONS, s.url("/api/v1/functions"))
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap();
        assert!(
            resp.headers().get("access-control-allow-origin").is_none(),
            "{gateway}"
        );

        // DNS rebinding: a foreign Host is refused on every path, before anything else.
        s.deploy_testfn("f", "").await;
        for path in [
            "/healthz",
            "/api/v1/functions",
            "/function/f/echo",
            "/console",
        ] {
            let answer = raw(
                &s,
                format!(
                    "GET {path} HTTP/1.1\r\nhost: evil.example:8080\r\nauthorization: Bearer {}\r\n\r\n",
                    s.token
                ),
            )
            .await;
            assert!(
                answer.starts_with("HTTP/1.1 421"),
                "{gateway} {path}: {answer}"
            );
            assert!(answer.contains("host_not_allowed"), "{answer}");
        }
        let answer = raw(
            &s,
            format!(
                "GET /function/f/echo HTTP/1.1\r\nhost: localhost:1\r\nauthorization: Bearer {}\r\n\r\n",
                s.token
            ),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{gateway}: {answer}");
        // `served` counts when the slot comes back, just after the answer is sent: wait for the
        // one call that was let through; the refused ones were answered before it and cannot be
        // counted later.
        let served = || async {
            s.instances("f")
                .await
                .iter()
                .map(|i| i["served"].as_u64().unwrap())
                .sum::<u64>()
        };
        s.wait_for(
            "the allowed call counted",
            std::time::Duration::from_secs(10),
            || async { served().await >= 1 },
        )
        .await;
        assert_eq!(
            served().await,
            1,
            "{gateway}: the refused calls reached no instance"
        );
    }
}

#[tokio::test]
async fn cors_answers_only_the_configured_origin() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--cors-origin",
            "https://app.example",
        ],
    );
    s.deploy_testfn("f", "").await;
    for path in ["/api/v1/functions", "/function/f/echo"] {
        let resp = http_client()
            .request(reqwest::Method::OPTIONS, s.url(path))
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{path}");
        assert!(
            resp.headers().get("x-gpufn-instance-id").is_none(),
            "{path}: gpufn answers the preflight itself; it never reaches the app"
        );
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        assert!(
            resp.headers()["access-control-allow-headers"]
                .to_str()
                .unwrap()
                .contains("authorization")
        );
        let resp = s
            .http
            .get(s.url(path))
            .header("origin", "https://app.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            resp.headers()["access-control-allow-origin"],
            "https://app.example"
        );
        let resp = s
            .http
            .get(s.url(path))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert!(
            resp.headers().get("access-control-allow-origin").is_none(),
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_cli_manages_tokens_and_finds_the_local_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let out = s.cli(&[
        "token",
        "create",
        "--role",
        "invoker",
        "--functions",
        "team-",
        "--expires",
        "7d",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        created.starts_with("gpufn_"),
        "the token alone on stdout: {created}"
    );
    let id = created[6..18].to_string();
    let out = s.cli(&["token", "list"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&id) && table.contains("team-*") && table.contains("invoker"),
        "{table}"
    );
    assert!(!table.contains(&created), "{table}");
    // The invoker token, through GPUFN_TOKEN, may not list tokens.
    let out = std::process::Command::new(BIN)
        .args(["token", "list"])
        .env("GPUFN_SERVER", &s.url)
        .env("GPUFN_TOKEN", &created)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
    // No token at all (another data dir): 401, with where the CLI looks.
    let out = std::process::Command::new(BIN)
        .args(["list"])
        .env("GPUFN_SERVER", &s.url)
        .env("GPUFN_DATA_DIR", dir.path().join("elsewhere"))
        .env_remove("GPUFN_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("401") && err.contains("GPUFN_TOKEN"),
        "{err}"
    );
    // Revoke; the audit log shows both changes.
    let out = s.cli(&["token", "revoke", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = s.cli(&["audit"]);
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(
        log.contains("token.create") && log.contains("token.revoke"),
        "{log}"
    );
}

#[tokio::test]
async fn secrets_reach_instances_sealed_and_are_never_shown() {
    const VALUE: &str = "hf_s3cr3t_value_9f8e7d";
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    // Set from stdin with the CLI (never on a command line).
    let mut child = std::process::Command::new(BIN)
        .args(["secret", "set", "hf-token"])
        .env("GPUFN_SERVER", &s.url)
        .env("GPUFN_DATA_DIR", dir.path())
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{VALUE}\n").as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A spec naming a secret that does not exist is refused, naming the field.
    let (status, body) = s
        .deploy_yaml(&testfn_spec("f", "env_from_secrets: {API_KEY: nope}"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["field"], "env_from_secrets.API_KEY");
    // The instance gets the value in its environment.
    s.deploy_testfn("f", "env_from_secrets: {HF_TOKEN: hf-token}")
        .await;
    let (status, echo) = call(s.http.get(s.url("/function/f/echo"))).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["env"]["HF_TOKEN"], VALUE);

    // No read shows it: spec, list, secrets, audit; nor the log, nor the store's files.
    let mut seen = String::new();
    for path in [
        "/api/v1/functions",
        "/api/v1/functions/f",
        "/api/v1/secrets",
        "/api/v1/audit",
    ] {
        let (status, body) = call(s.http.get(s.url(path))).await;
        assert_eq!(status, 200, "{path}");
        seen.push_str(&body.to_string());
    }
    assert!(!seen.contains(VALUE), "a read showed the secret: {seen}");
    assert!(
        seen.contains("\"env_from_secrets\":{\"HF_TOKEN\":\"hf-token\"}"),
        "{seen}"
    );
    assert!(seen.contains("secret.create"), "{seen}");
    let out = s.cli(&["secret", "list"]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("hf-token") && !listed.contains(VALUE),
        "{listed}"
    );
    assert!(!s.log().contains(VALUE), "the server log shows the secret");
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                "{} holds the secret in the clear",
                path.display()
            );
        }
    }
    let key = std::fs::metadata(dir.path().join("secret.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);

    // A secret deleted after the deploy: the next start fails, naming it (the warm instance,
    // held busy here, keeps serving).
    let latch = Latch::new(dir.path(), "secret");
    let held = s.hold("f", &latch).await;
    assert_eq!(
        call(s.http.delete(s.url("/api/v1/secrets/hf-token")))
            .await
            .0,
        200
    );
    let (status, body) = call(s.http.get(s.url("/function/f/echo"))).await;
    assert_eq!(status, 503, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("env_from_secrets") && msg.contains("hf-token"),
        "{msg}"
    );
    latch.release();
    assert_eq!(held.await.unwrap(), 200);

    // Only an admin sets, lists or deletes secrets.
    let (dev, _) = token(&s, json!({"role": "developer"})).await;
    let dev = client_with_token(&dev);
    assert_eq!(
        call(
            dev.put(s.url("/api/v1/secrets/x"))
                .json(&json!({"value": "v"}))
        )
        .await
        .0,
        403
    );
    assert_eq!(call(dev.get(s.url("/api/v1/secrets"))).await.0, 403);
    // A bad body never echoes what was sent.
    let (status, body) = call(
        s.http
            .put(s.url("/api/v1/secrets/x"))
            .header("content-type", "application/json")
            .body(format!("{{\"value\": \"{VALUE}\", \"extra\": 1}}")),
    )
    .await;
    assert_eq!(status, 400);
    assert!(!body.to_string().contains(VALUE), "{body}");
}

/// The memory-controller cgroup directory of a process (cgroup v1), if any.
fn memory_cgroup(pid: u64) -> Option<std::path::PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
        ctrls.split(',').any(|c| c == "memory").then(|| {
            std::path::Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'))
        })
    })
}

#[tokio::test]
async fn process_instances_run_unprivileged_in_a_cgroup_that_dies_with_them() {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "this test needs root (gpufn switches users and makes cgroups as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("jail", "memory_mb: 300\ncpu: 0.5").await;
    let (status, v) = call(s.http.get(s.url("/function/jail/escape"))).await;
    assert_eq!(status, 200, "{v}");
    assert_ne!(v["uid"], 0, "function code does not run as root: {v}");
    let app = v["pid"].as_u64().unwrap();
    let escaped: Vec<u64> = v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    for &p in &escaped {
        assert!(process_alive(p as i64), "child {p} started");
    }
    // The instance's cgroup carries the spec's limits (where the memory controller is v1).
    if let Some(cg) = memory_cgroup(app).filter(|d| d.join("memory.limit_in_bytes").exists()) {
        assert!(cg.to_string_lossy().contains("gpufn-"), "{}", cg.display());
        let limit = std::fs::read_to_string(cg.join("memory.limit_in_bytes")).unwrap();
        assert_eq!(limit.trim(), (300u64 * 1024 * 1024).to_string());
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap();
        for p in &escaped {
            assert!(
                procs.lines().any(|l| l.trim() == p.to_string()),
                "{p} in {procs}"
            );
        }
    }
    // The data dir is not readable by function code.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.path()), 0o711);
    assert_eq!(mode(&dir.path().join("gpufn.db")), 0o600);
    assert_eq!(mode(&dir.path().join("logs")), 0o700);
    // Deleting the function stops the instance: the setsid and env -i children die with it.
    let (status, _) = call(s.http.delete(s.url("/api/v1/functions/jail"))).await;
    assert_eq!(status, 200);
    s.wait_for(
        "the escaped children gone",
        std::time::Duration::from_secs(20),
        || {
            let e = escaped.clone();
            async move { e.iter().all(|p| !process_alive(*p as i64)) }
        },
    )
    .await;
}

#[tokio::test]
async fn a_restart_after_kill_9_removes_leftover_instance_cgroups_and_their_processes() {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(root, "this test needs root");
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    s.deploy_testfn("jail", "").await;
    let (_, v) = call(s.http.get(s.url("/function/jail/escape"))).await;
    let escaped: Vec<u64> = v["pids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    unsafe_kill(s.pid(), libc::SIGKILL);
    s.child.wait().unwrap();
    // The app itself died with gpufn (parent-death signal); its detached children did not.
    for &p in &escaped {
        assert!(
            process_alive(p as i64),
            "child {p} outlived gpufn, as expected"
        );
    }
    let again = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    again
        .wait_for(
            "leftover children gone",
            std::time::Duration::from_secs(20),
            || {
                let e = escaped.clone();
                async move { e.iter().all(|p| !process_alive(*p as i64)) }
            },
        )
        .await;
    assert!(
        again
            .log()
            .contains("instance cgroup(s) left by a previous run"),
        "{}",
        again.log()
    );
}

#[tokio::test]
async fn tls_serves_https_and_tells_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let data = dir.path().join("data");
    let s = Server::start(
        &data,
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(s.url.starts_with("https://"), "{}", s.url);
    let url = s.url.replace("127.0.0.1", "localhost");
    gpufn_oci::ensure_crypto_provider();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap())
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {}", s.token).parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let (status, _) = call(https.get(format!("{url}/api/v1/functions"))).await;
    assert_eq!(status, 200);
    let spec = testfn_spec("t", "");
    let (status, body) = call(
        https
            .post(format!("{url}/api/v1/functions"))
            .header("content-type", "application/yaml")
            .body(spec),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, echo) = call(https.get(format!("{url}/function/t/echo"))).await;
    assert_eq!(status, 200, "{echo}");
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    // Plain HTTP on the TLS port gets no answer; a client that does not trust the certificate
    // does not connect.
    let plain = url.replace("https://", "http://");
    let r = http_client().get(format!("{plain}/healthz")).send().await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
    assert!(
        http_client()
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err()
    );
    // Bad files are refused at start, naming the flag.
    let out = std::process::Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data2"))
        .args([
            "--tls-cert",
            key.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--tls-cert"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_api_describes_itself_and_every_described_path_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    assert_eq!(
        call(http_client().get(s.url("/api/v1/openapi.json")))
            .await
            .0,
        401
    );
    let (status, doc) = call(s.http.get(s.url("/api/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (path, item) in paths {
        let concrete = path.replace("{name}", "nope").replace("{id}", "nope");
        // OPTIONS is no documented method: a routed path answers 405 (or the method's own
        // answer), an unrouted one the fallback's 404 `not_found`.
        let (status, body) = call(s.http.request(reqwest::Method::OPTIONS, s.url(&concrete))).await;
        assert!(
            !(status == 404 && body["error"]["code"] == "not_found"),
            "{path} is described but not routed"
        );
        for op in item.as_object().unwrap().values() {
            assert!(op["x-gpufn-min-role"].is_string(), "{path}");
        }
    }
    let (status, body) = call(s.http.get(s.url("/api/v1/no-such-thing"))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}
