//! A cgroup per process instance: the spec's `memory_mb` and `cpu` as limits, and a way to find
//! and kill every process of an instance — including children that left its process group with
//! `setsid` or dropped its environment with `env -i`, which neither a group signal nor the
//! environment scan of [`crate::reap_orphans`] reaches.
//!
//! Cgroups v1 (one directory per controller: memory, cpu, freezer, pids) and v2 (one unified
//! directory) are both handled. Instances live under the cgroup gpufn itself is in, in a directory
//! of their own per gpufn data dir (`gpufn-<hash>`), so two servers on one host never touch each
//! other's instances, and a restart finds exactly its leftovers.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The v1 controllers gpufn uses, when mounted (`cpuacct`: the instance's CPU time, where it is
/// not mounted together with `cpu`).
const V1_CONTROLLERS: [&str; 5] = ["memory", "cpu", "cpuacct", "freezer", "pids"];
/// Where cgroup file systems are mounted.
const ROOT: &str = "/sys/fs/cgroup";

/// The directory (one per hierarchy) under which this server's instances get their cgroups.
#[derive(Debug, Clone)]
pub struct CgroupParent {
    /// (controller, directory); for v2 one entry named `unified`.
    dirs: Vec<(String, PathBuf)>,
    v2: bool,
}

/// One instance's cgroup.
#[derive(Debug)]
pub struct InstanceCgroup {
    dirs: Vec<(String, PathBuf)>,
    v2: bool,
    /// `cgroup.procs` of each directory, opened for the child to write "0" into before it execs.
    procs: Vec<File>,
}

/// The cgroup path of this process in a hierarchy, from `/proc/self/cgroup`.
fn own_path(controller: Option<&str>) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let hit = match controller {
            None => ctrls.is_empty(),
            Some(c) => ctrls.split(',').any(|x| x == c),
        };
        hit.then(|| path.to_string())
    })
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

impl CgroupParent {
    /// The parent for `scope` (e.g. `gpufn-1a2b3c4d`), created if needed; `None` where there is
    /// no writable cgroup file system (not root, or a container without one).
    pub fn open(scope: &str) -> Option<Self> {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            let own = own_path(None)?;
            let dir = root.join(own.trim_start_matches('/')).join(scope);
            std::fs::create_dir_all(&dir).ok()?;
            // Limits need the controllers enabled below; where they cannot be (gpufn's own cgroup
            // holds processes), instances still get a cgroup for finding and killing them.
            let _ = write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
            return Some(Self {
                dirs: vec![("unified".into(), dir)],
                v2: true,
            });
        }
        let mut dirs = Vec::new();
        let mut mounts = Vec::new();
        for c in V1_CONTROLLERS {
            let mount = root.join(c);
            if !mount.join("cgroup.procs").exists() {
                continue;
            }
            // Controllers mounted together (`cpu,cpuacct`, linked as both names) are one
            // hierarchy: one directory.
            let real = std::fs::canonicalize(&mount).unwrap_or_else(|_| mount.clone());
            if mounts.contains(&real) {
                continue;
            }
            mounts.push(real);
            let own = own_path(Some(c)).unwrap_or_else(|| "/".into());
            let dir = mount.join(own.trim_start_matches('/')).join(scope);
            if std::fs::create_dir_all(&dir).is_ok() {
                dirs.push((c.to_string(), dir));
            }
        }
        // Without a hierarchy that lists processes there is nothing to gain.
        (!dirs.is_empty()).then_some(Self { dirs, v2: false })
    }

    /// A cgroup for `instance` with `memory_mb` and `cpu` (vCPUs) as limits.
    pub fn create(
        &self,
        instance: &str,
        memory_mb: u64,
        cpu: f64,
    ) -> std::io::Result<InstanceCgroup> {
        let mut dirs = Vec::new();
        let mut procs = Vec::new();
        let bytes = memory_mb.saturating_mul(1024 * 1024);
        let period: u64 = 100_000;
        let quota = ((cpu * period as f64).round() as u64).max(1000);
        for (c, parent) in &self.dirs {
            let dir = parent.join(instance);
            std::fs::create_dir_all(&dir)?;
            let limit = match (self.v2, c.as_str()) {
                (true, _) => {
                    // Best effort: absent when the controllers could not be enabled.
                    let _ = write(&dir.join("memory.max"), &bytes.to_string());
                    let _ = write(&dir.join("memory.swap.max"), "0");
                    let _ = write(&dir.join("cpu.max"), &format!("{quota} {period}"));
                    Ok(())
                }
                (false, "memory") => write(&dir.join("memory.limit_in_bytes"), &bytes.to_string()),
                (false, "cpu") => write(&dir.join("cpu.cfs_period_us"), &period.to_string())
                    .and_then(|()| write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())),
                _ => Ok(()),
            };
            if let Err(e) = limit {
                let _ = std::fs::remove_dir(&dir);
                for (_, d) in &dirs {
                    let _ = std::fs::remove_dir(d);
                }
                return Err(std::io::Error::other(format!("{}: {e}", dir.display())));
            }
            procs.push(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))?,
            );
            dirs.push((c.clone(), dir));
        }
        Ok(InstanceCgroup {
            dirs,
            v2: self.v2,
            procs,
        })
    }

    /// Removes the parent directories if no instance cgroup is left in them (a clean shutdown).
    pub fn remove_if_empty(&self) {
        for (_, d) in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }

    /// Kills and removes every instance cgroup left here by a previous run (gpufn killed without
    /// a chance to stop its instances). Returns how many were removed.
    pub fn reap(&self) -> usize {
        let mut names = std::collections::BTreeSet::new();
        for (_, dir) in &self.dirs {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().is_dir() {
                        names.insert(e.file_name());
                    }
                }
            }
        }
        let mut removed = 0;
        for name in names {
            let cg = InstanceCgroup {
                dirs: self
                    .dirs
                    .iter()
                    .map(|(c, d)| (c.clone(), d.join(&name)))
                    .filter(|(_, d)| d.is_dir())
                    .collect(),
                v2: self.v2,
                procs: Vec::new(),
            };
            if cg.remove_blocking(std::time::Duration::from_secs(5)) {
                removed += 1;
            }
        }
        removed
    }
}

