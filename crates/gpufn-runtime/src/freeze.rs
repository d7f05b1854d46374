//! Freezing an idle instance's processes (`scaling.idle_mode: freeze`) and thawing them when a
//! request comes: the cgroup freezer for process instances in a cgroup (v1 `freezer.state`, v2
//! `cgroup.freeze`), SIGSTOP/SIGCONT to the process group otherwise; containers use `runc pause`.
//!
//! A frozen process keeps its memory (its loaded model) and uses no CPU; thawing it takes
//! milliseconds where a cold start takes the model's load.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

/// Freezes and thaws one instance, from outside its supervisor.
#[async_trait]
pub trait Freezer: Send + Sync + std::fmt::Debug {
    /// Stops every process of the instance from running; returns once they are frozen.
    async fn freeze(&self) -> std::io::Result<()>;
    /// Lets them run again; returns once they are.
    async fn thaw(&self) -> std::io::Result<()>;
}

/// How long a freeze or thaw may take to settle (the kernel freezes tasks as they reach a safe
/// point; one stuck in an uninterruptible wait can hold it up).
const SETTLE: Duration = Duration::from_secs(2);

/// The cgroup freezer of one instance cgroup.
#[derive(Debug, Clone)]
pub struct CgroupFreezer {
    /// v1: the `freezer.state` file; v2: the cgroup directory.
    pub(crate) path: PathBuf,
    pub(crate) v2: bool,
}

impl CgroupFreezer {
    fn set(&self, frozen: bool) -> std::io::Result<()> {
        use std::io::Write;
        let (file, value) = if self.v2 {
            (
                self.path.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            )
        } else {
            (self.path.clone(), if frozen { "FROZEN" } else { "THAWED" })
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(file)?
            .write_all(value.as_bytes())
    }

    fn is(&self, frozen: bool) -> bool {
        if self.v2 {
            let want = if frozen { "frozen 1" } else { "frozen 0" };
            std::fs::read_to_string(self.path.join("cgroup.events"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == want))
        } else {
            let want = if frozen { "FROZEN" } else { "THAWED" };
            std::fs::read_to_string(&self.path).is_ok_and(|t| t.trim() == want)
        }
    }

    async fn settle(&self, frozen: bool) -> std::io::Result<()> {
        self.set(frozen)?;
        let deadline = tokio::time::Instant::now() + SETTLE;
        let mut pause = Duration::from_micros(100);
        while !self.is(frozen) {
            if tokio::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "the cgroup did not become {} within {SETTLE:?}",
                    if frozen { "frozen" } else { "thawed" }
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
        Ok(())
    }
}

#[async_trait]
impl Freezer for CgroupFreezer {
    async fn freeze(&self) -> std::io::Result<()> {
        let r = self.settle(true).await;
        if r.is_err() {
            // Half frozen helps nobody: leave it running.
            let _ = self.set(false);
        }
        r
    }

    async fn thaw(&self) -> std::io::Result<()> {
        self.settle(false).await
    }
}

/// SIGSTOP / SIGCONT to a process group, where there is no cgroup (gpufn not root). Children
/// that left the group keep running.
#[derive(Debug, Clone, Copy)]
pub struct GroupStopper {
    pub(crate) pgid: i32,
}

#[async_trait]
impl Freezer for GroupStopper {
    async fn freeze(&self) -> std::io::Result<()> {
        signal(self.pgid, libc::SIGSTOP)
    }

    async fn thaw(&self) -> std::io::Result<()> {
        signal(self.pgid, libc::SIGCONT)
    }
}

fn signal(pgid: i32, sig: libc::c_int) -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: kill has no memory-safety preconditions.
    let r = unsafe { libc::kill(-pgid, sig) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
