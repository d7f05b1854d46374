//! The durable side of asynchronous invocation, below the platform: task settings, and the
//! accept path — [`TaskRunner::accept`] hands a task to one writer thread that commits whatever
//! has queued up in one transaction (group commit) and answers each caller only after the fsync.
//! The dispatcher that runs tasks through the pools is [`crate::tasks`], above the platform.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gpufn_store::{NewTask, Store, TaskRow};
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

/// Task settings from `gpufn serve` flags.
#[derive(Debug, Clone, Copy)]
pub struct TaskConfig {
    /// Largest share of a function's slots (max_instances × concurrency) async tasks may hold.
    pub max_share: f64,
    /// Result bodies up to this size are kept in the store; larger ones in files.
    pub inline_result_bytes: usize,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most request-body bytes of all tasks queued or running at once; submissions past it get
    /// 507.
    pub max_pending_bytes: u64,
    /// Finished tasks are removed after this long.
    pub retention: Duration,
    /// First retry delay; doubles each attempt (capped at 5 minutes).
    pub retry_base: Duration,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            max_share: 0.5,
            inline_result_bytes: 64 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            max_pending_bytes: 1 << 30,
            retention: Duration::from_secs(7 * 86_400),
            retry_base: Duration::from_secs(1),
        }
    }
}

type AcceptReply = oneshot::Sender<Result<(TaskRow, bool), String>>;

/// The task machinery's shared state.
#[derive(Debug)]
pub struct TaskRunner {
    pub(crate) config: TaskConfig,
    accept_tx: Mutex<Sender<(NewTask, AcceptReply)>>,
    /// Wakes the dispatcher (a task was accepted).
    pub(crate) wake: Notify,
    /// Wakes the delivery loop.
    pub(crate) delivery_wake: Notify,
    /// Running task → its cancel token.
    pub(crate) running: Mutex<HashMap<String, CancellationToken>>,
    /// Function → async tasks in flight.
    pub(crate) in_flight: Mutex<HashMap<String, u32>>,
    /// Deliveries being posted.
    pub(crate) delivering: Mutex<HashSet<i64>>,
    /// Where large results are written.
    pub(crate) results_dir: PathBuf,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskRunner {
    /// Starts the accept writer thread.
    pub(crate) fn new(store: Arc<Store>, config: TaskConfig, results_dir: PathBuf) -> Self {
        let (tx, rx) = channel();
        if let Err(e) = std::thread::Builder::new()
            .name("gpufn-accept".into())
            .spawn(move || accept_writer(&store, &rx))
        {
            tracing::error!("cannot start the task accept thread: {e}");
        }
        Self {
            config,
            accept_tx: Mutex::new(tx),
            wake: Notify::new(),
            delivery_wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            delivering: Mutex::new(HashSet::new()),
            results_dir,
        }
    }

    /// Stores a task durably; resolves after the fsync. `false` means the id existed already.
    pub async fn accept(&self, task: NewTask) -> Result<(TaskRow, bool), String> {
        let (tx, rx) = oneshot::channel();
        lock(&self.accept_tx)
            .send((task, tx))
            .map_err(|_| "the task store is not running".to_string())?;
        let answer = rx.await.map_err(|_| "the task store stopped".to_string())?;
        if answer.is_ok() {
            self.wake.notify_one();
        }
        answer
    }

    /// Cancels the attempt in progress, if any.
    pub(crate) fn cancel_running(&self, id: &str) {
        if let Some(token) = lock(&self.running).get(id) {
            token.cancel();
        }
    }
}

fn accept_writer(store: &Store, rx: &Receiver<(NewTask, AcceptReply)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let (tasks, replies): (Vec<NewTask>, Vec<AcceptReply>) = batch.into_iter().unzip();
        match store.insert_tasks(&tasks) {
            Ok(rows) => {
                for (reply, row) in replies.into_iter().zip(rows) {
                    let _ = reply.send(Ok(row));
                }
            }
            Err(e) => {
                tracing::error!("cannot store {} task(s): {e}", tasks.len());
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }
}
