//! A Jupyter kernel client over ZeroMQ, knowing nothing of HTTP or Podman.
//!
//! `wire` encodes and signs protocol messages, `connection` describes where a
//! kernel listens, `client` runs executions, `heartbeat` watches that the
//! kernel lives and `outputs` turns the kernel's IOPub messages into the
//! API's result.

pub mod client;
pub mod connection;
pub mod heartbeat;
pub mod outputs;
pub mod wire;

pub use client::{ExecuteError, KernelClient};
pub use connection::ConnectionInfo;
pub use outputs::Execution;
