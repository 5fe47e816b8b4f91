//! What `--idle` watches: requests that show someone is using the mount,
//! and the file handles open on it. A mount is idle once neither has
//! changed for the whole duration and no handle is open (as gocryptfs's
//! `-idle`, which never unmounts under an open file).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Default, Debug)]
pub struct Activity {
    ops: AtomicU64,
    open: AtomicU64,
}

impl Activity {
    /// A request that uses the mount: lookups, attributes, listings, opens,
    /// reads, writes and changes. Not statfs, which `df` and monitoring
    /// agents send on their own schedule.
    pub fn touch(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    pub fn opened(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    pub fn closed(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.touch();
    }

    /// (requests so far, handles open now)
    pub fn sample(&self) -> (u64, u64) {
        (
            self.ops.load(Ordering::Relaxed),
            self.open.load(Ordering::Relaxed),
        )
    }
}

/// Decides from periodic samples when the mount has been idle long enough.
#[derive(Debug)]
pub struct IdleClock {
    limit: Duration,
    last_ops: u64,
    since: Instant,
}

impl IdleClock {
    pub fn new(limit: Duration, now: Instant) -> Self {
        IdleClock {
            limit,
            last_ops: 0,
            since: now,
        }
    }

    /// Whether the mount is due to be unmounted, given a sample taken at `now`.
    pub fn due(&mut self, (ops, open): (u64, u64), now: Instant) -> bool {
        if ops != self.last_ops || open > 0 {
            self.last_ops = ops;
            self.since = now;
            return false;
        }
        now.duration_since(self.since) >= self.limit
    }

    /// An unmount was refused (a process has its working directory inside):
    /// wait a whole duration again.
    pub fn busy(&mut self, now: Instant) {
        self.since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_means_no_request_and_no_open_file_for_the_whole_duration() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut c = IdleClock::new(Duration::from_secs(10), t0);
        assert!(!c.due((0, 0), s(5)));
        assert!(c.due((0, 0), s(10)), "ten quiet seconds");
        let mut c = IdleClock::new(Duration::from_secs(10), t0);
        assert!(!c.due((3, 0), s(8)), "a request restarts the clock");
        assert!(!c.due((3, 0), s(17)));
        assert!(c.due((3, 0), s(18)));
        let mut c = IdleClock::new(Duration::from_secs(10), t0);
        assert!(!c.due((1, 1), s(2)));
        assert!(!c.due((1, 1), s(60)), "never under an open file");
        assert!(!c.due((2, 0), s(61)), "the close is a request");
        assert!(c.due((2, 0), s(71)));
        c.busy(s(71));
        assert!(!c.due((2, 0), s(80)));
        assert!(c.due((2, 0), s(81)));
    }

    #[test]
    fn activity_counts_requests_and_open_handles() {
        let a = Activity::default();
        a.touch();
        a.opened();
        assert_eq!(a.sample(), (2, 1));
        a.closed();
        assert_eq!(a.sample(), (3, 0));
    }
}
