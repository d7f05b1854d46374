//! `gpufn simulate`: policies over a trace, as a table, JSON and a Pareto plot.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow};
use gpufn_sim::{Format, Policy, SimConfig, simulate, trace};

/// `gpufn simulate` arguments.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The trace: a file, or a directory for the Alibaba and Azure Functions traces.
    #[arg(long)]
    trace: PathBuf,
    /// alibaba-genai | azure-functions | azure-llm | csv (default: guessed from the path).
    #[arg(long)]
    format: Option<String>,
    /// zero | fixed:SECONDS | always-on | histogram | oracle (repeatable; default: a standard set).
    #[arg(long = "policy")]
    policies: Vec<String>,
    /// Print JSON (one object per policy).
    #[arg(long)]
    json: bool,
    /// Write the Pareto plot (cold-start rate vs billed GB-s) as SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// GPU memory per function, GB (default per format: Alibaba 16, Azure LLM 48, CSV 4).
    #[arg(long)]
    gpu_memory_gb: Option<u32>,
    /// Instance concurrency (default per format: 1; Azure LLM 8).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Cold-start time when the trace has no measured load times.
    #[arg(long, default_value_t = 20.0)]
    cold_start_s: f64,
    /// Per-function instance limit.
    #[arg(long, default_value_t = 30)]
    max_instances: u32,
    /// Cards in use at once, fleet-wide (default: unlimited).
    #[arg(long)]
    quota_cards: Option<u32>,
    /// The histogram policy's fixed keep-alive when its histogram is not representative.
    #[arg(long, default_value_t = 600.0)]
    histogram_fallback_s: f64,
    /// Requests that may wait per function; one more is refused (the server's `scaling.max_queue`).
    #[arg(long, default_value_t = 1000)]
    max_queue: u32,
    /// Seconds a request may wait for a slot before it is refused (`scaling.queue_timeout_s`).
    #[arg(long, default_value_t = 660.0)]
    queue_timeout_s: f64,
    /// Only the first or the second half of the trace by time (choose parameters on the first,
    /// report the second: out of sample).
    #[arg(long, value_parser = ["first", "second"])]
    half: Option<String>,
    /// Scheduled provisioning for every function, as `CRON@TIMEZONE=MIN_INSTANCES` (the spec's
    /// `scaling.schedules`; e.g. "0 8 * * 1-5@Asia/Shanghai=4"; the zone defaults to UTC).
    /// Repeatable; each policy is then run without and with the schedule (`+schedule`).
    #[arg(long = "schedule")]
    schedules: Vec<String>,
    /// The wall-clock time of the trace's start, RFC 3339 (default: the trace's own dates; the
    /// Azure Functions trace has none and starts on 1970-01-01 at its first minute of the day).
    #[arg(long)]
    trace_start: Option<String>,
    /// Target tracking for every function (`scaling.target_utilization`, 0 < x <= 1): rows get
    /// `+targetX`.
    #[arg(long)]
    target_utilization: Option<f64>,
    /// Target tracking's most provisioned instances (default: --max-instances).
    #[arg(long, requires = "target_utilization")]
    max_provisioned: Option<u32>,
    /// Only this function of the trace (the Alibaba trace's model ids, e.g. M0000; a CSV's
    /// function column). `--function ?` lists the busiest.
    #[arg(long)]
    function: Option<String>,
}

/// `CRON@TIMEZONE=MIN` → a schedule named `s<n>`.
fn parse_schedule(n: usize, s: &str) -> anyhow::Result<gpufn_policy::provisioning::Schedule> {
    let (left, min) = s
        .rsplit_once('=')
        .ok_or_else(|| anyhow!("--schedule {s:?}: expected CRON@TIMEZONE=MIN_INSTANCES"))?;
    let min: u32 = min
        .trim()
        .parse()
        .map_err(|_| anyhow!("--schedule {s:?}: {min:?} is not a number of instances"))?;
    // The zone follows the last '@' that does not begin the pattern (`@daily` is a pattern).
    let (cron, zone) = match left.get(1..).and_then(|rest| rest.rfind('@')) {
        Some(i) => (&left[..=i], &left[i + 2..]),
        None => (left, "UTC"),
    };
    gpufn_policy::provisioning::Schedule::new(&format!("s{n}"), cron.trim(), zone.trim(), min)
        .map_err(|e| anyhow!("--schedule {s:?}: {}", e.0))
}

const DEFAULT_POLICIES: &[&str] = &[
    "zero",
    "fixed:60",
    "fixed:300",
    "fixed:600",
    "fixed:1200",
    "histogram",
    "oracle",
    "always-on",
];

