//! `gpufn simulate`: replays a trace through the scaling and keep-alive code of the live server.
//!
//! - [`trace`] reads the Alibaba GenAI, Azure Functions 2019, Azure LLM 2023 traces and plain CSV
//!   into one [`trace::Trace`] of requests.
//! - [`engine`] is a deterministic discrete-event simulation of gpufn's pools: it asks
//!   `gpufn_policy::instances_to_start` how many instances to start and `gpufn_policy::keep_alive`
//!   which idle ones to stop — the very functions the server calls — and meters with
//!   `gpufn_metering`.
//! - [`report`] turns results into a table, JSON and a Pareto plot (SVG).
//!
//! Architecture invariant: no clock and no randomness that is not seeded; the same trace and
//! policy always give the same numbers.

pub mod engine;
pub mod report;
pub mod trace;

pub use engine::{Policy, QuotaFull, SimConfig, SimResult, Step, record, simulate};
pub use trace::{Format, Trace, TraceError};
