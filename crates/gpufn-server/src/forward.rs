//! The forwarding rules: what gpufn does to a request on its way from a caller to an instance and
//! to the response on its way back, defined once for every path that forwards — the direct
//! gateway ([`crate::direct`], bytes), the hyper gateway ([`crate::gateway`], `http` types) and the
//! async-task dispatcher ([`crate::tasks`]).
//!
//! Like pingora's proxy phases, the paths only move bytes and call in here at fixed points:
//!
//! | phase | rule |
//! | --- | --- |
//! | request head read | [`split_target`] (function name, the instance's target), [`request_id`], [`admit`] |
//! | headers copied | [`request_header_forwarded`] / [`strip_request`] (hop-by-hop, the ones gpufn sets, the caller's token) |
//! | slot taken | [`add_request_headers`], [`add_instance_headers`]; a refused slot is [`acquire_error`] |
//! | instance failed | [`instance_error`] (502, marks it broken), [`request_timeout_error`] (504) |
//! | response head | [`response_header_forwarded`] / [`strip_response`], [`add_response_headers`], [`record_cold_start`], [`observe`] |
//!
//! Where the two header forms need the same rule, it is written against [`HeadOut`]: a
//! `HeaderMap`, or a head being written as bytes.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::error::ApiError;
use crate::metrics::StatusLabels;
use crate::platform::Platform;
use crate::pool::{AcquireError, Pool, Slot};
use crate::util::now_ms;

/// Header: the request's id (the caller's own if it sent a valid one), to the instance and back.
pub const REQUEST_ID: &str = "x-gpufn-request-id";
/// Header: the instance that serves the request, to the instance and back.
pub const INSTANCE_ID: &str = "x-gpufn-instance-id";
/// Response header: `true` when the request waited for an instance to start.
pub const COLD_START: &str = "x-gpufn-cold-start";

/// The path prefix of the synchronous HTTP trigger.
pub(crate) const FUNCTION_PREFIX: &str = "/function/";

pub(crate) const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
pub(crate) const INSTANCE_ID_HEADER: HeaderName = HeaderName::from_static(INSTANCE_ID);
const COLD_START_HEADER: HeaderName = HeaderName::from_static(COLD_START);
// Header names as constants: parsing a `&str` name on every request showed in profiles.
pub(crate) const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

const HOP_N: usize = 9;

/// Headers that belong to one hop and are never forwarded either way (RFC 9110 §7.6.1).
/// `connection` first: the headers it names are hop-by-hop too.
static HOP_BY_HOP: [HeaderName; HOP_N] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers gpufn sets on the request to an instance: a caller's own are dropped, never passed on.
static SET_ON_REQUEST: [HeaderName; 5] = [
    FORWARDED_FOR,
    FORWARDED_HOST,
    FORWARDED_PROTO,
    REQUEST_ID_HEADER,
    INSTANCE_ID_HEADER,
];

/// Headers gpufn sets on the response to the caller: an instance's own are dropped.
static SET_ON_RESPONSE: [HeaderName; 3] =
    [INSTANCE_ID_HEADER, COLD_START_HEADER, REQUEST_ID_HEADER];

fn named(list: &[HeaderName], name: &str) -> bool {
    list.iter().any(|h| name.eq_ignore_ascii_case(h.as_str()))
}

/// Whether a caller's request header (any case) is copied to the instance as it is. (Headers a
/// `Connection` header lists are hop-by-hop as well; the direct path takes no request that
/// lists any.)
pub(crate) fn request_header_forwarded(name: &str) -> bool {
    !(named(&HOP_BY_HOP, name) || named(&SET_ON_REQUEST, name))
}

/// Whether an instance's response header (any case) is copied to the caller as it is, beside the
/// headers its `Connection` header lists, which are not.
pub(crate) fn response_header_forwarded(name: &str) -> bool {
    !(named(&HOP_BY_HOP, name) || named(&SET_ON_RESPONSE, name))
}

/// Removes what [`request_header_forwarded`] does not copy, and the headers `Connection` lists.
pub(crate) fn strip_request(headers: &mut HeaderMap) {
    strip(headers, &SET_ON_REQUEST);
}

