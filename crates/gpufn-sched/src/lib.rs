//! The scheduler of one function, sans-IO: events in, effects out.
//!
//! It decides who may send a request where (the throttler: slots, the FIFO queue, refusals) and
//! how many instances there should be (scale-up, keep-alive, provisioned and pre-warmed
//! instances), and it keeps each instance's busy periods for billing. It does no I/O, owns no
//! clock and spawns nothing: every event carries its `now`, and what must happen in the world
//! comes back as [`Effect`]s for the caller to carry out. The server wraps it in an async shell
//! (`gpufn-server`'s `pool` module: oneshot channels for waiters, supervisor tasks for
//! instances, a reconciler timer); the trace simulator (`gpufn-sim`) drives the very same type
//! with virtual time. That is why the server's scheduling can be tested in microseconds and why
//! the simulator's figures are the server's.
//!
//! Invariants (each is checked by a test in `tests.rs`):
//! - An instance never has more than `concurrency` requests in flight; a slot is taken only on a
//!   ready instance of the current revision.
//! - Waiters are answered in arrival order (FIFO); each is answered at most once, and a waiter
//!   the caller gave up on is never answered.
//! - At most `max_instances` instances of the current revision are live (starting or ready), and
//!   every start has a card: [`Cards::allocate`] is asked first, and a refusal stops the scale-up.
//! - Keep-alive never stops a starting instance or one with requests in flight, and keeps
//!   `min_instances` (and the instances pre-warmed for the current idle period).
//! - Every busy period is billed exactly once: when its metering batch is due, or when its
//!   instance is gone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use gpufn_metering::{BusyTracker, PeriodBatch};
use gpufn_policy::{Demand, IdleHistogram, InstanceView, Limits};

mod instance;
mod types;

pub use instance::Instance;
pub use types::*;

#[cfg(test)]
mod tests;

#[derive(Debug, Clone, Copy)]
struct Waiter {
    id: WaiterId,
    enqueued: Instant,
}

/// The scheduler of one function.
#[derive(Debug)]
pub struct Scheduler<P, E> {
    cfg: Config,
    revision: i64,
    instances: Vec<Instance<P>>,
    queue: VecDeque<Waiter>,
    next_waiter: u64,
    closed: Option<Refusal<E>>,
    /// Why the last scale-up could not start every instance it wanted.
    blocked: Option<E>,
    /// Provisioned instances are not restarted before this after a failed start.
    min_retry_at: Option<Instant>,
    failed_starts: u32,
    /// The function's idle times (histogram keep-alive), when its current idle period began, and
    /// how long its last start took.
    hist: IdleHistogram,
    idle_start: Option<Instant>,
    last_load: Duration,
    /// Instances the keep-alive policy wants warm now (pre-warm).
    prewarm_min: u32,
    /// The predictive policy's recent idle gaps, how many arrived since it last decided, and its
    /// decision.
    gaps: std::collections::VecDeque<(Duration, Duration)>,
    /// Idle periods whose next call came within the planned pre-warm window, and those whose
    /// call came outside it.
    prewarm_hits: u64,
    prewarm_misses: u64,
    last_gap: Option<Duration>,
    gaps_unweighed: u32,
    last_side: bool,
    predicted: gpufn_policy::HistogramDecision,
    /// The caller's plan for the current idle period ([`KeepAlive::Planned`]).
    plan: Option<IdlePlan>,
    /// When `tick` asked to be called next: an instance going idle asks for a tick only if it
    /// needs one sooner.
    check_at: Option<Instant>,
    /// The scheduled provisioning action in force (its `min_instances`), set by the caller, who
    /// keeps the wall clock; `cfg.min_instances` when `None`.
    scheduled_min: Option<u32>,
    /// Target tracking's load average and the provisioned instances it asks for now.
    load: gpufn_policy::provisioning::LoadAverage,
    tracked_min: u32,
}

/// Target tracking's averaging time: about a minute, as Function Compute's metric windows.
const LOAD_TAU: Duration = Duration::from_secs(60);
/// How often target tracking looks again while there is load to follow.
const TRACK_EVERY: Duration = Duration::from_secs(5);

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn histogram_bin(k: KeepAlive) -> Option<Duration> {
    match k {
        KeepAlive::Histogram { bin, .. } => Some(bin),
        _ => None,
    }
}

