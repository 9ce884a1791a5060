//! Knows whether a kernel is alive, without waiting for an execution to hang.
//!
//! A watcher task pings the kernel's heartbeat socket, which ipykernel answers
//! from its own thread even while user code runs. The kernel is declared dead
//! when its heartbeat connection closes (the process exited: noticed at once)
//! or when `MISSES` pings in a row go unanswered (hung or frozen).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use zeromq::{DealerSocket, Socket, SocketEvent, SocketRecv, SocketSend, ZmqMessage};

use super::connection::{ConnectionInfo, HEARTBEAT};

/// Time between pings, and how long one ping may go unanswered.
const PERIOD: Duration = Duration::from_millis(500);
/// Unanswered pings in a row that make a kernel dead (~1.5 s).
const MISSES: u32 = 3;

/// Whether a kernel is alive; shared by its client and its watcher.
#[derive(Default)]
pub struct Liveness {
    dead: AtomicBool,
    reason: Mutex<Option<String>>,
    changed: Notify,
}

impl Liveness {
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Resolves, with the reason, once the kernel is dead.
    pub async fn dead(&self) -> String {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_dead() {
                return self.reason.lock().unwrap().clone().unwrap_or_default();
            }
            changed.await;
        }
    }

    fn mark_dead(&self, reason: String) {
        self.reason.lock().unwrap().get_or_insert(reason);
        self.dead.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

/// Connects to the heartbeat socket and starts watching; abort the handle to stop.
pub async fn watch(info: &ConnectionInfo, liveness: Arc<Liveness>) -> Result<JoinHandle<()>> {
    let mut socket = DealerSocket::new();
    let mut events = socket.monitor();
    socket
        .connect(&info.endpoint(HEARTBEAT))
        .await
        .context("connecting to the kernel's heartbeat")?;
    Ok(tokio::spawn(async move {
        let mut misses = 0;
        loop {
            let ping = ZmqMessage::from(Bytes::from_static(b"ping"));
            if socket.send(ping).await.is_err() {
                liveness.mark_dead("the kernel's heartbeat socket failed".into());
                return;
            }
            let deadline = tokio::time::sleep(PERIOD);
            tokio::pin!(deadline);
            let answered = loop {
                tokio::select! {
                    reply = socket.recv() => {
                        if reply.is_ok() { break true; }
                    }
                    event = events.next() => {
                        if matches!(event, Some(SocketEvent::Disconnected(_)) | None) {
                            liveness.mark_dead("the kernel process exited (its connection closed)".into());
                            return;
                        }
                    }
                    _ = &mut deadline => break false,
                }
            };
            if answered {
                misses = 0;
                deadline.await; // keep the pace
            } else {
                misses += 1;
                if misses >= MISSES {
                    liveness.mark_dead(format!(
                        "the kernel stopped answering heartbeats ({} s)",
                        (PERIOD * MISSES).as_secs_f32()
                    ));
                    return;
                }
            }
        }
    }))
}
