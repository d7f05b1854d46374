//! The discrete-event simulation of gpufn's pools.
//!
//! Every decision — which instance a request gets, when instances start and stop, what is billed —
//! is made by `gpufn-sched`, the scheduler the server runs, driven here with virtual time. This
//! module only moves the clock: it turns a trace into arrival events, draws each start's load time,
//! ends each request after its service time, and adds up what the scheduler billed. The one policy
//! the server cannot run, the offline `oracle`, plans idle periods through the scheduler's
//! [`KeepAlive::Planned`] hook.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use gpufn_metering::{Prices, billed_seconds};
use gpufn_sched::{
    Acquire, Bill, Cards, Config, Effect, Effects, Event as SchedEvent, IdlePlan, InstanceId,
    KeepAlive, Refusal, Reply, Scheduler, WaiterId,
};
use serde::Serialize;

use crate::trace::{Trace, unit};
use chrono::{DateTime, Utc};
use gpufn_policy::provisioning::{self, Schedule};

/// The predictive policy's price of a cold start, in seconds of a card held, when none is given
/// (also the spec's default `cold_cost_s`): chosen on the first halves of the Alibaba and Azure
/// Functions traces, the one price tried that lay below the fixed keep-alive curve on both
/// (BENCHMARKS.md, "Predictive keep-alive").
pub const DEFAULT_COLD_COST_S: f64 = 300.0;

/// A keep-alive policy to compare.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    /// Release an instance as soon as it is idle.
    Zero,
    /// Keep idle instances this many seconds (the live server's `idle_timeout_s`).
    Fixed(f64),
    /// One dedicated card per function for the whole trace, priced per hour.
    AlwaysOn,
    /// The hybrid histogram policy (ATC'20), falling back to a fixed keep-alive.
    Histogram,
    /// The predictive policy: per function, the cheapest of release / keep / release-and-pre-warm
    /// over its recent idle gaps, a cold start priced at this many seconds of a card held.
    Predictive(f64),
    /// Offline lower bound: knows the next arrival; keeps warm only up to the cost break-even, and
    /// otherwise releases at once and pre-warms just in time.
    Oracle,
}

impl Policy {
    /// Parses `zero`, `fixed:SECONDS`, `always-on`, `histogram`, `oracle`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "zero" => Ok(Policy::Zero),
            "always-on" => Ok(Policy::AlwaysOn),
            "histogram" => Ok(Policy::Histogram),
            "oracle" => Ok(Policy::Oracle),
            "predictive" => Ok(Policy::Predictive(DEFAULT_COLD_COST_S)),
            _ => {
                let number = |prefix: &str| {
                    s.strip_prefix(prefix)
                        .and_then(|v| v.parse::<f64>().ok())
                        .filter(|v| v.is_finite() && *v >= 0.0)
                };
                if let Some(secs) = number("fixed:") {
                    Ok(Policy::Fixed(secs))
                } else if let Some(cost) = number("predictive:") {
                    Ok(Policy::Predictive(cost))
                } else {
                    Err(format!(
                        "--policy: {s:?} is not one of zero, fixed:SECONDS, always-on, histogram, predictive[:COLD_COST_S], oracle"
                    ))
                }
            }
        }
    }

    /// The name used in reports.
    pub fn name(&self) -> String {
        match self {
            Policy::Zero => "zero".into(),
            Policy::Fixed(s) => format!("fixed:{s}"),
            Policy::AlwaysOn => "always-on".into(),
            Policy::Histogram => "histogram".into(),
            Policy::Oracle => "oracle".into(),
            Policy::Predictive(c) if *c == DEFAULT_COLD_COST_S => "predictive".into(),
            Policy::Predictive(c) => format!("predictive:{c}"),
        }
    }
}

