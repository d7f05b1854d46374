//! The gpufn server.
//!
//! - [`platform`]: the process-wide state — store, GPU allocator, runtime, and one [`pool::Pool`]
//!   per deployed function — and the background reconciler (keep-alive, min instances, capacity).
//! - [`pool`]: the scheduler of one function: instances, the bounded queue, slots in flight.
//! - [`instance`]: an instance's states and the supervisor task that starts, probes and stops it.
//! - [`forward`]: the forwarding rules every gateway path follows (headers, request id, errors,
//!   metrics, cold-start record).
//! - [`gateway`]: `/function/{name}/...` → an instance through hyper, streaming both ways.
//! - [`api`]: the JSON control API under `/api/v1`.
//! - [`serve`]: binding, signals and the bounded graceful shutdown.

pub mod api;
pub mod auth;
pub mod clock;
pub mod config;
mod console;
mod containers;
mod direct;
pub mod error;
pub mod fc;
pub mod fc_auth;
mod forward;
pub mod function_lock;
pub mod gateway;
mod hooks;
pub mod idle_body;
mod idle_mode;
pub mod instance;
mod logs;
pub mod meter;
pub mod metrics;
pub mod outbound;
pub mod platform;
pub mod pool;
pub mod secrets;
pub mod serve;
mod shared;
mod spool;
mod task_queue;
pub mod tasks;
pub mod tasks_api;
pub mod upstream;
mod util;

pub use config::{Backend, Config, ContainerSettings, GatewayPath, GpuSource, TlsFiles};
pub use gpufn_kube::KubeSettings;
pub use platform::Platform;
pub use serve::{ServerError, run};
pub use tasks::TaskConfig;

/// Entry points for the fuzz targets in `fuzz/` and their corpus regression tests
/// (`tests/fuzz_corpus.rs`): parsers that take outside bytes. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::direct::fuzzing::{chunked, request_head, response_head};

    /// An FC request (a head of `name: value` lines, a blank line, then the body) verified
    /// against a fixed key: any outcome but a panic.
    pub fn fc_signature(bytes: &[u8]) {
        let text = String::from_utf8_lossy(bytes);
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let first = lines.next().unwrap_or("");
        let (method, path) = first.split_once(' ').unwrap_or(("POST", first));
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let query: Vec<(String, String)> = query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let verifier = crate::fc_auth::Verifier::new(
            [("LTAIfuzz".to_string(), "s3cr3t".to_string())]
                .into_iter()
                .collect(),
        );
        for body in [None, Some(body.as_bytes())] {
            let req = crate::fc_auth::SignedRequest {
                method,
                path,
                query: query.clone(),
                headers: headers.clone(),
                body,
            };
            let _ = verifier.verify(&req, std::time::SystemTime::now());
        }
    }
}
