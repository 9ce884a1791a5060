//! Runs the baseline: the same plan against local IPython kernels driven by
//! Python's jupyter_client (scripts/bench/baseline.py, compiled into this
//! binary), so the gateway is measured against the kernels' own ceiling.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};

use super::stats::Sample;
use super::workload::UserPlan;

const SCRIPT: &str = include_str!("../../scripts/bench/baseline.py");

/// What the script reports.
#[derive(Deserialize)]
pub struct BaselineRun {
    pub samples: Vec<Sample>,
    /// CPU time of the Python driver itself during the run.
    pub cpu_ms: f64,
    pub versions: Value,
}

/// Runs the baseline with `python` (which must import ipykernel and jupyter_client).
pub fn run(python: &str, plans: &[UserPlan], kernel_args: &[String]) -> Result<BaselineRun> {
    let input = json!({
        "users": plans,
        "timeout_s": 60,
        "kernel_args": kernel_args,
    });
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting the baseline with {python}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input.to_string().as_bytes())
        .context("sending the plan to the baseline")?;
    drop(stdin);
    let output = child
        .wait_with_output()
        .context("waiting for the baseline")?;
    if !output.status.success() {
        bail!(
            "the baseline ({python}) failed with {}; does it import ipykernel and \
             jupyter_client? (scripts/bench.sh prepares such a venv)",
            output.status
        );
    }
    serde_json::from_slice(&output.stdout).context("reading the baseline's JSON")
}
