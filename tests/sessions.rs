//! Stateful execution end to end: real gateway, real rootless Podman workers,
//! real kernels.

mod common;

use std::time::{Duration, Instant};

use common::{assert_png, Gateway, Options};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_persists_between_calls() {
    let gw = Gateway::start(Options::default()).await;
    let first = gw.run("alice", "a = 100").await;
    assert_eq!(first["status"], "ok");
    assert_eq!(first["session_created"], true);
    assert_eq!(first["result_text"], "");
    assert!(first["result_base64"].is_null());
    let second = gw.run("alice", "print(a)").await;
    assert_eq!(second["result_text"], "100\n");
    assert_eq!(second["session_created"], false);
    assert_eq!(
        second["outputs"][0],
        json!({"type": "stream", "name": "stdout", "text": "100\n"})
    );
    // Imports and functions persist too; the last expression's value is returned.
    gw.run(
        "alice",
        "import math\ndef area(r):\n    return math.pi * r * r",
    )
    .await;
    let third = gw.run("alice", "round(area(2), 3)").await;
    assert_eq!(third["result_text"], "12.566\n");
    assert_eq!(third["outputs"][0]["type"], "execute_result");
    assert_eq!(third["execution_count"], 4);
}

/// containerfiles/worker/worker-kernel starts the kernel with cuts (no
/// garbage collection while it starts, jupyter_client's __init__ deferred,
/// stand-ins for modules it does not need yet): user code sees none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kernel_looks_like_a_plain_ipython_kernel() {
    let gw = Gateway::start(Options::default()).await;
    let code = "import gc, os, sys\n\
        import jupyter_client\n\
        from jupyter_client import KernelManager, BlockingKernelClient\n\
        print(gc.isenabled(), os.getcwd(), os.environ['HOME'])\n\
        print(jupyter_client.__version__ == jupyter_client._version.__version__)\n\
        print(KernelManager.__name__, BlockingKernelClient.__name__)\n\
        print('/usr/local/bin' in sys.path, type(get_ipython()).__name__)";
    let out = gw.run("alice", code).await;
    assert_eq!(
        out["result_text"],
        "True /sandbox /sandbox\nTrue\nKernelManager BlockingKernelClient\nFalse ZMQInteractiveShell\n",
        "{out}"
    );
    let star = gw
        .run(
            "bob",
            "from jupyter_client import *\nprint(AsyncKernelManager.__name__)",
        )
        .await;
    assert_eq!(star["result_text"], "AsyncKernelManager\n", "{star}");
    // The launcher's stand-ins (dateutil, curses) are gone: the user gets the
    // real modules, and the kernel still reads message dates.
    let dates = gw
        .run(
            "carol",
            "import dateutil.parser, dateutil.tz\n\
             from jupyter_client.jsonutil import parse_date\n\
             print(hasattr(dateutil.parser, '__file__'), hasattr(dateutil.tz, '__file__'))\n\
             print(dateutil.parser.parse('2 Dec 2026 10:00').isoformat(), type(dateutil.tz.tzlocal()).__name__)\n\
             print(parse_date('2026-12-03T06:00:00.123456Z').isoformat())\n\
             import curses; print(curses.__name__)",
        )
        .await;
    assert_eq!(
        dates["result_text"],
        "True True\n2026-12-02T10:00:00 tzlocal\n2026-12-03T06:00:00.123456+00:00\ncurses\n",
        "{dates}"
    );
}

