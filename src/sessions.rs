//! The session table: which worker serves which user, and one execution at a
//! time per user, in arrival order.
//!
//! A session's worker slot is behind a FIFO lock; whoever holds it and finds it
//! empty takes a fresh worker from the pool (that request reports
//! `session_created`). A worker that timed out or failed is taken out of the
//! slot and destroyed, so the user's next request starts afresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::kernel::outputs::OutputSink;
use crate::kernel::{ExecuteError, Execution, KernelClient, OutputLimits};
use crate::metrics::Metrics;
use crate::pool::{Pool, TakeError};
use crate::shutdown;
use crate::state::{unix_now, Registry};
use crate::worker::Worker;

/// How often the reaper looks for expired sessions and dead idle kernels.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Why an execution produced no result.
#[derive(Debug)]
pub enum SessionError {
    /// The code ran past its deadline; the worker was destroyed.
    Timeout(Duration),
    /// The kernel died or stopped answering; the worker was destroyed.
    KernelFailed(String),
    /// The worker broke the protocol or a bound; it was destroyed.
    Misbehaved(String),
    /// No capacity for a new worker.
    Full,
    /// A worker could not be started.
    WorkerUnavailable(String),
    /// Too many requests of this user are already waiting.
    QueueFull(usize),
    /// The user has no live session (and the operation does not start one).
    NoSession,
    /// The client went away and the interrupted kernel did not stop; reset.
    Abandoned,
}

/// The result of one execution.
pub struct Outcome {
    pub execution: Execution,
    /// True when this request got a fresh kernel (no state from before).
    pub session_created: bool,
    pub duration: Duration,
}

/// One user's session.
struct Session {
    /// The session's worker; its lock orders the user's requests (FIFO).
    worker: Arc<tokio::sync::Mutex<Option<Worker>>>,
    /// Requests of this user running or waiting.
    pending: AtomicUsize,
    created: Instant,
    /// When the last request of this user finished (or the session began).
    last_used: Mutex<Instant>,
}

/// When sessions end by themselves.
pub struct Expiry {
    pub idle_timeout: Duration,
    pub max_age: Duration,
}

/// All sessions, keyed by `user_uuid` (only ever a map key, never a name or path).
pub struct Sessions {
    table: Mutex<HashMap<String, Arc<Session>>>,
    pool: Arc<Pool>,
    metrics: Arc<Metrics>,
    max_queue: usize,
    output_limits: OutputLimits,
    expiry: Expiry,
    registry: Arc<Registry>,
    /// Executions running right now.
    busy: AtomicUsize,
}

/// Counts of sessions for `/status`.
pub struct SessionCounts {
    pub sessions: usize,
    pub busy: usize,
}

impl Sessions {
    pub fn new(
        pool: Arc<Pool>,
        metrics: Arc<Metrics>,
        max_queue: usize,
        output_limits: OutputLimits,
        expiry: Expiry,
        registry: Arc<Registry>,
    ) -> Self {
        Self {
            table: Mutex::new(HashMap::new()),
            pool,
            metrics,
            max_queue,
            output_limits,
            expiry,
            registry,
            busy: AtomicUsize::new(0),
        }
    }

    /// Runs `code` in `user`'s kernel, waiting behind the user's earlier
    /// requests. With a `sink`, outputs are also streamed there as they come.
    pub async fn execute(
        &self,
        user: &str,
        code: &str,
        timeout: Duration,
        sink: Option<OutputSink>,
    ) -> Result<Outcome, SessionError> {
        let mut lease = self.lease(user, true).await?;
        let session_created = lease.session_created;
        self.busy.fetch_add(1, Ordering::SeqCst);
        let _busy = Decrement(&self.busy);
        Metrics::bump(&self.metrics.executions);
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let kernel = &mut lease.worker_mut().kernel;
        let result = kernel
            .execute(code, deadline, &self.output_limits, sink.as_ref())
            .await;
        let execution = self.settle(&mut lease, result, timeout)?;
        if execution.status != "ok" {
            Metrics::bump(&self.metrics.execution_errors);
        }
        Ok(Outcome {
            execution,
            session_created,
            duration: started.elapsed(),
        })
    }

