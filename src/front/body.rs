//! Time limits on reading a request body.
//!
//! A client that sends a body slowly (one byte a second, or a pause in the
//! middle) would otherwise hold its connection, and for an upload the user's
//! turn, for as long as it likes. The rule charges the client only for the
//! time the server waits on it (a handler that reads late, e.g. an upload
//! waiting for the user's running execution, costs the client nothing):
//!
//! - no wait for the next piece may last longer than `max_gap`;
//! - once the client has been waited on for `grace` in total, the body must
//!   have arrived at `min_rate` bytes per second of that waiting on average.
//!
//! A legit upload of 500 MiB at 1 MiB/s passes both; a trickle fails after
//! `grace`. A body that fails either gets [`BodyTimeout`] as its error, which
//! the API answers with 408.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

type BoxError = Box<dyn StdError + Send + Sync>;

/// How slowly a request body may arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRule {
    /// Longest wait for the next piece of the body.
    pub max_gap: Duration,
    /// Waiting time after which the average rate is checked.
    pub grace: Duration,
    /// Least average rate, bytes per second of waiting; 0 turns the rate rule off.
    pub min_rate: u64,
}

/// The error of a body that broke its [`BodyRule`]; the API answers 408.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTimeout {
    pub detail: String,
}

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl StdError for BodyTimeout {}

/// What the server has waited for so far on one body: the rule's arithmetic,
/// without timers, so that it can be tested with made-up instants.
#[derive(Debug, Clone)]
pub struct BodyClock {
    rule: BodyRule,
    /// Bytes received.
    bytes: u64,
    /// Time spent waiting on the client in earlier waits.
    waited: Duration,
    /// Start of the current wait, if the last poll found nothing.
    waiting_since: Option<Instant>,
}

impl BodyClock {
    pub fn new(rule: BodyRule) -> Self {
        Self {
            rule,
            bytes: 0,
            waited: Duration::ZERO,
            waiting_since: None,
        }
    }

    /// The last poll found nothing: a wait starts (or goes on).
    pub fn waiting(&mut self, now: Instant) {
        self.waiting_since.get_or_insert(now);
    }

    /// `n` bytes arrived at `now`; the current wait, if any, ends.
    pub fn received(&mut self, now: Instant, n: u64) {
        if let Some(since) = self.waiting_since.take() {
            self.waited += now.saturating_duration_since(since);
        }
        self.bytes += n;
    }

    /// When the current wait breaks the rule, if the client sends nothing
    /// before; `None` when not waiting.
    pub fn deadline(&self) -> Option<Instant> {
        let since = self.waiting_since?;
        let gap = since + self.rule.max_gap;
        if self.rule.min_rate == 0 {
            return Some(gap);
        }
        // Charged waiting time t breaks the rate rule once t >= grace and
        // bytes < min_rate * t, i.e. from t = max(grace, bytes / min_rate).
        let allowed = self
            .rule
            .grace
            .max(Duration::from_secs_f64(
                self.bytes as f64 / self.rule.min_rate as f64,
            ))
            .saturating_sub(self.waited);
        Some(gap.min(since + allowed))
    }

    /// Which rule the wait broke, when the deadline has passed at `now`.
    pub fn verdict(&self, now: Instant) -> Option<BodyTimeout> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        let since = self.waiting_since?;
        let detail = if now >= since + self.rule.max_gap {
            format!(
                "the request body stalled: nothing arrived for {} s",
                self.rule.max_gap.as_secs_f64()
            )
        } else {
            format!(
                "the request body arrived too slowly: {} bytes in {:.1} s, \
                 less than {} bytes/s",
                self.bytes,
                (self.waited + now.saturating_duration_since(since)).as_secs_f64(),
                self.rule.min_rate
            )
        };
        Some(BodyTimeout { detail })
    }
}

/// A request body that fails with [`BodyTimeout`] when it breaks the rule.
pub struct TimedBody {
    inner: Incoming,
    clock: BodyClock,
    timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
    failed: Option<BodyTimeout>,
}

