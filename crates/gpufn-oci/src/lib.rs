//! OCI images and containers.
//!
//! - [`image`]: pulls from OCI / Docker v2 registries (the `oci-client` crate: manifests, indexes
//!   resolved to linux/amd64, bearer-token and basic auth, plain HTTP for loopback registries) into
//!   a content-addressed layer cache, and unpacks root filesystems ([`unpack`], whiteouts honoured);
//! - [`evict`]: the cache's size policy (pure);
//! - [`config`]: the OCI runtime `config.json` of a container (pure);
//! - [`gpu`]: CDI specs and NVIDIA device injection;
//! - [`net`]: a network namespace and veth pair per container;
//! - [`container`]: the [`ContainerRuntime`], an `InstanceRuntime` running `runc`.

pub mod config;
pub mod container;
pub mod evict;
pub mod gpu;
pub mod image;
pub mod net;
pub mod unpack;

pub use container::{ContainerConfig, ContainerRuntime};
pub use image::{Credentials, Image, ImageError, ImageStore, PullEvent};

/// The registry client crate, for tools and tests that push images.
pub use oci_client;

/// Installs the TLS crypto provider the registry client needs (ring); harmless when one is set.
pub fn ensure_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
