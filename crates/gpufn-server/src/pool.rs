//! The async shell around one function's scheduler ([`gpufn_sched::Scheduler`]).
//!
//! The scheduler decides (slots, queue, scale-up, keep-alive, billing periods); this module
//! carries its effects out in the world: oneshot channels answer waiting requests, supervisor
//! tasks start and stop instances, the GPU allocator grants cards, the meter records bills.
//!
//! Architecture invariants:
//! - An instance never has more than `instance_concurrency` requests in flight: a request holds a
//!   [`Slot`], taken under the pool lock and given back when the slot is dropped (after the response
//!   body has streamed), so no error path can leak one.
//! - All decisions are made under one short `std::sync::Mutex` that is never held across `.await`;
//!   their effects (answering waiters, starting or stopping instances) run after it is released, so
//!   dropping a slot from an effect can never deadlock.
//! - The scheduler is the only place that decides; this shell adds no policy of its own.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use gpufn_gpu::{AllocError, AllocRequest, GpuLease};
use gpufn_policy::provisioning::{self, Outlook, Schedule};
use gpufn_sched::{
    Acquire, Bill, Cards, Config, Effect, Effects, Grant, InstanceId, KeepAlive, WaiterId,
};
use gpufn_spec::FunctionSpec;
use gpufn_store::MeterRecord;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::idle_mode::FreezeCtl;
use crate::instance::{ColdStartPhases, StartJob, supervise};
use crate::shared::Shared;
use crate::util::{rfc3339, wall_ms};

/// Why a request got no slot.
pub type AcquireError = gpufn_sched::Refusal<AllocError>;

type Scheduler = gpufn_sched::Scheduler<Meta, AllocError>;

/// A reserved place on an instance for one request. Dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Pool>,
    instance: InstanceId,
    instance_header: http::HeaderValue,
    addr: SocketAddr,
    cold: bool,
    /// For a cold start: the instance's phases and when it became ready.
    cold_info: Option<(ColdStartPhases, Instant)>,
    request_timeout: Duration,
    freeze: Option<Arc<FreezeCtl>>,
}

impl Slot {
    /// Thaws the instance if idle mode froze it (waiting for a freeze under way). Call before
    /// sending it the request.
    pub async fn thaw(&self) {
        if let Some(f) = &self.freeze {
            if let Some(took) = f.thaw().await {
                tracing::debug!(instance = %self.instance_id(), ?took, "thawed");
                self.pool.metrics.thaws.inc();
            }
        }
    }

    /// The cold-start phases of the instance and when it became ready, if this request waited
    /// for it to start.
    pub fn cold_start_info(&self) -> Option<(ColdStartPhases, Instant)> {
        self.cold_info
    }

    /// The function's name.
    pub fn function(&self) -> &str {
        self.pool.name()
    }

    /// The instance holding this slot.
    pub fn instance_id(&self) -> &str {
        // Made from the instance's name, which is ASCII.
        self.instance_header.to_str().unwrap_or("invalid-id")
    }

    /// The instance id as a header value (made once per instance).
    pub fn instance_header(&self) -> &http::HeaderValue {
        &self.instance_header
    }

    /// Where to send the request.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// True when the request waited for this instance to start (a cold start).
    pub fn cold_start(&self) -> bool {
        self.cold
    }

    /// The function's `request_timeout_s`.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The instance failed at the connection level (refused, reset): take it out of service so the
    /// next request gets a fresh instance instead of the same broken one.
    pub fn mark_broken(&self) {
        self.pool.take_out_of_service(self.instance);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(self.instance);
    }
}

/// What the shell keeps beside the scheduler's record of an instance.
#[derive(Debug)]
pub(crate) struct Meta {
    /// `<function>-<8 hex>`, as logs, the API and `x-gpufn-instance-id` show it.
    name: String,
    /// `name` as a header value, made once: every response carries it.
    header: http::HeaderValue,
    addr: Option<SocketAddr>,
    pid: Option<u32>,
    gpu_index: u32,
    gpu_type: String,
    started_at: SystemTime,
    phases: ColdStartPhases,
    /// Cancelled to stop the instance.
    stop: CancellationToken,
    /// Freezes it when idle (`idle_mode: freeze`), once ready.
    freeze: Option<Arc<FreezeCtl>>,
    /// The card, until the supervisor takes it (the `Start` effect).
    lease: Option<GpuLease>,
    allocated_in: Duration,
}

/// The name of an instance from its id (the id is the name's random part).
fn instance_name(function: &str, id: InstanceId) -> String {
    format!("{function}-{:08x}", id.0)
}

