//! Asynchronous invocation: durable tasks run through the same pools as synchronous requests.
//!
//! - Accepting: [`TaskRunner::accept`] hands the task to one writer thread that commits whatever
//!   has queued up in one transaction (group commit) and answers each caller only after the fsync.
//! - Running: the dispatcher picks due `queued` tasks, at most `--async-max-share` of a function's
//!   slots at once so that synchronous traffic is never starved, and runs each attempt through
//!   `Pool::acquire` and the gateway's exchange — the same concurrency, quota and cold starts.
//! - Failing: a 5xx, a crash or a timeout is retried with exponential backoff until
//!   `async.max_retries`; a task older than `async.max_event_age_s` expires.
//! - Reporting: a final state queues deliveries (callback URL, `on_success`/`on_failure`) in the same
//!   transaction; each delivery is POSTed by its own task with its own backoff, so a destination that
//!   is down delays nobody else.
//! - Recovering: at start, tasks left `running` go back to `queued` (at-least-once).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use gpufn_store::{Delivery, TaskResult, TaskRow, TaskState};
use http::{HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use tokio_util::sync::CancellationToken;

use crate::forward;
use crate::gateway::exchange;
use crate::platform::Platform;
use crate::pool::{AcquireError, Slot};
use crate::tasks_api::task_json;
use crate::util::now_ms;

use crate::task_queue::lock;
pub use crate::task_queue::{TaskConfig, TaskRunner};

/// Starts the dispatcher, the delivery loop and the retention sweep.
pub(crate) fn start(platform: &Arc<Platform>) {
    match platform.store().requeue_running(now_ms()) {
        Ok(0) => {}
        Ok(n) => tracing::warn!("{n} task(s) were running when gpufn stopped: queued again"),
        Err(e) => tracing::error!("cannot requeue running tasks: {e}"),
    }
    tokio::spawn(dispatch_loop(platform.clone()));
    tokio::spawn(delivery_loop(platform.clone()));
    tokio::spawn(retention_loop(platform.clone()));
}

fn async_limit(platform: &Platform, function: &str) -> u32 {
    let Some(pool) = platform.pool(function) else {
        return 0;
    };
    let spec = pool.spec();
    let slots = f64::from(spec.scaling.max_instances) * f64::from(spec.instance_concurrency);
    let quota_slots =
        f64::from(platform.allocator().quota()) * f64::from(spec.instance_concurrency);
    let share = platform.tasks().config.max_share;
    ((slots.min(quota_slots) * share).floor() as u32).max(1)
}

async fn dispatch_loop(platform: Arc<Platform>) {
    let runner = platform.tasks();
    let shutdown = platform.shutdown_token();
    loop {
        let now = now_ms();
        // The store is read and written on a blocking thread (as every store call from async
        // code): SQLite calls block.
        let p = platform.clone();
        let pass = tokio::task::spawn_blocking(move || dispatch_pass(&p, now)).await;
        let Ok((blocked, next_due)) = pass else {
            return;
        };
        if shutdown.is_cancelled() {
            return;
        }
        let wait = match next_due {
            _ if blocked => Duration::from_secs(1),
            Some(t) if t > now => Duration::from_millis(u64::try_from(t - now).unwrap_or(0)),
            Some(_) => Duration::from_millis(200),
            None => Duration::from_secs(60),
        };
        tokio::select! {
            () = runner.wake.notified() => {}
            () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Starts the due tasks whose functions have room (on a blocking thread). Whether any had to wait
/// for room, and when the next task is due.
fn dispatch_pass(platform: &Arc<Platform>, now: i64) -> (bool, Option<i64>) {
    let due = platform
        .store()
        .runnable_tasks(now, 256)
        .unwrap_or_else(|e| {
            tracing::error!("cannot read due tasks: {e}");
            Vec::new()
        });
    let mut blocked = false;
    for task in due {
        if platform.shutdown_token().is_cancelled() {
            break;
        }
        if !admit(platform, &task, now) {
            blocked = true;
        }
    }
    (blocked, platform.store().next_task_due().ok().flatten())
}

/// Starts one due task if its function has room; false when it must wait for room.
fn admit(platform: &Arc<Platform>, task: &TaskRow, now: i64) -> bool {
    let runner = platform.tasks();
    let Some(pool) = platform.pool(&task.function) else {
        finish_without_attempt(
            platform,
            task,
            TaskState::Failed,
            "the function was deleted",
        );
        return true;
    };
    let spec = pool.spec();
    let age = Duration::from_millis(u64::try_from(now - task.created_ms).unwrap_or(0));
    if age > spec.async_invoke.max_event_age {
        let why = format!(
            "expired: not finished within async.max_event_age_s ({}s)",
            spec.async_invoke.max_event_age.as_secs()
        );
        finish_without_attempt(platform, task, TaskState::Expired, &why);
        return true;
    }
    let limit = async_limit(platform, &task.function);
    {
        let mut in_flight = lock(&runner.in_flight);
        let n = in_flight.entry(task.function.clone()).or_default();
        if *n >= limit {
            return false;
        }
        match platform.store().start_task(&task.id, now) {
            Ok(true) => *n += 1,
            Ok(false) => return true,
            Err(e) => {
                tracing::error!(task = %task.id, "cannot start task: {e}");
                return true;
            }
        }
    }
    let token = CancellationToken::new();
    lock(&runner.running).insert(task.id.clone(), token.clone());
    tokio::spawn(run_task(platform.clone(), task.clone(), token));
    true
}

fn finish_without_attempt(platform: &Platform, task: &TaskRow, state: TaskState, why: &str) {
    if let Ok(true) = platform.store().start_task(&task.id, now_ms()) {
        let result = TaskResult {
            error: Some(why.to_string()),
            ..TaskResult::default()
        };
        finish(platform, task, state, result);
    }
}

enum Outcome {
    Done(TaskResult),
    /// The attempt failed (counted); retry if attempts are left. Carries the function's answer,
    /// if it gave one (a 5xx), for the final record.
    Failed(String, Option<TaskResult>),
    /// No attempt was made (no slot in time, shutting down): try again later, uncounted.
    NotRun(String),
    Cancelled,
}

async fn run_task(platform: Arc<Platform>, task: TaskRow, cancel: CancellationToken) {
    let outcome = tokio::select! {
        o = attempt(&platform, &task) => o,
        () = cancel.cancelled() => Outcome::Cancelled,
    };
    let p = platform.clone();
    let settled = tokio::task::spawn_blocking(move || settle(&p, &task, outcome)).await;
    if let Err(e) = settled {
        tracing::error!("settling a task failed: {e}");
    }
}

/// Records what an attempt gave (on a blocking thread) and frees the task's place.
fn settle(platform: &Arc<Platform>, task: &TaskRow, outcome: Outcome) {
    let store = platform.store();
    let now = now_ms();
    match outcome {
        Outcome::Done(result) => finish(platform, task, TaskState::Succeeded, result),
        Outcome::Cancelled => tracing::info!(task = %task.id, "task cancelled while running"),
        Outcome::NotRun(why) => {
            let _ = store.retry_task(&task.id, &why, now + 1000, now);
        }
        Outcome::Failed(why, last) => {
            let attempts = store
                .task(&task.id)
                .ok()
                .flatten()
                .map_or(1, |t| t.attempts);
            let max_retries = platform
                .pool(&task.function)
                .map_or(0, |p| p.spec().async_invoke.max_retries);
            if attempts > i64::from(max_retries) {
                let result = TaskResult {
                    error: Some(format!("{why} (after {attempts} attempts)")),
                    ..last.unwrap_or_default()
                };
                finish(platform, task, TaskState::Failed, result);
            } else {
                let base = platform.tasks().config.retry_base;
                let backoff = (base
                    * 2u32.saturating_pow(u32::try_from(attempts - 1).unwrap_or(0)))
                .min(Duration::from_secs(300));
                let next = now + i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX);
                tracing::info!(task = %task.id, attempts, "attempt failed, retrying in {backoff:?}: {why}");
                let _ = store.retry_task(&task.id, &why, next, now);
            }
        }
    }
    let runner = platform.tasks();
    lock(&runner.running).remove(&task.id);
    if let Some(n) = lock(&runner.in_flight).get_mut(&task.function) {
        *n = n.saturating_sub(1);
    }
    runner.wake.notify_one();
}

async fn attempt(platform: &Platform, task: &TaskRow) -> Outcome {
    let Some(pool) = platform.pool(&task.function) else {
        return Outcome::Failed("the function was deleted".into(), None);
    };
    let slot = match pool.acquire().await {
        Ok(slot) => slot,
        Err(e @ AcquireError::StartFailed { .. }) => return Outcome::Failed(e.to_string(), None),
        Err(e) => return Outcome::NotRun(e.to_string()),
    };
    let (id, instance) = (task.id.clone(), slot.instance_id().to_string());
    match platform
        .with_store(move |s| s.count_attempt(&id, &instance, now_ms()))
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::error!(task = %task.id, "cannot count the attempt: {e}"),
        Err(e) => tracing::error!(task = %task.id, "cannot count the attempt: {e}"),
    }
    // The body is read only now, to be sent (scans and lists do not carry it).
    let id = task.id.clone();
    let body = match platform.with_store(move |s| s.task_body(&id)).await {
        Ok(Ok(Some(body))) => body,
        Ok(Ok(None)) => return Outcome::Failed("the task is gone".into(), None),
        Ok(Err(e)) => return Outcome::NotRun(format!("reading the task's body: {e}")),
        Err(e) => return Outcome::NotRun(e.to_string()),
    };
    let request = match build_request(task, body, &slot) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e, None),
    };
    let (sent, slot) = match exchange(platform, slot, request).await {
        Ok(x) => x,
        Err(e) => return Outcome::Failed(e.message, None),
    };
    let resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            slot.mark_broken();
            return Outcome::Failed(
                format!("instance {} failed to answer: {e}", slot.instance_id()),
                None,
            );
        }
        Err(_) => {
            return Outcome::Failed(
                format!(
                    "no response within request_timeout_s ({}s)",
                    slot.request_timeout().as_secs()
                ),
                None,
            );
        }
    };
    let status = resp.status();
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let result = match collect_body(platform, &task.id, resp.into_body()).await {
        Ok((body, file)) => TaskResult {
            status: Some(i64::from(status.as_u16())),
            headers_json: serde_json::to_string(&headers).ok(),
            body,
            file,
            error: None,
            body_len: None,
        },
        Err(e) => return Outcome::Failed(format!("reading the response: {e}"), None),
    };
    drop(slot);
    if status.is_server_error() {
        return Outcome::Failed(format!("the function answered {status}"), Some(result));
    }
    Outcome::Done(result)
}

