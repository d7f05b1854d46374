use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

const L1: Limits = Limits {
    concurrency: 1,
    min_instances: 0,
    max_instances: 30,
};

fn demand(starting: u32, ready: u32, in_flight: u32, queued: u32) -> Demand {
    Demand {
        starting,
        ready,
        in_flight,
        queued,
    }
}

#[test]
fn scale_up_table() {
    let c4 = Limits {
        concurrency: 4,
        ..L1
    };
    let min2 = Limits {
        min_instances: 2,
        ..L1
    };
    let max3 = Limits {
        max_instances: 3,
        ..L1
    };
    // (demand, limits, instances to start)
    let cases = [
        (demand(0, 0, 0, 0), L1, 0),   // nothing to do at zero
        (demand(0, 0, 0, 1), L1, 1),   // first request at zero: one cold start
        (demand(1, 0, 0, 1), L1, 0),   // already starting for it
        (demand(0, 0, 0, 50), L1, 30), // a burst starts all it needs at once, up to max
        (demand(0, 0, 0, 50), max3, 3),
        (demand(0, 3, 3, 47), max3, 0), // at max: wait for slots
        (demand(0, 1, 1, 1), L1, 1),    // the only instance is busy
        (demand(0, 1, 3, 0), c4, 0),    // a free slot remains
        (demand(0, 1, 4, 1), c4, 1),    // full: one more
        (demand(0, 1, 4, 5), c4, 2),    // 9 requests need 3 instances of 4
        (demand(0, 0, 0, 0), min2, 2),  // provisioned instances
        (demand(1, 1, 0, 0), min2, 0),
        (demand(0, 5, 0, 0), L1, 0), // never negative
    ];
    for (d, l, want) in cases {
        assert_eq!(instances_to_start(d, l), want, "{d:?} {l:?}");
    }
}

proptest! {
    #[test]
    fn scale_up_never_passes_max_and_covers_demand(
        starting in 0u32..40, ready in 0u32..40, in_flight in 0u32..400, queued in 0u32..400,
        concurrency in 1u32..10, min in 0u32..5, max in 5u32..40,
    ) {
        let d = demand(starting, ready, in_flight, queued);
        let l = Limits { concurrency, min_instances: min, max_instances: max };
        let n = instances_to_start(d, l);
        let live = starting + ready;
        if n > 0 {
            prop_assert!(live + n <= max);
        }
        // After starting, either there is room for every request or the function is at max.
        let total = live + n;
        prop_assert!(total >= max || total * concurrency >= in_flight + queued);
        prop_assert!(total >= min.min(max));
    }
}

fn idle(t0: Instant, secs: u64) -> InstanceView {
    InstanceView {
        starting: false,
        in_flight: 0,
        idle_since: t0 + Duration::from_secs(secs),
    }
}

#[test]
fn keep_alive_stops_only_expired_idle_instances() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(300);
    let insts = [
        idle(t0, 0),
        InstanceView {
            in_flight: 1,
            ..idle(t0, 0)
        },
        InstanceView {
            starting: true,
            ..idle(t0, 0)
        },
        idle(t0, 100),
    ];
    // Before any deadline: nothing, and look again at the first deadline.
    let k = keep_alive(&insts, 0, timeout, t0 + Duration::from_secs(299));
    assert_eq!(k.stop, Vec::<usize>::new());
    assert_eq!(k.next_check, Some(t0 + timeout));
    // At the deadline the first idle one goes; busy and starting ones never do.
    let k = keep_alive(&insts, 0, timeout, t0 + timeout);
    assert_eq!(k.stop, vec![0]);
    assert_eq!(k.next_check, Some(t0 + Duration::from_secs(400)));
    let k = keep_alive(&insts, 0, timeout, t0 + Duration::from_secs(10_000));
    assert_eq!(k.stop, vec![0, 3]);
    assert_eq!(k.next_check, None);
}

#[test]
fn keep_alive_keeps_min_instances_and_stops_longest_idle_first() {
    let t0 = Instant::now();
    let insts = [idle(t0, 5), idle(t0, 1), idle(t0, 3)];
    let later = t0 + Duration::from_secs(1000);
    let k = keep_alive(&insts, 1, Duration::from_secs(60), later);
    assert_eq!(k.stop, vec![1, 2]);
    let k = keep_alive(&insts, 3, Duration::from_secs(60), later);
    assert!(k.stop.is_empty());
    // Zero idle timeout: release as soon as idle.
    let k = keep_alive(&insts, 0, Duration::ZERO, t0 + Duration::from_secs(5));
    assert_eq!(k.stop, vec![1, 2, 0]);
}

#[test]
fn keep_alive_at_zero_instances_has_nothing_to_do() {
    let k = keep_alive(&[], 0, Duration::from_secs(1), Instant::now());
    assert_eq!(k, KeepAlive::default());
}

#[test]
fn the_histogram_policy_needs_a_representative_histogram() {
    let mut h = IdleHistogram::default();
    for _ in 0..9 {
        h.record(Duration::from_secs(30 * 60 + 5));
    }
    assert_eq!(h.windows(), Windows::Fallback, "9 samples are not enough");
    h.record(Duration::from_secs(30 * 60 + 5));
    // All idle times in minute 30: pre-warm at 90 % of 30 min, keep until 110 % of 31 min.
    assert_eq!(
        h.windows(),
        Windows::Histogram {
            prewarm: Duration::from_secs(27 * 60),
            keep_alive: Duration::from_secs(31 * 66),
        }
    );
    // Idle times spread evenly over the range: not representative.
    let mut even = IdleHistogram::default();
    for m in 0..240 {
        even.record(Duration::from_secs(m * 60));
    }
    assert_eq!(even.windows(), Windows::Fallback);
    // Mostly beyond four hours: not representative either.
    let mut far = IdleHistogram::default();
    for _ in 0..20 {
        far.record(Duration::from_secs(5 * 3600));
    }
    assert_eq!(far.windows(), Windows::Fallback);
}