/// Removes what [`response_header_forwarded`] does not copy, and the headers `Connection` lists.
pub(crate) fn strip_response(headers: &mut HeaderMap) {
    strip(headers, &SET_ON_RESPONSE);
}

/// Removes the hop-by-hop headers, the ones `Connection` names, and `also`.
fn strip(headers: &mut HeaderMap, also: &[HeaderName]) {
    // One pass over the (few) headers present, comparing header names (no string parsing or
    // hashing); then only the names present are removed. Most requests carry none and most
    // responses just `connection: keep-alive`.
    let mut present = [false; HOP_N + 5];
    let listed = HOP_BY_HOP.iter().chain(also);
    for k in headers.keys() {
        if let Some(i) = listed.clone().position(|h| h == k) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        // Other headers the sender declared hop-by-hop (`connection: close, x-private`); the
        // common tokens (keep-alive, close) need no parsing.
        let mut named_there: Vec<HeaderName> = Vec::new();
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            if token.is_empty() || token.eq_ignore_ascii_case("close") || named(&HOP_BY_HOP, token)
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named_there.push(name);
            }
        }
        for name in named_there {
            headers.remove(name);
        }
    }
    for (name, _) in listed.zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// `{prefix}{name}{rest}` → (`name`, `rest`), from a request's path and query: `rest` is empty,
/// a query (`?q`) or a path (`/p?q`); [`put_target`] makes the instance's target of it. The
/// name may be empty (no function has that name).
pub(crate) fn split_target<'a>(
    path_and_query: &'a str,
    prefix: &str,
) -> Option<(&'a str, &'a str)> {
    let rest = path_and_query.strip_prefix(prefix)?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// Appends the instance's request target for `rest` of [`split_target`]: it, with a leading `/`
/// when it has none (`/function/f?x=1` → `/?x=1`).
pub(crate) fn put_target(out: &mut Vec<u8>, rest: &str) {
    if !rest.starts_with('/') {
        out.push(b'/');
    }
    out.extend_from_slice(rest.as_bytes());
}

/// The instance's request target for `rest` of [`split_target`], as a string.
pub(crate) fn target(rest: &str) -> Cow<'_, str> {
    if rest.starts_with('/') {
        Cow::Borrowed(rest)
    } else {
        Cow::Owned(format!("/{rest}"))
    }
}

/// Writes the request's id into `out` (cleared first): the caller's if it sent a sane one
/// ([`sane_request_id`]), else a new one.
pub(crate) fn request_id(caller: Option<&[u8]>, out: &mut Vec<u8>) {
    out.clear();
    match caller.filter(|v| sane_request_id(v)) {
        Some(v) => out.extend_from_slice(v),
        None => out.extend_from_slice(&fresh_request_id()),
    }
}

/// [`request_id`] as a header value: the caller's own value when it is kept (no copy).
pub(crate) fn request_id_header(caller: Option<&HeaderValue>) -> HeaderValue {
    match caller.filter(|v| sane_request_id(v.as_bytes())) {
        Some(v) => v.clone(),
        None => HeaderValue::from_maybe_shared(bytes::Bytes::copy_from_slice(&fresh_request_id()))
            .unwrap_or_else(|_| HeaderValue::from_static("-")),
    }
}

fn fresh_request_id() -> [u8; uuid::fmt::Simple::LENGTH] {
    let mut id = [0u8; uuid::fmt::Simple::LENGTH];
    uuid::Uuid::new_v4().simple().encode_lower(&mut id);
    id
}

/// A caller's request id is kept if it is 1–128 characters of `[A-Za-z0-9-_.:]`.
pub(crate) fn sane_request_id(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
}

/// Who sent a request: the peer's address, and that address as an `x-forwarded-for` value (made
/// once per connection by the accept loop).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The peer's IP address.
    pub ip: std::net::IpAddr,
    /// `ip` as a header value.
    pub header: HeaderValue,
    /// The connection is TLS (`x-forwarded-proto: https`).
    pub https: bool,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = addr.ip();
        let header = HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        Self {
            ip,
            header,
            https: false,
        }
    }
}

