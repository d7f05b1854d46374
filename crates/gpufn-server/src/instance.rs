//! One instance: its lifecycle states and the supervisor task that runs it.
//!
//! Lifecycle: `Starting` → `Ready` (shown as `busy` while requests are in flight) → `Draining` →
//! removed. An instance is removed from its pool only after its process is gone, and its GPU lease is
//! dropped just before that, so a card is never given to a new instance while an old one still runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gpufn_gpu::GpuLease;
use gpufn_runtime::{LaunchSpec, RunningInstance};
use gpufn_spec::FunctionSpec;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::pool::{AcquireError, Pool};

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Card allocated, process starting, health check not yet passed.
    Starting,
    /// Serving (idle or busy).
    Ready,
    /// Takes no new requests; stops once the ones in flight are done.
    Draining,
}

/// An illegal lifecycle move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("instance cannot go from {from:?} to {to:?}")]
pub struct StateError {
    /// State it was in.
    pub from: InstanceState,
    /// State asked for.
    pub to: InstanceState,
}

/// How long each cold-start phase took, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ColdStartPhases {
    /// Card allocation.
    pub gpu_allocate_ms: f64,
    /// Image pull (0 for process functions and for images already in the cache).
    pub image_pull_ms: f64,
    /// Spawning the process, or creating and starting the container.
    pub start_ms: f64,
    /// Spawn → health check passes (the app's own model load).
    pub ready_ms: f64,
}

/// One instance as its pool tracks it.
#[derive(Debug)]
pub(crate) struct Instance {
    pub id: String,
    /// `id` as a header value, made once: every response carries it in `x-gpufn-instance-id`.
    pub id_header: http::HeaderValue,
    pub revision: i64,
    pub state: InstanceState,
    pub in_flight: u32,
    pub served: u64,
    pub addr: Option<SocketAddr>,
    pub pid: Option<u32>,
    pub gpu_index: u32,
    pub gpu_type: String,
    pub started_at: SystemTime,
    pub ready_at: Option<Instant>,
    pub idle_since: Instant,
    pub phases: ColdStartPhases,
    /// Cancelled to stop the instance.
    pub stop: CancellationToken,
    /// Busy periods, for billing.
    pub busy: gpufn_metering::BusyTracker,
    /// Closed busy periods not yet handed to the meter (one record per window, not per request).
    pub batch: gpufn_metering::PeriodBatch,
    /// Started to satisfy `min_instances`: billed for its whole lifetime.
    pub provisioned: bool,
    /// The spec's `gpu.memory_gb`, what each second is billed by.
    pub memory_gb: u32,
    /// When its card was allocated.
    pub created: Instant,
}

impl Instance {
    /// True when a new request may be given to this instance.
    pub fn has_free_slot(&self, concurrency: u32, revision: i64) -> bool {
        self.state == InstanceState::Ready
            && self.revision == revision
            && self.in_flight < concurrency
    }

    /// `Starting` → `Ready`.
    pub fn mark_ready(&mut self, addr: SocketAddr, now: Instant) -> Result<(), StateError> {
        if self.state != InstanceState::Starting {
            return Err(StateError {
                from: self.state,
                to: InstanceState::Ready,
            });
        }
        self.state = InstanceState::Ready;
        self.addr = Some(addr);
        self.ready_at = Some(now);
        self.idle_since = now;
        Ok(())
    }

    /// Any state → `Draining`. Returns true when the instance should be stopped right away
    /// (nothing in flight); otherwise the last request to finish stops it.
    pub fn drain(&mut self) -> bool {
        self.state = InstanceState::Draining;
        self.in_flight == 0
    }

    /// The state users see: `busy` is a ready instance with requests in flight.
    pub fn public_state(&self) -> &'static str {
        match self.state {
            InstanceState::Starting => "starting",
            InstanceState::Ready if self.in_flight > 0 => "busy",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
        }
    }
}

/// What the supervisor needs to run one new instance.
#[derive(Debug)]
pub(crate) struct StartJob {
    pub id: String,
    pub spec: Arc<FunctionSpec>,
    pub lease: GpuLease,
    pub stop: CancellationToken,
    pub allocated_in: Duration,
}

enum Startup {
    Ready,
    Exited(String),
    TimedOut,
    Cancelled,
}

