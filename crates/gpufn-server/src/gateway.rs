//! The HTTP trigger: `ANY /function/{name}/{path}` → an instance's `/{path}`, with the query,
//! headers and body streamed both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::error::ApiError;
use crate::metrics::StatusLabels;
use crate::platform::Platform;
use crate::pool::{AcquireError, Pool, Slot};
use crate::upstream::{UpstreamBody, UpstreamError, UpstreamResponse};
use crate::util::now_ms;

/// Response header: the request's id (the caller's own if it sent a valid one).
pub const REQUEST_ID: &str = "x-gpufn-request-id";
/// Response header: the instance that served the request.
pub const INSTANCE_ID: &str = "x-gpufn-instance-id";
/// Response header: `true` when the request waited for an instance to start.
pub const COLD_START: &str = "x-gpufn-cold-start";

/// The general-purpose client (webhook deliveries to any URL). Instances are reached through
/// [`crate::upstream::Upstream`].
pub type InstanceClient = Client<HttpConnector, Body>;

/// Builds the general-purpose client.
pub fn instance_client() -> InstanceClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

const HOP_N: usize = 9;

/// Headers that belong to one hop and are never forwarded (RFC 9110 §7.6.1). `connection` first.
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

pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (few) headers present, comparing header names (no string parsing or
    // hashing); then only the names present are removed. Most responses carry just
    // `connection: keep-alive`.
    let mut present = [false; HOP_N];
    for k in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == k) {
            present[i] = true;
        }
    }
    if !present.contains(&true) {
        return;
    }
    if present[0] {
        // Other headers the sender declared hop-by-hop (`connection: close, x-private`); the
        // common tokens (keep-alive, close) need no parsing.
        let mut listed: Vec<HeaderName> = Vec::new();
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            if token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(token))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
}

/// `/function/{name}/{rest}?q` → (`name`, `/{rest}?q`).
pub(crate) fn split_target(uri: &Uri) -> Option<(&str, String)> {
    split_target_with_prefix(uri, "/function/")
}

/// `{prefix}{name}/{rest}?q` → (`name`, `/{rest}?q`).
pub(crate) fn split_target_with_prefix<'a>(
    uri: &'a Uri,
    prefix: &str,
) -> Option<(&'a str, String)> {
    let rest = uri.path().strip_prefix(prefix)?;
    let (name, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    Some((name, target))
}

/// The caller's request id if it sent a sane one, else a new one. A header value, made once: it
/// goes to the instance and back to the caller.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers
        .get(REQUEST_ID)
        .filter(|v| sane_request_id(v.as_bytes()))
    {
        return v.clone();
    }
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
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

/// The gateway handler, as an axum route (the accept loop calls [`handle`] directly).
pub async fn invoke(State(platform): State<Arc<Platform>>, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| Peer::new(c.0));
    handle(&platform, peer.as_ref(), req).await
}

/// Serves `ANY /function/{name}/{path}` from `peer`.
pub async fn handle(platform: &Arc<Platform>, peer: Option<&Peer>, req: Request) -> Response {
    let arrival = Instant::now();
    let request_id = request_id(req.headers());
    let Some((name, target)) = split_target(req.uri()) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response();
    };
    // Unknown names are answered without metrics, so random paths cannot grow label sets.
    let Some(pool) = platform.pool(name) else {
        return ApiError::no_function(name).into_response();
    };
    let mut req = req;
    if let Err(e) = admit(platform, &pool, &mut req) {
        let mut resp = e.into_response();
        resp.headers_mut().insert(REQUEST_ID_HEADER, request_id);
        return resp;
    }
    let mut resp = match forward(platform, &pool, peer, &request_id, &target, req, arrival).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    let m = pool.metrics();
    let took = arrival.elapsed().as_secs_f64();
    m.request_duration.observe(took);
    m.recent.record((took * 1000.0) as f32);
    if resp.status() == StatusCode::OK {
        m.ok.inc();
    } else {
        platform
            .metrics()
            .invocations
            .get_or_create(&StatusLabels {
                function: pool.name().to_string(),
                status: resp.status().as_u16().to_string(),
            })
            .inc();
    }
    resp.headers_mut().insert(REQUEST_ID_HEADER, request_id);
    resp
}

