//! Workers: one container running one kernel, created ready and destroyed whole.
//!
//! The factory is the only code that creates or removes worker containers and
//! their directories, through a [`Runtime`] (Podman, or a fake in unit
//! tests). A worker is cattle: any failure while it is being made or used
//! ends in `destroy`, never in a repair.

#[cfg(test)]
pub mod fake;
pub mod firewall;
pub mod isolation;
pub mod network;
pub mod podman;
pub mod runtime;
pub mod spec;
pub mod uids;

use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::config::{AllowEntry, Config, MountConfig, NetworkMode, WorkerRuntime};
use crate::host::CgroupSupport;
use crate::kernel::{ConnectionInfo, KernelClient};
use crate::random;
use crate::state::WorkerRecord;
use futures_util::StreamExt;
use runtime::Runtime;
use uids::SandboxUids;

/// How many leftover containers `remove_others` removes at a time.
const REMOVE_PARALLELISM: usize = 8;

/// A live worker with a connected kernel.
pub struct Worker {
    /// Random id; names the container and the worker directory. Never derived from a user.
    pub id: String,
    /// Podman's container id.
    pub container: String,
    /// The worker directory on the gateway's side.
    pub dir: PathBuf,
    /// The kernel's HMAC key (kept to re-connect after a gateway restart).
    pub key: String,
    /// The sandbox uid its code runs as; None for a worker of an older gateway (uid 1000).
    pub uid: Option<u32>,
    /// The OCI runtime its container runs under.
    pub runtime: WorkerRuntime,
    pub kernel: KernelClient,
    /// How its start went, phase by phase (None: adopted from a previous run).
    pub profile: Option<StartProfile>,
}

/// What each phase of a worker's start took (see `docs/benchmarks.md`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StartProfile {
    /// Writing the worker directory (connection file, ruleset, account files).
    pub prepare: Duration,
    /// The runtime's create call.
    pub create: Duration,
    /// The runtime's start call (runc, mounts, namespaces).
    pub start: Duration,
    /// From the start call's answer until the kernel's sockets exist: the
    /// entrypoint (firewall, privilege drop), Python and ipykernel's imports.
    pub listen: Duration,
    /// Connecting and the first kernel_info reply (the kernel's shell set-up).
    pub connect: Duration,
}

impl StartProfile {
    pub fn total(&self) -> Duration {
        self.prepare + self.create + self.start + self.listen + self.connect
    }
}

/// What is left to clean up of a worker once its kernel connection is gone.
pub struct Remains {
    pub id: String,
    pub container: Option<String>,
    pub dir: PathBuf,
    /// Goes back to the free uids once the container is gone.
    pub uid: Option<u32>,
}

/// Makes and destroys workers.
pub struct WorkerFactory {
    runtime: Arc<dyn Runtime>,
    config: Arc<Config>,
    /// What cgroup limits Podman can apply here.
    cgroups: CgroupSupport,
    /// Parsed `network.allow` (empty unless in allowlist mode).
    allow: Vec<AllowEntry>,
    workers_dir: PathBuf,
    /// One sandbox uid per live worker.
    uids: SandboxUids,
    /// The seccomp profile every worker gets (a path Podman reads).
    seccomp_profile: PathBuf,
}

/// Our seccomp profile (scripts/dev/seccomp-profile.py made it from Podman's default).
const SECCOMP_PROFILE: &str = include_str!("../../containerfiles/seccomp/worker.json");
/// Where the built-in profile is written, inside the runtime directory: a
/// host path also when the gateway runs in its Quadlet container, which
/// mounts the runtime directory at the same path.
const SECCOMP_FILE: &str = "seccomp-worker.json";

