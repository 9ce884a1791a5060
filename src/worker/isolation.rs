//! Which OCI runtime isolates the workers, checked against what Podman
//! actually runs, and what that means for the firewall (`/status` `isolation`).
//!
//! `workers.runtime = "gvisor"` puts gVisor's runsc between the user's code
//! and the host's kernel. Podman takes the runtime per container in its
//! create call (`oci_runtime`), but before 5.x's fix it ignores that field on
//! its REST API (containers/podman#28429: seen here with Podman 4.3, the
//! container still runs under runc). And runsc's flags (`--ignore-cgroups`,
//! `--network=none`, `--host-uds=all`, the platform) are Podman *global*
//! options, which no create call carries. So gVisor workers come from a
//! second Podman service of the same user, started with `--runtime` naming a
//! small runsc wrapper that adds those flags (`scripts/lib.sh`
//! `ensure_gvisor`); the wrapper's name ends in the platform it passes
//! (`code-interpreter-runsc-ptrace`, `-systrap`, `-kvm`). This module reads
//! that service's runtime from `podman info` and refuses to start when it is
//! not the one the config asks for: a runc worker whose firewall is skipped
//! would be a worker with a network namespace and no rules.

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::podman::OciRuntime;
use crate::config::WorkerRuntime;

/// The wrapper's name, before its platform.
pub const RUNSC_WRAPPER_PREFIX: &str = "code-interpreter-runsc-";
/// The platforms the wrapper may name (fastest first).
const PLATFORMS: [&str; 3] = ["systrap", "kvm", "ptrace"];
/// The variable that tells the entrypoint how the worker's network is guarded.
pub const FIREWALL_ENV: &str = "CI_FIREWALL";

/// How the workers are isolated, as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Isolation {
    /// `runc` or `gvisor` (the config's name).
    pub runtime: &'static str,
    /// gVisor's platform (how the Sentry intercepts system calls); None under runc.
    pub platform: Option<String>,
    /// The OCI runtime executable Podman runs, and its version.
    pub oci_runtime: String,
    pub oci_runtime_version: String,
    /// `nftables` (a ruleset in each worker's network namespace) or `none`
    /// (gVisor with `--network=none`: no interface but loopback, nothing to filter).
    pub firewall: &'static str,
}

impl Isolation {
    /// What the config asks for, while Podman has not answered yet.
    pub fn unverified(wanted: WorkerRuntime) -> Self {
        Self {
            runtime: wanted.name(),
            platform: None,
            oci_runtime: "unverified: Podman did not answer at start-up".into(),
            oci_runtime_version: String::new(),
            firewall: firewall(wanted),
        }
    }

    /// Checks that Podman's runtime is the configured one.
    pub fn check(wanted: WorkerRuntime, podman: &OciRuntime) -> Result<Self> {
        let file = podman.path.rsplit('/').next().unwrap_or_default();
        let platform = file.strip_prefix(RUNSC_WRAPPER_PREFIX);
        let is_runsc = platform.is_some() || file == "runsc" || podman.version.contains("runsc");
        let version = podman
            .version
            .lines()
            .next()
            .unwrap_or_default()
            .to_string();
        match wanted {
            WorkerRuntime::Runc if is_runsc => bail!(
                "workers.runtime is \"runc\" but the Podman service's runtime is gVisor ({}): \
                 paths.podman_socket names the gVisor service; point it at the runc one",
                podman.path
            ),
            WorkerRuntime::Runc => Ok(Self {
                runtime: "runc",
                platform: None,
                oci_runtime: podman.path.clone(),
                oci_runtime_version: version,
                firewall: firewall(wanted),
            }),
            WorkerRuntime::Gvisor => match platform {
                Some(platform) if PLATFORMS.contains(&platform) => Ok(Self {
                    runtime: "gvisor",
                    platform: Some(platform.to_string()),
                    oci_runtime: podman.path.clone(),
                    oci_runtime_version: version,
                    firewall: firewall(wanted),
                }),
                _ => bail!(
                    "workers.runtime is \"gvisor\" but the Podman service on \
                     paths.podman_gvisor_socket runs {:?} ({}), not the runsc wrapper \
                     {RUNSC_WRAPPER_PREFIX}<platform> that scripts/start.sh installs and \
                     starts that service with (it adds --network=none, --host-uds=all and \
                     --ignore-cgroups)",
                    podman.path,
                    version
                ),
            },
        }
    }
}

/// How a worker's network is guarded under `runtime`, as the entrypoint reads
/// it from [`FIREWALL_ENV`]: `nftables`, or `none` under gVisor, where the
/// entrypoint still refuses to start unless loopback is the only interface.
pub fn firewall(runtime: WorkerRuntime) -> &'static str {
    match runtime {
        WorkerRuntime::Runc => "nftables",
        WorkerRuntime::Gvisor => "none",
    }
}

