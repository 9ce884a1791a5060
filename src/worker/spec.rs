//! The container spec of a worker, built from config alone, in our own types
//! (pure; `podman.rs` turns it into Podman's create options, and its tests
//! check what reaches Podman).
//!
//! The container starts as root with only the capabilities its entrypoint
//! needs to load the firewall and drop privileges (NET_ADMIN, SETUID, SETGID,
//! SETPCAP); the kernel itself then runs as the worker's own sandbox uid with
//! every capability set empty and NoNewPrivs (see
//! containerfiles/worker/worker-entrypoint). Around it: our seccomp profile, a
//! read-only root where every writable mount has a size, an init process,
//! rlimits, cgroup limits where Podman can enforce them, and no network unless
//! the mode is `allowlist` or `internet`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use super::isolation;
use super::network::{Cidr, SLIRP_RESOLVER};
use crate::config::{Config, LimitsConfig, NetworkMode, WorkerRuntime};
use crate::host::CgroupSupport;

/// Label that marks a container as a code-interpreter worker.
pub const WORKER_LABEL: &str = "io.code-interpreter.worker";
/// Label naming the gateway instance that owns the worker.
pub const INSTANCE_LABEL: &str = "io.code-interpreter.instance";
/// Where the worker directory (connection file, ruleset, kernel sockets) appears inside.
pub const KERNEL_DIR: &str = "/run/kernel";
/// The sandbox user's home and working directory: `/sandbox`, as in the
/// original service. The image makes `/home/sandbox` (our earlier path) a
/// symlink to it, so code written for either works.
pub const WORK_DIR: &str = "/sandbox";
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
/// The variable that tells the entrypoint which uid to drop to.
pub const SANDBOX_UID_ENV: &str = "CI_SANDBOX_UID";
/// slirp4netns's address for the host's loopback (only with allow_host_loopback).
const SLIRP_HOST_LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2));

/// What the entrypoint needs before it drops everything: no NET_ADMIN under
/// gVisor, where there is no firewall to load.
fn entrypoint_caps(runtime: WorkerRuntime) -> Vec<String> {
    let caps = ENTRYPOINT_CAPS.iter().map(|cap| cap.to_string());
    match runtime {
        WorkerRuntime::Runc => caps.collect(),
        WorkerRuntime::Gvisor => caps.filter(|cap| cap != "NET_ADMIN").collect(),
    }
}

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

/// A worker container, described without naming any runtime's types:
/// `podman.rs` turns it into Podman's create options field by field.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub env: HashMap<String, String>,
    /// `uid:gid` the container's first process starts as.
    pub user: String,
    pub work_dir: String,
    pub drop_capabilities: Vec<String>,
    pub add_capabilities: Vec<String>,
    pub read_only_root: bool,
    /// In this order.
    pub mounts: Vec<Mount>,
    pub shm_size_bytes: u64,
    pub sysctls: HashMap<String, String>,
    /// A path the runtime reads on its host.
    pub seccomp_profile: PathBuf,
    pub rlimits: Vec<Rlimit>,
    /// An init process as PID 1 (reaps orphans).
    pub init: bool,
    pub stop_timeout_secs: u64,
    pub network: Network,
    /// Only for the controllers the runtime can enforce; None when it can enforce none.
    pub cgroup_limits: Option<CgroupLimits>,
}

/// One mount of a worker container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mount {
    /// A tmpfs of `size_mb` MiB, mode 1777, nosuid and nodev.
    Tmpfs { destination: String, size_mb: u64 },
    /// A host path, nosuid, nodev and noexec.
    Bind {
        source: PathBuf,
        destination: String,
        read_only: bool,
    },
}

/// A resource limit, soft and hard alike; `kind` as Podman names it ("nofile").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rlimit {
    pub kind: String,
    pub value: u64,
}

/// The worker's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Network {
    /// A network namespace with no interface but loopback.
    None,
    /// slirp4netns without IPv6, and `/etc/hosts` entries for allowlisted names.
    Slirp {
        allow_host_loopback: bool,
        hosts: Vec<(String, IpAddr)>,
        /// The only nameservers of the worker's resolv.conf; empty: Podman's
        /// default (slirp4netns's resolver, then the host's).
        dns_servers: Vec<IpAddr>,
    },
}