impl WorkerFactory {
    /// Prepares the runtime directory (0700) that holds every worker directory.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        config: Arc<Config>,
        cgroups: CgroupSupport,
    ) -> Result<Self> {
        let runtime_dir = config.runtime_dir();
        let workers_dir = runtime_dir.join("workers");
        for dir in [&runtime_dir, &workers_dir] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating runtime directory {}", dir.display()))?;
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .with_context(|| format!("restricting {} to its owner", dir.display()))?;
        }
        let seccomp_profile = match &config.worker.seccomp_profile {
            Some(path) => path.clone(),
            None => {
                let path = runtime_dir.join(SECCOMP_FILE);
                let profile = match config.worker.runtime {
                    WorkerRuntime::Runc => SECCOMP_PROFILE.to_string(),
                    WorkerRuntime::Gvisor => isolation::seccomp_for_gvisor(SECCOMP_PROFILE)?,
                };
                write_replacing(&path, &profile, 0o644)?;
                path
            }
        };
        check_mount_sources(&config.worker.mounts)?;
        let uids = SandboxUids::new(config.worker.uid_base, config.worker.uid_count);
        let allow = match config.network.mode {
            NetworkMode::None | NetworkMode::Internet => Vec::new(),
            NetworkMode::Allowlist => config.network.allow.clone(),
        };
        Ok(Self {
            runtime,
            config,
            cgroups,
            allow,
            workers_dir,
            uids,
            seccomp_profile,
        })
    }

    /// How many sandbox uids serve workers now, and how many there are.
    pub fn uids_in_use(&self) -> (usize, u32) {
        (self.uids.in_use(), self.uids.count())
    }

    /// Creates a container, starts its kernel and connects to it.
    pub async fn create(&self) -> Result<Worker> {
        let id = random::hex(8);
        let dir = self.workers_dir.join(&id);
        let uid = self.uids.take().with_context(|| {
            format!(
                "every sandbox uid ({} from {}) serves a worker",
                self.uids.count(),
                self.uids.first()
            )
        })?;
        let mut remains = Remains {
            id: id.clone(),
            container: None,
            dir: dir.clone(),
            uid: Some(uid),
        };
        match self.start(&id, &dir, uid, &mut remains).await {
            Ok(worker) => Ok(worker),
            Err(e) => {
                self.destroy(remains).await;
                Err(e)
            }
        }
    }

    async fn start(&self, id: &str, dir: &Path, uid: u32, remains: &mut Remains) -> Result<Worker> {
        let begun = tokio::time::Instant::now();
        let mut profile = StartProfile::default();
        let info = ConnectionInfo {
            key: random::hex(32),
            host_dir: dir.to_path_buf(),
            kernel_dir: spec::KERNEL_DIR.into(),
        };
        let reachable = network::resolve(&self.allow).await?;
        let egress = network::egress(self.config.network.mode, &reachable);
        write_worker_dir(&info, &firewall::ruleset_json(egress), uid)?;
        let name = format!("code-interpreter-{}-{id}", self.config.worker.instance);
        let site = spec::WorkerSite {
            name: &name,
            host_dir: dir,
            hosts: &reachable.hosts,
            needs_host_loopback: reachable
                .allowed
                .iter()
                .any(|a| spec::is_host_loopback(a.addr, a.prefix)),
            uid,
            seccomp_profile: &self.seccomp_profile,
        };
        let spec = spec::container_spec(&self.config, &self.cgroups, &site);
        profile.prepare = begun.elapsed();
        let started = self.runtime.run(&spec).await?;
        profile.create = started.create_time;
        profile.start = begun.elapsed() - profile.prepare - profile.create;
        let container = started.id;
        remains.container = Some(container.clone());
        for warning in started.warnings {
            tracing::debug!(worker = id, "runtime: {warning}");
        }
        let within = Duration::from_secs(self.config.worker.start_timeout_secs);
        let started = tokio::time::Instant::now();
        // A container that dies before its kernel listens (a process limit,
        // a bad image) fails the start at once instead of after `within`.
        tokio::select! {
            ready = wait_for_sockets(&info, within) => {
                ready.with_context(|| format!("starting the kernel of worker {id}"))?;
            }
            code = self.watch_exit(&container) => {
                let mut reason = fs::read_to_string(dir.join(STARTUP_ERROR_FILE)).unwrap_or_default();
                if reason.trim().is_empty() {
                    reason = self.runtime.log_tail(&container, 3).await;
                }
                anyhow::bail!(
                    "the container of worker {id} exited (code {code}) before its kernel listened{}",
                    if reason.is_empty() { String::new() } else { format!(": {}", reason.trim()) }
                );
            }
        }
        profile.listen = started.elapsed();
        check_sandbox_uid(dir, uid)?;
        let kernel = KernelClient::connect(&info, within.saturating_sub(started.elapsed()))
            .await
            .with_context(|| format!("connecting to the kernel of worker {id}"))?;
        profile.connect = started.elapsed() - profile.listen;
        seal_worker_dir(dir)?;
        Ok(Worker {
            id: id.to_string(),
            container,
            dir: dir.to_path_buf(),
            key: info.key,
            uid: Some(uid),
            runtime: self.config.worker.runtime,
            kernel,
            profile: Some(profile),
        })
    }

    /// Resolves with the exit code once `container` has stopped running.
    async fn watch_exit(&self, container: &str) -> i32 {
        loop {
            tokio::time::sleep(EXIT_POLL).await;
            if let Ok(Some(code)) = self.runtime.exit_code(container).await {
                return code;
            }
        }
    }

    /// Re-connects to a worker a previous run of the gateway left running,
    /// proving it is the same live kernel (its key signs a kernel_info reply).
    pub async fn adopt(&self, record: &WorkerRecord) -> Result<Worker> {
        let expected_dir = self.workers_dir.join(&record.id);
        anyhow::ensure!(
            record.dir == expected_dir,
            "worker directory {} is not ours",
            record.dir.display()
        );
        // A worker started under another runtime than the configured one
        // would keep its session under the weaker (or other) isolation.
        anyhow::ensure!(
            record.runtime == self.config.worker.runtime,
            "it runs under {}, and workers.runtime is now {}",
            record.runtime.name(),
            self.config.worker.runtime.name()
        );
        if let Some(uid) = record.uid {
            anyhow::ensure!(
                self.uids.claim(uid),
                "sandbox uid {uid} is outside worker.uid_base/uid_count or claimed twice"
            );
        }
        let info = ConnectionInfo {
            key: record.key.clone(),
            host_dir: record.dir.clone(),
            kernel_dir: spec::KERNEL_DIR.into(),
        };
        let kernel = match KernelClient::connect(&info, ADOPT_TIMEOUT).await {
            Ok(kernel) => kernel,
            Err(e) => {
                // Not adopted: remove_others removes its container later. Its
                // uid stays out of the free list (one uid less: the safe side).
                return Err(e).with_context(|| format!("re-connecting to worker {}", record.id));
            }
        };
        Ok(Worker {
            id: record.id.clone(),
            container: record.container.clone(),
            dir: record.dir.clone(),
            key: record.key.clone(),
            uid: record.uid,
            runtime: record.runtime,
            kernel,
            profile: None,
        })
    }

    /// Removes this instance's containers and worker directories other than
    /// those of `keep` (all of them when `keep` is empty).
    pub async fn remove_others(&self, keep: &[&Worker]) -> Result<usize> {
        let containers: HashSet<&str> = keep.iter().map(|w| w.container.as_str()).collect();
        let dirs: HashSet<&str> = keep.iter().map(|w| w.id.as_str()).collect();
        let others: Vec<String> = self
            .runtime
            .list_workers(&self.config.worker.instance)
            .await?
            .into_iter()
            .filter(|container| !containers.contains(container.as_str()))
            .collect();
        // Several at a time: a gateway whose runtime changed finds its whole
        // previous pool here (32 workers: 10 s one by one under gVisor), and
        // it listens only after this.
        let removals: Vec<Result<()>> = futures_util::stream::iter(&others)
            .map(|container| self.runtime.remove(container))
            .buffer_unordered(REMOVE_PARALLELISM)
            .collect()
            .await;
        let removed = removals.len();
        removals.into_iter().collect::<Result<Vec<()>>>()?;
        if let Ok(entries) = fs::read_dir(&self.workers_dir) {
            for entry in entries.flatten() {
                if !dirs.contains(entry.file_name().to_string_lossy().as_ref()) {
                    self.remove_worker_dir(&entry.path()).await;
                }
            }
        }
        Ok(removed)
    }

    /// Removes the container and the directory; logs what could not be removed.
    pub async fn destroy(&self, remains: Remains) {
        let mut removed = true;
        if let Some(container) = &remains.container {
            // Podman may be restarting: retry for about half a minute before giving up.
            for attempt in 0..REMOVE_ATTEMPTS {
                match self.runtime.remove(container).await {
                    Ok(()) => break,
                    Err(e) if attempt + 1 == REMOVE_ATTEMPTS => {
                        tracing::error!(worker = remains.id, "could not remove container: {e:#}");
                        removed = false;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500 << attempt)).await,
                }
            }
        }
        self.remove_worker_dir(&remains.dir).await;
        match remains.uid {
            // Removal killed every process of the container: the uid is clean.
            Some(uid) if removed => self.uids.give_back(uid),
            Some(uid) => tracing::error!(
                worker = remains.id,
                "sandbox uid {uid} stays out of use: its container may still run"
            ),
            None => {}
        }
    }

    /// Removes a worker directory. Sandboxed code may have left subdirectories
    /// owned by its (subordinate) uid that we cannot empty; those are removed
    /// with the runtime's privileges (control path only).
    async fn remove_worker_dir(&self, dir: &Path) {
        match fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if e.kind() != std::io::ErrorKind::PermissionDenied => {
                tracing::warn!("could not remove {}: {e}", dir.display());
                return;
            }
            Err(_) => {}
        }
        match self.runtime.remove_as_root(dir).await {
            Ok(()) if !dir.exists() => {}
            Ok(()) => tracing::warn!(
                "could not remove {} (also not with the runtime's privileges)",
                dir.display()
            ),
            Err(e) => tracing::warn!("could not remove {}: {e:#}", dir.display()),
        }
    }
}

