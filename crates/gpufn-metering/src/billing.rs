//! Busy periods, per-second rounding and prices.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Prices in USD per GB-second of GPU memory.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// While at least one request is in flight (the seed's reference: 0.000018).
    pub active_usd_per_gb_s: f64,
    /// Provisioned instances while idle (Function Compute's idle GPU price: 0.000007).
    pub idle_usd_per_gb_s: f64,
}

impl Default for Prices {
    fn default() -> Self {
        Self {
            active_usd_per_gb_s: 0.000_018,
            idle_usd_per_gb_s: 0.000_007,
        }
    }
}

/// Whole seconds billed for a busy period: its length rounded up.
pub fn billed_seconds(busy: Duration) -> u64 {
    let secs = busy.as_secs();
    if busy.subsec_nanos() > 0 {
        secs + 1
    } else {
        secs
    }
}

/// A finished busy period of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedPeriod {
    /// When the first request of the period started.
    pub start: Instant,
    /// How long at least one request was in flight.
    pub busy: Duration,
    /// Requests that started in the period.
    pub requests: u64,
    /// Whole seconds this period adds to the bill: its length rounded up, less what an earlier
    /// period's rounding already paid for (see [`BusyTracker`]).
    pub billed_seconds: u64,
}

/// Follows the requests in flight on one instance and cuts busy periods.
///
/// Per-second billing rounds busy time up to whole seconds, but not each period on its own: a
/// period that starts inside the second(s) the previous one was already billed for only adds the
/// seconds it runs past them. Rounding every period separately billed a busy instance with
/// sub-millisecond gaps between requests one second per gap — hundreds of billed seconds per
/// second of wall time under load. With the carried-over window, what an instance is billed never
/// exceeds its busy span rounded up to a second, and one isolated period is billed exactly as
/// `billed_seconds(busy)`.
#[derive(Debug, Clone, Default)]
pub struct BusyTracker {
    in_flight: u32,
    open: Option<(Instant, u64)>,
    /// The end of the time already billed: the last period's start plus its rounded-up length.
    paid_until: Option<Instant>,
    billed_total: u64,
    busy_total: Duration,
}

impl BusyTracker {
    /// A request started at `now`.
    pub fn start(&mut self, now: Instant) {
        self.in_flight += 1;
        match &mut self.open {
            Some((_, requests)) => *requests += 1,
            None => self.open = Some((now, 1)),
        }
    }

    /// A request ended at `now`; returns the period if this was the last one in flight.
    pub fn end(&mut self, now: Instant) -> Option<ClosedPeriod> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight > 0 {
            return None;
        }
        self.close(now)
    }

    /// Closes the open period whatever is in flight (the instance is gone).
    pub fn close(&mut self, now: Instant) -> Option<ClosedPeriod> {
        let (start, requests) = self.open.take()?;
        self.in_flight = 0;
        let busy = now.saturating_duration_since(start);
        let (billed, paid_until) = self.bill(start, now);
        self.paid_until = Some(paid_until);
        self.billed_total += billed;
        self.busy_total += busy;
        Some(ClosedPeriod {
            start,
            busy,
            requests,
            billed_seconds: billed,
        })
    }

    /// Seconds a period from `start` to `end` adds to the bill, and the new end of billed time.
    fn bill(&self, start: Instant, end: Instant) -> (u64, Instant) {
        match self.paid_until {
            Some(until) if start < until => {
                let extra = billed_seconds(end.saturating_duration_since(until));
                (extra, until + Duration::from_secs(extra))
            }
            _ => {
                let secs = billed_seconds(end.saturating_duration_since(start));
                (secs, start + Duration::from_secs(secs))
            }
        }
    }

    /// The open period so far, as if it closed at `now` (for live reports).
    pub fn open_period(&self, now: Instant) -> Option<ClosedPeriod> {
        let (start, requests) = self.open?;
        let busy = now.saturating_duration_since(start);
        Some(ClosedPeriod {
            start,
            busy,
            requests,
            billed_seconds: self.bill(start, now).0,
        })
    }

    /// Seconds billed for closed periods so far.
    pub fn billed_total(&self) -> u64 {
        self.billed_total
    }

    /// Busy time of closed periods so far.
    pub fn busy_total(&self) -> Duration {
        self.busy_total
    }
}

