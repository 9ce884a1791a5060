//! Streamed execution: outputs arrive as server-sent events while the code
//! runs, the last event carries the result, and a client that hangs up
//! interrupts its execution.

mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Options};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// Reads server-sent events as (name, data, arrival time since `started`).
struct Events {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
    started: Instant,
}

impl Events {
    async fn open(gw: &Gateway, body: Value) -> Self {
        let started = Instant::now();
        let response = gw
            .http()
            .post(format!("{}/execute/stream", gw.url))
            .header("X-Auth-Token", &gw.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
            started,
        }
    }

    async fn next(&mut self) -> Option<(String, Value, Duration)> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        name = value.trim().to_string();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push_str(value.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                return Some((
                    name,
                    serde_json::from_str(&data).unwrap(),
                    self.started.elapsed(),
                ));
            }
            let chunk = self.body.next().await?.ok()?;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    async fn all(mut self) -> Vec<(String, Value, Duration)> {
        let mut events = Vec::new();
        while let Some(event) = self.next().await {
            events.push(event);
        }
        events
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_arrive_as_they_are_produced() {
    let gw = Gateway::start(Options::default()).await;
    let code = "import time, sys\nprint('first', flush=True)\ntime.sleep(1.5)\n\
                print('oops', file=sys.stderr)\nfrom IPython.display import display, HTML\n\
                display(HTML('<b>x</b>'))\n40 + 2";
    let events = Events::open(&gw, json!({"user_uuid": "streamer", "code": code}))
        .await
        .all()
        .await;
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["stream", "stream", "display_data", "execute_result", "done"],
        "{events:?}"
    );
    let (_, first, first_at) = &events[0];
    assert_eq!(first["text"], "first\n");
    let (_, done, done_at) = events.last().unwrap();
    // The first line comes as printed, 1.5 s before the run ends (absolute
    // times include getting a worker, which varies with load).
    let ahead = done_at.saturating_sub(*first_at);
    assert!(
        ahead >= Duration::from_millis(1300),
        "first line only {ahead:?} before the end"
    );
    assert_eq!(events[1].1["name"], "stderr");
    assert_eq!(events[2].1["data"]["text/html"], "<b>x</b>");
    assert_eq!(done["result_text"], "first\noops\n42\n");
    assert_eq!(done["status"], "ok");
    assert_eq!(done["session_created"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_the_final_event() {
    let gw = Gateway::start(Options::default()).await;
    let events = Events::open(
        &gw,
        json!({"user_uuid": "slow", "code": "while True: pass", "timeout": 1}),
    )
    .await
    .all()
    .await;
    let (name, failed, _) = events.last().unwrap();
    assert_eq!(name, "failed");
    assert_eq!(failed["status_code"], 504);
    assert_eq!(failed["session_reset"], true);
    assert_eq!(gw.run("slow", "1").await["session_created"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_up_interrupts_the_execution() {
    let gw = Gateway::start(Options::default()).await;
    let code = "import time\nticks = 0\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.05)\n    ticks += 1";
    let mut events = Events::open(&gw, json!({"user_uuid": "quitter", "code": code})).await;
    let (name, first, _) = events.next().await.unwrap();
    assert_eq!(
        (name.as_str(), first["text"].as_str()),
        ("stream", Some("started\n"))
    );
    tokio::time::sleep(Duration::from_millis(300)).await; // let it tick
    drop(events); // the client hangs up
    let hung_up = Instant::now();
    // The kernel was interrupted, not destroyed: the session and its state live on.
    let after = gw.run("quitter", "print(ticks > 0)").await;
    assert!(
        hung_up.elapsed() < Duration::from_secs(3),
        "interrupt took {:?}",
        hung_up.elapsed()
    );
    assert_eq!(after["result_text"], "True\n");
    assert_eq!(after["session_created"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_that_ignores_the_interrupt_is_reset_after_2_s() {
    let gw = Gateway::start(Options::default()).await;
    let code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n\
                print('started', flush=True)\nwhile True:\n    time.sleep(0.05)";
    let mut events = Events::open(&gw, json!({"user_uuid": "stubborn", "code": code})).await;
    events.next().await.unwrap();
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = gw.status().await;
        if status["counters"]["abandoned"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "never abandoned: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.run("stubborn", "1").await["session_created"], true);
}
