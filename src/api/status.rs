//! `GET /status`: the original's pool figures plus what an operator needs.

use std::sync::Arc;

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::AppState;

/// Which mechanism enforces each per-worker limit on this host.
fn enforced_by(state: &AppState) -> serde_json::Value {
    let limits = &state.config.limits;
    let cgroups = &state.host.cgroups;
    let by = |enforced: bool| if enforced { "cgroup" } else { "not enforced" };
    // Without a memory cgroup, what a worker holds is bounded by RLIMIT_AS per
    // process plus the sizes of its writable tmpfs mounts; memfd is denied by
    // seccomp (README, "Memory without cgroups", lists the kernel buffers).
    let memory_by = if cgroups.memory {
        "cgroup"
    } else {
        "rlimit + sized tmpfs"
    };
    let tmpfs_mb = limits.disk_mb + limits.tmp_mb + limits.shm_mb + 2;
    json!({
        "memory": {
            "value_mb": limits.memory_mb,
            "by": memory_by,
            "address_space_mb_per_process": limits.address_space_mb,
            "writable_tmpfs_mb": tmpfs_mb,
            "memfd": "denied (seccomp)",
        },
        "pids": {"value": limits.pids, "by": by(cgroups.pids)},
        "cpus": {"value": limits.cpus, "by": by(cgroups.cpu)},
        "address_space": {"value_mb": limits.address_space_mb, "by": "rlimit"},
        "disk": {"value_mb": limits.disk_mb, "by": "tmpfs size + rlimit (file size)"},
        "tmp": {"value_mb": limits.tmp_mb, "by": "tmpfs size"},
        "shm": {"value_mb": limits.shm_mb, "by": "tmpfs size"},
        "processes_of_sandbox_uid": {"value": limits.nproc, "by": "rlimit (one uid per worker)"},
        "open_files": {"value": limits.nofile, "by": "rlimit"},
    })
}

pub fn handle(state: Arc<AppState>) -> Response {
    let pool = state.pool.snapshot();
    let sessions = state.sessions.counts();
    let live = pool.alive.saturating_sub(pool.creating);
    warp::reply::json(&json!({
        // The original API's fields.
        "total_workers": live,
        "busy_workers": sessions.busy,
        "idle_workers_in_pool": pool.idle,
        "is_initializing": pool.initializing,
        // Ours.
        "node": state.config.node(),
        "sessions": sessions.sessions,
        "creating_workers": pool.creating,
        "capacity": {
            "max_workers": pool.max_workers,
            "policy": "admit a worker while available memory, less 64 MiB per worker \
                       being started, stays above the reserve, up to max_workers",
            "memory_reserve_mb": pool.policy.reserve_bytes / (1024 * 1024),
            "available_memory_mb": pool.admission_now.memory.available_bytes / (1024 * 1024),
            "memory_source": pool.admission_now.memory.source,
            "would_admit": pool.admission_now.admit,
            "decision": pool.admission_now.reason,
            "last_refusal": pool.last_refusal.as_ref().map(|d| &d.reason),
            "min_idle": pool.min_idle,
            "idle_target": pool.idle_target,
            "max_idle": pool.max_idle,
            "worker_start_ms": pool.start_time_ms,
            "min_idle_setting": state.config.pool.min_idle,
            "create_parallelism": pool.create_parallelism,
            "create_parallelism_adaptive": pool.create_parallelism_adaptive,
            "preload": pool.preload,
            "preload_error": pool.preload_error,
            "waiting_for_a_worker": pool.waiting,
            "queue_timeout_secs": state.config.pool.queue_timeout_secs,
            "free_slots": pool.max_workers.saturating_sub(pool.alive),
            "sandbox_uids": pool.uids,
            "sandbox_uids_in_use": pool.uids_in_use,
        },
        "cold_start": pool.cold_start,
        "last_worker_error": pool.last_error,
        "podman": {
            "version": state.podman_version,
            "socket": state.config.podman_socket(),
        },
        "isolation": state.isolation,
        "host": state.host,
        "limits": {
            "cgroup_limits_enforced": state.host.cgroups.enforced(),
            "enforced_by": enforced_by(&state),
            "network": state.config.network.mode,
            "execution_timeout_secs": state.config.execution.timeout_secs,
            "max_code_bytes": state.config.server.max_code_bytes,
            "max_output_bytes": state.config.execution.max_output_bytes,
        },
        "connections": {
            "open": state.metrics.connections_open.load(std::sync::atomic::Ordering::Relaxed),
            "max": state.max_connections,
        },
        "counters": &*state.metrics,
        "uptime_secs": state.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}
