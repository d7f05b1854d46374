//! Scaling and keep-alive decisions as pure functions of a pool's state and `now`.
//!
//! Architecture invariant: nothing here does I/O, reads a clock or spawns anything. The scheduler
//! (`gpufn-sched`, driven by the server and by the trace simulator alike) gathers the counts, asks
//! these functions what to do, and returns the effects. That is why every decision is testable
//! in microseconds, without processes or sleeps.

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
