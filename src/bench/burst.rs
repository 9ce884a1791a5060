//! Bursts and cold starts: N new users arriving at once against the pool as
//! the service keeps it (time to each one's first answer, refusals), and the
//! gateway's own profile of the worker starts made while the bench ran.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::future::join_all;
use serde::Serialize;
use serde_json::Value;

use super::driver::{self, Gateway};
use super::stats::{self, Latency, Outcome};

/// What one burst measured.
#[derive(Serialize)]
pub struct BurstReport {
    pub users: usize,
    /// Idle workers when the burst began (the service's own pool, settled).
    pub idle_before: u64,
    /// From the burst's start to each user's first answer.
    pub first_answer_ms: Latency,
    /// Answered 503 (no worker within the queue deadline).
    pub refused: usize,
    /// Any other failure, or an answer that was not the expected output.
    pub failed: usize,
}

/// The gateway's profile of the quiet starts it made during the bench.
#[derive(Serialize)]
pub struct ColdStartReport {
    /// Starts that ran alone (nothing else starting).
    pub quiet_starts: usize,
    pub total_ms: Latency,
    /// Medians of each phase (see `/status` `cold_start`).
    pub phase_p50_ms: Vec<(String, f64)>,
}

/// A new session's first heavy steps, timed (`--first-imports`).
#[derive(Serialize)]
pub struct FirstImportsReport {
    pub sessions: usize,
    /// `import pandas` as a session's first request.
    pub import_pandas_ms: Latency,
    /// Then a first matplotlib plot (PNG).
    pub first_plot_ms: Latency,
    pub failed: usize,
}

const FIRST_PLOT: &str = "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()";

/// `sessions` new users one at a time on a settled pool: each times
/// `import pandas`, then a first plot, and releases.
pub async fn first_imports(gateway: &Gateway, sessions: usize) -> Result<FirstImportsReport> {
    let mut pandas = Vec::new();
    let mut plot = Vec::new();
    let mut failed = 0;
    for name in driver::user_names(sessions) {
        settle(gateway, Duration::from_secs(300)).await?;
        let (outcome, _, ms) = gateway.execute(&name, "import pandas", "").await;
        failed += usize::from(outcome != Outcome::Verified);
        pandas.push(ms);
        let started = Instant::now();
        let (status, body) = gateway
            .post(
                "/execute",
                &serde_json::json!({"user_uuid": name, "code": FIRST_PLOT}),
            )
            .await?;
        plot.push(started.elapsed().as_secs_f64() * 1000.0);
        failed +=
            usize::from(status != 200 || body["result_base64"].as_str().is_none_or(str::is_empty));
        gateway.release(&name).await;
    }
    Ok(FirstImportsReport {
        sessions,
        import_pandas_ms: stats::latency(&pandas),
        first_plot_ms: stats::latency(&plot),
        failed,
    })
}

pub const PHASES: [&str; 5] = ["prepare", "create", "start", "listen", "connect"];

/// The pool's idle workers, creations, kept minimum and live workers, from `/status`.
async fn pool(gateway: &Gateway) -> Result<(u64, u64, u64, u64)> {
    let status = gateway.status().await?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Ok((
        n(&status["idle_workers_in_pool"]),
        n(&status["creating_workers"]),
        n(&status["capacity"]["min_idle"]),
        n(&status["total_workers"]),
    ))
}

/// Waits until the pool is back at its kept minimum, creates nothing and
/// has no other worker left (released sessions' workers are removed).
pub async fn settle(gateway: &Gateway, within: Duration) -> Result<u64> {
    let start = Instant::now();
    loop {
        let (idle, creating, min_idle, live) = pool(gateway).await?;
        if idle >= min_idle && creating == 0 && live == idle {
            return Ok(idle);
        }
        if start.elapsed() >= within {
            bail!("the pool did not settle within {within:?}: {idle} idle of {min_idle}, {creating} starting");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `users` new users at once, each sending one request; then all released.
pub async fn burst(gateway: &Gateway, users: usize) -> Result<BurstReport> {
    let idle_before = settle(gateway, Duration::from_secs(300)).await?;
    eprintln!("bench: burst of {users} new users ({idle_before} idle workers ready)");
    let names = driver::user_names(users);
    let start = Instant::now();
    let answers = join_all(names.iter().enumerate().map(|(n, name)| async move {
        let code = format!("print({n})");
        let (outcome, status, _) = gateway.execute(name, &code, &format!("{n}\n")).await;
        (outcome, status, start.elapsed().as_secs_f64() * 1000.0)
    }))
    .await;
    join_all(names.iter().map(|name| gateway.release(name))).await;
    let refused = answers.iter().filter(|a| a.1 == 503).count();
    let failed = (answers.iter())
        .filter(|a| a.0 != Outcome::Verified && a.1 != 503)
        .count();
    let times: Vec<f64> = answers.iter().map(|a| a.2).collect();
    Ok(BurstReport {
        users,
        idle_before,
        first_answer_ms: stats::latency(&times),
        refused,
        failed,
    })
}

/// The number of the gateway's latest start (none yet: 0).
pub async fn last_start(gateway: &Gateway) -> Result<u64> {
    Ok(gateway.status().await?["cold_start"]["starts"]
        .as_u64()
        .unwrap_or(0))
}

/// The quiet starts numbered after `since`, from `/status` (the gateway
/// keeps its last 64); None if there were none.
pub async fn cold_starts(gateway: &Gateway, since: u64) -> Result<Option<ColdStartReport>> {
    let status = gateway.status().await?;
    Ok(summarize_starts(&status["cold_start"]["recent"], since))
}

fn summarize_starts(recent: &Value, since: u64) -> Option<ColdStartReport> {
    let quiet: Vec<&Value> = (recent.as_array()?.iter())
        .filter(|s| s["seq"].as_u64().unwrap_or(0) > since && s["concurrent"] == 1)
        .collect();
    if quiet.is_empty() {
        return None;
    }
    let field = |name: &str| -> Vec<f64> {
        (quiet.iter())
            .map(|s| s[name].as_f64().unwrap_or(0.0))
            .collect()
    };
    Some(ColdStartReport {
        quiet_starts: quiet.len(),
        total_ms: stats::latency(&field("total_ms")),
        phase_p50_ms: PHASES
            .iter()
            .map(|phase| {
                let p50 = stats::latency(&field(&format!("{phase}_ms"))).p50;
                (phase.to_string(), p50)
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_quiet_starts_after_the_mark_count() {
        let start = |seq: u64, concurrent: u64, total: f64| {
            json!({"seq": seq, "concurrent": concurrent, "total_ms": total,
                   "prepare_ms": 0.1, "create_ms": 10.0, "start_ms": 50.0,
                   "listen_ms": total - 70.0, "connect_ms": 9.9})
        };
        let recent = json!([
            start(1, 1, 900.0),
            start(2, 1, 200.0),
            start(3, 2, 500.0),
            start(4, 1, 240.0),
            start(5, 1, 220.0)
        ]);
        let report = summarize_starts(&recent, 1).unwrap();
        assert_eq!(report.quiet_starts, 3);
        assert_eq!(report.total_ms.p50, 220.0);
        assert_eq!(report.total_ms.max, 240.0);
        assert_eq!(report.phase_p50_ms[2], ("start".to_string(), 50.0));
        assert!(summarize_starts(&recent, 5).is_none());
        assert!(summarize_starts(&json!(null), 0).is_none());
    }
}
