//! A smoke test of `code-interpreter bench` (benchmarks are not tests): two
//! users x five requests against a real test gateway prove the command works,
//! verifies outputs, reports JSON and writes its charts.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Gateway, Options};

#[tokio::test(flavor = "multi_thread")]
async fn bench_runs_a_small_workload_against_a_gateway() {
    let gateway = Gateway::start(Options {
        min_idle: 2,
        max_workers: 3,
        ..Options::default()
    })
    .await;
    gateway.wait_idle(2, Duration::from_secs(60)).await;
    let plots = std::env::temp_dir().join(format!("ci-bench-plots-{}", common::random_tag()));
    let (url, token) = (gateway.url.clone(), gateway.token.clone());
    let plot_dir = plots.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_code-interpreter"))
            .args(["bench", "--url", &url, "--token", &token])
            .args(["--users", "2", "--requests", "5", "--think", "0", "0"])
            .args([
                "--scenario",
                "mixed",
                "--new-users",
                "1",
                "--json",
                "--plot",
            ])
            .arg(&plot_dir)
            .output()
            .expect("running code-interpreter bench")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {}\n{stdout}\nlog:\n{}",
        String::from_utf8_lossy(&output.stderr),
        gateway.log()
    );
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("bench --json prints JSON");
    assert_eq!(report["gateway"]["requests"], 10, "{report}");
    assert_eq!(report["gateway"]["verified_rate"], 1.0, "{report}");
    assert_eq!(report["gateway"]["status_codes"]["200"], 10, "{report}");
    assert_eq!(report["releases_failed"], 0, "{report}");
    assert!(report["gateway"]["rps"].as_f64().unwrap() > 0.0);
    assert!(report["new_user_first_request_ms"]["p50"].as_f64().unwrap() > 0.0);
    for chart in ["outcomes", "latency-histogram", "latency-over-time"] {
        let svg = std::fs::read_to_string(plots.join(format!("gateway-{chart}.svg"))).unwrap();
        assert!(svg.starts_with("<svg"), "{chart}");
    }
    let _ = std::fs::remove_dir_all(&plots);
    // The bench released its sessions: only the warm pool is left.
    gateway.wait_idle(2, Duration::from_secs(60)).await;
    assert_eq!(gateway.status().await["sessions"], 0);
}