fn build_request(
    task: &TaskRow,
    body: Vec<u8>,
    slot: &Slot,
) -> Result<http::Request<Body>, String> {
    let method = Method::from_bytes(task.method.as_bytes()).map_err(|e| e.to_string())?;
    let mut req = http::Request::builder()
        .method(method)
        .uri(forward::target(&task.path).as_ref());
    let stored: Vec<(String, String)> =
        serde_json::from_str(&task.headers_json).unwrap_or_default();
    let mut headers = http::HeaderMap::with_capacity(stored.len() + 4);
    for (k, v) in stored {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            headers.append(k, v);
        }
    }
    // Stored before these rules were shared, a task may still hold headers gpufn sets.
    forward::strip_request(&mut headers);
    let has_host = headers.contains_key(http::header::HOST);
    forward::add_instance_headers(&mut headers, slot, has_host);
    headers.insert(
        HeaderName::from_static("x-gpufn-task-id"),
        HeaderValue::from_str(&task.id).map_err(|e| e.to_string())?,
    );
    use forward::HeadOut as _;
    headers.set(
        &forward::REQUEST_ID_HEADER,
        forward::Value::Bytes(task.id.as_bytes()),
    );
    if let Some(h) = req.headers_mut() {
        *h = headers;
    }
    req.body(Body::new(Full::new(Bytes::from(body))))
        .map_err(|e| e.to_string())
}

