//! The process runtime: each instance is a host process in its own process group.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use tokio::process::{Child, Command};

use crate::{InstanceRuntime, LaunchSpec, RunningInstance, RuntimeError};

/// Variables passed through from gpufn's own environment; everything else the instance sees comes
/// from its spec or from gpufn, so an instance does not inherit the server's secrets.
const PASS_THROUGH: &[&str] = &["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// A user instances run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
}

impl RunAs {
    /// Looks `name` up in `/etc/passwd`.
    pub fn lookup(name: &str) -> Option<Self> {
        let text = std::fs::read_to_string("/etc/passwd").ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0] != name {
                return None;
            }
            Some(Self {
                name: name.to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
    }

    /// `name`, created as a system user with no home and no login shell if it does not exist
    /// (`useradd`); `None` if it neither exists nor can be created.
    pub fn ensure(name: &str) -> Option<Self> {
        if let Some(u) = Self::lookup(name) {
            return Some(u);
        }
        let created = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if created {
            tracing::info!("created the system user {name} for process instances");
        }
        Self::lookup(name)
    }
}

/// Runs each instance as a host process: in its own process group, as `user` when set (an
/// unprivileged account, so function code is not gpufn), and in a cgroup of its own under
/// `cgroups` when set (the spec's memory and CPU as limits; stopping the instance kills every
/// process in it, however it detached itself).
#[derive(Debug, Default)]
pub struct ProcessRuntime {
    /// The account instances run as; gpufn's own when `None`.
    pub user: Option<RunAs>,
    /// Where instance cgroups go; none when `None`.
    pub cgroups: Option<crate::cgroup::CgroupParent>,
}

#[async_trait]
impl InstanceRuntime for ProcessRuntime {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn RunningInstance>, RuntimeError> {
        let (log, log2) = crate::open_log(&spec.log_path)?;
        let port = crate::free_port().map_err(RuntimeError::Setup)?;
        let program = spec.command.first().cloned().unwrap_or_default();
        let cgroup = match &self.cgroups {
            Some(parent) => Some(
                parent
                    .create(&spec.instance_id, spec.memory_mb, spec.cpu)
                    .map_err(RuntimeError::Setup)?,
            ),
            None => None,
        };
        let mut env: Vec<(String, String)> = PASS_THROUGH
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
            .collect();
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let ours = [
            ("PORT", port.to_string()),
            // Function Compute's custom runtimes read their port from FC_SERVER_PORT.
            ("FC_SERVER_PORT", port.to_string()),
            ("CUDA_VISIBLE_DEVICES", spec.gpu_index.to_string()),
            ("NVIDIA_VISIBLE_DEVICES", spec.gpu_index.to_string()),
            ("GPUFN_FUNCTION", spec.function.clone()),
            ("GPUFN_INSTANCE_ID", spec.instance_id.clone()),
            ("GPUFN_GPU_MEMORY_GB", spec.gpu_memory_gb.to_string()),
        ];
        env.extend(ours.into_iter().map(|(k, v)| (k.to_string(), v)));
        if let Some(u) = &self.user {
            // gpufn's HOME is not the instance's.
            env.extend([
                ("HOME".to_string(), "/tmp".to_string()),
                ("USER".to_string(), u.name.clone()),
                ("LOGNAME".to_string(), u.name.clone()),
            ]);
        }
        let mut cmd = Command::new(&program);
        cmd.args(&spec.command[1..])
            .current_dir(&spec.workdir)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group, so stopping the instance also stops what the app forked.
            .process_group(0)
            .kill_on_drop(true);
        let join = cgroup.as_ref().map(|c| c.join_fds()).unwrap_or_default();
        confine(&mut cmd, join, self.user.as_ref().map(|u| (u.uid, u.gid)));
        let child = match cmd.spawn() {
            Ok(c) => c,
            Err(source) => {
                if let Some(cg) = &cgroup {
                    cg.try_remove();
                }
                return Err(RuntimeError::Spawn { program, source });
            }
        };
        Ok(Box::new(ProcessInstance {
            pid: child.id(),
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            cgroup,
            exec: ExecContext {
                env,
                workdir: spec.workdir.clone(),
                ids: self.user.as_ref().map(|u| (u.uid, u.gid)),
                log_path: spec.log_path.clone(),
            },
        }))
    }
}

/// In the child, before exec: join the instance's cgroup (while still root), drop to the
/// instance's user (groups, then gid, then uid: nothing can be regained after), then ask the
/// kernel to SIGKILL the instance if gpufn itself dies without stopping it (SIGKILL, OOM) — set
/// after the credential change, which would clear it.
#[allow(unsafe_code)]
fn confine(cmd: &mut Command, cgroup_procs: Vec<std::os::fd::RawFd>, ids: Option<(u32, u32)>) {
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (write, setgroups, setgid, setuid, prctl, getppid) on memory it owns; the
    // descriptors were opened by the parent and stay open until exec (close-on-exec).
    unsafe {
        cmd.pre_exec(move || {
            for fd in &cgroup_procs {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some((uid, gid)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other(
                    "gpufn exited while starting the instance",
                ));
            }
            Ok(())
        });
    }
}

#[derive(Debug)]
struct ProcessInstance {
    child: Child,
    pid: Option<u32>,
    addr: SocketAddr,
    cgroup: Option<crate::cgroup::InstanceCgroup>,
    exec: ExecContext,
}

/// What a command run inside the instance (a lifecycle hook) shares with it.
#[derive(Debug)]
struct ExecContext {
    env: Vec<(String, String)>,
    workdir: std::path::PathBuf,
    ids: Option<(u32, u32)>,
    log_path: std::path::PathBuf,
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        // However the instance ended (or its supervisor was dropped): nothing of it stays.
        if let Some(cg) = self.cgroup.take() {
            cg.remove_blocking(Duration::from_secs(2));
        }
    }
}

