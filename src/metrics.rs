//! Counters that `/status` reports, shared by every part of the gateway.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Monotonic counters since the gateway started.
#[derive(Default)]
pub struct Metrics {
    pub executions: AtomicU64,
    pub execution_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub kernel_failures: AtomicU64,
    pub abandoned: AtomicU64,
    pub sessions_created: AtomicU64,
    pub sessions_released: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub workers_created: AtomicU64,
    pub workers_destroyed: AtomicU64,
    pub worker_start_failures: AtomicU64,
    pub workers_adopted: AtomicU64,
    pub workers_discarded: AtomicU64,
    /// Connections accepted by the HTTP front (src/front/).
    pub connections_accepted: AtomicU64,
    /// Connections refused with 503: the limit was full of requests in flight.
    pub connections_refused: AtomicU64,
    /// Waiting connections closed to make room for a new one.
    pub connections_evicted: AtomicU64,
    /// Connections closed because a request head took too long.
    pub header_timeouts: AtomicU64,
    /// Keep-alive connections closed after their idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Request bodies that arrived too slowly (answered 408).
    pub body_timeouts: AtomicU64,
    /// Connections open now (a gauge, not a counter; not in the snapshot).
    pub connections_open: AtomicU64,
}

/// A point-in-time copy of the counters, for JSON.
#[derive(Serialize)]
pub struct Snapshot {
    pub executions: u64,
    pub execution_errors: u64,
    pub timeouts: u64,
    pub kernel_failures: u64,
    pub abandoned: u64,
    pub sessions_created: u64,
    pub sessions_released: u64,
    pub sessions_expired: u64,
    pub workers_created: u64,
    pub workers_destroyed: u64,
    pub worker_start_failures: u64,
    pub workers_adopted: u64,
    pub workers_discarded: u64,
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub connections_evicted: u64,
    pub header_timeouts: u64,
    pub idle_timeouts: u64,
    pub body_timeouts: u64,
}

impl Metrics {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Snapshot {
            executions: get(&self.executions),
            execution_errors: get(&self.execution_errors),
            timeouts: get(&self.timeouts),
            kernel_failures: get(&self.kernel_failures),
            abandoned: get(&self.abandoned),
            sessions_created: get(&self.sessions_created),
            sessions_released: get(&self.sessions_released),
            sessions_expired: get(&self.sessions_expired),
            workers_created: get(&self.workers_created),
            workers_destroyed: get(&self.workers_destroyed),
            worker_start_failures: get(&self.worker_start_failures),
            workers_adopted: get(&self.workers_adopted),
            workers_discarded: get(&self.workers_discarded),
            connections_accepted: get(&self.connections_accepted),
            connections_refused: get(&self.connections_refused),
            connections_evicted: get(&self.connections_evicted),
            header_timeouts: get(&self.header_timeouts),
            idle_timeouts: get(&self.idle_timeouts),
            body_timeouts: get(&self.body_timeouts),
        }
    }
}
