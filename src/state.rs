//! What a restarted gateway needs to re-adopt its live workers: for each
//! worker its container, directory, kernel key and user, kept in a small file
//! (mode 0600: it holds the kernels' HMAC keys) in the state directory.
//!
//! The request path only updates the in-memory table and wakes the writer
//! task, which writes the file atomically (temp file + rename) off the hot
//! path. A gateway killed with SIGKILL loses at most the last few
//! milliseconds of changes; anything it cannot verify at start is removed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::config::WorkerRuntime;
use crate::shutdown;

/// File name of the worker table inside the state directory.
const FILE: &str = "workers.json";

/// One live worker, as persisted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: String,
    pub container: String,
    pub dir: PathBuf,
    pub key: String,
    /// Its sandbox uid; absent in records of older gateways (uid 1000).
    #[serde(default)]
    pub uid: Option<u32>,
    /// The user it serves; None while it waits in the pool.
    pub user: Option<String>,
    /// When the session began (unix seconds), for `max_age`.
    pub session_started: Option<u64>,
    /// The OCI runtime it runs under; absent in records of older gateways (runc).
    #[serde(default)]
    pub runtime: WorkerRuntime,
}

/// The table of live workers and its persistence.
pub struct Registry {
    path: PathBuf,
    records: Mutex<BTreeMap<String, WorkerRecord>>,
    dirty: Notify,
}

impl Registry {
    pub fn new(state_dir: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            path: state_dir.join(FILE),
            records: Mutex::new(BTreeMap::new()),
            dirty: Notify::new(),
        })
    }

    /// Records left by the previous run (empty if none or unreadable).
    pub fn load_previous(&self) -> Vec<WorkerRecord> {
        match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable {}: {e}", self.path.display());
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    pub fn insert(&self, record: WorkerRecord) {
        self.records
            .lock()
            .unwrap()
            .insert(record.id.clone(), record);
        self.dirty.notify_one();
    }

    /// Marks worker `id` as serving `user` since `started` (unix seconds).
    pub fn assign(&self, id: &str, user: &str, started: u64) {
        if let Some(record) = self.records.lock().unwrap().get_mut(id) {
            record.user = Some(user.to_string());
            record.session_started = Some(started);
        }
        self.dirty.notify_one();
    }

    pub fn remove(&self, id: &str) {
        self.records.lock().unwrap().remove(id);
        self.dirty.notify_one();
    }

    /// The records as they stand (tests).
    #[cfg(test)]
    pub fn records(&self) -> Vec<WorkerRecord> {
        self.records.lock().unwrap().values().cloned().collect()
    }

    /// Writes the table after every change, until the shutdown. Spawn once;
    /// the final save is the server's, once this has returned.
    pub async fn run_writer(self: Arc<Self>, mut shutdown: shutdown::Listener) {
        loop {
            tokio::select! {
                _ = self.dirty.notified() => {}
                _ = shutdown.recv() => return,
            }
            // save() blocks (write, fsync, rename): off the runtime's threads,
            // which serve requests and time cold starts meanwhile.
            let registry = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || registry.save()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("could not save the worker table: {e:#}"),
                Err(e) => tracing::error!("the worker table's writer failed: {e}"),
            }
        }
    }

    /// Writes the table now (the writer, and the server after the writer stopped).
    pub fn save(&self) -> Result<()> {
        let records: Vec<WorkerRecord> = self.records.lock().unwrap().values().cloned().collect();
        let json = serde_json::to_vec_pretty(&records).expect("records serialise");
        let tmp = self.path.with_extension("json.tmp");
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(&json)
            .and_then(|_| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.path).with_context(|| format!("replacing {}", self.path.display()))
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn records_round_trip_through_a_private_file() {
        let dir = std::env::temp_dir().join(format!("ci-state-test-{}", crate::random::hex(6)));
        fs::create_dir_all(&dir).unwrap();
        let registry = Registry::new(dir.clone());
        let record = WorkerRecord {
            id: "w1".into(),
            container: "c1".into(),
            dir: "/run/x/w1".into(),
            key: "k".into(),
            uid: Some(10_001),
            user: None,
            session_started: None,
            runtime: WorkerRuntime::Gvisor,
        };
        registry.insert(record.clone());
        registry.insert(WorkerRecord {
            id: "w2".into(),
            ..record.clone()
        });
        registry.assign("w1", "alice", 7);
        registry.remove("w2");
        registry.save().unwrap();
        let loaded = Registry::new(dir.clone()).load_previous();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].user.as_deref(), Some("alice"));
        assert_eq!(loaded[0].session_started, Some(7));
        assert_eq!(loaded[0].uid, Some(10_001));
        assert_eq!(loaded[0].runtime, WorkerRuntime::Gvisor);
        let mode = fs::metadata(dir.join(FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }
}
