//! The one harness every integration test uses: a real gateway on a free
//! loopback port, driving real rootless Podman as the service user.
//!
//! `scripts/test.sh` prepares the host (service user, Podman socket, worker
//! image) and exports where things are. When the tests run as root, the gateway
//! runs as the service user through `setpriv`, exactly as in production. Each
//! gateway has its own instance label, runtime and state directories; dropping
//! the handle stops it by pid and removes whatever containers of its instance
//! remain, even when the test failed.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod remote;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Who runs the gateway and where its Podman is, as `scripts/test.sh` exports it.
pub struct ServiceUser {
    /// Set when the tests run as root: run the gateway as this user.
    pub name: Option<String>,
    pub home: String,
    pub runtime_dir: String,
    /// Podman's socket when not the user's default one (the rootful tests).
    pub podman_socket: Option<String>,
    /// Extra environment for the gateway and podman (the rootful tests' private config).
    pub env: Vec<(String, String)>,
}

impl ServiceUser {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let runtime_dir = var("CI_TEST_SVC_RUNTIME")
            .or_else(|| var("XDG_RUNTIME_DIR"))
            .expect(
                "run the integration tests through scripts/test.sh (CI_TEST_SVC_RUNTIME unset)",
            );
        Self {
            name: var("CI_TEST_SVC_USER"),
            home: var("CI_TEST_SVC_HOME")
                .or_else(|| var("HOME"))
                .unwrap_or_else(|| "/".into()),
            runtime_dir,
            podman_socket: None,
            env: Vec::new(),
        }
    }

    /// The private rootful Podman of tests/rootful_podman.sh, if scripts/test.sh started it.
    pub fn rootful_from_env() -> Option<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Some(Self {
            name: None,
            home: "/root".into(),
            runtime_dir: var("CI_TEST_ROOTFUL_DIR")?,
            podman_socket: Some(var("CI_TEST_ROOTFUL_SOCKET")?),
            env: vec![
                ("CONTAINERS_CONF".into(), var("CONTAINERS_CONF_ROOTFUL")?),
                (
                    "CONTAINERS_STORAGE_CONF".into(),
                    var("CONTAINERS_STORAGE_CONF_ROOTFUL")?,
                ),
            ],
        })
    }

    /// A command that runs `program` as the service user with a clean environment.
    pub fn command(&self, program: &str) -> Command {
        let mut command = match &self.name {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.args([
                    "--reuid",
                    user,
                    "--regid",
                    &primary_group(user),
                    "--init-groups",
                    "--",
                ]);
                c.arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .env_clear()
            .env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", &self.runtime_dir)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LANG", "C.UTF-8")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/");
        command
    }

    /// Runs the podman CLI as the service user (test set-up and clean-up only).
    pub fn podman(&self, args: &[&str]) -> String {
        let output = self
            .command("podman")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running podman");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

fn primary_group(user: &str) -> String {
    let output = Command::new("id")
        .args(["-g", user])
        .output()
        .expect("running id");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Settings a test may change; the rest are the defaults of `config.toml`.
pub struct Options {
    pub min_idle: usize,
    pub max_workers: usize,
    pub timeout_secs: f64,
    /// How long a new user waits for a worker before 503 (`pool.queue_timeout_secs`).
    pub queue_timeout_secs: f64,
    /// Extra TOML appended to the generated config.
    pub extra: String,
    /// Extra TOML lines inside `[server]` (the listen address is the harness's).
    pub server: String,
    /// Extra TOML lines inside `[pool]`; one that sets `min_idle` replaces `min_idle`.
    pub pool: String,
    /// Run against this Podman instead of the service user's rootless one.
    pub svc: Option<ServiceUser>,
    /// The API token (several gateways behind one balancer share one);
    /// default: a random one.
    pub token: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            min_idle: 1,
            max_workers: 4,
            // gVisor's ptrace platform runs heavy code (imports, forks) several times slower.
            timeout_secs: if gvisor() { 60.0 } else { 20.0 },
            queue_timeout_secs: 30.0,
            extra: String::new(),
            server: String::new(),
            pool: String::new(),
            svc: None,
            token: None,
        }
    }
}

/// A running gateway owned by one test.
pub struct Gateway {
    child: Option<Child>,
    pub url: String,
    pub token: String,
    pub instance: String,
    pub svc: ServiceUser,
    scratch: PathBuf,
    runtime_dir: String,
    http: reqwest::Client,
    /// This gateway's own block of sandbox uids (gateways running at once
    /// must not share uids, or their workers would share per-uid limits).
    pub uids: UidBlock,
    /// Whether the worker image comes from CI_TEST_WORKER_IMAGE.
    image_from_env: bool,
    /// `workers.runtime` from CI_TEST_RUNTIME (empty: the config's).
    runtime: &'static str,
}

/// Whether this run tests gVisor workers (`CI_TEST_RUNTIME=gvisor`, set by
/// scripts/test.sh for its second pass over the sandbox and core tests): every
/// gateway on the service user's rootless Podman then runs `workers.runtime =
/// "gvisor"`, unless the test's own config names a runtime.
pub fn gvisor() -> bool {
    std::env::var("CI_TEST_RUNTIME").is_ok_and(|r| r == "gvisor")
}