/// A header value gpufn adds, in the form its path holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    /// A constant.
    Static(&'static str),
    /// A header value gpufn holds already (the hyper path clones it: no copy).
    Header(&'a HeaderValue),
    /// Bytes of a head being parsed (the direct path).
    Bytes(&'a [u8]),
}

impl Value<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Value::Static(s) => s.as_bytes(),
            Value::Header(v) => v.as_bytes(),
            Value::Bytes(b) => b,
        }
    }
}

/// A head gpufn adds headers to: a `HeaderMap` (the hyper path), or a head being written as bytes
/// (the direct path), where the name is not present yet because [`request_header_forwarded`] /
/// [`response_header_forwarded`] did not copy it.
pub(crate) trait HeadOut {
    /// Sets `name` to `value`.
    fn set(&mut self, name: &HeaderName, value: Value<'_>);
    /// Sets `name` to the list `first, then`.
    fn set_list(&mut self, name: &HeaderName, first: Value<'_>, then: Value<'_>);
}

impl HeadOut for Vec<u8> {
    fn set(&mut self, name: &HeaderName, value: Value<'_>) {
        self.extend_from_slice(name.as_str().as_bytes());
        self.extend_from_slice(b": ");
        self.extend_from_slice(value.as_bytes());
        self.extend_from_slice(b"\r\n");
    }

    fn set_list(&mut self, name: &HeaderName, first: Value<'_>, then: Value<'_>) {
        self.extend_from_slice(name.as_str().as_bytes());
        self.extend_from_slice(b": ");
        self.extend_from_slice(first.as_bytes());
        self.extend_from_slice(b", ");
        self.extend_from_slice(then.as_bytes());
        self.extend_from_slice(b"\r\n");
    }
}

impl HeadOut for HeaderMap {
    fn set(&mut self, name: &HeaderName, value: Value<'_>) {
        let value = match value {
            Value::Static(s) => HeaderValue::from_static(s),
            Value::Header(v) => v.clone(),
            // Bytes of a header value already, or made by gpufn: valid.
            Value::Bytes(b) => match HeaderValue::from_bytes(b) {
                Ok(v) => v,
                Err(_) => return,
            },
        };
        self.insert(name.clone(), value);
    }

    fn set_list(&mut self, name: &HeaderName, first: Value<'_>, then: Value<'_>) {
        let joined = [first.as_bytes(), b", ", then.as_bytes()].concat();
        self.set(name, Value::Bytes(&joined));
    }
}

/// What the caller's request said that gpufn's own request headers are made from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallerHead<'a> {
    /// The first `X-Forwarded-For` (gpufn appends the peer to it).
    pub forwarded_for: Option<Value<'a>>,
    /// The first `Host` (or the request's authority), passed on as `X-Forwarded-Host`.
    pub host: Option<Value<'a>>,
}

/// The headers gpufn adds to every forwarded request, before a slot is taken: `X-Forwarded-For`
/// (the caller's, then the peer), `X-Forwarded-Host`, `X-Forwarded-Proto` and the request id.
pub(crate) fn add_request_headers(
    out: &mut impl HeadOut,
    peer: Option<&Peer>,
    caller: CallerHead<'_>,
    request_id: Value<'_>,
) {
    let peer_ip = peer.map(|p| Value::Header(&p.header));
    match (caller.forwarded_for, peer_ip) {
        (Some(prev), Some(ip)) => out.set_list(&FORWARDED_FOR, prev, ip),
        (Some(one), None) | (None, Some(one)) => out.set(&FORWARDED_FOR, one),
        (None, None) => {}
    }
    if let Some(host) = caller.host {
        out.set(&FORWARDED_HOST, host);
    }
    let https = peer.is_some_and(|p| p.https);
    out.set(
        &FORWARDED_PROTO,
        Value::Static(if https { "https" } else { "http" }),
    );
    out.set(&REQUEST_ID_HEADER, request_id);
}

/// The headers that need the slot: the instance's id, and `Host` (the instance's address) when
/// the caller sent none.
pub(crate) fn add_instance_headers(out: &mut impl HeadOut, slot: &Slot, has_host: bool) {
    out.set(&INSTANCE_ID_HEADER, Value::Header(slot.instance_header()));
    if !has_host {
        out.set(
            &header::HOST,
            Value::Bytes(slot.addr().to_string().as_bytes()),
        );
    }
}

