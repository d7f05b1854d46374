//! The gateway on the wire: pipelining, the hand-over from the direct path to hyper on one
//! connection, chunked and close-delimited responses, large bodies, forwarding headers — checked
//! with raw sockets, for both `--gateway direct` (the default) and `--gateway hyper`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// One HTTP/1.1 response read off a raw connection.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A raw client connection with a read buffer.
struct Raw {
    conn: TcpStream,
    buf: Vec<u8>,
    /// `authorization: Bearer <admin token>\r\n`, put in front of every `host` line sent.
    auth_line: String,
}

impl Raw {
    async fn connect(s: &Server) -> Raw {
        let addr = s.addr();
        Raw {
            conn: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
            auth_line: format!("authorization: Bearer {}\r\n", s.token),
        }
    }

    /// Sends `bytes` as they are, except that every request head (each `\r\nhost: ` line) gets
    /// the admin token: the functions here take tokens, as every function does by default.
    async fn send(&mut self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let bytes = if text.contains("\r\nhost: ") {
            text.replace("\r\nhost: ", &format!("\r\n{}host: ", self.auth_line))
                .into_bytes()
        } else {
            bytes.to_vec()
        };
        self.conn.write_all(&bytes).await.unwrap();
    }

    /// Reads more; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(20), self.conn.read(&mut chunk))
            .await
            .expect("response within 20 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + 2);
                return line;
            }
            assert!(self.fill().await, "EOF inside a line");
        }
    }

    async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "EOF inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// Reads one response, decoding its framing.
    async fn response(&mut self) -> Resp {
        let status_line = self.line().await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let mut headers = HashMap::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(':').expect("header line");
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let body = if headers
            .get("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            let mut body = Vec::new();
            loop {
                let size_line = self.line().await;
                let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                    .expect("chunk size");
                if size == 0 {
                    while !self.line().await.is_empty() {}
                    break;
                }
                body.extend(self.exact(size).await);
                assert_eq!(self.line().await, "", "CRLF after chunk data");
            }
            body
        } else if let Some(n) = headers.get("content-length") {
            self.exact(n.parse().unwrap()).await
        } else {
            while self.fill().await {}
            std::mem::take(&mut self.buf)
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    /// True when the server closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: gw\r\n\r\n")
}

async fn server(dir: &std::path::Path, gateway: &str) -> Server {
    let s = Server::start(
        dir,
        &[
            "--simulate-gpus",
            "1xtesla-t4:16",
            "--gateway",
            gateway,
            "--public-host",
            "gw",
            "--public-host",
            "gw.example",
        ],
    );
    s.deploy_testfn("d", "instance_concurrency: 4").await;
    s
}

#[tokio::test]
async fn pipelined_requests_then_a_request_for_hyper_share_one_connection() {
    for gateway in ["direct", "hyper"] {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), gateway).await;
        let mut c = Raw::connect(&s).await;
        // Two requests in one write: answered in order.
        c.send(
            format!(
                "{}{}",
                get("/function/d/echo?n=1"),
                get("/function/d/echo?n=2")
            )
            .as_bytes(),
        )
        .await;
        let (a, b) = (c.response().await, c.response().await);
        assert_eq!((a.status, b.status), (200, 200), "{gateway}");
        assert_eq!(a.json()["query"], "n=1", "{gateway}");
        assert_eq!(b.json()["query"], "n=2", "{gateway}");
        for r in [&a, &b] {
            assert!(r.headers["x-gpufn-instance-id"].starts_with("d-"), "{r:?}");
            assert_eq!(r.headers["x-gpufn-request-id"].len(), 32, "{r:?}");
            assert_eq!(r.headers["x-app-header"], "from-app");
        }
        assert_eq!(a.headers["x-gpufn-cold-start"], "true", "{gateway}");
        assert_eq!(b.headers["x-gpufn-cold-start"], "false", "{gateway}");
        assert_ne!(
            a.headers["x-gpufn-request-id"],
            b.headers["x-gpufn-request-id"]
        );

        // A chunked request body (the direct path leaves it to hyper), on the same connection.
        c.send(
            b"POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{gateway}: {r:?}");
        assert_eq!(r.json()["body"], "hello world", "{gateway}");

        // Then more function calls, an API path and an unknown function, still one connection.
        c.send(get("/function/d/echo?n=3").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(r.json()["query"], "n=3", "{gateway}");
        c.send(get("/healthz").as_bytes()).await;
        assert_eq!(c.response().await.status, 200, "{gateway}");
        c.send(get("/function/nope/x").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(r.status, 404, "{gateway}");
        assert_eq!(r.json()["error"]["code"], "function_not_found");
    }
}

#[tokio::test]
async fn chunked_and_close_delimited_responses_are_relayed_whole() {
    for gateway in ["direct", "hyper"] {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), gateway).await;
        let mut c = Raw::connect(&s).await;
        // A chunked response (extension, trailer), twice on one connection: the instance
        // connection is reused after it, which the app sees as the same peer port.
        c.send(get("/function/d/chunks").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{gateway}");
        assert_eq!(r.body, b"abcdefgh", "{gateway}");
        assert!(!r.headers.contains_key("content-length"), "{r:?}");
        c.send(get("/function/d/echo").as_bytes()).await;
        let first_port = c.response().await.json()["peer_port"].clone();
        c.send(get("/function/d/chunks").as_bytes()).await;
        assert_eq!(c.response().await.body, b"abcdefgh", "{gateway}");
        c.send(get("/function/d/echo").as_bytes()).await;
        assert_eq!(
            c.response().await.json()["peer_port"],
            first_port,
            "{gateway}: the instance connection is reused after a chunked response with trailers"
        );

        // A body that ends with the instance's connection: all of it arrives.
        c.send(get("/function/d/until-close").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{gateway}");
        assert_eq!(r.body, b"all of it", "{gateway}");
        // The next call still works (on a new connection if the gateway closed this one).
        let mut c = Raw::connect(&s).await;
        c.send(get("/function/d/echo?after=close").as_bytes()).await;
        assert_eq!(c.response().await.json()["query"], "after=close");
    }
}

#[tokio::test]
async fn large_bodies_and_forwarding_headers_go_through_intact() {
    for gateway in ["direct", "hyper"] {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), gateway).await;
        let mut c = Raw::connect(&s).await;
        // 60 KB of body (the direct path's) and 300 KB (hyper's in both modes), each sent in
        // several writes with a request right behind it.
        for kb in [60, 300] {
            big_body_then_a_request(&mut c, kb, gateway).await;
        }

        // `connection: close` from the caller: answered, then closed.
        c.send(b"GET /function/d/echo HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
            .await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{gateway}");
        assert_eq!(r.headers["connection"], "close", "{gateway}");
        assert!(c.closed().await, "{gateway}: closed after the response");
    }
}