/// The seccomp profile as gVisor needs it. runsc applies the OCI profile
/// inside its sandbox (`--oci-seccomp`), but the runsc of Debian 12
/// (20221219) answers every SCMP_ACT_ERRNO rule, and the default action, with
/// EPERM whatever their errnoRet. Our profile answers clone3 with ENOSYS, so
/// that glibc falls back to clone, whose flags a filter can see (clone3 passes
/// them in memory); with EPERM instead, glibc gives up and no thread starts
/// (ZeroMQ aborts: "Operation not permitted (src/thread.cpp:241)"). So under
/// gVisor clone3 is let through to the Sentry, which itself answers ENOSYS
/// where it does not implement clone3 (seen: glibc then uses clone, filtered
/// as under runc), and where a newer runsc implements it, any namespace it
/// makes is one of gVisor's own, inside the sandbox.
pub fn seccomp_for_gvisor(profile: &str) -> Result<String> {
    let mut profile: serde_json::Value =
        serde_json::from_str(profile).context("reading the seccomp profile as JSON")?;
    let rules = profile["syscalls"]
        .as_array_mut()
        .context("the seccomp profile has no syscalls list")?;
    for rule in rules.iter_mut() {
        if let Some(names) = rule["names"].as_array_mut() {
            names.retain(|name| name != "clone3");
        }
    }
    rules.retain(|rule| {
        rule["names"]
            .as_array()
            .is_some_and(|names| !names.is_empty())
    });
    rules.push(serde_json::json!({
        "names": ["clone3"],
        "action": "SCMP_ACT_ALLOW",
        "comment": "code-interpreter, gVisor only: the Sentry answers clone3 itself (src/worker/isolation.rs)"
    }));
    serde_json::to_string_pretty(&profile).context("writing the gVisor seccomp profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime(path: &str, version: &str) -> OciRuntime {
        OciRuntime {
            path: path.into(),
            version: version.into(),
        }
    }

    #[test]
    fn runc_is_runc_and_keeps_its_firewall() {
        let runc = runtime("/usr/bin/runc", "runc version 1.1.5\ncommit: v1.1.5");
        let isolation = Isolation::check(WorkerRuntime::Runc, &runc).unwrap();
        assert_eq!(isolation.runtime, "runc");
        assert_eq!(isolation.firewall, "nftables");
        assert_eq!(isolation.oci_runtime_version, "runc version 1.1.5");
        assert!(Isolation::check(WorkerRuntime::Gvisor, &runc).is_err());
    }

    #[test]
    fn gvisor_needs_the_wrapper_and_names_its_platform() {
        let wrapper = runtime(
            "/home/ci/.local/libexec/code-interpreter/code-interpreter-runsc-ptrace",
            "runsc version 0.0~20221219.0\nspec: 1.0.2-dev",
        );
        let isolation = Isolation::check(WorkerRuntime::Gvisor, &wrapper).unwrap();
        assert_eq!(isolation.platform.as_deref(), Some("ptrace"));
        assert_eq!(isolation.firewall, "none");
        // runsc without our flags, or a wrapper naming no known platform: refused.
        let bare = runtime("/usr/bin/runsc", "runsc version 0.0~20221219.0");
        let error = Isolation::check(WorkerRuntime::Gvisor, &bare).unwrap_err();
        assert!(error.to_string().contains("--network=none"), "{error}");
        let odd = runtime("/x/code-interpreter-runsc-fast", "runsc version");
        assert!(Isolation::check(WorkerRuntime::Gvisor, &odd).is_err());
        // A gVisor service where runc is configured: refused too.
        assert!(Isolation::check(WorkerRuntime::Runc, &wrapper).is_err());
        assert!(Isolation::check(WorkerRuntime::Runc, &bare).is_err());
    }

    #[test]
    fn the_gvisor_profile_lets_clone3_reach_the_sentry_and_keeps_the_rest() {
        let ours = include_str!("../../containerfiles/seccomp/worker.json");
        let gvisor: serde_json::Value =
            serde_json::from_str(&seccomp_for_gvisor(ours).unwrap()).unwrap();
        let original: serde_json::Value = serde_json::from_str(ours).unwrap();
        let rules_naming = |profile: &serde_json::Value, name: &str| -> Vec<serde_json::Value> {
            let rules = profile["syscalls"].as_array().unwrap();
            let named = rules.iter().filter(|r| {
                let names = r["names"].as_array().unwrap();
                names.iter().any(|n| n == name)
            });
            named.cloned().collect()
        };
        let clone3 = rules_naming(&gvisor, "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ALLOW");
        // Everything else as it was: memfd still refused, clone still filtered.
        let verdicts = |profile: &serde_json::Value, name: &str| -> Vec<serde_json::Value> {
            let rules = rules_naming(profile, name).into_iter();
            rules
                .map(|r| serde_json::json!([r["action"], r["errnoRet"], r["args"]]))
                .collect()
        };
        for name in [
            "memfd_create",
            "io_uring_setup",
            "clone",
            "unshare",
            "keyctl",
        ] {
            assert_eq!(verdicts(&gvisor, name), verdicts(&original, name), "{name}");
        }
        assert_eq!(gvisor["defaultAction"], original["defaultAction"]);
    }
}
