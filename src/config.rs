//! Typed configuration: `config.toml` plus environment overrides, with defaults.
//!
//! Every tunable of the gateway lives here so that the rest of the code receives
//! validated values and never reads the environment itself.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// The whole configuration, as read from `config.toml`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub paths: PathsConfig,
    /// `[worker]`, also spelled `[workers]` (as in `[[workers.mounts]]`).
    #[serde(alias = "workers")]
    pub worker: WorkerConfig,
    pub pool: PoolConfig,
    pub execution: ExecutionConfig,
    pub limits: LimitsConfig,
    pub network: NetworkConfig,
    pub sessions: SessionsConfig,
    pub files: FilesConfig,
}

/// Files by URL (`POST /files`, `POST /files/export`): the gateway's own
/// HTTP transfers, bounded and guarded (src/net_guard.rs).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Largest file fetched or exported by URL, bytes (413 beyond); the
    /// worker's disk (`limits.disk_mb`) bounds it too.
    pub max_url_bytes: u64,
    /// Longest one transfer by URL may take, connection to last byte, seconds (504 beyond).
    pub url_timeout_secs: u64,
    /// Networks the transfers may reach although the guard refuses them
    /// (loopback, private, link-local...): "CIDR" or "IP".
    pub url_allow: Vec<crate::net_guard::Cidr>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_url_bytes: 100 * 1024 * 1024,
            url_timeout_secs: 300,
            url_allow: Vec::new(),
        }
    }
}

/// When sessions end by themselves.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// A session unused this long is released, seconds.
    pub idle_timeout_secs: u64,
    /// A session this old is released (after its running execution), seconds.
    pub max_age_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 30 * 60,
            max_age_secs: 24 * 60 * 60,
        }
    }
}

/// The HTTP side: where to listen, how to authenticate, what to accept.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port of the HTTP API.
    pub listen: SocketAddr,
    /// A fixed API token; when empty one is generated and kept in the state dir.
    pub token: Option<String>,
    /// Largest accepted `code`, in bytes (413 beyond).
    pub max_code_bytes: usize,
    /// Requests one user may have waiting behind a running one (429 beyond).
    pub max_queue_per_user: usize,
    /// Web origins (`scheme://host[:port]`) whose pages may call the API from a
    /// browser (CORS). Empty: cross-origin calls are not allowed.
    pub cors_origins: Vec<String>,
    /// A request head must arrive within this many seconds of its first byte
    /// (or of the connection's accept); the connection is closed otherwise.
    pub header_timeout_secs: u64,
    /// A keep-alive connection idle this long between requests is closed, seconds.
    pub keepalive_timeout_secs: u64,
    /// Longest pause while a request body arrives, seconds; also the waiting
    /// time after which `body_min_bytes_per_sec` applies. 408 past either.
    pub body_timeout_secs: u64,
    /// Least average rate of a request body once `body_timeout_secs` of
    /// waiting have passed, bytes per second; 0 turns the rate rule off.
    pub body_min_bytes_per_sec: u64,
    /// Connections open at once. At the limit a new connection closes the
    /// one that has waited longest without a complete request; 503 if all
    /// have a request in flight.
    pub max_connections: usize,
    /// This gateway's name among several behind a balancer, reported in
    /// `/status` so that an operator sees where a user lives; default: the
    /// host name.
    pub node: Option<String>,
}

/// Where the gateway keeps its files and finds Podman. Empty means "derive".
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PathsConfig {
    /// Token and persistent state: default `$XDG_STATE_HOME/code-interpreter`.
    pub state_dir: Option<PathBuf>,
    /// Per-worker directories (kernel sockets): default `$XDG_RUNTIME_DIR/code-interpreter`.
    pub runtime_dir: Option<PathBuf>,
    /// Podman's REST socket: default `$XDG_RUNTIME_DIR/podman/podman.sock`.
    pub podman_socket: Option<PathBuf>,
    /// The REST socket of the Podman service whose runtime is gVisor, used
    /// instead of `podman_socket` when `workers.runtime = "gvisor"`: default
    /// `$XDG_RUNTIME_DIR/podman/podman-gvisor.sock` (`scripts/start.sh` runs it).
    pub podman_gvisor_socket: Option<PathBuf>,
}

