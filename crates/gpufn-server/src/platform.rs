//! Process-wide state: the store, the GPU allocator, the runtime, and one pool per function; the
//! deploy/delete operations; and the reconciler task (keep-alive, provisioned instances, retrying
//! scale-ups when a card comes back).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use gpufn_gpu::{Allocator, GpuDiscovery, NvmlDiscovery, SimulatedGpus};
use gpufn_runtime::probe::Prober;
use gpufn_runtime::{InstanceRuntime, ProcessRuntime};
use gpufn_spec::{FieldError, FunctionSpec, RawSpec, SpecError};
use gpufn_store::{InstanceRecord, Store, StoredFunction};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DEFAULT_QUOTA_CARDS, GpuSource};
use crate::error::ApiError;
use crate::gateway::{InstanceClient, instance_client};
use crate::pool::{AcquireError, Pool, PoolStatus};
use crate::serve::ServerError;
use crate::util::{from_ms, now_ms, rfc3339};

/// What pools and instance supervisors share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Store,
    pub allocator: Allocator,
    pub runtime: Arc<dyn InstanceRuntime>,
    pub prober: Prober,
    pub data_dir: PathBuf,
    /// Every instance supervisor, so shutdown can wait for all of them.
    pub tasks: TaskTracker,
    /// Parent of every instance's stop token: cancelled last at shutdown.
    pub instances_root: CancellationToken,
    /// Wakes the reconciler (a slot was freed, an instance changed state).
    pub wake: Notify,
    pub stop_grace: Duration,
}

impl Shared {
    pub fn log_path(&self, function: &str, instance: &str) -> PathBuf {
        self.data_dir
            .join("logs")
            .join(function)
            .join(format!("{instance}.log"))
    }

    pub fn record_pid(&self, id: &str, function: &str, pid: Option<u32>) {
        if let Some(pid) = pid {
            let rec = InstanceRecord {
                id: id.to_string(),
                function: function.to_string(),
                pid: i64::from(pid),
            };
            if let Err(e) = self.store.add_instance(&rec) {
                tracing::warn!("cannot record instance {id}: {e}");
            }
        }
    }

    pub fn forget_pid(&self, id: &str) {
        if let Err(e) = self.store.remove_instance(id) {
            tracing::warn!("cannot forget instance {id}: {e}");
        }
    }
}

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionView {
    /// Function name.
    pub name: String,
    /// Grows on every change of spec.
    pub revision: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// The spec with every default filled in.
    pub spec: RawSpec,
    /// Instances and queue right now.
    pub status: PoolStatus,
}

/// The whole server's state.
#[derive(Debug)]
pub struct Platform {
    shared: Arc<Shared>,
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    deploy_lock: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    client: InstanceClient,
}

const QUOTA_KEY: &str = "quota_cards";

