//! The cold-start profile: what each phase of the recent worker starts took,
//! so that `/status` and `code-interpreter bench` show where a start's time
//! goes (Podman's calls, the runtime, the entrypoint and Python, the kernel's
//! first reply) instead of one opaque figure.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::worker::StartProfile;

/// Starts kept for the figures.
const KEEP: usize = 64;

/// One start, in milliseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Start {
    /// Numbers the starts of this gateway: 1, 2, … (a client keeps the last
    /// it saw and reads only newer ones).
    pub seq: u64,
    /// Starts running at once when this one began, itself included (1: quiet).
    pub concurrent: usize,
    pub total_ms: f64,
    pub prepare_ms: f64,
    pub create_ms: f64,
    pub start_ms: f64,
    pub listen_ms: f64,
    pub connect_ms: f64,
    /// Importing `pool.preload` afterwards (not part of the start); null if none.
    pub preload_ms: Option<f64>,
}

/// Percentiles of recent starts for `/status`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Summary {
    pub starts: u64,
    /// Of the kept starts, those that ran alone, and their total's percentiles.
    pub quiet: usize,
    pub quiet_p50_ms: Option<f64>,
    pub quiet_p95_ms: Option<f64>,
    /// Every kept start's total.
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    /// The kept starts, oldest first.
    pub recent: Vec<Start>,
}

/// The recent starts.
#[derive(Default)]
pub struct ColdStarts {
    kept: Mutex<(u64, VecDeque<Start>)>,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

impl ColdStarts {
    /// Records a start; returns its number.
    pub fn record(&self, profile: &StartProfile, concurrent: usize) -> u64 {
        let mut kept = self.kept.lock().unwrap();
        kept.0 += 1;
        let seq = kept.0;
        if kept.1.len() == KEEP {
            kept.1.pop_front();
        }
        kept.1.push_back(Start {
            seq,
            concurrent,
            total_ms: ms(profile.total()),
            prepare_ms: ms(profile.prepare),
            create_ms: ms(profile.create),
            start_ms: ms(profile.start),
            listen_ms: ms(profile.listen),
            connect_ms: ms(profile.connect),
            preload_ms: None,
        });
        seq
    }

    /// Adds the preload's duration to start `seq` (if still kept).
    pub fn preloaded(&self, seq: u64, took: Duration) {
        let mut kept = self.kept.lock().unwrap();
        if let Some(start) = kept.1.iter_mut().find(|s| s.seq == seq) {
            start.preload_ms = Some(ms(took));
        }
    }

    pub fn summary(&self) -> Summary {
        let kept = self.kept.lock().unwrap();
        let totals = |quiet_only: bool| {
            let mut v: Vec<f64> = (kept.1.iter())
                .filter(|s| !quiet_only || s.concurrent == 1)
                .map(|s| s.total_ms)
                .collect();
            v.sort_by(f64::total_cmp);
            v
        };
        let (quiet, all) = (totals(true), totals(false));
        Summary {
            starts: kept.0,
            quiet: quiet.len(),
            quiet_p50_ms: percentile(&quiet, 0.5),
            quiet_p95_ms: percentile(&quiet, 0.95),
            p50_ms: percentile(&all, 0.5),
            p95_ms: percentile(&all, 0.95),
            recent: kept.1.iter().cloned().collect(),
        }
    }
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    let n = sorted.len();
    (n > 0).then(|| sorted[((n as f64 * q).ceil() as usize).clamp(1, n) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(total_ms: u64) -> StartProfile {
        StartProfile {
            listen: Duration::from_millis(total_ms),
            ..StartProfile::default()
        }
    }

    #[test]
    fn keeps_the_last_starts_and_their_percentiles() {
        let starts = ColdStarts::default();
        for n in 1..=100u64 {
            let seq = starts.record(&profile(n), if n % 2 == 0 { 1 } else { 2 });
            assert_eq!(seq, n);
        }
        starts.preloaded(100, Duration::from_millis(7));
        starts.preloaded(1, Duration::from_millis(7)); // no longer kept
        let summary = starts.summary();
        assert_eq!(summary.starts, 100);
        assert_eq!(summary.recent.len(), KEEP);
        assert_eq!(summary.recent[0].seq, 37);
        assert_eq!(summary.recent.last().unwrap().preload_ms, Some(7.0));
        assert_eq!(summary.quiet, 32);
        // Kept: 37..=100; quiet ones: the even, 38..=100.
        assert_eq!(summary.p50_ms, Some(68.0));
        assert_eq!(summary.quiet_p50_ms, Some(68.0));
        assert_eq!(summary.quiet_p95_ms, Some(98.0));
        assert_eq!(ColdStarts::default().summary().p50_ms, None);
    }
}
