//! The control API under `/api/v1` (JSON), plus `/healthz`, and the router that joins it with the
//! gateway.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use gpufn_auth::{Action, Grant, Role};
use serde::{Deserialize, Serialize};

use crate::auth::forbidden;
use crate::error::ApiError;
use crate::gateway;
use crate::platform::Platform;
use crate::tasks_api;

type Shared = State<Arc<Platform>>;

/// The API description's frame: title, version, the bearer scheme.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "gpufn API",
        description = "Serverless GPU functions: the control API. Every call needs `Authorization: Bearer <token>`; each operation's least role is its `x-gpufn-min-role` (viewer, invoker, developer, admin). Function triggers (`ANY /function/{name}/{path}`, `ANY /async-function/{name}/{path}`) and the FC-compatible API (`/2023-03-30/...`) are described in the README."
    ),
    modifiers(&BearerScheme)
)]
struct ApiDoc;

struct BearerScheme;

impl utoipa::Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("gpufn_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// Every documented route: registered through `routes!`, so a handler is in the API description
/// exactly when it is routed (the test `every_api_route_is_described` keeps plain `.route` calls to
/// the undocumented surfaces listed there).
fn api_routes() -> utoipa_axum::router::OpenApiRouter<Arc<Platform>> {
    use utoipa::OpenApi;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(deploy, list))
        .routes(routes!(get_function, delete_function))
        .routes(routes!(instances))
        .routes(routes!(logs))
        .routes(routes!(cold_starts))
        .routes(routes!(usage))
        .routes(routes!(estimate))
        .routes(routes!(images))
        .routes(routes!(pull_image))
        .routes(routes!(billing))
        .routes(routes!(metrics))
        .routes(routes!(gpus))
        .routes(routes!(get_quota, put_quota))
        .routes(routes!(tasks_api::list_tasks))
        .routes(routes!(tasks_api::get_task))
        .routes(routes!(tasks_api::cancel_task))
        .routes(routes!(tasks_api::task_result))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(revoke_token))
        .routes(routes!(audit_log))
        .routes(routes!(list_secrets))
        .routes(routes!(put_secret, delete_secret))
        .routes(routes!(whoami))
        .routes(routes!(openapi))
}

/// The OpenAPI 3.1 description of the control API, generated from the handlers' annotations and
/// types.
pub fn api_doc() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
}

/// The whole HTTP surface: API, gateway and health on one listener.
pub fn router(platform: Arc<Platform>) -> Router {
    let (api, _) = api_routes().split_for_parts();
    // Only the control API's own answers are rewritten (a trigger's are the app's).
    let api = api.layer(axum::middleware::map_response(json_errors));
    api.route("/2023-03-30/{*rest}", any(crate::fc::entry))
        .route("/console", get(crate::console::index))
        .route("/console/", get(crate::console::index))
        .route("/console/{*file}", get(crate::console::asset))
        .route("/async-function/{name}", any(tasks_api::accept))
        .route("/async-function/{name}/", any(tasks_api::accept))
        .route("/async-function/{name}/{*rest}", any(tasks_api::accept))
        .route("/function/{name}", any(gateway::invoke))
        .route("/function/{name}/", any(gateway::invoke))
        .route("/function/{name}/{*rest}", any(gateway::invoke))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(axum::middleware::from_fn_with_state(
            platform.clone(),
            |State(p): Shared, req: axum::extract::Request, next: axum::middleware::Next| async move {
                crate::auth::gate(p.access(), req, next).await
            },
        ))
        .with_state(platform)
}

/// What a caller other than an admin sees of a failed image pull: the registry's own reason can
/// name addresses and tell a refused connection from a silent one, so image names could probe
/// which local ports answer. The reason goes to the server log; an admin sees it whole.
fn pull_error_for(role: gpufn_auth::Role, e: ApiError) -> ApiError {
    if e.code != "image_pull_failed"
        || e.status != StatusCode::UNPROCESSABLE_ENTITY
        || role == gpufn_auth::Role::Admin
    {
        return e;
    }
    tracing::warn!("image pull failed: {}", e.message);
    ApiError::field(
        e.status,
        "image_pull_failed",
        "image",
        "the registry could not be reached, or it refused the image (an admin sees why in the server log)",
    )
}

