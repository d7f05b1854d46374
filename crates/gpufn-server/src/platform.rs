//! Process-wide state: the store, the GPU allocator, the runtime, and one pool per function; the
//! deploy/delete operations; and the reconciler task (keep-alive, provisioned instances, retrying
//! scale-ups when a card comes back).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use gpufn_gpu::{Allocator, GpuDiscovery, NvmlDiscovery, SimulatedGpus};
use gpufn_runtime::probe::Prober;
use gpufn_runtime::{InstanceRuntime, ProcessRuntime};
use gpufn_spec::{FieldError, FunctionSpec, RawSpec, SpecError};
use gpufn_store::{BillingSums, ColdStartRow, MeterRecord, Store, StoredFunction};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, DEFAULT_QUOTA_CARDS, GpuSource};
use crate::error::ApiError;
use crate::error::ServerError;
use crate::function_lock::FunctionLock;
use crate::instance::ColdStartPhases;
use crate::meter::Meter;
use crate::metrics::{CardLabels, Metrics, PhaseLabels, StateLabels};
use crate::pool::{AcquireError, Pool, PoolStatus, Slot};
pub(crate) use crate::shared::Shared;
use crate::task_queue::TaskRunner;
use crate::upstream::{InstanceClient, instance_client};
use crate::util::{from_ms, now_ms, rfc3339};
use gpufn_metering::Prices;

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
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
    /// Invocations, cold starts and cost since first deployed (only in `GET /functions/{name}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stats: Option<FunctionStats>,
}

/// Usage and cold-start figures of one function.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FunctionStats {
    /// Requests served by instances.
    pub invocations: i64,
    /// Requests that waited for their instance to start.
    pub cold_starts: i64,
    /// `cold_starts / invocations`.
    pub cold_start_rate: f64,
    /// Median request latency (arrival → response headers), over the last 1024 requests.
    pub latency_p50_ms: Option<f64>,
    /// 99th percentile request latency, over the last 1024 requests.
    pub latency_p99_ms: Option<f64>,
    /// Median cold start (request arrival → first byte), over the last 1000.
    pub cold_start_p50_ms: Option<f64>,
    /// 99th percentile cold start, over the last 1000.
    pub cold_start_p99_ms: Option<f64>,
    /// Active seconds billed.
    pub billed_seconds: i64,
    /// Active GB-seconds.
    pub gb_seconds: f64,
    /// Provisioned idle GB-seconds.
    pub idle_gb_seconds: f64,
    /// Cost so far, USD.
    pub cost_usd: f64,
}

/// One function's bill over a window, as `GET /api/v1/billing` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BillingRow {
    /// Function name.
    pub function: String,
    /// Requests served.
    pub invocations: i64,
    /// Active seconds billed (each busy period rounded up).
    pub billed_seconds: i64,
    /// `billed_seconds × gpu.memory_gb`.
    pub gb_seconds: f64,
    /// Provisioned instances' idle GB-seconds.
    pub idle_gb_seconds: f64,
    /// USD at the server's prices.
    pub cost_usd: f64,
}

/// A cold start as `GET /api/v1/functions/{name}/cold-starts` shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ColdStartView {
    /// The instance started.
    pub instance: String,
    /// When the request arrived (RFC 3339).
    pub at: String,
    /// Card allocation.
    pub gpu_allocate_ms: f64,
    /// Image pull (0 for process functions).
    pub image_pull_ms: f64,
    /// Spawn.
    pub start_ms: f64,
    /// Spawn → health check passes.
    pub ready_ms: f64,
    /// The `lifecycle.initializer` hook (0 without one).
    pub initialize_ms: f64,
    /// Ready → the instance's response headers.
    pub first_response_ms: f64,
    /// Request arrival → first byte to the caller.
    pub total_ms: f64,
}

impl From<ColdStartRow> for ColdStartView {
    fn from(r: ColdStartRow) -> Self {
        Self {
            instance: r.instance,
            at: rfc3339(from_ms(r.at_ms)),
            gpu_allocate_ms: r.gpu_allocate_ms,
            image_pull_ms: r.image_pull_ms,
            start_ms: r.start_ms,
            ready_ms: r.ready_ms,
            initialize_ms: r.initialize_ms,
            first_response_ms: r.first_response_ms,
            total_ms: r.total_ms,
        }
    }
}

