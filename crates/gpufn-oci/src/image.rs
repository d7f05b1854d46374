//! The image store: pulls from OCI / Docker v2 registries into a content-addressed cache and
//! unpacks root filesystems.
//!
//! Layout under the store's root:
//! - `blobs/sha256/<hex>`: compressed layers exactly as the registry served them, each written
//!   once, verified against its digest before it is renamed into place, shared between images;
//! - `rootfs/<hex>`: the unpacked root filesystem of the image manifest `sha256:<hex>`, used
//!   read-only as the lower layer of every container of that image;
//! - `images/<hex>.json`: the image record (pinned reference, config, layers, sizes, last use).
//!
//! A record is written last, so an image is in the cache exactly when its record exists; a crash
//! mid-pull leaves only `*.partial` files, which the next pull of the same content replaces.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::evict::{CachedImage, plan_eviction};

/// Credentials for a private registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why an image could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Not a valid image reference.
    #[error("{reference:?} is not a valid image reference: {reason}")]
    BadReference {
        /// As given.
        reference: String,
        /// Parser's reason.
        reason: String,
    },
    /// The registry refused, or could not be reached.
    #[error("cannot pull {reference}: {reason}")]
    Registry {
        /// As given.
        reference: String,
        /// The registry's (or the network's) reason.
        reason: String,
    },
    /// A blob did not match its digest.
    #[error("layer {digest} of {reference} does not match its digest (got {actual})")]
    Digest {
        /// Image.
        reference: String,
        /// Expected.
        digest: String,
        /// Computed.
        actual: String,
    },
    /// Local disk trouble.
    #[error("image cache: {context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
    let context = context.into();
    move |source| ImageError::Io { context, source }
}

/// What a pull reports as it goes, for progress bars.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// The reference was resolved to a manifest.
    Resolved {
        /// `registry/repo:tag@sha256:...`.
        reference: String,
        /// Manifest digest.
        digest: String,
        /// Layers and their sizes.
        layers: Vec<LayerInfo>,
        /// True when nothing needs downloading.
        cached: bool,
    },
    /// Bytes of one layer arrived.
    Progress {
        /// Layer digest.
        digest: String,
        /// Bytes so far.
        bytes: u64,
        /// Layer size.
        size: u64,
    },
    /// A layer is in the cache (downloaded now, or already there).
    LayerDone {
        /// Layer digest.
        digest: String,
        /// It was already cached.
        cached: bool,
    },
    /// The root filesystem is unpacked.
    Unpacked {
        /// How long unpacking took.
        ms: u64,
    },
}

/// One layer of a manifest.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LayerInfo {
    /// `sha256:...`.
    pub digest: String,
    /// Compressed size in bytes.
    pub size: u64,
}

/// The parts of the image config a container needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageConfig {
    /// `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `CMD`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `ENV`, as `KEY=VALUE`.
    #[serde(default)]
    pub env: Vec<String>,
    /// `WORKDIR` (empty: `/`).
    #[serde(default)]
    pub working_dir: String,
    /// `USER` (empty: root).
    #[serde(default)]
    pub user: String,
}

impl ImageConfig {
    /// Reads the `config` object of an OCI / Docker image config JSON.
    pub fn from_json(json: &str) -> Result<Self, serde_json::Error> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            config: Option<Inner>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Inner {
            entrypoint: Option<Vec<String>>,
            cmd: Option<Vec<String>>,
            env: Option<Vec<String>>,
            working_dir: Option<String>,
            user: Option<String>,
        }
        let f: File = serde_json::from_str(json)?;
        let c = f.config.unwrap_or(Inner {
            entrypoint: None,
            cmd: None,
            env: None,
            working_dir: None,
            user: None,
        });
        Ok(ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
        })
    }
}

/// An image in the cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Image {
    /// `registry/repo[:tag]@sha256:...`: what every instance of a revision runs.
    pub reference: String,
    /// Manifest digest.
    pub digest: String,
    /// Entrypoint, env, ...
    pub config: ImageConfig,
    /// Layers in order.
    pub layers: Vec<LayerInfo>,
    /// Bytes of the unpacked root filesystem.
    pub rootfs_bytes: u64,
    /// Last time an instance started from it (ms since the epoch).
    pub last_used_ms: u64,
}

/// The outcome of [`ImageStore::prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The image.
    pub image: Image,
    /// Where its root filesystem is.
    pub rootfs: PathBuf,
    /// True when nothing was downloaded or unpacked.
    pub cache_hit: bool,
    /// Wall time of the whole call.
    pub elapsed: Duration,
}

