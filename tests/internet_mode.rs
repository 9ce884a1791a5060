//! `network.mode = "internet"` against real rootless Podman: the ruleset
//! loaded in a worker's network namespace, read from outside the worker, drops
//! every non-public range and accepts the rest; and, on the wire, the gateway's
//! port behind the host's loopback (10.0.2.2) and each non-public range are
//! dropped while DNS to the mode's resolver passes.
//!
//! Traffic goes only to addresses these tests create: the gateway's own port,
//! a listener on the worker's loopback, and a network namespace of the test's
//! own joined to the worker by a veth pair, which takes one address in each
//! non-public range (and the resolver's address, as the control that the path
//! works). Nothing is sent to an outside address: that public egress is
//! accepted is read from the ruleset (its final accept), never tried.
//!
//! Needs on the host, besides the harness's: `/usr/sbin/nft`, `ip`
//! (iproute2), `nsenter`, `unshare` and `/usr/bin/python3` (the probe
//! namespace's listener).

mod common;

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};

use common::{Gateway, Options, ServiceUser};
use serde_json::Value;

/// Every network the spec says internet mode drops.
const DROPPED: [&str; 24] = [
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
    "::ffff:0:0/96",
    "64:ff9b::/96",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
    "2001:db8::/32",
    "2002::/16",
];

/// slirp4netns's resolver, the only DNS server of the mode.
const RESOLVER: &str = "10.0.2.3";

async fn internet_gateway() -> Gateway {
    Gateway::start(Options {
        extra: "[network]\nmode = \"internet\"\n".into(),
        ..Options::default()
    })
    .await
}

/// Runs Python in `user`'s session and returns what it printed.
async fn output(gw: &Gateway, user: &str, code: &str) -> String {
    let body = gw.run(user, code).await;
    assert_eq!(body["status"], "ok", "{code}\n{body}");
    body["result_text"].as_str().unwrap().to_string()
}

/// The host pid of a container's first process.
fn container_pid(gw: &Gateway, container: &str) -> u32 {
    let pid = gw
        .svc
        .podman(&["inspect", "--format", "{{.State.Pid}}", container]);
    pid.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid for container {container}: {pid:?}"))
}

/// The ruleset loaded in the worker's network namespace, read from outside
/// the container (in Podman's user namespace, not through `podman exec`).
fn loaded_ruleset(gw: &Gateway, pid: u32) -> Value {
    let pid = pid.to_string();
    let listing = gw.svc.podman(&[
        "unshare",
        "nsenter",
        "-t",
        &pid,
        "-n",
        "/usr/sbin/nft",
        "-j",
        "list",
        "ruleset",
    ]);
    serde_json::from_str(&listing)
        .unwrap_or_else(|e| panic!("reading the worker's ruleset: {e}: {listing:?}"))
}

/// The expressions of each rule of our table's `chain`, in order.
fn chain_rules(ruleset: &Value, chain: &str) -> Vec<Vec<Value>> {
    ruleset["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .filter(|r| r["table"] == "code_interpreter" && r["chain"] == chain)
        .map(|r| r["expr"].as_array().unwrap().clone())
        .collect()
}

/// "ADDR/LEN" → (address, prefix length).
fn network(text: &str) -> (IpAddr, u32) {
    let (addr, len) = text.split_once('/').unwrap();
    (addr.parse().unwrap(), len.parse().unwrap())
}

/// The destination network a rule matches (`ip[6] daddr …`), if any. nft
/// lists a full-length prefix as a bare address.
fn daddr(rule: &[Value]) -> Option<(IpAddr, u32)> {
    rule.iter().find_map(|statement| {
        let m = &statement["match"];
        if m["left"]["payload"]["field"] != "daddr" {
            return None;
        }
        let right = &m["right"];
        if let Some(prefix) = right.get("prefix") {
            let addr = prefix["addr"].as_str()?.parse().ok()?;
            return Some((addr, prefix["len"].as_u64()? as u32));
        }
        let addr: IpAddr = right.as_str()?.parse().ok()?;
        Some((addr, if addr.is_ipv4() { 32 } else { 128 }))
    })
}

/// Whether `ip` lies in `network`.
fn contains((net, len): (IpAddr, u32), ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => {
            let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
            u32::from(net) & mask == u32::from(ip) & mask
        }
        (IpAddr::V6(net), IpAddr::V6(ip)) => {
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            u128::from(net) & mask == u128::from(ip) & mask
        }
        _ => false,
    }
}

/// The destination port a rule matches, if any.
fn dport(rule: &[Value]) -> Option<u64> {
    rule.iter().find_map(|statement| {
        let m = &statement["match"];
        (m["left"]["payload"]["field"] == "dport").then(|| m["right"].as_u64())?
    })
}