/// Reads a result body: kept in memory up to the inline limit, spilled to a file beyond it.
async fn collect_body(
    platform: &Platform,
    task_id: &str,
    mut body: crate::upstream::UpstreamBody,
) -> Result<(Option<Vec<u8>>, Option<String>), String> {
    use tokio::io::AsyncWriteExt;
    let limit = platform.tasks().config.inline_result_bytes;
    let mut buf = Vec::new();
    let mut file: Option<(tokio::fs::File, PathBuf)> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if let Some((f, _)) = file.as_mut() {
            f.write_all(&data).await.map_err(|e| e.to_string())?;
            continue;
        }
        buf.extend_from_slice(&data);
        if buf.len() > limit {
            let dir = &platform.tasks().results_dir;
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| e.to_string())?;
            let path = dir.join(format!("{task_id}.body"));
            let mut f = tokio::fs::File::create(&path)
                .await
                .map_err(|e| e.to_string())?;
            f.write_all(&buf).await.map_err(|e| e.to_string())?;
            buf.clear();
            file = Some((f, path));
        }
    }
    match file {
        Some((f, path)) => {
            f.sync_all().await.map_err(|e| e.to_string())?;
            Ok((None, Some(path.to_string_lossy().into_owned())))
        }
        None => Ok((Some(buf), None)),
    }
}

