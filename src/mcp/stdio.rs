//! `code-interpreter mcp --url URL --token-file F`: an MCP server on stdin and
//! stdout that forwards every message to a running gateway's `/mcp`, for
//! desktop clients that launch their tools as commands.
//!
//! It is a transport bridge, not a second server: each JSON-RPC line from
//! stdin is POSTed to `/mcp` (with the token, the `Mcp-Session-Id` the
//! gateway gave at `initialize`, and the negotiated protocol version), and
//! every message of the answer (one JSON body, or server-sent events while a
//! tool runs: progress, then the result) is written to stdout as one line.
//! Requests run concurrently, so a `notifications/cancelled` reaches the
//! gateway while the call it cancels is still streaming. The protocol itself
//! (versions, tools, errors) is the gateway's, end to end.
//!
//! A request the gateway cannot answer (unreachable, 401, a session that
//! ended) gets a JSON-RPC error saying so: never a hung call. At the end of
//! stdin the MCP session is ended with `DELETE /mcp`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// JSON-RPC error code of a request the gateway did not answer (implementation-defined range).
const GATEWAY_ERROR: i64 = -32000;

/// `code-interpreter mcp`.
#[derive(clap::Args)]
pub struct Args {
    /// The gateway's URL (e.g. http://127.0.0.1:3874); `/mcp` is added when the URL has no path.
    #[arg(long)]
    pub url: String,
    /// A file whose first line is the API token (`scripts/token.sh > FILE`).
    #[arg(long)]
    pub token_file: PathBuf,
}

/// Runs the bridge until stdin ends.
pub fn run(args: Args) -> Result<()> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading the token file {}", args.token_file.display()))?;
    let token = token.lines().next().unwrap_or("").trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        args.token_file.display()
    );
    let endpoint = endpoint(&args.url)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(bridge(Gateway::new(endpoint, token)?))
}

/// The `/mcp` URL of a gateway URL.
fn endpoint(url: &str) -> Result<String> {
    let mut parsed = url::Url::parse(url).with_context(|| format!("--url {url:?}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "http" | "https"),
        "--url must be http:// or https://"
    );
    if parsed.path().trim_end_matches('/').is_empty() {
        parsed.set_path("/mcp");
    }
    Ok(parsed.to_string())
}

/// The gateway and what this MCP session learned from it.
struct Gateway {
    client: reqwest::Client,
    endpoint: String,
    token: String,
    /// `Mcp-Session-Id`, from the answer to `initialize`.
    session: Mutex<Option<String>>,
    /// The protocol version `initialize` negotiated (`MCP-Protocol-Version`).
    version: Mutex<Option<String>>,
}

impl Gateway {
    fn new(endpoint: String, token: String) -> Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()?;
        Ok(Arc::new(Self {
            client,
            endpoint,
            token,
            session: Mutex::new(None),
            version: Mutex::new(None),
        }))
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .request(method, &self.endpoint)
            .header("x-auth-token", &self.token)
            .header("accept", "application/json, text/event-stream");
        if let Some(session) = self.session.lock().unwrap().clone() {
            request = request.header("mcp-session-id", session);
        }
        if let Some(version) = self.version.lock().unwrap().clone() {
            request = request.header("mcp-protocol-version", version);
        }
        request
    }

    /// POSTs one message and writes every message of the answer to `out`; a
    /// request that gets no answer gets a JSON-RPC error saying why.
    async fn forward(&self, message: Value, out: &mpsc::UnboundedSender<String>) {
        let id = message
            .get("id")
            .filter(|_| message.get("method").is_some())
            .cloned();
        let answered = AtomicBool::new(false);
        let failure = match self.exchange(&message, out, &answered).await {
            Ok(()) if answered.load(Ordering::SeqCst) || id.is_none() => return,
            Ok(()) => "the gateway ended the stream without an answer".to_string(),
            Err(_) if answered.load(Ordering::SeqCst) => return,
            Err(why) => why,
        };
        match id {
            Some(id) => {
                let error = json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": GATEWAY_ERROR, "message": failure}});
                let _ = out.send(error.to_string());
            }
            None => eprintln!("code-interpreter mcp: {failure}"),
        }
    }

    /// One POST: every message of the answer goes to `out`; `answered` is set
    /// once a response (not a notification) went.
    async fn exchange(
        &self,
        message: &Value,
        out: &mpsc::UnboundedSender<String>,
        answered: &AtomicBool,
    ) -> Result<(), String> {
        let initialize = message.get("method") == Some(&json!("initialize"));
        let response = self
            .request(reqwest::Method::POST)
            .header("content-type", "application/json")
            .body(message.to_string())
            .send()
            .await
            .map_err(|e| format!("could not reach the gateway at {}: {e}", self.endpoint))?;
        let status = response.status();
        if !status.is_success() {
            let ended =
                status == reqwest::StatusCode::NOT_FOUND && self.session.lock().unwrap().is_some();
            let hint = if ended {
                " (the MCP session ended on the gateway: it idled out or the gateway restarted; \
                 restart this MCP server)"
            } else {
                ""
            };
            let body = response.text().await.unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            return Err(format!("the gateway answered {status}: {body}{hint}"));
        }
        if initialize {
            if let Some(session) = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
            {
                *self.session.lock().unwrap() = Some(session.to_string());
            }
        }
        let emit = |data: &str| {
            let Ok(message) = serde_json::from_str::<Value>(data) else {
                return;
            };
            if initialize {
                let version = message.pointer("/result/protocolVersion");
                if let Some(version) = version.and_then(Value::as_str) {
                    *self.version.lock().unwrap() = Some(version.to_string());
                }
            }
            if message.get("id").is_some() && message.get("method").is_none() {
                answered.store(true, Ordering::SeqCst);
            }
            let _ = out.send(message.to_string());
        };
        let sse = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !sse {
            let text = response
                .text()
                .await
                .map_err(|e| format!("reading the gateway's answer: {e}"))?;
            if !text.trim().is_empty() {
                emit(&text);
            }
            return Ok(());
        }
        let mut events = Events::default();
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| format!("the gateway's stream broke: {e}"))?;
            events.push(&chunk, &mut |data: &str| emit(data));
        }
        Ok(())
    }

    /// Ends the MCP session on the gateway (which releases its sandbox session).
    async fn close(&self) {
        if self.session.lock().unwrap().is_some() {
            let _ = self.request(reqwest::Method::DELETE).send().await;
        }
    }
}

