//! Where a kernel listens: ipc socket paths, as the kernel and as the gateway see them.
//!
//! The kernel runs in a container that sees the worker directory at a fixed
//! path, while the gateway sees the same directory somewhere under its runtime
//! dir. Both views share the socket names `k-<port>` and the HMAC key.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Socket "ports" of the ipc transport: suffixes of the socket file names.
pub const SHELL: u16 = 1;
pub const IOPUB: u16 = 2;
pub const STDIN: u16 = 3;
pub const CONTROL: u16 = 4;
pub const HEARTBEAT: u16 = 5;
/// Every channel's port.
pub const PORTS: [u16; 5] = [SHELL, IOPUB, STDIN, CONTROL, HEARTBEAT];

/// File name prefix of the sockets inside the worker directory.
const SOCKET_PREFIX: &str = "k";

/// Connection details of one kernel.
#[derive(Clone, Debug)]
pub struct ConnectionInfo {
    /// HMAC-SHA256 key, fresh per worker.
    pub key: String,
    /// The worker directory as the gateway sees it.
    pub host_dir: PathBuf,
    /// The same directory as the kernel sees it.
    pub kernel_dir: PathBuf,
}

impl ConnectionInfo {
    /// The connection file the kernel reads at start (its own view of the paths).
    pub fn kernel_file(&self) -> Value {
        json!({
            "transport": "ipc",
            "ip": self.kernel_dir.join(SOCKET_PREFIX),
            "shell_port": SHELL,
            "iopub_port": IOPUB,
            "stdin_port": STDIN,
            "control_port": CONTROL,
            "hb_port": HEARTBEAT,
            "key": self.key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        })
    }

    /// The socket file of `port` on the gateway's side.
    pub fn socket_path(&self, port: u16) -> PathBuf {
        socket_path(&self.host_dir, port)
    }
}

fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!("{SOCKET_PREFIX}-{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_views_name_the_same_socket() {
        let info = ConnectionInfo {
            key: "abc".into(),
            host_dir: "/run/user/1000/ci/workers/w1".into(),
            kernel_dir: "/run/kernel".into(),
        };
        assert_eq!(info.kernel_file()["ip"], "/run/kernel/k");
        assert_eq!(
            info.socket_path(SHELL),
            std::path::Path::new("/run/user/1000/ci/workers/w1/k-1")
        );
    }
}