/// Writes the final state and queues the destination deliveries, in one transaction.
fn finish(platform: &Platform, task: &TaskRow, state: TaskState, result: TaskResult) {
    let spec = platform.pool(&task.function).map(|p| p.spec());
    let mut urls: Vec<String> = task.callback_url.iter().cloned().collect();
    if let Some(spec) = &spec {
        let dest = match state {
            TaskState::Succeeded => spec.async_invoke.on_success.clone(),
            TaskState::Failed | TaskState::Expired => spec.async_invoke.on_failure.clone(),
            _ => None,
        };
        urls.extend(dest);
    }
    let now = now_ms();
    let mut done = task.clone();
    done.state = state;
    done.finished_ms = Some(now);
    done.updated_ms = now;
    done.result = result.clone();
    if let Ok(Some(t)) = platform.store().task(&task.id) {
        done.attempts = t.attempts;
        done.instance = t.instance;
        done.started_ms = t.started_ms;
    }
    let payload = task_json(&done, true).to_string();
    let deliveries: Vec<(String, String)> =
        urls.into_iter().map(|u| (u, payload.clone())).collect();
    match platform
        .store()
        .finish_task(&task.id, state, &result, &deliveries, now)
    {
        Ok(true) => {
            tracing::info!(task = %task.id, state = state.as_str(), "task finished");
            if !deliveries.is_empty() {
                platform.tasks().delivery_wake.notify_one();
            }
        }
        Ok(false) => {}
        Err(e) => tracing::error!(task = %task.id, "cannot store the task's result: {e}"),
    }
}

const DELIVERY_MAX_ATTEMPTS: i64 = 10;

