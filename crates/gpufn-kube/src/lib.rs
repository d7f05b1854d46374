//! The Kubernetes backend (`gpufn serve --backend kubernetes`): each instance is one Pod that gpufn
//! creates (server-side apply, field manager `gpufn`), watches and deletes itself — no Deployment,
//! because gpufn decides which instance stops. gpufn stays the gateway, queue, scheduler and meter;
//! the cluster's scheduler places the Pods on GPU nodes.
//!
//! - [`pod`]: the Pod of an instance and the reading of its status (pure);
//! - [`runtime`]: [`KubeRuntime`], the `InstanceRuntime` that runs instances as Pods, over one
//!   watch of gpufn's Pods;
//! - [`cluster`]: the cluster's GPU cards, by node.

pub mod cluster;
pub mod pod;
pub mod runtime;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use runtime::KubeRuntime;

/// How gpufn uses the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeSettings {
    /// The namespace of function Pods (`--kube-namespace`).
    pub namespace: String,
    /// The GPU's extended resource (`--kube-gpu-resource`): `nvidia.com/gpu` asks for one whole
    /// card; any other (`aliyun.com/gpu-mem`) for the function's `gpu.memory_gb`.
    pub gpu_resource: String,
    /// The node label carrying the GPU type (`--kube-gpu-type-label`).
    pub gpu_type_label: String,
    /// gpufn GPU type → that label's value, where the cluster labels differently
    /// (`--kube-gpu-type tesla-t4=Tesla-T4`); a type not listed is its own value.
    pub gpu_type_values: BTreeMap<String, String>,
    /// A kubeconfig file; `None`: `$KUBECONFIG`, `~/.kube/config` or the in-cluster account.
    pub kubeconfig: Option<PathBuf>,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            namespace: "gpufn-functions".into(),
            gpu_resource: pod::WHOLE_CARD.into(),
            gpu_type_label: "nvidia.com/gpu.product".into(),
            gpu_type_values: BTreeMap::new(),
            kubeconfig: None,
        }
    }
}

impl KubeSettings {
    /// The node label value of gpufn GPU type `t`.
    pub fn type_value(&self, t: &str) -> String {
        self.gpu_type_values
            .get(t)
            .cloned()
            .unwrap_or_else(|| t.to_string())
    }

    /// The gpufn GPU type of node label value `v`.
    pub fn type_of_value(&self, v: &str) -> String {
        self.gpu_type_values
            .iter()
            .find(|(_, value)| value.as_str() == v)
            .map(|(t, _)| t.clone())
            .unwrap_or_else(|| v.to_string())
    }

    /// Whether a Pod asks for whole cards.
    pub fn whole_cards(&self) -> bool {
        self.gpu_resource == pod::WHOLE_CARD
    }
}

/// Why the cluster could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No usable kubeconfig or in-cluster account.
    #[error("cannot configure a Kubernetes client: {0}")]
    Config(String),
    /// The API server refused or could not be reached.
    #[error("Kubernetes API: {0}")]
    Api(#[from] kube::Error),
}

/// A client as every Kubernetes client finds its cluster: `settings.kubeconfig`, else
/// `$KUBECONFIG`, `~/.kube/config`, or the in-cluster service account.
pub async fn client(settings: &KubeSettings) -> Result<kube::Client, KubeError> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| KubeError::Config(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| KubeError::Config(e.to_string()))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeError::Config(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(KubeError::Api)
}
