use super::*;
use crate::trace::{Function, Request};

fn trace(reqs: &[(f64, f64)]) -> Trace {
    Trace {
        start_unix: None,
        requests: reqs
            .iter()
            .map(|&(t, d)| Request {
                t,
                function: 0,
                duration_s: d,
            })
            .collect(),
        functions: vec![Function {
            name: "f".into(),
            memory_gb: 4,
            concurrency: 1,
        }],
        cold_start_samples: vec![],
    }
}

fn cfg() -> SimConfig {
    SimConfig {
        cold_start_s: 10.0,
        ..SimConfig::default()
    }
}

#[test]
fn fixed_keep_alive_turns_close_arrivals_warm() {
    // Requests at 0, 100 and 1000 s, 1 s each; a cold start takes 10 s.
    let t = trace(&[(0.0, 1.0), (100.0, 1.0), (1000.0, 1.0)]);
    let zero = simulate(&t, Policy::Zero, cfg());
    assert_eq!((zero.requests, zero.cold_starts), (3, 3));
    // Each instance: 10 s loading + 1 s busy = 11 s held; busy 1 s each.
    assert_eq!(zero.billed_gb_seconds, 3.0 * 11.0 * 4.0);
    assert_eq!(zero.busy_gb_seconds, 3.0 * 4.0);
    assert_eq!(zero.p50_latency_s, 11.0);
    let fixed = simulate(&t, Policy::Fixed(300.0), cfg());
    assert_eq!(
        fixed.cold_starts, 2,
        "the second request finds the instance warm"
    );
    assert_eq!(fixed.p50_latency_s, 11.0, "latencies 11, 1, 11");
    // First instance held 0..(101 + 300) s, the second 1000..(1011 + 300).
    assert_eq!(fixed.billed_gb_seconds, (401.0 + 311.0) * 4.0);
    assert!(fixed.cost_usd > zero.cost_usd);
    assert_eq!(fixed.peak_cards, 1);
}

#[test]
fn concurrency_is_never_exceeded_and_bursts_scale_out() {
    let reqs: Vec<(f64, f64)> = (0..10).map(|_| (0.0, 5.0)).collect();
    let r = simulate(&trace(&reqs), Policy::Fixed(60.0), cfg());
    assert_eq!(
        r.peak_cards, 10,
        "one instance per request at concurrency 1"
    );
    assert_eq!(r.cold_starts, 10);
    let capped = simulate(
        &trace(&reqs),
        Policy::Fixed(60.0),
        SimConfig {
            max_instances: 2,
            ..cfg()
        },
    );
    assert_eq!(capped.peak_cards, 2);
    // Two at a time, 5 s each after a 10 s load: the last pair ends at 10 + 25 = 35 s.
    assert_eq!(capped.p99_latency_s, 35.0);
}

#[test]
fn always_on_has_no_cold_starts_and_costs_by_the_hour() {
    let t = trace(&[(0.0, 1.0), (3600.0, 1.0)]);
    let r = simulate(&t, Policy::AlwaysOn, cfg());
    assert_eq!(r.cold_starts, 0);
    assert!((r.cost_usd - 2.0).abs() < 1e-9, "{r:?}");
}

#[test]
fn the_oracle_prewarms_long_gaps_and_keeps_short_ones() {
    // Gaps of 20 s (under the break-even of 10 s × 18/7 ≈ 25.7 s) and 1000 s.
    let t = trace(&[(0.0, 1.0), (21.0, 1.0), (1022.0, 1.0)]);
    let r = simulate(&t, Policy::Oracle, cfg());
    assert_eq!(
        r.cold_starts, 1,
        "only the very first request is cold: {r:?}"
    );
    let zero = simulate(&t, Policy::Zero, cfg());
    assert!(r.billed_gb_seconds <= simulate(&t, Policy::Fixed(1000.0), cfg()).billed_gb_seconds);
    assert!(r.cold_starts < zero.cold_starts);
}

#[test]
fn the_histogram_policy_learns_a_regular_period() {
    // A request every 30 minutes, 1 s each: after 10 idle times the histogram pre-warms, so later
    // requests are warm while the card is released in between.
    let reqs: Vec<(f64, f64)> = (0..40).map(|i| (f64::from(i) * 1800.0, 1.0)).collect();
    let t = trace(&reqs);
    let h = simulate(&t, Policy::Histogram, cfg());
    let zero = simulate(&t, Policy::Zero, cfg());
    let fixed = simulate(&t, Policy::Fixed(1200.0), cfg());
    assert!(h.cold_starts <= 12, "{h:?}");
    assert_eq!(zero.cold_starts, 40);
    assert_eq!(
        fixed.cold_starts, 40,
        "20 minutes is shorter than the period"
    );
    assert!(h.billed_gb_seconds < 40.0 * 1800.0 * 4.0 / 2.0, "{h:?}");
}