impl Meta {
    /// A new instance's record: named `name`, holding `lease`.
    fn new(name: String, lease: GpuLease, stop: CancellationToken, allocated_in: Duration) -> Self {
        Meta {
            header: http::HeaderValue::from_str(&name)
                .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-id")),
            name,
            addr: None,
            pid: None,
            gpu_index: lease.index(),
            gpu_type: lease.card_type().to_string(),
            started_at: SystemTime::now(),
            phases: ColdStartPhases::default(),
            stop,
            freeze: None,
            lease: Some(lease),
            allocated_in,
        }
    }
}

/// Cards from the GPU allocator, for one scale-up of one function.
struct Allocator<'a> {
    shared: &'a Shared,
    name: &'a str,
    spec: &'a FunctionSpec,
}

impl Cards<Meta, AllocError> for Allocator<'_> {
    fn allocate(&mut self, _provisioned: bool) -> Result<(InstanceId, Meta), AllocError> {
        // The name's random part: ids of earlier runs (their logs) are not reused.
        let id = InstanceId(uuid::Uuid::new_v4().as_u128() as u64 & 0xffff_ffff);
        let name = instance_name(self.name, id);
        let t = Instant::now();
        let lease = self
            .shared
            .allocator
            .allocate(AllocRequest {
                instance: &name,
                function: self.name,
                card_type: self.spec.gpu.card_type.as_deref(),
                memory_gb: self.spec.gpu.memory_gb,
            })
            .inspect_err(|e| {
                tracing::debug!(function = %self.name, "cannot start an instance: {e}");
                if matches!(
                    e,
                    AllocError::NoFreeCard { .. } | AllocError::QuotaExceeded { .. }
                ) {
                    // Another function's idle instance may hold the card these requests need.
                    self.shared
                        .card_pressure
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.shared
                        .card_waiting
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                    self.shared.wake.notify_one();
                }
            })?;
        let meta = Meta::new(
            name,
            lease,
            self.shared.instances_root.child_token(),
            t.elapsed(),
        );
        Ok((id, meta))
    }
}

/// An instance's busy periods starting within this window of each other make one metering record
/// (see [`gpufn_metering::PeriodBatch`]): a record per second per busy instance at most, not one
/// per request.
const BATCH_WINDOW: Duration = Duration::from_secs(1);

/// How long an idle provisioned instance stays thawed before idle mode freezes it: calls a moment
/// apart do not each pay a freeze and a thaw (a container's `runc resume` is a process spawn).
const FREEZE_AFTER: Duration = Duration::from_millis(500);

/// The scheduler's settings from a spec.
fn config_of(spec: &FunctionSpec) -> Config {
    let s = &spec.scaling;
    Config {
        concurrency: spec.instance_concurrency,
        max_queue: s.max_queue,
        min_instances: s.min_instances,
        max_instances: s.max_instances,
        keep_alive: match s.keep_alive {
            gpufn_spec::KeepAliveMode::Fixed => KeepAlive::Fixed(s.idle_timeout),
            gpufn_spec::KeepAliveMode::Histogram => KeepAlive::Histogram {
                fallback: s.idle_timeout,
                bin: s.histogram_bin,
            },
            gpufn_spec::KeepAliveMode::Predictive => KeepAlive::Predictive {
                fallback: s.idle_timeout,
                cold_cost: s.cold_cost,
            },
        },
        memory_gb: spec.gpu.memory_gb,
        batch_window: BATCH_WINDOW,
        target: s
            .target_utilization_permille
            .map(|p| gpufn_sched::TargetTracking {
                utilization_permille: p,
                max_provisioned: s.max_provisioned,
            }),
    }
}

/// Where a queued request is told its slot or its error.
type Answer = oneshot::Sender<Result<Slot, AcquireError>>;

#[derive(Debug)]
struct PoolState {
    spec: Arc<FunctionSpec>,
    sched: Scheduler,
    /// The queued requests' answer channels, by the scheduler's waiter id.
    waiters: HashMap<WaiterId, Answer>,
    /// Instances taken back after a restart, waiting for their supervisor.
    adopted: HashMap<InstanceId, Box<dyn gpufn_runtime::RunningInstance>>,
    /// The spec's scheduled provisioning actions, parsed, and what they said when last asked
    /// (kept until their next match: searching patterns is not free).
    schedules: Arc<Vec<Schedule>>,
    outlook: Option<Outlook>,
}

impl PoolState {
    /// What the schedules say at `wall` (`None` without schedules).
    fn outlook(&mut self, wall: chrono::DateTime<chrono::Utc>) -> Option<Outlook> {
        if self.schedules.is_empty() {
            return None;
        }
        match self.outlook {
            Some(o) if o.holds_at(wall) => Some(o),
            _ => {
                let o = Outlook::new(&self.schedules, wall);
                self.outlook = Some(o);
                Some(o)
            }
        }
    }
}

