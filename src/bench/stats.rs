//! Turns per-request samples into the figures the report prints: throughput,
//! latency percentiles, outcome and status counts (pure, unit-tested).
//!
//! The gateway run and the baseline produce the same `Sample`s, so both are
//! summarised by exactly the same code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// 200, status ok, and exactly the expected output.
    Verified,
    /// 200 and ok, but another output.
    Mismatch,
    /// 200 with status error: the code raised.
    KernelError,
    /// An HTTP status other than 200.
    HttpError,
    /// No HTTP answer at all (connection refused or reset, client timeout).
    Transport,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Verified,
        Outcome::Mismatch,
        Outcome::KernelError,
        Outcome::HttpError,
        Outcome::Transport,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Mismatch => "wrong output",
            Outcome::KernelError => "kernel error",
            Outcome::HttpError => "HTTP error",
            Outcome::Transport => "no answer",
        }
    }
}

/// One request as measured by a driver.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    pub user: usize,
    pub index: usize,
    /// When it was sent, since the run started.
    pub start_ms: f64,
    pub latency_ms: f64,
    pub outcome: Outcome,
    /// HTTP status; 0 without one (and for the baseline, which has no HTTP).
    #[serde(default)]
    pub status: u16,
}

/// Latency percentiles, milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// What a run amounts to.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub requests: usize,
    /// From the first request sent to the last answer received.
    pub wall_s: f64,
    pub rps: f64,
    /// Share of requests answered 200 with status ok (verified or not).
    pub success_rate: f64,
    /// Share of requests whose output was exactly the expected one.
    pub verified_rate: f64,
    pub latency_ms: Latency,
    pub outcomes: BTreeMap<String, usize>,
    pub status_codes: BTreeMap<String, usize>,
}

/// The `q`-quantile (0..=1) of sorted values, by the nearest-rank method.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn latency(values: &[f64]) -> Latency {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    Latency {
        mean,
        p50: percentile(&sorted, 0.50),
        p95: percentile(&sorted, 0.95),
        p99: percentile(&sorted, 0.99),
        max: sorted.last().copied().unwrap_or(0.0),
    }
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let n = samples.len();
    let first = samples
        .iter()
        .map(|s| s.start_ms)
        .fold(f64::INFINITY, f64::min);
    let last = samples
        .iter()
        .map(|s| s.start_ms + s.latency_ms)
        .fold(0.0, f64::max);
    let wall_s = if n == 0 { 0.0 } else { (last - first) / 1000.0 };
    let count = |pred: &dyn Fn(&Sample) -> bool| samples.iter().filter(|s| pred(s)).count();
    let share = |k: usize| if n == 0 { 0.0 } else { k as f64 / n as f64 };
    let mut outcomes = BTreeMap::new();
    let mut status_codes = BTreeMap::new();
    for s in samples {
        *outcomes.entry(s.outcome.label().to_string()).or_insert(0) += 1;
        if s.status != 0 || s.outcome == Outcome::Transport {
            let key = match s.status {
                0 => "none".to_string(),
                code => code.to_string(),
            };
            *status_codes.entry(key).or_insert(0) += 1;
        }
    }
    let latencies: Vec<f64> = samples.iter().map(|s| s.latency_ms).collect();
    Summary {
        requests: n,
        wall_s,
        rps: if wall_s > 0.0 { n as f64 / wall_s } else { 0.0 },
        success_rate: share(count(&|s| {
            matches!(s.outcome, Outcome::Verified | Outcome::Mismatch)
        })),
        verified_rate: share(count(&|s| s.outcome == Outcome::Verified)),
        latency_ms: latency(&latencies),
        outcomes,
        status_codes,
    }
}

/// The most requests per second the think times alone allow: every user
/// sends its requests with zero latency and the slowest user sets the wall.
pub fn think_ceiling(requests: usize, think_ms_per_user: &[f64]) -> Option<f64> {
    let slowest = think_ms_per_user.iter().copied().fold(0.0, f64::max);
    (slowest > 0.0).then(|| requests as f64 / (slowest / 1000.0))
}

/// Counts of values in `bins` equal-width bins from 0 to the largest value;
/// returns the bin width too.
pub fn histogram(values: &[f64], bins: usize) -> (Vec<usize>, f64) {
    let max = values.iter().copied().fold(0.0, f64::max);
    let width = if max > 0.0 { max / bins as f64 } else { 1.0 };
    let mut counts = vec![0; bins.max(1)];
    for &v in values {
        let i = ((v / width) as usize).min(counts.len() - 1);
        counts[i] += 1;
    }
    (counts, width)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(start: f64, latency: f64, outcome: Outcome, status: u16) -> Sample {
        Sample {
            user: 0,
            index: 0,
            start_ms: start,
            latency_ms: latency,
            outcome,
            status,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.95), 95.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.95), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
        let l = latency(&[3.0, 1.0, 2.0]);
        assert_eq!((l.p50, l.max, l.mean), (2.0, 3.0, 2.0));
    }

    #[test]
    fn summary_counts_rates_and_wall_time() {
        let samples = vec![
            sample(0.0, 10.0, Outcome::Verified, 200),
            sample(10.0, 10.0, Outcome::Mismatch, 200),
            sample(20.0, 10.0, Outcome::HttpError, 503),
            sample(30.0, 970.0, Outcome::Transport, 0),
        ];
        let s = summarize(&samples);
        assert_eq!(s.requests, 4);
        assert!((s.wall_s - 1.0).abs() < 1e-9);
        assert!((s.rps - 4.0).abs() < 1e-9);
        assert_eq!(s.success_rate, 0.5);
        assert_eq!(s.verified_rate, 0.25);
        assert_eq!(s.status_codes["200"], 2);
        assert_eq!(s.status_codes["503"], 1);
        assert_eq!(s.status_codes["none"], 1);
        assert_eq!(s.outcomes["verified"], 1);
    }

    #[test]
    fn the_baseline_has_no_status_codes() {
        let s = summarize(&[sample(0.0, 1.0, Outcome::Verified, 0)]);
        assert!(s.status_codes.is_empty());
        assert_eq!(summarize(&[]).rps, 0.0);
    }

    #[test]
    fn ceiling_is_set_by_the_slowest_user() {
        assert_eq!(think_ceiling(100, &[1000.0, 2000.0]), Some(50.0));
        assert_eq!(think_ceiling(100, &[0.0, 0.0]), None);
    }

    #[test]
    fn histogram_puts_the_maximum_in_the_last_bin() {
        let (counts, width) = histogram(&[0.0, 1.0, 2.0, 10.0], 5);
        assert_eq!(width, 2.0);
        assert_eq!(counts, vec![2, 1, 0, 0, 1]);
        assert_eq!(counts.iter().sum::<usize>(), 4);
    }
}