async fn delivery_loop(platform: Arc<Platform>) {
    let runner = platform.tasks();
    let shutdown = platform.shutdown_token();
    loop {
        let now = now_ms();
        let (due, next) = platform
            .with_store(move |s| {
                (
                    s.due_deliveries(now, 64).unwrap_or_default(),
                    s.next_delivery_due().ok().flatten(),
                )
            })
            .await
            .unwrap_or_default();
        for d in due {
            if lock(&runner.delivering).insert(d.id) {
                tokio::spawn(deliver(platform.clone(), d));
            }
        }
        let wait = next.map_or(Duration::from_secs(60), |t| {
            Duration::from_millis(u64::try_from(t - now).unwrap_or(0).max(100))
        });
        tokio::select! {
            () = runner.delivery_wake.notified() => {}
            () = tokio::time::sleep(wait.min(Duration::from_secs(60))) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One POST of a destination record; on failure, the next try is scheduled with backoff.
async fn deliver(platform: Arc<Platform>, d: Delivery) {
    let result = post_json(&platform, &d.url, d.payload.clone()).await;
    let attempts = d.attempts + 1;
    // A destination gpufn may not call is not tried again.
    let (delivered, error, refused) = match result {
        Ok(status) if status.is_success() => (true, None, false),
        Ok(status) => (false, Some(format!("answered {status}")), false),
        Err(Posted::Refused(why)) => (false, Some(format!("refused: {why}")), true),
        Err(Posted::Failed(e)) => (false, Some(e), false),
    };
    let give_up = !delivered && (refused || attempts >= DELIVERY_MAX_ATTEMPTS);
    let backoff =
        Duration::from_millis(500 * 2u64.saturating_pow(u32::try_from(attempts).unwrap_or(0)))
            .min(Duration::from_secs(60));
    let next = now_ms() + i64::try_from(backoff.as_millis()).unwrap_or(0);
    if let Some(e) = &error {
        tracing::info!(task = %d.task_id, url = %d.url, attempts, "delivery failed: {e}");
    }
    let id = d.id;
    let recorded = platform
        .with_store(move |s| s.delivery_attempted(id, delivered, give_up, error.as_deref(), next))
        .await;
    if !matches!(recorded, Ok(Ok(_))) {
        tracing::error!("cannot record a delivery attempt: {recorded:?}");
    }
    lock(&platform.tasks().delivering).remove(&d.id);
    platform.tasks().delivery_wake.notify_one();
}

/// Why a POST to a destination did not get an answer.
enum Posted {
    /// gpufn does not call that address ([`crate::outbound`]).
    Refused(crate::outbound::Refused),
    /// Connecting or sending failed, or no answer came in time.
    Failed(String),
}

/// POSTs `payload` to `url`: to the address [`crate::outbound::Outbound::resolve`] chose and
/// checked (not a second lookup), with the URL's `Host`.
async fn post_json(
    platform: &Platform,
    url: &str,
    payload: String,
) -> Result<http::StatusCode, Posted> {
    let (addr, host) = platform
        .outbound()
        .resolve(url)
        .await
        .map_err(Posted::Refused)?;
    let path = url
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
        .unwrap_or_else(|| "/".into());
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header(http::header::HOST, host)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("user-agent", "gpufn")
        .body(Body::from(payload))
        .map_err(|e| Posted::Failed(e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(10), platform.client().request(req)).await {
        Ok(Ok(resp)) => Ok(resp.status()),
        Ok(Err(e)) => Err(Posted::Failed(e.to_string())),
        Err(_) => Err(Posted::Failed("no answer within 10s".into())),
    }
}

async fn retention_loop(platform: Arc<Platform>) {
    let shutdown = platform.shutdown_token();
    loop {
        let keep = platform.tasks().config.retention;
        let before = now_ms() - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
        let purged = platform.with_store(move |s| s.purge_tasks(before)).await;
        match purged
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            Ok(files) => {
                for f in files {
                    let _ = tokio::fs::remove_file(f).await;
                }
            }
            Err(e) => tracing::error!("cannot purge old tasks: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(3600).min(keep.max(Duration::from_secs(1)))) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
