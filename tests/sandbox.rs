//! Attack tests: each tries to break out of a real worker through `/execute`,
//! asserts that it fails, and that the gateway and another user's session
//! still answer afterwards. Traffic goes only to loopback addresses, or to
//! 10.0.2.2, which exists only inside the worker's own slirp4netns namespace
//! (created by the test's gateway) and maps to the host's loopback.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use common::{Gateway, Options};
use serde_json::{json, Value};

/// Runs Python in `user`'s session and returns what it printed.
async fn output(gw: &Gateway, user: &str, code: &str) -> String {
    let body = gw.run(user, code).await;
    assert_eq!(body["status"], "ok", "{code}\n{body}");
    body["result_text"].as_str().unwrap().to_string()
}

/// The gateway answers, the bystander's state is intact, a new user gets a session.
async fn assert_unharmed(gw: &Gateway) {
    assert_eq!(
        output(gw, "bystander", "print(canary)").await,
        "still here\n"
    );
    let newcomer = format!("newcomer-{}", common::random_tag());
    let fresh = gw.run(&newcomer, "print(6 * 7)").await;
    assert_eq!(fresh["result_text"], "42\n", "{fresh}");
    gw.post("/release", json!({"user_uuid": newcomer})).await;
    assert_eq!(
        gw.status().await["total_workers"].as_u64().map(|n| n > 0),
        Some(true)
    );
}

