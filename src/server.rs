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
use crate::host::HostInfo;
use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::sessions::Sessions;
use crate::worker::podman::PodmanRuntime;
use crate::worker::WorkerFactory;

/// How long start-up waits for the Podman socket to answer.
const PODMAN_WAIT: Duration = Duration::from_secs(30);

pub async fn run(config: Config) -> Result<()> {
    let config = Arc::new(config);
    let token = Token::load_or_create(&config)?;
    let host = HostInfo::detect();
    let host_capacity = host.capacity(config.worker.memory_mb);
    let max_workers = match config.pool.max_workers {
        0 => host_capacity,
        configured => configured.min(host_capacity),
    };

    let podman = PodmanRuntime::new(&config.podman_socket());
    let podman_version = wait_for_podman(&podman, &config).await;
    let factory = Arc::new(WorkerFactory::new(podman, Arc::clone(&config))?);
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
    ));
    tracing::info!(
        cgroup_version = host.cgroup_version,
        cgroup_limits_enforced = host.cgroup_limits_enforced,
        max_workers,
        min_idle = config.pool.min_idle,
        "host: {} MiB memory, {} cpus; container cgroup limits are {}",
        host.total_memory_bytes / (1024 * 1024),
        host.cpus,
        if host.cgroup_limits_enforced {
            "enforced"
        } else {
            "NOT enforced on this host"
        },
    );

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

/// The Podman version once the socket answers; "unavailable" after `PODMAN_WAIT`
/// (the gateway still serves, and `/status` shows why workers fail).
async fn wait_for_podman(podman: &PodmanRuntime, config: &Config) -> String {
    let deadline = Instant::now() + PODMAN_WAIT;
    loop {
        match podman.version().await {
            Ok(version) => {
                tracing::info!("podman {version} at {}", config.podman_socket().display());
                return version;
            }
            Err(e) if Instant::now() >= deadline => {
                tracing::error!(
                    "podman at {} is not answering: {e:#}",
                    config.podman_socket().display()
                );
                return "unavailable".into();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn shutdown_signal() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested");
}
