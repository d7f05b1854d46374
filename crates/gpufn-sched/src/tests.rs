//! The scheduler's decisions, each from an explicit event sequence and `now`: no processes, no
//! sleeps, microseconds each.

use super::*;
use gpufn_policy::Windows;
use std::fmt;

/// The card source: at most `cap` cards held at once (the GPU-card quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct QuotaFull;

impl fmt::Display for QuotaFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("quota full")
    }
}

struct Quota {
    next: u64,
    held: u32,
    cap: u32,
}

impl Cards<(), QuotaFull> for Quota {
    fn allocate(&mut self, _provisioned: bool) -> Result<(InstanceId, ()), QuotaFull> {
        if self.held >= self.cap {
            return Err(QuotaFull);
        }
        self.held += 1;
        self.next += 1;
        Ok((InstanceId(self.next), ()))
    }
}

struct H {
    s: Scheduler<(), QuotaFull>,
    cards: Quota,
    t0: Instant,
}

fn cfg() -> Config {
    Config {
        concurrency: 1,
        max_queue: 100,
        min_instances: 0,
        max_instances: 10,
        keep_alive: KeepAlive::Fixed(Duration::from_secs(60)),
        memory_gb: 4,
        batch_window: Duration::ZERO,
        target: None,
    }
}

type Out = Effects<QuotaFull>;

fn starts(out: &Out) -> Vec<InstanceId> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Start { instance } => Some(*instance),
            _ => None,
        })
        .collect()
}

fn stops(out: &Out) -> Vec<InstanceId> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Stop { instance } => Some(*instance),
            _ => None,
        })
        .collect()
}

fn grants(out: &Out) -> Vec<(WaiterId, Grant)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Grant { waiter, grant } => Some((*waiter, *grant)),
            _ => None,
        })
        .collect()
}

fn refusals(out: &Out) -> Vec<(WaiterId, Refusal<QuotaFull>)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Refuse { waiter, reason } => Some((*waiter, reason.clone())),
            _ => None,
        })
        .collect()
}

impl H {
    fn new(cfg: Config) -> Self {
        Self {
            s: Scheduler::new(cfg, 1),
            cards: Quota {
                next: 0,
                held: 0,
                cap: u32::MAX,
            },
            t0: Instant::now(),
        }
    }
    fn at(&self, s: f64) -> Instant {
        self.t0 + Duration::from_secs_f64(s)
    }
    fn acquire(&mut self, t: f64, out: &mut Out) -> Acquire<QuotaFull> {
        let now = self.at(t);
        self.s.acquire(now, &mut self.cards, out)
    }
    fn ready(&mut self, id: InstanceId, t: f64) -> Out {
        let mut out = Out::new();
        self.s
            .instance_ready(id, Duration::from_secs(1), self.at(t), &mut out);
        out
    }
    fn release(&mut self, id: InstanceId, t: f64) -> Out {
        let mut out = Out::new();
        self.s.release(id, self.at(t), &mut out);
        out
    }
    fn gone(&mut self, id: InstanceId, t: f64) -> Out {
        let mut out = Out::new();
        self.cards.held -= 1;
        let now = self.at(t);
        self.s.instance_gone(id, now, &mut self.cards, &mut out);
        out
    }
    fn tick(&mut self, t: f64) -> (Out, Option<Instant>) {
        let mut out = Out::new();
        let now = self.at(t);
        let next = self.s.tick(now, &mut self.cards, &mut out);
        (out, next)
    }
    /// One ready instance, idle.
    fn warm(&mut self) -> InstanceId {
        let mut out = Out::new();
        let Acquire::Queued(_) = self.acquire(0.0, &mut out) else {
            panic!("no instance yet, the request queues");
        };
        let id = starts(&out)[0];
        let out = self.ready(id, 1.0);
        assert_eq!(grants(&out).len(), 1);
        self.release(id, 2.0);
        id
    }
}

