//! Scaling and keep-alive decisions as pure functions of a pool's state and `now`.
//!
//! Architecture invariant: nothing here does I/O, reads a clock or spawns anything. The scheduler
//! (`gpufn-sched`, driven by the server and by the trace simulator alike) gathers the counts, asks
//! these functions what to do, and returns the effects. That is why every decision is testable
//! in microseconds, without processes or sleeps.

pub mod provisioning;

use std::time::{Duration, Instant};

/// The counts a scale-up decision needs, for one function's current revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    /// Instances starting (allocated a card, not yet passing the health check).
    pub starting: u32,
    /// Instances ready to serve (idle or busy), not draining.
    pub ready: u32,
    /// Requests in flight on ready instances.
    pub in_flight: u32,
    /// Requests waiting for a slot.
    pub queued: u32,
}

/// The function's scaling limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Requests one instance may serve at once (>= 1).
    pub concurrency: u32,
    /// Provisioned instances kept at all times.
    pub min_instances: u32,
    /// Most instances of this function at once.
    pub max_instances: u32,
}

/// How many instances to start now so that every request in flight or waiting has a slot, at
/// least `min_instances` exist, and no more than `max_instances` do.
///
/// A burst of N queued requests starts enough instances for all N at once (not one per tick): cold
/// starts take tens of seconds, so starting them one after another would multiply the wait.
pub fn instances_to_start(d: Demand, l: Limits) -> u32 {
    let concurrency = l.concurrency.max(1);
    let live = d.starting.saturating_add(d.ready);
    let demand = d.in_flight.saturating_add(d.queued);
    let needed = demand.div_ceil(concurrency);
    let desired = needed.max(l.min_instances).min(l.max_instances);
    desired.saturating_sub(live)
}

/// An instance as the keep-alive policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceView {
    /// Starting instances are never stopped by keep-alive (a model may take minutes to load).
    pub starting: bool,
    /// Requests in flight.
    pub in_flight: u32,
    /// When the instance last became idle (or ready).
    pub idle_since: Instant,
}

/// What keep-alive decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeepAlive {
    /// Indexes (into the slice given) of the instances to stop now, longest idle first.
    pub stop: Vec<usize>,
    /// When to decide again if nothing changes before then.
    pub next_check: Option<Instant>,
}

/// Which idle instances have outlived `idle_timeout`, keeping `min_instances` alive.
///
/// Only ready instances with nothing in flight are candidates; starting ones never are
/// (scale-to-zero must not remove an instance that is still starting).
pub fn keep_alive(
    instances: &[InstanceView],
    min_instances: u32,
    idle_timeout: Duration,
    now: Instant,
) -> KeepAlive {
    let live = instances.len();
    let may_stop = live.saturating_sub(min_instances as usize);
    let mut expired: Vec<(Instant, usize)> = Vec::new();
    let mut next_check: Option<Instant> = None;
    for (i, inst) in instances.iter().enumerate() {
        if inst.starting || inst.in_flight > 0 {
            continue;
        }
        // A keep-alive past the end of time (`Duration::MAX`: always on) never expires.
        let Some(deadline) = inst.idle_since.checked_add(idle_timeout) else {
            continue;
        };
        if deadline <= now {
            expired.push((inst.idle_since, i));
        } else {
            next_check = Some(next_check.map_or(deadline, |n| n.min(deadline)));
        }
    }
    expired.sort();
    expired.truncate(may_stop);
    KeepAlive {
        stop: expired.into_iter().map(|(_, i)| i).collect(),
        next_check,
    }
}

#[cfg(test)]
mod tests;

/// Idle times between a function's invocations, in [`IdleHistogram::BINS`] bins (one minute wide
/// by default: up to four hours): the hybrid histogram policy of "Serverless in the Wild"
/// (Shahrad et al., ATC'20).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdleHistogram {
    bins: Vec<u32>,
    out_of_bounds: u32,
    bin: Duration,
}

/// What the histogram policy decided for the next idle period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Release once idle, load again `prewarm` after the idle period began, keep it until
    /// `keep_alive` after the idle period began.
    Histogram {
        /// Head of the idle-time distribution (5th percentile, minus a 10 % margin).
        prewarm: Duration,
        /// Tail of the distribution (99th percentile, plus a 10 % margin).
        keep_alive: Duration,
    },
    /// Too few idle times seen, too spread out, or too many past four hours: a fixed keep-alive.
    Fallback,
}

impl Default for IdleHistogram {
    fn default() -> Self {
        Self::new(Duration::from_secs(60))
    }
}

impl IdleHistogram {
    /// Bins in the histogram: four hours of one-minute bins by default.
    pub const BINS: usize = 240;

    /// An empty histogram with bins `bin` wide (at least a millisecond).
    pub fn new(bin: Duration) -> Self {
        Self {
            bins: vec![0; Self::BINS],
            out_of_bounds: 0,
            bin: bin.max(Duration::from_millis(1)),
        }
    }