#[test]
fn a_schedule_keeps_instances_provisioned_in_its_window_and_is_priced() {
    // Requests at 00:10, 00:20 and 00:30 UTC, 1 s each; cold starts 10 s; released at once.
    let t = trace(&[(600.0, 1.0), (1200.0, 1.0), (1800.0, 1.0)]);
    let start = DateTime::<Utc>::UNIX_EPOCH;
    let plain = simulate(&t, Policy::Zero, cfg());
    assert_eq!(plain.cold_starts, 3);
    // One instance provisioned from 00:00, none from 00:25.
    let schedules = [
        Schedule::new("on", "0 0 * * *", "UTC", 1).unwrap(),
        Schedule::new("off", "25 0 * * *", "UTC", 0).unwrap(),
    ];
    let s = simulate_scheduled(&t, Policy::Zero, cfg(), &schedules, start);
    assert_eq!(s.policy, "zero+schedule");
    assert_eq!((s.requests, s.cold_starts), (3, 1), "{s:?}");
    // It held a card from 00:00 to 00:25 (25 min, loading included) plus the cold one's 11 s.
    assert_eq!(s.billed_gb_seconds, (1500.0 + 11.0) * 4.0);
    assert!(s.cost_usd > plain.cost_usd);
    // In another zone the same patterns are other hours: at 00:00 UTC (09:00 in Tokyo) the
    // 01:00 action is in force, nothing is provisioned.
    let tokyo = [
        Schedule::new("on", "0 0 * * *", "Asia/Tokyo", 1).unwrap(),
        Schedule::new("off", "0 1 * * *", "Asia/Tokyo", 0).unwrap(),
    ];
    let later = simulate_scheduled(&t, Policy::Zero, cfg(), &tokyo, start);
    assert_eq!(later.cold_starts, 3, "{later:?}");
    let utc_day_before = simulate_scheduled(
        &t,
        Policy::Zero,
        cfg(),
        &tokyo,
        start + chrono::TimeDelta::hours(15),
    );
    assert_eq!(
        utc_day_before.cold_starts, 0,
        "15:00 UTC is midnight in Tokyo"
    );
}

#[test]
fn target_tracking_provisions_for_sustained_load() {
    // One request every 10 s for an hour, 1 s each: an average load of 0.1 in flight.
    let reqs: Vec<(f64, f64)> = (0..360).map(|i| (f64::from(i) * 10.0, 1.0)).collect();
    let t = trace(&reqs);
    let zero = simulate(&t, Policy::Zero, cfg());
    let tracked = simulate(
        &t,
        Policy::Zero,
        SimConfig {
            target: Some(gpufn_sched::TargetTracking {
                utilization_permille: 500,
                max_provisioned: 10,
            }),
            ..cfg()
        },
    );
    assert_eq!(tracked.policy, "zero+target0.5");
    // Released at once, a third of the calls are cold starts (a 10 s start catches the next call
    // too); with one instance provisioned for the load (0.1 in flight at 0.5 of its capacity),
    // only the first.
    assert_eq!(zero.cold_starts, 120, "{zero:?}");
    assert_eq!(tracked.cold_starts, 1, "{tracked:?}");
    assert!(tracked.billed_gb_seconds > zero.busy_gb_seconds);
}