impl Platform {
    /// Opens the store, finds the GPUs, stops orphans of a previous run, loads the deployed
    /// functions and starts the reconciler.
    pub async fn open(config: &Config) -> Result<Arc<Self>, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| ServerError::DataDir {
            path: config.data_dir.clone(),
            source: e,
        })?;
        let store = Store::open(&config.data_dir.join("gpufn.db"))?;
        let cards = discover(&config.gpus)?;
        let quota = match config.quota_cards {
            Some(q) => {
                store.set_setting(QUOTA_KEY, &q.to_string())?;
                q
            }
            None => store
                .setting(QUOTA_KEY)?
                .and_then(|v| v.parse().ok())
                .unwrap_or(DEFAULT_QUOTA_CARDS),
        };
        reap_orphans(&store);
        let shared = Arc::new(Shared {
            store,
            allocator: Allocator::new(cards, quota),
            runtime: Arc::new(ProcessRuntime),
            prober: Prober::default(),
            data_dir: config.data_dir.clone(),
            tasks: TaskTracker::new(),
            instances_root: CancellationToken::new(),
            wake: Notify::new(),
            stop_grace: config.instance_stop_grace,
        });
        let platform = Arc::new(Self {
            shared,
            pools: RwLock::new(BTreeMap::new()),
            deploy_lock: tokio::sync::Mutex::new(()),
            shutdown: CancellationToken::new(),
            client: instance_client(),
        });
        platform.load_functions()?;
        for raw in &config.deploy {
            let (view, _) = platform
                .deploy(raw.clone())
                .await
                .map_err(ServerError::Deploy)?;
            tracing::info!(function = %view.name, revision = view.revision, "deployed from --deploy");
        }
        platform.clone().spawn_reconciler();
        Ok(platform)
    }

    fn load_functions(&self) -> Result<(), ServerError> {
        for row in self.shared.store.list_functions()? {
            match spec_from_row(&row) {
                Ok(spec) => {
                    let pool = Pool::new(self.shared.clone(), spec, row.revision);
                    self.pools_mut().insert(row.name.clone(), pool);
                }
                // A spec stored by an older gpufn that no longer validates stays in the store,
                // untouched, for the user to fix with a new deploy.
                Err(e) => tracing::error!(function = %row.name, "stored spec no longer valid: {e}"),
            }
        }
        Ok(())
    }

    fn pools_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Pool>>> {
        self.pools.write().unwrap_or_else(|p| p.into_inner())
    }

    fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The pool of a deployed function.
    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// The client the gateway uses to reach instances.
    pub fn client(&self) -> &InstanceClient {
        &self.client
    }

    /// The GPU allocator.
    pub fn allocator(&self) -> &Allocator {
        &self.shared.allocator
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.shared.data_dir
    }

    /// Creates or updates a function. Returns its view and whether it was created.
    pub async fn deploy(&self, raw: RawSpec) -> Result<(FunctionView, bool), ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        let spec = raw.validate()?;
        check_environment(&spec, &self.shared.allocator)?;
        let json = serde_json::to_string(&spec.to_raw())
            .map_err(|e| ApiError::internal("serializing the spec", e))?;
        // One deploy at a time, so the store and the pools change together.
        let _guard = self.deploy_lock.lock().await;
        let (row, changed) = self
            .shared
            .store
            .put_function(&spec.name, &json, now_ms())
            .map_err(|e| ApiError::internal("storing the function", e))?;
        let existing = self.pool(&spec.name);
        let created = existing.is_none();
        let pool = match existing {
            Some(pool) => {
                if changed {
                    pool.update(spec, row.revision);
                }
                pool
            }
            None => {
                let pool = Pool::new(self.shared.clone(), spec, row.revision);
                self.pools_mut().insert(row.name.clone(), pool.clone());
                pool
            }
        };
        if changed {
            tracing::info!(function = %row.name, revision = row.revision, "deployed");
        }
        // Provisioned instances start now rather than at the reconciler's next pass.
        pool.reconcile(Instant::now());
        Ok((view(&row, &pool), created))
    }

    /// Deletes a function: queued requests are refused, requests in flight finish, instances stop.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let _guard = self.deploy_lock.lock().await;
        let deleted = self
            .shared
            .store
            .delete_function(name)
            .map_err(|e| ApiError::internal("deleting the function", e))?;
        let pool = self.pools_mut().remove(name);
        match pool {
            Some(pool) => {
                pool.close(AcquireError::Deleted);
                Ok(())
            }
            None if deleted => Ok(()),
            None => Err(ApiError::no_function(name)),
        }
    }

    /// One function.
    pub fn function(&self, name: &str) -> Result<FunctionView, ApiError> {
        let pool = self.pool(name).ok_or_else(|| ApiError::no_function(name))?;
        let row = self
            .shared
            .store
            .get_function(name)
            .map_err(|e| ApiError::internal("reading the function", e))?
            .ok_or_else(|| ApiError::no_function(name))?;
        Ok(view(&row, &pool))
    }

    /// Every function, by name.
    pub fn functions(&self) -> Result<Vec<FunctionView>, ApiError> {
        let rows = self
            .shared
            .store
            .list_functions()
            .map_err(|e| ApiError::internal("listing functions", e))?;
        Ok(rows
            .iter()
            .filter_map(|row| self.pool(&row.name).map(|pool| view(row, &pool)))
            .collect())
    }

    /// Sets and stores the card quota.
    pub fn set_quota(&self, cards: u32) -> Result<(), ApiError> {
        self.shared
            .store
            .set_setting(QUOTA_KEY, &cards.to_string())
            .map_err(|e| ApiError::internal("storing the quota", e))?;
        self.shared.allocator.set_quota(cards);
        Ok(())
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// First step of shutdown: refuse new work; queued requests get 503; no instance starts again.
    /// Requests in flight go on.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
        for pool in self.pools() {
            pool.close(AcquireError::ShuttingDown);
        }
    }

    /// Last step of shutdown: stops every instance and waits (bounded) until all are gone.
    pub async fn stop_instances(&self) {
        self.shutdown.cancel();
        self.shared.instances_root.cancel();
        self.shared.tasks.close();
        let bound = self.shared.stop_grace + Duration::from_secs(5);
        if tokio::time::timeout(bound, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("some instances did not stop within {bound:?}");
        }
    }

    fn spawn_reconciler(self: Arc<Self>) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let now = Instant::now();
                let mut next = now + Duration::from_secs(60);
                for pool in self.pools() {
                    if let Some(t) = pool.reconcile(now) {
                        next = next.min(t);
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    () = self.shared.wake.notified() => {}
                    () = self.shared.allocator.released() => {
                        for pool in self.pools() {
                            pool.rescale();
                        }
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
        "the server is shutting down",
    )
    .retry_after(1)
}

fn view(row: &StoredFunction, pool: &Pool) -> FunctionView {
    FunctionView {
        name: row.name.clone(),
        revision: row.revision,
        created_at: rfc3339(from_ms(row.created_at_ms)),
        updated_at: rfc3339(from_ms(row.updated_at_ms)),
        spec: pool.spec().to_raw(),
        status: pool.status(),
    }
}

fn spec_from_row(row: &StoredFunction) -> Result<FunctionSpec, SpecError> {
    gpufn_spec::parse_json(row.spec_json.as_bytes()).and_then(|raw| raw.validate())
}

fn discover(source: &GpuSource) -> Result<Vec<gpufn_gpu::Card>, ServerError> {
    let simulated = |spec: &str| -> Result<Vec<gpufn_gpu::Card>, ServerError> {
        let cards = SimulatedGpus::new(spec)?.discover()?;
        tracing::warn!(
            "GPUs are SIMULATED ({spec}): {} card(s) declared, no real GPU is used",
            cards.len()
        );
        Ok(cards)
    };
    match source {
        GpuSource::Simulated(spec) => simulated(spec),
        GpuSource::Nvml => Ok(NvmlDiscovery.discover()?),
        GpuSource::NvmlOrSimulated(spec) => {
            let real = NvmlDiscovery.discover()?;
            if real.is_empty() {
                simulated(spec)
            } else {
                tracing::info!("{} NVIDIA GPU(s) found", real.len());
                Ok(real)
            }
        }
    }
}

/// Checks what validation alone cannot: that the GPU need fits a card here, that the working
/// directory exists and that the program can be found.
fn check_environment(spec: &FunctionSpec, allocator: &Allocator) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    if let Err(e) = allocator.check_fits(spec.gpu.card_type.as_deref(), spec.gpu.memory_gb) {
        errors.push(FieldError::new(e.field(), e.to_string()));
    }
    let workdir = Path::new(&spec.workdir);
    if !workdir.is_dir() {
        errors.push(FieldError::new(
            "workdir",
            format!("is not a directory on the server ({})", workdir.display()),
        ));
    } else if let Some(program) = spec.command.first() {
        if !program_exists(program, workdir) {
            errors.push(FieldError::new(
                "command[0]",
                format!("{program:?} is not an executable file in workdir nor found in PATH"),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(SpecError::Invalid(errors).into())
    }
}

fn program_exists(program: &str, workdir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(&workdir.join(program));
    }
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| executable(&dir.join(program)))
    })
}

/// Stops instance processes a previous gpufn left behind (killed with SIGKILL, say), found by the
/// instance id in their environment, which cannot be confused with an unrelated process that
/// reused the pid.
fn reap_orphans(store: &Store) {
    let records = match store.instances() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot list recorded instances: {e}");
            return;
        }
    };
    if records.is_empty() {
        return;
    }
    let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
    let killed = gpufn_runtime::reap_orphans(&ids);
    if killed > 0 {
        tracing::warn!("stopped {killed} orphaned instance process(es) of a previous run");
    }
    for r in records {
        let _ = store.remove_instance(&r.id);
    }
}