impl Worker {
    /// The persisted form of this worker, as waiting in the pool.
    pub fn record(&self) -> WorkerRecord {
        WorkerRecord {
            id: self.id.clone(),
            container: self.container.clone(),
            dir: self.dir.clone(),
            key: self.key.clone(),
            uid: self.uid,
            user: None,
            session_started: None,
            runtime: self.runtime,
        }
    }

    /// Splits off what must be cleaned up; drops the kernel connection.
    pub fn into_remains(self) -> Remains {
        Remains {
            id: self.id,
            container: Some(self.container),
            dir: self.dir,
            uid: self.uid,
        }
    }
}

/// Tries to remove a container before giving up (0.5 s, 1 s, 2 s … between).
const REMOVE_ATTEMPTS: u32 = 6;
/// How often a starting worker's container is checked for an early exit.
const EXIT_POLL: Duration = Duration::from_millis(500);
/// How long a worker left by a previous run may take to prove it is alive.
const ADOPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The kernel's connection file, inside the worker directory.
const CONNECTION_FILE: &str = "connection.json";
/// File in which the entrypoint says which uid the kernel runs as.
const SANDBOX_UID_FILE: &str = "sandbox-uid";
/// File the entrypoint writes when it refuses to start the kernel.
const STARTUP_ERROR_FILE: &str = "startup-error";

