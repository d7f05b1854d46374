//! Connections to instances, for both gateways: one keyed pool of idle keep-alive TCP connections
//! ([`conns::Conns`]), and the hyper client exchange ([`Upstream::send`]) the hyper gateway and
//! the async-task dispatcher use. The direct gateway takes raw streams from the same pool.
//!
//! Why not hyper-util's pooled client: it runs every connection in a task of its own, so one proxied
//! request crosses tasks three or four times (request to the connection task, response head back,
//! each body chunk back), and each crossing is a wake-up. On a small machine those wake-ups, not
//! gpufn's own code, were most of the gateway's cost (BENCHMARKS.md, "Gateway overhead"). Here a
//! connection is owned by one exchange at a time and polled inside the task that serves the
//! caller — the caller's connection task — from the request head to the last byte of the response
//! body, then its TCP stream goes back to the pool for its instance's address. (HTTP/1.1 keeps no
//! state between exchanges: the next user, hyper or the direct path, starts afresh on it.)
//!
//! Invariants:
//! - An idle connection is never shared: it is either in the pool or owned by one exchange.
//! - A connection goes back to the pool only after its response body was read to the end, its
//!   request was sent to the end, and nothing more was read from it; a body dropped early closes
//!   its connection (HTTP/1.1 cannot abandon a response and reuse it).
//! - A request is retried on a fresh connection only when hyper hands it back unsent (a reused
//!   connection the instance had closed); a request that may have reached the app is never re-sent.

pub(crate) mod conns;

use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version, header};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub(crate) use conns::{Conns, Idle};
/// How long connecting to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The general-purpose client (webhook deliveries to any URL). Instances are reached through
/// [`Upstream`].
pub type InstanceClient =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

/// Builds the general-purpose client.
pub fn instance_client() -> InstanceClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Why an exchange with an instance failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The instance's address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("connecting to {addr} took over {CONNECT_TIMEOUT:?}")]
    ConnectTimeout {
        /// The instance's address.
        addr: SocketAddr,
    },
    /// A new connection was closed before it took the request.
    #[error("{addr} closed the connection before taking the request")]
    Closed {
        /// The instance's address.
        addr: SocketAddr,
    },
    /// The request URI has no path to send.
    #[error("request URI {0} has no path")]
    Uri(http::Uri),
    /// HTTP failed on the connection (closed, malformed response, …).
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

type Conn = http1::Connection<TokioIo<TcpStream>, Body>;

/// One connection: the handle requests are sent through, and the future that does the I/O.
pub(crate) struct Link {
    sender: http1::SendRequest<Body>,
    /// `None` once the connection ended (closed by either side, or failed). Boxed: a `Link` moves
    /// in and out of the idle list on every request, and hyper's connection state is large.
    conn: Option<Pin<Box<Conn>>>,
}

impl Link {
    /// Drives the connection's I/O; returns true when it has ended.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return true;
        };
        match conn.as_mut().poll(cx) {
            Poll::Pending => false,
            Poll::Ready(res) => {
                if let Err(e) = res {
                    tracing::debug!("instance connection ended: {e}");
                }
                self.conn = None;
                true
            }
        }
    }

    /// Waits until the connection takes a request; false when it ended instead.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            for _ in 0..2 {
                match self.sender.poll_ready(cx) {
                    Poll::Ready(r) => return Poll::Ready(r.is_ok()),
                    Poll::Pending => {}
                }
                if self.drive(cx) {
                    return Poll::Ready(false);
                }
            }
            Poll::Pending
        })
        .await
    }
}

impl Link {
    /// Whether the connection can take a new request: it has not ended, and hyper wants the next
    /// request (so the last one was sent and answered to the end). Given back to the pool only
    /// then, and looked at again when taken out (the instance may have closed it meanwhile).
    fn usable(&mut self) -> bool {
        // One poll lets hyper finish the last exchange's bookkeeping and see a close that
        // already arrived; no waker is needed, nobody waits on it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        !self.drive(&mut cx) && !self.sender.is_closed() && self.sender.is_ready()
    }

    /// The bare stream of a [`usable`](Self::usable) connection, if hyper read nothing past its
    /// last response.
    fn into_stream(mut self) -> Option<TcpStream> {
        let conn = Pin::into_inner(self.conn.take()?);
        let parts = conn.into_parts();
        parts.read_buf.is_empty().then(|| parts.io.into_inner())
    }
}

/// Sends requests to instances over reused connections. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Upstream {
    conns: Conns,
}

