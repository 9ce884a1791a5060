//! One connection to one kernel: handshake, then executions one at a time.
//!
//! The caller owns the client exclusively (behind the session's lock), so
//! messages on the shell and IOPub channels belong to at most one request in
//! flight; anything with another parent id is stale and skipped (and counted:
//! a worker may not make the gateway read without bound).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

use super::connection::{ConnectionInfo, CONTROL, HEARTBEAT, IOPUB, SHELL, STDIN};
use super::heartbeat::{self, Guarded, Liveness};
use super::outputs::{mime_str, Execution, MimeBundle, OutputLimits, OutputSink};
use super::wire::{Codec, Message};
use super::zmtp::{self, Incoming, Reader, SocketType, WireError, Writer};

/// Why an execution did not produce a result. Any of them ends the worker.
#[derive(Debug)]
pub enum ExecuteError {
    /// The deadline passed before the kernel finished.
    Timeout,
    /// The kernel stopped answering or its process died.
    Kernel(anyhow::Error),
    /// The worker broke the protocol or a bound (user code holds the kernel's
    /// sockets and key): malformed or oversized frames, a flood, forged replies.
    Protocol(String),
    /// The client went away and the kernel did not stop when interrupted.
    Abandoned,
}

impl From<WireError> for ExecuteError {
    fn from(error: WireError) -> Self {
        match error {
            WireError::Closed(why) => {
                ExecuteError::Kernel(anyhow!("the kernel's connection closed: {why}"))
            }
            WireError::Violation(why) => ExecuteError::Protocol(why),
        }
    }
}

/// How long an interrupted kernel may take to stop before it is given up on.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// Largest execute_reply kept (its content repeats the traceback); a larger
/// one is read and thrown away, and its status taken from the outputs.
const REPLY_KEEP: usize = 1024 * 1024;
/// Largest reply of a silent evaluation kept (the file API moves 2 MiB chunks
/// as base64 through it); larger is a violation.
const EVALUATE_REPLY_KEEP: usize = 4 * 1024 * 1024;
/// Output an evaluation may produce (it should produce none).
const EVALUATE_OUTPUT: usize = 64 * 1024;
/// What an evaluation may make the gateway read and throw away (messages
/// left over from earlier requests, output it should not have).
const EVALUATE_FLOOD: u64 = 16 * 1024 * 1024;
/// What a message's envelope (ids, signature, headers) may add to its content.
const MESSAGE_SLACK: usize = 8 * 1024;
/// Pause between attempts to connect to a socket that is not listening yet.
const RETRY: Duration = Duration::from_millis(10);
/// What the kernel may send that the handshake throws away (stale messages).
const HANDSHAKE_FLOOD: u64 = 64 * 1024 * 1024;

/// A connected kernel.
pub struct KernelClient {
    codec: Codec,
    shell: Reader,
    shell_out: Writer,
    iopub: Reader,
    /// Kept open (a SUB sends only its subscription).
    _iopub_out: Writer,
    control_out: Writer,
    liveness: Arc<Liveness>,
    guard: JoinHandle<()>,
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        self.guard.abort();
    }
}

/// What the kernel's `execute_reply` says that the gateway uses.
#[derive(Debug, Default, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub execution_count: Option<i64>,
    #[serde(default)]
    pub user_expressions: BTreeMap<String, ExpressionValue>,
}

/// One evaluated user expression.
#[derive(Debug, Default, Deserialize)]
pub struct ExpressionValue {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub data: MimeBundle,
    #[serde(default)]
    pub ename: String,
    #[serde(default)]
    pub evalue: String,
}

#[derive(Deserialize)]
struct Status {
    #[serde(default)]
    execution_state: String,
}

/// Bounds of one request: what may be kept and what may be thrown away.
struct Budget {
    output: usize,
    reply_keep: usize,
    flood: u64,
}

