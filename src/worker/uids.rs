//! The sandbox uids: one per live worker, so that every per-uid limit of the
//! kernel (RLIMIT_NPROC above all: processes and threads) is per worker.
//!
//! A uid goes back to the pool only once its worker's container is removed
//! (removal kills every process of the container), and returns to the back of
//! the queue: the uid handed out next is the one that has been free longest.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// The range of sandbox uids and which of them are free.
pub struct SandboxUids {
    first: u32,
    count: u32,
    state: Mutex<State>,
}

struct State {
    /// Free uids, longest free first.
    free: VecDeque<u32>,
    in_use: HashSet<u32>,
}

impl SandboxUids {
    /// `count` uids starting at `first`, all free.
    pub fn new(first: u32, count: u32) -> Self {
        Self {
            first,
            count,
            state: Mutex::new(State {
                free: (first..first + count).collect(),
                in_use: HashSet::new(),
            }),
        }
    }

    /// A free uid for a new worker; None when every uid serves a worker.
    pub fn take(&self) -> Option<u32> {
        let mut state = self.state.lock().unwrap();
        let uid = state.free.pop_front()?;
        state.in_use.insert(uid);
        Some(uid)
    }

    /// Marks `uid` as used by a re-adopted worker; false when it is outside
    /// the range or already taken (two records claiming one uid).
    pub fn claim(&self, uid: u32) -> bool {
        let mut state = self.state.lock().unwrap();
        if !self.contains(uid) || !state.in_use.insert(uid) {
            return false;
        }
        state.free.retain(|&u| u != uid);
        true
    }

    /// Returns `uid` once no process of it is left (its container is removed).
    pub fn give_back(&self, uid: u32) {
        let mut state = self.state.lock().unwrap();
        if state.in_use.remove(&uid) {
            state.free.push_back(uid);
        }
    }

    /// How many uids serve workers now.
    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap().in_use.len()
    }

    pub fn contains(&self, uid: u32) -> bool {
        uid >= self.first && uid - self.first < self.count
    }

    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn count(&self) -> u32 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_distinct_and_reused_longest_free_first() {
        let uids = SandboxUids::new(10_000, 3);
        let a = uids.take().unwrap();
        let b = uids.take().unwrap();
        let c = uids.take().unwrap();
        assert_eq!((a, b, c), (10_000, 10_001, 10_002));
        assert_eq!(uids.take(), None, "all in use");
        uids.give_back(b);
        uids.give_back(a);
        assert_eq!(uids.take(), Some(b), "the longest free comes first");
        assert_eq!(uids.in_use(), 2);
        uids.give_back(b);
        uids.give_back(b); // twice is harmless
        assert_eq!(uids.in_use(), 1);
    }

    #[test]
    fn claims_for_readopted_workers_are_exclusive() {
        let uids = SandboxUids::new(10_000, 10);
        assert!(uids.claim(10_005));
        assert!(!uids.claim(10_005), "two records cannot share a uid");
        assert!(
            !uids.claim(9_999) && !uids.claim(10_010),
            "outside the range"
        );
        let handed: Vec<u32> = std::iter::from_fn(|| uids.take()).collect();
        assert_eq!(handed.len(), 9);
        assert!(!handed.contains(&10_005));
    }
}
