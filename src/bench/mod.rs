//! `code-interpreter bench`: measures a gateway under the original service's
//! workload (N users, each sending stateful requests one after another), and
//! optionally the same plan against local kernels driven by jupyter_client, so
//! the gateway is compared with the kernels' own ceiling on the same machine.
//!
//! One job per file: the plan (workload), the HTTP users (driver), the pool
//! figures (probe), bursts of new users and the cold-start profile (burst),
//! the baseline process (baseline), the figures (stats), the
//! process CPU/memory (procstat), the text/JSON (report), the charts (plot).

mod baseline;
mod burst;
mod driver;
mod plot;
mod probe;
mod procstat;
mod report;
mod stats;
mod workload;

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use report::{BaselineReport, ProcessReport, Report};
pub use workload::Scenario;

/// Options of `code-interpreter bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The gateway to measure.
    #[arg(long, default_value = "http://127.0.0.1:3874")]
    url: String,
    /// API token; default: the configured one (as `code-interpreter token` prints it).
    #[arg(long, env = "CODE_INTERPRETER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Simulated users, each with its own session.
    #[arg(long, default_value_t = 30)]
    users: usize,
    /// Requests per user (the first one sets up the state).
    #[arg(long, default_value_t = 100)]
    requests: usize,
    /// Think time between a user's requests, uniform in MIN..MAX seconds (0 0: none).
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [0.1, 0.5])]
    think: Vec<f64>,
    #[arg(long, value_enum, default_value_t = Scenario::Mixed)]
    scenario: Scenario,
    /// Seed of the plan (code, values and think times).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also run the plan against local kernels with jupyter_client.
    #[arg(long)]
    baseline: bool,
    /// Python with ipykernel and jupyter_client for --baseline.
    #[arg(long, env = "CODE_INTERPRETER_BENCH_PYTHON", default_value = "python3")]
    baseline_python: String,
    /// Extra arguments for the baseline's kernels (e.g. --HistoryManager.enabled=False).
    #[arg(long, allow_hyphen_values = true)]
    baseline_kernel_arg: Vec<String>,
    /// New users sent one at a time to a warm pool after the run (0: skip).
    #[arg(long, default_value_t = 20)]
    new_users: usize,
    /// Do not wait for `users` idle workers before the run (the sessions are
    /// created inside the measured run, by the pool as the service keeps
    /// it), nor measure the refill.
    #[arg(long)]
    no_wait: bool,
    /// Before the run, N new users arrive at once (each sends one request)
    /// against the pool as the service keeps it; repeatable (--burst 30 --burst 100).
    #[arg(long, value_name = "N")]
    burst: Vec<usize>,
    /// N new sessions one at a time, each timing `import pandas` and then a
    /// first plot (what `pool.preload` is for).
    #[arg(long, value_name = "N", default_value_t = 0)]
    first_imports: usize,
    /// Skip the users x requests run (bursts and new users only).
    #[arg(long)]
    no_workload: bool,
    /// The gateway's pid (same host): report its CPU per request and RSS.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write SVG charts (pie, histogram, latency over time) into this directory.
    #[arg(long, value_name = "DIR")]
    plot: Option<PathBuf>,
}

/// Runs the benchmark; `configured_token` is used when no token was given.
pub fn run(args: BenchArgs, configured_token: impl FnOnce() -> Result<String>) -> Result<()> {
    anyhow::ensure!(
        args.users > 0 && args.requests > 0,
        "--users and --requests must be positive"
    );
    let think = (args.think[0], args.think[1]);
    anyhow::ensure!(
        think.0 >= 0.0 && think.1 >= think.0,
        "--think MIN MAX needs 0 <= MIN <= MAX"
    );
    let token = match &args.token {
        Some(token) => token.clone(),
        None => configured_token().context("reading the configured token (or pass --token)")?,
    };
    let plans = workload::plan(args.scenario, args.users, args.requests, think, args.seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut report = runtime.block_on(measure_gateway(&args, &token, &plans))?;
    if args.baseline {
        eprintln!("bench: running the baseline ({} local kernels)", args.users);
        let run = baseline::run(&args.baseline_python, &plans, &args.baseline_kernel_arg)?;
        let summary = stats::summarize(&run.samples);
        if let Some(dir) = &args.plot {
            write_plots(dir, "baseline", &run.samples, &args)?;
        }
        report.baseline = Some(BaselineReport {
            rps_ratio: report.gateway.rps / summary.rps.max(1e-9),
            summary,
            driver_cpu_s: run.cpu_ms / 1000.0,
            versions: run.versions,
        });
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::text(&report));
    }
    Ok(())
}