/// Creates the worker directory, the kernel's connection file and the firewall ruleset.
///
/// The kernel runs as another uid (a subordinate id of ours), so the directory
/// is world-writable and the files world-readable; all sit inside our 0700
/// runtime directory, which no other host user can traverse.
fn write_worker_dir(info: &ConnectionInfo, ruleset: &str, uid: u32) -> Result<()> {
    let dir = &info.host_dir;
    fs::DirBuilder::new()
        .mode(0o777)
        .create(dir)
        .with_context(|| format!("creating worker directory {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777))
        .with_context(|| format!("opening {} to the worker's uid", dir.display()))?;
    // The kernel (sandbox uid) rewrites its connection file; the ruleset is
    // read by container root, which is our own uid on the host.
    write_file(
        &dir.join(CONNECTION_FILE),
        &info.kernel_file().to_string(),
        0o666,
    )?;
    write_file(&dir.join("ruleset.json"), ruleset, 0o644)?;
    // Mounted read-only over /etc/passwd and /etc/group: `whoami` is sandbox.
    let (passwd, group) = spec::account_files(uid);
    write_file(&dir.join(spec::PASSWD_FILE), &passwd, 0o644)?;
    write_file(&dir.join(spec::GROUP_FILE), &group, 0o644)
}

/// The read-only mounts' host directories exist, are directories and can be
/// listed, so that a typo fails the start with a clear error rather than
/// every worker's. A gateway in a container (the Quadlet deployment) may not
/// see the host's paths: a missing one is then only logged, and Podman
/// refuses it at the first worker start. Code in a worker runs as a uid that
/// owns nothing there: what it should read must be readable by others.
fn check_mount_sources(mounts: &[MountConfig]) -> Result<()> {
    let in_container = Path::new("/run/.containerenv").exists();
    for mount in mounts {
        let source = &mount.source;
        match fs::metadata(source) {
            Ok(meta) if meta.is_dir() => {
                fs::read_dir(source)
                    .with_context(|| format!("worker.mounts: listing {}", source.display()))?;
                if meta.permissions().mode() & 0o005 != 0o005 {
                    tracing::warn!(
                        "worker.mounts: {} is not readable and searchable by others; \
                         sandboxed code (another uid) cannot read it",
                        source.display()
                    );
                }
            }
            Ok(_) => anyhow::bail!("worker.mounts: {} is not a directory", source.display()),
            Err(e) if in_container && e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(
                    "worker.mounts: {} is not visible from the gateway's container; \
                     Podman checks it when a worker starts",
                    source.display()
                )
            }
            Err(e) => anyhow::bail!("worker.mounts: cannot use {}: {e}", source.display()),
        }
    }
    Ok(())
}

/// Writes `path` whole (temp file + rename), e.g. a file left by an earlier run.
fn write_replacing(path: &Path, content: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_file(&tmp, content, mode)?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn write_file(path: &Path, content: &str, mode: u32) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    // The umask may have cleared bits at creation.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

/// The entrypoint writes the uid it dropped to before the kernel starts; an
/// image whose entrypoint predates CI_SANDBOX_UID writes nothing and would run
/// every worker as uid 1000 (one shared process limit): refuse it.
fn check_sandbox_uid(dir: &Path, uid: u32) -> Result<()> {
    let marker = dir.join(SANDBOX_UID_FILE);
    let written = fs::read_to_string(&marker).unwrap_or_default();
    anyhow::ensure!(
        written.trim() == uid.to_string(),
        "the worker image does not run each worker as its own uid (no {SANDBOX_UID_FILE} \
         from its entrypoint): rebuild it from containerfiles/ (scripts/start.sh)"
    );
    fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))
}

