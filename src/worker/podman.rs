//! The one place that talks to Podman: over its REST socket via `podman-api`,
//! and `podman unshare` for the clean-up that needs our user namespace. It
//! implements the worker layer's [`Runtime`] and turns our [`ContainerSpec`]
//! into Podman's create options.
//!
//! Known defects of podman-api 0.11 are worked around here and nowhere else:
//! stop timeouts are ignored (we force-remove with timeout 0 instead of
//! stopping) and `no_new_privileges` is misspelt (the worker entrypoint sets
//! NoNewPrivs itself). Each call has a timeout, so a hung Podman never hangs us.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use podman_api::models::{ContainerMount, LinuxResources, Namespace, PosixRlimit};
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts,
    ContainerLogsOpts,
};
use podman_api::Podman;
use serde_json::json;
use tokio::time::timeout;

use super::runtime::{Runtime, Started};
use super::spec::{CgroupLimits, ContainerSpec, Mount, Network, Rlimit};
use super::spec::{INSTANCE_LABEL, WORKER_LABEL};
use crate::host::CgroupSupport;

/// Longest any single Podman API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a dead container's log may take to read (it only adds detail to an error).
const LOG_TIMEOUT: Duration = Duration::from_secs(2);

/// What a Podman service reports about itself.
#[derive(Debug, Clone)]
pub struct PodmanFacts {
    pub version: String,
    pub cgroups: CgroupSupport,
    /// Rootless: (first container uid, count) ranges its user namespace maps.
    pub mapped_uids: Option<Vec<(u32, u32)>>,
    /// The OCI runtime its containers get (see isolation.rs).
    pub oci_runtime: OciRuntime,
}

/// A Podman service's default OCI runtime, as `podman info` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OciRuntime {
    /// The executable (or, without a path, the name).
    pub path: String,
    /// What it printed for `--version`.
    pub version: String,
}

/// A handle on the Podman service.
#[derive(Clone)]
pub struct PodmanRuntime {
    podman: Podman,
}

impl PodmanRuntime {
    pub fn new(socket: &Path) -> Self {
        Self {
            podman: Podman::unix(socket),
        }
    }

    /// The Podman server's version, what cgroup limits it can apply, (rootless)
    /// the container uids its user namespace maps, and its default OCI
    /// runtime; also proves the socket answers.
    pub async fn info(&self) -> Result<PodmanFacts> {
        let info = bounded("asking Podman for its info", self.podman.info()).await?;
        let version = info
            .version
            .and_then(|v| v.version)
            .unwrap_or_else(|| "unknown".into());
        let host = info
            .host
            .ok_or_else(|| anyhow!("Podman's info has no host section"))?;
        let rootless = host.security.and_then(|s| s.rootless).unwrap_or(true);
        // Rootless: ranges (first container uid, size) the user namespace maps.
        let mapped = host.id_mappings.and_then(|m| m.uidmap).map(|maps| {
            maps.iter()
                .filter_map(|m| {
                    Some((
                        u32::try_from(m.container_id?).ok()?,
                        u32::try_from(m.size?).ok()?,
                    ))
                })
                .collect::<Vec<_>>()
        });
        let cgroups = CgroupSupport::new(
            host.cgroup_version.as_deref().unwrap_or("unknown"),
            rootless,
            host.cgroup_controllers.unwrap_or_default(),
        );
        let oci_runtime = host
            .oci_runtime
            .map(|r| OciRuntime {
                path: r.path.or(r.name).unwrap_or_default(),
                version: r.version.unwrap_or_default(),
            })
            .unwrap_or_default();
        Ok(PodmanFacts {
            version,
            cgroups,
            mapped_uids: mapped.filter(|_| rootless),
            oci_runtime,
        })
    }

    /// The exit code of a container that is no longer running; None while it runs.
    pub async fn exit_code(&self, id: &str) -> Result<Option<i32>> {
        let inspect = bounded(
            "inspecting a worker container",
            self.podman.containers().get(id).inspect(),
        )
        .await?;
        // Unknown counts as running; "created" is not yet running, not exited.
        Ok(inspect.state.and_then(|state| {
            let running = state.running.unwrap_or(true)
                || matches!(state.status.as_deref(), Some("created" | "initialized"));
            (!running).then(|| state.exit_code.unwrap_or(-1))
        }))
    }

