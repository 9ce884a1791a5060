//! The one place that talks to Podman, over its REST socket via `podman-api`.
//!
//! Known defects of podman-api 0.11 are worked around here and nowhere else:
//! stop timeouts are ignored (we force-remove with timeout 0 instead of
//! stopping) and `no_new_privileges` is misspelt (the worker entrypoint sets
//! NoNewPrivs itself). Each call has a timeout, so a hung Podman never hangs us.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use futures_util::StreamExt;
use podman_api::opts::{
    ContainerCreateOpts, ContainerDeleteOpts, ContainerListFilter, ContainerListOpts,
    ContainerLogsOpts,
};
use podman_api::Podman;
use tokio::time::timeout;

use super::spec::{INSTANCE_LABEL, WORKER_LABEL};
use crate::host::CgroupSupport;

/// Longest any single Podman API call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a dead container's log may take to read (it only adds detail to an error).
const LOG_TIMEOUT: Duration = Duration::from_secs(2);

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

    /// The Podman server's version, what cgroup limits it can apply and (rootless)
    /// the container uids its user namespace maps; also proves the socket answers.
    pub async fn info(&self) -> Result<(String, CgroupSupport, Option<Vec<(u32, u32)>>)> {
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
        Ok((version, cgroups, mapped.filter(|_| rootless)))
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
    pub async fn run(&self, opts: &ContainerCreateOpts) -> Result<(String, Vec<String>)> {
        let created = bounded(
            "creating a worker container",
            self.podman.containers().create(opts),
        )
        .await?;
        let container = self.podman.containers().get(&created.id);
        if let Err(e) = bounded("starting a worker container", container.start(None)).await {
            let _ = self.remove(&created.id).await;
            return Err(e);
        }
        Ok((created.id, created.warnings))
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
