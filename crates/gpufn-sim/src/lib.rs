//! `gpufn simulate`: replays a trace through the scaling and keep-alive code of the live server.
//!
//! - [`trace`] reads the Alibaba GenAI, Azure Functions 2019, Azure LLM 2023 traces and plain CSV
//!   into one [`trace::Trace`] of requests.
//! - [`engine`] is a deterministic discrete-event driver of `gpufn_sched::Scheduler`, the scheduler
//!   the server runs: it moves virtual time (arrivals, load times, service times) and adds up what
//!   the scheduler bills; every decision is the scheduler's.
//! - [`report`] turns results into a table, JSON and a Pareto plot (SVG).
//!
//! Architecture invariant: no clock and no randomness that is not seeded; the same trace and
//! policy always give the same numbers.

pub mod engine;
pub mod report;
pub mod trace;

pub use engine::{
    Policy, QuotaFull, SimConfig, SimResult, Step, record, simulate, simulate_scheduled,
};
pub use trace::{Format, Trace, TraceError};
