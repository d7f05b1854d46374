//! `runtime: container` in the server: the runtime that picks process or container per instance,
//! the deploy-time pre-pull that pins a revision to one image digest, credentials from the
//! environment, and cache eviction.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use gpufn_oci::{ContainerRuntime, Credentials, ImageStore, PullEvent};
use gpufn_runtime::{
    ContainerLaunch, InstanceRuntime, LaunchSpec, ProcessRuntime, RunningInstance, RuntimeError,
};
use gpufn_spec::{FieldError, FunctionSpec, RegistryAuth, SpecError};

use crate::error::ApiError;
use crate::platform::Shared;

/// Process instances to the process runtime, container instances to the container runtime.
#[derive(Debug)]
pub(crate) struct Runtimes {
    pub process: ProcessRuntime,
    pub container: ContainerRuntime,
}

#[async_trait]
impl InstanceRuntime for Runtimes {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn RunningInstance>, RuntimeError> {
        if spec.container.is_some() {
            self.container.launch(spec).await
        } else {
            self.process.launch(spec).await
        }
    }
}

fn field_error(field: &str, message: String) -> ApiError {
    ApiError::from(SpecError::Invalid(vec![FieldError::new(field, message)]))
}

/// The registry login a spec names: from a secret, or from two of gpufn's own environment
/// variables — only those the admin listed with `--registry-env`, so a caller cannot make gpufn
/// send any other variable (its FC secret, say) to a registry of their choosing.
pub(crate) fn credentials(
    shared: &Shared,
    auth: Option<&RegistryAuth>,
) -> Result<Option<Credentials>, ApiError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    match auth {
        RegistryAuth::Secret { secret } => {
            let value = shared
                .secrets
                .get(&shared.store, secret)
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
                if !shared.registry_env.iter().any(|v| v == var) {
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
pub(crate) fn check_secrets(shared: &Shared, spec: &FunctionSpec) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    for (var, name) in &spec.env_from_secrets {
        match shared.secrets.exists(&shared.store, name) {
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
    shared: &Shared,
    spec: &FunctionSpec,
) -> Result<Vec<(String, String)>, crate::secrets::SecretError> {
    spec.env_from_secrets
        .iter()
        .map(|(var, name)| Ok((var.clone(), shared.secrets.get(&shared.store, name)?)))
        .collect()
}

/// Pulls (or finds in the cache) the spec's image and pins the spec to its digest, so every
/// instance of the revision runs the same bytes. A failure names the `image` field and carries the
/// registry's reason.
pub(crate) async fn pin_image(
    shared: &Shared,
    spec: &mut FunctionSpec,
    progress: &(dyn Fn(PullEvent) + Send + Sync),
) -> Result<(), ApiError> {
    let images: &ImageStore = shared.containers.images();
    let Some(c) = spec.container.as_mut() else {
        return Ok(());
    };
    let creds = credentials(shared, c.registry_auth.as_ref())?;
    let prepared = images
        .prepare(&c.image, creds.as_ref(), progress)
        .await
        .map_err(|e| {
            let status = match e {
                gpufn_oci::ImageError::Registry { .. } | gpufn_oci::ImageError::Digest { .. } => {
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY
                }
                gpufn_oci::ImageError::BadReference { .. } => axum::http::StatusCode::BAD_REQUEST,
                gpufn_oci::ImageError::Io { .. } => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError::field(status, "image_pull_failed", "image", e.to_string())
        })?;
    c.image = prepared.image.reference;
    Ok(())
}

/// What a container instance is launched with.
pub(crate) fn launch_of(shared: &Shared, spec: &FunctionSpec) -> Option<ContainerLaunch> {
    let c = spec.container.as_ref()?;
    // Credentials only matter when the image left the cache; a missing variable then shows as a
    // pull error in the instance's start failure.
    let credentials = credentials(shared, c.registry_auth.as_ref())
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

/// Digests pinned by specs (`...@sha256:...`).
pub(crate) fn pinned_digests<'a>(specs: impl Iterator<Item = &'a FunctionSpec>) -> HashSet<String> {
    specs
        .filter_map(|s| s.container.as_ref())
        .filter_map(|c| c.image.rsplit_once('@').map(|(_, d)| d.to_string()))
        .collect()
}

/// Shared handle to the container side.
pub(crate) type Containers = Arc<ContainerRuntime>;
