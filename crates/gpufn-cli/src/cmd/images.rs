//! `gpufn pull` and `gpufn images`, and the pre-pull `gpufn deploy` does for container functions.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{Api, error_for_status};
use crate::table;
use crate::table::cell as s;

/// Pulls `image` into the server's cache, drawing a progress bar (layers, bytes, speed) on a
/// terminal and one summary line otherwise.
pub async fn pull(
    api: &Api,
    image: &str,
    auth: Option<&gpufn_spec::RawRegistryAuth>,
) -> anyhow::Result<()> {
    let resp = api
        .send(
            api.request(Method::POST, "/api/v1/images/pull")
                .json(&json!({"image": image, "registry_auth": auth})),
        )
        .await?;
    let resp = error_for_status(resp).await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {elapsed}",
        )
        .map_err(|e| anyhow!("progress style: {e}"))?
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut layer_bytes: HashMap<String, u64> = HashMap::new();
    let mut layers_total = 0usize;
    let mut layers_done = 0usize;
    let mut buf: Vec<u8> = Vec::new();
    let mut stream = resp.bytes_stream();
    let mut last: Option<Value> = None;
    while let Some(chunk) = stream.next().await {
        buf.extend_from_slice(&chunk?);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            match ev["event"].as_str().unwrap_or_default() {
                "resolved" => {
                    let layers = ev["layers"].as_array().cloned().unwrap_or_default();
                    layers_total = layers.len();
                    let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
                    bar.set_length(total);
                    bar.set_message(format!("pulling {} layers", layers_total));
                    if ev["cached"].as_bool() == Some(true) {
                        bar.set_position(total);
                    }
                }
                "progress" => {
                    let d = ev["digest"].as_str().unwrap_or_default().to_string();
                    layer_bytes.insert(d, ev["bytes"].as_u64().unwrap_or(0));
                    bar.set_position(layer_bytes.values().sum());
                }
                "layer_done" => {
                    layers_done += 1;
                    bar.set_message(format!("layers {layers_done}/{layers_total}"));
                }
                "unpacked" => bar.set_message("unpacked".to_string()),
                "done" | "error" => last = Some(ev),
                _ => {}
            }
        }
    }
    bar.finish_and_clear();
    let Some(last) = last else {
        bail!("the server ended the pull of {image} without a result");
    };
    if last["event"] == "error" {
        bail!("{}", s(&last, &["error", "message"]));
    }
    let layers = last["image"]["layers"].as_array().map_or(0, Vec::len);
    let bytes: u64 = last["image"]["layers"]
        .as_array()
        .map(|l| l.iter().filter_map(|x| x["size"].as_u64()).sum())
        .unwrap_or(0);
    eprintln!(
        "{} {} ({layers} layers, {:.1} MB{})",
        if last["cache_hit"] == true {
            "image cached:"
        } else {
            "pulled"
        },
        s(&last, &["image", "reference"]),
        bytes as f64 / 1e6,
        if last["cache_hit"] == true {
            String::new()
        } else {
            format!(" in {} ms", s(&last, &["elapsed_ms"]))
        }
    );
    Ok(())
}

pub async fn list(api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    let v = api.json(api.request(Method::GET, "/api/v1/images")).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = table::items(&v)
        .iter()
        .map(|i| {
            let layers = i["layers"].as_array().cloned().unwrap_or_default();
            let bytes: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
            vec![
                s(i, &["reference"]),
                layers.len().to_string(),
                format!("{:.1}", bytes as f64 / 1e6),
                format!("{:.1}", i["rootfs_bytes"].as_f64().unwrap_or(0.0) / 1e6),
            ]
        })
        .collect();
    table::print(&["IMAGE", "LAYERS", "PULLED MB", "UNPACKED MB"], &rows);
    Ok(ExitCode::SUCCESS)
}
