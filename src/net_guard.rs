//! Which addresses the gateway itself may connect to when it moves files by
//! URL (`POST /files`, `POST /files/export`): the SSRF guard.
//!
//! The gateway sits next to things a user must not reach through it: its own
//! loopback services, the host's private networks, a cloud's metadata service
//! (169.254.169.254). Every address a transfer would connect to is classified
//! here first; refused ones are never connected to. [`GuardedResolver`] is the
//! DNS resolver of the transfer client, so the address that was checked is the
//! address that is connected to (a DNS answer that changes between a check and
//! the connection gets nowhere). An operator allow-list (`files.url_allow`)
//! makes chosen networks reachable on purpose (tests, a private object store).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::Deserialize;

/// One `files.url_allow` entry: an address or a network, "CIDR" or "IP".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("files.url_allow entry {text:?} is not a CIDR or an IP address");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }

    /// Whether `ip` lies in this network. Families are not mixed: an IPv4
    /// entry does not match the IPv4-mapped IPv6 form of its addresses.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(u128::from(net), u128::from(ip), self.prefix, 128)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, prefix: u8, bits: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (a >> shift) == (b >> shift)
}

/// Why `ip` must not be connected to, or `None` for a public unicast address.
/// A pure function of the address; the allow-list is applied by [`Guard`].
pub fn refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refusal_v4(v4),
        IpAddr::V6(v6) => refusal_v6(v6),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let n = u32::from(ip);
    let within = |net: [u8; 4], prefix: u8| {
        prefix_eq(u32::from(Ipv4Addr::from(net)).into(), n.into(), prefix, 32)
    };
    let reason = if within([0, 0, 0, 0], 8) {
        "an unspecified (\"this network\") address"
    } else if within([127, 0, 0, 0], 8) {
        "a loopback address"
    } else if within([10, 0, 0, 0], 8)
        || within([172, 16, 0, 0], 12)
        || within([192, 168, 0, 0], 16)
    {
        "a private address"
    } else if within([100, 64, 0, 0], 10) {
        "a shared (CGNAT) address"
    } else if within([169, 254, 0, 0], 16) {
        "a link-local address (cloud metadata services live there)"
    } else if within([224, 0, 0, 0], 4) {
        "a multicast address"
    } else if within([240, 0, 0, 0], 4) {
        "a reserved or broadcast address"
    } else if within([192, 0, 0, 0], 24) || within([192, 88, 99, 0], 24) {
        "a special-purpose address"
    } else if within([192, 0, 2, 0], 24)
        || within([198, 51, 100, 0], 24)
        || within([203, 0, 113, 0], 24)
    {
        "a documentation address"
    } else if within([198, 18, 0, 0], 15) {
        "a benchmarking address"
    } else {
        return None;
    };
    Some(reason)
}

fn refusal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let n = u128::from(ip);
    let within = |net: u128, prefix: u8| prefix_eq(net, n, prefix, 128);
    let embedded_v4 = |shift: u32| Ipv4Addr::from((n >> shift) as u32);
    if n == 0 {
        return Some("the unspecified address");
    }
    if n == 1 {
        return Some("a loopback address");
    }
    // ::ffff:a.b.c.d reaches a.b.c.d: judged as that address.
    if within(0xffff << 32, 96) {
        return refusal_v4(embedded_v4(0)).map(|_| "an IPv4-mapped form of a refused address");
    }
    // NAT64 (well-known prefix) reaches the embedded IPv4 address.
    if within(0x0064_ff9b << 96, 96) {
        return refusal_v4(embedded_v4(0)).map(|_| "a NAT64 form of a refused address");
    }
    if within(0x0064_ff9b_0001 << 80, 48) {
        return Some("a local-use NAT64 address");
    }
    // The rest of ::/8: IPv4-compatible (::a.b.c.d), IPv4-translated and reserved.
    if within(0, 8) {
        return Some("a reserved IPv6 address (IPv4-compatible or translated form)");
    }
    // 6to4 reaches the IPv4 address in bits 16..48.
    if within(0x2002 << 112, 16) {
        return refusal_v4(embedded_v4(80)).map(|_| "a 6to4 form of a refused address");
    }
    let reason = if within(0x0100 << 112, 64) {
        "a discard-only address"
    } else if within(0x2001 << 112, 23) {
        // Teredo (2001::/32, which embeds IPv4 addresses), ORCHID and other
        // protocol assignments.
        "an IETF special-purpose address (Teredo included)"
    } else if within(0x2001_0db8 << 96, 32) || within(0x3fff << 112, 20) {
        "a documentation address"
    } else if within(0xfc00 << 112, 7) {
        "a unique local (private) address"
    } else if within(0xfe80 << 112, 10) {
        "a link-local address"
    } else if within(0xfec0 << 112, 10) {
        "a site-local address"
    } else if within(0xff00 << 112, 8) {
        "a multicast address"
    } else {
        return None;
    };
    Some(reason)
}

