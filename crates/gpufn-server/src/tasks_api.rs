//! The HTTP side of asynchronous invocation: `/async-function/{name}/...` and `/api/v1/tasks`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use gpufn_auth::{Action, Grant};
use gpufn_store::{NewTask, TaskRow, TaskState};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::platform::Platform;
use crate::util::{from_ms, now_ms, rfc3339};

/// Header: a webhook that gets the task's record when it finishes.
pub const CALLBACK_URL: &str = "x-gpufn-callback-url";
/// Header: the caller's own task id (idempotency: the same id is the same task).
pub const TASK_ID: &str = "x-gpufn-task-id";

fn valid_task_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// A request to run a function asynchronously, as the async trigger and the FC API's async
/// InvokeFunction hand it to [`submit`].
#[derive(Debug)]
pub struct Submission {
    /// The function.
    pub function: String,
    /// The method the instance gets.
    pub method: http::Method,
    /// The instance's target (path and query).
    pub target: String,
    /// Headers for the instance; hop-by-hop ones, gpufn's own and the task headers are dropped.
    pub headers: http::HeaderMap,
    /// The body.
    pub body: Bytes,
    /// The caller's task id (the same id is the same task), if it chose one.
    pub task_id: Option<String>,
    /// A webhook that gets the task's record when it finishes.
    pub callback_url: Option<String>,
    /// The id of the submitting token.
    pub owner: Option<String>,
}

/// Stores a task durably (it runs at least once from here on) and returns it — the same task
/// again for a task id already accepted. Refused: shutting down, an unknown function, a bad task id
/// or callback URL, a body over the configured limit.
pub async fn submit(p: &Platform, s: Submission) -> Result<TaskRow, ApiError> {
    refuse_when_shutting_down(p)?;
    if p.pool(&s.function).is_none() {
        return Err(ApiError::no_function(&s.function));
    }
    let chosen = s.task_id.is_some();
    let id = match s.task_id {
        Some(id) if valid_task_id(&id) => id,
        Some(id) => {
            return Err(ApiError::bad_field(
                TASK_ID,
                format!("must be 1..128 characters of [A-Za-z0-9._-] (got {id:?})"),
            ));
        }
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    if let Some(url) = &s.callback_url {
        gpufn_spec::check_http_url(url).map_err(|e| ApiError::bad_field(CALLBACK_URL, e))?;
        if p.outbound().literal_refused(url) {
            return Err(ApiError::bad_field(
                CALLBACK_URL,
                crate::outbound::Refused::NotAllowed.to_string(),
            ));
        }
    }
    let max = p.tasks().config.max_body_bytes;
    if s.body.len() > max {
        return Err(body_too_large(max));
    }
    // Bounded: a function's tasks waiting or running, and all tasks' bodies in the store.
    let limit = p
        .pool(&s.function)
        .map_or(0, |pool| pool.spec().async_invoke.max_pending);
    let budget = p.tasks().config.max_pending_bytes;
    let function = s.function.clone();
    let (pending, bytes) = p
        .with_store(move |st| {
            Ok::<_, gpufn_store::StoreError>((
                st.pending_tasks(&function)?,
                st.pending_task_bytes()?,
            ))
        })
        .await?
        .map_err(|e| ApiError::internal("counting tasks", e))?;
    if pending >= i64::from(limit) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_tasks",
            format!(
                "{pending} tasks of this function are queued or running (async.max_pending {limit})"
            ),
        )
        .retry_after(5));
    }
    if u64::try_from(bytes).unwrap_or(0) + s.body.len() as u64 > budget {
        return Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "task_store_full",
            format!(
                "queued tasks hold {} MiB of bodies (--task-max-pending-mb {})",
                bytes >> 20,
                budget >> 20
            ),
        )
        .retry_after(5));
    }
    let mut headers = s.headers;
    crate::forward::strip_request(&mut headers);
    for h in [TASK_ID, CALLBACK_URL, "host", "content-length"] {
        headers.remove(h);
    }
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let task = NewTask {
        id,
        function: s.function,
        method: s.method.to_string(),
        path: s.target,
        headers_json: serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into()),
        body: s.body.to_vec(),
        callback_url: s.callback_url,
        now_ms: now_ms(),
        owner: s.owner,
    };
    let (row, created) = p
        .tasks()
        .accept(task.clone())
        .await
        .map_err(|e| ApiError::internal("storing the task", e))?;
    if created || !chosen || same_scope(&row, &task) {
        return Ok(row);
    }
    // The caller's id is another function's (or another token's) task: this one is kept apart
    // under an id of its own scope, and the other stays unseen.
    let scoped = NewTask {
        id: scoped_id(&task.id, &task.function, task.owner.as_deref()),
        ..task
    };
    let (row, _) = p
        .tasks()
        .accept(scoped)
        .await
        .map_err(|e| ApiError::internal("storing the task", e))?;
    Ok(row)
}

