//! The discrete-event simulation of gpufn's pools.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::{Duration, Instant};

use gpufn_metering::{BusyTracker, Prices, billed_seconds};
use gpufn_policy::{
    Demand, IdleHistogram, InstanceView, Limits, Windows, histogram_decision, instances_to_start,
    keep_alive,
};
use serde::Serialize;

use crate::trace::{Trace, unit};

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
            _ => match s.strip_prefix("fixed:").map(str::parse::<f64>) {
                Some(Ok(secs)) if secs.is_finite() && secs >= 0.0 => Ok(Policy::Fixed(secs)),
                _ => Err(format!(
                    "--policy: {s:?} is not one of zero, fixed:SECONDS, always-on, histogram, oracle"
                )),
            },
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
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Arrive(usize),
    Ready(u32, u64),
    Done(u32, u64),
    Check(u32),
    Prewarm(u32),
}

#[derive(Debug)]
struct Queued {
    t: f64,
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
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

#[derive(Debug)]
struct Inst {
    id: u64,
    started: f64,
    ready_at: f64,
    ready: bool,
    in_flight: u32,
    idle_since: f64,
    busy: BusyTracker,
    busy_exact: f64,
    busy_since: f64,
}

#[derive(Debug, Default)]
struct Func {
    memory_gb: u32,
    concurrency: u32,
    insts: Vec<Inst>,
    queue: VecDeque<(f64, f64)>,
    hist: IdleHistogram,
    idle_start: Option<f64>,
    idle_timeout: f64,
    arrivals: Vec<f64>,
    cursor: usize,
    requests: u64,
    cold: u64,
    /// The instance now loading or idle was pre-warmed for the current idle period.
    prewarmed: bool,
    /// The oracle's pre-warm: the load time it drew (and planned around).
    planned_load: Option<f64>,
}

struct Sim<'a> {
    trace: &'a Trace,
    cfg: SimConfig,
    policy: Policy,
    base: Instant,
    heap: BinaryHeap<Queued>,
    seq: u64,
    funcs: Vec<Func>,
    live_cards: u32,
    peak_cards: u32,
    next_inst: u64,
    latencies: Vec<f64>,
    busy_gb_s: f64,
    billed_gb_s: f64,
    active_billed_gb_s: f64,
    cold_median: f64,
}

/// Runs `policy` over `trace`.
pub fn simulate(trace: &Trace, policy: Policy, cfg: SimConfig) -> SimResult {
    let base_timeout = match policy {
        Policy::Zero | Policy::Oracle => 0.0,
        Policy::Fixed(s) => s,
        Policy::AlwaysOn => f64::INFINITY,
        Policy::Histogram => cfg.histogram_fallback_s,
    };
    let mut funcs: Vec<Func> = trace
        .functions
        .iter()
        .map(|f| Func {
            memory_gb: f.memory_gb,
            concurrency: f.concurrency.max(1),
            idle_timeout: base_timeout,
            ..Func::default()
        })
        .collect();
    for r in &trace.requests {
        if let Some(f) = funcs.get_mut(r.function as usize) {
            f.arrivals.push(r.t);
        }
    }
    let mut samples = trace.cold_start_samples.clone();
    samples.sort_by(f64::total_cmp);
    let cold_median = samples
        .get(samples.len() / 2)
        .copied()
        .unwrap_or(cfg.cold_start_s);
    let mut sim = Sim {
        trace,
        cfg,
        policy,
        base: Instant::now(),
        heap: BinaryHeap::new(),
        seq: 0,
        funcs,
        live_cards: 0,
        peak_cards: 0,
        next_inst: 0,
        latencies: Vec::with_capacity(trace.requests.len()),
        busy_gb_s: 0.0,
        billed_gb_s: 0.0,
        active_billed_gb_s: 0.0,
        cold_median,
    };
    sim.run();
    sim.result()
}