/// Every error of the control API is the documented `{"error": {...}}` document: the
/// framework's own refusals (a body over the limit, a query that does not parse, a method the
/// path does not take) come as plain text and are rewritten here, naming the query field when the
/// framework's message does. Their text is the framework's message about the caller's input, cut
/// short; nothing of gpufn's internals is in it.
async fn json_errors(resp: Response) -> Response {
    let mut resp = json_error_of(resp).await;
    // A refused body was not read to its end: the connection cannot carry another request, and
    // a client that is not told so reuses it and loses its next request.
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        resp.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    resp
}

async fn json_error_of(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let allow = resp.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let mut error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "body_too_large",
            "the request body is over this call's limit",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "this path does not take that method",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_media_type",
            "write calls take content-type application/json or application/yaml",
        ),
        s if s.is_client_error() => {
            let message: String = text.trim().chars().take(300).collect();
            let error = ApiError::new(s, "invalid_request", message);
            // "Failed to deserialize query string: limit: invalid digit found in string"
            match text
                .strip_prefix("Failed to deserialize query string: ")
                .and_then(|rest| rest.split_once(':'))
            {
                Some((field, _)) if !field.contains(' ') => error.with_field(field.trim()),
                _ => error,
            }
        }
        s => ApiError::new(s, "internal", "the request failed; see the server log"),
    };
    if status.is_server_error() {
        tracing::error!("{status}: {text}");
        error.message = "the request failed; see the server log".into();
    }
    let mut resp = error.into_response();
    if let Some(allow) = allow {
        resp.headers_mut().insert(header::ALLOW, allow);
    }
    resp
}

#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1", body = Object), (status = 401, description = "no token", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// `GET /api/v1/openapi.json`: the API description (any valid token).
async fn openapi() -> Response {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOC.get_or_init(|| api_doc().to_pretty_json().unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], text.clone()).into_response()
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    summary = "Health: 200 ok, 503 while shutting down",
    responses((status = 200, description = "ok", body = Object), (status = 503, description = "shutting down")),
    extensions(("x-gpufn-min-role" = json!("none")))
)]
async fn healthz(State(p): Shared) -> Response {
    if p.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
        .into_response()
}