pub fn run(a: &SimulateArgs) -> anyhow::Result<ExitCode> {
    let format = match &a.format {
        Some(f) => Format::parse(f).ok_or_else(|| {
            anyhow!("--format: {f:?} is not one of alibaba-genai, azure-functions, azure-llm, csv")
        })?,
        None => Format::detect(&a.trace),
    };
    anyhow::ensure!(
        a.cold_start_s.is_finite() && a.cold_start_s >= 0.0,
        "--cold-start-s: must be >= 0"
    );
    anyhow::ensure!(
        a.queue_timeout_s.is_finite() && a.queue_timeout_s > 0.0,
        "--queue-timeout-s: must be > 0"
    );
    let names: Vec<&str> = if a.policies.is_empty() {
        DEFAULT_POLICIES.to_vec()
    } else {
        a.policies.iter().map(String::as_str).collect()
    };
    let policies = names
        .iter()
        .map(|p| Policy::parse(p).map_err(|e| anyhow!(e)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let t0 = Instant::now();
    let trace = trace::load(&a.trace, format, a.gpu_memory_gb, a.concurrency)?;
    let trace = match a.function.as_deref() {
        None => trace,
        Some(name) => trace.only(name).ok_or_else(|| {
            let busiest: Vec<String> = trace
                .busiest(10)
                .into_iter()
                .map(|(n, c)| format!("{n} ({c})"))
                .collect();
            anyhow!(
                "--function: {name:?} is not in the trace; the busiest: {}",
                busiest.join(", ")
            )
        })?,
    };
    let trace = match a.half.as_deref() {
        Some("first") => trace.half(false),
        Some("second") => trace.half(true),
        _ => trace,
    };
    let load_s = t0.elapsed().as_secs_f64();
    let schedules = a
        .schedules
        .iter()
        .enumerate()
        .map(|(n, s)| parse_schedule(n + 1, s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = match &a.trace_start {
        Some(t) => super::rfc3339_flag("--trace-start", t)?,
        None => chrono::DateTime::from_timestamp_millis(
            (trace.start_unix.unwrap_or(0.0) * 1000.0) as i64,
        )
        .unwrap_or_default(),
    };
    let cfg = SimConfig {
        cold_start_s: a.cold_start_s,
        max_instances: a.max_instances.max(1),
        quota_cards: a.quota_cards.unwrap_or(u32::MAX),
        histogram_fallback_s: a.histogram_fallback_s,
        max_queue: a.max_queue,
        queue_timeout_s: a.queue_timeout_s,
        target: match a.target_utilization {
            None => None,
            Some(t) => {
                anyhow::ensure!(
                    t.is_finite() && t > 0.0 && t <= 1.0,
                    "--target-utilization: must be > 0 and <= 1"
                );
                Some(gpufn_sched::TargetTracking {
                    utilization_permille: ((t * 1000.0).round() as u32).max(1),
                    max_provisioned: a.max_provisioned.unwrap_or(a.max_instances),
                })
            }
        },
        ..SimConfig::default()
    };
    let mut results = Vec::new();
    for p in policies {
        let t = Instant::now();
        let r = simulate(&trace, p, cfg);
        if !a.json {
            eprintln!("# {}: {:.2} s", r.policy, t.elapsed().as_secs_f64());
        }
        results.push(r);
        if !schedules.is_empty() {
            let r = gpufn_sim::simulate_scheduled(&trace, p, cfg, &schedules, start);
            results.push(r);
        }
    }
    if let Some(path) = &a.plot {
        let title = format!(
            "{} — {} requests, {} functions",
            a.trace.display(),
            trace.requests.len(),
            trace.functions.len()
        );
        std::fs::write(path, gpufn_sim::report::svg(&results, &title))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!(
            "{} requests, {} functions, {} measured cold-start samples (trace read in {load_s:.2} s)",
            trace.requests.len(),
            trace.functions.len(),
            trace.cold_start_samples.len()
        );
        if !schedules.is_empty() {
            println!(
                "trace starts {start}; +schedule rows keep the scheduled instances of every function"
            );
        }
        print!("{}", gpufn_sim::report::table(&results));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_flags_take_a_zone_after_the_pattern() {
        let at = |s: &str| {
            chrono::DateTime::parse_from_rfc3339(s)
                .unwrap()
                .with_timezone(&chrono::Utc)
        };
        let s = parse_schedule(1, "0 8 * * *@Asia/Shanghai=4").unwrap();
        assert_eq!(s.min_instances, 4);
        assert_eq!(
            s.next_match(at("2026-11-30T00:30:00Z")),
            Some(at("2026-12-01T00:00:00Z"))
        );
        let daily = parse_schedule(2, "@daily=1").unwrap();
        assert_eq!(
            daily.next_match(at("2026-11-30T12:00:00Z")),
            Some(at("2026-12-01T00:00:00Z"))
        );
        let tokyo = parse_schedule(3, "@daily@Asia/Tokyo=2").unwrap();
        assert_eq!(
            tokyo.next_match(at("2026-11-30T12:00:00Z")),
            Some(at("2026-11-30T15:00:00Z"))
        );
        assert!(parse_schedule(4, "0 8 * * *").is_err());
        assert!(parse_schedule(5, "0 8 * * *@Mars/Base=1").is_err());
    }
}
