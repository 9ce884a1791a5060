//! The OpenAPI document against a real gateway with real workers.
//!
//! Every operation in `/openapi.json` is called (API routes at the root and
//! under `/api/v1`), every answer must have a documented status code, content
//! type and headers and validate against the documented schema, and every
//! example in the document is produced by the server: request examples are
//! sent as they are, and the answer must match the response example of the
//! same name (same shape, same stable values). The test fails if an example
//! was never produced. Event streams (`text/event-stream`) are parsed into
//! their events, each validated against the schema `x-events` names for it.

mod common;
#[path = "openapi/schema.rs"]
mod schema;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Gateway, Options};
use serde_json::{json, Value};

/// Values compared exactly between an example and the real answer; other
/// leaves (timings, counters, ids, tracebacks, details) only by JSON type.
const STABLE_KEYS: &[&str] = &[
    "status",
    "result_text",
    "type",
    "name",
    "text",
    "ename",
    "evalue",
    "session_created",
    "output_truncated",
    "session_reset",
    "event",
    "status_code",
    "path",
    "size",
];
/// Response examples the server cannot be made to produce on demand yet, as
/// (method, path, status, name).
/// `kernel_died`: the kernel client has no heartbeat, so a kernel that dies is
/// noticed only at the request's deadline (504) instead of at once (502).
const KNOWN_GAPS: &[(&str, &str, &str, &str)] = &[("POST", "/execute", "502", "kernel_died")];
/// Arrays whose length varies between runs.
const LOOSE_ARRAYS: &[&str] = &["traceback", "controllers"];
const EVENT_STREAM: &str = "text/event-stream";

/// (method, path, status, example name).
type ExampleKey = (String, String, String, String);

struct Checker {
    gw: Gateway,
    doc: Value,
    /// Every response example produced.
    seen: BTreeSet<ExampleKey>,
}

/// How to send one request.
struct Call<'a> {
    method: &'a str,
    /// The documented path, e.g. `/files/{path}`.
    path: &'a str,
    /// What replaces `{path}` in the URL (already percent-encoded).
    path_value: &'a str,
    prefix: &'a str,
    query: &'a str,
    token: bool,
    body: Option<Body>,
}

enum Body {
    Json(Value),
    Raw(&'static str, Vec<u8>),
}

impl<'a> Call<'a> {
    fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            path_value: "",
            prefix: "",
            query: "",
            token: true,
            body: None,
        }
    }

    /// A call to `/files/{path}` with `value` as the path and `?user_uuid=example-user`.
    fn file(method: &'a str, value: &'a str) -> Self {
        let mut call = Self::new(method, "/files/{path}");
        call.path_value = value;
        call.query = "?user_uuid=example-user";
        call
    }
}

