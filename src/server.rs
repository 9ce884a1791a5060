//! Start-up, serving and shutdown of the gateway.
//!
//! Start-up checks Podman, removes workers an earlier run left behind, starts
//! the warm pool and binds the API. On SIGTERM or SIGINT one [`Shutdown`]
//! stops everything in order: the front stops accepting and lets running
//! requests finish, the background loops return, and the worker table is
//! saved last. The workers keep running for the next start to re-adopt
//! (`scripts/stop.sh` removes them).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::api::{self, AppState};
use crate::auth::Token;
use crate::capacity::{self, HostMemory, MemorySource, Policy};
use crate::config::{Config, Sizing};
use crate::front;
use crate::host::{CgroupSupport, HostInfo};
use crate::kernel::OutputLimits;
use crate::metrics::Metrics;
use crate::pool::{Pool, Settings};
use crate::sessions::{Expiry, Sessions};
use crate::shutdown::Shutdown;
use crate::state::{unix_now, Registry, WorkerRecord};
use crate::worker::isolation::Isolation;
use crate::worker::podman::{PodmanFacts, PodmanRuntime};
use crate::worker::{Worker, WorkerFactory};

/// Time past the execution timeout that shutdown waits for running requests.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);
/// How long worker starts under way may take to finish at shutdown.
const CREATIONS_MARGIN: Duration = Duration::from_secs(20);
/// How long the background loops may take to return once the shutdown began.
const LOOPS_MARGIN: Duration = Duration::from_secs(5);
/// How long start-up waits for the Podman socket to answer.
const PODMAN_WAIT: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> Result<()> {
    let mut stop_signals = StopSignals::install()?;
    let config = Arc::new(config);
    let token = Token::load_or_create(&config)?;
    let podman = PodmanRuntime::new(&config.podman_socket());
    let facts = wait_for_podman(&podman, &config).await;
    check_uid_range(&config, facts.mapped_uids.as_deref())?;
    let isolation = match &facts.oci_runtime {
        // Podman did not answer: checked when it does, by the first worker
        // (whose entrypoint fails closed where the firewall is missing).
        unknown if unknown.path.is_empty() => Isolation::unverified(config.worker.runtime),
        runtime => Isolation::check(config.worker.runtime, runtime)
            .context("checking the workers' OCI runtime")?,
    };
    tracing::info!(
        "workers run under {} ({}{}), firewall: {}",
        isolation.runtime,
        isolation.oci_runtime,
        isolation
            .platform
            .as_ref()
            .map(|p| format!(", platform {p}"))
            .unwrap_or_default(),
        isolation.firewall
    );
    let (podman_version, cgroups) = (facts.version, facts.cgroups);
    let host = HostInfo::detect(cgroups.clone());
    // One sandbox uid per worker: never more workers than uids. Memory is
    // checked at each admission (capacity.rs), not divided up here.
    let max_workers = config
        .pool
        .max_workers
        .min(config.worker.uid_count as usize);
    let policy = Policy {
        max_workers,
        reserve_bytes: config.pool.memory_reserve_mb * 1024 * 1024,
    };
    let min_idle = config.min_idle(|| {
        let per_idle = if config.pool.preload.is_empty() {
            capacity::IDLE_WORKER_BYTES
        } else {
            capacity::PRELOADED_WORKER_BYTES
        };
        let available = HostMemory.measure().available_bytes;
        capacity::auto_min_idle(
            available,
            policy.reserve_bytes,
            per_idle,
            config.pool.max_idle,
        )
    });
    let factory = Arc::new(WorkerFactory::new(
        Arc::new(podman),
        Arc::clone(&config),
        cgroups,
    )?);
    let metrics = Arc::new(Metrics::default());
    let registry = Registry::new(prepare_state_dir(&config)?);
    let adopted = adopt_previous_workers(&factory, &registry, &metrics).await;

    let pool = Pool::new(
        Arc::clone(&factory),
        Arc::clone(&metrics),
        Arc::clone(&registry),
        Settings {
            min_idle,
            parallelism: match config.pool.create_parallelism {
                Sizing::Auto => None,
                Sizing::Fixed(n) => Some(n),
            },
            cores: host.cpus,
            queue_timeout: Duration::from_secs_f64(config.pool.queue_timeout_secs),
            max_idle: config.pool.max_idle,
            trim_after: Duration::from_secs_f64(config.pool.trim_after_secs),
            preload: config.pool.preload.clone(),
        },
        policy,
        Arc::new(HostMemory),
    );
    let sessions = Arc::new(Sessions::new(
        Arc::clone(&pool),
        Arc::clone(&metrics),
        config.server.max_queue_per_user,
        OutputLimits {
            max_output_bytes: config.execution.max_output_bytes,
            max_flood_bytes: config.execution.max_flood_bytes,
        },
        Expiry {
            idle_timeout: Duration::from_secs(config.sessions.idle_timeout_secs),
            max_age: Duration::from_secs(config.sessions.max_age_secs),
        },
        Arc::clone(&registry),
    ));
    let mut idle = Vec::new();
    let mut assigned = 0;
    for (worker, record) in adopted {
        match record.user {
            Some(user) => {
                assigned += 1;
                sessions.adopt(
                    &user,
                    worker,
                    record.session_started.unwrap_or_else(unix_now),
                );
            }
            None => idle.push(worker),
        }
    }
    pool.adopt(idle, assigned);
    let mut shutdown = Shutdown::new();
    shutdown.spawn(|stop| Arc::clone(&registry).run_writer(stop));
    shutdown.spawn(|stop| Arc::clone(&pool).run_refill(stop));
    shutdown.spawn(|stop| Arc::clone(&sessions).run_reaper(stop));
    log_limits(&config, &host, max_workers, min_idle);

    // MCP sessions hold streams open: they end when the shutdown begins.
    let stopping = tokio_util::sync::CancellationToken::new();
    shutdown.spawn(|mut stop| {
        let stopping = stopping.clone();
        async move {
            stop.recv().await;
            stopping.cancel();
        }
    });
    let mut limits = config.front_limits();
    limits.max_connections = front::nofile::fit(limits.max_connections, max_workers);
    let state = Arc::new(AppState {
        config: Arc::clone(&config),
        token,
        sessions: Arc::clone(&sessions),
        pool: Arc::clone(&pool),
        metrics,
        host,
        podman_version,
        isolation,
        started: Instant::now(),
        max_connections: limits.max_connections,
        transfers: Arc::new(
            crate::transfer::Transfers::new(&config)
                .context("building the HTTP client of files by URL")?,
        ),
        stopping: stopping.clone(),
    });
    let listener = listen(config.server.listen)
        .with_context(|| format!("listening on {}", config.server.listen))?;
    tracing::info!(
        "code-interpreter listening on http://{} (at most {} connections)",
        config.server.listen,
        limits.max_connections
    );
    let service = warp::service(api::routes(Arc::clone(&state)));
    let mut stop = shutdown.listener();
    let server = front::serve(
        listener,
        service,
        limits,
        Arc::clone(&state.metrics),
        async move { stop.recv().await },
    );
    tokio::pin!(server);
    tokio::select! {
        _ = &mut server => {}
        _ = stop_signals.recv() => {
            // Stop accepting; let running executions finish, within bounds.
            shutdown.begin();
            let grace = config.max_timeout() + SHUTDOWN_MARGIN;
            if tokio::time::timeout(grace, &mut server).await.is_err() {
                tracing::warn!("requests still running after {grace:?}; exiting anyway");
            }
        }
    }
    // The loops return before the last save, so nothing writes the table after it.
    shutdown.complete(LOOPS_MARGIN).await;
    pool.quiesce(CREATIONS_MARGIN).await;
    // Workers keep running: the next start re-adopts them (scripts/stop.sh removes them).
    registry.save()?;
    tracing::info!("stopped; workers left running for the next start to re-adopt");
    Ok(())
}