/// Runs one instance from spawn to exit: start, probe until ready (or the startup deadline, or the
/// process dying), serve until stopped or crashed, then give the card back and leave the pool.
pub(crate) async fn supervise(pool: Arc<Pool>, job: StartJob) {
    let shared = pool.shared().clone();
    let StartJob {
        id,
        spec,
        lease,
        stop,
        allocated_in,
    } = job;
    let log_path = shared.log_path(&spec.name, &id);
    // A secret deleted (or a key replaced) since the deploy fails the start like a spawn error,
    // saying which.
    let secret_env = crate::containers::secret_env(&shared, &spec);
    let mut env = spec.env.clone();
    if let Ok(vars) = &secret_env {
        env.extend(vars.iter().cloned());
    }
    let launch = LaunchSpec {
        instance_id: id.clone(),
        function: spec.name.clone(),
        command: spec.command.clone(),
        workdir: spec.workdir.clone().into(),
        env,
        gpu_index: lease.index(),
        gpu_memory_gb: spec.gpu.memory_gb,
        log_path: log_path.clone(),
        container: crate::containers::launch_of(&shared, &spec),
        memory_mb: spec.memory_mb,
        cpu: spec.cpu,
    };
    let t0 = Instant::now();
    let launched = match secret_env {
        Ok(_) => shared
            .runtime
            .launch(&launch)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("env_from_secrets: {e}")),
    };
    let mut inst = match launched {
        Ok(i) => i,
        Err(reason) => {
            tracing::warn!(function = %spec.name, instance = %id, "start failed: {reason}");
            drop(lease);
            pool.on_start_failed(
                &id,
                AcquireError::StartFailed {
                    reason,
                    timed_out: false,
                },
            );
            return;
        }
    };
    let spawned_in = t0.elapsed();
    shared.record_pid(&id, &spec.name, inst.pid());
    let addr = inst.addr();
    let deadline = t0 + spec.health_check.startup_timeout;
    let startup = tokio::select! {
        () = shared.prober.wait_ready(addr, &spec.health_check.path) => Startup::Ready,
        how = inst.wait() => Startup::Exited(how),
        () = tokio::time::sleep_until(deadline.into()) => Startup::TimedOut,
        () = stop.cancelled() => Startup::Cancelled,
    };
    let failure = match startup {
        Startup::Ready => None,
        Startup::Exited(how) => Some(AcquireError::StartFailed {
            reason: format!(
                "instance {id} {how} before its health check passed; see its log ({})",
                log_path.display()
            ),
            timed_out: false,
        }),
        Startup::TimedOut => {
            inst.stop(shared.stop_grace).await;
            Some(AcquireError::StartFailed {
                reason: format!(
                    "instance {id} did not answer GET {} with 2xx within startup_timeout_s ({}s); see its log ({})",
                    spec.health_check.path,
                    spec.health_check.startup_timeout.as_secs(),
                    log_path.display()
                ),
                timed_out: true,
            })
        }
        Startup::Cancelled => {
            let how = inst.stop(shared.stop_grace).await;
            finish(
                &pool,
                &id,
                inst,
                lease,
                &format!("stopped while starting: {how}"),
            );
            return;
        }
    };
    if let Some(err) = failure {
        tracing::warn!(function = %spec.name, instance = %id, "cold start failed: {err}");
        note_in_log(&log_path, &format!("cold start failed: {err}"));
        shared.forget_pid(&id);
        drop(inst);
        drop(lease);
        pool.on_start_failed(&id, err);
        return;
    }
    // For containers, launch() pulled the image if the cache lost it: that part is the pull.
    let pulled_in = inst.image_pull().min(spawned_in);
    let phases = ColdStartPhases {
        gpu_allocate_ms: ms(allocated_in),
        image_pull_ms: ms(pulled_in),
        start_ms: ms(spawned_in - pulled_in),
        ready_ms: ms(t0.elapsed().saturating_sub(spawned_in)),
    };
    tracing::info!(function = %spec.name, instance = %id, gpu = lease.index(), ?phases, "instance ready");
    pool.on_ready(&id, addr, inst.pid(), phases);
    let how = tokio::select! {
        how = inst.wait() => {
            tracing::warn!(function = %spec.name, instance = %id, "instance {how} while serving");
            format!("crashed: {how}")
        }
        () = stop.cancelled() => inst.stop(shared.stop_grace).await,
    };
    finish(&pool, &id, inst, lease, &how);
}

fn finish(pool: &Arc<Pool>, id: &str, inst: Box<dyn RunningInstance>, lease: GpuLease, how: &str) {
    tracing::info!(function = %pool.name(), instance = %id, "instance {how}");
    note_in_log(
        &pool.shared().log_path(pool.name(), id),
        &format!("instance {how}"),
    );
    pool.shared().forget_pid(id);
    drop(inst);
    // The process is gone: only now may the card go to someone else.
    drop(lease);
    pool.on_gone(id);
}

/// Appends gpufn's own word on an instance (how it ended) to the instance's log, where its user
/// looks first: `gpufn logs` then shows an OOM kill or a crash next to the app's last lines.
fn note_in_log(path: &std::path::Path, text: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "[gpufn] {text}");
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
