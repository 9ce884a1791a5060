//! One connection to one kernel: handshake, then executions one at a time.
//!
//! The caller owns the client exclusively (behind the session's lock), so
//! messages on the shell and IOPub channels belong to at most one request in
//! flight; anything with another parent id is stale and skipped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, SubSocket};

use super::connection::{ConnectionInfo, IOPUB, SHELL};
use super::heartbeat::{self, Liveness};
use super::outputs::Execution;
use super::wire::{Codec, Message};

/// Why an execution did not produce a result. Either way the kernel is suspect.
#[derive(Debug)]
pub enum ExecuteError {
    /// The deadline passed before the kernel went idle.
    Timeout,
    /// The kernel stopped answering or sent garbage.
    Kernel(anyhow::Error),
}

/// A connected kernel.
pub struct KernelClient {
    codec: Codec,
    shell: DealerSocket,
    iopub: SubSocket,
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
            let liveness = Arc::new(Liveness::default());
            let watcher = heartbeat::watch(info, Arc::clone(&liveness)).await?;
            anyhow::Ok(Self {
                codec: Codec::new(&info.key),
                shell,
                iopub,
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
    pub async fn execute(
        &mut self,
        code: &str,
        deadline: Instant,
        max_output_bytes: usize,
    ) -> Result<Execution, ExecuteError> {
        let liveness = Arc::clone(&self.liveness);
        let run = async {
            tokio::select! {
                result = self.run(code, max_output_bytes) => result,
                reason = liveness.dead() => Err(anyhow!(reason)),
            }
        };
        match tokio::time::timeout_at(deadline, run).await {
            Ok(result) => result.map_err(ExecuteError::Kernel),
            Err(_) => Err(ExecuteError::Timeout),
        }
    }

    /// True once the heartbeat watcher has declared the kernel dead.
    pub fn is_dead(&self) -> bool {
        self.liveness.is_dead()
    }

    async fn run(&mut self, code: &str, max_output_bytes: usize) -> Result<Execution> {
        let (id, request) = self.codec.request(
            "execute_request",
            json!({
                "code": code,
                "silent": false,
                "store_history": true,
                "user_expressions": {},
                "allow_stdin": false,
                "stop_on_error": true,
            }),
        );
        self.shell
            .send(request)
            .await
            .context("sending execute_request")?;
        let mut execution = Execution::new(max_output_bytes);
        let mut reply: Option<Message> = None;
        let mut idle = false;
        while reply.is_none() || !idle {
            tokio::select! {
                raw = self.iopub.recv() => {
                    let message = self.codec.decode(raw.context("receiving from iopub")?)?;
                    if message.parent_id() != id {
                        continue;
                    }
                    if message.msg_type() == "status" {
                        idle |= message.content["execution_state"] == "idle";
                    } else {
                        execution.absorb(message.msg_type(), &message.content);
                    }
                }
                raw = self.shell.recv(), if reply.is_none() => {
                    let message = self.codec.decode(raw.context("receiving from shell")?)?;
                    if message.parent_id() == id && message.msg_type() == "execute_reply" {
                        reply = Some(message);
                    }
                }
            }
        }
        let reply = reply.expect("loop ends with a reply");
        execution.status = reply.content["status"]
            .as_str()
            .unwrap_or("error")
            .to_string();
        execution.execution_count = reply.content["execution_count"].as_i64();
        execution.finish();
        Ok(execution)
    }
}