/// Simulation settings.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Billing prices (active and idle USD per GB-s).
    pub prices: Prices,
    /// Dedicated card price for `always-on`.
    pub dedicated_usd_per_hour: f64,
    /// Cold-start time when the trace has no measured samples.
    pub cold_start_s: f64,
    /// Per-function instance limit (`scaling.max_instances`).
    pub max_instances: u32,
    /// Cards in use at once, fleet-wide.
    pub quota_cards: u32,
    /// The histogram policy's fixed keep-alive when its histogram is not representative.
    pub histogram_fallback_s: f64,
    /// Requests that may wait per function (`scaling.max_queue`); one more is refused.
    pub max_queue: u32,
    /// How long a request may wait for a slot (`scaling.queue_timeout_s`) before it is refused.
    pub queue_timeout_s: f64,
    /// Target tracking of provisioned instances for every function (`scaling.target_utilization`
    /// and `max_provisioned`), when on.
    pub target: Option<gpufn_sched::TargetTracking>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            prices: Prices::default(),
            dedicated_usd_per_hour: 2.0,
            cold_start_s: 20.0,
            max_instances: 30,
            quota_cards: u32::MAX,
            histogram_fallback_s: 600.0,
            // The server's defaults: max_queue 1000, queue_timeout_s = startup_timeout_s + 60.
            max_queue: 1000,
            queue_timeout_s: 660.0,
            target: None,
        }
    }
}

/// What one policy did over one trace.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimResult {
    /// Policy name.
    pub policy: String,
    /// Requests served.
    pub requests: u64,
    /// Requests that waited for their instance to start.
    pub cold_starts: u64,
    /// `cold_starts / requests`.
    pub cold_start_rate: f64,
    /// 75th percentile over functions of each function's cold-start percentage.
    pub p75_function_cold_start_pct: f64,
    /// Median latency: queue + cold start + service.
    pub p50_latency_s: f64,
    /// 99th percentile latency.
    pub p99_latency_s: f64,
    /// GPU memory × time with a request in flight.
    pub busy_gb_seconds: f64,
    /// GPU memory × time instances held cards (start to release, rounded up per instance).
    pub billed_gb_seconds: f64,
    /// `busy / billed`.
    pub efficiency: f64,
    /// Busy periods rounded up to whole seconds × GPU memory: what the live server's billing API
    /// reports as `gb_seconds` (used to compare a live replay with the simulation).
    pub active_billed_gb_seconds: f64,
    /// Busy periods at the active price and the rest of held time at the idle price; for
    /// `always-on`, the dedicated cards' hourly price.
    pub cost_usd: f64,
    /// Most cards in use at once.
    pub peak_cards: u32,
    /// Requests refused: the queue was full, or they waited `queue_timeout_s` (not in
    /// `requests`, nor in the latencies).
    pub refused: u64,
    /// Of those, the ones that timed out while no card could be had under the quota.
    pub refused_for_quota: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Arrive(usize),
    /// A queued request's queue timeout.
    Timeout(u32, WaiterId),
    Ready(u32, InstanceId),
    Done(u32, InstanceId),
    Tick(u32),
    /// A scheduled provisioning action may change now.
    Schedule,
}

#[derive(Debug)]
struct Queued {
    t: Duration,
    ev: Event,
    seq: u64,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    // Reversed: BinaryHeap is a max-heap and the earliest event must come first.
    fn cmp(&self, o: &Self) -> Ordering {
        o.t.cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

/// Every card the fleet's quota allows is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaFull;

impl std::fmt::Display for QuotaFull {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GPU-card quota exhausted")
    }
}

/// The fleet's cards: a count against the quota.
#[derive(Debug)]
struct Fleet {
    live: u32,
    peak: u32,
    quota: u32,
    next_id: u64,
}

impl Cards<(), QuotaFull> for Fleet {
    fn allocate(&mut self, _provisioned: bool) -> Result<(InstanceId, ()), QuotaFull> {
        if self.live >= self.quota {
            return Err(QuotaFull);
        }
        self.live += 1;
        self.peak = self.peak.max(self.live);
        self.next_id += 1;
        Ok((InstanceId(self.next_id), ()))
    }
}

#[derive(Debug)]
struct Func {
    sched: Scheduler<(), QuotaFull>,
    memory_gb: u32,
    /// Queued requests: arrival time and service time.
    waiting: HashMap<WaiterId, (Duration, Duration)>,
    arrivals: Vec<Duration>,
    cursor: usize,
    requests: u64,
    cold: u64,
    /// When the scheduler asked to tick next (a queued tick event for another time is stale).
    due: Option<Duration>,
    /// The oracle's pre-warm: the load time it drew (and planned around), for its next start.
    planned_load: Option<Duration>,
    /// Requests refused, and those refused for want of a card under the quota.
    refused: u64,
    refused_for_quota: u64,
}

/// One call the simulator made to a function's scheduler, and what it decided ([`record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The function (index in the trace).
    pub function: u32,
    /// Virtual time since the trace began.
    pub at: Duration,
    /// The event.
    pub event: SchedEvent<QuotaFull>,
    /// The effects.
    pub effects: Effects<QuotaFull>,
}

