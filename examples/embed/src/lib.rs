//! Sentence embeddings with all-MiniLM-L6-v2 (candle's BERT + the `tokenizers` crate), the way
//! sentence-transformers computes them: tokens → BERT → mean over real tokens → L2 normalize.
//!
//! [`Embedder`] is the model; [`Batcher`] is dynamic batching: texts of concurrent requests are run
//! through the model together, up to `max_batch` texts, waiting at most `max_wait` for company.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};
use tokio::sync::{mpsc, oneshot};

/// Dimensions of an all-MiniLM-L6-v2 embedding.
pub const DIM: usize = 384;
/// The model's `max_seq_length` (sentence_bert_config.json): longer texts are truncated.
pub const MAX_TOKENS: usize = 256;

/// The loaded model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Embedder {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<Self> {
        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_str(
            &std::fs::read_to_string(&config_path)
                .with_context(|| format!("reading {}", config_path.display()))?,
        )
        .with_context(|| format!("parsing {}", config_path.display()))?;
        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("loading tokenizer.json: {e}"))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
        let weights = dir.join("model.safetensors");
        // SAFETY (of the mmap inside): the weights file is not modified while the server runs.
        #[allow(unsafe_code)]
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .with_context(|| format!("loading {}", weights.display()))?;
        let model = BertModel::load(vb, &config).context("building BERT from the weights")?;
        Ok(Embedder {
            model,
            tokenizer,
            device,
        })
    }

    /// The device the model runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// One normalized 384-d vector per text, computed in one forward pass.
    pub fn embed(&self, texts: &[String]) -> anyhow::Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?;
        let ids: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_ids(), &self.device))
            .collect::<candle_core::Result<_>>()?;
        let masks: Vec<Tensor> = encodings
            .iter()
            .map(|e| Tensor::new(e.get_attention_mask(), &self.device))
            .collect::<candle_core::Result<_>>()?;
        let ids = Tensor::stack(&ids, 0)?;
        let mask = Tensor::stack(&masks, 0)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens only (padding masked out), as sentence-transformers' Pooling.
        let mask_f = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask_f)?.sum(1)?;
        let counts = mask_f.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        let normalized = mean.broadcast_div(&norms)?;
        let out: Vec<Vec<f32>> = normalized.to_vec2()?;
        if out.first().is_some_and(|v| v.len() != DIM) {
            bail!("the model gave {}-d vectors, not {DIM}", out[0].len());
        }
        Ok(out)
    }
}

/// Picks the device: CUDA when built with `cuda` and `CUDA_VISIBLE_DEVICES` names a card (gpufn
/// sets it to the instance's card), else the CPU.
pub fn pick_device() -> Device {
    #[cfg(feature = "cuda")]
    if std::env::var("CUDA_VISIBLE_DEVICES").is_ok_and(|v| !v.is_empty()) {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => eprintln!("embed: CUDA unavailable ({e}); using the CPU"),
        }
    }
    Device::Cpu
}

/// Cosine similarity (the vectors need not be normalized).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb).max(1e-12)
}

/// What the batcher runs: texts in, one vector per text out.
pub type EmbedFn = dyn Fn(&[String]) -> Result<Vec<Vec<f32>>, String> + Send + Sync;

struct Job {
    texts: Vec<String>,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, String>>,
}

/// Counters of what the batcher did (`GET /stats`).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Forward passes run.
    pub batches: AtomicU64,
    /// Texts embedded.
    pub texts: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Largest batch so far.
    pub largest: AtomicU64,
}

/// Dynamic batching in front of an [`EmbedFn`].
#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<Job>,
    stats: Arc<BatchStats>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("stats", &self.stats)
            .finish()
    }
}

impl Batcher {
    /// A batcher that has not started yet: jobs queue until [`Batcher::run`] is spawned. Tests use
    /// this to queue work first and see exactly how it is grouped.
    pub fn new(queue: usize) -> (Batcher, BatchLoop) {
        let (tx, rx) = mpsc::channel(queue);
        let stats = Arc::new(BatchStats::default());
        (
            Batcher {
                tx,
                stats: stats.clone(),
            },
            BatchLoop { rx, stats },
        )
    }

    /// Embeds `texts`, sharing a forward pass with other requests when they come together.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job { texts, reply })
            .await
            .map_err(|_| "the batcher has stopped".to_string())?;
        rx.await
            .map_err(|_| "the batcher dropped the request".to_string())?
    }

    /// What the batcher has done.
    pub fn stats(&self) -> &BatchStats {
        &self.stats
    }
}

/// The batching loop; run it with [`BatchLoop::run`].
#[derive(Debug)]
pub struct BatchLoop {
    rx: mpsc::Receiver<Job>,
    stats: Arc<BatchStats>,
}