fn schedules_of(spec: &FunctionSpec) -> Arc<Vec<Schedule>> {
    Arc::new(
        spec.scaling
            .schedules
            .iter()
            .filter_map(gpufn_spec::ScheduleSpec::to_policy)
            .collect(),
    )
}

/// Effects turned into actions under the lock, run after it is released.
#[derive(Default)]
struct Outbox {
    /// `None`: the waiter went away; its slot is dropped (released) after the lock.
    answers: Vec<(Option<Answer>, Result<Slot, AcquireError>)>,
    stops: Vec<CancellationToken>,
    starts: Vec<StartJob>,
    /// Something keep-alive cares about changed (an instance went idle, ready or away).
    wake: bool,
    records: Vec<MeterRecord>,
}

/// One function's pool.
#[derive(Debug)]
pub struct Pool {
    name: String,
    /// `auth: {type: anonymous}` in the current spec.
    anonymous: AtomicBool,
    /// `scaling.idle_mode: freeze` in the current spec.
    freeze_idle: AtomicBool,
    shared: Arc<Shared>,
    metrics: crate::metrics::PoolMetrics,
    state: Mutex<PoolState>,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceInfo {
    /// Instance id.
    pub id: String,
    /// `starting`, `ready`, `busy` or `draining`.
    pub state: &'static str,
    /// GPU card index.
    pub gpu: u32,
    /// GPU card type.
    pub gpu_type: String,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests served so far.
    pub served: u64,
    /// Function revision this instance runs.
    pub revision: i64,
    /// When the instance was started (RFC 3339).
    pub started_at: String,
    /// Process id.
    pub pid: Option<u32>,
    /// Cold-start phases (present once ready): `gpu_allocate_ms`, `image_pull_ms`, `start_ms`,
    /// `ready_ms`.
    #[schema(value_type = Option<Object>)]
    pub cold_start: Option<ColdStartPhases>,
    /// Frozen by idle mode (`scaling.idle_mode: freeze`) until its next request.
    pub frozen: bool,
}

/// Counts of a function's instances and queue.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct PoolStatus {
    /// Instances starting.
    pub starting: u32,
    /// Ready and idle.
    pub ready: u32,
    /// Ready with requests in flight.
    pub busy: u32,
    /// Draining.
    pub draining: u32,
    /// Requests in flight.
    pub in_flight: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
    /// What the keep-alive policy decided and why (`keep_alive: predictive`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_alive: Option<String>,
    /// Provisioned instances wanted now (`min_instances`, or what a schedule or target tracking
    /// sets).
    pub min_instances: u32,
    /// Which scheduled action is in force, the next one, and target tracking's load and count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<String>,
}

/// Usage not yet in the store (see [`Pool::live_usage`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveUsage {
    /// Requests in open busy periods and in closed ones not yet recorded.
    pub invocations: u64,
    /// Seconds billed so far for those periods.
    pub billed_seconds: u64,
    /// GB-seconds of those periods.
    pub gb_seconds: f64,
    /// Idle GB-seconds so far of live provisioned instances.
    pub idle_gb_seconds: f64,
}

