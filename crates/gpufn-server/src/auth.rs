//! Access control in the server: the token table (hashes, kept in memory and in the store), the
//! first admin token, the caller check every API route runs, the trigger check of
//! `/function/` and `/async-function/`, the browser rules (`Host` on loopback, CORS, write content
//! types) and the audit log. The rules themselves are pure, in `gpufn-auth`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gpufn_auth::{Action, Denied, Grant, Rejected, Role, TokenRecord};
use gpufn_spec::TriggerAuth;
use gpufn_store::{Store, StoredToken};
use serde::Serialize;

use crate::error::ApiError;
use crate::util::{from_ms, now_ms, rfc3339};

/// The file the first admin token is written to, in the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Access settings from the command line.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// Names besides the loopback ones that `Host` may carry when gpufn listens on loopback
    /// (`--public-host`).
    pub public_hosts: Vec<String>,
    /// Origins whose pages may call the API (`--cors-origin`); none by default.
    pub cors_origins: Vec<String>,
}

/// The server's access state.
#[derive(Debug)]
pub struct Access {
    tokens: RwLock<HashMap<String, TokenRecord>>,
    /// Grows on every change of the token table (create, revoke): a connection's remembered
    /// admission is valid only while it has not changed.
    generation: std::sync::atomic::AtomicU64,
    /// Whether the listener is on a loopback address (then `Host` is checked).
    loopback: bool,
    config: AccessConfig,
}

fn record(t: StoredToken) -> Option<TokenRecord> {
    Some(TokenRecord {
        role: t.role.parse().ok()?,
        id: t.id,
        hash: t.hash,
        functions: t.functions,
        name: t.name,
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        revoked_ms: t.revoked_ms,
        created_by: t.created_by,
    })
}

/// Why access could not be set up at start.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gpufn_store::StoreError),
    /// No random bytes.
    #[error(transparent)]
    Random(#[from] gpufn_auth::RandomError),
    /// The admin token file could not be written.
    #[error("cannot write {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A token as the API shows it (never the token text or its hash).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenView {
    /// Public id.
    pub id: String,
    /// Role: `viewer`, `invoker`, `developer` or `admin`.
    #[schema(value_type = String)]
    pub role: Role,
    /// Prefix of the functions it reaches, if limited.
    pub functions: Option<String>,
    /// Label.
    pub name: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, if it expires.
    pub expires_at: Option<String>,
    /// RFC 3339, if revoked.
    pub revoked_at: Option<String>,
    /// The token that created it.
    pub created_by: String,
    /// `active`, `expired` or `revoked`.
    pub state: &'static str,
}

impl TokenView {
    fn of(r: &TokenRecord, now: i64) -> Self {
        let time = |ms: Option<i64>| ms.map(|m| rfc3339(from_ms(m)));
        Self {
            id: r.id.clone(),
            role: r.role,
            functions: r.functions.clone(),
            name: r.name.clone(),
            created_at: rfc3339(from_ms(r.created_ms)),
            expires_at: time(r.expires_ms),
            revoked_at: time(r.revoked_ms),
            created_by: r.created_by.clone(),
            state: if r.revoked_ms.is_some() {
                "revoked"
            } else if r.expires_ms.is_some_and(|e| now >= e) {
                "expired"
            } else {
                "active"
            },
        }
    }
}

/// What a new token should be.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Its role.
    pub role: Role,
    /// Function-name prefix.
    pub functions: Option<String>,
    /// Label.
    pub name: Option<String>,
    /// Expiry, ms since the epoch.
    pub expires_ms: Option<i64>,
}

