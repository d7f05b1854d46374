//! Function Compute 3.0 API compatibility (`/2023-03-30/...`): the official FC SDKs work against
//! gpufn unchanged. Every request is verified with ACS3-HMAC-SHA256 ([`auth`]) against the access
//! keys gpufn is started with; FC documents are mapped to gpufn specs ([`mapping`]) and every
//! action goes through the same platform operations as gpufn's own API.

pub use crate::fc_auth as auth;
pub use gpufn_fc::mapping;
mod code;
mod triggers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use gpufn_store::TaskState;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::function_lock::FunctionLock;
use crate::platform::Platform;
use crate::spool;

pub use crate::fc_auth::FcState;

/// An FC error: `{"Code", "Message", "RequestId"}`.
#[derive(Debug)]
struct FcError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

fn err(status: StatusCode, code: &'static str, message: impl Into<String>) -> FcError {
    FcError {
        status,
        code,
        message: message.into(),
    }
}

impl From<ApiError> for FcError {
    fn from(e: ApiError) -> Self {
        let code = match (e.status, e.code) {
            (StatusCode::NOT_FOUND, "function_not_found") => "FunctionNotFound",
            (StatusCode::NOT_FOUND, _) => "ResourceNotFound",
            (StatusCode::TOO_MANY_REQUESTS, _) => "ResourceThrottled",
            (StatusCode::CONFLICT, _) => "ResourceConflict",
            (s, _) if s.is_client_error() => "InvalidArgument",
            (StatusCode::SERVICE_UNAVAILABLE, _) => "ServiceUnavailable",
            _ => "InternalServerError",
        };
        let status = if e.status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            e.status
        };
        err(status, code, e.message)
    }
}

fn with_request_id(mut resp: Response, id: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-fc-request-id", v);
    }
    resp
}

fn fc_error_response(e: FcError, request_id: &str) -> Response {
    let body = json!({"Code": e.code, "Message": e.message, "RequestId": request_id});
    with_request_id((e.status, axum::Json(body)).into_response(), request_id)
}

fn ok_json(status: StatusCode, v: Value) -> Result<Response, FcError> {
    Ok((status, axum::Json(v)).into_response())
}

fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| url_pairs(q).into_iter().collect())
        .unwrap_or_default()
}

fn url_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decodes a query component (`+` is a space there).
fn decode(s: &str) -> String {
    percent_decode(s, true)
}

fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3).unwrap_or(b"zz")).unwrap_or("zz");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' && plus_is_space { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Everything under `/2023-03-30/`.
pub async fn entry(State(p): State<Arc<Platform>>, req: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let (parts, body) = req.into_parts();
    let fc = p.fc();
    // Refused before a byte of the body is read: with no key configured, and for a head whose
    // signature does not verify (the signature covers the body's declared hash, checked once the
    // body is read).
    if fc.verifier.is_empty() {
        return fc_error_response(
            err(
                StatusCode::FORBIDDEN,
                "InvalidAccessKeyId",
                "the FC API is disabled: start gpufn with --access-key ID:SECRET (or GPUFN_ACCESS_KEYS)",
            ),
            &request_id,
        );
    }
    let path = percent_decode(parts.uri.path(), false);
    let query = query_pairs(parts.uri.query());
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let declared = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-acs-content-sha256"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let signed = auth::SignedRequest {
        method: parts.method.as_str(),
        path: &path,
        query: query.clone(),
        headers,
        body: None,
    };
    let key = match fc.verifier.verify(&signed, SystemTime::now()) {
        Ok(key) => key,
        Err(e) => {
            tracing::warn!("FC API request refused: {e}");
            return fc_error_response(
                err(StatusCode::FORBIDDEN, e.code(), e.to_string()),
                &request_id,
            );
        }
    };
    let segments: Vec<&str> = path
        .trim_start_matches("/2023-03-30/")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let limit = body_limit(parts.method.as_str(), &segments);
    let spooled = match spool::spool(body, limit, &p.data_dir().join("fc-spool")).await {
        Ok(b) => b,
        Err(e) => {
            let status = match e {
                spool::SpoolError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                spool::SpoolError::Caller => StatusCode::BAD_REQUEST,
                spool::SpoolError::Disk(ref io) => {
                    tracing::error!("FC API: {io}");
                    StatusCode::INSUFFICIENT_STORAGE
                }
            };
            let message = match e {
                spool::SpoolError::Disk(_) => "gpufn could not store the request body".to_string(),
                e => e.to_string(),
            };
            return fc_error_response(err(status, "InvalidArgument", message), &request_id);
        }
    };
    if !spooled.matches(&declared) {
        tracing::warn!("FC API request refused: the body does not match its signed hash");
        return fc_error_response(
            err(
                StatusCode::FORBIDDEN,
                "SignatureNotMatch",
                "the body does not match x-acs-content-sha256",
            ),
            &request_id,
        );
    }
    // A sync invocation's payload is only passed on: it goes from the file. Anything read whole
    // waits for its share of the memory budget first.
    let _reserved;
    let body = if parts.method == Method::POST
        && matches!(segments.as_slice(), ["functions", _, "invocations"])
        && !is_async_invocation(&parts.headers)
    {
        _reserved = None;
        Payload::Stream(spooled.into_body())
    } else {
        _reserved = fc.memory.reserve(&spooled).await;
        match spooled.into_bytes().await {
            Ok(b) => Payload::Whole(b),
            Err(e) => {
                return fc_error_response(
                    FcError::from(ApiError::internal("reading the spooled request body", e)),
                    &request_id,
                );
            }
        }
    };
    let grant = gpufn_auth::Grant {
        role: fc
            .roles
            .get(&key)
            .copied()
            .unwrap_or(gpufn_auth::Role::Admin),
        token_id: format!("fc:{key}"),
        prefix: None,
    };
    let q: HashMap<String, String> = query.into_iter().collect();
    let result = route(
        &p,
        &grant,
        &parts.method,
        &segments,
        &q,
        &parts.headers,
        body,
    )
    .await;
    match result {
        Ok(resp) => with_request_id(resp, &request_id),
        Err(e) => fc_error_response(e, &request_id),
    }
}

/// A request body as a handler gets it.
#[derive(Debug)]
enum Payload {
    /// Read whole (documents, async payloads).
    Whole(Bytes),
    /// Passed on as it is read (a sync invocation's payload).
    Stream(Body),
}