    /// The width of one bin.
    pub fn bin(&self) -> Duration {
        self.bin
    }
    /// Below this many idle times the histogram is not representative.
    pub const MIN_SAMPLES: u32 = 10;

    /// Records one idle time (from the end of one busy period to the next arrival).
    pub fn record(&mut self, idle: Duration) {
        let index = usize::try_from(idle.as_nanos() / self.bin.as_nanos()).unwrap_or(usize::MAX);
        match self.bins.get_mut(index) {
            Some(b) => *b += 1,
            None => self.out_of_bounds += 1,
        }
    }

    /// Idle times recorded.
    pub fn samples(&self) -> u32 {
        self.bins.iter().sum::<u32>() + self.out_of_bounds
    }

    /// The windows for the next idle period. Representative means: at least
    /// [`Self::MIN_SAMPLES`] idle times, at most 10 % of them past the range, and the bin counts'
    /// coefficient of variation at least 2 (the idle times cluster rather than spread evenly).
    pub fn windows(&self) -> Windows {
        let total = self.samples();
        if total < Self::MIN_SAMPLES || self.out_of_bounds * 10 > total {
            return Windows::Fallback;
        }
        let n = self.bins.len() as f64;
        let in_range: u32 = self.bins.iter().sum();
        let mean = f64::from(in_range) / n;
        let var = self
            .bins
            .iter()
            .map(|&b| (f64::from(b) - mean).powi(2))
            .sum::<f64>()
            / n;
        if mean == 0.0 || var.sqrt() / mean < 2.0 {
            return Windows::Fallback;
        }
        let percentile = |p: f64| -> usize {
            let target = (f64::from(in_range) * p).ceil().max(1.0) as u32;
            let mut seen = 0;
            for (i, &b) in self.bins.iter().enumerate() {
                seen += b;
                if seen >= target {
                    return i;
                }
            }
            self.bins.len() - 1
        };
        // Bin i holds idle times in [i, i+1) bins: the head is the bin's start, the tail its end.
        let head = self.bin.mul_f64(percentile(0.05) as f64 * 0.9);
        let tail = self.bin.mul_f64((percentile(0.99) + 1) as f64 * 1.1);
        Windows::Histogram {
            prewarm: head,
            keep_alive: tail,
        }
    }
}

/// What the histogram policy does when a function goes idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistogramDecision {
    /// How long idle instances are kept now (zero: release at once).
    pub keep_alive: Duration,
    /// Pre-warm: start one instance this long after the idle period began, and keep it until
    /// `.1` after the idle period began.
    pub prewarm: Option<(Duration, Duration)>,
}

/// The hybrid histogram policy's decision for an idle period, given the windows, the fixed
/// keep-alive to fall back on, and how long a start takes (`load`). Unloading only pays when the
/// head of the idle-time distribution is longer than a reload; otherwise instances are simply
/// kept until the tail.
pub fn histogram_decision(
    windows: Windows,
    fallback: Duration,
    load: Duration,
) -> HistogramDecision {
    match windows {
        Windows::Fallback => HistogramDecision {
            keep_alive: fallback,
            prewarm: None,
        },
        Windows::Histogram {
            prewarm,
            keep_alive,
        } if prewarm > load => HistogramDecision {
            keep_alive: Duration::ZERO,
            prewarm: Some((prewarm - load, keep_alive)),
        },
        Windows::Histogram { keep_alive, .. } => HistogramDecision {
            keep_alive,
            prewarm: None,
        },
    }
}

