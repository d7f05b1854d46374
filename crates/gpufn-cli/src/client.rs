//! A thin client of the control API that turns API errors into readable ones.

use std::path::Path;

use anyhow::{Context, anyhow};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

/// The server's API.
#[derive(Clone)]
pub struct Api {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

/// The token the CLI sends: `$GPUFN_TOKEN`, else `--token`, else `<data-dir>/admin.token` when
/// the server is on this machine (a loopback URL: the local admin token never goes elsewhere).
pub fn resolve_token(flag: Option<&str>, server: &str, data_dir: &Path) -> Option<String> {
    let clean = |t: String| {
        let t = t.trim().to_string();
        (!t.is_empty()).then_some(t)
    };
    if let Some(t) = std::env::var("GPUFN_TOKEN").ok().and_then(clean) {
        return Some(t);
    }
    if let Some(t) = flag.map(str::to_string).and_then(clean) {
        return Some(t);
    }
    if !is_loopback_url(server) {
        return None;
    }
    std::fs::read_to_string(data_dir.join("admin.token"))
        .ok()
        .and_then(clean)
}

/// Whether `url` names this machine (localhost, 127.0.0.0/8 or [::1]).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Api {
    pub fn new(server: &str, token: Option<String>) -> Self {
        // reqwest is built with rustls without a default provider (the registry client's choice);
        // one must be installed before any client is built.
        gpufn_oci::ensure_crypto_provider();
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(v) = token
            .as_deref()
            .and_then(|t| reqwest::header::HeaderValue::from_str(&format!("Bearer {t}")).ok())
        {
            let mut v = v;
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        Self {
            base: server.trim_end_matches('/').to_string(),
            http,
            token,
        }
    }

    /// The token this client sends, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
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
    if status == reqwest::StatusCode::UNAUTHORIZED {
        return format!(
            "{status}: {message}\n  (the CLI sends $GPUFN_TOKEN, else --token, else <data-dir>/admin.token for a server on this machine)"
        );
    }
    format!("{status}: {message}")
}

#[cfg(test)]
mod tests {
    use super::is_loopback_url;

    #[test]
    fn loopback_urls() {
        for u in [
            "http://127.0.0.1:8080",
            "http://localhost:1/",
            "http://[::1]:80",
            "https://127.0.0.2",
        ] {
            assert!(is_loopback_url(u), "{u}");
        }
        for u in [
            "http://10.0.0.1:8080",
            "http://gpu.example.com",
            "http://localhost.example.com:80",
            "http://[::2]:1",
        ] {
            assert!(!is_loopback_url(u), "{u}");
        }
    }
}