/// How each worker container is built.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The worker image (built by `scripts/start.sh`).
    pub image: String,
    /// Label value that marks this gateway's workers; lets several gateways share one Podman.
    pub instance: String,
    /// How long a new worker may take to answer its first kernel_info_request.
    pub start_timeout_secs: u64,
    /// First container uid of the sandbox uids: each worker runs its code as
    /// its own uid from `uid_base .. uid_base + uid_count`, so per-uid limits
    /// (RLIMIT_NPROC, pipe buffers, message queues) are per worker. Rootless:
    /// container uids, which must lie inside the user namespace Podman maps
    /// (checked at start); rootful: host uids, so pick a range no host user has.
    pub uid_base: u32,
    /// How many sandbox uids; also caps the number of workers.
    pub uid_count: u32,
    /// A seccomp profile (JSON, a path Podman can read on its host) instead of
    /// the built-in one (containerfiles/seccomp/worker.json), which the
    /// gateway writes to its runtime directory at start.
    pub seccomp_profile: Option<PathBuf>,
    /// Host directories every worker sees read-only (`[[workers.mounts]]`).
    pub mounts: Vec<MountConfig>,
    /// The OCI runtime of the workers: `runc`, or `gvisor` (runsc: a
    /// user-space kernel between the code and the host's; README, "Security model").
    pub runtime: WorkerRuntime,
}

/// Which OCI runtime runs the workers (`workers.runtime`).
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WorkerRuntime {
    /// Podman's default runtime (runc on the hosts we know): namespaces,
    /// seccomp and the host's kernel.
    #[default]
    Runc,
    /// gVisor's runsc: the code's system calls are served by gVisor's Sentry.
    Gvisor,
}

impl WorkerRuntime {
    /// The name `config.toml` and `/status` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Runc => "runc",
            Self::Gvisor => "gvisor",
        }
    }
}

impl std::str::FromStr for WorkerRuntime {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "runc" => Ok(Self::Runc),
            "gvisor" => Ok(Self::Gvisor),
            other => bail!("unknown worker runtime {other:?} (runc or gvisor)"),
        }
    }
}

/// A host directory mounted read-only into every worker, e.g. a skills
/// folder at `/mnt/skills` or a reference dataset.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    /// The directory on the host (as Podman sees it), absolute.
    pub source: PathBuf,
    /// Where workers see it, absolute; not a system or writable directory.
    pub target: String,
}

/// Mount targets that would hide or open a part of the worker the sandbox
/// relies on: these and everything below them are refused.
const RESERVED_TARGETS: [&str; 11] = [
    "/sandbox", "/home", "/tmp", "/var/tmp", "/run", "/proc", "/sys", "/dev", "/etc", "/root",
    "/boot",
];
/// Directories that may hold mounts but not be one.
const RESERVED_EXACT: [&str; 8] = [
    "/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/var",
];
/// Most read-only mounts.
const MAX_MOUNTS: usize = 16;

/// Checks a mount's paths (not the host directory: see `worker::mounts`).
fn check_mount(mount: &MountConfig) -> Result<()> {
    let target = &mount.target;
    if !mount.source.is_absolute() {
        bail!(
            "worker.mounts: source {} must be an absolute path",
            mount.source.display()
        );
    }
    let parts: Vec<&str> = target.split('/').skip(1).collect();
    if !target.starts_with('/')
        || target.len() > 256
        || parts.iter().any(|p| matches!(*p, "" | "." | ".."))
        || target
            .chars()
            .any(|c| c.is_control() || c == ',' || c == ':')
    {
        bail!(
            "worker.mounts: target {target:?} must be an absolute, normalised path \
             (no empty, '.' or '..' components, no ',' or ':'), e.g. \"/mnt/skills\""
        );
    }
    let under = |dir: &str| target == dir || target.starts_with(&format!("{dir}/"));
    if RESERVED_EXACT.contains(&target.as_str()) || RESERVED_TARGETS.iter().any(|d| under(d)) {
        bail!(
            "worker.mounts: target {target} would cover a directory the sandbox needs; \
             use a path such as /mnt/<name>"
        );
    }
    Ok(())
}

/// What one worker may use. cgroup limits apply where the host enforces them;
/// rlimits and tmpfs sizes apply everywhere.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Memory (cgroup), MiB: a per-worker cap, not a reservation.
    pub memory_mb: u64,
    /// CPUs (cgroup quota).
    pub cpus: f64,
    /// Processes and threads (cgroup pids controller).
    pub pids: u64,
    /// Size of the writable home/work tmpfs, MiB; also the largest file (RLIMIT_FSIZE).
    pub disk_mb: u64,
    /// Size of the writable `/tmp` tmpfs, MiB.
    pub tmp_mb: u64,
    /// Address space of each process (RLIMIT_AS), MiB: the memory guard that
    /// works without cgroups. An idle kernel with numpy and pandas uses ~350 MiB.
    pub address_space_mb: u64,
    /// Open files (RLIMIT_NOFILE; must not exceed the host's hard limit).
    pub nofile: u64,
    /// Processes and threads of one worker (RLIMIT_NPROC of its own sandbox
    /// uid): the per-worker process bound where no pids cgroup is available.
    pub nproc: u64,
    /// Size of `/dev/shm` (POSIX shared memory, multiprocessing's semaphores), MiB.
    pub shm_mb: u64,
}