/// The packets a rule's counter has counted (0 without a counter).
fn dropped_packets(rule: &[Value]) -> u64 {
    rule.iter()
        .find_map(|statement| statement["counter"]["packets"].as_u64())
        .unwrap_or(0)
}

/// "accept" or "drop" (the rule's last statement), or "" for anything else.
fn verdict(rule: &[Value]) -> &str {
    let last = rule.last().and_then(Value::as_object);
    match last.and_then(|o| o.keys().next()) {
        Some(key) if key == "accept" || key == "drop" => key,
        _ => "",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loaded_ruleset_drops_every_non_public_range_and_the_gateway() {
    let gw = internet_gateway().await;
    assert_eq!(gw.status().await["limits"]["network"], "internet");
    assert!(
        gw.log().contains("network: internet"),
        "the start-up log does not name the mode:\n{}",
        gw.log()
    );
    let port = gw.url.rsplit(':').next().unwrap().to_string();
    let report = output(
        &gw,
        "alice",
        &format!(
            r#"
import socket, threading
print("nameservers", [l.split()[1] for l in open("/etc/resolv.conf") if l.startswith("nameserver")])
print("interfaces", sorted(name for _, name in socket.if_nameindex()))
def attempt(host, port):
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            return "connected " + s.recv(5).decode()
    except OSError as e:
        return type(e).__name__
server = socket.create_server(("127.0.0.1", 0))
def greet():
    connection, _ = server.accept()
    connection.sendall(b"hello")
    connection.close()
threading.Thread(target=greet, daemon=True).start()
print("own-loopback", attempt("127.0.0.1", server.getsockname()[1]))
print("gateway", attempt("10.0.2.2", {port}))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
try:
    udp.sendto(b"x", ("10.0.2.2", 53))
    print("dns-elsewhere sent")
except OSError as e:
    print("dns-elsewhere", type(e).__name__)
"#
        ),
    )
    .await;
    eprintln!("{report}");
    let line = |key: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {report}"))
            .to_string()
    };
    assert_eq!(line("nameservers"), format!("['{RESOLVER}']"), "{report}");
    assert_eq!(line("interfaces"), "['lo', 'tap0']", "{report}");
    // The worker's own loopback works. The gateway's port through the host's
    // loopback does not answer (its SYNs are dropped: TCP retries until the
    // timeout; the 10.0.0.0/8 rule's counter below shows they were), and a
    // datagram to a DNS port elsewhere fails at once with EPERM (dropped in
    // the output chain).
    assert_eq!(line("own-loopback"), "connected hello", "{report}");
    assert_eq!(line("gateway"), "TimeoutError", "{report}");
    assert_eq!(line("dns-elsewhere"), "PermissionError", "{report}");

    let container = gw.container_of("alice").await;
    let ruleset = loaded_ruleset(&gw, container_pid(&gw, &container));
    let output_chain = chain_rules(&ruleset, "output");
    // Each non-public network is dropped.
    for text in DROPPED {
        let wanted = network(text);
        assert!(
            output_chain
                .iter()
                .any(|r| daddr(r) == Some(wanted) && verdict(r) == "drop"),
            "{text} is not dropped: {ruleset}"
        );
    }
    // What the attempts above hit: the 10.0.0.0/8 drop and the DNS drop.
    let host_loopback = output_chain
        .iter()
        .find(|r| daddr(r) == Some(network("10.0.0.0/8")))
        .unwrap();
    assert!(dropped_packets(host_loopback) > 0, "{host_loopback:?}");
    let dns_elsewhere = output_chain
        .iter()
        .find(|r| dport(r) == Some(53) && verdict(r) == "drop")
        .unwrap();
    assert!(dropped_packets(dns_elsewhere) > 0, "{dns_elsewhere:?}");
    // DNS: to the resolver only, before the range drops; then dropped elsewhere.
    let dns: Vec<usize> = (0..output_chain.len())
        .filter(|&i| dport(&output_chain[i]) == Some(53))
        .collect();
    assert_eq!(dns.len(), 2, "{ruleset}");
    let to_resolver = &output_chain[dns[0]];
    assert_eq!(daddr(to_resolver), Some((RESOLVER.parse().unwrap(), 32)));
    assert_eq!(verdict(to_resolver), "accept");
    assert_eq!(daddr(&output_chain[dns[1]]), None);
    assert_eq!(verdict(&output_chain[dns[1]]), "drop");
    let first_range_drop = output_chain
        .iter()
        .position(|r| daddr(r).is_some() && verdict(r) == "drop")
        .unwrap();
    assert!(dns[1] < first_range_drop, "{ruleset}");
    // Loopback and replies first; the rest (public egress) accepted last.
    assert!(output_chain[0]
        .iter()
        .any(|s| s.to_string().contains("oifname")));
    let last = output_chain.last().unwrap();
    assert_eq!(last.len(), 1, "the last rule has a condition: {last:?}");
    assert_eq!(verdict(last), "accept");
    // Nothing connects in; nothing is forwarded; every policy is drop.
    let input_chain = chain_rules(&ruleset, "input");
    assert_eq!(input_chain.len(), 2, "{ruleset}");
    assert!(input_chain.iter().all(|r| dport(r).is_none()), "{ruleset}");
    assert!(chain_rules(&ruleset, "forward").is_empty(), "{ruleset}");
    let policies: Vec<&Value> = ruleset["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("chain"))
        .filter(|c| c["table"] == "code_interpreter")
        .map(|c| &c["policy"])
        .collect();
    assert_eq!(policies, ["drop"; 3], "{ruleset}");
}

/// Probe addresses, one in each non-public range a packet can be routed to
/// (TCP port 8080), and the multicast group (UDP).
const PROBES_V4: [&str; 11] = [
    "10.9.9.9",
    "100.64.0.1",
    "169.254.169.254",
    "172.16.0.1",
    "192.0.0.1",
    "192.0.2.1",
    "192.168.0.1",
    "198.18.0.1",
    "198.51.100.1",
    "203.0.113.1",
    "240.0.0.1",
];
const PROBES_V6: [&str; 5] = ["64:ff9b::1", "fd12::1", "fc00::1", "2001:db8::1", "2002::1"];
const MULTICAST_V4: &str = "239.255.0.1";
/// Port the test's namespace listens on besides 53.
const PROBE_PORT: u16 = 8080;

/// A network namespace of the test's own (in Podman's user namespace), with
/// TCP listeners on ports 53 and 8080 that greet with "hello". Killed by pid
/// when dropped; its end of the veth pair, and so the pair, goes with it.
struct ProbeNamespace {
    child: Child,
    pid: u32,
}

/// Listens on 0.0.0.0 and :: at ports 53 and PROBE_PORT; prints its pid once listening.
const LISTENER: &str = r#"
import os, socket, sys, threading
def serve(server):
    while True:
        connection, _ = server.accept()
        connection.sendall(b"hello")
        connection.close()
for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
    for port in (53, int(sys.argv[1])):
        server = socket.create_server((host, port), family=family, dualstack_ipv6=False)
        threading.Thread(target=serve, args=(server,), daemon=True).start()
print(os.getpid(), flush=True)
sys.stdin.read()
"#;

impl ProbeNamespace {
    fn start(svc: &ServiceUser) -> Self {
        let mut child = svc
            .command("podman")
            .args([
                "unshare",
                "unshare",
                "--net",
                "--",
                "/usr/bin/python3",
                "-c",
            ])
            .arg(LISTENER)
            .arg(PROBE_PORT.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the probe namespace (podman unshare unshare --net python3)");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        match line.trim().parse() {
            Ok(pid) => Self { child, pid },
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the probe namespace did not start: {read:?} {line:?}")
            }
        }
    }
}

impl Drop for ProbeNamespace {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.pid.to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Joins the worker (pid `worker`) to the probe namespace (pid `probe`) with
/// a veth pair, gives the probe side the resolver's address and every probe
/// address, routes those through the pair in the worker, and checks each
/// route before any traffic (so no probe can leave through slirp4netns).
fn wire(svc: &ServiceUser, worker: u32, probe: u32) {
    let script = r#"
set -eu
w="nsenter -t $W -n"
p="nsenter -t $P -n"
$w ip link add ci-probe type veth peer name ci-peer
$w ip link set ci-peer netns "$P"
$w ip link set ci-probe up
$p ip link set lo up
$p ip link set ci-peer up
$p ip route add default dev ci-peer
$p ip -6 route add default dev ci-peer
for a in $V4; do
    $p ip addr add "$a/32" dev ci-peer
    $w ip route add "$a/32" dev ci-probe
done
for a in $V6; do
    $p ip -6 addr add "$a/128" dev ci-peer nodad
    $w ip -6 route add "$a/128" dev ci-probe
done
$w ip route add "$M/32" dev ci-probe
# Traffic waits until both ends are up: the kernel activates a link only when
# it processes the carrier change (later on a busy host), and what is sent
# before is dropped. (Seen once in a full test run: the control's connect
# failed with a bare OSError, as when ARP gets no answer.)
up=0
for _ in $(seq 100); do
    if $w ip -o link show ci-probe | grep -q 'state UP' && $p ip -o link show ci-peer | grep -q 'state UP'; then
        up=1
        break
    fi
    sleep 0.05
done
[ "$up" = 1 ] || { echo "the veth pair is not up after 5 s"; $w ip -o link show ci-probe; exit 1; }
for a in $V4 $V6 $M; do
    $w ip route get "$a" | grep -q 'dev ci-probe' || { echo "no route to $a through ci-probe"; $w ip route get "$a"; exit 1; }
done
"#;
    let v4 = std::iter::once(RESOLVER)
        .chain(PROBES_V4)
        .collect::<Vec<_>>()
        .join(" ");
    let output = svc
        .command("podman")
        .args(["unshare", "sh", "-c", script])
        .env("W", worker.to_string())
        .env("P", probe.to_string())
        .env("V4", v4)
        .env("V6", PROBES_V6.join(" "))
        .env("M", MULTICAST_V4)
        .stdin(Stdio::null())
        .output()
        .expect("running podman unshare");
    assert!(
        output.status.success(),
        "wiring the probe namespace to the worker failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_wire_only_dns_to_the_resolver_passes_a_non_public_range() {
    let gw = internet_gateway().await;
    let container = gw.container_of("probe").await;
    let probe = ProbeNamespace::start(&gw.svc);
    wire(&gw.svc, container_pid(&gw, &container), probe.pid);
    let targets: Vec<String> = PROBES_V4
        .iter()
        .chain(PROBES_V6.iter())
        .map(|a| format!("{a:?}"))
        .collect();
    let report = output(
        &gw,
        "probe",
        &format!(
            r#"
import socket
from concurrent.futures import ThreadPoolExecutor
def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET
def tcp(host, port):
    with socket.socket(family(host), socket.SOCK_STREAM) as s:
        s.settimeout(3)
        try:
            s.connect((host, port))
            return "connected " + s.recv(5).decode()
        except OSError as e:
            return type(e).__name__
def udp(host, port):
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"x", (host, port))
            return "sent"
        except OSError as e:
            return type(e).__name__
probes = [("dns-to-resolver", tcp, "{RESOLVER}", 53),
          ("resolver-other-port", tcp, "{RESOLVER}", {PROBE_PORT}),
          ("dns-elsewhere", tcp, "192.168.0.1", 53),
          ("multicast", udp, "{MULTICAST_V4}", {PROBE_PORT})]
for host in [{targets}]:
    probes += [("tcp:" + host, tcp, host, {PROBE_PORT}), ("udp:" + host, udp, host, {PROBE_PORT})]
with ThreadPoolExecutor(len(probes)) as pool:
    results = pool.map(lambda p: (p[0], p[1](p[2], p[3])), probes)
for name, result in results:
    print(name, result)
"#,
            targets = targets.join(", ")
        ),
    )
    .await;
    eprintln!("{report}");
    let results: Vec<(&str, &str)> = report.lines().filter_map(|l| l.split_once(' ')).collect();
    let result = |key: &str| {
        results
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no {key} in {report}"))
    };
    // The control: the path to the test's namespace works, and DNS to the
    // resolver's address passes.
    assert_eq!(result("dns-to-resolver"), "connected hello", "{report}");
    // Everything else is dropped in the worker: a datagram fails at once with
    // EPERM; a TCP connect never gets an answer, though the test's namespace
    // listens on every probe address.
    // (A TCP probe's SYN is dropped in the worker: it usually times out, but
    // an unreachable report on a loaded host ends it sooner; either way it
    // never connects, and the counters below show which rule dropped it.)
    let refused = |key: &str| {
        let got = result(key);
        assert!(
            matches!(got, "TimeoutError" | "OSError"),
            "{key} got {got}: {report}"
        );
    };
    for key in ["resolver-other-port", "dns-elsewhere"] {
        refused(key);
    }
    assert_eq!(result("multicast"), "PermissionError", "{report}");
    for host in PROBES_V4.iter().chain(PROBES_V6.iter()) {
        refused(&format!("tcp:{host}"));
        assert_eq!(
            result(&format!("udp:{host}")),
            "PermissionError",
            "{report}"
        );
    }
    // And each by the rule of its own range: every range probed has counted drops.
    let ruleset = loaded_ruleset(&gw, container_pid(&gw, &container));
    let output_chain = chain_rules(&ruleset, "output");
    for host in PROBES_V4
        .iter()
        .chain(PROBES_V6.iter())
        .chain([&MULTICAST_V4])
    {
        let ip: IpAddr = host.parse().unwrap();
        let rule = output_chain
            .iter()
            .find(|r| daddr(r).is_some_and(|net| contains(net, ip)) && verdict(r) == "drop")
            .unwrap_or_else(|| panic!("no drop for {host}: {ruleset}"));
        assert!(dropped_packets(rule) > 0, "{host}: {rule:?}");
    }
    drop(probe);
}
