//! `gpufn tasks`, `gpufn task ID [--wait|--cancel]`, and waiting for `invoke --async --wait`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::anyhow;
use base64::Engine;
use reqwest::Method;
use serde_json::Value;

use crate::client::Api;
use crate::table;

fn is_final(state: &str) -> bool {
    !matches!(state, "queued" | "running")
}

async fn fetch(api: &Api, id: &str) -> anyhow::Result<Value> {
    api.json(api.request(Method::GET, &format!("/api/v1/tasks/{id}")))
        .await
}

/// Polls until the task is final (every 200 ms at first, backing off to 2 s).
async fn wait(api: &Api, id: &str) -> anyhow::Result<Value> {
    let mut pause = Duration::from_millis(200);
    loop {
        let v = fetch(api, id).await?;
        if is_final(v["state"].as_str().unwrap_or("failed")) {
            return Ok(v);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
    }
}

pub async fn wait_and_print_body(api: &Api, id: &str, quiet: bool) -> anyhow::Result<ExitCode> {
    let v = wait(api, id).await?;
    let state = v["state"].as_str().unwrap_or_default();
    let result = &v["result"];
    let mut out = std::io::stdout().lock();
    if let Some(text) = result["body"].as_str() {
        out.write_all(text.as_bytes())?;
    } else if let Some(b64) = result["body_base64"].as_str() {
        out.write_all(&base64::engine::general_purpose::STANDARD.decode(b64)?)?;
    } else if result["body_url"].is_string() {
        let resp = api
            .send(api.request(Method::GET, &format!("/api/v1/tasks/{id}/result")))
            .await?;
        out.write_all(&resp.bytes().await?)?;
    }
    out.flush()?;
    if !quiet {
        eprintln!(
            "# task {id} {state} after {} attempt(s){}",
            v["attempts"],
            result["status"]
                .as_i64()
                .map(|s| format!(", status {s}"))
                .unwrap_or_default()
        );
    }
    Ok(if state == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn show(
    api: &Api,
    id: &str,
    wait_for_it: bool,
    cancel: bool,
) -> anyhow::Result<ExitCode> {
    let v = if cancel {
        api.json(api.request(Method::POST, &format!("/api/v1/tasks/{id}/cancel")))
            .await?
    } else if wait_for_it {
        wait(api, id).await?
    } else {
        fetch(api, id).await?
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    let state = v["state"]
        .as_str()
        .ok_or_else(|| anyhow!("the server's answer has no state"))?;
    Ok(if wait_for_it && state != "succeeded" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn list(
    api: &Api,
    function: Option<String>,
    state: Option<String>,
    limit: usize,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut query = vec![("limit", limit.to_string())];
    query.extend(function.map(|f| ("function", f)));
    query.extend(state.map(|s| ("state", s)));
    let v = api
        .json(api.request(Method::GET, "/api/v1/tasks").query(&query))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let text = |v: &Value, k: &str| table::cell(v, &[k]);
    let rows: Vec<Vec<String>> = table::items(&v)
        .iter()
        .map(|t| {
            vec![
                text(t, "task_id"),
                text(t, "function"),
                text(t, "state"),
                text(t, "attempts"),
                t["result"]["status"]
                    .as_i64()
                    .map_or("-".into(), |s| s.to_string()),
                text(t, "created_at"),
            ]
        })
        .collect();
    table::print(
        &["TASK", "FUNCTION", "STATE", "ATTEMPTS", "STATUS", "CREATED"],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}
