//! Scaling out: two, then three gateways behind a real HAProxy (Debian's
//! `haproxy` package) on loopback, configured by `scripts/scale-out.sh`.
//!
//! Shows what README's "Scaling out" promises: every call of a user lands on
//! one node and keeps its state; a node that dies costs its users one clear
//! 502 and their sessions, never the other node's users; a node that comes back
//! takes no user away from the survivor; a third node moves about a third of
//! the users (consistent hashing), not all; a draining node keeps its users and
//! takes no new one.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, random_tag, Gateway, Options};
use serde_json::{json, Value};

const USERS: usize = 50;
const CALLS: usize = 20;
/// The code every stateful call runs: a counter kept in the kernel.
const COUNT: &str = "n = globals().get('n', 0) + 1\nprint(n)";

/// A fixed user id: the hash placement is then the same on every run.
fn user(i: usize) -> String {
    format!("user-{i}-6f1c2d")
}

/// HAProxy in the foreground, a child of the test, killed by pid when dropped.
struct Balancer {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Balancer {
    /// Renders the configuration for `nodes` (name, gateway URL) with
    /// scripts/scale-out.sh and starts HAProxy on `port`.
    fn start(port: u16, nodes: &[(&str, &Gateway)]) -> Self {
        let dir = std::env::temp_dir().join(format!("ci-test-haproxy-{}", random_tag()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut render = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/scale-out.sh"));
        render.args([
            "--no-chroot",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--socket",
            dir.join("admin.sock").to_str().unwrap(),
            "--check-interval",
            "500",
        ]);
        for (name, gateway) in nodes {
            render.arg(format!(
                "{name}={}",
                gateway.url.trim_start_matches("http://")
            ));
        }
        let rendered = render.output().expect("running scripts/scale-out.sh");
        assert!(
            rendered.status.success(),
            "scale-out.sh: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, &rendered.stdout).unwrap();
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        let child = Command::new("/usr/sbin/haproxy")
            .args(["-db", "-f", config.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting /usr/sbin/haproxy (scripts/lib.sh ensure_test_packages installs it)");
        let mut balancer = Self {
            child: Some(child),
            dir,
            port,
        };
        balancer.wait_listening();
        balancer
    }

    /// Waits until HAProxy accepts connections; panics with its log if it exited.
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "HAProxy did not start ({exited:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One command on HAProxy's admin socket; its answer.
    fn admin(&self, command: &str) -> String {
        let mut socket = UnixStream::connect(self.dir.join("admin.sock")).unwrap();
        socket.write_all(format!("{command}\n").as_bytes()).unwrap();
        let mut answer = String::new();
        socket.read_to_string(&mut answer).unwrap();
        answer
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- haproxy log ----\n{}", self.log());
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A client of the balancer.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

/// One answer through the balancer: status, body, and the node that served it.
struct Answer {
    status: u16,
    body: Value,
    node: String,
}

impl Answer {
    /// Insists on this status and a JSON `detail` that says `words`.
    fn assert_error(&self, status: u16, words: &str) {
        let detail = self.body["detail"].as_str().unwrap_or("");
        assert!(
            self.status == status && detail.contains(words),
            "expected {status} saying {words:?}: {} {}",
            self.status,
            self.body
        );
    }

    /// Insists on a 200 from `node` whose output is the counter at `count`.
    fn assert_counted(&self, count: u64, node: &str) {
        assert_eq!(
            (
                self.status,
                self.body["result_text"].as_str(),
                self.node.as_str()
            ),
            (200, Some(format!("{count}\n").as_str()), node),
            "{}",
            self.body
        );
    }
}

impl Client {
    fn new(url: String, token: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            url,
            token: token.to_string(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let node = response
            .headers()
            .get("x-node")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = response.json().await.unwrap_or(Value::Null);
        Answer { status, body, node }
    }

    /// POSTs `body` as JSON to `path` (with its query string).
    async fn post(&self, path: &str, body: Value) -> Answer {
        self.send(self.http.post(format!("{}{path}", self.url)).json(&body))
            .await
    }

    async fn execute(&self, user: &str, code: &str) -> Answer {
        self.post("/execute", json!({"user_uuid": user, "code": code}))
            .await
    }

    /// Runs the counter; insists on a 200; returns (count, session_created, node).
    async fn count(&self, user: &str) -> (u64, bool, String) {
        let answer = self.execute(user, COUNT).await;
        assert_eq!(answer.status, 200, "{user}: {}", answer.body);
        let count = answer.body["result_text"]
            .as_str()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("{user}: {}", answer.body));
        let created = answer.body["session_created"].as_bool().unwrap();
        (count, created, answer.node)
    }

    /// `/status` of one node, asked through the balancer.
    async fn status_of(&self, node: &str) -> Value {
        self.send(
            self.http
                .get(format!("{}/status", self.url))
                .header("X-Node", node),
        )
        .await
        .body
    }

    /// Waits until the balancer routes to `node` (its health checks passed).
    async fn wait_up(&self, node: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.status_of(node).await["node"] != node {
            assert!(Instant::now() < deadline, "HAProxy never saw {node} up");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn node(name: &str, token: &str) -> Gateway {
    Gateway::start(Options {
        min_idle: 1,
        // Room for every user on one node after the other failed.
        max_workers: 80,
        timeout_secs: 30.0,
        // Fifty first calls at once start fifty workers on a shared machine.
        queue_timeout_secs: 120.0,
        pool: "max_idle = 6\n".into(),
        server: format!("node = \"{name}\"\n"),
        token: Some(token.to_string()),
        ..Options::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_stay_on_their_node_and_survive_the_other_nodes_changes() {
    let started = Instant::now();
    let token = format!("scale-out-token-{}", random_tag());
    let mut a = node("a", &token).await;
    let b = node("b", &token).await;
    let port = free_port();
    let mut balancer = Balancer::start(port, &[("a", &a), ("b", &b)]);
    let client = Client::new(balancer.url(), &token);
    client.wait_up("a").await;
    client.wait_up("b").await;

    // 1. 50 users x 20 calls, all at once: state kept, one node per user.
    let mut tasks = Vec::new();
    for i in 0..USERS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let user = user(i);
            let mut home = String::new();
            for call in 1..=CALLS as u64 {
                let (count, created, node) = client.count(&user).await;
                assert_eq!(count, call, "{user} lost its state");
                assert_eq!(created, call == 1, "{user}: call {call}");
                if call == 1 {
                    home = node;
                } else {
                    assert_eq!(node, home, "{user} changed node at call {call}");
                }
            }
            home
        }));
    }
    let mut home = HashMap::new();
    for (i, task) in tasks.into_iter().enumerate() {
        home.insert(user(i), task.await.unwrap());
    }
    let on = |name: &str| -> Vec<String> {
        let mut users: Vec<String> = home
            .iter()
            .filter(|(_, n)| n.as_str() == name)
            .map(|(u, _)| u.clone())
            .collect();
        users.sort();
        users
    };
    let (a_users, b_users) = (on("a"), on("b"));
    assert_eq!(a_users.len() + b_users.len(), USERS, "{home:?}");
    assert!(
        a_users.len() >= 10 && b_users.len() >= 10,
        "a: {a_users:?}, b: {b_users:?}"
    );
    // Each node's own /status agrees: it holds exactly its users' sessions.
    for (name, users) in [("a", &a_users), ("b", &b_users)] {
        let status = client.status_of(name).await;
        assert_eq!(status["node"], name);
        assert_eq!(status["sessions"], users.len(), "{name}: {status}");
    }
    eprintln!(
        "phase 1: {USERS} users x {CALLS} calls in {:.1?}; a {}, b {}",
        started.elapsed(),
        a_users.len(),
        b_users.len()
    );

    // The key's other places: the query string (under /api/v1 too), a body
    // whose user_uuid comes first however long the code, and the refusal of
    // one whose user_uuid lies past what HAProxy reads.
    let keyed = "keyed-6f1c2d";
    let (_, created, keyed_node) = client.count(keyed).await;
    assert!(created);
    let by_query = client
        .post(
            &format!("/api/v1/execute?user_uuid={keyed}"),
            json!({ "code": COUNT }),
        )
        .await;
    by_query.assert_counted(2, &keyed_node);
    let long_code = format!("{}\n{COUNT}", "#".repeat(40_000));
    let first = format!(r#"{{"user_uuid":"{keyed}","code":{}}}"#, json!(long_code));
    let last = format!(r#"{{"code":{},"user_uuid":"{keyed}"}}"#, json!(long_code));
    let post = |body: String| {
        client
            .http
            .post(format!("{}/execute", client.url))
            .header("Content-Type", "application/json")
            .body(body)
    };
    let answer = client.send(post(first)).await;
    answer.assert_counted(3, &keyed_node);
    let answer = client.send(post(last)).await;
    answer.assert_error(400, "found no user_uuid");
    let files = client
        .send(
            client
                .http
                .get(format!("{}/files?user_uuid={keyed}", client.url)),
        )
        .await;
    assert_eq!(
        (files.status, files.node.as_str()),
        (200, keyed_node.as_str())
    );
    // /mcp carries the user in X-User-UUID (whatever the node answers there);
    // without one it is not refused by the balancer.
    let mcp = |user: Option<&str>| {
        let request = client
            .http
            .post(format!("{}/mcp", client.url))
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}));
        match user {
            Some(user) => request.header("X-User-UUID", user),
            None => request,
        }
    };
    for _ in 0..3 {
        assert_eq!(client.send(mcp(Some(keyed))).await.node, keyed_node);
    }
    let anonymous = client.send(mcp(None)).await;
    assert!(
        !anonymous.body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("found no user_uuid"),
        "{}",
        anonymous.body
    );

    // Server-sent events pass through unbuffered: the first event arrives
    // while the code still runs.
    let asked = Instant::now();
    let mut stream = client
        .http
        .post(format!("{}/execute/stream", client.url))
        .header("X-Auth-Token", &token)
        .json(&json!({"user_uuid": user(0),
            "code": "print('early', flush=True)\nimport time\ntime.sleep(3)\nprint('late')"}))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("early") {
        let chunk = stream
            .chunk()
            .await
            .unwrap()
            .expect("the stream ended early");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let first = asked.elapsed();
    assert!(
        first < Duration::from_millis(2500),
        "first event after {first:?}"
    );
    assert!(!seen.contains("late"), "{seen}");
    while let Some(chunk) = stream.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        seen.contains("event:done") && seen.contains("late"),
        "{seen}"
    );

    // 2. Node a dies while each of its users runs code. b's users keep calling.
    let stop = Arc::new(AtomicBool::new(false));
    let survivors = {
        let (client, stop, users) = (client.clone(), Arc::clone(&stop), b_users.clone());
        tokio::spawn(async move {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) || rounds < 2 {
                rounds += 1;
                let calls = users.iter().map(|user| {
                    let client = client.clone();
                    async move { (user.clone(), client.count(user).await) }
                });
                for (user, (count, created, node)) in futures_util::future::join_all(calls).await {
                    assert_eq!(
                        (count, created, node.as_str()),
                        (CALLS as u64 + rounds, false, "b"),
                        "{user} noticed a's failure"
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            rounds
        })
    };
    // Each on a new connection: HAProxy answers 502 to the first request of
    // a client connection, and closes a kept-alive one without an answer (so
    // that the client may retry; README, "Scaling out").
    let in_flight: Vec<_> = a_users
        .iter()
        .map(|user| {
            let (client, user) = (Client::new(client.url.clone(), &token), user.clone());
            tokio::spawn(async move { client.execute(&user, "import time; time.sleep(25)").await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.status().await["busy_workers"] != a_users.len() {
        assert!(Instant::now() < deadline, "a's users never all ran");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The host dies: the gateway and its workers with it. (A gateway that
    // crashes alone re-adopts its workers when it starts again.)
    a.kill();
    for container in a.containers() {
        a.svc.podman(&["rm", "-f", "-t", "0", &container]);
    }
    for task in in_flight {
        let answer = task.await.unwrap();
        answer.assert_error(502, "session is lost");
    }
    // Then a fresh session on b, at once (before or after the health checks
    // took a out: a refused connection is sent on to b), kept from there.
    let fresh = a_users.iter().map(|user| {
        let client = client.clone();
        async move {
            assert_eq!(client.count(user).await, (1, true, "b".into()), "{user}");
            assert_eq!(client.count(user).await, (2, false, "b".into()), "{user}");
        }
    });
    futures_util::future::join_all(fresh).await;
    stop.store(true, Ordering::Relaxed);
    let rounds = survivors.await.unwrap();
    eprintln!("phase 2: a died; b's users made {rounds} rounds of calls unharmed");

    // 3. a comes back: no user moves (the stick table keeps everyone where
    // its session lives); new users are spread over both nodes again.
    a.spawn().await;
    client.wait_up("a").await;
    let mut expected: HashMap<String, u64> = HashMap::new();
    for user in &a_users {
        assert_eq!(client.count(user).await, (3, false, "b".into()), "{user}");
        expected.insert(user.clone(), 3);
    }
    for user in &b_users {
        let (count, created, node) = client.count(user).await;
        assert_eq!((created, node.as_str()), (false, "b"), "{user}");
        assert!(count > CALLS as u64, "{user}: {count}");
        expected.insert(user.clone(), count);
    }
    let mut newcomers = HashMap::new();
    for i in 0..10 {
        let user = format!("newcomer-{i}-6f1c2d");
        let (_, created, node) = client.count(&user).await;
        assert!(created);
        *newcomers.entry(node).or_insert(0) += 1;
    }
    assert!(newcomers.len() == 2, "newcomers: {newcomers:?}");
    // Their workers go: the machine is shared, and the test needs no more.
    for i in 0..10 {
        let user = format!("newcomer-{i}-6f1c2d");
        let released = client.post("/release", json!({ "user_uuid": user })).await;
        assert_eq!(released.status, 200, "{}", released.body);
    }
    eprintln!("phase 3: a is back, nobody moved; newcomers {newcomers:?}");

    // 4. A third node. The configuration is rendered again and HAProxy
    // restarted, which forgets the stick table: placement is the hash's.
    let c = node("c", &token).await;
    balancer.stop();
    let mut balancer = Balancer::start(port, &[("a", &a), ("b", &b), ("c", &c)]);
    let client = Client::new(balancer.url(), &token);
    for name in ["a", "b", "c"] {
        client.wait_up(name).await;
    }
    let mut moved = 0;
    let mut on_c = Vec::new();
    for i in 0..USERS {
        let user = user(i);
        let (count, created, node) = client.count(&user).await;
        let was = &home[&user];
        if node != *was {
            assert_eq!(
                node, "c",
                "{user} moved from {was} to {node}, not to the new node"
            );
            moved += 1;
            on_c.push(user.clone());
        } else if *was == "b" {
            // Where it has lived all along: its state is intact.
            assert_eq!((count, created), (expected[&user] + 1, false), "{user}");
        }
        expected.insert(user, count);
    }
    assert!(
        (USERS / 6..=USERS / 2).contains(&moved),
        "{moved} of {USERS} users moved to the third node"
    );
    eprintln!("phase 4: a third node took {moved} of {USERS} users");

    // 5. Draining c: its users stay until their sessions end, newcomers go elsewhere.
    let answer = balancer.admin("set server gateways/c state drain");
    assert_eq!(answer.trim(), "", "admin socket: {answer}");
    for user in &on_c {
        let (count, created, node) = client.count(user).await;
        assert_eq!(
            (count, created, node.as_str()),
            (expected[user] + 1, false, "c")
        );
    }
    for i in 0..10 {
        let (_, _, node) = client.count(&format!("late-{i}-6f1c2d")).await;
        assert_ne!(node, "c", "a draining node took a new user");
    }
    eprintln!("all phases in {:.1?}", started.elapsed());
    balancer.stop();
}

/// The example configuration (deploy/haproxy/haproxy.cfg) is what the script
/// renders for its nodes, and Debian's HAProxy accepts it; bad nodes are refused.
#[test]
fn the_shipped_configuration_is_the_scripts_and_haproxy_accepts_it() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/scale-out.sh");
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
    let rendered = Command::new(script)
        .args(["gw-1=10.0.0.11:3874", "gw-2=10.0.0.12:3874"])
        .output()
        .unwrap();
    assert!(rendered.status.success());
    assert_eq!(
        String::from_utf8(rendered.stdout).unwrap(),
        std::fs::read_to_string(shipped).unwrap(),
        "deploy/haproxy/haproxy.cfg is stale: render it again with the command in its header"
    );
    let check = Command::new("/usr/sbin/haproxy")
        .args(["-c", "-q", "-f", shipped])
        .output()
        .expect("running /usr/sbin/haproxy (scripts/lib.sh ensure_test_packages installs it)");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    for bad in [
        vec![],
        vec!["gw-1"],
        vec!["gw 1=10.0.0.11:3874"],
        vec!["a=10.0.0.11:3874", "a=10.0.0.12:3874"],
        vec!["--execution-timeout", "ten", "a=10.0.0.11:3874"],
    ] {
        let refused = Command::new(script).args(&bad).output().unwrap();
        assert_eq!(refused.status.code(), Some(2), "{bad:?}");
        assert!(
            !refused.stderr.is_empty() && refused.stdout.is_empty(),
            "{bad:?}"
        );
    }
}