impl Pool {
    pub(crate) fn new(shared: Arc<Shared>, spec: FunctionSpec, revision: i64) -> Arc<Self> {
        Arc::new(Self {
            metrics: shared.metrics.for_pool(&spec.name),
            name: spec.name.clone(),
            anonymous: AtomicBool::new(spec.auth == gpufn_spec::TriggerAuth::Anonymous),
            freeze_idle: AtomicBool::new(spec.scaling.freeze_idle),
            shared,
            state: Mutex::new(PoolState {
                sched: Scheduler::new(config_of(&spec), revision),
                schedules: schedules_of(&spec),
                outlook: None,
                spec: Arc::new(spec),
                waiters: HashMap::new(),
                adopted: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Every critical section leaves the state consistent before anything that could panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn metrics(&self) -> &crate::metrics::PoolMetrics {
        &self.metrics
    }

    /// Function name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current spec.
    pub fn spec(&self) -> Arc<FunctionSpec> {
        self.lock().spec.clone()
    }

    /// Who may call the triggers (read without the pool lock: the gateway asks on every request).
    pub fn trigger_auth(&self) -> gpufn_spec::TriggerAuth {
        if self.anonymous.load(std::sync::atomic::Ordering::Relaxed) {
            gpufn_spec::TriggerAuth::Anonymous
        } else {
            gpufn_spec::TriggerAuth::Token
        }
    }

    /// Takes back `inst`, instance `name` of the current revision left running by an earlier
    /// gpufn (a Pod): it gets a card and a supervisor, and serves once its health check passes.
    /// False (and `inst` dropped, which removes it) when the name is not this function's or no
    /// card is left for it.
    pub(crate) fn adopt(
        self: &Arc<Self>,
        name: &str,
        inst: Box<dyn gpufn_runtime::RunningInstance>,
    ) -> bool {
        let Some(id) = name
            .strip_prefix(&format!("{}-", self.name))
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            .map(InstanceId)
        else {
            return false;
        };
        let spec = self.spec();
        let lease = match self.shared.allocator.allocate(AllocRequest {
            instance: name,
            function: &self.name,
            card_type: spec.gpu.card_type.as_deref(),
            memory_gb: spec.gpu.memory_gb,
        }) {
            Ok(lease) => lease,
            Err(e) => {
                tracing::warn!(function = %self.name, instance = %name, "not adopted: {e}");
                return false;
            }
        };
        let meta = Meta::new(
            name.to_string(),
            lease,
            self.shared.instances_root.child_token(),
            Duration::ZERO,
        );
        self.lock().adopted.insert(id, inst);
        self.event(|s, _, fx| s.adopt(id, meta, Instant::now(), fx));
        true
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.lock().sched.revision()
    }

    /// Runs one scheduler event under the lock with the allocator as its card source, turns its
    /// effects into actions, and carries them out after the lock is released.
    fn event<T>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Scheduler, &mut dyn Cards<Meta, AllocError>, &mut Effects<AllocError>) -> T,
    ) -> T {
        let mut effects = Effects::new();
        let mut out = Outbox::default();
        let result = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let mut cards = Allocator {
                shared: &self.shared,
                name: &self.name,
                spec: &st.spec,
            };
            let before = st.sched.prewarm_counts();
            let result = f(&mut st.sched, &mut cards, &mut effects);
            self.count_prewarms(before, st.sched.prewarm_counts());
            self.apply(st, effects, &mut out);
            result
        };
        self.run(out);
        result
    }

    /// Adds the pre-warm hits and misses the scheduler counted since `before` to the metrics.
    fn count_prewarms(&self, before: (u64, u64), after: (u64, u64)) {
        if after != before {
            self.metrics
                .prewarm_hits
                .inc_by(after.0.saturating_sub(before.0));
            self.metrics
                .prewarm_misses
                .inc_by(after.1.saturating_sub(before.1));
        }
    }

    /// Waits for a slot: at once on an instance with a free slot, else in the queue while instances
    /// start (a cold start) or slots free up, for at most `scaling.queue_timeout_s`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, AcquireError> {
        self.acquire_at(Instant::now()).await
    }

    /// [`Pool::acquire`] for a request that arrived at `now` (the caller's clock reading, so the
    /// hot path reads the clock once less).
    pub async fn acquire_at(self: &Arc<Self>, now: Instant) -> Result<Slot, AcquireError> {
        let mut effects = Effects::new();
        let mut out = Outbox::default();
        let (waiter, mut rx, queue_timeout) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let mut cards = Allocator {
                shared: &self.shared,
                name: &self.name,
                spec: &st.spec,
            };
            let before = st.sched.prewarm_counts();
            let acquired = st.sched.acquire(now, &mut cards, &mut effects);
            self.count_prewarms(before, st.sched.prewarm_counts());
            match acquired {
                Acquire::Now(grant) => return Ok(self.slot(st, grant)),
                Acquire::Refused(reason) => return Err(reason),
                Acquire::Queued(w) => {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.insert(w, tx);
                    self.apply(st, effects, &mut out);
                    (w, rx, st.spec.scaling.queue_timeout)
                }
            }
        };
        self.run(out);
        // Removes the waiter if this future is dropped (the caller went away), so it neither
        // counts against max_queue nor asks for instances any more.
        let guard = QueuedGuard {
            pool: self,
            waiter: Some(waiter),
        };
        let result = match tokio::time::timeout(queue_timeout, &mut rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(AcquireError::ShuttingDown),
            Err(_) => {
                let refusal = self.event(|s, _, fx| {
                    let refusal = s.timed_out(waiter, Instant::now()).map(|r| match r {
                        // Waited on an instance the cluster could not place: say why.
                        AcquireError::QueueTimeout {
                            waited,
                            blocked: None,
                        } => AcquireError::QueueTimeout {
                            waited,
                            blocked: s.unplaced_reason().map(|reason| AllocError::Unplaced {
                                reason: reason.to_string(),
                            }),
                        },
                        other => other,
                    });
                    s.stop_unneeded_unplaced(fx);
                    refusal
                });
                self.lock().waiters.remove(&waiter);
                match (refusal, rx.try_recv()) {
                    (Some(refusal), _) => Err(refusal),
                    // Answered in the instant the timeout fired: use the answer.
                    (None, Ok(answer)) => answer,
                    (None, Err(_)) => Err(AcquireError::ShuttingDown),
                }
            }
        };
        guard.disarm();
        result
    }

