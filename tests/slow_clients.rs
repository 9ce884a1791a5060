//! Slow and idle clients against a real gateway: the HTTP front's timeouts
//! and connection limit (src/front/).
//!
//! Before the front, 1,100 connections that each sent half a request head
//! made `/health` time out for everyone and stayed open indefinitely, and a
//! trickled upload held its user's turn as long as the client liked. Only
//! loopback traffic; every socket the test opens belongs to a task of the
//! test's runtime and is closed when the test ends, passed or failed.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header, keep-alive and body timeouts the gateways here run with, seconds.
const TIMEOUT: u64 = 3;
/// Half-open connections in the flood: more than the default limit (1024).
const FLOOD: usize = 1100;
/// Longest acceptable answer while the flood is held.
const PROMPT: Duration = Duration::from_secs(1);
/// Allowance for scheduling on a busy 2-core machine past a timeout.
const SLACK: Duration = Duration::from_millis(1500);

fn front_options(extra_server: &str) -> Options {
    Options {
        server: format!(
            "header_timeout_secs = {TIMEOUT}\nkeepalive_timeout_secs = {TIMEOUT}\n\
             body_timeout_secs = {TIMEOUT}\n{extra_server}"
        ),
        ..Options::default()
    }
}

/// Sets this process's soft RLIMIT_NOFILE to `n` (within the hard limit)
/// and returns what it was.
fn set_soft_nofile(n: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    let before = unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let before = limit.rlim_cur;
        limit.rlim_cur = n.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        before
    };
    assert!(
        limit.rlim_cur >= n,
        "the hard open-file limit {} is below the {n} this test needs",
        limit.rlim_max
    );
    before
}

/// The soft "Max open files" of a process.
fn soft_nofile(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

fn addr(gw: &Gateway) -> String {
    gw.url.trim_start_matches("http://").to_string()
}

/// Reads until the server closes the connection (EOF or reset); returns what came.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
}

/// Status code of a raw HTTP response.
fn status_of(response: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(response);
    text.split(' ').nth(1)?.parse().ok()
}

