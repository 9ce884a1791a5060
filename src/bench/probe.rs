//! The pool-side figures: waiting for a warm pool, a new user's first request
//! while an idle worker waits, and how long the pool takes to refill after the
//! run's sessions are released.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::driver::Gateway;
use super::stats::{Outcome, Sample};

/// Idle workers in the pool and workers being created, from `/status`.
async fn pool(gateway: &Gateway) -> Result<(u64, u64)> {
    let status = gateway.status().await?;
    Ok((
        status["idle_workers_in_pool"].as_u64().unwrap_or(0),
        status["creating_workers"].as_u64().unwrap_or(0),
    ))
}

/// Waits until the pool holds `n` idle workers (and creates none); how long it took.
pub async fn wait_idle(gateway: &Gateway, n: u64, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let (idle, creating) = pool(gateway).await?;
        if idle >= n && creating == 0 {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= within {
            bail!("the pool has {idle} idle workers after {within:?}, not {n}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `count` new users, one after another, each sending one request to a warm
/// pool (refilled to `idle` between them) and releasing its session.
pub async fn new_users(gateway: &Gateway, count: usize, idle: u64) -> Result<Vec<Sample>> {
    let names = super::driver::user_names(count);
    let t0 = Instant::now();
    let mut samples = Vec::with_capacity(count);
    for (user, name) in names.iter().enumerate() {
        wait_idle(gateway, idle, Duration::from_secs(60)).await?;
        let start_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (outcome, status, latency_ms) = gateway.execute(name, "print(1)", "1\n").await;
        // Released only once the refill is done, and given time to be
        // removed: the next refill is a quiet start, as the profile needs.
        wait_idle(gateway, idle, Duration::from_secs(60)).await?;
        gateway.release(name).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        samples.push(Sample {
            user,
            index: 0,
            start_ms,
            latency_ms,
            outcome,
            status,
        });
        if outcome == Outcome::Transport {
            bail!("the gateway did not answer a new user's first request");
        }
    }
    Ok(samples)
}
