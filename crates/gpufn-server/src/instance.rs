//! One instance: its lifecycle states and the supervisor task that runs it.
//!
//! Lifecycle (the scheduler's [`gpufn_sched::State`]): `Starting` → `Ready` (shown as `busy` while
//! requests are in flight) → `Draining` → removed. An instance is removed from its pool only after its process is gone, and its GPU lease is
//! dropped just before that, so a card is never given to a new instance while an old one still runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use gpufn_gpu::GpuLease;
use gpufn_runtime::{Ended, LaunchSpec, RunningInstance};
use gpufn_sched::InstanceId;
use gpufn_spec::FunctionSpec;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::hooks::{self, HookKind};
use crate::idle_mode::FreezeCtl;
use crate::logs::note_in_log;
use crate::shared::Shared;

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
    /// The `lifecycle.initializer` hook (0 without one).
    pub initialize_ms: f64,
}

/// What the supervisor needs to run one new instance.
#[derive(Debug)]
pub(crate) struct StartJob {
    /// The scheduler's id of the instance.
    pub key: gpufn_sched::InstanceId,
    /// Its name (logs, pids, the API).
    pub id: String,
    pub spec: Arc<FunctionSpec>,
    /// The revision `spec` is.
    pub revision: i64,
    /// An instance an earlier gpufn left running (a Pod), taken back instead of launched.
    pub adopted: Option<Box<dyn RunningInstance>>,
    pub lease: GpuLease,
    pub stop: CancellationToken,
    pub allocated_in: Duration,
}

enum Startup {
    Ready,
    Exited(Ended),
    TimedOut,
    Cancelled,
}

/// Why an instance left its pool.
enum Left {
    /// It exited by itself while serving.
    Crashed(Ended),
    /// It was stopped (keep-alive, a new revision, deletion, shutdown).
    Stopped(Ended),
    /// It was stopped before it became ready.
    StoppedWhileStarting(Ended),
}

impl std::fmt::Display for Left {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Left::Crashed(e) => write!(f, "crashed: {e}"),
            Left::Stopped(e) => write!(f, "{e}"),
            Left::StoppedWhileStarting(e) => write!(f, "stopped while starting: {e}"),
        }
    }
}

/// Why a start failed, as the scheduler takes it.
type StartError = gpufn_sched::Refusal<gpufn_gpu::AllocError>;

/// Where a supervised instance belongs and reports what became of it: its function's pool. A
/// trait, so the supervisor knows the pool only by these calls (the pool starts supervisors).
pub(crate) trait Home: Send + Sync + 'static {
    /// The function's name.
    fn name(&self) -> &str;
    /// The server's shared state.
    fn shared(&self) -> &Arc<Shared>;
    /// The instance answers its health check (and its initializer ran); `freeze` where it
    /// freezes when idle.
    fn on_ready(
        self: &Arc<Self>,
        id: InstanceId,
        addr: SocketAddr,
        pid: Option<u32>,
        phases: ColdStartPhases,
        freeze: Option<Arc<FreezeCtl>>,
    );
    /// The runtime's own placement (a cluster's scheduler) has no place for the starting
    /// instance (`Some(reason)`), or now has one (`None`).
    fn on_placement(self: &Arc<Self>, id: InstanceId, unplaced: Option<String>);
    /// The instance did not start.
    fn on_start_failed(self: &Arc<Self>, id: InstanceId, err: StartError);
    /// The instance's process is gone and its card given back.
    fn on_gone(self: &Arc<Self>, id: InstanceId);
}

