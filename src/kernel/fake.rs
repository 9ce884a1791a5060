//! A fake IPython kernel for unit tests: binds the five unix sockets in a
//! directory and answers like ipykernel, over just enough ZMTP.
//!
//! Shell (a ROUTER) answers `kernel_info_request` and `execute_request` in
//! order, each between `busy` and `idle` on IOPub (a PUB); the heartbeat
//! echoes; control and stdin are read and ignored. Code is not run, it says
//! what to do: `sleep <ms>` answers after that long, `hang` never answers,
//! `exit` closes every socket (the process died); anything else is echoed
//! on stdout. A silent request's user expressions evaluate to themselves.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use super::connection::{ConnectionInfo, HEARTBEAT, IOPUB, PORTS, SHELL};
use super::wire::{Codec, DELIMITER};
use super::zmtp;

/// A running fake kernel; dropping it ends it (every socket closes).
pub struct FakeKernel {
    exit: Arc<watch::Sender<bool>>,
    /// The code of every execute request it received, in order.
    pub executed: Arc<Mutex<Vec<String>>>,
}

impl Drop for FakeKernel {
    fn drop(&mut self) {
        self.exit();
    }
}

/// What the tasks of one fake kernel share.
struct Shared {
    /// Signs with the kernel's key.
    codec: Codec,
    /// Connected IOPub subscribers.
    subscribers: tokio::sync::Mutex<Vec<OwnedWriteHalf>>,
    executed: Arc<Mutex<Vec<String>>>,
    exit: Arc<watch::Sender<bool>>,
    count: Mutex<i64>,
}

impl FakeKernel {
    /// Binds the sockets in `dir` (named as `ConnectionInfo` names them) and serves them.
    pub fn start(dir: &Path, key: &str) -> Self {
        let info = ConnectionInfo {
            key: key.to_string(),
            host_dir: dir.to_path_buf(),
            kernel_dir: PathBuf::new(),
        };
        let (exit, _) = watch::channel(false);
        let exit = Arc::new(exit);
        let executed = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            codec: Codec::new(key),
            subscribers: tokio::sync::Mutex::new(Vec::new()),
            executed: Arc::clone(&executed),
            exit: Arc::clone(&exit),
            count: Mutex::new(0),
        });
        for port in PORTS {
            let listener =
                UnixListener::bind(info.socket_path(port)).expect("binding a fake socket");
            let shared = Arc::clone(&shared);
            let mut exit = exit.subscribe();
            tokio::spawn(async move {
                loop {
                    let stream = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => return,
                        },
                        _ = exit.wait_for(|gone| *gone) => return,
                    };
                    let shared = Arc::clone(&shared);
                    let mut exit = exit.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve(port, stream, shared) => {}
                            _ = exit.wait_for(|gone| *gone) => {}
                        }
                    });
                }
            });
        }
        Self { exit, executed }
    }

    /// Ends the kernel as if its process died: every connection closes.
    pub fn exit(&self) {
        self.exit.send_replace(true);
    }
}

/// Serves one connection to the socket of `port` until it closes.
async fn serve(port: u16, stream: UnixStream, shared: Arc<Shared>) -> Option<()> {
    let kind: &[u8] = if port == IOPUB { b"PUB" } else { b"ROUTER" };
    let (mut read, mut write) = handshake(stream, kind).await?;
    match port {
        IOPUB => {
            shared.subscribers.lock().await.push(write);
            // Subscriptions and anything else: read and ignored.
            while read_message(&mut read).await.is_some() {}
        }
        HEARTBEAT => {
            while let Some(ping) = read_message(&mut read).await {
                send(&mut write, &ping).await?;
            }
        }
        SHELL => {
            while let Some(request) = read_message(&mut read).await {
                answer(&shared, &mut write, &request).await?;
            }
        }
        _ => while read_message(&mut read).await.is_some() {},
    }
    Some(())
}

