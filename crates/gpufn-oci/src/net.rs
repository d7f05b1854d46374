//! Container networking: each container gets its own network namespace joined to the host by a
//! veth pair on a private /30, so gpufn reaches the app at `10.213.x.y:port` while nothing outside
//! the machine can, and any number of instances can listen on the same port.
//!
//! A slot `n` is the namespace `gfn<n>`, the host-side link `gfh<n>` (the container side is `eth0`)
//! and the subnet `10.213.0.0/16`'s n-th /30. Slots are claimed machine-wide by `ip netns add`,
//! which fails when the name exists, so two gpufn servers on one host never share one.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Slots in 10.213.0.0/16 (/30 each).
pub const SLOTS: u32 = 16_384;

/// A claimed network slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetSlot {
    /// Slot number.
    pub index: u32,
}

impl NetSlot {
    /// Namespace name.
    pub fn netns(&self) -> String {
        format!("gfn{}", self.index)
    }

    /// Path runc joins.
    pub fn netns_path(&self) -> String {
        format!("/var/run/netns/{}", self.netns())
    }

    /// Host-side link.
    pub fn host_link(&self) -> String {
        format!("gfh{}", self.index)
    }

    fn base(&self) -> u32 {
        u32::from(Ipv4Addr::new(10, 213, 0, 0)) + self.index * 4
    }

    /// Host side of the /30.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 1)
    }

    /// The container's address.
    pub fn container_ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 2)
    }
}

fn ip(args: &[&str], batch: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(args)
        .stdin(if batch.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run ip: {e}"))?;
    if let (Some(text), Some(mut stdin)) = (batch, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| format!("ip: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Claims a free slot (starting the search at `seed`) and wires it: namespace, veth pair,
/// addresses, links up. Blocking.
pub fn setup(seed: u64) -> Result<NetSlot, String> {
    let start = u32::try_from(seed % u64::from(SLOTS)).unwrap_or(0);
    let mut last_err = String::new();
    for k in 0..64 {
        let slot = NetSlot {
            index: (start + k * 7919) % SLOTS,
        };
        match ip(&["netns", "add", &slot.netns()], None) {
            Ok(()) => {}
            Err(e) if e.contains("exists") => {
                last_err = e;
                continue;
            }
            Err(e) => return Err(format!("creating network namespace {}: {e}", slot.netns())),
        }
        let host = format!(
            "link add {h} type veth peer name eth0 netns {ns}\n\
             addr add {hip}/30 dev {h}\n\
             link set {h} up\n",
            h = slot.host_link(),
            ns = slot.netns(),
            hip = slot.host_ip(),
        );
        let inner = format!(
            "addr add {cip}/30 dev eth0\nlink set eth0 up\nlink set lo up\n",
            cip = slot.container_ip()
        );
        let wired = ip(&["-batch", "-"], Some(&host))
            .and_then(|()| ip(&["-n", &slot.netns(), "-batch", "-"], Some(&inner)));
        if let Err(e) = wired {
            teardown(slot);
            return Err(format!("wiring network slot {}: {e}", slot.index));
        }
        return Ok(slot);
    }
    Err(format!("no free network slot: {last_err}"))
}

/// Removes the slot's namespace and links. Idempotent; blocking.
pub fn teardown(slot: NetSlot) {
    // Deleting either end of a veth pair deletes both; the namespace goes when its file is removed
    // and no process is left in it.
    let _ = ip(&["link", "del", &slot.host_link()], None);
    let _ = ip(&["netns", "del", &slot.netns()], None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_map_to_disjoint_30s() {
        let a = NetSlot { index: 0 };
        let b = NetSlot { index: 1 };
        let last = NetSlot { index: SLOTS - 1 };
        assert_eq!(a.host_ip(), Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(a.container_ip(), Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(b.host_ip(), Ipv4Addr::new(10, 213, 0, 5));
        assert_eq!(last.container_ip(), Ipv4Addr::new(10, 213, 255, 254));
        assert_eq!(a.netns_path(), "/var/run/netns/gfn0");
        assert!(
            last.host_link().len() <= 15,
            "interface names are at most 15 bytes"
        );
    }
}