/// Whether an `InvokeFunction` call asks for an async task.
fn is_async_invocation(headers: &HeaderMap) -> bool {
    headers
        .get("x-fc-invocation-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.eq_ignore_ascii_case("async"))
}

/// The largest body an FC call takes: a function document with its code zip (base64), an
/// invocation's payload, or a small settings document.
fn body_limit(method: &str, seg: &[&str]) -> u64 {
    match (method, seg) {
        ("POST", ["functions"]) | ("PUT", ["functions", _]) => 64 << 20,
        ("POST", ["functions", _, "invocations"]) => 16 << 20,
        _ => 1 << 20,
    }
}

/// What an FC call needs of its key's role (create and update check `runtime` again once the
/// document is read), and the function it concerns.
fn required<'a>(
    p: &Platform,
    method: &str,
    seg: &[&'a str],
) -> (gpufn_auth::Action, Option<&'a str>) {
    use gpufn_auth::Action;
    let function = match seg {
        ["functions", name, ..] => Some(*name),
        _ => None,
    };
    let is_process = |name: Option<&str>| {
        name.and_then(|n| p.pool(n))
            .is_some_and(|pl| pl.spec().runtime == gpufn_spec::Runtime::Process)
    };
    let action = match (method, seg) {
        ("GET", _) => Action::Read,
        // A trigger decides who may call the function: changing one is a deploy (an admin's, for
        // a process function).
        (_, ["functions", name, "triggers", ..]) => Action::Deploy {
            process: is_process(Some(name)),
        },
        ("POST", ["functions", _, "invocations"]) => Action::Invoke,
        ("PUT", ["functions", _, "async-tasks", _, "stop"]) => Action::ManageTasks,
        ("DELETE", ["functions", name]) | ("PUT", ["functions", name]) => Action::Deploy {
            process: is_process(Some(name)),
        },
        _ => Action::Deploy { process: false },
    };
    (action, function)
}

fn denied(e: gpufn_auth::Denied) -> FcError {
    err(StatusCode::FORBIDDEN, "AccessDenied", e.to_string())
}

async fn route(
    p: &Arc<Platform>,
    grant: &gpufn_auth::Grant,
    method: &Method,
    seg: &[&str],
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Payload,
) -> Result<Response, FcError> {
    // A streamed body is `!Sync`: it is not borrowed across an await, only moved to `invoke`.
    let (whole, mut stream) = match body {
        Payload::Whole(b) => (b, None),
        Payload::Stream(s) => (Bytes::new(), Some(s)),
    };
    let json_body = || -> Result<Value, FcError> {
        if whole.is_empty() {
            return Ok(json!({}));
        }
        serde_json::from_slice(&whole).map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                format!("the body is not JSON: {e}"),
            )
        })
    };
    let (action, function) = required(p, method.as_str(), seg);
    grant.check(action, function).map_err(denied)?;
    match (method.as_str(), seg) {
        ("POST", ["functions"]) => create_function(p, grant, json_body()?).await,
        ("GET", ["functions"]) => list_functions(p, q).await,
        ("GET", ["functions", name]) => ok_json(StatusCode::OK, get_function(p, name).await?),
        ("PUT", ["functions", name]) => update_function(p, grant, name, json_body()?).await,
        ("DELETE", ["functions", name]) => {
            p.delete(name).await?;
            p.audit(grant, "function.delete", name, Some("fc")).await;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("POST", ["functions", name, "invocations"]) => {
            let body = match stream.take() {
                Some(s) => Payload::Stream(s),
                None => Payload::Whole(whole.clone()),
            };
            invoke(p, grant, name, headers, body).await
        }
        ("GET", ["functions", name, "async-tasks", id]) => {
            ok_json(StatusCode::OK, async_task(p, grant, name, id).await?)
        }
        ("GET", ["functions", name, "async-tasks"]) => list_async_tasks(p, name, q).await,
        ("PUT", ["functions", name, "async-tasks", id, "stop"]) => {
            stop_async_task(p, grant, name, id).await
        }
        ("PUT", ["functions", name, "provision-config"]) => {
            let wanted = mapping::provisioning_from_fc(&json_body()?)
                .map_err(|e| err(StatusCode::BAD_REQUEST, "InvalidArgument", e.0))?;
            let lock = p.lock_function(name).await;
            let f = p.function(lock.name()).await?;
            let mut spec = f.spec;
            mapping::apply_provisioning(&mut spec, &wanted);
            p.deploy_locked(spec, &lock).await?;
            ok_json(StatusCode::OK, provision_config(p, name)?)
        }
        ("GET", ["functions", name, "provision-config"]) => {
            ok_json(StatusCode::OK, provision_config(p, name)?)
        }
        ("DELETE", ["functions", name, "provision-config"]) => {
            let lock = p.lock_function(name).await;
            let f = p.function(lock.name()).await?;
            let mut spec = f.spec;
            mapping::apply_provisioning(&mut spec, &mapping::Provisioning::default());
            p.deploy_locked(spec, &lock).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        ("PUT", ["functions", name, "concurrency"]) => {
            let reserved = json_body()?
                .get("reservedConcurrency")
                .and_then(Value::as_i64)
                .ok_or_else(|| {
                    err(
                        StatusCode::BAD_REQUEST,
                        "InvalidArgument",
                        "reservedConcurrency is required",
                    )
                })?;
            if reserved < 1 {
                return Err(err(
                    StatusCode::BAD_REQUEST,
                    "InvalidArgument",
                    "reservedConcurrency must be >= 1",
                ));
            }
            // One change: the spec read, its max_instances set, the setting kept.
            let lock = p.lock_function(name).await;
            let conc = p
                .pool(name)
                .map_or(1, |pl| i64::from(pl.spec().instance_concurrency));
            set_capacity(p, &lock, None, Some(mapping::instances_for(reserved, conc))).await?;
            let owned = name.to_string();
            p.with_store(move |s| s.put_fc_concurrency(&owned, reserved))
                .await?
                .map_err(|e| ApiError::internal("storing the concurrency", e))?;
            drop(lock);
            ok_json(
                StatusCode::OK,
                json!({"functionArn": arn(name), "reservedConcurrency": reserved}),
            )
        }
        ("GET", ["functions", name, "concurrency"]) => {
            let owned = name.to_string();
            let v = p
                .with_store(move |s| s.fc_concurrency(&owned))
                .await?
                .map_err(|e| ApiError::internal("reading the concurrency", e))?;
            ok_json(
                StatusCode::OK,
                json!({"functionArn": arn(name), "reservedConcurrency": v}),
            )
        }
        ("POST", ["functions", name, "triggers"]) => {
            triggers::create(p, grant, name, headers, json_body()?).await
        }
        ("GET", ["functions", name, "triggers"]) => triggers::list(p, name, headers).await,
        ("GET", ["functions", name, "triggers", t]) => triggers::get(p, name, t, headers).await,
        ("PUT", ["functions", name, "triggers", t]) => {
            triggers::update(p, grant, name, t, headers, json_body()?).await
        }
        ("DELETE", ["functions", name, "triggers", t]) => triggers::delete(p, grant, name, t).await,
        ("GET", ["functions", name, "instances"]) => {
            let pool = p.pool(name).ok_or_else(|| ApiError::no_function(name))?;
            let list: Vec<Value> = pool
                .instances()
                .iter()
                .map(|i| {
                    json!({"instanceId": i.id, "status": i.state, "qualifier": "LATEST",
                                "versionId": i.revision.to_string(), "resourceType": "gpu"})
                })
                .collect();
            ok_json(StatusCode::OK, json!({"instances": list}))
        }
        _ => Err(err(
            StatusCode::NOT_FOUND,
            "ResourceNotFound",
            format!(
                "{method} /2023-03-30/{} is not supported by gpufn (see README: FC API)",
                seg.join("/")
            ),
        )),
    }
}

fn arn(name: &str) -> String {
    format!("acs:fc:local:gpufn:functions/{name}")
}

async fn fc_record(p: &Platform, name: &str) -> Option<Value> {
    let owned = name.to_string();
    p.with_store(move |s| s.fc_function(&owned))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|t| serde_json::from_str(&t).ok())
}