/// Checks the caller of a trigger request against the function's `auth`. A [`gpufn_auth::Grant`]
/// already in the request's extensions comes from gpufn itself (the FC API, which checked its own
/// signature); a client cannot put one there. The gpufn token is taken off the request: function
/// code never sees a caller's token.
pub(crate) fn admit(
    platform: &Platform,
    pool: &Pool,
    req: &mut Request,
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
    if pool.trigger_auth() == gpufn_spec::TriggerAuth::Token {
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    Ok(grant)
}

async fn forward(
    platform: &Platform,
    pool: &Arc<Pool>,
    peer: Option<&Peer>,
    request_id: &HeaderValue,
    target: &str,
    req: Request,
    arrival: Instant,
) -> Result<Response, ApiError> {
    let slot = pool.acquire().await.map_err(acquire_error)?;
    pool.metrics()
        .queue_wait
        .observe(arrival.elapsed().as_secs_f64());
    let (mut parts, body) = req.into_parts();
    parts.uri = target
        .parse()
        .map_err(|e| ApiError::bad_field("path", format!("cannot be forwarded: {e}")))?;
    strip_hop_by_hop(&mut parts.headers);
    add_forwarding_headers(&mut parts.headers, peer, request_id, &slot);
    let upstream = http::Request::from_parts(parts, body);
    let (sent, slot) = exchange(platform, slot, upstream).await?;
    let resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            // The instance broke the connection (crashed, refused): it will not serve again.
            slot.mark_broken();
            let mut resp = ApiError::new(
                StatusCode::BAD_GATEWAY,
                "instance_error",
                format!(
                    "instance {} failed to answer: {}",
                    slot.instance_id(),
                    error_chain(&e)
                ),
            )
            .into_response();
            add_slot_headers(resp.headers_mut(), &slot);
            return Ok(resp);
        }
        Err(_) => {
            let mut resp = request_timeout_error(&slot).into_response();
            add_slot_headers(resp.headers_mut(), &slot);
            return Ok(resp);
        }
    };
    if let Some((phases, ready_at)) = slot.cold_start_info() {
        // Wall-clock arrival, worked out only for the (rare) cold start: one clock read less on
        // every warm request.
        let arrival_ms = now_ms() - i64::try_from(arrival.elapsed().as_millis()).unwrap_or(0);
        platform.record_cold_start(&slot, arrival_ms, arrival, phases, ready_at);
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_slot_headers(&mut parts.headers, &slot);
    // The slot rides along with the body: it is given back when the last byte has been sent
    // (or the caller went away), not when the headers are.
    let body = Body::new(SlotBody {
        inner: body,
        _slot: slot,
    });
    Ok(Response::from_parts(parts, body))
}

/// 504: the instance holding `slot` sent no response head within the function's
/// `request_timeout_s` (both gateway paths).
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

fn add_forwarding_headers(
    h: &mut HeaderMap,
    peer: Option<&Peer>,
    request_id: &HeaderValue,
    slot: &Slot,
) {
    // Header names as constants: parsing a `&str` name on every request showed in profiles.
    const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    const FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
    const FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
    if let Some(peer) = peer {
        match h.get(&FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) => {
                if let Ok(v) = HeaderValue::from_str(&format!("{prev}, {}", peer.ip)) {
                    h.insert(FORWARDED_FOR, v);
                }
            }
            None => {
                h.insert(FORWARDED_FOR, peer.header.clone());
            }
        }
    }
    if let Some(host) = h.get(header::HOST).cloned() {
        h.insert(FORWARDED_HOST, host);
    }
    let https = peer.is_some_and(|p| p.https);
    h.insert(
        FORWARDED_PROTO,
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    h.insert(REQUEST_ID_HEADER, request_id.clone());
    h.insert(INSTANCE_ID_HEADER, slot.instance_header().clone());
}