struct Sim<'a> {
    trace: &'a Trace,
    cfg: SimConfig,
    policy: Policy,
    base: Instant,
    heap: BinaryHeap<Queued>,
    seq: u64,
    funcs: Vec<Func>,
    fleet: Fleet,
    /// Draws of cold-start samples (the seed of the next one).
    draws: u64,
    latencies: Vec<f64>,
    busy_gb_s: f64,
    billed_gb_s: f64,
    active_billed_gb_s: f64,
    cold_median: f64,
    /// Every scheduler call, when recording.
    log: Option<Vec<Step>>,
    /// Scheduled provisioning for every function, and the trace's wall-clock start.
    schedules: &'a [Schedule],
    start: DateTime<Utc>,
}

/// The scheduler's settings for `policy` (the live server's are made from a spec the same way).
fn config(policy: Policy, cfg: &SimConfig, memory_gb: u32, concurrency: u32) -> Config {
    let secs = |s: f64| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX);
    let always_on = policy == Policy::AlwaysOn;
    Config {
        concurrency,
        max_queue: cfg.max_queue.max(1),
        // A dedicated card, warm from the start, never released, never more than one.
        min_instances: u32::from(always_on),
        max_instances: if always_on { 1 } else { cfg.max_instances },
        keep_alive: match policy {
            Policy::Zero => KeepAlive::Fixed(Duration::ZERO),
            Policy::Fixed(s) => KeepAlive::Fixed(secs(s)),
            Policy::AlwaysOn => KeepAlive::Fixed(Duration::MAX),
            Policy::Histogram => KeepAlive::Histogram {
                fallback: secs(cfg.histogram_fallback_s),
                bin: Duration::from_secs(60),
            },
            Policy::Predictive(cost) => KeepAlive::Predictive {
                fallback: secs(cfg.histogram_fallback_s),
                cold_cost: secs(cost),
            },
            Policy::Oracle => KeepAlive::Planned {
                busy: Duration::ZERO,
            },
        },
        memory_gb,
        // Every billed period is added up at once; batching records saves nothing here.
        batch_window: Duration::ZERO,
        target: cfg.target.filter(|_| !always_on),
    }
}

fn secs(t: f64) -> Duration {
    Duration::try_from_secs_f64(t.max(0.0)).unwrap_or(Duration::MAX)
}

/// Runs `policy` over `trace`.
pub fn simulate(trace: &Trace, policy: Policy, cfg: SimConfig) -> SimResult {
    let mut sim = Sim::new(trace, policy, cfg);
    sim.run();
    sim.result()
}

/// The `+target…` suffix of a result's policy name under target tracking.
fn target_suffix(cfg: &SimConfig, policy: Policy) -> String {
    match cfg.target {
        Some(t) if policy != Policy::AlwaysOn => {
            format!("+target{}", f64::from(t.utilization_permille) / 1000.0)
        }
        _ => String::new(),
    }
}

/// Runs `policy` over `trace` with scheduled provisioning (`scaling.schedules`) for every
/// function, the trace's `t = 0` being `start` on the wall clock the schedules read.
pub fn simulate_scheduled(
    trace: &Trace,
    policy: Policy,
    cfg: SimConfig,
    schedules: &[Schedule],
    start: DateTime<Utc>,
) -> SimResult {
    let mut sim = Sim::new(trace, policy, cfg);
    sim.schedules = schedules;
    sim.start = start;
    sim.run();
    let mut r = sim.result();
    r.policy = format!("{}+schedule", r.policy);
    r
}

