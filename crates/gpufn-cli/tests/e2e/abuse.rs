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