    /// Runs `operation` on `user`'s kernel, in turn with the user's other
    /// requests (the file API). Without `create`, a user with no live session
    /// gets `NoSession` instead of a fresh kernel. `timeout` is what the
    /// operation allows each kernel call (for the error message).
    pub async fn with_kernel<T>(
        &self,
        user: &str,
        create: bool,
        timeout: Duration,
        operation: impl AsyncFnOnce(&mut KernelClient) -> Result<T, ExecuteError>,
    ) -> Result<T, SessionError> {
        let mut lease = self.lease(user, create).await?;
        let result = operation(&mut lease.worker_mut().kernel).await;
        self.settle(&mut lease, result, timeout)
    }

    /// Waits for `user`'s turn and hands out their worker, taking a fresh one
    /// from the pool when the session has none (and `create` allows it).
    async fn lease(&self, user: &str, create: bool) -> Result<Lease, SessionError> {
        let session = if create {
            self.session(user)
        } else {
            let existing = self.table.lock().unwrap().get(user).cloned();
            existing.ok_or(SessionError::NoSession)?
        };
        let waiting = session.pending.fetch_add(1, Ordering::SeqCst);
        let pending = Pending(Arc::clone(&session));
        if waiting > self.max_queue {
            return Err(SessionError::QueueFull(self.max_queue));
        }
        let mut slot = Arc::clone(&session.worker).lock_owned().await;
        self.discard_if_dead(&mut slot);
        let session_created = slot.is_none();
        if session_created {
            if !create {
                return Err(SessionError::NoSession);
            }
            let worker = match self.pool.take().await {
                Ok(worker) => worker,
                Err(e) => {
                    drop(slot);
                    self.forget_if_empty(user, &session);
                    return Err(match e {
                        TakeError::Full => SessionError::Full,
                        TakeError::Failed(e) => SessionError::WorkerUnavailable(format!("{e:#}")),
                    });
                }
            };
            tracing::info!(worker = worker.id, "session started");
            self.registry.assign(&worker.id, user, unix_now());
            Metrics::bump(&self.metrics.sessions_created);
            *slot = Some(worker);
        }
        Ok(Lease {
            slot,
            session_created,
            _pending: pending,
        })
    }

    /// Removes `session` from the table if it never got a worker and no other
    /// request of the user waits for it (a user refused with 503 leaves nothing).
    fn forget_if_empty(&self, user: &str, session: &Arc<Session>) {
        let mut table = self.table.lock().unwrap();
        let ours = table.get(user).is_some_and(|s| Arc::ptr_eq(s, session));
        let alone = session.pending.load(Ordering::SeqCst) == 1;
        let empty = session.worker.try_lock().is_ok_and(|slot| slot.is_none());
        if ours && alone && empty {
            table.remove(user);
        }
    }

    /// Passes a result through; on failure destroys the worker (it is suspect
    /// whatever happened) so the user's next request starts afresh.
    fn settle<T>(
        &self,
        lease: &mut Lease,
        result: Result<T, ExecuteError>,
        timeout: Duration,
    ) -> Result<T, SessionError> {
        let failure = match result {
            Ok(value) => return Ok(value),
            Err(failure) => failure,
        };
        let worker = lease.slot.take().expect("a lease holds a worker");
        tracing::warn!(worker = worker.id, "destroying worker: {failure:?}");
        self.pool.destroy(worker.into_remains());
        Err(match failure {
            ExecuteError::Timeout => {
                Metrics::bump(&self.metrics.timeouts);
                SessionError::Timeout(timeout)
            }
            ExecuteError::Kernel(e) => {
                Metrics::bump(&self.metrics.kernel_failures);
                SessionError::KernelFailed(format!("{e:#}"))
            }
            ExecuteError::Protocol(why) => {
                Metrics::bump(&self.metrics.protocol_violations);
                SessionError::Misbehaved(why)
            }
            ExecuteError::Abandoned => {
                Metrics::bump(&self.metrics.abandoned);
                SessionError::Abandoned
            }
        })
    }

    /// Restores a session a previous run of the gateway had, with its worker.
    pub fn adopt(&self, user: &str, worker: Worker, started_unix: u64) {
        let age = Duration::from_secs(unix_now().saturating_sub(started_unix));
        let created = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
        self.table.lock().unwrap().insert(
            user.to_string(),
            Arc::new(Session {
                worker: Arc::new(tokio::sync::Mutex::new(Some(worker))),
                pending: AtomicUsize::new(0),
                created,
                last_used: Mutex::new(Instant::now()),
            }),
        );
    }

