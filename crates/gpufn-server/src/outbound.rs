//! Where gpufn may connect on a caller's say-so: callback URLs and `on_success`/`on_failure`
//! destinations. Not loopback, private, link-local, shared (CGNAT), multicast or unspecified
//! addresses — a URL naming one would let a caller reach gpufn's own ports or the internal
//! network (SSRF) — unless the admin lists the range with `--allow-callback-to CIDR`. The check is
//! made on the address connected to: the host is resolved once, an allowed address is chosen, and
//! the request goes to that address (with the URL's `Host`), so a name that resolves differently
//! the second time (DNS rebinding) changes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The ranges the admin allowed beyond public addresses.
#[derive(Debug, Clone, Default)]
pub struct Outbound {
    allow: Vec<IpNet>,
}

/// Why a callback may not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The URL is not `http://host[:port]/...`.
    #[error("not an http:// URL with a host")]
    BadUrl,
    /// The host did not resolve.
    #[error("its host does not resolve")]
    Unresolved,
    /// Every address of the host is one gpufn does not call on a caller's say-so.
    #[error(
        "its host is a loopback, private or link-local address (an admin may allow it with --allow-callback-to CIDR)"
    )]
    NotAllowed,
}

impl Outbound {
    /// From `--allow-callback-to` values (`10.0.0.0/8`, `127.0.0.1/32`, `::1/128`).
    pub fn new(allow: &[String]) -> Result<Self, String> {
        let allow = allow
            .iter()
            .map(|c| {
                c.parse::<IpNet>()
                    .map_err(|e| format!("--allow-callback-to {c:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allow })
    }

    /// Whether gpufn may connect to `ip` for a caller.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        public(ip) || self.allow.iter().any(|n| n.contains(&ip))
    }

    /// The address to connect to for `url` (resolved now), and the URL's authority for `Host`.
    pub async fn resolve(&self, url: &str) -> Result<(SocketAddr, String), Refused> {
        let uri: http::Uri = url.parse().map_err(|_| Refused::BadUrl)?;
        if uri.scheme_str() != Some("http") {
            return Err(Refused::BadUrl);
        }
        let authority = uri.authority().ok_or(Refused::BadUrl)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Refused::Unresolved)?
            .collect();
        if addrs.is_empty() {
            return Err(Refused::Unresolved);
        }
        let addr = addrs
            .into_iter()
            .find(|a| self.allowed(a.ip()))
            .ok_or(Refused::NotAllowed)?;
        Ok((addr, authority.as_str().to_string()))
    }

    /// A quick check at accept time: a URL whose host is an IP literal gpufn will not call.
    pub fn literal_refused(&self, url: &str) -> bool {
        let Ok(uri) = url.parse::<http::Uri>() else {
            return false;
        };
        let Some(host) = uri.host() else {
            return false;
        };
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| !self.allowed(ip))
    }
}

/// A globally reachable unicast address.
fn public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => public_v4(v4),
            None => public_v6(v6),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        // 100.64.0.0/10, shared address space (CGNAT).
        || (a == 100 && (64..128).contains(&b))
        // 0.0.0.0/8 ("this network") and 240.0.0.0/4 (reserved).
        || a == 0
        || a >= 240)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // fc00::/7 unique local, fe80::/10 link-local.
        || (first & 0xfe00) == 0xfc00
        || (first & 0xffc0) == 0xfe80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_called_unless_allowed() {
        let none = Outbound::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(!none.allowed(ip), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(none.allowed(ip), "{ip}");
        }
        let some = Outbound::new(&["127.0.0.1/32".into(), "10.0.0.0/8".into()]).expect("cidrs");
        assert!(some.allowed("127.0.0.1".parse().expect("ip")));
        assert!(some.allowed("10.9.9.9".parse().expect("ip")));
        assert!(!some.allowed("127.0.0.2".parse().expect("ip")));
        assert!(Outbound::new(&["10.0.0.0/33".into()]).is_err());
    }

    #[tokio::test]
    async fn the_address_connected_to_is_the_one_checked() {
        let none = Outbound::default();
        assert_eq!(
            none.resolve("http://127.0.0.1:9/x").await,
            Err(Refused::NotAllowed)
        );
        assert_eq!(
            none.resolve("http://localhost:9/x").await,
            Err(Refused::NotAllowed),
            "a name resolving to loopback"
        );
        assert_eq!(
            none.resolve("http://[::1]:9/").await,
            Err(Refused::NotAllowed)
        );
        assert_eq!(none.resolve("ftp://x/").await, Err(Refused::BadUrl));
        let allowed = Outbound::new(&["127.0.0.0/8".into()]).expect("cidr");
        let (addr, host) = allowed
            .resolve("http://localhost:9/x")
            .await
            .expect("allowed");
        assert!(addr.ip().is_loopback());
        assert_eq!(addr.port(), 9);
        assert_eq!(host, "localhost:9");
        assert!(none.literal_refused("http://10.0.0.1/cb"));
        assert!(!none.literal_refused("http://example.org/cb"));
    }
}
