//! Metering: what a GPU function costs, as pure arithmetic on times and prices.
//!
//! - [`BusyTracker`] turns request starts and ends on one instance into busy periods (maximal
//!   intervals with at least one request in flight), so overlapping requests are billed once.
//! - [`billed_seconds`] rounds busy time **up** to whole seconds: per-second billing (a period
//!   inside a second already billed adds nothing; see [`BusyTracker`]).
//! - [`PeriodBatch`] merges an instance's periods into one record per window, with the same
//!   totals, so a busy instance does not write a record per request.
//! - [`Prices`] and [`InstanceBill`] price active GB-seconds, and for provisioned instances the
//!   idle rest of their lifetime.
//! - [`estimate`] is the seed's cost comparison against a dedicated GPU server.
//!
//! Architecture invariant: no clock, no I/O. Callers pass times in; the server feeds the same
//! functions that the unit and property tests check.

mod billing;
mod estimate;

pub use billing::{BusyTracker, ClosedPeriod, InstanceBill, PeriodBatch, Prices, billed_seconds};
pub use estimate::{Estimate, EstimateInput, estimate};
