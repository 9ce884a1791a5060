//! Turns the configured allowlist into firewall destinations and `/etc/hosts`
//! entries. Host names are resolved by the gateway (control path), so workers
//! need no DNS: a name maps to the addresses it had when the worker was made.

use std::net::IpAddr;

use anyhow::{Context, Result};

use super::firewall::Allowed;
use crate::config::AllowEntry;

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
}