/// The launcher's start cache (containerfiles/worker/_code_interpreter_start_cache.py)
/// and its deferred modules (ssl, asyncio's TLS protocol, ctypes): the kernel's
/// modules came from the cache and still show their source, the finder and
/// the pattern cache are gone, the deferred modules are real once used (TLS
/// through asyncio works), and a module whose source changed since the cache
/// was recorded loads from its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_cache_and_deferred_modules_leave_no_trace() {
    let gw = Gateway::start(Options::default()).await;
    let traces = gw
        .run("alice", include_str!("kernel_start/no_trace.py"))
        .await;
    assert_eq!(
        traces["result_text"],
        "finder []\nre re._compiler\nloader _CachedSourceLoader True\n\
         source /opt/venv/lib/python3.11/site-packages/ipykernel/kernelapp.py True\n\
         real True\nerrors True\nctypes True\nbound True True True\nproto True True\n\
         lazy _LazyModule\n",
        "{traces}"
    );
    let tls = gw
        .run("bob", include_str!("kernel_start/tls_over_asyncio.py"))
        .await;
    assert_eq!(
        tls["result_text"], "b'hello over tls\\n' TLSv1.3\n",
        "{tls}"
    );
    let stale = gw
        .run("carol", include_str!("kernel_start/stale_sources.py"))
        .await;
    assert_eq!(
        stale["result_text"], "kept, recorded _CachedSourceLoader | edited, changed since\n",
        "{stale}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_never_see_each_other() {
    let gw = Gateway::start(Options::default()).await;
    gw.run("alice", "secret = 'alice-only'").await;
    let bob = gw.run("bob", "print(secret)").await;
    assert_eq!(bob["status"], "error");
    assert_eq!(bob["error"]["ename"], "NameError");
    assert_eq!(bob["session_created"], true);
    let alice = gw.run("alice", "print(secret)").await;
    assert_eq!(alice["result_text"], "alice-only\n");
    // Different kernels, different containers.
    let alice_host = gw
        .run("alice", "import socket; print(socket.gethostname())")
        .await;
    let bob_host = gw
        .run("bob", "import socket; print(socket.gethostname())")
        .await;
    assert_ne!(alice_host["result_text"], bob_host["result_text"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plots_come_back_as_png() {
    let gw = Gateway::start(Options::default()).await;
    let shown = gw
        .run(
            "plotter",
            "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [3, 1, 2])\nplt.title('中文标题')\nplt.show()",
        )
        .await;
    assert_eq!(shown["status"], "ok");
    assert_png(
        shown["result_base64"]
            .as_str()
            .expect("plt.show() gives a PNG"),
    );
    let display = shown["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "display_data");
    assert!(display.unwrap()["data"]["image/png"].is_string());
    // No missing-glyph or font-cache warnings on stderr.
    assert!(
        !shown["result_text"].as_str().unwrap().contains("Warning"),
        "{}",
        shown["result_text"]
    );

    let figure = gw
        .run(
            "plotter",
            "fig, ax = plt.subplots()\nax.bar(['a', 'b'], [1, 2])\nfig",
        )
        .await;
    assert_png(
        figure["result_base64"]
            .as_str()
            .expect("a figure as last expression gives a PNG"),
    );
    let plain = gw.run("plotter", "print('no plot here')").await;
    assert!(plain["result_base64"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_keeps_the_session() {
    let gw = Gateway::start(Options::default()).await;
    gw.run("carol", "x = 41").await;
    let failed = gw.run("carol", "print('before')\n1/0").await;
    assert_eq!(failed["status"], "error");
    assert_eq!(failed["error"]["ename"], "ZeroDivisionError");
    let text = failed["result_text"].as_str().unwrap();
    assert!(text.starts_with("before\n"), "{text}");
    assert!(
        text.ends_with("ZeroDivisionError: division by zero\n"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "no ANSI colour codes in result_text"
    );
    let after = gw.run("carol", "x += 1; print(x)").await;
    assert_eq!(after["result_text"], "42\n");
    assert_eq!(after["session_created"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_times_out_and_resets_the_session() {
    let gw = Gateway::start(Options {
        timeout_secs: 30.0,
        ..Options::default()
    })
    .await;
    gw.run("dave", "keep = 'me'").await;
    let started = Instant::now();
    let (status, body) = gw
        .post(
            "/execute",
            json!({"user_uuid": "dave", "code": "while True:\n    pass", "timeout": 2}),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["session_reset"], true);
    assert!(body["detail"].as_str().unwrap().contains("timeout"));
    assert!(
        took < Duration::from_secs(4),
        "504 after {took:?}, timeout was 2 s"
    );

    let next = gw.run("dave", "print(globals().get('keep'))").await;
    assert_eq!(next["session_created"], true);
    assert_eq!(next["result_text"], "None\n");
    let status = gw.status().await;
    assert_eq!(status["counters"]["timeouts"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_gives_a_fresh_session_and_is_idempotent() {
    let gw = Gateway::start(Options::default()).await;
    gw.run("erin", "value = 7").await;
    let (status, body) = gw.post("/release", json!({"user_uuid": "erin"})).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(body["detail"].is_string());
    let (status, again) = gw.post("/release", json!({"user_uuid": "erin"})).await;
    assert_eq!(status, 200);
    assert_eq!(again["status"], "ok");
    let fresh = gw.run("erin", "print('value' in globals())").await;
    assert_eq!(fresh["session_created"], true);
    assert_eq!(fresh["result_text"], "False\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_warm_pool_serves_new_users_and_status_counts() {
    let gw = Gateway::start(Options {
        min_idle: 2,
        ..Options::default()
    })
    .await;
    gw.wait_idle(2, Duration::from_secs(60)).await;
    let status = gw.status().await;
    for field in [
        "total_workers",
        "busy_workers",
        "idle_workers_in_pool",
        "is_initializing",
        "sessions",
    ] {
        assert!(!status[field].is_null(), "status lacks {field}: {status}");
    }
    assert_eq!(status["is_initializing"], false);
    assert!(status["podman"]["version"]
        .as_str()
        .unwrap()
        .chars()
        .next()
        .unwrap()
        .is_ascii_digit());
    assert!(status["limits"]["cgroup_limits_enforced"].is_boolean());

    // A user arriving at a warm pool gets a ready kernel: the call is quick.
    let started = Instant::now();
    let body = gw.run("frank", "1 + 1").await;
    let first_call = started.elapsed();
    assert_eq!(body["result_text"], "2\n");
    eprintln!("first call of a new user on a warm pool: {first_call:?}");

    let status = gw.status().await;
    assert_eq!(status["sessions"], 1);
    assert_eq!(status["counters"]["executions"], 1);
    assert!(status["counters"]["workers_created"].as_u64().unwrap() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_keeps_every_session() {
    let mut gw = Gateway::start(Options::default()).await;
    gw.run("gina", "import math\nkept = 42").await;
    gw.run("hank", "kept = 'hank'").await;
    gw.stop(); // SIGTERM, as systemd and scripts/restart.sh do
    assert!(!gw.containers().is_empty(), "workers outlive the gateway");
    gw.spawn().await;
    let gina = gw.run("gina", "print(kept, math.pi > 3)").await;
    assert_eq!(gina["result_text"], "42 True\n");
    assert_eq!(gina["session_created"], false);
    assert_eq!(gw.run("hank", "print(kept)").await["result_text"], "hank\n");
    let status = gw.status().await;
    assert!(
        status["counters"]["workers_adopted"].as_u64().unwrap() >= 2,
        "{status}"
    );
    assert_eq!(status["sessions"], 2);
}
