//! One lock per function name, held for the whole of a change to that function: a deploy from
//! validation to the stored spec (the image pull included), a delete, and a read-modify-write
//! such as FC's PutConcurrencyConfig (read the spec, change one field, deploy it). Without it two
//! such changes could each read the same spec and the second write would undo the first.
//! Changes to different functions do not wait for each other (an image pull of one does not hold
//! up a deploy of another); the store and the pools are still changed under the platform's one
//! short commit lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

type Locks = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// The per-function locks of one server.
#[derive(Debug, Default)]
pub(crate) struct FunctionLocks {
    locks: Locks,
}

impl FunctionLocks {
    /// Waits for, then holds, the lock of `name`.
    pub(crate) async fn lock(&self, name: &str) -> FunctionLock {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        FunctionLock {
            name: name.to_string(),
            guard: Some(guard),
            locks: self.locks.clone(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// A held function lock; dropping it lets the next change of the function go ahead.
#[derive(Debug)]
pub struct FunctionLock {
    name: String,
    guard: Option<OwnedMutexGuard<()>>,
    locks: Locks,
}

impl FunctionLock {
    /// The function it locks.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for FunctionLock {
    fn drop(&mut self) {
        drop(self.guard.take());
        // Forget the lock when nobody holds or waits for it, so names that were only tried
        // (a refused deploy) leave nothing behind.
        let mut map = self
            .locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_change_of_a_function_waits_for_the_first_and_others_do_not() {
        let locks = Arc::new(FunctionLocks::default());
        let first = locks.lock("f").await;
        // Another function: not held up.
        let other = locks.lock("g").await;
        drop(other);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiting = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let second = locks.lock("f").await;
                let _ = tx.send(());
                drop(second);
            })
        };
        // Let the waiter run up to the lock.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(rx.try_recv().is_err(), "the second change waits");
        drop(first);
        waiting.await.expect("waiter");
        assert!(rx.try_recv().is_ok(), "then goes ahead");
        assert_eq!(locks.len(), 0, "nothing left behind");
    }
}