impl ProcessInstance {
    /// Kills what is left in the instance's cgroup (children that left the process group) and
    /// removes it, waiting for the kernel to reap them (bounded).
    async fn clear_cgroup(&mut self) {
        let Some(cg) = &self.cgroup else { return };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            cg.kill_all();
            if cg.try_remove() {
                self.cgroup = None;
                return;
            }
            if tokio::time::Instant::now() > deadline {
                tracing::warn!("instance cgroup not empty after 5 s; removed when gpufn stops");
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn signal_group(&self, signal: libc::c_int) {
        if let Some(pid) = self.pid.and_then(|p| libc::pid_t::try_from(p).ok()) {
            // kill(2) on a negative pid signals the whole group; ESRCH (already gone) is fine.
            #[allow(unsafe_code)]
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }
}

#[async_trait]
impl RunningInstance for ProcessInstance {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn freezer(&self) -> Option<std::sync::Arc<dyn crate::freeze::Freezer>> {
        if let Some(f) = self.cgroup.as_ref().and_then(|c| c.freezer()) {
            return Some(std::sync::Arc::new(f));
        }
        let pgid = i32::try_from(self.pid?).ok()?;
        Some(std::sync::Arc::new(crate::freeze::GroupStopper { pgid }))
    }

    fn exec(&self, argv: &[String]) -> Option<std::io::Result<Child>> {
        let (program, args) = argv.split_first()?;
        let spawn = || {
            let (log, log2) =
                crate::open_log(&self.exec.log_path).map_err(std::io::Error::other)?;
            let mut cmd = Command::new(program);
            cmd.args(args)
                .current_dir(&self.exec.workdir)
                .env_clear()
                .envs(self.exec.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .kill_on_drop(true);
            // In the instance's process group, so stopping the instance stops the hook too.
            if let Some(pgid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
                cmd.process_group(pgid);
            }
            // The cgroup's descriptors are open for as long as `self`: the child is spawned here.
            let join = self
                .cgroup
                .as_ref()
                .map(|c| c.join_fds())
                .unwrap_or_default();
            confine(&mut cmd, join, self.exec.ids);
            cmd.spawn()
        };
        Some(spawn())
    }

    fn pid(&self) -> Option<u32> {
        self.pid
    }

    async fn wait(&mut self) -> crate::Ended {
        let how = crate::Ended::exit(crate::Exit::of(self.child.wait().await, false));
        // The app's leader is gone; take down anything it left behind in its group and cgroup.
        self.signal_group(libc::SIGKILL);
        self.clear_cgroup().await;
        how
    }

    async fn stop(&mut self, grace: Duration) -> crate::Ended {
        self.signal_group(libc::SIGTERM);
        let how = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => crate::Ended::exit(crate::Exit::of(status, false)),
            Err(_) => {
                self.signal_group(libc::SIGKILL);
                crate::Ended {
                    killed_after: Some(grace),
                    ..crate::Ended::exit(crate::Exit::of(self.child.wait().await, false))
                }
            }
        };
        self.signal_group(libc::SIGKILL);
        self.clear_cgroup().await;
        how
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn spec(dir: &std::path::Path, command: &[&str]) -> LaunchSpec {
        LaunchSpec {
            instance_id: "f-1".into(),
            function: "f".into(),
            command: command.iter().map(ToString::to_string).collect(),
            workdir: dir.to_path_buf(),
            env: BTreeMap::from([("GREETING".to_string(), "hi".to_string())]),
            gpu_index: 3,
            gpu_memory_gb: 4,
            log_path: dir.join("logs/f-1.log"),
            container: None,
            memory_mb: 256,
            cpu: 1.0,
            revision: 1,
            gpu_type: None,
            disk_mb: 0,
            health_path: "/".into(),
            startup_timeout: Duration::from_secs(60),
            progress: crate::StartProgress::default(),
        }
    }

    #[tokio::test]
    async fn the_process_gets_its_environment_and_logs_to_its_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = "echo PORT=$PORT CVD=$CUDA_VISIBLE_DEVICES NVD=$NVIDIA_VISIBLE_DEVICES \
                      FN=$GPUFN_FUNCTION ID=$GPUFN_INSTANCE_ID GB=$GPUFN_GPU_MEMORY_GB G=$GREETING; \
                      echo oops >&2; exit 3";
        let mut inst = ProcessRuntime::default()
            .launch(&spec(dir.path(), &["sh", "-c", script]))
            .await
            .expect("launch");
        let ended = inst.wait().await;
        assert_eq!(ended.exit, crate::Exit::Code(3));
        assert_eq!(ended.to_string(), "exited with code 3");
        let log = std::fs::read_to_string(dir.path().join("logs/f-1.log")).expect("log");
        let port = inst.addr().port();
        assert!(
            log.contains(&format!("PORT={port} CVD=3 NVD=3 FN=f ID=f-1 GB=4 G=hi")),
            "{log}"
        );
        assert!(log.contains("oops"), "{log}");
    }

    #[tokio::test]
    async fn stop_terminates_the_whole_group_and_escalates_to_kill() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Ignores SIGTERM, and forks a grandchild that must not survive either.
        let script = "trap '' TERM; sleep 1000 & echo $! > child.pid; wait";
        let mut inst = ProcessRuntime::default()
            .launch(&spec(dir.path(), &["sh", "-c", script]))
            .await
            .expect("launch");
        let pid_file = dir.path().join("child.pid");
        let grandchild = loop {
            if let Ok(s) = std::fs::read_to_string(&pid_file) {
                if let Ok(p) = s.trim().parse::<i32>() {
                    break p;
                }
            }
            tokio::task::yield_now().await;
        };
        let how = inst.stop(Duration::from_millis(200)).await;
        assert_eq!(how.killed_after, Some(Duration::from_millis(200)));
        assert!(how.to_string().contains("killed after"), "{how}");
        // The grandchild was in the group: SIGKILL reaches it. Delivery is asynchronous, so wait
        // (bounded) for it to be gone or a zombie.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive() {
            assert!(
                std::time::Instant::now() < deadline,
                "grandchild {grandchild} survived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = ProcessRuntime::default()
            .launch(&spec(dir.path(), &["no-such-program-xyz"]))
            .await
            .expect_err("must fail");
        assert!(err.to_string().contains("\"no-such-program-xyz\""), "{err}");
    }
}
