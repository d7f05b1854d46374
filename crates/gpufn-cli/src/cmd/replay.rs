//! `gpufn replay`: a time-compressed slice of a trace, sent for real to a running gpufn, compared
//! with what `gpufn simulate` predicts for the same slice.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use futures_util::future::join_all;
use gpufn_sim::trace::{self, Function, Request, Trace};
use gpufn_sim::{Format, Policy, SimConfig, simulate};
use reqwest::Method;
use serde_json::json;

use crate::client::Api;
use crate::table;

/// `gpufn replay` arguments.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The trace (as for `gpufn simulate`).
    #[arg(long)]
    trace: PathBuf,
    /// alibaba-genai | azure-functions | azure-llm | csv (default: guessed from the path).
    #[arg(long)]
    format: Option<String>,
    /// Replay the busiest N functions of the trace.
    #[arg(long, default_value_t = 20)]
    functions: usize,
    /// The slice: this many seconds of trace time from its start.
    #[arg(long, default_value_t = 86_400.0)]
    window_s: f64,
    /// Time compression: arrivals, service times and cold starts all divided by this.
    #[arg(long, default_value_t = 1000.0)]
    speedup: f64,
    /// `scaling.idle_timeout_s` of the replayed functions, in real (compressed) seconds.
    #[arg(long, default_value_t = 1)]
    idle_timeout_s: u32,
    /// The keep-alive policy: `fixed` (`idle_timeout_s`) or `predictive[:COLD_COST_S]` (cold cost
    /// in trace seconds, default 300; compressed, it must come to whole seconds: 300 needs
    /// `--speedup` 300, 150, 100, ...).
    #[arg(long, default_value = "fixed")]
    policy: String,
    /// Model load time in trace seconds (default: the trace's measured median, else 20).
    #[arg(long)]
    cold_start_s: Option<f64>,
    /// What gpufn adds to a cold start (spawn and probing), for the prediction.
    #[arg(long, default_value_t = 5.0)]
    platform_overhead_ms: f64,
    /// Keep the replayed functions deployed afterwards.
    #[arg(long)]
    keep: bool,
}

/// The policy as the simulator runs it on the compressed slice: keep-alives and cold costs in
/// compressed seconds, as the live functions' specs say them.
fn replay_policy(arg: &str, speedup: f64, idle_timeout_s: u32) -> anyhow::Result<Policy> {
    match Policy::parse(arg) {
        _ if arg == "fixed" => Ok(Policy::Fixed(f64::from(idle_timeout_s))),
        Ok(Policy::Predictive(cost)) => {
            let compressed = cost / speedup;
            anyhow::ensure!(
                compressed >= 1.0 && compressed.fract() == 0.0,
                "--policy: a cold cost of {cost} s compressed {speedup}× is {compressed} s; \
                 the spec's scaling.cold_cost_s takes whole seconds ≥ 1 (choose --speedup to divide it)"
            );
            Ok(Policy::Predictive(compressed))
        }
        _ => Err(anyhow!(
            "--policy: {arg:?} is not fixed or predictive[:COLD_COST_S]"
        )),
    }
}

/// The replayed functions' `scaling`: the policy's keep-alive, `idle_timeout_s` (the predictive
/// policy's fallback while it learns).
fn scaling(policy: Policy, idle_timeout_s: u32) -> serde_json::Value {
    match policy {
        Policy::Predictive(cost) => json!({
            "idle_timeout_s": idle_timeout_s,
            "max_instances": 30,
            "keep_alive": "predictive",
            "cold_cost_s": cost as u64,
        }),
        _ => json!({"idle_timeout_s": idle_timeout_s, "max_instances": 30}),
    }
}

/// The busiest `n` functions' requests in `[0, window)`, compressed `speedup` times.
fn slice(t: &Trace, n: usize, window: f64, speedup: f64) -> Trace {
    let mut counts = vec![0usize; t.functions.len()];
    for r in t.requests.iter().filter(|r| r.t < window) {
        counts[r.function as usize] += 1;
    }
    let mut order: Vec<usize> = (0..t.functions.len()).filter(|&f| counts[f] > 0).collect();
    order.sort_by_key(|&f| (std::cmp::Reverse(counts[f]), f));
    order.truncate(n);
    let mut new_index = vec![None; t.functions.len()];
    for (i, &f) in order.iter().enumerate() {
        new_index[f] = Some(u32::try_from(i).unwrap_or(u32::MAX));
    }
    Trace {
        start_unix: None,
        requests: t
            .requests
            .iter()
            .filter(|r| r.t < window)
            .filter_map(|r| {
                Some(Request {
                    t: r.t / speedup,
                    function: new_index[r.function as usize]?,
                    duration_s: r.duration_s / speedup,
                })
            })
            .collect(),
        functions: order
            .iter()
            .map(|&f| Function {
                concurrency: 1,
                ..t.functions[f].clone()
            })
            .collect(),
        cold_start_samples: Vec::new(),
    }
}