impl KernelClient {
    /// Connects to the kernel's sockets (which must exist) and completes a kernel_info
    /// handshake that also proves IOPub delivers, all within `within`.
    pub async fn connect(info: &ConnectionInfo, within: Duration) -> anyhow::Result<Self> {
        let deadline = Instant::now() + within;
        // A socket file appears at bind(); until listen() a connect is refused: retry.
        let connect = |port, kind| async move {
            loop {
                match zmtp::connect(info.socket_path(port), kind).await {
                    Err(WireError::Closed(_)) if Instant::now() + RETRY < deadline => {
                        sleep(RETRY).await
                    }
                    result => return result,
                }
            }
        };
        let connected = timeout(within, async {
            let (shell, shell_out) = connect(SHELL, SocketType::Dealer).await?;
            let (iopub, iopub_out) = connect(IOPUB, SocketType::Sub).await?;
            let (control, control_out) = connect(CONTROL, SocketType::Dealer).await?;
            let stdin = connect(STDIN, SocketType::Dealer).await?;
            let heartbeat = connect(HEARTBEAT, SocketType::Dealer).await?;
            let liveness = Arc::new(Liveness::default());
            let guard = heartbeat::guard(
                Guarded {
                    heartbeat,
                    control,
                    stdin,
                },
                Arc::clone(&liveness),
            );
            Ok::<_, WireError>(Self {
                codec: Codec::new(&info.key),
                shell,
                shell_out,
                iopub,
                _iopub_out: iopub_out,
                control_out,
                liveness,
                guard,
            })
        })
        .await
        .map_err(|_| anyhow!("connecting to the kernel took longer than {within:?}"))??;
        let mut client = connected;
        client.handshake(deadline).await?;
        // The guard watched the other channels meanwhile: behave from the first byte.
        if let Some(why) = client.violation() {
            return Err(anyhow!(
                "the worker broke the protocol while connecting: {why}"
            ));
        }
        Ok(client)
    }