impl<P, E: Clone> Scheduler<P, E> {
    /// A scheduler with no instances.
    pub fn new(cfg: Config, revision: i64) -> Self {
        Self {
            hist: IdleHistogram::new(
                histogram_bin(cfg.keep_alive).unwrap_or(Duration::from_secs(60)),
            ),
            cfg,
            revision,
            instances: Vec::new(),
            queue: VecDeque::new(),
            next_waiter: 0,
            closed: None,
            blocked: None,
            min_retry_at: None,
            failed_starts: 0,
            idle_start: None,
            last_load: Duration::ZERO,
            prewarm_min: 0,
            gaps: std::collections::VecDeque::new(),
            last_gap: None,
            prewarm_hits: 0,
            prewarm_misses: 0,
            gaps_unweighed: 0,
            last_side: false,
            predicted: gpufn_policy::HistogramDecision {
                keep_alive: match cfg.keep_alive {
                    KeepAlive::Predictive { fallback, .. } => fallback,
                    _ => Duration::ZERO,
                },
                prewarm: None,
            },
            plan: None,
            check_at: None,
            scheduled_min: None,
            load: gpufn_policy::provisioning::LoadAverage::new(LOAD_TAU),
            tracked_min: 0,
        }
    }

    /// Provisioned instances wanted now: the scheduled (or fixed) minimum, or more where target
    /// tracking asks for them.
    pub fn min_instances(&self) -> u32 {
        self.scheduled_min
            .unwrap_or(self.cfg.min_instances)
            .max(self.tracked_min)
    }

    /// The scheduled provisioning action in force changed (`None`: none is; the spec's
    /// `min_instances` applies). Instances are started at once; ones no longer needed go as idle
    /// instances do (after their keep-alive).
    pub fn set_scheduled_min(
        &mut self,
        min: Option<u32>,
        now: Instant,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) {
        if self.scheduled_min == min {
            return;
        }
        self.scheduled_min = min.map(|m| m.min(self.cfg.max_instances));
        out.push(Effect::Wake);
        self.retrack(now);
        self.reclassify(now, out);
        self.scale(now, cards, out);
    }

    /// Target tracking's average load (requests in flight and waiting) at `now`.
    pub fn tracked_load(&self, now: Instant) -> f64 {
        self.load.value_at(now)
    }

    /// Feeds the load signal its current value (target tracking only).
    fn track_load(&mut self, now: Instant) {
        if self.cfg.target.is_none() {
            return;
        }
        let demand: u32 = self
            .instances
            .iter()
            .map(|i| i.in_flight)
            .sum::<u32>()
            .saturating_add(count(self.queue.len()));
        self.load.set(f64::from(demand), now);
    }