/// Server-sent events, split into their `data`; a priming event (no data) yields nothing.
#[derive(Default)]
struct Events {
    line: Vec<u8>,
    data: String,
}

impl Events {
    fn push(&mut self, bytes: &[u8], emit: &mut impl FnMut(&str)) {
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let line = String::from_utf8_lossy(&self.line).into_owned();
            self.line.clear();
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    emit(&self.data);
                    self.data.clear();
                }
            } else if let Some(value) = line.strip_prefix("data:") {
                if !self.data.is_empty() {
                    self.data.push('\n');
                }
                self.data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
    }
}

async fn bridge(gateway: Arc<Gateway>) -> Result<()> {
    let (out, mut lines) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err()
                || stdout.write_all(b"\n").await.is_err()
                || stdout.flush().await.is_err()
            {
                return;
            }
        }
    });
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(line) = stdin.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                let error = json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32700, "message": format!("parse error: {e}")}});
                let _ = out.send(error.to_string());
                continue;
            }
        };
        let initialize = message.get("method") == Some(&json!("initialize"));
        let gateway = Arc::clone(&gateway);
        let out = out.clone();
        let forward = async move { gateway.forward(message, &out).await };
        if initialize {
            // Later messages need the session id it brings.
            forward.await;
        } else {
            tasks.spawn(forward);
        }
        while tasks.try_join_next().is_some() {}
    }
    // stdin ended: the client is gone. End the MCP session and stop.
    tasks.abort_all();
    gateway.close().await;
    drop(out);
    let _ = writer.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_gets_mcp_when_the_url_has_no_path() {
        assert_eq!(
            endpoint("http://127.0.0.1:3874").unwrap(),
            "http://127.0.0.1:3874/mcp"
        );
        assert_eq!(endpoint("http://h:1/").unwrap(), "http://h:1/mcp");
        assert_eq!(
            endpoint("http://h:1/api/v1/mcp").unwrap(),
            "http://h:1/api/v1/mcp"
        );
        assert!(endpoint("ftp://h/").is_err());
        assert!(endpoint("not a url").is_err());
    }

    #[test]
    fn events_yield_their_data_across_chunks() {
        let mut events = Events::default();
        let mut seen = Vec::new();
        let stream = b"id: 0\nretry: 3000\ndata:\n\nevent: message\ndata: {\"a\":\r\ndata: 1}\r\n\r\ndata: {\"b\":2}\n\n";
        for chunk in stream.chunks(5) {
            events.push(chunk, &mut |data: &str| seen.push(data.to_string()));
        }
        assert_eq!(seen, ["{\"a\":\n1}", "{\"b\":2}"]);
    }
}