    /// Ends `user`'s session; its worker is destroyed once its current execution ends.
    /// Returns whether there was a session.
    pub fn release(&self, user: &str) -> bool {
        let Some(session) = self.table.lock().unwrap().remove(user) else {
            return false;
        };
        Metrics::bump(&self.metrics.sessions_released);
        let pool = Arc::clone(&self.pool);
        tokio::spawn(async move {
            if let Some(worker) = session.worker.lock().await.take() {
                tracing::info!(worker = worker.id, "session released");
                pool.destroy(worker.into_remains());
            }
        });
        true
    }

    /// Reaps every second, until the shutdown. Spawn once.
    pub async fn run_reaper(self: Arc<Self>, mut shutdown: shutdown::Listener) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(REAP_EVERY) => self.reap(),
                _ = shutdown.recv() => return,
            }
        }
    }

    /// Destroys workers that died while their session was idle, and releases
    /// sessions idle or old past their limits.
    fn reap(&self) {
        let sessions: Vec<(String, Arc<Session>)> = self
            .table
            .lock()
            .unwrap()
            .iter()
            .map(|(user, session)| (user.clone(), Arc::clone(session)))
            .collect();
        for (user, session) in sessions {
            let idle_for = session.last_used.lock().unwrap().elapsed();
            let expired = idle_for >= self.expiry.idle_timeout
                && session.pending.load(Ordering::SeqCst) == 0
                || session.created.elapsed() >= self.expiry.max_age;
            if expired {
                tracing::info!("session expired (idle {} s)", idle_for.as_secs());
                Metrics::bump(&self.metrics.sessions_expired);
                self.release(&user);
                continue;
            }
            // A locked slot has a request in flight, which notices a death itself.
            if let Ok(mut slot) = session.worker.try_lock() {
                self.discard_if_dead(&mut slot);
            }
        }
    }

    /// Empties the slot if its kernel died while idle; the next request of the
    /// user then starts afresh (`session_created`).
    fn discard_if_dead(&self, slot: &mut Option<Worker>) {
        if slot.as_ref().is_some_and(|w| w.kernel.is_dead()) {
            let worker = slot.take().expect("checked above");
            match worker.kernel.violation() {
                Some(why) => {
                    tracing::warn!(
                        worker = worker.id,
                        "destroying worker: it broke the protocol: {why}"
                    );
                    Metrics::bump(&self.metrics.protocol_violations);
                }
                None => {
                    tracing::warn!(
                        worker = worker.id,
                        "session's kernel died while idle; destroying it"
                    );
                    Metrics::bump(&self.metrics.kernel_failures);
                }
            }
            self.pool.destroy(worker.into_remains());
        }
    }

    pub fn counts(&self) -> SessionCounts {
        SessionCounts {
            sessions: self.table.lock().unwrap().len(),
            busy: self.busy.load(Ordering::SeqCst),
        }
    }

    fn session(&self, user: &str) -> Arc<Session> {
        let mut table = self.table.lock().unwrap();
        Arc::clone(table.entry(user.to_string()).or_insert_with(|| {
            Arc::new(Session {
                worker: Arc::new(tokio::sync::Mutex::new(None)),
                pending: AtomicUsize::new(0),
                created: Instant::now(),
                last_used: Mutex::new(Instant::now()),
            })
        }))
    }
}

/// A user's worker, held exclusively for one request.
struct Lease {
    slot: tokio::sync::OwnedMutexGuard<Option<Worker>>,
    /// True when the worker was taken from the pool for this request.
    session_created: bool,
    _pending: Pending,
}

impl Lease {
    fn worker_mut(&mut self) -> &mut Worker {
        self.slot.as_mut().expect("a lease holds a worker")
    }
}

/// Counts a request of the session as pending until dropped, then marks the
/// session used (also when the request is cancelled).
struct Pending(Arc<Session>);

