//! Every kind of bad request gets a JSON `detail` and the right status code.
//! Runs against a real gateway with an empty pool (no worker is needed).

mod common;

use common::{Gateway, Options};
use serde_json::{json, Value};

async fn gateway() -> Gateway {
    Gateway::start(Options {
        min_idle: 0,
        ..Options::default()
    })
    .await
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("every error body is JSON");
    assert!(body["detail"].is_string(), "no detail in {body}");
    (status, body)
}

#[tokio::test]
async fn health_needs_no_token_but_everything_else_does() {
    let gw = gateway().await;
    let health = gw
        .http()
        .get(format!("{}/health", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let url = format!("{}/execute", gw.url);
    let body = json!({"user_uuid": "u", "code": "1"});
    let (status, _) = send(gw.http().post(&url).json(&body)).await;
    assert_eq!(status, 401);
    let (status, _) = send(
        gw.http()
            .post(&url)
            .header("X-Auth-Token", "wrong")
            .json(&body),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send(gw.http().get(format!("{}/status", gw.url))).await;
    assert_eq!(status, 401);
    let (status, _) = send(
        gw.http()
            .post(format!("{}/release", gw.url))
            .json(&json!({"user_uuid": "u"})),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn malformed_or_incomplete_bodies_are_400() {
    let gw = gateway().await;
    let url = format!("{}/execute", gw.url);
    let post = |body: &'static str| {
        gw.http()
            .post(&url)
            .header("X-Auth-Token", &gw.token)
            .header("Content-Type", "application/json")
            .body(body)
    };
    for body in [
        "{not json",
        "",
        "[]",
        r#"{"code": "1"}"#,
        r#"{"user_uuid": "u"}"#,
        r#"{"user_uuid": "", "code": "1"}"#,
        r#"{"user_uuid": "u", "code": ""}"#,
        r#"{"user_uuid": "u", "code": "   "}"#,
        r#"{"user_uuid": 5, "code": "1"}"#,
        r#"{"user_uuid": "u", "code": "1", "timeout": -1}"#,
        r#"{"user_uuid": "a\nb", "code": "1"}"#,
    ] {
        let (status, reply) = send(post(body)).await;
        assert_eq!(status, 400, "body {body:?} got {reply}");
    }
    let long_user = format!(r#"{{"user_uuid": "{}", "code": "1"}}"#, "x".repeat(300));
    let (status, _) = send(
        gw.http()
            .post(&url)
            .header("X-Auth-Token", &gw.token)
            .header("Content-Type", "application/json")
            .body(long_user),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send(
        gw.http()
            .post(format!("{}/release", gw.url))
            .header("X-Auth-Token", &gw.token)
            .json(&json!({})),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn oversized_code_is_413_and_wrong_content_type_is_415() {
    let gw = gateway().await;
    let url = format!("{}/execute", gw.url);
    let big = json!({"user_uuid": "u", "code": "x".repeat(1024 * 1024 + 1)});
    let (status, _) = send(
        gw.http()
            .post(&url)
            .header("X-Auth-Token", &gw.token)
            .json(&big),
    )
    .await;
    assert_eq!(status, 413);
    // A body far past any limit is refused while it streams in, not buffered whole.
    let (status, body) = send_huge_body(&gw, 16 * 1024 * 1024).await;
    assert_eq!(status, 413, "{body}");
    let (status, _) = send(
        gw.http()
            .post(&url)
            .header("X-Auth-Token", &gw.token)
            .header("Content-Type", "text/plain")
            .body(r#"{"user_uuid": "u", "code": "1"}"#),
    )
    .await;
    assert_eq!(status, 415);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_too() {
    let gw = gateway().await;
    let (status, _) = send(
        gw.http()
            .get(format!("{}/nope", gw.url))
            .header("X-Auth-Token", &gw.token),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        gw.http()
            .get(format!("{}/execute", gw.url))
            .header("X-Auth-Token", &gw.token),
    )
    .await;
    assert_eq!(status, 405);
    // The gateway is still fine after all that.
    assert_eq!(gw.status().await["total_workers"], 0);
}

/// Streams `size` bytes of body over a raw socket and returns the status code
/// and body the server answers with. The server may answer (and close) before
/// the body is sent, which an HTTP client library reports as an error.
async fn send_huge_body(gw: &Gateway, size: usize) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = gw.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /execute HTTP/1.1\r\nHost: {address}\r\nX-Auth-Token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n",
        gw.token
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < size {
        if stream.write_all(&chunk).await.is_err() {
            break; // the server stopped reading: its answer is waiting
        }
        sent += chunk.len();
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    assert!(body.contains("detail"), "no JSON detail in {answer:?}");
    (status, body)
}