/// Deploys `name` from FC's document `record`, keeping what FC's other calls set (the auth its
/// triggers give, capacity from PutProvisionConfig / PutConcurrencyConfig), by the holder of its
/// lock.
async fn deploy_fc(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    lock: &FunctionLock,
    record: Value,
    code_dir: Option<String>,
) -> Result<(), FcError> {
    let name = lock.name();
    let mut spec = mapping::to_spec(name, &record, code_dir.as_deref(), &p.fc().gpu_types)
        .map_err(|e| err(StatusCode::BAD_REQUEST, "InvalidArgument", e.0))?;
    // Who may call it comes from its HTTP triggers, which survive updates of the function.
    spec.auth = Some(triggers::auth_of(p, name).await);
    // Capacity set through PutProvisionConfig / PutConcurrencyConfig survives updates.
    if let Some(pool) = p.pool(name) {
        let cur = pool.spec();
        mapping::apply_capacity(
            &mut spec,
            Some(i64::from(cur.scaling.min_instances)),
            Some(i64::from(cur.scaling.max_instances)),
        );
        if let Some(scaling) = cur.to_raw().scaling {
            mapping::keep_provisioning(&mut spec, &scaling);
        }
    }
    let process = spec.runtime.as_deref() != Some("container");
    grant
        .check(gpufn_auth::Action::Deploy { process }, Some(name))
        .map_err(denied)?;
    let (view, _) = p.deploy_locked(spec, lock).await?;
    p.audit(
        grant,
        "function.deploy",
        name,
        Some(&format!("revision {} (fc)", view.revision)),
    )
    .await;
    let mut stored = record;
    if let (Some(obj), Some(dir)) = (stored.as_object_mut(), code_dir) {
        obj.remove("code");
        obj.insert("gpufnCodeDir".into(), json!(dir));
    }
    let (owned, doc) = (name.to_string(), stored.to_string());
    p.with_store(move |s| s.put_fc_function(&owned, &doc))
        .await?
        .map_err(|e| ApiError::internal("storing the FC function", e))?;
    Ok(())
}