/// An instance's response; its body drives the connection it comes on.
pub type UpstreamResponse = Response<UpstreamBody>;

impl Upstream {
    /// A new, empty set of connections, with a task that closes connections idle for too long
    /// (it ends when the last handle is dropped).
    pub fn new() -> Self {
        Self {
            conns: Conns::new(),
        }
    }

    /// The pool of idle connections (the direct gateway's too).
    pub(crate) fn conns(&self) -> &Conns {
        &self.conns
    }

    /// Sends `req` to the instance at `addr`. The URI may be absolute (`http://addr/path`) or
    /// origin-form; it is sent in origin-form, with `Host` set to the authority if the request has
    /// none. The request goes as HTTP/1.1 so the connection stays open whatever the caller spoke.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        prepare(&mut req, addr)?;
        // At most one retry, and only of a request hyper gave back unsent.
        let mut reused_failed = false;
        loop {
            let (mut link, reused) = match self.conns.checkout(addr) {
                Some(Idle::Http(link)) if !reused_failed => (link, true),
                Some(Idle::Stream(stream)) if !reused_failed => (handshake(stream).await?, true),
                _ => (handshake(connect_stream(addr).await?).await?, false),
            };
            if !link.ready().await {
                if reused {
                    reused_failed = true;
                    continue;
                }
                return Err(UpstreamError::Closed { addr });
            }
            let mut fut = std::pin::pin!(link.sender.try_send_request(req));
            let res = poll_fn(|cx| {
                loop {
                    if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                        return Poll::Ready(r);
                    }
                    // Pending: the connection has work to do (write the request, read the head).
                    // If it ended, the request future resolves with its error on the next poll.
                    if !link.drive(cx) {
                        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                            return Poll::Ready(r);
                        }
                        return Poll::Pending;
                    }
                }
            })
            .await;
            match res {
                Ok(resp) => {
                    let (parts, inner) = resp.into_parts();
                    let body = UpstreamBody {
                        inner,
                        link: Some(link),
                        home: Some((self.conns.clone(), addr)),
                        ended: false,
                        held: None,
                    };
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => {
                        tracing::debug!("reused connection to {addr} was closed; retrying");
                        req = back;
                        reused_failed = true;
                    }
                    _ => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
    }
}

impl Default for Upstream {
    fn default() -> Self {
        Self::new()
    }
}

/// Origin-form URI, `Host`, HTTP/1.1.
fn prepare(req: &mut Request<Body>, addr: SocketAddr) -> Result<(), UpstreamError> {
    let uri = req.uri();
    if uri.authority().is_some() || uri.scheme().is_some() {
        let origin: http::Uri = match uri.path_and_query() {
            Some(pq) => pq
                .as_str()
                .parse()
                .map_err(|_| UpstreamError::Uri(uri.clone()))?,
            None => http::Uri::from_static("/"),
        };
        *req.uri_mut() = origin;
    }
    if !req.headers().contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&addr.to_string()) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

/// A TCP connection to an instance (both gateway paths), within [`CONNECT_TIMEOUT`], with
/// `TCP_NODELAY`.
pub(crate) async fn connect_stream(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
        Err(_) => return Err(UpstreamError::ConnectTimeout { addr }),
    };
    // Requests and responses are written as they stream; Nagle + delayed ACK would stall tails.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY towards {addr}: {e}");
    }
    Ok(stream)
}

/// A hyper client connection on `stream` (no I/O happens here).
async fn handshake(stream: TcpStream) -> Result<Link, UpstreamError> {
    let (sender, conn) = http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await?;
    Ok(Link {
        sender,
        conn: Some(Box::pin(conn)),
    })
}

/// A response body from an instance. Polling it drives its connection; read to the end, it gives
/// the connection back for the next request to that instance.
pub struct UpstreamBody {
    inner: Incoming,
    link: Option<Link>,
    home: Option<(Conns, SocketAddr)>,
    ended: bool,
    /// Dropped with the body, after its connection went back (the request's slot).
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// Keeps `guard` until the body is read or dropped (the gateway's slot rides along with the
    /// body: it is given back when the last byte has been sent, or the caller went away).
    pub(crate) fn hold(&mut self, guard: impl std::any::Any + Send + Sync) {
        self.held = Some(Box::new(guard));
    }

