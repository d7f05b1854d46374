//! `gpufn sleep-app`: the smallest useful function, for replays and benchmarks. It listens on
//! `$PORT`, answers `GET /health` once `READY_DELAY_MS` have passed (a stand-in for a model
//! load), and answers `/work?ms=N` after N milliseconds (a stand-in for inference). Once it
//! listens it says `READY=1` on `$NOTIFY_SOCKET` where gpufn gives one (not with
//! `SLEEP_APP_NOTIFY=0`, for comparing with probing alone).

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::Query;
use axum::routing::{any, get};

pub async fn run() -> anyhow::Result<ExitCode> {
    let port: u16 = std::env::var("PORT")
        .context("PORT is not set (gpufn sets it for every instance)")?
        .parse()
        .context("PORT is not a port number")?;
    let delay: u64 = std::env::var("READY_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/work", any(work));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    if std::env::var("SLEEP_APP_NOTIFY").as_deref() != Ok("0") {
        notify_ready();
    }
    axum::serve(listener, app).await?;
    Ok(ExitCode::SUCCESS)
}

/// `READY=1` to `$NOTIFY_SOCKET` (`@name`: an abstract socket; else a path), as sd_notify does.
/// Best effort: gpufn's probe finds the app anyway.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Ok(target) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    };
    if let (Ok(addr), Ok(socket)) = (addr, UnixDatagram::unbound()) {
        let _ = socket.send_to_addr(b"READY=1", &addr);
    }
}

async fn work(Query(q): Query<HashMap<String, String>>) -> String {
    let ms: u64 = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("worked {ms} ms\n")
}
