//! The nftables ruleset of every worker's network namespace, built as typed
//! `nftables` values in one batch (one transaction when loaded).
//!
//! Default deny in every direction; loopback is allowed so the kernel's own
//! machinery works. In allowlist mode, new outgoing connections may go to the
//! configured destinations only, replies to them come back, and nothing may
//! connect in. The worker's entrypoint loads this before any user code runs
//! and refuses to start the kernel when loading fails (fail closed).

use std::borrow::Cow;
use std::net::IpAddr;

use nftables::batch::Batch;
use nftables::expr::{
    Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField, Prefix, CT,
};
use nftables::schema::{Chain, NfListObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};

/// Our table; `inet` covers IPv4 and IPv6.
pub const TABLE: &str = "code_interpreter";
const FAMILY: NfFamily = NfFamily::INet;
const INPUT: &str = "input";
const OUTPUT: &str = "output";
const FORWARD: &str = "forward";
const PRIORITY: i32 = 0;

/// A destination a worker may connect to: a network and optionally a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    pub addr: IpAddr,
    pub prefix: u8,
    /// TCP or UDP destination port; `None` allows every port.
    pub port: Option<u16>,
}

/// The whole ruleset for a worker that may reach `allowed` (empty: nothing).
pub fn ruleset(allowed: &[Allowed]) -> Nftables<'static> {
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
    if !allowed.is_empty() {
        // input: ct state established,related accept (replies only; nothing new comes in)
        batch.add(rule(INPUT, vec![established_or_related(), accept()]));
        // output: ct state established,related accept
        batch.add(rule(OUTPUT, vec![established_or_related(), accept()]));
    }
    for destination in allowed {
        // output: ip[6] daddr ADDR/PREFIX [meta l4proto { tcp, udp } th dport PORT] accept
        let protocol = if destination.addr.is_ipv4() {
            "ip"
        } else {
            "ip6"
        };
        let mut statements = vec![matches(
            payload(protocol, "daddr"),
            Expression::Named(NamedExpression::Prefix(Prefix {
                addr: Box::new(string(destination.addr.to_string())),
                len: u32::from(destination.prefix),
            })),
        )];
        if let Some(port) = destination.port {
            statements.push(Statement::Match(Match {
                left: meta(MetaKey::L4proto),
                right: Expression::Named(NamedExpression::Set(vec![
                    nftables::expr::SetItem::Element(string("tcp")),
                    nftables::expr::SetItem::Element(string("udp")),
                ])),
                op: Operator::IN,
            }));
            statements.push(matches(
                payload("th", "dport"),
                Expression::Number(u32::from(port)),
            ));
        }
        statements.push(accept());
        batch.add(rule(OUTPUT, statements));
    }
    batch.to_nftables()
}

/// The ruleset as the JSON `nft -j -f` reads.
pub fn ruleset_json(allowed: &[Allowed]) -> String {
    serde_json::to_string(&ruleset(allowed)).expect("an nftables ruleset serialises")
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
        let json = ruleset_json(&[]);
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
        let rules = rules(&ruleset_json(&allowed));
        // loopback ×2, established ×2, destinations ×2
        assert_eq!(rules.len(), 6);
        let last_two: Vec<String> = rules[4..].iter().map(|r| r.to_string()).collect();
        assert!(last_two[0].contains("10.0.2.2") && last_two[0].contains("8080"));
        assert!(last_two[1].contains("2001:db8::") && last_two[1].contains("ip6"));
        assert!(rules[4..].iter().all(|r| r["chain"] == "output"));
    }
}
