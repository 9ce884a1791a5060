//! Drives the gateway over HTTP: one task per simulated user, each sending its
//! plan's requests one after another on keep-alive connections with
//! TCP_NODELAY, checking every answer against the expected output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::stats::{Outcome, Sample};
use super::workload::UserPlan;

/// An HTTP client for one gateway.
#[derive(Clone)]
pub struct Gateway {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Gateway {
    pub fn new(url: &str, token: &str, users: usize) -> Result<Self> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(users.max(1) * 2)
            .pool_idle_timeout(Duration::from_secs(90))
            .timeout(Duration::from_secs(120))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// POSTs JSON; the status and the body (Null when not JSON).
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .header("X-Auth-Token", &self.token)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.url))?;
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer of POST {path}"))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// `GET /status` as JSON.
    pub async fn status(&self) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}/status", self.url))
            .header("X-Auth-Token", &self.token)
            .send()
            .await
            .with_context(|| format!("GET {}/status", self.url))?;
        anyhow::ensure!(
            response.status() == 200,
            "GET /status answered {}",
            response.status()
        );
        response.json().await.context("reading /status")
    }

    /// Runs `code` for `user`; the sample's outcome, status and latency.
    pub async fn execute(&self, user: &str, code: &str, expect: &str) -> (Outcome, u16, f64) {
        let start = Instant::now();
        let answer = self
            .post("/execute", &json!({"user_uuid": user, "code": code}))
            .await;
        let latency_ms = start.elapsed().as_secs_f64() * 1000.0;
        let (outcome, status) = match answer {
            Err(_) => (Outcome::Transport, 0),
            Ok((200, body)) if body["status"] == "ok" => {
                if body["result_text"] == expect {
                    (Outcome::Verified, 200)
                } else {
                    (Outcome::Mismatch, 200)
                }
            }
            Ok((200, _)) => (Outcome::KernelError, 200),
            Ok((status, _)) => (Outcome::HttpError, status),
        };
        (outcome, status, latency_ms)
    }

    /// Ends `user`'s session; true on 200.
    pub async fn release(&self, user: &str) -> bool {
        matches!(
            self.post("/release", &json!({"user_uuid": user})).await,
            Ok((200, _))
        )
    }
}

/// The names of a run's users: unique per run, so no session is reused.
pub fn user_names(users: usize) -> Vec<String> {
    let tag = crate::random::hex(4);
    (0..users).map(|u| format!("bench-{tag}-{u}")).collect()
}

/// Runs every user's plan at once; returns the samples, then how long the
/// releases took (they are not part of the measured requests).
pub async fn run(
    gateway: &Gateway,
    names: &[String],
    plans: &[UserPlan],
) -> (Vec<Sample>, Duration, usize) {
    let t0 = Instant::now();
    let plans = Arc::new(plans.to_vec());
    let tasks: Vec<_> = names
        .iter()
        .cloned()
        .enumerate()
        .map(|(user, name)| {
            let gateway = gateway.clone();
            let plans = Arc::clone(&plans);
            tokio::spawn(async move { run_user(&gateway, &name, user, &plans[user], t0).await })
        })
        .collect();
    let mut samples = Vec::with_capacity(plans.iter().map(|p| p.steps.len()).sum());
    for task in tasks {
        samples.extend(task.await.unwrap_or_default());
    }
    let released_at = Instant::now();
    let releases = futures_util::future::join_all(names.iter().map(|n| gateway.release(n))).await;
    let failed = releases.iter().filter(|ok| !**ok).count();
    (samples, released_at.elapsed(), failed)
}

async fn run_user(
    gateway: &Gateway,
    name: &str,
    user: usize,
    plan: &UserPlan,
    t0: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(plan.steps.len());
    for (index, step) in plan.steps.iter().enumerate() {
        let start_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (outcome, status, latency_ms) = gateway.execute(name, &step.code, &step.expect).await;
        samples.push(Sample {
            user,
            index,
            start_ms,
            latency_ms,
            outcome,
            status,
        });
        if let Some(&think) = plan.think_ms.get(index) {
            if think > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(think / 1000.0)).await;
            }
        }
    }
    samples
}