#[test]
fn a_free_slot_is_granted_at_once_on_the_least_loaded_instance() {
    let mut h = H::new(Config {
        concurrency: 2,
        ..cfg()
    });
    let a = h.warm();
    let mut out = Out::new();
    let Acquire::Now(g) = h.acquire(3.0, &mut out) else {
        panic!("a ready instance has a free slot");
    };
    assert_eq!((g.instance, g.cold), (a, false));
    assert!(out.is_empty(), "nothing to start: {out:?}");
    assert!(matches!(h.acquire(3.0, &mut out), Acquire::Now(_)));
    assert_eq!(h.s.instance(a).map(Instance::in_flight), Some(2));
    // The third request finds both slots taken: it queues and an instance starts.
    assert!(matches!(h.acquire(3.0, &mut out), Acquire::Queued(_)));
    assert_eq!(starts(&out).len(), 1);
}

#[test]
fn queued_requests_get_slots_in_arrival_order_and_are_cold() {
    let mut h = H::new(cfg());
    let mut out = Out::new();
    let w: Vec<WaiterId> = (0..3)
        .map(|i| match h.acquire(f64::from(i), &mut out) {
            Acquire::Queued(w) => w,
            other => panic!("{other:?}"),
        })
        .collect();
    let started = starts(&out);
    assert_eq!(
        started.len(),
        3,
        "a burst starts an instance per request at once"
    );
    // The second instance is ready first: the oldest waiter gets it.
    let out = h.ready(started[1], 10.0);
    let g = grants(&out);
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].0, w[0]);
    assert!(g[0].1.cold, "it waited for the instance to start");
    // Its slot comes back before the others are ready: the next waiter gets it, still cold (the
    // instance became ready after it arrived).
    let out = h.release(started[1], 11.0);
    assert_eq!(grants(&out)[0].0, w[1]);
    assert!(grants(&out)[0].1.cold);
    let out = h.ready(started[0], 12.0);
    assert_eq!(grants(&out)[0].0, w[2]);
    assert_eq!(h.s.queued(), 0);
}

#[test]
fn a_full_queue_refuses_at_once() {
    let mut h = H::new(Config {
        max_queue: 2,
        max_instances: 1,
        ..cfg()
    });
    let mut out = Out::new();
    assert!(matches!(h.acquire(0.0, &mut out), Acquire::Queued(_)));
    assert!(matches!(h.acquire(0.0, &mut out), Acquire::Queued(_)));
    assert_eq!(
        h.acquire(0.0, &mut out),
        Acquire::Refused(Refusal::QueueFull { max_queue: 2 })
    );
    assert_eq!(h.s.queued(), 2);
}

#[test]
fn a_queue_timeout_says_why_no_instance_could_start() {
    let mut h = H::new(cfg());
    h.cards.cap = 0;
    let mut out = Out::new();
    let Acquire::Queued(w) = h.acquire(0.0, &mut out) else {
        panic!("queues");
    };
    assert!(starts(&out).is_empty(), "no card: nothing starts");
    assert_eq!(
        h.s.timed_out(w, h.at(30.0)),
        Some(Refusal::QueueTimeout {
            waited: Duration::from_secs(30),
            blocked: Some(QuotaFull)
        })
    );
    // Answered once: a second timeout (or a late grant) finds nothing.
    assert_eq!(h.s.timed_out(w, h.at(31.0)), None);
    assert_eq!(h.s.queued(), 0);
}

#[test]
fn a_cancelled_waiter_is_never_answered() {
    let mut h = H::new(Config {
        max_instances: 1,
        ..cfg()
    });
    let mut out = Out::new();
    let Acquire::Queued(a) = h.acquire(0.0, &mut out) else {
        panic!()
    };
    let Acquire::Queued(b) = h.acquire(0.0, &mut out) else {
        panic!()
    };
    assert!(h.s.cancel(a));
    assert!(!h.s.cancel(a));
    let out2 = h.ready(starts(&out)[0], 5.0);
    assert_eq!(grants(&out2).iter().map(|g| g.0).collect::<Vec<_>>(), [b]);
}

