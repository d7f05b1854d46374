//! Running the server: bind, serve, and shut down in order on SIGTERM/SIGINT.
//!
//! Shutdown order: (1) stop accepting and refuse queued requests, (2) let requests in flight finish,
//! for at most the grace period, (3) stop every instance process and wait for them. Nothing gpufn
//! started outlives it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::api::router;
use crate::config::{Config, GatewayPath};
use crate::direct::{Direct, Outcome, Rewind};
use crate::platform::Platform;

pub use crate::error::ServerError;

/// The TLS acceptor for `--tls-cert`/`--tls-key` (rustls, TLS 1.2 and 1.3, HTTP/1.1).
fn tls_acceptor(files: &crate::config::TlsFiles) -> Result<tokio_rustls::TlsAcceptor, ServerError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| ServerError::Tls(format!("--tls-cert {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls(format!(
            "--tls-cert {}: no certificate in it",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| ServerError::Tls(format!("--tls-key {}: {e}", files.key.display())))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            ServerError::Tls(format!("the certificate and key do not go together: {e}"))
        })?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg)))
}

/// Runs gpufn until `stop` resolves, then shuts down in order. `on_listen` is told the bound
/// address (useful with port 0).
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let platform = Platform::open(&config).await?;
    // The task dispatcher runs above the platform (it forwards through the gateway).
    crate::tasks::start(&platform);
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && tls.is_none() {
        tracing::warn!(
            "gpufn listens on {addr}, beyond loopback, over plain HTTP: tokens cross the network in the clear; serve TLS (--tls-cert/--tls-key) or put a TLS proxy in front"
        );
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!("gpufn listening on {scheme}://{addr}");
    on_listen(addr);
    let drain = CancellationToken::new();
    let mut server = tokio::spawn(accept_loop(
        listener,
        platform.clone(),
        router(platform.clone()),
        drain.clone(),
        ConnConfig {
            client_idle_timeout: config.client_idle_timeout,
            gateway: config.gateway,
            tls,
        },
    ));
    tokio::select! {
        () = stop => {}
        res = &mut server => {
            // The server ended on its own: an accept error.
            shutdown_instances(&platform).await;
            return match res {
                Ok(r) => r.map_err(ServerError::Io),
                Err(e) => Err(ServerError::Io(std::io::Error::other(e))),
            };
        }
    }
    tracing::info!(
        "shutting down: draining requests in flight (grace {:?})",
        config.shutdown_grace
    );
    platform.begin_shutdown();
    drain.cancel();
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(_) => tracing::info!("requests drained"),
        Err(_) => {
            tracing::warn!("grace period over with requests still in flight; closing them");
            server.abort();
        }
    }
    shutdown_instances(&platform).await;
    Ok(())
}

