//! [`KubeRuntime`]: instances as Pods. One watch (kube-runtime's `watcher`, on gpufn's label)
//! keeps the latest state of every gpufn Pod; a launch applies its Pod and waits on that state
//! until the container runs and has an address, an instance waits on it for the end, and a stop
//! deletes the Pod and waits until it is gone.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use gpufn_runtime::{Ended, Exit, InstanceRuntime, LaunchSpec, RunningInstance, RuntimeError};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::pod::{self, MANAGER, PodView};
use crate::{KubeError, KubeSettings};

/// What the watch last saw of one Pod.
#[derive(Debug, Clone)]
pub enum Seen {
    /// Nothing yet (just applied).
    NotYet,
    /// Its latest state.
    Pod(Arc<Pod>),
    /// Deleted.
    Gone,
}

/// The latest state of gpufn's Pods, from one watch.
#[derive(Debug, Default)]
pub struct PodWatch {
    pods: Mutex<HashMap<String, watch::Sender<Seen>>>,
    /// Names seen since the watch (re)listed, while it relists.
    relisting: Mutex<Option<HashSet<String>>>,
    synced: watch::Sender<bool>,
}

impl PodWatch {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, watch::Sender<Seen>>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows Pod `name`.
    pub fn subscribe(&self, name: &str) -> watch::Receiver<Seen> {
        self.lock()
            .entry(name.to_string())
            .or_insert_with(|| watch::Sender::new(Seen::NotYet))
            .subscribe()
    }

    /// Stops following `name` (its instance is done).
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Every gpufn Pod known now.
    pub fn pods(&self) -> Vec<Arc<Pod>> {
        self.lock()
            .values()
            .filter_map(|tx| match &*tx.borrow() {
                Seen::Pod(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    fn apply(&self, pod: Pod) {
        let Some(name) = pod.metadata.name.clone() else {
            return;
        };
        if let Some(seen) = self
            .relisting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            seen.insert(name.clone());
        }
        self.lock()
            .entry(name)
            .or_insert_with(|| watch::Sender::new(Seen::NotYet))
            .send_replace(Seen::Pod(Arc::new(pod)));
    }

    fn delete(&self, name: &str) {
        if let Some(tx) = self.lock().remove(name) {
            tx.send_replace(Seen::Gone);
        }
    }

    fn event(&self, ev: watcher::Event<Pod>) {
        match ev {
            watcher::Event::Init => {
                *self.relisting.lock().unwrap_or_else(|p| p.into_inner()) = Some(HashSet::new());
            }
            watcher::Event::InitApply(p) | watcher::Event::Apply(p) => self.apply(p),
            watcher::Event::Delete(p) => {
                if let Some(name) = &p.metadata.name {
                    self.delete(name);
                }
            }
            watcher::Event::InitDone => {
                // Pods that existed before the relist and are not in it were deleted meanwhile.
                let seen = self
                    .relisting
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
                    .unwrap_or_default();
                let gone: Vec<String> = self
                    .lock()
                    .iter()
                    .filter(|(name, tx)| {
                        !seen.contains(*name) && matches!(&*tx.borrow(), Seen::Pod(_))
                    })
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in gone {
                    self.delete(&name);
                }
                self.synced.send_replace(true);
            }
        }
    }
}

/// Runs instances as Pods in one namespace.
#[derive(Debug, Clone)]
pub struct KubeRuntime {
    api: Api<Pod>,
    settings: Arc<KubeSettings>,
    watch: Arc<PodWatch>,
}

impl KubeRuntime {
    /// Connects, starts the watch of gpufn's Pods, and waits (up to 30 s) for its first listing.
    pub async fn start(client: kube::Client, settings: KubeSettings) -> Result<Self, KubeError> {
        let api: Api<Pod> = Api::namespaced(client, &settings.namespace);
        // Fails here, clearly, when the namespace or the permissions are wrong.
        api.list(&ListParams::default().labels(&pod::selector()).limit(1))
            .await?;
        let watch = Arc::new(PodWatch::default());
        let mut synced = watch.synced.subscribe();
        let stream = watcher(
            api.clone(),
            watcher::Config::default().labels(&pod::selector()),
        )
        .default_backoff();
        let w = watch.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => w.event(ev),
                    Err(e) => tracing::warn!("watching gpufn's Pods: {e}"),
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), synced.wait_for(|s| *s)).await;
        Ok(KubeRuntime {
            api,
            settings: Arc::new(settings),
            watch,
        })
    }

    /// The settings.
    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    /// The watch of gpufn's Pods.
    pub fn watch(&self) -> &Arc<PodWatch> {
        &self.watch
    }

    /// Deletes Pod `name` (`grace` for its container to stop).
    pub async fn delete(&self, name: &str, grace: Duration) -> Result<(), kube::Error> {
        delete(&self.api, name, grace).await
    }

    /// Takes back a running Pod (a restart of gpufn): the instance as a launch would have
    /// returned it, or `None` when the Pod is not running with an address.
    pub fn adopt(&self, name: &str, port: u16) -> Option<Box<dyn RunningInstance>> {
        let rx = self.watch.subscribe(name);
        let view = match &*rx.borrow() {
            Seen::Pod(p) => PodView::of(p),
            _ => return None,
        };
        let ip = view.ip.filter(|_| view.running && view.ended.is_none())?;
        Some(Box::new(PodInstance {
            name: name.to_string(),
            api: self.api.clone(),
            watch: self.watch.clone(),
            rx,
            addr: SocketAddr::new(ip, port),
            placed_in: Duration::ZERO,
            pulled_in: Duration::ZERO,
            stopped: false,
        }))
    }

    /// How long the node took to pull Pod `name`'s image, from its `Pulled` event (zero when it
    /// says nothing).
    async fn pull_time(&self, name: &str) -> Duration {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(self.api.clone().into_client(), &self.settings.namespace);
        let params = ListParams::default().fields(&format!("involvedObject.name={name}"));
        match events.list(&params).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|e| e.reason.as_deref() == Some("Pulled"))
                .find_map(|e| e.message.as_deref().and_then(pod::pull_time))
                .unwrap_or_default(),
            Err(e) => {
                tracing::debug!(pod = %name, "reading its events: {e}");
                Duration::ZERO
            }
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

async fn delete(api: &Api<Pod>, name: &str, grace: Duration) -> Result<(), kube::Error> {
    let params = DeleteParams {
        grace_period_seconds: Some(u32::try_from(grace.as_secs()).unwrap_or(u32::MAX)),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes a launch's Pod when the launch ends without an instance — by failing, or by being
/// dropped while it waits (a stop cancelled the start): a launch leaves nothing behind.
struct Unlaunched<'a> {
    runtime: &'a KubeRuntime,
    name: String,
    armed: bool,
}

impl Unlaunched<'_> {
    /// Deletes the Pod now, and fails the launch with `reason`.
    async fn fail(mut self, reason: String) -> Result<Box<dyn RunningInstance>, RuntimeError> {
        self.armed = false;
        let _ = delete(&self.runtime.api, &self.name, Duration::ZERO).await;
        self.runtime.watch.forget(&self.name);
        Err(RuntimeError::Container(reason))
    }
}

impl Drop for Unlaunched<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.runtime.watch.forget(&self.name);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (api, name) = (self.runtime.api.clone(), self.name.clone());
            rt.spawn(async move {
                let _ = delete(&api, &name, Duration::ZERO).await;
            });
        }
    }
}

