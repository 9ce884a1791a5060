//! One connection to one kernel: handshake, then executions one at a time.
//!
//! The caller owns the client exclusively (behind the session's lock), so
//! messages on the shell and IOPub channels belong to at most one request in
//! flight; anything with another parent id is stale and skipped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket};

use super::connection::{ConnectionInfo, CONTROL, IOPUB, SHELL};
use super::heartbeat::{self, Liveness};
use super::outputs::{Execution, Output};
use super::wire::{Codec, Message};

/// Why an execution did not produce a result. Either way the kernel is suspect.
#[derive(Debug)]
pub enum ExecuteError {
    /// The deadline passed before the kernel went idle.
    Timeout,
    /// The kernel stopped answering or sent garbage.
    Kernel(anyhow::Error),
    /// The client went away and the kernel did not stop when interrupted.
    Abandoned,
}

/// Where a streaming execution's outputs go as they arrive.
pub type OutputSink = tokio::sync::mpsc::UnboundedSender<Output>;

/// How long an interrupted kernel may take to stop before it is given up on.
const ABANDON_GRACE: Duration = Duration::from_secs(2);

/// A connected kernel.
pub struct KernelClient {
    codec: Codec,
    shell: DealerSocket,
    iopub: SubSocket,
    control: DealerSocket,
    liveness: Arc<Liveness>,
    watcher: JoinHandle<()>,
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl KernelClient {
    /// Connects to the kernel's sockets (which must exist) and completes a kernel_info
    /// handshake that also proves IOPub delivers, all within `within`.
    pub async fn connect(info: &ConnectionInfo, within: Duration) -> Result<Self> {
        let deadline = Instant::now() + within;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let connected = timeout(remaining, async {
            let mut shell = DealerSocket::new();
            shell
                .connect(&info.endpoint(SHELL))
                .await
                .context("connecting shell")?;
            let mut iopub = SubSocket::new();
            iopub
                .connect(&info.endpoint(IOPUB))
                .await
                .context("connecting iopub")?;
            iopub.subscribe("").await.context("subscribing to iopub")?;
            let mut control = DealerSocket::new();
            control
                .connect(&info.endpoint(CONTROL))
                .await
                .context("connecting control")?;
            let liveness = Arc::new(Liveness::default());
            let watcher = heartbeat::watch(info, Arc::clone(&liveness)).await?;
            anyhow::Ok(Self {
                codec: Codec::new(&info.key),
                shell,
                iopub,
                control,
                liveness,
                watcher,
            })
        })
        .await
        .map_err(|_| anyhow!("connecting to the kernel took longer than {within:?}"))??;
        let mut client = connected;
        client.handshake(deadline).await?;
        Ok(client)
    }

    /// Sends kernel_info_request until a reply arrives on shell and its status
    /// messages arrive on IOPub (a SUB socket misses what is published before
    /// its subscription reaches the kernel).
    async fn handshake(&mut self, deadline: Instant) -> Result<()> {
        loop {
            let (id, request) = self.codec.request("kernel_info_request", json!({}));
            self.shell
                .send(request)
                .await
                .context("sending kernel_info_request")?;
            let attempt_end = (Instant::now() + Duration::from_millis(500)).min(deadline);
            let mut replied = false;
            let mut published = false;
            while !(replied && published) {
                let left = attempt_end.saturating_duration_since(Instant::now());
                let message = tokio::select! {
                    m = self.shell.recv() => m.map(|m| (true, m)),
                    m = self.iopub.recv() => m.map(|m| (false, m)),
                    _ = sleep(left) => break,
                };
                let (on_shell, raw) = message.context("receiving during kernel handshake")?;
                let message = self.codec.decode(raw)?;
                if message.parent_id() == id {
                    replied |= on_shell && message.msg_type() == "kernel_info_reply";
                    published |= !on_shell;
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
        max_output_bytes: usize,
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
        let (execution, _) = self
            .bounded(content, deadline, max_output_bytes, sink)
            .await?;
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
        let (_, reply) = self.bounded(content, deadline, 64 * 1024, None).await?;
        let value = &reply["user_expressions"]["r"];
        match value["data"]["text/plain"].as_str() {
            Some(text) if value["status"] == "ok" => Ok(text.to_string()),
            _ => Err(ExecuteError::Kernel(anyhow!(
                "evaluating in the kernel failed: {}: {}",
                value["ename"].as_str().unwrap_or("error"),
                value["evalue"].as_str().unwrap_or("no value")
            ))),
        }
    }

    /// True once the heartbeat watcher has declared the kernel dead.
    pub fn is_dead(&self) -> bool {
        self.liveness.is_dead()
    }

    /// One execute_request, raced against the kernel's death and the deadline.
    async fn bounded(
        &mut self,
        content: Value,
        deadline: Instant,
        max_output_bytes: usize,
        sink: Option<&OutputSink>,
    ) -> Result<(Execution, Value), ExecuteError> {
        let liveness = Arc::clone(&self.liveness);
        let run = async {
            tokio::select! {
                result = self.run(content, max_output_bytes, sink) => result,
                reason = liveness.dead() => Err(ExecuteError::Kernel(anyhow!(reason))),
            }
        };
        tokio::time::timeout_at(deadline, run)
            .await
            .unwrap_or(Err(ExecuteError::Timeout))
    }

    async fn run(
        &mut self,
        content: Value,
        max_output_bytes: usize,
        sink: Option<&OutputSink>,
    ) -> Result<(Execution, Value), ExecuteError> {
        let failed = |e: anyhow::Error| ExecuteError::Kernel(e);
        let (id, request) = self.codec.request("execute_request", content);
        self.shell
            .send(request)
            .await
            .context("sending execute_request")
            .map_err(failed)?;
        let mut execution = Execution::new(max_output_bytes);
        let mut reply: Option<Message> = None;
        let mut idle = false;
        // Set once the client went away and the kernel was asked to stop.
        let mut abandoned_at: Option<Instant> = None;
        while reply.is_none() || !idle {
            tokio::select! {
                raw = self.iopub.recv() => {
                    let raw = raw.context("receiving from iopub").map_err(failed)?;
                    let message = self.codec.decode(raw).map_err(failed)?;
                    if message.parent_id() != id {
                        continue;
                    }
                    if message.msg_type() == "status" {
                        idle |= message.content["execution_state"] == "idle";
                    } else {
                        execution.absorb(message.msg_type(), &message.content, sink);
                    }
                }
                raw = self.shell.recv(), if reply.is_none() => {
                    let raw = raw.context("receiving from shell").map_err(failed)?;
                    let message = self.codec.decode(raw).map_err(failed)?;
                    if message.parent_id() == id && message.msg_type() == "execute_reply" {
                        reply = Some(message);
                    }
                }
                _ = listener_gone(sink), if abandoned_at.is_none() => {
                    abandoned_at = Some(Instant::now());
                    self.interrupt().await.map_err(failed)?;
                }
                _ = sleep_until_some(abandoned_at.map(|at| at + ABANDON_GRACE)) => {
                    return Err(ExecuteError::Abandoned);
                }
            }
        }
        let reply = reply.expect("loop ends with a reply").content;
        execution.status = reply["status"].as_str().unwrap_or("error").to_string();
        execution.execution_count = reply["execution_count"].as_i64();
        execution.finish(sink);
        Ok((execution, reply))
    }

    /// Asks the kernel to interrupt the running code (SIGINT: KeyboardInterrupt).
    async fn interrupt(&mut self) -> Result<()> {
        let (_, request) = self.codec.request("interrupt_request", json!({}));
        self.control
            .send(request)
            .await
            .context("sending interrupt_request")
    }
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