/// An address the guard refused, with the reason (a client's error message).
#[derive(Debug, Clone)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The refusal list plus the operator's allow-list.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    allow: Vec<Cidr>,
}

impl Guard {
    pub fn new(allow: Vec<Cidr>) -> Self {
        Self { allow }
    }

    /// `Ok` when `ip` may be connected to: allow-listed, or not refused.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if self.allow.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        match refusal(ip) {
            Some(reason) => Err(Refused(format!(
                "{ip} is {reason}; the gateway does not connect there (files.url_allow lists exceptions)"
            ))),
            None => Ok(()),
        }
    }

    /// Resolves `host` and keeps the addresses that may be connected to; an
    /// error when none may (the first refusal says why).
    pub async fn resolve(
        &self,
        host: &str,
    ) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
        let mut first_refusal = None;
        let mut checked = Vec::with_capacity(found.len());
        for addr in found {
            match self.check(addr.ip()) {
                Ok(()) => checked.push(addr),
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        if checked.is_empty() {
            let refused =
                first_refusal.unwrap_or_else(|| Refused(format!("{host} has no address")));
            return Err(Box::new(Refused(format!("{host}: {refused}"))));
        }
        Ok(checked)
    }
}

/// The transfer client's DNS resolver: only checked addresses come out, so
/// only checked addresses are connected to.
#[derive(Clone)]
pub struct GuardedResolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = Arc::clone(&self.0);
        Box::pin(async move {
            let addrs = guard.resolve(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> bool {
        refusal(text.parse().unwrap()).is_some()
    }

    #[test]
    fn internal_ipv4_addresses_are_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.255.254",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.0.1",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "192.88.99.1",
        ] {
            assert!(refused(ip), "{ip} accepted");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.0.1",
            "223.255.255.255",
            "11.0.0.1",
        ] {
            assert!(!refused(ip), "{ip} refused");
        }
    }

    #[test]
    fn internal_ipv6_addresses_and_ipv4_in_disguise_are_refused() {
        for ip in [
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:7f00:1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::8.8.8.8",
            "::ffff:0:8.8.8.8",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::10.1.2.3",
            "64:ff9b:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
            "2002:0a00:0001::",
            "2002:6440:0001::",
            "2001::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
        ] {
            assert!(refused(ip), "{ip} accepted");
        }
        for ip in [
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(!refused(ip), "{ip} refused");
        }
    }

    #[test]
    fn the_allow_list_makes_chosen_networks_reachable() {
        let guard = Guard::new(vec![
            Cidr::parse("127.0.0.1/32").unwrap(),
            Cidr::parse("10.1.0.0/16").unwrap(),
            Cidr::parse("fd00::5").unwrap(),
        ]);
        let check = |ip: &str| guard.check(ip.parse().unwrap()).is_ok();
        assert!(check("127.0.0.1"));
        assert!(check("10.1.200.3"));
        assert!(check("fd00::5"));
        assert!(check("8.8.8.8"), "public addresses stay reachable");
        assert!(!check("127.0.0.2"));
        assert!(!check("10.2.0.1"));
        assert!(!check("::1"));
        assert!(!check("::ffff:127.0.0.1"), "families are not mixed");
        assert!(!check("169.254.169.254"));
        let error = guard.check("169.254.169.254".parse().unwrap()).unwrap_err();
        assert!(error.0.contains("link-local"), "{error}");
    }

    #[tokio::test]
    async fn resolving_keeps_only_checked_addresses() {
        // Address literals: resolved without DNS.
        let error = Guard::default().resolve("127.0.0.1").await.unwrap_err();
        assert!(error.downcast_ref::<Refused>().is_some(), "{error}");
        let allowed = Guard::new(vec![Cidr::parse("127.0.0.0/8").unwrap()]);
        let addrs = allowed.resolve("127.0.0.1").await.unwrap();
        assert_eq!(addrs, ["127.0.0.1:0".parse::<SocketAddr>().unwrap()]);
        assert!(allowed.resolve("::1").await.is_err());
    }

    #[test]
    fn cidrs_parse() {
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::/0")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(!Cidr::parse("::/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host",
            "10.0.0.0/x",
            "10.0.0.1:80",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