    /// Creates and starts a container; returns its id and Podman's warnings.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<Started> {
        let begun = std::time::Instant::now();
        let created = bounded(
            "creating a worker container",
            self.podman.containers().create(&create_opts(spec)),
        )
        .await?;
        let create_time = begun.elapsed();
        let container = self.podman.containers().get(&created.id);
        if let Err(e) = bounded("starting a worker container", container.start(None)).await {
            let _ = self.remove(&created.id).await;
            return Err(e);
        }
        Ok(Started {
            id: created.id,
            warnings: created.warnings,
            create_time,
        })
    }

    /// Removes a container, killing it first; a missing container is not an error.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let opts = ContainerDeleteOpts::builder()
            .force(true)
            .timeout(0)
            .build();
        match bounded(
            "removing a worker container",
            self.podman.containers().get(id).delete(&opts),
        )
        .await
        {
            Ok(()) => Ok(()),
            Err(e) if format!("{e:#}").contains("no such container") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The last lines a (stopped) container wrote to stdout and stderr, joined;
    /// empty when Podman has none or does not answer within a few seconds.
    pub async fn log_tail(&self, id: &str, lines: usize) -> String {
        let opts = ContainerLogsOpts::builder()
            .stdout(true)
            .stderr(true)
            .tail(lines.to_string())
            .build();
        let container = self.podman.containers().get(id);
        let collect = async {
            let mut text = Vec::new();
            let mut chunks = container.logs(&opts);
            while let Some(Ok(chunk)) = chunks.next().await {
                text.extend(Vec::<u8>::from(chunk));
            }
            text
        };
        let text = timeout(LOG_TIMEOUT, collect).await.unwrap_or_default();
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    /// Ids of all worker containers of `instance`, running or not.
    pub async fn list_workers(&self, instance: &str) -> Result<Vec<String>> {
        let opts = ContainerListOpts::builder()
            .all(true)
            // One label filter only: how Podman combines several differs by version.
            .filter([ContainerListFilter::LabelKeyVal(
                INSTANCE_LABEL.into(),
                instance.into(),
            )])
            .build();
        let list = bounded(
            "listing worker containers",
            self.podman.containers().list(&opts),
        )
        .await?;
        Ok(list
            .into_iter()
            .filter(|c| {
                c.labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(WORKER_LABEL))
            })
            .filter_map(|c| c.id)
            .collect())
    }

    /// Removes `dir` from inside our user namespace (`podman unshare`), where
    /// the files a sandbox uid left are ours to remove (control path only).
    pub async fn remove_as_root(&self, dir: &Path) -> Result<()> {
        let status = tokio::process::Command::new("podman")
            .args(["unshare", "rm", "-rf", "--"])
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .status();
        match timeout(CALL_TIMEOUT, status).await {
            Ok(Ok(s)) if s.success() => Ok(()),
            Ok(Ok(s)) => Err(anyhow!("podman unshare rm -rf {}: {s}", dir.display())),
            Ok(Err(e)) => Err(anyhow!("running podman unshare: {e}")),
            Err(_) => Err(anyhow!(
                "podman unshare rm -rf {} took longer than {CALL_TIMEOUT:?}",
                dir.display()
            )),
        }
    }
}

impl Runtime for PodmanRuntime {
    fn run<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<Started>> {
        PodmanRuntime::run(self, spec).boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        PodmanRuntime::remove(self, id).boxed()
    }

    fn exit_code<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<i32>>> {
        PodmanRuntime::exit_code(self, id).boxed()
    }

    fn log_tail<'a>(&'a self, id: &'a str, lines: usize) -> BoxFuture<'a, String> {
        PodmanRuntime::log_tail(self, id, lines).boxed()
    }

    fn list_workers<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        PodmanRuntime::list_workers(self, instance).boxed()
    }

    fn remove_as_root<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<()>> {
        PodmanRuntime::remove_as_root(self, dir).boxed()
    }
}

/// Podman's create options for a worker, field by field from our spec.
pub fn create_opts(spec: &ContainerSpec) -> ContainerCreateOpts {
    let mut builder = ContainerCreateOpts::builder()
        .name(&spec.name)
        .image(&spec.image)
        .labels(spec.labels.clone())
        .env(spec.env.clone())
        .user(&spec.user)
        .work_dir(&spec.work_dir)
        .drop_capabilities(spec.drop_capabilities.iter())
        .add_capabilities(spec.add_capabilities.iter())
        .read_only_fs(spec.read_only_root)
        .mounts(spec.mounts.iter().map(mount))
        .shm_size(spec.shm_size_bytes as i64)
        .sysctl(spec.sysctls.clone())
        .seccomp_profile_path(spec.seccomp_profile.display().to_string())
        .r_limits(spec.rlimits.iter().map(rlimit))
        .init(spec.init)
        .stop_timeout(spec.stop_timeout_secs);
    builder = match &spec.network {
        Network::None => builder.net_namespace(namespace("none")),
        Network::Slirp {
            allow_host_loopback,
            hosts,
            dns_servers,
        } => {
            let mut options = vec!["enable_ipv6=false".to_string()];
            if *allow_host_loopback {
                options.push("allow_host_loopback=true".into());
            }
            let builder = builder
                .net_namespace(namespace("slirp4netns"))
                .network_options(HashMap::from([("slirp4netns".to_string(), options)]))
                .hosts_add(hosts.iter().map(|(name, ip)| format!("{name}:{ip}")));
            if dns_servers.is_empty() {
                builder
            } else {
                builder.dns_server(dns_servers.iter().map(IpAddr::to_string))
            }
        }
    };
    if let Some(limits) = &spec.cgroup_limits {
        builder = builder.resource_limits(resources(limits));
    }
    builder.build()
}

