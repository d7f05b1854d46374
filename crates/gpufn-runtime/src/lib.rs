//! Instance runtimes: how one instance of a function is started, watched and stopped.
//!
//! The [`InstanceRuntime`] trait is the seam between the scheduler and whatever runs the code: the
//! [`ProcessRuntime`] (a host process) and the OCI container runtime in `gpufn-oci`.
//! [`probe`] holds the readiness probe the scheduler runs before any traffic reaches an instance;
//! [`notify`] the socket an app may tell its readiness on (`NOTIFY_SOCKET`).

pub mod cgroup;
pub mod freeze;
pub mod notify;
pub mod probe;
mod process;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub use process::{ProcessRuntime, RunAs};

/// Everything a runtime needs to start one instance.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    /// Instance id (`GPUFN_INSTANCE_ID`).
    pub instance_id: String,
    /// Function name (`GPUFN_FUNCTION`).
    pub function: String,
    /// argv of the function's web server.
    pub command: Vec<String>,
    /// Working directory.
    pub workdir: PathBuf,
    /// The spec's own environment (gpufn adds its variables on top).
    pub env: BTreeMap<String, String>,
    /// Card given to this instance.
    pub gpu_index: u32,
    /// GPU memory billed (`GPUFN_GPU_MEMORY_GB`).
    pub gpu_memory_gb: u32,
    /// Where the instance's stdout and stderr go.
    pub log_path: PathBuf,
    /// Set for `runtime: container`: the image and how to run it.
    pub container: Option<ContainerLaunch>,
    /// Memory limit in MB (the instance's cgroup, where there is one).
    pub memory_mb: u64,
    /// vCPU limit (the instance's cgroup, where there is one).
    pub cpu: f64,
    /// The function's revision (labels where the runtime keeps any).
    pub revision: i64,
    /// The card type asked for (a node selector where the runtime places instances).
    pub gpu_type: Option<String>,
    /// Disk in MB (ephemeral storage where the runtime bounds it).
    pub disk_mb: u64,
    /// The health check's path (a runtime's own readiness probe, where it has one).
    pub health_path: String,
    /// How long the start may take in all (a runtime that waits for placement stops there).
    pub startup_timeout: Duration,
    /// Told where the start stands, for runtimes that wait for something else to place the
    /// instance (a cluster's scheduler).
    pub progress: StartProgress,
}

/// Told of a start's placement by a runtime whose instances are placed by someone else.
pub trait StartObserver: Send + Sync + std::fmt::Debug {
    /// The instance has a place (a node, a card).
    fn placed(&self);
    /// It has none yet, for this reason (the scheduler's words).
    fn unplaced(&self, reason: &str);
}

/// A start's [`StartObserver`], or none.
#[derive(Debug, Clone, Default)]
pub struct StartProgress(Option<std::sync::Arc<dyn StartObserver>>);

impl StartProgress {
    /// Tells `observer`.
    pub fn new(observer: std::sync::Arc<dyn StartObserver>) -> Self {
        StartProgress(Some(observer))
    }

    /// See [`StartObserver::placed`].
    pub fn placed(&self) {
        if let Some(o) = &self.0 {
            o.placed();
        }
    }

    /// See [`StartObserver::unplaced`].
    pub fn unplaced(&self, reason: &str) {
        if let Some(o) = &self.0 {
            o.unplaced(reason);
        }
    }
}

