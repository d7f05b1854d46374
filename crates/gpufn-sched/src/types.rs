//! What goes in and out of the scheduler: ids, settings, events, effects, refusals, bills.

use std::fmt;
use std::time::{Duration, Instant};

use gpufn_metering::ClosedPeriod;

/// An instance, named by the caller (see [`Cards::allocate`]): the server derives its instance
/// names from it, the simulator counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub u64);

/// A queued request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaiterId(pub u64);

/// How long idle instances are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepAlive {
    /// A fixed idle timeout (`keep_alive: fixed`, `idle_timeout_s`). `Duration::MAX` keeps
    /// instances forever.
    Fixed(Duration),
    /// The hybrid histogram policy (`keep_alive: histogram`): learns the function's idle times in
    /// bins `bin` wide and falls back on `fallback` until they are representative.
    Histogram {
        /// The fixed keep-alive while the histogram is not representative.
        fallback: Duration,
        /// Width of one histogram bin.
        bin: Duration,
    },
    /// The predictive policy (`keep_alive: predictive`): each idle period, the cheapest of
    /// release / keep warm for k / release and pre-warm over the function's recent idle gaps, a
    /// cold start priced at `cold_cost` of card time ([`gpufn_policy::predictive_decision`]);
    /// `fallback` until it has seen a few gaps.
    Predictive {
        /// The fixed keep-alive before the function has a history.
        fallback: Duration,
        /// What one cold start is worth, in seconds of a card held.
        cold_cost: Duration,
    },
    /// The caller plans each idle period with [`Scheduler::plan_idle`] when told
    /// [`Effect::Idle`] (an offline policy that knows the future: the simulator's oracle).
    /// `busy` is the keep-alive of an idle instance while others of the function work.
    Planned {
        /// Keep-alive of an idle instance beside busy ones.
        busy: Duration,
    },
}

/// The function's scheduling settings (from its spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Requests one instance serves at once (>= 1).
    pub concurrency: u32,
    /// Requests that may wait for a slot; one more is refused with [`Refusal::QueueFull`].
    pub max_queue: u32,
    /// Provisioned instances, kept at all times and billed for their whole lifetime.
    pub min_instances: u32,
    /// Most live instances of the current revision.
    pub max_instances: u32,
    /// Keep-alive of idle instances.
    pub keep_alive: KeepAlive,
    /// GPU memory each instance is billed by.
    pub memory_gb: u32,
    /// Busy periods starting within this window of each other are billed as one record.
    pub batch_window: Duration,
    /// Target tracking of provisioned instances, when on.
    pub target: Option<TargetTracking>,
}

/// Target tracking: keep enough provisioned instances that the function's load (requests in
/// flight and waiting, averaged over about a minute) comes to `utilization_permille` / 1000 of
/// their capacity, at most `max_provisioned`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetTracking {
    /// The target share of capacity, in thousandths.
    pub utilization_permille: u32,
    /// Most provisioned instances it asks for.
    pub max_provisioned: u32,
}

/// An instance's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Card allocated, not yet ready (pulling, starting, loading its model).
    Starting,
    /// Serving (idle or busy).
    Ready,
    /// Takes no new requests; stopped once the ones in flight are done.
    Draining,
}

impl State {
    /// The name users see; `busy` is a ready instance with requests in flight.
    pub fn public(self, in_flight: u32) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Ready if in_flight > 0 => "busy",
            State::Ready => "ready",
            State::Draining => "draining",
        }
    }
}

/// Why a request got no slot. `E` is why a card could not be had (the GPU allocator's error in
/// the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal<E> {
    /// `max_queue` requests are already waiting.
    QueueFull {
        /// The bound.
        max_queue: u32,
    },
    /// Waited the queue timeout without a slot.
    QueueTimeout {
        /// How long it waited.
        waited: Duration,
        /// Why no instance could be started, when that was the reason.
        blocked: Option<E>,
    },
    /// The instance started for this request failed to become ready.
    StartFailed {
        /// What happened.
        reason: String,
        /// True when the startup deadline passed.
        timed_out: bool,
    },
    /// The function was deleted while the request waited.
    Deleted,
    /// The server is shutting down.
    ShuttingDown,
}

impl<E: fmt::Display> fmt::Display for Refusal<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::QueueFull { max_queue } => write!(
                f,
                "{max_queue} requests are already queued for this function (scaling.max_queue)"
            ),
            Refusal::QueueTimeout { waited, blocked } => {
                write!(
                    f,
                    "no instance slot within scaling.queue_timeout_s ({}s)",
                    waited.as_secs()
                )?;
                match blocked {
                    Some(b) => write!(f, ": {b}"),
                    None => Ok(()),
                }
            }
            Refusal::StartFailed { reason, .. } => write!(f, "cold start failed: {reason}"),
            Refusal::Deleted => f.write_str("the function was deleted"),
            Refusal::ShuttingDown => f.write_str("the server is shutting down"),
        }
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for Refusal<E> {}