async fn create_function(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    input: Value,
) -> Result<Response, FcError> {
    let name = input
        .get("functionName")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            err(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "functionName is required",
            )
        })?
        .to_string();
    let lock = p.lock_function(&name).await;
    if p.pool(&name).is_some() {
        return Err(err(
            StatusCode::CONFLICT,
            "FunctionAlreadyExists",
            format!("function {name} already exists"),
        ));
    }
    let disk_mb = input.get("diskSize").and_then(Value::as_i64);
    let created = match code::unpack(p, &name, &input, disk_mb).await {
        Ok(code_dir) => deploy_fc(p, grant, &lock, input, code_dir).await,
        Err(e) => Err(e),
    };
    if created.is_err() {
        // A function that was not created keeps no code.
        code::forget(p, &name).await;
    }
    created?;
    drop(lock);
    ok_json(StatusCode::OK, get_function(p, &name).await?)
}

async fn update_function(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    name: &str,
    input: Value,
) -> Result<Response, FcError> {
    // One change from the read of FC's document to the deploy: a concurrent
    // PutConcurrencyConfig either comes before (and is kept) or waits.
    let lock = p.lock_function(name).await;
    if p.pool(name).is_none() {
        return Err(ApiError::no_function(name).into());
    }
    let mut record = fc_record(p, name).await.unwrap_or_else(|| json!({}));
    let disk_mb = input
        .get("diskSize")
        .or_else(|| record.get("diskSize"))
        .and_then(Value::as_i64);
    let code_dir = match code::unpack(p, name, &input, disk_mb).await? {
        Some(d) => Some(d),
        None => record
            .get("gpufnCodeDir")
            .and_then(Value::as_str)
            .map(str::to_string),
    };
    if let (Some(obj), Some(new)) = (record.as_object_mut(), input.as_object()) {
        for (k, v) in new {
            obj.insert(k.clone(), v.clone());
        }
    }
    deploy_fc(p, grant, &lock, record, code_dir).await?;
    drop(lock);
    ok_json(StatusCode::OK, get_function(p, name).await?)
}

async fn get_function(p: &Platform, name: &str) -> Result<Value, FcError> {
    let f = p.function(name).await?;
    Ok(mapping::to_fc(
        name,
        &f.spec,
        fc_record(p, name).await.as_ref(),
        &f.created_at,
        &f.updated_at,
        &p.fc().gpu_types,
    ))
}

