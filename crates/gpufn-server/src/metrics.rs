//! Prometheus metrics at `GET /metrics` (OpenMetrics text, `prometheus-client`).
//!
//! Counters and histograms are updated where things happen (gateway, pools); gauges that describe
//! current state (instances, queue depth, cards) are set from the pools at scrape time, so they can
//! never drift from what the API shows.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct FunctionLabel {
    pub function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabels {
    pub function: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PhaseLabels {
    pub function: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub function: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CardLabels {
    pub state: String,
}

/// 1 ms to ~1.5 h in 23 doublings: covers a warm request and a minutes-long model load alike.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 23))
}

/// Every metric gpufn exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub(crate) invocations: Family<StatusLabels, Counter>,
    pub(crate) cold_starts: Family<FunctionLabel, Counter>,
    pub(crate) cold_start_duration: Family<PhaseLabels, Histogram, fn() -> Histogram>,
    pub(crate) request_duration: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    pub(crate) queue_wait: Family<FunctionLabel, Histogram, fn() -> Histogram>,
    pub(crate) instances: Family<StateLabels, Gauge>,
    pub(crate) queue_depth: Family<FunctionLabel, Gauge>,
    pub(crate) gpu_cards: Family<CardLabels, Gauge>,
    pub(crate) billed_gb_seconds: Family<FunctionLabel, Counter<f64, AtomicU64>>,
    pub(crate) prewarm_hits: Family<FunctionLabel, Counter>,
    pub(crate) prewarm_misses: Family<FunctionLabel, Counter>,
    pub(crate) thaws: Family<FunctionLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            invocations: Family::default(),
            cold_starts: Family::default(),
            cold_start_duration: Family::new_with_constructor(seconds_histogram),
            request_duration: Family::new_with_constructor(seconds_histogram),
            queue_wait: Family::new_with_constructor(seconds_histogram),
            instances: Family::default(),
            queue_depth: Family::default(),
            gpu_cards: Family::default(),
            billed_gb_seconds: Family::default(),
            prewarm_hits: Family::default(),
            prewarm_misses: Family::default(),
            thaws: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "gpufn_thaws",
            "Requests that thawed an instance idle mode had frozen",
            m.thaws.clone(),
        );
        registry.register(
            "gpufn_prewarm_hits",
            "Idle periods whose next call came within the pre-warm window the policy planned",
            m.prewarm_hits.clone(),
        );
        registry.register(
            "gpufn_prewarm_misses",
            "Idle periods whose next call came before or after the planned pre-warm window",
            m.prewarm_misses.clone(),
        );
        registry.register(
            "gpufn_invocations",
            "Requests to functions, by final HTTP status",
            m.invocations.clone(),
        );
        registry.register(
            "gpufn_cold_starts",
            "Requests that waited for their instance to start",
            m.cold_starts.clone(),
        );
        registry.register(
            "gpufn_cold_start_duration_seconds",
            "Cold-start phases (gpu_allocate, image_pull, start, ready, first_response, total)",
            m.cold_start_duration.clone(),
        );
        registry.register(
            "gpufn_request_duration_seconds",
            "Request arrival to response headers, queue and cold start included",
            m.request_duration.clone(),
        );
        registry.register(
            "gpufn_queue_wait_seconds",
            "Time requests waited for an instance slot",
            m.queue_wait.clone(),
        );
        registry.register("gpufn_instances", "Instances by state", m.instances.clone());
        registry.register(
            "gpufn_queue_depth",
            "Requests waiting for a slot",
            m.queue_depth.clone(),
        );
        registry.register(
            "gpufn_gpu_cards",
            "GPU cards by state (allocated, free)",
            m.gpu_cards.clone(),
        );
        registry.register(
            "gpufn_billed_gb_seconds",
            "Active GPU GB-seconds billed (busy periods rounded up to whole seconds)",
            m.billed_gb_seconds.clone(),
        );
        Self { registry, ..m }
    }
}

/// One function's hot-path metrics, looked up once when its pool is created: the request path then
/// neither allocates label strings nor hashes them (that was ~10 % of the gateway's cost).
#[derive(Debug, Clone)]
pub(crate) struct PoolMetrics {
    pub request_duration: Histogram,
    pub queue_wait: Histogram,
    /// `gpufn_invocations_total{status="200"}`; other statuses go through the family.
    pub ok: Counter,
    pub billed_gb_seconds: Counter<f64, AtomicU64>,
    pub prewarm_hits: Counter,
    pub prewarm_misses: Counter,
    pub thaws: Counter,
    /// The last request durations (ms), for p50/p99 in `GET /functions/{name}` and the console.
    pub recent: std::sync::Arc<LatencyRing>,
}

/// The last [`LatencyRing::CAPACITY`] request durations of a function, in ms.
#[derive(Debug, Default)]
pub(crate) struct LatencyRing {
    inner: std::sync::Mutex<(Vec<f32>, usize)>,
}

impl LatencyRing {
    const CAPACITY: usize = 1024;

    pub fn record(&self, ms: f32) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (buf, next) = &mut *g;
        if buf.len() < Self::CAPACITY {
            buf.push(ms);
        } else {
            buf[*next] = ms;
        }
        *next = (*next + 1) % Self::CAPACITY;
    }

    /// (p50, p99), or `None` before the first request.
    pub fn quantiles(&self) -> Option<(f64, f64)> {
        let mut v = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f32::total_cmp);
        let at = |p: f64| {
            let i = ((v.len() - 1) as f64 * p).round() as usize;
            f64::from(v[i.min(v.len() - 1)])
        };
        Some((at(0.5), at(0.99)))
    }
}

impl Metrics {
    pub(crate) fn for_pool(&self, name: &str) -> PoolMetrics {
        let label = Self::function(name);
        PoolMetrics {
            request_duration: self.request_duration.get_or_create(&label).clone(),
            queue_wait: self.queue_wait.get_or_create(&label).clone(),
            billed_gb_seconds: self.billed_gb_seconds.get_or_create(&label).clone(),
            prewarm_hits: self.prewarm_hits.get_or_create(&label).clone(),
            prewarm_misses: self.prewarm_misses.get_or_create(&label).clone(),
            thaws: self.thaws.get_or_create(&label).clone(),
            recent: std::sync::Arc::new(LatencyRing::default()),
            ok: self
                .invocations
                .get_or_create(&StatusLabels {
                    function: name.to_string(),
                    status: "200".into(),
                })
                .clone(),
        }
    }

    /// Text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn function(name: &str) -> FunctionLabel {
        FunctionLabel {
            function: name.to_string(),
        }
    }
}