#[utoipa::path(
    get,
    path = "/api/v1/images",
    tag = "images",
    summary = "Cached images",
    responses((status = 200, description = "images", body = Vec<Object>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// `GET /api/v1/images`: the image cache.
async fn images(State(p): Shared, Extension(who): Extension<Grant>) -> Result<Response, ApiError> {
    who.check(Action::Read, None).map_err(forbidden)?;
    Ok(axum::Json(p.images()).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    image: String,
    registry_auth: Option<gpufn_spec::RawRegistryAuth>,
}

#[utoipa::path(
    post,
    path = "/api/v1/images/pull",
    tag = "images",
    summary = "Pull an image into the cache; NDJSON progress",
    request_body(content = Object, description = "{\"image\": ..., \"registry_auth\": {...}}", content_type = "application/json"),
    responses((status = 200, description = "NDJSON events: resolved, progress, layer_done, unpacked, then done or error", content_type = "application/x-ndjson"), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("developer")))
)]
/// `POST /api/v1/images/pull` `{"image": ..., "registry_auth": {...}}`: pulls into the cache,
/// streaming progress as NDJSON (one [`gpufn_oci::PullEvent`] per line), ending with
/// `{"event":"done",...}` or `{"event":"error","error":{...}}`.
async fn pull_image(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    body: Bytes,
) -> Result<Response, ApiError> {
    who.check(Action::PullImage, None).map_err(forbidden)?;
    let req: PullRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_field("(document)", e.to_string()))?;
    gpufn_oci::ImageStore::parse(&req.image)
        .map_err(|e| ApiError::bad_field("image", e.to_string()))?;
    let auth = match req.registry_auth {
        None => None,
        Some(a) => Some(match (a.secret, a.username_env, a.password_env) {
            (Some(secret), None, None) => gpufn_spec::RegistryAuth::Secret { secret },
            (None, Some(username_env), Some(password_env)) => gpufn_spec::RegistryAuth::Env {
                username_env,
                password_env,
            },
            _ => {
                return Err(ApiError::bad_field(
                    "registry_auth",
                    "takes either secret, or username_env and password_env",
                ));
            }
        }),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
    let line = |v: &serde_json::Value| {
        let mut b = serde_json::to_vec(v).unwrap_or_default();
        b.push(b'\n');
        Bytes::from(b)
    };
    let role = who.role;
    tokio::spawn(async move {
        let progress_tx = tx.clone();
        let progress = move |ev: gpufn_oci::PullEvent| {
            if let Ok(v) = serde_json::to_value(&ev) {
                let _ = progress_tx.send(line(&v));
            }
        };
        let pulled = p
            .pull_image(&req.image, auth.as_ref(), &progress)
            .await
            .map_err(|e| pull_error_for(role, e));
        let last = match pulled {
            Ok(done) => serde_json::json!({
                "event": "done",
                "image": done.image,
                "cache_hit": done.cache_hit,
                "elapsed_ms": u64::try_from(done.elapsed.as_millis()).unwrap_or(u64::MAX),
            }),
            Err(e) => serde_json::json!({
                "event": "error",
                "error": {"code": e.code, "message": e.message, "field": e.field},
            }),
        };
        let _ = tx.send(line(&last));
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/functions",
    tag = "functions",
    summary = "Create or update a function from a spec (JSON or YAML); runtime: process needs admin",
    request_body(content((gpufn_spec::RawSpec = "application/json"), (gpufn_spec::RawSpec = "application/yaml"))),
    responses((status = 201, description = "created", body = crate::platform::FunctionView), (status = 200, description = "updated", body = crate::platform::FunctionView), (status = 400, description = "invalid spec: every broken rule, by field", body = crate::error::ErrorDoc), (status = 415, description = "not JSON or YAML", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("developer")))
)]
/// `POST /api/v1/functions`: the spec as JSON, or YAML with a YAML content type.
async fn deploy(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_yaml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.contains("yaml"));
    let raw = if is_yaml {
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_field("(document)", "is not UTF-8"))?;
        gpufn_spec::parse_yaml(text)?
    } else {
        gpufn_spec::parse_json(&body)?
    };
    // A process function runs a host command line: only an admin deploys one, or replaces one.
    let name = raw.name.clone().unwrap_or_default();
    let process = raw.runtime.as_deref() != Some("container") || is_process(&p, &name);
    who.check(Action::Deploy { process }, Some(&name))
        .map_err(forbidden)?;
    let (view, created) = p
        .deploy(raw)
        .await
        .map_err(|e| pull_error_for(who.role, e))?;
    p.audit(
        &who,
        "function.deploy",
        &view.name,
        Some(&format!("revision {}", view.revision)),
    )
    .await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

/// Whether `name` is deployed as a `runtime: process` function.
fn is_process(p: &Platform, name: &str) -> bool {
    p.pool(name)
        .is_some_and(|pl| pl.spec().runtime == gpufn_spec::Runtime::Process)
}

/// Checks that `who` may read `name`.
fn may_read(who: &Grant, name: &str) -> Result<(), ApiError> {
    who.check(Action::Read, Some(name)).map_err(forbidden)
}