#[test]
fn scale_up_stops_at_max_instances_and_at_the_card_quota() {
    let mut h = H::new(Config {
        max_instances: 3,
        ..cfg()
    });
    let mut out = Out::new();
    for _ in 0..5 {
        h.acquire(0.0, &mut out);
    }
    assert_eq!(starts(&out).len(), 3, "max_instances");
    let mut h = H::new(cfg());
    h.cards.cap = 2;
    let mut out = Out::new();
    for _ in 0..5 {
        h.acquire(0.0, &mut out);
    }
    assert_eq!(starts(&out).len(), 2, "the quota");
    // A card comes back (another function's instance went): the blocked scale-up tries again.
    h.cards.cap = 3;
    let mut out = Out::new();
    h.s.rescale(h.at(1.0), &mut h.cards, &mut out);
    assert_eq!(starts(&out).len(), 1);
}

#[test]
fn a_new_revision_drains_the_old_instances() {
    let mut h = H::new(cfg());
    let old = h.warm();
    let mut out = Out::new();
    let Acquire::Now(busy) = h.acquire(3.0, &mut out) else {
        panic!()
    };
    let idle = {
        // A second, idle instance of the old revision.
        let mut out = Out::new();
        h.acquire(3.0, &mut out);
        let id = starts(&out)[0];
        h.ready(id, 4.0);
        h.release(id, 5.0);
        id
    };
    let mut out = Out::new();
    h.s.update(cfg(), 2, h.at(6.0), &mut h.cards, &mut out);
    assert_eq!(stops(&out), [idle], "the idle one stops now");
    assert_eq!(
        h.s.instance(old).map(Instance::state),
        Some(State::Draining)
    );
    // A request now waits for the new revision rather than the draining instance.
    let mut out = Out::new();
    assert!(matches!(h.acquire(7.0, &mut out), Acquire::Queued(_)));
    assert_eq!(starts(&out).len(), 1);
    // The busy old instance stops when its request is done.
    let out = h.release(busy.instance, 8.0);
    assert_eq!(stops(&out), [old]);
}

#[test]
fn a_crashed_instance_is_replaced_for_waiting_requests() {
    let mut h = H::new(Config {
        max_instances: 1,
        ..cfg()
    });
    let a = h.warm();
    let mut out = Out::new();
    h.acquire(3.0, &mut out);
    let mut out = Out::new();
    assert!(matches!(h.acquire(3.0, &mut out), Acquire::Queued(_)));
    assert!(starts(&out).is_empty(), "max_instances 1: it waits");
    // The instance crashes mid-request: its open busy period is billed, a new one starts.
    let out = h.gone(a, 4.0);
    assert_eq!(starts(&out).len(), 1);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Bill(Bill::Busy { instance, .. }) if *instance == a))
    );
}

#[test]
fn a_failed_start_refuses_one_instance_worth_and_backs_off_provisioned_restarts() {
    let mut h = H::new(Config {
        concurrency: 2,
        ..cfg()
    });
    let mut out = Out::new();
    for _ in 0..3 {
        h.acquire(0.0, &mut out);
    }
    let started = starts(&out);
    assert_eq!(started.len(), 2);
    let mut out = Out::new();
    h.cards.held -= 1;
    let reason = Refusal::StartFailed {
        reason: "exit 1".into(),
        timed_out: false,
    };
    h.s.start_failed(
        started[0],
        reason.clone(),
        h.at(5.0),
        &mut h.cards,
        &mut out,
    );
    // Three waiters, one starting instance left (2 slots): one is told; a new start covers none
    // (the other two still have their instance).
    assert_eq!(refusals(&out).len(), 1);
    assert_eq!(refusals(&out)[0].1, reason);
    assert!(starts(&out).is_empty(), "{out:?}");

    // Provisioned: a failed start is retried after a backoff, not at once.
    let mut h = H::new(Config {
        min_instances: 1,
        ..cfg()
    });
    let (out, _) = h.tick(0.0);
    let first = starts(&out)[0];
    let mut out = Out::new();
    h.cards.held -= 1;
    h.s.start_failed(first, reason, h.at(1.0), &mut h.cards, &mut out);
    assert!(starts(&out).is_empty());
    let (out, next) = h.tick(1.5);
    assert!(starts(&out).is_empty());
    assert_eq!(next, Some(h.at(3.0)), "retry after 2 s");
    let (out, next) = h.tick(3.0);
    assert_eq!(starts(&out).len(), 1);
    assert!(
        next.is_none_or(|n| n > h.at(3.0)),
        "never a tick in the past"
    );
}

