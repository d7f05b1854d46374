//! Validation: [`RawSpec`] → [`FunctionSpec`], with an error per broken rule naming the field.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::raw::{
    RawAsync, RawAuth, RawGpu, RawHealthCheck, RawHook, RawLifecycle, RawRegistryAuth, RawScaling,
    RawSchedule, RawSpec,
};

/// One broken rule: the dotted path of the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path, e.g. `gpu.memory_gb` or `command[0]`.
    pub field: String,
    /// The rule and the offending value, e.g. `must be >= 1 (got 0)`.
    pub message: String,
}

impl FieldError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a spec was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The document is not valid YAML/JSON, or a field has the wrong type or is unknown.
    #[error("{0}")]
    Parse(FieldError),
    /// The document parsed, but breaks one or more rules.
    #[error("{}", join(.0))]
    Invalid(Vec<FieldError>),
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl SpecError {
    /// Every field error, in document order.
    pub fn errors(&self) -> Vec<FieldError> {
        match self {
            SpecError::Parse(e) => vec![e.clone()],
            SpecError::Invalid(v) => v.clone(),
        }
    }
}

/// Parses a YAML document (JSON is accepted too, being YAML).
pub fn parse_yaml(text: &str) -> Result<RawSpec, SpecError> {
    let value = crate::strict::read(serde_yaml_ng::Deserializer::from_str(text))
        .map_err(|(field, why)| SpecError::Parse(FieldError::new(field, why)))?;
    from_value(value)
}

/// Parses a JSON document.
pub fn parse_json(bytes: &[u8]) -> Result<RawSpec, SpecError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = crate::strict::read(&mut de)
        .map_err(|(field, why)| SpecError::Parse(FieldError::new(field, why)))?;
    de.end()
        .map_err(|e| SpecError::Parse(FieldError::new("(document)", e.to_string())))?;
    from_value(value)
}

fn from_value(value: serde_json::Value) -> Result<RawSpec, SpecError> {
    if !value.is_object() {
        return Err(SpecError::Parse(FieldError::new(
            "(document)",
            "must be a mapping of fields (name, command, gpu, ...)",
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." || path.is_empty() {
            "(document)".to_string()
        } else {
            path
        };
        SpecError::Parse(FieldError::new(field, e.into_inner().to_string()))
    })
}

/// How instances are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// A host process started with `command` in `workdir`.
    Process,
    /// An OCI container from `image`.
    Container,
}

impl Runtime {
    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Process => "process",
            Runtime::Container => "container",
        }
    }
}

/// The GPU an instance needs. One whole card is allocated per instance; `memory_gb` is what is billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuRequest {
    /// Card type, or any card when `None`.
    pub card_type: Option<String>,
    /// vGPU memory in whole GB (>= 1).
    pub memory_gb: u32,
}

/// Readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    /// Path probed with GET; a 2xx answer means ready.
    pub path: String,
    /// Deadline for an instance to become ready, from spawn.
    pub startup_timeout: Duration,
}

/// Instance counts, keep-alive and queueing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Scaling {
    /// Provisioned instances kept warm at all times.
    pub min_instances: u32,
    /// Upper bound on instances (starting or ready).
    pub max_instances: u32,
    /// An instance idle this long is stopped (unless needed for `min_instances`).
    pub idle_timeout: Duration,
    /// Requests that may wait for a slot at once.
    pub max_queue: u32,
    /// How long a request may wait for a slot.
    pub queue_timeout: Duration,
    /// How idle instances are kept.
    pub keep_alive: KeepAliveMode,
    /// `keep_alive: histogram`: width of one idle-time bin.
    pub histogram_bin: Duration,
    /// `keep_alive: predictive`: the price of one cold start, as card time.
    pub cold_cost: Duration,
    /// Scheduled provisioning actions, in the spec's order.
    pub schedules: Vec<ScheduleSpec>,
    /// Target tracking: utilization in thousandths (600 = 0.6), when on.
    pub target_utilization_permille: Option<u32>,
    /// Target tracking's most provisioned instances.
    pub max_provisioned: u32,
    /// Freeze idle provisioned instances (`idle_mode: freeze`).
    pub freeze_idle: bool,
}

impl Scaling {
    /// Target tracking's utilization, when on.
    pub fn target_utilization(&self) -> Option<f64> {
        self.target_utilization_permille
            .map(|p| f64::from(p) / 1000.0)
    }
}

/// One scheduled provisioning action (validated: the pattern and the zone parse).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduleSpec {
    /// Unique within the function.
    pub name: String,
    /// Five-field cron pattern.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// Provisioned instances from each match on.
    pub min_instances: u32,
    /// Matches count only from then (RFC 3339)...
    pub start_time: Option<String>,
    /// ... until then.
    pub end_time: Option<String>,
}

