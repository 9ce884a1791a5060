//! The nftables ruleset of every worker's network namespace, built as typed
//! `nftables` values in one batch (one transaction when loaded).
//!
//! Default deny in every direction; loopback is allowed so the kernel's own
//! machinery works. In allowlist mode, new outgoing connections may go to the
//! configured destinations only, replies to them come back, and nothing may
//! connect in. In internet mode, DNS may go to the mode's resolver only, every
//! non-public network is dropped, and the rest is accepted; replies come back
//! and nothing may connect in either. The worker's entrypoint loads this
//! before any user code runs and refuses to start the kernel when loading
//! fails (fail closed).

use std::borrow::Cow;
use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

use super::network::Cidr;

/// Our table; `inet` covers IPv4 and IPv6.
pub const TABLE: &str = "code_interpreter";
const FAMILY: NfFamily = NfFamily::INet;
const INPUT: &str = "input";
const OUTPUT: &str = "output";
const FORWARD: &str = "forward";
const PRIORITY: i32 = 0;

/// The DNS port, TCP and UDP.
const DNS_PORT: u16 = 53;

/// Where new outgoing connections of a worker may go.
#[derive(Clone, Copy, Debug)]
pub enum Egress<'a> {
    /// To these destinations only (empty: nowhere).
    Only(&'a [Allowed]),
    /// To any address outside `dropped`; DNS only to `resolver`.
    Public {
        resolver: IpAddr,
        dropped: &'a [Cidr],
    },
}

/// A destination a worker may connect to: a network and optionally a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub addr: IpAddr,
    pub prefix: u8,
    /// TCP or UDP destination port; `None` allows every port.
    pub port: Option<u16>,
}

/// The whole ruleset for a worker whose new outgoing connections may go to `egress`.
pub fn ruleset(egress: Egress) -> Nftables<'static> {
    let mut batch = Batch::new();
    // table inet code_interpreter
    batch.add(NfListObject::Table(Table {
        family: FAMILY,
        name: TABLE.into(),
        handle: None,
    }));
    for (name, hook) in [
        (INPUT, NfHook::Input),
        (OUTPUT, NfHook::Output),
        (FORWARD, NfHook::Forward),
    ] {
        // chain NAME { type filter hook NAME priority 0; policy drop; }
        batch.add(NfListObject::Chain(Chain {
            family: FAMILY,
            table: TABLE.into(),
            name: name.into(),
            _type: Some(NfChainType::Filter),
            hook: Some(hook),
            prio: Some(PRIORITY),
            policy: Some(NfChainPolicy::Drop),
            ..Chain::default()
        }));
    }
    // input: iifname "lo" accept
    batch.add(rule(
        INPUT,
        vec![matches(meta(MetaKey::Iifname), string("lo")), accept()],
    ));
    // output: oifname "lo" accept
    batch.add(rule(
        OUTPUT,
        vec![matches(meta(MetaKey::Oifname), string("lo")), accept()],
    ));
    let any_egress = match egress {
        Egress::Only(allowed) => !allowed.is_empty(),
        Egress::Public { .. } => true,
    };
    if any_egress {
        // input: ct state established,related accept (replies only; nothing new comes in)
        batch.add(rule(INPUT, vec![established_or_related(), accept()]));
        // output: ct state established,related accept
        batch.add(rule(OUTPUT, vec![established_or_related(), accept()]));
    }
    match egress {
        Egress::Only(allowed) => {
            for destination in allowed {
                batch.add(rule(OUTPUT, allow_destination(destination)));
            }
        }
        Egress::Public { resolver, dropped } => {
            for statements in public_egress(resolver, dropped) {
                batch.add(rule(OUTPUT, statements));
            }
        }
    }
    batch.to_nftables()
}

/// output: ip[6] daddr ADDR/PREFIX [meta l4proto { tcp, udp } th dport PORT] accept
fn allow_destination(destination: &Allowed) -> Vec<Statement<'static>> {
    let mut statements = vec![daddr_in(Cidr {
        addr: destination.addr,
        prefix: destination.prefix,
    })];
    if let Some(port) = destination.port {
        statements.extend(tcp_or_udp_to(port));
    }
    statements.push(accept());
    statements
}

/// The output rules of internet mode, in order: DNS to `resolver` accepted,
/// DNS anywhere else dropped, each of `dropped` dropped, the rest accepted.
/// Each drop counts what it caught.
fn public_egress(resolver: IpAddr, dropped: &[Cidr]) -> Vec<Vec<Statement<'static>>> {
    let mut rules = Vec::with_capacity(dropped.len() + 3);
    // ip daddr RESOLVER meta l4proto { tcp, udp } th dport 53 accept
    let mut dns = vec![daddr_in(Cidr {
        addr: resolver,
        prefix: if resolver.is_ipv4() { 32 } else { 128 },
    })];
    dns.extend(tcp_or_udp_to(DNS_PORT));
    dns.push(accept());
    rules.push(dns);
    // meta l4proto { tcp, udp } th dport 53 counter drop
    let mut other_dns = tcp_or_udp_to(DNS_PORT);
    other_dns.extend([counter(), drop_packet()]);
    rules.push(other_dns);
    // ip[6] daddr NETWORK counter drop
    for network in dropped {
        rules.push(vec![daddr_in(*network), counter(), drop_packet()]);
    }
    // accept
    rules.push(vec![accept()]);
    rules
}