#[test]
fn the_bin_width_scales_the_windows() {
    // One-second bins (a function called every few seconds): idle times of 3.5 s fall in bin 3.
    let mut h = IdleHistogram::new(Duration::from_secs(1));
    for _ in 0..10 {
        h.record(Duration::from_millis(3500));
    }
    assert_eq!(
        h.windows(),
        Windows::Histogram {
            prewarm: Duration::from_millis(2700),
            keep_alive: Duration::from_millis(4400),
        }
    );
    // Past 240 bins is past the range: 5 minutes is out of bounds for one-second bins.
    let mut far = IdleHistogram::new(Duration::from_secs(1));
    for _ in 0..10 {
        far.record(Duration::from_secs(300));
    }
    assert_eq!(far.windows(), Windows::Fallback);
}

#[test]
fn histogram_decisions() {
    let min = |m: u64| Duration::from_secs(60 * m);
    let w = Windows::Histogram {
        prewarm: min(27),
        keep_alive: min(34),
    };
    // A 30 s load: release now, start again at 26.5 min, keep until 34 min.
    assert_eq!(
        histogram_decision(w, min(10), Duration::from_secs(30)),
        HistogramDecision {
            keep_alive: Duration::ZERO,
            prewarm: Some((min(27) - Duration::from_secs(30), min(34))),
        }
    );
    // A load longer than the head: keep until the tail instead.
    assert_eq!(
        histogram_decision(w, min(10), min(30)),
        HistogramDecision {
            keep_alive: min(34),
            prewarm: None,
        }
    );
    assert_eq!(
        histogram_decision(Windows::Fallback, min(10), min(1)).keep_alive,
        min(10)
    );
}

mod predictive {
    use std::time::Duration;

    use crate::{HistogramDecision, predictive_decision};

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn regular_long_gaps_are_released_and_prewarmed_just_in_time() {
        // Every ten minutes, give or take two seconds; loading takes 20 s.
        let gaps: Vec<Duration> = (0..20).map(|i| s(600.0 + f64::from(i % 3))).collect();
        let d = predictive_decision(&gaps, s(20.0), 600.0, s(60.0));
        assert_eq!(d.keep_alive, Duration::ZERO, "{d:?}");
        let (start, until) = d.prewarm.expect("a pre-warm");
        // Ready (start + load) before the earliest gap, kept past the latest.
        assert!(start + s(20.0) <= s(600.0) && start > s(500.0), "{d:?}");
        assert!(until >= s(602.0) && until < s(700.0), "{d:?}");
    }

    #[test]
    fn short_gaps_are_kept_warm_through() {
        let gaps: Vec<Duration> = (0..20).map(|i| s(10.0 + f64::from(i % 3))).collect();
        let d = predictive_decision(&gaps, s(20.0), 600.0, s(60.0));
        assert!(d.prewarm.is_none(), "{d:?}");
        assert!(d.keep_alive >= s(12.0) && d.keep_alive < s(20.0), "{d:?}");
    }

    #[test]
    fn when_a_cold_start_is_cheap_against_long_gaps_it_releases_at_once() {
        let gaps: Vec<Duration> = [3_000.0, 9_000.0, 20_000.0, 5_000.0, 40_000.0, 7_000.0]
            .iter()
            .map(|x| s(*x))
            .collect();
        let d = predictive_decision(&gaps, s(20.0), 60.0, s(60.0));
        assert_eq!(
            d,
            HistogramDecision {
                keep_alive: Duration::ZERO,
                prewarm: None
            }
        );
    }

    #[test]
    fn without_history_it_falls_back() {
        let d = predictive_decision(&[s(5.0), s(6.0)], s(20.0), 600.0, s(60.0));
        assert_eq!(d.keep_alive, s(60.0));
        assert!(d.prewarm.is_none());
    }

    #[test]
    fn a_higher_cold_start_price_never_keeps_less() {
        let gaps: Vec<Duration> = (1..40).map(|i| s(f64::from(i * i) * 7.0)).collect();
        let held = |c: f64| {
            let d = predictive_decision(&gaps, s(20.0), c, s(60.0));
            d.keep_alive + d.prewarm.map_or(Duration::ZERO, |(a, b)| b - a)
        };
        let mut last = Duration::ZERO;
        for c in [0.0, 30.0, 120.0, 600.0, 3_000.0, 20_000.0] {
            let h = held(c);
            assert!(h >= last, "cold cost {c}: holds {h:?} < {last:?}");
            last = h;
        }
    }
}

#[test]
fn decisions_are_explained_in_words() {
    use crate::{HistogramDecision, explain};
    let s = Duration::from_secs;
    let d = HistogramDecision {
        keep_alive: Duration::ZERO,
        prewarm: Some((s(41 * 60), s(45 * 60))),
    };
    assert_eq!(
        explain(d, true, Some(s(600))),
        "releases idle instances at once, then pre-warms one 41 min after the last call (the \
         next call is expected from then), kept until 45 min; idle 10 min: pre-warm in 31 min"
    );
    assert!(explain(d, true, Some(s(42 * 60))).ends_with("pre-warmed now"));
    assert!(explain(d, true, Some(s(50 * 60))).contains("a miss"));
    let keep = HistogramDecision {
        keep_alive: s(30),
        prewarm: None,
    };
    assert_eq!(
        explain(keep, true, None),
        "keeps idle instances 30.0 s: the function's recent gaps mostly end within it"
    );
    assert!(explain(keep, false, None).contains("learning"));
}