    fn slot(self: &Arc<Self>, st: &PoolState, grant: Grant) -> Slot {
        let inst = st.sched.instance(grant.instance);
        let meta = inst.map(|i| i.payload());
        let cold_info = match (grant.cold, grant.ready_at, meta) {
            (true, Some(ready), Some(m)) => Some((m.phases, ready)),
            _ => None,
        };
        Slot {
            pool: self.clone(),
            instance: grant.instance,
            instance_header: meta.map_or_else(
                || http::HeaderValue::from_static("invalid-id"),
                |m| m.header.clone(),
            ),
            // A ready instance always has its address (set before it was reported ready); port 0
            // would only refuse the connection, answered as a 502.
            addr: meta
                .and_then(|m| m.addr)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            cold: grant.cold,
            cold_info,
            request_timeout: st.spec.request_timeout,
            freeze: meta.and_then(|m| m.freeze.clone()),
        }
    }

    /// Turns the scheduler's effects into actions (under the lock).
    fn apply(self: &Arc<Self>, st: &mut PoolState, effects: Effects<AllocError>, out: &mut Outbox) {
        for effect in effects {
            match effect {
                Effect::Grant { waiter, grant } => {
                    let slot = self.slot(st, grant);
                    out.answers.push((st.waiters.remove(&waiter), Ok(slot)));
                }
                Effect::Refuse { waiter, reason } => {
                    out.answers.push((st.waiters.remove(&waiter), Err(reason)));
                }
                Effect::Start { instance } => {
                    let spec = st.spec.clone();
                    let revision = st.sched.revision();
                    let adopted = st.adopted.remove(&instance);
                    if let Some(meta) = st.sched.instance_mut(instance).map(|i| i.payload_mut()) {
                        if let Some(lease) = meta.lease.take() {
                            out.starts.push(StartJob {
                                key: instance,
                                id: meta.name.clone(),
                                spec,
                                revision,
                                adopted,
                                lease,
                                stop: meta.stop.clone(),
                                allocated_in: meta.allocated_in,
                            });
                        }
                    }
                }
                Effect::Stop { instance } => {
                    if let Some(i) = st.sched.instance(instance) {
                        out.stops.push(i.payload().stop.clone());
                    }
                }
                Effect::Bill(bill) => out.records.push(self.record(bill)),
                Effect::Wake => out.wake = true,
                // Only the simulator's planned (oracle) keep-alive plans idle periods.
                Effect::Idle => {}
            }
        }
    }

    fn record(&self, bill: Bill) -> MeterRecord {
        match bill {
            Bill::Busy {
                instance,
                period: p,
                memory_gb,
            } => MeterRecord::Busy {
                function: self.name.clone(),
                instance: instance_name(&self.name, instance),
                start_ms: wall_ms(p.start),
                busy_ms: i64::try_from(p.busy.as_millis()).unwrap_or(i64::MAX),
                requests: i64::try_from(p.requests).unwrap_or(i64::MAX),
                billed_s: i64::try_from(p.billed_seconds).unwrap_or(i64::MAX),
                memory_gb: i64::from(memory_gb),
            },
            Bill::ProvisionedIdle {
                instance,
                end,
                idle_s,
                memory_gb,
            } => MeterRecord::ProvisionedIdle {
                function: self.name.clone(),
                instance: instance_name(&self.name, instance),
                end_ms: wall_ms(end),
                idle_s: i64::try_from(idle_s).unwrap_or(i64::MAX),
                memory_gb: i64::from(memory_gb),
            },
        }
    }

    /// Runs the actions decided under the lock. Must be called without the lock held.
    fn run(self: &Arc<Self>, out: Outbox) {
        for (tx, answer) in out.answers {
            // A waiter that went away hands its slot back through the value being dropped here,
            // which releases it (and re-dispatches) safely.
            if let Some(tx) = tx {
                let _ = tx.send(answer);
            }
        }
        for token in out.stops {
            token.cancel();
        }
        for job in out.starts {
            let pool = self.clone();
            self.shared.tasks.spawn(supervise(pool, job));
        }
        if out.wake {
            self.shared.mark_dirty(&self.name);
        }
        for record in out.records {
            if let MeterRecord::Busy {
                billed_s,
                memory_gb,
                ..
            } = &record
            {
                self.metrics
                    .billed_gb_seconds
                    .inc_by((billed_s * memory_gb) as f64);
            }
            self.shared.meter.record(record);
        }
    }