/// Runs one instance from spawn to exit: start, probe until ready (or the startup deadline, or the
/// process dying), serve until stopped or crashed, then give the card back and leave the pool.
pub(crate) async fn supervise<H: Home>(pool: Arc<H>, job: StartJob) {
    let shared = pool.shared().clone();
    let StartJob {
        key,
        id,
        spec,
        revision,
        adopted,
        lease,
        stop,
        allocated_in,
    } = job;
    let log_path = shared.log_path(&spec.name, &id);
    // A secret deleted (or a key replaced) since the deploy fails the start like a spawn error,
    // saying which.
    let for_launch = spec.clone();
    let (secret_env, container) = shared
        .blocking(move |s| {
            let env = s.secret_env(&for_launch).map_err(|e| e.to_string());
            (env, s.launch_of(&for_launch))
        })
        .await
        .unwrap_or_else(|| (Err("gpufn is shutting down".into()), None));
    let mut env = spec.env.clone();
    if let Ok(vars) = &secret_env {
        env.extend(vars.iter().cloned());
    }
    // An app may say when it is ready (systemd's READY=1) rather than wait for the next probe.
    // The socket is abstract, so only instances in gpufn's network namespace can reach it: not
    // Pods.
    let notify = (!shared.on_kubernetes)
        .then(|| gpufn_runtime::notify::ReadyNotify::bind(&id).ok())
        .flatten();
    if let Some(n) = &notify {
        env.insert("NOTIFY_SOCKET".into(), n.env_value());
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
        container,
        memory_mb: spec.memory_mb,
        cpu: spec.cpu,
        revision,
        gpu_type: spec.gpu.card_type.clone(),
        disk_mb: spec.disk_mb,
        health_path: spec.health_check.path.clone(),
        startup_timeout: spec.health_check.startup_timeout,
        progress: gpufn_runtime::StartProgress::new(Arc::new(Placement {
            pool: Arc::downgrade(&pool),
            id: key,
        })),
    };
    let t0 = Instant::now();
    // An instance taken back after a restart ran its initializer under the previous gpufn.
    let was_adopted = adopted.is_some();
    let launched = match secret_env {
        _ if adopted.is_some() => adopted.ok_or_else(String::new),
        // A launch that waits for the cluster to place the instance may wait long; it is
        // cancel-safe (dropping it removes what it made), so a stop need not wait for it.
        Ok(_) if shared.runtime.launch_is_cancel_safe() => tokio::select! {
            r = shared.runtime.launch(&launch) => r.map_err(|e| e.to_string()),
            () = stop.cancelled() => {
                tracing::info!(function = %spec.name, instance = %id, "stopped while waiting for a place");
                drop(lease);
                pool.on_gone(key);
                return;
            }
        },
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
                key,
                StartError::StartFailed {
                    reason,
                    timed_out: false,
                },
            );
            return;
        }
    };
    let spawned_in = t0.elapsed();
    let (pid_id, pid_fn, pid) = (id.clone(), spec.name.clone(), inst.pid());
    shared
        .blocking(move |s| s.record_pid(&pid_id, &pid_fn, pid))
        .await;
    let addr = inst.addr();
    let deadline = t0 + spec.health_check.startup_timeout;
    let startup = tokio::select! {
        () = shared.prober.wait_ready(addr, &spec.health_check.path) => Startup::Ready,
        () = notified_ready(notify.as_ref(), &shared.prober, addr, &spec.health_check.path) => Startup::Ready,
        how = inst.wait() => Startup::Exited(how),
        () = tokio::time::sleep_until(deadline.into()) => Startup::TimedOut,
        () = stop.cancelled() => Startup::Cancelled,
    };
    drop(notify);
    let failure = match startup {
        Startup::Ready => None,
        Startup::Exited(how) => Some(StartError::StartFailed {
            reason: format!(
                "instance {id} {how} before its health check passed; see its log ({})",
                log_path.display()
            ),
            timed_out: false,
        }),
        Startup::TimedOut => {
            inst.stop(shared.stop_grace).await;
            Some(StartError::StartFailed {
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
                key,
                &id,
                inst,
                lease,
                &Left::StoppedWhileStarting(how),
            )
            .await;
            return;
        }
    };
    if let Some(err) = failure {
        tracing::warn!(function = %spec.name, instance = %id, "cold start failed: {err}");
        note_in_log(&log_path, &format!("cold start failed: {err}"));
        forget_pid(&shared, &id).await;
        drop(inst);
        drop(lease);
        pool.on_start_failed(key, err);
        return;
    }
    let ready_in = t0.elapsed().saturating_sub(spawned_in);
    // The initializer: after the health check, before any request; a failure fails the start.
    let t_init = Instant::now();
    if let Some(hook) = spec.lifecycle.initializer.as_ref().filter(|_| !was_adopted) {
        let init = hooks::start(
            HookKind::Initializer,
            hook,
            &*inst,
            &shared.prober,
            &spec,
            &id,
        );
        let outcome = tokio::select! {
            r = init => r,
            how = inst.wait() => Err(hooks::HookFailed {
                message: format!("the instance {how} during its initializer"),
                timed_out: false,
            }),
            () = stop.cancelled() => {
                let how = inst.stop(shared.stop_grace).await;
                finish(&pool, key, &id, inst, lease, &Left::StoppedWhileStarting(how)).await;
                return;
            }
        };
        if let Err(e) = outcome {
            let err = StartError::StartFailed {
                reason: format!("instance {id}: {}; see its log", e.message),
                timed_out: e.timed_out,
            };
            tracing::warn!(function = %spec.name, instance = %id, "cold start failed: {err}");
            note_in_log(&log_path, &format!("cold start failed: {}", e.message));
            inst.stop(shared.stop_grace).await;
            forget_pid(&shared, &id).await;
            drop(inst);
            drop(lease);
            pool.on_start_failed(key, err);
            return;
        }
    }
    let initialized_in = spec
        .lifecycle
        .initializer
        .as_ref()
        .filter(|_| !was_adopted)
        .map_or(Duration::ZERO, |_| t_init.elapsed());
    // For containers, launch() pulled the image if the cache lost it: that part is the pull.
    // For Pods, launch() waited for the cluster's scheduler to find a GPU: that is allocation.
    let placed_in = inst.placement().min(spawned_in);
    let pulled_in = inst.image_pull().min(spawned_in - placed_in);
    let phases = ColdStartPhases {
        gpu_allocate_ms: ms(allocated_in + placed_in),
        image_pull_ms: ms(pulled_in),
        start_ms: ms(spawned_in - placed_in - pulled_in),
        ready_ms: ms(ready_in),
        initialize_ms: ms(initialized_in),
    };
    tracing::info!(function = %spec.name, instance = %id, gpu = lease.index(), ?phases, "instance ready");
    // Idle mode: what freezes this instance when it is idle and provisioned.
    let freeze = spec
        .scaling
        .freeze_idle
        .then(|| inst.freezer())
        .flatten()
        .map(|f| Arc::new(FreezeCtl::new(f, spec.clone(), id.clone(), addr)));
    pool.on_ready(key, addr, inst.pid(), phases, freeze.clone());
    let how = tokio::select! {
        how = inst.wait() => {
            tracing::warn!(function = %spec.name, instance = %id, "instance {how} while serving");
            Left::Crashed(how)
        }
        () = stop.cancelled() => {
            // A frozen instance is thawed first (it could take neither the hook nor SIGTERM).
            if let Some(f) = &freeze {
                f.retire().await;
            }
            // pre_stop, bounded by its timeout, then SIGTERM as without one. The instance may
            // exit by itself meanwhile: then there is nothing left to stop.
            if let Some(hook) = &spec.lifecycle.pre_stop {
                let hook = hooks::start(HookKind::PreStop, hook, &*inst, &shared.prober, &spec, &id);
                let result = tokio::select! {
                    r = hook => r,
                    how = inst.wait() => Err(hooks::HookFailed {
                        message: format!("the instance {how} during its pre_stop hook"),
                        timed_out: false,
                    }),
                };
                if let Err(e) = result {
                    tracing::warn!(function = %spec.name, instance = %id, "{}", e.message);
                    note_in_log(&log_path, &e.message);
                }
            }
            Left::Stopped(inst.stop(shared.stop_grace).await)
        }
    };
    finish(&pool, key, &id, inst, lease, &how).await;
}