/// Runs `policy` over `trace` and returns every event given to a scheduler with what it decided:
/// fed to a scheduler configured alike, the same events must give the same decisions.
pub fn record(trace: &Trace, policy: Policy, cfg: SimConfig) -> (Config, Vec<Step>) {
    let mut sim = Sim::new(trace, policy, cfg);
    sim.log = Some(Vec::new());
    sim.run();
    let config = trace
        .functions
        .first()
        .map_or(config(policy, &cfg, 1, 1), |f| {
            config(policy, &cfg, f.memory_gb, f.concurrency.max(1))
        });
    (config, sim.log.unwrap_or_default())
}

impl<'a> Sim<'a> {
    fn new(trace: &'a Trace, policy: Policy, cfg: SimConfig) -> Self {
        let mut funcs: Vec<Func> = trace
            .functions
            .iter()
            .map(|f| Func {
                sched: Scheduler::new(config(policy, &cfg, f.memory_gb, f.concurrency.max(1)), 1),
                memory_gb: f.memory_gb,
                waiting: HashMap::new(),
                arrivals: Vec::new(),
                cursor: 0,
                requests: 0,
                cold: 0,
                due: None,
                planned_load: None,
                refused: 0,
                refused_for_quota: 0,
            })
            .collect();
        for r in &trace.requests {
            if let Some(f) = funcs.get_mut(r.function as usize) {
                f.arrivals.push(secs(r.t));
            }
        }
        let mut samples = trace.cold_start_samples.clone();
        samples.sort_by(f64::total_cmp);
        let cold_median = samples
            .get(samples.len() / 2)
            .copied()
            .unwrap_or(cfg.cold_start_s);
        Sim {
            trace,
            fleet: Fleet {
                live: 0,
                peak: 0,
                quota: cfg.quota_cards,
                next_id: 0,
            },
            cfg,
            policy,
            base: Instant::now(),
            heap: BinaryHeap::new(),
            seq: 0,
            funcs,
            draws: 0,
            latencies: Vec::with_capacity(trace.requests.len()),
            busy_gb_s: 0.0,
            billed_gb_s: 0.0,
            active_billed_gb_s: 0.0,
            cold_median,
            log: None,
            schedules: &[],
            start: DateTime::<Utc>::UNIX_EPOCH,
        }
    }
}