#[test]
fn policies_parse() {
    assert_eq!(Policy::parse("fixed:600"), Ok(Policy::Fixed(600.0)));
    assert_eq!(Policy::parse("oracle"), Ok(Policy::Oracle));
    assert!(Policy::parse("fixed:-1").is_err());
    assert!(Policy::parse("sometimes").is_err());
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> impl Strategy<Value = Policy> {
        prop_oneof![
            Just(Policy::Zero),
            (0u32..2000).prop_map(|s| Policy::Fixed(f64::from(s))),
            Just(Policy::AlwaysOn),
            Just(Policy::Histogram),
            Just(Policy::Oracle),
        ]
    }

    proptest! {
        /// Whatever the trace and policy: every request is served exactly once, cards held cover
        /// the busy time, nobody waits less than their service time, and the instance limit holds.
        #[test]
        fn every_request_is_served_and_the_books_balance(
            reqs in proptest::collection::vec((0u32..20_000, 1u32..3_000, 0u32..3), 1..60),
            policy in policy(),
            max_instances in 1u32..4,
        ) {
            let mut reqs: Vec<(f64, f64, u32)> = reqs
                .into_iter()
                .map(|(t, d, f)| (f64::from(t), f64::from(d) / 100.0, f))
                .collect();
            reqs.sort_by(|a, b| a.0.total_cmp(&b.0));
            let trace = Trace {
                start_unix: None,
                requests: reqs
                    .iter()
                    .map(|&(t, d, f)| Request { t, function: f, duration_s: d })
                    .collect(),
                functions: (0..3)
                    .map(|i| Function { name: format!("f{i}"), memory_gb: 2, concurrency: 1 + i })
                    .collect(),
                cold_start_samples: vec![3.0, 10.0, 25.0],
            };
            let r = simulate(&trace, policy, SimConfig { max_instances, ..SimConfig::default() });
            prop_assert_eq!(r.requests, reqs.len() as u64);
            prop_assert!(r.cold_starts <= r.requests);
            prop_assert!(r.billed_gb_seconds + 1e-6 >= r.busy_gb_seconds, "{r:?}");
            prop_assert!(r.active_billed_gb_seconds + 1e-6 >= r.busy_gb_seconds, "{r:?}");
            let min_duration = reqs.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
            prop_assert!(r.p50_latency_s + 1e-9 >= min_duration);
            let per_fn = if policy == Policy::AlwaysOn { 1 } else { max_instances };
            prop_assert!(r.peak_cards <= 3 * per_fn, "{r:?}");
            // Deterministic: the same input gives the same numbers.
            let again = simulate(&trace, policy, SimConfig { max_instances, ..SimConfig::default() });
            prop_assert_eq!(r, again);
        }
    }
}

mod refusals {
    use super::super::*;
    use crate::trace::{Function, Request};

    fn trace(requests: &[(f64, u32, f64)], functions: u32) -> Trace {
        Trace {
            start_unix: None,
            requests: requests
                .iter()
                .map(|&(t, function, duration_s)| Request {
                    t,
                    function,
                    duration_s,
                })
                .collect(),
            functions: (0..functions)
                .map(|i| Function {
                    name: format!("f{i}"),
                    memory_gb: 4,
                    concurrency: 1,
                })
                .collect(),
            cold_start_samples: Vec::new(),
        }
    }

    #[test]
    fn a_full_queue_and_the_queue_timeout_refuse_as_the_server_does() {
        // One instance at most; three requests of 100 s at once: one runs, one waits past its
        // 30 s queue timeout, one finds the one-place queue full.
        let t = trace(&[(0.0, 0, 100.0), (0.0, 0, 100.0), (0.0, 0, 100.0)], 1);
        let cfg = SimConfig {
            cold_start_s: 1.0,
            max_instances: 1,
            max_queue: 2,
            queue_timeout_s: 30.0,
            ..SimConfig::default()
        };
        let r = simulate(&t, Policy::Fixed(60.0), cfg);
        assert_eq!(r.refused, 2, "{r:?}");
        assert_eq!(r.requests, 1);
        assert_eq!(r.refused_for_quota, 0);
        // With room and time enough, all three are served.
        let r = simulate(
            &t,
            Policy::Fixed(60.0),
            SimConfig {
                queue_timeout_s: 1000.0,
                max_queue: 10,
                ..cfg
            },
        );
        assert_eq!((r.refused, r.requests), (0, 3), "{r:?}");
    }

    #[test]
    fn the_fleet_quota_refusals_are_counted_and_peak_cards_respect_it() {
        // Two functions, one card: the second function's request waits for the card held by
        // the first (kept warm 10 min) and is refused for the quota.
        let t = trace(&[(0.0, 0, 10.0), (1.0, 1, 10.0)], 2);
        let cfg = SimConfig {
            cold_start_s: 1.0,
            quota_cards: 1,
            queue_timeout_s: 30.0,
            ..SimConfig::default()
        };
        // The second arrives at 1 s while the first function's instance is busy (until 10 s):
        // nothing is reclaimable, and with a 5 s queue timeout it is refused for the quota.
        let r = simulate(
            &t,
            Policy::Fixed(600.0),
            SimConfig {
                queue_timeout_s: 5.0,
                ..cfg
            },
        );
        assert_eq!((r.refused, r.refused_for_quota), (1, 1), "{r:?}");
        assert_eq!(r.peak_cards, 1);
        // Arriving after the first went idle, it gets the idle instance's card.
        let t2 = trace(&[(0.0, 0, 10.0), (20.0, 1, 10.0)], 2);
        let r = simulate(&t2, Policy::Fixed(600.0), cfg);
        assert_eq!((r.refused, r.requests), (0, 2), "reclaimed: {r:?}");
        assert_eq!(r.peak_cards, 1);
    }
}