/// Binds the API's listener with TCP_NODELAY, which Linux passes on to every
/// accepted connection (the front sets it on each again): small responses are never held
/// back by Nagle's algorithm waiting for a delayed ACK.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match addr {
        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Creates the state directory (0700) that holds the token and the worker table.
fn prepare_state_dir(config: &Config) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let dir = config.state_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating state directory {}", dir.display()))?;
    Ok(dir)
}

/// Re-connects to the workers the previous run recorded, and removes every
/// other worker container and directory of this instance. A worker whose
/// kernel does not prove itself (answer a signed kernel_info request) is removed.
async fn adopt_previous_workers(
    factory: &Arc<WorkerFactory>,
    registry: &Registry,
    metrics: &Metrics,
) -> Vec<(Worker, WorkerRecord)> {
    let previous = registry.load_previous();
    let attempts = previous.into_iter().map(|record| async move {
        match factory.adopt(&record).await {
            Ok(worker) => Some((worker, record)),
            Err(e) => {
                tracing::warn!(worker = record.id, "not re-adopted: {e:#}");
                None
            }
        }
    });
    let adopted: Vec<(Worker, WorkerRecord)> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();
    let keep: Vec<&Worker> = adopted.iter().map(|(worker, _)| worker).collect();
    match factory.remove_others(&keep).await {
        Ok(removed) => {
            metrics
                .workers_discarded
                .fetch_add(removed as u64, Ordering::Relaxed);
            if removed > 0 {
                tracing::info!("removed {removed} worker(s) that could not be re-adopted");
            }
        }
        Err(e) => tracing::warn!("could not look for leftover workers: {e:#}"),
    }
    for (worker, record) in &adopted {
        registry.insert(WorkerRecord {
            user: record.user.clone(),
            session_started: record.session_started,
            ..worker.record()
        });
    }
    metrics
        .workers_adopted
        .fetch_add(adopted.len() as u64, Ordering::Relaxed);
    if !adopted.is_empty() {
        tracing::info!(
            "re-adopted {} worker(s) from the previous run",
            adopted.len()
        );
    }
    adopted
}