impl BatchLoop {
    /// Takes jobs until every [`Batcher`] is dropped. A batch starts with the first waiting job,
    /// takes every job already queued, then waits up to `max_wait` for more, until `max_batch`
    /// texts; the model runs on a blocking thread; each job gets its own slice of the output.
    pub async fn run(mut self, embed: Arc<EmbedFn>, max_batch: usize, max_wait: Duration) {
        let max_batch = max_batch.max(1);
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match self.rx.recv().await {
                    Some(j) => j,
                    None => return,
                },
            };
            let mut jobs = vec![first];
            let mut count = jobs[0].texts.len();
            let deadline = Instant::now() + max_wait;
            while count < max_batch {
                let next = match self.rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            None
                        } else {
                            tokio::time::timeout(left, self.rx.recv())
                                .await
                                .ok()
                                .flatten()
                        }
                    }
                };
                let Some(job) = next else { break };
                if count + job.texts.len() > max_batch {
                    // Does not fit: it opens the next batch.
                    carry = Some(job);
                    break;
                }
                count += job.texts.len();
                jobs.push(job);
            }
            self.run_batch(&embed, jobs, max_batch).await;
        }
    }

    async fn run_batch(&self, embed: &Arc<EmbedFn>, jobs: Vec<Job>, max_batch: usize) {
        let texts: Vec<String> = jobs.iter().flat_map(|j| j.texts.iter().cloned()).collect();
        let embed = embed.clone();
        let n = texts.len();
        // One request larger than max_batch runs in max_batch-sized passes.
        let result = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(texts.len());
            let mut passes = 0u64;
            for chunk in texts.chunks(max_batch) {
                out.extend(embed(chunk)?);
                passes += 1;
            }
            Ok::<_, String>((out, passes))
        })
        .await
        .map_err(|e| format!("the model panicked: {e}"))
        .and_then(|r| r);
        let s = &self.stats;
        s.requests.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        s.texts.fetch_add(n as u64, Ordering::Relaxed);
        s.largest
            .fetch_max(n.min(max_batch) as u64, Ordering::Relaxed);
        match result {
            Ok((mut vectors, passes)) => {
                s.batches.fetch_add(passes, Ordering::Relaxed);
                for job in jobs.into_iter().rev() {
                    let mine = vectors.split_off(vectors.len() - job.texts.len());
                    let _ = job.reply.send(Ok(mine));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model: each "vector" is [batch size, text length], so the test sees both the grouping
    /// and that every request got its own texts back in order.
    fn fake() -> Arc<EmbedFn> {
        Arc::new(|texts: &[String]| {
            Ok(texts
                .iter()
                .map(|t| vec![texts.len() as f32, t.len() as f32])
                .collect())
        })
    }

    async fn queued_then_run(
        requests: &[Vec<&str>],
        max_batch: usize,
    ) -> (Vec<Vec<Vec<f32>>>, u64) {
        let (batcher, lp) = Batcher::new(64);
        let mut handles = Vec::new();
        for r in requests {
            let b = batcher.clone();
            let texts: Vec<String> = r.iter().map(ToString::to_string).collect();
            handles.push(tokio::spawn(async move { b.embed(texts).await }));
        }
        // Every job is in the queue before the loop starts.
        while batcher.tx.capacity() > 64 - requests.len() {
            tokio::task::yield_now().await;
        }
        tokio::spawn(lp.run(fake(), max_batch, Duration::from_millis(0)));
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("join").expect("embed"));
        }
        (out, batcher.stats().batches.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_forward_pass() {
        let reqs: Vec<Vec<&str>> = vec![vec!["a"], vec!["bb", "ccc"], vec!["dddd"], vec!["e"]];
        let (out, batches) = queued_then_run(&reqs, 32).await;
        assert_eq!(batches, 1);
        // All five texts went through together (batch size 5), each request got its own back.
        assert_eq!(out[0], vec![vec![5.0, 1.0]]);
        assert_eq!(out[1], vec![vec![5.0, 2.0], vec![5.0, 3.0]]);
        assert_eq!(out[2], vec![vec![5.0, 4.0]]);
        assert_eq!(out[3], vec![vec![5.0, 1.0]]);
    }

    #[tokio::test]
    async fn batches_never_exceed_max_batch() {
        let reqs: Vec<Vec<&str>> = vec![vec!["a", "b"], vec!["c", "d"], vec!["e", "f"]];
        let (out, batches) = queued_then_run(&reqs, 4).await;
        // 2 + 2 fit in 4; the third request opens the next batch.
        assert_eq!(batches, 2);
        assert_eq!(out[0][0][0], 4.0);
        assert_eq!(out[2][0][0], 2.0);
        // One request bigger than max_batch is cut into passes of max_batch.
        let (out, batches) = queued_then_run(&[vec!["a", "b", "c", "d", "e"]], 2).await;
        assert_eq!(batches, 3);
        let sizes: Vec<f32> = out[0].iter().map(|v| v[0]).collect();
        assert_eq!(sizes, [2.0, 2.0, 2.0, 2.0, 1.0]);
    }

    #[test]
    fn cosine_of_known_vectors() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 0.0]) - 1.0).abs() < 1e-6);
        assert!(cosine(&[1.0, 0.0], &[0.0, 1.0]).abs() < 1e-6);
        assert!((cosine(&[1.0, 1.0], &[-1.0, -1.0]) + 1.0).abs() < 1e-6);
    }
}
