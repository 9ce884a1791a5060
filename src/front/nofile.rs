//! The gateway's own open-file limit (RLIMIT_NOFILE), sized for the front.
//!
//! Every connection is a file descriptor, and so is each of the 5 kernel
//! sockets of every worker's kernel. Many systems start processes with a soft
//! limit of 1024, fewer than the default connection limit alone: at start the
//! gateway raises its soft limit toward the hard limit, and when even the hard
//! limit is too small it says so and lowers the connection limit to what fits,
//! so that the front evicts or refuses instead of failing accepts with EMFILE.

/// Descriptors each worker holds: its kernel's shell, iopub, stdin, control and heartbeat sockets.
pub const PER_WORKER: u64 = 5;
/// Descriptors for everything else: listener, Podman API connections, state
/// files, the runtime's own, refused connections being answered.
pub const MARGIN: u64 = 256;
/// The connection limit is never lowered below this.
const MIN_CONNECTIONS: u64 = 16;

/// What to do with the limit, decided from its current values.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// The soft limit to set, if it must go up.
    pub raise_to: Option<u64>,
    /// Connections that fit once it is set.
    pub connections: u64,
}

/// The plan for `max_connections` connections and `workers` workers under
/// the current `soft` and `hard` limits.
pub fn plan(soft: u64, hard: u64, max_connections: u64, workers: u64) -> Plan {
    let others = PER_WORKER * workers + MARGIN;
    let needed = max_connections + others;
    let target = needed.min(hard);
    let raise_to = (soft < target).then_some(target);
    let limit = soft.max(target);
    Plan {
        raise_to,
        connections: max_connections.min(limit.saturating_sub(others).max(MIN_CONNECTIONS)),
    }
}

/// Raises the soft limit as far as needed (and allowed) and returns how many
/// connections fit; logs what it did, and warns when the need does not fit.
pub fn fit(max_connections: usize, workers: usize) -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(
            "could not read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return max_connections;
    }
    let (soft, hard) = (limit.rlim_cur, limit.rlim_max);
    let plan = plan(soft, hard, max_connections as u64, workers as u64);
    let needed = max_connections as u64 + PER_WORKER * workers as u64 + MARGIN;
    if let Some(raise_to) = plan.raise_to {
        limit.rlim_cur = raise_to;
        // SAFETY: setrlimit reads the struct we own.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            tracing::warn!(
                "could not raise RLIMIT_NOFILE from {soft} to {raise_to}: {}",
                std::io::Error::last_os_error()
            );
            return plan_for(soft, max_connections, workers);
        }
        tracing::info!("open files: soft limit raised from {soft} to {raise_to} (hard {hard})");
    }
    if (plan.connections as usize) < max_connections {
        tracing::warn!(
            "open files: the hard limit {hard} is below the {needed} needed \
             (server.max_connections {max_connections} + {PER_WORKER} per worker x {workers} \
             + {MARGIN}); at most {} connections are served. Raise LimitNOFILE / ulimit -n \
             or lower server.max_connections",
            plan.connections
        );
    } else {
        tracing::info!(
            "open files: limit fits {max_connections} connections and {workers} workers \
             (needs {needed})"
        );
    }
    plan.connections as usize
}

/// Connections that fit under an unchanged soft limit.
fn plan_for(soft: u64, max_connections: usize, workers: usize) -> usize {
    plan(soft, soft, max_connections as u64, workers as u64).connections as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_what_is_needed() {
        // 1024 + 5 x 24 + 256 = 1400 needed, the hard limit allows it.
        assert_eq!(
            plan(1024, 524_288, 1024, 24),
            Plan {
                raise_to: Some(1400),
                connections: 1024
            }
        );
    }

    #[test]
    fn a_sufficient_soft_limit_is_left_alone() {
        assert_eq!(
            plan(65_536, 524_288, 1024, 24),
            Plan {
                raise_to: None,
                connections: 1024
            }
        );
    }

    #[test]
    fn a_small_hard_limit_lowers_the_connection_limit() {
        // Hard 1024: 1024 - 120 - 256 = 648 connections fit.
        assert_eq!(
            plan(1024, 1024, 1024, 24),
            Plan {
                raise_to: None,
                connections: 648
            }
        );
        assert_eq!(
            plan(512, 1024, 1024, 24),
            Plan {
                raise_to: Some(1024),
                connections: 648
            }
        );
        // Never below the floor, even when the workers alone do not fit.
        assert_eq!(plan(256, 256, 1024, 100).connections, MIN_CONNECTIONS);
    }
}
