//! What this host has and what its Podman can enforce (what it can hold is
//! decided per worker, from measured memory: `capacity.rs`).
//!
//! Memory and CPUs come from `sysinfo`; cgroup support comes from Podman's own
//! report (cgroup version, controllers it may use, rootless or not), which is
//! right also when the gateway itself runs in a container. Reported in
//! `/status` and the startup log, so an operator sees which limits are real.

use serde::Serialize;

/// Facts about the host, detected once at start.
#[derive(Clone, Debug, Serialize)]
pub struct HostInfo {
    pub total_memory_bytes: u64,
    pub cpus: usize,
    pub cgroups: CgroupSupport,
}

/// Which cgroup limits Podman can apply to our workers.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CgroupSupport {
    /// "v1" or "v2" as Podman reports it; "unknown" when Podman did not answer.
    pub version: String,
    pub rootless: bool,
    /// Controllers Podman may use (for rootless cgroup v2: those delegated to the user).
    pub controllers: Vec<String>,
    pub memory: bool,
    pub pids: bool,
    pub cpu: bool,
}

impl CgroupSupport {
    /// Rootful Podman controls every controller; rootless Podman only on
    /// cgroup v2 with the controller delegated (v1 rootless: none at all).
    pub fn new(version: &str, rootless: bool, controllers: Vec<String>) -> Self {
        let usable = |name: &str| {
            let listed = controllers.iter().any(|c| c == name);
            match (version, rootless) {
                ("v2", _) => listed,
                ("v1", false) => true,
                _ => false,
            }
        };
        Self {
            memory: usable("memory"),
            pids: usable("pids"),
            cpu: usable("cpu"),
            version: version.to_string(),
            rootless,
            controllers,
        }
    }

    /// True when memory and pids limits are both enforced.
    pub fn enforced(&self) -> bool {
        self.memory && self.pids
    }
}

impl HostInfo {
    pub fn detect(cgroups: CgroupSupport) -> Self {
        let total_memory_bytes = sysinfo::System::new()
            .map(|mut system| {
                system.refresh_memory();
                system.total_memory()
            })
            .unwrap_or(0);
        Self {
            total_memory_bytes,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cgroups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enforcement_depends_on_version_rootlessness_and_delegation() {
        let all = || vec!["cpu".to_string(), "memory".into(), "pids".into()];
        assert!(!CgroupSupport::new("v1", true, vec![]).enforced());
        assert!(CgroupSupport::new("v1", false, vec![]).enforced());
        assert!(CgroupSupport::new("v2", true, all()).enforced());
        let partial = CgroupSupport::new("v2", true, vec!["memory".into()]);
        assert!(partial.memory && !partial.pids && !partial.enforced());
        assert!(!CgroupSupport::new("unknown", false, all()).enforced());
    }
}