    /// Target tracking's provisioned instances for the load at `now`.
    fn retrack(&mut self, now: Instant) {
        self.tracked_min = match self.cfg.target {
            Some(t) => gpufn_policy::provisioning::tracked_instances(
                self.load.value_at(now),
                self.cfg.concurrency,
                f64::from(t.utilization_permille) / 1000.0,
                0,
                t.max_provisioned.min(self.cfg.max_instances),
            ),
            None => 0,
        };
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The instances, oldest first.
    pub fn instances(&self) -> &[Instance<P>] {
        &self.instances
    }

    /// One instance.
    pub fn instance(&self, id: InstanceId) -> Option<&Instance<P>> {
        self.instances.iter().find(|i| i.id == id)
    }

    /// One instance, to update what the caller keeps with it.
    pub fn instance_mut(&mut self, id: InstanceId) -> Option<&mut Instance<P>> {
        self.instances.iter_mut().find(|i| i.id == id)
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> u32 {
        count(self.queue.len())
    }

    /// True once closed ([`Scheduler::close`]).
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The idle-time histogram (keep-alive: histogram).
    pub fn histogram(&self) -> &IdleHistogram {
        &self.hist
    }

    /// Handles one event at `now`: the same as calling the method it names.
    pub fn handle(
        &mut self,
        now: Instant,
        event: Event<E>,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) -> Reply<E> {
        match event {
            Event::Arrive => return Reply::Acquire(self.acquire(now, cards, out)),
            Event::Cancel(w) => return Reply::Cancelled(self.cancel(w)),
            Event::TimedOut(w) => return Reply::TimedOut(self.timed_out(w, now)),
            Event::Release(i) => self.release(i, now, out),
            Event::OutOfService(i) => self.out_of_service(i, now, cards, out),
            Event::Ready { instance, load } => self.instance_ready(instance, load, now, out),
            Event::StartFailed { instance, reason } => {
                self.start_failed(instance, reason, now, cards, out);
            }
            Event::Gone(i) => {
                self.instance_gone(i, now, cards, out);
            }
            Event::Tick => return Reply::Next(self.tick(now, cards, out)),
            Event::Rescale => self.rescale(now, cards, out),
            Event::Update { cfg, revision } => self.update(cfg, revision, now, cards, out),
            Event::Close(reason) => self.close(reason, out),
            Event::Plan(plan) => self.plan_idle(plan, out),
            Event::ScheduledMin(min) => self.set_scheduled_min(min, now, cards, out),
        }
        Reply::Done
    }

    /// A request arrived at `now`: a slot at once on the least-loaded ready instance, else a
    /// place in the queue (starting instances as needed), else a refusal.
    pub fn acquire(
        &mut self,
        now: Instant,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) -> Acquire<E> {
        if let Some(reason) = &self.closed {
            return Acquire::Refused(reason.clone());
        }
        if let Some(since) = self.idle_start.take() {
            let gap = now.saturating_duration_since(since);
            // Did the pre-warm planned for this idle period catch the call?
            if let (KeepAlive::Predictive { .. }, Some((after, until))) =
                (self.cfg.keep_alive, self.predicted.prewarm)
            {
                if (after..=until).contains(&gap) {
                    self.prewarm_hits += 1;
                } else {
                    self.prewarm_misses += 1;
                }
            }
            self.hist.record(gap);
            self.learn_gap(gap);
            self.plan = None;
        }
        if self.cfg.target.is_some() && self.check_at.is_none() {
            // Target tracking follows the load from now on: ask for ticks.
            out.push(Effect::Wake);
        }
        if let Some(grant) = self.take_slot(None, now) {
            self.track_load(now);
            return Acquire::Now(grant);
        }
        if self.queue.len() >= self.cfg.max_queue as usize {
            return Acquire::Refused(Refusal::QueueFull {
                max_queue: self.cfg.max_queue,
            });
        }
        self.next_waiter += 1;
        let id = WaiterId(self.next_waiter);
        self.queue.push_back(Waiter { id, enqueued: now });
        self.track_load(now);
        self.scale(now, cards, out);
        Acquire::Queued(id)
    }

    /// The caller gave up on a queued request (it went away): it no longer counts against
    /// `max_queue` nor asks for instances. False when it was no longer queued.
    pub fn cancel(&mut self, waiter: WaiterId) -> bool {
        match self.queue.iter().position(|w| w.id == waiter) {
            Some(pos) => {
                self.queue.remove(pos);
                true
            }
            None => false,
        }
    }

    /// A queued request's queue timeout passed at `now`: the refusal to give it (saying why no
    /// instance could start, if that was why), or `None` when it was answered already.
    pub fn timed_out(&mut self, waiter: WaiterId, now: Instant) -> Option<Refusal<E>> {
        let pos = self.queue.iter().position(|w| w.id == waiter)?;
        let w = self.queue.remove(pos)?;
        Some(Refusal::QueueTimeout {
            waited: now.saturating_duration_since(w.enqueued),
            blocked: self.blocked.clone(),
        })
    }

    /// Why a starting instance has no place yet ([`Scheduler::unplaced`]), if one has none: what
    /// a request that timed out while no card was refused is told instead.
    pub fn unplaced_reason(&self) -> Option<&str> {
        self.instances
            .iter()
            .filter(|i| i.state == State::Starting)
            .find_map(|i| i.unplaced.as_deref())
    }

    /// Requests wait and no instance could be started for them for want of a card: another
    /// function's idle instance may be reclaimed for them.
    pub fn waiting_for_card(&self) -> bool {
        !self.queue.is_empty() && self.blocked.is_some()
    }

    /// Instances that may be reclaimed for another function under card pressure, with how long
    /// each has been idle at `now`: ready, nothing in flight, not provisioned (on-demand only).
    pub fn reclaimable(&self, now: Instant) -> Vec<(InstanceId, Duration)> {
        self.instances
            .iter()
            .filter(|i| i.state == State::Ready && i.in_flight == 0 && !i.provisioned)
            .map(|i| (i.id, now.saturating_duration_since(i.idle_since)))
            .collect()
    }

    /// Stops idle on-demand `instance` so its card can go to another function. False (and
    /// nothing done) when it is no longer reclaimable (a request took it meanwhile).
    pub fn reclaim(&mut self, instance: InstanceId, out: &mut Effects<E>) -> bool {
        let Some(inst) = self.instances.iter_mut().find(|i| {
            i.id == instance && i.state == State::Ready && i.in_flight == 0 && !i.provisioned
        }) else {
            return false;
        };
        inst.drain();
        out.push(Effect::Stop { instance });
        true
    }

    /// Takes back an instance that outlived an earlier run of the caller (a Pod still running
    /// after gpufn restarted): it joins as starting, with its card (`payload`) already held, and
    /// is answered like any start ([`Scheduler::instance_ready`] once its health check passes).
    /// The first `min_instances` live ones are the provisioned ones, as for a start.
    pub fn adopt(&mut self, id: InstanceId, payload: P, now: Instant, out: &mut Effects<E>) {
        let live = self
            .instances
            .iter()
            .filter(|i| i.revision == self.revision && i.state != State::Draining)
            .count();
        let provisioned = (live as u64) < u64::from(self.min_instances());
        self.push_starting(id, payload, provisioned, now);
        out.push(Effect::Start { instance: id });
    }

    /// A new instance of the current revision, starting (its card held: `payload`).
    fn push_starting(&mut self, id: InstanceId, payload: P, provisioned: bool, now: Instant) {
        self.instances.push(Instance {
            id,
            revision: self.revision,
            state: State::Starting,
            in_flight: 0,
            served: 0,
            idle_since: now,
            ready_at: None,
            created: now,
            provisioned,
            provisioned_since: now,
            provisioned_busy_base: 0,
            memory_gb: self.cfg.memory_gb,
            unplaced: None,
            busy: BusyTracker::default(),
            batch: PeriodBatch::new(self.cfg.batch_window),
            payload,
        });
    }

    /// The runtime has no place for starting `instance` yet (a cluster's scheduler found no node
    /// with a free GPU): `reason`, its words. A request that times out waiting says so.
    pub fn unplaced(&mut self, instance: InstanceId, reason: String) {
        if let Some(inst) = self
            .instances
            .iter_mut()
            .find(|i| i.id == instance && i.state == State::Starting)
        {
            inst.unplaced = Some(reason);
        }
    }

    /// Starting `instance` has its place now.
    pub fn placed(&mut self, instance: InstanceId) {
        if let Some(inst) = self.instances.iter_mut().find(|i| i.id == instance) {
            inst.unplaced = None;
        }
    }

    /// With no request left waiting, stops the on-demand instances still waiting for a place:
    /// nobody needs them, and a place found later would be held for nothing.
    pub fn stop_unneeded_unplaced(&mut self, out: &mut Effects<E>) {
        if !self.queue.is_empty() {
            return;
        }
        for inst in &mut self.instances {
            if inst.state == State::Starting && inst.unplaced.is_some() && !inst.provisioned {
                inst.drain();
                out.push(Effect::Stop { instance: inst.id });
            }
        }
    }

    /// The instance's initializer (a lifecycle hook) ran from `started` to `now`: billed as one
    /// invocation of the instance, as Function Compute bills it. Call before
    /// [`Scheduler::instance_ready`].
    pub fn bill_initializer(
        &mut self,
        instance: InstanceId,
        started: Instant,
        now: Instant,
        out: &mut Effects<E>,
    ) {
        let Some(inst) = self.instances.iter_mut().find(|i| i.id == instance) else {
            return;
        };
        inst.busy.start(started);
        if let Some(batch) = inst.busy.end(now).and_then(|p| inst.batch.push(p)) {
            out.push(Effect::Bill(Bill::Busy {
                instance,
                period: batch,
                memory_gb: inst.memory_gb,
            }));
        }
    }

    /// A request gave its slot back at `now` (its response is done).
    pub fn release(&mut self, instance: InstanceId, now: Instant, out: &mut Effects<E>) {
        // Under fixed keep-alive an instance going idle needs a look at its keep-alive deadline
        // and when its metering batch is due; if a tick is due sooner anyway it will see both, so
        // the caller is not woken on every request.
        let fixed = match self.cfg.keep_alive {
            KeepAlive::Fixed(t) => Some(t),
            _ => None,
        };
        let check_at = self.check_at;
        let Some(inst) = self.instances.iter_mut().find(|i| i.id == instance) else {
            return;
        };
        inst.in_flight = inst.in_flight.saturating_sub(1);
        inst.served += 1;
        if let Some(period) = inst.busy.end(now) {
            if let Some(batch) = inst.batch.push(period) {
                out.push(Effect::Bill(Bill::Busy {
                    instance,
                    period: batch,
                    memory_gb: inst.memory_gb,
                }));
            }
        }
        if inst.in_flight == 0 {
            inst.idle_since = now;
            let wake = match fixed {
                None => true,
                Some(timeout) => {
                    let keep_until = now.checked_add(timeout);
                    let needed = match (inst.batch.due_at(), keep_until) {
                        (Some(d), Some(k)) => Some(d.min(k)),
                        (a, b) => a.or(b),
                    };
                    match (check_at, needed) {
                        (_, None) => false,
                        (None, Some(_)) => true,
                        (Some(c), Some(n)) => c > n,
                    }
                }
            };
            if wake {
                out.push(Effect::Wake);
            }
            if inst.state == State::Draining {
                out.push(Effect::Stop { instance });
            }
        }
        self.dispatch(now, out);
        self.track_load(now);
        if self.idle_start.is_none()
            && self.queue.is_empty()
            && self.instances.iter().all(|i| i.in_flight == 0)
        {
            self.idle_start = Some(now);
            if matches!(self.cfg.keep_alive, KeepAlive::Planned { .. }) {
                out.push(Effect::Idle);
            }
        }
    }

    /// The instance failed at the connection level (refused, reset): it takes no more requests
    /// and is stopped, so the next request gets a fresh instance instead of the same broken one.
    pub fn out_of_service(
        &mut self,
        instance: InstanceId,
        now: Instant,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) {
        if let Some(inst) = self.instances.iter_mut().find(|i| i.id == instance) {
            inst.drain();
            out.push(Effect::Stop { instance });
        }
        self.scale(now, cards, out);
    }

    /// The instance passed its health check at `now`; its start took `load` (process start plus
    /// the app's own load), which pre-warm plans with.
    pub fn instance_ready(
        &mut self,
        instance: InstanceId,
        load: Duration,
        now: Instant,
        out: &mut Effects<E>,
    ) {
        out.push(Effect::Wake);
        self.failed_starts = 0;
        self.min_retry_at = None;
        let Some(inst) = self.instances.iter_mut().find(|i| i.id == instance) else {
            return;
        };
        if inst.state == State::Starting {
            inst.state = State::Ready;
            inst.ready_at = Some(now);
            inst.idle_since = now;
        } else {
            // Drained while it was starting (function updated, deleted, shutting down).
            out.push(Effect::Stop { instance });
        }
        self.last_load = load;
        self.dispatch(now, out);
        // A planned keep-alive is planned again whenever the function is found idle: an instance
        // that became ready with nothing to do changes what the best plan is.
        if matches!(self.cfg.keep_alive, KeepAlive::Planned { .. })
            && self.queue.is_empty()
            && self.instances.iter().all(|i| i.in_flight == 0)
        {
            self.idle_start.get_or_insert(now);
            out.push(Effect::Idle);
        }
    }

    /// A start failed: the instance leaves, its card is free, and the requests it was started for
    /// get the failure — at most one instance's worth, and only those no other start will serve.
    /// Provisioned instances are retried with a backoff; a queued request always gets its try.
    pub fn start_failed(
        &mut self,
        instance: InstanceId,
        reason: Refusal<E>,
        now: Instant,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) -> Option<Instance<P>> {
        out.push(Effect::Wake);
        let gone = self.retire(instance, now, out);
        self.failed_starts = self.failed_starts.saturating_add(1);
        let backoff = Duration::from_secs(1 << self.failed_starts.min(6));
        self.min_retry_at = Some(now + backoff);
        let concurrency = self.cfg.concurrency;
        let capacity: u32 = self
            .instances
            .iter()
            .filter(|i| i.revision == self.revision)
            .map(|i| match i.state {
                State::Starting => concurrency,
                State::Ready => concurrency - i.in_flight.min(concurrency),
                State::Draining => 0,
            })
            .sum();
        let excess = self.queued().saturating_sub(capacity);
        for _ in 0..excess.min(concurrency) {
            if let Some(w) = self.queue.pop_front() {
                out.push(Effect::Refuse {
                    waiter: w.id,
                    reason: reason.clone(),
                });
            }
        }
        self.scale(now, cards, out);
        gone
    }

    /// The instance is gone (stopped, crashed) and its card given back: it leaves, its bills
    /// close, and instances start again if needed. Returns it, for what the caller kept with it.
    pub fn instance_gone(
        &mut self,
        instance: InstanceId,
        now: Instant,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) -> Option<Instance<P>> {
        out.push(Effect::Wake);
        let gone = self.retire(instance, now, out);
        self.scale(now, cards, out);
        gone
    }

    /// Keep-alive, provisioned and pre-warmed instances, due metering batches: stops instances
    /// idle past their keep-alive (keeping `min_instances`), starts missing ones. Returns when to
    /// tick again if nothing happens before; it is always after `now`.
    pub fn tick(
        &mut self,
        now: Instant,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) -> Option<Instant> {
        let revision = self.revision;
        let live: Vec<usize> = self
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| i.revision == revision && i.state != State::Draining)
            .map(|(n, _)| n)
            .collect();
        let views: Vec<InstanceView> = live
            .iter()
            .map(|&n| {
                let i = &self.instances[n];
                InstanceView {
                    starting: i.state == State::Starting,
                    in_flight: i.in_flight,
                    idle_since: i.idle_since,
                }
            })
            .collect();
        self.track_load(now);
        let before = self.min_instances();
        self.retrack(now);
        if self.min_instances() != before {
            self.reclassify(now, out);
        }
        let (idle_timeout, prewarm_min, wake_at) = self.keep_alive_window(now);
        self.prewarm_min = prewarm_min;
        let decision = gpufn_policy::keep_alive(
            &views,
            self.min_instances().max(prewarm_min),
            idle_timeout,
            now,
        );
        for k in decision.stop {
            let inst = &mut self.instances[live[k]];
            if inst.drain() {
                out.push(Effect::Stop { instance: inst.id });
            }
        }
        self.scale(now, cards, out);
        // Metering batches whose window has passed are billed; the others are due later.
        let mut batch_due = None::<Instant>;
        for inst in &mut self.instances {
            if let Some(batch) = inst.batch.take_due(now) {
                out.push(Effect::Bill(Bill::Busy {
                    instance: inst.id,
                    period: batch,
                    memory_gb: inst.memory_gb,
                }));
            }
            batch_due = match (batch_due, inst.batch.due_at()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        // A provisioned restart's backoff that has passed needs no tick: the scale-up above
        // already tried.
        let retry = self.min_retry_at.filter(|t| *t > now);
        // Target tracking looks again while it has load to follow or instances it asked for.
        let track = (self.cfg.target.is_some()
            && (self.load.value_at(now) > 0.01 || self.tracked_min > 0))
            .then(|| now + TRACK_EVERY);
        let next = [decision.next_check, retry, wake_at, batch_due, track]
            .into_iter()
            .flatten()
            .filter(|t| *t > now)
            .min();
        self.check_at = next;
        next
    }

    /// Tries again to start instances for queued requests (a card was given back).
    pub fn rescale(&mut self, now: Instant, cards: &mut dyn Cards<P, E>, out: &mut Effects<E>) {
        if self.queue.is_empty() && self.blocked.is_none() {
            return;
        }
        self.scale(now, cards, out);
    }

    /// A new spec: instances of older revisions drain, new ones start as needed.
    pub fn update(
        &mut self,
        cfg: Config,
        revision: i64,
        now: Instant,
        cards: &mut dyn Cards<P, E>,
        out: &mut Effects<E>,
    ) {
        out.push(Effect::Wake);
        let bin = histogram_bin(cfg.keep_alive);
        if bin.is_some_and(|b| b.max(Duration::from_millis(1)) != self.hist.bin()) {
            // Idle times binned at another width do not carry over.
            self.hist = IdleHistogram::new(bin.unwrap_or(Duration::from_secs(60)));
        }
        if let KeepAlive::Predictive { fallback, .. } = cfg.keep_alive {
            if self.gaps.len() < gpufn_policy::PREDICTIVE_MIN_SAMPLES {
                self.predicted = gpufn_policy::HistogramDecision {
                    keep_alive: fallback,
                    prewarm: None,
                };
            }
        }
        self.cfg = cfg;
        self.revision = revision;
        self.min_retry_at = None;
        self.failed_starts = 0;
        for inst in self.instances.iter_mut().filter(|i| i.revision != revision) {
            if inst.drain() {
                out.push(Effect::Stop { instance: inst.id });
            }
        }
        self.scale(now, cards, out);
    }

    /// Deleted or shutting down: waiters get `reason`, no instance starts again, and every
    /// instance drains (requests in flight finish).
    pub fn close(&mut self, reason: Refusal<E>, out: &mut Effects<E>) {
        out.push(Effect::Wake);
        self.closed = Some(reason.clone());
        while let Some(w) = self.queue.pop_front() {
            out.push(Effect::Refuse {
                waiter: w.id,
                reason: reason.clone(),
            });
        }
        for inst in &mut self.instances {
            if inst.drain() {
                out.push(Effect::Stop { instance: inst.id });
            }
        }
    }

    /// The predictive policy learns one more idle gap (with the one before it), and decides for
    /// the next idle period from the gaps that followed gaps like this one.
    fn learn_gap(&mut self, gap: Duration) {
        let KeepAlive::Predictive {
            fallback,
            cold_cost,
        } = self.cfg.keep_alive
        else {
            return;
        };
        if let Some(prev) = self.last_gap {
            if self.gaps.len() >= gpufn_policy::PREDICTIVE_SAMPLES {
                self.gaps.pop_front();
            }
            self.gaps.push_back((prev, gap));
        }
        self.last_gap = Some(gap);
        // Consecutive gaps are correlated: decide from the gaps that followed one on the same
        // side of the median as this one, when there are enough of them.
        self.gaps_unweighed += 1;
        // One median per gap learned: a side is then one comparison (this ran a count over all
        // gaps for each of them, quadratic in the history).
        let median = Self::median(&self.gaps);
        let side_of = |g: Duration| median.is_some_and(|m| g > m);
        if self.gaps.len() >= 32 && self.gaps_unweighed < 4 && self.last_side == side_of(gap) {
            return;
        }
        self.gaps_unweighed = 0;
        let side = side_of(gap);
        self.last_side = side;
        let same: Vec<Duration> = self
            .gaps
            .iter()
            .filter(|(p, _)| side_of(*p) == side)
            .map(|(_, g)| *g)
            .collect();
        let gaps: Vec<Duration> = if same.len() >= gpufn_policy::PREDICTIVE_NEIGHBOURS {
            same
        } else {
            self.gaps.iter().map(|(_, g)| *g).collect()
        };
        self.predicted = gpufn_policy::predictive_decision(
            &gaps,
            self.last_load,
            cold_cost.as_secs_f64(),
            fallback,
        );
    }

    /// Pre-warms that caught their call, and those that did not (the call came before or after
    /// the window).
    pub fn prewarm_counts(&self) -> (u64, u64) {
        (self.prewarm_hits, self.prewarm_misses)
    }

    /// What the predictive policy decided for idle periods now, in words (`None` under other
    /// policies), and where the current idle period stands at `now`.
    pub fn keep_alive_explained(&self, now: Instant) -> Option<String> {
        matches!(self.cfg.keep_alive, KeepAlive::Predictive { .. }).then(|| {
            gpufn_policy::explain(
                self.predicted,
                self.gaps.len() >= gpufn_policy::PREDICTIVE_MIN_SAMPLES,
                self.idle_start.map(|t| now.saturating_duration_since(t)),
            )
        })
    }

    /// The caller's plan for the idle period that began ([`Effect::Idle`], under
    /// [`KeepAlive::Planned`]); it holds until the next request arrives.
    pub fn plan_idle(&mut self, plan: IdlePlan, out: &mut Effects<E>) {
        self.plan = Some(plan);
        out.push(Effect::Wake);
    }

    /// The median of the gaps that followed others (the upper one of an even count): a gap is
    /// on the long side when it is longer than this.
    fn median(gaps: &std::collections::VecDeque<(Duration, Duration)>) -> Option<Duration> {
        let mut values: Vec<Duration> = gaps.iter().map(|(_, g)| *g).collect();
        let mid = values.len() / 2;
        (!values.is_empty()).then(|| *values.select_nth_unstable(mid).1)
    }

    /// The keep-alive for idle instances now, the instances to keep warm (pre-warm), and when to
    /// look again: the fixed timeout; the histogram policy's decision for the current idle period;
    /// or the caller's plan.
    fn keep_alive_window(&self, now: Instant) -> (Duration, u32, Option<Instant>) {
        let window = |since: Instant, after: Duration, until: Duration| {
            (since.checked_add(after), since.checked_add(until))
        };
        let (keep, prewarm) = match self.cfg.keep_alive {
            KeepAlive::Fixed(t) => return (t, 0, None),
            KeepAlive::Histogram { fallback, .. } => {
                let d =
                    gpufn_policy::histogram_decision(self.hist.windows(), fallback, self.last_load);
                match (self.idle_start, d.prewarm) {
                    (Some(since), Some((after, until))) => {
                        (Duration::ZERO, Some(window(since, after, until)))
                    }
                    _ => (d.keep_alive, None),
                }
            }
            KeepAlive::Predictive { .. } => match (self.idle_start, self.predicted.prewarm) {
                (Some(since), Some((after, until))) => {
                    (self.predicted.keep_alive, Some(window(since, after, until)))
                }
                _ => (self.predicted.keep_alive, None),
            },
            KeepAlive::Planned { busy } => match (self.idle_start, self.plan) {
                (Some(_), Some(p)) => (p.keep_alive, p.prewarm.map(|(a, b)| (Some(a), Some(b)))),
                _ => (busy, None),
            },
        };
        match prewarm {
            Some((Some(start_at), _)) if now < start_at => (keep, 0, Some(start_at)),
            Some((Some(_), keep_until)) if keep_until.is_none_or(|k| now < k) => {
                (keep, 1, keep_until)
            }
            _ => (keep, 0, None),
        }
    }

    /// Takes a slot on the least-loaded ready instance of the current revision.
    fn take_slot(&mut self, waited_since: Option<Instant>, now: Instant) -> Option<Grant> {
        let concurrency = self.cfg.concurrency;
        let revision = self.revision;
        let inst = self
            .instances
            .iter_mut()
            .filter(|i| i.has_free_slot(concurrency, revision))
            .min_by_key(|i| i.in_flight)?;
        inst.in_flight += 1;
        inst.busy.start(now);
        let cold =
            matches!((waited_since, inst.ready_at), (Some(since), Some(ready)) if ready > since);
        Some(Grant {
            instance: inst.id,
            cold,
            ready_at: inst.ready_at,
        })
    }

    /// Hands free slots to waiters, oldest first.
    fn dispatch(&mut self, now: Instant, out: &mut Effects<E>) {
        while let Some(front) = self.queue.front() {
            let (id, since) = (front.id, front.enqueued);
            let Some(grant) = self.take_slot(Some(since), now) else {
                break;
            };
            self.queue.pop_front();
            out.push(Effect::Grant { waiter: id, grant });
        }
    }

    /// Starts as many instances as the policy asks for, as far as the cards allow.
    fn scale(&mut self, now: Instant, cards: &mut dyn Cards<P, E>, out: &mut Effects<E>) {
        if self.closed.is_some() {
            return;
        }
        let mut demand = Demand {
            queued: self.queued(),
            ..Demand::default()
        };
        for i in self
            .instances
            .iter()
            .filter(|i| i.revision == self.revision && i.state != State::Draining)
        {
            match i.state {
                State::Starting => demand.starting += 1,
                _ => {
                    demand.ready += 1;
                    demand.in_flight += i.in_flight;
                }
            }
        }
        let limits = Limits {
            concurrency: self.cfg.concurrency,
            min_instances: self.min_instances().max(self.prewarm_min),
            max_instances: self.cfg.max_instances,
        };
        let mut wanted = gpufn_policy::instances_to_start(demand, limits);
        // Only provisioned instances are held back after failed starts; a waiting request always
        // gets its attempt.
        if demand.queued == 0 && self.min_retry_at.is_some_and(|t| t > now) {
            wanted = 0;
        }
        self.blocked = None;
        let live_before = demand.starting + demand.ready;
        for live in live_before..live_before + wanted {
            // The first min_instances live instances are the provisioned ones, billed for their
            // whole lifetime; the rest are on demand, billed only while busy.
            let provisioned = live < self.min_instances();
            let (id, payload) = match cards.allocate(provisioned) {
                Ok(granted) => granted,
                Err(e) => {
                    self.blocked = Some(e);
                    break;
                }
            };
            self.push_starting(id, payload, provisioned, now);
            out.push(Effect::Start { instance: id });
        }
    }

    /// Removes an instance and closes its bills: an open busy period (it crashed mid-request) and,
    /// for a provisioned instance, the idle rest of its lifetime.
    fn retire(
        &mut self,
        id: InstanceId,
        now: Instant,
        out: &mut Effects<E>,
    ) -> Option<Instance<P>> {
        let pos = self.instances.iter().position(|i| i.id == id)?;
        let mut inst = self.instances.remove(pos);
        let last = inst.busy.close(now).and_then(|p| inst.batch.push(p));
        for period in last.into_iter().chain(inst.batch.take()) {
            out.push(Effect::Bill(Bill::Busy {
                instance: id,
                period,
                memory_gb: inst.memory_gb,
            }));
        }
        if inst.provisioned {
            out.push(Effect::Bill(Bill::ProvisionedIdle {
                instance: id,
                end: now,
                idle_s: inst.provisioned_idle_s(now, 0),
                memory_gb: inst.memory_gb,
            }));
        }
        Some(inst)
    }

    /// Makes as many live instances provisioned as [`Scheduler::min_instances`] says, when a
    /// schedule or target tracking changed it: extra provisioned instances become on-demand (their
    /// idle time so far billed at the idle price; idle ones first), and on-demand instances
    /// become provisioned where there are too few (billed as such from now).
    fn reclassify(&mut self, now: Instant, out: &mut Effects<E>) {
        let want = self.min_instances() as usize;
        let revision = self.revision;
        let live = |i: &Instance<P>| i.revision == revision && i.state != State::Draining;
        let mut have = self
            .instances
            .iter()
            .filter(|i| live(i) && i.provisioned)
            .count();
        if have > want {
            // Idle ones first, then the youngest.
            let mut order: Vec<usize> = (0..self.instances.len())
                .filter(|&n| live(&self.instances[n]) && self.instances[n].provisioned)
                .collect();
            order.sort_by_key(|&n| {
                let i = &self.instances[n];
                (i.in_flight > 0, std::cmp::Reverse(i.created))
            });
            for n in order.into_iter().take(have - want) {
                let inst = &mut self.instances[n];
                let open = inst.busy.open_period(now).map_or(0, |p| p.billed_seconds);
                out.push(Effect::Bill(Bill::ProvisionedIdle {
                    instance: inst.id,
                    end: now,
                    idle_s: inst.provisioned_idle_s(now, open),
                    memory_gb: inst.memory_gb,
                }));
                inst.provisioned = false;
            }
        } else if have < want {
            for inst in self.instances.iter_mut() {
                if have >= want {
                    break;
                }
                if live(inst) && !inst.provisioned {
                    inst.provisioned = true;
                    inst.provisioned_since = now;
                    let open = inst.busy.open_period(now).map_or(0, |p| p.billed_seconds);
                    inst.provisioned_busy_base = inst.busy.billed_total() + open;
                    have += 1;
                }
            }
        }
    }
}
