//! The container spec of a worker, built from config alone (pure, unit-tested).
//!
//! Everything that makes a worker locked down at the container level is here
//! in one place: no network, a non-root user, no capabilities, a read-only
//! root with small tmpfs mounts, an init process, and rlimits.

use std::collections::HashMap;
use std::path::Path;

use podman_api::models::{ContainerMount, Namespace, PosixRlimit};
use podman_api::opts::ContainerCreateOpts;

use crate::config::WorkerConfig;

/// Label that marks a container as a code-interpreter worker.
pub const WORKER_LABEL: &str = "io.code-interpreter.worker";
/// Label naming the gateway instance that owns the worker.
pub const INSTANCE_LABEL: &str = "io.code-interpreter.instance";
/// Where the worker directory (connection file, kernel sockets) appears inside.
pub const KERNEL_DIR: &str = "/run/kernel";
/// The sandbox user's home and working directory.
pub const HOME_DIR: &str = "/home/sandbox";
/// uid:gid of the `sandbox` user baked into the worker image.
pub const SANDBOX_USER: &str = "1000:1000";

/// Create options for the worker container `name` with its directory `host_dir`.
pub fn container_opts(config: &WorkerConfig, name: &str, host_dir: &Path) -> ContainerCreateOpts {
    let labels = HashMap::from([
        (WORKER_LABEL.to_string(), "1".to_string()),
        (INSTANCE_LABEL.to_string(), config.instance.clone()),
    ]);
    let mounts = vec![
        bind(host_dir, KERNEL_DIR),
        tmpfs("/tmp", config.tmp_size_mb),
        tmpfs(HOME_DIR, config.home_size_mb),
    ];
    // Podman's REST API does not apply containers.conf default_ulimits, and the
    // host's hard limits may be lower than Podman's defaults: always set both.
    let rlimits = vec![
        rlimit("nofile", config.nofile),
        rlimit("nproc", config.nproc),
    ];
    ContainerCreateOpts::builder()
        .name(name)
        .image(&config.image)
        .labels(labels)
        .user(SANDBOX_USER)
        .work_dir(HOME_DIR)
        .net_namespace(Namespace {
            nsmode: Some("none".into()),
            value: None,
        })
        .drop_capabilities(["ALL"])
        .read_only_fs(true)
        .mounts(mounts)
        .r_limits(rlimits)
        .init(true)
        // podman-api sends stop's timeout under a name Podman ignores; a short
        // stop_timeout at create keeps any stop from taking 10 s.
        .stop_timeout(1)
        .build()
}

fn bind(source: &Path, destination: &str) -> ContainerMount {
    ContainerMount {
        destination: Some(destination.into()),
        source: Some(source.display().to_string()),
        _type: Some("bind".into()),
        options: Some(vec![
            "rw".into(),
            "nosuid".into(),
            "nodev".into(),
            "noexec".into(),
        ]),
        uid_mappings: None,
        gid_mappings: None,
    }
}

fn tmpfs(destination: &str, size_mb: u64) -> ContainerMount {
    ContainerMount {
        destination: Some(destination.into()),
        source: Some("tmpfs".into()),
        _type: Some("tmpfs".into()),
        options: Some(vec![
            "rw".into(),
            "nosuid".into(),
            "nodev".into(),
            format!("size={size_mb}m"),
            "mode=1777".into(),
        ]),
        uid_mappings: None,
        gid_mappings: None,
    }
}

fn rlimit(kind: &str, value: u64) -> PosixRlimit {
    // The type is "nofile", not "RLIMIT_NOFILE": Podman rejects the latter.
    PosixRlimit {
        type_: Some(kind.into()),
        soft: Some(value),
        hard: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn the_spec_is_locked_down() {
        let config = WorkerConfig::default();
        let opts = container_opts(&config, "w1", Path::new("/run/user/1/ci/workers/w1"));
        let spec: Value = serde_json::from_str(&opts.serialize().unwrap()).unwrap();
        assert_eq!(spec["netns"]["nsmode"], "none");
        assert_eq!(spec["user"], SANDBOX_USER);
        assert_eq!(spec["cap_drop"][0], "ALL");
        assert_eq!(spec["read_only_filesystem"], true);
        assert_eq!(spec["labels"][WORKER_LABEL], "1");
        assert_eq!(spec["labels"][INSTANCE_LABEL], "default");
        assert_eq!(spec["r_limits"][0]["type"], "nofile");
        let mounts = spec["mounts"].as_array().unwrap();
        assert_eq!(mounts[0]["destination"], KERNEL_DIR);
        assert_eq!(mounts[0]["source"], "/run/user/1/ci/workers/w1");
    }
}
