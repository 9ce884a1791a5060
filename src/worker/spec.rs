//! The container spec of a worker, built from config alone (pure, unit-tested).
//!
//! The container starts as root with only the capabilities its entrypoint
//! needs to load the firewall and drop privileges (NET_ADMIN, SETUID, SETGID,
//! SETPCAP); the kernel itself then runs as the worker's own sandbox uid with
//! every capability set empty and NoNewPrivs (see
//! containerfiles/worker/worker-entrypoint). Around it: our seccomp profile, a
//! read-only root where every writable mount has a size, an init process,
//! rlimits, cgroup limits where Podman can enforce them, and no network unless
//! allowlisted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;

use podman_api::models::{ContainerMount, LinuxResources, Namespace, PosixRlimit};
use podman_api::opts::ContainerCreateOpts;
use serde_json::json;

use crate::config::{Config, LimitsConfig, NetworkMode};
use crate::host::CgroupSupport;

/// Label that marks a container as a code-interpreter worker.
pub const WORKER_LABEL: &str = "io.code-interpreter.worker";
/// Label naming the gateway instance that owns the worker.
pub const INSTANCE_LABEL: &str = "io.code-interpreter.instance";
/// Where the worker directory (connection file, ruleset, kernel sockets) appears inside.
pub const KERNEL_DIR: &str = "/run/kernel";
/// The sandbox user's home and working directory.
pub const HOME_DIR: &str = "/home/sandbox";
/// What the entrypoint needs before it drops everything.
const ENTRYPOINT_CAPS: [&str; 4] = ["NET_ADMIN", "SETUID", "SETGID", "SETPCAP"];
/// Size of the small tmpfs mounts nothing needs to write much to (/run, /var/tmp), MiB.
/// Podman's `--read-only` would mount them without a size (half the host's memory).
const SMALL_TMPFS_MB: u64 = 1;
/// TCP's buffer autotuning ceiling in the worker's own network namespace (the
/// host's is 4 and 32 MiB). `net.core.{r,w}mem_max` cannot be lowered from a
/// rootless user namespace (runc: permission denied); instead our seccomp
/// profile refuses SO_SNDBUF/SO_RCVBUF, so every socket keeps the 208 KiB
/// defaults.
const SOCKET_BUFFER_MAX: u64 = 212_992;
/// The per-worker account files, written by the gateway into the worker
/// directory and mounted read-only over the image's: the worker's uid is `sandbox`.
pub const PASSWD_FILE: &str = "passwd";
pub const GROUP_FILE: &str = "group";
/// slirp4netns's address for the host's loopback (only with allow_host_loopback).
const SLIRP_HOST_LOOPBACK: &str = "10.0.2.2";

/// Per-worker inputs that are not in the config.
pub struct WorkerSite<'a> {
    pub name: &'a str,
    pub host_dir: &'a Path,
    /// `/etc/hosts` entries for allowlisted host names, resolved by the gateway.
    pub hosts: &'a [(String, IpAddr)],
    /// Whether an allowlisted destination is the host's loopback (via slirp4netns).
    pub needs_host_loopback: bool,
    /// The worker's own sandbox uid (and gid).
    pub uid: u32,
    /// The seccomp profile, a path Podman reads on its host.
    pub seccomp_profile: &'a Path,
}

