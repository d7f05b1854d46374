//! `gpufn deploy | list | get | delete | instances | logs`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use crate::client::{Api, error_for_status};
use crate::{specfile, table};

use crate::table::cell as s;

pub async fn deploy(api: &Api, file: &Path) -> anyhow::Result<ExitCode> {
    for loaded in specfile::load_all(file)? {
        for field in &loaded.ignored {
            eprintln!("ignored (gpufn does not use it): {field}");
        }
        deploy_one(api, &loaded.spec).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn deploy_one(api: &Api, raw: &gpufn_spec::RawSpec) -> anyhow::Result<()> {
    if raw.runtime.as_deref() == Some("container") {
        if let Some(image) = &raw.image {
            // Pre-pull with progress; the deploy then finds the image in the cache and pins the
            // revision to its digest. A pull error ends here, with the registry's reason.
            super::images::pull(api, image, raw.registry_auth.as_ref()).await?;
        }
    }
    let resp = api
        .send(api.request(Method::POST, "/api/v1/functions").json(raw))
        .await?;
    let created = resp.status() == reqwest::StatusCode::CREATED;
    let v: Value = error_for_status(resp).await?.json().await?;
    println!(
        "{} {} (revision {})",
        if created { "created" } else { "deployed" },
        s(&v, &["name"]),
        s(&v, &["revision"])
    );
    println!(
        "call it: curl {}",
        api.url(&format!("/function/{}/", s(&v, &["name"])))
    );
    Ok(())
}

pub async fn list(api: &Api, json: bool) -> anyhow::Result<ExitCode> {
    let v = api
        .json(api.request(Method::GET, "/api/v1/functions"))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = table::items(&v)
        .iter()
        .map(|f| {
            let gpu_type = f["spec"]["gpu"]["type"]
                .as_str()
                .unwrap_or("any")
                .to_string();
            vec![
                s(f, &["name"]),
                s(f, &["revision"]),
                format!("{gpu_type}/{}GB", s(f, &["spec", "gpu", "memory_gb"])),
                s(f, &["spec", "instance_concurrency"]),
                format!(
                    "{}/{}/{}/{}",
                    s(f, &["status", "starting"]),
                    s(f, &["status", "ready"]),
                    s(f, &["status", "busy"]),
                    s(f, &["status", "draining"])
                ),
                s(f, &["status", "in_flight"]),
                s(f, &["status", "queued"]),
            ]
        })
        .collect();
    table::print(
        &[
            "NAME",
            "REV",
            "GPU",
            "CONCURRENCY",
            "STARTING/READY/BUSY/DRAINING",
            "IN-FLIGHT",
            "QUEUED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn get(api: &Api, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v = api
        .json(api.request(Method::GET, &format!("/api/v1/functions/{name}")))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!(
            "{}",
            serde_yaml_ng::to_string(&v).context("formatting YAML")?
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(api: &Api, name: &str) -> anyhow::Result<ExitCode> {
    api.json(api.request(Method::DELETE, &format!("/api/v1/functions/{name}")))
        .await?;
    println!("deleted {name}");
    Ok(ExitCode::SUCCESS)
}

pub async fn instances(api: &Api, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let v = api
        .json(api.request(Method::GET, &format!("/api/v1/functions/{name}/instances")))
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = table::items(&v)
        .iter()
        .map(|i| {
            let ready_ms = i["cold_start"]["ready_ms"]
                .as_f64()
                .map_or("-".into(), |m| format!("{m:.0} ms"));
            let state = if i["frozen"] == true {
                format!("{} (frozen)", s(i, &["state"]))
            } else {
                s(i, &["state"])
            };
            vec![
                s(i, &["id"]),
                state,
                format!("{} ({})", s(i, &["gpu"]), s(i, &["gpu_type"])),
                s(i, &["in_flight"]),
                s(i, &["served"]),
                ready_ms,
                s(i, &["started_at"]),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "STATE",
            "GPU",
            "IN-FLIGHT",
            "SERVED",
            "READY-IN",
            "STARTED",
        ],
        &rows,
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn logs(api: &Api, name: &str, instance: &str, tail: usize) -> anyhow::Result<ExitCode> {
    let path = format!("/api/v1/functions/{name}/instances/{instance}/logs?tail={tail}");
    let resp = error_for_status(api.send(api.request(Method::GET, &path)).await?).await?;
    print!("{}", resp.text().await?);
    Ok(ExitCode::SUCCESS)
}