/// The instance that served a response, as its headers tell the caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Served<'a> {
    /// The instance's id.
    pub instance: &'a HeaderValue,
    /// The request waited for the instance to start.
    pub cold: bool,
}

impl<'a> Served<'a> {
    /// The instance holding `slot`.
    pub(crate) fn by(slot: &'a Slot) -> Self {
        Self {
            instance: slot.instance_header(),
            cold: slot.cold_start(),
        }
    }
}

/// The headers gpufn adds to every response to a forwarded request, errors included: the
/// instance's id and whether it was a cold start (when an instance was involved), and the
/// request id.
pub(crate) fn add_response_headers(
    out: &mut impl HeadOut,
    served: Option<Served<'_>>,
    request_id: Value<'_>,
) {
    if let Some(s) = served {
        out.set(&INSTANCE_ID_HEADER, Value::Header(s.instance));
        out.set(
            &COLD_START_HEADER,
            Value::Static(if s.cold { "true" } else { "false" }),
        );
    }
    out.set(&REQUEST_ID_HEADER, request_id);
}

/// Whether the caller's `Authorization` reaches the function: not when it carries a gpufn
/// token (function code never sees a caller's token).
pub(crate) fn authorization_forwarded(pool: &Pool) -> bool {
    pool.trigger_auth() != gpufn_spec::TriggerAuth::Token
}

/// Checks the caller of a trigger request against the function's `auth` (the hyper path and the
/// async trigger; the direct path takes only callers [`crate::auth::Access::may_invoke_cached`]
/// admits and hands the rest to this). A [`gpufn_auth::Grant`] already in the request's
/// extensions comes from gpufn itself (the FC API, which checked its own signature); a client
/// cannot put one there. The gpufn token is taken off the request.
pub(crate) fn admit(
    platform: &Platform,
    pool: &Pool,
    req: &mut http::Request<axum::body::Body>,
) -> Result<Option<gpufn_auth::Grant>, ApiError> {
    let name = pool.name();
    let grant = match req.extensions().get::<gpufn_auth::Grant>() {
        Some(g) => {
            g.check(gpufn_auth::Action::Invoke, Some(name))
                .map_err(crate::auth::forbidden)?;
            Some(g.clone())
        }
        None => platform
            .access()
            .trigger(pool.trigger_auth(), name, req.headers())?,
    };
    if !authorization_forwarded(pool) {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    Ok(grant)
}

/// The answer to a request that got no slot.
pub(crate) fn acquire_error(e: AcquireError) -> ApiError {
    let message = e.to_string();
    match e {
        AcquireError::QueueFull { .. } => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message).retry_after(1)
        }
        AcquireError::QueueTimeout {
            blocked: Some(gpufn_gpu::AllocError::QuotaExceeded { .. }),
            ..
        } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message).retry_after(5),
        AcquireError::QueueTimeout {
            blocked: Some(_), ..
        } => ApiError::new(StatusCode::TOO_MANY_REQUESTS, "no_capacity", message).retry_after(5),
        AcquireError::QueueTimeout { blocked: None, .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queue_timeout", message).retry_after(1)
        }
        AcquireError::StartFailed {
            timed_out: true, ..
        } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "startup_timeout", message).retry_after(1),
        AcquireError::StartFailed { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "start_failed", message).retry_after(1)
        }
        AcquireError::Deleted => {
            ApiError::new(StatusCode::NOT_FOUND, "function_not_found", message)
        }
        AcquireError::ShuttingDown => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message).retry_after(1)
        }
    }
}

/// 502: the instance holding `slot` broke the exchange (refused, reset, closed, sent no valid
/// HTTP). The caller marks the instance broken unless the failure was the connection's, not
/// the app's (an idle connection closed as the request went out).
pub(crate) fn instance_error(slot: &Slot, error: &dyn std::error::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "instance_error",
        format!(
            "instance {} failed to answer: {}",
            slot.instance_id(),
            error_chain(error)
        ),
    )
}

/// 504: the instance holding `slot` sent no response head within the function's
/// `request_timeout_s`.
pub(crate) fn request_timeout_error(slot: &Slot) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "request_timeout",
        format!(
            "instance {} sent no response within request_timeout_s ({}s)",
            slot.instance_id(),
            slot.request_timeout().as_secs()
        ),
    )
}