/// Whether an existing task is the one a submission names again (same function, same token).
fn same_scope(row: &TaskRow, task: &NewTask) -> bool {
    row.function == task.function && row.owner == task.owner
}

/// The id a caller-chosen task id takes when another function's or token's task holds it:
/// `{id}~{8 hex}` of the function and token (`~` is not in a caller's ids, so it never collides
/// with one). Task ids are thereby per function and per token.
pub(crate) fn scoped_id(id: &str, function: &str, owner: Option<&str>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(function.as_bytes());
    h.update([0]);
    h.update(owner.unwrap_or("").as_bytes());
    let digest = hex::encode(h.finalize());
    format!("{id}~{}", &digest[..8])
}

fn refuse_when_shutting_down(p: &Platform) -> Result<(), ApiError> {
    if p.is_shutting_down() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
        .retry_after(1));
    }
    Ok(())
}

fn body_too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("async request bodies are limited to {max} bytes"),
    )
}

/// `ANY /async-function/{name}/{path}`: stores the request durably, then answers 202.
pub async fn accept(State(p): State<Arc<Platform>>, req: Request) -> Result<Response, ApiError> {
    // Before the body is read.
    refuse_when_shutting_down(&p)?;
    let (name, target) = req
        .uri()
        .path_and_query()
        .and_then(|pq| crate::forward::split_target(pq.as_str(), "/async-function/"))
        .map(|(n, rest)| (n.to_string(), crate::forward::target(rest).into_owned()))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"))?;
    let Some(pool) = p.pool(&name) else {
        return Err(ApiError::no_function(&name));
    };
    let mut req = req;
    let owner = crate::forward::admit(&p, &pool, &mut req)?.map(|g| g.token_id);
    // Read the headers in a block: a borrow of the request must not live across an await
    // (the body is not Sync, so the future would not be Send).
    let (task_id, callback_url) = {
        let header = |k: &str| {
            req.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (header(TASK_ID), header(CALLBACK_URL))
    };
    let (parts, body) = req.into_parts();
    let max = p.tasks().config.max_body_bytes;
    let body = http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map_err(|_| body_too_large(max))?
        .to_bytes();
    let row = submit(
        &p,
        Submission {
            function: name,
            method: parts.method,
            target,
            headers: parts.headers,
            body,
            task_id,
            callback_url,
            owner,
        },
    )
    .await?;
    let location = format!("/api/v1/tasks/{}", row.id);
    let mut resp = (
        StatusCode::ACCEPTED,
        axum::Json(json!({"task_id": row.id, "state": row.state.as_str(), "location": location})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// A task as JSON; `with_body` includes the result body (inline or base64), else only its size.
pub(crate) fn task_json(t: &TaskRow, with_body: bool) -> Value {
    let time = |ms: Option<i64>| ms.map(|m| rfc3339(from_ms(m)));
    let mut result = serde_json::Map::new();
    if let Some(status) = t.result.status {
        result.insert("status".into(), json!(status));
        let headers: Vec<(String, String)> = t
            .result
            .headers_json
            .as_deref()
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or_default();
        let map: serde_json::Map<String, Value> =
            headers.into_iter().map(|(k, v)| (k, json!(v))).collect();
        result.insert("headers".into(), Value::Object(map));
        if t.result.file.is_some() {
            result.insert(
                "body_url".into(),
                json!(format!("/api/v1/tasks/{}/result", t.id)),
            );
        } else if let Some(len) = t
            .result
            .body
            .as_ref()
            .map(|b| b.len() as i64)
            .or(t.result.body_len)
        {
            result.insert("body_bytes".into(), json!(len));
        }
        if let (Some(body), false) = (&t.result.body, t.result.file.is_some()) {
            if with_body {
                match std::str::from_utf8(body) {
                    Ok(text) => result.insert("body".into(), json!(text)),
                    Err(_) => result.insert(
                        "body_base64".into(),
                        json!(base64::engine::general_purpose::STANDARD.encode(body)),
                    ),
                };
            }
        }
    }
    json!({
        "task_id": t.id,
        "function": t.function,
        "state": t.state.as_str(),
        "attempts": t.attempts,
        "method": t.method,
        "path": t.path,
        "created_at": time(Some(t.created_ms)),
        "updated_at": time(Some(t.updated_ms)),
        "started_at": time(t.started_ms),
        "finished_at": time(t.finished_ms),
        "next_attempt_at": (t.state == TaskState::Queued).then(|| time(Some(t.next_attempt_ms))),
        "instance": t.instance,
        "error": t.result.error,
        "callback_url": t.callback_url,
        "result": if result.is_empty() { Value::Null } else { Value::Object(result) },
    })
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "task_not_found",
        format!("no task {id:?}"),
    )
}

/// A task `who` may see (`manage`: may cancel). Tasks of functions out of the token's scope, and
/// other callers' tasks for an `invoker`, are answered as not found: their ids are not confirmed.
async fn load(p: &Platform, who: &Grant, id: &str, manage: bool) -> Result<TaskRow, ApiError> {
    let owned = id.to_string();
    let t = p
        .with_store(move |s| s.task(&owned))
        .await?
        .map_err(|e| ApiError::internal("reading the task", e))?
        .ok_or_else(|| not_found(id))?;
    let own = t.owner.as_deref() == Some(who.token_id.as_str());
    let wanted = if manage {
        Action::ManageTasks
    } else {
        Action::Read
    };
    let allowed = who.check(wanted, Some(&t.function)).is_ok()
        || (own && who.check(Action::Invoke, Some(&t.function)).is_ok());
    if !allowed {
        return Err(not_found(id));
    }
    Ok(t)
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    summary = "One task (an invoker: its own)",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "the task", body = Object), (status = 404, description = "no such task (or not the caller's)", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("invoker")))
)]
/// `GET /api/v1/tasks/{id}`.
pub async fn get_task(
    State(p): State<Arc<Platform>>,
    Extension(who): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let t = load(&p, &who, &id, false).await?;
    let mut v = task_json(&t, true);
    let owned = id.clone();
    let deliveries = p
        .with_store(move |s| s.deliveries_of(&owned))
        .await?
        .map_err(|e| ApiError::internal("reading deliveries", e))?;
    v["deliveries"] = deliveries
        .into_iter()
        .map(|(url, state, attempts)| json!({"url": url, "state": state, "attempts": attempts}))
        .collect();
    Ok(axum::Json(v).into_response())
}