async fn list_functions(p: &Platform, q: &HashMap<String, String>) -> Result<Response, FcError> {
    let prefix = q.get("prefix").cloned().unwrap_or_default();
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let after = q.get("nextToken").cloned().unwrap_or_default();
    let mut all: Vec<_> = p
        .functions()
        .await?
        .into_iter()
        .filter(|f| f.name.starts_with(&prefix) && f.name > after)
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    let more = all.len() > limit;
    all.truncate(limit);
    let next = if more {
        all.last().map(|f| f.name.clone())
    } else {
        None
    };
    // FC's documents of the page, in one store call.
    let names: Vec<String> = all.iter().map(|f| f.name.clone()).collect();
    let records: Vec<Option<Value>> = p
        .with_store(move |s| {
            names
                .iter()
                .map(|n| {
                    s.fc_function(n)
                        .ok()
                        .flatten()
                        .and_then(|t| serde_json::from_str(&t).ok())
                })
                .collect()
        })
        .await?;
    let gpu_types = &p.fc().gpu_types;
    let functions: Vec<Value> = all
        .iter()
        .zip(records)
        .map(|(f, record)| {
            mapping::to_fc(
                &f.name,
                &f.spec,
                record.as_ref(),
                &f.created_at,
                &f.updated_at,
                gpu_types,
            )
        })
        .collect();
    let mut out = json!({"functions": functions});
    if let Some(n) = next {
        out["nextToken"] = json!(n);
    }
    ok_json(StatusCode::OK, out)
}

/// `InvokeFunction`: sync — the body goes to the instance's `/invoke` (FC's event-function
/// convention) and its answer comes back; `x-fc-invocation-type: Async` — a durable task (the
/// entry reads such a payload whole, [`Payload::Whole`], and streams a sync one).
async fn invoke(
    p: &Arc<Platform>,
    grant: &gpufn_auth::Grant,
    name: &str,
    headers: &HeaderMap,
    body: Payload,
) -> Result<Response, FcError> {
    let header = |k: &str| {
        headers
            .get(k)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut forwarded = HeaderMap::new();
    if let Some(ct) = headers.get(axum::http::header::CONTENT_TYPE) {
        forwarded.insert(axum::http::header::CONTENT_TYPE, ct.clone());
    }
    let body = match body {
        Payload::Stream(body) => body,
        Payload::Whole(body) => {
            let row = crate::tasks_api::submit(
                p,
                crate::tasks_api::Submission {
                    function: name.to_string(),
                    method: Method::POST,
                    target: "/invoke".into(),
                    headers: forwarded,
                    body,
                    task_id: header("x-fc-async-task-id"),
                    callback_url: None,
                    owner: Some(grant.token_id.clone()),
                },
            )
            .await?;
            let mut out = StatusCode::ACCEPTED.into_response();
            if let Ok(h) = HeaderValue::from_str(&row.id) {
                out.headers_mut().insert("x-fc-async-task-id", h);
            }
            return Ok(out);
        }
    };
    let call = crate::gateway::Call {
        method: Method::POST,
        target: "/invoke".into(),
        headers: forwarded,
        body,
    };
    // gpufn's own refusals (queue full, quota, start failure) become FC errors; the function's
    // own answers, whatever their status, are passed through as FC does.
    crate::gateway::call(p, name, grant, call)
        .await
        .map_err(|e| match e.status {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => FcError::from(e),
            StatusCode::TOO_MANY_REQUESTS => err(e.status, "ResourceThrottled", e.message),
            status => err(status, "FunctionNotReady", e.message),
        })
}

/// The async task `id` of function `name`: under the caller's id, or under the id it took because
/// another function's or token's task held that one ([`crate::tasks_api::scoped_id`]).
async fn task_of(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    name: &str,
    id: &str,
) -> Result<gpufn_store::TaskRow, FcError> {
    let ids = [
        id.to_string(),
        crate::tasks_api::scoped_id(id, name, Some(&grant.token_id)),
    ];
    let function = name.to_string();
    let found = p
        .with_store(move |s| {
            for id in &ids {
                match s.task(id)? {
                    Some(t) if t.function == function => return Ok(Some(t)),
                    _ => {}
                }
            }
            Ok::<_, gpufn_store::StoreError>(None)
        })
        .await?
        .map_err(|e| ApiError::internal("reading the task", e))?;
    found.ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            "AsyncTaskNotFound",
            format!("async task {id} of {name} not found"),
        )
    })
}

