//! The scheduler of one function: its instances, its bounded queue, and the slots in flight.
//!
//! Architecture invariants:
//! - An instance never has more than `instance_concurrency` requests in flight: a request holds a
//!   [`Slot`], taken under the pool lock and given back when the slot is dropped (after the response
//!   body has streamed), so no error path can leak one.
//! - All decisions are made under one short `std::sync::Mutex` that is never held across `.await`;
//!   their effects (answering waiters, starting or stopping instances) run after it is released, so
//!   dropping a slot from an effect can never deadlock.
//! - How many instances to start and which idle ones to stop are asked of `gpufn-policy`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use gpufn_gpu::{AllocError, AllocRequest};
use gpufn_metering::{BusyTracker, ClosedPeriod, PeriodBatch, billed_seconds};
use gpufn_policy::{Demand, InstanceView, Limits};
use gpufn_spec::FunctionSpec;
use gpufn_store::MeterRecord;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::instance::{ColdStartPhases, Instance, InstanceState, StartJob, supervise};
use crate::platform::Shared;
use crate::util::{rfc3339, short_id, wall_ms};

/// Why a request got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcquireError {
    /// `scaling.max_queue` requests are already waiting.
    #[error("{max_queue} requests are already queued for this function (scaling.max_queue)")]
    QueueFull {
        /// The bound.
        max_queue: u32,
    },
    /// Waited `scaling.queue_timeout_s` without a slot.
    #[error("no instance slot within scaling.queue_timeout_s ({}s){}", .waited.as_secs(),
            .blocked.as_ref().map(|b| format!(": {b}")).unwrap_or_default())]
    QueueTimeout {
        /// How long it waited.
        waited: Duration,
        /// Why no instance could be started, when that was the reason.
        blocked: Option<AllocError>,
    },
    /// The instance started for this request failed to become ready.
    #[error("cold start failed: {reason}")]
    StartFailed {
        /// What happened.
        reason: String,
        /// True when the startup deadline passed.
        timed_out: bool,
    },
    /// The function was deleted while the request waited.
    #[error("the function was deleted")]
    Deleted,
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// A reserved place on an instance for one request. Dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Pool>,
    instance: String,
    instance_header: http::HeaderValue,
    addr: SocketAddr,
    cold: bool,
    /// For a cold start: the instance's phases and when it became ready.
    cold_info: Option<(ColdStartPhases, Instant)>,
    request_timeout: Duration,
}

impl Slot {
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
        &self.instance
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
        self.pool.take_out_of_service(&self.instance);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.pool.release(&self.instance);
    }
}

/// Where a queued request is told its slot or its error.
type Answer = oneshot::Sender<Result<Slot, AcquireError>>;

#[derive(Debug)]
struct Waiter {
    id: u64,
    enqueued: Instant,
    tx: Answer,
}

#[derive(Debug)]
struct PoolState {
    spec: Arc<FunctionSpec>,
    revision: i64,
    instances: Vec<Instance>,
    queue: VecDeque<Waiter>,
    next_waiter: u64,
    closed: Option<AcquireError>,
    /// Why the last scale-up could not start every instance it wanted.
    blocked: Option<AllocError>,
    /// Provisioned (min) instances are not restarted before this after a failed start.
    min_retry_at: Option<Instant>,
    failed_starts: u32,
    /// `keep_alive: histogram`: the function's idle times, when its current idle period began,
    /// how long its last start took, and the instances the policy wants warm now (pre-warm).
    hist: gpufn_policy::IdleHistogram,
    idle_start: Option<Instant>,
    last_load: Duration,
    prewarm_min: u32,
    /// When the reconciler looks at this pool next (what the last `reconcile` returned): an
    /// instance going idle wakes it only if it must look sooner.
    check_at: Option<Instant>,
}

impl PoolState {
    fn new(spec: FunctionSpec, revision: i64) -> Self {
        let histogram_bin = spec.scaling.histogram_bin;
        Self {
            spec: Arc::new(spec),
            revision,
            instances: Vec::new(),
            queue: VecDeque::new(),
            next_waiter: 0,
            closed: None,
            blocked: None,
            min_retry_at: None,
            failed_starts: 0,
            hist: gpufn_policy::IdleHistogram::new(histogram_bin),
            idle_start: None,
            last_load: Duration::ZERO,
            prewarm_min: 0,
            check_at: None,
        }
    }
}

