//! `gpufn invoke NAME [PATH] [-d BODY]`: the body streams to stdout; status, instance and cold
//! start go to stderr so that stdout stays the function's own output.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow};
use futures_util::StreamExt;
use reqwest::Method;

use crate::client::Api;

/// `gpufn invoke` arguments.
#[derive(Debug, clap::Args)]
pub struct InvokeArgs {
    /// Function name.
    name: String,
    /// Path inside the function, e.g. /render?size=64.
    #[arg(default_value = "/")]
    path: String,
    /// Request body; @FILE reads a file, @- reads stdin. Implies POST.
    #[arg(short = 'd', long = "data")]
    data: Option<String>,
    /// HTTP method (default GET, or POST with -d).
    #[arg(short = 'X', long = "method")]
    method: Option<String>,
    /// Extra header, 'Name: value' (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// Do not print the summary line to stderr.
    #[arg(short, long)]
    quiet: bool,
    /// Invoke asynchronously: the request is stored as a task and its id printed.
    #[arg(long = "async")]
    is_async: bool,
    /// With --async: wait for the task to finish and print its result body.
    #[arg(long, requires = "is_async")]
    wait: bool,
    /// With --async: the task id to use (resubmitting the same id returns the same task).
    #[arg(long, requires = "is_async")]
    task_id: Option<String>,
    /// With --async: a URL that gets the task's record when it finishes.
    #[arg(long, requires = "is_async")]
    callback_url: Option<String>,
}

fn body(data: &str) -> anyhow::Result<Vec<u8>> {
    match data.strip_prefix('@') {
        Some("-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("reading stdin")?;
            Ok(buf)
        }
        Some(file) => std::fs::read(file).with_context(|| format!("cannot read {file}")),
        None => Ok(data.as_bytes().to_vec()),
    }
}

pub async fn run(api: &Api, args: InvokeArgs) -> anyhow::Result<ExitCode> {
    let method = match (&args.method, &args.data) {
        (Some(m), _) => Method::from_bytes(m.to_uppercase().as_bytes())
            .map_err(|_| anyhow!("-X: {m:?} is not an HTTP method"))?,
        (None, Some(_)) => Method::POST,
        (None, None) => Method::GET,
    };
    let path = if args.path.starts_with('/') {
        args.path.clone()
    } else {
        format!("/{}", args.path)
    };
    let prefix = if args.is_async {
        "async-function"
    } else {
        "function"
    };
    let mut req = api.request(method, &format!("/{prefix}/{}{path}", args.name));
    if let Some(id) = &args.task_id {
        req = req.header("x-gpufn-task-id", id);
    }
    if let Some(url) = &args.callback_url {
        req = req.header("x-gpufn-callback-url", url);
    }
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| anyhow!("-H: {h:?} must look like 'Name: value'"))?;
        req = req.header(k.trim(), v.trim());
    }
    if let Some(data) = &args.data {
        req = req.body(body(data)?);
    }
    let t0 = Instant::now();
    if args.is_async {
        let resp = crate::client::error_for_status(api.send(req).await?).await?;
        let v: serde_json::Value = resp.json().await?;
        let id = v["task_id"].as_str().unwrap_or_default().to_string();
        if !args.wait {
            println!("{id}");
            return Ok(ExitCode::SUCCESS);
        }
        if !args.quiet {
            eprintln!("# task {id} accepted; waiting");
        }
        return super::tasks::wait_and_print_body(api, &id, args.quiet).await;
    }
    let resp = api.send(req).await?;
    let status = resp.status();
    let header = |k: &str| {
        resp.headers()
            .get(k)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let (instance, cold, request_id) = (
        header("x-gpufn-instance-id"),
        header("x-gpufn-cold-start"),
        header("x-gpufn-request-id"),
    );
    let first_byte = t0.elapsed();
    let mut stream = resp.bytes_stream();
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.context("reading the response")?)?;
        out.flush()?;
    }
    drop(out);
    if !args.quiet {
        eprintln!(
            "# {status} · instance {instance} · {} · {:.0} ms to first byte, {:.0} ms total · request {request_id}",
            if cold == "true" { "COLD START" } else { "warm" },
            first_byte.as_secs_f64() * 1000.0,
            t0.elapsed().as_secs_f64() * 1000.0,
        );
    }
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
