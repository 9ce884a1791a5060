//! Capacity and bursts (issue 14, points 1 and 2) against real rootless Podman:
//! the default pool serves a burst of 30 new users with no 503, and a 503
//! comes only when capacity is really exhausted, after the queue's deadline.

mod common;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Gateway, Options};
use serde_json::json;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_new_users_at_once_are_all_served_by_the_default_pool() {
    let _alone = alone().lock().await;
    // The shipped [pool] defaults.
    let gw = Gateway::start(Options {
        min_idle: 2,
        max_workers: 64,
        queue_timeout_secs: 30.0,
        ..Options::default()
    })
    .await;
    gw.wait_idle(2, Duration::from_secs(60)).await;
    let status = gw.status().await;
    let capacity = &status["capacity"];
    assert_eq!(capacity["would_admit"], true, "{capacity}");
    assert!(
        capacity["available_memory_mb"].as_u64().unwrap()
            > capacity["memory_reserve_mb"].as_u64().unwrap(),
        "{capacity}"
    );
    let burst = Instant::now();
    let mut users = Vec::new();
    for n in 0..30 {
        let http = gw.http().clone();
        let (url, token) = (gw.url.clone(), gw.token.clone());
        users.push(tokio::spawn(async move {
            let response = http
                .post(format!("{url}/execute"))
                .header("X-Auth-Token", token)
                .json(&json!({"user_uuid": format!("burst-{n}"), "code": format!("print({n})")}))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: serde_json::Value = response.json().await.unwrap();
            (n, status, body, burst.elapsed())
        }));
    }
    let mut firsts = Vec::new();
    for user in users {
        let (n, status, body, took) = user.await.unwrap();
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