impl Access {
    /// Loads the tokens; on a store with none, creates the first admin token and writes it to
    /// `<data_dir>/admin.token` (0600). Logs where the file is, never the token.
    pub fn open(
        store: &Store,
        data_dir: &Path,
        loopback: bool,
        config: AccessConfig,
    ) -> Result<Self, AccessError> {
        let mut stored = store.tokens()?;
        if stored.is_empty() {
            let minted = gpufn_auth::mint()?;
            let path = data_dir.join(ADMIN_TOKEN_FILE);
            write_private(&path, format!("{}\n", minted.token).as_bytes()).map_err(|source| {
                AccessError::File {
                    path: path.clone(),
                    source,
                }
            })?;
            let t = StoredToken {
                id: minted.id.clone(),
                hash: minted.hash,
                role: Role::Admin.as_str().into(),
                functions: None,
                name: Some("first admin token".into()),
                created_ms: now_ms(),
                expires_ms: None,
                revoked_ms: None,
                created_by: "bootstrap".into(),
            };
            store.insert_token(&t)?;
            store.audit(
                now_ms(),
                "bootstrap",
                "admin",
                "token.create",
                &t.id,
                Some("admin"),
            )?;
            tracing::info!(
                "created the first admin token (id {}); it is in {} (mode 0600): the CLI on this machine uses it",
                t.id,
                path.display()
            );
            stored.push(t);
        }
        let tokens = stored
            .into_iter()
            .filter_map(|t| {
                let id = t.id.clone();
                let r = record(t);
                if r.is_none() {
                    tracing::error!(token = %id, "stored token has an unknown role; ignored");
                }
                r
            })
            .map(|r| (r.id.clone(), r))
            .collect();
        Ok(Self {
            tokens: RwLock::new(tokens),
            generation: std::sync::atomic::AtomicU64::new(0),
            loopback,
            config,
        })
    }

    /// The caller of a request with this `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Grant, Rejected> {
        let token = authorization
            .and_then(gpufn_auth::bearer)
            .ok_or(Rejected::Missing)?;
        let id = gpufn_auth::token_id(token).ok_or(Rejected::Invalid)?;
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(id)
            .ok_or(Rejected::Invalid)?
            .admit(token, now_ms())
    }

    /// The direct gateway's check of a token trigger request (anything it refuses goes to hyper,
    /// which answers 401 or 403 with the reason).
    /// Whether the `Authorization` value carries a valid token that may invoke `function`,
    /// remembering the admission in `cache` (one per client connection):
    /// the same `Authorization` value for the same function is admitted again without hashing
    /// while no token was created or revoked since and the token has not expired. A keep-alive
    /// connection sends the same token on every request.
    pub fn may_invoke_cached(
        &self,
        cache: &mut Option<Admitted>,
        authorization: Option<&[u8]>,
        function: &str,
    ) -> bool {
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        if let (Some(c), Some(auth)) = (cache.as_ref(), authorization) {
            if c.generation == generation
                && c.authorization == auth
                && c.function == function
                && c.expires_ms.is_none_or(|e| now_ms() < e)
            {
                return true;
            }
        }
        match self.admit_invoke(authorization, function) {
            Some(expires_ms) => {
                let c = cache.get_or_insert_with(Admitted::default);
                c.generation = generation;
                c.authorization.clear();
                c.authorization
                    .extend_from_slice(authorization.unwrap_or_default());
                c.function.clear();
                c.function.push_str(function);
                c.expires_ms = expires_ms;
                true
            }
            None => {
                *cache = None;
                false
            }
        }
    }

    /// The token's expiry (`Some(None)`: none) when it may invoke `function`.
    fn admit_invoke(&self, authorization: Option<&[u8]>, function: &str) -> Option<Option<i64>> {
        let token = authorization.and_then(gpufn_auth::bearer)?;
        let id = gpufn_auth::token_id(token)?;
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let r = tokens.get(id)?;
        r.may_invoke(token, function, now_ms)
            .then_some(r.expires_ms)
    }

    /// The caller of a trigger request to a function with `auth`: `None` for anonymous functions,
    /// else a grant that may invoke `function`.
    pub fn trigger(
        &self,
        auth: TriggerAuth,
        function: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Grant>, ApiError> {
        if auth == TriggerAuth::Anonymous {
            return Ok(None);
        }
        let grant = self
            .authenticate(
                headers
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
            )
            .map_err(unauthorized)?;
        grant
            .check(Action::Invoke, Some(function))
            .map_err(forbidden)?;
        Ok(Some(grant))
    }

    /// Whether a request with this `Host` may be served (DNS rebinding; only on loopback).
    pub fn host_allowed(&self, host: Option<&[u8]>) -> bool {
        !self.loopback || gpufn_auth::loopback_host_allowed(host, &self.config.public_hosts)
    }

    /// The configured origin matching a request's `Origin`, if any.
    pub fn cors_origin(&self, origin: Option<&[u8]>) -> Option<HeaderValue> {
        let origin = origin?;
        self.config
            .cors_origins
            .iter()
            .find(|o| o.as_bytes().eq_ignore_ascii_case(origin))
            .and_then(|o| HeaderValue::from_str(o).ok())
    }

    /// Whether CORS is configured at all (the direct gateway hands requests with an `Origin` to
    /// hyper then, where the headers are added).
    pub fn cors_enabled(&self) -> bool {
        !self.config.cors_origins.is_empty()
    }

    /// Every token, for the admin.
    pub fn list(&self) -> Vec<TokenView> {
        let now = now_ms();
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = tokens.values().map(|r| TokenView::of(r, now)).collect();
        v.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        v
    }

    /// Creates a token; returns it (the only time its text is shown) and its view.
    pub fn create(
        &self,
        store: &Store,
        by: &Grant,
        req: TokenRequest,
    ) -> Result<(String, TokenView), ApiError> {
        let minted = gpufn_auth::mint().map_err(|e| ApiError::internal("minting a token", e))?;
        let t = StoredToken {
            id: minted.id.clone(),
            hash: minted.hash,
            role: req.role.as_str().into(),
            functions: req.functions,
            name: req.name,
            created_ms: now_ms(),
            expires_ms: req.expires_ms,
            revoked_ms: None,
            created_by: by.token_id.clone(),
        };
        store
            .insert_token(&t)
            .map_err(|e| ApiError::internal("storing the token", e))?;
        let r = record(t).ok_or_else(|| ApiError::internal("storing the token", "bad role"))?;
        let view = TokenView::of(&r, now_ms());
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(r.id.clone(), r);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok((minted.token, view))
    }

    /// Revokes a token (it stays listed, as revoked).
    pub fn revoke(&self, store: &Store, id: &str) -> Result<TokenView, ApiError> {
        let row = store
            .revoke_token(id, now_ms())
            .map_err(|e| ApiError::internal("revoking the token", e))?
            .and_then(record)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "token_not_found",
                    format!("no token {id:?}"),
                )
            })?;
        let view = TokenView::of(&row, now_ms());
        self.tokens
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(row.id.clone(), row);
        // After the table changed: a connection that checks the generation after this sees the
        // revocation.
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Ok(view)
    }
}

