//! Whether the host can hold one more worker, decided from what it really uses.
//!
//! `limits.memory_mb` is a per-worker cap (a cgroup limit where Podman can set
//! one), not a reservation: an idle worker uses a few tens of MiB. A new worker
//! is admitted while the available memory, less what the workers being started
//! will soon take, stays above `pool.memory_reserve_mb`, and while fewer than
//! `pool.max_workers` workers (and sandbox uids) are in use. The decision is a
//! pure function of those figures ([`admit`]); the figures come from a
//! [`MemorySource`], real ([`HostMemory`]) or fake in tests.

use serde::Serialize;

const MIB: u64 = 1024 * 1024;

/// What a worker being started is counted as until its memory shows in the
/// measurement: about twice an idle worker's 35 MiB.
pub const STARTING_WORKER_BYTES: u64 = 64 * MIB;

/// What an idle worker is counted as: its processes' RSS, about 43 MiB
/// (their PSS, pages shared between workers counted once, is 27 MiB:
/// docs/benchmarks.md).
pub const IDLE_WORKER_BYTES: u64 = 40 * MIB;
/// The same once `pool.preload` imported numpy, pandas and
/// matplotlib.pyplot: RSS about 107 MiB, PSS 79 MiB (docs/benchmarks.md).
pub const PRELOADED_WORKER_BYTES: u64 = 112 * MIB;
/// The share of the memory above the reserve that "auto" spends on idle workers.
const IDLE_SHARE: u64 = 16;

/// `pool.min_idle = "auto"`: as many idle workers as fit in a sixteenth of the
/// memory available above the reserve, `per_idle` bytes each, within
/// `2 ..= max_idle`. A burst of new users is served from ready workers
/// (creations on a 2-core host give a few per second); the cost is memory
/// only, as idle kernels sleep.
pub fn auto_min_idle(available: u64, reserve: u64, per_idle: u64, max_idle: usize) -> usize {
    let fits = available.saturating_sub(reserve) / IDLE_SHARE / per_idle.max(1);
    (fits.min(max_idle as u64) as usize).max(2.min(max_idle))
}

/// Memory figures at one moment.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub struct MemoryFigures {
    /// What the host can still give: the smaller of sysinfo's available memory
    /// and, when the gateway's own cgroup has a memory limit, that limit less
    /// its usage.
    pub available_bytes: u64,
    /// Which figure was the smaller one: "host" or "cgroup v1"/"cgroup v2".
    pub source: &'static str,
}

/// Where the memory figures come from.
pub trait MemorySource: Send + Sync {
    fn measure(&self) -> MemoryFigures;
}

/// The admission policy's fixed part.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Policy {
    /// Most workers alive at once (`pool.max_workers`, capped by the sandbox uids).
    pub max_workers: usize,
    /// Available memory below which no new worker is admitted.
    pub reserve_bytes: u64,
}

/// An admission decision and the figures it was made from, for `/status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Decision {
    pub admit: bool,
    pub reason: String,
    /// Workers alive or being started when deciding.
    pub workers: usize,
    /// Of those, being started (counted as [`STARTING_WORKER_BYTES`] each).
    pub starting: usize,
    pub memory: MemoryFigures,
}

/// Admits one more worker, or says why not. Pure: the figures are given.
pub fn admit(policy: &Policy, workers: usize, starting: usize, memory: MemoryFigures) -> Decision {
    let mib = |bytes: u64| bytes / MIB;
    // The one being admitted will take its start-up memory too.
    let soon_used = (starting as u64 + 1) * STARTING_WORKER_BYTES;
    let left = memory.available_bytes.saturating_sub(soon_used);
    let (admit, reason) = if workers >= policy.max_workers {
        (
            false,
            format!(
                "{workers} workers reach pool.max_workers ({})",
                policy.max_workers
            ),
        )
    } else if left <= policy.reserve_bytes {
        (
            false,
            format!(
                "available memory {} MiB ({}), less {} MiB for {starting} starting workers and this one, \
                 is not above the reserve of {} MiB",
                mib(memory.available_bytes),
                memory.source,
                mib(soon_used),
                mib(policy.reserve_bytes)
            ),
        )
    } else {
        (
            true,
            format!(
                "{} MiB available above the reserve, {workers} of {} workers",
                mib(left - policy.reserve_bytes),
                policy.max_workers
            ),
        )
    };
    Decision {
        admit,
        reason,
        workers,
        starting,
        memory,
    }
}

/// The real figures: sysinfo for the host, the gateway's own cgroup for a limit.
pub struct HostMemory;

impl MemorySource for HostMemory {
    fn measure(&self) -> MemoryFigures {
        let (host, total) = sysinfo::System::new()
            .map(|mut system| {
                system.refresh_memory();
                (system.available_memory(), system.total_memory())
            })
            .unwrap_or((0, u64::MAX));
        match own_cgroup_room(total) {
            Some((room, source)) if room < host => MemoryFigures {
                available_bytes: room,
                source,
            },
            _ => MemoryFigures {
                available_bytes: host,
                source: "host",
            },
        }
    }
}