/// An RFC 3339 time.
fn rfc3339(t: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

impl ScheduleSpec {
    /// The policy's form.
    pub fn to_policy(&self) -> Option<gpufn_policy::provisioning::Schedule> {
        let bound = |t: &Option<String>| t.as_deref().and_then(rfc3339);
        Some(
            gpufn_policy::provisioning::Schedule::new(
                &self.name,
                &self.cron,
                &self.timezone,
                self.min_instances,
            )
            .ok()?
            .bounded(bound(&self.start_time), bound(&self.end_time)),
        )
    }
}

/// `scaling.keep_alive`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeepAliveMode {
    /// Keep idle instances `idle_timeout_s`.
    Fixed,
    /// The hybrid histogram policy, falling back to `idle_timeout_s`.
    Histogram,
    /// The predictive policy, falling back to `idle_timeout_s`.
    Predictive,
}

impl KeepAliveMode {
    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            KeepAliveMode::Fixed => "fixed",
            KeepAliveMode::Histogram => "histogram",
            KeepAliveMode::Predictive => "predictive",
        }
    }
}

/// `runtime: container` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerSpec {
    /// Image reference; after deploy, pinned to a digest (`repo:tag@sha256:...`).
    pub image: String,
    /// Port the app listens on inside the container.
    pub port: u16,
    /// Share the host's network.
    pub host_network: bool,
    /// Environment variable names holding registry credentials.
    pub registry_auth: Option<RegistryAuth>,
}

/// `registry_auth`: where the registry login comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RegistryAuth {
    /// Two environment variables of the gpufn server (allowed with `--registry-env`).
    Env {
        /// Variable holding the user name.
        username_env: String,
        /// Variable holding the password.
        password_env: String,
    },
    /// A gpufn secret whose value is `user:password`.
    Secret {
        /// The secret's name.
        secret: String,
    },
}

/// A spec that passed validation. Only [`RawSpec::validate`] builds one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionSpec {
    /// DNS-label name.
    pub name: String,
    /// How instances run.
    pub runtime: Runtime,
    /// argv of the function's web server (non-empty for processes; for containers, empty means
    /// the image's ENTRYPOINT and CMD).
    pub command: Vec<String>,
    /// Working directory of the process; for containers, an absolute path in the image or empty
    /// for the image's WORKDIR.
    pub workdir: String,
    /// The image and its settings, for `runtime: container`.
    pub container: Option<ContainerSpec>,
    /// Extra environment (never one of the variables gpufn sets itself).
    pub env: BTreeMap<String, String>,
    /// Variables set from gpufn secrets at each start: variable → secret name.
    pub env_from_secrets: BTreeMap<String, String>,
    /// GPU need.
    pub gpu: GpuRequest,
    /// vCPUs.
    pub cpu: f64,
    /// Memory in MB.
    pub memory_mb: u64,
    /// Disk in MB.
    pub disk_mb: u64,
    /// Max requests in flight per instance (1..=200).
    pub instance_concurrency: u32,
    /// Readiness probe.
    pub health_check: HealthCheck,
    /// Scaling and keep-alive.
    pub scaling: Scaling,
    /// Deadline for an instance's response headers.
    pub request_timeout: Duration,
    /// Asynchronous invocation settings.
    pub async_invoke: AsyncConfig,
    /// Who may call the triggers.
    pub auth: TriggerAuth,
    /// Hooks around each instance's life.
    pub lifecycle: Lifecycle,
}

/// Hooks around each instance's life.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Lifecycle {
    /// Run once per instance before its first request; a failure fails the start.
    pub initializer: Option<Hook>,
    /// Run before every stop of an instance that served (then SIGTERM).
    pub pre_stop: Option<Hook>,
    /// Run before an idle provisioned instance is frozen.
    pub pre_freeze: Option<Hook>,
}

impl Lifecycle {
    /// Whether a hook runs a command inside the instance.
    pub fn has_command(&self) -> bool {
        [&self.initializer, &self.pre_stop, &self.pre_freeze]
            .into_iter()
            .flatten()
            .any(|h| matches!(h.action, HookAction::Command(_)))
    }
}

/// One hook and its deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    /// What it does.
    pub action: HookAction,
    /// Longest it may take.
    pub timeout: Duration,
}

/// What a hook does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookAction {
    /// An HTTP request to this path on the instance (initializer: POST; pre_stop: GET).
    Http {
        /// Starts with '/'.
        path: String,
    },
    /// This argv, run inside the instance.
    Command(Vec<String>),
}

