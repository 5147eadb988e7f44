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

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`, or a bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix_len: u8,
}

impl Network {
    /// Whether `address` lies in this network (IPv4-mapped IPv6 addresses match
    /// IPv4 networks).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Network, String> {
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, prefix_len)) => (address, Some(prefix_len)),
            None => (text, None),
        };
        let address: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an address or CIDR network"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            Some(prefix_len) => prefix_len
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix_len| *prefix_len <= bits)
                .ok_or_else(|| format!("{text:?} has a bad prefix length"))?,
            None => bits,
        };
        Ok(Network { address, prefix_len })
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
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
        assert!("nope".parse::<Network>().is_err());
    }
}
