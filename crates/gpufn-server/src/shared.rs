//! What pools and instance supervisors share: the store, the meter, the allocator, the runtimes,
//! secrets — and what is worked out from them for a spec (registry credentials, secret
//! environment, the deploy-time image pin, a container's launch).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpufn_gpu::Allocator;
use gpufn_metering::Prices;
use gpufn_oci::{Credentials, ImageStore, PullEvent};
use gpufn_runtime::probe::Prober;
use gpufn_runtime::{ContainerLaunch, InstanceRuntime};
use gpufn_spec::{FieldError, FunctionSpec, RegistryAuth, SpecError};
use gpufn_store::{InstanceRecord, Store};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::ApiError;
use crate::meter::Meter;
use crate::metrics::Metrics;

/// What pools and instance supervisors share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub meter: Meter,
    pub metrics: Metrics,
    pub prices: Prices,
    pub allocator: Allocator,
    pub runtime: Arc<dyn InstanceRuntime>,
    /// Instances run as Pods (`--backend kubernetes`).
    pub on_kubernetes: bool,
    /// The container side of `runtime`: image store, live containers.
    pub containers: crate::containers::Containers,
    pub prober: Prober,
    pub data_dir: PathBuf,
    /// Every instance supervisor, so shutdown can wait for all of them.
    pub tasks: TaskTracker,
    /// Parent of every instance's stop token: cancelled last at shutdown.
    pub instances_root: CancellationToken,
    /// Wakes the reconciler (a slot was freed, an instance changed state).
    pub wake: Notify,
    /// A function could not get a card for waiting requests: the reconciler looks for another
    /// function's idle on-demand instance to reclaim.
    pub card_pressure: std::sync::atomic::AtomicBool,
    /// Some function may still be waiting for a card (cleared by the reconciler when none is):
    /// an instance going idle then raises `card_pressure` again.
    pub card_waiting: std::sync::atomic::AtomicBool,
    /// Pools that changed since the reconciler last looked.
    pub dirty: std::sync::Mutex<HashSet<String>>,
    pub stop_grace: Duration,
    /// Sealed secrets (`env_from_secrets`, `registry_auth.secret`).
    pub secrets: crate::secrets::Secrets,
    /// Variables `registry_auth` may name (`--registry-env`).
    pub registry_env: Vec<String>,
    /// Where process instances' cgroups live (removed at a clean shutdown).
    pub cgroups: Option<gpufn_runtime::cgroup::CgroupParent>,
    /// The wall clock schedules read.
    pub clock: crate::clock::WallClock,
}

impl Shared {
    /// Runs `f` on a blocking thread: store calls (secrets, instance pids) block, and async code
    /// must not. `None` when the runtime is shutting down.
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Option<T>
    where
        F: FnOnce(&Shared) -> T + Send + 'static,
        T: Send + 'static,
    {
        let shared = self.clone();
        tokio::task::spawn_blocking(move || f(&shared)).await.ok()
    }

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

    /// Marks a pool for the reconciler and wakes it.
    pub fn mark_dirty(&self, pool: &str) {
        let mut dirty = self.dirty.lock().unwrap_or_else(|p| p.into_inner());
        if !dirty.contains(pool) {
            dirty.insert(pool.to_string());
        }
        drop(dirty);
        self.wake.notify_one();
    }

