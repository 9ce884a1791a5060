//! The warm pool: ready workers waiting for new users, and the capacity limit.
//!
//! A background task keeps the idle target ready (from `min_idle` up to
//! `max_idle` as new users arrive faster), creating as many at once as
//! `parallelism` allows and backing off after failures, so a broken setup
//! shows up as a reason in `/status` instead of a storm of containers.
//! Every live or starting worker holds one capacity slot until it is destroyed;
//! a new slot is given while `capacity::admit` says the host can hold one more.
//! `cold_start` keeps what each phase of the recent starts took.

pub mod cold_start;
pub mod parallelism;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::Serialize;
use tokio::sync::{oneshot, Notify};

use crate::capacity::{self, Decision, MemorySource, Policy};
use crate::metrics::Metrics;
use crate::shutdown;
use crate::state::Registry;
use crate::worker::{Remains, Worker, WorkerFactory};
use cold_start::ColdStarts;
use parallelism::Parallelism;

/// Longest a request waits while the last creation failed and none has
/// succeeded since: a setup that cannot make a worker is a quick 503.
const FAILING_WAIT: Duration = Duration::from_secs(4);
/// Arrivals are counted over this window to estimate the arrival rate.
const ARRIVAL_WINDOW: Duration = Duration::from_secs(10);

/// Idle workers to keep ready: the new users expected while one worker
/// starts (arrival rate × start time, Little's law), within
/// `min_idle ..= max_idle`; `min_idle` once no one arrived for `trim_after`.
pub fn idle_target(
    min_idle: usize,
    max_idle: usize,
    arrivals_in_window: usize,
    start_time: Duration,
    since_last_arrival: Option<Duration>,
    trim_after: Duration,
) -> usize {
    match since_last_arrival {
        Some(quiet) if quiet < trim_after => {
            let rate = arrivals_in_window as f64 / ARRIVAL_WINDOW.as_secs_f64();
            let expected = (rate * start_time.as_secs_f64()).ceil() as usize;
            expected.clamp(min_idle, max_idle.max(min_idle))
        }
        _ => min_idle,
    }
}

/// Recent demand: new users' arrivals and how long a worker takes to start.
#[derive(Default)]
struct Demand {
    /// Arrival times within `ARRIVAL_WINDOW`, oldest first.
    arrivals: VecDeque<std::time::Instant>,
    /// Moving average of successful creations' durations.
    start_time: Option<Duration>,
}

/// How often a waiting request asks the admission policy again (memory is
/// freed without the pool hearing of it).
const ADMISSION_RECHECK: Duration = Duration::from_millis(500);

/// How long the refill waits after `failures` creations in a row failed:
/// 2, 4 … 30 s, so a broken setup is not a storm of containers.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(5)).min(Duration::from_secs(30))
}

/// Why no worker could be had.
#[derive(Debug)]
pub enum TakeError {
    /// Every slot is taken by a live worker.
    Full,
    /// Creating a worker failed.
    Failed(anyhow::Error),
}

/// A request's place in the queue for a worker. Dropped before it received
/// one (the request gave up or was cancelled), a worker handed to it
/// meanwhile goes on to the next waiter or the idle pool.
struct Place {
    rx: Option<oneshot::Receiver<Worker>>,
    pool: Arc<Pool>,
}

impl Place {
    /// The worker handed to this place; `None` if none can come any more.
    /// Cancel-safe: a worker is kept in the channel until received.
    async fn receive(&mut self) -> Option<Worker> {
        let got = self.rx.as_mut()?.await.ok();
        self.rx = None;
        got
    }

    /// True when a worker waits in this place (or none can come any more).
    fn is_served(&self) -> bool {
        self.rx
            .as_ref()
            .is_none_or(|rx| !rx.is_empty() || rx.is_terminated())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            rx.close();
            if let Ok(worker) = rx.try_recv() {
                self.pool.hand_out(worker);
            }
        }
    }
}

/// The pool and its bookkeeping.
pub struct Pool {
    factory: Arc<WorkerFactory>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    idle: Mutex<VecDeque<Worker>>,
    /// Requests waiting for a worker, oldest first; a new worker goes to the
    /// oldest. Locked before `idle` wherever both are, so a worker is either
    /// handed to a waiter or left idle, never both missed.
    waiters: Mutex<VecDeque<oneshot::Sender<Worker>>>,
    /// Longest a request waits for a worker before 503 + Retry-After.
    queue_timeout: Duration,
    /// Workers alive or being created: the capacity in use.
    slots_used: AtomicUsize,
    /// Workers being created right now.
    creating: AtomicUsize,
    /// The admission policy and where its memory figures come from.
    policy: Policy,
    memory: Arc<dyn MemorySource>,
    /// The last refused admission, for `/status` (serialises admissions too).
    last_refusal: Mutex<Option<Decision>>,
    min_idle: usize,
    max_idle: usize,
    trim_after: Duration,
    demand: Mutex<Demand>,
    parallelism: Parallelism,
    cold_starts: ColdStarts,
    /// What idle workers run before they wait (`pool.preload`), if anything.
    preload: Option<String>,
    preload_modules: Vec<String>,
    /// Why preloading stopped, for `/status`.
    preload_error: Mutex<Option<String>>,
    /// Wakes the refill task (a worker was taken or destroyed).
    refill: Notify,
    /// Wakes waiting requests to ask for admission again (a creation ended
    /// or a worker was destroyed).
    ready: Notify,
    /// True until the pool first reached `min_idle` (or gave up trying).
    initializing: AtomicBool,
    /// Set at shutdown: creations still waiting for their turn give up.
    closing: AtomicBool,
    /// The last creation failure, shown in `/status` until a creation succeeds.
    last_error: Mutex<Option<String>>,
}

