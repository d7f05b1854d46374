//! The direct gateway: `/function/{name}/{path}` requests proxied as bytes, without building
//! hyper requests and responses.
//!
//! Why: on the warm path gpufn's own work is a few percent of its CPU; the rest is the kernel and
//! the HTTP stack. With hyper on both sides (server for the caller, client for the instance) gpufn
//! reached 0.79–0.88 of nginx's requests/s for small requests, and a bare hyper proxy with no gpufn
//! logic 0.86–0.91 (BENCHMARKS.md). Like nginx (and Cloudflare's Pingora), this path parses heads
//! with `httparse`, copies the header lines it keeps, adds its own, and relays bodies as they are —
//! `Content-Length` and chunked framing included — finding only where each body ends.
//!
//! Scope: it takes the common requests and hands everything else to hyper, on the same connection,
//! with the bytes already read put back in front ([`Rewind`]). A request is taken only if it is
//! HTTP/1.1, its target is origin-form under `/function/` naming a deployed function, it has no
//! `Transfer-Encoding`, `Upgrade` or `Expect`, at most one valid `Content-Length` of at most
//! 64 KiB ([`MAX_BODY`]), `Connection`
//! tokens only `keep-alive`/`close`, and its method is not `HEAD` or `CONNECT`. The decision is made
//! on the complete head, before anything happens, so the hand-over loses nothing; once handed over a
//! connection stays with hyper.
//!
//! Invariants, the same as the hyper path's (`gateway.rs`, `upstream/`); the forwarding rules
//! themselves (headers, request id, errors, metrics) are `crate::forward`'s, not this module's:
//! - The slot is held until the response body was relayed to its end, or the caller went away.
//! - An instance connection is reused only when its response was read exactly to the end and it
//!   did not ask to close; a request is retried on a fresh connection only if the reused one was
//!   found closed before anything was sent, or closed without a byte of answer to a request with no
//!   body and an idempotent method.
//! - A connection-level failure of the instance marks it broken (502); no answer within the
//!   function's `request_timeout_s` gives 504 without marking it.
//! - A response head that is already on its way to the caller cannot become an error response: a
//!   body that breaks off closes the caller's connection.

mod chunked;
pub(crate) mod fuzzing;
mod response;
mod rewind;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Interval;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;
use crate::forward::{self, CallerHead, Peer, REQUEST_ID, Served, Value};
use crate::platform::Platform;
use crate::pool::{AcquireError, Pool, Slot};
use crate::upstream::{Conns, Idle};

use response::{ResponseInfo, UpError, read_response_head, relay};
pub(crate) use rewind::Rewind;

/// Largest request head the direct path takes (bigger ones go to hyper).
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in a head the direct path parses (more: the request goes to hyper).
const MAX_HEADERS: usize = 64;
/// Most buffer capacity a connection keeps between requests.
pub(super) const KEEP_CAPACITY: usize = 32 * 1024;
/// Largest request body the direct path takes. It sends the whole body before it reads the
/// response, which is safe while the body fits in the socket buffers; larger uploads go to hyper,
/// which reads an early answer (an app refusing an upload unread) while still sending.
const MAX_BODY: u64 = 64 * 1024;

/// What became of a client connection.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Closed (by either side, idle, or at shutdown).
    Closed,
    /// A request the direct path does not take: serve the connection with hyper from these bytes
    /// on.
    Fallback(BytesMut),
}

/// The direct gateway of one server.
#[derive(Clone)]
pub(crate) struct Direct {
    platform: Arc<Platform>,
    conns: Conns,
}

impl Direct {
    pub(crate) fn new(platform: Arc<Platform>) -> Self {
        // The hyper path's pool: a connection one path opened serves the other's next request.
        let conns = platform.upstream().conns().clone();
        Self { platform, conns }
    }