#[test]
fn min_instances_are_kept_and_billed_for_their_lifetime() {
    let mut h = H::new(Config {
        min_instances: 2,
        keep_alive: KeepAlive::Fixed(Duration::ZERO),
        ..cfg()
    });
    let (out, _) = h.tick(0.0);
    let ids = starts(&out);
    assert_eq!(ids.len(), 2);
    assert!(h.s.instances().iter().all(Instance::provisioned));
    for &id in &ids {
        h.ready(id, 10.0);
    }
    let (out, _) = h.tick(1000.0);
    assert!(stops(&out).is_empty(), "provisioned instances stay");
    // Removed (the function is deleted): the idle part of its life is billed.
    let mut out = Out::new();
    h.s.close(Refusal::Deleted, &mut out);
    assert_eq!(stops(&out), ids);
    let out = h.gone(ids[0], 1000.0);
    assert!(
        out.iter()
            .any(|e| matches!(e, Effect::Bill(Bill::ProvisionedIdle { idle_s: 1000, .. })))
    );
    assert!(starts(&out).is_empty(), "closed: nothing starts again");
}

#[test]
fn idle_instances_are_released_after_the_keep_alive() {
    let mut h = H::new(cfg());
    let a = h.warm();
    // Idle since t=2, keep-alive 60 s.
    let (out, next) = h.tick(30.0);
    assert!(stops(&out).is_empty());
    assert_eq!(next, Some(h.at(62.0)));
    let (out, next) = h.tick(62.0);
    assert_eq!(stops(&out), [a]);
    assert_eq!(next, None);
    assert_eq!(h.s.instance(a).map(Instance::state), Some(State::Draining));
    // Draining takes no request: the next one cold-starts a new instance.
    let mut out = Out::new();
    assert!(matches!(h.acquire(63.0, &mut out), Acquire::Queued(_)));
    h.gone(a, 63.0);
    assert!(h.s.instance(a).is_none());
}

#[test]
fn a_busy_instance_or_a_starting_one_is_never_released() {
    let mut h = H::new(Config {
        keep_alive: KeepAlive::Fixed(Duration::ZERO),
        ..cfg()
    });
    let mut out = Out::new();
    h.acquire(0.0, &mut out);
    let (out2, _) = h.tick(100.0);
    assert!(stops(&out2).is_empty(), "starting");
    let id = starts(&out)[0];
    h.ready(id, 101.0);
    let (out2, _) = h.tick(500.0);
    assert!(stops(&out2).is_empty(), "busy");
    h.release(id, 501.0);
    let (out2, _) = h.tick(501.0);
    assert_eq!(stops(&out2), [id]);
}

