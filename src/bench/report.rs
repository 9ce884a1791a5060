//! The bench's result: one serialisable record (`--json`) and its text form,
//! gateway and baseline side by side.

use std::fmt::Write;

use serde::Serialize;
use serde_json::Value;

use super::burst::{BurstReport, ColdStartReport, FirstImportsReport};
use super::stats::{Latency, Summary};

/// Everything one bench invocation measured.
#[derive(Serialize)]
pub struct Report {
    pub url: String,
    pub scenario: String,
    pub users: usize,
    pub requests_per_user: usize,
    pub think_s: (f64, f64),
    pub seed: u64,
    pub load_average: Option<String>,
    pub gateway: Summary,
    pub baseline: Option<BaselineReport>,
    /// requests/s the think times alone allow (None without think time).
    pub think_ceiling_rps: Option<f64>,
    /// Latency of new users' first requests on a warm pool.
    pub new_user_first_request_ms: Option<Latency>,
    /// New users arriving at once, before the run.
    pub bursts: Vec<BurstReport>,
    /// The gateway's profile of the quiet starts during the new users.
    pub cold_start: Option<ColdStartReport>,
    /// A new session's `import pandas` and first plot.
    pub first_imports: Option<FirstImportsReport>,
    /// The run's sessions were created inside it (`--no-wait`).
    pub sessions_in_run: bool,
    /// The users x requests run took place.
    pub workload: bool,
    pub new_users: usize,
    /// From releasing the run's sessions until the pool is full again.
    pub pool_refill_s: Option<f64>,
    pub releases_failed: usize,
    pub release_s: f64,
    pub bench_cpu_s: f64,
    pub gateway_process: Option<ProcessReport>,
}

#[derive(Serialize)]
pub struct BaselineReport {
    pub summary: Summary,
    pub driver_cpu_s: f64,
    pub versions: Value,
    /// gateway rps / baseline rps.
    pub rps_ratio: f64,
}

#[derive(Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    pub cpu_s: f64,
    pub cpu_ms_per_request: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

fn lat(l: &Latency) -> String {
    format!("{:.1} / {:.1} / {:.1} / {:.1}", l.p50, l.p95, l.p99, l.max)
}