    /// Serves `tcp` until it closes or a request needs hyper. The connection closes when `tick`
    /// fires twice with no request started in between while waiting for a request head (the
    /// client idle timeout), and when `drain` is cancelled between requests.
    pub(crate) async fn serve(
        &self,
        tcp: &mut TcpStream,
        peer: &Peer,
        tick: &mut Interval,
        drain: &CancellationToken,
    ) -> Outcome {
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut bufs = Buffers {
            out: Vec::with_capacity(4 * 1024),
            up: BytesMut::with_capacity(16 * 1024),
            rid: Vec::with_capacity(64),
            admitted: None,
        };
        let mut started: u64 = 0;
        let mut seen: u64 = 0;
        // Registered once per connection, not once per request.
        let mut cancelled = std::pin::pin!(drain.cancelled());
        loop {
            // How much of `buf` is known to hold no complete head: a head sent a byte at a time
            // is searched once, not re-parsed on every read.
            let mut scanned = 0;
            let prepared = loop {
                // The first read nearly always holds the whole head: parse it at once.
                if (scanned == 0 && !buf.is_empty()) || head_complete(&buf, &mut scanned) {
                    match self.prepare(&buf, peer, &mut bufs) {
                        Classified::Partial if buf.len() < MAX_HEAD => scanned = scanned.max(1),
                        Classified::Partial | Classified::Fallback => {
                            return Outcome::Fallback(buf);
                        }
                        Classified::Direct(p) => break p,
                    }
                } else if buf.len() >= MAX_HEAD {
                    return Outcome::Fallback(buf);
                }
                if buf.capacity() - buf.len() < 2048 {
                    buf.reserve(8 * 1024);
                }
                tokio::select! {
                    biased;
                    r = tcp.read_buf(&mut buf) => match r {
                        Ok(0) | Err(_) => return Outcome::Closed,
                        Ok(_) => {}
                    },
                    () = &mut cancelled, if buf.is_empty() => return Outcome::Closed,
                    _ = tick.tick() => {
                        if started == seen {
                            tracing::debug!("connection: idle past the client idle timeout; closed");
                            return Outcome::Closed;
                        }
                        seen = started;
                    }
                }
            };
            started += 1;
            buf.advance(prepared.head_len);
            let keep = self
                .exchange(tcp, &mut buf, &mut bufs, prepared, drain)
                .await;
            if buf.capacity() > KEEP_CAPACITY {
                // After a large request body: keep only what is left (a pipelined request).
                buf = BytesMut::from(&buf[..]);
            }
            if bufs.out.capacity() > KEEP_CAPACITY {
                // After a large head.
                bufs.out = Vec::with_capacity(4 * 1024);
            }
            if !keep || drain.is_cancelled() {
                return Outcome::Closed;
            }
        }
    }

    /// Parses the request head at the front of `buf` and, if the direct path takes it, writes the
    /// instance's request head into `bufs.out` (all but the instance id, `Host` if missing and
    /// the blank line, which need the slot).
    fn prepare(&self, buf: &[u8], peer: &Peer, bufs: &mut Buffers) -> Classified {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Classified::Partial,
            // Malformed, or too many headers: hyper answers it (400/431) or takes it.
            Err(_) => return Classified::Fallback,
        };
        let (Some(method), Some(path), Some(1)) = (req.method, req.path, req.version) else {
            return Classified::Fallback;
        };
        if method == "HEAD" || method == "CONNECT" {
            return Classified::Fallback;
        }
        let Some((name, rest)) = split_path(path) else {
            return Classified::Fallback;
        };
        // Unknown names go to hyper, which answers 404 (and keeps them out of the metrics).
        let Some(pool) = self.platform.pool(name) else {
            return Classified::Fallback;
        };
        let mut content_length = None;
        let mut close = false;
        let mut has_host = false;
        let mut forwarded_for = None;
        let mut caller_id = None;
        let mut host_value = None;
        let mut authorization = None;
        let mut origin = false;
        for h in req.headers.iter() {
            let n = h.name;
            if n.eq_ignore_ascii_case("content-length") {
                if content_length.is_some() {
                    return Classified::Fallback;
                }
                match parse_length(h.value) {
                    Some(v) if v <= MAX_BODY => content_length = Some(v),
                    _ => return Classified::Fallback,
                }
            } else if n.eq_ignore_ascii_case("connection") {
                match connection_tokens(h.value) {
                    Some(c) => close |= c,
                    None => return Classified::Fallback,
                }
            } else if n.eq_ignore_ascii_case("transfer-encoding")
                || n.eq_ignore_ascii_case("upgrade")
                || n.eq_ignore_ascii_case("expect")
            {
                return Classified::Fallback;
            } else if n.eq_ignore_ascii_case("host") {
                // Two Hosts: hyper refuses the request (400).
                if has_host {
                    return Classified::Fallback;
                }
                has_host = true;
                host_value.get_or_insert(h.value);
            } else if n.eq_ignore_ascii_case("authorization") {
                if authorization.replace(h.value).is_some() {
                    return Classified::Fallback;
                }
            } else if n.eq_ignore_ascii_case("origin") {
                origin = true;
            } else if n.eq_ignore_ascii_case("x-forwarded-for") {
                forwarded_for.get_or_insert(h.value);
            } else if n.eq_ignore_ascii_case(REQUEST_ID) {
                caller_id.get_or_insert(h.value);
            }
        }