#[test]
fn the_histogram_policy_prewarms_what_it_learned() {
    let mut h = H::new(Config {
        keep_alive: KeepAlive::Histogram {
            fallback: Duration::from_secs(300),
            bin: Duration::from_secs(60),
        },
        ..cfg()
    });
    // A request every 30 minutes (idle 30 min 10 s): ten of them teach the histogram.
    let mut t = 0.0;
    let mut id = h.warm();
    t += 2.0;
    let mut out = Out::new();
    for _ in 0..10 {
        t += 1810.0;
        // The instance was released in between (fallback 300 s): each request is a cold start.
        let (o, _) = h.tick(t - 1500.0);
        if stops(&o).contains(&id) {
            h.gone(id, t - 1500.0);
        }
        out.clear();
        match h.acquire(t, &mut out) {
            Acquire::Queued(_) => {
                id = starts(&out)[0];
                h.ready(id, t + 20.0);
            }
            Acquire::Now(g) => id = g.instance,
            Acquire::Refused(r) => panic!("{r:?}"),
        }
        h.release(id, t + 21.0);
    }
    assert_eq!(h.s.histogram().samples(), 10);
    // Idle from t+21: release at once, pre-warm before the next request (head: 27 min minus the
    // 1 s load), keep until the tail (31 bins × 1.1).
    let idle = h.at(t + 21.0);
    let (out, next) = h.tick(t + 21.0);
    assert_eq!(stops(&out), [id]);
    let Windows::Histogram {
        prewarm,
        keep_alive,
    } = h.s.histogram().windows()
    else {
        panic!("representative after ten regular idle times")
    };
    let start_at = idle + prewarm - Duration::from_secs(1);
    assert_eq!(next, Some(start_at));
    h.gone(id, t + 22.0);
    let (out, next) = h.tick(t + 21.0 + (start_at - idle).as_secs_f64());
    let warm = starts(&out);
    assert_eq!(warm.len(), 1, "pre-warmed");
    assert_eq!(next, Some(idle + keep_alive));
    h.ready(warm[0], t + 1700.0);
    let (out, _) = h.tick(t + 1800.0);
    assert!(stops(&out).is_empty(), "kept in the window");
    // The request comes: warm.
    let mut out = Out::new();
    let Acquire::Now(g) = h.acquire(t + 1810.0, &mut out) else {
        panic!("warm")
    };
    assert_eq!(g.instance, warm[0]);
}

#[test]
fn a_planned_idle_period_prewarms_just_in_time() {
    let mut h = H::new(Config {
        keep_alive: KeepAlive::Planned {
            busy: Duration::ZERO,
        },
        ..cfg()
    });
    let mut out = Out::new();
    h.acquire(0.0, &mut out);
    let id = starts(&out)[0];
    h.ready(id, 1.0);
    let out = h.release(id, 2.0);
    assert!(out.contains(&Effect::Idle), "the caller is asked to plan");
    let mut out = Out::new();
    h.s.plan_idle(
        IdlePlan {
            keep_alive: Duration::ZERO,
            prewarm: Some((h.at(100.0), h.at(121.0))),
        },
        &mut out,
    );
    let (out, next) = h.tick(2.0);
    assert_eq!(stops(&out), [id]);
    assert_eq!(next, Some(h.at(100.0)));
    h.gone(id, 2.0);
    let (out, _) = h.tick(100.0);
    assert_eq!(starts(&out).len(), 1);
}

#[test]
fn bills_batch_busy_periods_and_a_tick_hands_them_out_when_due() {
    let mut h = H::new(Config {
        batch_window: Duration::from_secs(1),
        ..cfg()
    });
    let id = h.warm();
    let mut billed = 0;
    let mut count = |out: &Out| -> usize {
        let mut records = 0;
        for e in out {
            if let Effect::Bill(Bill::Busy { period, .. }) = e {
                billed += period.requests;
                records += 1;
            }
        }
        records
    };
    for i in 0..3 {
        let mut out = Out::new();
        let t = 10.0 + f64::from(i) * 0.2;
        assert!(matches!(h.acquire(t, &mut out), Acquire::Now(_)));
        let out = h.release(id, t + 0.1);
        // The first hands out the warm-up request's batch (t=1, long due); the next join its own.
        assert_eq!(count(&out), usize::from(i == 0), "{out:?}");
    }
    let (out, next) = h.tick(10.5);
    assert_eq!(count(&out), 0, "not due before its window has passed");
    assert_eq!(next, Some(h.at(11.0)));
    let (out, _) = h.tick(11.0);
    assert_eq!(count(&out), 1);
    assert_eq!(billed, 4, "every request billed once");
}