impl Checker {
    fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        op
    }

    /// The request example `name` of an operation, as a body to send.
    fn request_example(&self, method: &str, path: &str, name: &str) -> Body {
        let content = self.operation(method, path)["requestBody"]["content"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path} has no request body"));
        for (media, item) in content {
            let Some(example) = item["examples"].get(name) else {
                continue;
            };
            let value = example["value"].clone();
            if media == "application/json" {
                schema::validate(&self.doc, &item["schema"], &value, name)
                    .unwrap_or_else(|e| panic!("request example {name} of {path}: {e}"));
                return Body::Json(value);
            }
            let text = value.as_str().expect("a non-JSON example is a string");
            return Body::Raw("application/octet-stream", text.as_bytes().to_vec());
        }
        panic!("no request example {name} for {method} {path}");
    }

    /// Sends `call`; checks the status, content type and headers are documented
    /// and the body validates. JSON bodies come back parsed, event streams as
    /// `[{event, data}]`, anything else as a string.
    async fn send(&self, call: Call<'_>) -> (u16, Value) {
        let path = call.path.replace("{path}", call.path_value);
        let url = format!("{}{}{}{}", self.gw.url, call.prefix, path, call.query);
        let mut request = self.gw.http().request(call.method.parse().unwrap(), &url);
        if call.token {
            request = request.header("X-Auth-Token", &self.gw.token);
        }
        request = match call.body {
            Some(Body::Json(value)) => request.json(&value),
            Some(Body::Raw(content_type, bytes)) => {
                request.header("Content-Type", content_type).body(bytes)
            }
            None => request,
        };
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let documented = &self.operation(call.method, call.path)["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{} {url} answered {status}, which the document does not list",
            call.method
        );
        for name in documented["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|h| h.0)
        {
            assert!(
                response.headers().contains_key(name.as_str()),
                "{} {url} ({status}): no {name} header",
                call.method
            );
        }
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let essence = content_type.split(';').next().unwrap().trim().to_string();
        let media = &documented["content"][&essence];
        assert!(
            media.is_object(),
            "{url}: content type {content_type} not documented for {status}"
        );
        let text = response.text().await.unwrap();
        let body = match essence.as_str() {
            "application/json" => {
                let body: Value = serde_json::from_str(&text).expect("a JSON body");
                schema::validate(&self.doc, &media["schema"], &body, "$")
                    .unwrap_or_else(|e| panic!("{} {url} ({status}): {e}\n{body}", call.method));
                body
            }
            EVENT_STREAM => self
                .events(media, &text)
                .unwrap_or_else(|e| panic!("{} {url} ({status}): {e}\n{text}", call.method)),
            _ => Value::String(text),
        };
        (status, body)
    }

    /// Parses a server-sent event stream into `[{event, data}]`, each data
    /// checked against its event's schema in the media type's `x-events`; the
    /// stream must end with exactly one final event, `done` or `failed`.
    fn events(&self, media: &Value, text: &str) -> Result<Value, String> {
        let mut events = Vec::new();
        for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let (mut name, mut data) = (String::from("message"), Vec::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value));
                } else if !line.starts_with(':') {
                    return Err(format!("not an event stream line: {line:?}"));
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let data: Value = serde_json::from_str(&data.join("\n"))
                .map_err(|e| format!("event {name}: data is not JSON: {e}"))?;
            let schema = media["x-events"]
                .get(&name)
                .ok_or_else(|| format!("event {name} is not in x-events"))?;
            schema::validate(&self.doc, schema, &data, &format!("event {name}"))?;
            events.push(json!({"event": name, "data": data}));
        }
        let finals: Vec<usize> = (0..events.len())
            .filter(|&i| matches!(events[i]["event"].as_str(), Some("done" | "failed")))
            .collect();
        if finals != [events.len().saturating_sub(1)] || events.is_empty() {
            return Err(format!("not exactly one final event, last: {finals:?}"));
        }
        Ok(Value::Array(events))
    }

    /// Sends `call` and insists the answer is the response example `name`.
    async fn expect(&mut self, call: Call<'_>, name: &str) -> Value {
        let (method, path) = (call.method, call.path);
        let (status, body) = self.send(call).await;
        let responses = &self.operation(method, path)["responses"];
        let (documented_status, media_type, example) = responses
            .as_object()
            .unwrap()
            .iter()
            .find_map(|(code, response)| {
                let (media_type, media) = response["content"]
                    .as_object()?
                    .iter()
                    .find(|(_, media)| media["examples"].get(name).is_some())?;
                let value = media["examples"][name]["value"].clone();
                // The document's own example must satisfy its schema.
                let value = match media_type.as_str() {
                    "application/json" => {
                        schema::validate(&self.doc, &media["schema"], &value, name)
                            .unwrap_or_else(|e| panic!("example {name} of {path}: {e}"));
                        value
                    }
                    EVENT_STREAM => self
                        .events(media, value.as_str().expect("an event stream example"))
                        .unwrap_or_else(|e| panic!("example {name} of {path}: {e}")),
                    _ => value,
                };
                Some((code.clone(), media_type.clone(), value))
            })
            .unwrap_or_else(|| panic!("no response example {name} for {method} {path}"));
        assert_eq!(
            status.to_string(),
            documented_status,
            "{method} {path} example {name}: {}",
            shortened(&body)
        );
        let matched = match media_type.as_str() {
            "application/json" | EVENT_STREAM => matches_example(&example, &body, "$", ""),
            _ if example == body => Ok(()),
            _ => Err("the bytes differ".into()),
        };
        if let Err(e) = matched {
            panic!(
                "{method} {path} example {name}: {e}\nexample: {example}\nactual:  {}",
                shortened(&body)
            );
        }
        self.seen.insert((
            method.to_string(),
            path.to_string(),
            documented_status,
            name.to_string(),
        ));
        body
    }

    /// Every response example in the document, as `seen` records them.
    fn all_examples(&self) -> BTreeSet<ExampleKey> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                for (status, response) in responses {
                    let media = response["content"].as_object().into_iter().flatten();
                    for (_, media) in media {
                        let examples = media["examples"].as_object().into_iter().flatten();
                        for (name, _) in examples {
                            all.insert((
                                method.to_uppercase(),
                                path.clone(),
                                status.clone(),
                                name.clone(),
                            ));
                        }
                    }
                }
            }
        }
        all
    }
}