#[utoipa::path(
    get,
    path = "/api/v1/functions",
    tag = "functions",
    summary = "Every function the token reaches",
    responses((status = 200, description = "functions", body = Vec<crate::platform::FunctionView>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
async fn list(State(p): Shared, Extension(who): Extension<Grant>) -> Result<Response, ApiError> {
    who.check(Action::Read, None).map_err(forbidden)?;
    let mut all = p.functions().await?;
    all.retain(|f| who.covers(&f.name));
    Ok(axum::Json(all).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/functions/{name}",
    tag = "functions",
    summary = "One function, with stats",
    params(("name" = String, Path, description = "function name")),
    responses((status = 200, description = "the function", body = crate::platform::FunctionView), (status = 404, description = "no such function", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
async fn get_function(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    may_read(&who, &name)?;
    Ok(axum::Json(p.function(&name).await?).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/functions/{name}",
    tag = "functions",
    summary = "Delete a function (in-flight requests finish); a process function needs admin",
    params(("name" = String, Path, description = "function name")),
    responses((status = 200, description = "deleted", body = Object), (status = 404, description = "no such function", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("developer")))
)]
async fn delete_function(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let process = is_process(&p, &name);
    who.check(Action::Deploy { process }, Some(&name))
        .map_err(forbidden)?;
    p.delete(&name).await?;
    p.audit(&who, "function.delete", &name, None).await;
    Ok(axum::Json(serde_json::json!({"deleted": name})).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/functions/{name}/instances",
    tag = "functions",
    summary = "A function's instances",
    params(("name" = String, Path, description = "function name")),
    responses((status = 200, description = "instances", body = Vec<crate::pool::InstanceInfo>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
async fn instances(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    may_read(&who, &name)?;
    let pool = p.pool(&name).ok_or_else(|| ApiError::no_function(&name))?;
    Ok(axum::Json(pool.instances()).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    tail: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/functions/{name}/instances/{id}/logs",
    tag = "functions",
    summary = "The last lines of an instance's log",
    params(("name" = String, Path, description = "function name"), ("id" = String, Path, description = "instance id"), ("tail" = Option<usize>, Query, description = "lines from the end (200; at most 10000, from at most the last 8 MiB)")),
    responses((status = 200, description = "text", content_type = "text/plain"), (status = 404, description = "no such log", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// The last lines of an instance's log (also after the instance is gone).
async fn logs(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path((name, id)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    may_read(&who, &name)?;
    let safe = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if !safe(&name) || !safe(&id) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "log_not_found",
            "no such instance log",
        ));
    }
    let path = p
        .data_dir()
        .join("logs")
        .join(&name)
        .join(format!("{id}.log"));
    // Read from the end, in blocks, on a blocking thread: a log may be large.
    let tail = q.tail.unwrap_or(200);
    let lines = tokio::task::spawn_blocking(move || crate::logs::instance_tail(&path, tail))
        .await
        .map_err(|e| ApiError::internal("reading a log", e))?
        .map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "log_not_found",
                format!("no log for instance {id:?}"),
            )
        })?;
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], out).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/gpus",
    tag = "gpus",
    summary = "GPU cards and who holds them",
    responses((status = 200, description = "cards", body = Vec<Object>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
async fn gpus(State(p): Shared, Extension(who): Extension<Grant>) -> Result<Response, ApiError> {
    who.check(Action::Read, None).map_err(forbidden)?;
    let mut cards = p.allocator().snapshot();
    // A token limited to some functions sees that a card is taken, not by which other function.
    for c in &mut cards {
        if c.function.as_deref().is_some_and(|f| !who.covers(f)) {
            c.function = None;
            c.instance = None;
        }
    }
    Ok(axum::Json(cards).into_response())
}

#[derive(Serialize)]
struct QuotaView {
    /// Cards that may be in use at once.
    cards: u32,
    /// Cards in use now.
    used: u32,
    /// Cards on this machine.
    total_cards: usize,
}

fn quota_view(p: &Platform) -> QuotaView {
    let a = p.allocator();
    QuotaView {
        cards: a.quota(),
        used: a.used(),
        total_cards: a.card_count(),
    }
}

#[utoipa::path(
    get,
    path = "/api/v1/quota",
    tag = "gpus",
    summary = "The GPU-card quota",
    responses((status = 200, description = "quota", body = Object), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
async fn get_quota(
    State(p): Shared,
    Extension(who): Extension<Grant>,
) -> Result<Response, ApiError> {
    who.check(Action::Read, None).map_err(forbidden)?;
    Ok(axum::Json(quota_view(&p)).into_response())
}

#[utoipa::path(
    put,
    path = "/api/v1/quota",
    tag = "gpus",
    summary = "Set the GPU-card quota",
    request_body(content = Object, description = "{\"cards\": N}", content_type = "application/json"),
    responses((status = 200, description = "quota", body = Object), (status = 400, description = "bad value", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `PUT /api/v1/quota` with `{"cards": N}`.
async fn put_quota(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    body: Bytes,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_field("(document)", format!("is not JSON: {e}")))?;
    let cards = value
        .get("cards")
        .ok_or_else(|| ApiError::bad_field("cards", "is required"))?;
    let cards = cards.as_i64().ok_or_else(|| {
        ApiError::bad_field("cards", format!("must be a whole number (got {cards})"))
    })?;
    if !(0..=100_000).contains(&cards) {
        return Err(ApiError::bad_field(
            "cards",
            format!("must be 0..=100000 (got {cards})"),
        ));
    }
    if let Some(extra) = value
        .as_object()
        .and_then(|o| o.keys().find(|k| k.as_str() != "cards"))
    {
        return Err(ApiError::bad_field(extra.clone(), "unknown field"));
    }
    p.set_quota(u32::try_from(cards).unwrap_or(0)).await?;
    p.audit(&who, "quota.set", "quota", Some(&cards.to_string()))
        .await;
    Ok(axum::Json(quota_view(&p)).into_response())
}

#[derive(Deserialize)]
struct LimitQuery {
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/functions/{name}/cold-starts",
    tag = "functions",
    summary = "Recent cold starts, newest first",
    params(("name" = String, Path, description = "function name"), ("limit" = Option<usize>, Query, description = "1..1000 (100)")),
    responses((status = 200, description = "cold starts", body = Vec<crate::platform::ColdStartView>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// `GET /api/v1/functions/{name}/cold-starts?limit=100`: newest first.
async fn cold_starts(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(name): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Response, ApiError> {
    may_read(&who, &name)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(axum::Json(p.cold_starts(&name, limit).await?).into_response())
}

#[derive(Deserialize)]
struct BillingQuery {
    function: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// A time bound: RFC 3339 (`2026-11-28T00:00:00Z`) or seconds since the Unix epoch.
fn parse_time(field: &str, v: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = v.parse::<i64>() {
        return secs
            .checked_mul(1000)
            .ok_or_else(|| ApiError::bad_field(field, format!("out of range (got {v:?})")));
    }
    let t = humantime::parse_rfc3339_weak(v).map_err(|_| {
        ApiError::bad_field(
            field,
            format!("must be RFC 3339 (2026-11-28T00:00:00Z) or Unix seconds (got {v:?})"),
        )
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| ApiError::bad_field(field, format!("before 1970 (got {v:?})")))?
        .as_millis();
    i64::try_from(ms).map_err(|_| ApiError::bad_field(field, format!("out of range (got {v:?})")))
}

#[derive(Deserialize)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    step_s: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/functions/{name}/usage",
    tag = "functions",
    summary = "Invocations, cold starts and GB-seconds per time bucket",
    params(("name" = String, Path, description = "function name"), ("from" = Option<String>, Query, description = "RFC 3339 or Unix seconds"), ("to" = Option<String>, Query), ("step_s" = Option<i64>, Query, description = "bucket width (60)")),
    responses((status = 200, description = "buckets", body = Object), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// `GET /api/v1/functions/{name}/usage?from=T&to=T&step_s=60`: requests, cold starts and billed
/// GB-seconds per `step_s` bucket (default: the last hour by minute). Busy periods count when
/// they end (an instance going idle), so a request in flight shows up once it is done.
async fn usage(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(name): Path<String>,
    Query(q): Query<UsageQuery>,
) -> Result<Response, ApiError> {
    may_read(&who, &name)?;
    let now = crate::util::now_ms();
    let to =
        q.to.as_deref()
            .map(|v| parse_time("to", v))
            .transpose()?
            .unwrap_or(now);
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or(to - 3_600_000);
    let step_s = q.step_s.unwrap_or(60);
    if step_s < 1 {
        return Err(ApiError::bad_field("step_s", "must be >= 1"));
    }
    if from >= to {
        return Err(ApiError::bad_field("to", "must be after from"));
    }
    if (to - from) / (step_s * 1000) > 10_000 {
        return Err(ApiError::bad_field(
            "step_s",
            "gives more than 10000 buckets; use a larger step or a shorter window",
        ));
    }
    let buckets = p.usage(&name, from, to, step_s * 1000).await?;
    Ok(axum::Json(serde_json::json!({
        "function": name,
        "from_ms": from,
        "to_ms": to,
        "step_s": step_s,
        "buckets": buckets,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct EstimateQuery {
    invocations: f64,
    duration_s: f64,
    gpu_memory_gb: f64,
    dedicated_usd_per_hour: Option<f64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/estimate",
    tag = "cost",
    summary = "Serverless vs dedicated cost per day",
    params(("invocations" = f64, Query), ("duration_s" = f64, Query), ("gpu_memory_gb" = f64, Query), ("dedicated_usd_per_hour" = Option<f64>, Query)),
    responses((status = 200, description = "the comparison", body = Object), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// `GET /api/v1/estimate?invocations=N&duration_s=D&gpu_memory_gb=G[&dedicated_usd_per_hour=2]`:
/// the seed's serverless-vs-dedicated comparison at this server's active price.
async fn estimate(State(p): Shared, Query(q): Query<EstimateQuery>) -> Result<Response, ApiError> {
    let input = gpufn_metering::EstimateInput {
        invocations_per_day: q.invocations,
        duration_s: q.duration_s,
        gpu_memory_gb: q.gpu_memory_gb,
        usd_per_gb_s: p.prices().active_usd_per_gb_s,
        dedicated_usd_per_hour: q.dedicated_usd_per_hour.unwrap_or(2.0),
    };
    input
        .validate()
        .map_err(|(field, why)| ApiError::bad_field(field, why))?;
    let e = gpufn_metering::estimate(input);
    Ok(axum::Json(e).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/billing",
    tag = "cost",
    summary = "Billing per function",
    params(("function" = Option<String>, Query), ("from" = Option<String>, Query), ("to" = Option<String>, Query)),
    responses((status = 200, description = "rows", body = Vec<crate::platform::BillingRow>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// `GET /api/v1/billing?function=NAME&from=..&to=..`: one row per function.
async fn billing(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Query(q): Query<BillingQuery>,
) -> Result<Response, ApiError> {
    who.check(Action::Read, q.function.as_deref())
        .map_err(forbidden)?;
    let from = q
        .from
        .as_deref()
        .map(|v| parse_time("from", v))
        .transpose()?
        .unwrap_or(0);
    let to =
        q.to.as_deref()
            .map(|v| parse_time("to", v))
            .transpose()?
            .unwrap_or(i64::MAX);
    if from >= to {
        return Err(ApiError::bad_field("to", "must be after from"));
    }
    let mut rows = p.billing(q.function.as_deref(), from, to).await?;
    rows.retain(|r| who.covers(&r.function));
    Ok(axum::Json(rows).into_response())
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "metrics",
    summary = "Prometheus metrics (a token without a function prefix)",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text"), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
async fn metrics(State(p): Shared, Extension(who): Extension<Grant>) -> Response {
    // The page names every function: a token limited to some of them does not read it.
    if let Err(e) = who.check(Action::Read, None) {
        return forbidden(e).into_response();
    }
    if let Some(prefix) = who.prefix.clone() {
        return forbidden(gpufn_auth::Denied::Scope { prefix }).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.metrics_text(),
    )
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTokenBody {
    role: String,
    functions: Option<String>,
    name: Option<String>,
    /// A lifetime: `30d`, `12h`...
    expires: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "access",
    summary = "Create a token (its text is in this answer only)",
    request_body(content = Object, description = "{\"role\", \"functions\", \"name\", \"expires\"}", content_type = "application/json"),
    responses((status = 201, description = "the token view plus `token`", body = crate::auth::TokenView), (status = 400, description = "bad field", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `POST /api/v1/tokens` `{"role", "functions", "name", "expires"}` (admin): the token's text is in
/// this answer and nowhere else, ever.
async fn create_token(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    body: Bytes,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    let req: NewTokenBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_field("(document)", e.to_string()))?;
    let role: Role = req
        .role
        .parse()
        .map_err(|e: String| ApiError::bad_field("role", e))?;
    if let Some(f) = &req.functions {
        gpufn_auth::check_prefix(f).map_err(|e| ApiError::bad_field("functions", e))?;
    }
    if let Some(n) = &req.name {
        if n.len() > 200 || n.chars().any(char::is_control) {
            return Err(ApiError::bad_field(
                "name",
                "must be at most 200 characters, none of them control characters",
            ));
        }
    }
    let expires_ms = match &req.expires {
        None => None,
        Some(v) => {
            let d = gpufn_auth::parse_lifetime(v).map_err(|e| ApiError::bad_field("expires", e))?;
            Some(crate::util::now_ms() + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2))
        }
    };
    let creator = who.clone();
    let (token, view) = p
        .blocking(move |p| {
            p.access().create(
                p.store(),
                &creator,
                crate::auth::TokenRequest {
                    role,
                    functions: req.functions,
                    name: req.name,
                    expires_ms,
                },
            )
        })
        .await??;
    p.audit(
        &who,
        "token.create",
        &view.id,
        Some(&format!(
            "{}{}",
            view.role,
            view.functions
                .as_deref()
                .map(|f| format!(" functions {f}*"))
                .unwrap_or_default()
        )),
    )
    .await;
    let mut v = serde_json::to_value(&view).unwrap_or_default();
    v["token"] = serde_json::Value::String(token);
    Ok((StatusCode::CREATED, axum::Json(v)).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "access",
    summary = "Every token (never the token text)",
    responses((status = 200, description = "tokens", body = Vec<crate::auth::TokenView>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `GET /api/v1/tokens` (admin): ids, roles and states, never the tokens.
async fn list_tokens(
    State(p): Shared,
    Extension(who): Extension<Grant>,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    Ok(axum::Json(p.access().list()).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "access",
    summary = "Revoke a token",
    params(("id" = String, Path, description = "token id")),
    responses((status = 200, description = "the revoked token", body = crate::auth::TokenView), (status = 404, description = "no such token", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `DELETE /api/v1/tokens/{id}` (admin): revokes; the token stays listed as revoked.
async fn revoke_token(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    let view = p
        .blocking(move |p| p.access().revoke(p.store(), &id))
        .await??;
    p.audit(&who, "token.revoke", &view.id, None).await;
    Ok(axum::Json(view).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
    before: Option<i64>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "access",
    summary = "Changes, newest first",
    params(("limit" = Option<usize>, Query), ("before" = Option<i64>, Query, description = "entries with a smaller id")),
    responses((status = 200, description = "entries", body = Vec<Object>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `GET /api/v1/audit?limit=100&before=ID` (admin): changes, newest first.
async fn audit_log(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = p
        .with_store(move |s| s.audit_log(q.before, limit))
        .await?
        .map_err(|e| ApiError::internal("reading the audit log", e))?;
    let list: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "at": crate::util::rfc3339(crate::util::from_ms(e.at_ms)),
                "token_id": e.token_id,
                "role": e.role,
                "action": e.action,
                "target": e.target,
                "detail": e.detail,
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/whoami",
    tag = "access",
    summary = "The calling token's role, scope and what it may do",
    responses((status = 200, description = "the caller", body = Object), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("viewer")))
)]
/// `GET /api/v1/whoami`: the calling token's id, role and scope, and what the role allows (the
/// console shows only what the caller may use).
async fn whoami(Extension(who): Extension<Grant>) -> Response {
    let can = |a: Action| who.check(a, None).is_ok();
    axum::Json(serde_json::json!({
        "token_id": who.token_id,
        "role": who.role,
        "functions": who.prefix,
        "can": {
            "read": can(Action::Read),
            "invoke": gpufn_auth::allows(who.role, Action::Invoke),
            "deploy": gpufn_auth::allows(who.role, Action::Deploy { process: false }),
            "deploy_process": gpufn_auth::allows(who.role, Action::Deploy { process: true }),
            "administer": can(Action::Administer),
        },
    }))
    .into_response()
}

/// Largest secret value.
const MAX_SECRET_BYTES: usize = 64 * 1024;

fn secret_name(name: &str) -> Result<(), ApiError> {
    if gpufn_spec::is_secret_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            "name",
            "must be 1..63 characters of [a-z0-9._-], starting with a letter or digit",
        ))
    }
}

#[utoipa::path(
    put,
    path = "/api/v1/secrets/{name}",
    tag = "access",
    summary = "Store a secret (sealed; never returned)",
    params(("name" = String, Path, description = "secret name")),
    request_body(content = Object, description = "{\"value\": \"...\"}", content_type = "application/json"),
    responses((status = 200, description = "stored", body = Object), (status = 400, description = "bad name or value", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `PUT /api/v1/secrets/{name}` `{"value": "..."}` (admin): sealed at once; the value is never
/// returned by any call.
async fn put_secret(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    secret_name(&name)?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        value: String,
    }
    // The parse error never quotes the document: it may hold the value.
    let b: Body = serde_json::from_slice(&body)
        .map_err(|_| ApiError::bad_field("value", "expected {\"value\": \"...\"} as JSON"))?;
    if b.value.is_empty() || b.value.len() > MAX_SECRET_BYTES || b.value.contains('\0') {
        return Err(ApiError::bad_field(
            "value",
            format!("must be 1..{MAX_SECRET_BYTES} bytes, without NUL"),
        ));
    }
    let owned = name.clone();
    let created = p
        .blocking(move |p| {
            p.shared_secrets()
                .set(p.store(), &owned, b.value.as_bytes())
        })
        .await?
        .map_err(|e| ApiError::internal("storing the secret", e))?;
    p.audit(
        &who,
        if created {
            "secret.create"
        } else {
            "secret.update"
        },
        &name,
        None,
    )
    .await;
    Ok(axum::Json(serde_json::json!({"name": name, "created": created})).into_response())
}

#[utoipa::path(
    get,
    path = "/api/v1/secrets",
    tag = "access",
    summary = "Secret names and times (never values)",
    responses((status = 200, description = "secrets", body = Vec<Object>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `GET /api/v1/secrets` (admin): names and times, never values.
async fn list_secrets(
    State(p): Shared,
    Extension(who): Extension<Grant>,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    let rows = p
        .with_store(|s| s.secrets())
        .await?
        .map_err(|e| ApiError::internal("listing secrets", e))?;
    let list: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "created_at": crate::util::rfc3339(crate::util::from_ms(s.created_ms)),
                "updated_at": crate::util::rfc3339(crate::util::from_ms(s.updated_ms)),
            })
        })
        .collect();
    Ok(axum::Json(list).into_response())
}

#[utoipa::path(
    delete,
    path = "/api/v1/secrets/{name}",
    tag = "access",
    summary = "Delete a secret",
    params(("name" = String, Path, description = "secret name")),
    responses((status = 200, description = "deleted", body = Object), (status = 404, description = "no such secret", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("admin")))
)]
/// `DELETE /api/v1/secrets/{name}` (admin).
async fn delete_secret(
    State(p): Shared,
    Extension(who): Extension<Grant>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    who.check(Action::Administer, None).map_err(forbidden)?;
    secret_name(&name)?;
    let owned = name.clone();
    let deleted = p
        .with_store(move |s| s.delete_secret(&owned))
        .await?
        .map_err(|e| ApiError::internal("deleting the secret", e))?;
    if !deleted {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "secret_not_found",
            format!("no secret named {name:?}"),
        ));
    }
    p.audit(&who, "secret.delete", &name, None).await;
    Ok(axum::Json(serde_json::json!({"deleted": name})).into_response())
}

#[cfg(test)]
mod tests {
    /// Surfaces routed with a plain `.route` on purpose: not the control API (the FC API has its
    /// own description upstream; the triggers take any method and path, for the app to define).
    const UNDESCRIBED: &[&str] = &[
        "/2023-03-30/{*rest}",
        "/console",
        "/console/",
        "/console/{*file}",
        "/async-function/{name}",
        "/async-function/{name}/",
        "/async-function/{name}/{*rest}",
        "/function/{name}",
        "/function/{name}/",
        "/function/{name}/{*rest}",
    ];

    #[test]
    fn every_api_route_is_described() {
        // A route added with a plain `.route(...)` escapes the description: only the surfaces
        // above may be routed that way; everything else goes through `routes!`, which documents it.
        let source = include_str!("api.rs");
        let plain: Vec<&str> = source
            .split(".route(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .collect();
        assert!(!plain.is_empty());
        for path in &plain {
            assert!(
                UNDESCRIBED.contains(path),
                "{path} is routed without a description: register it with routes!(...) and #[utoipa::path]"
            );
        }
        let doc = super::api_doc();
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["openapi"], "3.1.0");
        assert_eq!(
            json["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let paths = json["paths"].as_object().unwrap();
        for p in [
            "/api/v1/functions",
            "/api/v1/functions/{name}",
            "/api/v1/tokens",
            "/api/v1/tokens/{id}",
            "/api/v1/secrets/{name}",
            "/api/v1/audit",
            "/api/v1/tasks/{id}/cancel",
            "/api/v1/quota",
            "/metrics",
            "/healthz",
        ] {
            assert!(paths.contains_key(p), "{p} missing from the description");
        }
        let mut operations = 0;
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                operations += 1;
                let role = op["x-gpufn-min-role"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path} has no x-gpufn-min-role"));
                assert!(
                    ["none", "viewer", "invoker", "developer", "admin"].contains(&role),
                    "{method} {path}: {role}"
                );
                if path != "/healthz" {
                    assert_eq!(
                        op["security"][0]["bearer"],
                        serde_json::json!([]),
                        "{method} {path}"
                    );
                    assert!(
                        op["responses"]["401"].is_object(),
                        "{method} {path}: no 401"
                    );
                }
            }
        }
        assert!(operations >= 30, "{operations} operations");
        // The spec schema comes from the spec type itself.
        assert!(
            json["components"]["schemas"]["RawSpec"]["properties"]["gpu"].is_object(),
            "{}",
            json["components"]["schemas"]["RawSpec"]
        );
    }
}
