//! Server-side request forgery guard: which addresses a webhook may connect to.
//!
//! Every address a target's host resolves to is classified; the delivery connects
//! only to an address that passed (no second lookup, so no DNS-rebinding window).
//! Loopback, private, link-local, shared (CGNAT), unspecified, multicast,
//! broadcast, documentation, benchmarking and reserved ranges are denied, as are
//! the IPv6 forms that embed an IPv4 address (mapped, NAT64, 6to4, Teredo) when
//! the embedded address is denied. An allow-list of networks overrides the
//! denial, for local development and tests.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::IpNet;

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address for
/// that one address), parsed and matched by `ipnet`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(IpNet);

impl Network {
    /// Whether `address` lies in this network (IPv4-mapped IPv6 addresses match
    /// IPv4 networks).
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.contains(&canonical(address))
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let text = text.trim();
        if let Ok(network) = text.parse::<IpNet>() {
            // `10.1.2.3/8` means the network 10.0.0.0/8, as in routing tables.
            return Ok(Network(network.trunc()));
        }
        match text.parse::<IpAddr>() {
            Ok(address) => Ok(Network(IpNet::from(address))),
            Err(_) if text.contains('/') => Err(format!(
                "{text:?} is not a CIDR network (an address, '/', a prefix length up to 32 or 128)"
            )),
            Err(_) => Err(format!("{text:?} is not an address or CIDR network")),
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Unwraps an IPv4-mapped IPv6 address to IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => address,
        },
        IpAddr::V4(_) => address,
    }
}

/// Why an address is denied, or `None` when it is public.
pub fn denial(address: IpAddr) -> Option<&'static str> {
    match canonical(address) {
        IpAddr::V4(v4) => denial_v4(v4),
        IpAddr::V6(v6) => denial_v6(v6),
    }
}

fn denial_v4(address: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = address.octets();
    if address.is_unspecified() || a == 0 {
        Some("unspecified or \"this network\" address")
    } else if address.is_loopback() {
        Some("loopback address")
    } else if address.is_private() {
        Some("private address")
    } else if address.is_link_local() {
        Some("link-local address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (CGNAT) address")
    } else if address.is_broadcast() {
        Some("broadcast address")
    } else if address.is_multicast() {
        Some("multicast address")
    } else if address.is_documentation() {
        Some("documentation address")
    } else if a == 198 && (b == 18 || b == 19) {
        Some("benchmarking address")
    } else if a == 192 && b == 0 && c == 0 {
        Some("IETF protocol assignment")
    } else if a >= 240 {
        Some("reserved address")
    } else {
        None
    }
}

fn denial_v6(address: Ipv6Addr) -> Option<&'static str> {
    let segments = address.segments();
    let embedded = |high: u16, low: u16| {
        let [a, b] = high.to_be_bytes();
        let [c, d] = low.to_be_bytes();
        Ipv4Addr::new(a, b, c, d)
    };
    if address.is_unspecified() {
        Some("unspecified address")
    } else if address.is_loopback() {
        Some("loopback address")
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some("unique local (private) address")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("link-local address")
    } else if segments[0] & 0xffc0 == 0xfec0 {
        Some("site-local address")
    } else if address.is_multicast() {
        Some("multicast address")
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        Some("documentation address")
    } else if segments[0] == 0x0064 && segments[1] == 0xff9b {
        // NAT64: judge the embedded IPv4 address.
        denial_v4(embedded(segments[6], segments[7]))
    } else if segments[0] == 0x2002 {
        // 6to4: judge the embedded IPv4 address.
        denial_v4(embedded(segments[1], segments[2]))
    } else if segments[0] == 0x2001 && segments[1] == 0 {
        Some("Teredo address")
    } else if segments[..6] == [0, 0, 0, 0, 0, 0] {
        Some("IPv4-compatible address")
    } else {
        None
    }
}

/// The guard: denied ranges unless allow-listed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Networks allowed even when their addresses would be denied.
    pub allow: Vec<Network>,
}

impl AddressPolicy {
    /// `Ok` when a webhook may connect to `address`, else why not.
    ///
    /// # Errors
    /// The reason the address is denied.
    pub fn check(&self, address: IpAddr) -> Result<(), String> {
        match denial(address) {
            None => Ok(()),
            Some(_) if self.allow.iter().any(|network| network.contains(address)) => Ok(()),
            Some(reason) => Err(format!("{address} is a {reason}; allow it with --webhook-allow")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn internal_ranges_are_denied_and_public_addresses_allowed() {
        // Goal: every range the issue names is denied, in both families and in embedded forms.
        for denied in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "::127.0.0.1",
        ] {
            assert!(denial(ip(denied)).is_some(), "{denied} must be denied");
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(denial(ip(allowed)), None, "{allowed} must be allowed");
        }
    }

    #[test]
    fn allow_list_overrides_denial_only_inside_its_networks() {
        // Goal: an allow-listed network opens exactly its addresses, mapped forms included.
        let policy = AddressPolicy {
            allow: vec![
                "127.0.0.0/8".parse().expect("network"),
                "::1".parse().expect("network"),
            ],
        };
        assert!(policy.check(ip("127.0.0.1")).is_ok());
        assert!(policy.check(ip("::ffff:127.0.0.2")).is_ok());
        assert!(policy.check(ip("::1")).is_ok());
        assert!(policy.check(ip("10.0.0.1")).is_err());
        assert!(AddressPolicy::default().check(ip("127.0.0.1")).is_err());
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .expect("network")
                .contains(ip("10.0.0.1"))
        );
        assert!("10.0.0.0/33".parse::<Network>().is_err());
        assert!("10.0.0.0/".parse::<Network>().is_err());
        // Host bits are dropped: the network of 10.1.2.3/8 is 10.0.0.0/8.
        let network = "10.1.2.3/8".parse::<Network>().expect("network");
        assert_eq!(network.to_string(), "10.0.0.0/8");
        assert!(network.contains(ip("10.200.0.1")));
        assert!(network.contains(ip("::ffff:10.200.0.1")));
        assert!(!network.contains(ip("11.0.0.1")));
        assert!("nope".parse::<Network>().is_err());
    }
}
