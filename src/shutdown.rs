//! Listens for the gateway's shutdown, one signal that every background loop
//! follows (after mini-redis's `shutdown.rs`).
//!
//! The server owns a [`Shutdown`]: it spawns the background loops through it
//! (the registry writer, the pool's refill, the session reaper), each with a
//! [`Listener`] that it selects on. On SIGTERM the server triggers it, waits
//! for the HTTP front to finish its requests, then for every loop to return,
//! and only then saves the registry for the last time: nothing writes the
//! file after that save, and no loop outlives the server.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// The sending side, and the loops that follow it.
pub struct Shutdown {
    signal: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// What a loop holds to learn that the gateway is shutting down.
#[derive(Clone)]
pub struct Listener {
    signal: watch::Receiver<bool>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self {
            signal: watch::channel(false).0,
            tasks: JoinSet::new(),
        }
    }

    pub fn listener(&self) -> Listener {
        Listener {
            signal: self.signal.subscribe(),
        }
    }

    /// Spawns a background loop that must return once the shutdown begins.
    pub fn spawn<F>(&mut self, task: impl FnOnce(Listener) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let listener = self.listener();
        self.tasks.spawn(task(listener));
    }

    /// Tells every listener that the shutdown has begun.
    pub fn begin(&self) {
        self.signal.send_replace(true);
    }

    /// Begins the shutdown (if not yet) and waits for every spawned loop to
    /// return; after `within`, aborts those still running and says which count.
    pub async fn complete(mut self, within: Duration) {
        self.begin();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!(
                "{} background task(s) still running after {within:?}; aborted",
                self.tasks.len()
            );
            self.tasks.shutdown().await;
        }
    }
}

impl Listener {
    /// True once the shutdown has begun.
    pub fn is_shutdown(&self) -> bool {
        *self.signal.borrow()
    }

    /// Resolves once the shutdown has begun (at once if it has).
    pub async fn recv(&mut self) {
        // An error means the `Shutdown` is gone: that is a shutdown too.
        let _ = self.signal.wait_for(|begun| *begun).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn every_loop_ends_before_complete_returns() {
        let mut shutdown = Shutdown::new();
        let ended = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ended);
        shutdown.spawn(|mut listener| async move {
            loop {
                tokio::select! {
                    _ = listener.recv() => break,
                    _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            flag.store(true, Ordering::SeqCst);
        });
        let mut late = shutdown.listener();
        assert!(!late.is_shutdown());
        shutdown.complete(Duration::from_secs(1)).await;
        assert!(ended.load(Ordering::SeqCst));
        late.recv().await;
        assert!(late.is_shutdown());
    }

    #[tokio::test]
    async fn a_loop_that_ignores_it_is_aborted() {
        let mut shutdown = Shutdown::new();
        shutdown.spawn(|_| std::future::pending());
        let started = std::time::Instant::now();
        shutdown.complete(Duration::from_millis(50)).await;
        assert!(started.elapsed() < Duration::from_millis(500));
    }
}
