//! One instance as the scheduler tracks it.

use std::time::Instant;

use gpufn_metering::{BusyTracker, ClosedPeriod, PeriodBatch};

use crate::{InstanceId, State};

/// One instance as the scheduler tracks it.
#[derive(Debug)]
pub struct Instance<P> {
    pub(crate) id: InstanceId,
    pub(crate) revision: i64,
    pub(crate) state: State,
    pub(crate) in_flight: u32,
    pub(crate) served: u64,
    pub(crate) idle_since: Instant,
    pub(crate) ready_at: Option<Instant>,
    pub(crate) created: Instant,
    pub(crate) provisioned: bool,
    /// Since when it counts as provisioned, and the busy seconds it had been billed by then: its
    /// idle time at the idle price is counted from there.
    pub(crate) provisioned_since: Instant,
    pub(crate) provisioned_busy_base: u64,
    pub(crate) memory_gb: u32,
    /// While starting: why the runtime's own placement (a cluster's scheduler) has no place for
    /// it yet.
    pub(crate) unplaced: Option<String>,
    pub(crate) busy: BusyTracker,
    pub(crate) batch: PeriodBatch,
    pub(crate) payload: P,
}

impl<P> Instance<P> {
    /// Its id.
    pub fn id(&self) -> InstanceId {
        self.id
    }
    /// The function revision it runs.
    pub fn revision(&self) -> i64 {
        self.revision
    }
    /// Its lifecycle state.
    pub fn state(&self) -> State {
        self.state
    }
    /// Requests in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }
    /// When it last became idle (its last request ended, or it became ready).
    pub fn idle_since(&self) -> Instant {
        self.idle_since
    }
    /// Requests served (counted when their slot is given back).
    pub fn served(&self) -> u64 {
        self.served
    }
    /// When it became ready.
    pub fn ready_at(&self) -> Option<Instant> {
        self.ready_at
    }
    /// When its card was granted.
    pub fn created(&self) -> Instant {
        self.created
    }
    /// Started for `min_instances`: billed for its whole lifetime.
    pub fn provisioned(&self) -> bool {
        self.provisioned
    }
    /// Seconds it has been idle while provisioned, up to `now` (billed at the idle price), with
    /// `open_busy_s` more busy seconds not yet closed.
    pub fn provisioned_idle_s(&self, now: Instant, open_busy_s: u64) -> u64 {
        if !self.provisioned {
            return 0;
        }
        let span =
            gpufn_metering::billed_seconds(now.saturating_duration_since(self.provisioned_since));
        let busy =
            (self.busy.billed_total() + open_busy_s).saturating_sub(self.provisioned_busy_base);
        span.saturating_sub(busy)
    }
    /// GPU memory it is billed by.
    pub fn memory_gb(&self) -> u32 {
        self.memory_gb
    }
    /// Its current busy period, for live usage.
    pub fn busy(&self) -> &BusyTracker {
        &self.busy
    }
    /// Busy periods billed but not yet handed out as [`Bill::Busy`].
    pub fn pending_bill(&self) -> Option<&ClosedPeriod> {
        self.batch.pending()
    }
    /// What the caller keeps with it.
    pub fn payload(&self) -> &P {
        &self.payload
    }
    /// What the caller keeps with it.
    pub fn payload_mut(&mut self) -> &mut P {
        &mut self.payload
    }
    /// The state users see.
    pub fn public_state(&self) -> &'static str {
        self.state.public(self.in_flight)
    }

    pub(crate) fn has_free_slot(&self, concurrency: u32, revision: i64) -> bool {
        self.state == State::Ready && self.revision == revision && self.in_flight < concurrency
    }

    /// Any state → `Draining`; true when it should be stopped now (nothing in flight).
    pub(crate) fn drain(&mut self) -> bool {
        self.state = State::Draining;
        self.in_flight == 0
    }
}