    fn release(&mut self) {
        if let (Some(mut link), Some((conns, addr))) = (self.link.take(), self.home.take()) {
            if link.usable() {
                conns.give_back(addr, Idle::Http(link));
            }
        }
    }
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending() {
            // The connection reads the next chunk into the body's channel.
            if let Some(link) = this.link.as_mut() {
                link.drive(cx);
            }
            polled = Pin::new(&mut this.inner).poll_frame(cx);
        }
        match polled {
            Poll::Ready(None) => {
                this.ended = true;
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken body: the connection is not reusable.
                this.link = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => {
                // Trailers end an HTTP/1.1 body, and hyper's server does not poll past them: the
                // connection is given back now, not left to a drop that would close it.
                this.ended = true;
                this.release();
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body with nothing left (e.g. `Content-Length: 0`, which the server may never poll)
        // leaves a reusable connection; anything else closes it.
        if self.ended || http_body::Body::is_end_stream(&self.inner) {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A raw HTTP/1.1 server on loopback answering every request with `response`; counts the
    /// connections it accepted. `close` closes each connection after its first response.
    async fn app(response: &'static str, close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            if sock.write_all(response.as_bytes()).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).expect("request")
    }

    #[tokio::test]
    async fn a_connection_read_to_the_end_is_reused() {
        let (addr, accepted) = app("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
        let up = Upstream::new();
        for _ in 0..3 {
            let resp = up.send(addr, get("/a")).await.expect("send");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for three requests"
        );
        assert_eq!(up.conns.idle_count(), 1);
        // The direct gateway takes the same stream from the pool and speaks HTTP on it as is.
        let mut raw = up.conns.checkout_stream(addr).expect("the idle stream");
        raw.write_all(b"GET /c HTTP/1.1\r\nhost: a\r\n\r\n")
            .await
            .expect("write");
        let mut got = vec![0u8; 64];
        let n = raw.read(&mut got).await.expect("read");
        assert!(got[..n].starts_with(b"HTTP/1.1 200 OK"), "{:?}", &got[..n]);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_whose_request_was_not_sent_to_the_end_is_not_reused() {
        // The app answers as soon as it has the head; the request body never ends.
        let (addr, accepted) = app("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await;
        let up = Upstream::new();
        struct Endless;
        impl http_body::Body for Endless {
            type Data = Bytes;
            type Error = std::convert::Infallible;
            fn poll_frame(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
            ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
                Poll::Pending
            }
        }
        let req = Request::post("/upload")
            .body(Body::new(Endless))
            .expect("request");
        let resp = up.send(addr, req).await.expect("send");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
        assert_eq!(
            up.conns.idle_count(),
            0,
            "half a request on it: never given back"
        );
        let resp = up.send(addr, get("/b")).await.expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a fresh connection");
    }

    #[tokio::test]
    async fn a_body_dropped_early_closes_its_connection() {
        // The app promises 10 bytes and sends 2: the body is not finished when it is dropped.
        let (addr, accepted) = app("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok", false).await;
        let up = Upstream::new();
        let resp = up.send(addr, get("/a")).await.expect("send");
        drop(resp);
        assert_eq!(up.conns.idle_count(), 0, "not given back");
        let resp = up.send(addr, get("/b")).await.expect("send");
        assert_eq!(resp.status(), 200);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a fresh connection");
    }

    #[tokio::test]
    async fn an_app_that_closes_after_each_response_gets_a_connection_per_request() {
        let (addr, accepted) = app(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            true,
        )
        .await;
        let up = Upstream::new();
        for _ in 0..3 {
            let resp = up.send(addr, get("/a")).await.expect("send");
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], b"ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn connection_refused_names_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = Upstream::new()
            .send(addr, get("/"))
            .await
            .expect_err("nothing listens");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn absolute_uris_go_out_in_origin_form_with_a_host() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let mut req = Request::get("http://127.0.0.1:9000/a/b?x=1")
            .version(Version::HTTP_10)
            .body(Body::empty())
            .expect("request");
        prepare(&mut req, addr).expect("prepare");
        assert_eq!(req.uri().to_string(), "/a/b?x=1");
        assert_eq!(req.headers()[header::HOST], "127.0.0.1:9000");
        assert_eq!(req.version(), Version::HTTP_11);

        let mut req = Request::get("/p")
            .header(header::HOST, "example.org")
            .body(Body::empty())
            .expect("request");
        prepare(&mut req, addr).expect("prepare");
        assert_eq!(req.uri().to_string(), "/p");
        assert_eq!(
            req.headers()[header::HOST],
            "example.org",
            "the caller's Host is kept"
        );
    }
}