/// Filters for `GET /api/v1/tasks`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    function: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    summary = "Tasks, newest first (an invoker sees its own)",
    params(("function" = Option<String>, Query), ("state" = Option<String>, Query), ("limit" = Option<usize>, Query)),
    responses((status = 200, description = "tasks", body = Vec<Object>), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("invoker")))
)]
/// `GET /api/v1/tasks?function=&state=&limit=`: newest first, without result bodies.
pub async fn list_tasks(
    State(p): State<Arc<Platform>>,
    Extension(who): Extension<Grant>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    // Readers see every task their scope reaches; an invoker only its own.
    let reader = gpufn_auth::allows(who.role, Action::Read);
    if !reader && !gpufn_auth::allows(who.role, Action::Invoke) {
        return Err(crate::auth::forbidden(gpufn_auth::Denied::Role {
            role: who.role,
            needed: gpufn_auth::Role::Viewer,
        }));
    }
    if let Some(f) = &q.function {
        who.check(Action::Read, Some(f))
            .or_else(|_| who.check(Action::Invoke, Some(f)))
            .map_err(crate::auth::forbidden)?;
    }
    let state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(TaskState::parse(s).ok_or_else(|| {
            ApiError::bad_field(
                "state",
                format!("must be one of queued, running, succeeded, failed, cancelled, expired (got {s:?})"),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    let owner = (!reader).then(|| who.token_id.clone());
    let function = q.function.clone();
    let rows = p
        .with_store(move |s| s.tasks_of(function.as_deref(), state, owner.as_deref(), limit))
        .await?
        .map_err(|e| ApiError::internal("listing tasks", e))?;
    let list: Vec<Value> = rows
        .iter()
        .filter(|t| who.covers(&t.function))
        .map(|t| task_json(t, false))
        .collect();
    Ok(axum::Json(list).into_response())
}

#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/cancel",
    tag = "tasks",
    summary = "Cancel a queued or running task (an invoker: its own)",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "the task", body = Object), (status = 409, description = "already final", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("invoker")))
)]
/// `POST /api/v1/tasks/{id}/cancel`: a queued or running task becomes `cancelled`.
pub async fn cancel_task(
    State(p): State<Arc<Platform>>,
    Extension(who): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    cancel(&p, &who, &id).await?;
    get_task(State(p), Extension(who), Path(id)).await
}