mod invariants {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Ev {
        Arrive,
        Ready(usize),
        Release(usize),
        Crash(usize),
        Tick,
        Cancel(usize),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            3 => Just(Ev::Arrive),
            2 => (0usize..8).prop_map(Ev::Ready),
            3 => (0usize..8).prop_map(Ev::Release),
            1 => (0usize..8).prop_map(Ev::Crash),
            1 => Just(Ev::Tick),
            1 => (0usize..8).prop_map(Ev::Cancel),
        ]
    }

    proptest! {
        /// Whatever happens: no instance over its concurrency, never more live instances than
        /// max_instances or cards than the quota, every waiter answered at most once, every
        /// granted slot on a ready instance.
        #[test]
        fn the_invariants_hold(events in proptest::collection::vec(ev(), 1..200),
                               concurrency in 1u32..4, max in 1u32..4, cap in 1u32..5) {
            let mut h = H::new(Config { concurrency, max_instances: max, max_queue: 10, ..cfg() });
            h.cards.cap = cap;
            let mut held: Vec<InstanceId> = Vec::new();
            let mut waiting: Vec<WaiterId> = Vec::new();
            let mut answered = std::collections::HashSet::new();
            let mut t = 0.0;
            for e in events {
                t += 1.0;
                let now = h.at(t);
                let mut out = Out::new();
                match e {
                    Ev::Arrive => match h.s.acquire(now, &mut h.cards, &mut out) {
                        Acquire::Now(g) => held.push(g.instance),
                        Acquire::Queued(w) => waiting.push(w),
                        Acquire::Refused(_) => {}
                    },
                    Ev::Ready(k) => {
                        let ids: Vec<InstanceId> = h.s.instances().iter()
                            .filter(|i| i.state() == State::Starting).map(Instance::id).collect();
                        if let Some(&id) = ids.get(k % ids.len().max(1)) {
                            h.s.instance_ready(id, Duration::ZERO, now, &mut out);
                        }
                    }
                    Ev::Release(k) => if !held.is_empty() {
                        let id = held.remove(k % held.len());
                        h.s.release(id, now, &mut out);
                    },
                    Ev::Crash(k) => {
                        let ids: Vec<InstanceId> = h.s.instances().iter().map(Instance::id).collect();
                        if let Some(&id) = ids.get(k % ids.len().max(1)) {
                            held.retain(|h| *h != id);
                            h.cards.held -= 1;
                            h.s.instance_gone(id, now, &mut h.cards, &mut out);
                        }
                    }
                    Ev::Tick => { h.s.tick(now, &mut h.cards, &mut out); }
                    Ev::Cancel(k) => if !waiting.is_empty() {
                        let w = waiting.remove(k % waiting.len());
                        h.s.cancel(w);
                    },
                }
                for e in &out {
                    match e {
                        Effect::Grant { waiter, grant } => {
                            prop_assert!(waiting.contains(waiter), "granted a cancelled or unknown waiter");
                            prop_assert!(answered.insert(*waiter));
                            waiting.retain(|w| w != waiter);
                            held.push(grant.instance);
                        }
                        Effect::Refuse { waiter, .. } => {
                            prop_assert!(answered.insert(*waiter));
                            waiting.retain(|w| w != waiter);
                        }
                        Effect::Stop { instance } => {
                            // Stopped instances go at once here.
                            held.retain(|h| h != instance);
                            h.cards.held -= 1;
                            let mut more = Out::new();
                            h.s.instance_gone(*instance, now, &mut h.cards, &mut more);
                        }
                        _ => {}
                    }
                }
                let live = h.s.instances().iter().filter(|i| i.state() != State::Draining).count();
                prop_assert!(live <= max as usize);
                prop_assert!(h.cards.held <= cap);
                prop_assert_eq!(h.cards.held as usize, h.s.instances().len());
                for i in h.s.instances() {
                    prop_assert!(i.in_flight() <= concurrency);
                    let mine = held.iter().filter(|h| **h == i.id()).count() as u32;
                    prop_assert_eq!(mine, i.in_flight());
                }
            }
        }
    }
}

