//! Lifecycle hooks (`lifecycle:` in the spec; Function Compute's `instanceLifecycleConfig`): the
//! initializer runs once per instance after its health check and before its first request, and
//! pre_stop before each stop of an instance that served.
//!
//! An HTTP hook is a request to the instance with FC's control headers (`POST` for the
//! initializer, `GET` for pre_stop, as FC's custom runtimes receive them); a command hook runs inside
//! the instance ([`gpufn_runtime::RunningInstance::exec`]). Either is bounded by its `timeout_s`.

use std::future::Future;
use std::net::SocketAddr;

use gpufn_runtime::RunningInstance;
use gpufn_runtime::probe::Prober;
use gpufn_spec::{FunctionSpec, Hook, HookAction};

/// Which hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HookKind {
    Initializer,
    PreStop,
    PreFreeze,
}

impl HookKind {
    /// As the spec names it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HookKind::Initializer => "initializer",
            HookKind::PreStop => "pre_stop",
            HookKind::PreFreeze => "pre_freeze",
        }
    }

    fn method(self) -> http::Method {
        match self {
            HookKind::Initializer => http::Method::POST,
            HookKind::PreStop | HookKind::PreFreeze => http::Method::GET,
        }
    }

    /// FC's `x-fc-control-path` for this hook.
    fn control_path(self) -> &'static str {
        match self {
            HookKind::Initializer => "/initialize",
            HookKind::PreStop => "/pre-stop",
            HookKind::PreFreeze => "/pre-freeze",
        }
    }
}

/// Why a hook failed, in words for the instance's log and the caller's start error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HookFailed {
    pub message: String,
    pub timed_out: bool,
}

/// Starts `hook` for instance `instance_id` of `spec`: the returned future owns what it needs (a
/// command is already spawned), so the caller can race it against the instance exiting.
pub(crate) fn start(
    kind: HookKind,
    hook: &Hook,
    inst: &dyn RunningInstance,
    prober: &Prober,
    spec: &FunctionSpec,
    instance_id: &str,
) -> impl Future<Output = Result<(), HookFailed>> + Send + 'static {
    let work: Work = match &hook.action {
        HookAction::Http { path } => {
            http_work(kind, hook, path, inst.addr(), prober, spec, instance_id)
        }
        HookAction::Command(argv) => match inst.exec(argv) {
            Some(Ok(child)) => Box::pin(command(child)),
            Some(Err(e)) => {
                let e = format!("cannot start it: {e}");
                Box::pin(async move { Err(e) })
            }
            None => Box::pin(async {
                Err("this runtime cannot run commands inside an instance".to_string())
            }),
        },
    };
    bounded(kind, hook, work)
}

/// [`start`] for an HTTP hook, by the instance's address alone (idle mode's pre_freeze runs
/// outside the instance's supervisor). A command hook fails: the spec allows none here.
pub(crate) fn start_http(
    kind: HookKind,
    hook: &Hook,
    addr: SocketAddr,
    prober: &Prober,
    spec: &FunctionSpec,
    instance_id: &str,
) -> impl Future<Output = Result<(), HookFailed>> + Send + 'static {
    let work: Work = match &hook.action {
        HookAction::Http { path } => http_work(kind, hook, path, addr, prober, spec, instance_id),
        HookAction::Command(_) => {
            Box::pin(async { Err("only an HTTP hook can run here".to_string()) })
        }
    };
    bounded(kind, hook, work)
}

type Work = std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// The request of an HTTP hook, with FC's headers.
fn http_work(
    kind: HookKind,
    hook: &Hook,
    path: &str,
    addr: SocketAddr,
    prober: &Prober,
    spec: &FunctionSpec,
    instance_id: &str,
) -> Work {
    Box::pin(http(
        prober.clone(),
        kind,
        addr,
        path.to_string(),
        headers(kind, hook, spec, instance_id),
    ))
}

/// The hook's work within its timeout, its failure in words.
fn bounded(
    kind: HookKind,
    hook: &Hook,
    work: Work,
) -> impl Future<Output = Result<(), HookFailed>> + Send + 'static {
    let timeout = hook.timeout;
    let what = describe(kind, hook);
    async move {
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HookFailed {
                message: format!("{what} failed: {e}"),
                timed_out: false,
            }),
            Err(_) => Err(HookFailed {
                message: format!("{what} did not finish within {}s", timeout.as_secs()),
                timed_out: true,
            }),
        }
    }
}

/// "initializer POST /initialize", "pre_stop command [\"sh\", …]".
fn describe(kind: HookKind, hook: &Hook) -> String {
    match &hook.action {
        HookAction::Http { path } => format!("{} {} {path}", kind.name(), kind.method()),
        HookAction::Command(argv) => format!("{} command {argv:?}", kind.name()),
    }
}

/// FC's headers on a control request, and gpufn's request id.
fn headers(
    kind: HookKind,
    hook: &Hook,
    spec: &FunctionSpec,
    instance_id: &str,
) -> Vec<(&'static str, String)> {
    let id = uuid::Uuid::new_v4().to_string();
    vec![
        ("x-fc-request-id", id.clone()),
        ("x-gpufn-request-id", id),
        ("x-fc-control-path", kind.control_path().to_string()),
        ("x-fc-function-name", spec.name.clone()),
        ("x-fc-function-memory", spec.memory_mb.to_string()),
        ("x-fc-function-timeout", hook.timeout.as_secs().to_string()),
        ("x-fc-instance-id", instance_id.to_string()),
        ("x-gpufn-hook", kind.name().to_string()),
    ]
}

async fn http(
    prober: Prober,
    kind: HookKind,
    addr: SocketAddr,
    path: String,
    headers: Vec<(&'static str, String)>,
) -> Result<(), String> {
    let (status, body) = prober.request(kind.method(), addr, &path, &headers).await?;
    if status.is_success() {
        Ok(())
    } else if body.is_empty() {
        Err(format!("answered {status}"))
    } else {
        Err(format!("answered {status}: {body}"))
    }
}

async fn command(mut child: tokio::process::Child) -> Result<(), String> {
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("it exited with {status}"))
    }
}