/// Effects decided under the lock, run after it is released.
#[derive(Default)]
struct Outbox {
    answers: Vec<(Answer, Result<Slot, AcquireError>)>,
    stops: Vec<CancellationToken>,
    starts: Vec<StartJob>,
    /// Something keep-alive cares about changed (an instance went idle, ready or away).
    wake: bool,
    /// Metering records to hand to the meter.
    records: Vec<MeterRecord>,
}

/// One function's pool.
#[derive(Debug)]
pub struct Pool {
    name: String,
    /// `auth: {type: anonymous}` in the current spec.
    anonymous: AtomicBool,
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
}

/// The keep-alive for idle instances now, the instances to keep warm (pre-warm), and when to look
/// again: `idle_timeout_s` for `keep_alive: fixed`; for `histogram`, the decision of
/// `gpufn_policy::histogram_decision` for the current idle period.
fn keep_alive_window(st: &PoolState, now: Instant) -> (Duration, u32, Option<Instant>) {
    let fixed = st.spec.scaling.idle_timeout;
    if st.spec.scaling.keep_alive == gpufn_spec::KeepAliveMode::Fixed {
        return (fixed, 0, None);
    }
    let d = gpufn_policy::histogram_decision(st.hist.windows(), fixed, st.last_load);
    match (st.idle_start, d.prewarm) {
        (Some(since), Some((after, until))) => {
            let (start_at, keep_until) = (since + after, since + until);
            if now < start_at {
                (Duration::ZERO, 0, Some(start_at))
            } else if now < keep_until {
                (Duration::ZERO, 1, Some(keep_until))
            } else {
                (Duration::ZERO, 0, None)
            }
        }
        _ => (d.keep_alive, 0, None),
    }
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

fn busy_record(function: &str, instance: &str, memory_gb: u32, p: &ClosedPeriod) -> MeterRecord {
    MeterRecord::Busy {
        function: function.to_string(),
        instance: instance.to_string(),
        start_ms: wall_ms(p.start),
        busy_ms: i64::try_from(p.busy.as_millis()).unwrap_or(i64::MAX),
        requests: i64::try_from(p.requests).unwrap_or(i64::MAX),
        billed_s: i64::try_from(p.billed_seconds).unwrap_or(i64::MAX),
        memory_gb: i64::from(memory_gb),
    }
}

/// An instance's busy periods starting within this window of each other make one metering record
/// (see [`PeriodBatch`]): a record per second per busy instance at most, not one per request.
const BATCH_WINDOW: Duration = Duration::from_secs(1);

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Pool {
    pub(crate) fn new(shared: Arc<Shared>, spec: FunctionSpec, revision: i64) -> Arc<Self> {
        Arc::new(Self {
            metrics: shared.metrics.for_pool(&spec.name),
            name: spec.name.clone(),
            anonymous: AtomicBool::new(spec.auth == gpufn_spec::TriggerAuth::Anonymous),
            shared,
            state: Mutex::new(PoolState::new(spec, revision)),
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

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// Waits for a slot: at once on an instance with a free slot, else in the queue while instances
    /// start (a cold start) or slots free up, for at most `scaling.queue_timeout_s`.
    pub async fn acquire(self: &Arc<Self>) -> Result<Slot, AcquireError> {
        self.acquire_at(Instant::now()).await
    }

    /// [`Pool::acquire`] for a request that arrived at `now` (the caller's clock reading, so the
    /// hot path reads the clock once less).
    pub async fn acquire_at(self: &Arc<Self>, now: Instant) -> Result<Slot, AcquireError> {
        let mut out = Outbox::default();
        let (id, mut rx, queue_timeout) = {
            let mut st = self.lock();
            if let Some(reason) = &st.closed {
                return Err(reason.clone());
            }
            if let Some(since) = st.idle_start.take() {
                st.hist.record(now.saturating_duration_since(since));
            }
            if let Some(slot) = self.take_slot(&mut st, None, now) {
                return Ok(slot);
            }
            if st.queue.len() >= st.spec.scaling.max_queue as usize {
                return Err(AcquireError::QueueFull {
                    max_queue: st.spec.scaling.max_queue,
                });
            }
            let (tx, rx) = oneshot::channel();
            st.next_waiter += 1;
            let id = st.next_waiter;
            st.queue.push_back(Waiter {
                id,
                enqueued: now,
                tx,
            });
            self.scale(&mut st, &mut out);
            (id, rx, st.spec.scaling.queue_timeout)
        };
        self.run(out);
        // Removes the waiter if this future is dropped (the caller went away), so it neither
        // counts against max_queue nor asks for instances any more.
        let guard = QueuedGuard {
            pool: self,
            id: Some(id),
        };
        let result = match tokio::time::timeout(queue_timeout, &mut rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(AcquireError::ShuttingDown),
            Err(_) => {
                let blocked = self.remove_waiter(id);
                match (blocked, rx.try_recv()) {
                    // Answered in the instant the timeout fired: use the answer.
                    (None, Ok(answer)) => answer,
                    (blocked, _) => Err(AcquireError::QueueTimeout {
                        waited: now.elapsed(),
                        blocked: blocked.flatten(),
                    }),
                }
            }
        };
        guard.disarm();
        result
    }

    /// Removes a waiter; `None` when it was no longer queued (it has been answered), else why
    /// scale-up was blocked, if it was.
    fn remove_waiter(&self, id: u64) -> Option<Option<AllocError>> {
        let mut st = self.lock();
        let pos = st.queue.iter().position(|w| w.id == id)?;
        st.queue.remove(pos);
        Some(st.blocked.clone())
    }

    /// Takes a slot on the least-loaded ready instance of the current revision.
    fn take_slot(
        self: &Arc<Self>,
        st: &mut PoolState,
        waited_since: Option<Instant>,
        now: Instant,
    ) -> Option<Slot> {
        let concurrency = st.spec.instance_concurrency;
        let revision = st.revision;
        let inst = st
            .instances
            .iter_mut()
            .filter(|i| i.has_free_slot(concurrency, revision))
            .min_by_key(|i| i.in_flight)?;
        let addr = inst.addr?;
        inst.in_flight += 1;
        inst.busy.start(now);
        let cold = match (waited_since, inst.ready_at) {
            (Some(since), Some(ready)) => ready > since,
            _ => false,
        };
        let cold_info = match (cold, inst.ready_at) {
            (true, Some(ready)) => Some((inst.phases, ready)),
            _ => None,
        };
        Some(Slot {
            pool: self.clone(),
            instance: inst.id.clone(),
            instance_header: inst.id_header.clone(),
            addr,
            cold,
            cold_info,
            request_timeout: st.spec.request_timeout,
        })
    }

    /// Hands free slots to waiters, oldest first.
    fn dispatch(self: &Arc<Self>, st: &mut PoolState, out: &mut Outbox, now: Instant) {
        while let Some(front) = st.queue.front() {
            if front.tx.is_closed() {
                st.queue.pop_front();
                continue;
            }
            let since = front.enqueued;
            let Some(slot) = self.take_slot(st, Some(since), now) else {
                break;
            };
            if let Some(w) = st.queue.pop_front() {
                out.answers.push((w.tx, Ok(slot)));
            }
        }
    }

    /// Starts as many instances as the policy asks for, as far as the card quota allows.
    fn scale(self: &Arc<Self>, st: &mut PoolState, out: &mut Outbox) {
        if st.closed.is_some() {
            return;
        }
        let live = st
            .instances
            .iter()
            .filter(|i| i.revision == st.revision && i.state != InstanceState::Draining);
        let mut demand = Demand {
            queued: count(st.queue.len()),
            ..Demand::default()
        };
        for i in live {
            match i.state {
                InstanceState::Starting => demand.starting += 1,
                _ => {
                    demand.ready += 1;
                    demand.in_flight += i.in_flight;
                }
            }
        }
        let spec = st.spec.clone();
        let limits = Limits {
            concurrency: spec.instance_concurrency,
            min_instances: spec.scaling.min_instances.max(st.prewarm_min),
            max_instances: spec.scaling.max_instances,
        };
        let mut wanted = gpufn_policy::instances_to_start(demand, limits);
        // Only provisioned instances are held back after failed starts; a waiting request always
        // gets its attempt.
        if demand.queued == 0 && st.min_retry_at.is_some_and(|t| t > Instant::now()) {
            wanted = 0;
        }
        st.blocked = None;
        let live_before = demand.starting + demand.ready;
        for live in live_before..live_before + wanted {
            let id = format!("{}-{}", self.name, short_id());
            let t = Instant::now();
            let lease = match self.shared.allocator.allocate(AllocRequest {
                instance: &id,
                function: &self.name,
                card_type: spec.gpu.card_type.as_deref(),
                memory_gb: spec.gpu.memory_gb,
            }) {
                Ok(lease) => lease,
                Err(e) => {
                    tracing::debug!(function = %self.name, "cannot start an instance: {e}");
                    st.blocked = Some(e);
                    break;
                }
            };
            let stop = self.shared.instances_root.child_token();
            // The first min_instances live instances are the provisioned ones, billed for their
            // whole lifetime; the rest are on demand, billed only while busy.
            let provisioned = live < spec.scaling.min_instances;
            st.instances.push(Instance {
                busy: BusyTracker::default(),
                batch: PeriodBatch::new(BATCH_WINDOW),
                provisioned,
                memory_gb: spec.gpu.memory_gb,
                created: t,
                id_header: http::HeaderValue::from_str(&id)
                    .unwrap_or_else(|_| http::HeaderValue::from_static("invalid-id")),
                id: id.clone(),
                revision: st.revision,
                state: InstanceState::Starting,
                in_flight: 0,
                served: 0,
                addr: None,
                pid: None,
                gpu_index: lease.index(),
                gpu_type: lease.card_type().to_string(),
                started_at: SystemTime::now(),
                ready_at: None,
                idle_since: t,
                phases: ColdStartPhases::default(),
                stop: stop.clone(),
            });
            out.starts.push(StartJob {
                id,
                spec: spec.clone(),
                lease,
                stop,
                allocated_in: t.elapsed(),
            });
        }
    }

    /// Runs the effects decided under the lock. Must be called without the lock held.
    fn run(self: &Arc<Self>, out: Outbox) {
        for (tx, answer) in out.answers {
            // A waiter that went away in the meantime hands its slot back through the error value
            // being dropped here, which releases it (and re-dispatches) safely.
            let _ = tx.send(answer);
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

    fn release(self: &Arc<Self>, id: &str) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            let now = Instant::now();
            // Under fixed keep-alive an instance going idle needs a look at its keep-alive deadline
            // and when its pending metering batch is due; if the reconciler is due to look sooner
            // anyway, it will see both then (and reschedule), so it is not woken on every request.
            let fixed = st.spec.scaling.keep_alive == gpufn_spec::KeepAliveMode::Fixed;
            let keep_until = now + st.spec.scaling.idle_timeout;
            let check_at = st.check_at;
            let Some(inst) = st.instances.iter_mut().find(|i| i.id == id) else {
                return;
            };
            inst.in_flight = inst.in_flight.saturating_sub(1);
            inst.served += 1;
            if let Some(period) = inst.busy.end(now) {
                if let Some(batch) = inst.batch.push(period) {
                    out.records
                        .push(busy_record(&self.name, &inst.id, inst.memory_gb, &batch));
                }
            }
            if inst.in_flight == 0 {
                let needed = inst
                    .batch
                    .due_at()
                    .map_or(keep_until, |d| d.min(keep_until));
                out.wake = !fixed || check_at.is_none_or(|c| c > needed);
                inst.idle_since = now;
                if inst.state == InstanceState::Draining {
                    out.stops.push(inst.stop.clone());
                }
            }
            self.dispatch(&mut st, &mut out, now);
            if st.queue.is_empty() && st.instances.iter().all(|i| i.in_flight == 0) {
                st.idle_start.get_or_insert(now);
            }
        }
        self.run(out);
    }

    fn take_out_of_service(self: &Arc<Self>, id: &str) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            if let Some(inst) = st.instances.iter_mut().find(|i| i.id == id) {
                inst.drain();
                out.stops.push(inst.stop.clone());
            }
            self.scale(&mut st, &mut out);
        }
        self.run(out);
    }

    pub(crate) fn on_ready(
        self: &Arc<Self>,
        id: &str,
        addr: SocketAddr,
        pid: Option<u32>,
        phases: ColdStartPhases,
    ) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            out.wake = true;
            st.failed_starts = 0;
            st.min_retry_at = None;
            let Some(inst) = st.instances.iter_mut().find(|i| i.id == id) else {
                return;
            };
            inst.pid = pid;
            inst.phases = phases;
            let load = Duration::from_secs_f64((phases.start_ms + phases.ready_ms) / 1000.0);
            if inst.mark_ready(addr, Instant::now()).is_err() {
                // Drained while it was starting (function updated, deleted, shutting down).
                out.stops.push(inst.stop.clone());
            }
            st.last_load = load;
            self.dispatch(&mut st, &mut out, Instant::now());
        }
        self.run(out);
    }

    /// A start failed: the instance leaves the pool, and the requests it was started for get the
    /// failure — at most one instance's worth, and only those no other start will serve.
    pub(crate) fn on_start_failed(self: &Arc<Self>, id: &str, err: AcquireError) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            out.wake = true;
            self.retire(&mut st, id, &mut out);
            st.failed_starts = st.failed_starts.saturating_add(1);
            let backoff = Duration::from_secs(1 << st.failed_starts.min(6));
            st.min_retry_at = Some(Instant::now() + backoff);
            st.queue.retain(|w| !w.tx.is_closed());
            let concurrency = st.spec.instance_concurrency;
            let capacity: u32 = st
                .instances
                .iter()
                .filter(|i| i.revision == st.revision)
                .map(|i| match i.state {
                    InstanceState::Starting => concurrency,
                    InstanceState::Ready => concurrency - i.in_flight.min(concurrency),
                    InstanceState::Draining => 0,
                })
                .sum();
            let excess = count(st.queue.len()).saturating_sub(capacity);
            for _ in 0..excess.min(concurrency) {
                if let Some(w) = st.queue.pop_front() {
                    out.answers.push((w.tx, Err(err.clone())));
                }
            }
            self.scale(&mut st, &mut out);
        }
        self.run(out);
    }

    /// Removes an instance and closes its bills: an open busy period (it crashed mid-request) and,
    /// for a provisioned instance, the idle rest of its lifetime.
    fn retire(&self, st: &mut PoolState, id: &str, out: &mut Outbox) {
        let Some(pos) = st.instances.iter().position(|i| i.id == id) else {
            return;
        };
        let mut inst = st.instances.remove(pos);
        let now = Instant::now();
        let last = inst.busy.close(now).and_then(|p| inst.batch.push(p));
        for batch in last.into_iter().chain(inst.batch.take()) {
            out.records
                .push(busy_record(&self.name, &inst.id, inst.memory_gb, &batch));
        }
        if inst.provisioned {
            let lifetime = billed_seconds(now.saturating_duration_since(inst.created));
            let idle_s = lifetime.saturating_sub(inst.busy.billed_total());
            out.records.push(MeterRecord::ProvisionedIdle {
                function: self.name.clone(),
                instance: inst.id.clone(),
                end_ms: wall_ms(now),
                idle_s: i64::try_from(idle_s).unwrap_or(i64::MAX),
                memory_gb: i64::from(inst.memory_gb),
            });
        }
    }

    /// What is billable right now but not yet recorded: busy periods still open or waiting in their
    /// instance's metering batch (started at or after `from_ms`), and the idle time so far of live
    /// provisioned instances.
    pub fn live_usage(&self, from_ms: i64) -> LiveUsage {
        let now = Instant::now();
        let st = self.lock();
        let mut u = LiveUsage::default();
        for inst in &st.instances {
            let gb = f64::from(inst.memory_gb);
            let open = inst
                .busy
                .open_period(now)
                .filter(|p| wall_ms(p.start) >= from_ms);
            let pending = inst.batch.pending().filter(|p| wall_ms(p.start) >= from_ms);
            for p in open.iter().chain(pending) {
                u.invocations += p.requests;
                u.billed_seconds += p.billed_seconds;
                u.gb_seconds += p.billed_seconds as f64 * gb;
            }
            if inst.provisioned {
                let lifetime = billed_seconds(now.saturating_duration_since(inst.created));
                let busy = inst.busy.billed_total() + open.map_or(0, |p| p.billed_seconds);
                u.idle_gb_seconds += lifetime.saturating_sub(busy) as f64 * gb;
            }
        }
        u
    }

    /// The instance's process is gone and its card given back.
    pub(crate) fn on_gone(self: &Arc<Self>, id: &str) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            out.wake = true;
            self.retire(&mut st, id, &mut out);
            self.scale(&mut st, &mut out);
        }
        self.run(out);
    }

    /// Keep-alive and provisioned instances: stops instances idle past `idle_timeout_s` (keeping
    /// `min_instances`), starts missing ones. Returns when to look again.
    pub(crate) fn reconcile(self: &Arc<Self>, now: Instant) -> Option<Instant> {
        let mut out = Outbox::default();
        let next = {
            let mut st = self.lock();
            let revision = st.revision;
            let live: Vec<usize> = st
                .instances
                .iter()
                .enumerate()
                .filter(|(_, i)| i.revision == revision && i.state != InstanceState::Draining)
                .map(|(n, _)| n)
                .collect();
            let views: Vec<InstanceView> = live
                .iter()
                .map(|&n| {
                    let i = &st.instances[n];
                    InstanceView {
                        starting: i.state == InstanceState::Starting,
                        in_flight: i.in_flight,
                        idle_since: i.idle_since,
                    }
                })
                .collect();
            let (idle_timeout, prewarm_min, wake_at) = keep_alive_window(&st, now);
            st.prewarm_min = prewarm_min;
            let decision = gpufn_policy::keep_alive(
                &views,
                st.spec.scaling.min_instances.max(prewarm_min),
                idle_timeout,
                now,
            );
            for k in decision.stop {
                let inst = &mut st.instances[live[k]];
                if inst.drain() {
                    out.stops.push(inst.stop.clone());
                }
            }
            self.scale(&mut st, &mut out);
            // Metering batches whose window has passed go to the meter; the others are due later.
            let mut batch_due = None::<Instant>;
            for inst in &mut st.instances {
                if let Some(batch) = inst.batch.take_due(now) {
                    out.records
                        .push(busy_record(&self.name, &inst.id, inst.memory_gb, &batch));
                }
                batch_due = match (batch_due, inst.batch.due_at()) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let next = [decision.next_check, st.min_retry_at, wake_at, batch_due]
                .into_iter()
                .flatten()
                .min();
            st.check_at = next;
            next
        };
        if !out.starts.is_empty()
            || !out.stops.is_empty()
            || !out.answers.is_empty()
            || !out.records.is_empty()
        {
            self.run(out);
        }
        next
    }

    /// Tries again to start instances for queued requests (a card was given back).
    pub(crate) fn rescale(self: &Arc<Self>) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            if st.queue.is_empty() && st.blocked.is_none() {
                return;
            }
            self.scale(&mut st, &mut out);
        }
        self.run(out);
    }

    /// A new spec: instances of older revisions drain, new ones start as needed.
    pub(crate) fn update(self: &Arc<Self>, spec: FunctionSpec, revision: i64) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            out.wake = true;
            if spec.scaling.histogram_bin != st.hist.bin() {
                // Idle times binned at another width do not carry over.
                st.hist = gpufn_policy::IdleHistogram::new(spec.scaling.histogram_bin);
            }
            self.anonymous.store(
                spec.auth == gpufn_spec::TriggerAuth::Anonymous,
                std::sync::atomic::Ordering::Relaxed,
            );
            st.spec = Arc::new(spec);
            st.revision = revision;
            st.min_retry_at = None;
            st.failed_starts = 0;
            for inst in st.instances.iter_mut().filter(|i| i.revision != revision) {
                if inst.drain() {
                    out.stops.push(inst.stop.clone());
                }
            }
            self.scale(&mut st, &mut out);
        }
        self.run(out);
    }

    /// Deleted or shutting down: waiters get `reason`, no instance starts again, and every
    /// instance drains (requests in flight finish).
    pub(crate) fn close(self: &Arc<Self>, reason: AcquireError) {
        let mut out = Outbox::default();
        {
            let mut st = self.lock();
            out.wake = true;
            st.closed = Some(reason.clone());
            while let Some(w) = st.queue.pop_front() {
                out.answers.push((w.tx, Err(reason.clone())));
            }
            for inst in &mut st.instances {
                if inst.drain() {
                    out.stops.push(inst.stop.clone());
                }
            }
        }
        self.run(out);
    }

    /// Instances, for the API.
    pub fn instances(&self) -> Vec<InstanceInfo> {
        let st = self.lock();
        st.instances
            .iter()
            .map(|i| InstanceInfo {
                id: i.id.clone(),
                state: i.public_state(),
                gpu: i.gpu_index,
                gpu_type: i.gpu_type.clone(),
                in_flight: i.in_flight,
                served: i.served,
                revision: i.revision,
                started_at: rfc3339(i.started_at),
                pid: i.pid,
                cold_start: (i.state != InstanceState::Starting).then_some(i.phases),
            })
            .collect()
    }

    /// Counts, for the API.
    pub fn status(&self) -> PoolStatus {
        let st = self.lock();
        let mut s = PoolStatus {
            queued: count(st.queue.len()),
            ..PoolStatus::default()
        };
        for i in &st.instances {
            s.in_flight += i.in_flight;
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
        self.lock().instances.is_empty()
    }
}

