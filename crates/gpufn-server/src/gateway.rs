//! The HTTP trigger: `ANY /function/{name}/{path}` → an instance's `/{path}`, with the query,
//! headers and body streamed both ways.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::forward::{self, Served, Value};
use crate::platform::Platform;
use crate::pool::{Pool, Slot};
use crate::upstream::{UpstreamError, UpstreamResponse};

pub use crate::forward::{COLD_START, INSTANCE_ID, Peer, REQUEST_ID};

pub use crate::upstream::{InstanceClient, instance_client};

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
    let rid = forward::request_id_header(req.headers().get(REQUEST_ID));
    let rid = Value::Header(&rid);
    let split = req
        .uri()
        .path_and_query()
        .and_then(|pq| forward::split_target(pq.as_str(), forward::FUNCTION_PREFIX));
    let Some((name, rest)) = split else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response();
    };
    // Unknown names are answered without metrics, so random paths cannot grow label sets.
    let Some(pool) = platform.pool(name) else {
        return ApiError::no_function(name).into_response();
    };
    let target = forward::target(rest).into_owned();
    let mut req = req;
    if let Err(e) = forward::admit(platform, &pool, &mut req) {
        let mut resp = e.into_response();
        forward::add_response_headers(resp.headers_mut(), None, rid);
        return resp;
    }
    let resp = match send(platform, &pool, peer, rid, &target, req, arrival).await {
        Ok(resp) => resp,
        Err(e) => {
            let mut resp = e.into_response();
            forward::add_response_headers(resp.headers_mut(), None, rid);
            resp
        }
    };
    forward::observe(platform, &pool, resp.status().as_u16(), arrival);
    resp
}

/// A call of a function made inside gpufn (the FC API's InvokeFunction), as it goes to an
/// instance.
#[derive(Debug)]
pub struct Call {
    /// The method.
    pub method: http::Method,
    /// The instance's target (path and query).
    pub target: String,
    /// Headers for the instance (hop-by-hop ones and those gpufn sets are dropped).
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Body,
}

/// Calls function `name` for `grant`, by the same rules as the HTTP trigger: `Ok` with what the
/// instance answered (whatever its status, and gpufn's 502/504 about that instance, which carry
/// its id), `Err` when gpufn refused before an instance was involved (no such function, not
/// allowed, queue full, quota, start failed, shutting down).
pub async fn call(
    platform: &Platform,
    name: &str,
    grant: &gpufn_auth::Grant,
    call: Call,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let pool = platform
        .pool(name)
        .ok_or_else(|| ApiError::no_function(name))?;
    grant
        .check(gpufn_auth::Action::Invoke, Some(name))
        .map_err(crate::auth::forbidden)?;
    let rid = forward::request_id_header(call.headers.get(REQUEST_ID));
    let mut req = Request::new(call.body);
    *req.method_mut() = call.method;
    *req.headers_mut() = call.headers;
    let sent = send(
        platform,
        &pool,
        None,
        Value::Header(&rid),
        &call.target,
        req,
        arrival,
    )
    .await;
    let status = match &sent {
        Ok(resp) => resp.status(),
        Err(e) => e.status,
    };
    forward::observe(platform, &pool, status.as_u16(), arrival);
    sent
}

/// Forwards `req` to an instance of `pool`; every response it returns carries gpufn's response
/// headers, an error without one does not.
async fn send(
    platform: &Platform,
    pool: &Arc<Pool>,
    peer: Option<&Peer>,
    rid: Value<'_>,
    target: &str,
    req: Request,
    arrival: Instant,
) -> Result<Response, ApiError> {
    let slot = pool.acquire().await.map_err(forward::acquire_error)?;
    pool.metrics()
        .queue_wait
        .observe(arrival.elapsed().as_secs_f64());
    let (mut parts, body) = req.into_parts();
    // What the added headers are made of, taken before the caller's own are dropped (clones of
    // header values share their bytes).
    let forwarded_for = parts.headers.get(forward::FORWARDED_FOR).cloned();
    let host = parts.headers.get(header::HOST).cloned();
    let authority = parts.uri.authority().map(|a| a.as_str().to_string());
    let caller = forward::CallerHead {
        forwarded_for: forwarded_for.as_ref().map(Value::Header),
        // An HTTP/2 request has its host in the URI.
        host: host
            .as_ref()
            .map(Value::Header)
            .or(authority.as_deref().map(|a| Value::Bytes(a.as_bytes()))),
    };
    parts.uri = target
        .parse()
        .map_err(|e| ApiError::bad_field("path", format!("cannot be forwarded: {e}")))?;
    forward::strip_request(&mut parts.headers);
    forward::add_request_headers(&mut parts.headers, peer, caller, rid);
    forward::add_instance_headers(&mut parts.headers, &slot, host.is_some());
    let upstream = http::Request::from_parts(parts, body);
    let (sent, slot) = exchange(platform, slot, upstream).await?;
    let resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            // The caller's own body failed (stalled, malformed, aborted): the caller's fault,
            // answered to the caller; the instance is fine.
            if let Some(fault) = crate::idle_body::caller_fault(&e) {
                return Ok(error_response(fault, &slot, rid));
            }
            // The instance broke the connection (crashed, refused): it will not serve again.
            slot.mark_broken();
            return Ok(error_response(
                forward::instance_error(&slot, &e),
                &slot,
                rid,
            ));
        }
        Err(_) => {
            return Ok(error_response(
                forward::request_timeout_error(&slot),
                &slot,
                rid,
            ));
        }
    };
    forward::record_cold_start(platform, &slot, arrival);
    let (mut parts, body) = resp.into_parts();
    forward::strip_response(&mut parts.headers);
    forward::add_response_headers(&mut parts.headers, Some(Served::by(&slot)), rid);
    // The body holds the slot, and may not stall for longer than the function's
    // request_timeout_s between chunks (its head was bounded by the same).
    let idle = slot.request_timeout();
    let mut body = body;
    body.hold(slot);
    Ok(Response::from_parts(
        parts,
        Body::new(crate::idle_body::IdleBody::new(body, idle)),
    ))
}

/// An error about the exchange with the instance holding `slot`.
fn error_response(e: ApiError, slot: &Slot, rid: Value<'_>) -> Response {
    let mut resp = e.into_response();
    forward::add_response_headers(resp.headers_mut(), Some(Served::by(slot)), rid);
    resp
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
    slot.thaw().await;
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