/// Refuses a sandbox uid range that rootless Podman's user namespace does not
/// map (the entrypoint's setpriv would fail in every worker).
fn check_uid_range(config: &Config, mapped: Option<&[(u32, u32)]>) -> Result<()> {
    let Some(mapped) = mapped else {
        return Ok(()); // rootful, or Podman did not say: host uids
    };
    let (first, count) = (config.worker.uid_base, config.worker.uid_count);
    let last = first + (count - 1);
    let inside = mapped.iter().any(|&(start, size)| {
        first >= start && u64::from(last) < u64::from(start) + u64::from(size)
    });
    anyhow::ensure!(
        inside,
        "worker.uid_base/uid_count ({first}..={last}) are not all mapped by Podman's user \
         namespace {mapped:?} (container uid, count): see /etc/subuid"
    );
    Ok(())
}

/// Podman's version, cgroup support, mapped uids and runtime once the socket
/// answers; "unavailable" after `PODMAN_WAIT` (the gateway still serves, and
/// `/status` shows why workers fail).
async fn wait_for_podman(podman: &PodmanRuntime, config: &Config) -> PodmanFacts {
    let deadline = Instant::now() + PODMAN_WAIT;
    loop {
        match podman.info().await {
            Ok(facts) => {
                tracing::info!(
                    "podman {} at {}",
                    facts.version,
                    config.podman_socket().display()
                );
                return facts;
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::error!(
                    "podman at {} is not answering: {e:#}",
                    config.podman_socket().display()
                );
                return PodmanFacts {
                    version: "unavailable".into(),
                    cgroups: CgroupSupport::new("unknown", true, Vec::new()),
                    mapped_uids: None,
                    oci_runtime: Default::default(),
                };
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Says at start-up which limit is enforced by what on this host.
fn log_limits(config: &Config, host: &HostInfo, max_workers: usize, min_idle: usize) {
    let limits = &config.limits;
    let by = |enforced: bool| {
        if enforced {
            "cgroup"
        } else {
            "NOT ENFORCED (no cgroup controller)"
        }
    };
    tracing::info!(
        "host: {} MiB memory, {} cpus, cgroup {} ({}); at most {max_workers} workers, admitted \
         while available memory stays above {} MiB; {} kept warm",
        host.total_memory_bytes / (1024 * 1024),
        host.cpus,
        host.cgroups.version,
        if host.cgroups.rootless {
            "rootless"
        } else {
            "rootful"
        },
        config.pool.memory_reserve_mb,
        min_idle,
    );
    tracing::info!("{}", crate::worker::network::describe(&config.network));
    tracing::info!(
        "per-worker limits: memory {} MiB: {}; pids {}: {}; cpus {}: {}; \
         address space {} MiB: rlimit; file size and home {} MiB, /tmp {} MiB: rlimit + tmpfs; \
         processes per worker {}: rlimit of its own sandbox uid; open files {}: rlimit",
        limits.memory_mb,
        by(host.cgroups.memory),
        limits.pids,
        by(host.cgroups.pids),
        limits.cpus,
        by(host.cgroups.cpu),
        limits.address_space_mb,
        limits.disk_mb,
        limits.tmp_mb,
        limits.nproc,
        limits.nofile,
    );
    // Every process of every worker also counts against the service user's
    // own process limit (the user namespace's creator). If all workers could
    // reach their nproc together, tenants as a group could still starve the
    // gateway and Podman: say so.
    // Container root (every worker's init, and rootless Podman's own service in
    // its user namespace) is one uid with the workers' RLIMIT_NPROC too.
    if host.cgroups.rootless && limits.nproc < max_workers as u64 + 64 {
        tracing::warn!(
            "limits.nproc {} is too low for {max_workers} workers: every worker's init runs as \
             the one container root, with that limit (keep it above max_workers + 64)",
            limits.nproc
        );
    }
    if let Some(own) = own_process_limit().filter(|_| !host.cgroups.pids) {
        let all = max_workers as u64 * limits.nproc;
        if all >= own {
            tracing::warn!(
                "{max_workers} workers x {} processes = {all} reaches the service user's \
                 process limit ({own}): lower limits.nproc or pool.max_workers, or raise \
                 the user's limit",
                limits.nproc
            );
        }
    }
}

/// This process's soft RLIMIT_NPROC, if finite.
fn own_process_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max processes"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// SIGTERM and SIGINT, listened for from the first moment: where the gateway
/// is PID 1 of its container (the Quadlet unit), the kernel drops a signal
/// that has no handler, so a stop that came while it started up (re-adoption,
/// Podman still starting) was lost and `podman stop` killed it 10 s later.
/// Now such a signal waits, and the server shuts down as soon as it serves.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn install() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        tracing::info!("shutdown requested");
    }
}