    pub(crate) fn take_dirty(&self) -> HashSet<String> {
        std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn forget_pid(&self, id: &str) {
        if let Err(e) = self.store.remove_instance(id) {
            tracing::warn!("cannot forget instance {id}: {e}");
        }
    }
}

impl Shared {
    /// The registry login a spec names: from a secret, or from two of gpufn's own environment
    /// variables — only those the admin listed with `--registry-env`, so a caller cannot make gpufn
    /// send any other variable (its FC secret, say) to a registry of their choosing.
    pub(crate) fn credentials(
        &self,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<Credentials>, ApiError> {
        let Some(auth) = auth else {
            return Ok(None);
        };
        match auth {
            RegistryAuth::Secret { secret } => {
                let value = self
                    .secrets
                    .get(&self.store, secret)
                    .map_err(|e| field_error("registry_auth.secret", e.to_string()))?;
                let (username, password) = value.split_once(':').ok_or_else(|| {
                    field_error(
                        "registry_auth.secret",
                        format!("secret {secret:?} must hold user:password"),
                    )
                })?;
                Ok(Some(Credentials {
                    username: username.to_string(),
                    password: password.to_string(),
                }))
            }
            RegistryAuth::Env {
                username_env,
                password_env,
            } => {
                let read = |field: &str, var: &str| {
                    if !self.registry_env.iter().any(|v| v == var) {
                        return Err(field_error(
                            field,
                            format!(
                                "{var} is not a variable gpufn may use for registry logins (the admin lists those with --registry-env; or use registry_auth: {{secret: NAME}})"
                            ),
                        ));
                    }
                    std::env::var(var).map_err(|_| {
                        field_error(
                            field,
                            format!("the gpufn server has no environment variable {var} (needed for the registry login)"),
                        )
                    })
                };
                Ok(Some(Credentials {
                    username: read("registry_auth.username_env", username_env)?,
                    password: read("registry_auth.password_env", password_env)?,
                }))
            }
        }
    }

    /// Refuses a spec that names a secret that does not exist (naming the field), before anything
    /// is pulled or stored.
    pub(crate) fn check_secrets(&self, spec: &FunctionSpec) -> Result<(), ApiError> {
        let mut errors = Vec::new();
        for (var, name) in &spec.env_from_secrets {
            match self.secrets.exists(&self.store, name) {
                Ok(true) => {}
                Ok(false) => errors.push(FieldError::new(
                    format!("env_from_secrets.{var}"),
                    format!("no secret named {name:?} (gpufn secret set {name})"),
                )),
                Err(e) => return Err(ApiError::internal("reading secrets", e)),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::from(SpecError::Invalid(errors)))
        }
    }

    /// The instance environment's secret part: `env_from_secrets` opened now (a secret changed since
    /// the deploy takes effect at the next start).
    pub(crate) fn secret_env(
        &self,
        spec: &FunctionSpec,
    ) -> Result<Vec<(String, String)>, crate::secrets::SecretError> {
        spec.env_from_secrets
            .iter()
            .map(|(var, name)| Ok((var.clone(), self.secrets.get(&self.store, name)?)))
            .collect()
    }

    /// Pulls (or finds in the cache) the spec's image and pins the spec to its digest, so every
    /// instance of the revision runs the same bytes. A failure names the `image` field and carries the
    /// registry's reason.
    pub(crate) async fn pin_image(
        self: &Arc<Self>,
        spec: &mut FunctionSpec,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(), ApiError> {
        let images: &ImageStore = self.containers.images();
        let Some(c) = spec.container.as_mut() else {
            return Ok(());
        };
        let auth = c.registry_auth.clone();
        let creds = self
            .blocking(move |s| s.credentials(auth.as_ref()))
            .await
            .ok_or_else(|| ApiError::internal("reading registry credentials", "shutting down"))??;
        // On Kubernetes the nodes pull: gpufn only pins the reference to its digest.
        let pinned = if self.on_kubernetes {
            images.resolve(&c.image, creds.as_ref()).await
        } else {
            images
                .prepare(&c.image, creds.as_ref(), progress)
                .await
                .map(|p| p.image.reference)
        };
        let pinned = pinned.map_err(|e| {
            let status = match e {
                gpufn_oci::ImageError::Registry { .. } | gpufn_oci::ImageError::Digest { .. } => {
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY
                }
                gpufn_oci::ImageError::BadReference { .. } => axum::http::StatusCode::BAD_REQUEST,
                gpufn_oci::ImageError::Io { .. } => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError::field(status, "image_pull_failed", "image", e.to_string())
        })?;
        c.image = pinned;
        Ok(())
    }

    /// What a container instance is launched with.
    pub(crate) fn launch_of(&self, spec: &FunctionSpec) -> Option<ContainerLaunch> {
        let c = spec.container.as_ref()?;
        // Credentials only matter when the image left the cache; a missing variable then shows as a
        // pull error in the instance's start failure.
        let credentials = self
            .credentials(c.registry_auth.as_ref())
            .ok()
            .flatten()
            .map(|c| (c.username, c.password));
        Some(ContainerLaunch {
            image: c.image.clone(),
            port: c.port,
            host_network: c.host_network,
            memory_mb: Some(spec.memory_mb),
            cpu: Some(spec.cpu),
            workdir: (!spec.workdir.is_empty()).then(|| spec.workdir.clone()),
            credentials,
        })
    }
}

fn field_error(field: &str, message: String) -> ApiError {
    ApiError::from(SpecError::Invalid(vec![FieldError::new(field, message)]))
}