#[async_trait]
impl InstanceRuntime for KubeRuntime {
    async fn launch(&self, spec: &LaunchSpec) -> Result<Box<dyn RunningInstance>, RuntimeError> {
        let manifest = pod::manifest(spec, &self.settings)
            .map_err(|e| RuntimeError::Container(e.to_string()))?;
        let port = spec.container.as_ref().map_or(0, |c| c.port);
        let name = spec.instance_id.clone();
        // Followed before it exists: no state of it can be missed.
        let mut rx = self.watch.subscribe(&name);
        let guard = Unlaunched {
            runtime: self,
            name: name.clone(),
            armed: true,
        };
        let t0 = Instant::now();
        let applied = self
            .api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&manifest),
            )
            .await;
        if let Err(e) = applied {
            return guard.fail(format!("cannot create Pod {name}: {e}")).await;
        }
        // Where the time of a start goes, for the benchmark: gpufn's own calls, the watch's
        // delivery (the applied Pod coming back), the cluster's placement and the node's start.
        let apply_done = t0.elapsed();
        let mut first_seen = None;
        let deadline = tokio::time::Instant::from_std(t0 + spec.startup_timeout);
        let mut placed_in = None;
        let mut waiting_for = String::from("the Pod to be scheduled");
        loop {
            let seen = rx.borrow_and_update().clone();
            match seen {
                Seen::NotYet => {}
                Seen::Gone => {
                    return guard
                        .fail(format!("Pod {name} was deleted before it ran"))
                        .await;
                }
                Seen::Pod(p) => {
                    first_seen.get_or_insert_with(|| t0.elapsed());
                    let v = PodView::of(&p);
                    if v.node.is_some() && placed_in.is_none() {
                        placed_in = Some(t0.elapsed());
                        spec.progress.placed();
                        waiting_for = "its container to run".into();
                    }
                    if let Some(reason) = &v.unschedulable {
                        spec.progress.unplaced(reason);
                        waiting_for = format!("a node: {reason}");
                    }
                    if let Some(end) = v.ended {
                        let failure = v.failure.map(|f| format!(" ({f})")).unwrap_or_default();
                        return guard
                            .fail(format!("Pod {name} {end}{failure} before it was ready"))
                            .await;
                    }
                    if let (true, Some(ip)) = (v.running, v.ip) {
                        let running_at = t0.elapsed();
                        let pulled_in = self.pull_time(&name).await;
                        tracing::info!(
                            pod = %name,
                            apply_ms = ms(apply_done),
                            watch_ms = ms(first_seen.unwrap_or(running_at).saturating_sub(apply_done)),
                            placed_ms = ms(placed_in.unwrap_or(running_at)),
                            running_ms = ms(running_at),
                            events_ms = ms(t0.elapsed().saturating_sub(running_at)),
                            "Pod running"
                        );
                        let mut guard = guard;
                        guard.armed = false;
                        return Ok(Box::new(PodInstance {
                            name,
                            api: self.api.clone(),
                            watch: self.watch.clone(),
                            rx,
                            addr: SocketAddr::new(ip, port),
                            placed_in: placed_in.unwrap_or_default(),
                            pulled_in,
                            stopped: false,
                        }));
                    }
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    return guard
                        .fail(format!("Pod {name} stopped being watched"))
                        .await;
                }
                Err(_) => {
                    return guard
                        .fail(format!(
                            "Pod {name} was still waiting for {waiting_for} after startup_timeout_s ({}s)",
                            spec.startup_timeout.as_secs()
                        ))
                        .await;
                }
            }
        }
    }

    fn launch_is_cancel_safe(&self) -> bool {
        true
    }
}