/// How the pool keeps workers warm and how long requests wait for one.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Ready, unassigned workers kept waiting for new users.
    pub min_idle: usize,
    /// Workers started at once; None: adaptive, from `cores`.
    pub parallelism: Option<usize>,
    pub cores: usize,
    /// Longest a request waits for a worker before 503 + Retry-After.
    pub queue_timeout: Duration,
    /// Most idle workers the pool grows to under demand.
    pub max_idle: usize,
    /// Without arrivals this long, idle workers are trimmed back to `min_idle`.
    pub trim_after: Duration,
    /// Modules each idle worker imports before it waits.
    pub preload: Vec<String>,
}

/// The pool's state for `/status`.
#[derive(Serialize)]
pub struct PoolSnapshot {
    pub idle: usize,
    pub creating: usize,
    pub alive: usize,
    pub max_workers: usize,
    pub min_idle: usize,
    /// Idle workers the pool keeps now (follows demand), and its bounds' top.
    pub idle_target: usize,
    pub max_idle: usize,
    /// Moving average of a worker's start, ms (none made yet: null).
    pub start_time_ms: Option<u64>,
    /// Starts allowed at once now, and whether that follows measurements.
    pub create_parallelism: usize,
    pub create_parallelism_adaptive: bool,
    pub cold_start: cold_start::Summary,
    pub preload: Vec<String>,
    pub preload_error: Option<String>,
    /// Requests waiting for a worker.
    pub waiting: usize,
    /// The admission policy, what it would decide now, and its last refusal.
    pub policy: Policy,
    pub admission_now: Decision,
    pub last_refusal: Option<Decision>,
    pub initializing: bool,
    pub last_error: Option<String>,
    /// Sandbox uids serving workers, and how many there are.
    pub uids_in_use: usize,
    pub uids: u32,
}

impl Pool {
    pub fn new(
        factory: Arc<WorkerFactory>,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        settings: Settings,
        policy: Policy,
        memory: Arc<dyn MemorySource>,
    ) -> Arc<Self> {
        let Settings {
            min_idle,
            parallelism,
            cores,
            queue_timeout,
            max_idle,
            trim_after,
            preload,
        } = settings;
        Arc::new(Self {
            factory,
            metrics,
            registry,
            idle: Mutex::new(VecDeque::new()),
            waiters: Mutex::new(VecDeque::new()),
            queue_timeout,
            slots_used: AtomicUsize::new(0),
            creating: AtomicUsize::new(0),
            policy,
            memory,
            last_refusal: Mutex::new(None),
            min_idle: min_idle.min(policy.max_workers),
            max_idle,
            trim_after,
            demand: Mutex::new(Demand::default()),
            parallelism: Parallelism::new(parallelism, cores),
            cold_starts: ColdStarts::default(),
            preload: preload_code(&preload),
            preload_modules: preload,
            preload_error: Mutex::new(None),
            refill: Notify::new(),
            ready: Notify::new(),
            initializing: AtomicBool::new(min_idle > 0),
            closing: AtomicBool::new(false),
            last_error: Mutex::new(None),
        })
    }

    /// Takes over workers a previous run left: `idle` ones wait in the pool,
    /// `assigned` more serve re-adopted sessions. All of them hold a slot.
    pub fn adopt(&self, idle: Vec<Worker>, assigned: usize) {
        self.slots_used
            .fetch_add(idle.len() + assigned, Ordering::SeqCst);
        self.idle.lock().unwrap().extend(idle);
    }