async fn measure_gateway(
    args: &BenchArgs,
    token: &str,
    plans: &[workload::UserPlan],
) -> Result<Report> {
    let most = args.burst.iter().copied().max().unwrap_or(0);
    let gateway = driver::Gateway::new(&args.url, token, args.users.max(most))?;
    let mut bursts = Vec::new();
    for &users in &args.burst {
        anyhow::ensure!(users > 0, "--burst needs a positive count");
        bursts.push(burst::burst(&gateway, users).await?);
    }
    let first_imports = if args.first_imports > 0 {
        Some(burst::first_imports(&gateway, args.first_imports).await?)
    } else {
        None
    };
    let idle = args.users as u64;
    if !args.no_wait && !args.no_workload {
        eprintln!("bench: waiting for {idle} idle workers");
        probe::wait_idle(&gateway, idle, Duration::from_secs(300)).await?;
    }
    let load_average = fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    eprintln!(
        "bench: {} users x {} requests against {}",
        args.users, args.requests, args.url
    );
    let names = driver::user_names(args.users);
    let gateway_before = args.gateway_pid.and_then(procstat::sample);
    let cpu_before = procstat::own_cpu_s();
    let (samples, release, releases_failed) = if args.no_workload {
        (Vec::new(), Duration::ZERO, 0)
    } else {
        driver::run(&gateway, &names, plans).await
    };
    let bench_cpu_s = procstat::own_cpu_s() - cpu_before;
    let gateway_after = args.gateway_pid.and_then(procstat::sample);
    let summary = stats::summarize(&samples);
    let pool_refill_s = if args.no_wait || args.no_workload {
        None
    } else {
        let refill = probe::wait_idle(&gateway, idle, Duration::from_secs(120)).await?;
        Some((release + refill).as_secs_f64())
    };
    // New users one at a time: each takes a warm worker, and the refill
    // that follows is a quiet start, profiled by the gateway.
    let (first, cold_start) = if args.new_users > 0 {
        let kept = if args.no_wait || args.no_workload {
            burst::settle(&gateway, Duration::from_secs(300)).await?
        } else {
            idle
        };
        let since = burst::last_start(&gateway).await?;
        let samples = probe::new_users(&gateway, args.new_users, kept).await?;
        probe::wait_idle(&gateway, kept, Duration::from_secs(60)).await?;
        let latencies: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
        (
            Some(stats::latency(&latencies)),
            burst::cold_starts(&gateway, since).await?,
        )
    } else {
        (None, None)
    };
    if let Some(dir) = &args.plot {
        write_plots(dir, "gateway", &samples, args)?;
    }
    let think_totals: Vec<f64> = plans.iter().map(|p| p.think_ms.iter().sum()).collect();
    Ok(Report {
        url: args.url.clone(),
        scenario: format!("{:?}", args.scenario).to_lowercase(),
        users: args.users,
        requests_per_user: args.requests,
        think_s: (args.think[0], args.think[1]),
        seed: args.seed,
        load_average,
        think_ceiling_rps: stats::think_ceiling(summary.requests, &think_totals),
        gateway: summary,
        baseline: None,
        new_user_first_request_ms: first,
        bursts,
        cold_start,
        first_imports,
        sessions_in_run: args.no_wait,
        workload: !args.no_workload,
        new_users: args.new_users,
        pool_refill_s,
        releases_failed,
        release_s: release.as_secs_f64(),
        bench_cpu_s,
        gateway_process: match (gateway_before, gateway_after, args.gateway_pid) {
            (Some(before), Some(after), Some(pid)) => Some(ProcessReport {
                pid,
                cpu_s: after.cpu_s - before.cpu_s,
                cpu_ms_per_request: 1000.0 * (after.cpu_s - before.cpu_s)
                    / samples.len().max(1) as f64,
                rss_mib: after.rss_kib as f64 / 1024.0,
                peak_rss_mib: after.peak_rss_kib as f64 / 1024.0,
            }),
            _ => None,
        },
    })
}

/// Writes `<who>-outcomes.svg`, `<who>-latency-histogram.svg` and `<who>-latency-over-time.svg`.
fn write_plots(
    dir: &PathBuf,
    who: &str,
    samples: &[stats::Sample],
    args: &BenchArgs,
) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let what = format!(
        "{who}: {} users x {} requests, think {}-{} s",
        args.users, args.requests, args.think[0], args.think[1]
    );
    let charts = [
        ("outcomes", plot::pie(&format!("Outcomes, {what}"), samples)),
        (
            "latency-histogram",
            plot::latency_histogram(&format!("Latency, {what}"), samples),
        ),
        (
            "latency-over-time",
            plot::latency_over_time(&format!("Latency over time, {what}"), samples),
        ),
    ];
    for (name, svg) in charts {
        let path = dir.join(format!("{who}-{name}.svg"));
        fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