impl Hook {
    fn to_raw(&self) -> RawHook {
        let (path, command) = match &self.action {
            HookAction::Http { path } => (Some(path.clone()), None),
            HookAction::Command(argv) => (None, Some(argv.clone())),
        };
        RawHook {
            path,
            command,
            timeout_s: i64::try_from(self.timeout.as_secs()).ok(),
        }
    }
}

/// Who may call a function's triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TriggerAuth {
    /// A bearer token of role `invoker` or higher whose scope reaches the function.
    #[default]
    Token,
    /// Anyone (an explicit opt-in for public endpoints).
    Anonymous,
}

impl TriggerAuth {
    /// As written in a spec.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerAuth::Token => "token",
            TriggerAuth::Anonymous => "anonymous",
        }
    }
}

/// How asynchronous tasks are retried and reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AsyncConfig {
    /// Retries after a failed attempt.
    pub max_retries: u32,
    /// Tasks older than this expire.
    pub max_event_age: Duration,
    /// Destination for succeeded tasks.
    pub on_success: Option<String>,
    /// Destination for failed and expired tasks.
    pub on_failure: Option<String>,
    /// Most tasks queued or running at once.
    pub max_pending: u32,
}

/// Environment variables gpufn sets for every instance; a spec may not override them.
pub const RESERVED_ENV: &[&str] = &[
    "PORT",
    "FC_SERVER_PORT",
    "CUDA_VISIBLE_DEVICES",
    "NVIDIA_VISIBLE_DEVICES",
];

/// Collects errors so one pass reports every broken rule.
#[derive(Default)]
struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    fn fail(&mut self, field: &str, message: String) {
        self.errors.push(FieldError::new(field, message));
    }

    /// An integer in `min..=max`, or `default` when absent.
    fn int(&mut self, field: &str, value: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        let v = value.unwrap_or(default);
        if v < min {
            self.fail(field, format!("must be >= {min} (got {v})"));
            return default.clamp(min, max);
        }
        if v > max {
            self.fail(field, format!("must be <= {max} (got {v})"));
            return default.clamp(min, max);
        }
        v
    }

    fn secs(
        &mut self,
        field: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Duration {
        Duration::from_secs(self.int(field, value, default, min, max).unsigned_abs())
    }

    fn count(&mut self, field: &str, value: Option<i64>, default: i64, min: i64, max: i64) -> u32 {
        u32::try_from(self.int(field, value, default, min, max)).unwrap_or(u32::MAX)
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// A secret's name: 1..63 characters of `[a-z0-9._-]`, starting with a letter or digit.
pub fn is_secret_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(c))
}

