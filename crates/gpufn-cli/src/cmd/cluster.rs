//! `gpufn gpus | quota`.

use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Value, json};

use crate::client::Api;
use crate::table;

pub async fn gpus(api: &Api, as_json: bool) -> anyhow::Result<ExitCode> {
    let v = api.json(api.request(Method::GET, "/api/v1/gpus")).await?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &Value, k: &str| table::cell(v, &[k]);
    let rows: Vec<Vec<String>> = table::items(&v)
        .iter()
        .map(|c| {
            vec![
                text(c, "index"),
                text(c, "type"),
                format!("{} GB", text(c, "memory_gb")),
                format!("{} GB", text(c, "allocated_gb")),
                text(c, "instance"),
                if c["simulated"].as_bool() == Some(true) {
                    "simulated"
                } else {
                    "nvml"
                }
                .into(),
            ]
        })
        .collect();
    table::print(
        &["INDEX", "TYPE", "MEMORY", "ALLOCATED", "INSTANCE", "SOURCE"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn quota(api: &Api, set: Option<u32>) -> anyhow::Result<ExitCode> {
    let req = match set {
        Some(cards) => api
            .request(Method::PUT, "/api/v1/quota")
            .json(&json!({ "cards": cards })),
        None => api.request(Method::GET, "/api/v1/quota"),
    };
    let v = api.json(req).await?;
    println!(
        "quota: {} cards ({} in use, {} on this machine)",
        v["cards"], v["used"], v["total_cards"]
    );
    Ok(ExitCode::SUCCESS)
}