impl Sim<'_> {
    fn at(&self, t: Duration) -> Instant {
        self.base + t
    }

    fn push(&mut self, t: Duration, ev: Event) {
        self.seq += 1;
        self.heap.push(Queued {
            t,
            ev,
            seq: self.seq,
        });
    }

    /// Gives function `f`'s scheduler one event at `t` (recording it when asked to).
    fn call(
        &mut self,
        f: u32,
        t: Duration,
        event: SchedEvent<QuotaFull>,
    ) -> (Reply<QuotaFull>, Effects<QuotaFull>) {
        let now = self.at(t);
        let Sim {
            funcs, fleet, log, ..
        } = self;
        let mut fx = Effects::new();
        let reply = match log {
            Some(log) => {
                let reply = funcs[f as usize]
                    .sched
                    .handle(now, event.clone(), fleet, &mut fx);
                log.push(Step {
                    function: f,
                    at: t,
                    event,
                    effects: fx.clone(),
                });
                reply
            }
            None => funcs[f as usize].sched.handle(now, event, fleet, &mut fx),
        };
        (reply, fx)
    }

    /// The next load time: drawn from the trace's measured samples, else the configured one.
    fn cold_start(&mut self) -> Duration {
        self.draws += 1;
        let s = &self.trace.cold_start_samples;
        secs(if s.is_empty() {
            self.cfg.cold_start_s
        } else {
            let i = ((unit(self.draws) * s.len() as f64) as usize).min(s.len() - 1);
            s[i]
        })
    }

    /// Sets every function's scheduled minimum to the action in force at `t`, and queues the
    /// next change (while requests remain: the schedule does not run the trace on forever).
    fn schedule(&mut self, t: Duration) {
        let wall = self.start + chrono::TimeDelta::milliseconds(t.as_millis() as i64);
        let min = provisioning::in_force(self.schedules, wall)
            .map(|(i, _)| self.schedules[i].min_instances);
        for f in 0..self.funcs.len() as u32 {
            let (_, fx) = self.call(f, t, SchedEvent::ScheduledMin(min));
            self.settle(f, t, fx);
        }
        let last = self.trace.requests.last().map_or(0.0, |r| r.t);
        if let Some(next) = provisioning::next_change(self.schedules, wall) {
            let ahead = next
                .signed_duration_since(wall)
                .to_std()
                .unwrap_or_default();
            if (t + ahead).as_secs_f64() <= last {
                self.push(t + ahead, Event::Schedule);
            }
        }
    }

    fn run(&mut self) {
        if !self.schedules.is_empty() {
            self.schedule(Duration::ZERO);
        }
        // The first tick starts what must exist before any request (always-on's cards).
        for f in 0..self.funcs.len() {
            self.tick(f as u32, Duration::ZERO);
        }
        for (i, r) in self.trace.requests.iter().enumerate() {
            self.push(secs(r.t), Event::Arrive(i));
        }
        let mut end = Duration::ZERO;
        while let Some(Queued { t, ev, .. }) = self.heap.pop() {
            end = end.max(t);
            let now = self.at(t);
            match ev {
                Event::Arrive(i) => self.arrive(i, t),
                Event::Timeout(f, w) => {
                    if self.funcs[f as usize].waiting.remove(&w).is_some() {
                        let (reply, fx) = self.call(f, t, SchedEvent::TimedOut(w));
                        if let Reply::TimedOut(Some(reason)) = reply {
                            self.refuse(f, &reason);
                        }
                        self.settle(f, t, fx);
                    }
                }
                Event::Ready(f, id) => {
                    let load = self.funcs[f as usize]
                        .sched
                        .instance(id)
                        .map_or(Duration::ZERO, |i| {
                            now.saturating_duration_since(i.created())
                        });
                    let (_, fx) = self.call(f, t, SchedEvent::Ready { instance: id, load });
                    self.settle(f, t, fx);
                }
                Event::Done(f, id) => {
                    let (_, fx) = self.call(f, t, SchedEvent::Release(id));
                    self.settle(f, t, fx);
                }
                Event::Tick(f) => {
                    if self.funcs[f as usize].due == Some(t) {
                        self.funcs[f as usize].due = None;
                        self.tick(f, t);
                    }
                }
                Event::Schedule => self.schedule(t),
            }
        }
        // Whatever is still held at the end (always-on, long keep-alives) is released now.
        for f in 0..self.funcs.len() {
            let ids: Vec<InstanceId> = self.funcs[f]
                .sched
                .instances()
                .iter()
                .map(|i| i.id())
                .collect();
            for id in ids {
                self.gone(f as u32, id, end, &mut Effects::new());
            }
        }
    }

    fn arrive(&mut self, i: usize, t: Duration) {
        let r = self.trace.requests[i];
        let f = r.function;
        self.funcs[f as usize].requests += 1;
        self.funcs[f as usize].cursor += 1;
        let (reply, fx) = self.call(f, t, SchedEvent::Arrive);
        match reply {
            Reply::Acquire(Acquire::Now(g)) => {
                let dur = secs(r.duration_s);
                self.latencies.push(dur.as_secs_f64());
                self.push(t + dur, Event::Done(f, g.instance));
            }
            Reply::Acquire(Acquire::Queued(w)) => {
                self.funcs[f as usize]
                    .waiting
                    .insert(w, (t, secs(r.duration_s)));
                self.push(t + secs(self.cfg.queue_timeout_s), Event::Timeout(f, w));
            }
            Reply::Acquire(Acquire::Refused(reason)) => self.refuse(f, &reason),
            _ => {}
        }
        self.settle(f, t, fx);
        if self.funcs[f as usize].sched.waiting_for_card() {
            self.reclaim_for(f, t);
        }
    }

    /// As the server does under card pressure: another function's idle on-demand instance, the
    /// one idle longest, gives its card to `f`'s waiting requests (a simulated instance stops at
    /// once, and its card goes to the functions waiting).
    fn reclaim_for(&mut self, f: u32, t: Duration) {
        let now = self.at(t);
        let victim = self
            .funcs
            .iter()
            .enumerate()
            .filter(|(g, _)| *g != f as usize)
            .flat_map(|(g, func)| {
                func.sched
                    .reclaimable(now)
                    .into_iter()
                    .map(move |(id, idle)| (g, id, idle))
            })
            .max_by_key(|(_, _, idle)| *idle);
        if let Some((g, id, _)) = victim {
            let mut fx = Effects::new();
            if self.funcs[g].sched.reclaim(id, &mut fx) {
                self.settle(g as u32, t, fx);
            }
        }
    }

    /// A request got `reason` instead of a slot: it is not served (no latency, not in
    /// `requests`), and counted.
    fn refuse(&mut self, f: u32, reason: &Refusal<QuotaFull>) {
        let func = &mut self.funcs[f as usize];
        func.requests = func.requests.saturating_sub(1);
        func.refused += 1;
        if matches!(
            reason,
            Refusal::QueueTimeout {
                blocked: Some(QuotaFull),
                ..
            }
        ) {
            func.refused_for_quota += 1;
        }
    }

    fn tick(&mut self, f: u32, t: Duration) {
        let fx = self.tick_effects(f, t);
        self.settle(f, t, fx);
    }

    /// Ticks one function's scheduler at `t`, and queues its next tick where it asks for one.
    fn tick_effects(&mut self, f: u32, t: Duration) -> Effects<QuotaFull> {
        let (reply, fx) = self.call(f, t, SchedEvent::Tick);
        let next = match reply {
            Reply::Next(next) => next.map(|n| n.saturating_duration_since(self.base)),
            _ => None,
        };
        if next != self.funcs[f as usize].due {
            self.funcs[f as usize].due = next;
            if let Some(n) = next {
                self.push(n, Event::Tick(f));
            }
        }
        fx
    }

    /// Carries out one function's effects at `t`, and whatever they lead to.
    fn settle(&mut self, f: u32, t: Duration, fx: Effects<QuotaFull>) {
        let mut work: VecDeque<Effect<QuotaFull>> = fx.into();
        let mut wake = false;
        loop {
            while let Some(e) = work.pop_front() {
                let mut more = Effects::new();
                match e {
                    Effect::Grant { waiter, grant } => {
                        let func = &mut self.funcs[f as usize];
                        if let Some((arrival, dur)) = func.waiting.remove(&waiter) {
                            func.cold += u64::from(grant.cold);
                            self.latencies.push((t - arrival + dur).as_secs_f64());
                            self.push(t + dur, Event::Done(f, grant.instance));
                        }
                    }
                    Effect::Refuse { waiter, reason } => {
                        if self.funcs[f as usize].waiting.remove(&waiter).is_some() {
                            self.refuse(f, &reason);
                        }
                    }
                    Effect::Start { instance } => {
                        let load = match self.funcs[f as usize].planned_load.take() {
                            Some(load) => load,
                            None if self.policy == Policy::AlwaysOn => Duration::ZERO,
                            None => self.cold_start(),
                        };
                        self.draws += 1;
                        self.push(t + load, Event::Ready(f, instance));
                    }
                    // A simulated instance stops at once.
                    Effect::Stop { instance } => self.gone(f, instance, t, &mut more),
                    Effect::Bill(Bill::Busy {
                        period, memory_gb, ..
                    }) => {
                        let gb = f64::from(memory_gb);
                        self.active_billed_gb_s += period.billed_seconds as f64 * gb;
                        self.busy_gb_s += period.busy.as_secs_f64() * gb;
                    }
                    // Held time is billed when an instance goes, provisioned or not.
                    Effect::Bill(Bill::ProvisionedIdle { .. }) => {}
                    Effect::Wake => wake = true,
                    Effect::Idle => self.plan(f, t, &mut more),
                }
                work.extend(more);
            }
            if !wake {
                return;
            }
            wake = false;
            let fx = self.tick_effects(f, t);
            work.extend(fx);
        }
    }

    /// An instance is gone: its card is free, its held time billed; with a finite quota, functions
    /// waiting for a card may start one now.
    fn gone(&mut self, f: u32, id: InstanceId, t: Duration, fx: &mut Effects<QuotaFull>) {
        let now = self.at(t);
        let func = &self.funcs[f as usize];
        let Some(inst) = func.sched.instance(id) else {
            return;
        };
        let held = now.saturating_duration_since(inst.created());
        self.billed_gb_s += billed_seconds(held) as f64 * f64::from(func.memory_gb);
        self.fleet.live = self.fleet.live.saturating_sub(1);
        fx.extend(self.call(f, t, SchedEvent::Gone(id)).1);
        if self.cfg.quota_cards != u32::MAX {
            for g in 0..self.funcs.len() {
                if g != f as usize && self.funcs[g].sched.queued() > 0 {
                    let (_, more) = self.call(g as u32, t, SchedEvent::Rescale);
                    self.settle(g as u32, t, more);
                }
            }
        }
    }

    /// The oracle's plan for an idle period that begins at `t`: it knows the next arrival. Keeping
    /// warm costs the gap at the idle price; releasing costs a reload (the load time at the active
    /// price: the card is held and busy loading) and a cold start — unless it pre-warms, which it
    /// can, knowing the next load time too.
    fn plan(&mut self, f: u32, t: Duration, fx: &mut Effects<QuotaFull>) {
        let func = &self.funcs[f as usize];
        let plan = match func.arrivals.get(func.cursor) {
            None => IdlePlan {
                keep_alive: Duration::ZERO,
                prewarm: None,
            },
            Some(&next) => {
                let gap = next.saturating_sub(t);
                let break_even = self.cold_median * self.cfg.prices.active_usd_per_gb_s
                    / self.cfg.prices.idle_usd_per_gb_s.max(f64::MIN_POSITIVE);
                if gap.as_secs_f64() <= break_even {
                    IdlePlan {
                        keep_alive: gap + Duration::from_micros(1),
                        prewarm: None,
                    }
                } else {
                    let load = self.cold_start();
                    self.funcs[f as usize].planned_load = Some(load);
                    // Loads exactly that long before the arrival; a small grace covers rounding.
                    let start = next.saturating_sub(load).max(t);
                    IdlePlan {
                        keep_alive: Duration::ZERO,
                        prewarm: Some((self.at(start), self.at(next + Duration::from_secs(1)))),
                    }
                }
            }
        };
        fx.extend(self.call(f, t, SchedEvent::Plan(plan)).1);
    }

    fn result(mut self) -> SimResult {
        let requests: u64 = self.funcs.iter().map(|f| f.requests).sum();
        let cold: u64 = self.funcs.iter().map(|f| f.cold).sum();
        let mut per_fn: Vec<f64> = self
            .funcs
            .iter()
            .filter(|f| f.requests > 0)
            .map(|f| f.cold as f64 * 100.0 / f.requests as f64)
            .collect();
        per_fn.sort_by(f64::total_cmp);
        self.latencies.sort_by(f64::total_cmp);
        let pct = |v: &[f64], p: f64| -> f64 {
            if v.is_empty() {
                return 0.0;
            }
            v[(((v.len() - 1) as f64) * p).round() as usize]
        };
        let span_h = self.trace.requests.last().map_or(0.0, |r| r.t) / 3600.0;
        let cost = if self.policy == Policy::AlwaysOn {
            self.funcs.len() as f64 * span_h * self.cfg.dedicated_usd_per_hour
        } else {
            self.active_billed_gb_s * self.cfg.prices.active_usd_per_gb_s
                + (self.billed_gb_s - self.active_billed_gb_s).max(0.0)
                    * self.cfg.prices.idle_usd_per_gb_s
        };
        SimResult {
            policy: format!(
                "{}{}",
                self.policy.name(),
                target_suffix(&self.cfg, self.policy)
            ),
            requests,
            cold_starts: cold,
            cold_start_rate: if requests > 0 {
                cold as f64 / requests as f64
            } else {
                0.0
            },
            p75_function_cold_start_pct: pct(&per_fn, 0.75),
            p50_latency_s: pct(&self.latencies, 0.5),
            p99_latency_s: pct(&self.latencies, 0.99),
            busy_gb_seconds: self.busy_gb_s,
            billed_gb_seconds: self.billed_gb_s,
            efficiency: if self.billed_gb_s > 0.0 {
                self.busy_gb_s / self.billed_gb_s
            } else {
                0.0
            },
            active_billed_gb_seconds: self.active_billed_gb_s,
            cost_usd: cost,
            peak_cards: self.fleet.peak,
            refused: self.funcs.iter().map(|f| f.refused).sum(),
            refused_for_quota: self.funcs.iter().map(|f| f.refused_for_quota).sum(),
        }
    }
}

#[cfg(test)]
mod tests;