/// Whether and where workers may connect.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    pub mode: NetworkMode,
    /// Destinations allowed in `allowlist` mode: "CIDR", "IP", "IP:PORT",
    /// "[IPv6]:PORT" or "HOST:PORT" (HOST resolved by the gateway), parsed
    /// once, when the file is read.
    pub allow: Vec<AllowEntry>,
}

/// `none`: loopback only. `allowlist`: an interface, and only `allow` reachable.
/// `internet`: an interface, public addresses reachable, every non-public range
/// (loopback, private, link-local, metadata, CGNAT, multicast…) dropped, DNS
/// only to slirp4netns's resolver.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    None,
    Allowlist,
    Internet,
}

impl NetworkMode {
    /// The name `config.toml` and `/status` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Allowlist => "allowlist",
            Self::Internet => "internet",
        }
    }
}

/// One parsed `network.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum AllowEntry {
    Net {
        addr: IpAddr,
        prefix: u8,
        port: Option<u16>,
    },
    Host {
        name: String,
        port: u16,
    },
}

impl TryFrom<String> for AllowEntry {
    type Error = anyhow::Error;

    fn try_from(text: String) -> Result<Self> {
        Self::parse(&text)
    }
}

impl AllowEntry {
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            anyhow::anyhow!(
                "network.allow entry {text:?} is not CIDR, IP, IP:PORT, [IPv6]:PORT or HOST:PORT"
            )
        };
        if let Some((addr, prefix)) = text.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| bad())?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or_else(bad)?;
            return Ok(Self::Net {
                addr,
                prefix,
                port: None,
            });
        }
        if let Ok(addr) = text.parse::<IpAddr>() {
            return Ok(Self::Net {
                addr,
                prefix: if addr.is_ipv4() { 32 } else { 128 },
                port: None,
            });
        }
        if let Ok(socket) = text.parse::<SocketAddr>() {
            let prefix = if socket.is_ipv4() { 32 } else { 128 };
            return Ok(Self::Net {
                addr: socket.ip(),
                prefix,
                port: Some(socket.port()),
            });
        }
        let (name, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let name_ok = !name.is_empty()
            && name.len() <= 253
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if !name_ok {
            return Err(bad());
        }
        Ok(Self::Host {
            name: name.to_ascii_lowercase(),
            port,
        })
    }
}

/// The warm pool and capacity.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Ready, unassigned workers kept waiting for new users; "auto": as many
    /// as fit in a sixteenth of the memory above the reserve at start
    /// (`capacity::auto_min_idle`), within 2 ..= `max_idle`.
    pub min_idle: Sizing,
    /// Most idle workers the pool grows to when new users arrive quickly.
    pub max_idle: usize,
    /// Most workers alive at once (also capped by `worker.uid_count`).
    pub max_workers: usize,
    /// Available memory (host, or the gateway's own cgroup) below which no
    /// new worker is admitted, MiB.
    pub memory_reserve_mb: u64,
    /// Workers started at once; "auto": follows the cores and the measured
    /// start time (`pool::parallelism`).
    pub create_parallelism: Sizing,
    /// Longest a new user waits, in FIFO order, for a worker before 503 +
    /// Retry-After, seconds.
    pub queue_timeout_secs: f64,
    /// Without a new user this long, idle workers past `min_idle` are trimmed, seconds.
    pub trim_after_secs: f64,
    /// Modules every idle worker imports before a user gets it, so that a
    /// session's first heavy import is instant (e.g. "numpy", "pandas").
    pub preload: Vec<String>,
}

/// A count the gateway sizes itself ("auto") or the operator fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Sizing {
    #[serde(serialize_with = "auto")]
    Auto,
    Fixed(usize),
}

fn auto<S: serde::Serializer>(serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("auto")
}

impl<'de> Deserialize<'de> for Sizing {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(usize),
            Word(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Count(n) => Ok(Self::Fixed(n)),
            Raw::Word(word) if word == "auto" => Ok(Self::Auto),
            Raw::Word(word) => Err(serde::de::Error::custom(format!(
                "expected \"auto\" or a count, found \"{word}\""
            ))),
        }
    }
}