    /// Sends kernel_info_request until a reply arrives on shell and its status
    /// messages arrive on IOPub (a SUB socket misses what is published before
    /// its subscription reaches the kernel). Bounded like any request.
    async fn handshake(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let mut flood = HANDSHAKE_FLOOD;
        loop {
            let (id, request) = self.codec.request("kernel_info_request", json!({}));
            self.shell_out.send(&request).await?;
            let attempt_end = (Instant::now() + Duration::from_millis(500)).min(deadline);
            let mut replied = false;
            let mut published = false;
            while !(replied && published) {
                let left = attempt_end.saturating_duration_since(Instant::now());
                let (on_shell, incoming) = tokio::select! {
                    m = self.shell.recv(REPLY_KEEP, flood) => (true, m?),
                    m = self.iopub.recv(REPLY_KEEP, flood) => (false, m?),
                    _ = sleep(left) => break,
                };
                flood = spend(flood, incoming.size())?;
                let Incoming::Message(frames) = incoming else {
                    continue;
                };
                let message = self.codec.decode(frames).map_err(|e| {
                    anyhow!("the worker broke the protocol during the handshake: {e:#}")
                })?;
                if message.parent_id == id {
                    replied |= on_shell && message.msg_type == "kernel_info_reply";
                    // Wait for the idle, so that nothing of this request is left behind.
                    published |= !on_shell
                        && message.msg_type == "status"
                        && is_idle(&message).map_err(|e| anyhow!("{e:?}"))?;
                }
            }
            if replied && published {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "kernel did not complete the handshake (reply: {replied}, iopub: {published})"
                ));
            }
        }
    }

    /// Runs `code`; returns when the kernel is idle again or `deadline` passes.
    /// With a `sink`, every output is also sent there as it arrives; if the
    /// sink's receiver goes away (the client hung up), the kernel is
    /// interrupted, and given up on when it does not stop within `ABANDON_GRACE`.
    pub async fn execute(
        &mut self,
        code: &str,
        deadline: Instant,
        limits: &OutputLimits,
        sink: Option<&OutputSink>,
    ) -> Result<Execution, ExecuteError> {
        let content = json!({
            "code": code,
            "silent": false,
            "store_history": true,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": true,
        });
        let budget = Budget {
            output: limits.max_output_bytes,
            reply_keep: REPLY_KEEP,
            flood: limits.max_flood_bytes,
        };
        let (execution, _) = self.bounded(content, deadline, budget, sink).await?;
        Ok(execution)
    }

    /// Evaluates `expression` in the user's namespace without a trace: a
    /// silent execution (no history, no execution count, no outputs) whose
    /// `user_expressions` carry the value's `text/plain` back.
    pub async fn evaluate(
        &mut self,
        expression: &str,
        deadline: Instant,
    ) -> Result<String, ExecuteError> {
        let content = json!({
            "code": "",
            "silent": true,
            "store_history": false,
            "user_expressions": {"r": expression},
            "allow_stdin": false,
            "stop_on_error": false,
        });
        let budget = Budget {
            output: EVALUATE_OUTPUT,
            reply_keep: EVALUATE_REPLY_KEEP,
            flood: EVALUATE_FLOOD,
        };
        let (_, reply) = self.bounded(content, deadline, budget, None).await?;
        let Some(reply) = reply else {
            return Err(ExecuteError::Protocol(format!(
                "an evaluation's reply over {EVALUATE_REPLY_KEEP} bytes"
            )));
        };
        let value = reply.user_expressions.get("r");
        match value {
            Some(v) if v.status == "ok" => mime_str(&v.data, "text/plain").ok_or_else(|| {
                ExecuteError::Protocol("an evaluation's value without text/plain".into())
            }),
            _ => Err(ExecuteError::Kernel(anyhow!(
                "evaluating in the kernel failed: {}: {}",
                value.map_or("error", |v| v.ename.as_str()),
                value.map_or("no value", |v| v.evalue.as_str()),
            ))),
        }
    }

    /// True once the guard has declared the kernel dead.
    pub fn is_dead(&self) -> bool {
        self.liveness.is_dead()
    }

    /// The protocol violation the guard caught, if that is how the kernel died.
    pub fn violation(&self) -> Option<String> {
        self.liveness.violation()
    }

    /// One execute_request, raced against the kernel's death and the deadline.
    async fn bounded(
        &mut self,
        content: Value,
        deadline: Instant,
        budget: Budget,
        sink: Option<&OutputSink>,
    ) -> Result<(Execution, Option<Reply>), ExecuteError> {
        let liveness = Arc::clone(&self.liveness);
        let run = async {
            tokio::select! {
                result = self.run(content, budget, sink) => result,
                (reason, violation) = liveness.dead() => Err(if violation {
                    ExecuteError::Protocol(reason)
                } else {
                    ExecuteError::Kernel(anyhow!(reason))
                }),
            }
        };
        tokio::time::timeout_at(deadline, run)
            .await
            .unwrap_or(Err(ExecuteError::Timeout))
    }

    /// Sends the request, then a fence (a kernel_info_request), and reads
    /// until the fence is answered on shell and its `idle` is published.
    ///
    /// The kernel handles shell requests one at a time, in order, so the fence
    /// completes only once the execution has really ended, and by then every
    /// IOPub message of the execution has arrived (one PUB socket keeps its
    /// order). User code holds the kernel's key and can forge an
    /// `execute_reply` or `idle` for the running request, but that cannot end
    /// it: and when the real one follows, the duplicate gives the forgery away.
    async fn run(
        &mut self,
        content: Value,
        budget: Budget,
        sink: Option<&OutputSink>,
    ) -> Result<(Execution, Option<Reply>), ExecuteError> {
        let (id, request) = self.codec.request("execute_request", content);
        let (fence_id, fence) = self.codec.request("kernel_info_request", json!({}));
        self.shell_out.send(&request).await?;
        self.shell_out.send(&fence).await?;
        let mut execution = Execution::new(budget.output, sink.is_some());
        let mut flood = budget.flood;
        let mut replies = 0u32;
        let mut reply: Option<Reply> = None;
        let mut idles = 0u32;
        let mut fence_replied = false;
        let mut fence_idle = false;
        // Set once the client went away and the kernel was asked to stop.
        let mut abandoned_at: Option<Instant> = None;
        while !(fence_replied && fence_idle) {
            tokio::select! {
                incoming = self.iopub.recv(execution.room() + MESSAGE_SLACK, flood) => {
                    let frames = match incoming? {
                        Incoming::Discarded(size) => {
                            flood = spend(flood, size)?;
                            execution.discarded(size);
                            continue;
                        }
                        Incoming::Message(frames) => frames,
                    };
                    let size = frames_size(&frames);
                    let message = self.decode(frames)?;
                    if message.parent_id == id {
                        if message.msg_type == "status" {
                            if is_idle(&message)? {
                                idles += 1;
                                if idles > 1 {
                                    return Err(forged("a second idle status"));
                                }
                            }
                        } else {
                            execution
                                .absorb(&message.msg_type, &message.content, sink)
                                .map_err(|e| ExecuteError::Protocol(format!("{e:#}")))?;
                        }
                    } else if message.parent_id == fence_id {
                        if message.msg_type == "status" && is_idle(&message)? {
                            fence_idle = true;
                        }
                    } else {
                        flood = spend(flood, size)?;
                    }
                }
                incoming = self.shell.recv(budget.reply_keep, flood), if !fence_replied => {
                    let frames = match incoming? {
                        Incoming::Discarded(size) => {
                            // Only the execution's reply can be this large.
                            flood = spend(flood, size)?;
                            replies += 1;
                            if replies > 1 {
                                return Err(forged("a second execute_reply"));
                            }
                            continue;
                        }
                        Incoming::Message(frames) => frames,
                    };
                    let size = frames_size(&frames);
                    let message = self.decode(frames)?;
                    if message.parent_id == id && message.msg_type == "execute_reply" {
                        replies += 1;
                        if replies > 1 {
                            return Err(forged("a second execute_reply"));
                        }
                        reply = Some(serde_json::from_slice(&message.content).map_err(|e| {
                            ExecuteError::Protocol(format!("a malformed execute_reply: {e}"))
                        })?);
                    } else if message.parent_id == fence_id && message.msg_type == "kernel_info_reply" {
                        if replies == 0 {
                            return Err(forged("the fence answered before the execution"));
                        }
                        fence_replied = true;
                    } else {
                        flood = spend(flood, size)?;
                    }
                }
                _ = listener_gone(sink), if abandoned_at.is_none() => {
                    abandoned_at = Some(Instant::now());
                    self.interrupt().await?;
                }
                _ = sleep_until_some(abandoned_at.map(|at| at + ABANDON_GRACE)) => {
                    return Err(ExecuteError::Abandoned);
                }
            }
        }
        execution.status = match &reply {
            Some(reply) => reply.status.clone(),
            // The reply was too large to keep: an error's traceback.
            None if execution.error().is_some() => "error".into(),
            None => "ok".into(),
        };
        if execution.status.is_empty() {
            execution.status = "error".into();
        }
        execution.execution_count = reply.as_ref().and_then(|r| r.execution_count);
        execution.finish(sink);
        Ok((execution, reply))
    }

    fn decode(&self, frames: Vec<Bytes>) -> Result<Message, ExecuteError> {
        self.codec
            .decode(frames)
            .map_err(|e| ExecuteError::Protocol(format!("{e:#}")))
    }

    /// Asks the kernel to interrupt the running code (SIGINT: KeyboardInterrupt).
    async fn interrupt(&mut self) -> Result<(), ExecuteError> {
        let (_, request) = self.codec.request("interrupt_request", json!({}));
        Ok(self.control_out.send(&request).await?)
    }
}

fn frames_size(frames: &[Bytes]) -> u64 {
    frames.iter().map(|f| f.len() as u64).sum()
}

fn is_idle(message: &Message) -> Result<bool, ExecuteError> {
    let status: Status = serde_json::from_slice(&message.content)
        .map_err(|e| ExecuteError::Protocol(format!("a malformed status message: {e}")))?;
    Ok(status.execution_state == "idle")
}

fn forged(what: &str) -> ExecuteError {
    ExecuteError::Protocol(format!(
        "{what} for one request (a forged message: user code holds the kernel's key)"
    ))
}

/// Takes `size` bytes thrown away from what may still be; past it the worker floods.
fn spend(left: u64, size: u64) -> Result<u64, WireError> {
    left.checked_sub(size).ok_or_else(|| {
        WireError::Violation(format!(
            "it flooded: a {size}-byte message when only {left} more bytes past the cap were allowed"
        ))
    })
}

/// Resolves when a sink's receiver is gone; never without a sink.
async fn listener_gone(sink: Option<&OutputSink>) {
    match sink {
        Some(sink) => sink.closed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