/// An error and its sources, `: `-separated; a source whose words the message already ends
/// with (`cannot connect to …: {source}`) is not said twice.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let words = inner.to_string();
        if !s.ends_with(&words) {
            s.push_str(": ");
            s.push_str(&words);
        }
        cur = inner.source();
    }
    s
}

/// Records a forwarded request's duration and status (at its response head, on every path).
/// Unknown functions never get here: random names cannot grow the label sets.
pub(crate) fn observe(platform: &Platform, pool: &Pool, status: u16, arrival: Instant) {
    let m = pool.metrics();
    let took = arrival.elapsed().as_secs_f64();
    m.request_duration.observe(took);
    m.recent.record((took * 1000.0) as f32);
    if status == 200 {
        m.ok.inc();
    } else {
        platform
            .metrics()
            .invocations
            .get_or_create(&StatusLabels {
                function: pool.name().to_string(),
                status: status.to_string(),
            })
            .inc();
    }
}

/// Records the cold start of a request that arrived at `arrival` and waited for its instance,
/// when its response head came (the `first_response` phase ends here).
pub(crate) fn record_cold_start(platform: &Platform, slot: &Slot, arrival: Instant) {
    if let Some((phases, ready_at)) = slot.cold_start_info() {
        // Wall-clock arrival, worked out only for the (rare) cold start: one clock read less on
        // every warm request.
        let arrival_ms = now_ms() - i64::try_from(arrival.elapsed().as_millis()).unwrap_or(0);
        platform.record_cold_start(slot, arrival_ms, arrival, phases, ready_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_path_and_query() {
        let cases = [
            ("/function/f", Some(("f", "/"))),
            ("/function/f/", Some(("f", "/"))),
            ("/function/f/a/b?x=1&y=2", Some(("f", "/a/b?x=1&y=2"))),
            ("/function/f?x=1", Some(("f", "/?x=1"))),
            ("/function/", Some(("", "/"))),
            ("/other", None),
        ];
        for (pq, want) in cases {
            let got = split_target(pq, FUNCTION_PREFIX).map(|(n, rest)| {
                let mut t = Vec::new();
                put_target(&mut t, rest);
                assert_eq!(target(rest).as_bytes(), &t[..], "{pq}");
                (n, String::from_utf8(t).expect("utf-8"))
            });
            assert_eq!(got.as_ref().map(|(n, t)| (*n, t.as_str())), want, "{pq}");
        }
        assert_eq!(
            split_target("/async-function/g/x", "/async-function/"),
            Some(("g", "/x"))
        );
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        strip(&mut h, &[]);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-keep"]);
        // Listed in mixed case and with a second connection header.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("Keep-Alive"));
        h.append("connection", HeaderValue::from_static(" X-Other ,close"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-length", HeaderValue::from_static("3"));
        strip(&mut h, &[]);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length"]);
        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        strip(&mut h, &[]);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn both_header_forms_drop_the_same_headers() {
        // The names each list drops, in odd cases, and some that pass.
        let names = [
            "Connection",
            "keep-alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Authorization",
            "X-Forwarded-For",
            "x-forwarded-host",
            "X-Forwarded-Proto",
            "x-gpufn-request-id",
            "X-Gpufn-Instance-Id",
            "x-gpufn-cold-start",
            "host",
            "content-length",
            "content-type",
            "authorization",
        ];
        let map = |names: &[&str]| {
            let mut h = HeaderMap::new();
            for n in names {
                h.insert(
                    HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_static("1"),
                );
            }
            h
        };
        let kept = |h: HeaderMap| {
            let mut v: Vec<String> = h.keys().map(|k| k.as_str().to_string()).collect();
            v.sort();
            v
        };
        let expect = |f: fn(&str) -> bool| {
            let mut v: Vec<String> = names
                .iter()
                .filter(|n| f(n))
                .map(|n| n.to_ascii_lowercase())
                .collect();
            v.sort();
            v
        };
        let mut req = map(&names);
        strip_request(&mut req);
        assert_eq!(kept(req), expect(request_header_forwarded));
        assert_eq!(
            expect(request_header_forwarded),
            [
                "authorization",
                "content-length",
                "content-type",
                "host",
                "x-gpufn-cold-start"
            ]
        );
        let mut resp = map(&names);
        strip_response(&mut resp);
        assert_eq!(kept(resp), expect(response_header_forwarded));
        assert_eq!(
            expect(response_header_forwarded),
            [
                "authorization",
                "content-length",
                "content-type",
                "host",
                "x-forwarded-for",
                "x-forwarded-host",
                "x-forwarded-proto"
            ]
        );
    }

    #[test]
    fn gpufn_request_headers_are_the_same_in_both_forms() {
        let peer = Peer::new("10.0.0.7:5000".parse().expect("addr"));
        let rid = b"rid-1";
        let with = CallerHead {
            forwarded_for: Some(Value::Bytes(b"1.2.3.4")),
            host: Some(Value::Static("example.org")),
        };
        let without = CallerHead {
            forwarded_for: None,
            host: None,
        };
        for (caller, peer) in [
            (without, Some(&peer)),
            (with, Some(&peer)),
            (with, None),
            (without, None),
        ] {
            let mut bytes = Vec::new();
            add_request_headers(&mut bytes, peer, caller, Value::Bytes(rid));
            let mut map = HeaderMap::new();
            add_request_headers(&mut map, peer, caller, Value::Bytes(rid));
            let mut from_map = Vec::new();
            for (k, v) in &map {
                from_map.extend_from_slice(k.as_str().as_bytes());
                from_map.extend_from_slice(b": ");
                from_map.extend_from_slice(v.as_bytes());
                from_map.extend_from_slice(b"\r\n");
            }
            assert_eq!(
                String::from_utf8(bytes).expect("utf-8"),
                String::from_utf8(from_map).expect("utf-8")
            );
        }
        let mut bytes = Vec::new();
        add_request_headers(&mut bytes, Some(&peer), with, Value::Bytes(rid));
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            "x-forwarded-for: 1.2.3.4, 10.0.0.7\r\nx-forwarded-host: example.org\r\n\
             x-forwarded-proto: http\r\nx-gpufn-request-id: rid-1\r\n"
        );
    }

    #[test]
    fn response_headers_name_the_instance_and_the_request() {
        let mut bytes = Vec::new();
        let instance = HeaderValue::from_static("f-1");
        let served = Served {
            instance: &instance,
            cold: true,
        };
        add_response_headers(&mut bytes, Some(served), Value::Bytes(b"r"));
        assert_eq!(
            String::from_utf8(bytes).expect("utf-8"),
            "x-gpufn-instance-id: f-1\r\nx-gpufn-cold-start: true\r\nx-gpufn-request-id: r\r\n"
        );
        let mut map = HeaderMap::new();
        add_response_headers(&mut map, None, Value::Static("r"));
        assert_eq!(map.len(), 1);
        assert_eq!(map[REQUEST_ID], "r");
    }

    #[test]
    fn request_ids_from_callers_are_kept_only_when_sane() {
        let mut out = Vec::new();
        request_id(Some(b"trace-42"), &mut out);
        assert_eq!(out, b"trace-42");
        for bad in [&b"bad id with spaces"[..], b"", &[b'a'; 129]] {
            request_id(Some(bad), &mut out);
            assert_eq!(out.len(), 32);
            assert!(out.iter().all(u8::is_ascii_hexdigit), "{out:?}");
        }
        let first = out.clone();
        request_id(None, &mut out);
        assert_ne!(out, first, "a fresh id each time");
        let kept = HeaderValue::from_static("trace-42");
        assert_eq!(request_id_header(Some(&kept)), kept);
        let fresh = request_id_header(Some(&HeaderValue::from_static("a b")));
        assert_eq!(fresh.len(), 32);
    }

    #[test]
    fn error_chains_do_not_repeat_a_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect to x: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let e = Outer {
            source: std::io::Error::other("refused"),
        };
        assert_eq!(error_chain(&e), "cannot connect to x: refused");
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Wrap(#[source] std::io::Error);
        let e = Wrap(std::io::Error::other("reset"));
        assert_eq!(error_chain(&e), "request failed: reset");
    }
}
