//! The meter: metering records leave the request path through a channel and are written to the
//! store in batches by one thread, so billing never adds an fsync to a request.
//!
//! Records are written as soon as the thread is free; under load, whatever queued up meanwhile is
//! written in one transaction. A clean shutdown writes everything (instances are stopped first, which
//! closes their busy periods). A SIGKILLed gpufn loses only records not yet written — at most one
//! batch — the busy periods still open, and the closed ones still in their instance's one-second
//! metering batch (`PeriodBatch`: a busy instance sends a record per second, not per request).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use gpufn_store::{MeterRecord, Store};

enum Msg {
    Record(MeterRecord),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Sends records to the writer thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Meter {
    tx: Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Record(r) => write!(f, "Record({r:?})"),
            Msg::Flush(_) => write!(f, "Flush"),
        }
    }
}

impl Meter {
    /// Starts the writer thread.
    pub fn start(store: Arc<Store>) -> Self {
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("gpufn-meter".into())
            .spawn(move || writer(&store, &rx))
            .map_or_else(
                |e| tracing::error!("cannot start the meter thread: {e}"),
                |_| (),
            );
        Self { tx }
    }

    /// Queues a record.
    pub fn record(&self, r: MeterRecord) {
        if self.tx.send(Msg::Record(r)).is_err() {
            tracing::error!("meter thread gone; a metering record was dropped");
        }
    }

    /// Resolves once every record sent before it is in the store.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn writer(store: &Store, rx: &Receiver<Msg>) {
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Record(r) => batch.push(r),
                Msg::Flush(done) => flushes.push(done),
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            if let Err(e) = store.write_meter(&batch) {
                tracing::error!("cannot write {} metering record(s): {e}", batch.len());
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
