//! A container runtime for unit tests: "containers" are fake kernels
//! (`kernel::fake`) started in the worker directory, so the factory, the pool
//! and the session table run unchanged without Podman.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use super::runtime::{Runtime, Started};
use super::spec::{ContainerSpec, INSTANCE_LABEL, SANDBOX_UID_ENV};
use crate::kernel::fake::FakeKernel;

/// One fake container: its instance label and its kernel.
struct Container {
    instance: String,
    kernel: FakeKernel,
}

/// The fake runtime. Cheap to clone: clones share the containers.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    containers: Arc<Mutex<HashMap<String, Container>>>,
    /// Creations refused before the next one succeeds.
    failures: Arc<AtomicUsize>,
    /// Containers ever asked for, refused ones included.
    pub runs: Arc<AtomicUsize>,
    /// Containers removed.
    pub removed: Arc<AtomicUsize>,
}

impl FakeRuntime {
    /// Refuses the next `n` creations (a broken setup).
    pub fn fail_next(&self, n: usize) {
        self.failures.store(n, Ordering::SeqCst);
    }

    /// Ids of the containers that exist.
    pub fn containers(&self) -> Vec<String> {
        self.containers.lock().unwrap().keys().cloned().collect()
    }

    /// The code the kernel of `container` received, in order.
    pub fn executed(&self, container: &str) -> Vec<String> {
        let containers = self.containers.lock().unwrap();
        let executed = containers[container]
            .kernel
            .executed
            .lock()
            .unwrap()
            .clone();
        executed
    }

    /// Kills a container's kernel without removing the container (its process died).
    pub fn kill(&self, container: &str) {
        if let Some(c) = self.containers.lock().unwrap().get(container) {
            c.kernel.exit();
        }
    }

    fn start(&self, spec: &ContainerSpec) -> Result<Started> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let refuse = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if refuse {
            return Err(anyhow!("the fake runtime refuses to create {}", spec.name));
        }
        let dir = spec
            .worker_dir()
            .ok_or_else(|| anyhow!("no worker directory"))?;
        // What the entrypoint and the kernel do: say the uid, read the key, listen.
        std::fs::write(dir.join("sandbox-uid"), &spec.env[SANDBOX_UID_ENV])?;
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("connection.json"))?)?;
        let key = file["key"].as_str().ok_or_else(|| anyhow!("no key"))?;
        let id = format!("fake-{}", crate::random::hex(6));
        self.containers.lock().unwrap().insert(
            id.clone(),
            Container {
                instance: spec.labels[INSTANCE_LABEL].clone(),
                kernel: FakeKernel::start(dir, key),
            },
        );
        Ok(Started {
            id,
            warnings: Vec::new(),
            create_time: std::time::Duration::ZERO,
        })
    }
}

impl Runtime for FakeRuntime {
    fn run<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<Started>> {
        async move { self.start(spec) }.boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>> {
        async move {
            if self.containers.lock().unwrap().remove(id).is_some() {
                self.removed.fetch_add(1, Ordering::SeqCst);
            }
            Ok(())
        }
        .boxed()
    }

    fn exit_code<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<i32>>> {
        let exists = self.containers.lock().unwrap().contains_key(id);
        async move { Ok((!exists).then_some(137)) }.boxed()
    }

    fn log_tail<'a>(&'a self, _id: &'a str, _lines: usize) -> BoxFuture<'a, String> {
        async { String::new() }.boxed()
    }

    fn list_workers<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        let ids = self
            .containers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, c)| c.instance == instance)
            .map(|(id, _)| id.clone())
            .collect();
        async move { Ok(ids) }.boxed()
    }

    fn remove_as_root<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<()>> {
        async move { Ok(std::fs::remove_dir_all(dir)?) }.boxed()
    }
}

/// A fake host: a fake runtime and a temporary runtime and state directory
/// (removed when dropped).
pub struct FakeHost {
    pub runtime: FakeRuntime,
    pub config: Arc<crate::config::Config>,
    _dir: TempDir,
}

impl FakeHost {
    pub fn new(mut config: crate::config::Config) -> Self {
        let dir = TempDir(std::env::temp_dir().join(format!("ci-fake-{}", crate::random::hex(6))));
        config.paths.runtime_dir = Some(dir.0.join("run"));
        config.paths.state_dir = Some(dir.0.join("state"));
        std::fs::create_dir_all(dir.0.join("state")).unwrap();
        Self {
            runtime: FakeRuntime::default(),
            config: Arc::new(config),
            _dir: dir,
        }
    }

    /// A new factory, as a (re)started gateway makes one.
    pub fn factory(&self) -> Arc<super::WorkerFactory> {
        let factory = super::WorkerFactory::new(
            Arc::new(self.runtime.clone()),
            Arc::clone(&self.config),
            crate::host::CgroupSupport::default(),
        )
        .unwrap();
        Arc::new(factory)
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::OutputLimits;
    use std::time::Duration;

    #[tokio::test]
    async fn the_factory_makes_adopts_and_removes_workers_on_the_fake() {
        let host = FakeHost::new(crate::config::Config::default());
        let (factory, runtime) = (host.factory(), &host.runtime);
        let mut worker = factory.create().await.unwrap();
        assert_eq!(
            runtime.containers(),
            std::slice::from_ref(&worker.container)
        );
        let limits = OutputLimits {
            max_output_bytes: 1 << 20,
            max_flood_bytes: 1 << 20,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let done = worker
            .kernel
            .execute("x = 1", deadline, &limits, None)
            .await
            .unwrap();
        assert_eq!(done.result_text(), "x = 1");
        assert_eq!(runtime.executed(&worker.container), ["x = 1"]);
        // A restarted gateway re-connects with the record.
        let record = worker.record();
        drop(worker);
        let factory = host.factory();
        let adopted = factory.adopt(&record).await.unwrap();
        let other = factory.create().await.unwrap();
        assert_eq!(factory.remove_others(&[&adopted]).await.unwrap(), 1);
        assert_eq!(
            runtime.containers(),
            std::slice::from_ref(&adopted.container)
        );
        assert!(!other.dir.exists(), "its directory went too");
        runtime.kill(&adopted.container);
        factory.destroy(adopted.into_remains()).await;
        assert!(runtime.containers().is_empty());
        // Only `other` holds a uid (remove_others runs before any creation, and frees none).
        assert_eq!(factory.uids_in_use().0, 1);
    }
}
