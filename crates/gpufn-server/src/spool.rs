//! An FC request body (`fc::entry`), received before anything reads it: kept in memory when small, written to an
//! unnamed temporary file under the data directory when large (the file is gone when the body is
//! dropped, whatever path the request takes), hashed on the way for the signature check.
//!
//! Why: a signed caller may send 64 MiB documents; eight of them at once held 512 MiB in gpufn
//! while they trickled in. Now a body in flight costs one chunk of memory, and the bodies that must
//! be read whole (function documents, async payloads) are read under [`MemoryBudget`], so the memory
//! they take at once is bounded whatever the number of callers. A sync invocation's payload goes
//! to the instance from the file.

use std::path::Path;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bodies up to this size stay in memory.
pub const IN_MEMORY: usize = 256 << 10;

/// Why a body could not be received.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// Over the call's limit (bytes).
    #[error("the body is over {} MiB for this call", .0 >> 20)]
    TooLarge(u64),
    /// The caller's stream failed (closed early, framing, body timeout).
    #[error("the request body could not be read")]
    Caller,
    /// gpufn could not write the spool file.
    #[error("spooling the request body: {0}")]
    Disk(#[from] std::io::Error),
}

/// A received body: its SHA-256, its length, and where its bytes are.
#[derive(Debug)]
pub struct Spooled {
    sha256: [u8; 32],
    len: u64,
    data: Data,
}

#[derive(Debug)]
enum Data {
    Memory(Bytes),
    File(tokio::fs::File),
}

/// Receives `body` (at most `limit` bytes); past [`IN_MEMORY`] the bytes go to a file in `dir`.
pub async fn spool(body: Body, limit: u64, dir: &Path) -> Result<Spooled, SpoolError> {
    let mut body = body;
    let mut hash = Sha256::new();
    let mut len: u64 = 0;
    let mut memory: Vec<u8> = Vec::new();
    let mut file: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| SpoolError::Caller)?;
        let Ok(chunk) = frame.into_data() else {
            continue; // trailers carry nothing an FC call reads
        };
        len = len.saturating_add(chunk.len() as u64);
        if len > limit {
            return Err(SpoolError::TooLarge(limit));
        }
        hash.update(&chunk);
        match file.as_mut() {
            Some(f) => f.write_all(&chunk).await?,
            None if memory.len() + chunk.len() <= IN_MEMORY => memory.extend_from_slice(&chunk),
            None => {
                tokio::fs::create_dir_all(dir).await?;
                let dir = dir.to_path_buf();
                // Unnamed (O_TMPFILE or unlinked at once): nothing to clean up on any path.
                let std_file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                    .await
                    .map_err(std::io::Error::other)??;
                let mut f = tokio::io::BufWriter::with_capacity(
                    64 << 10,
                    tokio::fs::File::from_std(std_file),
                );
                f.write_all(&memory).await?;
                f.write_all(&chunk).await?;
                memory = Vec::new();
                file = Some(f);
            }
        }
    }
    let data = match file {
        Some(mut f) => {
            f.flush().await?;
            let mut f = f.into_inner();
            f.rewind().await?;
            Data::File(f)
        }
        None => Data::Memory(Bytes::from(memory)),
    };
    Ok(Spooled {
        sha256: hash.finalize().into(),
        len,
        data,
    })
}

impl Spooled {
    /// Whether the body is what the signed `x-acs-content-sha256` says.
    pub fn matches(&self, content_sha256: &str) -> bool {
        hex::encode(self.sha256).eq_ignore_ascii_case(content_sha256.trim())
    }

    /// Whether its bytes are on disk.
    pub fn on_disk(&self) -> bool {
        matches!(self.data, Data::File(_))
    }

    /// The body as a stream (from the file when spooled): for a payload that is only passed on.
    pub fn into_body(self) -> Body {
        match self.data {
            Data::Memory(b) => Body::from(b),
            Data::File(f) => {
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 64 << 10))
            }
        }
    }

    /// The whole body in memory. Callers hold a [`MemoryBudget`] permit for a spooled body.
    pub async fn into_bytes(self) -> std::io::Result<Bytes> {
        match self.data {
            Data::Memory(b) => Ok(b),
            Data::File(mut f) => {
                use tokio::io::AsyncReadExt;
                let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
                f.read_to_end(&mut out).await?;
                Ok(Bytes::from(out))
            }
        }
    }
}