/// The predictive keep-alive policy: for each idle period, the choice among "release at once",
/// "keep warm for k" and "release, then pre-warm to be ready at a and keep until b" that costs
/// least over the function's recent idle gaps, where an idle period costs the seconds a card is
/// held plus `cold_cost_s` for each cold start (and a cold start also holds the card for the load).
///
/// Why this beats any fixed keep-alive: a fixed timeout is one number for every function; this
/// chooses per function, against the same price of a cold start for all of them, which is the
/// Lagrangian form of "fewest cold starts for the card-seconds spent" — a function with long,
/// regular gaps is released and pre-warmed (the oracle's move, from its own history instead of
/// the future), a busy one is kept, a random one is kept only as long as its gaps say pays.
/// `load`: the function's measured cold-start time, so a pre-warm starts early enough.
pub fn predictive_decision(
    gaps: &[Duration],
    load: Duration,
    cold_cost_s: f64,
    fallback: Duration,
) -> HistogramDecision {
    if gaps.len() < PREDICTIVE_MIN_SAMPLES {
        return HistogramDecision {
            keep_alive: fallback,
            prewarm: None,
        };
    }
    let mut g: Vec<f64> = gaps.iter().map(Duration::as_secs_f64).collect();
    g.sort_by(f64::total_cmp);
    let n = g.len();
    let nf = n as f64;
    let l = load.as_secs_f64();
    let lambda = cold_cost_s.max(0.0);
    // prefix[i] = sum of the i smallest gaps.
    let mut prefix = vec![0.0; n + 1];
    for (i, x) in g.iter().enumerate() {
        prefix[i + 1] = prefix[i] + x;
    }
    let below = |x: f64| g.partition_point(|y| *y < x);
    let upto = |x: f64| g.partition_point(|y| *y <= x);
    // Keep idle instances for `k`, then (optionally) start one at `a` (ready at a + l) and keep
    // it until `b`. Per gap: up to k warm, held for it; until ready cold (held k, then the load);
    // until b warm, held k and from a; later cold, held k, b - a and the load.
    let cost = |k: f64, window: Option<(f64, f64)>| -> f64 {
        let i1 = upto(k);
        let (i2, i3, a, b) = match window {
            Some((a, b)) => (below(a + l).max(i1), upto(b).max(i1), a, b),
            None => (n, n, 0.0, 0.0),
        };
        let cold = (i2 - i1) + (n - i3);
        let held = prefix[i1] + (n - i1) as f64 * k + (prefix[i3] - prefix[i2])
            - (i3 - i2) as f64 * a
            + (n - i3) as f64 * (b - a)
            + cold as f64 * l;
        (held + lambda * cold as f64) / nf
    };
    // Candidate points: at most PREDICTIVE_CANDIDATES gaps, spread over the sorted ones (the
    // cost of each choice still weighs every gap).
    let step = n.div_ceil(PREDICTIVE_CANDIDATES).max(1);
    let points: Vec<f64> = g
        .iter()
        .copied()
        .step_by(step)
        .chain(g.last().copied())
        .collect();
    let keeps: Vec<f64> = std::iter::once(0.0)
        .chain(points.iter().map(|x| x * 1.05 + 0.5))
        .collect();
    let mut best = (cost(0.0, None), 0.0, None);
    for &k in &keeps {
        let c = cost(k, None);
        if c < best.0 {
            best = (c, k, None);
        }
    }
    // Windows: ready just before one gap, kept just past another; with the best keep below
    // its start.
    for (p, gp) in points.iter().enumerate() {
        let a = gp * 0.95 - 0.5 - l;
        if a <= 0.0 {
            continue;
        }
        for gq in &points[p..] {
            let b = gq * 1.05 + 0.5;
            for &k in keeps.iter().take_while(|k| **k < a) {
                let c = cost(k, Some((a, b)));
                if c < best.0 {
                    best = (c, k, Some((a, b)));
                }
            }
        }
    }
    HistogramDecision {
        keep_alive: secs_f64(best.1),
        prewarm: best.2.map(|(a, b)| (secs_f64(a), secs_f64(b))),
    }
}

/// Idle gaps the predictive policy needs before it decides by them (before: the fallback).
pub const PREDICTIVE_MIN_SAMPLES: usize = 4;
/// Idle gaps it remembers per function (the most recent ones).
pub const PREDICTIVE_SAMPLES: usize = 512;
/// Candidate keep-alives and window edges it weighs per decision.
pub const PREDICTIVE_CANDIDATES: usize = 24;
/// Of those, the ones whose preceding gap was most like the last one decide (consecutive idle
/// gaps are correlated: after a short one, a short one is likelier).
pub const PREDICTIVE_NEIGHBOURS: usize = 24;

fn secs_f64(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

/// A keep-alive decision in words, for `gpufn get` and the console: what happens to idle
/// instances and why; with `idle_for`, where the current idle period stands.
pub fn explain(d: HistogramDecision, learned: bool, idle_for: Option<Duration>) -> String {
    if !learned {
        return format!(
            "keeps idle instances {} (learning: too few idle gaps seen yet)",
            human(d.keep_alive)
        );
    }
    let keep = if d.keep_alive.is_zero() {
        "releases idle instances at once".to_string()
    } else {
        format!("keeps idle instances {}", human(d.keep_alive))
    };
    match d.prewarm {
        None if d.keep_alive.is_zero() => {
            format!("{keep}: the next call is not expected soon enough to pay for keeping one")
        }
        None => format!("{keep}: the function's recent gaps mostly end within it"),
        Some((at, until)) => {
            let mut text = format!(
                "{keep}, then pre-warms one {} after the last call (the next call is expected \
                 from then), kept until {}",
                human(at),
                human(until)
            );
            match idle_for {
                Some(t) if t < at => text.push_str(&format!(
                    "; idle {}: pre-warm in {}",
                    human(t),
                    human(at - t)
                )),
                Some(t) if t <= until => {
                    text.push_str(&format!("; idle {}: pre-warmed now", human(t)))
                }
                Some(t) => text.push_str(&format!(
                    "; idle {}: the expected call did not come (a miss)",
                    human(t)
                )),
                None => {}
            }
            text
        }
    }
}

/// `41 min`, `2.4 s`, `1.5 h`.
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 90.0 {
        format!("{s:.1} s")
    } else if s < 5400.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}
