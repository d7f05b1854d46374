//! FC HTTP triggers: `authType` decides who may call the function through gpufn's own trigger
//! (`/function/{name}/...`): `anonymous` → the spec's `auth: {type: anonymous}`; `function` (FC's
//! signed requests) → `auth: {type: token}` (a gpufn token of role invoker or higher). A function
//! is anonymous while any of its HTTP triggers is. Triggers are kept in the store's settings.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{FcError, err, ok_json};
use crate::error::ApiError;
use crate::function_lock::FunctionLock;
use crate::platform::Platform;
use crate::util::{now_ms, rfc3339};

async fn load(p: &Platform, function: &str) -> Vec<Value> {
    let owned = function.to_string();
    p.with_store(move |s| s.fc_triggers(&owned))
        .await
        .ok()
        .and_then(Result::ok)
        .flatten()
        .and_then(|t| serde_json::from_str::<Vec<Value>>(&t).ok())
        .unwrap_or_default()
}

async fn save(p: &Platform, function: &str, triggers: &[Value]) -> Result<(), FcError> {
    let (owned, doc) = (
        function.to_string(),
        Value::Array(triggers.to_vec()).to_string(),
    );
    p.with_store(move |s| s.put_fc_triggers(&owned, &doc))
        .await?
        .map_err(|e| ApiError::internal("storing the trigger", e).into())
}

/// `auth:` for a function from its triggers.
pub(super) async fn auth_of(p: &Platform, function: &str) -> gpufn_spec::RawAuth {
    let anonymous = load(p, function).await.iter().any(|t| {
        t["triggerType"] == "http" && config_of(t)["authType"].as_str() == Some("anonymous")
    });
    gpufn_spec::RawAuth {
        kind: Some(if anonymous { "anonymous" } else { "token" }.into()),
    }
}

/// `triggerConfig` is a JSON document in a string.
fn config_of(t: &Value) -> Value {
    t["triggerConfig"]
        .as_str()
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or(Value::Null)
}

fn invalid(message: impl Into<String>) -> FcError {
    err(StatusCode::BAD_REQUEST, "InvalidArgument", message)
}

/// Checks an HTTP trigger's `triggerConfig`.
fn check_config(config: &str) -> Result<(), FcError> {
    let c: Value = serde_json::from_str(config)
        .map_err(|e| invalid(format!("triggerConfig is not JSON: {e}")))?;
    match c.get("authType").and_then(Value::as_str) {
        None | Some("anonymous" | "function") => Ok(()),
        Some(other) => Err(invalid(format!(
            "triggerConfig.authType {other:?} is not supported by gpufn: use function (a gpufn token) or anonymous"
        ))),
    }
}

/// The trigger as FC shows it, with its URL on this server.
fn view(t: &Value, function: &str, headers: &HeaderMap) -> Value {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let mut v = t.clone();
    if let Some(o) = v.as_object_mut() {
        let url = format!("http://{host}/function/{function}");
        o.insert(
            "httpTrigger".into(),
            json!({"urlInternet": url, "urlIntranet": url}),
        );
    }
    v
}

/// Deploys the locked function with the auth its triggers give.
async fn redeploy(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    lock: &FunctionLock,
) -> Result<(), FcError> {
    let function = lock.name();
    let f = p.function(function).await?;
    let mut raw = f.spec;
    raw.auth = Some(auth_of(p, function).await);
    let (view, _) = p.deploy_locked(raw, lock).await?;
    p.audit(
        grant,
        "function.deploy",
        function,
        Some(&format!("revision {} (fc trigger)", view.revision)),
    )
    .await;
    Ok(())
}

pub(super) async fn create(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    function: &str,
    headers: &HeaderMap,
    input: Value,
) -> Result<Response, FcError> {
    // The triggers read, changed and written, and the function redeployed, as one change.
    let lock = p.lock_function(function).await;
    if p.pool(function).is_none() {
        return Err(ApiError::no_function(function).into());
    }
    let name = input["triggerName"]
        .as_str()
        .filter(|n| gpufn_spec::is_secret_name(n))
        .ok_or_else(|| invalid("triggerName is required: 1..63 of [a-z0-9._-]"))?
        .to_string();
    if input["triggerType"].as_str() != Some("http") {
        return Err(invalid("triggerType: gpufn has HTTP triggers only (http)"));
    }
    let config = input["triggerConfig"]
        .as_str()
        .unwrap_or(r#"{"authType":"function"}"#)
        .to_string();
    check_config(&config)?;
    let mut all = load(p, function).await;
    if all.iter().any(|t| t["triggerName"] == name.as_str()) {
        return Err(err(
            StatusCode::CONFLICT,
            "TriggerAlreadyExists",
            format!("trigger {name} already exists"),
        ));
    }
    let now = rfc3339(crate::util::from_ms(now_ms()));
    let t = json!({
        "triggerName": name, "triggerType": "http", "triggerConfig": config,
        "triggerId": uuid::Uuid::new_v4().to_string(), "qualifier": "LATEST",
        "description": input["description"], "status": "Ready",
        "createdTime": now, "lastModifiedTime": now,
    });
    all.push(t.clone());
    save(p, function, &all).await?;
    redeploy(p, grant, &lock).await?;
    ok_json(StatusCode::OK, view(&t, function, headers))
}

pub(super) async fn list(
    p: &Platform,
    function: &str,
    headers: &HeaderMap,
) -> Result<Response, FcError> {
    if p.pool(function).is_none() {
        return Err(ApiError::no_function(function).into());
    }
    let all: Vec<Value> = load(p, function)
        .await
        .iter()
        .map(|t| view(t, function, headers))
        .collect();
    ok_json(StatusCode::OK, json!({"triggers": all}))
}

async fn find(p: &Platform, function: &str, name: &str) -> Result<(Vec<Value>, usize), FcError> {
    let all = load(p, function).await;
    let i = all
        .iter()
        .position(|t| t["triggerName"] == name)
        .ok_or_else(|| {
            err(
                StatusCode::NOT_FOUND,
                "TriggerNotFound",
                format!("trigger {name} of {function} not found"),
            )
        })?;
    Ok((all, i))
}

pub(super) async fn get(
    p: &Platform,
    function: &str,
    name: &str,
    headers: &HeaderMap,
) -> Result<Response, FcError> {
    let (all, i) = find(p, function, name).await?;
    ok_json(StatusCode::OK, view(&all[i], function, headers))
}

pub(super) async fn update(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    function: &str,
    name: &str,
    headers: &HeaderMap,
    input: Value,
) -> Result<Response, FcError> {
    let lock = p.lock_function(function).await;
    let (mut all, i) = find(p, function, name).await?;
    if let Some(config) = input["triggerConfig"].as_str() {
        check_config(config)?;
        all[i]["triggerConfig"] = json!(config);
    }
    if !input["description"].is_null() {
        all[i]["description"] = input["description"].clone();
    }
    all[i]["lastModifiedTime"] = json!(rfc3339(crate::util::from_ms(now_ms())));
    let t = all[i].clone();
    save(p, function, &all).await?;
    redeploy(p, grant, &lock).await?;
    ok_json(StatusCode::OK, view(&t, function, headers))
}

pub(super) async fn delete(
    p: &Platform,
    grant: &gpufn_auth::Grant,
    function: &str,
    name: &str,
) -> Result<Response, FcError> {
    let lock = p.lock_function(function).await;
    let (mut all, i) = find(p, function, name).await?;
    all.remove(i);
    save(p, function, &all).await?;
    redeploy(p, grant, &lock).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
