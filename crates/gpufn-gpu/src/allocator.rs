//! Whole-card allocation under the GPU-card quota.
//!
//! The seed gives each GPU container the full memory of one card, so an instance holds one whole card;
//! billing uses the spec's `memory_gb`, which is only checked to fit the card. A card marked
//! `shared` (a memory-sharing cluster: `aliyun.com/gpu-mem`) takes several instances while their
//! GB fit its memory; the quota counts cards with any holder.

use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::Notify;

use crate::discovery::Card;

/// Who holds a card.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    /// The lease's own number (a shared card has several holders).
    lease: u64,
    instance: String,
    function: String,
    memory_gb: u32,
}

#[derive(Debug)]
struct State {
    cards: Vec<Card>,
    holders: Vec<Vec<Holder>>,
    quota_cards: u32,
    next_lease: u64,
}

impl State {
    fn used(&self) -> u32 {
        u32::try_from(self.holders.iter().filter(|h| !h.is_empty()).count()).unwrap_or(u32::MAX)
    }
}

/// What an instance asks for.
#[derive(Debug, Clone, Copy)]
pub struct AllocRequest<'a> {
    /// Instance id (shown in `GET /api/v1/gpus`).
    pub instance: &'a str,
    /// Function name.
    pub function: &'a str,
    /// Card type wanted, or any.
    pub card_type: Option<&'a str>,
    /// GPU memory the instance is billed for; the card must have at least this much.
    pub memory_gb: u32,
}

/// Why a card could not be allocated now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// Every card the quota allows is in use.
    #[error("GPU-card quota exhausted: {used} of {quota} cards in use")]
    QuotaExceeded {
        /// Cards in use.
        used: u32,
        /// The quota.
        quota: u32,
    },
    /// Suitable cards exist but all are held.
    #[error("no free GPU card fits (type {card_type}, >= {memory_gb} GB): all are in use")]
    NoFreeCard {
        /// Type wanted (`any` when unspecified).
        card_type: String,
        /// Memory wanted.
        memory_gb: u32,
    },
    /// No card on this machine could ever fit.
    #[error(transparent)]
    NeverFits(#[from] FitError),
    /// gpufn granted a card but the cluster's scheduler has no node for the instance (cards held
    /// by others, taints, selectors): its reason.
    #[error("the cluster has no place for it: {reason}")]
    Unplaced {
        /// The cluster scheduler's words.
        reason: String,
    },
}

/// Why a GPU request can never be met on this machine (checked at deploy time).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// The machine has no GPUs at all.
    #[error("this server has no GPUs (start it with --simulate-gpus on a machine without any)")]
    NoGpus,
    /// No card of the requested type.
    #[error("no card of type {wanted:?} on this server (it has: {have})")]
    NoSuchType {
        /// Type wanted.
        wanted: String,
        /// Types present, comma-separated.
        have: String,
    },
    /// Cards of the type exist but are all too small.
    #[error("{memory_gb} GB is more than the largest matching card has ({largest} GB)")]
    TooLarge {
        /// Memory wanted.
        memory_gb: u32,
        /// Largest matching card.
        largest: u32,
    },
}

impl FitError {
    /// The spec field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            FitError::NoGpus | FitError::NoSuchType { .. } => "gpu.type",
            FitError::TooLarge { .. } => "gpu.memory_gb",
        }
    }
}

/// A card and who holds it, as `GET /api/v1/gpus` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CardStatus {
    /// Card index.
    pub index: u32,
    /// Card type.
    #[serde(rename = "type")]
    pub card_type: String,
    /// Card memory.
    pub memory_gb: u32,
    /// GPU memory billed to the holder (0 when free).
    pub allocated_gb: u32,
    /// Holding instance, if any (the first, on a shared card).
    pub instance: Option<String>,
    /// Holding function, if any (the first, on a shared card).
    pub function: Option<String>,
    /// Shared by several instances by memory (a memory-sharing cluster).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Every holding instance, on a shared card.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Declared with `--simulate-gpus`.
    pub simulated: bool,
    /// The cluster node it is on (the Kubernetes backend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// The card allocator, shared by every function. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Allocator {
    state: Arc<Mutex<State>>,
    released: Arc<Notify>,
}

/// One card held by one instance. Dropping it gives the card back.
#[derive(Debug)]
pub struct GpuLease {
    index: u32,
    lease: u64,
    card_type: String,
    allocator: Allocator,
}

impl GpuLease {
    /// Index of the held card.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Type of the held card.
    pub fn card_type(&self) -> &str {
        &self.card_type
    }
}

impl Drop for GpuLease {
    fn drop(&mut self) {
        self.allocator.release(self.index, self.lease);
    }
}