    fn release(self: &Arc<Self>, id: InstanceId) {
        self.event(|s, _, fx| s.release(id, Instant::now(), fx));
        if self.freeze_idle.load(std::sync::atomic::Ordering::Relaxed) {
            self.maybe_freeze(id);
        }
        // A function may be waiting for a card this instance, idle now, could give.
        if self
            .shared
            .card_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            self.shared
                .card_pressure
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.shared.wake.notify_one();
        }
    }

    /// Whether instance `id` is a ready provisioned instance with nothing in flight, idle for
    /// at least `idle_for`: what idle mode freezes.
    fn freezable(st: &PoolState, id: InstanceId, idle_for: Duration) -> Option<Arc<FreezeCtl>> {
        let i = st.sched.instance(id)?;
        (i.state() == gpufn_sched::State::Ready
            && i.in_flight() == 0
            && i.provisioned()
            && i.idle_since().elapsed() >= idle_for)
            .then(|| i.payload().freeze.clone())
            .flatten()
    }

    /// Freezes instance `id` (in a task of its own) if it is idle and provisioned, once it has
    /// been idle for [`FREEZE_AFTER`].
    fn maybe_freeze(self: &Arc<Self>, id: InstanceId) {
        let Some(ctl) = Self::freezable(&self.lock(), id, Duration::ZERO) else {
            return;
        };
        if !ctl.plan() {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            // Idle long enough by the time this wakes, unless a request came meanwhile: then the
            // wait starts again from its release.
            loop {
                tokio::time::sleep(FREEZE_AFTER).await;
                let since = {
                    let st = pool.lock();
                    Self::freezable(&st, id, Duration::ZERO)
                        .and_then(|_| st.sched.instance(id).map(|i| i.idle_since()))
                };
                match since {
                    None => break,
                    Some(t) if t.elapsed() >= FREEZE_AFTER => {
                        let still_idle =
                            || Self::freezable(&pool.lock(), id, FREEZE_AFTER).is_some();
                        ctl.freeze_if_idle(&pool.shared, still_idle).await;
                        break;
                    }
                    Some(_) => {}
                }
            }
            ctl.unplan();
        });
    }

    /// Idle provisioned instances not yet frozen get their freeze planned (one became
    /// provisioned when a schedule or target tracking raised the minimum).
    fn freeze_idle_ones(self: &Arc<Self>) {
        let ids: Vec<InstanceId> = {
            let st = self.lock();
            st.sched
                .instances()
                .iter()
                .map(|i| i.id())
                .filter(|&id| {
                    Self::freezable(&st, id, Duration::ZERO).is_some_and(|c| !c.is_frozen())
                })
                .collect()
        };
        for id in ids {
            self.maybe_freeze(id);
        }
    }

    fn take_out_of_service(self: &Arc<Self>, id: InstanceId) {
        self.event(|s, cards, fx| s.out_of_service(id, Instant::now(), cards, fx));
    }

    /// What is billable right now but not yet recorded: busy periods still open or waiting in their
    /// instance's metering batch (started at or after `from_ms`), and the idle time so far of live
    /// provisioned instances.
    pub fn live_usage(&self, from_ms: i64) -> LiveUsage {
        let now = Instant::now();
        let st = self.lock();
        let mut u = LiveUsage::default();
        for inst in st.sched.instances() {
            let gb = f64::from(inst.memory_gb());
            let open = inst
                .busy()
                .open_period(now)
                .filter(|p| wall_ms(p.start) >= from_ms);
            let pending = inst.pending_bill().filter(|p| wall_ms(p.start) >= from_ms);
            for p in open.iter().chain(pending) {
                u.invocations += p.requests;
                u.billed_seconds += p.billed_seconds;
                u.gb_seconds += p.billed_seconds as f64 * gb;
            }
            let open_s = open.map_or(0, |p| p.billed_seconds);
            u.idle_gb_seconds += inst.provisioned_idle_s(now, open_s) as f64 * gb;
        }
        u
    }

    /// Keep-alive and provisioned instances: stops instances idle past `idle_timeout_s` (keeping
    /// `min_instances`), starts missing ones. Returns when to look again.
    pub(crate) fn reconcile(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        // The scheduled action in force at this wall-clock time, and when that may change.
        let clock = self.shared.clock;
        let wall = clock.now();
        let (scheduled, change) = {
            let mut st = self.lock();
            let outlook = st.outlook(wall);
            let min_of = |i: usize| st.schedules.get(i).map(|s| s.min_instances);
            (
                outlook
                    .and_then(|o| o.in_force)
                    .and_then(|(i, _)| min_of(i)),
                outlook
                    .and_then(|o| o.next)
                    .map(|(_, t)| clock.instant_of(t, now, wall)),
            )
        };
        let next = self.event(|s, cards, fx| {
            s.set_scheduled_min(scheduled, now, cards, fx);
            s.tick(now, cards, fx)
        });
        if self.freeze_idle.load(std::sync::atomic::Ordering::Relaxed) {
            self.freeze_idle_ones();
        }
        [next, change].into_iter().flatten().min()
    }

    /// What provisioning is in force and why: the schedule, target tracking (`None` without
    /// either).
    fn provisioning_explained(&self, st: &mut PoolState, now: Instant) -> Option<String> {
        let outlook = st.outlook(self.shared.clock.now());
        let scaling = &st.spec.scaling;
        let mut parts = Vec::new();
        if let Some(outlook) = outlook {
            let zone_of = |name: &str| {
                scaling
                    .schedules
                    .iter()
                    .find(|s| s.name == name)
                    .map_or("UTC", |s| s.timezone.as_str())
            };
            match outlook.in_force {
                Some((i, since)) => {
                    let s = &st.schedules[i];
                    parts.push(format!(
                        "schedule {:?} since {}: min {} instances",
                        s.name,
                        provisioning::local_time(since, zone_of(&s.name)),
                        s.min_instances
                    ));
                }
                None => parts.push(format!(
                    "no schedule has matched yet: min {} instances",
                    scaling.min_instances
                )),
            }
            if let Some((i, next)) = outlook.next {
                if let Some(s) = st.schedules.get(i) {
                    parts.push(format!(
                        "next: {:?} at {} (min {})",
                        s.name,
                        provisioning::local_time(next, zone_of(&s.name)),
                        s.min_instances
                    ));
                }
            }
        }
        if let Some(target) = scaling.target_utilization() {
            parts.push(format!(
                "target utilization {target}: load {:.2} → {} provisioned (max {})",
                st.sched.tracked_load(now),
                st.sched.min_instances(),
                scaling.max_provisioned
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// What this function's waiting requests need, when they wait for a card: its GPU type (any
    /// when `None`) and GB.
    pub(crate) fn waiting_for_card(&self) -> Option<(Option<String>, u32)> {
        let st = self.lock();
        st.sched
            .waiting_for_card()
            .then(|| (st.spec.gpu.card_type.clone(), st.spec.gpu.memory_gb))
    }

    /// Its idle on-demand instances, how long each has been idle, and the card each holds.
    pub(crate) fn reclaimable(&self, now: Instant) -> Vec<(InstanceId, Duration, u32)> {
        let st = self.lock();
        st.sched
            .reclaimable(now)
            .into_iter()
            .filter_map(|(id, idle)| {
                let meta = st.sched.instance(id)?.payload();
                Some((id, idle, meta.gpu_index))
            })
            .collect()
    }

    /// Stops idle instance `id` so its card can go to another function.
    pub(crate) fn reclaim(self: &Arc<Self>, id: InstanceId) -> bool {
        self.event(|s, _, fx| s.reclaim(id, fx))
    }

    /// Whether instance `id` is still in the pool.
    pub(crate) fn has_instance(&self, id: InstanceId) -> bool {
        self.lock().sched.instance(id).is_some()
    }

    /// Tries again to start instances for queued requests (a card was given back).
    pub(crate) fn rescale(self: &Arc<Self>) {
        self.event(|s, cards, fx| s.rescale(Instant::now(), cards, fx));
    }

    /// A new spec: instances of older revisions drain, new ones start as needed.
    pub(crate) fn update(self: &Arc<Self>, spec: FunctionSpec, revision: i64) {
        self.anonymous.store(
            spec.auth == gpufn_spec::TriggerAuth::Anonymous,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.freeze_idle.store(
            spec.scaling.freeze_idle,
            std::sync::atomic::Ordering::Relaxed,
        );
        let cfg = config_of(&spec);
        let mut effects = Effects::new();
        let mut out = Outbox::default();
        {
            let mut guard = self.lock();
            let st = &mut *guard;
            st.schedules = schedules_of(&spec);
            st.outlook = None;
            st.spec = Arc::new(spec);
            let mut cards = Allocator {
                shared: &self.shared,
                name: &self.name,
                spec: &st.spec,
            };
            st.sched
                .update(cfg, revision, Instant::now(), &mut cards, &mut effects);
            self.apply(st, effects, &mut out);
        }
        self.run(out);
    }

    /// Deleted or shutting down: waiters get `reason`, no instance starts again, and every
    /// instance drains (requests in flight finish).
    pub(crate) fn close(self: &Arc<Self>, reason: AcquireError) {
        self.event(|s, _, fx| s.close(reason, fx));
    }

    /// Instances, for the API.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let st = self.lock();
        st.sched
            .instances()
            .iter()
            .map(|i| {
                let m = i.payload();
                InstanceInfo {
                    id: m.name.clone(),
                    state: i.public_state(),
                    gpu: m.gpu_index,
                    gpu_type: m.gpu_type.clone(),
                    in_flight: i.in_flight(),
                    served: i.served(),
                    revision: i.revision(),
                    started_at: rfc3339(m.started_at),
                    pid: m.pid,
                    cold_start: (i.state() != gpufn_sched::State::Starting).then_some(m.phases),
                    frozen: m.freeze.as_ref().is_some_and(|f| f.is_frozen()),
                }
            })
            .collect()
    }

    /// Counts, for the API.
    pub fn status(&self) -> PoolStatus {
        let mut st = self.lock();
        let mut s = PoolStatus {
            queued: st.sched.queued(),
            keep_alive: st.sched.keep_alive_explained(Instant::now()),
            provisioning: self.provisioning_explained(&mut st, Instant::now()),
            min_instances: st.sched.min_instances(),
            ..PoolStatus::default()
        };
        for i in st.sched.instances() {
            s.in_flight += i.in_flight();
            match i.public_state() {
                "starting" => s.starting += 1,
                "ready" => s.ready += 1,
                "busy" => s.busy += 1,
                _ => s.draining += 1,
            }
        }
        s
    }

    /// True once no instance is left (used by shutdown and tests).
    pub fn is_empty(&self) -> bool {
        self.lock().sched.instances().is_empty()
    }
}

/// Removes a queued waiter when the waiting future is dropped before it was answered.
struct QueuedGuard<'a> {
    pool: &'a Arc<Pool>,
    waiter: Option<WaiterId>,
}

impl QueuedGuard<'_> {
    fn disarm(mut self) {
        self.waiter = None;
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.waiter {
            self.pool.lock().waiters.remove(&w);
            self.pool.event(|s, _, fx| {
                s.cancel(w);
                s.stop_unneeded_unplaced(fx);
            });
        }
    }
}

impl crate::instance::Home for Pool {
    fn name(&self) -> &str {
        Pool::name(self)
    }

    fn shared(&self) -> &Arc<Shared> {
        Pool::shared(self)
    }

    fn on_ready(
        self: &Arc<Self>,
        id: InstanceId,
        addr: SocketAddr,
        pid: Option<u32>,
        phases: ColdStartPhases,
        freeze: Option<Arc<FreezeCtl>>,
    ) {
        // What a start costs a waiting caller: spawn, the app's load and its initializer.
        let load = Duration::from_secs_f64(
            (phases.start_ms + phases.ready_ms + phases.initialize_ms) / 1000.0,
        );
        let initializer = Duration::from_secs_f64(phases.initialize_ms / 1000.0);
        self.event(|s, _, fx| {
            if let Some(i) = s.instance_mut(id) {
                let meta = i.payload_mut();
                meta.addr = Some(addr);
                meta.pid = pid;
                meta.phases = phases;
                meta.freeze = freeze;
            }
            let now = Instant::now();
            if !initializer.is_zero() {
                s.bill_initializer(id, now.checked_sub(initializer).unwrap_or(now), now, fx);
            }
            s.instance_ready(id, load, now, fx);
        });
        // Ready with nothing to do: a provisioned instance in idle mode freezes.
        if self.freeze_idle.load(std::sync::atomic::Ordering::Relaxed) {
            self.maybe_freeze(id);
        }
    }

    /// A start failed: the instance leaves the pool, and the requests it was started for get the
    /// failure — at most one instance's worth, and only those no other start will serve.
    fn on_placement(self: &Arc<Self>, id: InstanceId, unplaced: Option<String>) {
        self.event(|s, _, _| match unplaced {
            Some(reason) => s.unplaced(id, reason),
            None => s.placed(id),
        });
    }

    fn on_start_failed(self: &Arc<Self>, id: InstanceId, err: AcquireError) {
        self.event(|s, cards, fx| s.start_failed(id, err, Instant::now(), cards, fx));
    }

    /// The instance's process is gone and its card given back.
    fn on_gone(self: &Arc<Self>, id: InstanceId) {
        self.event(|s, cards, fx| s.instance_gone(id, Instant::now(), cards, fx));
    }
}

#[cfg(test)]
mod tests;
