//! Idle keep-alive connections to instances for the direct gateway: plain TCP streams, each owned
//! by one exchange at a time, kept per instance address.
//!
//! Invariants (as for [`crate::upstream`]): an idle connection is never shared; a connection goes
//! back only after its response was read exactly to the end; a connection found closed or holding
//! unexpected bytes when taken out is dropped, never used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpStream;

/// An unused connection is kept between one and two of these. Connections are stamped with a
/// sweep counter, not a clock reading: no clock read per request.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Most idle connections kept per instance.
const MAX_IDLE_PER_ADDR: usize = 512;

#[derive(Default)]
struct Inner {
    /// Idle connections with the sweep count when they were given back.
    idle: Mutex<HashMap<SocketAddr, Vec<(TcpStream, u64)>>>,
    /// Sweeps so far.
    sweeps: AtomicU64,
}

/// The direct gateway's idle connections. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Conns {
    inner: Arc<Inner>,
}

impl Conns {
    /// An empty set, with a task that drops connections idle for too long (it ends with the last
    /// handle).
    pub(crate) fn new() -> Self {
        let conns = Self::default();
        tokio::spawn(sweep_loop(Arc::downgrade(&conns.inner)));
        conns
    }

    /// An idle connection to `addr` that the instance has not closed meanwhile.
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<TcpStream> {
        loop {
            let (stream, _) = lock(&self.inner.idle).get_mut(&addr)?.pop()?;
            if still_open(&stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps `stream` for the next request to `addr`.
    pub(crate) fn give_back(&self, addr: SocketAddr, stream: TcpStream) {
        let stamp = self.inner.sweeps.load(Ordering::Relaxed);
        let mut map = lock(&self.inner.idle);
        let list = map.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push((stream, stamp));
        }
    }

    /// Idle connections kept (all addresses).
    #[cfg(test)]
    pub(crate) fn idle_count(&self) -> usize {
        lock(&self.inner.idle).values().map(Vec::len).sum()
    }
}

/// An idle connection must have nothing to read: a read that would block. EOF (the app closed it,
/// e.g. its keep-alive timer ran out), an error, or stray bytes all make it unusable. `try_read`
/// makes no system call unless the reactor saw the socket become readable.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

async fn sweep_loop(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // Given back before the previous sweep: idle for at least one full period.
        let sweeps = inner.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        lock(&inner.idle).retain(|_, list| {
            list.retain(|(_, stamp)| *stamp + 1 >= sweeps);
            !list.is_empty()
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