/// A connection's last admitted trigger caller (see [`Access::may_invoke_cached`]).
#[derive(Debug, Default)]
pub struct Admitted {
    generation: u64,
    authorization: Vec<u8>,
    function: String,
    expires_ms: Option<i64>,
}

/// Writes `bytes` to a new file readable by its owner only.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// 401 for a rejected token.
pub fn unauthorized(r: Rejected) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", r.to_string())
}

/// 403 for a refused action.
pub fn forbidden(d: Denied) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", d.to_string())
}

/// 421 for a foreign `Host` on a loopback listener.
pub fn host_refused() -> ApiError {
    ApiError::new(
        StatusCode::MISDIRECTED_REQUEST,
        "host_not_allowed",
        "gpufn listens on loopback and serves only Host localhost, 127.0.0.1 or [::1] (add names with --public-host)",
    )
}

/// Paths that need no token: health (for probes), the console's static files (the page asks for
/// a token itself), the FC API (ACS3 signatures), and the triggers (checked against the
/// function's `auth` by their handlers).
fn public_path(path: &str) -> bool {
    path == "/healthz"
        || path == "/console"
        || path.starts_with("/console/")
        || path.starts_with("/2023-03-30/")
        || path.starts_with("/function/")
        || path.starts_with("/async-function/")
}

/// The router's gate: every API call carries a valid token (its [`Grant`] goes into the request's
/// extensions for the handler's own check), and a write with a body says it is JSON or YAML.
pub async fn gate(access: &Access, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if public_path(path) {
        return next.run(req).await;
    }
    let grant = match access.authenticate(
        req.headers()
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    ) {
        Ok(g) => g,
        Err(r) => return unauthorized(r).into_response(),
    };
    if matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH)
        && has_body(req.headers())
        && !gpufn_auth::write_content_type_ok(
            req.headers()
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
        )
    {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "write calls take content-type application/json or application/yaml",
        )
        .with_field("content-type")
        .into_response();
    }
    req.extensions_mut().insert(grant);
    next.run(req).await
}

/// Whether a request has a body (RFC 9112: with neither header it has none).
fn has_body(h: &HeaderMap) -> bool {
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.to_str().map_or(true, |v| v.trim() != "0"))
}