/// Once the kernel listens, the worker may no longer write to its directory:
/// it lives on the host's runtime tmpfs, outside the worker's size limits. The
/// connection file (which the kernel owns and could grow) goes; we keep the key.
fn seal_worker_dir(dir: &Path) -> Result<()> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .with_context(|| format!("sealing worker directory {}", dir.display()))?;
    fs::remove_file(dir.join(CONNECTION_FILE))
        .with_context(|| format!("removing the connection file in {}", dir.display()))
}

/// Waits until the kernel has created its sockets, or the entrypoint reported
/// why it would not start one (the firewall did not load, say): fail fast.
async fn wait_for_sockets(info: &ConnectionInfo, within: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    let error_file = info.host_dir.join(STARTUP_ERROR_FILE);
    let sockets = crate::kernel::connection::PORTS.map(|port| info.socket_path(port));
    loop {
        if let Ok(reason) = fs::read_to_string(&error_file) {
            anyhow::bail!("the worker refused to start: {}", reason.trim());
        }
        if sockets.iter().all(|p| p.exists()) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("the kernel's sockets did not appear within {within:?}");
        }
        // An open and at most five stat calls per turn: cheap enough to look
        // every millisecond (tokio's timer granularity) of a cold start.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_sources_must_be_listable_directories() {
        let dir = std::env::temp_dir().join(format!("ci-mount-check-{}", random::hex(4)));
        fs::create_dir_all(dir.join("skills")).unwrap();
        fs::write(dir.join("file"), "x").unwrap();
        let mount = |source: PathBuf| {
            vec![MountConfig {
                source,
                target: "/mnt/x".into(),
            }]
        };
        check_mount_sources(&mount(dir.join("skills"))).unwrap();
        let file = check_mount_sources(&mount(dir.join("file"))).unwrap_err();
        assert!(file.to_string().contains("is not a directory"), "{file}");
        if !Path::new("/run/.containerenv").exists() {
            let missing = check_mount_sources(&mount(dir.join("missing"))).unwrap_err();
            assert!(missing.to_string().contains("cannot use"), "{missing}");
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