/// `value` with long strings (images) cut, for messages.
fn shortened(value: &Value) -> Value {
    match value {
        Value::String(s) if s.len() > 120 => Value::String(format!("{}…", &s[..120])),
        Value::Array(items) => Value::Array(items.iter().map(shortened).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), shortened(v))).collect())
        }
        other => other.clone(),
    }
}

/// Same shape as the example, same values for [`STABLE_KEYS`].
fn matches_example(example: &Value, actual: &Value, at: &str, key: &str) -> Result<(), String> {
    match (example, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, v) in e {
                let inner = a.get(k).ok_or_else(|| format!("{at}: no field {k:?}"))?;
                matches_example(v, inner, &format!("{at}.{k}"), k)?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if LOOSE_ARRAYS.contains(&key) {
                return Ok(());
            }
            if e.len() != a.len() {
                return Err(format!("{at}: {} items, example has {}", a.len(), e.len()));
            }
            for (i, (x, y)) in e.iter().zip(a).enumerate() {
                matches_example(x, y, &format!("{at}[{i}]"), key)?;
            }
            Ok(())
        }
        (e, a) if STABLE_KEYS.contains(&key) && e != a => {
            Err(format!("{at}: {a}, example says {e}"))
        }
        (e, a) if std::mem::discriminant(e) == std::mem::discriminant(a) => Ok(()),
        (e, a) => Err(format!("{at}: {a} is not the same kind of value as {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_true() {
    // One worker slot, so that "all workers in use" can be shown; a small
    // disk, so that an upload past it is quick.
    let gw = Gateway::start(Options {
        min_idle: 1,
        max_workers: 1,
        // The "full" examples: a newcomer waits this long for the one slot.
        queue_timeout_secs: 1.0,
        // Files by URL reach this test's own server on 127.0.0.1 only.
        extra: "[limits]\ndisk_mb = 16\n[files]\nurl_allow = [\"127.0.0.1/32\"]\n".into(),
        ..Options::default()
    })
    .await;
    let doc: Value = gw
        .http()
        .get(format!("{}/openapi.json", gw.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut c = Checker {
        gw,
        doc,
        seen: BTreeSet::new(),
    };
    c.gw.wait_idle(1, Duration::from_secs(60)).await;

    // Routes without a JSON example: the page, its files, this document.
    for path in ["/", "/playground.js", "/playground.css", "/openapi.json"] {
        let mut call = Call::new("GET", path);
        call.token = false;
        assert_eq!(c.send(call).await.0, 200, "{path}");
    }

    // /health and /status, at the root and under /api/v1.
    for prefix in ["", "/api/v1"] {
        let mut call = Call::new("GET", "/health");
        call.prefix = prefix;
        call.token = false;
        c.expect(call, "health").await;
        let mut call = Call::new("GET", "/status");
        call.prefix = prefix;
        c.expect(call, "status").await;
        let mut call = Call::new("GET", "/status");
        call.prefix = prefix;
        call.token = false;
        c.expect(call, "unauthorized").await;
    }

    // /execute: every request example as it is, alternating the prefix.
    let names = ["print", "expression", "plot", "exception", "empty_user"];
    for (i, name) in names.into_iter().enumerate() {
        let mut call = Call::new("POST", "/execute");
        call.prefix = if i % 2 == 0 { "" } else { "/api/v1" };
        call.body = Some(c.request_example("POST", "/execute", name));
        let body = c.expect(call, name).await;
        if name == "plot" {
            common::assert_png(body["result_base64"].as_str().unwrap());
        }
    }
    let mut call = Call::new("POST", "/execute");
    call.body = Some(c.request_example("POST", "/execute", "print"));
    call.token = false;
    c.expect(call, "unauthorized").await;
    let mut call = Call::new("POST", "/execute");
    call.body = Some(Body::Json(
        json!({"user_uuid": "example-user", "code": "x".repeat(1024 * 1024 + 1)}),
    ));
    c.expect(call, "too_large").await;
    let mut call = Call::new("POST", "/execute");
    call.body = Some(Body::Raw(
        "text/plain",
        br#"{"user_uuid": "example-user", "code": "1"}"#.to_vec(),
    ));
    c.expect(call, "not_json").await;

    // user_uuid in the query string (the original's later clients).
    let mut call = Call::new("POST", "/execute");
    call.query = "?user_uuid=other-user";
    call.body = Some(c.request_example("POST", "/execute", "print"));
    c.expect(call, "user_mismatch").await;
    let mut call = Call::new("POST", "/execute");
    call.prefix = "/api/v1";
    call.query = "?user_uuid=example-user";
    call.body = Some(Body::Json(json!({"code": "print(x)"})));
    let (status, body) = c.send(call).await;
    assert_eq!((status, body["result_text"].as_str()), (200, Some("21\n")));

    // /files on example-user's session, alternating the prefix.
    let mut call = Call::new("GET", "/files");
    call.query = "?user_uuid=nobody";
    c.expect(call, "no_session").await;
    let mut call = Call::file("GET", "data.csv");
    call.query = "?user_uuid=nobody";
    c.expect(call, "no_session").await;
    c.expect(Call::new("GET", "/files"), "missing_user").await;
    let mut call = Call::file("PUT", "data.csv");
    call.prefix = "/api/v1";
    call.body = Some(c.request_example("PUT", "/files/{path}", "upload"));
    c.expect(call, "upload").await;
    let sum =
        c.gw.run(
            "example-user",
            "import pandas as pd\nprint(pd.read_csv('data.csv')['y'].sum())",
        )
        .await;
    assert_eq!(sum["result_text"], "12\n", "the code sees the upload");
    let mut call = Call::new("GET", "/files");
    call.query = "?user_uuid=example-user";
    c.expect(call, "listing").await;
    let mut call = Call::file("GET", "data.csv");
    call.prefix = "/api/v1";
    c.expect(call, "download").await;
    c.expect(Call::file("GET", "missing.csv"), "not_found")
        .await;

    // Files by URL, from and to this test's own server.
    let remote = common::remote::Remote::start().await;
    remote.file("/exports/sales.csv", b"x,y\n1,2\n3,4\n5,6\n");
    remote.route("/huge.bin", common::remote::Reply::Claims(17 * 1024 * 1024));
    let fetch = |url: String, path: &str| json!({"files": [{"download_url": url, "path": path, "name": "sales.csv"}]});
    let mut call = Call::new("POST", "/files");
    call.query = "?user_uuid=example-user";
    call.body = Some(Body::Json(fetch(
        remote.url("/exports/sales.csv"),
        "/sandbox/data",
    )));
    c.expect(call, "fetched").await;
    for (name, body) in [
        (
            "refused_address",
            fetch("http://169.254.169.254/latest/meta-data/".into(), ""),
        ),
        ("empty_list", json!({"files": []})),
        ("bad_path", fetch(remote.url("/exports/sales.csv"), "/etc")),
        ("too_large", fetch(remote.url("/huge.bin"), "")),
        ("remote_failed", fetch(remote.url("/missing.csv"), "")),
    ] {
        let mut call = Call::new("POST", "/files");
        call.prefix = "/api/v1";
        call.query = "?user_uuid=example-user";
        call.body = Some(Body::Json(body));
        c.expect(call, name).await;
    }
    let export = |name: &str| json!({"files": [{"path": "/sandbox", "name": name, "upload_url": remote.url("/bucket/data.csv")}]});
    let mut call = Call::new("POST", "/files/export");
    call.query = "?user_uuid=example-user";
    call.body = Some(Body::Json(export("data.csv")));
    c.expect(call, "exported").await;
    let put = remote.received().into_iter().find(|r| r.method == "PUT");
    assert_eq!(put.unwrap().body, b"x,y\n1,2\n3,4\n5,6\n");
    for (name, file) in [("not_found", "missing.csv"), ("bad_name", "../data.csv")] {
        let mut call = Call::new("POST", "/files/export");
        call.prefix = "/api/v1";
        call.query = "?user_uuid=example-user";
        call.body = Some(Body::Json(export(file)));
        c.expect(call, name).await;
    }
    for path in ["/files", "/files/export"] {
        let mut call = Call::new("POST", path);
        call.query = "?user_uuid=example-user";
        call.body = Some(Body::Json(json!({"files": []})));
        call.token = false;
        c.expect(call, "unauthorized").await;
    }
    // (URL libraries resolve a literal `..`; an encoded slash keeps it in one segment.)
    for (method, value) in [
        ("GET", "..%2Fetc%2Fpasswd"),
        ("PUT", "%2Fetc%2Fpasswd"),
        ("DELETE", "a%2F..%2Fb"),
    ] {
        let mut call = Call::file(method, value);
        if method == "PUT" {
            call.body = Some(Body::Raw("application/octet-stream", b"x".to_vec()));
        }
        c.expect(call, "bad_path").await;
    }
    for method in ["GET", "PUT", "DELETE"] {
        let mut call = Call::file(method, "data.csv");
        call.token = false;
        c.expect(call, "unauthorized").await;
    }
    let mut call = Call::new("GET", "/files");
    call.query = "?user_uuid=example-user";
    call.token = false;
    c.expect(call, "unauthorized").await;
    let mut call = Call::file("DELETE", "data.csv");
    call.prefix = "/api/v1";
    c.expect(call, "deleted").await;
    c.expect(Call::file("DELETE", "data.csv"), "not_found")
        .await;
    // Past the worker's 16 MiB disk: 413; the partial file can be deleted.
    let mut call = Call::file("PUT", "huge.bin");
    call.body = Some(Body::Raw(
        "application/octet-stream",
        vec![7; 17 * 1024 * 1024],
    ));
    c.expect(call, "too_large").await;
    assert_eq!(c.send(Call::file("DELETE", "huge.bin")).await.0, 200);

    // /execute/stream: each line as it is printed, then `done`; refusals are JSON.
    let mut call = Call::new("POST", "/execute/stream");
    call.body = Some(c.request_example("POST", "/execute/stream", "loop"));
    c.expect(call, "loop").await;
    let mut call = Call::new("POST", "/execute/stream");
    call.prefix = "/api/v1";
    call.body = Some(c.request_example("POST", "/execute/stream", "empty_user"));
    c.expect(call, "empty_user").await;
    let mut call = Call::new("POST", "/execute/stream");
    call.body = Some(c.request_example("POST", "/execute/stream", "loop"));
    call.token = false;
    c.expect(call, "unauthorized").await;
    let mut call = Call::new("POST", "/execute/stream");
    call.body = Some(Body::Json(
        json!({"user_uuid": "example-user", "code": "x".repeat(1024 * 1024 + 1)}),
    ));
    c.expect(call, "too_large").await;
    let mut call = Call::new("POST", "/execute/stream");
    call.body = Some(Body::Raw(
        "text/plain",
        br#"{"user_uuid": "u", "code": "1"}"#.to_vec(),
    ));
    c.expect(call, "not_json").await;

    // The session's end: timeout (504), then a kernel that dies (502).
    let mut call = Call::new("POST", "/execute");
    call.body = Some(c.request_example("POST", "/execute", "timeout"));
    c.expect(call, "timeout").await;
    c.gw.wait_idle(1, Duration::from_secs(60)).await;
    let mut call = Call::new("POST", "/execute/stream");
    call.prefix = "/api/v1";
    call.body = Some(c.request_example("POST", "/execute/stream", "timeout"));
    c.expect(call, "timeout").await;
    c.gw.wait_idle(1, Duration::from_secs(60)).await;
    // A kernel killed mid-run: documented as 502, but today the gateway only
    // notices at the deadline (504); both are accepted, see KNOWN_GAPS.
    let mut call = Call::new("POST", "/execute");
    call.body = Some(Body::Json(json!({
        "user_uuid": "example-user",
        "code": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
        "timeout": 3,
    })));
    let (status, body) = c.send(call).await;
    assert!(matches!(status, 502 | 504), "{status} {body}");
    assert_eq!(body["session_reset"], true);
    c.gw.wait_idle(1, Duration::from_secs(60)).await;

    // 503: the only worker slot holds another user's session.
    c.gw.run("holder", "1").await;
    let mut call = Call::new("POST", "/execute");
    call.body = Some(Body::Json(json!({"user_uuid": "newcomer", "code": "1"})));
    c.expect(call, "full").await;
    let mut call = Call::new("POST", "/execute/stream");
    call.body = Some(Body::Json(json!({"user_uuid": "newcomer", "code": "1"})));
    c.expect(call, "full").await;
    let mut call = Call::file("PUT", "data.csv");
    call.query = "?user_uuid=newcomer";
    call.body = Some(Body::Raw("application/octet-stream", b"x".to_vec()));
    c.expect(call, "full").await;
    let mut call = Call::new("POST", "/files");
    call.query = "?user_uuid=newcomer";
    call.body = Some(Body::Json(fetch(remote.url("/exports/sales.csv"), "")));
    c.expect(call, "full").await;

    // /mcp: the token comes first, for every method (tests/mcp.rs drives the protocol).
    for method in ["POST", "GET", "DELETE"] {
        for prefix in ["", "/api/v1"] {
            let mut call = Call::new(method, "/mcp");
            call.prefix = prefix;
            call.token = false;
            c.expect(call, "unauthorized").await;
        }
    }

    // /release: the example, the same through the query string with no body, and errors.
    let mut call = Call::new("POST", "/release");
    call.body = Some(Body::Json(json!({"user_uuid": "holder"})));
    c.expect(call, "release").await;
    c.gw.wait_idle(1, Duration::from_secs(60)).await;
    c.gw.run("query-user", "1").await;
    let mut call = Call::new("POST", "/release");
    call.prefix = "/api/v1";
    call.query = "?user_uuid=query-user";
    c.expect(call, "release").await;
    let mut call = Call::new("POST", "/release");
    call.body = Some(c.request_example("POST", "/release", "release"));
    c.expect(call, "release").await;
    let mut call = Call::new("POST", "/release");
    call.body = Some(c.request_example("POST", "/release", "missing_user"));
    c.expect(call, "missing_user").await;
    let mut call = Call::new("POST", "/release");
    call.token = false;
    c.expect(call, "unauthorized").await;
    let mut call = Call::new("POST", "/release");
    call.body = Some(Body::Json(json!({"user_uuid": "x".repeat(70 * 1024)})));
    c.expect(call, "too_large").await;
    let mut call = Call::new("POST", "/release");
    call.body = Some(Body::Raw("text/plain", b"user_uuid=someone".to_vec()));
    c.expect(call, "not_json").await;

    // 429: one running request, eight waiting, the tenth is refused.
    c.gw.wait_idle(1, Duration::from_secs(60)).await;
    let first = {
        let (url, token, http) = (c.gw.url.clone(), c.gw.token.clone(), c.gw.http().clone());
        tokio::spawn(async move {
            let body = json!({"user_uuid": "queuer", "code": "import time; time.sleep(4)"});
            let request = http
                .post(format!("{url}/execute"))
                .header("X-Auth-Token", token);
            request.json(&body).send().await.unwrap().status().as_u16()
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let (url, token, http) = (c.gw.url.clone(), c.gw.token.clone(), c.gw.http().clone());
            tokio::spawn(async move {
                let body = json!({"user_uuid": "queuer", "code": "1"});
                let request = http
                    .post(format!("{url}/execute"))
                    .header("X-Auth-Token", token);
                request.json(&body).send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut call = Call::new("POST", "/execute");
    call.body = Some(Body::Json(json!({"user_uuid": "queuer", "code": "1"})));
    c.expect(call, "queue_full").await;
    assert_eq!(first.await.unwrap(), 200);
    for task in waiting {
        assert_eq!(task.await.unwrap(), 200);
    }

    let mut missing: Vec<_> = c.all_examples().difference(&c.seen).cloned().collect();
    missing.retain(|(method, path, status, name)| {
        let key = (
            method.as_str(),
            path.as_str(),
            status.as_str(),
            name.as_str(),
        );
        !KNOWN_GAPS.contains(&key)
    });
    assert!(missing.is_empty(), "examples never produced: {missing:?}");
}