/// cgroup limits of one worker (None: not enforced here, not asked for).
#[derive(Clone, Debug, PartialEq)]
pub struct CgroupLimits {
    /// Memory and memory + swap, bytes.
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// CPU bandwidth: quota per period, microseconds.
    pub cpu: Option<CpuQuota>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuQuota {
    pub period: u64,
    pub quota: i64,
}

/// The spec of one worker container.
pub fn container_spec(
    config: &Config,
    cgroups: &CgroupSupport,
    site: &WorkerSite,
) -> ContainerSpec {
    let limits = &config.limits;
    let labels = HashMap::from([
        (WORKER_LABEL.to_string(), "1".to_string()),
        (INSTANCE_LABEL.to_string(), config.worker.instance.clone()),
    ]);
    // Every writable mount has a size: without a memory cgroup, tmpfs pages
    // are memory RLIMIT_AS does not count. (/dev/shm is sized by shm_size;
    // /dev belongs to container root; /dev/mqueue is bounded per uid by
    // RLIMIT_MSGQUEUE.)
    let mut mounts = vec![
        tmpfs("/run", SMALL_TMPFS_MB),
        bind(site.host_dir, KERNEL_DIR, false),
        bind(&site.host_dir.join(PASSWD_FILE), "/etc/passwd", true),
        bind(&site.host_dir.join(GROUP_FILE), "/etc/group", true),
        tmpfs("/tmp", limits.tmp_mb),
        tmpfs("/var/tmp", SMALL_TMPFS_MB),
        tmpfs(WORK_DIR, limits.disk_mb),
    ];
    // The operator's read-only directories (checked in config and at start).
    mounts.extend((config.worker.mounts.iter()).map(|m| bind(&m.source, &m.target, true)));
    // Podman's REST API does not apply containers.conf default_ulimits, and the
    // host's hard limits may be lower than Podman's defaults: always set both.
    let rlimits = vec![
        rlimit("nofile", limits.nofile),
        rlimit("nproc", limits.nproc),
        rlimit("fsize", limits.disk_mb * 1024 * 1024),
    ];
    // Podman cannot set RLIMIT_AS: the entrypoint does, with the shell's ulimit.
    let env = HashMap::from([
        (
            "CI_LIMIT_AS".to_string(),
            (limits.address_space_mb * 1024 * 1024).to_string(),
        ),
        // The entrypoint drops to this uid (1000 when unset: older gateways).
        (SANDBOX_UID_ENV.to_string(), site.uid.to_string()),
        (
            isolation::FIREWALL_ENV.to_string(),
            isolation::firewall(config.worker.runtime).to_string(),
        ),
    ]);
    let network = match config.network.mode {
        NetworkMode::None => Network::None,
        NetworkMode::Allowlist => Network::Slirp {
            allow_host_loopback: site.needs_host_loopback,
            hosts: site.hosts.to_vec(),
            dns_servers: Vec::new(),
        },
        // The host's loopback stays closed in slirp4netns too (its firewall
        // drops 10.0.2.2 as well); DNS goes only to slirp4netns's resolver,
        // whose queries the host's resolvers answer.
        NetworkMode::Internet => Network::Slirp {
            allow_host_loopback: false,
            hosts: Vec::new(),
            dns_servers: vec![SLIRP_RESOLVER],
        },
    };
    ContainerSpec {
        name: site.name.to_string(),
        image: config.worker.image.clone(),
        labels,
        env,
        user: "0:0".into(),
        work_dir: WORK_DIR.into(),
        drop_capabilities: vec!["ALL".into()],
        add_capabilities: entrypoint_caps(config.worker.runtime),
        read_only_root: true,
        mounts,
        shm_size_bytes: limits.shm_mb * 1024 * 1024,
        sysctls: socket_buffer_sysctls(),
        seccomp_profile: site.seccomp_profile.to_path_buf(),
        rlimits,
        init: true,
        // podman-api sends stop's timeout under a name Podman ignores; a short
        // stop_timeout at create keeps any stop from taking 10 s.
        stop_timeout_secs: 1,
        network,
        cgroup_limits: cgroup_limits(limits, cgroups),
    }
}

#[cfg(test)]
impl ContainerSpec {
    /// The worker directory: the host side of the bind mount on `KERNEL_DIR`.
    pub fn worker_dir(&self) -> Option<&Path> {
        self.mounts.iter().find_map(|m| match m {
            Mount::Bind {
                source,
                destination,
                ..
            } if destination == KERNEL_DIR => Some(source.as_path()),
            _ => None,
        })
    }
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
    Cidr { addr, prefix }.contains(SLIRP_HOST_LOOPBACK)
}

/// cgroup limits for the controllers Podman can enforce; None when it can enforce none.
/// (Podman 5 on cgroup v2 without a controller accepts the limit at create and
/// then fails to start the container, so never ask for an unavailable one.)
fn cgroup_limits(limits: &LimitsConfig, cgroups: &CgroupSupport) -> Option<CgroupLimits> {
    let resources = CgroupLimits {
        memory_bytes: cgroups.memory.then_some(limits.memory_mb * 1024 * 1024),
        pids: cgroups.pids.then_some(limits.pids),
        cpu: cgroups.cpu.then(|| {
            let period: u64 = 100_000;
            CpuQuota {
                period,
                quota: (limits.cpus * period as f64) as i64,
            }
        }),
    };
    let any =
        resources.memory_bytes.is_some() || resources.pids.is_some() || resources.cpu.is_some();
    any.then_some(resources)
}

fn bind(source: &Path, destination: &str, read_only: bool) -> Mount {
    Mount::Bind {
        source: source.to_path_buf(),
        destination: destination.into(),
        read_only,
    }
}

/// `/etc/passwd` and `/etc/group` of a worker whose sandbox uid is `uid`.
pub fn account_files(uid: u32) -> (String, String) {
    let passwd = format!(
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
         sandbox:x:{uid}:{uid}:sandbox:{WORK_DIR}:/bin/bash\n"
    );
    let group = format!("root:x:0:\nnogroup:x:65534:\nsandbox:x:{uid}:\n");
    (passwd, group)
}

fn tmpfs(destination: &str, size_mb: u64) -> Mount {
    Mount::Tmpfs {
        destination: destination.into(),
        size_mb,
    }
}

fn rlimit(kind: &str, value: u64) -> Rlimit {
    Rlimit {
        kind: kind.into(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sandbox_uid_is_named_sandbox() {
        let (passwd, group) = account_files(10_042);
        assert!(passwd.contains("\nsandbox:x:10042:10042:sandbox:/sandbox:/bin/bash\n"));
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