/// The whole server's state.
#[derive(Debug)]
pub struct Platform {
    shared: Arc<Shared>,
    pools: RwLock<BTreeMap<String, Arc<Pool>>>,
    /// Held only while the store and the pools change together (short).
    deploy_lock: tokio::sync::Mutex<()>,
    /// Held for the whole of one change of one function.
    function_locks: crate::function_lock::FunctionLocks,
    /// The instance last reclaimed for another function (its pool, id, when), until it is gone:
    /// one at a time, so a card not yet back does not make gpufn reclaim a second.
    reclaiming: std::sync::Mutex<Option<(String, gpufn_sched::InstanceId, Instant)>>,
    shutdown: CancellationToken,
    /// `--client-body-timeout-s`.
    client_body_timeout: Duration,
    /// Where callbacks may go (`--allow-callback-to`).
    outbound: crate::outbound::Outbound,
    client: InstanceClient,
    upstream: crate::upstream::Upstream,
    tasks: TaskRunner,
    fc: crate::fc_auth::FcState,
    access: crate::auth::Access,
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
        let store = Arc::new(Store::open(&config.data_dir.join("gpufn.db"))?);
        harden_data_dir(&config.data_dir);
        // On Kubernetes, the cards are the cluster's and every instance is a Pod.
        let (cards, kube) = match &config.backend {
            crate::config::Backend::Local => (discover(&config.gpus)?, None),
            crate::config::Backend::Kubernetes(settings) => {
                let kube_err = |e: gpufn_kube::KubeError| ServerError::Config(e.to_string());
                // One TLS provider for the whole process (rustls panics with two or none).
                gpufn_oci::ensure_crypto_provider();
                let client = gpufn_kube::client(settings).await.map_err(kube_err)?;
                let cards = gpufn_kube::cluster::cards(client.clone(), settings)
                    .await
                    .map_err(kube_err)?;
                tracing::info!(
                    cards = cards.len(),
                    namespace = %settings.namespace,
                    "Kubernetes backend: the cluster's GPU cards"
                );
                let runtime = gpufn_kube::KubeRuntime::start(client, settings.clone())
                    .await
                    .map_err(kube_err)?;
                (cards, Some(runtime))
            }
        };
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
        let containers = open_containers(config, &cards)?;
        let reaped = containers.reap_orphans();
        if !reaped.is_empty() {
            tracing::warn!(
                count = reaped.len(),
                "removed containers left by a previous gpufn"
            );
        }
        let process = process_runtime(config)?;
        let cgroup_parent = process.cgroups.clone();
        let runtime: Arc<dyn InstanceRuntime> = Arc::new(crate::containers::Runtimes {
            process,
            container: (*containers).clone(),
            kube: kube.clone(),
        });
        let shared = Arc::new(Shared {
            meter: Meter::start(store.clone()),
            metrics: Metrics::default(),
            prices: config.prices,
            store,
            allocator: Allocator::new(cards, quota),
            containers,
            prober: Prober::default(),
            data_dir: config.data_dir.clone(),
            tasks: TaskTracker::new(),
            instances_root: CancellationToken::new(),
            wake: Notify::new(),
            card_pressure: std::sync::atomic::AtomicBool::new(false),
            card_waiting: std::sync::atomic::AtomicBool::new(false),
            dirty: std::sync::Mutex::new(HashSet::new()),
            stop_grace: config.instance_stop_grace,
            secrets: crate::secrets::Secrets::new(
                crate::secrets::SecretKey::load_or_create(
                    &config
                        .secret_key_file
                        .clone()
                        .unwrap_or_else(|| config.data_dir.join("secret.key")),
                )
                .map_err(|e| ServerError::Io(std::io::Error::other(e)))?,
            ),
            registry_env: config.containers.registry_env.clone(),
            cgroups: cgroup_parent,
            runtime,
            on_kubernetes: kube.is_some(),
            clock: config.clock,
        });
        let tasks = TaskRunner::new(
            shared.store.clone(),
            config.tasks,
            config.data_dir.join("task-results"),
        );
        let access = crate::auth::Access::open(
            &shared.store,
            &config.data_dir,
            config.listen.ip().is_loopback(),
            config.access.clone(),
        )
        .map_err(|e| ServerError::Io(std::io::Error::other(e)))?;
        let fc = crate::fc_auth::FcState::new(&config.access_keys, &config.fc_gpu_types, |v| {
            remember_nonces(v, &shared)
        });
        let platform = Arc::new(Self {
            shared,
            pools: RwLock::new(BTreeMap::new()),
            deploy_lock: tokio::sync::Mutex::new(()),
            function_locks: Default::default(),
            reclaiming: std::sync::Mutex::new(None),
            shutdown: CancellationToken::new(),
            client_body_timeout: config.client_body_timeout,
            outbound: crate::outbound::Outbound::new(&config.allow_callback_to)
                .map_err(ServerError::Config)?,
            client: instance_client(),
            upstream: crate::upstream::Upstream::new(),
            tasks,
            fc,
            access,
        });
        platform.load_functions()?;
        if let Some(kube) = &kube {
            platform.adopt_pods(kube).await;
        }
        for raw in &config.deploy {
            let (view, _) = platform
                .deploy(raw.clone())
                .await
                .map_err(ServerError::Deploy)?;
            tracing::info!(function = %view.name, revision = view.revision, "deployed from --deploy");
        }
        platform.clone().spawn_reconciler();
        platform
            .clone()
            .spawn_log_rotation(config.log_max_bytes, config.log_keep);
        Ok(platform)
    }

    /// After a restart on Kubernetes: running Pods of current revisions are taken back as warm
    /// instances (no cold start); any other Pod of gpufn's — an old revision, a deleted function,
    /// one not running — is deleted.
    async fn adopt_pods(&self, kube: &gpufn_kube::KubeRuntime) {
        use gpufn_kube::pod::{LABEL_FUNCTION, LABEL_REVISION};
        let (mut adopted, mut deleted) = (0, 0);
        for pod in kube.watch().pods() {
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let label = |k: &str| pod.metadata.labels.as_ref().and_then(|l| l.get(k)).cloned();
            let current = label(LABEL_FUNCTION)
                .and_then(|f| self.pool(&f))
                .filter(|p| label(LABEL_REVISION) == Some(p.revision().to_string()));
            if let Some(pool) = current {
                let port = pool.spec().container.as_ref().map_or(0, |c| c.port);
                if pod.metadata.deletion_timestamp.is_none() {
                    if let Some(inst) = kube.adopt(&name, port) {
                        if pool.adopt(&name, inst) {
                            adopted += 1;
                            continue;
                        }
                    }
                }
            }
            deleted += 1;
            if let Err(e) = kube.delete(&name, self.shared.stop_grace).await {
                tracing::warn!(pod = %name, "cannot delete a Pod of an earlier run: {e}");
            }
        }
        if adopted + deleted > 0 {
            tracing::info!(adopted, deleted, "Pods of an earlier run");
        }
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

    /// The FC-compatible API's keys and tables.
    /// Sealed secrets.
    pub fn shared_secrets(&self) -> &crate::secrets::Secrets {
        &self.shared.secrets
    }

    /// Tokens and the browser rules.
    pub fn access(&self) -> &crate::auth::Access {
        &self.access
    }

    pub(crate) fn fc(&self) -> &crate::fc_auth::FcState {
        &self.fc
    }

    /// Billing prices.
    pub fn prices(&self) -> Prices {
        self.shared.prices
    }

    /// The client the gateway uses to reach instances.
    /// Connections to instances, for the requests they serve.
    pub fn upstream(&self) -> &crate::upstream::Upstream {
        &self.upstream
    }

    /// The general HTTP client (webhook deliveries; any URL).
    pub fn client(&self) -> &InstanceClient {
        &self.client
    }

    /// Where callbacks and destinations may connect.
    pub(crate) fn outbound(&self) -> &crate::outbound::Outbound {
        &self.outbound
    }

    /// How long a request body may send nothing (`--client-body-timeout-s`).
    pub fn client_body_timeout(&self) -> Duration {
        self.client_body_timeout
    }

    /// The store. From async code, call it through [`Platform::blocking`] or
    /// [`Platform::with_store`]: SQLite calls block (a write waits for its fsync, a reader for a
    /// writer), and a blocked worker thread would stall every connection it serves.
    pub(crate) fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Runs `f` with the platform on a blocking thread (for store calls from async handlers).
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Platform) -> T + Send + 'static,
        T: Send + 'static,
    {
        let p = self.clone();
        tokio::task::spawn_blocking(move || f(&p))
            .await
            .map_err(|e| ApiError::internal("a store call", e))
    }

    /// Runs `f` with the store on a blocking thread.
    pub(crate) async fn with_store<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Store) -> T + Send + 'static,
        T: Send + 'static,
    {
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| ApiError::internal("a store call", e))
    }

    /// Writes an audit record (and its log line) off the async threads.
    pub(crate) async fn audit(
        &self,
        who: &gpufn_auth::Grant,
        action: &'static str,
        target: &str,
        detail: Option<&str>,
    ) {
        let (who, target, detail) = (who.clone(), target.to_string(), detail.map(str::to_string));
        let written = self
            .with_store(move |s| crate::auth::audit(s, &who, action, &target, detail.as_deref()))
            .await;
        if let Err(e) = written {
            tracing::error!("cannot write the audit log: {e}");
        }
    }

    /// The asynchronous task machinery.
    pub fn tasks(&self) -> &TaskRunner {
        &self.tasks
    }

    /// Cancelled when shutdown begins.
    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Records a cold start as the request that waited for it got its response headers.
    pub(crate) fn record_cold_start(
        &self,
        slot: &Slot,
        arrival_ms: i64,
        arrival: Instant,
        phases: ColdStartPhases,
        ready_at: Instant,
    ) {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let row = ColdStartRow {
            function: slot.function().to_string(),
            instance: slot.instance_id().to_string(),
            at_ms: arrival_ms,
            gpu_allocate_ms: phases.gpu_allocate_ms,
            image_pull_ms: phases.image_pull_ms,
            start_ms: phases.start_ms,
            ready_ms: phases.ready_ms,
            initialize_ms: phases.initialize_ms,
            first_response_ms: ms(ready_at.elapsed()),
            total_ms: ms(arrival.elapsed()),
        };
        let m = &self.shared.metrics;
        m.cold_starts
            .get_or_create(&Metrics::function(&row.function))
            .inc();
        for (phase, v) in [
            ("gpu_allocate", row.gpu_allocate_ms),
            ("image_pull", row.image_pull_ms),
            ("start", row.start_ms),
            ("ready", row.ready_ms),
            ("initialize", row.initialize_ms),
            ("first_response", row.first_response_ms),
            ("total", row.total_ms),
        ] {
            m.cold_start_duration
                .get_or_create(&PhaseLabels {
                    function: row.function.clone(),
                    phase: phase.to_string(),
                })
                .observe(v / 1000.0);
        }
        self.shared.meter.record(MeterRecord::ColdStart(row));
    }

    /// Billing per function for `[from_ms, to_ms)`: what is stored plus what is still open.
    /// A function's usage time series (requests, cold starts, billed GB-s per bucket).
    pub async fn usage(
        &self,
        name: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<gpufn_store::UsageBucket>, ApiError> {
        if self.pool(name).is_none() {
            return Err(ApiError::no_function(name));
        }
        self.shared.meter.flush().await;
        let name = name.to_string();
        self.with_store(move |s| s.usage(&name, from_ms, to_ms, step_ms))
            .await?
            .map_err(|e| ApiError::internal("reading usage records", e))
    }

    pub async fn billing(
        &self,
        function: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<BillingRow>, ApiError> {
        self.shared.meter.flush().await;
        let owned = function.map(str::to_string);
        let sums = self
            .with_store(move |s| s.billing(owned.as_deref(), from_ms, to_ms))
            .await?
            .map_err(|e| ApiError::internal("reading billing records", e))?;
        let mut rows: BTreeMap<String, BillingSums> =
            sums.into_iter().map(|s| (s.function.clone(), s)).collect();
        if to_ms > now_ms() {
            for pool in self.pools() {
                if function.is_some_and(|f| f != pool.name()) {
                    continue;
                }
                let live = pool.live_usage(from_ms);
                let row = rows
                    .entry(pool.name().to_string())
                    .or_insert_with(|| BillingSums {
                        function: pool.name().to_string(),
                        ..BillingSums::default()
                    });
                row.invocations += i64::try_from(live.invocations).unwrap_or(0);
                row.billed_seconds += i64::try_from(live.billed_seconds).unwrap_or(0);
                row.gb_seconds += live.gb_seconds;
                row.idle_gb_seconds += live.idle_gb_seconds;
            }
        }
        let prices = self.shared.prices;
        Ok(rows
            .into_values()
            .map(|s| BillingRow {
                cost_usd: s.gb_seconds * prices.active_usd_per_gb_s
                    + s.idle_gb_seconds * prices.idle_usd_per_gb_s,
                function: s.function,
                invocations: s.invocations,
                billed_seconds: s.billed_seconds,
                gb_seconds: s.gb_seconds,
                idle_gb_seconds: s.idle_gb_seconds,
            })
            .collect())
    }

    /// The most recent cold starts of a function, newest first.
    pub async fn cold_starts(
        &self,
        name: &str,
        limit: usize,
    ) -> Result<Vec<ColdStartView>, ApiError> {
        if self.pool(name).is_none() {
            return Err(ApiError::no_function(name));
        }
        self.shared.meter.flush().await;
        let owned = name.to_string();
        let rows = self
            .with_store(move |s| s.cold_starts(&owned, limit))
            .await?
            .map_err(|e| ApiError::internal("reading cold starts", e))?;
        Ok(rows.into_iter().map(ColdStartView::from).collect())
    }

    /// Usage and cold-start figures of one function since it was first deployed.
    async fn stats(&self, name: &str) -> Result<FunctionStats, ApiError> {
        let bill = self.billing(Some(name), 0, i64::MAX).await?;
        let bill = bill.into_iter().next();
        let owned = name.to_string();
        let (recent, cold_starts) = self
            .with_store(move |s| {
                Ok::<_, gpufn_store::StoreError>((
                    s.cold_starts(&owned, 1000)?,
                    s.cold_start_count(&owned, 0)?,
                ))
            })
            .await?
            .map_err(|e| ApiError::internal("reading cold starts", e))?;
        let mut totals: Vec<f64> = recent.iter().map(|c| c.total_ms).collect();
        totals.sort_by(f64::total_cmp);
        let pct = |p: f64| -> Option<f64> {
            let last = totals.len().checked_sub(1)?;
            let i = ((last as f64) * p).round() as usize;
            totals.get(i.min(last)).copied()
        };
        let invocations = bill.as_ref().map_or(0, |b| b.invocations);
        let latency = self.pool(name).and_then(|p| p.metrics().recent.quantiles());
        Ok(FunctionStats {
            latency_p50_ms: latency.map(|l| l.0),
            latency_p99_ms: latency.map(|l| l.1),
            invocations,
            cold_starts,
            cold_start_rate: if invocations > 0 {
                cold_starts as f64 / invocations as f64
            } else {
                0.0
            },
            cold_start_p50_ms: pct(0.5),
            cold_start_p99_ms: pct(0.99),
            billed_seconds: bill.as_ref().map_or(0, |b| b.billed_seconds),
            gb_seconds: bill.as_ref().map_or(0.0, |b| b.gb_seconds),
            idle_gb_seconds: bill.as_ref().map_or(0.0, |b| b.idle_gb_seconds),
            cost_usd: bill.as_ref().map_or(0.0, |b| b.cost_usd),
        })
    }

    /// The metrics in text form, with the state gauges refreshed from the pools.
    pub fn metrics_text(&self) -> String {
        let m = &self.shared.metrics;
        m.instances.clear();
        m.queue_depth.clear();
        for pool in self.pools() {
            let st = pool.status();
            for (state, n) in [
                ("starting", st.starting),
                ("ready", st.ready),
                ("busy", st.busy),
                ("draining", st.draining),
            ] {
                m.instances
                    .get_or_create(&StateLabels {
                        function: pool.name().to_string(),
                        state: state.to_string(),
                    })
                    .set(i64::from(n));
            }
            m.queue_depth
                .get_or_create(&Metrics::function(pool.name()))
                .set(i64::from(st.queued));
        }
        let cards = self.shared.allocator.snapshot();
        let allocated = cards.iter().filter(|c| c.instance.is_some()).count();
        for (state, n) in [("allocated", allocated), ("free", cards.len() - allocated)] {
            m.gpu_cards
                .get_or_create(&CardLabels {
                    state: state.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        m.encode()
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
        self.deploy_with_progress(raw, &|_| {}).await
    }

    /// [`Platform::deploy`], reporting the image pull of a container function as it goes.
    pub async fn deploy_with_progress(
        &self,
        raw: RawSpec,
        progress: &(dyn Fn(gpufn_oci::PullEvent) + Send + Sync),
    ) -> Result<(FunctionView, bool), ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        let spec = raw.validate()?;
        let lock = self.lock_function(&spec.name).await;
        self.deploy_validated(spec, progress, &lock).await
    }

    /// Holds `name`'s lock for a change made of several steps (read the spec, change it, deploy
    /// it with [`Platform::deploy_locked`]): other changes of that function wait until it drops.
    pub async fn lock_function(&self, name: &str) -> FunctionLock {
        self.function_locks.lock(name).await
    }

    /// [`Platform::deploy`] by the holder of the function's lock.
    pub async fn deploy_locked(
        &self,
        raw: RawSpec,
        lock: &FunctionLock,
    ) -> Result<(FunctionView, bool), ApiError> {
        if self.shutdown.is_cancelled() {
            return Err(shutting_down());
        }
        let spec = raw.validate()?;
        self.deploy_validated(spec, &|_| {}, lock).await
    }

    async fn deploy_validated(
        &self,
        mut spec: gpufn_spec::FunctionSpec,
        progress: &(dyn Fn(gpufn_oci::PullEvent) + Send + Sync),
        lock: &FunctionLock,
    ) -> Result<(FunctionView, bool), ApiError> {
        if lock.name() != spec.name {
            return Err(ApiError::internal(
                "deploying",
                format!(
                    "{:?} deployed under the lock of {:?}",
                    spec.name,
                    lock.name()
                ),
            ));
        }
        check_environment(&spec, &self.shared.allocator)?;
        if self.shared.on_kubernetes && spec.container.is_none() {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_spec",
                "runtime",
                "runtime: process cannot run on the Kubernetes backend: a Pod runs an image (use runtime: container)",
            ));
        }
        if self.shared.on_kubernetes && spec.scaling.freeze_idle {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_spec",
                "scaling.idle_mode",
                "idle_mode: freeze is not available on the Kubernetes backend (gpufn cannot freeze a Pod's processes)",
            ));
        }
        if self.shared.on_kubernetes && spec.lifecycle.has_command() {
            return Err(ApiError::field(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_spec",
                "lifecycle",
                "lifecycle hooks with a command cannot run on the Kubernetes backend (use path: the hook as an HTTP request)",
            ));
        }
        if spec.container.is_some() && !self.shared.on_kubernetes {
            if let Some(why) = self.shared.containers.unavailable() {
                return Err(ApiError::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "containers_unavailable",
                    "runtime",
                    why,
                ));
            }
        }
        // Pulled before the commit lock: a pull may take minutes and must not block deploys of
        // other functions (this function's lock is held: its next change waits).
        let checked = spec.clone();
        self.shared
            .blocking(move |s| s.check_secrets(&checked))
            .await
            .ok_or_else(shutting_down)??;
        self.shared.pin_image(&mut spec, progress).await?;
        let json = serde_json::to_string(&spec.to_raw())
            .map_err(|e| ApiError::internal("serializing the spec", e))?;
        // One deploy at a time, so the store and the pools change together.
        let _guard = self.deploy_lock.lock().await;
        let name = spec.name.clone();
        let (row, changed) = self
            .with_store(move |s| s.put_function(&name, &json, now_ms()))
            .await?
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
        // Provisioned instances start now rather than at the reconciler's next pass; the
        // reconciler then schedules the pool's next look.
        pool.reconcile(Instant::now());
        self.shared.mark_dirty(&row.name);
        let view = view(&row, &pool);
        if pool.spec().container.is_some() {
            self.evict_images();
        }
        Ok((view, created))
    }

    /// Pulls an image into the cache (what `gpufn deploy` does before deploying a container
    /// function, to show progress). Returns the cached image.
    pub async fn pull_image(
        &self,
        image: &str,
        auth: Option<&gpufn_spec::RegistryAuth>,
        progress: &(dyn Fn(gpufn_oci::PullEvent) + Send + Sync),
    ) -> Result<gpufn_oci::image::Prepared, ApiError> {
        let auth = auth.cloned();
        let creds = self
            .shared
            .blocking(move |s| s.credentials(auth.as_ref()))
            .await
            .ok_or_else(shutting_down)??;
        let out = self
            .shared
            .containers
            .images()
            .prepare(image, creds.as_ref(), progress)
            .await
            .map_err(|e| {
                ApiError::field(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "image_pull_failed",
                    "image",
                    e.to_string(),
                )
            })?;
        self.evict_images();
        Ok(out)
    }

    /// Images in the cache.
    pub fn images(&self) -> Vec<gpufn_oci::Image> {
        self.shared.containers.images().list()
    }

    /// Keeps the image cache under its limit; images pinned by a deployed function or under a
    /// running container stay.
    fn evict_images(&self) {
        let specs: Vec<Arc<FunctionSpec>> = self.pools().iter().map(|p| p.spec()).collect();
        let mut in_use = crate::containers::pinned_digests(specs.iter().map(|s| s.as_ref()));
        in_use.extend(self.shared.containers.images_in_use());
        let images = self.shared.containers.images().clone();
        tokio::task::spawn_blocking(move || images.evict(&in_use));
    }

    /// Deletes a function: queued requests are refused, requests in flight finish, instances stop.
    pub async fn delete(&self, name: &str) -> Result<(), ApiError> {
        let _lock = self.lock_function(name).await;
        let _guard = self.deploy_lock.lock().await;
        let owned = name.to_string();
        let deleted = self
            .with_store(move |s| {
                let deleted = s.delete_function(&owned)?;
                // What the FC API kept about it goes too (a function of that name created later
                // starts afresh).
                if let Err(e) = s.delete_fc(&owned) {
                    tracing::warn!(function = %owned, "cannot forget its FC settings: {e}");
                }
                Ok::<_, gpufn_store::StoreError>(deleted)
            })
            .await?
            .map_err(|e| ApiError::internal("deleting the function", e))?;
        let pool = self.pools_mut().remove(name);
        match pool {
            Some(pool) => pool.close(AcquireError::Deleted),
            None if deleted => {}
            None => return Err(ApiError::no_function(name)),
        }
        // Code the FC API unpacked for it goes too (the instances already running keep the files
        // they opened).
        let code = self.shared.data_dir.join("fc-code").join(name);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(code)).await;
        Ok(())
    }

    /// One function, with its stats.
    pub async fn function(&self, name: &str) -> Result<FunctionView, ApiError> {
        let pool = self.pool(name).ok_or_else(|| ApiError::no_function(name))?;
        let owned = name.to_string();
        let row = self
            .with_store(move |s| s.get_function(&owned))
            .await?
            .map_err(|e| ApiError::internal("reading the function", e))?
            .ok_or_else(|| ApiError::no_function(name))?;
        let mut v = view(&row, &pool);
        v.stats = Some(self.stats(name).await?);
        Ok(v)
    }

    /// Every function, by name.
    pub async fn functions(&self) -> Result<Vec<FunctionView>, ApiError> {
        let rows = self
            .with_store(|s| s.list_functions())
            .await?
            .map_err(|e| ApiError::internal("listing functions", e))?;
        Ok(rows
            .iter()
            .filter_map(|row| self.pool(&row.name).map(|pool| view(row, &pool)))
            .collect())
    }

    /// Sets and stores the card quota.
    pub async fn set_quota(&self, cards: u32) -> Result<(), ApiError> {
        self.with_store(move |s| s.set_setting(QUOTA_KEY, &cards.to_string()))
            .await?
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
        // Stopping closed the instances' busy periods: get them into the store before exit.
        self.shared.meter.flush().await;
        if let Some(c) = &self.shared.cgroups {
            c.remove_if_empty();
        }
    }

    /// The reconciler: keep-alive, provisioned instances and pre-warm for every pool, and retried
    /// scale-ups when a card comes back. It visits only the pools that changed (the dirty set) or
    /// whose own next check is due, so its cost per event does not grow with the number of deployed
    /// functions; a full pass runs at start, when a card is released, and once a minute.
    /// Every few seconds, rotates the logs of live instances that grew past `max_bytes`
    /// ([`crate::logs::rotate`]), on a blocking thread.
    fn spawn_log_rotation(self: Arc<Self>, max_bytes: u64, keep: usize) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let paths: Vec<PathBuf> = self
                    .pools()
                    .iter()
                    .flat_map(|pool| {
                        pool.instances()
                            .into_iter()
                            .map(|i| self.shared.log_path(pool.name(), &i.id))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                let rotated = tokio::task::spawn_blocking(move || {
                    for path in paths {
                        match crate::logs::rotate(&path, max_bytes, keep) {
                            Ok(true) => {
                                tracing::info!(log = %path.display(), "instance log rotated")
                            }
                            Ok(false) => {}
                            Err(e) => tracing::warn!(log = %path.display(), "cannot rotate: {e}"),
                        }
                    }
                })
                .await;
                if rotated.is_err() {
                    return;
                }
            }
        });
    }

    /// Cards go where they are needed: a function whose requests wait for a card gets one held
    /// by another function's idle on-demand instance — the one idle longest among those whose
    /// card fits it (never a provisioned instance, never one with a request in flight). One at a
    /// time: the next only once the last is gone.
    fn reclaim_card(&self, now: Instant) {
        let mut pending = self.reclaiming.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((pool, id, since)) = &*pending {
            let alive = self.pool(pool).is_some_and(|p| p.has_instance(*id));
            if alive && since.elapsed() < Duration::from_secs(60) {
                return;
            }
            *pending = None;
        }
        let pools = self.pools();
        if !pools.iter().any(|p| p.waiting_for_card().is_some()) {
            self.shared
                .card_waiting
                .store(false, std::sync::atomic::Ordering::SeqCst);
            return;
        }
        let cards = self.shared.allocator.snapshot();
        for starving in &pools {
            let Some((want_type, want_gb)) = starving.waiting_for_card() else {
                continue;
            };
            let fits = |index: u32| {
                cards.iter().any(|c| {
                    c.index == index
                        && want_type.as_deref().is_none_or(|t| t == c.card_type)
                        && c.memory_gb >= want_gb
                })
            };
            let victim = pools
                .iter()
                .filter(|p| p.name() != starving.name())
                .flat_map(|p| {
                    p.reclaimable(now)
                        .into_iter()
                        .map(move |(id, idle, index)| (p, id, idle, index))
                })
                .filter(|(_, _, _, index)| fits(*index))
                .max_by_key(|(_, _, idle, _)| *idle);
            if let Some((pool, id, idle, _)) = victim {
                if pool.reclaim(id) {
                    tracing::info!(
                        function = %pool.name(),
                        for_function = %starving.name(),
                        idle_s = idle.as_secs(),
                        "reclaimed an idle instance's card"
                    );
                    *pending = Some((pool.name().to_string(), id, now));
                    return;
                }
            }
        }
    }

    fn spawn_reconciler(self: Arc<Self>) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut due: HashMap<String, Instant> = HashMap::new();
            let mut full = true;
            let mut last_full = Instant::now();
            loop {
                let now = Instant::now();
                let names: Vec<String> =
                    if full || now.duration_since(last_full) >= Duration::from_secs(60) {
                        last_full = now;
                        self.pools().iter().map(|p| p.name().to_string()).collect()
                    } else {
                        let mut names: HashSet<String> = self.shared.take_dirty();
                        names.extend(
                            due.iter()
                                .filter(|(_, t)| **t <= now)
                                .map(|(n, _)| n.clone()),
                        );
                        names.into_iter().collect()
                    };
                full = false;
                for name in names {
                    match self.pool(&name).and_then(|pool| pool.reconcile(now)) {
                        Some(t) => due.insert(name, t),
                        None => due.remove(&name),
                    };
                }
                if self
                    .shared
                    .card_pressure
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    self.reclaim_card(now);
                }
                let next = due
                    .values()
                    .min()
                    .copied()
                    .unwrap_or(now + Duration::from_secs(60))
                    .min(last_full + Duration::from_secs(60));
                tokio::select! {
                    () = tokio::time::sleep_until(next.into()) => {}
                    () = self.shared.wake.notified() => {}
                    () = self.shared.allocator.released() => {
                        for pool in self.pools() {
                            pool.rescale();
                        }
                        full = true;
                    }
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }
}