/// Tells an instance's pool where its start stands with the runtime's placement.
struct Placement<H> {
    pool: std::sync::Weak<H>,
    id: InstanceId,
}

impl<H> std::fmt::Debug for Placement<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Placement").field("id", &self.id).finish()
    }
}

impl<H: Home> gpufn_runtime::StartObserver for Placement<H> {
    fn placed(&self) {
        if let Some(pool) = self.pool.upgrade() {
            pool.on_placement(self.id, None);
        }
    }

    fn unplaced(&self, reason: &str) {
        if let Some(pool) = self.pool.upgrade() {
            pool.on_placement(self.id, Some(reason.to_string()));
        }
    }
}

/// Ready as soon as the app says so on its notification socket and a probe confirms it (a
/// notification alone is only a hint: anyone on the machine may send one). Never returns without a
/// socket.
async fn notified_ready(
    notify: Option<&gpufn_runtime::notify::ReadyNotify>,
    prober: &gpufn_runtime::probe::Prober,
    addr: std::net::SocketAddr,
    path: &str,
) {
    let Some(notify) = notify else {
        return std::future::pending().await;
    };
    loop {
        notify.ready().await;
        if prober.check(addr, path).await {
            return;
        }
    }
}

/// Forgets a stopped instance's pid in the store (on a blocking thread).
async fn forget_pid(shared: &Arc<Shared>, id: &str) {
    let id = id.to_string();
    shared.blocking(move |s| s.forget_pid(&id)).await;
}

async fn finish(
    pool: &Arc<impl Home>,
    key: gpufn_sched::InstanceId,
    id: &str,
    inst: Box<dyn RunningInstance>,
    lease: GpuLease,
    how: &Left,
) {
    tracing::info!(function = %pool.name(), instance = %id, "instance {how}");
    note_in_log(
        &pool.shared().log_path(pool.name(), id),
        &format!("instance {how}"),
    );
    forget_pid(pool.shared(), id).await;
    drop(inst);
    // The process is gone: only now may the card go to someone else.
    drop(lease);
    pool.on_gone(key);
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}