/// A POST of `kb` KiB in 16 KiB writes with a GET pipelined behind it: both answered whole.
async fn big_body_then_a_request(c: &mut Raw, kb: usize, gateway: &str) {
    let body = "0123456789abcdef".repeat(kb * 1024 / 16);
    let head = format!(
        "POST /function/d/echo?big=1 HTTP/1.1\r\nhost: gw.example\r\ncontent-length: {}\r\n\
         x-forwarded-for: 10.0.0.1\r\nx-gpufn-request-id: trace-7\r\nx-gpufn-instance-id: forged\r\n\
         connection: keep-alive\r\n\r\n",
        body.len()
    );
    c.send(head.as_bytes()).await;
    for part in body.as_bytes().chunks(16 * 1024) {
        c.send(part).await;
    }
    c.send(get("/function/d/echo?next=1").as_bytes()).await;
    let r = c.response().await;
    assert_eq!(r.status, 200, "{gateway}");
    assert_eq!(r.headers["x-gpufn-request-id"], "trace-7");
    let v = r.json();
    assert_eq!(v["body_len"], body.len(), "{gateway}");
    assert_eq!(v["body"], body.as_str(), "{gateway}");
    let h = &v["headers"];
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1", "{gateway}");
    assert_eq!(h["x-forwarded-host"], "gw.example", "{gateway}");
    assert_eq!(h["x-forwarded-proto"], "http", "{gateway}");
    assert_eq!(h["x-gpufn-request-id"], "trace-7", "{gateway}");
    assert!(
        h["x-gpufn-instance-id"].as_str().unwrap().starts_with("d-"),
        "{gateway}: the caller cannot set the instance id: {h}"
    );
    assert_eq!(h["connection"], Value::Null, "{gateway}: hop-by-hop: {h}");
    assert_eq!(
        h["authorization"],
        Value::Null,
        "{gateway}: the caller's gpufn token never reaches the app: {h}"
    );
    let r = c.response().await;
    assert_eq!(r.json()["query"], "next=1", "{gateway}");
}