/// Create options for one worker container.
pub fn container_opts(
    config: &Config,
    cgroups: &CgroupSupport,
    site: &WorkerSite,
) -> ContainerCreateOpts {
    let limits = &config.limits;
    let labels = HashMap::from([
        (WORKER_LABEL.to_string(), "1".to_string()),
        (INSTANCE_LABEL.to_string(), config.worker.instance.clone()),
    ]);
    // Every writable mount has a size: without a memory cgroup, tmpfs pages
    // are memory RLIMIT_AS does not count. (/dev/shm is sized by shm_size;
    // /dev belongs to container root; /dev/mqueue is bounded per uid by
    // RLIMIT_MSGQUEUE.)
    let mounts = vec![
        tmpfs("/run", SMALL_TMPFS_MB),
        bind(site.host_dir, KERNEL_DIR),
        read_only_file(&site.host_dir.join(PASSWD_FILE), "/etc/passwd"),
        read_only_file(&site.host_dir.join(GROUP_FILE), "/etc/group"),
        tmpfs("/tmp", limits.tmp_mb),
        tmpfs("/var/tmp", SMALL_TMPFS_MB),
        tmpfs(HOME_DIR, limits.disk_mb),
    ];
    // Podman's REST API does not apply containers.conf default_ulimits, and the
    // host's hard limits may be lower than Podman's defaults: always set both.
    let rlimits = vec![
        rlimit("nofile", limits.nofile),
        rlimit("nproc", limits.nproc),
    ];
    // Podman cannot set RLIMIT_AS; the entrypoint applies these with prlimit.
    let env = HashMap::from([
        (
            "CI_LIMIT_AS".to_string(),
            (limits.address_space_mb * 1024 * 1024).to_string(),
        ),
        (
            "CI_LIMIT_FSIZE".to_string(),
            (limits.disk_mb * 1024 * 1024).to_string(),
        ),
        // The entrypoint drops to this uid (1000 when unset: older gateways).
        ("CI_SANDBOX_UID".to_string(), site.uid.to_string()),
    ]);
    let mut builder = ContainerCreateOpts::builder()
        .name(site.name)
        .image(&config.worker.image)
        .labels(labels)
        .env(env)
        .user("0:0")
        .work_dir(HOME_DIR)
        .drop_capabilities(["ALL"])
        .add_capabilities(ENTRYPOINT_CAPS)
        .read_only_fs(true)
        .mounts(mounts)
        .shm_size((limits.shm_mb * 1024 * 1024) as i64)
        .sysctl(socket_buffer_sysctls())
        .seccomp_profile_path(site.seccomp_profile.display().to_string())
        .r_limits(rlimits)
        .init(true)
        // podman-api sends stop's timeout under a name Podman ignores; a short
        // stop_timeout at create keeps any stop from taking 10 s.
        .stop_timeout(1);
    builder = match config.network.mode {
        NetworkMode::None => builder.net_namespace(namespace("none")),
        NetworkMode::Allowlist => {
            let mut options = vec!["enable_ipv6=false".to_string()];
            if site.needs_host_loopback {
                options.push("allow_host_loopback=true".into());
            }
            builder
                .net_namespace(namespace("slirp4netns"))
                .network_options(HashMap::from([("slirp4netns".to_string(), options)]))
                .hosts_add(site.hosts.iter().map(|(name, ip)| format!("{name}:{ip}")))
        }
    };
    if let Some(resources) = cgroup_limits(limits, cgroups) {
        builder = builder.resource_limits(resources);
    }
    builder.build()
}

/// Caps on TCP's socket buffers in the worker's network namespace.
fn socket_buffer_sysctls() -> HashMap<String, String> {
    let max = SOCKET_BUFFER_MAX;
    HashMap::from([
        ("net.ipv4.tcp_wmem".into(), format!("4096 16384 {max}")),
        ("net.ipv4.tcp_rmem".into(), format!("4096 131072 {max}")),
    ])
}

/// Whether an allowlisted network includes slirp4netns's host-loopback address.
pub fn is_host_loopback(addr: IpAddr, prefix: u8) -> bool {
    let target: IpAddr = SLIRP_HOST_LOOPBACK.parse().expect("valid address");
    match (addr, target) {
        (IpAddr::V4(net), IpAddr::V4(host)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(net) & mask == u32::from(host) & mask
        }
        _ => false,
    }
}

/// cgroup limits for the controllers Podman can enforce; None when it can enforce none.
/// (Podman 5 on cgroup v2 without a controller accepts the limit at create and
/// then fails to start the container, so never ask for an unavailable one.)
fn cgroup_limits(limits: &LimitsConfig, cgroups: &CgroupSupport) -> Option<LinuxResources> {
    let mut resources = serde_json::Map::new();
    if cgroups.memory {
        let bytes = limits.memory_mb * 1024 * 1024;
        resources.insert("memory".into(), json!({"limit": bytes, "swap": bytes}));
    }
    if cgroups.pids {
        resources.insert("pids".into(), json!({"limit": limits.pids}));
    }
    if cgroups.cpu {
        let period: u64 = 100_000;
        let quota = (limits.cpus * period as f64) as i64;
        resources.insert("cpu".into(), json!({"period": period, "quota": quota}));
    }
    if resources.is_empty() {
        return None;
    }
    Some(serde_json::from_value(resources.into()).expect("LinuxResources from its own fields"))
}