/// Merges one instance's closed busy periods that start within `window` of the first into one
/// metering record.
///
/// An instance under load closes a busy period whenever its last request in flight ends: with one
/// caller at a time that is every request. Writing each period to the store cost a SQLite row per
/// request (and, batched, an fsync every few hundred): thousands of rows per second for one busy
/// instance, and a wake-up of the meter thread on the request path. A batch sums the periods'
/// busy time, requests and billed seconds, so every total (and the bill) is unchanged; only the
/// record's start time is coarser, by less than `window`.
#[derive(Debug, Clone)]
pub struct PeriodBatch {
    window: Duration,
    pending: Option<ClosedPeriod>,
}

impl PeriodBatch {
    /// Batches periods starting within `window` of a batch's first.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            pending: None,
        }
    }

    /// Adds a closed period; returns the batch it completes when the period starts past the
    /// pending batch's window (the period then starts the next batch).
    pub fn push(&mut self, p: ClosedPeriod) -> Option<ClosedPeriod> {
        match &mut self.pending {
            Some(b) if p.start < b.start + self.window => {
                b.busy += p.busy;
                b.requests += p.requests;
                b.billed_seconds += p.billed_seconds;
                None
            }
            _ => self.pending.replace(p),
        }
    }

    /// The pending batch, once no later period can join it (`now` is past its window).
    pub fn take_due(&mut self, now: Instant) -> Option<ClosedPeriod> {
        match self.due_at() {
            Some(at) if now >= at => self.pending.take(),
            _ => None,
        }
    }

    /// The pending batch whatever its window (the instance is gone).
    pub fn take(&mut self) -> Option<ClosedPeriod> {
        self.pending.take()
    }

    /// When the pending batch stops taking periods.
    pub fn due_at(&self) -> Option<Instant> {
        self.pending.as_ref().map(|b| b.start + self.window)
    }

    /// The pending batch: billed, not yet recorded.
    pub fn pending(&self) -> Option<&ClosedPeriod> {
        self.pending.as_ref()
    }
}

/// What one instance costs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct InstanceBill {
    /// Active seconds billed (busy periods, each rounded up).
    pub billed_seconds: u64,
    /// `billed_seconds × memory_gb`.
    pub gb_seconds: f64,
    /// Provisioned only: the rest of the lifetime (rounded up) × `memory_gb`.
    pub idle_gb_seconds: f64,
    /// USD.
    pub cost_usd: f64,
}

impl InstanceBill {
    /// Bills an instance: on-demand instances pay for busy time only; provisioned ones also pay
    /// the idle price for the rest of their `lifetime`.
    pub fn new(
        billed_seconds: u64,
        memory_gb: u32,
        provisioned_lifetime: Option<Duration>,
        prices: Prices,
    ) -> Self {
        let gb = f64::from(memory_gb);
        let idle_seconds = provisioned_lifetime.map_or(0, |life| {
            billed_seconds_for_lifetime(life).saturating_sub(billed_seconds)
        });
        let gb_seconds = billed_seconds as f64 * gb;
        let idle_gb_seconds = idle_seconds as f64 * gb;
        Self {
            billed_seconds,
            gb_seconds,
            idle_gb_seconds,
            cost_usd: gb_seconds * prices.active_usd_per_gb_s
                + idle_gb_seconds * prices.idle_usd_per_gb_s,
        }
    }
}