        // No Host: hyper refuses the request (400).
        if !has_host {
            return Classified::Fallback;
        }
        // Access: anything but an admitted caller (a foreign Host on loopback, a missing or refused
        // token, a CORS request) goes to hyper, which answers it — before any effect here.
        let access = self.platform.access();
        if !access.host_allowed(host_value) || (origin && access.cors_enabled()) {
            return Classified::Fallback;
        }
        let token_auth = pool.trigger_auth() == gpufn_spec::TriggerAuth::Token;
        if token_auth && !access.may_invoke_cached(&mut bufs.admitted, authorization, name) {
            return Classified::Fallback;
        }

        forward::request_id(caller_id, &mut bufs.rid);
        let out = &mut bufs.out;
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        forward::put_target(out, rest);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let authorization_forwarded = forward::authorization_forwarded(&pool);
        for h in req.headers.iter() {
            if forward::request_header_forwarded(h.name)
                && (authorization_forwarded || !h.name.eq_ignore_ascii_case("authorization"))
            {
                put_header(out, h.name.as_bytes(), h.value);
            }
        }
        let caller = CallerHead {
            forwarded_for: forwarded_for.map(Value::Bytes),
            host: host_value.map(Value::Bytes),
        };
        forward::add_request_headers(out, Some(peer), caller, Value::Bytes(&bufs.rid));
        Classified::Direct(Prepared {
            pool,
            head_len,
            content_length: content_length.unwrap_or(0),
            close,
            has_host,
            retryable: matches!(method, "GET" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"),
        })
    }

    /// Serves one taken request. False when the client connection must close afterwards.
    async fn exchange(
        &self,
        tcp: &mut TcpStream,
        buf: &mut BytesMut,
        bufs: &mut Buffers,
        p: Prepared,
        drain: &CancellationToken,
    ) -> bool {
        let arrival = Instant::now();
        // The whole body (at most MAX_BODY) is read before a slot is taken, as nginx buffers
        // request bodies: a slow or stalled upload holds no slot and bills nobody; one that sends
        // nothing for --client-body-timeout-s is answered 408.
        let len = p.content_length as usize;
        if buf.len() < len {
            let idle = self.platform.client_body_timeout();
            match read_body(tcp, buf, len, idle).await {
                Ok(()) => {}
                Err(BodyRead::Gone) => return false,
                Err(BodyRead::Stalled) => {
                    let error = crate::idle_body::stalled(idle);
                    self.respond_error(tcp, bufs, &error, None, &p, arrival, true)
                        .await;
                    return false;
                }
            }
        }
        // The caller may go away while the request waits for a slot: its queue place is then
        // given up.
        let slot = match acquire_watching(&p.pool, tcp, arrival).await {
            Some(Ok(slot)) => slot,
            Some(Err(e)) => {
                let error = forward::acquire_error(e);
                buf.advance(len);
                return self
                    .respond_error(tcp, bufs, &error, None, &p, arrival, p.close)
                    .await
                    && !p.close;
            }
            None => return false,
        };
        let (slot, waited) = slot;
        p.pool.metrics().queue_wait.observe(if waited {
            arrival.elapsed().as_secs_f64()
        } else {
            0.0
        });
        slot.thaw().await;
        let addr = slot.addr();
        let out = &mut bufs.out;
        forward::add_instance_headers(out, &slot, p.has_host);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&buf[..len]);
        buf.advance(len);