pub async fn run(api: &Api, a: &ReplayArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.speedup.is_finite() && a.speedup >= 1.0,
        "--speedup: must be >= 1"
    );
    let policy = replay_policy(&a.policy, a.speedup, a.idle_timeout_s)?;
    let format = match &a.format {
        Some(f) => {
            Format::parse(f).ok_or_else(|| anyhow!("--format: {f:?} is not a known format"))?
        }
        None => Format::detect(&a.trace),
    };
    let full = trace::load(&a.trace, format, None, None)?;
    let mut samples = full.cold_start_samples.clone();
    samples.sort_by(f64::total_cmp);
    let load_s = a
        .cold_start_s
        .or_else(|| samples.get(samples.len() / 2).copied())
        .unwrap_or(20.0);
    let t = slice(&full, a.functions, a.window_s, a.speedup);
    anyhow::ensure!(!t.requests.is_empty(), "the slice has no requests");
    let ready_delay_ms = (load_s / a.speedup * 1000.0).round() as u64;
    let exe = std::env::current_exe().context("cannot find the gpufn binary")?;
    let names: Vec<String> = (0..t.functions.len())
        .map(|i| format!("replay-{i}"))
        .collect();
    for (name, f) in names.iter().zip(&t.functions) {
        let spec = json!({
            "name": name,
            "command": [exe.to_string_lossy(), "sleep-app"],
            "workdir": "/",
            "env": {"READY_DELAY_MS": ready_delay_ms.to_string()},
            "gpu": {"memory_gb": f.memory_gb},
            "scaling": scaling(policy, a.idle_timeout_s),
        });
        api.json(api.request(Method::POST, "/api/v1/functions").json(&spec))
            .await?;
    }
    eprintln!(
        "# replaying {} requests of {} functions over {:.0} s (x{} faster; cold start {} ms; {})",
        t.requests.len(),
        t.functions.len(),
        t.requests.last().map_or(0.0, |r| r.t),
        a.speedup,
        ready_delay_ms,
        policy.name()
    );
    let from_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let start = tokio::time::Instant::now() + Duration::from_millis(500);
    let sends = t.requests.iter().map(|r| {
        let req = api.request(
            Method::GET,
            &format!(
                "/function/{}/work?ms={}",
                names[r.function as usize],
                (r.duration_s * 1000.0).round() as u64
            ),
        );
        let at = start + Duration::from_secs_f64(r.t);
        async move {
            tokio::time::sleep_until(at).await;
            match req.send().await {
                Ok(resp) => {
                    let cold = resp
                        .headers()
                        .get("x-gpufn-cold-start")
                        .is_some_and(|v| v == "true");
                    let ok = resp.status().is_success();
                    let _ = resp.bytes().await;
                    (ok, cold)
                }
                Err(_) => (false, false),
            }
        }
    });
    let results = join_all(sends).await;
    let failed = results.iter().filter(|(ok, _)| !ok).count();
    let cold = results.iter().filter(|(_, c)| *c).count();
    let mut gb_s = 0.0;
    for name in &names {
        let bill = api
            .json(api.request(Method::GET, "/api/v1/billing").query(&[
                ("function", name.as_str()),
                ("from", &from_unix.to_string()),
            ]))
            .await?;
        gb_s += bill[0]["gb_seconds"].as_f64().unwrap_or(0.0);
    }
    let config = SimConfig {
        cold_start_s: ready_delay_ms as f64 / 1000.0 + a.platform_overhead_ms / 1000.0,
        // The predictive policy's keep-alive while it learns: the live functions' idle timeout.
        histogram_fallback_s: f64::from(a.idle_timeout_s),
        ..SimConfig::default()
    };
    let predicted = simulate(&t, policy, config);
    // The same prediction with the starts this run actually took (allocate + pull + spawn +
    // ready) in place of the assumed load + overhead: compressed loads are tens of milliseconds,
    // where probe granularity and a busy machine are a large share of a start — and a longer start
    // queues more requests behind it, all of them cold.
    let mut starts = Vec::new();
    for name in &names {
        let rows = api
            .json(
                api.request(
                    Method::GET,
                    &format!("/api/v1/functions/{name}/cold-starts"),
                )
                .query(&[("limit", "1000")]),
            )
            .await?;
        starts.extend(rows.as_array().into_iter().flatten().map(|c| {
            ["gpu_allocate_ms", "image_pull_ms", "start_ms", "ready_ms"]
                .iter()
                .map(|k| c[*k].as_f64().unwrap_or(0.0))
                .sum::<f64>()
                / 1000.0
        }));
    }
    starts.sort_by(f64::total_cmp);
    let with_starts = (!starts.is_empty()).then(|| {
        let mut measured = t.clone();
        measured.cold_start_samples.clone_from(&starts);
        simulate(&measured, policy, config)
    });
    if !a.keep {
        for name in &names {
            let _ = api
                .send(api.request(Method::DELETE, &format!("/api/v1/functions/{name}")))
                .await;
        }
    }
    let n = results.len() as f64;
    let diff = |m: f64, p: f64| {
        if p == 0.0 {
            "-".to_string()
        } else {
            format!("{:+.1} %", (m - p) / p * 100.0)
        }
    };
    let rate = cold as f64 / n;
    let (m_rate, m_gb_s) = with_starts.as_ref().map_or((f64::NAN, f64::NAN), |w| {
        (w.cold_start_rate, w.active_billed_gb_seconds)
    });
    let shown = |v: String| if with_starts.is_some() { v } else { "-".into() };
    table::print(
        &[
            "",
            "MEASURED",
            "SIMULATED",
            "DIFFERENCE",
            "SIMULATED (MEASURED STARTS)",
            "DIFFERENCE",
        ],
        &[
            vec![
                "requests".into(),
                results.len().to_string(),
                predicted.requests.to_string(),
                String::new(),
                shown(predicted.requests.to_string()),
                String::new(),
            ],
            vec![
                "failed".into(),
                failed.to_string(),
                "0".into(),
                String::new(),
                shown("0".into()),
                String::new(),
            ],
            vec![
                "cold-start rate".into(),
                format!("{:.2} %", rate * 100.0),
                format!("{:.2} %", predicted.cold_start_rate * 100.0),
                diff(rate, predicted.cold_start_rate),
                shown(format!("{:.2} %", m_rate * 100.0)),
                shown(diff(rate, m_rate)),
            ],
            vec![
                "billed GB-s (busy, per-second)".into(),
                format!("{gb_s:.0}"),
                format!("{:.0}", predicted.active_billed_gb_seconds),
                diff(gb_s, predicted.active_billed_gb_seconds),
                shown(format!("{m_gb_s:.0}")),
                shown(diff(gb_s, m_gb_s)),
            ],
        ],
    );
    if let (Some(lo), Some(hi)) = (starts.first(), starts.last()) {
        println!(
            "# starts measured: {} (p50 {:.1} ms, {:.1}..{:.1} ms); assumed: {:.1} ms",
            starts.len(),
            starts[starts.len() / 2] * 1000.0,
            lo * 1000.0,
            hi * 1000.0,
            config.cold_start_s * 1000.0
        );
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_predictive_replay_compresses_the_cold_cost_to_whole_seconds() {
        assert_eq!(
            replay_policy("fixed", 1000.0, 2).unwrap(),
            Policy::Fixed(2.0)
        );
        assert_eq!(
            replay_policy("predictive", 100.0, 1).unwrap(),
            Policy::Predictive(3.0)
        );
        assert_eq!(
            replay_policy("predictive:600", 200.0, 1).unwrap(),
            Policy::Predictive(3.0)
        );
        let e = replay_policy("predictive", 1000.0, 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--policy") && e.contains("0.3 s"), "{e}");
        assert!(replay_policy("histogram", 100.0, 1).is_err());
        let s = scaling(Policy::Predictive(3.0), 1);
        assert_eq!(s["keep_alive"], "predictive");
        assert_eq!(s["cold_cost_s"], 3);
    }
}