/// Pulls and caches images.
#[derive(Debug)]
pub struct ImageStore {
    root: PathBuf,
    /// Registries spoken to over plain HTTP besides loopback ones (`--insecure-registry`).
    insecure: Vec<String>,
    /// Cache size limit; eviction removes least-recently-used images not in use.
    max_bytes: u64,
    /// One pull at a time: two cold starts of an evicted image must not download it twice.
    pull_lock: tokio::sync::Mutex<()>,
}

impl ImageStore {
    /// Opens (creating) the store under `root`.
    pub fn open(root: &Path, insecure: Vec<String>, max_bytes: u64) -> Result<Self, ImageError> {
        for d in ["blobs/sha256", "rootfs", "images"] {
            std::fs::create_dir_all(root.join(d)).map_err(io_err(format!("creating {d}")))?;
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            insecure,
            max_bytes,
            pull_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks a reference without contacting anyone.
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        Reference::from_str(reference).map_err(|e| ImageError::BadReference {
            reference: reference.to_string(),
            reason: e.to_string(),
        })
    }

    fn record_path(&self, digest: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{}.json", hex_of(digest)))
    }

    fn rootfs_path(&self, digest: &str) -> PathBuf {
        self.root.join("rootfs").join(hex_of(digest))
    }

    fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex_of(digest))
    }

    /// The cached image with manifest `digest`, if it is complete.
    pub fn cached(&self, digest: &str) -> Option<Image> {
        let text = std::fs::read_to_string(self.record_path(digest)).ok()?;
        let image: Image = serde_json::from_str(&text).ok()?;
        self.rootfs_path(digest).is_dir().then_some(image)
    }

    /// Every complete image in the cache.
    pub fn list(&self) -> Vec<Image> {
        let Ok(dir) = std::fs::read_dir(self.root.join("images")) else {
            return Vec::new();
        };
        let mut out: Vec<Image> = dir
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| serde_json::from_str::<Image>(&t).ok())
            .filter(|i| self.rootfs_path(&i.digest).is_dir())
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        out
    }

    fn client_for(&self, reference: &Reference) -> Client {
        // The registry client's TLS needs a process-wide crypto provider; ring is the one built in.
        crate::ensure_crypto_provider();
        let registry = reference.resolve_registry().to_string();
        let plain_http = is_loopback_registry(&registry) || self.insecure.contains(&registry);
        Client::new(ClientConfig {
            protocol: if plain_http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..ClientConfig::default()
        })
    }

    /// Resolves `reference` to its manifest digest without downloading anything (the Kubernetes
    /// backend: nodes pull images, gpufn only pins them). Returns the pinned reference
    /// (`registry/repo:tag@sha256:…`); one that names a digest already is returned as it is.
    pub async fn resolve(
        &self,
        reference: &str,
        auth: Option<&Credentials>,
    ) -> Result<String, ImageError> {
        let parsed = Self::parse(reference)?;
        if parsed.digest().is_some() {
            return Ok(reference.to_string());
        }
        let oci_auth = match auth {
            Some(c) => {
                oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let digest = self
            .client_for(&parsed)
            .fetch_manifest_digest(&parsed, &oci_auth)
            .await
            .map_err(|e| ImageError::Registry {
                reference: reference.to_string(),
                reason: error_chain(&e),
            })?;
        Ok(pin(&parsed, &digest))
    }

    /// Makes `reference` ready to run: resolves it to a manifest digest (no network when the
    /// reference already names a cached digest), downloads the layers not yet cached, unpacks the
    /// root filesystem. Reports progress through `progress`.
    pub async fn prepare(
        &self,
        reference: &str,
        auth: Option<&Credentials>,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<Prepared, ImageError> {
        let t0 = Instant::now();
        let parsed = Self::parse(reference)?;
        if let Some(digest) = parsed.digest() {
            if let Some(image) = self.cached(digest) {
                return Ok(self.hit(image, t0, progress));
            }
        }
        let registry_err = |e: oci_client::errors::OciDistributionError| ImageError::Registry {
            reference: reference.to_string(),
            reason: error_chain(&e),
        };
        let client = self.client_for(&parsed);
        let oci_auth = match auth {
            Some(c) => {
                oci_client::secrets::RegistryAuth::Basic(c.username.clone(), c.password.clone())
            }
            None => oci_client::secrets::RegistryAuth::Anonymous,
        };
        let (manifest, digest, config_json) = client
            .pull_manifest_and_config(&parsed, &oci_auth)
            .await
            .map_err(registry_err)?;
        if let Some(image) = self.cached(&digest) {
            return Ok(self.hit(image, t0, progress));
        }
        let guard = self.pull_lock.lock().await;
        // Another pull may have finished it while this one waited.
        if let Some(image) = self.cached(&digest) {
            return Ok(self.hit(image, t0, progress));
        }
        let config = ImageConfig::from_json(&config_json).map_err(|e| ImageError::Registry {
            reference: reference.to_string(),
            reason: format!("the image config is not valid JSON: {e}"),
        })?;
        let layers: Vec<LayerInfo> = manifest
            .layers
            .iter()
            .map(|l| LayerInfo {
                digest: l.digest.clone(),
                size: u64::try_from(l.size).unwrap_or(0),
            })
            .collect();
        let pinned = pin(&parsed, &digest);
        progress(PullEvent::Resolved {
            reference: pinned.clone(),
            digest: digest.clone(),
            layers: layers.clone(),
            cached: false,
        });
        for (desc, info) in manifest.layers.iter().zip(&layers) {
            let path = self.blob_path(&info.digest);
            if path.is_file() {
                progress(PullEvent::LayerDone {
                    digest: info.digest.clone(),
                    cached: true,
                });
                continue;
            }
            self.download(&client, &parsed, desc, info, &path, reference, progress)
                .await?;
            progress(PullEvent::LayerDone {
                digest: info.digest.clone(),
                cached: false,
            });
        }
        let t_unpack = Instant::now();
        let rootfs = self.rootfs_path(&digest);
        let blobs: Vec<PathBuf> = layers.iter().map(|l| self.blob_path(&l.digest)).collect();
        let rootfs_bytes = {
            let rootfs = rootfs.clone();
            tokio::task::spawn_blocking(move || unpack_all(&blobs, &rootfs))
                .await
                .map_err(|e| ImageError::Io {
                    context: "unpacking".into(),
                    source: std::io::Error::other(e),
                })??
        };
        progress(PullEvent::Unpacked {
            ms: u64::try_from(t_unpack.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        let image = Image {
            reference: pinned,
            digest: digest.clone(),
            config,
            layers,
            rootfs_bytes,
            last_used_ms: now_ms(),
        };
        self.write_record(&image)?;
        drop(guard);
        Ok(Prepared {
            rootfs,
            image,
            cache_hit: false,
            elapsed: t0.elapsed(),
        })
    }

    fn hit(
        &self,
        mut image: Image,
        t0: Instant,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Prepared {
        progress(PullEvent::Resolved {
            reference: image.reference.clone(),
            digest: image.digest.clone(),
            layers: image.layers.clone(),
            cached: true,
        });
        image.last_used_ms = now_ms();
        // Last use only orders eviction; losing an update is harmless.
        let _ = self.write_record(&image);
        Prepared {
            rootfs: self.rootfs_path(&image.digest),
            image,
            cache_hit: true,
            elapsed: t0.elapsed(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        client: &Client,
        parsed: &Reference,
        desc: &oci_client::manifest::OciDescriptor,
        info: &LayerInfo,
        path: &Path,
        reference: &str,
        progress: &(dyn Fn(PullEvent) + Send + Sync),
    ) -> Result<(), ImageError> {
        let mut stream = client
            .pull_blob_stream(parsed, desc)
            .await
            .map_err(|e| ImageError::Registry {
                reference: reference.to_string(),
                reason: error_chain(&e),
            })?
            .stream;
        let partial = path.with_extension("partial");
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(io_err("creating a layer file"))?;
        let mut hasher = Sha256::new();
        let mut bytes = 0u64;
        let mut last_report = Instant::now();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| ImageError::Registry {
                reference: reference.to_string(),
                reason: format!("reading layer {}: {e}", info.digest),
            })?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_err("writing a layer"))?;
            bytes += chunk.len() as u64;
            if last_report.elapsed() >= Duration::from_millis(100) {
                last_report = Instant::now();
                progress(PullEvent::Progress {
                    digest: info.digest.clone(),
                    bytes,
                    size: info.size,
                });
            }
        }
        file.sync_all().await.map_err(io_err("syncing a layer"))?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != info.digest {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(ImageError::Digest {
                reference: reference.to_string(),
                digest: info.digest.clone(),
                actual,
            });
        }
        progress(PullEvent::Progress {
            digest: info.digest.clone(),
            bytes,
            size: info.size,
        });
        tokio::fs::rename(&partial, path)
            .await
            .map_err(io_err("storing a layer"))
    }

    fn write_record(&self, image: &Image) -> Result<(), ImageError> {
        let path = self.record_path(&image.digest);
        let tmp = path.with_extension("partial");
        let json = serde_json::to_vec_pretty(image).map_err(|e| ImageError::Io {
            context: "encoding an image record".into(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, json).map_err(io_err("writing an image record"))?;
        std::fs::rename(&tmp, &path).map_err(io_err("storing an image record"))
    }

    /// Removes least-recently-used images until the cache is under its limit, never one whose
    /// digest is in `in_use`, and any layer no remaining image needs. Returns the removed digests.
    pub fn evict(&self, in_use: &HashSet<String>) -> Vec<String> {
        let images = self.list();
        let cached: Vec<CachedImage> = images
            .iter()
            .map(|i| CachedImage {
                digest: i.digest.clone(),
                layers: i
                    .layers
                    .iter()
                    .map(|l| (l.digest.clone(), l.size))
                    .collect(),
                rootfs_bytes: i.rootfs_bytes,
                last_used_ms: i.last_used_ms,
            })
            .collect();
        let plan = plan_eviction(&cached, in_use, self.max_bytes);
        for digest in &plan.images {
            // The record goes first: without it the image is not in the cache, whatever is left.
            let _ = std::fs::remove_file(self.record_path(digest));
            let _ = std::fs::remove_dir_all(self.rootfs_path(digest));
            tracing::info!(%digest, "image evicted from the cache");
        }
        for layer in &plan.layers {
            let _ = std::fs::remove_file(self.blob_path(layer));
        }
        plan.images
    }
}

/// Applies every layer in order into `rootfs` (built under a temporary name, renamed when done).
fn unpack_all(blobs: &[PathBuf], rootfs: &Path) -> Result<u64, ImageError> {
    let partial = rootfs.with_extension("partial");
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_err("clearing a partial rootfs"))?;
    }
    std::fs::create_dir_all(&partial).map_err(io_err("creating a rootfs"))?;
    for blob in blobs {
        let file =
            std::fs::File::open(blob).map_err(io_err(format!("opening {}", blob.display())))?;
        crate::unpack::apply_layer(file, &partial)
            .map_err(io_err(format!("unpacking {}", blob.display())))?;
    }
    let bytes = dir_bytes(&partial);
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs).map_err(io_err("replacing a rootfs"))?;
    }
    std::fs::rename(&partial, rootfs).map_err(io_err("storing a rootfs"))?;
    Ok(bytes)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// `registry/repo[:tag]@digest`: the tag is kept for people, the digest is what is pulled.
fn pin(reference: &Reference, digest: &str) -> String {
    let mut s = format!("{}/{}", reference.registry(), reference.repository());
    if let Some(tag) = reference.tag() {
        s.push(':');
        s.push_str(tag);
    }
    s.push('@');
    s.push_str(digest);
    s
}

fn hex_of(digest: &str) -> &str {
    digest.split_once(':').map_or(digest, |(_, h)| h)
}

fn is_loopback_registry(registry: &str) -> bool {
    let host = registry
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(registry, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The error and its sources, joined: the registry's or the network's own words reach the user.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_are_spoken_to_over_http() {
        assert!(is_loopback_registry("127.0.0.1:5000"));
        assert!(is_loopback_registry("localhost:5000"));
        assert!(is_loopback_registry("[::1]:5000"));
        assert!(is_loopback_registry("localhost"));
        assert!(!is_loopback_registry("registry.example.com"));
        assert!(!is_loopback_registry("10.0.0.1:5000"));
    }

    #[test]
    fn a_pinned_reference_keeps_the_tag_and_names_the_digest() {
        let r = ImageStore::parse("127.0.0.1:5000/team/app:1.2").expect("parse");
        let d = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let pinned = pin(&r, d);
        assert_eq!(pinned, format!("127.0.0.1:5000/team/app:1.2@{d}"));
        let again = ImageStore::parse(&pinned).expect("parse pinned");
        assert_eq!(again.digest(), Some(d));
        assert_eq!(
            pin(&ImageStore::parse("busybox").expect("hub"), d),
            format!("docker.io/library/busybox:latest@{d}")
        );
    }

    #[test]
    fn bad_references_are_refused_with_the_reason() {
        let err = ImageStore::parse("UPPER/Case:tag").expect_err("invalid");
        assert!(err.to_string().contains("UPPER/Case:tag"), "{err}");
    }

    #[test]
    fn the_image_config_is_read_from_docker_and_oci_json() {
        let json = r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/app"],
            "Cmd":["--port","9000"],"Env":["PATH=/bin","A=1"],"WorkingDir":"/srv","User":"1000:1000"},
            "rootfs":{"type":"layers","diff_ids":[]}}"#;
        let c = ImageConfig::from_json(json).expect("config");
        assert_eq!(c.entrypoint, ["/app"]);
        assert_eq!(c.cmd, ["--port", "9000"]);
        assert_eq!(c.env, ["PATH=/bin", "A=1"]);
        assert_eq!(c.working_dir, "/srv");
        assert_eq!(c.user, "1000:1000");
        let bare =
            ImageConfig::from_json(r#"{"architecture":"amd64","os":"linux"}"#).expect("bare");
        assert_eq!(bare, ImageConfig::default());
    }
}