/// Cancels task `id` for `who`: a queued task will not run, a running attempt is stopped.
pub async fn cancel(p: &Platform, who: &Grant, id: &str) -> Result<(), ApiError> {
    let before = load(p, who, id, true).await?;
    if before.state.is_final() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "task_finished",
            format!("task {id:?} is already {}", before.state.as_str()),
        ));
    }
    let owned = id.to_string();
    p.with_store(move |s| s.cancel_task(&owned, now_ms()))
        .await?
        .map_err(|e| ApiError::internal("cancelling the task", e))?;
    p.tasks().cancel_running(id);
    p.audit(who, "task.cancel", id, Some(&before.function))
        .await;
    Ok(())
}

#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}/result",
    tag = "tasks",
    summary = "A task's raw result body",
    params(("id" = String, Path, description = "task id")),
    responses((status = 200, description = "the body, with the function's content type"), (status = 404, description = "no result", body = crate::error::ErrorDoc), (status = 401, description = "no token, or an unknown, revoked or expired one", body = crate::error::ErrorDoc), (status = 403, description = "the token's role or function prefix does not allow this", body = crate::error::ErrorDoc)),
    security(("bearer" = [])),
    extensions(("x-gpufn-min-role" = json!("invoker")))
)]
/// `GET /api/v1/tasks/{id}/result`: the raw result body, with the function's content type.
pub async fn task_result(
    State(p): State<Arc<Platform>>,
    Extension(who): Extension<Grant>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let t = load(&p, &who, &id, false).await?;
    let body = match (&t.result.file, &t.result.body) {
        (Some(file), _) => Body::from(
            tokio::fs::read(file)
                .await
                .map_err(|e| ApiError::internal("reading the result file", e))?,
        ),
        (None, Some(body)) => Body::from(body.clone()),
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_result",
                format!("task {id:?} has no result (it is {})", t.state.as_str()),
            ));
        }
    };
    let content_type = t
        .result
        .headers_json
        .as_deref()
        .and_then(|h| serde_json::from_str::<Vec<(String, String)>>(h).ok())
        .and_then(|h| {
            h.into_iter()
                .find(|(k, _)| k == "content-type")
                .map(|(_, v)| v)
        })
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut resp = Response::new(body);
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(resp)
}