/// Podman's resource limits: only the controllers that are set.
fn resources(limits: &CgroupLimits) -> LinuxResources {
    let mut resources = serde_json::Map::new();
    if let Some(bytes) = limits.memory_bytes {
        resources.insert("memory".into(), json!({"limit": bytes, "swap": bytes}));
    }
    if let Some(pids) = limits.pids {
        resources.insert("pids".into(), json!({"limit": pids}));
    }
    if let Some(cpu) = &limits.cpu {
        resources.insert(
            "cpu".into(),
            json!({"period": cpu.period, "quota": cpu.quota}),
        );
    }
    serde_json::from_value(resources.into()).expect("LinuxResources from its own fields")
}

fn namespace(mode: &str) -> Namespace {
    Namespace {
        nsmode: Some(mode.into()),
        value: None,
    }
}

fn mount(mount: &Mount) -> ContainerMount {
    match mount {
        Mount::Tmpfs {
            destination,
            size_mb,
        } => ContainerMount {
            destination: Some(destination.clone()),
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
        },
        Mount::Bind {
            source,
            destination,
            read_only,
        } => ContainerMount {
            destination: Some(destination.clone()),
            source: Some(source.display().to_string()),
            _type: Some("bind".into()),
            options: Some(vec![
                if *read_only { "ro" } else { "rw" }.into(),
                "nosuid".into(),
                "nodev".into(),
                "noexec".into(),
            ]),
            uid_mappings: None,
            gid_mappings: None,
        },
    }
}

fn rlimit(limit: &Rlimit) -> PosixRlimit {
    // The type is "nofile", not "RLIMIT_NOFILE": Podman rejects the latter.
    PosixRlimit {
        type_: Some(limit.kind.clone()),
        soft: Some(limit.value),
        hard: Some(limit.value),
    }
}

/// Runs a Podman call with a timeout and says what was being done on failure.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = podman_api::Result<T>>,
) -> Result<T> {
    match timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| what.to_string()),
        Err(_) => Err(anyhow!(
            "{what}: Podman did not answer within {CALL_TIMEOUT:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, NetworkMode};
    use crate::worker::spec::{container_spec, WorkerSite, KERNEL_DIR, WORK_DIR};
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
        let opts = create_opts(&container_spec(config, cgroups, &site));
        serde_json::from_str(&opts.serialize().unwrap()).unwrap()
    }

    #[test]
    fn the_spec_is_locked_down() {
        let spec = spec(&Config::default(), &CgroupSupport::default());
        assert_eq!(spec["netns"]["nsmode"], "none");
        assert!(spec.get("hostadd").is_none());
        assert_eq!(spec["cap_drop"], json!(["ALL"]));
        assert_eq!(
            spec["cap_add"],
            json!(["NET_ADMIN", "SETUID", "SETGID", "SETPCAP"])
        );
        assert_eq!(spec["read_only_filesystem"], true);
        assert_eq!(spec["init"], true);
        assert_eq!(spec["labels"][WORKER_LABEL], "1");
        assert_eq!(spec["labels"][INSTANCE_LABEL], "default");
        assert_eq!(spec["r_limits"][0]["type"], "nofile");
        assert_eq!(spec["r_limits"][2]["type"], "fsize");
        assert_eq!(spec["r_limits"][2]["hard"], 500u64 << 20);
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
        assert!(mount(WORK_DIR)["options"]
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
        assert!(spec.get("dns_server").is_none());
    }

    #[test]
    fn internet_mode_gets_slirp_and_only_its_resolver() {
        let mut config = Config::default();
        config.network.mode = NetworkMode::Internet;
        let spec = spec(&config, &CgroupSupport::default());
        assert_eq!(spec["netns"]["nsmode"], "slirp4netns");
        assert_eq!(
            spec["network_options"]["slirp4netns"],
            json!(["enable_ipv6=false"]),
            "no host loopback, no IPv6"
        );
        assert_eq!(spec["dns_server"], json!(["10.0.2.3"]));
        assert!(spec["hostadd"].as_array().is_none_or(Vec::is_empty));
    }
}