/// Sends `head` at once, then `body` one byte a second, while reading the
/// answer; returns the raw answer and how long after the head it came.
async fn trickle(address: String, head: String, body: Vec<u8>) -> (Vec<u8>, Duration) {
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let started = Instant::now();
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let sender = tokio::spawn(async move {
        for byte in body {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    sender.abort();
    (answer, started.elapsed())
}

/// A connection that sent half a request head and then nothing.
struct Held {
    stream: TcpStream,
    opened: Instant,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_floods_and_trickled_bodies_do_not_shut_out_anyone() {
    // The gateway starts with the soft open-file limit many systems give
    // (1024) and raises it itself to fit 1024 connections, 4 workers'
    // sockets and a margin.
    let ours = set_soft_nofile(1024);
    let gw = Gateway::start(front_options("")).await;
    set_soft_nofile(ours.max(FLOOD as u64 + 512));
    let gateway_nofile = soft_nofile(gw.pid());
    eprintln!("the gateway raised its soft open-file limit from 1024 to {gateway_nofile}");
    assert!(gateway_nofile >= 1024 + 4 * 4 + 256, "{gateway_nofile}");

    // A user with state, and one whose upload will be trickled.
    gw.run("keeper", "a = 1").await;
    gw.run("uploader", "b = 2").await;

    // Trickled bodies: an /execute and an upload, 1 byte/s (Content-Length 64).
    let execute_body = format!("{:<64}", r#"{"user_uuid": "trickler", "code": "1"}"#);
    let execute = tokio::spawn(trickle(
        addr(&gw),
        format!(
            "POST /execute HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\n\
             Content-Type: application/json\r\nContent-Length: 64\r\n\r\n",
            gw.token
        ),
        execute_body.into_bytes(),
    ));
    let upload = tokio::spawn(trickle(
        addr(&gw),
        format!(
            "PUT /files/slow.txt?user_uuid=uploader HTTP/1.1\r\nHost: x\r\n\
             X-Auth-Token: {}\r\nContent-Length: 64\r\n\r\n",
            gw.token
        ),
        vec![b'x'; 64],
    ));

    // The flood: each connection sends half a head and stops.
    let flood_started = Instant::now();
    let mut held = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut stream = TcpStream::connect(addr(&gw)).await.unwrap();
        let opened = Instant::now();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        held.push(Held { stream, opened });
    }
    let flood_time = flood_started.elapsed();
    // Watch every held connection until the server closes it.
    let watchers: Vec<_> = held
        .into_iter()
        .map(|mut h| {
            tokio::spawn(async move {
                let answer = read_to_close(&mut h.stream).await;
                (h.opened, h.opened.elapsed(), answer)
            })
        })
        .collect();

    // Once the gateway has taken them all in, every slot is taken.
    tokio::time::sleep_until((flood_started + Duration::from_secs(1)).into()).await;
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let connections = gw.status().await["connections"].clone();
    eprintln!("connections while held: {connections}");
    assert_eq!(connections["open"], connections["max"], "{connections}");
    assert_eq!(connections["max"], 1024);

    // While they are held, /health (a new connection) and the existing
    // session (the harness's client) answer promptly.
    let t = Instant::now();
    let health = fresh
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap();
    let health_latency = t.elapsed();
    assert_eq!(health.status(), 200);
    let t = Instant::now();
    let kept = gw.run("keeper", "print(a)").await;
    let session_latency = t.elapsed();
    assert_eq!(kept["result_text"], "1\n");
    let answered_after_flood = flood_started.elapsed();
    eprintln!(
        "flood of {FLOOD} opened in {flood_time:?}; /health {health_latency:?}, \
         print(a) {session_latency:?}, both done {answered_after_flood:?} after the flood began"
    );
    assert!(health_latency < PROMPT, "/health took {health_latency:?}");
    assert!(
        session_latency < PROMPT,
        "print(a) took {session_latency:?}"
    );
    // Both came while every connection of the flood was still within its header timeout.
    assert!(
        answered_after_flood < Duration::from_secs(TIMEOUT),
        "answers came {answered_after_flood:?} after the flood began"
    );

    // Every held connection is closed by the server within the header
    // timeout (or earlier, evicted to make room), without an answer.
    let mut evicted = 0;
    let mut latest = Duration::ZERO;
    let (mut shortest, mut longest) = (Duration::MAX, Duration::ZERO);
    for watcher in watchers {
        let (opened, lived, answer) = watcher.await.unwrap();
        assert!(answer.is_empty(), "a half-open connection got {answer:?}");
        assert!(
            lived <= Duration::from_secs(TIMEOUT) + SLACK,
            "a held connection lived {lived:?}"
        );
        if lived < Duration::from_secs(TIMEOUT) - Duration::from_millis(200) {
            evicted += 1;
        } else {
            shortest = shortest.min(lived);
            longest = longest.max(lived);
        }
        latest = latest.max(opened.duration_since(flood_started) + lived);
    }
    eprintln!(
        "held connections: {evicted} evicted early, the rest closed by the header timeout \
         {shortest:?} to {longest:?} after they opened; the last closed {latest:?} after \
         the flood began"
    );
    // Those past the limit made room (plus a few for the requests above);
    // the rest lived their header timeout, no less.
    assert!(
        (FLOOD - 1024..FLOOD - 1024 + 20).contains(&evicted),
        "{evicted} evicted"
    );

    // The trickled bodies got 408 after the grace period, and the upload
    // gave the user's turn back.
    let (answer, after) = execute.await.unwrap();
    eprintln!(
        "trickled /execute: {:?} after {after:?}",
        status_of(&answer)
    );
    assert_eq!(
        status_of(&answer),
        Some(408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(String::from_utf8_lossy(&answer).contains("\"detail\""));
    assert!(after <= Duration::from_secs(TIMEOUT) + SLACK + Duration::from_secs(1));
    let (answer, after) = upload.await.unwrap();
    eprintln!("trickled upload: {:?} after {after:?}", status_of(&answer));
    assert_eq!(
        status_of(&answer),
        Some(408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(after <= Duration::from_secs(TIMEOUT) + SLACK + Duration::from_secs(1));
    let t = Instant::now();
    let turn = gw.run("uploader", "print(b)").await;
    assert_eq!(turn["result_text"], "2\n");
    assert!(
        t.elapsed() < PROMPT,
        "the uploader waited {:?}",
        t.elapsed()
    );

    let status = gw.status().await;
    let counters = &status["counters"];
    eprintln!("front counters: {counters}");
    assert!(counters["connections_evicted"].as_u64().unwrap() >= (FLOOD - 1024) as u64);
    assert!(counters["header_timeouts"].as_u64().unwrap() >= 900);
    assert!(counters["body_timeouts"].as_u64().unwrap() >= 2);
    assert_eq!(counters["connections_refused"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keepalive_connections_are_closed() {
    let gw = Gateway::start(Options {
        min_idle: 0,
        ..front_options("")
    })
    .await;
    let mut stream = TcpStream::connect(addr(&gw)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&buf[..n]), Some(200));
    let idle_from = Instant::now();
    let rest = read_to_close(&mut stream).await;
    let idle = idle_from.elapsed();
    eprintln!("idle keep-alive connection closed after {idle:?}");
    assert!(rest.is_empty());
    assert!(idle >= Duration::from_secs(TIMEOUT) - Duration::from_millis(100));
    assert!(idle <= Duration::from_secs(TIMEOUT) + SLACK, "{idle:?}");
    // The harness's own pooled connection idled as long and was closed at
    // the same moment: let its client see that before it is used again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gw.status().await["counters"]["idle_timeouts"].as_u64() >= Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_full_of_requests_in_flight_refuses_with_503() {
    let gw = Gateway::start(Options {
        min_idle: 0,
        ..front_options("max_connections = 3\n")
    })
    .await;
    // Three requests in flight: bodies trickled (they end with 408 after the grace).
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: x\r\nX-Auth-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 64\r\n\r\n",
        gw.token
    );
    let body = format!("{:<64}", r#"{"user_uuid": "slow", "code": "1"}"#).into_bytes();
    let trickles: Vec<_> = (0..3)
        .map(|_| tokio::spawn(trickle(addr(&gw), head.clone(), body.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A newcomer is refused, cleanly: JSON, 503, Connection: close.
    let mut stream = TcpStream::connect(addr(&gw)).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut stream))
        .await
        .expect("the refused connection is closed");
    let text = String::from_utf8_lossy(&refused).to_lowercase();
    assert_eq!(status_of(&refused), Some(503), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    let json = text.split("\r\n\r\n").nth(1).unwrap();
    assert!(
        text.contains(&format!("content-length: {}\r\n", json.len())),
        "{text}"
    );
    let detail: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(detail["detail"].is_string());
    // Once the trickles have timed out, the gateway answers again.
    for trickle in trickles {
        let (answer, _) = trickle.await.unwrap();
        assert_eq!(status_of(&answer), Some(408));
    }
    let health = gw
        .http()
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let counters = gw.status().await["counters"].clone();
    assert!(
        counters["connections_refused"].as_u64() >= Some(1),
        "{counters}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight_and_closes_waiting_connections() {
    let mut gw = Gateway::start(front_options("")).await;
    gw.run("sleeper", "import time").await;
    // A connection that never sent a byte, and one in the middle of a head.
    let mut silent = TcpStream::connect(addr(&gw)).await.unwrap();
    let mut partial = TcpStream::connect(addr(&gw)).await.unwrap();
    let partial_opened = Instant::now();
    partial
        .write_all(b"GET /health HTTP/1.1\r\n")
        .await
        .unwrap();
    let (client, url, token) = (
        gw.http().clone(),
        format!("{}/execute", gw.url),
        gw.token.clone(),
    );
    let running = tokio::spawn(async move {
        let response = client
            .post(url)
            .header("X-Auth-Token", token)
            .json(&serde_json::json!({"user_uuid": "sleeper", "code": "time.sleep(2); print('done')"}))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<serde_json::Value>().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let term = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    // The byte-less connection is closed at once.
    tokio::time::timeout(Duration::from_secs(5), read_to_close(&mut silent))
        .await
        .unwrap();
    let silent_after = term.elapsed();
    // The running execution finishes and is answered.
    let (status, body) = running.await.unwrap();
    let answered_after = term.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result_text"], "done\n");
    // The half-sent head gets no more than its header timeout.
    tokio::time::timeout(Duration::from_secs(10), read_to_close(&mut partial))
        .await
        .unwrap();
    let partial_lived = partial_opened.elapsed();
    tokio::task::block_in_place(|| gw.stop());
    let exited_after = term.elapsed();
    eprintln!(
        "after SIGTERM: silent connection closed {silent_after:?}, execution answered \
         {answered_after:?}, half-sent head closed {partial_lived:?} after it opened, \
         gateway exited {exited_after:?}"
    );
    assert!(
        silent_after < Duration::from_millis(500),
        "{silent_after:?}"
    );
    assert!(partial_lived <= Duration::from_secs(TIMEOUT) + SLACK);
    assert!(exited_after <= Duration::from_secs(TIMEOUT) + SLACK + SLACK);
}
