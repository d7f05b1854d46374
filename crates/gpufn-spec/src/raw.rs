//! The spec document exactly as users write it.
//!
//! Numbers are signed and wide on purpose: a negative or huge value then reaches validation, which
//! names the field and the rule, instead of failing inside serde with a type error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A function spec as written in `gpufn.yaml` or posted to `POST /api/v1/functions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    /// Function name: a DNS label, `[a-z0-9-]`, 1..63 characters.
    pub name: Option<String>,
    /// `process` (a host process, the default) or `container` (an OCI image run by runc).
    pub runtime: Option<String>,
    /// The function's own web server, as argv. A process must listen on `$PORT`; for a container
    /// it replaces the image's ENTRYPOINT and CMD.
    pub command: Option<Vec<String>>,
    /// `runtime: container`: the image, from any OCI / Docker v2 registry.
    pub image: Option<String>,
    /// `runtime: container`: the port the app listens on inside the container.
    pub port: Option<i64>,
    /// `runtime: container`: `isolated` (a network namespace of its own, the default) or `host`.
    pub network: Option<String>,
    /// `runtime: container`: registry credentials, read from gpufn's environment.
    pub registry_auth: Option<RawRegistryAuth>,
    /// Working directory of the process; relative paths are resolved by the CLI against the spec file.
    pub workdir: Option<String>,
    /// Extra environment variables for the process.
    pub env: Option<BTreeMap<String, String>>,
    /// Environment variables whose values are gpufn secrets (`gpufn secret set NAME`): variable →
    /// secret name. Reads of the spec show the names, never the values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env_from_secrets: Option<BTreeMap<String, String>>,
    /// The GPU the function needs.
    pub gpu: Option<RawGpu>,
    /// vCPUs (may be fractional, e.g. 0.5).
    pub cpu: Option<f64>,
    /// Memory in MB.
    pub memory_mb: Option<i64>,
    /// Disk in MB.
    pub disk_mb: Option<i64>,
    /// Requests one instance may have in flight at once.
    pub instance_concurrency: Option<i64>,
    /// How gpufn decides an instance is ready.
    pub health_check: Option<RawHealthCheck>,
    /// Instance counts, keep-alive and queueing.
    pub scaling: Option<RawScaling>,
    /// Longest time gpufn waits for an instance's response headers.
    pub request_timeout_s: Option<i64>,
    /// Asynchronous invocation: retries, event age, destinations.
    #[serde(rename = "async")]
    pub async_invoke: Option<RawAsync>,
    /// Who may call the function's triggers (`/function/`, `/async-function/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<RawAuth>,
    /// Hooks gpufn calls around each instance's life (Function Compute's
    /// `instanceLifecycleConfig`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<RawLifecycle>,
}

/// `lifecycle:` — hooks around each instance's life.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawLifecycle {
    /// Run once per instance after its health check passes and before any request reaches it
    /// (`POST path`, or `command` inside the instance); a failure fails the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initializer: Option<RawHook>,
    /// Run before every stop (`GET path`, or `command` inside the instance), then SIGTERM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<RawHook>,
    /// `scaling.idle_mode: freeze`: run before an idle provisioned instance is frozen (`GET
    /// path`, or `command`); a failure leaves it running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_freeze: Option<RawHook>,
}

/// One hook: an HTTP `path` on the instance or a `command` run inside it, and its `timeout_s`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHook {
    /// Path on the instance's web server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// argv run inside the instance (its user, environment, directory and limits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Longest the hook may take (initializer: default 300 s; pre_stop: default 30 s).
    pub timeout_s: Option<i64>,
}

/// `auth:` — `{type: token}` (the default: an `invoker` or higher token that reaches the function)
/// or `{type: anonymous}` (anyone who reaches gpufn: an explicit opt-in for public endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `token` or `anonymous`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `async:` — how asynchronous invocations (`/async-function/...`) are retried and reported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAsync {
    /// Retries after a failed attempt (5xx, crash, timeout), with backoff.
    pub max_retries: Option<i64>,
    /// A task not finished this long after it was accepted expires.
    pub max_event_age_s: Option<i64>,
    /// URL that gets a JSON record of every task that succeeds.
    pub on_success: Option<String>,
    /// URL that gets a JSON record of every task that fails or expires.
    pub on_failure: Option<String>,
    /// Most tasks queued or running at once; submissions past it get 429.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<i64>,
}