const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
const INSTANCE_ID_HEADER: HeaderName = HeaderName::from_static(INSTANCE_ID);
const COLD_START_HEADER: HeaderName = HeaderName::from_static(COLD_START);

fn add_slot_headers(h: &mut HeaderMap, slot: &Slot) {
    h.insert(INSTANCE_ID_HEADER, slot.instance_header().clone());
    h.insert(
        COLD_START_HEADER,
        HeaderValue::from_static(if slot.cold_start() { "true" } else { "false" }),
    );
}

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

/// What sending a request to an instance gave: a response, a connection error, or a timeout.
pub(crate) type Sent = Result<Result<UpstreamResponse, UpstreamError>, tokio::time::error::Elapsed>;

/// Sends `upstream` to the slot's instance within the function's request timeout.
///
/// If the caller goes away mid-request (axum then drops the handler), the instance is still working
/// on it: the slot must stay taken until the instance answers, or the next request would push the
/// app past its instance_concurrency. `Exchange` hands the unfinished exchange and its slot to a
/// task of their own in that case; normally it runs inline, without a task hop.
pub(crate) async fn exchange(
    platform: &Platform,
    slot: Slot,
    upstream: http::Request<Body>,
) -> Result<(Sent, Slot), ApiError> {
    let timeout = slot.request_timeout();
    let up = platform.upstream().clone();
    let addr = slot.addr();
    let fut: ExchangeFuture = Box::pin(tokio::time::timeout(timeout, async move {
        up.send(addr, upstream).await
    }));
    let mut exchange = Exchange {
        fut: Some(fut),
        slot: Some(slot),
    };
    let sent = match exchange.fut.as_mut() {
        Some(fut) => fut.await,
        None => return Err(ApiError::internal("the exchange", "no future")),
    };
    exchange.fut = None;
    let Some(slot) = exchange.slot.take() else {
        return Err(ApiError::internal("the exchange", "no slot"));
    };
    Ok((sent, slot))
}

type ExchangeFuture = Pin<Box<dyn std::future::Future<Output = Sent> + Send>>;

/// A request on its way to an instance, with its slot. Dropped before the instance answered (the
/// caller went away), it lets the exchange finish in the background and only then frees the slot.
struct Exchange {
    fut: Option<ExchangeFuture>,
    slot: Option<Slot>,
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let (Some(fut), Some(slot)) = (self.fut.take(), self.slot.take()) {
            tokio::spawn(async move {
                let _ = fut.await;
                drop(slot);
            });
        }
    }
}

/// An instance's response body that holds the request's slot until it is done.
struct SlotBody {
    inner: UpstreamBody,
    _slot: Slot,
}

impl http_body::Body for SlotBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
            ("/other", None),
        ];
        for (uri, want) in cases {
            let uri: Uri = uri.parse().expect("uri");
            let got = split_target(&uri);
            assert_eq!(got.as_ref().map(|(n, t)| (*n, t.as_str())), want, "{uri}");
        }
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
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-keep"]);
        // Listed in mixed case and with a second connection header.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("Keep-Alive"));
        h.append("connection", HeaderValue::from_static(" X-Other ,close"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-length", HeaderValue::from_static("3"));
        strip_hop_by_hop(&mut h);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-length"]);
        // Nothing hop-by-hop: untouched.
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn request_ids_from_callers_are_kept_only_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("trace-42"));
        assert_eq!(request_id(&h), "trace-42");
        h.insert(REQUEST_ID, HeaderValue::from_static("bad id with spaces"));
        let fresh = request_id(&h);
        assert_eq!(fresh.len(), 32);
        assert!(
            fresh.as_bytes().iter().all(u8::is_ascii_hexdigit),
            "{fresh:?}"
        );
    }
}