/// Accepts connections and serves HTTP/1.1 on each until `drain` is cancelled, then waits for the
/// connections to finish their requests in flight (idle keep-alive connections close at once).
///
/// Why not `axum::serve`: the gateway is the hot path. With the direct gateway (the default),
/// `/function/` requests are proxied by [`crate::direct`] without hyper; with `--gateway hyper`, or
/// once a connection sends a request the direct path does not take, a request to `/function/…`
/// goes straight to `gateway::handle` — no router match, no HTTP-version sniffing, no tower
/// layers. Every other path goes to the axum router, with `ConnectInfo` set as `axum::serve` would.
async fn accept_loop(
    listener: TcpListener,
    platform: Arc<Platform>,
    router: axum::Router,
    drain: CancellationToken,
    config: ConnConfig,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    // The direct gateway works on plain TCP; over TLS every request goes through hyper.
    let direct = (config.gateway == GatewayPath::Direct && config.tls.is_none())
        .then(|| Direct::new(platform.clone()));
    loop {
        let (tcp, peer) = tokio::select! {
            () = drain.cancelled() => break,
            res = listener.accept() => match res {
                Ok(x) => x,
                Err(e) if is_transient_accept_error(&e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        // Responses are written as they stream: without TCP_NODELAY, Nagle's algorithm and
        // delayed ACKs stall the tail of a response for ~40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        if let Some(tls) = &config.tls {
            connections.spawn(serve_tls_client(
                tls.clone(),
                tcp,
                peer,
                platform.clone(),
                router.clone(),
                drain.clone(),
                config.client_idle_timeout,
            ));
            continue;
        }
        connections.spawn(serve_client(
            tcp,
            peer,
            platform.clone(),
            router.clone(),
            direct.clone(),
            drain.clone(),
            config.client_idle_timeout,
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
    Ok(())
}

/// What the accept loop needs from the configuration.
#[derive(Clone)]
struct ConnConfig {
    client_idle_timeout: std::time::Duration,
    gateway: GatewayPath,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Serves one TLS client connection: the handshake (bounded by the client idle timeout, so a
/// client that never finishes it holds nothing), then hyper for every request.
async fn serve_tls_client(
    tls: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    platform: Arc<Platform>,
    router: axum::Router,
    drain: CancellationToken,
    client_idle_timeout: std::time::Duration,
) {
    let stream = match tokio::time::timeout(client_idle_timeout, tls.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer}: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(
                "TLS handshake with {peer}: not finished within {client_idle_timeout:?}"
            );
            return;
        }
    };
    let mut client = crate::forward::Peer::new(peer);
    client.https = true;
    let tick = idle_ticker(client_idle_timeout);
    serve_hyper(
        stream,
        peer,
        Arc::new(client),
        platform,
        router,
        drain,
        tick,
        client_idle_timeout,
    )
    .await;
}

/// Serves one client connection: the direct gateway first (if on), then hyper from the first
/// request the direct path does not take.
///
/// The idle watchdog closes connections that neither have a request in flight nor started one
/// during the last `client_idle_timeout`: idle keep-alive connections, and clients that never
/// finish a request head (slowloris), would otherwise hold a task and a file descriptor each,
/// forever. One timer per connection, not one per request: hyper's own header_read_timeout arms a
/// timer for every request head and cost ~10 % of warm-path throughput (BENCHMARKS.md).
async fn serve_client(
    mut tcp: TcpStream,
    peer: SocketAddr,
    platform: Arc<Platform>,
    router: axum::Router,
    direct: Option<Direct>,
    drain: CancellationToken,
    client_idle_timeout: std::time::Duration,
) {
    let client = Arc::new(crate::forward::Peer::new(peer));
    let mut tick = idle_ticker(client_idle_timeout);
    let pre = match &direct {
        Some(direct) => match direct.serve(&mut tcp, &client, &mut tick, &drain).await {
            Outcome::Closed => return,
            Outcome::Fallback(pre) => pre,
        },
        None => bytes::BytesMut::new(),
    };
    serve_hyper(
        Rewind::new(pre, tcp),
        peer,
        client,
        platform,
        router,
        drain,
        tick,
        client_idle_timeout,
    )
    .await;
}

/// The idle watchdog's timer of one connection. After a long request, one late tick, then a full
/// period: the idle time is counted from when the connection went idle, not from a burst of missed
/// ticks.
fn idle_ticker(period: std::time::Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Serves requests with hyper on `io` until it closes, the drain, or the idle watchdog.
#[allow(clippy::too_many_arguments)]
async fn serve_hyper<IO>(
    io: IO,
    peer: SocketAddr,
    client: Arc<crate::forward::Peer>,
    platform: Arc<Platform>,
    router: axum::Router,
    drain: CancellationToken,
    mut tick: tokio::time::Interval,
    client_idle_timeout: std::time::Duration,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::default());
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let platform = platform.clone();
        let router = router.clone();
        let client = client.clone();
        let guard = InFlight::new(&activity);
        async move {
            // Every request body, API or trigger, must keep coming (`--client-body-timeout-s`).
            let idle = platform.client_body_timeout();
            let mut req = req.map(|b| Body::new(crate::idle_body::IdleBody::new(b, idle)));
            // RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host.
            if req.version() == http::Version::HTTP_11
                && req.headers().get_all(http::header::HOST).iter().count() != 1
            {
                let resp = crate::error::ApiError::bad_field(
                    "host",
                    "an HTTP/1.1 request carries exactly one Host header",
                )
                .into_response();
                return Ok(resp.map(|inner| ConnBody {
                    inner,
                    _guard: guard,
                }));
            }
            let access = platform.access();
            if !access.host_allowed(req.headers().get(http::header::HOST).map(|v| v.as_bytes())) {
                let resp = crate::auth::host_refused().into_response();
                return Ok(resp.map(|inner| ConnBody {
                    inner,
                    _guard: guard,
                }));
            }
            if let Some(resp) = crate::auth::preflight(access, req.method(), req.headers()) {
                return Ok(resp.map(|inner| ConnBody {
                    inner,
                    _guard: guard,
                }));
            }
            let origin = access
                .cors_enabled()
                .then(|| req.headers().get(http::header::ORIGIN).cloned())
                .flatten();
            let mut resp = if req.uri().path().starts_with(GATEWAY_PREFIX) {
                crate::gateway::handle(&platform, Some(&client), req).await
            } else {
                req.extensions_mut().insert(ConnectInfo(peer));
                match router.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            };
            if origin.is_some() {
                crate::auth::add_cors(access, origin.as_ref(), &mut resp);
            }
            Ok::<_, Infallible>(resp.map(|inner| ConnBody {
                inner,
                _guard: guard,
            }))
        }
    });
    // Flattened writes: the response head and a small body leave in one write() instead of a
    // writev of two buffers — measurably cheaper for the small responses that dominate request
    // counts; a large body costs one memcpy per chunk (BENCHMARKS.md, 1 MiB rows).
    let conn = http1::Builder::new()
        .writev(false)
        .serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let mut last_started = 0;
    let mut draining = false;
    loop {
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!("connection from {peer}: {e}");
                }
                break;
            }
            () = drain.cancelled(), if !draining => {
                // Finish the request in flight, then close; an idle connection closes at once.
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = tick.tick() => {
                let started = seen.started.load(Ordering::Relaxed);
                if started == last_started && seen.in_flight.load(Ordering::Relaxed) == 0 {
                    tracing::debug!("connection from {peer}: idle past {client_idle_timeout:?}; closed");
                    break;
                }
                last_started = started;
            }
        }
    }
}

/// What the idle watchdog of one client connection looks at.
#[derive(Debug, Default)]
struct Activity {
    /// Requests whose head was read.
    started: AtomicU64,
    /// Requests not yet answered to the end (their response body not yet sent or dropped).
    in_flight: AtomicU32,
}

/// One request of a connection, in flight until dropped with its response body.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in flight until it is done (no second box:
/// hyper takes any body type).
struct ConnBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for ConnBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The gateway's route prefix (`ANY /function/{name}/{path}`).
const GATEWAY_PREFIX: &str = "/function/";

/// Accept errors that concern one connection or a passing resource shortage, not the listener.
fn is_transient_accept_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn shutdown_instances(platform: &Arc<Platform>) {
    platform.begin_shutdown();
    platform.stop_instances().await;
    tracing::info!("all instances stopped");
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            // Without signal handlers, Ctrl-C through tokio's portable path is the best we have.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