/// The FC API's signature nonces outlive a restart: those accepted within the last two skew
/// windows are loaded, and each new one goes to the store through the meter thread (batched, no
/// fsync on the request path; a crash can lose only the last batch).
fn remember_nonces(v: crate::fc_auth::Verifier, shared: &Arc<Shared>) -> crate::fc_auth::Verifier {
    let window = crate::fc_auth::MAX_SKEW * 2;
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let seen = shared
        .store
        .recent_nonces(now_ms().saturating_sub(window_ms))
        .unwrap_or_else(|e| {
            tracing::error!("cannot read the FC API's used nonces: {e}");
            Vec::new()
        })
        .into_iter()
        .map(|(n, ms)| {
            let at = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            (n, at)
        });
    let meter = shared.meter.clone();
    v.remembering(
        seen,
        Box::new(move |nonce, at| {
            let ms = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            };
            meter.record(MeterRecord::Nonce {
                nonce: nonce.to_string(),
                seen_ms: ms(at),
                forget_before_ms: ms(at).saturating_sub(window_ms),
            });
        }),
    )
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
        stats: None,
    }
}

fn spec_from_row(row: &StoredFunction) -> Result<FunctionSpec, SpecError> {
    gpufn_spec::parse_json(row.spec_json.as_bytes()).and_then(|raw| raw.validate())
}

