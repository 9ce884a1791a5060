//! Capacity and bursts (issue 14) against real rootless Podman: the default
//! pool serves a burst of 30 new users from ready workers, a 503 comes only
//! when capacity is really exhausted, after the queue's deadline, the pool
//! grows with arrivals and trims back, and `pool.preload` imports modules in
//! idle workers without binding a name. The speed figures are the bench's
//! (`code-interpreter bench --burst 30`, docs/benchmarks.md), not asserted.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Gateway, Options};
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// One test at a time: the burst's timings are not shared with another gateway.
fn alone() -> &'static Mutex<()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| Mutex::new(()))
}

/// The `q`-quantile of sorted `values`.
fn quantile(values: &[Duration], q: f64) -> Duration {
    let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
    values[index]
}

/// `count` new users `{prefix}-{n}` at once, each running `print(n)`: each
/// one's status, body and time from the burst's start, in user order.
async fn at_once(gw: &Gateway, prefix: &str, count: usize) -> Vec<(u16, Value, Duration)> {
    let burst = Instant::now();
    let calls: Vec<_> = (0..count)
        .map(|n| {
            let (http, url, token) = (gw.http().clone(), gw.url.clone(), gw.token.clone());
            let user = format!("{prefix}-{n}");
            tokio::spawn(async move {
                let response = http
                    .post(format!("{url}/execute"))
                    .header("X-Auth-Token", token)
                    .json(&json!({"user_uuid": user, "code": format!("print({n})")}))
                    .send()
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap();
                (status, body, burst.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_new_users_at_once_are_all_served_by_the_default_pool() {
    let _alone = alone().lock().await;
    // The shipped [pool] defaults.
    let gw = Gateway::start(Options {
        max_workers: 256,
        queue_timeout_secs: 30.0,
        pool: "min_idle = \"auto\"\n".into(),
        ..Options::default()
    })
    .await;
    let status = gw.status().await;
    let kept = status["capacity"]["min_idle"].as_u64().unwrap();
    eprintln!("min_idle \"auto\" keeps {kept} idle workers here");
    assert!(kept >= 2, "{}", status["capacity"]);
    gw.wait_idle(kept, Duration::from_secs(180)).await;
    let status = gw.status().await;
    let capacity = &status["capacity"];
    assert_eq!(capacity["would_admit"], true, "{capacity}");
    assert!(
        capacity["available_memory_mb"].as_u64().unwrap()
            > capacity["memory_reserve_mb"].as_u64().unwrap(),
        "{capacity}"
    );
    let users = at_once(&gw, "burst", 30).await;
    let mut firsts = Vec::new();
    for (n, (status, body, took)) in users.into_iter().enumerate() {
        assert_eq!(status, 200, "user {n} after {took:?}: {body}");
        assert_eq!(body["result_text"], format!("{n}\n"), "{body}");
        assert_eq!(body["session_created"], true);
        firsts.push(took);
    }
    firsts.sort();
    eprintln!(
        "30 new users at once: first answer p50 {:?}, p95 {:?}, max {:?}",
        quantile(&firsts, 0.5),
        quantile(&firsts, 0.95),
        firsts[29]
    );
    let status = gw.status().await;
    assert_eq!(status["sessions"], 30);
    assert_eq!(status["counters"]["sessions_created"], 30);
    eprintln!("capacity after the burst: {}", status["capacity"]);
    let cold = &status["cold_start"];
    assert!(cold["starts"].as_u64().unwrap() >= kept, "{cold}");
    for start in cold["recent"].as_array().unwrap() {
        let phases: f64 = [
            "prepare_ms",
            "create_ms",
            "start_ms",
            "listen_ms",
            "connect_ms",
        ]
        .iter()
        .map(|p| start[p].as_f64().unwrap())
        .sum();
        let total = start["total_ms"].as_f64().unwrap();
        assert!(
            (phases - total).abs() < 1.0,
            "phases add up to the total: {start}"
        );
    }
    gw.assert_no_orphans().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_with_arrivals_and_trims_back_when_they_stop() {
    let _alone = alone().lock().await;
    let gw = Gateway::start(Options {
        min_idle: 1,
        max_workers: 64,
        pool: "max_idle = 6\ntrim_after_secs = 15.0\n".into(),
        ..Options::default()
    })
    .await;
    gw.wait_idle(1, Duration::from_secs(60)).await;
    // 40 new users within a few seconds: 4 per second over the 10 s window,
    // times a start of a few hundred ms: the target rises above min_idle.
    for (n, (status, body, _)) in at_once(&gw, "arrival", 40).await.into_iter().enumerate() {
        assert_eq!(status, 200, "user {n}: {body}");
    }
    let mut grown = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let capacity = gw.status().await["capacity"].clone();
        let (idle, target) = (
            gw.status().await["idle_workers_in_pool"].as_u64().unwrap(),
            capacity["idle_target"].as_u64().unwrap(),
        );
        if target > 1 && idle >= target {
            grown = Some((idle, target, capacity["worker_start_ms"].clone()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (idle, target, start_ms) = grown.expect("the idle pool grew past min_idle");
    eprintln!(
        "after 40 arrivals: {idle} idle workers for a target of {target} (start {start_ms} ms)"
    );
    assert!(target <= 6, "within max_idle");
    // No more arrivals: 15 s (trim_after_secs) after the last one, the extra idle workers go.
    let trimmed = Instant::now();
    loop {
        let status = gw.status().await;
        if status["idle_workers_in_pool"] == 1 && status["creating_workers"] == 0 {
            break;
        }
        assert!(
            trimmed.elapsed() < Duration::from_secs(45),
            "not trimmed back to min_idle: {}",
            status["capacity"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "trimmed back to 1 idle worker {:?} later",
        trimmed.elapsed()
    );
    for n in 0..40 {
        gw.post("/release", json!({"user_uuid": format!("arrival-{n}")}))
            .await;
    }
    gw.assert_no_orphans().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preload_imports_in_idle_workers_without_binding_names() {
    let _alone = alone().lock().await;
    let gw = Gateway::start(Options {
        min_idle: 1,
        max_workers: 4,
        pool: "preload = [\"numpy\", \"json\"]\n".into(),
        ..Options::default()
    })
    .await;
    gw.wait_idle(1, Duration::from_secs(60)).await;
    let status = gw.status().await;
    assert_eq!(status["capacity"]["preload"], json!(["numpy", "json"]));
    assert!(status["capacity"]["preload_error"].is_null(), "{status}");
    let preloaded = status["cold_start"]["recent"][0]["preload_ms"].as_f64();
    eprintln!("preloading numpy took {preloaded:?} ms");
    assert!(preloaded.is_some(), "{}", status["cold_start"]);
    let answer = gw
        .run(
            "preloaded",
            "import sys\nprint('numpy' in sys.modules, 'numpy' in dir(), 'm' in dir())",
        )
        .await;
    assert_eq!(answer["result_text"], "True False False\n", "{answer}");
    // The user's first statement is execution 1: the preload left no trace.
    assert_eq!(
        gw.run("preloaded", "_ih[1:]").await["result_text"]
            .as_str()
            .map(|t| t.contains("import sys")),
        Some(true)
    );
    gw.assert_no_orphans().await;
    drop(gw);

    // A module the image lacks: preloading stops, /status says why, users are served.
    let gw = Gateway::start(Options {
        min_idle: 1,
        max_workers: 4,
        pool: "preload = [\"no_such_module_here\"]\n".into(),
        ..Options::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let error = loop {
        let status = gw.status().await;
        if let Some(error) = status["capacity"]["preload_error"].as_str() {
            break error.to_string();
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(error.contains("no_such_module_here"), "{error}");
    assert_eq!(gw.run("after", "print(2)").await["result_text"], "2\n");
    gw.assert_no_orphans().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_comes_only_when_capacity_is_exhausted_and_after_the_deadline() {
    let _alone = alone().lock().await;
    let gw = Gateway::start(Options {
        min_idle: 0,
        max_workers: 2,
        queue_timeout_secs: 2.0,
        ..Options::default()
    })
    .await;
    gw.run("first", "1").await;
    gw.run("second", "1").await;
    // Both slots hold sessions: the third user waits the deadline, then 503.
    let asked = Instant::now();
    let response = gw
        .http()
        .post(format!("{}/execute", gw.url))
        .header("X-Auth-Token", &gw.token)
        .json(&json!({"user_uuid": "third", "code": "1"}))
        .send()
        .await
        .unwrap();
    let waited = asked.elapsed();
    eprintln!(
        "a full gateway answered {} after {waited:?}",
        response.status()
    );
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    let status = gw.status().await;
    let refusal = status["capacity"]["last_refusal"]
        .as_str()
        .unwrap_or_default();
    assert!(refusal.contains("pool.max_workers (2)"), "{status}");
    assert_eq!(status["sessions"], 2, "a refused user holds no session");
    // Existing users are unaffected.
    assert_eq!(
        gw.run("first", "print('fine')").await["result_text"],
        "fine\n"
    );
    // Capacity that comes back while a user waits serves it: no 503.
    let waiting = tokio::spawn({
        let (http, url, token) = (gw.http().clone(), gw.url.clone(), gw.token.clone());
        async move {
            let asked = Instant::now();
            let response = http
                .post(format!("{url}/execute"))
                .header("X-Auth-Token", token)
                .json(&json!({"user_uuid": "fourth", "code": "print('in')"}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.text().await.unwrap(), asked.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.status().await["capacity"]["waiting_for_a_worker"], 1);
    gw.post("/release", json!({"user_uuid": "second"})).await;
    let (code, body, took) = waiting.await.unwrap();
    eprintln!("a waiting user was served {took:?} after asking");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("in\\n"), "{body}");
    gw.assert_no_orphans().await;
}