#[test]
fn an_instance_the_runtime_cannot_place_is_reported_and_stopped_once_nobody_waits() {
    let mut h = H::new(cfg());
    let mut out = Out::new();
    let Acquire::Queued(w1) = h.acquire(0.0, &mut out) else {
        panic!("queues");
    };
    let id = starts(&out)[0];
    assert_eq!(h.s.unplaced_reason(), None);
    h.s.unplaced(
        id,
        "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.".into(),
    );
    assert_eq!(
        h.s.unplaced_reason(),
        Some("0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")
    );
    // A second request arrives (concurrency 1: it asks for a second instance); the first times
    // out: one still waits, so nothing stops.
    let mut out = Out::new();
    let Acquire::Queued(w2) = h.acquire(1.0, &mut out) else {
        panic!("queues");
    };
    let second = starts(&out)[0];
    assert!(h.s.timed_out(w1, h.at(30.0)).is_some());
    let mut out = Out::new();
    h.s.stop_unneeded_unplaced(&mut out);
    assert!(stops(&out).is_empty(), "a request still waits");
    // The last one leaves: the unplaced instance stops; the placed one keeps starting.
    assert!(h.s.cancel(w2));
    h.s.placed(second);
    let mut out = Out::new();
    h.s.stop_unneeded_unplaced(&mut out);
    assert_eq!(stops(&out), [id]);
    assert_eq!(
        h.s.unplaced_reason(),
        None,
        "a draining instance is not starting"
    );
}

#[test]
fn an_idle_on_demand_instance_can_be_reclaimed_but_not_a_busy_or_provisioned_one() {
    let mut h = H::new(Config {
        min_instances: 1,
        ..cfg()
    });
    let (out, _) = h.tick(0.0);
    let provisioned = starts(&out)[0];
    h.ready(provisioned, 1.0);
    // Two requests: the provisioned instance takes one, a second instance starts for the other.
    let mut out = Out::new();
    assert!(matches!(h.acquire(2.0, &mut out), Acquire::Now(_)));
    let mut out = Out::new();
    let Acquire::Queued(_) = h.acquire(2.0, &mut out) else {
        panic!("queues");
    };
    let on_demand = starts(&out)[0];
    let _ = h.ready(on_demand, 3.0);
    // Busy: not reclaimable.
    assert!(h.s.reclaimable(h.at(3.0)).is_empty());
    h.release(on_demand, 4.0);
    h.release(provisioned, 4.0);
    // Idle: only the on-demand one, with its idle time.
    assert_eq!(
        h.s.reclaimable(h.at(10.0)),
        [(on_demand, Duration::from_secs(6))]
    );
    let mut out = Out::new();
    assert!(
        !h.s.reclaim(provisioned, &mut out),
        "never a provisioned one"
    );
    assert!(h.s.reclaim(on_demand, &mut out));
    assert_eq!(stops(&out), [on_demand]);
    assert!(h.s.reclaimable(h.at(11.0)).is_empty());
}

#[test]
fn an_initializer_is_billed_as_one_invocation_before_the_first_request() {
    let mut h = H::new(cfg());
    let mut out = Out::new();
    let Acquire::Queued(_) = h.acquire(0.0, &mut out) else {
        panic!("no instance yet, the request queues");
    };
    let id = starts(&out)[0];
    // Initializer from t=1 to t=3.5: 2.5 s, billed as 3 s and one request.
    let mut out = Out::new();
    let (t1, t2) = (h.at(1.0), h.at(3.5));
    h.s.bill_initializer(id, t1, t2, &mut out);
    // The period joins the instance's metering batch, handed out when due.
    assert!(grants(&out).is_empty(), "still starting: nothing granted");
    out.extend(h.tick(3.5).0);
    let bills: Vec<_> = out
        .iter()
        .filter_map(|e| match e {
            Effect::Bill(Bill::Busy { period, .. }) => Some(*period),
            _ => None,
        })
        .collect();
    assert_eq!(bills.len(), 1, "{out:?}");
    assert_eq!((bills[0].requests, bills[0].billed_seconds), (1, 3));
    assert_eq!(bills[0].busy, Duration::from_millis(2500));
    // The waiting request is granted when the instance is ready.
    assert_eq!(grants(&h.ready(id, 3.5)).len(), 1);
}