        let sent = tokio::time::timeout_at(
            tokio::time::Instant::from_std(arrival) + slot.request_timeout(),
            self.send(
                addr,
                bufs,
                p.retryable && p.content_length == 0,
                Served::by(&slot),
                p.close || drain.is_cancelled(),
            ),
        )
        .await;
        let (mut up, info) = match sent {
            Ok(Ok(x)) => x,
            Ok(Err(error)) => {
                // The instance broke the connection (crashed, refused): it will not serve again.
                // Not so for an idle connection its keep-alive timer closed just as the request
                // went out (a request that cannot be sent again).
                if !matches!(error, UpError::ClosedIdle) {
                    slot.mark_broken();
                }
                let error = forward::instance_error(&slot, &error);
                // The caller's connection serves on: its whole request was read.
                return self
                    .respond_error(tcp, bufs, &error, Some(&slot), &p, arrival, p.close)
                    .await
                    && !p.close;
            }
            Err(_) => {
                let error = forward::request_timeout_error(&slot);
                return self
                    .respond_error(tcp, bufs, &error, Some(&slot), &p, arrival, p.close)
                    .await
                    && !p.close;
            }
        };
        forward::record_cold_start(&self.platform, &slot, arrival);
        forward::observe(&self.platform, &p.pool, info.status, arrival);
        let relayed = relay(
            tcp,
            &mut up,
            &mut bufs.up,
            &mut bufs.out,
            info.framing,
            slot.request_timeout(),
        )
        .await;
        response::shrink(&mut bufs.up);
        if relayed.upstream_reusable && info.upstream_keep_alive {
            self.conns.give_back(addr, Idle::Stream(up));
        }
        drop(slot);
        relayed.client_ok && !info.close_client
    }

    /// Sends the request (head and body in `bufs.out`) and reads the response head; on success
    /// `bufs.out` holds the caller's response head and `bufs.up` the bytes after the instance's.
    async fn send(
        &self,
        addr: SocketAddr,
        bufs: &mut Buffers,
        retry_if_unanswered: bool,
        served: Served<'_>,
        close: bool,
    ) -> Result<(TcpStream, ResponseInfo), UpError> {
        let mut fresh_only = false;
        loop {
            let (mut up, reused) = match self.conns.checkout_stream(addr) {
                Some(s) if !fresh_only => (s, true),
                _ => (connect(addr).await?, false),
            };
            if let Err(e) = up.write_all(&bufs.out).await {
                if reused {
                    // The app had closed it (keep-alive timer): nothing reached the app.
                    fresh_only = true;
                    continue;
                }
                return Err(UpError::Io(e));
            }
            bufs.up.clear();
            match read_response_head(
                &mut up,
                &mut bufs.up,
                &mut bufs.out,
                &bufs.rid,
                served,
                close,
            )
            .await
            {
                Ok(info) => return Ok((up, info)),
                Err(UpError::Unanswered) if reused && retry_if_unanswered => {
                    tracing::debug!("reused connection to {addr} closed unanswered; retrying");
                    fresh_only = true;
                }
                Err(UpError::Unanswered) if reused => return Err(UpError::ClosedIdle),
                Err(e) => return Err(e),
            }
        }
    }

    /// Answers with a gpufn error response (small JSON body). False if the caller is gone.
    #[allow(clippy::too_many_arguments)]
    async fn respond_error(
        &self,
        tcp: &mut TcpStream,
        bufs: &mut Buffers,
        error: &ApiError,
        slot: Option<&Slot>,
        p: &Prepared,
        arrival: Instant,
        close: bool,
    ) -> bool {
        forward::observe(&self.platform, &p.pool, error.status.as_u16(), arrival);
        let body = error.json();
        let out = &mut bufs.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(error.status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(error.status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &error.headers() {
            put_header(out, k.as_str().as_bytes(), v.as_bytes());
        }
        put_header(out, b"content-length", body.len().to_string().as_bytes());
        forward::add_response_headers(out, slot.map(Served::by), Value::Bytes(&bufs.rid));
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        tcp.write_all(out).await.is_ok()
    }
}

/// Per-connection buffers, reused from request to request.
struct Buffers {
    /// The head being sent (to the instance, then to the caller).
    out: Vec<u8>,
    /// Bytes read from the instance.
    up: BytesMut,
    /// The request id.
    rid: Vec<u8>,
    /// The last caller this connection's token admitted.
    admitted: Option<crate::auth::Admitted>,
}

enum Classified {
    /// The head is not complete yet.
    Partial,
    /// Hyper takes it.
    Fallback,
    /// The direct path takes it.
    Direct(Prepared),
}

struct Prepared {
    pool: Arc<Pool>,
    head_len: usize,
    content_length: u64,
    /// The caller asked to close after this response.
    close: bool,
    has_host: bool,
    /// The method may be sent again when a reused connection closed without answering.
    retryable: bool,
}

/// Why a request body was not read.
enum BodyRead {
    /// The caller went away.
    Gone,
    /// It sent nothing for the body timeout.
    Stalled,
}

/// Whether `buf` holds the blank line that ends a head (CRLF CRLF, or bare LFs, which httparse
/// also accepts), searching only past `scanned`, which it advances.
pub(super) fn head_complete(buf: &[u8], scanned: &mut usize) -> bool {
    let from = scanned.saturating_sub(3);
    let found = buf[from..].windows(2).any(|w| w == b"\n\n" || w == b"\n\r");
    if !found {
        *scanned = buf.len();
    }
    found
}

/// [`forward::split_target`] of a `/function/` path; `None` if the path is not one the direct
/// path forwards as it is.
pub(super) fn split_path(path: &str) -> Option<(&str, &str)> {
    // Bytes hyper's URI parser would refuse, and fragments, are left to it.
    if !path.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'#') {
        return None;
    }
    forward::split_target(path, forward::FUNCTION_PREFIX).filter(|(name, _)| !name.is_empty())
}