async fn gateway_with_bystander(options: Options) -> Gateway {
    let gw = Gateway::start(options).await;
    gw.run("bystander", "canary = 'still here'").await;
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network_and_no_path_to_the_control_plane() {
    let gw = gateway_with_bystander(Options::default()).await;
    let port = gw.url.rsplit(':').next().unwrap();
    let report = output(
        &gw,
        "mallory",
        &format!(
            r#"
import os, socket
print(sorted(name for _, name in socket.if_nameindex()))
def attempt(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as e:
        return type(e).__name__
print(attempt("10.0.2.2", {port}))
print(attempt("127.0.0.1", {port}))
print(os.path.exists("{runtime}/podman/podman.sock"), os.path.exists("/run/podman/podman.sock"))
"#,
            runtime = gw.svc.runtime_dir
        ),
    )
    .await;
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "['lo']", "only loopback: {report}");
    assert_ne!(
        lines[1], "connected",
        "non-loopback address reachable: {report}"
    );
    assert_ne!(
        lines[2], "connected",
        "the gateway's port is reachable: {report}"
    );
    assert_eq!(
        lines[3], "False False",
        "a podman socket is visible: {report}"
    );
    assert_unharmed(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileges_are_gone_and_the_firewall_holds() {
    let gw = gateway_with_bystander(Options::default()).await;
    let status = output(
        &gw,
        "mallory",
        r#"
import os, subprocess
fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"]:
    print(key, fields[key].strip())
print("uid", os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups())
print("whoami", subprocess.run(["whoami"], capture_output=True, text=True).stdout.strip())
for args in (["nft", "list", "ruleset"], ["nft", "flush", "ruleset"]):
    r = subprocess.run(args, capture_output=True, text=True)
    print(" ".join(args[1:]), r.returncode)
"#,
    )
    .await;
    for key in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            status.contains(&format!("{key} 0000000000000000")),
            "{key} not empty:\n{status}"
        );
    }
    assert!(status.contains("NoNewPrivs 1"), "{status}");
    assert!(
        status.contains("Seccomp 2"),
        "seccomp filter not active:\n{status}"
    );
    // Its own sandbox uid from the gateway's range, named sandbox.
    let uid_line = status.lines().find(|l| l.starts_with("uid ")).unwrap();
    let ids: Vec<&str> = uid_line.split_whitespace().collect();
    let uid: u32 = ids[1].parse().unwrap();
    assert!(
        (gw.uids.base..gw.uids.base + gw.uids.count).contains(&uid),
        "{uid_line}"
    );
    assert_eq!(ids[1..5], [ids[1]; 4], "uid and gid differ: {uid_line}");
    assert_eq!(ids[5], "[]", "{uid_line}");
    assert!(status.contains("whoami sandbox\n"), "{status}");
    assert!(
        !status.contains("list ruleset 0"),
        "nft list succeeded:\n{status}"
    );
    assert!(
        !status.contains("flush ruleset 0"),
        "nft flush succeeded:\n{status}"
    );

    // The rules are really there: read the worker's netns ruleset from outside.
    let container = gw.container_of("mallory").await;
    let ruleset = gw.svc.podman(&[
        "exec", "--user", "root", &container, "nft", "-j", "list", "ruleset",
    ]);
    let ruleset: Value = serde_json::from_str(&ruleset).expect("nft -j output");
    let chains: Vec<&Value> = ruleset["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("chain"))
        .filter(|c| c["table"] == "code_interpreter")
        .collect();
    assert_eq!(chains.len(), 3, "{ruleset}");
    assert!(chains.iter().all(|c| c["policy"] == "drop"), "{ruleset}");
    // After the failed flush the rules are still loaded.
    assert_unharmed(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_is_read_only_outside_tmpfs() {
    let gw = gateway_with_bystander(Options::default()).await;
    let report = output(
        &gw,
        "mallory",
        r#"
import os
def write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return "written"
    except OSError as e:
        return type(e).__name__
for path in ["/etc/passwd", "/usr/local/bin/x", "/x", "/run/kernel/x", "/home/sandbox/ok", "/tmp/ok"]:
    print(path, write(path))
setuid = [os.path.join(d, f) for d, _, fs in os.walk("/usr") for f in fs
          if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))
          and os.stat(os.path.join(d, f)).st_mode & 0o6000]
print("setuid", setuid)
"#,
    )
    .await;
    for denied in ["/etc/passwd", "/usr/local/bin/x", "/x", "/run/kernel/x"] {
        assert!(
            !report.contains(&format!("{denied} written")),
            "{denied} writable:\n{report}"
        );
    }
    assert!(
        report.contains("/home/sandbox/ok written") && report.contains("/tmp/ok written"),
        "{report}"
    );
    assert!(report.contains("setuid []"), "{report}");
    assert_unharmed(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_see_nothing_of_each_other() {
    let gw = gateway_with_bystander(Options::default()).await;
    output(&gw, "alice", "open('/home/sandbox/alice.txt', 'w').write('secret'); open('/tmp/alice.tmp', 'w').write('x')").await;
    let report = output(
        &gw,
        "mallory",
        r#"
import os
pids = [p for p in os.listdir("/proc") if p.isdigit()]
cmds = [open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode() for p in pids]
print("processes", len(pids))
print("kernels", sum("ipykernel" in c for c in cmds))
print("home", sorted(os.listdir("/home/sandbox")))
print("tmp", sorted(os.listdir("/tmp")))
print("kernel dir", sorted(os.listdir("/run/kernel")))
"#,
    )
    .await;
    assert!(
        report.contains("kernels 1\n"),
        "other kernels visible:\n{report}"
    );
    assert!(
        !report.contains("alice"),
        "another user's files visible:\n{report}"
    );
    assert!(
        report.contains(
            "kernel dir ['group', 'k-1', 'k-2', 'k-3', 'k-4', 'k-5', 'passwd', 'ruleset.json']"
        ),
        "{report}"
    );
    assert_unharmed(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_attacks_are_contained() {
    resource_attacks(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_attacks_are_contained_on_rootful_podman() {
    let Some(rootful) = rootful() else { return };
    resource_attacks(Some(rootful)).await;
}

/// The rootful Podman of tests/rootful_podman.sh, or None (with a note) when
/// these tests do not run as root.
fn rootful() -> Option<common::ServiceUser> {
    let svc = common::ServiceUser::rootful_from_env();
    if svc.is_none() {
        eprintln!("skipped: no rootful Podman (scripts/test.sh starts one when run as root)");
    }
    svc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_limits_bite_where_podman_enforces_them() {
    let Some(rootful) = rootful() else { return };
    let gw = gateway_with_bystander(Options {
        svc: Some(rootful),
        extra: "[limits]\nmemory_mb = 256\npids = 48\nnproc = 4096\naddress_space_mb = 4096\n"
            .into(),
        ..Options::default()
    })
    .await;
    let status = gw.status().await;
    assert_eq!(status["limits"]["cgroup_limits_enforced"], true, "{status}");
    assert_eq!(status["limits"]["enforced_by"]["memory"]["by"], "cgroup");
    assert_eq!(status["host"]["cgroups"]["rootless"], false);

    // pids: the 48th process of the worker cannot be made, whatever RLIMIT_NPROC says.
    let report = output(
        &gw,
        "mallory",
        r#"
import subprocess
children = []
try:
    for _ in range(200):
        children.append(subprocess.Popen(["sleep", "60"]))
except OSError as e:
    print(type(e).__name__, len(children))
for c in children:
    c.kill(); c.wait()
"#,
    )
    .await;
    let made: usize = report
        .split_whitespace()
        .nth(1)
        .unwrap_or("999")
        .parse()
        .unwrap();
    assert!(made < 48, "pids limit did not bite: {report}");
    assert_unharmed(&gw).await;

    // memory: touching 600 MiB under a 256 MiB cgroup (and a 4 GiB address
    // space) gets the kernel OOM-killed: 502, the next request a fresh session.
    let (status, body) = gw.execute("mallory", "x = bytearray(600 * 2**20)").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["session_reset"], true);
    assert_eq!(gw.run("mallory", "1").await["session_created"], true);
    assert_unharmed(&gw).await;
}

async fn resource_attacks(svc: Option<common::ServiceUser>) {
    let gw = gateway_with_bystander(Options {
        timeout_secs: 30.0,
        max_workers: 6,
        svc,
        ..Options::default()
    })
    .await;

    // Memory bomb: MemoryError, session intact.
    let bomb = gw
        .run("mallory", "keep = 1\nx = bytearray(8 * 2**30)")
        .await;
    assert_eq!(bomb["error"]["ename"], "MemoryError", "{bomb}");
    assert_eq!(output(&gw, "mallory", "print(keep)").await, "1\n");
    assert_unharmed(&gw).await;

    // Disk fill: the home tmpfs (and RLIMIT_FSIZE) stop it; session intact.
    let fill = output(
        &gw,
        "mallory",
        r#"
import errno
written = 0
try:
    with open("/home/sandbox/fill", "wb") as f:
        while True:
            f.write(b"0" * 2**20)
            written += 1
except OSError as e:
    print(errno.errorcode[e.errno], written)
import os; os.remove("/home/sandbox/fill")
"#,
    )
    .await;
    let mib: u64 = fill.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        fill.starts_with("ENOSPC") || fill.starts_with("EFBIG"),
        "{fill}"
    );
    assert!(mib <= 500, "wrote {mib} MiB");
    assert_unharmed(&gw).await;

    // Print flood of 100 MB: capped with a marker; the gateway's memory stays bounded.
    let flood = gw
        .run(
            "mallory",
            "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 2**20)",
        )
        .await;
    assert_eq!(flood["output_truncated"], true);
    let text = flood["result_text"].as_str().unwrap();
    assert!(
        text.len() <= 9 * 1024 * 1024,
        "{} bytes returned",
        text.len()
    );
    assert!(text.contains("output truncated"));
    let peak = gw.peak_rss_kib();
    assert!(peak < 400 * 1024, "gateway peak RSS {peak} KiB");
    assert_unharmed(&gw).await;

    // Killing PID 1 (the container's init, root) is not permitted.
    let kill = gw.run("mallory", "import os\nos.kill(1, 9)").await;
    assert_eq!(kill["error"]["ename"], "PermissionError", "{kill}");
    assert_eq!(output(&gw, "mallory", "print(keep)").await, "1\n");

    // os._exit: the kernel dies; the request gets 502 at once, the next a fresh session.
    let started = std::time::Instant::now();
    let (status, body) = gw.execute("mallory", "import os\nos._exit(1)").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["session_reset"], true);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(gw.run("mallory", "1").await["session_created"], true);
    assert_unharmed(&gw).await;

    // Fork bomb: bounded by the process limits, ended by the timeout, worker replaced.
    let (status, body) = gw
        .post(
            "/execute",
            json!({"user_uuid": "mallory", "timeout": 5,
                   "code": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"}),
        )
        .await;
    assert!(status == 504 || status == 502, "{status} {body}");
    // Its processes go with its container; then everyone is served again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_unharmed(&gw).await;
    assert_eq!(gw.run("mallory", "1").await["session_created"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_mode_reaches_only_allowed_destinations() {
    // Two servers on the host's loopback: one allowed, one not.
    let allowed = serve_hello();
    let denied = serve_hello();
    let gw = gateway_with_bystander(Options {
        extra: format!(
            "[network]\nmode = \"allowlist\"\nallow = [\"10.0.2.2:{}\"]\n",
            allowed.0
        ),
        ..Options::default()
    })
    .await;
    let gateway_port = gw.url.rsplit(':').next().unwrap().to_string();
    let report = output(
        &gw,
        "mallory",
        &format!(
            r#"
import socket
def fetch(port):
    try:
        with socket.create_connection(("10.0.2.2", port), timeout=2) as s:
            return s.recv(16).decode()
    except OSError as e:
        return type(e).__name__
print("allowed", fetch({}))
print("denied", fetch({}))
print("gateway", fetch({gateway_port}))
"#,
            allowed.0, denied.0
        ),
    )
    .await;
    assert!(report.contains("allowed hello"), "{report}");
    assert!(!report.contains("denied hello"), "{report}");
    assert!(
        !report.contains("gateway HTTP") && report.contains("gateway "),
        "{report}"
    );
    // Nothing may connect in: the input chain accepts only loopback and replies.
    let container = gw.container_of("mallory").await;
    let rules = gw.svc.podman(&[
        "exec",
        "--user",
        "root",
        &container,
        "nft",
        "list",
        "chain",
        "inet",
        "code_interpreter",
        "input",
    ]);
    assert!(rules.contains("policy drop"), "{rules}");
    assert!(!rules.contains("dport"), "{rules}");
    assert_unharmed(&gw).await;
    drop((allowed, denied));
}

/// A loopback server that greets every connection with "hello"; stops when dropped.
struct Hello(u16, std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for Hello {
    fn drop(&mut self) {
        self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.0)); // wake accept()
    }
}

fn serve_hello() -> Hello {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if let Ok(mut stream) = stream {
                let _ = stream.write_all(b"hello");
                let mut sink = [0u8; 16];
                let _ = stream.read(&mut sink);
            }
        }
    });
    Hello(port, stop)
}
