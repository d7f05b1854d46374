//! Idle mode (`scaling.idle_mode: freeze`, Function Compute's idle GPU instances): a provisioned
//! instance with no request in flight is frozen — after its `lifecycle.pre_freeze` hook — and
//! thawed before the next request reaches it. It keeps its memory (the loaded model) and uses no
//! CPU meanwhile; it is billed at the idle price, as every idle provisioned instance is.
//!
//! One lock per instance orders freezing and thawing: a request granted while a freeze is under
//! way waits for it, then thaws; a freeze looks again, under the lock, whether the instance is
//! still idle, so it never freezes an instance a request holds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gpufn_runtime::freeze::Freezer;
use gpufn_spec::FunctionSpec;

use crate::hooks::{self, HookKind};
use crate::shared::Shared;

/// Freezes and thaws one instance.
#[derive(Debug)]
pub(crate) struct FreezeCtl {
    freezer: Arc<dyn Freezer>,
    /// Frozen now; also the lock that orders freezes and thaws.
    state: tokio::sync::Mutex<State>,
    /// `state.frozen` for readers that must not wait (the API).
    frozen: AtomicBool,
    /// A freeze is planned (a task waits out the idle delay): no second one is.
    planned: AtomicBool,
    spec: Arc<FunctionSpec>,
    instance: String,
    addr: SocketAddr,
}

#[derive(Debug, Default)]
struct State {
    frozen: bool,
    /// The instance is being stopped: it stays thawed.
    retired: bool,
}

impl FreezeCtl {
    pub(crate) fn new(
        freezer: Arc<dyn Freezer>,
        spec: Arc<FunctionSpec>,
        instance: String,
        addr: SocketAddr,
    ) -> Self {
        Self {
            freezer,
            state: tokio::sync::Mutex::new(State::default()),
            frozen: AtomicBool::new(false),
            planned: AtomicBool::new(false),
            spec,
            instance,
            addr,
        }
    }

    /// Whether the instance is frozen now.
    pub(crate) fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Relaxed)
    }

    /// Claims the one planned freeze: false if one is planned already (or it is frozen).
    pub(crate) fn plan(&self) -> bool {
        !self.is_frozen() && !self.planned.swap(true, Ordering::AcqRel)
    }

    /// The planned freeze ran (or gave up).
    pub(crate) fn unplan(&self) {
        self.planned.store(false, Ordering::Release);
    }

    /// Freezes the instance if `still_idle` says, under the lock, that no request holds it:
    /// first its pre_freeze hook (a failure leaves it running), then the freezer.
    pub(crate) async fn freeze_if_idle(&self, shared: &Shared, still_idle: impl Fn() -> bool) {
        let mut st = self.state.lock().await;
        if st.frozen || st.retired || !still_idle() {
            return;
        }
        if let Some(hook) = &self.spec.lifecycle.pre_freeze {
            let r = hooks::start_http(
                HookKind::PreFreeze,
                hook,
                self.addr,
                &shared.prober,
                &self.spec,
                &self.instance,
            )
            .await;
            if let Err(e) = r {
                tracing::warn!(function = %self.spec.name, instance = %self.instance, "{}; not frozen", e.message);
                crate::logs::note_in_log(
                    &shared.log_path(&self.spec.name, &self.instance),
                    &format!("{}; not frozen", e.message),
                );
                return;
            }
            // A request may have come while the hook ran.
            if !still_idle() {
                return;
            }
        }
        match self.freezer.freeze().await {
            Ok(()) => {
                st.frozen = true;
                self.frozen.store(true, Ordering::Relaxed);
                tracing::debug!(function = %self.spec.name, instance = %self.instance, "frozen");
            }
            Err(e) => {
                tracing::warn!(function = %self.spec.name, instance = %self.instance, "cannot freeze: {e}");
            }
        }
    }

    /// Thaws the instance if it is frozen (waiting for a freeze under way); how long it took
    /// when it was frozen.
    pub(crate) async fn thaw(&self) -> Option<Duration> {
        let mut st = self.state.lock().await;
        if !st.frozen {
            return None;
        }
        let t0 = Instant::now();
        if let Err(e) = self.freezer.thaw().await {
            // It stays marked frozen: the next request tries again; its own request will time
            // out at the instance.
            tracing::error!(function = %self.spec.name, instance = %self.instance, "cannot thaw: {e}");
            return None;
        }
        st.frozen = false;
        self.frozen.store(false, Ordering::Relaxed);
        Some(t0.elapsed())
    }

    /// The instance is being stopped: thawed (a frozen process cannot take SIGTERM), and never
    /// frozen again.
    pub(crate) async fn retire(&self) {
        let mut st = self.state.lock().await;
        st.retired = true;
        if st.frozen && self.freezer.thaw().await.is_ok() {
            st.frozen = false;
            self.frozen.store(false, Ordering::Relaxed);
        }
    }
}