impl InstanceCgroup {
    /// Raw descriptors of the `cgroup.procs` files: the child writes "0" (itself) to each before
    /// it execs, so it and everything it ever forks are inside from the first instruction.
    pub fn join_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }

    /// The cgroup's freezer, where there is one.
    pub fn freezer(&self) -> Option<crate::freeze::CgroupFreezer> {
        if self.v2 {
            return self
                .dirs
                .first()
                .map(|(_, d)| crate::freeze::CgroupFreezer {
                    path: d.clone(),
                    v2: true,
                });
        }
        self.dirs
            .iter()
            .find(|(c, _)| c == "freezer")
            .map(|(_, d)| crate::freeze::CgroupFreezer {
                path: d.join("freezer.state"),
                v2: false,
            })
    }

    /// Every process in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        let Some((_, dir)) = self.dirs.first() else {
            return Vec::new();
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process in the cgroup, frozen first where a freezer is there (so nothing
    /// forks between the listing and the kill).
    pub fn kill_all(&self) {
        if self.v2 {
            let dir = &self.dirs[0].1;
            if write(&dir.join("cgroup.kill"), "1").is_ok() {
                return;
            }
            let _ = write(&dir.join("cgroup.freeze"), "1");
            kill(&self.pids());
            let _ = write(&dir.join("cgroup.freeze"), "0");
            return;
        }
        let freezer = self
            .dirs
            .iter()
            .find(|(c, _)| c == "freezer")
            .map(|(_, d)| d.join("freezer.state"));
        if let Some(f) = &freezer {
            let _ = write(f, "FROZEN");
        }
        kill(&self.pids());
        if let Some(f) = &freezer {
            let _ = write(f, "THAWED");
        }
    }

    /// Removes the cgroup's directories; false while processes are still in it.
    pub fn try_remove(&self) -> bool {
        let mut all = true;
        for (_, d) in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => all = false,
            }
        }
        all
    }

    /// Kills everything in the cgroup and removes it, waiting (bounded) for the kernel to reap
    /// the processes. For shutdown paths that cannot await; the async runtime uses
    /// [`InstanceCgroup::kill_all`] and [`InstanceCgroup::try_remove`] with its own sleeps.
    pub fn remove_blocking(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            self.kill_all();
            if self.try_remove() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

fn kill(pids: &[i32]) {
    for &pid in pids {
        if pid > 0 {
            #[allow(unsafe_code)]
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}
