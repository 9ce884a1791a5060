//! Counters that `/status` reports, shared by every part of the gateway.
//!
//! One list: serde serialises the atomics themselves, so a new counter is a
//! new field and nothing else.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Monotonic counters since the gateway started.
#[derive(Default, Serialize)]
pub struct Metrics {
    pub executions: AtomicU64,
    pub execution_errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub kernel_failures: AtomicU64,
    /// Workers destroyed because they broke the protocol or a bound
    /// (oversized or malformed frames, floods, forged replies).
    pub protocol_violations: AtomicU64,
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
    /// Connections open now (a gauge, not a counter: `/status` shows it apart).
    #[serde(skip)]
    pub connections_open: AtomicU64,
}

impl Metrics {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_reported() {
        let metrics = Metrics::default();
        Metrics::bump(&metrics.protocol_violations);
        let json = serde_json::to_value(&metrics).unwrap();
        assert_eq!(json["protocol_violations"], 1);
        assert_eq!(json["executions"], 0);
        assert_eq!(json.as_object().unwrap().len(), 20);
        assert!(json.get("connections_open").is_none());
    }
}