    /// Hands out a ready worker: an idle one if nobody waits before us, else
    /// the next one made, in arrival order (FIFO) among the waiting requests.
    /// A request starts a creation when the admission policy allows one; its
    /// worker goes to the oldest waiter. After `queue_timeout` without a
    /// worker: `Full`; `Failed` when creations fail: at once for a creation
    /// this request started, else after `FAILING_WAIT` (never a hung request).
    pub async fn take(self: &Arc<Self>) -> Result<Worker, TakeError> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.queue_timeout;
        self.arrived();
        let mut first_in_line = false;
        let mut mine: Option<tokio::task::JoinHandle<Result<()>>> = None;
        'queue: loop {
            let mut place = match self.queue_up(first_in_line) {
                Ok(worker) => {
                    self.refill.notify_one();
                    if worker.kernel.is_dead() {
                        self.discard_dead(worker);
                        continue;
                    }
                    return Ok(worker);
                }
                Err(place) => place,
            };
            self.refill.notify_one();
            loop {
                let freed = self.ready.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                // No creation for a request already served (its worker waits in `place`).
                if mine.is_none() && !place.is_served() && self.reserve_slot() {
                    mine = Some(self.spawn_create());
                }
                tokio::select! {
                    biased;
                    handed = place.receive() => match handed {
                        Some(worker) if worker.kernel.is_dead() => {
                            // Keep our turn: wait again at the head.
                            self.discard_dead(worker);
                            first_in_line = true;
                            continue 'queue;
                        }
                        Some(worker) => return Ok(worker),
                        None => continue 'queue,
                    },
                    finished = async { mine.as_mut().expect("guarded").await }, if mine.is_some() => {
                        mine = None;
                        match finished {
                            Ok(Ok(())) => {} // handed to the oldest waiter, maybe us
                            Ok(Err(e)) => return Err(TakeError::Failed(e)),
                            Err(e) => return Err(TakeError::Failed(anyhow!("worker creation task failed: {e}"))),
                        }
                    }
                    _ = &mut freed => {}
                    _ = tokio::time::sleep(ADMISSION_RECHECK) => {
                        let last = self.last_error.lock().unwrap().clone();
                        if let Some(e) = last.filter(|_| started.elapsed() >= FAILING_WAIT) {
                            return Err(TakeError::Failed(anyhow!(
                                "no worker was ready within {} s (last failure: {e})",
                                FAILING_WAIT.as_secs()
                            )));
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        let last = self.last_error.lock().unwrap().clone();
                        return Err(match last {
                            Some(e) => TakeError::Failed(anyhow!(
                                "no worker was ready within {} s (last failure: {e})",
                                self.queue_timeout.as_secs_f64()
                            )),
                            None => TakeError::Full,
                        });
                    }
                }
            }
        }
    }

    /// Counts a new user's arrival (for the idle target).
    fn arrived(&self) {
        let now = std::time::Instant::now();
        let mut demand = self.demand.lock().unwrap();
        demand.arrivals.push_back(now);
        while demand
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) > ARRIVAL_WINDOW)
        {
            demand.arrivals.pop_front();
        }
    }

    /// The idle workers to keep now, from recent arrivals and start times.
    fn idle_target(&self) -> usize {
        let demand = self.demand.lock().unwrap();
        let now = std::time::Instant::now();
        let recent = (demand.arrivals.iter())
            .filter(|t| now.duration_since(**t) <= ARRIVAL_WINDOW)
            .count();
        idle_target(
            self.min_idle,
            self.max_idle,
            recent,
            demand.start_time.unwrap_or_default(),
            demand.arrivals.back().map(|t| now.duration_since(*t)),
            self.trim_after,
        )
    }

    /// Destroys idle workers past the target (newest first: the oldest have
    /// proven they start), once demand fell.
    fn trim(self: &Arc<Self>, target: usize) {
        let extra: Vec<Worker> = {
            let mut idle = self.idle.lock().unwrap();
            let keep = target.max(self.min_idle);
            let n = idle.len().saturating_sub(keep);
            (0..n).filter_map(|_| idle.pop_back()).collect()
        };
        for worker in extra {
            tracing::info!(worker = worker.id, "demand fell; trimming an idle worker");
            self.destroy(worker.into_remains());
        }
    }

    /// An idle worker if nobody waits, else a place in the queue (at its
    /// head for a request that already waited its turn).
    fn queue_up(self: &Arc<Self>, at_head: bool) -> Result<Worker, Place> {
        let mut waiters = self.waiters.lock().unwrap();
        waiters.retain(|tx| !tx.is_closed());
        if waiters.is_empty() {
            if let Some(worker) = self.idle.lock().unwrap().pop_front() {
                return Ok(worker);
            }
        }
        let (tx, rx) = oneshot::channel();
        if at_head {
            waiters.push_front(tx);
        } else {
            waiters.push_back(tx);
        }
        Err(Place {
            rx: Some(rx),
            pool: Arc::clone(self),
        })
    }

    /// Gives a ready worker to the oldest waiting request, or to the idle pool.
    fn hand_out(&self, mut worker: Worker) {
        let mut waiters = self.waiters.lock().unwrap();
        while let Some(tx) = waiters.pop_front() {
            match tx.send(worker) {
                Ok(()) => return,
                Err(back) => worker = back, // that request gave up
            }
        }
        self.idle.lock().unwrap().push_back(worker);
    }

    /// Creates a worker in a reserved slot in the background; it goes to the
    /// oldest waiting request, or joins the idle pool.
    fn spawn_create(self: &Arc<Self>) -> tokio::task::JoinHandle<Result<()>> {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let (mut worker, seq) = pool.create().await?;
            if !pool.preload(&mut worker, seq).await {
                pool.destroy(worker.into_remains());
                pool.ready.notify_waiters();
                return Ok(());
            }
            pool.hand_out(worker);
            pool.ready.notify_waiters();
            Ok(())
        })
    }

    /// Destroys a worker in the background and frees its slot afterwards.
    pub fn destroy(self: &Arc<Self>, remains: Remains) {
        let pool = Arc::clone(self);
        pool.registry.remove(&remains.id);
        tokio::spawn(async move {
            pool.factory.destroy(remains).await;
            Metrics::bump(&pool.metrics.workers_destroyed);
            pool.slots_used.fetch_sub(1, Ordering::SeqCst);
            pool.refill.notify_one();
            pool.ready.notify_waiters(); // room for a waiting request
        });
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        PoolSnapshot {
            idle: self.idle.lock().unwrap().len(),
            creating: self.creating.load(Ordering::SeqCst),
            alive: self.slots_used.load(Ordering::SeqCst),
            max_workers: self.policy.max_workers,
            min_idle: self.min_idle,
            idle_target: self.idle_target(),
            max_idle: self.max_idle,
            start_time_ms: (self.demand.lock().unwrap().start_time).map(|t| t.as_millis() as u64),
            create_parallelism: self.parallelism.limit().0,
            create_parallelism_adaptive: self.parallelism.limit().1,
            cold_start: self.cold_starts.summary(),
            preload: self.preload_modules.clone(),
            preload_error: self.preload_error.lock().unwrap().clone(),
            waiting: (self.waiters.lock().unwrap().iter())
                .filter(|tx| !tx.is_closed())
                .count(),
            policy: self.policy,
            admission_now: self.decide(),
            last_refusal: self.last_refusal.lock().unwrap().clone(),
            initializing: self.initializing.load(Ordering::SeqCst),
            last_error: self.last_error.lock().unwrap().clone(),
            uids_in_use: self.factory.uids_in_use().0,
            uids: self.factory.uids_in_use().1,
        }
    }

    /// Keeps `min_idle` workers ready, until the shutdown. Spawn once.
    /// Creations in flight then go on by themselves; a worker made after the
    /// final save is not recorded, and the next start removes it.
    pub async fn run_refill(self: Arc<Self>, mut shutdown: shutdown::Listener) {
        let mut failures: u32 = 0;
        while !shutdown.is_shutdown() {
            let target = self.idle_target();
            let idle = self.idle.lock().unwrap().len();
            if idle > target && self.creating.load(Ordering::SeqCst) == 0 {
                self.trim(target);
            }
            let have = idle + self.creating.load(Ordering::SeqCst);
            let wanted = target.saturating_sub(have);
            let mut started = Vec::new();
            for _ in 0..wanted {
                if !self.reserve_slot() {
                    break; // full: what is alive serves users
                }
                started.push(self.spawn_create());
            }
            if started.is_empty() {
                // Filled (or full): start-up is over; sleep until a worker is
                // taken or destroyed, looking for dead idle workers each second.
                self.initializing.store(false, Ordering::SeqCst);
                tokio::select! {
                    _ = self.refill.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1).min(self.trim_after / 2)) => {}
                    _ = shutdown.recv() => return,
                }
                self.remove_dead_idle();
                continue;
            }
            let finished = async {
                for handle in started {
                    match handle
                        .await
                        .unwrap_or_else(|e| Err(anyhow!("worker creation task failed: {e}")))
                    {
                        Ok(()) => failures = 0,
                        Err(_) => failures += 1,
                    }
                }
            };
            tokio::select! {
                _ = finished => {}
                _ = shutdown.recv() => return,
            }
            if failures > 0 {
                // Don't report "initializing" forever when the setup is broken.
                self.initializing.store(false, Ordering::SeqCst);
                tokio::select! {
                    _ = tokio::time::sleep(backoff(failures)) => {}
                    _ = shutdown.recv() => return,
                }
            }
        }
    }

    /// At shutdown, after the refill and the requests stopped: creations not
    /// yet begun give up, and those under way are waited for (within
    /// `within`), so that every container made is in the registry's last
    /// save (re-adopted by the next start, or removed by `scripts/stop.sh`)
    /// instead of appearing after the gateway is gone.
    pub async fn quiesce(&self, within: Duration) {
        self.closing.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + within;
        while self.creating.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    "{} worker starts still under way after {within:?}; the next start removes them",
                    self.creating.load(Ordering::SeqCst)
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Destroys idle workers whose kernel died (they are replaced by the refill).
    fn remove_dead_idle(self: &Arc<Self>) {
        let dead: Vec<Worker> = {
            let mut idle = self.idle.lock().unwrap();
            let (dead, alive): (Vec<Worker>, Vec<Worker>) =
                idle.drain(..).partition(|w| w.kernel.is_dead());
            idle.extend(alive);
            dead
        };
        for worker in dead {
            self.discard_dead(worker);
        }
    }

    /// Counts and destroys an idle worker whose kernel died.
    fn discard_dead(self: &Arc<Self>, worker: Worker) {
        tracing::warn!(worker = worker.id, "idle worker died; destroying it");
        Metrics::bump(&self.metrics.kernel_failures);
        self.destroy(worker.into_remains());
    }

    /// What the admission policy says now about one more worker.
    fn decide(&self) -> Decision {
        capacity::admit(
            &self.policy,
            self.slots_used.load(Ordering::SeqCst),
            self.creating.load(Ordering::SeqCst),
            self.memory.measure(),
        )
    }

    /// Takes a slot for a new worker if the policy admits one. Admissions
    /// are serialised, so two cannot both take the last room.
    fn reserve_slot(&self) -> bool {
        let mut last_refusal = self.last_refusal.lock().unwrap();
        let decision = self.decide();
        if !decision.admit {
            *last_refusal = Some(decision);
            return false;
        }
        self.slots_used.fetch_add(1, Ordering::SeqCst);
        self.creating.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Creates a worker in a reserved slot; frees the slot on failure.
    /// Counts as `creating` from its admission, also while waiting for its
    /// turn. Returns the worker and the number of its start's profile.
    async fn create(self: &Arc<Self>) -> Result<(Worker, u64)> {
        let permit = self.parallelism.acquire().await;
        if self.closing.load(Ordering::SeqCst) {
            self.creating.fetch_sub(1, Ordering::SeqCst);
            self.slots_used.fetch_sub(1, Ordering::SeqCst);
            return Err(anyhow!("the gateway is stopping"));
        }
        let started = std::time::Instant::now();
        let result = self.factory.create().await;
        self.creating.fetch_sub(1, Ordering::SeqCst);
        let mut seq = 0;
        match &result {
            Ok(worker) => {
                let phases = worker.profile.unwrap_or_default();
                seq = self.cold_starts.record(&phases, permit.concurrent);
                self.parallelism.record(phases.total(), permit.concurrent);
                self.registry.insert(worker.record());
                Metrics::bump(&self.metrics.workers_created);
                *self.last_error.lock().unwrap() = None;
                let ms = started.elapsed().as_millis() as u64;
                tracing::info!(
                    worker = worker.id,
                    ms,
                    concurrent = permit.concurrent,
                    create_ms = phases.create.as_millis() as u64,
                    start_ms = phases.start.as_millis() as u64,
                    listen_ms = phases.listen.as_millis() as u64,
                    connect_ms = phases.connect.as_millis() as u64,
                    "worker ready"
                );
                let took = started.elapsed();
                let mut demand = self.demand.lock().unwrap();
                demand.start_time = Some(match demand.start_time {
                    Some(average) => (average * 3 + took) / 4,
                    None => took,
                });
            }
            Err(e) => {
                Metrics::bump(&self.metrics.worker_start_failures);
                self.slots_used.fetch_sub(1, Ordering::SeqCst);
                *self.last_error.lock().unwrap() = Some(format!("{e:#}"));
                tracing::error!("could not start a worker: {e:#}");
            }
        }
        drop(permit);
        self.ready.notify_waiters();
        result.map(|worker| (worker, seq))
    }

    /// Runs `pool.preload` in a new worker before it waits idle; skipped
    /// when a request already waits for it (its user should not wait for
    /// imports it may not need). False when the worker must go: the preload
    /// failed, so its state is unknown. After a failure (a module that is
    /// not in the image, say) no worker preloads again: `/status` says why.
    async fn preload(&self, worker: &mut Worker, seq: u64) -> bool {
        let Some(code) = &self.preload else {
            return true;
        };
        if self.preload_error.lock().unwrap().is_some()
            || self
                .waiters
                .lock()
                .unwrap()
                .iter()
                .any(|tx| !tx.is_closed())
        {
            return true;
        }
        let started = tokio::time::Instant::now();
        match worker
            .kernel
            .evaluate(code, started + PRELOAD_TIMEOUT)
            .await
        {
            Ok(_) => {
                self.cold_starts.preloaded(seq, started.elapsed());
                true
            }
            Err(e) => {
                let why = format!("{e:?}");
                tracing::error!(
                    worker = worker.id,
                    "pool.preload failed, preloading stops: {why}"
                );
                *self.preload_error.lock().unwrap() = Some(why);
                false
            }
        }
    }
}

/// Longest the preload of one worker may take.
const PRELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// An expression that imports `modules` into `sys.modules` without binding
/// a name in the user's namespace; None for no modules. The names were
/// checked to be dotted identifiers (`config::validate`).
fn preload_code(modules: &[String]) -> Option<String> {
    (!modules.is_empty()).then(|| {
        let list = modules
            .iter()
            .map(|m| format!("'{m}'"))
            .collect::<Vec<_>>()
            .join(", ");
        format!("[__import__('importlib').import_module(m) for m in [{list}]] and 'ok'")
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::capacity::tests::FakeMemory;
    use crate::config::Config;
    use crate::shutdown::Shutdown;
    use crate::worker::fake::FakeHost;

    /// How long a request waits for a worker in the fake pools.
    pub(crate) const QUEUE_TIMEOUT: Duration = Duration::from_millis(50);

    /// A pool on `host`'s fake runtime (two creations at a time), with
    /// plenty of fake memory.
    pub(crate) fn fake_pool(host: &FakeHost, min_idle: usize, max_workers: usize) -> Arc<Pool> {
        fake_pool_with(host, min_idle, max_workers, FakeMemory::mib(64 * 1024))
    }

    /// A pool on `host`'s fake runtime whose memory figures come from `memory`
    /// (the reserve is 1024 MiB).
    pub(crate) fn fake_pool_with(
        host: &FakeHost,
        min_idle: usize,
        max_workers: usize,
        memory: Arc<FakeMemory>,
    ) -> Arc<Pool> {
        let registry = Registry::new(host.config.state_dir());
        let metrics = Arc::new(Metrics::default());
        let policy = Policy {
            max_workers,
            reserve_bytes: 1024 * 1024 * 1024,
        };
        Pool::new(
            host.factory(),
            metrics,
            registry,
            Settings {
                min_idle,
                parallelism: Some(2),
                cores: 2,
                queue_timeout: QUEUE_TIMEOUT,
                max_idle: min_idle,
                trim_after: Duration::from_secs(60),
                preload: Vec::new(),
            },
            policy,
            memory,
        )
    }

    /// The registry and the metrics `pool` writes to.
    pub(crate) fn shared(pool: &Pool) -> (Arc<Registry>, Arc<Metrics>) {
        (Arc::clone(&pool.registry), Arc::clone(&pool.metrics))
    }

    /// Waits (at most 2 s) until `condition` holds.
    pub(crate) async fn eventually(what: &str, condition: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !condition() {
            assert!(tokio::time::Instant::now() < deadline, "never: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn idle_workers_go_out_first_in_first_out_within_capacity() {
        let host = FakeHost::new(Config::default());
        let pool = fake_pool(&host, 0, 3);
        let mut made = Vec::new();
        for _ in 0..3 {
            made.push(pool.factory.create().await.unwrap());
        }
        let ids: Vec<String> = made.iter().map(|w| w.id.clone()).collect();
        pool.adopt(made, 0);
        for id in &ids {
            assert_eq!(&pool.take().await.unwrap().id, id);
        }
        assert!(matches!(pool.take().await, Err(TakeError::Full)));
        assert_eq!(
            host.runtime.runs.load(Ordering::SeqCst),
            3,
            "none made past capacity"
        );
    }

    #[tokio::test]
    async fn after_quiesce_no_creation_begins() {
        let host = FakeHost::new(Config::default());
        let pool = fake_pool(&host, 0, 4);
        pool.quiesce(Duration::from_secs(1)).await;
        assert!(pool.reserve_slot());
        let finished = pool.spawn_create().await.unwrap();
        assert!(finished.unwrap_err().to_string().contains("stopping"));
        assert_eq!(host.runtime.runs.load(Ordering::SeqCst), 0);
        let snapshot = pool.snapshot();
        assert_eq!(
            (snapshot.alive, snapshot.creating),
            (0, 0),
            "the slot is free again"
        );
    }

    #[tokio::test]
    async fn a_destroyed_worker_frees_its_slot_and_container() {
        let host = FakeHost::new(Config::default());
        let pool = fake_pool(&host, 0, 1);
        let worker = pool.take().await.unwrap();
        assert!(matches!(pool.take().await, Err(TakeError::Full)));
        assert_eq!(pool.registry.records().len(), 1);
        pool.destroy(worker.into_remains());
        eventually("the slot is free", || pool.snapshot().alive == 0).await;
        assert!(host.runtime.containers().is_empty());
        assert!(pool.registry.records().is_empty());
        let again = pool.take().await.unwrap();
        assert_eq!(
            host.runtime.containers(),
            std::slice::from_ref(&again.container)
        );
    }

    #[tokio::test]
    async fn a_dead_idle_worker_is_skipped_and_destroyed() {
        let host = FakeHost::new(Config::default());
        let pool = fake_pool(&host, 0, 2);
        let first = pool.factory.create().await.unwrap();
        let second = pool.factory.create().await.unwrap();
        let (dead, alive) = (first.container.clone(), second.id.clone());
        host.runtime.kill(&dead);
        eventually("the guard saw it die", || first.kernel.is_dead()).await;
        pool.adopt(vec![first, second], 0);
        assert_eq!(pool.take().await.unwrap().id, alive);
        assert_eq!(pool.metrics.kernel_failures.load(Ordering::SeqCst), 1);
        eventually("its container is removed", || {
            !host.runtime.containers().contains(&dead)
        })
        .await;
    }

    #[tokio::test]
    async fn the_refill_keeps_min_idle_ready_and_replaces_the_dead() {
        let host = FakeHost::new(Config::default());
        let pool = fake_pool(&host, 2, 4);
        let mut shutdown = Shutdown::new();
        shutdown.spawn(|stop| Arc::clone(&pool).run_refill(stop));
        eventually("two idle", || pool.snapshot().idle == 2).await;
        assert!(!pool.snapshot().initializing);
        let container = pool.idle.lock().unwrap()[0].container.clone();
        host.runtime.kill(&container);
        eventually("the guard saw it die", || {
            pool.idle.lock().unwrap()[0].kernel.is_dead()
        })
        .await;
        pool.remove_dead_idle();
        eventually("replaced", || {
            host.runtime.runs.load(Ordering::SeqCst) == 3 && pool.snapshot().idle == 2
        })
        .await;
        // A taken worker is replaced too.
        let _taken = pool.take().await.unwrap();
        eventually("refilled", || pool.snapshot().idle == 2).await;
        assert_eq!(pool.snapshot().alive, 3);
        let started = std::time::Instant::now();
        shutdown.complete(Duration::from_secs(1)).await;
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the refill follows the shutdown"
        );
    }

    #[tokio::test]
    async fn a_broken_setup_backs_off_and_says_why() {
        let host = FakeHost::new(Config::default());
        host.runtime.fail_next(usize::MAX);
        let pool = fake_pool(&host, 2, 4);
        let mut shutdown = Shutdown::new();
        shutdown.spawn(|stop| Arc::clone(&pool).run_refill(stop));
        eventually("the first round failed", || {
            !pool.snapshot().initializing && pool.snapshot().last_error.is_some()
        })
        .await;
        // One round of min_idle attempts, then a 2 s pause: no storm.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(host.runtime.runs.load(Ordering::SeqCst), 2);
        assert_eq!(
            pool.snapshot().alive,
            0,
            "failed creations give their slots back"
        );
        let why = pool.snapshot().last_error.unwrap();
        assert!(why.contains("the fake runtime refuses"), "{why}");
        // A request is told at once, not after waiting.
        assert!(matches!(pool.take().await, Err(TakeError::Failed(_))));
        // The refill leaves its backoff when the shutdown begins.
        let started = std::time::Instant::now();
        shutdown.complete(Duration::from_secs(1)).await;
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(host.runtime.containers().is_empty());
    }

    #[tokio::test]
    async fn memory_not_memory_mb_decides_admission() {
        let host = FakeHost::new(Config::default());
        // 1024 MiB reserve; room for one start (64 MiB) and a bit.
        let memory = FakeMemory::mib(1024 + 100);
        let pool = fake_pool_with(&host, 0, 64, Arc::clone(&memory));
        let first = pool.take().await.unwrap();
        memory.set_mib(1024);
        assert!(matches!(pool.take().await, Err(TakeError::Full)));
        let refusal = pool.snapshot().last_refusal.unwrap();
        assert!(
            refusal.reason.contains("reserve of 1024 MiB"),
            "{}",
            refusal.reason
        );
        assert!(!pool.snapshot().admission_now.admit);
        memory.set_mib(4096);
        let second = pool.take().await.unwrap();
        assert_ne!(first.id, second.id);
        assert_eq!(pool.snapshot().alive, 2);
        assert!(pool.snapshot().admission_now.admit);
    }

    /// A pool of at most `max_workers` whose requests wait `queue_timeout`.
    fn waiting_pool(host: &FakeHost, max_workers: usize, queue_timeout: Duration) -> Arc<Pool> {
        let registry = Registry::new(host.config.state_dir());
        let policy = Policy {
            max_workers,
            reserve_bytes: 0,
        };
        let settings = Settings {
            min_idle: 0,
            parallelism: Some(2),
            cores: 2,
            queue_timeout,
            max_idle: 0,
            trim_after: Duration::from_secs(60),
            preload: Vec::new(),
        };
        let memory = FakeMemory::mib(64 * 1024);
        Pool::new(
            host.factory(),
            Arc::new(Metrics::default()),
            registry,
            settings,
            policy,
            memory,
        )
    }

    #[tokio::test]
    async fn waiting_requests_get_workers_in_arrival_order() {
        let host = FakeHost::new(Config::default());
        let pool = waiting_pool(&host, 1, Duration::from_secs(2));
        let mut holder = pool.take().await.unwrap();
        let (served, mut order) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..4 {
            let (taker, served) = (Arc::clone(&pool), served.clone());
            tokio::spawn(async move {
                let worker = taker.take().await.unwrap();
                served.send((n, worker)).unwrap();
            });
            // Each is queued before the next arrives.
            eventually("queued", || pool.snapshot().waiting == n + 1).await;
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            // The one slot frees: the oldest waiter gets the next worker.
            pool.destroy(holder.into_remains());
            let (n, worker) = order.recv().await.unwrap();
            seen.push(n);
            holder = worker;
        }
        assert_eq!(seen, [0, 1, 2, 3]);
        assert_eq!(pool.snapshot().waiting, 0);
        assert_eq!(
            host.runtime.runs.load(Ordering::SeqCst),
            5,
            "one worker each"
        );
    }

    #[tokio::test]
    async fn a_request_waits_until_the_deadline_and_only_then_hears_full() {
        let host = FakeHost::new(Config::default());
        let pool = waiting_pool(&host, 1, Duration::from_millis(200));
        let _holder = pool.take().await.unwrap();
        let started = tokio::time::Instant::now();
        assert!(matches!(pool.take().await, Err(TakeError::Full)));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(400),
            "{waited:?}"
        );
        assert_eq!(
            pool.snapshot().waiting,
            0,
            "a request that gave up leaves the queue"
        );
        let refusal = pool.snapshot().last_refusal.unwrap();
        assert!(
            refusal.reason.contains("pool.max_workers (1)"),
            "{}",
            refusal.reason
        );
    }

    #[tokio::test]
    async fn a_request_that_gave_up_is_skipped() {
        let host = FakeHost::new(Config::default());
        let pool = waiting_pool(&host, 1, Duration::from_secs(2));
        let holder = pool.take().await.unwrap();
        let quitter = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.take().await.map(|w| w.id) }
        });
        eventually("queued", || pool.snapshot().waiting == 1).await;
        let patient = tokio::spawn({
            let pool = Arc::clone(&pool);
            async move { pool.take().await.map(|w| w.id) }
        });
        eventually("both queued", || pool.snapshot().waiting == 2).await;
        quitter.abort();
        pool.destroy(holder.into_remains());
        assert!(patient.await.unwrap().is_ok());
        assert_eq!(pool.snapshot().idle, 0);
        assert_eq!(pool.snapshot().alive, 1, "no worker lost or made twice");
    }

    #[test]
    fn the_idle_target_is_arrival_rate_times_start_time_within_bounds() {
        let (second, minute) = (Duration::from_secs(1), Duration::from_secs(60));
        let recent = Some(Duration::from_millis(100));
        // Quiet: min_idle.
        assert_eq!(idle_target(2, 8, 0, second, None, minute), 2);
        // 30 users in 10 s, 1 s starts: 3 arrive during a start.
        assert_eq!(idle_target(2, 8, 30, second, recent, minute), 3);
        assert_eq!(idle_target(2, 8, 30, 2 * second, recent, minute), 6);
        // Bounded above and below.
        assert_eq!(idle_target(2, 8, 100, 2 * second, recent, minute), 8);
        assert_eq!(idle_target(2, 8, 1, second, recent, minute), 2);
        // A minute without arrivals: back to min_idle.
        assert_eq!(idle_target(2, 8, 30, second, Some(minute), minute), 2);
        // max_idle below min_idle does not undercut min_idle.
        assert_eq!(idle_target(3, 1, 0, second, recent, minute), 3);
    }

    #[tokio::test]
    async fn the_pool_grows_with_demand_and_trims_back_when_it_falls() {
        let host = FakeHost::new(Config::default());
        let registry = Registry::new(host.config.state_dir());
        let settings = Settings {
            min_idle: 1,
            parallelism: Some(2),
            cores: 2,
            queue_timeout: QUEUE_TIMEOUT,
            max_idle: 4,
            trim_after: Duration::from_millis(150),
            preload: Vec::new(),
        };
        let policy = Policy {
            max_workers: 20,
            reserve_bytes: 0,
        };
        let memory = FakeMemory::mib(64 * 1024);
        let pool = Pool::new(
            host.factory(),
            Arc::new(Metrics::default()),
            registry,
            settings,
            policy,
            memory,
        );
        let mut shutdown = Shutdown::new();
        shutdown.spawn(|stop| Arc::clone(&pool).run_refill(stop));
        eventually("min_idle ready", || pool.snapshot().idle == 1).await;
        // Real workers take seconds to start; the fake ones, milliseconds,
        // which pull the moving average down by a quarter each: start high.
        pool.demand.lock().unwrap().start_time = Some(Duration::from_secs(1000));
        let mut taken = Vec::new();
        for _ in 0..6 {
            taken.push(pool.take().await.unwrap());
        }
        // 6 arrivals in 10 s × minutes-long starts, bounded by max_idle.
        assert_eq!(pool.snapshot().idle_target, 4);
        eventually("grown to max_idle", || pool.snapshot().idle == 4).await;
        // No arrivals for trim_after: back to min_idle, the rest destroyed.
        eventually("trimmed", || {
            pool.snapshot().idle == 1 && pool.snapshot().alive == 7
        })
        .await;
        assert_eq!(pool.snapshot().idle_target, 1);
        assert_eq!(host.runtime.containers().len(), 7);
        shutdown.complete(Duration::from_secs(1)).await;
    }

    #[test]
    fn backoff_doubles_up_to_half_a_minute() {
        let secs: Vec<u64> = [1, 2, 3, 4, 5, 6, 40]
            .map(|n| backoff(n).as_secs())
            .to_vec();
        assert_eq!(secs, [2, 4, 8, 16, 30, 30, 30]);
    }
}
