//! What one user of a shared mount may take from the others: descriptors and
//! the right to rename.
//!
//! The daemon's open-file limit is one pool for every user. `OpenBudget`
//! gives each uid a share of it and keeps a reserve, so one user holding
//! thousands of files open gets EMFILE herself while everyone else (and root)
//! keeps opening. `RenameGate` replaces a global rename lock: a directory
//! rename can take seconds (every file below it is re-wrapped), and only
//! renames whose paths overlap it need to wait for it.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

/// Descriptors kept back from every share: for root, for the daemon's own
/// files (listings, the journal, the lock) and for the KMS's.
const RESERVE: u64 = 128;

pub struct OpenBudget {
    per_user: u64,
    total: u64,
    open: Mutex<(HashMap<u32, u64>, u64)>,
}

impl OpenBudget {
    /// Shares of a daemon allowed `limit` descriptors: a quarter of what is
    /// left after the reserve for any one user, the reserve itself for root
    /// only.
    pub fn new(limit: u64) -> Self {
        let usable = limit.saturating_sub(RESERVE).max(16);
        OpenBudget {
            per_user: (usable / 4).max(8),
            total: usable,
            open: Mutex::new((HashMap::new(), 0)),
        }
    }

    pub fn per_user(&self) -> u64 {
        self.per_user
    }

    /// Counts one more open file for `uid`, or says no (EMFILE for her).
    /// Root is bounded only by the whole limit.
    pub fn take(&self, uid: u32) -> bool {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (by_uid, total) = &mut *g;
        let mine = by_uid.get(&uid).copied().unwrap_or(0);
        let allowed = if uid == 0 {
            *total < self.total + RESERVE
        } else {
            mine < self.per_user && *total < self.total
        };
        if allowed {
            by_uid.insert(uid, mine + 1);
            *total += 1;
        }
        allowed
    }

    pub fn give_back(&self, uid: u32) {
        let mut g = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (by_uid, total) = &mut *g;
        if let Some(n) = by_uid.get_mut(&uid) {
            *n -= 1;
            *total -= 1;
            if *n == 0 {
                by_uid.remove(&uid);
            }
        }
    }
}

/// Raises the soft open-file limit to the hard one and returns it: the
/// daemon serves many users from one pool.
pub fn raise_open_file_limit() -> u64 {
    // SAFETY: an all-zero rlimit is valid; getrlimit fills it in.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and out-struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid resource and limits no higher than the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    lim.rlim_cur
}

/// Whether two relative paths overlap: equal, or one below the other.
fn overlaps(a: &str, b: &str) -> bool {
    let below = |x: &str, y: &str| y.is_empty() || x == y || x.starts_with(&format!("{y}/"));
    below(a, b) || below(b, a)
}

/// Renames in progress, and the operations that must not run beside one
/// whose paths overlap theirs.
///
/// A directory rename re-wraps every file below it for its new path, moves
/// the directory, then drops the old paths' key slots. An open that found a
/// file by its old path and read its header after the old slot was dropped
/// failed with EIO, and a file created in the directory after the re-wrapping
/// walk would move with it under a key for the old path. So renames take an
/// exclusive claim on their two paths, and operations that turn a path into
/// a key (lookup, open, create, symlink, readlink, truncation) a shared claim
/// on theirs: each waits only for claims that overlap it, and a waiting
/// rename holds back new shared claims on its paths, so it is not starved.
#[derive(Default)]
pub struct RenameGate {
    state: Mutex<Gate>,
    done: Condvar,
    next: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Gate {
    /// (id, paths, exclusive) of the claims held.
    held: Vec<(u64, [String; 2], bool)>,
    /// Renames waiting for their turn.
    waiting: Vec<(u64, [String; 2])>,
}

fn meets(a: &[String; 2], b: &[&str; 2]) -> bool {
    a.iter().any(|x| b.iter().any(|y| overlaps(x, y)))
}

/// A claim on paths; released (and waiters woken) when dropped, also when
/// the operation fails or panics.
pub struct Claim<'a> {
    gate: &'a RenameGate,
    id: u64,
}

