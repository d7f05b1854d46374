//! `runtime: container` in the server: the runtime that picks process or container per instance,
//! and the digests deployed specs pin (kept from cache eviction). The deploy-time pre-pull,
//! credentials and secrets are [`crate::shared::Shared`]'s.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use gpufn_oci::ContainerRuntime;
use gpufn_runtime::{InstanceRuntime, LaunchSpec, ProcessRuntime, RunningInstance, RuntimeError};
use gpufn_spec::FunctionSpec;

/// Process instances to the process runtime, container instances to the container runtime.
#[derive(Debug)]
pub(crate) struct Runtimes {
    pub process: ProcessRuntime,
    pub container: ContainerRuntime,
    /// The Kubernetes backend: every container instance is a Pod (process functions are refused
    /// at deploy).
    pub kube: Option<gpufn_kube::KubeRuntime>,
}

#[async_trait]
impl InstanceRuntime for Runtimes {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn RunningInstance>, RuntimeError> {
        if let Some(kube) = &self.kube {
            kube.launch(spec).await
        } else if spec.container.is_some() {
            self.container.launch(spec).await
        } else {
            self.process.launch(spec).await
        }
    }

    fn launch_is_cancel_safe(&self) -> bool {
        self.kube.is_some()
    }
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