fn fc_task(t: &gpufn_store::TaskRow) -> Value {
    json!({
        "taskId": t.id,
        "status": task_status(t.state),
        "functionArn": arn(&t.function),
        "qualifier": "LATEST",
        "alreadyRetriedTimes": (t.attempts - 1).max(0),
        "startedTime": t.started_ms,
        "endTime": t.finished_ms,
        "instanceId": t.instance,
        "requestId": t.id,
        "taskPayload": String::from_utf8_lossy(&t.body),
        "returnPayload": t.result.body.as_deref().and_then(|b| std::str::from_utf8(b).ok()),
        "taskErrorMessage": t.result.error,
    })
}

/// FC's name of a task state.
fn task_status(state: TaskState) -> &'static str {
    match state {
        TaskState::Queued => "Enqueued",
        TaskState::Running => "Running",
        TaskState::Succeeded => "Succeeded",
        TaskState::Failed => "Failed",
        TaskState::Cancelled => "Stopped",
        TaskState::Expired => "Expired",
    }
}

async fn async_task(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    name: &str,
    id: &str,
) -> Result<Value, FcError> {
    Ok(fc_task(&task_of(p, grant, name, id).await?))
}

async fn list_async_tasks(
    p: &Platform,
    name: &str,
    q: &HashMap<String, String>,
) -> Result<Response, FcError> {
    if p.pool(name).is_none() {
        return Err(ApiError::no_function(name).into());
    }
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(20)
        .clamp(1, 100);
    let owned = name.to_string();
    let rows = p
        .with_store(move |s| s.tasks(Some(&owned), None, limit))
        .await?
        .map_err(|e| ApiError::internal("listing tasks", e))?;
    ok_json(
        StatusCode::OK,
        json!({"tasks": rows.iter().map(fc_task).collect::<Vec<_>>()}),
    )
}

async fn stop_async_task(
    p: &Arc<Platform>,
    grant: &gpufn_auth::Grant,
    name: &str,
    id: &str,
) -> Result<Response, FcError> {
    task_of(p, grant, name, id).await?;
    crate::tasks_api::cancel(p, grant, id).await?;
    Ok(StatusCode::OK.into_response())
}

/// Sets `min_instances` / `max_instances` of the locked function: a read-modify-write of its
/// spec under its lock.
async fn set_capacity(
    p: &Platform,
    lock: &FunctionLock,
    min: Option<i64>,
    max: Option<i64>,
) -> Result<(), FcError> {
    let f = p.function(lock.name()).await?;
    let mut spec = f.spec;
    mapping::apply_capacity(&mut spec, min, max);
    p.deploy_locked(spec, lock).await?;
    Ok(())
}

fn provision_config(p: &Platform, name: &str) -> Result<Value, FcError> {
    let pool = p.pool(name).ok_or_else(|| ApiError::no_function(name))?;
    let st = pool.status();
    let spec = pool.spec();
    let (actions, policies) =
        mapping::provisioning_to_fc(&spec.to_raw().scaling.unwrap_or_default());
    Ok(json!({
        "functionArn": arn(name),
        "target": spec.scaling.min_instances,
        "current": st.ready + st.busy,
        "currentError": "",
        "scheduledActions": actions,
        "targetTrackingPolicies": policies,
        "alwaysAllocateGPU": true,
        "alwaysAllocateCPU": true,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        assert_eq!(
            url_pairs("prefix=a%2Fb&limit=5&x=1+2"),
            [
                ("prefix".to_string(), "a/b".to_string()),
                ("limit".into(), "5".into()),
                ("x".into(), "1 2".into())
            ]
        );
        assert_eq!(decode("%zz"), "%zz");
    }
}