/// Removes a queued waiter when the waiting future is dropped before it was answered.
struct QueuedGuard<'a> {
    pool: &'a Arc<Pool>,
    id: Option<u64>,
}

impl QueuedGuard<'_> {
    fn disarm(mut self) {
        self.id = None;
    }
}

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            let _ = self.pool.remove_waiter(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(yaml_extra: &str) -> PoolState {
        let spec = gpufn_spec::parse_yaml(&format!(
            "name: f\ncommand: [x]\ngpu: {{memory_gb: 1}}\nscaling: {{idle_timeout_s: 300{yaml_extra}}}\n"
        ))
        .and_then(|r| r.validate())
        .expect("spec");
        PoolState::new(spec, 1)
    }

    #[test]
    fn fixed_keep_alive_is_the_idle_timeout() {
        let st = state("");
        assert_eq!(
            keep_alive_window(&st, Instant::now()),
            (Duration::from_secs(300), 0, None)
        );
    }

    #[test]
    fn histogram_keep_alive_falls_back_then_prewarms_what_it_learned() {
        let mut st = state(", keep_alive: histogram");
        let t0 = Instant::now();
        // Nothing learned yet: the fixed idle timeout.
        assert_eq!(
            keep_alive_window(&st, t0),
            (Duration::from_secs(300), 0, None)
        );
        // A request every 30 minutes, and a start takes 20 s.
        for _ in 0..10 {
            st.hist.record(Duration::from_secs(30 * 60 + 10));
        }
        st.last_load = Duration::from_secs(20);
        st.idle_start = Some(t0);
        let start_at = t0 + Duration::from_secs(27 * 60) - Duration::from_secs(20);
        let keep_until = t0 + Duration::from_secs(31 * 66);
        // Right after going idle: release everything, look again when the pre-warm is due.
        assert_eq!(
            keep_alive_window(&st, t0),
            (Duration::ZERO, 0, Some(start_at))
        );
        // In the window: one instance warm until its end.
        assert_eq!(
            keep_alive_window(&st, start_at + Duration::from_secs(1)),
            (Duration::ZERO, 1, Some(keep_until))
        );
        // After the window: nothing kept.
        assert_eq!(
            keep_alive_window(&st, keep_until + Duration::from_secs(1)),
            (Duration::ZERO, 0, None)
        );
        // Not idle (a request is in flight or queued): the learned tail applies to extra instances.
        st.idle_start = None;
        assert_eq!(keep_alive_window(&st, t0).1, 0);
    }
}