/// The container part of a [`LaunchSpec`].
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerLaunch {
    /// Pinned image reference (`registry/repo:tag@sha256:...`).
    pub image: String,
    /// Port the app listens on inside the container.
    pub port: u16,
    /// Share the host's network instead of a namespace of its own.
    pub host_network: bool,
    /// Memory limit in MB.
    pub memory_mb: Option<u64>,
    /// vCPU limit.
    pub cpu: Option<f64>,
    /// Working directory override (absolute); the image's `WORKDIR` when `None`.
    pub workdir: Option<String>,
    /// Registry credentials (already read from the environment variables the spec names).
    pub credentials: Option<(String, String)>,
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The program could not be executed.
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        /// argv\[0\].
        program: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Setting up the instance (log file, port) failed.
    #[error("cannot prepare the instance: {0}")]
    Setup(#[source] std::io::Error),
    /// The image could not be pulled or unpacked.
    #[error("{0}")]
    Image(String),
    /// The container could not be set up (rootfs, network, config).
    #[error("cannot set up the container: {0}")]
    Container(String),
}

/// Starts instances.
#[async_trait]
pub trait InstanceRuntime: Send + Sync + std::fmt::Debug {
    /// Starts one instance; it is not ready until the probe says so.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn RunningInstance>, RuntimeError>;
    /// Whether dropping a `launch` before it returns leaves nothing behind (so a stop may cancel
    /// a start that waits for a place).
    fn launch_is_cancel_safe(&self) -> bool {
        false
    }
}

/// A started instance. Dropping it kills whatever is left of it.
#[async_trait]
pub trait RunningInstance: Send + Sync + std::fmt::Debug {
    /// Where gpufn reaches the instance's web server.
    fn addr(&self) -> SocketAddr;
    /// OS process id, where there is one.
    fn pid(&self) -> Option<u32>;
    /// Waits until the instance exits by itself; says how. Cancel-safe.
    async fn wait(&mut self) -> Ended;
    /// Stops the instance: a polite signal, then, after `grace`, a forced kill. Returns how it ended.
    async fn stop(&mut self, grace: Duration) -> Ended;
    /// Starts `argv` inside the instance, for a lifecycle hook: with its user, environment,
    /// directory and cgroup (or in its container), output to its log, killed if the returned
    /// child is dropped. `None` where the runtime cannot (Pods).
    fn exec(&self, argv: &[String]) -> Option<std::io::Result<tokio::process::Child>> {
        let _ = argv;
        None
    }
    /// A handle that freezes and thaws the instance's processes (idle mode); `None` where the
    /// runtime cannot (Pods).
    fn freezer(&self) -> Option<std::sync::Arc<dyn freeze::Freezer>> {
        None
    }
    /// Time `launch` spent pulling an image (zero on a cache hit, and for processes).
    fn image_pull(&self) -> Duration {
        Duration::ZERO
    }
    /// Time `launch` waited for a place chosen by someone else (a cluster's scheduler finding a
    /// node with a free GPU); zero where gpufn's own allocator placed it.
    fn placement(&self) -> Duration {
        Duration::ZERO
    }
}

/// Opens (creating its directory) an instance's log for appending: one handle for stdout, one for
/// stderr.
pub fn open_log(path: &std::path::Path) -> Result<(std::fs::File, std::fs::File), RuntimeError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(RuntimeError::Setup)?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(RuntimeError::Setup)?;
    let log2 = log.try_clone().map_err(RuntimeError::Setup)?;
    Ok((log, log2))
}

/// A loopback port nobody listens on right now. The instance binds it a moment later; another
/// process could take it in between, in which case the instance fails its start and is retried.
pub fn free_port() -> std::io::Result<u16> {
    Ok(
        std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?
            .local_addr()?
            .port(),
    )
}

/// How an instance's process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(i32),
    /// It is gone, with neither code nor signal known.
    Gone,
    /// Waiting for it failed (the OS said why).
    WaitFailed(String),
}

impl Exit {
    /// From a wait's result. With `codes_over_128_are_signals` (runc's convention), exit code
    /// 128 + N reads as "killed by signal N".
    pub fn of(
        status: std::io::Result<std::process::ExitStatus>,
        codes_over_128_are_signals: bool,
    ) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => match (s.code(), s.signal()) {
                (Some(code), _) if codes_over_128_are_signals && code > 128 => {
                    Exit::Signal(code - 128)
                }
                (Some(code), _) => Exit::Code(code),
                (None, Some(sig)) => Exit::Signal(sig),
                _ => Exit::Gone,
            },
            Err(e) => Exit::WaitFailed(e.to_string()),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(code) => write!(f, "exited with code {code}"),
            Exit::Signal(sig) => write!(f, "killed by signal {sig}"),
            Exit::Gone => f.write_str("exited"),
            Exit::WaitFailed(e) => write!(f, "could not be waited for: {e}"),
        }
    }
}

/// How an instance ended: its exit, whether the kernel's OOM killer took part, and whether it had
/// to be killed after the stop grace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The exit.
    pub exit: Exit,
    /// The OOM killer killed something in it; `Some(Some(mb))` when it had a `memory_mb` limit.
    pub out_of_memory: Option<Option<u64>>,
    /// It ignored the polite signal for this long and was killed.
    pub killed_after: Option<Duration>,
}

impl Ended {
    /// An exit, nothing more.
    pub fn exit(exit: Exit) -> Self {
        Self {
            exit,
            out_of_memory: None,
            killed_after: None,
        }
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.exit)?;
        match self.out_of_memory {
            Some(Some(mb)) => write!(
                f,
                " (out of memory: the kernel killed it for exceeding memory_mb = {mb} MB)"
            )?,
            Some(None) => f.write_str(" (out of memory: killed by the kernel)")?,
            None => {}
        }
        if let Some(grace) = self.killed_after {
            write!(f, " (killed after {grace:?} grace)")?;
        }
        Ok(())
    }
}

/// Kills every process whose environment carries `GPUFN_INSTANCE_ID=<id>` for one of `ids`: the
/// instances (and anything they forked) of a gpufn that died without stopping them. Matching on
/// the environment rather than a stored pid cannot hit an unrelated process that reused the pid.
/// Returns how many processes were killed.
pub fn reap_orphans(ids: &[String]) -> usize {
    let wanted: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| format!("GPUFN_INSTANCE_ID={id}").into_bytes())
        .collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ
            .split(|b| *b == 0)
            .any(|var| wanted.iter().any(|w| var == w.as_slice()))
        {
            #[allow(unsafe_code)]
            // SAFETY: kill has no memory-safety preconditions.
            let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
            if rc == 0 {
                killed += 1;
            }
        }
    }
    killed
}