impl Drop for Pending {
    fn drop(&mut self) {
        *self.0.last_used.lock().unwrap() = Instant::now();
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decrements a counter when dropped (also when the request is cancelled).
struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::kernel::client::ExecuteError;
    use crate::pool::tests::{eventually, fake_pool, shared};
    use crate::shutdown::Shutdown;
    use crate::worker::fake::FakeHost;

    const LONG: Duration = Duration::from_secs(3600);
    const SECOND: Duration = Duration::from_secs(1);

    /// A session table over a pool of at most `max_workers` on `host`.
    fn fake_sessions(
        host: &FakeHost,
        max_workers: usize,
        max_queue: usize,
        idle: Duration,
    ) -> Arc<Sessions> {
        let pool = fake_pool(host, 0, max_workers);
        let (registry, metrics) = shared(&pool);
        let limits = OutputLimits {
            max_output_bytes: 1 << 20,
            max_flood_bytes: 1 << 20,
        };
        let expiry = Expiry {
            idle_timeout: idle,
            max_age: LONG,
        };
        Arc::new(Sessions::new(
            pool, metrics, max_queue, limits, expiry, registry,
        ))
    }

    async fn run(sessions: &Sessions, user: &str, code: &str) -> Outcome {
        sessions.execute(user, code, SECOND, None).await.unwrap()
    }

    #[tokio::test]
    async fn a_users_requests_run_on_one_kernel_in_arrival_order() {
        let host = FakeHost::new(Config::default());
        let sessions = fake_sessions(&host, 2, 8, LONG);
        assert!(run(&sessions, "ann", "a").await.session_created);
        let mut requests = Vec::new();
        for code in ["sleep 50", "b", "c"] {
            let sessions = Arc::clone(&sessions);
            requests.push(tokio::spawn(
                async move { run(&sessions, "ann", code).await },
            ));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut counts = Vec::new();
        for request in requests {
            let outcome = request.await.unwrap();
            assert!(!outcome.session_created);
            counts.push(outcome.execution.execution_count.unwrap());
        }
        assert_eq!(counts, [2, 3, 4]);
        let containers = host.runtime.containers();
        assert_eq!(containers.len(), 1, "one kernel for the user");
        assert_eq!(
            host.runtime.executed(&containers[0]),
            ["a", "sleep 50", "b", "c"]
        );
        assert_eq!(
            run(&sessions, "ann", "d").await.execution.result_text(),
            "d"
        );
    }

    #[tokio::test]
    async fn users_share_the_capacity_and_a_release_frees_it() {
        let host = FakeHost::new(Config::default());
        let sessions = fake_sessions(&host, 1, 8, LONG);
        run(&sessions, "ann", "a").await;
        let refused = sessions.execute("bob", "b", SECOND, None).await;
        assert!(matches!(refused, Err(SessionError::Full)));
        assert_eq!(
            sessions.counts().sessions,
            1,
            "a refused user leaves nothing behind"
        );
        assert!(sessions.release("ann"));
        assert!(!sessions.release("ann"));
        eventually("ann's worker is gone", || {
            host.runtime.containers().is_empty()
        })
        .await;
        eventually("the slot is free", || sessions.pool.snapshot().alive == 0).await;
        assert!(run(&sessions, "bob", "b").await.session_created);
    }

    #[tokio::test]
    async fn the_queue_of_one_user_is_bounded() {
        let host = FakeHost::new(Config::default());
        let sessions = fake_sessions(&host, 1, 1, LONG);
        let mut requests = Vec::new();
        for code in ["sleep 100", "b"] {
            let sessions = Arc::clone(&sessions);
            requests.push(tokio::spawn(
                async move { run(&sessions, "ann", code).await },
            ));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let third = sessions.execute("ann", "c", SECOND, None).await;
        assert!(matches!(third, Err(SessionError::QueueFull(1))));
        for request in requests {
            request.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_timeout_destroys_the_worker_and_the_next_request_starts_afresh() {
        let host = FakeHost::new(Config::default());
        let sessions = fake_sessions(&host, 2, 8, LONG);
        run(&sessions, "ann", "a = 1").await;
        let timeout = Duration::from_millis(50);
        let hung = sessions.execute("ann", "hang", timeout, None).await;
        assert!(matches!(hung, Err(SessionError::Timeout(t)) if t == timeout));
        assert!(run(&sessions, "ann", "a").await.session_created);
        assert_eq!(host.runtime.removed.load(Ordering::SeqCst), 1);
        assert_eq!(sessions.metrics.timeouts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_lease_needs_a_session_unless_it_may_create_one() {
        let host = FakeHost::new(Config::default());
        let sessions = fake_sessions(&host, 1, 8, LONG);
        let evaluate = async |kernel: &mut KernelClient| {
            let deadline = tokio::time::Instant::now() + SECOND;
            kernel.evaluate("42", deadline).await
        };
        let none = sessions.with_kernel("ann", false, SECOND, evaluate).await;
        assert!(matches!(none, Err(SessionError::NoSession)));
        assert_eq!(sessions.counts().sessions, 0);
        assert!(
            host.runtime.containers().is_empty(),
            "no worker for a lookup"
        );
        let value = sessions
            .with_kernel("ann", true, SECOND, evaluate)
            .await
            .unwrap();
        assert_eq!(value, "42");
        // A failed operation ends the worker like a failed execution.
        let broken = sessions
            .with_kernel(
                "ann",
                false,
                SECOND,
                async |_: &mut KernelClient| -> Result<(), _> {
                    Err(ExecuteError::Protocol("test".into()))
                },
            )
            .await;
        assert!(matches!(broken, Err(SessionError::Misbehaved(_))));
        let again = sessions.with_kernel("ann", false, SECOND, evaluate).await;
        assert!(matches!(again, Err(SessionError::NoSession)));
    }

    #[tokio::test]
    async fn the_reaper_ends_idle_sessions_and_dead_kernels() {
        let host = FakeHost::new(Config::default());
        let sessions = fake_sessions(&host, 2, 8, Duration::from_millis(80));
        run(&sessions, "ann", "a").await;
        run(&sessions, "bob", "b").await;
        let bob = {
            let table = sessions.table.lock().unwrap();
            let slot = table["bob"].worker.try_lock().unwrap();
            slot.as_ref().unwrap().container.clone()
        };
        host.runtime.kill(&bob);
        eventually("the guard saw bob's kernel die", || {
            let table = sessions.table.lock().unwrap();
            let slot = table["bob"].worker.try_lock().unwrap();
            slot.as_ref().unwrap().kernel.is_dead()
        })
        .await;
        sessions.reap();
        assert_eq!(
            sessions.counts().sessions,
            2,
            "bob keeps his (empty) session"
        );
        assert_eq!(sessions.metrics.kernel_failures.load(Ordering::SeqCst), 1);
        eventually("bob's container is removed", || {
            host.runtime.containers().len() == 1
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        run(&sessions, "bob", "b").await; // bob is busy again, ann is not
        sessions.reap();
        assert_eq!(sessions.counts().sessions, 1);
        assert_eq!(sessions.metrics.sessions_expired.load(Ordering::SeqCst), 1);
        eventually("ann's worker is gone", || {
            host.runtime.containers().len() == 1
        })
        .await;
        // The reaper loop follows the shutdown.
        let mut shutdown = Shutdown::new();
        shutdown.spawn(|stop| Arc::clone(&sessions).run_reaper(stop));
        let started = std::time::Instant::now();
        shutdown.complete(SECOND).await;
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn a_readopted_session_keeps_its_kernel() {
        let host = FakeHost::new(Config::default());
        // The previous gateway made a worker and ran code in it.
        let record = {
            let factory = host.factory();
            let mut worker = factory.create().await.unwrap();
            let limits = OutputLimits {
                max_output_bytes: 1 << 20,
                max_flood_bytes: 1 << 20,
            };
            let deadline = tokio::time::Instant::now() + SECOND;
            worker
                .kernel
                .execute("x = 1", deadline, &limits, None)
                .await
                .unwrap();
            worker.record()
        };
        // This one re-connects and restores the session.
        let sessions = fake_sessions(&host, 2, 8, LONG);
        let worker = host.factory().adopt(&record).await.unwrap();
        sessions.adopt("ann", worker, unix_now());
        sessions.pool.adopt(Vec::new(), 1);
        let outcome = run(&sessions, "ann", "x").await;
        assert!(!outcome.session_created);
        assert_eq!(outcome.execution.execution_count, Some(2));
        assert_eq!(host.runtime.executed(&record.container), ["x = 1", "x"]);
        assert_eq!(sessions.pool.snapshot().alive, 1);
    }
}