/// Checks a variable a spec sets: a valid name that gpufn does not set itself. False (with the
/// error recorded) when it is not.
fn check_env_var(c: &mut Checker, field: &str, k: &str) -> bool {
    if !is_env_name(k) {
        c.fail(field, "name must match [A-Za-z_][A-Za-z0-9_]*".into());
        return false;
    }
    if RESERVED_ENV.contains(&k) || k.starts_with("GPUFN_") {
        c.fail(
            field,
            "is set by gpufn for every instance and cannot be overridden".into(),
        );
        return false;
    }
    true
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl RawSpec {
    /// Checks every rule and builds the validated spec, or lists every broken rule.
    pub fn validate(&self) -> Result<FunctionSpec, SpecError> {
        let mut c = Checker::default();
        let name = self.check_name(&mut c);
        let runtime = self.check_runtime(&mut c);
        let command = self.check_command(&mut c, runtime);
        let workdir = self.check_workdir(&mut c, runtime);
        let container = self.check_container(&mut c, runtime);
        let env = self.check_env(&mut c);
        let env_from_secrets = self.check_env_from_secrets(&mut c, &env);
        let gpu = check_gpu(&mut c, self.gpu.as_ref());
        let cpu = self.check_cpu(&mut c);
        let memory_mb = c.int("memory_mb", self.memory_mb, 2048, 64, 4 * 1024 * 1024);
        let disk_mb = c.int("disk_mb", self.disk_mb, 10240, 64, 64 * 1024 * 1024);
        let instance_concurrency =
            c.count("instance_concurrency", self.instance_concurrency, 1, 1, 200);
        let health_check = check_health(&mut c, self.health_check.as_ref());
        let scaling = check_scaling(&mut c, self.scaling.as_ref(), &health_check);
        let request_timeout = c.secs("request_timeout_s", self.request_timeout_s, 600, 1, 86_400);
        let async_invoke = check_async(&mut c, self.async_invoke.as_ref());
        let auth = match self.auth.as_ref().map(|a| a.kind.as_deref()) {
            None | Some(Some("token")) => TriggerAuth::Token,
            Some(Some("anonymous")) => TriggerAuth::Anonymous,
            Some(None) => {
                c.fail("auth.type", "is required: token or anonymous".into());
                TriggerAuth::Token
            }
            Some(Some(other)) => {
                c.fail(
                    "auth.type",
                    format!("must be one of: token, anonymous (got {other:?})"),
                );
                TriggerAuth::Token
            }
        };
        let lifecycle = check_lifecycle(&mut c, self.lifecycle.as_ref());
        if !c.errors.is_empty() {
            return Err(SpecError::Invalid(c.errors));
        }
        Ok(FunctionSpec {
            name,
            runtime,
            command,
            workdir,
            container,
            env,
            env_from_secrets,
            gpu,
            cpu,
            memory_mb: memory_mb.unsigned_abs(),
            disk_mb: disk_mb.unsigned_abs(),
            instance_concurrency,
            health_check,
            scaling,
            request_timeout,
            async_invoke,
            auth,
            lifecycle,
        })
    }

    fn check_name(&self, c: &mut Checker) -> String {
        match &self.name {
            None => c.fail("name", "is required".into()),
            Some(n) if !is_dns_label(n) => c.fail(
                "name",
                format!(
                    "must be 1..63 characters of [a-z0-9-], not starting or ending with '-' (got {n:?})"
                ),
            ),
            Some(_) => {}
        }
        self.name.clone().unwrap_or_default()
    }

    fn check_runtime(&self, c: &mut Checker) -> Runtime {
        match self.runtime.as_deref() {
            None | Some("process") => Runtime::Process,
            Some("container") => Runtime::Container,
            Some(other) => {
                c.fail(
                    "runtime",
                    format!("must be one of: process, container (got {other:?})"),
                );
                Runtime::Process
            }
        }
    }

    fn check_container(&self, c: &mut Checker, runtime: Runtime) -> Option<ContainerSpec> {
        if runtime != Runtime::Container {
            for (field, set) in [
                ("image", self.image.is_some()),
                ("port", self.port.is_some()),
                ("network", self.network.is_some()),
                ("registry_auth", self.registry_auth.is_some()),
            ] {
                if set {
                    c.fail(field, "is only for runtime: container".into());
                }
            }
            return None;
        }
        let image = match self.image.as_deref() {
            None => {
                c.fail(
                    "image",
                    "is required for runtime container (e.g. registry.example.com/team/app:1.0)"
                        .into(),
                );
                String::new()
            }
            Some(i)
                if i.is_empty()
                    || i.len() > 1024
                    || i.chars().any(|ch| ch.is_whitespace() || ch.is_control()) =>
            {
                c.fail(
                    "image",
                    format!("must be an image reference without spaces, up to 1024 characters (got {i:?})"),
                );
                String::new()
            }
            Some(i) => i.to_string(),
        };
        let port = match self.port {
            None => {
                c.fail(
                    "port",
                    "is required for runtime container: the port the app listens on inside it"
                        .into(),
                );
                0
            }
            Some(p) => u16::try_from(c.int("port", Some(p), 0, 1, 65_535)).unwrap_or(0),
        };
        let host_network = match self.network.as_deref() {
            None | Some("isolated") => false,
            Some("host") => true,
            Some(other) => {
                c.fail(
                    "network",
                    format!("must be one of: isolated, host (got {other:?})"),
                );
                false
            }
        };
        let registry_auth = self.registry_auth.as_ref().map(|a| {
            if let Some(secret) = &a.secret {
                if a.username_env.is_some() || a.password_env.is_some() {
                    c.fail(
                        "registry_auth",
                        "takes either secret or username_env and password_env, not both".into(),
                    );
                }
                if !is_secret_name(secret) {
                    c.fail(
                        "registry_auth.secret",
                        format!("must be a secret name, 1..63 characters of [a-z0-9._-] (got {secret:?})"),
                    );
                }
                return RegistryAuth::Secret {
                    secret: secret.clone(),
                };
            }
            let mut var = |field: &str, v: &Option<String>| match v {
                Some(name) if is_env_name(name) => name.clone(),
                Some(name) => {
                    c.fail(
                        field,
                        format!("must be an environment variable name (got {name:?})"),
                    );
                    String::new()
                }
                None => {
                    c.fail(
                        field,
                        "is required: the name of the gpufn server's environment variable holding it"
                            .into(),
                    );
                    String::new()
                }
            };
            RegistryAuth::Env {
                username_env: var("registry_auth.username_env", &a.username_env),
                password_env: var("registry_auth.password_env", &a.password_env),
            }
        });
        Some(ContainerSpec {
            image,
            port,
            host_network,
            registry_auth,
        })
    }

    fn check_command(&self, c: &mut Checker, runtime: Runtime) -> Vec<String> {
        match &self.command {
            None if runtime == Runtime::Container => {}
            None => c.fail("command", "is required for runtime process".into()),
            Some(v) if v.is_empty() => c.fail("command", "must not be empty".into()),
            Some(v) => {
                for (i, arg) in v.iter().enumerate() {
                    if arg.contains('\0') {
                        c.fail(&format!("command[{i}]"), "must not contain NUL".into());
                    }
                }
                if v[0].is_empty() {
                    c.fail("command[0]", "must not be empty".into());
                }
            }
        }
        self.command.clone().unwrap_or_default()
    }

    fn check_workdir(&self, c: &mut Checker, runtime: Runtime) -> String {
        if runtime == Runtime::Container {
            let w = self.workdir.clone().unwrap_or_default();
            if !w.is_empty() && (!w.starts_with('/') || w.contains('\0')) {
                c.fail(
                    "workdir",
                    format!("must be an absolute path inside the image for runtime container (got {w:?})"),
                );
            }
            return w;
        }
        let w = self.workdir.clone().unwrap_or_else(|| ".".into());
        if w.is_empty() || w.contains('\0') {
            c.fail("workdir", "must be a non-empty path".into());
        }
        w
    }

    fn check_env(&self, c: &mut Checker) -> BTreeMap<String, String> {
        let env = self.env.clone().unwrap_or_default();
        for (k, v) in &env {
            let field = format!("env.{k}");
            check_env_var(c, &field, k);
            if v.contains('\0') {
                c.fail(&field, "value must not contain NUL".into());
            }
        }
        env
    }

    fn check_env_from_secrets(
        &self,
        c: &mut Checker,
        env: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let from = self.env_from_secrets.clone().unwrap_or_default();
        for (k, name) in &from {
            let field = format!("env_from_secrets.{k}");
            if check_env_var(c, &field, k) && env.contains_key(k) {
                c.fail(
                    &field,
                    format!("{k} is also set in env; set it in one place"),
                );
            }
            if !is_secret_name(name) {
                c.fail(
                    &field,
                    format!("must name a secret, 1..63 characters of [a-z0-9._-] (got {name:?})"),
                );
            }
        }
        from
    }

    fn check_cpu(&self, c: &mut Checker) -> f64 {
        let cpu = self.cpu.unwrap_or(1.0);
        if !cpu.is_finite() || cpu < 0.05 {
            c.fail("cpu", format!("must be >= 0.05 (got {cpu})"));
            return 1.0;
        }
        if cpu > 256.0 {
            c.fail("cpu", format!("must be <= 256 (got {cpu})"));
            return 1.0;
        }
        cpu
    }
}

fn check_gpu(c: &mut Checker, gpu: Option<&RawGpu>) -> GpuRequest {
    let Some(gpu) = gpu else {
        c.fail("gpu", "is required (e.g. gpu: {memory_gb: 4})".into());
        return GpuRequest {
            card_type: None,
            memory_gb: 1,
        };
    };
    let memory_gb = match gpu.memory_gb {
        None => {
            c.fail("gpu.memory_gb", "is required (whole GB >= 1)".into());
            1
        }
        Some(_) => c.count("gpu.memory_gb", gpu.memory_gb, 1, 1, 4096),
    };
    if let Some(t) = &gpu.card_type {
        let ok = !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok {
            c.fail(
                "gpu.type",
                format!("must be 1..64 characters of [A-Za-z0-9._-] (got {t:?})"),
            );
        }
    }
    GpuRequest {
        card_type: gpu.card_type.clone(),
        memory_gb,
    }
}

/// A path gpufn requests on the instance: starts with '/', no spaces or control characters.
fn is_request_path(path: &str) -> bool {
    path.starts_with('/')
        && path.len() <= 1024
        && !path.chars().any(|ch| ch.is_whitespace() || ch.is_control())
}

fn check_lifecycle(c: &mut Checker, l: Option<&RawLifecycle>) -> Lifecycle {
    let Some(l) = l else {
        return Lifecycle::default();
    };
    let mut hook = |field: &str, h: Option<&RawHook>, default_timeout: i64, max_timeout: i64| {
        let h = h?;
        let timeout = c.secs(
            &format!("{field}.timeout_s"),
            h.timeout_s,
            default_timeout,
            1,
            max_timeout,
        );
        let action = match (&h.path, &h.command) {
            (Some(path), None) => {
                if !is_request_path(path) {
                    c.fail(
                        &format!("{field}.path"),
                        format!("must start with '/' and have no spaces (got {path:?})"),
                    );
                }
                HookAction::Http { path: path.clone() }
            }
            (None, Some(argv)) => {
                if argv.is_empty() || argv[0].is_empty() {
                    c.fail(
                        &format!("{field}.command"),
                        "must name a program (a non-empty argv)".into(),
                    );
                } else if argv.len() > 256
                    || argv.iter().any(|a| a.len() > 4096 || a.contains('\0'))
                {
                    c.fail(
                        &format!("{field}.command"),
                        "at most 256 arguments of at most 4096 bytes, without NUL".into(),
                    );
                }
                HookAction::Command(argv.clone())
            }
            _ => {
                c.fail(field, "needs exactly one of path or command".into());
                return None;
            }
        };
        Some(Hook { action, timeout })
    };
    Lifecycle {
        initializer: hook("lifecycle.initializer", l.initializer.as_ref(), 300, 3600),
        pre_stop: hook("lifecycle.pre_stop", l.pre_stop.as_ref(), 30, 600),
        pre_freeze: {
            let h = hook("lifecycle.pre_freeze", l.pre_freeze.as_ref(), 30, 600);
            if matches!(
                &h,
                Some(Hook {
                    action: HookAction::Command(_),
                    ..
                })
            ) {
                c.fail(
                    "lifecycle.pre_freeze.command",
                    "pre_freeze is an HTTP hook: give path (GET, as Function Compute sends it)"
                        .into(),
                );
            }
            h
        },
    }
}

fn check_health(c: &mut Checker, h: Option<&RawHealthCheck>) -> HealthCheck {
    let h = h.cloned().unwrap_or_default();
    let path = h.path.unwrap_or_else(|| "/health".into());
    if !is_request_path(&path) {
        c.fail(
            "health_check.path",
            format!("must start with '/' and have no spaces (got {path:?})"),
        );
    }
    HealthCheck {
        path,
        startup_timeout: c.secs(
            "health_check.startup_timeout_s",
            h.startup_timeout_s,
            600,
            1,
            86_400,
        ),
    }
}

fn check_scaling(c: &mut Checker, s: Option<&RawScaling>, health: &HealthCheck) -> Scaling {
    let s = s.cloned().unwrap_or_default();
    let min_instances = c.count("scaling.min_instances", s.min_instances, 0, 0, 1000);
    let max_instances = c.count("scaling.max_instances", s.max_instances, 30, 1, 1000);
    if min_instances > max_instances {
        c.fail(
            "scaling.min_instances",
            format!("must be <= scaling.max_instances ({min_instances} > {max_instances})"),
        );
    }
    // A request that arrives at zero waits for a whole cold start, so by default it may wait as long
    // as a start may take (the startup deadline) and a minute more: a failed start then reaches the
    // caller as the start's own error, not as a queue timeout that fired at the same moment.
    let default_queue_timeout = i64::try_from(health.startup_timeout.as_secs()).unwrap_or(600) + 60;
    Scaling {
        min_instances,
        max_instances,
        idle_timeout: c.secs(
            "scaling.idle_timeout_s",
            s.idle_timeout_s,
            300,
            0,
            7 * 86_400,
        ),
        max_queue: c.count("scaling.max_queue", s.max_queue, 1000, 1, 100_000),
        queue_timeout: c.secs(
            "scaling.queue_timeout_s",
            s.queue_timeout_s,
            default_queue_timeout,
            1,
            86_400,
        ),
        keep_alive: match s.keep_alive.as_deref() {
            // The predictive policy is the default (it lies below every fixed keep-alive on the
            // traces, out of sample: BENCHMARKS.md); a spec that sets `idle_timeout_s` alone
            // means that keep-alive and gets it.
            None if s.idle_timeout_s.is_some() => KeepAliveMode::Fixed,
            None => KeepAliveMode::Predictive,
            Some("fixed") => KeepAliveMode::Fixed,
            Some("histogram") => KeepAliveMode::Histogram,
            Some("predictive") => KeepAliveMode::Predictive,
            Some(other) => {
                c.fail(
                    "scaling.keep_alive",
                    format!("must be one of: fixed, histogram, predictive (got {other:?})"),
                );
                KeepAliveMode::Fixed
            }
        },
        histogram_bin: c.secs("scaling.histogram_bin_s", s.histogram_bin_s, 60, 1, 3600),
        cold_cost: c.secs("scaling.cold_cost_s", s.cold_cost_s, 300, 1, 86_400),
        freeze_idle: match s.idle_mode.as_deref() {
            None | Some("none") => false,
            Some("freeze") => true,
            Some(other) => {
                c.fail(
                    "scaling.idle_mode",
                    format!("must be one of: none, freeze (got {other:?})"),
                );
                false
            }
        },
        schedules: check_schedules(c, s.schedules.as_deref(), max_instances),
        target_utilization_permille: s.target_utilization.and_then(|t| {
            if t.is_finite() && t > 0.0 && t <= 1.0 {
                Some(((t * 1000.0).round() as u32).max(1))
            } else {
                c.fail(
                    "scaling.target_utilization",
                    format!("must be > 0 and <= 1 (got {t})"),
                );
                None
            }
        }),
        max_provisioned: {
            if s.max_provisioned.is_some() && s.target_utilization.is_none() {
                c.fail(
                    "scaling.max_provisioned",
                    "only applies with scaling.target_utilization".into(),
                );
            }
            let m = c.count(
                "scaling.max_provisioned",
                s.max_provisioned,
                i64::from(max_instances),
                0,
                1000,
            );
            if m > max_instances || m < min_instances {
                c.fail(
                    "scaling.max_provisioned",
                    format!(
                        "must be between scaling.min_instances ({min_instances}) and scaling.max_instances ({max_instances}) (got {m})"
                    ),
                );
            }
            m
        },
    }
}

fn check_schedules(
    c: &mut Checker,
    raw: Option<&[RawSchedule]>,
    max_instances: u32,
) -> Vec<ScheduleSpec> {
    let raw = raw.unwrap_or_default();
    if raw.len() > 32 {
        c.fail(
            "scaling.schedules",
            format!("at most 32 entries (got {})", raw.len()),
        );
        return Vec::new();
    }
    let mut out: Vec<ScheduleSpec> = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let field = |k: &str| format!("scaling.schedules[{i}].{k}");
        let name = r.name.clone().unwrap_or_default();
        if name.is_empty()
            || name.len() > 64
            || name.chars().any(|ch| ch.is_control() || ch.is_whitespace())
        {
            c.fail(
                &field("name"),
                "is required: 1..64 characters without spaces".into(),
            );
        } else if out.iter().any(|s| s.name == name) {
            c.fail(&field("name"), format!("{name:?} is used twice"));
        }
        let cron = r.cron.clone().unwrap_or_default();
        if cron.is_empty() {
            c.fail(&field("cron"), "is required (e.g. \"0 8 * * 1-5\")".into());
        } else if let Err(e) = gpufn_policy::provisioning::parse_cron(&cron) {
            c.fail(&field("cron"), format!("{cron:?}: {}", e.0));
        }
        let timezone = r.timezone.clone().unwrap_or_else(|| "UTC".into());
        if let Err(e) = gpufn_policy::provisioning::parse_zone(&timezone) {
            c.fail(&field("timezone"), e.0);
        }
        // A pattern that (almost) never matches is refused: looking one up searches years.
        if let Ok(s) = gpufn_policy::provisioning::Schedule::new(&name, &cron, &timezone, 0) {
            // Validation reads the clock here only: the policy crate never does.
            if !s.matches_within_a_year(chrono::Utc::now()) {
                c.fail(
                    &field("cron"),
                    format!("{cron:?} does not match within a year"),
                );
            }
        }
        let min_instances = c.count(&field("min_instances"), r.min_instances, 0, 0, 1000);
        if min_instances > max_instances {
            c.fail(
                &field("min_instances"),
                format!("must be <= scaling.max_instances ({min_instances} > {max_instances})"),
            );
        }
        let mut time = |k: &str, v: &Option<String>| {
            let t = v.as_deref()?;
            match rfc3339(t) {
                Some(parsed) => Some((t.to_string(), parsed)),
                None => {
                    c.fail(
                        &field(k),
                        format!("{t:?} is not an RFC 3339 time (2026-12-01T08:00:00Z)"),
                    );
                    None
                }
            }
        };
        let start = time("start_time", &r.start_time);
        let end = time("end_time", &r.end_time);
        if let (Some((_, s)), Some((_, e))) = (&start, &end) {
            if s >= e {
                c.fail(&field("end_time"), "must be after start_time".into());
            }
        }
        out.push(ScheduleSpec {
            name,
            cron,
            timezone,
            min_instances,
            start_time: start.map(|(t, _)| t),
            end_time: end.map(|(t, _)| t),
        });
    }
    out
}