/// For tests that prove something of runc workers alone (nftables rules in
/// the worker's network namespace, the network modes, cgroup limits): true,
/// after saying so, when this run tests gVisor.
pub fn skip_under_gvisor(what: &str) -> bool {
    if gvisor() {
        eprintln!("skipped under gVisor: {what}");
    }
    gvisor()
}

/// A block of sandbox uids reserved for one test gateway by an exclusive
/// lock file (holding the test's pid); released when dropped.
pub struct UidBlock {
    pub base: u32,
    pub count: u32,
    lock: PathBuf,
}

impl UidBlock {
    const BLOCKS: u32 = 50;
    const SIZE: u32 = 1000;

    fn reserve() -> Self {
        let pid = std::process::id().to_string();
        for _ in 0..600 {
            for n in 0..Self::BLOCKS {
                let lock = std::env::temp_dir().join(format!("ci-test-uids-{n}.lock"));
                let created = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&lock);
                match created {
                    Ok(mut file) => {
                        use std::io::Write;
                        file.write_all(pid.as_bytes()).unwrap();
                        return Self {
                            base: 10_000 + n * Self::SIZE,
                            count: Self::SIZE,
                            lock,
                        };
                    }
                    Err(_) => {
                        // A block of a test process that is gone is free again.
                        let owner = fs::read_to_string(&lock).unwrap_or_default();
                        if !owner.is_empty() && !PathBuf::from(format!("/proc/{owner}")).exists() {
                            let _ = fs::remove_file(&lock);
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no free block of sandbox uids");
    }
}

impl Drop for UidBlock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.lock);
    }
}

impl Gateway {
    pub async fn start(mut options: Options) -> Self {
        let svc = options.svc.take().unwrap_or_else(ServiceUser::from_env);
        let tag = random_tag();
        let instance = format!("test-{tag}");
        let scratch = std::env::temp_dir().join(format!("ci-test-{tag}"));
        fs::create_dir_all(&scratch).unwrap();
        fs::set_permissions(&scratch, fs::Permissions::from_mode(0o755)).unwrap();
        // The service user may not be able to read the checkout: copy the binary.
        let binary = scratch.join("code-interpreter");
        fs::copy(env!("CARGO_BIN_EXE_code-interpreter"), &binary).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        wait_until_executable(&svc, &binary);
        let port = free_port();
        let runtime_dir = format!("{}/{instance}", svc.runtime_dir);
        let socket = svc
            .podman_socket
            .as_ref()
            .map(|s| format!("podman_socket = \"{s}\"\n"))
            .unwrap_or_default();
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{}\
             [paths]\nruntime_dir = \"{runtime_dir}\"\nstate_dir = \"{runtime_dir}-state\"\n{socket}\
             [pool]\n{}max_workers = {}\nqueue_timeout_secs = {:?}\n{}\
             [execution]\ntimeout_secs = {}\n{}",
            options.server,
            if options.pool.contains("min_idle") {
                String::new()
            } else {
                format!("min_idle = {}\n", options.min_idle)
            },
            options.max_workers,
            options.queue_timeout_secs,
            options.pool,
            options.timeout_secs,
            options.extra
        );
        let config_path = scratch.join("config.toml");
        fs::write(&config_path, config).unwrap();
        fs::set_permissions(&config_path, fs::Permissions::from_mode(0o644)).unwrap();
        let token = options
            .token
            .take()
            .unwrap_or_else(|| format!("test-token-{}", random_tag()));
        let image_from_env = !options.extra.contains("image =");
        let runtime =
            if gvisor() && svc.podman_socket.is_none() && !options.extra.contains("runtime =") {
                "gvisor"
            } else {
                ""
            };
        let mut gateway = Self {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            token,
            instance,
            svc,
            scratch,
            runtime_dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
            uids: UidBlock::reserve(),
            image_from_env,
            runtime,
        };
        gateway.spawn().await;
        gateway
    }

