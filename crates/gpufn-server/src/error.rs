//! API errors: one type, one JSON shape (`{"error": {"code", "message", "field"}}`), one place that
//! maps them to HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gpufn_spec::{FieldError, SpecError};
use serde::Serialize;

/// An error answered to an API or gateway caller.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code, e.g. `invalid_spec`, `queue_full`.
    pub code: &'static str,
    /// Human-readable reason.
    pub message: String,
    /// The request field at fault, if any.
    pub field: Option<String>,
    /// Every field error, for specs that break several rules.
    pub details: Vec<FieldError>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    details: &'a [FieldError],
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            details: Vec::new(),
            retry_after: None,
        }
    }

    /// 400 for a field.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::field(StatusCode::BAD_REQUEST, "invalid_request", field, message)
    }

    /// An error about one field, with its own status and code.
    pub fn field(
        status: StatusCode,
        code: &'static str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let field = field.into();
        let message = message.into();
        Self {
            details: vec![FieldError::new(field.clone(), message.clone())],
            field: Some(field.clone()),
            message: format!("{field}: {message}"),
            ..Self::new(status, code, "")
        }
    }

    /// 404 for an unknown function.
    pub fn no_function(name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "function_not_found",
            format!("function {name:?} is not deployed"),
        )
    }

    /// 500 for a failure that is ours, not the caller's; the detail goes to the log only.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!("{context}: {err}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context} failed; see the server log"),
        )
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Adds a field.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        let details = e.errors();
        Self {
            field: details.first().map(|d| d.field.clone()),
            details,
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_spec", e.to_string())
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl ApiError {
    /// The JSON document this error answers with (`{"error": {...}}`).
    pub fn json(&self) -> Vec<u8> {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                details: &self.details,
            },
        };
        // Strings and field errors only: serializing them cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The headers this error answers with, framing aside: the content type, `WWW-Authenticate`
    /// on a 401, `Retry-After` when set. Both gateways write these (one as bytes).
    pub fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(3);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: say which scheme is expected.
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gpufn\""),
            );
        }
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        h
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = Response::new(axum::body::Body::from(self.json()));
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers();
        resp
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gpufn_store::StoreError),
    /// GPU discovery failed.
    #[error(transparent)]
    Gpu(#[from] gpufn_gpu::DiscoveryError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A `--deploy` spec was refused.
    #[error("--deploy: {0}")]
    Deploy(ApiError),
    /// Serving failed.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A setting could not be used.
    #[error("{0}")]
    Config(String),
}

/// The error document every API error answers with (for the API description).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDoc {
    /// The error.
    pub error: ErrorDocInner,
}

/// `error` of [`ErrorDoc`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDocInner {
    /// Stable machine-readable code (`unauthorized`, `forbidden`, `invalid_spec`, `queue_full`...).
    pub code: String,
    /// Human-readable reason.
    pub message: String,
    /// The request field at fault.
    pub field: Option<String>,
    /// Every field error of a spec that breaks several rules: `{field, message}`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub details: Option<Vec<serde_json::Value>>,
}
