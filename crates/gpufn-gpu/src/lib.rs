//! GPUs: what cards this machine has ([`discovery`]) and who holds each one ([`allocator`]).
//!
//! Architecture invariant: a card is held by at most one instance at a time, and a card returns to
//! the pool exactly when its [`GpuLease`] is dropped — there is no other way to release one, so no
//! error path can leak a card.

pub mod allocator;
pub mod discovery;

pub use allocator::{AllocError, AllocRequest, Allocator, CardStatus, FitError, GpuLease};
pub use discovery::{
    Card, DiscoveryError, GpuDiscovery, NvmlDiscovery, SimulatedGpus, parse_simulated,
};
