//! Running the server: bind, serve, and shut down in order on SIGTERM/SIGINT.
//!
//! Shutdown order: (1) stop accepting and refuse queued requests, (2) let requests in flight finish,
//! for at most the grace period, (3) stop every instance process and wait for them. Nothing gpufn
//! started outlives it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::router;
use crate::config::Config;
use crate::error::ApiError;
use crate::platform::Platform;

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gpufn_store::StoreError),
    /// GPU discovery failed.
    #[error(transparent)]
    Gpu(#[from] gpufn_gpu::DiscoveryError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A `--deploy` spec was refused.
    #[error("--deploy: {0}")]
    Deploy(ApiError),
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs gpufn until `stop` resolves, then shuts down in order. `on_listen` is told the bound
/// address (useful with port 0).
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
    on_listen: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    let platform = Platform::open(&config).await?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    tracing::info!("gpufn listening on http://{addr}");
    on_listen(addr);
    let drain = CancellationToken::new();
    let app = router(platform.clone()).into_make_service_with_connect_info::<SocketAddr>();
    // Responses are written as they stream: without TCP_NODELAY, Nagle's algorithm and delayed
    // ACKs stall the tail of a response for ~40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
    });
    let server = axum::serve(listener, app).with_graceful_shutdown(drain.clone().cancelled_owned());
    let mut server = tokio::spawn(server.into_future());
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
