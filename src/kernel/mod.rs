//! A Jupyter kernel client, knowing nothing of HTTP or Podman.
//!
//! `zmtp` speaks ZeroMQ's wire protocol with a bound on every length, `wire`
//! encodes and signs Jupyter messages, `connection` describes where a kernel
//! listens, `client` runs executions, `heartbeat` guards that the kernel lives
//! and behaves, and `outputs` collects an execution's outputs within the cap.

pub mod client;
pub mod connection;
#[cfg(test)]
pub mod fake;
pub mod heartbeat;
pub mod outputs;
pub mod wire;
pub mod zmtp;

pub use client::{ExecuteError, KernelClient};
pub use connection::ConnectionInfo;
pub use outputs::{Execution, OutputLimits};
