//! Knows whether a kernel is alive and behaving, without waiting for an
//! execution to hang, and keeps the channels no request reads within bounds.
//!
//! A guard task per kernel pings the kernel's heartbeat socket, which
//! ipykernel answers from its own thread even while user code runs, and
//! reads the control and stdin channels. The kernel is declared dead when a
//! connection closes (the process exited: noticed at once), when `MISSES`
//! pings in a row go unanswered (hung or frozen), or when anything on these
//! channels breaks a bound (user code holds the kernel's sockets): then the
//! death is a protocol violation and the worker is destroyed for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::zmtp::{Incoming, Reader, WireError, Writer};

/// Time between pings, and how long one ping may go unanswered.
const PERIOD: Duration = Duration::from_millis(500);
/// Unanswered pings in a row that make a kernel dead (~1.5 s).
const MISSES: u32 = 3;
/// Largest message accepted on the heartbeat (an echo of our 4-byte ping).
const HEARTBEAT_KEEP: usize = 64;
/// Largest message accepted on control (an interrupt_reply is ~1 KiB).
const CONTROL_KEEP: usize = 64 * 1024;
/// Messages the guarded channels may deliver in one period; more is a flood.
const MAX_MESSAGES_PER_PERIOD: u32 = 64;

/// Whether a kernel is alive; shared by its client and its guard.
#[derive(Default)]
pub struct Liveness {
    dead: AtomicBool,
    /// Why it died, and whether that was a protocol violation.
    reason: Mutex<Option<(String, bool)>>,
    changed: Notify,
}

impl Liveness {
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// The violation that killed the kernel, if that is how it died.
    pub fn violation(&self) -> Option<String> {
        match &*self.reason.lock().unwrap() {
            Some((reason, true)) => Some(reason.clone()),
            _ => None,
        }
    }

    /// Resolves, with the reason and whether it was a violation, once the kernel is dead.
    pub async fn dead(&self) -> (String, bool) {
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

    pub fn mark_dead(&self, reason: String, violation: bool) {
        self.reason
            .lock()
            .unwrap()
            .get_or_insert((reason, violation));
        self.dead.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn mark_failed(&self, channel: &str, error: WireError) {
        match error {
            WireError::Closed(_) => self.mark_dead(
                "the kernel process exited (its connection closed)".into(),
                false,
            ),
            WireError::Violation(why) => self.mark_dead(format!("{why} on {channel}"), true),
        }
    }
}

/// The channels the guard owns: heartbeat both ways, and what arrives on control and stdin.
pub struct Guarded {
    pub heartbeat: (Reader, Writer),
    pub control: Reader,
    /// Kept open: the gateway never asks for input, so anything here is a violation.
    pub stdin: (Reader, Writer),
}

/// Starts guarding; abort the handle to stop.
pub fn guard(channels: Guarded, liveness: Arc<Liveness>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Guarded {
            heartbeat: (mut hb, mut hb_out),
            mut control,
            stdin: (mut stdin, _stdin_out),
        } = channels;
        let mut misses = 0;
        loop {
            if let Err(e) = hb_out.send(&[Bytes::from_static(b"ping")]).await {
                liveness.mark_failed("the heartbeat", e);
                return;
            }
            let deadline = tokio::time::sleep(PERIOD);
            tokio::pin!(deadline);
            let mut messages = 0;
            let mut answered = false;
            loop {
                let failure = tokio::select! {
                    reply = hb.recv(HEARTBEAT_KEEP, 0) => match reply {
                        Ok(_) => { answered = true; None }
                        Err(e) => Some(("the heartbeat", e)),
                    },
                    message = control.recv(CONTROL_KEEP, 0) => match message {
                        Ok(_) => None,
                        Err(e) => Some(("control", e)),
                    },
                    message = stdin.recv(0, 0) => match message {
                        Ok(Incoming::Message(_)) | Ok(Incoming::Discarded(_)) => Some((
                            "stdin",
                            WireError::Violation("a message on stdin, which the gateway never asks for".into()),
                        )),
                        Err(e) => Some(("stdin", e)),
                    },
                    _ = &mut deadline => break,
                };
                if let Some((channel, error)) = failure {
                    liveness.mark_failed(channel, error);
                    return;
                }
                messages += 1;
                if messages > MAX_MESSAGES_PER_PERIOD {
                    liveness.mark_failed(
                        "the heartbeat and control channels",
                        WireError::Violation(format!(
                            "more than {MAX_MESSAGES_PER_PERIOD} messages in {PERIOD:?}"
                        )),
                    );
                    return;
                }
            }
            if answered {
                misses = 0;
            } else {
                misses += 1;
                if misses >= MISSES {
                    liveness.mark_dead(
                        format!(
                            "the kernel stopped answering heartbeats ({} s)",
                            (PERIOD * MISSES).as_secs_f32()
                        ),
                        false,
                    );
                    return;
                }
            }
        }
    })
}
