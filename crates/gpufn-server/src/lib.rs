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
pub mod idle_body;
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
mod task_queue;
pub mod tasks;
pub mod tasks_api;
pub mod upstream;
mod util;

pub use config::{Config, ContainerSettings, GatewayPath, GpuSource, TlsFiles};
pub use platform::Platform;
pub use serve::{ServerError, run};
pub use tasks::TaskConfig;