/// The ruleset as the JSON `nft -j -f` reads.
pub fn ruleset_json(egress: Egress) -> String {
    serde_json::to_string(&ruleset(egress)).expect("an nftables ruleset serialises")
}

/// ip[6] daddr ADDR/PREFIX
fn daddr_in(network: Cidr) -> Statement<'static> {
    let protocol = if network.addr.is_ipv4() { "ip" } else { "ip6" };
    matches(
        payload(protocol, "daddr"),
        Expression::Named(NamedExpression::Prefix(Prefix {
            addr: Box::new(string(network.addr.to_string())),
            len: u32::from(network.prefix),
        })),
    )
}

/// meta l4proto { tcp, udp } th dport PORT
fn tcp_or_udp_to(port: u16) -> Vec<Statement<'static>> {
    vec![
        Statement::Match(Match {
            left: meta(MetaKey::L4proto),
            right: Expression::Named(NamedExpression::Set(vec![
                nftables::expr::SetItem::Element(string("tcp")),
                nftables::expr::SetItem::Element(string("udp")),
            ])),
            op: Operator::IN,
        }),
        matches(payload("th", "dport"), Expression::Number(u32::from(port))),
    ]
}

fn rule(chain: &'static str, statements: Vec<Statement<'static>>) -> NfListObject<'static> {
    NfListObject::Rule(Rule {
        family: FAMILY,
        table: TABLE.into(),
        chain: chain.into(),
        expr: Cow::Owned(statements),
        ..Rule::default()
    })
}

fn matches(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    Statement::Match(Match {
        left,
        right,
        op: Operator::EQ,
    })
}

fn established_or_related() -> Statement<'static> {
    Statement::Match(Match {
        left: Expression::Named(NamedExpression::CT(CT {
            key: "state".into(),
            family: None,
            dir: None,
        })),
        right: Expression::List(vec![string("established"), string("related")]),
        op: Operator::IN,
    })
}

fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: protocol.into(),
            field: field.into(),
        },
    )))
}

fn string(value: impl Into<Cow<'static, str>>) -> Expression<'static> {
    Expression::String(value.into())
}

fn accept() -> Statement<'static> {
    Statement::Accept(None)
}

fn drop_packet() -> Statement<'static> {
    Statement::Drop(None)
}