/// An `http://` URL with a host: what destinations and callbacks may be.
pub fn check_http_url(url: &str) -> Result<(), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("must be an http:// URL (got {url:?})"));
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("must be an http:// URL with a host (got {url:?})"));
    }
    Ok(())
}

fn check_async(c: &mut Checker, a: Option<&RawAsync>) -> AsyncConfig {
    let a = a.cloned().unwrap_or_default();
    let mut url = |field: &str, v: Option<String>| {
        if let Some(u) = &v {
            if let Err(e) = check_http_url(u) {
                c.fail(field, e);
            }
        }
        v
    };
    let on_success = url("async.on_success", a.on_success);
    let on_failure = url("async.on_failure", a.on_failure);
    AsyncConfig {
        max_retries: c.count("async.max_retries", a.max_retries, 3, 0, 8),
        max_event_age: c.secs(
            "async.max_event_age_s",
            a.max_event_age_s,
            18_000,
            1,
            7 * 86_400,
        ),
        on_success,
        on_failure,
        max_pending: c.count("async.max_pending", a.max_pending, 10_000, 1, 1_000_000),
    }
}

impl FunctionSpec {
    /// The spec with every default filled in, as a document (what `gpufn get` shows and the store keeps).
    pub fn to_raw(&self) -> RawSpec {
        let secs = |d: Duration| i64::try_from(d.as_secs()).ok();
        RawSpec {
            name: Some(self.name.clone()),
            runtime: Some(self.runtime.as_str().into()),
            command: (self.runtime == Runtime::Process || !self.command.is_empty())
                .then(|| self.command.clone()),
            workdir: (!self.workdir.is_empty()).then(|| self.workdir.clone()),
            image: self.container.as_ref().map(|c| c.image.clone()),
            port: self.container.as_ref().map(|c| i64::from(c.port)),
            network: self
                .container
                .as_ref()
                .map(|c| if c.host_network { "host" } else { "isolated" }.into()),
            registry_auth: self.container.as_ref().and_then(|c| {
                c.registry_auth.as_ref().map(|a| match a {
                    RegistryAuth::Env {
                        username_env,
                        password_env,
                    } => RawRegistryAuth {
                        secret: None,
                        username_env: Some(username_env.clone()),
                        password_env: Some(password_env.clone()),
                    },
                    RegistryAuth::Secret { secret } => RawRegistryAuth {
                        secret: Some(secret.clone()),
                        username_env: None,
                        password_env: None,
                    },
                })
            }),
            env: Some(self.env.clone()),
            env_from_secrets: (!self.env_from_secrets.is_empty())
                .then(|| self.env_from_secrets.clone()),
            gpu: Some(RawGpu {
                card_type: self.gpu.card_type.clone(),
                memory_gb: Some(i64::from(self.gpu.memory_gb)),
            }),
            cpu: Some(self.cpu),
            memory_mb: i64::try_from(self.memory_mb).ok(),
            disk_mb: i64::try_from(self.disk_mb).ok(),
            instance_concurrency: Some(i64::from(self.instance_concurrency)),
            health_check: Some(RawHealthCheck {
                path: Some(self.health_check.path.clone()),
                startup_timeout_s: secs(self.health_check.startup_timeout),
            }),
            scaling: Some(RawScaling {
                min_instances: Some(i64::from(self.scaling.min_instances)),
                max_instances: Some(i64::from(self.scaling.max_instances)),
                idle_timeout_s: secs(self.scaling.idle_timeout),
                max_queue: Some(i64::from(self.scaling.max_queue)),
                queue_timeout_s: secs(self.scaling.queue_timeout),
                keep_alive: Some(self.scaling.keep_alive.as_str().into()),
                histogram_bin_s: secs(self.scaling.histogram_bin),
                cold_cost_s: secs(self.scaling.cold_cost),
                schedules: (!self.scaling.schedules.is_empty()).then(|| {
                    self.scaling
                        .schedules
                        .iter()
                        .map(|s| RawSchedule {
                            name: Some(s.name.clone()),
                            cron: Some(s.cron.clone()),
                            timezone: Some(s.timezone.clone()),
                            min_instances: Some(i64::from(s.min_instances)),
                            start_time: s.start_time.clone(),
                            end_time: s.end_time.clone(),
                        })
                        .collect()
                }),
                target_utilization: self.scaling.target_utilization(),
                max_provisioned: self
                    .scaling
                    .target_utilization_permille
                    .map(|_| i64::from(self.scaling.max_provisioned)),
                idle_mode: Some(
                    if self.scaling.freeze_idle {
                        "freeze"
                    } else {
                        "none"
                    }
                    .into(),
                ),
            }),
            request_timeout_s: secs(self.request_timeout),
            async_invoke: Some(RawAsync {
                max_retries: Some(i64::from(self.async_invoke.max_retries)),
                max_event_age_s: secs(self.async_invoke.max_event_age),
                on_success: self.async_invoke.on_success.clone(),
                on_failure: self.async_invoke.on_failure.clone(),
                max_pending: Some(i64::from(self.async_invoke.max_pending)),
            }),
            auth: Some(RawAuth {
                kind: Some(self.auth.as_str().into()),
            }),
            lifecycle: (self.lifecycle != Lifecycle::default()).then(|| RawLifecycle {
                initializer: self.lifecycle.initializer.as_ref().map(Hook::to_raw),
                pre_stop: self.lifecycle.pre_stop.as_ref().map(Hook::to_raw),
                pre_freeze: self.lifecycle.pre_freeze.as_ref().map(Hook::to_raw),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