impl RenameGate {
    /// Waits until no claim touches `from`'s or `to`'s subtrees (or their
    /// ancestors), then claims both for a rename.
    pub fn claim(&self, from: &str, to: &str) -> Claim<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let paths = [from, to];
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        g.waiting.push((id, [from.to_string(), to.to_string()]));
        while g.held.iter().any(|(_, p, _)| meets(p, &paths)) {
            g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.waiting.retain(|(w, _)| *w != id);
        g.held.push((id, [from.to_string(), to.to_string()], true));
        Claim { gate: self, id }
    }

    /// Waits while a rename that touches `path` runs or waits, then claims
    /// it shared (any number of shared claims may overlap).
    pub fn share(&self, path: &str) -> Claim<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let paths = [path, path];
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        while g.held.iter().any(|(_, p, ex)| *ex && meets(p, &paths))
            || g.waiting.iter().any(|(_, p)| meets(p, &paths))
        {
            g = self.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        g.held
            .push((id, [path.to_string(), path.to_string()], false));
        Claim { gate: self, id }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut g = self.gate.state.lock().unwrap_or_else(|e| e.into_inner());
        g.held.retain(|(id, _, _)| *id != self.id);
        drop(g);
        self.gate.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn one_user_cannot_take_the_whole_pool() {
        let b = OpenBudget::new(1024);
        let share = b.per_user();
        assert_eq!(share, (1024 - RESERVE) / 4);
        for _ in 0..share {
            assert!(b.take(1000));
        }
        assert!(!b.take(1000), "her share is used up");
        assert!(b.take(1001), "another user still opens");
        assert!(b.take(0), "root still opens");
        b.give_back(1000);
        assert!(b.take(1000));
        // Four greedy users fill the pool; root still has the reserve.
        for u in 2000..2003 {
            while b.take(u) {}
        }
        assert!(!b.take(3000));
        assert!(b.take(0));
    }

    #[test]
    fn overlapping_paths() {
        assert!(overlaps("a", "a"));
        assert!(overlaps("a", "a/b"));
        assert!(overlaps("a/b/c", "a"));
        assert!(overlaps("", "x"));
        assert!(!overlaps("a", "ab"));
        assert!(!overlaps("a/b", "a/c"));
    }

    #[test]
    fn only_overlapping_renames_wait() {
        let g = Arc::new(RenameGate::default());
        let big = g.claim("projects", "archive/projects");
        // Elsewhere: no wait.
        let t = Instant::now();
        drop(g.claim("home/a", "home/b"));
        assert!(t.elapsed() < Duration::from_millis(100));
        // Inside the moving tree: waits until the big rename is done.
        let g2 = g.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            drop(g2.claim("projects/x", "y"));
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(big);
        assert!(waiter.join().unwrap() >= Duration::from_millis(150));
    }

    #[test]
    fn opens_inside_a_moving_tree_wait_for_it_and_others_do_not() {
        let g = Arc::new(RenameGate::default());
        let a = g.share("home/x");
        let b = g.share("home/x"); // shared claims overlap freely
        drop((a, b));
        let big = g.claim("projects", "archive");
        let t = Instant::now();
        drop(g.share("home/y"));
        assert!(t.elapsed() < Duration::from_millis(100));
        let g2 = g.clone();
        let opener = std::thread::spawn(move || {
            let t = Instant::now();
            drop(g2.share("archive/f"));
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(big);
        assert!(opener.join().unwrap() >= Duration::from_millis(150));
        // A rename waits for the opens under it to finish.
        let open = g.share("projects/f");
        let g3 = g.clone();
        let renamer = std::thread::spawn(move || {
            let t = Instant::now();
            drop(g3.claim("projects", "elsewhere"));
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(open);
        assert!(renamer.join().unwrap() >= Duration::from_millis(150));
    }
}