impl Sim<'_> {
    fn at(&self, t: f64) -> Instant {
        self.base + Duration::from_secs_f64(t.max(0.0))
    }

    fn push(&mut self, t: f64, ev: Event) {
        self.seq += 1;
        self.heap.push(Queued {
            t,
            ev,
            seq: self.seq,
        });
    }

    fn cold_start_s(&mut self) -> f64 {
        self.next_inst += 1;
        let s = &self.trace.cold_start_samples;
        if s.is_empty() {
            self.cfg.cold_start_s
        } else {
            let i = ((unit(self.next_inst) * s.len() as f64) as usize).min(s.len() - 1);
            s[i]
        }
    }

    fn run(&mut self) {
        if self.policy == Policy::AlwaysOn {
            for f in 0..self.funcs.len() {
                // A dedicated card, warm from the start, never released, never more than one.
                self.start_instance(f as u32, 0.0, Some(0.0));
                self.funcs[f].idle_timeout = f64::INFINITY;
            }
        }
        for (i, r) in self.trace.requests.iter().enumerate() {
            self.push(r.t, Event::Arrive(i));
        }
        let mut end = 0.0f64;
        while let Some(Queued { t, ev, .. }) = self.heap.pop() {
            end = end.max(t);
            match ev {
                Event::Arrive(i) => self.arrive(i, t),
                Event::Ready(f, id) => self.ready(f, id, t),
                Event::Done(f, id) => self.done(f, id, t),
                Event::Check(f) => self.check(f, t),
                Event::Prewarm(f) => self.prewarm(f, t),
            }
        }
        // Whatever is still held at the end (always-on, long keep-alives) is released now.
        for f in 0..self.funcs.len() {
            let ids: Vec<u64> = self.funcs[f].insts.iter().map(|i| i.id).collect();
            for id in ids {
                self.stop(f as u32, id, end);
            }
        }
    }

    fn limits(&self, f: usize) -> Limits {
        let func = &self.funcs[f];
        Limits {
            concurrency: func.concurrency,
            min_instances: 0,
            max_instances: if self.policy == Policy::AlwaysOn {
                1
            } else {
                self.cfg.max_instances
            },
        }
    }

    fn start_instance(&mut self, f: u32, t: f64, ready_in: Option<f64>) -> Option<u64> {
        if self.live_cards >= self.cfg.quota_cards {
            return None;
        }
        let load = match ready_in {
            Some(r) => r,
            None => self.cold_start_s(),
        };
        self.next_inst += 1;
        let id = self.next_inst;
        self.live_cards += 1;
        self.peak_cards = self.peak_cards.max(self.live_cards);
        self.funcs[f as usize].insts.push(Inst {
            id,
            started: t,
            ready_at: t + load,
            ready: false,
            in_flight: 0,
            idle_since: t + load,
            busy: BusyTracker::default(),
            busy_exact: 0.0,
            busy_since: 0.0,
        });
        self.push(t + load, Event::Ready(f, id));
        Some(id)
    }

    fn scale(&mut self, f: u32, t: f64) {
        let func = &self.funcs[f as usize];
        let mut d = Demand {
            queued: u32::try_from(func.queue.len()).unwrap_or(u32::MAX),
            ..Demand::default()
        };
        for i in &func.insts {
            if i.ready {
                d.ready += 1;
                d.in_flight += i.in_flight;
            } else {
                d.starting += 1;
            }
        }
        let n = instances_to_start(d, self.limits(f as usize));
        for _ in 0..n {
            if self.start_instance(f, t, None).is_none() {
                break;
            }
        }
    }

    fn arrive(&mut self, i: usize, t: f64) {
        let r = self.trace.requests[i];
        let f = r.function;
        let func = &mut self.funcs[f as usize];
        func.requests += 1;
        func.cursor += 1;
        if let Some(s) = func.idle_start.take() {
            func.hist.record(Duration::from_secs_f64((t - s).max(0.0)));
        }
        func.prewarmed = false;
        func.queue.push_back((t, r.duration_s));
        self.dispatch(f, t);
        if !self.funcs[f as usize].queue.is_empty() {
            self.scale(f, t);
        }
    }

    fn dispatch(&mut self, f: u32, t: f64) {
        loop {
            let func = &mut self.funcs[f as usize];
            let c = func.concurrency;
            let Some(inst) = func
                .insts
                .iter_mut()
                .filter(|i| i.ready && i.in_flight < c)
                .min_by_key(|i| i.in_flight)
            else {
                return;
            };
            let Some((arrival, dur)) = func.queue.pop_front() else {
                return;
            };
            if inst.ready_at > arrival {
                func.cold += 1;
            }
            if inst.in_flight == 0 {
                inst.busy_since = t;
            }
            inst.in_flight += 1;
            inst.busy
                .start(self.base + Duration::from_secs_f64(t.max(0.0)));
            let id = inst.id;
            self.latencies.push(t - arrival + dur);
            self.push(t + dur, Event::Done(f, id));
        }
    }

    fn ready(&mut self, f: u32, id: u64, t: f64) {
        if let Some(inst) = self.funcs[f as usize].insts.iter_mut().find(|i| i.id == id) {
            inst.ready = true;
            inst.idle_since = t;
        }
        self.dispatch(f, t);
        self.after_change(f, t);
    }

    fn done(&mut self, f: u32, id: u64, t: f64) {
        let at = self.at(t);
        let gb = f64::from(self.funcs[f as usize].memory_gb);
        if let Some(inst) = self.funcs[f as usize].insts.iter_mut().find(|i| i.id == id) {
            inst.in_flight -= 1;
            if let Some(p) = inst.busy.end(at) {
                self.active_billed_gb_s += p.billed_seconds as f64 * gb;
            }
            if inst.in_flight == 0 {
                inst.busy_exact += t - inst.busy_since;
                inst.idle_since = t;
            }
        }
        self.dispatch(f, t);
        self.after_change(f, t);
    }

    /// After an instance became ready or idle. When the whole function is idle, the policy decides
    /// how long to keep it; an idle instance beside busy ones expires on the policy's base timeout.
    fn after_change(&mut self, f: u32, t: f64) {
        let func = &self.funcs[f as usize];
        if func.insts.is_empty() {
            return;
        }
        let all_idle =
            func.queue.is_empty() && func.insts.iter().all(|i| i.ready && i.in_flight == 0);
        let timeout = if all_idle {
            if func.idle_start.is_none() {
                self.funcs[f as usize].idle_start = Some(t);
            }
            let timeout = self.decide(f, t);
            self.funcs[f as usize].idle_timeout = timeout;
            timeout
        } else if func.insts.iter().any(|i| i.ready && i.in_flight == 0) {
            self.base_timeout(f)
        } else {
            return;
        };
        if timeout.is_finite() {
            self.push(t + timeout, Event::Check(f));
        }
    }

    /// The keep-alive of an instance that is idle while others of its function work.
    fn base_timeout(&self, f: u32) -> f64 {
        match self.policy {
            Policy::Zero | Policy::Oracle => 0.0,
            Policy::Fixed(s) => s,
            Policy::AlwaysOn => f64::INFINITY,
            Policy::Histogram => self.funcs[f as usize].idle_timeout.max(0.0),
        }
    }

    /// The policy's keep-alive for an idle period that starts at `t` (and pre-warm scheduling).
    fn decide(&mut self, f: u32, t: f64) -> f64 {
        let func = &self.funcs[f as usize];
        match self.policy {
            Policy::Zero => 0.0,
            Policy::Fixed(s) => s,
            Policy::AlwaysOn => f64::INFINITY,
            Policy::Histogram if func.prewarmed => func.idle_timeout,
            Policy::Histogram => {
                // The live server's own decision function.
                let d = histogram_decision(
                    func.hist.windows(),
                    Duration::from_secs_f64(self.cfg.histogram_fallback_s),
                    Duration::from_secs_f64(self.cold_median),
                );
                if let Some((after, _)) = d.prewarm {
                    self.push(t + after.as_secs_f64(), Event::Prewarm(f));
                }
                d.keep_alive.as_secs_f64()
            }
            Policy::Oracle => {
                let Some(&next) = func.arrivals.get(func.cursor) else {
                    return 0.0;
                };
                let gap = next - t;
                // Keeping warm costs gap × idle price; releasing costs a reload: the load time at
                // the active price (the card is held and busy loading), and a cold start.
                let break_even = self.cold_median * self.cfg.prices.active_usd_per_gb_s
                    / self.cfg.prices.idle_usd_per_gb_s.max(f64::MIN_POSITIVE);
                if gap <= break_even {
                    gap + 1e-6
                } else {
                    // The oracle knows this start's load time too: it draws it now and starts
                    // loading exactly that long before the arrival.
                    let load = self.cold_start_s();
                    self.funcs[f as usize].planned_load = Some(load);
                    self.push((next - load).max(t), Event::Prewarm(f));
                    0.0
                }
            }
        }
    }

    fn prewarm(&mut self, f: u32, t: f64) {
        let func = &self.funcs[f as usize];
        if !func.insts.is_empty() || !func.queue.is_empty() {
            return;
        }
        let keep = match self.policy {
            Policy::Histogram => match func.hist.windows() {
                Windows::Histogram {
                    prewarm,
                    keep_alive,
                } => (keep_alive.saturating_sub(prewarm)).as_secs_f64() + self.cold_median,
                Windows::Fallback => self.cfg.histogram_fallback_s,
            },
            // The oracle loads just in time for a known arrival; a small grace covers rounding.
            _ => 1.0,
        };
        let planned = self.funcs[f as usize].planned_load.take();
        if self.start_instance(f, t, planned).is_some() {
            let func = &mut self.funcs[f as usize];
            func.idle_timeout = keep;
            func.prewarmed = true;
        }
    }

    fn check(&mut self, f: u32, t: f64) {
        let now = self.at(t);
        let func = &self.funcs[f as usize];
        let views: Vec<InstanceView> = func
            .insts
            .iter()
            .map(|i| InstanceView {
                starting: !i.ready,
                in_flight: i.in_flight,
                idle_since: self.at(i.idle_since),
            })
            .collect();
        let timeout = func.idle_timeout;
        if !timeout.is_finite() {
            return;
        }
        // Keep-alive is the live server's own function; the window comes from the policy.
        let decision = keep_alive(&views, 0, Duration::from_secs_f64(timeout.max(0.0)), now);
        let ids: Vec<u64> = decision.stop.iter().map(|&k| func.insts[k].id).collect();
        for id in ids {
            self.stop(f, id, t);
        }
        if !self.funcs[f as usize].queue.is_empty() {
            self.scale(f, t);
        }
    }

    fn stop(&mut self, f: u32, id: u64, t: f64) {
        let func = &mut self.funcs[f as usize];
        let Some(pos) = func.insts.iter().position(|i| i.id == id) else {
            return;
        };
        let inst = func.insts.remove(pos);
        let gb = f64::from(func.memory_gb);
        let held = Duration::from_secs_f64((t - inst.started).max(0.0));
        self.billed_gb_s += billed_seconds(held) as f64 * gb;
        self.busy_gb_s += inst.busy_exact * gb;
        self.live_cards = self.live_cards.saturating_sub(1);
        // A card came back: functions waiting for one may start now.
        if self.cfg.quota_cards != u32::MAX {
            for g in 0..self.funcs.len() {
                if !self.funcs[g].queue.is_empty() {
                    self.scale(g as u32, t);
                }
            }
        }
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
            policy: self.policy.name(),
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
            peak_cards: self.peak_cards,
        }
    }
}

#[cfg(test)]
mod tests;
