//! Hostile workers: user code holds its kernel's sockets and HMAC key, so
//! it can put any bytes on any of the five channels the gateway reads. Each
//! test attacks from inside a real worker through `/execute` and checks that
//! the gateway process survives (same pid), its peak memory stays bounded, a
//! bystander's session keeps its variables, and the attacker gets a 502 with
//! `session_reset` (the worker destroyed) or a truncated 200 within the cap.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Options};
use serde_json::{json, Value};

/// Peak memory the gateway may reach in these tests (it idles at ~20 MiB).
const MAX_PEAK_RSS_KIB: u64 = 256 * 1024;
/// The default `execution.max_output_bytes`.
const OUTPUT_CAP: usize = 8 * 1024 * 1024;

/// Python that finds the kernel's accepted connection on each channel and
/// writes raw bytes to it, bypassing libzmq, or forges signed messages.
const PRELUDE: &str = r#"
import datetime, errno, hashlib, hmac, json, os, socket, time, uuid
PORTS = {"shell": 1, "iopub": 2, "stdin": 3, "control": 4, "heartbeat": 5}
def conns(channel):
    # The kernel's accepted connections on a channel: sockets named by the
    # channel's path that are not the listening socket itself (which gVisor
    # does not flag with SO_ACCEPTCONN: it has no peer). Under gVisor a
    # connection the gateway made from the host shows the path as its peer's
    # name instead, and none of its own.
    path = f"/run/kernel/k-{PORTS[channel]}"
    fds = []
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            if (s.family == socket.AF_UNIX and s.getsockname() == path
                    and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
                s.getpeername()
                fds.append(fd)
            elif s.family == socket.AF_UNIX and s.getsockname() == "" and s.getpeername() == path:
                fds.append(fd)
        except OSError:
            pass
        finally:
            s.close()
    assert fds, f"no connection on {path}"
    return fds
def raw(channel, data):
    # A connection made inside the worker may close meanwhile (EBADF, EPIPE):
    # the bytes must reach at least one of the channel's connections.
    wrote = False
    for fd in conns(channel):
        try:
            os.write(fd, data)
            wrote = True
        except OSError as e:
            if e.errno not in (errno.EBADF, errno.EPIPE, errno.ENOTCONN, errno.ECONNRESET):
                raise
    assert wrote, f"no connection on {channel} took the bytes"
def frames(parts):
    out = b""
    for i, p in enumerate(parts):
        more = 1 if i + 1 < len(parts) else 0
        if len(p) <= 255:
            out += bytes([more, len(p)]) + p
        else:
            out += bytes([more | 2]) + len(p).to_bytes(8, "big") + p
    return out
def signed(msg_type, content, topic=None):
    k = get_ipython().kernel
    parent = k.get_parent()["header"]
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "session": k.session.session,
              "username": "mallory", "version": "5.3",
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    parts = [json.dumps(p, default=str).encode() for p in (header, parent, {}, content)]
    sig = hmac.new(k.session.key, b"".join(parts), hashlib.sha256).hexdigest().encode()
    return ([topic] if topic else []) + [b"<IDS|MSG>", sig] + parts
"#;

async fn gateway_with_bystander() -> Gateway {
    let gw = Gateway::start(Options {
        max_workers: 6,
        ..Options::default()
    })
    .await;
    gw.run("bystander", "canary = 'still here'").await;
    gw
}

/// Runs `attack` as a fresh attacker and checks what every attack must leave
/// intact. Returns the attacker's status and body.
async fn attack(gw: &Gateway, name: &str, attack: &str, timeout: f64) -> (u16, Value) {
    let pid = gw.pid();
    let user = format!("mallory-{}", common::random_tag());
    let started = Instant::now();
    let (status, body) = gw
        .post(
            "/execute",
            json!({"user_uuid": user, "code": format!("{PRELUDE}\n{attack}"), "timeout": timeout}),
        )
        .await;
    let took = started.elapsed();
    let peak = gw.peak_rss_kib();
    eprintln!(
        "{name}: {status} after {took:?}, gateway peak RSS {} MiB, detail: {}",
        peak / 1024,
        body["detail"].as_str().unwrap_or("-")
    );
    assert_eq!(gw.pid(), pid, "{name}: the gateway was replaced");
    assert!(
        std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "{name}: the gateway died\n{}",
        gw.log()
    );
    assert!(
        peak <= MAX_PEAK_RSS_KIB,
        "{name}: gateway peak RSS {peak} KiB"
    );
    let canary = gw.run("bystander", "print(canary)").await;
    assert_eq!(canary["result_text"], "still here\n", "{name}: {canary}");
    assert_eq!(canary["session_created"], false, "{name}: {canary}");
    gw.post("/release", json!({"user_uuid": user})).await;
    (status, body)
}

/// The attacker's worker was destroyed for breaking the protocol.
fn assert_reset(name: &str, status: u16, body: &Value) {
    assert_eq!(status, 502, "{name}: {body}");
    assert_eq!(body["session_reset"], true, "{name}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("misbehaved"), "{name}: {detail}");
}

async fn protocol_violations(gw: &Gateway) -> u64 {
    gw.status().await["counters"]["protocol_violations"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_on_any_of_the_five_channels_ends_only_that_worker() {
    let gw = gateway_with_bystander().await;
    let channels = ["shell", "iopub", "stdin", "control", "heartbeat"];
    for channel in channels {
        // A long frame announcing 2^50 bytes: the old decoder allocated that and aborted.
        let code = format!(
            "raw({channel:?}, bytes([2]) + (2**50).to_bytes(8, 'big'))\ntime.sleep(15)\nprint('not stopped')"
        );
        let name = format!("2^50-byte frame on {channel}");
        let (status, body) = attack(&gw, &name, &code, 20.0).await;
        assert_reset(&name, status, &body);
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("bytes"), "{name}: {detail}");
    }
    assert!(protocol_violations(&gw).await >= channels.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_and_messages_end_only_that_worker() {
    let gw = gateway_with_bystander().await;
    let attacks = [
        ("reserved flag bits on shell", "raw('shell', b'\\xff\\x00')"),
        (
            "a command inside a multipart message on shell",
            "raw('shell', bytes([1, 1]) + b'a' + bytes([4, 5, 4]) + b'PING')",
        ),
        (
            "a message without the Jupyter delimiter on iopub",
            "raw('iopub', frames([b'topic', b'garbage']))",
        ),
        (
            "an unknown ZMTP command on shell",
            "raw('shell', bytes([4, 6, 5]) + b'HELLO')",
        ),
        (
            "too many parts on shell",
            "raw('shell', frames([b''] * 100))",
        ),
        (
            "a signed stream whose content is not the right shape",
            "raw('iopub', frames(signed('stream', {'name': 5, 'text': []}, topic=b'x')))",
        ),
        (
            "a message on stdin",
            "raw('stdin', frames(signed('input_request', {'prompt': ''})))",
        ),
    ];
    for (name, code) in attacks {
        let (status, body) = attack(&gw, name, &format!("{code}\ntime.sleep(15)"), 20.0).await;
        assert_reset(name, status, &body);
    }
    assert!(protocol_violations(&gw).await >= attacks.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_cut_at_the_cap_or_end_the_worker() {
    let gw = gateway_with_bystander().await;

    // Twelve displays with 1 MiB of metadata each: 12.6 MB, past the 8 MiB cap.
    let metadata = "from IPython.display import display\n\
        for i in range(12):\n    display({'text/plain': str(i)}, metadata={'pad': 'A' * 2**20}, raw=True)";
    let started = Instant::now();
    let response = gw
        .http()
        .post(format!("{}/execute", gw.url))
        .header("X-Auth-Token", &gw.token)
        .json(&json!({"user_uuid": "flooder", "code": metadata}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let raw = response.bytes().await.unwrap();
    let body: Value = serde_json::from_slice(&raw).unwrap();
    eprintln!(
        "metadata flood: 200 in {:?}, body {} bytes, {} outputs, peak RSS {} MiB",
        started.elapsed(),
        raw.len(),
        body["outputs"].as_array().unwrap().len(),
        gw.peak_rss_kib() / 1024
    );
    assert_eq!(body["output_truncated"], true);
    assert!(raw.len() <= OUTPUT_CAP, "body of {} bytes", raw.len());
    assert!(gw.peak_rss_kib() <= MAX_PEAK_RSS_KIB);
    let canary = gw.run("bystander", "print(canary)").await;
    assert_eq!(canary["result_text"], "still here\n", "{canary}");
    let pid = gw.pid();

    // The same through /execute/stream: events and the final body, all within the cap.
    let response = gw
        .http()
        .post(format!("{}/execute/stream", gw.url))
        .header("X-Auth-Token", &gw.token)
        .json(&json!({"user_uuid": "flooder", "code": metadata}))
        .send()
        .await
        .unwrap();
    let streamed = response.bytes().await.unwrap();
    eprintln!("metadata flood, streamed: {} bytes", streamed.len());
    assert!(
        streamed.len() <= OUTPUT_CAP + 64 * 1024,
        "{}",
        streamed.len()
    );
    assert!(String::from_utf8_lossy(&streamed).contains("\"output_truncated\":true"));
    assert_eq!(gw.pid(), pid, "the gateway was replaced");

    // A 1 GiB buffer frame on iopub: refused when announced, never read.
    let gib = r#"
parts = signed('display_data', {'data': {}, 'metadata': {}}, topic=b'x')
prefix = b''.join(
    bytes([1, len(p)]) + p if len(p) <= 255 else bytes([3]) + len(p).to_bytes(8, 'big') + p
    for p in parts
)
fd = conns('iopub')[0]
os.write(fd, prefix + bytes([2]) + (2**30).to_bytes(8, 'big'))
chunk = bytes(2**20)
try:
    for _ in range(1024):
        os.write(fd, chunk)
except OSError:
    pass
time.sleep(15)
"#;
    let (status, body) = attack(&gw, "a 1 GiB buffer on iopub", gib, 20.0).await;
    assert_reset("1 GiB buffer", status, &body);

    // Output past the cap and past the flood allowance (256 MiB): the worker is destroyed.
    let flood = "import sys\nchunk = 'x' * 2**20\nfor _ in range(400):\n    sys.stdout.write(chunk)\n    sys.stdout.flush()";
    let (status, body) = attack(&gw, "400 MiB of stdout", flood, 25.0).await;
    assert!(
        status == 502 || (status == 200 && body["output_truncated"] == true),
        "{status} {body}"
    );
    if status == 502 {
        assert_reset("400 MiB of stdout", status, &body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replies_and_idle_statuses_cannot_end_a_request() {
    let gw = gateway_with_bystander().await;
    // A forged execute_reply and idle for the running request, then more work.
    let forge = "raw('shell', frames(signed('execute_reply', {'status': 'ok', 'execution_count': 1, 'user_expressions': {}, 'payload': []})))\n\
        raw('iopub', frames(signed('status', {'execution_state': 'idle'}, topic=b'kernel.x.status')))\n\
        time.sleep(3)\nprint('finished for real')";
    let started = Instant::now();
    let (status, body) = attack(&gw, "forged execute_reply and idle", forge, 20.0).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the forged ending ended the request after {:?}: {body}",
        started.elapsed()
    );
    assert_reset("forged ending", status, &body);
    assert!(
        body["detail"].as_str().unwrap().contains("forged"),
        "{body}"
    );

    // Forged endings, then code that runs past the timeout: 504 at the timeout.
    let late = "raw('shell', frames(signed('execute_reply', {'status': 'ok', 'execution_count': 1})))\n\
        raw('iopub', frames(signed('status', {'execution_state': 'idle'}, topic=b'kernel.x.status')))\n\
        time.sleep(30)";
    let started = Instant::now();
    let (status, body) = attack(&gw, "forged ending, then past the timeout", late, 2.0).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["session_reset"], true);
    assert!(took < Duration::from_secs(6), "504 after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_adopts_only_workers_that_behave() {
    let mut gw = gateway_with_bystander().await;
    // A thread that attacks every new connection on the heartbeat socket:
    // the restarted gateway meets a 2^50-byte frame as soon as it connects.
    let sabotage = r#"
import threading
def inode(fd):
    return os.fstat(fd).st_ino
known = {inode(fd) for fd in conns('heartbeat')}
def sabotage():
    while True:
        try:
            fds = conns('heartbeat')
        except (AssertionError, OSError):
            fds = []
        for fd in fds:
            try:
                if inode(fd) not in known:
                    known.add(inode(fd))
                    os.write(fd, bytes([2]) + (2**50).to_bytes(8, 'big'))
            except OSError:
                pass
        time.sleep(0.001)
threading.Thread(target=sabotage, daemon=True).start()
secret = 1
"#;
    gw.run("saboteur", &format!("{PRELUDE}\n{sabotage}")).await;
    // A clean stop saves the worker table (a SIGKILL right after the session
    // started could beat the writer, and the worker would simply be unknown).
    gw.stop();
    gw.spawn().await;
    let pid = gw.pid();
    let canary = gw.run("bystander", "print(canary)").await;
    assert_eq!(canary["result_text"], "still here\n", "{canary}");
    assert_eq!(canary["session_created"], false, "{canary}");
    // Not re-adopted, or destroyed the moment it misbehaved: either way a fresh session.
    let saboteur = gw.run("saboteur", "print('fresh')").await;
    assert_eq!(
        saboteur["session_created"],
        true,
        "the misbehaving worker kept its session: {saboteur}\n{}",
        gw.log()
    );
    assert_eq!(gw.pid(), pid);
    let log = gw.log();
    assert!(
        log.contains("not re-adopted") || log.contains("broke the protocol"),
        "{log}"
    );
    eprintln!(
        "saboteur: {}",
        log.lines()
            .rev()
            .find(|l| l.contains("not re-adopted") || l.contains("broke the protocol"))
            .unwrap_or_default()
    );
}
