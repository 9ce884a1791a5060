//! What a worker may reach in each `network.mode`.
//!
//! `allowlist`: the configured entries become firewall destinations and
//! `/etc/hosts` entries. Host names are resolved by the gateway (control
//! path), so workers need no DNS: a name maps to the addresses it had when the
//! worker was made.
//!
//! `internet`: every public address, none of [`NON_PUBLIC`], and DNS only
//! through slirp4netns's resolver ([`SLIRP_RESOLVER`]).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

use super::firewall::{Allowed, Egress};
use crate::config::{AllowEntry, NetworkConfig, NetworkMode};

/// slirp4netns's DNS forwarder (it relays to the host's resolvers): the only
/// DNS server of a worker in internet mode. slirp4netns runs without IPv6
/// (Podman 4.3 would not name its IPv6 resolver in resolv.conf anyway).
pub const SLIRP_RESOLVER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 3));

/// A network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network (an IPv4 address is never in an IPv6 network).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
    }
}

const fn v6(first: u16, second: u16, sixth: u16, prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(first, second, 0, 0, 0, sixth, 0, 0)),
        prefix,
    }
}

/// Destinations a worker in internet mode never reaches (its output chain
/// drops them), IPv4 then IPv6: loopback, "this network", private networks
/// (10/8 holds slirp4netns's 10.0.2.2, the host's loopback, hence the
/// gateway's port), CGNAT, link-local (cloud metadata at 169.254.169.254),
/// IETF protocol assignments, documentation and benchmarking networks,
/// multicast, reserved and broadcast; unspecified, IPv4-mapped, NAT64,
/// unique-local, link-local, multicast, documentation and 6to4. The README's
/// internet mode section lists the same (a test compares them).
pub const NON_PUBLIC: [Cidr; 24] = [
    v4(0, 0, 0, 0, 8),
    v4(10, 0, 0, 0, 8),
    v4(100, 64, 0, 0, 10),
    v4(127, 0, 0, 0, 8),
    v4(169, 254, 0, 0, 16),
    v4(172, 16, 0, 0, 12),
    v4(192, 0, 0, 0, 24),
    v4(192, 0, 2, 0, 24),
    v4(192, 168, 0, 0, 16),
    v4(198, 18, 0, 0, 15),
    v4(198, 51, 100, 0, 24),
    v4(203, 0, 113, 0, 24),
    v4(224, 0, 0, 0, 4),
    v4(240, 0, 0, 0, 4),
    v4(255, 255, 255, 255, 32),
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::LOCALHOST),
        prefix: 128,
    },
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        prefix: 128,
    },
    v6(0, 0, 0xffff, 96),
    v6(0x64, 0xff9b, 0, 96),
    v6(0xfc00, 0, 0, 7),
    v6(0xfe80, 0, 0, 10),
    v6(0xff00, 0, 0, 8),
    v6(0x2001, 0xdb8, 0, 32),
    v6(0x2002, 0, 0, 16),
];

/// Where new outgoing connections of a worker may go in `mode`, given what
/// its allowlist resolved to (empty outside allowlist mode).
pub fn egress(mode: NetworkMode, reachable: &Reachable) -> Egress<'_> {
    match mode {
        NetworkMode::None | NetworkMode::Allowlist => Egress::Only(&reachable.allowed),
        NetworkMode::Internet => Egress::Public {
            resolver: SLIRP_RESOLVER,
            dropped: &NON_PUBLIC,
        },
    }
}

/// One line for the start-up log: the mode in force and what it lets through.
pub fn describe(config: &NetworkConfig) -> String {
    match config.mode {
        NetworkMode::None => "network: none (workers have only loopback)".into(),
        NetworkMode::Allowlist => format!(
            "network: allowlist (workers reach only {} configured destination(s); no DNS)",
            config.allow.len()
        ),
        NetworkMode::Internet => format!(
            "network: internet (workers reach public IPv4 addresses through slirp4netns; \
             {} non-public IPv4/IPv6 ranges dropped, the host's loopback among them; \
             DNS only via {SLIRP_RESOLVER})",
            NON_PUBLIC.len()
        ),
    }
}

/// What a worker may reach, ready for the ruleset and the container spec.
#[derive(Default)]
pub struct Reachable {
    pub allowed: Vec<Allowed>,
    pub hosts: Vec<(String, IpAddr)>,
}

/// Resolves every entry; a name that does not resolve is an error.
pub async fn resolve(entries: &[AllowEntry]) -> Result<Reachable> {
    let mut reachable = Reachable::default();
    for entry in entries {
        match entry {
            AllowEntry::Net { addr, prefix, port } => reachable.allowed.push(Allowed {
                addr: *addr,
                prefix: *prefix,
                port: *port,
            }),
            AllowEntry::Host { name, port } => {
                let addrs = tokio::net::lookup_host((name.as_str(), *port))
                    .await
                    .with_context(|| format!("resolving allowlisted host {name}"))?;
                for addr in addrs {
                    let ip = addr.ip();
                    let prefix = if ip.is_ipv4() { 32 } else { 128 };
                    reachable.allowed.push(Allowed {
                        addr: ip,
                        prefix,
                        port: Some(*port),
                    });
                    if ip.is_ipv4() && !reachable.hosts.iter().any(|(n, _)| n == name) {
                        reachable.hosts.push((name.clone(), ip));
                    }
                }
            }
        }
    }
    Ok(reachable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_pass_through_and_localhost_resolves() {
        let entries = [
            AllowEntry::parse("10.0.2.2:8080").unwrap(),
            AllowEntry::parse("localhost:9000").unwrap(),
        ];
        let reachable = resolve(&entries).await.unwrap();
        assert_eq!(reachable.allowed[0].port, Some(8080));
        assert!(reachable.allowed[1..]
            .iter()
            .all(|a| a.addr.is_loopback() && a.port == Some(9000)));
        assert_eq!(reachable.hosts[0].0, "localhost");
    }

    #[test]
    fn non_public_ranges_are_what_the_readme_lists() {
        let printed: Vec<String> = NON_PUBLIC.iter().map(Cidr::to_string).collect();
        assert_eq!(printed[0], "0.0.0.0/8");
        assert!(
            printed.contains(&"::ffff:0.0.0.0/96".to_string()),
            "{printed:?}"
        );
        assert!(printed.contains(&"64:ff9b::/96".to_string()), "{printed:?}");
        assert!(
            printed.contains(&"2001:db8::/32".to_string()),
            "{printed:?}"
        );
        assert!(printed.contains(&"::1/128".to_string()), "{printed:?}");
        let readme = include_str!("../../README.md");
        let section = readme
            .split("\n### ")
            .find(|s| s.starts_with("Internet mode\n"))
            .expect("README has an internet mode section");
        for cidr in &printed {
            assert!(
                section.contains(&format!("`{cidr}`")),
                "README lacks {cidr}"
            );
        }
    }

    #[test]
    fn non_public_ranges_hold_the_host_loopback_and_the_metadata_address() {
        let inside = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            NON_PUBLIC.iter().any(|c| c.contains(ip))
        };
        for ip in [
            "10.0.2.2",
            "169.254.169.254",
            "127.0.0.1",
            "100.100.1.1",
            "fd00::2",
            "fe80::1",
        ] {
            assert!(inside(ip), "{ip} is reachable");
        }
        for ip in ["1.1.1.1", "2606:4700::1111", "8.8.8.8"] {
            assert!(!inside(ip), "{ip} is dropped");
        }
    }
}
