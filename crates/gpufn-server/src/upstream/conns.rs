//! The one pool of idle keep-alive connections to instances, for both gateways, kept per instance
//! address: each connection is owned by one exchange at a time, and kept as its last user left it —
//! a bare TCP stream (the direct path) or hyper's client connection on one (the hyper path) — so
//! neither path pays to convert on its own warm path; the other path takes it apart or wraps it.
//!
//! Invariants (with [`crate::upstream`]'s): an idle connection is never shared; a connection goes
//! back only after its exchange ended cleanly (request sent, response read exactly to the end);
//! a connection found closed or holding unexpected bytes when taken out is dropped, never used.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::net::TcpStream;

use super::Link;

/// An unused connection is kept between one and two of these. Connections are stamped with a
/// sweep counter, not a clock reading: no clock read per request.
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// Most idle connections kept per instance.
const MAX_IDLE_PER_ADDR: usize = 512;

#[derive(Default)]
struct Inner {
    /// Idle connections with the sweep count when they were given back.
    idle: Mutex<HashMap<SocketAddr, Vec<(Idle, u64)>>>,
    /// Sweeps so far.
    sweeps: AtomicU64,
}

/// An idle connection.
pub(crate) enum Idle {
    /// A bare stream.
    Stream(TcpStream),
    /// Hyper's client connection, ready for its next request.
    Http(Link),
}

/// Idle connections to instances. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Conns {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: usize = lock(&self.inner.idle).values().map(Vec::len).sum();
        f.debug_struct("Conns").field("idle", &idle).finish()
    }
}

impl Conns {
    /// An empty set, with a task that drops connections idle for too long (it ends with the last
    /// handle).
    pub(crate) fn new() -> Self {
        let conns = Self::default();
        tokio::spawn(sweep_loop(Arc::downgrade(&conns.inner)));
        conns
    }

    /// An idle connection to `addr` that the instance has not closed meanwhile, in either form.
    pub(crate) fn checkout(&self, addr: SocketAddr) -> Option<Idle> {
        loop {
            match self.pop(addr)? {
                Idle::Stream(s) if still_open(&s) => return Some(Idle::Stream(s)),
                Idle::Http(mut link) => {
                    if link.usable() {
                        return Some(Idle::Http(link));
                    }
                }
                Idle::Stream(_) => {}
            }
        }
    }

    /// An idle connection to `addr` that the instance has not closed meanwhile, as a bare stream.
    pub(crate) fn checkout_stream(&self, addr: SocketAddr) -> Option<TcpStream> {
        loop {
            let stream = match self.pop(addr)? {
                Idle::Stream(s) => Some(s),
                Idle::Http(link) => link.into_stream(),
            };
            if let Some(s) = stream.filter(still_open) {
                return Some(s);
            }
        }
    }

    fn pop(&self, addr: SocketAddr) -> Option<Idle> {
        // An emptied list stays in the map (the sweep drops empty ones): removing it here freed
        // and re-allocated a Vec on every request at low concurrency.
        lock(&self.inner.idle)
            .get_mut(&addr)?
            .pop()
            .map(|(conn, _)| conn)
    }

    /// Keeps `conn` for the next request to `addr`.
    pub(crate) fn give_back(&self, addr: SocketAddr, conn: Idle) {
        let stamp = self.inner.sweeps.load(Ordering::Relaxed);
        let mut map = lock(&self.inner.idle);
        let list = map.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ADDR {
            list.push((conn, stamp));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_closed_or_holding_bytes_are_not_reused() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let conns = Conns::new();

        // Healthy: handed out again.
        let client = TcpStream::connect(addr).await.expect("connect");
        let (_kept, _) = listener.accept().await.expect("accept");
        conns.give_back(addr, Idle::Stream(client));
        assert_eq!(conns.idle_count(), 1);
        let client = conns
            .checkout(addr)
            .expect("an open idle connection is reused");
        assert_eq!(conns.idle_count(), 0);
        drop(client);

        // Closed by the app: the reactor has seen the EOF (readable) before it is taken out.
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        drop(server);
        client.readable().await.expect("readable");
        conns.give_back(addr, Idle::Stream(client));
        assert!(
            conns.checkout_stream(addr).is_none(),
            "a closed connection is dropped"
        );

        // Stray bytes after a response: dropped too.
        let client = TcpStream::connect(addr).await.expect("connect");
        let (mut server, _) = listener.accept().await.expect("accept");
        server.write_all(b"x").await.expect("write");
        client.readable().await.expect("readable");
        conns.give_back(addr, Idle::Stream(client));
        assert!(
            conns.checkout_stream(addr).is_none(),
            "unexpected bytes: dropped"
        );
        assert_eq!(conns.idle_count(), 0);
    }
}
