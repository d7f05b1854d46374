//! The FC 3.0 API driven by the official Python SDK (alibabacloud-fc20230330), unchanged.

use std::path::PathBuf;

use crate::common::Server;
use crate::common::oci::{Registry, push_testapp, require};

fn sdk_python() -> PathBuf {
    let p = std::env::var_os("GPUFN_FC_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/fc-venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} missing: scripts/test.sh makes a venv with the FC SDK \
         (python3 -m venv target/fc-venv && target/fc-venv/bin/pip install alibabacloud-fc20230330)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_fc_sdk_drives_gpufn() {
    let python = sdk_python();
    require("runc");
    let registry = Registry::start().await;
    let image = push_testapp(&registry, "fc/app", "1", "fc").await;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--simulate-gpus",
            "2xtesla-t4:16",
            "--access-key",
            "LTAIgpufntest:s3cr3t",
            // A key that acts as an invoker (the script checks it cannot change anything).
            "--access-key",
            "LTAIinvoker:inv0ker:invoker",
            "--shutdown-grace-s",
            "5",
        ],
    );
    let endpoint = server.url.trim_start_matches("http://").to_string();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fc/fc_sdk.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([endpoint.as_str(), "LTAIgpufntest", "s3cr3t", image.as_str()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("FC SDK test passed"),
        "{stdout}\n{stderr}\n--- gpufn log ---\n{}",
        server.log()
    );
    // Deleted functions took their unpacked code with them; the refused zip left no partial
    // directory.
    let code = dir.path().join("fc-code");
    let left: Vec<String> = std::fs::read_dir(&code)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in fc-code: {left:?}");
    // Stop gracefully so the container is removed (a SIGKILL would leave it to the next start).
    let mut server = server;
    server.terminate();
}

#[tokio::test]
async fn without_access_keys_the_fc_api_refuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let resp = server
        .http
        .get(server.url("/2023-03-30/functions"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.headers().contains_key("x-fc-request-id"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["Code"], "InvalidAccessKeyId");
    assert!(v["Message"].as_str().unwrap().contains("--access-key"));
}
