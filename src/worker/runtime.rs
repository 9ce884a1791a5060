//! The container runtime as the worker layer sees it: a small trait, so that
//! the factory never knows which runtime it holds.
//!
//! `podman.rs` implements it against Podman's REST socket (the only code that
//! talks to Podman); a fake implements it in unit tests (`fake.rs`), so that
//! the pool and the session table are tested without containers.

use std::path::Path;

use anyhow::Result;
use futures_util::future::BoxFuture;

use super::spec::ContainerSpec;

/// A container just started.
pub struct Started {
    /// The runtime's id of the container.
    pub id: String,
    /// What the runtime warned about while creating it (logged at debug level).
    pub warnings: Vec<String>,
    /// How long creating it took (the rest of `run` started it).
    pub create_time: std::time::Duration,
}

/// What the worker layer needs of a container runtime. Every call is bounded
/// in time by the implementation: a hung runtime never hangs a caller.
pub trait Runtime: Send + Sync {
    /// Creates and starts a container from `spec`; nothing is left behind on failure.
    fn run<'a>(&'a self, spec: &'a ContainerSpec) -> BoxFuture<'a, Result<Started>>;

    /// Removes a container, killing it first; a missing container is not an error.
    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<()>>;

    /// The exit code of a container that is no longer running; None while it runs.
    fn exit_code<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<i32>>>;

    /// The last `lines` lines a (stopped) container wrote, joined with " | ";
    /// empty when there are none or the runtime does not answer quickly.
    fn log_tail<'a>(&'a self, id: &'a str, lines: usize) -> BoxFuture<'a, String>;

    /// Ids of every worker container of `instance`, running or not.
    fn list_workers<'a>(&'a self, instance: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;

    /// Removes `dir` with the privileges of the runtime's user namespace, where
    /// files a sandbox uid left (a subordinate uid of ours) can be removed.
    fn remove_as_root<'a>(&'a self, dir: &'a Path) -> BoxFuture<'a, Result<()>>;
}