/// One instance's Pod.
#[derive(Debug)]
struct PodInstance {
    name: String,
    api: Api<Pod>,
    watch: Arc<PodWatch>,
    rx: watch::Receiver<Seen>,
    addr: SocketAddr,
    placed_in: Duration,
    pulled_in: Duration,
    stopped: bool,
}

impl PodInstance {
    /// How the Pod ended, when it has.
    fn ended(&self) -> Option<Ended> {
        match &*self.rx.borrow() {
            Seen::Gone => Some(Ended::exit(Exit::Gone)),
            Seen::Pod(p) => PodView::of(p).ended,
            Seen::NotYet => None,
        }
    }
}

#[async_trait]
impl RunningInstance for PodInstance {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn pid(&self) -> Option<u32> {
        None
    }

    fn placement(&self) -> Duration {
        self.placed_in
    }

    fn image_pull(&self) -> Duration {
        self.pulled_in
    }

    async fn wait(&mut self) -> Ended {
        loop {
            if let Some(end) = self.ended() {
                return end;
            }
            if self.rx.changed().await.is_err() {
                return Ended::exit(Exit::Gone);
            }
        }
    }

    async fn stop(&mut self, grace: Duration) -> Ended {
        self.stopped = true;
        if let Err(e) = delete(&self.api, &self.name, grace).await {
            tracing::warn!(pod = %self.name, "deleting: {e}");
        }
        // The node stops the container within the grace and removes the Pod; past that (and a
        // margin for the node's own pace), it is deleted without grace.
        let gone = |rx: &mut watch::Receiver<Seen>| {
            let mut rx = rx.clone();
            async move { rx.wait_for(|s| matches!(s, Seen::Gone)).await.is_ok() }
        };
        let in_time =
            tokio::time::timeout(grace + Duration::from_secs(30), gone(&mut self.rx)).await;
        let mut how = self.last_exit();
        if in_time.is_err() {
            let _ = delete(&self.api, &self.name, Duration::ZERO).await;
            let _ = tokio::time::timeout(Duration::from_secs(30), gone(&mut self.rx)).await;
            how.killed_after = Some(grace);
        }
        self.watch.forget(&self.name);
        how
    }
}

impl PodInstance {
    /// The container's end as the node last reported it (a stop's signal when it reported none).
    fn last_exit(&self) -> Ended {
        match &*self.rx.borrow() {
            Seen::Pod(p) => PodView::of(p).ended,
            _ => None,
        }
        .unwrap_or_else(|| Ended::exit(Exit::Signal(15)))
    }
}

impl Drop for PodInstance {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        // Dropped without a stop (a failed start after launch): nothing of it may stay.
        self.watch.forget(&self.name);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (api, name) = (self.api.clone(), self.name.clone());
            rt.spawn(async move {
                let _ = delete(&api, &name, Duration::ZERO).await;
            });
        }
    }
}