/// An anonymous counter (`nft list ruleset` shows what each drop caught).
fn counter() -> Statement<'static> {
    Statement::Counter(nftables::stmt::Counter::Anonymous(Some(
        nftables::stmt::AnonymousCounter::default(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn rules(json: &str) -> Vec<Value> {
        let value: Value = serde_json::from_str(json).unwrap();
        value["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| {
                o["add"]["rule"]
                    .as_object()
                    .map(|r| Value::Object(r.clone()))
            })
            .collect()
    }

    #[test]
    fn without_destinations_only_loopback_passes() {
        let json = ruleset_json(Egress::Only(&[]));
        let value: Value = serde_json::from_str(&json).unwrap();
        let chains: Vec<&Value> = value["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|o| o["add"].get("chain"))
            .collect();
        assert_eq!(chains.len(), 3);
        assert!(chains.iter().all(|c| c["policy"] == "drop"));
        let rules = rules(&json);
        assert_eq!(rules.len(), 2);
        assert!(json.contains(r#""iifname""#) && json.contains(r#""oifname""#));
    }

    #[test]
    fn each_destination_is_one_output_rule() {
        let allowed = [
            Allowed {
                addr: "10.0.2.2".parse().unwrap(),
                prefix: 32,
                port: Some(8080),
            },
            Allowed {
                addr: "2001:db8::".parse().unwrap(),
                prefix: 32,
                port: None,
            },
        ];
        let rules = rules(&ruleset_json(Egress::Only(&allowed)));
        // loopback ×2, established ×2, destinations ×2
        assert_eq!(rules.len(), 6);
        let last_two: Vec<String> = rules[4..].iter().map(|r| r.to_string()).collect();
        assert!(last_two[0].contains("10.0.2.2") && last_two[0].contains("8080"));
        assert!(last_two[1].contains("2001:db8::") && last_two[1].contains("ip6"));
        assert!(rules[4..].iter().all(|r| r["chain"] == "output"));
    }

    /// The internet-mode ruleset with the real list of non-public networks.
    fn internet() -> String {
        ruleset_json(Egress::Public {
            resolver: crate::worker::network::SLIRP_RESOLVER,
            dropped: &crate::worker::network::NON_PUBLIC,
        })
    }

    /// The output chain's rules, in order.
    fn output_rules(json: &str) -> Vec<Value> {
        rules(json)
            .into_iter()
            .filter(|r| r["chain"] == "output")
            .collect()
    }

    /// The `daddr` prefix a rule matches, as "ADDR/LEN", if any.
    fn daddr(rule: &Value) -> Option<String> {
        rule["expr"].as_array()?.iter().find_map(|s| {
            let m = &s["match"];
            (m["left"]["payload"]["field"] == "daddr").then(|| {
                let p = &m["right"]["prefix"];
                format!("{}/{}", p["addr"].as_str().unwrap(), p["len"])
            })
        })
    }

    /// The destination port a rule matches, if any.
    fn dport(rule: &Value) -> Option<u64> {
        rule["expr"].as_array()?.iter().find_map(|s| {
            let m = &s["match"];
            (m["left"]["payload"]["field"] == "dport").then(|| m["right"].as_u64().unwrap())
        })
    }

    fn verdict(rule: &Value) -> &str {
        let last = rule["expr"].as_array().unwrap().last().unwrap();
        last.as_object().unwrap().keys().next().unwrap()
    }

    #[test]
    fn internet_mode_drops_every_non_public_network() {
        let json = internet();
        let output = output_rules(&json);
        let dropped: Vec<String> = output
            .iter()
            .filter(|r| verdict(r) == "drop")
            .filter_map(daddr)
            .collect();
        let expected = [
            "127.0.0.0/8",
            "0.0.0.0/8",
            "10.0.0.0/8",
            "100.64.0.0/10",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "255.255.255.255/32",
            "::1/128",
            "::/128",
            "::ffff:0.0.0.0/96",
            "64:ff9b::/96",
            "fc00::/7",
            "fe80::/10",
            "ff00::/8",
            "2001:db8::/32",
            "2002::/16",
        ];
        for network in expected {
            assert!(
                dropped.iter().any(|d| d == network),
                "{network} not dropped"
            );
        }
        assert_eq!(dropped.len(), expected.len(), "{dropped:?}");
        // IPv6 networks are matched as ip6, IPv4 ones as ip.
        for rule in output.iter().filter(|r| daddr(r).is_some()) {
            let protocol = rule.to_string().contains(r#""protocol":"ip6""#);
            assert_eq!(protocol, daddr(rule).unwrap().contains(':'), "{rule}");
        }
    }

    #[test]
    fn internet_mode_sends_dns_only_to_the_resolver() {
        let output = output_rules(&internet());
        let dns: Vec<&Value> = output.iter().filter(|r| dport(r) == Some(53)).collect();
        assert_eq!(dns.len(), 2, "{output:?}");
        // First: to the resolver, accepted; then: to anyone else, dropped.
        assert_eq!(daddr(dns[0]).as_deref(), Some("10.0.2.3/32"));
        assert_eq!(verdict(dns[0]), "accept");
        assert_eq!(daddr(dns[1]), None);
        assert_eq!(verdict(dns[1]), "drop");
        let dns_at = |rule: &Value| output.iter().position(|r| r == rule).unwrap();
        let first_range_drop = output
            .iter()
            .position(|r| daddr(r).is_some() && verdict(r) == "drop")
            .unwrap();
        assert!(dns_at(dns[0]) < dns_at(dns[1]) && dns_at(dns[1]) < first_range_drop);
    }

    #[test]
    fn internet_mode_accepts_the_rest_and_nothing_new_comes_in() {
        let json = internet();
        let output = output_rules(&json);
        // Loopback and replies first, an unconditional accept last.
        assert!(output[0].to_string().contains(r#""oifname""#));
        assert!(output[1].to_string().contains("established"));
        let last = output.last().unwrap();
        assert_eq!(last["expr"], serde_json::json!([{"accept": null}]));
        let input: Vec<Value> = rules(&json)
            .into_iter()
            .filter(|r| r["chain"] == "input")
            .collect();
        assert_eq!(input.len(), 2, "lo and replies only: {input:?}");
        assert!(!json.contains(r#""chain":"forward","expr""#));
    }

    /// The host's nft (as root, in a throwaway network namespace) accepts
    /// the rulesets as the entrypoint loads them; skipped where that cannot run.
    #[test]
    fn nft_loads_every_ruleset() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let allowed = [Allowed {
            addr: "10.0.2.2".parse().unwrap(),
            prefix: 32,
            port: Some(8080),
        }];
        for json in [internet(), ruleset_json(Egress::Only(&allowed))] {
            let child = Command::new("unshare")
                .args(["--net", "--", "/usr/sbin/nft", "-j", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let Ok(mut child) = child else {
                eprintln!("skipped: no unshare");
                return;
            };
            child
                .stdin
                .take()
                .unwrap()
                .write_all(json.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("Operation not permitted") || stderr.contains("No such file") {
                eprintln!("skipped: {stderr}");
                return;
            }
            assert!(out.status.success(), "nft refused the ruleset: {stderr}");
        }
    }
}
