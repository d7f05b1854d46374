//! The CLI against a real server: deploy from YAML, list, get, instances, invoke, delete, and bad
//! specs refused with the field named.

use crate::common::*;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn the_cli_covers_the_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "2xtesla-t4:16"]);
    // A spec with a relative workdir, resolved against the spec file's own directory.
    let spec_dir = dir.path().join("fn");
    std::fs::create_dir_all(&spec_dir).unwrap();
    std::fs::copy(fixture_dir().join("testfn.py"), spec_dir.join("testfn.py")).unwrap();
    let spec = spec_dir.join("gpufn.yaml");
    std::fs::write(
        &spec,
        "name: hello\ncommand: [python3, testfn.py]\nworkdir: .\ngpu: {type: tesla-t4, memory_gb: 2}\n",
    )
    .unwrap();
    let out = s.cli(&["deploy", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("created hello (revision 1)"),
        "{}",
        stdout(&out)
    );

    let out = s.cli(&["list"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.lines().next().unwrap().starts_with("NAME"), "{text}");
    assert!(
        text.contains("hello") && text.contains("tesla-t4/2GB"),
        "{text}"
    );

    let out = s.cli(&[
        "invoke",
        "hello",
        "/echo?a=b",
        "-d",
        "payload",
        "-H",
        "x-k: v",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            v["method"].as_str(),
            v["body"].as_str(),
            v["query"].as_str()
        ),
        (Some("POST"), Some("payload"), Some("a=b"))
    );
    assert_eq!(v["headers"]["x-k"], "v");
    assert!(stderr(&out).contains("COLD START"), "{}", stderr(&out));
    let out = s.cli(&["invoke", "hello", "echo"]);
    assert!(stderr(&out).contains("warm"), "{}", stderr(&out));

    let out = s.cli(&["instances", "hello"]);
    let text = stdout(&out);
    assert!(
        text.contains("hello-") && text.contains("ready") && text.contains("(tesla-t4)"),
        "{text}"
    );

    let out = s.cli(&["get", "hello"]);
    let text = stdout(&out);
    assert!(text.contains("instance_concurrency: 1"), "{text}");
    assert!(
        text.contains(&format!(
            "workdir: {}",
            spec_dir.canonicalize().unwrap().display()
        )),
        "{text}"
    );

    let out = s.cli(&["gpus"]);
    assert!(stdout(&out).contains("simulated"), "{}", stdout(&out));
    let out = s.cli(&["quota", "--set", "4"]);
    assert!(stdout(&out).contains("quota: 4 cards"), "{}", stdout(&out));

    // A failing call exits non-zero.
    let out = s.cli(&["invoke", "hello", "/crash"]);
    assert!(!out.status.success());

    let out = s.cli(&["delete", "hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = s.cli(&["get", "hello"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("404") && stderr(&out).contains("not deployed"),
        "{}",
        stderr(&out)
    );
    assert!(
        s.get_json("/api/v1/functions")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn bad_specs_are_refused_naming_the_field_and_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let cases = [
        ("gpu: {memory_gb: 0}", "gpu.memory_gb: must be >= 1 (got 0)"),
        (
            "gpu: {memory_gb: 17}",
            "gpu.memory_gb: 17 GB is more than the largest matching card has (16 GB)",
        ),
        (
            "gpu: {type: ada-1, memory_gb: 1}",
            "gpu.type: no card of type \"ada-1\"",
        ),
        (
            "gpu: {memory_gb: 1}\nsurprise: 1",
            "unknown field `surprise`",
        ),
        (
            "gpu: {memory_gb: 1}\ninstance_concurrency: 500",
            "instance_concurrency: must be <= 200 (got 500)",
        ),
    ];
    for (extra, want) in cases {
        let spec = dir.path().join("bad.yaml");
        std::fs::write(
            &spec,
            format!("name: bad\ncommand: [python3, x.py]\n{extra}\n"),
        )
        .unwrap();
        let out = s.cli(&["deploy", "-f", spec.to_str().unwrap()]);
        assert!(!out.status.success(), "{extra}");
        assert!(stderr(&out).contains(want), "{extra}: {}", stderr(&out));
    }
    // The API: 400 with the field.
    let (status, v) = s
        .deploy_yaml(
            "name: bad\ncommand: [nonexistent-program-xyz]\ngpu: {memory_gb: 1}\nworkdir: /\n",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "invalid_spec");
    assert_eq!(v["error"]["field"], "command[0]");
    let (status, v) = s.deploy_yaml("name: Bad_Name\ngpu: {memory_gb: 0}\n").await;
    assert_eq!(status, 400);
    let fields: Vec<&str> = v["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "command", "gpu.memory_gb"]);
    // Nothing was stored.
    assert!(
        s.get_json("/api/v1/functions")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    // A CLI pointed at nothing says so.
    let out = std::process::Command::new(BIN)
        .args(["list", "--server", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach gpufn"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn the_bundled_example_deploys_as_is_and_renders_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let spec = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/mandelbrot/gpufn.yaml");
    let out = s.cli(&["deploy", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let resp = s
        .http
        .get(s.url("/function/mandelbrot/render?w=32&h=24&iter=50"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "true");
    let png = resp.bytes().await.unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // Width and height from the IHDR chunk.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 32);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 24);
    // Bad parameters are the app's own 400, passed through.
    let resp = s
        .http
        .get(s.url("/function/mandelbrot/render?w=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "false");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embed_example_deploys_as_is_and_serves_real_embeddings() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        root.join("examples/embed/model/model.safetensors").exists(),
        "run examples/embed/fetch-model.sh first (scripts/test.sh does)"
    );
    assert!(
        root.join("target/debug/gpufn-embed").exists()
            || root.join("target/release/gpufn-embed").exists(),
        "build the example first: cargo build -p gpufn-example-embed (cargo test --workspace does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "1xtesla-t4:16"]);
    let spec = root.join("examples/embed/gpufn.yaml");
    let out = s.cli(&["deploy", "-f", spec.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let texts = serde_json::json!({"texts": [
        "A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."
    ]});
    let post = |body: serde_json::Value| {
        s.http
            .post(s.url("/function/embed/embed"))
            .json(&body)
            .send()
    };
    let resp = post(texts.clone()).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "true");
    let v: serde_json::Value = resp.json().await.unwrap();
    let vecs: Vec<Vec<f64>> = serde_json::from_value(v["embeddings"].clone()).unwrap();
    assert_eq!(vecs.len(), 3);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    for e in &vecs {
        assert_eq!(e.len(), 384);
        assert!((dot(e, e) - 1.0).abs() < 1e-3, "normalized");
    }
    assert!(dot(&vecs[0], &vecs[1]) > dot(&vecs[0], &vecs[2]) + 0.2);
    // The cold start's ready phase is the real model load.
    let cold = s
        .get_json("/api/v1/functions/embed/cold-starts?limit=1")
        .await;
    assert!(cold[0]["ready_ms"].as_f64().unwrap() > 0.0, "{cold}");
    // Warm, and the app's own 400 for a bad body, passed through.
    let resp = post(texts).await.unwrap();
    assert_eq!(resp.headers()["x-gpufn-cold-start"], "false");
    let resp = post(serde_json::json!({"texts": []})).await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[test]
fn estimate_reproduces_the_seeds_examples() {
    let run = |n: &str| {
        let out = std::process::Command::new(BIN)
            .args([
                "estimate",
                "--invocations",
                n,
                "--duration-s",
                "1",
                "--gpu-memory-gb",
                "4",
                "--json",
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let e1 = run("3600");
    assert!(
        (e1["serverless_usd_per_day"].as_f64().unwrap() - 0.2592).abs() < 1e-9,
        "{e1}"
    );
    assert_eq!(e1["dedicated_usd_per_day"], 48.0);
    assert!(
        (e1["gpu_utilization_pct"].as_f64().unwrap() - 4.17).abs() < 0.01,
        "{e1}"
    );
    assert!(e1["saving_pct"].as_f64().unwrap() > 99.0);
    let e2 = run("50000");
    assert!(
        (e2["serverless_usd_per_day"].as_f64().unwrap() - 3.6).abs() < 1e-9,
        "{e2}"
    );
    assert!(e2["saving_pct"].as_f64().unwrap() > 90.0);
    assert!(e2["break_even_invocations_per_day"].as_f64().unwrap() > 666_666.0);
    // The human table.
    let out = std::process::Command::new(BIN)
        .args([
            "estimate",
            "--invocations",
            "3600",
            "--duration-s",
            "1",
            "--gpu-memory-gb",
            "4",
        ])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("USD 0.2592/day")
            && text.contains("USD 48.00/day")
            && text.contains("99.46 %"),
        "{text}"
    );
    // Bad input names the flag.
    let out = std::process::Command::new(BIN)
        .args([
            "estimate",
            "--invocations",
            "-5",
            "--duration-s",
            "1",
            "--gpu-memory-gb",
            "4",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--invocations"), "{}", stderr(&out));
}

#[test]
fn simulate_compares_policies_on_a_trace() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("pareto.svg");
    let trace = fixture_dir().join("small-trace.csv");
    let out = std::process::Command::new(BIN)
        .args([
            "simulate",
            "--trace",
            trace.to_str().unwrap(),
            "--cold-start-s",
            "10",
        ])
        .args([
            "--policy",
            "zero",
            "--policy",
            "fixed:300",
            "--policy",
            "oracle",
            "--policy",
            "always-on",
        ])
        .args(["--json", "--plot", plot.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    assert_eq!(names, ["zero", "fixed:300", "oracle", "always-on"]);
    for r in rows {
        for k in [
            "requests",
            "cold_starts",
            "cold_start_rate",
            "p75_function_cold_start_pct",
            "p50_latency_s",
            "p99_latency_s",
            "busy_gb_seconds",
            "billed_gb_seconds",
            "efficiency",
            "cost_usd",
            "peak_cards",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert_eq!(r["requests"], 45);
    }
    let (zero, fixed) = (&rows[0], &rows[1]);
    // Every request at zero keep-alive is cold; a 5-minute keep-alive keeps `a` (every 2 min) warm.
    assert_eq!(zero["cold_starts"], 45);
    assert!(fixed["cold_starts"].as_u64().unwrap() < 20, "{fixed}");
    assert!(
        fixed["billed_gb_seconds"].as_f64().unwrap() > zero["billed_gb_seconds"].as_f64().unwrap()
    );
    assert_eq!(rows[3]["cold_starts"], 0, "always-on never starts cold");
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains(">oracle<"), "{svg}");
    // The table, and a bad policy named.
    let out = std::process::Command::new(BIN)
        .args(["simulate", "--trace", trace.to_str().unwrap()])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.contains("POLICY") && text.contains("histogram") && text.contains("fixed:1200"),
        "{text}"
    );
    let out = std::process::Command::new(BIN)
        .args([
            "simulate",
            "--trace",
            trace.to_str().unwrap(),
            "--policy",
            "sometimes",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--policy: \"sometimes\""),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn replay_sends_a_compressed_trace_and_compares_with_the_simulation() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--simulate-gpus", "10xt4:16"]);
    let trace = fixture_dir().join("small-trace.csv");
    let out = s.cli(&[
        "replay",
        "--trace",
        trace.to_str().unwrap(),
        "--speedup",
        "2000",
        "--cold-start-s",
        "20",
    ]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l.split_whitespace()
                    .skip(name.split_whitespace().count())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // Measured, simulated, and simulated again with the starts the run measured.
    assert_eq!(row("requests"), ["45", "45", "45"], "{text}");
    assert_eq!(row("failed"), ["0", "0", "0"], "{text}");
    assert!(text.contains("# starts measured: "), "{text}");
    assert!(
        text.contains("cold-start rate") && text.contains("billed GB-s"),
        "{text}"
    );
    // The replayed functions are removed afterwards.
    assert!(
        s.get_json("/api/v1/functions")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
}
