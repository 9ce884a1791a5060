//! What this host can enforce and hold: cgroup version, delegated controllers,
//! memory, and from that the default capacity.
//!
//! Detected at start, reported in `/status` and the startup log, so an operator
//! sees whether container limits are really enforced here.

use std::fs;

use serde::Serialize;

/// Facts about the host, detected once at start.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    /// 1 (legacy or hybrid) or 2 (unified).
    pub cgroup_version: u8,
    /// Controllers delegated to this user (cgroup v2 only).
    pub delegated_controllers: Vec<String>,
    /// Whether Podman can enforce memory and pids limits on rootless containers.
    pub cgroup_limits_enforced: bool,
    pub total_memory_bytes: u64,
    pub cpus: usize,
}

impl HostInfo {
    pub fn detect() -> Self {
        let unified = fs::metadata("/sys/fs/cgroup/cgroup.controllers").is_ok();
        let delegated = if unified {
            delegated_controllers()
        } else {
            Vec::new()
        };
        let enforced = unified
            && ["memory", "pids"]
                .iter()
                .all(|c| delegated.iter().any(|d| d == c));
        let total_memory_bytes = sysinfo::System::new()
            .map(|mut system| {
                system.refresh_memory();
                system.total_memory()
            })
            .unwrap_or(0);
        Self {
            cgroup_version: if unified { 2 } else { 1 },
            delegated_controllers: delegated,
            cgroup_limits_enforced: enforced,
            total_memory_bytes,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }

    /// Workers this host can hold: memory less 1 GiB for the host, divided by
    /// the memory one worker may use; at least 1.
    pub fn capacity(&self, worker_memory_mb: u64) -> usize {
        let reserve = 1024 * 1024 * 1024;
        let per_worker = worker_memory_mb.max(1) * 1024 * 1024;
        (self.total_memory_bytes.saturating_sub(reserve) / per_worker).max(1) as usize
    }
}

/// Controllers available in this process's own cgroup (what systemd delegated).
fn delegated_controllers() -> Vec<String> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path = own
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .unwrap_or("/")
        .trim();
    fs::read_to_string(format!("/sys/fs/cgroup{path}/cgroup.controllers"))
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_follows_memory() {
        let host = HostInfo {
            cgroup_version: 2,
            delegated_controllers: vec![],
            cgroup_limits_enforced: false,
            total_memory_bytes: 24 * 1024 * 1024 * 1024,
            cpus: 2,
        };
        assert_eq!(host.capacity(1024), 23);
        assert_eq!(host.capacity(100_000), 1);
    }
}