impl Allocator {
    /// An allocator over `cards` with a quota of `quota_cards` cards in use at once.
    pub fn new(cards: Vec<Card>, quota_cards: u32) -> Self {
        let holders = vec![Vec::new(); cards.len()];
        Self {
            state: Arc::new(Mutex::new(State {
                cards,
                holders,
                quota_cards,
                next_lease: 0,
            })),
            released: Arc::new(Notify::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the holder table half-written (every update
        // is a single assignment), so a poisoned lock is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a card that fits `req`: room on a shared card already in use first (it costs no
    /// quota), else the smallest fitting free card, lowest index first.
    pub fn allocate(&self, req: AllocRequest<'_>) -> Result<GpuLease, AllocError> {
        let mut st = self.lock();
        fits(&st.cards, req.card_type, req.memory_gb)?;
        let has_room = |c: &Card, h: &[Holder]| {
            card_fits(c, req.card_type, req.memory_gb)
                && if c.shared {
                    h.iter().map(|x| x.memory_gb).sum::<u32>() + req.memory_gb <= c.memory_gb
                } else {
                    h.is_empty()
                }
        };
        let sharing = st
            .cards
            .iter()
            .zip(&st.holders)
            .filter(|(c, h)| !h.is_empty() && has_room(c, h))
            .min_by_key(|(c, _)| (c.memory_gb, c.index))
            .map(|(c, _)| (c.index, c.card_type.clone()));
        let best = match sharing {
            Some(b) => Some(b),
            None => {
                let used = st.used();
                if used >= st.quota_cards {
                    return Err(AllocError::QuotaExceeded {
                        used,
                        quota: st.quota_cards,
                    });
                }
                st.cards
                    .iter()
                    .zip(&st.holders)
                    .filter(|(c, h)| h.is_empty() && has_room(c, h))
                    .min_by_key(|(c, _)| (c.memory_gb, c.index))
                    .map(|(c, _)| (c.index, c.card_type.clone()))
            }
        };
        let Some((index, card_type)) = best else {
            return Err(AllocError::NoFreeCard {
                card_type: req.card_type.unwrap_or("any").to_string(),
                memory_gb: req.memory_gb,
            });
        };
        let slot = position(&st.cards, index);
        st.next_lease += 1;
        let lease = st.next_lease;
        st.holders[slot].push(Holder {
            lease,
            instance: req.instance.to_string(),
            function: req.function.to_string(),
            memory_gb: req.memory_gb,
        });
        Ok(GpuLease {
            index,
            lease,
            card_type,
            allocator: self.clone(),
        })
    }

    fn release(&self, index: u32, lease: u64) {
        {
            let mut st = self.lock();
            let slot = position(&st.cards, index);
            st.holders[slot].retain(|h| h.lease != lease);
        }
        self.released.notify_one();
    }

    /// Whether a request could ever be met here (deploy-time check).
    pub fn check_fits(&self, card_type: Option<&str>, memory_gb: u32) -> Result<(), FitError> {
        fits(&self.lock().cards, card_type, memory_gb)
    }

    /// Resolves when a card has been given back since the last call (a stored permit).
    pub async fn released(&self) {
        self.released.notified().await;
    }

    /// The quota, in cards.
    pub fn quota(&self) -> u32 {
        self.lock().quota_cards
    }

    /// Changes the quota. Lowering it below the cards in use stops nothing: it refuses new
    /// allocations until enough are given back.
    pub fn set_quota(&self, cards: u32) {
        self.lock().quota_cards = cards;
        // A raised quota may let waiting functions start.
        self.released.notify_one();
    }

    /// Cards in use.
    pub fn used(&self) -> u32 {
        self.lock().used()
    }

    /// All cards and their holders.
    pub fn snapshot(&self) -> Vec<CardStatus> {
        let st = self.lock();
        st.cards
            .iter()
            .zip(&st.holders)
            .map(|(c, h)| CardStatus {
                index: c.index,
                card_type: c.card_type.clone(),
                memory_gb: c.memory_gb,
                allocated_gb: h.iter().map(|h| h.memory_gb).sum(),
                instance: h.first().map(|h| h.instance.clone()),
                function: h.first().map(|h| h.function.clone()),
                simulated: c.simulated,
                node: c.node.clone(),
                shared: c.shared,
                instances: if c.shared {
                    h.iter().map(|h| h.instance.clone()).collect()
                } else {
                    Vec::new()
                },
            })
            .collect()
    }

    /// Number of cards on the machine.
    pub fn card_count(&self) -> usize {
        self.lock().cards.len()
    }
}

fn position(cards: &[Card], index: u32) -> usize {
    // Cards are discovered with indexes 0..n in order, but do not rely on it.
    cards
        .iter()
        .position(|c| c.index == index)
        .unwrap_or(index as usize)
}

fn card_fits(card: &Card, card_type: Option<&str>, memory_gb: u32) -> bool {
    card_type.is_none_or(|t| t == card.card_type) && card.memory_gb >= memory_gb
}

fn fits(cards: &[Card], card_type: Option<&str>, memory_gb: u32) -> Result<(), FitError> {
    if cards.is_empty() {
        return Err(FitError::NoGpus);
    }
    let matching: Vec<&Card> = cards
        .iter()
        .filter(|c| card_type.is_none_or(|t| t == c.card_type))
        .collect();
    if matching.is_empty() {
        let mut have: Vec<&str> = cards.iter().map(|c| c.card_type.as_str()).collect();
        have.dedup();
        return Err(FitError::NoSuchType {
            wanted: card_type.unwrap_or_default().to_string(),
            have: have.join(", "),
        });
    }
    let largest = matching.iter().map(|c| c.memory_gb).max().unwrap_or(0);
    if largest < memory_gb {
        return Err(FitError::TooLarge { memory_gb, largest });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
