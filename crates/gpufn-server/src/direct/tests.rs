use super::response::{Framing, Parsed, ResponseInfo, UpError, parse_response};
use super::*;

#[test]
fn paths_split_into_name_and_target() {
    assert_eq!(split_path("/function/f"), Some(("f", "")));
    assert_eq!(split_path("/function/f/"), Some(("f", "/")));
    assert_eq!(split_path("/function/f/a/b?x=1"), Some(("f", "/a/b?x=1")));
    assert_eq!(split_path("/function/f?x=1"), Some(("f", "?x=1")));
    assert_eq!(split_path("/function/"), None);
    assert_eq!(split_path("/function//x"), None);
    assert_eq!(split_path("/other/f"), None);
    assert_eq!(split_path("/function/f/a#frag"), None);
    assert_eq!(split_path("/function/f/\u{e9}"), None);
}

#[test]
fn lengths_are_plain_digits() {
    assert_eq!(parse_length(b"0"), Some(0));
    assert_eq!(parse_length(b"1024"), Some(1024));
    for bad in [
        &b""[..],
        b"+1",
        b"-1",
        b" 1",
        b"1,1",
        b"0x10",
        b"99999999999999999999",
    ] {
        assert_eq!(parse_length(bad), None, "{bad:?}");
    }
}

#[test]
fn only_keep_alive_and_close_connection_tokens_are_taken() {
    assert_eq!(connection_tokens(b"keep-alive"), Some(false));
    assert_eq!(connection_tokens(b"Keep-Alive, close"), Some(true));
    assert_eq!(connection_tokens(b" close "), Some(true));
    assert_eq!(connection_tokens(b"upgrade"), None);
    assert_eq!(connection_tokens(b"close, x-private"), None);
}

fn served() -> Served<'static> {
    static INSTANCE: http::HeaderValue = http::HeaderValue::from_static("i-1");
    Served {
        instance: &INSTANCE,
        cold: false,
    }
}

fn head(resp: &str, close: bool) -> Result<(ResponseInfo, usize, String), UpError> {
    let mut out = Vec::new();
    match parse_response(resp.as_bytes(), &mut out, b"rid", served(), close)? {
        Parsed::Head(info, len) => Ok((info, len, String::from_utf8(out).expect("utf-8"))),
        Parsed::Interim(n) => panic!("interim of {n}"),
        Parsed::Partial => panic!("partial"),
    }
}

#[test]
fn response_heads_are_rewritten_for_the_caller() {
    let resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nx-gpufn-instance-id: forged\r\nX-App: a\r\n\r\nok";
    let (info, len, out) = head(resp, false).expect("parsed");
    assert_eq!(len, resp.len() - 2, "the head ends before the body");
    assert_eq!(info.status, 200);
    assert!(matches!(info.framing, Framing::Length(2)));
    assert!(info.upstream_keep_alive);
    assert!(!info.close_client);
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-App: a\r\nx-gpufn-instance-id: i-1\r\nx-gpufn-cold-start: false\r\nx-gpufn-request-id: rid\r\n\r\n"
    );
}

#[test]
fn framing_follows_rfc_9112() {
    let chunked = head(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
        false,
    )
    .expect("parsed");
    assert!(matches!(chunked.0.framing, Framing::Chunked(_)));
    assert!(!chunked.2.contains("Content-Length"), "{}", chunked.2);
    assert!(chunked.2.contains("transfer-encoding: chunked\r\n"));

    let close = head("HTTP/1.1 200 OK\r\n\r\n", false).expect("parsed");
    assert!(matches!(close.0.framing, Framing::Close));
    assert!(close.0.close_client && !close.0.upstream_keep_alive);
    assert!(close.2.ends_with("connection: close\r\n\r\n"));

    let not_modified = head(
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
        false,
    )
    .expect("parsed");
    assert!(matches!(not_modified.0.framing, Framing::Empty));

    let old = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", false).expect("parsed");
    assert!(
        !old.0.upstream_keep_alive,
        "HTTP/1.0 without keep-alive closes"
    );

    let closing = head(
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        true,
    )
    .expect("parsed");
    assert!(!closing.0.upstream_keep_alive);
    assert!(closing.0.close_client, "the caller asked to close");

    for bad in [
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 2000 OK\r\n\r\n",
    ] {
        assert!(head(bad, false).is_err(), "{bad:?}");
    }
}

#[test]
fn interim_responses_are_skipped() {
    let mut out = Vec::new();
    let r = parse_response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        &mut out,
        b"rid",
        served(),
        false,
    )
    .expect("parsed");
    assert!(matches!(r, Parsed::Interim(25)));
}

#[test]
fn a_head_is_complete_at_its_blank_line_and_searched_once() {
    let mut scanned = 0;
    assert!(!head_complete(
        b"GET / HTTP/1.1\r\nhost: a\r\n",
        &mut scanned
    ));
    assert_eq!(scanned, 25);
    // The blank line split across reads is still found.
    assert!(head_complete(
        b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
        &mut scanned
    ));
    let mut scanned = 0;
    assert!(head_complete(b"GET / HTTP/1.1\nhost: a\n\n", &mut scanned));
    let mut scanned = 0;
    assert!(!head_complete(b"", &mut scanned));
}