#[tokio::test]
async fn errors_and_large_heads_keep_the_connection_serving() {
    for gateway in ["direct", "hyper"] {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), gateway).await;
        let mut c = Raw::connect(&s).await;
        // A response head of 100 KiB comes through whole.
        c.send(get("/function/d/big-head?kb=100").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(
            r.status,
            200,
            "{gateway}: {:?}",
            r.headers.get("content-type")
        );
        assert_eq!(r.headers["x-big"].len(), 100 * 1024, "{gateway}");
        // The instance dies mid-request: 502 naming it, and the caller's connection goes on to
        // the next request (served by a new instance).
        c.send(get("/function/d/crash").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(r.status, 502, "{gateway}");
        assert_eq!(r.json()["error"]["code"], "instance_error", "{gateway}");
        assert!(
            r.headers["x-gpufn-instance-id"].starts_with("d-"),
            "{gateway}"
        );
        c.send(get("/function/d/echo?after=crash").as_bytes()).await;
        let r = c.response().await;
        assert_eq!(r.status, 200, "{gateway}");
        assert_eq!(r.json()["query"], "after=crash", "{gateway}");
    }
}

/// The caller's faults stay the caller's (issue 18, points 1–3), on both gateway paths: a
/// malformed or aborted request body is answered to its caller (400, or a close) and never costs
/// the instance; a body that stalls past `--client-body-timeout-s` is a 408 and frees its slot; a
/// caller that goes away while the instance streams frees the slot without waiting for the instance.
/// With one instance of concurrency 1, any slot not freed would leave the next request waiting.
#[tokio::test]
async fn a_callers_broken_or_stalled_body_or_departure_costs_the_instance_nothing() {
    for gateway in ["direct", "hyper"] {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(
            dir.path(),
            &[
                "--simulate-gpus",
                "1xtesla-t4:16",
                "--gateway",
                gateway,
                "--public-host",
                "gw",
                "--client-body-timeout-s",
                "1",
            ],
        );
        s.deploy_testfn(
            "d",
            "instance_concurrency: 1\nrequest_timeout_s: 60\nscaling: {max_instances: 1, queue_timeout_s: 60}",
        )
        .await;
        let mut c = Raw::connect(&s).await;
        c.send(get("/function/d/echo").as_bytes()).await;
        let first = c.response().await;
        assert_eq!(first.status, 200, "{gateway}: {first:?}");
        let instance = first.headers["x-gpufn-instance-id"].clone();
        // The next request is warm, on the same instance, and not held up.
        let same_instance_serves = |what: &'static str| {
            let (s, instance) = (&s, instance.clone());
            async move {
                let mut c = Raw::connect(s).await;
                c.send(get("/function/d/echo").as_bytes()).await;
                let r = c.response().await;
                assert_eq!(r.status, 200, "{gateway}, after {what}: {r:?}");
                assert_eq!(
                    r.headers["x-gpufn-instance-id"],
                    instance,
                    "{gateway}, after {what}: the instance was replaced\n{}",
                    s.log()
                );
                assert_eq!(
                    r.headers["x-gpufn-cold-start"], "false",
                    "{gateway}, {what}"
                );
            }
        };

        // 1. A malformed chunked body: the caller's 400 (or a close), not the instance's 502.
        let mut bad = Raw::connect(&s).await;
        bad.send(
            b"POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nxx\r\n",
        )
        .await;
        if !bad.closed().await {
            let r = bad.response().await;
            assert_eq!(r.status, 400, "{gateway}: {r:?}");
            assert_eq!(r.json()["error"]["code"], "bad_request_body", "{gateway}");
        }
        same_instance_serves("a malformed chunked body").await;

        // An upload the caller abandons halfway (length-delimited and chunked).
        for head in [
            "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: 100\r\n\r\n0123456789",
            "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n",
        ] {
            let mut gone = Raw::connect(&s).await;
            gone.send(head.as_bytes()).await;
            drop(gone);
            same_instance_serves("an abandoned upload").await;
        }

        // 2. A body that stalls: 408 after the body timeout; the slot it may hold is freed.
        for head in [
            "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: 10\r\n\r\n0",
            "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked\r\n\r\n1\r\n0\r\n",
        ] {
            let mut slow = Raw::connect(&s).await;
            slow.send(head.as_bytes()).await;
            let r = slow.response().await;
            assert_eq!(r.status, 408, "{gateway}: {r:?}");
            assert_eq!(r.json()["error"]["code"], "body_timeout", "{gateway}");
            same_instance_serves("a stalled body").await;
        }

        // 3. A caller that goes away while the instance streams (and then hangs): the slot is
        // freed, though the instance never finishes this response.
        let mut leaving = Raw::connect(&s).await;
        leaving
            .send(get("/function/d/hold?key=never").as_bytes())
            .await;
        let status = leaving.line().await;
        assert!(status.contains(" 200 "), "{gateway}: {status}");
        while !leaving.buf.windows(6).any(|w| w == b"first\n") {
            assert!(leaving.fill().await, "{gateway}: the first chunk");
        }
        drop(leaving);
        same_instance_serves("a caller that left a streaming response").await;
    }
}

