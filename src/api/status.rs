//! `GET /status`: the original's pool figures plus what an operator needs.

use std::sync::Arc;

use serde_json::json;
use warp::reply::Response;
use warp::Reply;

use super::AppState;

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
        "sessions": sessions.sessions,
        "creating_workers": pool.creating,
        "capacity": {
            "max_workers": pool.max_workers,
            "host_capacity": state.host_capacity,
            "min_idle": pool.min_idle,
            "free_slots": pool.max_workers.saturating_sub(pool.alive),
        },
        "last_worker_error": pool.last_error,
        "podman": {
            "version": state.podman_version,
            "socket": state.config.podman_socket(),
        },
        "host": state.host,
        "limits": {
            "cgroup_limits_enforced": state.host.cgroup_limits_enforced,
            "execution_timeout_secs": state.config.execution.timeout_secs,
            "max_code_bytes": state.config.server.max_code_bytes,
            "max_output_bytes": state.config.execution.max_output_bytes,
        },
        "counters": state.metrics.snapshot(),
        "uptime_secs": state.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}
