//! `gpufn-embed`: an HTTP function serving all-MiniLM-L6-v2 sentence embeddings.
//!
//! - `POST /embed {"texts": ["...", ...]}` → `{"model", "dim": 384, "embeddings": [[...], ...]}`
//!   (L2-normalized, so a dot product is the cosine similarity);
//! - `GET /health` answers only once the model is loaded (the server listens only then), so
//!   gpufn's cold-start record shows the real model load as `ready_ms`;
//! - `GET /stats`: requests, texts, forward passes, largest batch (dynamic batching at work).
//!
//! Environment: `PORT` (gpufn sets it), `MODEL_DIR` (config.json, model.safetensors,
//! tokenizer.json; default `model`), `MAX_BATCH` (32), `MAX_WAIT_MS` (5), `MAX_TEXTS` per request
//! (256), `MAX_TEXT_CHARS` (20000). Runs on the GPU when built with `--features cuda` and
//! `CUDA_VISIBLE_DEVICES` is set, on the CPU otherwise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gpufn_example_embed::{Batcher, DIM, EmbedFn, Embedder, pick_device};
use serde::Deserialize;
use serde_json::json;

struct App {
    batcher: Batcher,
    max_texts: usize,
    max_chars: usize,
    device: String,
}

fn env_num<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let port: u16 = env_num("PORT", 9000);
    let model_dir = PathBuf::from(std::env::var("MODEL_DIR").unwrap_or_else(|_| "model".into()));
    let t0 = Instant::now();
    let device = pick_device();
    let embedder = Arc::new(Embedder::load(&model_dir, device)?);
    // One warm-up pass, so the first real request does not pay for lazy initialisation.
    embedder.embed(&["warm up".to_string()])?;
    let device_name = format!("{:?}", embedder.device());
    eprintln!(
        "embed: model loaded from {} on {device_name} in {} ms",
        model_dir.display(),
        t0.elapsed().as_millis()
    );
    let (batcher, batch_loop) = Batcher::new(1024);
    let model = embedder.clone();
    let embed_fn: Arc<EmbedFn> =
        Arc::new(move |texts: &[String]| model.embed(texts).map_err(|e| format!("{e:#}")));
    tokio::spawn(batch_loop.run(
        embed_fn,
        env_num("MAX_BATCH", 32),
        Duration::from_millis(env_num("MAX_WAIT_MS", 5)),
    ));
    let app = Arc::new(App {
        batcher,
        max_texts: env_num("MAX_TEXTS", 256),
        max_chars: env_num("MAX_TEXT_CHARS", 20_000),
        device: device_name,
    });
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/stats", get(stats))
        .route("/embed", post(embed))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    eprintln!("embed: listening on {port}");
    axum::serve(listener, router).await?;
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedRequest {
    texts: Vec<String>,
}

fn bad(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": {"message": message}})),
    )
        .into_response()
}

async fn embed(State(app): State<Arc<App>>, body: axum::body::Bytes) -> Response {
    let req: EmbedRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad(format!("body must be {{\"texts\": [\"...\"]}}: {e}")),
    };
    if req.texts.is_empty() {
        return bad("texts: must hold at least one text".into());
    }
    if req.texts.len() > app.max_texts {
        return bad(format!(
            "texts: at most {} per request (got {})",
            app.max_texts,
            req.texts.len()
        ));
    }
    if let Some((i, t)) = req
        .texts
        .iter()
        .enumerate()
        .find(|(_, t)| t.chars().count() > app.max_chars)
    {
        return bad(format!(
            "texts[{i}]: at most {} characters (got {})",
            app.max_chars,
            t.chars().count()
        ));
    }
    let n = req.texts.len();
    match app.batcher.embed(req.texts).await {
        Ok(embeddings) => axum::Json(json!({
            "model": "all-MiniLM-L6-v2",
            "dim": DIM,
            "count": n,
            "embeddings": embeddings,
        }))
        .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": {"message": e}})),
        )
            .into_response(),
    }
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    let s = app.batcher.stats();
    axum::Json(json!({
        "device": app.device,
        "requests": s.requests.load(Ordering::Relaxed),
        "texts": s.texts.load(Ordering::Relaxed),
        "batches": s.batches.load(Ordering::Relaxed),
        "largest_batch": s.largest.load(Ordering::Relaxed),
    }))
    .into_response()
}