/// Limits of one execution.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Hard timeout of one `/execute`, seconds; a request may ask for less, never more.
    pub timeout_secs: f64,
    /// Bytes of output one execution may send back: the whole response body
    /// (and, streamed, its events too); the rest is dropped with a marker.
    pub max_output_bytes: usize,
    /// Bytes past the cap one execution may still make the gateway read and
    /// throw away; a worker that sends more is destroyed (502).
    pub max_flood_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:3874".parse().expect("valid default address"),
            token: None,
            max_code_bytes: 1024 * 1024,
            max_queue_per_user: 8,
            cors_origins: Vec::new(),
            header_timeout_secs: 10,
            keepalive_timeout_secs: 60,
            body_timeout_secs: 30,
            body_min_bytes_per_sec: 4096,
            max_connections: 1024,
            node: None,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            image: "localhost/code-interpreter-worker:latest".into(),
            instance: "default".into(),
            start_timeout_secs: 60,
            uid_base: 10000,
            uid_count: 50000,
            seccomp_profile: None,
            mounts: Vec::new(),
            runtime: WorkerRuntime::Runc,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory_mb: 1024,
            cpus: 1.0,
            pids: 256,
            disk_mb: 500,
            tmp_mb: 100,
            address_space_mb: 2048,
            nofile: 1024,
            nproc: 1024,
            shm_mb: 64,
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            min_idle: Sizing::Auto,
            max_idle: 32,
            max_workers: 256,
            memory_reserve_mb: 1024,
            create_parallelism: Sizing::Auto,
            queue_timeout_secs: 30.0,
            trim_after_secs: 60.0,
            preload: Vec::new(),
        }
    }
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        Self {
            timeout_secs: 30.0,
            max_output_bytes: 8 * 1024 * 1024,
            max_flood_bytes: 256 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Reads `path` (or uses defaults), applies environment overrides, validates.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut config: Config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("parsing config file {}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    /// Environment variables win over the file, so scripts and tests can adjust one value.
    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(listen) = var("CODE_INTERPRETER_LISTEN") {
            self.server.listen = listen
                .parse()
                .with_context(|| format!("CODE_INTERPRETER_LISTEN={listen:?} is not host:port"))?;
        }
        if let Some(token) = var("CODE_INTERPRETER_TOKEN").filter(|t| !t.is_empty()) {
            self.server.token = Some(token);
        }
        if let Some(dir) = var("CODE_INTERPRETER_STATE_DIR") {
            self.paths.state_dir = Some(dir.into());
        }
        if let Some(dir) = var("CODE_INTERPRETER_RUNTIME_DIR") {
            self.paths.runtime_dir = Some(dir.into());
        }
        if let Some(socket) = var("CODE_INTERPRETER_PODMAN_SOCKET") {
            self.paths.podman_socket = Some(socket.into());
        }
        if let Some(socket) = var("CODE_INTERPRETER_PODMAN_GVISOR_SOCKET") {
            self.paths.podman_gvisor_socket = Some(socket.into());
        }
        if let Some(runtime) = var("CODE_INTERPRETER_WORKER_RUNTIME").filter(|r| !r.is_empty()) {
            self.worker.runtime = runtime
                .parse()
                .context("reading CODE_INTERPRETER_WORKER_RUNTIME")?;
        }
        if let Some(image) = var("CODE_INTERPRETER_WORKER_IMAGE").filter(|i| !i.is_empty()) {
            self.worker.image = image;
        }
        if let Some(base) = var("CODE_INTERPRETER_UID_BASE") {
            self.worker.uid_base = base
                .parse()
                .with_context(|| format!("CODE_INTERPRETER_UID_BASE={base:?} is not a uid"))?;
        }
        if let Some(count) = var("CODE_INTERPRETER_UID_COUNT") {
            self.worker.uid_count = count
                .parse()
                .with_context(|| format!("CODE_INTERPRETER_UID_COUNT={count:?} is not a count"))?;
        }
        if let Some(node) = var("CODE_INTERPRETER_NODE").filter(|n| !n.is_empty()) {
            self.server.node = Some(node);
        }
        if let Some(instance) = var("CODE_INTERPRETER_INSTANCE") {
            self.worker.instance = instance;
        }
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if let Some(token) = &self.server.token {
            if token.len() < 16 {
                bail!("server.token must be at least 16 characters");
            }
        }
        let instance_ok = !self.worker.instance.is_empty()
            && self.worker.instance.len() <= 32
            && self
                .worker
                .instance
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !instance_ok {
            bail!("worker.instance must be 1-32 characters of [A-Za-z0-9-]");
        }
        if !(self.execution.timeout_secs > 0.0 && self.execution.timeout_secs <= 86_400.0) {
            bail!("execution.timeout_secs must be in (0, 86400]");
        }
        if self.execution.max_output_bytes < 64 * 1024 {
            bail!("execution.max_output_bytes must be at least 65536");
        }
        let limits = &self.limits;
        if !(limits.cpus > 0.0 && limits.cpus <= 1024.0) {
            bail!("limits.cpus must be in (0, 1024]");
        }
        if [
            limits.memory_mb,
            limits.pids,
            limits.disk_mb,
            limits.tmp_mb,
            limits.nofile,
            limits.nproc,
            limits.shm_mb,
        ]
        .contains(&0)
        {
            bail!("limits.* must be positive");
        }
        let worker = &self.worker;
        if worker.uid_base < 1000
            || worker.uid_count == 0
            || worker.uid_base.checked_add(worker.uid_count).is_none()
        {
            bail!("worker.uid_base must be at least 1000 and worker.uid_count positive");
        }
        if limits.address_space_mb < 512 {
            bail!("limits.address_space_mb below 512 leaves no room for a Python kernel");
        }
        let mode = self.network.mode;
        if mode != NetworkMode::Allowlist && !self.network.allow.is_empty() {
            bail!(
                "network.allow is set but network.mode is \"{}\"; it applies to mode = \"allowlist\" only",
                mode.name()
            );
        }
        if self.worker.runtime == WorkerRuntime::Gvisor && mode != NetworkMode::None {
            bail!(
                "network.mode = \"{}\" cannot be used with workers.runtime = \"gvisor\": its \
                 rules are nftables rules in the worker's network namespace, and gVisor's own \
                 network stack does not run nftables. gVisor workers run with no network at \
                 all (runsc --network=none); use mode = \"none\", or runtime = \"runc\"",
                mode.name()
            );
        }
        for origin in &self.server.cors_origins {
            check_origin(origin)?;
        }
        let server = &self.server;
        for (name, secs) in [
            ("header_timeout_secs", server.header_timeout_secs),
            ("keepalive_timeout_secs", server.keepalive_timeout_secs),
            ("body_timeout_secs", server.body_timeout_secs),
        ] {
            if !(1..=86_400).contains(&secs) {
                bail!("server.{name} must be in [1, 86400]");
            }
        }
        if let Some(node) = &server.node {
            if node.is_empty() || node.len() > 64 || node.chars().any(|c| c.is_control()) {
                bail!("server.node must be 1-64 characters without control characters");
            }
        }
        if !(1..=1_000_000).contains(&server.max_connections) {
            bail!("server.max_connections must be in [1, 1000000]");
        }
        if self.server.max_code_bytes == 0
            || self.pool.create_parallelism == Sizing::Fixed(0)
            || self.pool.max_workers == 0
            || !(self.pool.queue_timeout_secs > 0.0 && self.pool.queue_timeout_secs <= 3600.0)
            || !(self.pool.trim_after_secs > 0.0 && self.pool.trim_after_secs <= 86_400.0)
        {
            bail!(
                "server.max_code_bytes, pool.create_parallelism, pool.max_workers, \
                 pool.queue_timeout_secs (at most 3600) and pool.trim_after_secs (at most \
                 86400) must be positive"
            );
        }
        if self.worker.mounts.len() > MAX_MOUNTS {
            bail!("worker.mounts lists at most {MAX_MOUNTS} directories");
        }
        for (n, mount) in self.worker.mounts.iter().enumerate() {
            check_mount(mount)?;
            if self.worker.mounts[..n]
                .iter()
                .any(|m| m.target == mount.target)
            {
                bail!("worker.mounts: target {} is listed twice", mount.target);
            }
        }
        if self.files.max_url_bytes == 0 || !(1..=86_400).contains(&self.files.url_timeout_secs) {
            bail!("files.max_url_bytes must be positive and files.url_timeout_secs in [1, 86400]");
        }
        if self.pool.preload.len() > 32 {
            bail!("pool.preload lists at most 32 modules");
        }
        for module in &self.pool.preload {
            if !is_module_name(module) {
                bail!("pool.preload: {module:?} is not a Python module name (e.g. \"numpy\" or \"matplotlib.pyplot\")");
            }
        }
        Ok(())
    }

    /// The idle workers to keep when demand is low.
    pub fn min_idle(&self, auto: impl FnOnce() -> usize) -> usize {
        match self.pool.min_idle {
            Sizing::Fixed(n) => n,
            Sizing::Auto => auto(),
        }
    }

    /// The HTTP front's limits (src/front/).
    pub fn front_limits(&self) -> crate::front::Limits {
        let server = &self.server;
        let body_timeout = Duration::from_secs(server.body_timeout_secs);
        crate::front::Limits {
            header_timeout: Duration::from_secs(server.header_timeout_secs),
            idle_timeout: Duration::from_secs(server.keepalive_timeout_secs),
            body: crate::front::BodyRule {
                max_gap: body_timeout,
                grace: body_timeout,
                min_rate: server.body_min_bytes_per_sec,
            },
            max_connections: server.max_connections,
        }
    }

    /// This gateway's node name: `server.node`, else the host name.
    pub fn node(&self) -> String {
        self.server.node.clone().unwrap_or_else(host_name)
    }

    /// The configured hard timeout of one execution.
    pub fn max_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.execution.timeout_secs)
    }

    /// Directory for the token and other persistent state.
    pub fn state_dir(&self) -> PathBuf {
        self.paths
            .state_dir
            .clone()
            .unwrap_or_else(|| xdg_dir("XDG_STATE_HOME", ".local/state").join("code-interpreter"))
    }

    /// Directory under which every worker gets its own subdirectory.
    pub fn runtime_dir(&self) -> PathBuf {
        self.paths
            .runtime_dir
            .clone()
            .unwrap_or_else(|| user_runtime_dir().join("code-interpreter"))
    }

    /// Path of the REST socket of the Podman service that runs the workers:
    /// with `workers.runtime = "gvisor"`, the one whose default runtime is
    /// runsc (src/worker/isolation.rs says why a second service).
    pub fn podman_socket(&self) -> PathBuf {
        match self.worker.runtime {
            WorkerRuntime::Runc => self
                .paths
                .podman_socket
                .clone()
                .unwrap_or_else(|| user_runtime_dir().join("podman/podman.sock")),
            WorkerRuntime::Gvisor => self
                .paths
                .podman_gvisor_socket
                .clone()
                .unwrap_or_else(|| user_runtime_dir().join("podman/podman-gvisor.sock")),
        }
    }
}