/// Answers one shell request as ipykernel does: busy, outputs, reply, idle.
async fn answer(shared: &Shared, shell: &mut OwnedWriteHalf, request: &[Bytes]) -> Option<()> {
    let at = request.iter().position(|f| f.as_ref() == DELIMITER)?;
    let header: Value = serde_json::from_slice(request.get(at + 2)?).ok()?;
    let content: Value = serde_json::from_slice(request.get(at + 5)?).ok()?;
    let msg_type = header["msg_type"].as_str()?.to_string();
    publish(
        shared,
        &header,
        "status",
        json!({"execution_state": "busy"}),
    )
    .await;
    let reply = match msg_type.as_str() {
        "kernel_info_request" => ("kernel_info_reply", json!({"status": "ok"})),
        "execute_request" => {
            let code = content["code"].as_str().unwrap_or_default().to_string();
            shared.executed.lock().unwrap().push(code.clone());
            match code.split_once(' ').unwrap_or((&code, "")) {
                ("hang", _) => std::future::pending().await,
                ("exit", _) => {
                    shared.exit.send_replace(true);
                    std::future::pending().await
                }
                ("sleep", ms) => {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await
                }
                _ if code.is_empty() => {}
                _ => {
                    let text = json!({"name": "stdout", "text": code});
                    publish(shared, &header, "stream", text).await;
                }
            }
            let count = {
                let mut count = shared.count.lock().unwrap();
                *count += 1;
                *count
            };
            let expressions: serde_json::Map<String, Value> = content["user_expressions"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, expr)| {
                    let value = json!({"status": "ok", "data": {"text/plain": expr}});
                    (name.clone(), value)
                })
                .collect();
            let reply =
                json!({"status": "ok", "execution_count": count, "user_expressions": expressions});
            ("execute_reply", reply)
        }
        _ => return Some(()),
    };
    send(shell, &sign(&shared.codec, reply.0, &header, reply.1)).await?;
    publish(
        shared,
        &header,
        "status",
        json!({"execution_state": "idle"}),
    )
    .await;
    Some(())
}

/// Publishes a message on IOPub to every subscriber.
async fn publish(shared: &Shared, parent: &Value, msg_type: &str, content: Value) {
    let message = sign(&shared.codec, msg_type, parent, content);
    let mut subscribers = shared.subscribers.lock().await;
    let mut alive = Vec::new();
    for mut subscriber in subscribers.drain(..) {
        if send(&mut subscriber, &message).await.is_some() {
            alive.push(subscriber);
        }
    }
    *subscribers = alive;
}

/// A signed message answering `parent`.
fn sign(codec: &Codec, msg_type: &str, parent: &Value, content: Value) -> Vec<Bytes> {
    let header = json!({
        "msg_id": crate::random::hex(16),
        "session": "fake",
        "username": "kernel",
        "msg_type": msg_type,
        "version": "5.3",
    });
    codec.sign(&header, parent, &content)
}

/// The server's side of the ZMTP 3.0 NULL handshake, as a `kind` socket.
async fn handshake(stream: UnixStream, kind: &[u8]) -> Option<(OwnedReadHalf, OwnedWriteHalf)> {
    let (mut read, mut write) = stream.into_split();
    write.write_all(&zmtp::greeting()).await.ok()?;
    let mut theirs = [0u8; 64];
    read.read_exact(&mut theirs).await.ok()?;
    write.write_all(&zmtp::ready_command(kind)).await.ok()?;
    read_frame(&mut read).await?; // the peer's READY
    Some((read, write))
}

/// Reads one frame: its flags and body.
async fn read_frame(read: &mut OwnedReadHalf) -> Option<(u8, Bytes)> {
    let flags = read.read_u8().await.ok()?;
    let len = if flags & 0x02 != 0 {
        read.read_u64().await.ok()?
    } else {
        u64::from(read.read_u8().await.ok()?)
    };
    let mut body = vec![0u8; usize::try_from(len).ok()?];
    read.read_exact(&mut body).await.ok()?;
    Some((flags, body.into()))
}

/// Reads one multipart message, skipping commands; None once the connection closed.
async fn read_message(read: &mut OwnedReadHalf) -> Option<Vec<Bytes>> {
    let mut parts = Vec::new();
    loop {
        let (flags, body) = read_frame(read).await?;
        if flags & 0x04 != 0 {
            continue;
        }
        parts.push(body);
        if flags & 0x01 == 0 {
            return Some(parts);
        }
    }
}

async fn send(write: &mut OwnedWriteHalf, parts: &[Bytes]) -> Option<()> {
    write.write_all(&zmtp::encode(parts)).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{KernelClient, OutputLimits};

    #[tokio::test]
    async fn a_client_connects_and_executes_in_order() {
        let dir = std::env::temp_dir().join(format!("ci-fake-kernel-{}", crate::random::hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = FakeKernel::start(&dir, "k3y");
        let info = ConnectionInfo {
            key: "k3y".into(),
            host_dir: dir.clone(),
            kernel_dir: PathBuf::new(),
        };
        let mut client = KernelClient::connect(&info, Duration::from_secs(2))
            .await
            .unwrap();
        let limits = OutputLimits {
            max_output_bytes: 1 << 20,
            max_flood_bytes: 1 << 20,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let first = client
            .execute("hello", deadline, &limits, None)
            .await
            .unwrap();
        assert_eq!(first.status, "ok");
        assert_eq!(first.execution_count, Some(1));
        let value = client.evaluate("1 + 1", deadline).await.unwrap();
        assert_eq!(value, "1 + 1");
        assert_eq!(*kernel.executed.lock().unwrap(), ["hello", ""]);
        drop(kernel);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
