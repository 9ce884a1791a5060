//! The MCP server at `/mcp`, driven by the official MCP Python SDK (PyPI `mcp`)
//! as a real client against a real gateway, over Streamable HTTP and over
//! stdio (`code-interpreter mcp`). The checks themselves are in
//! `tests/mcp/client.py`; here the gateway is started, a REST user is
//! prepared for the shared-session check, and what the client leaves behind
//! is checked from outside.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Gateway, Options};
use serde_json::{json, Value};

/// The venv's Python with the MCP SDK: from scripts/test.sh, else made here
/// the way it makes it (cached).
fn python() -> String {
    if let Ok(python) = std::env::var("CI_TEST_MCP_PYTHON") {
        if !python.is_empty() {
            return python;
        }
    }
    let repo = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("bash")
        .arg("-c")
        .arg("source scripts/lib.sh >&2 && ensure_mcp_client >&2 && echo \"$MCP_PYTHON\"")
        .current_dir(repo)
        .output()
        .expect("running bash");
    assert!(
        output.status.success(),
        "installing the MCP Python SDK failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// The gateway's token in a file of its own (0600), as `--token-file` takes it.
fn token_file(gw: &Gateway) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ci-test-mcp-token-{}", common::random_tag()));
    std::fs::write(&path, format!("{}\n", gw.token)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

async fn sessions(gw: &Gateway) -> u64 {
    gw.status().await["sessions"].as_u64().unwrap()
}

/// Runs tests/mcp/client.py over `transport` and checks that the MCP
/// sessions it opened released their sandbox sessions when they ended.
async fn drive(transport: &str) {
    let gw = Gateway::start(Options {
        max_workers: 6,
        ..Options::default()
    })
    .await;
    gw.run("rest-shared", "shared_value = 42").await;
    let token = token_file(&gw);
    let started = Instant::now();
    let mut child = tokio::process::Command::new(python());
    child
        .arg(format!(
            "{}/tests/mcp/client.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg(transport)
        .arg(&gw.url)
        .arg(&token)
        .arg(env!("CARGO_BIN_EXE_code-interpreter"))
        .arg("rest-shared")
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(300), child.output())
        .await
        .expect("the MCP client did not finish within 300 s")
        .unwrap();
    let _ = std::fs::remove_file(&token);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!(
        "{transport}: {stdout}(in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "the MCP client failed over {transport}:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.log()
    );
    assert_eq!(stdout.matches("ok: ").count(), 9, "{stdout}");
    // Every MCP session ended (the SDK sends DELETE; the stdio server does on
    // stdin's end): only the REST user's session is left, with its state.
    let deadline = Instant::now() + Duration::from_secs(15);
    while sessions(&gw).await != 1 {
        assert!(
            Instant::now() < deadline,
            "MCP sessions were not released: {}",
            gw.status().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rest = gw.run("rest-shared", "shared_value").await;
    assert_eq!(rest["result_text"], "42\n");
}

#[tokio::test]
async fn the_python_sdk_over_streamable_http() {
    drive("http").await;
}

#[tokio::test]
async fn the_python_sdk_over_stdio() {
    drive("stdio").await;
}

/// A missing or wrong token is 401 JSON, before any MCP processing; the
/// right one in either header is let through to the protocol.
#[tokio::test]
async fn the_token_guards_mcp() {
    let gw = Gateway::start(Options {
        min_idle: 0,
        ..Options::default()
    })
    .await;
    let initialize = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "0"}}});
    let post = |auth: Option<(&'static str, String)>| {
        let mut request = gw
            .http()
            .post(format!("{}/mcp", gw.url))
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some((name, value)) = auth {
            request = request.header(name, value);
        }
        request.send()
    };
    for auth in [
        None,
        Some(("authorization", "Bearer wrong-token-0123456789".to_string())),
        Some(("x-auth-token", "wrong".to_string())),
        Some(("authorization", format!("Basic {}", gw.token))),
    ] {
        let response = post(auth.clone()).await.unwrap();
        assert_eq!(response.status(), 401, "{auth:?}");
        let body: Value = response.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("token"), "{body}");
    }
    for auth in [
        ("authorization", format!("Bearer {}", gw.token)),
        ("x-auth-token", gw.token.clone()),
    ] {
        let response = post(Some(auth)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("mcp-session-id"));
        let text = response.text().await.unwrap();
        assert!(
            text.contains("\"protocolVersion\":\"2025-06-18\""),
            "{text}"
        );
        assert!(text.contains("code-interpreter"), "{text}");
    }
}

/// An MCP client's open streams end when the gateway begins to shut down, so
/// a restart is not held for the grace period; and the shutdown does not
/// release the MCP session's sandbox session (the next start re-adopts it).
#[tokio::test]
async fn an_open_mcp_stream_does_not_hold_a_restart() {
    let mut gw = Gateway::start(Options {
        min_idle: 0,
        ..Options::default()
    })
    .await;
    let mcp = format!("{}/mcp", gw.url);
    let post = |session: Option<&str>, body: Value| {
        let mut request = gw
            .http()
            .post(&mcp)
            .bearer_auth(&gw.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&body);
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let initialize = post(
        None,
        json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "test", "version": "0"}}}),
    )
    .await
    .unwrap();
    let session = initialize.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    initialize.text().await.unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let accepted = post(Some(&session), initialized).await.unwrap();
    assert_eq!(accepted.status(), 202);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "execute_python", "arguments": {"code": "kept = 7"}}});
    let answer = post(Some(&session), call)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(answer.contains("\"isError\":false"), "{answer}");
    assert_eq!(sessions(&gw).await, 1);
    // The client's stream for server messages, held open.
    let listening = gw
        .http()
        .get(&mcp)
        .bearer_auth(&gw.token)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(listening.status(), 200);
    let started = Instant::now();
    gw.stop();
    let took = started.elapsed();
    println!("the shutdown took {took:?}");
    assert!(took < Duration::from_secs(5), "the shutdown took {took:?}");
    drop(listening);
    gw.spawn().await;
    assert_eq!(sessions(&gw).await, 1, "the sandbox session was kept");
}