/// `registry_auth:` — where the registry login comes from, so it never sits in a spec: a gpufn
/// secret (`{secret: NAME}`, its value `user:password`), or the names of two environment variables
/// of the gpufn server that the admin allowed with `--registry-env`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawRegistryAuth {
    /// A gpufn secret holding `user:password`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Variable holding the user name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username_env: Option<String>,
    /// Variable holding the password or token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

/// `gpu:` — card type and the GPU memory billed for each instance.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    /// Card type, e.g. `tesla-t4`; any card when absent.
    #[serde(rename = "type")]
    pub card_type: Option<String>,
    /// vGPU memory in whole GB, at least 1.
    pub memory_gb: Option<i64>,
}

/// `health_check:` — readiness probe.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// HTTP path probed with GET; any 2xx means ready.
    pub path: Option<String>,
    /// How long an instance may take to become ready (model loads are slow: minutes).
    pub startup_timeout_s: Option<i64>,
}

/// `scaling:` — instance counts and keep-alive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawScaling {
    /// Provisioned instances kept warm at all times.
    pub min_instances: Option<i64>,
    /// Upper bound on instances of this function.
    pub max_instances: Option<i64>,
    /// Seconds an instance may stay idle before it is stopped.
    pub idle_timeout_s: Option<i64>,
    /// Requests that may wait for a slot at once; more are refused with 429.
    pub max_queue: Option<i64>,
    /// `fixed` (keep idle instances `idle_timeout_s`), `histogram` (learn the function's idle
    /// times; keep or pre-warm from them, with `idle_timeout_s` as the fallback) or `predictive`
    /// (per idle period the cheapest of release / keep / release and pre-warm over the function's
    /// recent idle gaps, a cold start priced at `cold_cost_s`; `idle_timeout_s` until it has seen
    /// a few gaps).
    pub keep_alive: Option<String>,
    /// `keep_alive: predictive`: what one cold start is worth, in seconds of a card held (default
    /// 300). Higher: fewer cold starts for more card time.
    pub cold_cost_s: Option<i64>,
    /// `keep_alive: histogram`: the width of one histogram bin in seconds (default 60; the
    /// histogram has 240 bins). Smaller bins suit functions called every few seconds.
    pub histogram_bin_s: Option<i64>,
    /// Seconds a request may wait for a slot before it is refused with 503 (default: the startup
    /// timeout plus 60 s, so a request at zero can always wait out a whole cold start).
    pub queue_timeout_s: Option<i64>,
    /// Scheduled provisioning: from each time an entry's `cron` matches (in its `timezone`), keep
    /// its `min_instances` (the entry matched last is in force; `min_instances` above before any).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedules: Option<Vec<RawSchedule>>,
    /// Target tracking: keep provisioned instances so that requests in flight come to this share
    /// of their capacity (0 < x <= 1), between the scheduled minimum and `max_provisioned`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_utilization: Option<f64>,
    /// Target tracking's most provisioned instances (default `max_instances`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_provisioned: Option<i64>,
    /// `none` (the default) or `freeze`: a provisioned instance with no request in flight is
    /// frozen (after `lifecycle.pre_freeze`) and thawed when a request arrives; billed idle
    /// meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_mode: Option<String>,
}

/// One scheduled provisioning action (Function Compute's `scheduledActions`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSchedule {
    /// A name for it (unique in the function).
    pub name: Option<String>,
    /// Five-field cron pattern: minute hour day-of-month month day-of-week (`0 8 * * 1-5`).
    pub cron: Option<String>,
    /// IANA time zone the pattern is read in (default `UTC`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Provisioned instances from each match on.
    pub min_instances: Option<i64>,
    /// Matches count only from this RFC 3339 time on (FC's `startTime`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// ... and only until this one (FC's `endTime`); the last match's effect stays until
    /// another action's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
}