/// How many MiB of large bodies may be read into memory at once, shared by all FC callers; a
/// caller over it waits for its turn (its body is safe on disk meanwhile).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    mib: Arc<Semaphore>,
    total: u32,
}

impl MemoryBudget {
    /// A budget of `mib` MiB (at least 1).
    pub fn new(mib: u32) -> Self {
        let total = mib.max(1);
        MemoryBudget {
            mib: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Waits until `body` may be read whole: nothing for a body kept in memory (it already is);
    /// its size in MiB (rounded up; the whole budget at most) for a spooled one.
    pub async fn reserve(&self, body: &Spooled) -> Option<OwnedSemaphorePermit> {
        if !body.on_disk() {
            return None;
        }
        let mib = u32::try_from(body.len.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total);
        self.mib.clone().acquire_many_owned(mib).await.ok()
    }

    /// MiB not reserved now.
    #[cfg(test)]
    fn available(&self) -> usize {
        self.mib.available_permits()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;

    fn body_of(chunks: Vec<Vec<u8>>) -> Body {
        let stream = futures_util::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
        );
        Body::from_stream(stream)
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory_large_ones_go_to_disk_with_the_same_hash() {
        let dir = tempfile::tempdir().unwrap();
        let small = vec![7u8; 1000];
        let s = spool(body_of(vec![small.clone()]), 1 << 20, dir.path())
            .await
            .unwrap();
        assert!(!s.on_disk());
        assert!(s.matches(&hex::encode(Sha256::digest(&small))));
        assert_eq!(s.into_bytes().await.unwrap(), small);

        let chunk = vec![3u8; 100 << 10];
        let whole: Vec<u8> = std::iter::repeat_n(chunk.clone(), 5).flatten().collect();
        let s = spool(body_of(vec![chunk; 5]), 1 << 20, dir.path())
            .await
            .unwrap();
        assert!(s.on_disk(), "500 KiB is over the in-memory size");
        assert_eq!(s.len, whole.len() as u64);
        assert!(s.matches(&hex::encode(Sha256::digest(&whole)).to_uppercase()));
        assert!(!s.matches(&hex::encode(Sha256::digest(b"other"))));
        let streamed = s.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(streamed, whole);
        // Unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_as_soon_as_it_is_passed() {
        let dir = tempfile::tempdir().unwrap();
        let err = spool(body_of(vec![vec![0; 600 << 10]; 3]), 1 << 20, dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, SpoolError::TooLarge(_)), "{err:?}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_broken_stream_is_the_callers_fault() {
        let dir = tempfile::tempdir().unwrap();
        let stream = futures_util::stream::iter(vec![
            Ok(Bytes::from(vec![1u8; 10])),
            Err(std::io::Error::other("reset")),
        ]);
        let err = spool(Body::from_stream(stream), 1 << 20, dir.path())
            .await
            .unwrap_err();
        assert!(matches!(err, SpoolError::Caller));
    }

    #[tokio::test]
    async fn the_budget_bounds_what_is_read_whole_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let budget = MemoryBudget::new(4);
        let big = || body_of(vec![vec![1u8; 3 << 20]]);
        let a = spool(big(), 64 << 20, dir.path()).await.unwrap();
        let b = spool(big(), 64 << 20, dir.path()).await.unwrap();
        let held = budget.reserve(&a).await.expect("permit");
        assert_eq!(budget.available(), 1);
        // The second 3 MiB body waits until the first is let go.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(&b).await.map(|p| p.num_permits()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        assert_eq!(waiting.await.unwrap(), Some(3));
        // A body larger than the budget takes all of it rather than waiting forever.
        let huge = spool(body_of(vec![vec![0u8; 6 << 20]]), 64 << 20, dir.path())
            .await
            .unwrap();
        assert_eq!(budget.reserve(&huge).await.unwrap().num_permits(), 4);
        // In memory: no reservation.
        let small = spool(body_of(vec![vec![0u8; 10]]), 64 << 20, dir.path())
            .await
            .unwrap();
        assert!(budget.reserve(&small).await.is_none());
    }
}