/// A slot handed to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The instance; the caller gives the slot back with [`Scheduler::release`].
    pub instance: InstanceId,
    /// The request waited for this instance to start (a cold start).
    pub cold: bool,
    /// When the instance became ready.
    pub ready_at: Option<Instant>,
}

/// A billing record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bill {
    /// Busy periods of one instance (one or more, batched).
    Busy {
        /// The instance.
        instance: InstanceId,
        /// The period(s).
        period: ClosedPeriod,
        /// GPU memory billed.
        memory_gb: u32,
    },
    /// A provisioned instance is gone: the idle part of its lifetime.
    ProvisionedIdle {
        /// The instance.
        instance: InstanceId,
        /// When it went.
        end: Instant,
        /// Whole seconds it was held and not busy.
        idle_s: u64,
        /// GPU memory billed.
        memory_gb: u32,
    },
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<E> {
    /// Hand a slot to a queued request.
    Grant {
        /// The request.
        waiter: WaiterId,
        /// Its slot.
        grant: Grant,
    },
    /// Answer a queued request with an error.
    Refuse {
        /// The request.
        waiter: WaiterId,
        /// Why.
        reason: Refusal<E>,
    },
    /// Start this instance (its card was granted); answer with [`Scheduler::instance_ready`],
    /// [`Scheduler::start_failed`] or [`Scheduler::instance_gone`].
    Start {
        /// The instance.
        instance: InstanceId,
    },
    /// Stop this instance; answer with [`Scheduler::instance_gone`] once it is gone.
    Stop {
        /// The instance.
        instance: InstanceId,
    },
    /// Record this.
    Bill(Bill),
    /// Something keep-alive cares about changed: call [`Scheduler::tick`] soon.
    Wake,
    /// Nothing is in flight or queued any more: an idle period began. Under
    /// [`KeepAlive::Planned`] the caller plans it with [`Scheduler::plan_idle`].
    Idle,
}

/// Where the cards come from: the GPU allocator in the server, a counter in the simulator.
pub trait Cards<P, E> {
    /// Grants a card for a new instance of this function, and names the instance; `P` is what
    /// the caller keeps beside the scheduler's record of it (address, lease, stop handle).
    fn allocate(&mut self, provisioned: bool) -> Result<(InstanceId, P), E>;
}

/// The answer to [`Scheduler::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire<E> {
    /// A slot now, on a ready instance.
    Now(Grant),
    /// Queued: the answer comes as [`Effect::Grant`] or [`Effect::Refuse`] for this waiter.
    Queued(WaiterId),
    /// Refused now.
    Refused(Refusal<E>),
}

/// What [`Scheduler::plan_idle`] is told to do with an idle period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdlePlan {
    /// Keep idle instances this long.
    pub keep_alive: Duration,
    /// Start one instance at `.0` and keep it until `.1` (pre-warm).
    pub prewarm: Option<(Instant, Instant)>,
}

/// One event, for callers that drive the scheduler as a stream of events (the simulator) and
/// for logs that replay one ([`Scheduler::handle`]); each names the method it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<E> {
    /// [`Scheduler::acquire`].
    Arrive,
    /// [`Scheduler::cancel`].
    Cancel(WaiterId),
    /// [`Scheduler::timed_out`].
    TimedOut(WaiterId),
    /// [`Scheduler::release`].
    Release(InstanceId),
    /// [`Scheduler::out_of_service`].
    OutOfService(InstanceId),
    /// [`Scheduler::instance_ready`].
    Ready {
        /// The instance.
        instance: InstanceId,
        /// How long its start took.
        load: Duration,
    },
    /// [`Scheduler::start_failed`].
    StartFailed {
        /// The instance.
        instance: InstanceId,
        /// What its waiters are told.
        reason: Refusal<E>,
    },
    /// [`Scheduler::instance_gone`].
    Gone(InstanceId),
    /// [`Scheduler::tick`].
    Tick,
    /// [`Scheduler::rescale`].
    Rescale,
    /// [`Scheduler::update`].
    Update {
        /// The new settings.
        cfg: Config,
        /// The new revision.
        revision: i64,
    },
    /// [`Scheduler::close`].
    Close(Refusal<E>),
    /// [`Scheduler::plan_idle`].
    Plan(IdlePlan),
    /// [`Scheduler::set_scheduled_min`].
    ScheduledMin(Option<u32>),
}

/// What [`Scheduler::handle`] answers besides effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<E> {
    /// The event has no answer of its own.
    Done,
    /// [`Event::Arrive`]'s.
    Acquire(Acquire<E>),
    /// [`Event::Cancel`]'s: whether it was still queued.
    Cancelled(bool),
    /// [`Event::TimedOut`]'s.
    TimedOut(Option<Refusal<E>>),
    /// [`Event::Tick`]'s: when to tick next.
    Next(Option<Instant>),
}

/// The effects of one event, in the order they must be carried out.
pub type Effects<E> = Vec<Effect<E>>;
