//! The last close of an unlinked file, off the unlink's path.
//!
//! unlinkat(2) of a small file nobody holds open evicts its inode before it
//! returns: ext4 frees the blocks and, mounted with `discard` (as this
//! machine's root is), waits for the device to discard them. That was ~100 µs
//! of a 150 µs unlink through the mount, on `rm -rf`'s critical path. Held by
//! an O_PATH descriptor across the unlinkat, the name goes at once (~15 µs)
//! and the eviction waits for the descriptor's close, which threads here do.
//! The name is gone when the unlink is answered, exactly as before; only the
//! space comes back a little later, as it does when any process holds the
//! file open. A crash before the close leaves an orphan inode, which the
//! backing filesystem reclaims at its next mount, as for any open file.
//! Only small files (up to 1 MiB allocated) and directories come here: a
//! large file's eviction grows with its size, and is done inline as before.
//!
//! Space must still be there when asked for: `settle` waits until every
//! queued close is done; statfs calls it first, and an allocation that fails
//! with ENOSPC is tried again after it (Tree::with_space), so a user who
//! deletes a file on a full disk can write at once. The queue is bounded:
//! when it is full the close happens inline, as it did before. The unmount
//! settles before its final syncfs.

use std::os::fd::OwnedFd;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

/// Closes queued at most (each holds a descriptor and an inode).
const QUEUE: usize = 256;
/// Threads closing: evictions wait on the disk, not the CPU, so two overlap
/// their discards without taking a core from the caller.
const THREADS: usize = 2;
/// The longest `settle` waits.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
pub struct Reaper {
    /// Set by `start`, which the mount daemon calls once it serves (after
    /// it has forked: threads do not survive a fork). Until then, and in
    /// the tools, every close is inline.
    tx: OnceLock<Option<SyncSender<OwnedFd>>>,
    pending: Arc<Pending>,
}

/// Closes queued or under way, and a condition to wait for none.
#[derive(Default)]
struct Pending {
    n: Mutex<usize>,
    none: Condvar,
}

impl Pending {
    fn add(&self) {
        *self.n.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn done(&self) {
        let mut n = self.n.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            self.none.notify_all();
        }
    }
}

impl Reaper {
    /// Closes `fd` soon, on another thread (now, if the queue is full or no
    /// thread could be started).
    pub fn close_later(&self, fd: OwnedFd) {
        let Some(Some(tx)) = self.tx.get() else {
            return drop(fd);
        };
        self.pending.add();
        match tx.try_send(fd) {
            Ok(()) => {}
            Err(TrySendError::Full(fd) | TrySendError::Disconnected(fd)) => {
                drop(fd);
                self.pending.done();
            }
        }
    }

    /// Returns once every close queued so far is done, or after `SETTLE`
    /// at most (a close waits on the disk; a stuck disk must not also hang
    /// the daemon's statfs and writes).
    pub fn settle(&self) {
        let until = std::time::Instant::now() + SETTLE;
        let mut n = self.pending.n.lock().unwrap_or_else(|e| e.into_inner());
        while *n > 0 {
            let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
                return;
            };
            n = self
                .pending
                .none
                .wait_timeout(n, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// True once `start` has run (closes may be behind).
    pub fn started(&self) -> bool {
        matches!(self.tx.get(), Some(Some(_)))
    }

    /// True if closes are queued or under way.
    #[cfg(test)]
    pub fn busy(&self) -> bool {
        *self.pending.n.lock().unwrap_or_else(|e| e.into_inner()) > 0
    }

    /// Closes from now on go to threads of this process.
    pub fn start(&self) {
        self.tx.get_or_init(|| self.spawn());
    }

    fn spawn(&self) -> Option<SyncSender<OwnedFd>> {
        let (tx, rx) = sync_channel::<OwnedFd>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..THREADS {
            let (rx, pending) = (Arc::clone(&rx), Arc::clone(&self.pending));
            let spawned = std::thread::Builder::new()
                .name(format!("kmsfs-reap-{i}"))
                .spawn(move || reap(&rx, &pending));
            started += usize::from(spawned.is_ok());
        }
        (started > 0).then_some(tx)
    }
}

fn reap(rx: &Mutex<Receiver<OwnedFd>>, pending: &Pending) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Ok(fd) => {
                drop(fd);
                pending.done();
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn settle_returns_once_every_queued_descriptor_is_closed() {
        let r = Reaper::default();
        r.start();
        // Pipes: a read end sees end-of-file once its write end is closed.
        let mut readers = Vec::new();
        // More than the queue holds: the rest are closed inline.
        for _ in 0..QUEUE + 44 {
            let (rd, wr) = std::io::pipe().unwrap();
            readers.push(rd);
            r.close_later(OwnedFd::from(wr));
        }
        r.settle();
        assert!(!r.busy());
        for (i, rd) in readers.iter_mut().enumerate() {
            let mut b = [0u8; 1];
            assert_eq!(rd.read(&mut b).unwrap(), 0, "write end {i} still open");
        }
    }

    #[test]
    fn an_unstarted_reaper_closes_at_once() {
        let r = Reaper::default();
        let (mut rd, wr) = std::io::pipe().unwrap();
        r.close_later(OwnedFd::from(wr));
        assert!(!r.busy());
        assert!(r.tx.get().is_none(), "a thread was started");
        let mut b = [0u8; 1];
        assert_eq!(rd.read(&mut b).unwrap(), 0, "the write end is still open");
        r.settle();
    }
}