pub fn text(r: &Report) -> String {
    let mut out = String::new();
    for b in &r.bursts {
        let _ = writeln!(
            out,
            "burst: {} new users at once ({} idle workers ready): first answer p50/p95/max {:.0} / {:.0} / {:.0} ms; refused (503) {}, failed {}",
            b.users, b.idle_before, b.first_answer_ms.p50, b.first_answer_ms.p95, b.first_answer_ms.max, b.refused, b.failed
        );
    }
    if let Some(f) = &r.first_imports {
        let _ = writeln!(
            out,
            "new session's first steps ({} sessions, p50/max): import pandas {:.0} / {:.0} ms, then a first plot {:.0} / {:.0} ms; failed {}",
            f.sessions, f.import_pandas_ms.p50, f.import_pandas_ms.max, f.first_plot_ms.p50, f.first_plot_ms.max, f.failed
        );
    }
    if let Some(c) = &r.cold_start {
        let phases: Vec<String> = (c.phase_p50_ms.iter())
            .map(|(phase, ms)| format!("{phase} {ms:.0}"))
            .collect();
        let _ = writeln!(
            out,
            "cold start ({} quiet starts, container creation to first kernel reply): p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms; phases p50 (ms): {}",
            c.quiet_starts, c.total_ms.p50, c.total_ms.p95, c.total_ms.max, phases.join(", ")
        );
    }
    if let Some(first) = &r.new_user_first_request_ms {
        let _ = writeln!(
            out,
            "new user's first request on a warm pool ({}): p50/p95/p99/max {} ms",
            r.new_users,
            lat(first)
        );
    }
    if !r.workload {
        return out;
    }
    let _ = writeln!(
        out,
        "code-interpreter bench: {} users x {} requests, scenario {}, think {}-{} s, seed {}{}",
        r.users,
        r.requests_per_user,
        r.scenario,
        r.think_s.0,
        r.think_s.1,
        r.seed,
        if r.sessions_in_run {
            ", sessions created inside the run"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "gateway {}; load average before: {}",
        r.url,
        r.load_average.as_deref().unwrap_or("?")
    );
    let g = &r.gateway;
    let b = r.baseline.as_ref().map(|b| &b.summary);
    let row = |out: &mut String, name: &str, gv: String, bv: Option<String>| {
        let _ = writeln!(out, "  {name:<30} {gv:>26} {:>26}", bv.unwrap_or_default());
    };
    row(
        &mut out,
        "",
        "gateway".into(),
        b.map(|_| "baseline (jupyter_client)".into()),
    );
    row(
        &mut out,
        "requests",
        g.requests.to_string(),
        b.map(|b| b.requests.to_string()),
    );
    row(
        &mut out,
        "wall time (s)",
        format!("{:.2}", g.wall_s),
        b.map(|b| format!("{:.2}", b.wall_s)),
    );
    row(
        &mut out,
        "requests/s",
        format!("{:.1}", g.rps),
        b.map(|b| format!("{:.1}", b.rps)),
    );
    row(
        &mut out,
        "success",
        pct(g.success_rate),
        b.map(|b| pct(b.success_rate)),
    );
    row(
        &mut out,
        "verified",
        pct(g.verified_rate),
        b.map(|b| pct(b.verified_rate)),
    );
    row(
        &mut out,
        "latency p50/p95/p99/max (ms)",
        lat(&g.latency_ms),
        b.map(|b| lat(&b.latency_ms)),
    );
    if let Some(base) = &r.baseline {
        let _ = writeln!(
            out,
            "  gateway/baseline throughput: {:.2}x   (baseline: {})",
            base.rps_ratio, base.versions
        );
    }
    let codes: Vec<String> = g
        .status_codes
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect();
    let _ = writeln!(out, "  status codes: {}", codes.join(", "));
    let outcomes: Vec<String> = g
        .outcomes
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    let _ = writeln!(out, "  outcomes: {}", outcomes.join(", "));
    if let Some(ceiling) = r.think_ceiling_rps {
        let _ = write!(
            out,
            "  think-time ceiling {ceiling:.1} req/s: gateway at {}",
            pct(g.rps / ceiling)
        );
        if let Some(b) = b {
            let _ = write!(out, ", baseline at {}", pct(b.rps / ceiling));
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "  releases: {} sessions in {:.2} s, {} failed",
        r.users, r.release_s, r.releases_failed
    );
    if let Some(refill) = r.pool_refill_s {
        let _ = writeln!(
            out,
            "  pool refilled to {} idle workers in {refill:.2} s after the releases",
            r.users
        );
    }
    let _ = writeln!(
        out,
        "  bench CPU: {:.2} s over {:.2} s ({:.0}% of one core, {:.3} ms/request)",
        r.bench_cpu_s,
        g.wall_s,
        100.0 * r.bench_cpu_s / g.wall_s.max(1e-9),
        1000.0 * r.bench_cpu_s / g.requests.max(1) as f64
    );
    if let Some(base) = &r.baseline {
        let _ = writeln!(
            out,
            "  baseline driver CPU: {:.2} s ({:.3} ms/request)",
            base.driver_cpu_s,
            1000.0 * base.driver_cpu_s / base.summary.requests.max(1) as f64
        );
    }
    if let Some(p) = &r.gateway_process {
        let _ = writeln!(
            out,
            "  gateway pid {}: CPU {:.2} s ({:.3} ms/request), RSS {:.1} MiB, peak {:.1} MiB",
            p.pid, p.cpu_s, p.cpu_ms_per_request, p.rss_mib, p.peak_rss_mib
        );
    }
    out
}
