//! Start-up, serving and shutdown of the gateway.
//!
//! Start-up checks Podman, removes workers an earlier run left behind, starts
//! the warm pool and binds the API. On SIGTERM or SIGINT the server stops
//! accepting, lets running requests finish, and removes this instance's workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::api::{self, AppState};
use crate::auth::Token;
use crate::config::Config;
use crate::host::{CgroupSupport, HostInfo};
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::sessions::{Expiry, Sessions};
use crate::worker::podman::PodmanRuntime;
use crate::worker::WorkerFactory;

/// How long start-up waits for the Podman socket to answer.
const PODMAN_WAIT: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> Result<()> {
    let config = Arc::new(config);
    let token = Token::load_or_create(&config)?;
    let podman = PodmanRuntime::new(&config.podman_socket());
    let (podman_version, cgroups) = wait_for_podman(&podman, &config).await;
    let host = HostInfo::detect(cgroups.clone());
    let host_capacity = host.capacity(config.limits.memory_mb);
    let max_workers = match config.pool.max_workers {
        0 => host_capacity,
        configured => configured.min(host_capacity),
    };
    let factory = Arc::new(WorkerFactory::new(podman, Arc::clone(&config), cgroups)?);
    match factory.remove_leftovers().await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} worker(s) left by an earlier run"),
        Err(e) => tracing::warn!("could not look for leftover workers: {e:#}"),
    }

    let metrics = Arc::new(Metrics::default());
    let pool = Pool::new(
        Arc::clone(&factory),
        Arc::clone(&metrics),
        config.pool.min_idle,
        max_workers,
        config.pool.create_parallelism,
    );
    tokio::spawn(Arc::clone(&pool).run_refill());
    let sessions = Arc::new(Sessions::new(
        Arc::clone(&pool),
        Arc::clone(&metrics),
        config.server.max_queue_per_user,
        config.execution.max_output_bytes,
        Expiry {
            idle_timeout: Duration::from_secs(config.sessions.idle_timeout_secs),
            max_age: Duration::from_secs(config.sessions.max_age_secs),
        },
    ));
    tokio::spawn(Arc::clone(&sessions).run_reaper());
    log_limits(&config, &host, max_workers);

    let state = Arc::new(AppState {
        config: Arc::clone(&config),
        token,
        sessions: Arc::clone(&sessions),
        pool: Arc::clone(&pool),
        metrics,
        host,
        host_capacity,
        podman_version,
        started: Instant::now(),
    });
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    tracing::info!(
        "code-interpreter listening on http://{}",
        config.server.listen
    );
    warp::serve(api::routes(state))
        .incoming(listener)
        .graceful(shutdown_signal())
        .run()
        .await;

    tracing::info!("shutting down: removing this instance's workers");
    if let Err(e) = factory.remove_leftovers().await {
        tracing::warn!("could not remove workers at shutdown: {e:#}");
    }
    Ok(())
}

/// Podman's version and cgroup support once the socket answers; "unavailable"
/// after `PODMAN_WAIT` (the gateway still serves, and `/status` shows why
/// workers fail).
async fn wait_for_podman(podman: &PodmanRuntime, config: &Config) -> (String, CgroupSupport) {
    let deadline = Instant::now() + PODMAN_WAIT;
    loop {
        match podman.info().await {
            Ok((version, cgroups)) => {
                tracing::info!("podman {version} at {}", config.podman_socket().display());
                return (version, cgroups);
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::error!(
                    "podman at {} is not answering: {e:#}",
                    config.podman_socket().display()
                );
                return (
                    "unavailable".into(),
                    CgroupSupport::new("unknown", true, Vec::new()),
                );
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Says at start-up which limit is enforced by what on this host.
fn log_limits(config: &Config, host: &HostInfo, max_workers: usize) {
    let limits = &config.limits;
    let by = |enforced: bool| {
        if enforced {
            "cgroup"
        } else {
            "NOT ENFORCED (no cgroup controller)"
        }
    };
    tracing::info!(
        "host: {} MiB memory, {} cpus, cgroup {} ({}); capacity {max_workers} workers, {} kept warm",
        host.total_memory_bytes / (1024 * 1024),
        host.cpus,
        host.cgroups.version,
        if host.cgroups.rootless { "rootless" } else { "rootful" },
        config.pool.min_idle,
    );
    tracing::info!(
        "per-worker limits: memory {} MiB: {}; pids {}: {}; cpus {}: {}; \
         address space {} MiB: rlimit; file size and home {} MiB, /tmp {} MiB: rlimit + tmpfs; \
         processes of the sandbox uid {}: rlimit; open files {}: rlimit",
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
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
}