/// Room left under the gateway's own cgroup memory limit, when it has one
/// below the host's memory (as when the gateway runs in a limited container).
/// Reads the cgroup files the process sees at the usual mount points: in a
/// container with its own cgroup namespace, those are its own.
fn own_cgroup_room(total: u64) -> Option<(u64, &'static str)> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let v2 = read("/sys/fs/cgroup/memory.max").zip(read("/sys/fs/cgroup/memory.current"));
    let (v1_limit, v1_usage) = (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
    );
    let (limit, usage, source) = match v2 {
        Some((limit, usage)) => (limit, usage, "cgroup v2"),
        None => {
            let (limit, usage) = read(v1_limit).zip(read(v1_usage))?;
            (limit, usage, "cgroup v1")
        }
    };
    cgroup_room(&limit, &usage, total).map(|room| (room, source))
}

/// Limit less usage, from the cgroup files' text; `None` without a limit
/// ("max", or v1's huge "unlimited" value, or anything at least `total`).
fn cgroup_room(limit: &str, usage: &str, total: u64) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?;
    let usage: u64 = usage.trim().parse().ok()?;
    (limit < total).then(|| limit.saturating_sub(usage))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn auto_min_idle_spends_a_sixteenth_of_the_room_within_bounds() {
        let gib = 1024 * MIB;
        // 23 GiB available, 1 GiB reserve: 22 GiB / 16 / 40 MiB = 35, capped at 32.
        assert_eq!(auto_min_idle(23 * gib, gib, IDLE_WORKER_BYTES, 32), 32);
        assert_eq!(auto_min_idle(9 * gib, gib, IDLE_WORKER_BYTES, 32), 12);
        // Preloaded workers are bigger: fewer of them.
        assert_eq!(auto_min_idle(23 * gib, gib, PRELOADED_WORKER_BYTES, 32), 12);
        // A small host still keeps two; a reserve above what is there too.
        assert_eq!(auto_min_idle(2 * gib, gib, IDLE_WORKER_BYTES, 32), 2);
        assert_eq!(auto_min_idle(gib / 2, gib, IDLE_WORKER_BYTES, 32), 2);
        assert_eq!(auto_min_idle(23 * gib, gib, IDLE_WORKER_BYTES, 1), 1);
        assert_eq!(auto_min_idle(23 * gib, gib, IDLE_WORKER_BYTES, 0), 0);
    }

    /// Memory figures a test sets.
    pub(crate) struct FakeMemory(pub AtomicU64);

    impl FakeMemory {
        pub(crate) fn mib(mib: u64) -> std::sync::Arc<Self> {
            std::sync::Arc::new(Self(AtomicU64::new(mib * MIB)))
        }
        pub(crate) fn set_mib(&self, mib: u64) {
            self.0.store(mib * MIB, Ordering::SeqCst);
        }
    }

    impl MemorySource for FakeMemory {
        fn measure(&self) -> MemoryFigures {
            MemoryFigures {
                available_bytes: self.0.load(Ordering::SeqCst),
                source: "fake",
            }
        }
    }

    fn figures(mib: u64) -> MemoryFigures {
        MemoryFigures {
            available_bytes: mib * MIB,
            source: "host",
        }
    }

    const POLICY: Policy = Policy {
        max_workers: 64,
        reserve_bytes: 1024 * MIB,
    };

    #[test]
    fn admits_while_memory_stays_above_the_reserve() {
        // The host: 24 GiB, 30 idle workers of 35 MiB leave ~20 GiB.
        let yes = admit(&POLICY, 30, 0, figures(20_000));
        assert!(yes.admit, "{}", yes.reason);
        let no = admit(&POLICY, 3, 0, figures(1024));
        assert!(!no.admit);
        assert!(no.reason.contains("reserve of 1024 MiB"), "{}", no.reason);
        assert!(admit(&POLICY, 3, 0, figures(1024 + 65)).admit);
        assert!(!admit(&POLICY, 3, 0, figures(1024 + 64)).admit);
    }

    #[test]
    fn workers_being_started_count_before_they_show() {
        // 1024 + 64: one start fits, a second would eat into the reserve.
        assert!(admit(&POLICY, 0, 0, figures(1024 + 65)).admit);
        let no = admit(&POLICY, 1, 1, figures(1024 + 65));
        assert!(!no.admit);
        assert!(no.reason.contains("1 starting"), "{}", no.reason);
    }

    #[test]
    fn the_ceiling_holds_whatever_the_memory() {
        let no = admit(&POLICY, 64, 0, figures(1_000_000));
        assert!(!no.admit);
        assert!(no.reason.contains("pool.max_workers (64)"), "{}", no.reason);
        assert_eq!(no.workers, 64);
    }

    #[test]
    fn a_cgroup_limit_counts_only_when_set() {
        let total = 24 * 1024 * MIB;
        assert_eq!(cgroup_room("max\n", "1000\n", total), None);
        assert_eq!(
            cgroup_room("9223372036854771712\n", "1000\n", total),
            None,
            "v1 unlimited"
        );
        assert_eq!(
            cgroup_room(
                &format!("{}\n", 2048 * MIB),
                &format!("{}\n", 512 * MIB),
                total
            ),
            Some(1536 * MIB)
        );
        assert_eq!(cgroup_room("100", "200", total), Some(0));
        assert_eq!(cgroup_room("", "1", total), None);
    }

    #[test]
    fn the_host_has_figures() {
        let figures = HostMemory.measure();
        assert!(figures.available_bytes > 0);
    }
}
