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

    /// One request with an empty body (a lifecycle hook): the status and the start of the body
    /// (at most 512 bytes, for a failure's message), or why there is none. No deadline of its own:
    /// the caller bounds it.
    pub async fn request(
        &self,
        method: http::Method,
        addr: SocketAddr,
        path: &str,
        headers: &[(&'static str, String)],
    ) -> Result<(http::StatusCode, String), String> {
        use http_body_util::BodyExt;
        let uri = format!("http://{addr}{path}")
            .parse::<http::Uri>()
            .map_err(|e| format!("bad path {path:?}: {e}"))?;
        let mut req = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut excerpt = Vec::new();
        while excerpt.len() < 512 {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        excerpt.extend_from_slice(&data[..data.len().min(512 - excerpt.len())]);
                    }
                }
                _ => break,
            }
        }
        Ok((status, String::from_utf8_lossy(&excerpt).trim().to_string()))
    }

    /// Probes until the instance answers 2xx. The pause between probes is a tenth of the time
    /// waited so far, between 1 ms and 100 ms: whatever the app's start takes, at most ~10 % of
    /// it (and never more than 100 ms) passes between its readiness and gpufn's noticing, while
    /// a minutes-long model load costs ten cheap probes a second. (It was 2 ms growing by 1.5× per
    /// probe: an app ready in 17 ms was noticed at 26 ms.) Never returns on its own otherwise: the
    /// caller races it against the startup deadline and the process exiting.
    pub async fn wait_ready(&self, addr: SocketAddr, path: &str) {
        let started = tokio::time::Instant::now();
        loop {
            if self.check(addr, path).await {
                return;
            }
            tokio::time::sleep(probe_pause(started.elapsed())).await;
        }
    }
}

/// The pause before the next probe, `waited` into a start.
pub fn probe_pause(waited: Duration) -> Duration {
    (waited / 10).clamp(Duration::from_millis(1), Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_fast_while_a_start_is_young_and_ten_a_second_after() {
        let ms = Duration::from_millis;
        assert_eq!(probe_pause(Duration::ZERO), ms(1));
        assert_eq!(probe_pause(ms(5)), ms(1));
        assert_eq!(probe_pause(ms(40)), ms(4));
        assert_eq!(probe_pause(ms(500)), ms(50));
        assert_eq!(probe_pause(Duration::from_secs(120)), ms(100));
        // Probes in the first second: about 10 at 1 ms, then ~10 per tenfold of time.
        let mut t = Duration::ZERO;
        let mut probes = 0;
        while t < Duration::from_secs(1) {
            t += probe_pause(t);
            probes += 1;
        }
        assert!(
            (25..60).contains(&probes),
            "{probes} probes in the first second"
        );
    }
}
