//! A thin client of the control API that turns API errors into readable ones.

use anyhow::{Context, anyhow};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

/// The server's API.
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(server: &str) -> Self {
        // reqwest is built with rustls without a default provider (the registry client's choice);
        // one must be installed before any client is built.
        gpufn_oci::ensure_crypto_provider();
        Self {
            base: server.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends and returns the JSON answer, or the API's error as an error.
    pub async fn json(&self, req: RequestBuilder) -> anyhow::Result<Value> {
        let resp = self.send(req).await?;
        let resp = error_for_status(resp).await?;
        resp.json().await.context("reading the server's answer")
    }

    pub async fn send(&self, req: RequestBuilder) -> anyhow::Result<Response> {
        req.send().await.with_context(|| {
            format!(
                "cannot reach gpufn at {} (is `gpufn serve` running? set --server or GPUFN_SERVER)",
                self.base
            )
        })
    }
}

/// Turns a non-2xx answer into an error carrying the API's message.
pub async fn error_for_status(resp: Response) -> anyhow::Result<Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    Err(anyhow!(api_error_message(status, &body)))
}

pub fn api_error_message(status: reqwest::StatusCode, body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let err = parsed.as_ref().and_then(|v| v.get("error"));
    let Some(err) = err else {
        return format!("{status}: {}", body.trim());
    };
    let details: Vec<String> = err
        .get("details")
        .and_then(Value::as_array)
        .map(|d| {
            d.iter()
                .filter_map(|e| {
                    Some(format!(
                        "{}: {}",
                        e.get("field")?.as_str()?,
                        e.get("message")?.as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    if details.len() > 1 {
        return format!("{status}: invalid spec:\n  {}", details.join("\n  "));
    }
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    format!("{status}: {message}")
}