impl TimedBody {
    pub fn new(inner: Incoming, rule: BodyRule, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            clock: BodyClock::new(rule),
            timer: None,
            metrics,
            failed: None,
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(failed) = &this.failed {
            return Poll::Ready(Some(Err(Box::new(failed.clone()))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let n = frame.data_ref().map_or(0, |data| data.len() as u64);
                this.clock.received(Instant::now(), n);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let now = Instant::now();
                this.clock.waiting(now);
                let Some(deadline) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let verdict = this.clock.verdict(Instant::now()).unwrap_or(BodyTimeout {
                    detail: "the request body timed out".into(),
                });
                Metrics::bump(&this.metrics.body_timeouts);
                this.failed = Some(verdict.clone());
                Poll::Ready(Some(Err(Box::new(verdict))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: BodyRule = BodyRule {
        max_gap: Duration::from_secs(10),
        grace: Duration::from_secs(30),
        min_rate: 1000,
    };

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn no_deadline_while_data_keeps_coming() {
        let t0 = Instant::now();
        let mut clock = BodyClock::new(RULE);
        assert_eq!(clock.deadline(), None);
        clock.received(t0, 4096);
        assert_eq!(clock.deadline(), None);
    }

    #[test]
    fn a_stall_breaks_the_gap_rule() {
        let t0 = Instant::now();
        let mut clock = BodyClock::new(RULE);
        clock.received(t0, 1_000_000);
        clock.waiting(t0 + secs(1.0));
        // Plenty of bytes: only the gap counts.
        assert_eq!(clock.deadline(), Some(t0 + secs(11.0)));
        assert_eq!(clock.verdict(t0 + secs(10.9)), None);
        let why = clock.verdict(t0 + secs(11.0)).unwrap();
        assert!(why.detail.contains("stalled"), "{why}");
        // Polling again during the same wait does not restart it.
        clock.waiting(t0 + secs(5.0));
        assert_eq!(clock.deadline(), Some(t0 + secs(11.0)));
    }

    #[test]
    fn a_trickle_breaks_the_rate_rule_after_the_grace() {
        let t0 = Instant::now();
        let mut clock = BodyClock::new(RULE);
        // One byte a second: every wait is short, the average is 1 byte/s.
        let mut t = t0;
        for _ in 0..29 {
            clock.waiting(t);
            t += secs(1.0);
            clock.received(t, 1);
        }
        clock.waiting(t);
        // 29 s waited so far; the grace ends 1 s into this wait.
        assert_eq!(clock.deadline(), Some(t + secs(1.0)));
        let why = clock.verdict(t + secs(1.0)).unwrap();
        assert!(why.detail.contains("too slowly"), "{why}");
    }

    #[test]
    fn a_fast_upload_with_pauses_passes() {
        let t0 = Instant::now();
        let mut clock = BodyClock::new(RULE);
        // 1 MiB/s in 64 KiB pieces for 100 s, each after a wait of 1/16 s.
        let mut t = t0;
        for _ in 0..1600 {
            clock.waiting(t);
            t += secs(1.0 / 16.0);
            assert!(clock.verdict(t).is_none());
            clock.received(t, 65536);
        }
        // A 9 s pause is still fine: 100 MiB in 109 s is far above 1000 bytes/s.
        clock.waiting(t);
        assert!(clock.verdict(t + secs(9.0)).is_none());
        assert_eq!(clock.deadline(), Some(t + secs(10.0)));
    }

    #[test]
    fn time_not_spent_waiting_is_not_charged() {
        let t0 = Instant::now();
        let mut clock = BodyClock::new(RULE);
        // The handler reads the body only 60 s after the request came (the
        // user's turn): the data is there at once, nothing is charged.
        clock.received(t0 + secs(60.0), 100);
        clock.waiting(t0 + secs(60.0));
        assert_eq!(clock.deadline(), Some(t0 + secs(70.0)));
    }

    #[test]
    fn the_rate_rule_can_be_off() {
        let t0 = Instant::now();
        let mut clock = BodyClock::new(BodyRule {
            min_rate: 0,
            ..RULE
        });
        clock.waiting(t0);
        assert_eq!(clock.deadline(), Some(t0 + secs(10.0)));
    }
}