/// Request smuggling and framing (issue 18, point 13), on both gateway paths: two different
/// lengths, an obsolete line fold, a coding after `chunked`, or too many header lines is refused
/// whole (400 or 431); a head with both `Content-Length` and `Transfer-Encoding` is read by its
/// chunked framing (or refused); and the connection is closed either way — nothing after it is
/// read as another request, and the instance never sees a smuggled one.
#[tokio::test]
async fn smuggling_and_bad_framing_are_refused_whole() {
    for gateway in ["direct", "hyper"] {
        let dir = tempfile::tempdir().unwrap();
        let s = server(dir.path(), gateway).await;
        let mut warm = Raw::connect(&s).await;
        warm.send(get("/function/d/echo").as_bytes()).await;
        let first = warm.response().await;
        assert_eq!(first.status, 200);
        let instance = first.headers["x-gpufn-instance-id"].clone();
        let smuggled = "GET /function/d/echo?smuggled=1 HTTP/1.1\r\nhost: gw\r\n\r\n";
        let many: String = (0..150).map(|i| format!("x-h{i}: 1\r\n")).collect();
        let cases = [
            (
                "CL and TE",
                format!(
                    "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
                    5 + smuggled.len()
                ),
                400,
            ),
            (
                "two lengths",
                format!(
                    "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ncontent-length: 0\r\ncontent-length: {}\r\n\r\n{smuggled}",
                    smuggled.len()
                ),
                400,
            ),
            (
                "obs-fold",
                format!(
                    "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\nx-a: 1\r\n folded: content-length: 0\r\ncontent-length: {}\r\n\r\n{smuggled}",
                    smuggled.len()
                ),
                400,
            ),
            (
                "chunked, identity",
                format!(
                    "POST /function/d/echo HTTP/1.1\r\nhost: gw\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
                ),
                400,
            ),
            (
                "150 header lines",
                format!("GET /function/d/echo HTTP/1.1\r\nhost: gw\r\n{many}\r\n{smuggled}"),
                431,
            ),
        ];
        for (what, bytes, status) in cases {
            let mut c = Raw::connect(&s).await;
            c.send(bytes.as_bytes()).await;
            let r = c.response().await;
            // RFC 9112 §6.1: with both, Transfer-Encoding wins and the connection closes after
            // the response (or the request is refused) — either way nothing follows it.
            let te_wins = what == "CL and TE"
                && r.status == 200
                && r.headers.get("connection").is_some_and(|v| v == "close")
                && r.json()["body_len"] == 0;
            assert!(
                r.status == status || te_wins,
                "{gateway}, {what}: {} {:?}",
                r.status,
                r.headers
            );
            assert!(
                c.closed().await,
                "{gateway}, {what}: the connection is closed"
            );
        }
        let log = s
            .get_text(&format!(
                "/api/v1/functions/d/instances/{instance}/logs?tail=1000"
            ))
            .await;
        assert!(
            !log.contains("smuggled"),
            "{gateway}: the instance saw: {log}"
        );
    }
}