/// Answers a CORS preflight from a configured origin, or `None` when the request is not one.
pub fn preflight(access: &Access, method: &Method, headers: &HeaderMap) -> Option<Response> {
    if method != Method::OPTIONS || !headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        return None;
    }
    let origin = access.cors_origin(headers.get(header::ORIGIN).map(HeaderValue::as_bytes))?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PUT, DELETE, PATCH, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(
            "authorization, content-type, x-gpufn-request-id, x-gpufn-task-id, x-gpufn-callback-url",
        ),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    Some(resp)
}

/// Adds `Access-Control-Allow-Origin` to a response for a configured origin.
pub fn add_cors(access: &Access, origin: Option<&HeaderValue>, resp: &mut Response) {
    if let Some(o) = access.cors_origin(origin.map(HeaderValue::as_bytes)) {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(
                "x-gpufn-request-id, x-gpufn-instance-id, x-gpufn-cold-start, location, retry-after",
            ),
        );
        h.append(header::VARY, HeaderValue::from_static("origin"));
    }
}

/// Records a change in the audit log (and the server log). A failed write is logged, not
/// answered: the change itself has happened.
pub fn audit(store: &Store, who: &Grant, action: &str, target: &str, detail: Option<&str>) {
    tracing::info!(
        token = %who.token_id,
        role = %who.role,
        action,
        target,
        detail = detail.unwrap_or(""),
        "audit"
    );
    if let Err(e) = store.audit(
        now_ms(),
        &who.token_id,
        who.role.as_str(),
        action,
        target,
        detail,
    ) {
        tracing::error!("cannot write the audit log: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(dir: &Path) -> (Store, Access) {
        let store = Store::open(&dir.join("db")).unwrap();
        let a = Access::open(&store, dir, true, AccessConfig::default()).unwrap();
        (store, a)
    }

    fn grant(a: &Access, token: &str) -> Grant {
        a.authenticate(Some(format!("Bearer {token}").as_bytes()))
            .unwrap()
    }

    #[test]
    fn a_remembered_admission_ends_with_a_revocation_or_another_function() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = access(dir.path());
        let admin = std::fs::read_to_string(dir.path().join(ADMIN_TOKEN_FILE)).unwrap();
        let admin = grant(&a, admin.trim());
        let (token, view) = a
            .create(
                &store,
                &admin,
                TokenRequest {
                    role: Role::Invoker,
                    functions: Some("a-".into()),
                    name: None,
                    expires_ms: None,
                },
            )
            .unwrap();
        let header = format!("Bearer {token}");
        let mut cache = None;
        assert!(a.may_invoke_cached(&mut cache, Some(header.as_bytes()), "a-f"));
        assert!(cache.is_some());
        assert!(a.may_invoke_cached(&mut cache, Some(header.as_bytes()), "a-f"));
        // Another function is checked afresh: out of the token's scope.
        assert!(!a.may_invoke_cached(&mut cache, Some(header.as_bytes()), "b-f"));
        assert!(a.may_invoke_cached(&mut cache, Some(header.as_bytes()), "a-f"));
        // Another (wrong) token on the same connection is not admitted by the cache.
        let wrong = format!("Bearer {}x", &token[..token.len() - 1]);
        assert!(!a.may_invoke_cached(&mut cache, Some(wrong.as_bytes()), "a-f"));
        assert!(a.may_invoke_cached(&mut cache, Some(header.as_bytes()), "a-f"));
        a.revoke(&store, &view.id).unwrap();
        assert!(
            !a.may_invoke_cached(&mut cache, Some(header.as_bytes()), "a-f"),
            "a revocation ends the remembered admission at once"
        );
        assert!(!a.may_invoke_cached(&mut cache, None, "a-f"));
    }

    #[test]
    fn the_first_start_writes_a_private_admin_token_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = access(dir.path());
        let path = dir.path().join(ADMIN_TOKEN_FILE);
        let token = std::fs::read_to_string(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(grant(&a, token.trim()).role, Role::Admin);
        assert!(!store.tokens().unwrap()[0].hash.contains(token.trim()));
        drop(a);
        std::fs::remove_file(&path).unwrap();
        let _again = Access::open(&store, dir.path(), true, AccessConfig::default()).unwrap();
        assert!(
            !path.exists(),
            "no second admin token while one exists in the store"
        );
    }
}
