//! The simulator and the server schedule alike.

use gpufn_sched::{Effect, Effects, InstanceId};
use gpufn_sim::{Policy, QuotaFull, SimConfig, Trace};

use super::*;

/// What was decided, without the instants (the two runs have different clocks) and the
/// bills (the server batches its records, the simulator adds them up).
fn decisions(fx: &Effects<QuotaFull>) -> Vec<String> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Grant { waiter, grant } => Some(format!(
                "grant {waiter:?} {:?} cold={}",
                grant.instance, grant.cold
            )),
            Effect::Refuse { waiter, reason } => Some(format!("refuse {waiter:?} {reason}")),
            Effect::Start { instance } => Some(format!("start {instance:?}")),
            Effect::Stop { instance } => Some(format!("stop {instance:?}")),
            Effect::Bill(_) | Effect::Wake | Effect::Idle => None,
        })
        .collect()
}

/// Hands out the ids the simulator's fleet did: 1, 2, 3, …
struct Counter(u64);

impl Cards<(), QuotaFull> for Counter {
    fn allocate(&mut self, _: bool) -> Result<(InstanceId, ()), QuotaFull> {
        self.0 += 1;
        Ok((InstanceId(self.0), ()))
    }
}

/// Bursts, overlaps, short and long gaps: cold starts, queueing, keep-alive hits and misses.
fn trace() -> Trace {
    let mut requests = Vec::new();
    let mut t = 0.0;
    for i in 0..400u32 {
        t += [3.0, 40.0, 700.0, 20.0, 2500.0][(i % 5) as usize];
        for k in 0..=(i % 3) {
            requests.push(gpufn_sim::trace::Request {
                t: t + f64::from(k) * 0.7,
                function: 0,
                duration_s: 5.0 + f64::from(i % 7) * 9.0,
            });
        }
    }
    Trace {
        requests,
        functions: vec![gpufn_sim::trace::Function {
            name: "f".into(),
            memory_gb: 4,
            concurrency: 2,
        }],
        cold_start_samples: vec![],
        start_unix: None,
    }
}

/// The simulator runs what the server runs: every event the simulator gave its scheduler over
/// a trace, fed to a scheduler configured from the server's spec for the same policy, gives
/// the same decisions (grants, refusals, starts, stops), event by event.
#[test]
fn the_simulator_and_the_server_decide_alike() {
    for (policy, scaling) in [
        (Policy::Fixed(60.0), "idle_timeout_s: 60"),
        (Policy::Zero, "idle_timeout_s: 0"),
        (
            Policy::Histogram,
            "idle_timeout_s: 600, keep_alive: histogram, histogram_bin_s: 60",
        ),
    ] {
        let spec = gpufn_spec::parse_yaml(&format!(
            "name: f\ncommand: [x]\ngpu: {{memory_gb: 4}}\ninstance_concurrency: 2\n\
             scaling: {{{scaling}, max_instances: 30, max_queue: 1000}}\n"
        ))
        .and_then(|r| r.validate())
        .expect("spec");
        let cfg = SimConfig {
            cold_start_s: 15.0,
            ..SimConfig::default()
        };
        let (_, steps) = gpufn_sim::record(&trace(), policy, cfg);
        assert!(steps.len() > 1000, "{policy:?}: {} steps", steps.len());
        let mut sched: gpufn_sched::Scheduler<(), QuotaFull> =
            gpufn_sched::Scheduler::new(config_of(&spec), 1);
        let mut cards = Counter(0);
        let base = Instant::now();
        let mut compared = 0;
        for step in steps {
            let mut fx = Effects::new();
            sched.handle(base + step.at, step.event.clone(), &mut cards, &mut fx);
            let (server, sim) = (decisions(&fx), decisions(&step.effects));
            assert_eq!(server, sim, "{policy:?} at {:?}: {:?}", step.at, step.event);
            compared += server.len();
        }
        assert!(compared > 50, "{policy:?}: {compared} decisions");
    }
}