fn billed_seconds_for_lifetime(life: Duration) -> u64 {
    billed_seconds(life)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn rounding_is_up_to_the_next_whole_second() {
        let cases = [
            (0, 0),
            (1, 1),
            (999, 1),
            (1000, 1),
            (1001, 2),
            (2500, 3),
            (60_000, 60),
        ];
        for (millis, want) in cases {
            assert_eq!(billed_seconds(ms(millis)), want, "{millis} ms");
        }
        assert_eq!(billed_seconds(Duration::from_nanos(1)), 1);
    }

    #[test]
    fn overlapping_requests_are_billed_once() {
        let t0 = Instant::now();
        let mut b = BusyTracker::default();
        b.start(t0); // A: 0.0 .. 1.5
        b.start(t0 + ms(500)); // B: 0.5 .. 1.2
        assert_eq!(b.end(t0 + ms(1200)), None, "A still in flight");
        let p = b.end(t0 + ms(1500)).expect("period closes");
        assert_eq!((p.busy, p.requests, p.billed_seconds), (ms(1500), 2, 2));
        // Two separate short requests a second apart are two periods, each rounded up.
        b.start(t0 + ms(3000));
        assert_eq!(b.end(t0 + ms(3100)).map(|p| p.billed_seconds), Some(1));
        b.start(t0 + ms(4000));
        assert_eq!(b.end(t0 + ms(4100)).map(|p| p.billed_seconds), Some(1));
        assert_eq!(b.billed_total(), 4);
        assert_eq!(b.busy_total(), ms(1700));
    }

    #[test]
    fn short_periods_inside_an_already_billed_second_add_nothing() {
        let t0 = Instant::now();
        let mut b = BusyTracker::default();
        // 1 000 requests of 0.5 ms, one every millisecond: 1 s of wall time, 1 000 periods.
        let mut billed = Vec::new();
        for i in 0..1000 {
            b.start(t0 + Duration::from_micros(i * 1000));
            let p = b
                .end(t0 + Duration::from_micros(i * 1000 + 500))
                .expect("period");
            billed.push(p.billed_seconds);
        }
        assert_eq!(billed[0], 1, "the first period pays for its second");
        assert_eq!(billed.iter().sum::<u64>(), 1, "the others fall inside it");
        // A period that runs past the paid second pays only for the seconds it adds.
        b.start(t0 + ms(999));
        assert_eq!(
            b.open_period(t0 + ms(2500)).map(|p| p.billed_seconds),
            Some(2)
        );
        assert_eq!(b.end(t0 + ms(2500)).map(|p| p.billed_seconds), Some(2));
        assert_eq!(b.billed_total(), 3);
    }

    #[test]
    fn closing_an_instance_closes_its_open_period() {
        let t0 = Instant::now();
        let mut b = BusyTracker::default();
        b.start(t0);
        assert_eq!(
            b.open_period(t0 + ms(2100)).map(|p| p.billed_seconds),
            Some(3)
        );
        let p = b.close(t0 + ms(2100)).expect("closed");
        assert_eq!(p.billed_seconds, 3);
        assert_eq!(b.close(t0 + ms(3000)), None, "nothing left open");
    }

    #[test]
    fn on_demand_pays_busy_time_and_provisioned_also_pays_idle_time() {
        let p = Prices::default();
        let on_demand = InstanceBill::new(10, 4, None, p);
        assert_eq!(on_demand.gb_seconds, 40.0);
        assert_eq!(on_demand.idle_gb_seconds, 0.0);
        assert!((on_demand.cost_usd - 40.0 * 0.000_018).abs() < 1e-12);
        // Provisioned for 100.5 s (billed 101 s), 10 s of it busy: 91 s idle.
        let provisioned = InstanceBill::new(10, 4, Some(ms(100_500)), p);
        assert_eq!(provisioned.idle_gb_seconds, 364.0);
        let want = 40.0 * 0.000_018 + 364.0 * 0.000_007;
        assert!((provisioned.cost_usd - want).abs() < 1e-12);
    }

    #[test]
    fn periods_within_a_window_make_one_record_with_the_same_totals() {
        let t0 = Instant::now();
        let mut b = BusyTracker::default();
        let mut batch = PeriodBatch::new(Duration::from_secs(1));
        let mut records = Vec::new();
        // 3 000 requests of 0.5 ms, one every millisecond: 3 s of wall time, 3 000 periods.
        for i in 0..3000 {
            b.start(t0 + Duration::from_micros(i * 1000));
            let p = b
                .end(t0 + Duration::from_micros(i * 1000 + 500))
                .expect("period");
            records.extend(batch.push(p));
        }
        assert_eq!(
            records.len(),
            2,
            "one record per second of periods, the last pending"
        );
        assert_eq!(batch.take_due(t0 + ms(2999)), None, "still taking periods");
        assert_eq!(batch.due_at(), Some(t0 + ms(3000)));
        records.extend(batch.take_due(t0 + ms(3000)));
        assert_eq!(batch.pending(), None);
        assert_eq!(records.len(), 3);
        assert_eq!(records.iter().map(|r| r.requests).sum::<u64>(), 3000);
        assert_eq!(records[0].start, t0);
        assert_eq!(records[1].start, t0 + ms(1000));
        assert_eq!(records[0].busy, ms(500), "1 000 periods of 0.5 ms");
        let billed: u64 = records.iter().map(|r| r.billed_seconds).sum();
        assert_eq!(billed, b.billed_total());
        // An isolated period is its own record, once its window has passed or the instance is gone.
        b.start(t0 + ms(10_000));
        let p = b.end(t0 + ms(10_200)).expect("period");
        assert_eq!(batch.push(p), None);
        assert_eq!(batch.take(), Some(p));
    }

    proptest! {
        /// For any pattern of requests on one instance: the bill covers the busy time and each
        /// period adds less than one second beyond its own busy time, the total never exceeds the
        /// span of the requests rounded up, overlaps are billed once, and every request counts.
        #[test]
        fn billed_covers_busy_time_and_never_exceeds_the_span(
            reqs in proptest::collection::vec((0u64..20_000, 1u64..5_000), 1..40),
            window in (1u64..5_000).prop_map(ms),
        ) {
            let t0 = Instant::now();
            // Events: (time, +1 start / -1 end), ends before starts at the same instant.
            let mut events: Vec<(u64, i8)> = Vec::new();
            for (start, len) in &reqs {
                events.push((*start, 1));
                events.push((start + len, -1));
            }
            events.sort_by_key(|&(t, kind)| (t, kind));
            let mut b = BusyTracker::default();
            let mut periods = Vec::new();
            for (t, kind) in events {
                let now = t0 + ms(t);
                if kind > 0 { b.start(now) } else if let Some(p) = b.end(now) { periods.push(p) }
            }
            let requests: u64 = periods.iter().map(|p| p.requests).sum();
            prop_assert_eq!(requests, reqs.len() as u64);
            let span = reqs.iter().map(|(s, l)| s + l).max().unwrap_or(0)
                - reqs.iter().map(|(s, _)| *s).min().unwrap_or(0);
            let busy: Duration = periods.iter().map(|p| p.busy).sum();
            prop_assert!(busy <= ms(span));
            let billed: u64 = periods.iter().map(|p| p.billed_seconds).sum();
            prop_assert_eq!(billed, b.billed_total());
            prop_assert!(Duration::from_secs(billed) >= busy);
            prop_assert!(billed <= billed_seconds(ms(span)));
            for p in &periods {
                prop_assert!(Duration::from_secs(p.billed_seconds) < p.busy + Duration::from_secs(1));
            }
            // Batching the periods keeps every total.
            let mut batch = PeriodBatch::new(window);
            let mut records: Vec<ClosedPeriod> =
                periods.iter().filter_map(|p| batch.push(*p)).collect();
            records.extend(batch.take());
            prop_assert!(records.len() <= periods.len());
            prop_assert_eq!(records.iter().map(|r| r.requests).sum::<u64>(), requests);
            prop_assert_eq!(records.iter().map(|r| r.billed_seconds).sum::<u64>(), billed);
            prop_assert_eq!(records.iter().map(|r| r.busy).sum::<Duration>(), busy);
        }
    }
}