/// The kernel's host name (`uname -n`), or "unknown"; read from /proc to
/// avoid an unsafe libc call.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// An allowed CORS origin must be exactly what browsers send in `Origin`:
/// `http(s)://host[:port]`, no path, no wildcard.
fn check_origin(origin: &str) -> Result<()> {
    let rest = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    let valid = rest.is_some_and(|host| {
        !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
    });
    if !valid {
        bail!(
            "server.cors_origins: {origin:?} is not an origin like \"https://app.example.com\" \
             (scheme and host, optional port, no path; \"*\" is not accepted)"
        );
    }
    Ok(())
}

/// `$XDG_RUNTIME_DIR`, or `/run/user/<uid>` as systemd would set it.
fn user_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => dir.into(),
        _ => PathBuf::from(format!("/run/user/{}", current_uid())),
    }
}

fn xdg_dir(var: &str, fallback_under_home: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(dir) if !dir.is_empty() => dir.into(),
        _ => {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
            PathBuf::from(home).join(fallback_under_home)
        }
    }
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    // /proc/self is owned by the process's uid; avoids an unsafe libc call.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_original_api() {
        let config = Config::default();
        assert_eq!(config.server.listen.port(), 3874);
        assert_eq!(config.server.max_code_bytes, 1024 * 1024);
        config.validate().unwrap();
    }

    #[test]
    fn file_values_and_env_overrides() {
        let mut config: Config =
            toml::from_str("[server]\nlisten = \"127.0.0.1:9000\"\n[pool]\nmin_idle = 5\n")
                .unwrap();
        assert_eq!(config.pool.min_idle, Sizing::Fixed(5));
        config
            .apply_env(|name| (name == "CODE_INTERPRETER_LISTEN").then(|| "127.0.0.1:9001".into()))
            .unwrap();
        assert_eq!(config.server.listen.port(), 9001);
    }

    #[test]
    fn the_node_is_configured_or_the_host_name() {
        let mut config = Config::default();
        let host = config.node();
        assert!(!host.is_empty());
        config
            .apply_env(|name| (name == "CODE_INTERPRETER_NODE").then(|| "gw-2".into()))
            .unwrap();
        assert_eq!(config.node(), "gw-2");
        config.server.node = Some("bad\nname".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn allow_entries_parse() {
        let net = |a: &str, prefix, port| AllowEntry::Net {
            addr: a.parse().unwrap(),
            prefix,
            port,
        };
        assert_eq!(
            AllowEntry::parse("10.0.0.0/8").unwrap(),
            net("10.0.0.0", 8, None)
        );
        assert_eq!(
            AllowEntry::parse("10.0.2.2").unwrap(),
            net("10.0.2.2", 32, None)
        );
        assert_eq!(
            AllowEntry::parse("10.0.2.2:8080").unwrap(),
            net("10.0.2.2", 32, Some(8080))
        );
        assert_eq!(
            AllowEntry::parse("[::1]:80").unwrap(),
            net("::1", 128, Some(80))
        );
        assert_eq!(
            AllowEntry::parse("Deb.Debian.org:80").unwrap(),
            AllowEntry::Host {
                name: "deb.debian.org".into(),
                port: 80
            }
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "host",
            "host:",
            "ho st:80",
            "a:b:c",
            "10.0.0.1:99999",
        ] {
            assert!(AllowEntry::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn allow_entries_are_parsed_when_the_file_is_read() {
        let config: Config =
            toml::from_str("[network]\nmode = \"allowlist\"\nallow = [\"10.0.2.2:8080\"]\n")
                .unwrap();
        assert_eq!(
            config.network.allow,
            [AllowEntry::parse("10.0.2.2:8080").unwrap()]
        );
        let error = toml::from_str::<Config>("[network]\nallow = [\"host\"]\n").unwrap_err();
        assert!(
            error.to_string().contains("is not CIDR, IP"),
            "the entry's own error: {error}"
        );
    }

    #[test]
    fn internet_mode_parses_and_refuses_an_allowlist() {
        let config: Config = toml::from_str("[network]\nmode = \"internet\"\n").unwrap();
        assert_eq!(config.network.mode, NetworkMode::Internet);
        assert_eq!(config.network.mode.name(), "internet");
        config.validate().unwrap();
        let mut config = config;
        config.network.allow = vec![AllowEntry::parse("10.0.2.2:8080").unwrap()];
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("\"internet\""), "{error}");
    }

    #[test]
    fn gvisor_runtime_has_its_own_socket_and_no_network_mode() {
        let config: Config = toml::from_str("[workers]\nruntime = \"gvisor\"\n").unwrap();
        assert_eq!(config.worker.runtime, WorkerRuntime::Gvisor);
        config.validate().unwrap();
        assert!(config
            .podman_socket()
            .ends_with("podman/podman-gvisor.sock"));
        for mode in ["allowlist", "internet"] {
            let text = format!("[workers]\nruntime = \"gvisor\"\n[network]\nmode = \"{mode}\"\n");
            let config: Config = toml::from_str(&text).unwrap();
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("gVisor's own network stack"), "{error}");
        }
        let mut config = Config::default();
        let env = |name: &str| (name == "CODE_INTERPRETER_WORKER_RUNTIME").then(|| "gvisor".into());
        config.apply_env(env).unwrap();
        assert_eq!(config.worker.runtime, WorkerRuntime::Gvisor);
        let env = |name: &str| (name == "CODE_INTERPRETER_WORKER_RUNTIME").then(|| "kata".into());
        assert!(config.apply_env(env).is_err());
        assert!(toml::from_str::<Config>("[workers]\nruntime = \"kata\"\n").is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("[server]\nlistn = \"x\"\n").is_err());
        let mut config = Config::default();
        config.worker.instance = "../etc".into();
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.server.token = Some("short".into());
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.server.header_timeout_secs = 0;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.server.max_connections = 0;
        assert!(config.validate().is_err());
        let mut config = Config::default();
        config.pool.max_workers = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_shipped_config_states_the_front_defaults() {
        let shipped: Config = toml::from_str(include_str!("../config.toml")).unwrap();
        shipped.validate().unwrap();
        let (ours, default) = (&shipped.server, ServerConfig::default());
        assert_eq!(ours.header_timeout_secs, default.header_timeout_secs);
        assert_eq!(ours.keepalive_timeout_secs, default.keepalive_timeout_secs);
        assert_eq!(ours.body_timeout_secs, default.body_timeout_secs);
        assert_eq!(ours.body_min_bytes_per_sec, default.body_min_bytes_per_sec);
        assert_eq!(ours.max_connections, default.max_connections);
        let (ours, default) = (&shipped.pool, PoolConfig::default());
        assert_eq!(ours.max_workers, default.max_workers);
        assert_eq!(ours.memory_reserve_mb, default.memory_reserve_mb);
        assert_eq!(ours.min_idle, default.min_idle);
        assert_eq!(ours.queue_timeout_secs, default.queue_timeout_secs);
        assert_eq!(ours.max_idle, default.max_idle);
        let (ours, default) = (&shipped.files, FilesConfig::default());
        assert_eq!(ours.max_url_bytes, default.max_url_bytes);
        assert_eq!(ours.url_timeout_secs, default.url_timeout_secs);
        assert!(ours.url_allow.is_empty());
        let files: Config =
            toml::from_str("[files]\nurl_allow = [\"127.0.0.1/32\", \"::1\"]\n").unwrap();
        assert_eq!(files.files.url_allow.len(), 2);
        assert!(toml::from_str::<Config>("[files]\nurl_allow = [\"localhost\"]\n").is_err());
    }

    #[test]
    fn front_limits_come_from_the_server_section() {
        let config: Config = toml::from_str(
            "[server]\nheader_timeout_secs = 3\nkeepalive_timeout_secs = 4\n\
             body_timeout_secs = 5\nbody_min_bytes_per_sec = 0\nmax_connections = 7\n",
        )
        .unwrap();
        config.validate().unwrap();
        let limits = config.front_limits();
        assert_eq!(limits.header_timeout, Duration::from_secs(3));
        assert_eq!(limits.idle_timeout, Duration::from_secs(4));
        assert_eq!(limits.body.max_gap, Duration::from_secs(5));
        assert_eq!(limits.body.grace, Duration::from_secs(5));
        assert_eq!(limits.body.min_rate, 0);
        assert_eq!(limits.max_connections, 7);
    }

    #[test]
    fn cors_origins_must_be_exact_origins() {
        for good in [
            "https://app.example.com",
            "http://127.0.0.1:8080",
            "http://[::1]:3000",
        ] {
            check_origin(good).unwrap();
        }
        for bad in [
            "*",
            "https://*.example.com",
            "app.example.com",
            "https://a.com/",
            "null",
            "",
        ] {
            assert!(check_origin(bad).is_err(), "{bad} accepted");
        }
    }
}

/// A dotted Python module name: identifiers of ASCII letters, digits and `_`
/// (it is written into Python code, so nothing else may pass).
fn is_module_name(name: &str) -> bool {
    name.len() <= 200
        && name.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn sizing_is_auto_or_a_count() {
        let config: Config =
            toml::from_str("[pool]\nmin_idle = \"auto\"\ncreate_parallelism = 3\n").unwrap();
        assert_eq!(config.pool.min_idle, Sizing::Auto);
        assert_eq!(config.pool.create_parallelism, Sizing::Fixed(3));
        let bad = toml::from_str::<Config>("[pool]\nmin_idle = \"many\"\n").unwrap_err();
        assert!(bad.to_string().contains("auto"), "{bad}");
        assert_eq!(serde_json::to_value(Sizing::Auto).unwrap(), "auto");
        assert_eq!(serde_json::to_value(Sizing::Fixed(4)).unwrap(), 4);
    }

    #[test]
    fn preload_takes_module_names_only() {
        let mut config = Config::default();
        config.pool.preload = vec!["numpy".into(), "matplotlib.pyplot".into(), "_x1".into()];
        config.validate().unwrap();
        for bad in [
            "os; import socket",
            "",
            "a..b",
            "1abc",
            "numpy pandas",
            "a.b-c",
        ] {
            config.pool.preload = vec![bad.into()];
            assert!(config.validate().is_err(), "{bad:?} was accepted");
        }
    }
}

#[cfg(test)]
mod mount_tests {
    use super::*;

    #[test]
    fn mounts_parse_under_workers_and_worker() {
        let toml = "[[workers.mounts]]\nsource = \"/srv/skills\"\ntarget = \"/mnt/skills\"\n";
        let config: Config = toml::from_str(toml).unwrap();
        assert_eq!(
            config.worker.mounts,
            [MountConfig {
                source: "/srv/skills".into(),
                target: "/mnt/skills".into()
            }]
        );
        config.validate().unwrap();
        let toml =
            "[worker]\ninstance = \"x\"\n[[worker.mounts]]\nsource = \"/a\"\ntarget = \"/opt/a\"\n";
        let config: Config = toml::from_str(toml).unwrap();
        assert_eq!(config.worker.mounts[0].target, "/opt/a");
        config.validate().unwrap();
    }

    #[test]
    fn mount_paths_are_checked() {
        let check = |source: &str, target: &str| {
            let mut config = Config::default();
            config.worker.mounts = vec![MountConfig {
                source: source.into(),
                target: target.into(),
            }];
            config.validate()
        };
        check("/srv/data", "/mnt/data").unwrap();
        check("/srv/data", "/usr/share/data").unwrap();
        for (source, target) in [
            ("srv/data", "/mnt/data"),
            ("/srv/data", "mnt/data"),
            ("/srv/data", "/mnt/../etc"),
            ("/srv/data", "/mnt//data"),
            ("/srv/data", "/mnt/data/"),
            ("/srv/data", "/mnt/a,b"),
            ("/srv/data", "/"),
            ("/srv/data", "/usr"),
            ("/srv/data", "/sandbox"),
            ("/srv/data", "/sandbox/x"),
            ("/srv/data", "/home/sandbox"),
            ("/srv/data", "/etc/ssl"),
            ("/srv/data", "/run/kernel"),
            ("/srv/data", "/tmp"),
            ("/srv/data", "/proc/x"),
        ] {
            assert!(
                check(source, target).is_err(),
                "{source} -> {target} accepted"
            );
        }
        let mut config = Config::default();
        let mount = MountConfig {
            source: "/a".into(),
            target: "/mnt/a".into(),
        };
        config.worker.mounts = vec![mount.clone(), mount];
        assert!(config.validate().is_err(), "a target twice");
    }
}