fn namespace(mode: &str) -> Namespace {
    Namespace {
        nsmode: Some(mode.into()),
        value: None,
    }
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

fn read_only_file(source: &Path, destination: &str) -> ContainerMount {
    ContainerMount {
        destination: Some(destination.into()),
        source: Some(source.display().to_string()),
        _type: Some("bind".into()),
        options: Some(vec![
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
            "noexec".into(),
        ]),
        uid_mappings: None,
        gid_mappings: None,
    }
}

/// `/etc/passwd` and `/etc/group` of a worker whose sandbox uid is `uid`.
pub fn account_files(uid: u32) -> (String, String) {
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
         sandbox:x:{uid}:{uid}:sandbox:{HOME_DIR}:/bin/bash\n"
    );
    let group = format!("root:x:0:\nnogroup:x:65534:\nsandbox:x:{uid}:\n");
    (passwd, group)
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

    fn spec(config: &Config, cgroups: &CgroupSupport) -> Value {
        let site = WorkerSite {
            name: "w1",
            host_dir: Path::new("/run/user/1/ci/workers/w1"),
            hosts: &[("mirror.test".into(), "192.0.2.7".parse().unwrap())],
            needs_host_loopback: true,
            uid: 10_007,
            seccomp_profile: Path::new("/run/user/1/ci/seccomp-worker.json"),
        };
        let opts = container_opts(config, cgroups, &site);
        serde_json::from_str(&opts.serialize().unwrap()).unwrap()
    }

    #[test]
    fn the_spec_is_locked_down() {
        let spec = spec(&Config::default(), &CgroupSupport::default());
        assert_eq!(spec["netns"]["nsmode"], "none");
        assert!(spec.get("hostadd").is_none());
        assert_eq!(spec["cap_drop"], json!(["ALL"]));
        assert_eq!(spec["cap_add"], json!(ENTRYPOINT_CAPS));
        assert_eq!(spec["read_only_filesystem"], true);
        assert_eq!(spec["init"], true);
        assert_eq!(spec["labels"][WORKER_LABEL], "1");
        assert_eq!(spec["labels"][INSTANCE_LABEL], "default");
        assert_eq!(spec["r_limits"][0]["type"], "nofile");
        assert_eq!(spec["env"]["CI_LIMIT_AS"], (2048u64 << 20).to_string());
        assert_eq!(spec["env"]["CI_SANDBOX_UID"], "10007");
        assert_eq!(
            spec["seccomp_profile_path"],
            "/run/user/1/ci/seccomp-worker.json"
        );
        assert_eq!(spec["shm_size"], 64u64 << 20);
        assert_eq!(spec["sysctl"]["net.ipv4.tcp_rmem"], "4096 131072 212992");
        let mounts = spec["mounts"].as_array().unwrap();
        let mount = |dest: &str| {
            mounts
                .iter()
                .find(|m| m["destination"] == dest)
                .unwrap_or_else(|| panic!("no mount on {dest}"))
        };
        assert_eq!(mount(KERNEL_DIR)["source"], "/run/user/1/ci/workers/w1");
        assert_eq!(
            mount("/etc/passwd")["source"],
            "/run/user/1/ci/workers/w1/passwd"
        );
        assert!(mount("/etc/passwd")["options"]
            .as_array()
            .unwrap()
            .contains(&json!("ro")));
        assert!(mount(HOME_DIR)["options"]
            .as_array()
            .unwrap()
            .contains(&json!("size=500m")));
        // Every writable mount has a size.
        for m in mounts.iter().filter(|m| m["type"] == "tmpfs") {
            let options = m["options"].as_array().unwrap();
            assert!(
                options
                    .iter()
                    .any(|o| o.as_str().unwrap().starts_with("size=")),
                "{m}"
            );
        }
        for dest in ["/run", "/var/tmp", "/tmp"] {
            mount(dest);
        }
        assert!(
            spec.get("resource_limits").is_none(),
            "no cgroup limits Podman cannot enforce"
        );
    }

    #[test]
    fn cgroup_limits_only_for_enforced_controllers() {
        let cgroups = CgroupSupport::new("v2", true, vec!["memory".into(), "cpu".into()]);
        let spec = spec(&Config::default(), &cgroups);
        let resources = &spec["resource_limits"];
        assert_eq!(resources["memory"]["limit"], 1024u64 << 20);
        assert_eq!(resources["cpu"]["quota"], 100_000);
        assert!(resources["pids"].is_null());
    }

    #[test]
    fn allowlist_mode_gets_slirp_and_host_entries() {
        let mut config = Config::default();
        config.network.mode = NetworkMode::Allowlist;
        let spec = spec(&config, &CgroupSupport::default());
        assert_eq!(spec["netns"]["nsmode"], "slirp4netns");
        let options = &spec["network_options"]["slirp4netns"];
        assert!(options
            .as_array()
            .unwrap()
            .contains(&json!("allow_host_loopback=true")));
        assert_eq!(spec["hostadd"], json!(["mirror.test:192.0.2.7"]));
    }

    #[test]
    fn the_sandbox_uid_is_named_sandbox() {
        let (passwd, group) = account_files(10_042);
        assert!(passwd.contains("\nsandbox:x:10042:10042:sandbox:/home/sandbox:/bin/bash\n"));
        assert!(passwd.starts_with("root:x:0:0:"));
        assert!(group.ends_with("sandbox:x:10042:\n"));
    }

    #[test]
    fn host_loopback_detection() {
        assert!(is_host_loopback("10.0.2.2".parse().unwrap(), 32));
        assert!(is_host_loopback("10.0.0.0".parse().unwrap(), 8));
        assert!(!is_host_loopback("10.0.3.0".parse().unwrap(), 24));
        assert!(!is_host_loopback("::1".parse().unwrap(), 128));
    }
}
