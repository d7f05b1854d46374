//! Secrets: values sealed with XChaCha20-Poly1305 under a key kept outside the store
//! (`<data-dir>/secret.key`, 0600, or `--secret-key-file`), so a copy of `gpufn.db` alone reveals
//! nothing. The secret's name is the associated data: a sealed value cannot be moved to another
//! name. Values leave this module only into an instance's environment or a registry login, never
//! into a response or a log line.

use std::fmt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use gpufn_store::Store;

/// Why the secret key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Unreadable or unwritable key file.
    #[error("secret key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not hold 32 bytes (64 hex digits).
    #[error("secret key {path}: must hold 64 hex digits (32 bytes)")]
    Malformed {
        /// The file.
        path: PathBuf,
    },
    /// The file can be read by others.
    #[error("secret key {path}: readable by group or others (mode {mode:o}); chmod 600 it")]
    Open {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// Why a secret could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// No such secret.
    #[error("no secret named {0:?}")]
    Missing(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] gpufn_store::StoreError),
    /// The value does not open with this key (another key, or a tampered row).
    #[error("secret {0:?} does not open with this server's key (was secret.key replaced?)")]
    Sealed(String),
    /// No random bytes for a nonce.
    #[error("no random bytes: {0}")]
    Random(String),
}

/// The sealing key.
pub struct SecretKey(XChaCha20Poly1305);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// Loads the key from `path`, creating it (0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        use std::os::unix::fs::PermissionsExt;
        let io = |source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::Open {
                        path: path.to_path_buf(),
                        mode,
                    });
                }
                let bytes = hex::decode(text.trim()).map_err(|_| KeyError::Malformed {
                    path: path.to_path_buf(),
                })?;
                let key: [u8; 32] = bytes.try_into().map_err(|_| KeyError::Malformed {
                    path: path.to_path_buf(),
                })?;
                Ok(Self::from_bytes(&key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                getrandom::fill(&mut key).map_err(|e| io(std::io::Error::other(e.to_string())))?;
                crate::auth::write_private(path, format!("{}\n", hex::encode(key)).as_bytes())
                    .map_err(io)?;
                tracing::info!("created the secret key {} (mode 0600)", path.display());
                Ok(Self::from_bytes(&key))
            }
            Err(e) => Err(io(e)),
        }
    }

    /// A key from raw bytes.
    pub fn from_bytes(key: &[u8; 32]) -> Self {
        Self(XChaCha20Poly1305::new(Key::from_slice(key)))
    }

    /// Seals `value` for the secret `name`: (nonce, ciphertext).
    pub fn seal(&self, name: &str, value: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
        let mut nonce = [0u8; 24];
        getrandom::fill(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
        let ct = self
            .0
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Sealed(name.to_string()))?;
        Ok((nonce.to_vec(), ct))
    }

    /// Opens the value sealed for `name`.
    pub fn open(&self, name: &str, nonce: &[u8], ct: &[u8]) -> Result<Vec<u8>, SecretError> {
        if nonce.len() != 24 {
            return Err(SecretError::Sealed(name.to_string()));
        }
        self.0
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| SecretError::Sealed(name.to_string()))
    }
}

/// Sealed secrets in the store, opened with the server's key.
#[derive(Debug)]
pub struct Secrets {
    key: SecretKey,
}

impl Secrets {
    /// With `key`.
    pub fn new(key: SecretKey) -> Self {
        Self { key }
    }

    /// Stores (or replaces) a secret; true when it is new.
    pub fn set(&self, store: &Store, name: &str, value: &[u8]) -> Result<bool, SecretError> {
        let (nonce, ct) = self.key.seal(name, value)?;
        Ok(store.put_secret(name, &nonce, &ct, crate::util::now_ms())?)
    }

    /// A secret's value.
    pub fn get(&self, store: &Store, name: &str) -> Result<String, SecretError> {
        let row = store
            .secret(name)?
            .ok_or_else(|| SecretError::Missing(name.to_string()))?;
        let bytes = self.key.open(name, &row.nonce, &row.ciphertext)?;
        String::from_utf8(bytes).map_err(|_| SecretError::Sealed(name.to_string()))
    }

    /// Whether a secret exists.
    pub fn exists(&self, store: &Store, name: &str) -> Result<bool, SecretError> {
        Ok(store.secret(name)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_name_and_key() {
        let k = SecretKey::from_bytes(&[7; 32]);
        let (n, c) = k.seal("hf-token", b"s3cr3t").unwrap();
        assert!(
            !c.windows(6).any(|w| w == b"s3cr3t"),
            "the value is not in the ciphertext"
        );
        assert_eq!(k.open("hf-token", &n, &c).unwrap(), b"s3cr3t");
        assert!(k.open("other", &n, &c).is_err(), "bound to its name");
        assert!(
            SecretKey::from_bytes(&[8; 32])
                .open("hf-token", &n, &c)
                .is_err()
        );
        let mut tampered = c.clone();
        tampered[0] ^= 1;
        assert!(k.open("hf-token", &n, &tampered).is_err());
        let (n2, _) = k.seal("hf-token", b"s3cr3t").unwrap();
        assert_ne!(n, n2, "a fresh nonce each time");
    }

    #[test]
    fn the_key_file_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        let a = SecretKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (n, c) = a.seal("x", b"v").unwrap();
        let b = SecretKey::load_or_create(&path).unwrap();
        assert_eq!(b.open("x", &n, &c).unwrap(), b"v");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            SecretKey::load_or_create(&path),
            Err(KeyError::Open { .. })
        ));
        std::fs::write(dir.path().join("short.key"), "abcd").unwrap();
        std::fs::set_permissions(
            dir.path().join("short.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert!(matches!(
            SecretKey::load_or_create(&dir.path().join("short.key")),
            Err(KeyError::Malformed { .. })
        ));
    }
}
