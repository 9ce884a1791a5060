//! How many workers start at once: the cores to begin with, then what the
//! measured start times say the host can take.
//!
//! A start is mostly CPU (runc, then Python's imports): running more at once
//! than the host has room for makes each one, and so the first user waiting
//! for it, later. After each start that ran beside others, the limit moves by
//! one: up (to twice the cores) while such starts take at most 1.5 times a
//! quiet start (the host had room), down (to one) when they take longer than
//! one quiet start per start running (nothing gained by running them
//! together: code in the sessions holds the CPU). A fixed
//! `pool.create_parallelism` turns the adaptation off.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// The start limit and the starts running under it.
pub struct Parallelism {
    adaptive: bool,
    cores: usize,
    state: Mutex<State>,
    freed: Notify,
}

struct State {
    limit: usize,
    running: usize,
    /// Moving average of starts that ran alone.
    quiet: Option<Duration>,
}

/// A start's turn; ends (and lets the next start begin) when dropped.
pub struct Permit<'a> {
    gate: &'a Parallelism,
    /// Starts running when this one began, itself included.
    pub concurrent: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.gate.state.lock().unwrap().running -= 1;
        self.gate.freed.notify_one();
    }
}

/// The limit after a start that took `took` while `concurrent` starts ran
/// (itself included), given a quiet start's time. Pure, for the tests.
pub fn next_limit(
    limit: usize,
    cores: usize,
    quiet: Duration,
    took: Duration,
    concurrent: usize,
) -> usize {
    let ceiling = (2 * cores).max(1);
    if concurrent < 2 || quiet.is_zero() {
        return limit.clamp(1, ceiling);
    }
    let ratio = took.as_secs_f64() / quiet.as_secs_f64();
    if ratio <= 1.5 && concurrent >= limit {
        (limit + 1).min(ceiling)
    } else if ratio > concurrent as f64 {
        limit.saturating_sub(1).max(1)
    } else {
        limit.clamp(1, ceiling)
    }
}

impl Parallelism {
    /// `fixed`: the operator's count; `None`: adaptive, starting at `cores`.
    pub fn new(fixed: Option<usize>, cores: usize) -> Self {
        let cores = cores.max(1);
        Self {
            adaptive: fixed.is_none(),
            cores,
            state: Mutex::new(State {
                limit: fixed.unwrap_or(cores).max(1),
                running: 0,
                quiet: None,
            }),
            freed: Notify::new(),
        }
    }

    /// Waits for a start's turn.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.state.lock().unwrap();
                if state.running < state.limit {
                    state.running += 1;
                    return Permit {
                        gate: self,
                        concurrent: state.running,
                    };
                }
            }
            freed.await;
        }
    }

    /// Learns from a successful start and moves the limit (when adaptive).
    pub fn record(&self, took: Duration, concurrent: usize) {
        let mut state = self.state.lock().unwrap();
        if concurrent <= 1 {
            state.quiet = Some(match state.quiet {
                Some(average) => (average * 3 + took) / 4,
                None => took,
            });
        }
        if !self.adaptive {
            return;
        }
        if let Some(quiet) = state.quiet {
            let before = state.limit;
            state.limit = next_limit(before, self.cores, quiet, took, concurrent);
            if state.limit > before {
                drop(state);
                self.freed.notify_one();
            }
        }
    }

    /// The limit now, and whether it adapts.
    pub fn limit(&self) -> (usize, bool) {
        (self.state.lock().unwrap().limit, self.adaptive)
    }

    /// A quiet start's moving average, once one was seen.
    #[cfg(test)]
    pub fn quiet_start(&self) -> Option<Duration> {
        self.state.lock().unwrap().quiet
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_limit_follows_measured_starts_within_bounds() {
        let quiet = 250 * MS;
        // Room: two at once took hardly longer than one alone: one more.
        assert_eq!(next_limit(2, 2, quiet, 300 * MS, 2), 3);
        // Not while the limit was not reached (nothing learned about it).
        assert_eq!(next_limit(3, 2, quiet, 300 * MS, 2), 3);
        // Never past twice the cores.
        assert_eq!(next_limit(4, 2, quiet, 300 * MS, 4), 4);
        // Sharing the CPU, but still a gain: unchanged.
        assert_eq!(next_limit(2, 2, quiet, 450 * MS, 2), 2);
        // Slower than doing them one after another: one fewer, never below one.
        assert_eq!(next_limit(3, 2, quiet, 900 * MS, 3), 2);
        assert_eq!(next_limit(1, 2, quiet, 900 * MS, 2), 1);
        // A start alone teaches nothing about running several.
        assert_eq!(next_limit(2, 2, quiet, 900 * MS, 1), 2);
    }

    #[tokio::test]
    async fn permits_respect_the_limit_and_a_raise_wakes_a_waiter() {
        let gate = Parallelism::new(None, 1);
        let first = gate.acquire().await;
        assert_eq!(first.concurrent, 1);
        // Limit 1: a second start waits.
        let second = tokio::time::timeout(50 * MS, gate.acquire()).await;
        assert!(second.is_err());
        gate.record(250 * MS, 1); // a quiet start
        drop(first);
        let a = gate.acquire().await;
        assert_eq!(gate.limit(), (1, true));
        // Two at once ran as fast as one (measured): the limit rises to 2.
        gate.record(260 * MS, 2);
        assert_eq!(gate.limit(), (2, true));
        let b = tokio::time::timeout(50 * MS, gate.acquire()).await.unwrap();
        assert_eq!(b.concurrent, 2);
        drop((a, b));
    }

    #[test]
    fn a_fixed_count_does_not_adapt() {
        let gate = Parallelism::new(Some(3), 2);
        gate.record(100 * MS, 1);
        gate.record(1000 * MS, 3);
        assert_eq!(gate.limit(), (3, false));
        assert_eq!(gate.quiet_start(), Some(100 * MS));
    }
}
