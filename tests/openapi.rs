//! The OpenAPI document against a real gateway with real workers.
//!
//! Every operation in `/openapi.json` is called (API routes at the root and
//! under `/api/v1`), every answer must have a documented status code and
//! validate against the documented schema, and every example in the document
//! is produced by the server: request examples are sent as they are, and the
//! answer must match the response example of the same name (same shape, same
//! stable values). The test fails if an example was never produced.

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
];
/// Response examples the server cannot be made to produce on demand yet.
/// `kernel_died`: the kernel client has no heartbeat, so a kernel that dies is
/// noticed only at the request's deadline (504) instead of at once (502).
const KNOWN_GAPS: &[(&str, &str, &str)] = &[("/execute", "502", "kernel_died")];
/// Arrays whose length varies between runs.
const LOOSE_ARRAYS: &[&str] = &["traceback", "delegated_controllers"];

struct Checker {
    gw: Gateway,
    doc: Value,
    /// (path, status, example name) of every response example produced.
    seen: BTreeSet<(String, String, String)>,
}

/// How to send one request.
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    prefix: &'a str,
    query: &'a str,
    token: bool,
    body: Option<Body>,
}

enum Body {
    Json(Value),
    Raw(&'static str, String),
}

impl<'a> Call<'a> {
    fn new(method: &'a str, path: &'a str) -> Self {
        Self {
            method,
            path,
            prefix: "",
            query: "",
            token: true,
            body: None,
        }
    }
}

impl Checker {
    fn operation(&self, method: &str, path: &str) -> &Value {
        let op = &self.doc["paths"][path][method.to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        op
    }

    /// The request example `name` of an operation.
    fn request_example(&self, method: &str, path: &str, name: &str) -> Value {
        let example = &self.operation(method, path)["requestBody"]["content"]["application/json"]
            ["examples"][name]["value"];
        assert!(!example.is_null(), "no request example {name} for {path}");
        example.clone()
    }

    /// Sends `call`; checks the status is documented and the body validates.
    async fn send(&self, call: Call<'_>) -> (u16, Value) {
        let url = format!("{}{}{}{}", self.gw.url, call.prefix, call.path, call.query);
        let mut request = self.gw.http().request(call.method.parse().unwrap(), &url);
        if call.token {
            request = request.header("X-Auth-Token", &self.gw.token);
        }
        request = match call.body {
            Some(Body::Json(value)) => request.json(&value),
            Some(Body::Raw(content_type, text)) => {
                request.header("Content-Type", content_type).body(text)
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
        if essence != "application/json" {
            return (status, Value::String(text));
        }
        let body: Value = serde_json::from_str(&text).expect("a JSON body");
        schema::validate(&self.doc, &media["schema"], &body, "$")
            .unwrap_or_else(|e| panic!("{} {url} ({status}): {e}\n{body}", call.method));
        (status, body)
    }

    /// Sends `call` and insists the answer is the response example `name`.
    async fn expect(&mut self, call: Call<'_>, name: &str) -> Value {
        let (method, path) = (call.method, call.path);
        let (status, body) = self.send(call).await;
        let responses = &self.operation(method, path)["responses"];
        let (documented_status, example) = responses
            .as_object()
            .unwrap()
            .iter()
            .find_map(|(code, response)| {
                let media = &response["content"]["application/json"];
                let example = media["examples"].get(name)?;
                // The document's own example must satisfy its schema.
                schema::validate(&self.doc, &media["schema"], &example["value"], name)
                    .unwrap_or_else(|e| panic!("example {name} of {path}: {e}"));
                Some((code.clone(), example["value"].clone()))
            })
            .unwrap_or_else(|| panic!("no response example {name} for {method} {path}"));
        assert_eq!(
            status.to_string(),
            documented_status,
            "{method} {path} example {name}: {body}"
        );
        if let Err(e) = matches_example(&example, &body, "$", "") {
            panic!(
                "{method} {path} example {name}: {e}\nexample: {example}\nactual:  {}",
                shortened(&body)
            );
        }
        self.seen
            .insert((path.to_string(), documented_status, name.to_string()));
        body
    }

    /// Every response example in the document, as `seen` records them.
    fn all_examples(&self) -> BTreeSet<(String, String, String)> {
        let mut all = BTreeSet::new();
        for (path, item) in self.doc["paths"].as_object().unwrap() {
            for op in item.as_object().unwrap().values() {
                let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                    continue;
                };
                for (status, response) in responses {
                    let examples = &response["content"]["application/json"]["examples"];
                    for name in examples.as_object().into_iter().flatten().map(|e| e.0) {
                        all.insert((path.clone(), status.clone(), name.clone()));
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
    // One worker slot, so that "all workers in use" can be shown.
    let gw = Gateway::start(Options {
        min_idle: 1,
        max_workers: 1,
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
        call.body = Some(Body::Json(c.request_example("POST", "/execute", name)));
        let body = c.expect(call, name).await;
        if name == "plot" {
            common::assert_png(body["result_base64"].as_str().unwrap());
        }
    }
    let mut call = Call::new("POST", "/execute");
    call.body = Some(Body::Json(c.request_example("POST", "/execute", "print")));
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
        r#"{"user_uuid": "example-user", "code": "1"}"#.into(),
    ));
    c.expect(call, "not_json").await;

    // user_uuid in the query string (the original's later clients).
    let mut call = Call::new("POST", "/execute");
    call.query = "?user_uuid=other-user";
    call.body = Some(Body::Json(c.request_example("POST", "/execute", "print")));
    c.expect(call, "user_mismatch").await;
    let mut call = Call::new("POST", "/execute");
    call.prefix = "/api/v1";
    call.query = "?user_uuid=example-user";
    call.body = Some(Body::Json(json!({"code": "print(x)"})));
    let (status, body) = c.send(call).await;
    assert_eq!((status, body["result_text"].as_str()), (200, Some("21\n")));

    // The session's end: timeout (504), then a kernel that dies (502).
    let mut call = Call::new("POST", "/execute");
    call.body = Some(Body::Json(c.request_example("POST", "/execute", "timeout")));
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
    call.body = Some(Body::Json(c.request_example("POST", "/release", "release")));
    c.expect(call, "release").await;
    let mut call = Call::new("POST", "/release");
    call.body = Some(Body::Json(c.request_example(
        "POST",
        "/release",
        "missing_user",
    )));
    c.expect(call, "missing_user").await;
    let mut call = Call::new("POST", "/release");
    call.token = false;
    c.expect(call, "unauthorized").await;
    let mut call = Call::new("POST", "/release");
    call.body = Some(Body::Json(json!({"user_uuid": "x".repeat(70 * 1024)})));
    c.expect(call, "too_large").await;
    let mut call = Call::new("POST", "/release");
    call.body = Some(Body::Raw("text/plain", "user_uuid=someone".into()));
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
    missing.retain(|(path, status, name)| {
        !KNOWN_GAPS.contains(&(path.as_str(), status.as_str(), name.as_str()))
    });
    assert!(missing.is_empty(), "examples never produced: {missing:?}");
}