#[test]
fn a_scheduled_minimum_starts_provisioned_instances_and_lets_them_go_when_lowered() {
    let mut h = H::new(cfg());
    let mut out = Out::new();
    let now = h.at(0.0);
    h.s.set_scheduled_min(Some(2), now, &mut h.cards, &mut out);
    assert_eq!(starts(&out).len(), 2, "{out:?}");
    assert_eq!(h.s.min_instances(), 2);
    let ids = starts(&out);
    for id in &ids {
        h.ready(*id, 1.0);
    }
    assert!(h.s.instances().iter().all(|i| i.provisioned()));
    // Kept past the keep-alive while the schedule holds them.
    let (out, _) = h.tick(500.0);
    assert!(stops(&out).is_empty());
    // Lowered: they go as idle instances do, after their keep-alive (60 s) counted from idle.
    let mut out = Out::new();
    let now = h.at(500.0);
    h.s.set_scheduled_min(Some(0), now, &mut h.cards, &mut out);
    assert!(stops(&out).is_empty());
    let (out, _) = h.tick(501.0);
    assert_eq!(
        stops(&out).len(),
        2,
        "idle since t=1: past their keep-alive"
    );
    // None: back to the spec's min_instances (0 here).
    let mut out = Out::new();
    h.s.set_scheduled_min(None, now, &mut h.cards, &mut out);
    assert_eq!(h.s.min_instances(), 0);
}

#[test]
fn target_tracking_provisions_for_the_average_load_and_follows_it_down() {
    let mut h = H::new(Config {
        target: Some(TargetTracking {
            utilization_permille: 500,
            max_provisioned: 3,
        }),
        ..cfg()
    });
    let id = h.warm();
    // Two requests in flight for ten minutes: the average tends to 2, at 0.5 utilization that
    // is 4 instances, capped at 3.
    let mut out = Out::new();
    assert!(matches!(h.acquire(10.0, &mut out), Acquire::Now(_)));
    let mut out = Out::new();
    let _ = h.acquire(10.0, &mut out);
    let (out, next) = h.tick(610.0);
    assert_eq!(h.s.min_instances(), 3);
    assert_eq!(
        starts(&out).len(),
        1,
        "two live (one busy, one starting for the queued request): one more\n{out:?}"
    );
    assert_eq!(
        next,
        Some(h.at(615.0)),
        "it looks again while there is load"
    );
    // The load ends: after a few minutes of nothing the tracked minimum is back to zero.
    for s in h.s.instances().iter().map(|i| i.id()).collect::<Vec<_>>() {
        h.ready(s, 611.0);
    }
    h.release(id, 612.0);
    let busy: Vec<_> =
        h.s.instances()
            .iter()
            .filter(|i| i.in_flight() > 0)
            .map(|i| i.id())
            .collect();
    for b in busy {
        h.release(b, 612.0);
    }
    h.tick(1200.0);
    assert_eq!(h.s.min_instances(), 0);
}

#[test]
fn a_changed_minimum_reclassifies_instances_and_bills_each_its_provisioned_idle_time() {
    let idle_bills = |out: &Out| -> Vec<(InstanceId, u64)> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Bill(Bill::ProvisionedIdle {
                    instance, idle_s, ..
                }) => Some((*instance, *idle_s)),
                _ => None,
            })
            .collect()
    };
    let mut h = H::new(cfg());
    // An on-demand instance, warm and idle since t=2.
    let a = h.warm();
    assert!(!h.s.instance(a).unwrap().provisioned());
    // A schedule asks for one: the idle on-demand instance becomes it (no new start), billed as
    // provisioned from t=10.
    let mut out = Out::new();
    let t10 = h.at(10.0);
    h.s.set_scheduled_min(Some(1), t10, &mut h.cards, &mut out);
    assert!(starts(&out).is_empty(), "{out:?}");
    assert!(h.s.instance(a).unwrap().provisioned());
    // Lowered at t=70: on-demand again, its 60 idle seconds billed at the idle price now.
    let mut out = Out::new();
    let t70 = h.at(70.0);
    h.s.set_scheduled_min(Some(0), t70, &mut h.cards, &mut out);
    assert_eq!(idle_bills(&out), [(a, 60)]);
    assert!(!h.s.instance(a).unwrap().provisioned());
    // Gone later: nothing more at the idle price.
    let out = h.gone(a, 500.0);
    assert!(idle_bills(&out).is_empty(), "{out:?}");
}