    /// Starts the gateway process (again) with the same config, state and
    /// token, and waits until it is healthy.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the gateway is already running");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.scratch.join("gateway.log"))
            .unwrap();
        // The copied binary may be "busy" for a moment: a process another test
        // forks while the copy is open for writing inherits that descriptor
        // until it execs. Retry instead of failing on that race (ETXTBSY).
        let mut attempts = 0;
        let child = loop {
            let spawned = self
                .svc
                .command(self.scratch.join("code-interpreter").to_str().unwrap())
                .args([
                    "serve",
                    "--config",
                    self.scratch.join("config.toml").to_str().unwrap(),
                ])
                .env("CODE_INTERPRETER_TOKEN", &self.token)
                .env("CODE_INTERPRETER_INSTANCE", &self.instance)
                .env("RUST_LOG", "info")
                .env("CODE_INTERPRETER_UID_BASE", self.uids.base.to_string())
                .env("CODE_INTERPRETER_UID_COUNT", self.uids.count.to_string())
                .env("CODE_INTERPRETER_WORKER_RUNTIME", self.runtime)
                .env(
                    "CODE_INTERPRETER_WORKER_IMAGE",
                    std::env::var("CI_TEST_WORKER_IMAGE")
                        .ok()
                        .filter(|_| self.image_from_env)
                        .unwrap_or_default(),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log.try_clone().unwrap())
                .spawn();
            match spawned {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => break other.expect("starting the gateway"),
            }
        };
        self.child = Some(child);
        self.wait_healthy(Duration::from_secs(60)).await;
    }

    /// Kills the gateway with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    async fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(response) = self.http.get(format!("{}/health", self.url)).send().await {
                if response.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("gateway did not become healthy; log:\n{}", self.log());
    }

    /// Waits until the warm pool holds `n` idle workers.
    pub async fn wait_idle(&self, n: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status().await;
            if status["idle_workers_in_pool"].as_u64() >= Some(n) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "pool did not reach {n} idle workers: {status}\nlog:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.scratch.join("gateway.log")) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    pub async fn status(&self) -> Value {
        let response = self
            .http
            .get(format!("{}/status", self.url))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// POSTs JSON with the token; returns status and parsed body.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .header("X-Auth-Token", &self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `PUT /files/{path}` for `user` with the token; returns status and
    /// parsed body (Null when it is not JSON). `path` is sent as given.
    pub async fn put_file(&self, user: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .put(format!("{}/files/{path}?user_uuid={user}", self.url))
            .header("X-Auth-Token", &self.token)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET /files/{path}` for `user` with the token; returns status and bytes.
    pub async fn get_file(&self, user: &str, path: &str) -> (u16, Vec<u8>) {
        let response = self
            .http
            .get(format!("{}/files/{path}?user_uuid={user}", self.url))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.bytes().await.unwrap().to_vec())
    }

    pub async fn execute(&self, user: &str, code: &str) -> (u16, Value) {
        self.post("/execute", json!({"user_uuid": user, "code": code}))
            .await
    }

    /// Executes and insists on a 200; returns the body.
    pub async fn run(&self, user: &str, code: &str) -> Value {
        let (status, body) = self.execute(user, code).await;
        assert_eq!(
            status,
            200,
            "executing {code:?}: {body}\nlog:\n{}",
            self.log()
        );
        body
    }

    /// Raw request builder for tests of bad input.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Ids of this instance's containers, running or not.
    pub fn containers(&self) -> Vec<String> {
        self.svc
            .podman(&[
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("label=io.code-interpreter.instance={}", self.instance),
            ])
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("gateway running").id()
    }

    /// The gateway process's peak resident memory, KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.as_ref().expect("gateway running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Container id of the worker serving `user` (its hostname is the short id).
    pub async fn container_of(&self, user: &str) -> String {
        let body = self
            .run(user, "import socket; print(socket.gethostname())")
            .await;
        let host = body["result_text"].as_str().unwrap().trim().to_string();
        self.containers()
            .into_iter()
            .find(|id| id.starts_with(&host))
            .unwrap_or_else(|| panic!("no container {host} among {:?}", self.containers()))
    }

    /// Waits until Podman shows exactly the gateway's live workers (pool and
    /// sessions): nothing orphaned, nothing missing.
    pub async fn assert_no_orphans(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = self.status().await;
            let live = status["total_workers"].as_u64().unwrap() as usize;
            let creating = status["creating_workers"].as_u64().unwrap();
            let containers = self.containers();
            if creating == 0 && containers.len() == live {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "podman shows {} containers, the gateway {live} workers: {status}",
                    containers.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the gateway with SIGTERM (as systemd would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- gateway log ({}) ----\n{}", self.instance, self.log());
        }
        self.stop();
        // A create the gateway sent just before it stopped may still land in
        // Podman (it does not cancel on a closed connection; seen after a
        // Podman restart): a second look a moment later removes it too.
        for round in 0..2 {
            if round > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            for container in self.containers() {
                self.svc.podman(&["rm", "-f", "-t", "0", &container]);
            }
        }
        // The directories belong to the service user: remove them as that user.
        let _ = self
            .svc
            .command("rm")
            .args([
                "-rf",
                &self.runtime_dir,
                &format!("{}-state", self.runtime_dir),
            ])
            .status();
        let _ = fs::remove_dir_all(&self.scratch);
    }
}

/// Waits until the freshly copied `binary` runs as the service user. A
/// process that another test forked while the copy was open for writing holds
/// that descriptor until it execs; until then exec fails with ETXTBSY.
fn wait_until_executable(svc: &ServiceUser, binary: &std::path::Path) {
    for _ in 0..100 {
        let probe = svc
            .command(binary.to_str().unwrap())
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        if matches!(probe, Ok(ref out) if out.status.success()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} does not run as the service user", binary.display());
}

/// A free loopback port (bound, then released for the gateway).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn random_tag() -> String {
    let mut bytes = [0u8; 6];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `b64` is a PNG with non-zero width and height.
pub fn assert_png(b64: &str) {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("valid base64");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
    assert!(width > 0 && height > 0, "PNG of {width}x{height}");
}

/// Deterministic incompressible bytes (file transfer tests).
pub fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