/// A `Content-Length` value: ASCII digits only (no sign, no spaces, no list).
pub(super) fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// `Connection` tokens: `Some(true)` if one is `close`; `None` if any token other than
/// `keep-alive` or `close` (headers named there would need stripping: left to hyper).
pub(super) fn connection_tokens(v: &[u8]) -> Option<bool> {
    let mut close = false;
    for t in v.split(|b| *b == b',') {
        let t = t.trim_ascii();
        if t.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !(t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive")) {
            return None;
        }
    }
    Some(close)
}

pub(super) fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Waits for a slot for a request that arrived at `arrival`; `None` if the caller closed its
/// connection meanwhile. With the slot: whether it had to wait (a slot taken on the
/// first poll waited no measurable time, and its queue wait is recorded without a clock read).
async fn acquire_watching(
    pool: &Arc<Pool>,
    tcp: &TcpStream,
    arrival: Instant,
) -> Option<Result<(Slot, bool), AcquireError>> {
    let acquire = pool.acquire_at(arrival);
    tokio::pin!(acquire);
    // A first look without a waker (the real one is registered by the await below).
    let first = {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        acquire.as_mut().poll(&mut cx)
    };
    if let std::task::Poll::Ready(r) = first {
        return Some(r.map(|s| (s, false)));
    }
    let mut probe = [0u8; 1];
    let r = tokio::select! {
        biased;
        r = &mut acquire => r,
        r = tcp.peek(&mut probe) => match r {
            Ok(0) | Err(_) => return None,
            // A pipelined request: the caller is there; stop watching.
            Ok(_) => acquire.await,
        },
    };
    Some(r.map(|s| (s, true)))
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, UpError> {
    crate::upstream::connect_stream(addr)
        .await
        .map_err(UpError::Connect)
}

/// Reads until `buf` holds `len` bytes (a request body of at most [`MAX_BODY`]), each read within
/// `idle`; bytes read past them (a pipelined request) stay in `buf`.
async fn read_body(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    len: usize,
    idle: std::time::Duration,
) -> Result<(), BodyRead> {
    buf.reserve(len.saturating_sub(buf.len()));
    while buf.len() < len {
        match tokio::time::timeout(idle, tcp.read_buf(buf)).await {
            Ok(Ok(0) | Err(_)) => return Err(BodyRead::Gone),
            Ok(Ok(_)) => {}
            Err(_) => return Err(BodyRead::Stalled),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