fn open_containers(
    config: &Config,
    cards: &[gpufn_gpu::Card],
) -> Result<crate::containers::Containers, ServerError> {
    let settings = &config.containers;
    let dir_err = |path: PathBuf| move |source| ServerError::DataDir { path, source };
    let images_dir = config.data_dir.join("images");
    let images = gpufn_oci::ImageStore::open(
        &images_dir,
        settings.insecure_registries.clone(),
        settings.image_cache_max_mb.saturating_mul(1024 * 1024),
    )
    .map_err(|e| ServerError::DataDir {
        path: images_dir.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let state_dir = config.data_dir.join("run");
    let runtime = gpufn_oci::ContainerRuntime::new(
        Arc::new(images),
        gpufn_oci::ContainerConfig {
            oci_runtime: settings.oci_runtime.clone(),
            state_dir: state_dir.clone(),
            // Simulated cards have no device nodes to give a container.
            inject_gpus: cards.iter().any(|c| !c.simulated),
        },
    )
    .map_err(dir_err(state_dir))?;
    Ok(Arc::new(runtime))
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
    if spec.container.is_some() {
        // The image's files are checked when it is pulled.
    } else if !workdir.is_dir() {
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
/// Function code runs as another user on this machine: it may pass through the data dir (FC code
/// lives there) but not list it, and reads none of the store, logs or task results.
fn harden_data_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let set = |p: &Path, mode: u32| {
        if p.exists() {
            if let Err(e) = std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)) {
                tracing::warn!("cannot chmod {:o} {}: {e}", mode, p.display());
            }
        }
    };
    set(dir, 0o711);
    for f in ["gpufn.db", "gpufn.db-wal", "gpufn.db-shm"] {
        set(&dir.join(f), 0o600);
    }
    for d in ["logs", "task-results"] {
        let _ = std::fs::create_dir_all(dir.join(d));
        set(&dir.join(d), 0o700);
    }
}

/// The process runtime: as root, instances run as an unprivileged user in cgroups of their own
/// (leftovers of a previous run removed first); otherwise as gpufn's own user, unconfined.
fn process_runtime(config: &Config) -> Result<ProcessRuntime, ServerError> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if config.process_user.is_some() {
            return Err(ServerError::Io(std::io::Error::other(
                "--process-user needs gpufn to run as root (to switch users)",
            )));
        }
        tracing::warn!(
            "gpufn is not root: process functions run as its own user, without cgroup limits"
        );
        return Ok(ProcessRuntime::default());
    }
    let user = match config.process_user.as_deref() {
        Some(name) => Some(gpufn_runtime::RunAs::lookup(name).ok_or_else(|| {
            ServerError::Io(std::io::Error::other(format!(
                "--process-user: no user {name:?} in /etc/passwd"
            )))
        })?),
        None => gpufn_runtime::RunAs::ensure("gpufn-fn")
            .or_else(|| gpufn_runtime::RunAs::lookup("nobody")),
    };
    match &user {
        Some(u) if u.uid == 0 => tracing::warn!(
            "process functions run as root (--process-user {}): function code can do anything gpufn can",
            u.name
        ),
        Some(u) => tracing::info!("process functions run as {} (uid {})", u.name, u.uid),
        None => tracing::warn!("no unprivileged user found: process functions run as root"),
    }
    let scope = {
        use sha2::Digest;
        let dir = config
            .data_dir
            .canonicalize()
            .unwrap_or_else(|_| config.data_dir.clone());
        let h = sha2::Sha256::digest(dir.to_string_lossy().as_bytes());
        format!("gpufn-{}", hex::encode(&h[..4]))
    };
    let cgroups = gpufn_runtime::cgroup::CgroupParent::open(&scope);
    match &cgroups {
        Some(c) => {
            let n = c.reap();
            if n > 0 {
                tracing::warn!("removed {n} instance cgroup(s) left by a previous run");
            }
        }
        None => tracing::warn!("no writable cgroup hierarchy: process instances get no limits"),
    }
    Ok(ProcessRuntime {
        user: user.filter(|u| u.uid != 0),
        cgroups,
    })
}

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
