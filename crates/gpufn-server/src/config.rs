//! Server configuration, as `gpufn serve` builds it from its flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gpufn_metering::Prices;
use gpufn_spec::RawSpec;

use crate::task_queue::TaskConfig;

/// Where the GPU inventory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSource {
    /// Real cards through NVML (none when the NVIDIA library is missing).
    Nvml,
    /// Declared cards (`--simulate-gpus`), e.g. `2xtesla-t4:16`.
    Simulated(String),
    /// Real cards if NVML finds any, else these declared ones (`--simulate-gpus-if-none`).
    NvmlOrSimulated(String),
}

/// Where instances run (`--backend`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Backend {
    /// On this machine: processes and runc containers on its own cards. The default.
    #[default]
    Local,
    /// As Pods on a Kubernetes cluster, on its GPU nodes.
    Kubernetes(gpufn_kube::KubeSettings),
}

/// How the gateway proxies `/function/` requests (`--gateway`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GatewayPath {
    /// Heads parsed with httparse and bodies relayed as bytes; requests it does not take (and
    /// everything after them on the same connection) go to hyper. The default.
    #[default]
    Direct,
    /// Every request through hyper's server and client (the reference path).
    Hyper,
}

/// Everything `gpufn serve` is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address for the API, the HTTP trigger and health.
    pub listen: SocketAddr,
    /// Holds `gpufn.db` and the instance logs.
    pub data_dir: PathBuf,
    /// GPU-card quota; when `None`, the stored quota (or 30).
    pub quota_cards: Option<u32>,
    /// GPU inventory (the local backend's).
    pub gpus: GpuSource,
    /// Where instances run.
    pub backend: Backend,
    /// How long SIGTERM waits for requests in flight before stopping instances.
    pub shutdown_grace: Duration,
    /// How long an instance gets between SIGTERM and SIGKILL.
    pub instance_stop_grace: Duration,
    /// A client connection with no request in flight that starts none for this long is closed
    /// (after between one and two times this): idle keep-alive connections and request heads that
    /// never complete.
    pub client_idle_timeout: Duration,
    /// A request body that sends nothing for this long is answered 408 and frees what it holds
    /// (nginx's `client_body_timeout`).
    pub client_body_timeout: Duration,
    /// An instance log over this many bytes is rotated (`--log-max-mb`).
    pub log_max_bytes: u64,
    /// Rotated logs kept per instance (`--log-keep`).
    pub log_keep: usize,
    /// Ranges callbacks and destinations may reach beyond public addresses
    /// (`--allow-callback-to CIDR`).
    pub allow_callback_to: Vec<String>,
    /// How `/function/` requests are proxied.
    pub gateway: GatewayPath,
    /// Specs deployed at start (`--deploy FILE`), workdirs already resolved.
    pub deploy: Vec<RawSpec>,
    /// Billing prices.
    pub prices: Prices,
    /// Asynchronous task settings.
    pub tasks: TaskConfig,
    /// `runtime: container` settings.
    pub containers: ContainerSettings,
    /// Access keys (`id`, `secret`, role) for the FC-compatible API; it refuses everything
    /// without one.
    pub access_keys: Vec<(String, String, gpufn_auth::Role)>,
    /// Who may reach gpufn from a browser (`--public-host`, `--cors-origin`).
    pub access: crate::auth::AccessConfig,
    /// Serve HTTPS with this certificate chain and key (PEM files: `--tls-cert`, `--tls-key`).
    pub tls: Option<TlsFiles>,
    /// The key that seals secrets; `<data-dir>/secret.key` when `None` (`--secret-key-file`).
    pub secret_key_file: Option<PathBuf>,
    /// The account `runtime: process` instances run as (`--process-user`); when `None`, a
    /// `gpufn-fn` system user gpufn creates (or `nobody`). Only when gpufn runs as root.
    pub process_user: Option<String>,
    /// FC `gpuType` → local card type, on top of the defaults.
    pub fc_gpu_types: Vec<(String, String)>,
    /// The wall clock scheduled provisioning reads (the real one but in tests).
    pub clock: crate::clock::WallClock,
}

/// A certificate chain and its private key, PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (leaf first).
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// How container functions are run.
#[derive(Debug, Clone)]
pub struct ContainerSettings {
    /// OCI runtime binary (`--oci-runtime`): runc, or crun/youki with the same command line.
    pub oci_runtime: PathBuf,
    /// Image cache limit in MB (`--image-cache-max-mb`); images in use are never evicted.
    pub image_cache_max_mb: u64,
    /// Registries spoken to over plain HTTP besides loopback ones (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// Environment variables of the server that `registry_auth.username_env`/`password_env` may
    /// name (`--registry-env`); any other is refused, so a caller cannot have gpufn send, say,
    /// its FC secret to a registry of their choosing.
    pub registry_env: Vec<String>,
}

impl Default for ContainerSettings {
    fn default() -> Self {
        Self {
            oci_runtime: PathBuf::from("runc"),
            image_cache_max_mb: 50 * 1024,
            insecure_registries: Vec::new(),
            registry_env: Vec::new(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("gpufn-data"),
            quota_cards: None,
            gpus: GpuSource::Nvml,
            backend: Backend::Local,
            shutdown_grace: Duration::from_secs(30),
            instance_stop_grace: Duration::from_secs(10),
            client_idle_timeout: Duration::from_secs(60),
            client_body_timeout: Duration::from_secs(60),
            log_max_bytes: 64 << 20,
            log_keep: 2,
            allow_callback_to: Vec::new(),
            gateway: GatewayPath::Direct,
            deploy: Vec::new(),
            prices: Prices::default(),
            tasks: TaskConfig::default(),
            containers: ContainerSettings::default(),
            access_keys: Vec::new(),
            access: crate::auth::AccessConfig::default(),
            secret_key_file: None,
            tls: None,
            process_user: None,
            fc_gpu_types: Vec::new(),
            clock: crate::clock::WallClock::real(),
        }
    }
}

/// The default card quota, as the seed states it.
pub const DEFAULT_QUOTA_CARDS: u32 = 30;
