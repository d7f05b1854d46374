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

/// Reads the registry credentials a spec names from gpufn's own environment.
pub(crate) fn credentials(auth: Option<&RegistryAuth>) -> Result<Option<Credentials>, ApiError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    let read = |field: &str, var: &str| {
        std::env::var(var).map_err(|_| {
            ApiError::from(SpecError::Invalid(vec![FieldError::new(
                field,
                format!("the gpufn server has no environment variable {var} (needed for the registry login)"),
            )]))
        })
    };
    Ok(Some(Credentials {
        username: read("registry_auth.username_env", &auth.username_env)?,
        password: read("registry_auth.password_env", &auth.password_env)?,
    }))
}

/// Pulls (or finds in the cache) the spec's image and pins the spec to its digest, so every
/// instance of the revision runs the same bytes. A failure names the `image` field and carries the
/// registry's reason.
pub(crate) async fn pin_image(
    images: &ImageStore,
    spec: &mut FunctionSpec,
    progress: &(dyn Fn(PullEvent) + Send + Sync),
) -> Result<(), ApiError> {
    let Some(c) = spec.container.as_mut() else {
        return Ok(());
    };
    let creds = credentials(c.registry_auth.as_ref())?;
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
pub(crate) fn launch_of(spec: &FunctionSpec) -> Option<ContainerLaunch> {
    let c = spec.container.as_ref()?;
    // Credentials only matter when the image left the cache; a missing variable then shows as a
    // pull error in the instance's start failure.
    let credentials = credentials(c.registry_auth.as_ref())
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
