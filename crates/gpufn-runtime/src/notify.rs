//! Readiness notification: an app may say it is ready as systemd services do, by sending
//! `READY=1` to the datagram socket named in `NOTIFY_SOCKET`, instead of waiting to be probed.
//!
//! The socket is an abstract one (`@…`): no file to clean up, no directory permission for an app
//! running as another user to cross. Anyone on the machine's network namespace can send to it, so a
//! notification is only a hint: it makes gpufn probe at once, and the probe's 2xx is what counts.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::UnixDatagram;

/// Datagrams longer than this are cut (systemd's own limit is the socket's buffer; `READY=1` is
/// seven bytes and apps send a few more fields at most).
const MAX_DATAGRAM: usize = 4096;

/// One instance's notification socket.
#[derive(Debug)]
pub struct ReadyNotify {
    socket: UnixDatagram,
    name: String,
}

impl ReadyNotify {
    /// Binds a fresh abstract socket for `instance_id`.
    pub fn bind(instance_id: &str) -> io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let name = format!(
            "gpufn-notify/{}/{instance_id}/{nanos:08x}",
            std::process::id()
        );
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let std = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        std.set_nonblocking(true)?;
        Ok(Self {
            socket: UnixDatagram::from_std(std)?,
            name,
        })
    }

    /// `NOTIFY_SOCKET`'s value for the app (`@` marks an abstract name, as systemd writes it).
    pub fn env_value(&self) -> String {
        format!("@{}", self.name)
    }

    /// Returns when a datagram with a `READY=1` line arrives. Datagrams queued behind it are
    /// dropped, so a flood of them costs one wake-up (and one probe by the caller) per call.
    pub async fn ready(&self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        loop {
            let Ok(n) = self.socket.recv(&mut buf).await else {
                // A socket that fails to receive never will: leave readiness to the probe.
                std::future::pending::<()>().await;
                return;
            };
            let ready = says_ready(&buf[..n]);
            while self.socket.try_recv(&mut buf).is_ok() {}
            if ready {
                return;
            }
        }
    }
}

/// True if the message (newline-separated `KEY=VALUE` lines) has `READY=1`.
pub fn says_ready(message: &[u8]) -> bool {
    message
        .split(|&b| b == b'\n')
        .any(|line| line == b"READY=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ready_line_counts() {
        assert!(says_ready(b"READY=1"));
        assert!(says_ready(b"STATUS=loading done\nREADY=1\n"));
        assert!(!says_ready(b"READY=0"));
        assert!(!says_ready(b"STATUS=READY=1"));
        assert!(!says_ready(b""));
    }

    #[tokio::test]
    async fn a_ready_datagram_wakes_the_waiter_and_others_do_not() {
        let n = ReadyNotify::bind("t-1").unwrap();
        let name = n.env_value();
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(&name.as_bytes()[1..]).unwrap();
        let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
        tx.send_to_addr(b"STATUS=loading", &addr).unwrap();
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), n.ready()).await;
        assert!(waited.is_err(), "a status line is not readiness");
        tx.send_to_addr(b"READY=1", &addr).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), n.ready())
            .await
            .unwrap();
    }
}
