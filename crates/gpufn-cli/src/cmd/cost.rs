//! `gpufn bill` (what was used) and `gpufn estimate` (what a workload would cost).

use std::process::ExitCode;

use gpufn_metering::{EstimateInput, Prices, estimate as compute};
use reqwest::Method;

use crate::client::Api;
use crate::table;

pub async fn bill(
    api: &Api,
    function: Option<String>,
    from: Option<String>,
    to: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let query: Vec<(&str, String)> = [("function", function), ("from", from), ("to", to)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
    let v = api
        .json(api.request(Method::GET, "/api/v1/billing").query(&query))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = table::items(&v)
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
            vec![
                r["function"].as_str().unwrap_or("-").to_string(),
                r["invocations"].to_string(),
                r["billed_seconds"].to_string(),
                format!("{:.0}", f("gb_seconds")),
                format!("{:.0}", f("idle_gb_seconds")),
                format!("{:.6}", f("cost_usd")),
            ]
        })
        .collect();
    table::print(
        &[
            "FUNCTION",
            "INVOCATIONS",
            "BILLED-S",
            "GB-S",
            "IDLE-GB-S",
            "COST-USD",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

/// `gpufn estimate` arguments.
#[derive(Debug, clap::Args)]
pub struct EstimateArgs {
    /// Invocations per day.
    #[arg(long)]
    invocations: f64,
    /// Seconds per invocation.
    #[arg(long)]
    duration_s: f64,
    /// GPU memory per instance, GB.
    #[arg(long)]
    gpu_memory_gb: f64,
    /// Dedicated GPU server price, USD per hour.
    #[arg(long, default_value_t = 2.0)]
    dedicated_usd_per_hour: f64,
    /// Active price, USD per GB-second.
    #[arg(long, default_value_t = Prices::default().active_usd_per_gb_s)]
    usd_per_gb_s: f64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub fn estimate(a: &EstimateArgs) -> anyhow::Result<ExitCode> {
    let input = EstimateInput {
        invocations_per_day: a.invocations,
        duration_s: a.duration_s,
        gpu_memory_gb: a.gpu_memory_gb,
        usd_per_gb_s: a.usd_per_gb_s,
        dedicated_usd_per_hour: a.dedicated_usd_per_hour,
    };
    if let Err((field, why)) = input.validate() {
        anyhow::bail!("--{}: {why}", field.replace('_', "-"));
    }
    let e = compute(input);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = vec![
        vec![
            "workload".into(),
            format!(
                "{} invocations/day × {} s × {} GB",
                a.invocations, a.duration_s, a.gpu_memory_gb
            ),
        ],
        vec![
            "gpufn (serverless)".into(),
            format!(
                "USD {:.4}/day  ({} × {} × {} × {})",
                e.serverless_usd_per_day,
                a.invocations,
                a.duration_s,
                a.gpu_memory_gb,
                a.usd_per_gb_s
            ),
        ],
        vec![
            "dedicated GPU".into(),
            format!(
                "USD {:.2}/day  (24 × {})",
                e.dedicated_usd_per_day, a.dedicated_usd_per_hour
            ),
        ],
        vec![
            "GPU utilization".into(),
            format!("{:.2} %", e.gpu_utilization_pct),
        ],
        vec!["saving".into(), format!("{:.2} %", e.saving_pct)],
        vec![
            "break-even".into(),
            format!("{:.0} invocations/day", e.break_even_invocations_per_day),
        ],
    ];
    table::print(&["", "per day"], &rows);
    Ok(ExitCode::SUCCESS)
}
