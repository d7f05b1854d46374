//! The readiness probe: GET the health path until it answers 2xx.
//!
//! Traffic reaches an instance only after this passes, so the first request after a scale-from-zero
//! never meets an app that is still loading its model.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Probes instances over HTTP/1.1 on loopback.
#[derive(Debug, Clone)]
pub struct Prober {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for Prober {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Self {
            // No pooling: a probe is a handful of requests per instance lifetime.
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        }
    }
}

impl Prober {
    /// One probe: true on a 2xx answer.
    pub async fn check(&self, addr: SocketAddr, path: &str) -> bool {
        let Ok(uri) = format!("http://{addr}{path}").parse::<http::Uri>() else {
            return false;
        };
        let fut = self.client.get(uri);
        matches!(tokio::time::timeout(Duration::from_secs(5), fut).await,
                 Ok(Ok(resp)) if resp.status().is_success())
    }

    /// Probes until the instance answers 2xx. Polls fast at first (a small app is ready within
    /// milliseconds, and every millisecond here is cold-start latency) and backs off by 1.5× to
    /// 100 ms, so a minutes-long model load costs ten cheap refused connects a second. Never returns
    /// on its own otherwise: the caller races it against the startup deadline and the process exiting.
    pub async fn wait_ready(&self, addr: SocketAddr, path: &str) {
        let mut pause = Duration::from_millis(2);
        loop {
            if self.check(addr, path).await {
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_millis(100));
        }
    }
}
