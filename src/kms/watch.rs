//! Whether another process may have changed the KMS home, without asking the
//! disk on every call.
//!
//! Every key use must see a key another process disabled a moment ago, so
//! the keystore's stamp (inode, mtime, size) used to be taken by fstatat
//! before each call: 1.5 µs of a 13 µs Decrypt here, the largest single
//! cost after the audit write. An inotify watch on the home says the same
//! for a non-blocking read that finds nothing: any entry of the home made,
//! renamed, removed, closed after writing or changed in its attributes
//! moves a counter, and only then is the stamp taken again. The keystore is
//! replaced by rename, so that rename is always seen; the audit log's own
//! appends are not watched (IN_MODIFY), or every record would wake it.
//!
//! inotify sees only changes made through this machine's kernel, so the
//! watch is used only on local filesystems (a home on NFS is stat'ed every
//! call, as before). A process forked after the watch was made (the mount
//! daemon: the KMS is opened before it forks) shares the parent's inotify
//! descriptor, whose events the parent could read first, so it makes its
//! own on its first look, and that look counts as a change.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

/// Forks seen by this process's children: a watch made before a fork is
/// made again after it.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Filesystems whose changes all pass through this kernel.
const LOCAL: [i64; 6] = [
    0xEF53,      // ext2/3/4
    0x5846_5342, // xfs
    0x9123_683E, // btrfs
    0x0102_1994, // tmpfs
    0xF2F5_2010, // f2fs
    0x2FC1_2FC1, // zfs
];

const EVENTS: u32 = libc::IN_ATTRIB
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO
    | libc::IN_DELETE_SELF
    | libc::IN_MOVE_SELF
    | libc::IN_ONLYDIR;

pub struct HomeWatch {
    /// The watched directory, held to watch it again after a fork.
    dir: OwnedFd,
    /// The inotify descriptor and the fork count it was made under (None:
    /// it could not be made again after a fork).
    inotify: Mutex<(u64, Option<OwnedFd>)>,
    /// Moves on every batch of events read (or a new descriptor).
    changes: AtomicU64,
}

/// An inotify descriptor watching `dir`.
fn arm(dir: BorrowedFd<'_>) -> Option<OwnedFd> {
    // SAFETY: no preconditions; the descriptor is owned below.
    let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh descriptor, owned once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The directory by its held descriptor, not by its path (which may
    // have been swapped since the home was checked).
    let path = std::ffi::CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
    // SAFETY: a valid inotify descriptor and C path.
    if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), EVENTS) } < 0 {
        return None;
    }
    Some(fd)
}

impl HomeWatch {
    /// A watch on the directory `dir`; None where one cannot be trusted or
    /// made (the caller then stats every time).
    pub fn new(dir: BorrowedFd<'_>) -> Option<HomeWatch> {
        static HOOK: Once = Once::new();
        // SAFETY: registers a handler that only touches an atomic.
        HOOK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(forked));
        });
        // SAFETY: an all-zero statfs is valid; fstatfs fills it in.
        let mut s: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and out-struct.
        if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut s) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)]
        if !LOCAL.contains(&(s.f_type as i64)) {
            return None;
        }
        let forks = FORKS.load(Ordering::Relaxed);
        let fd = arm(dir)?;
        Some(HomeWatch {
            dir: dir.try_clone_to_owned().ok()?,
            inotify: Mutex::new((forks, Some(fd))),
            changes: AtomicU64::new(0),
        })
    }

    /// A number that differs from the one returned before whenever
    /// something in the home may have changed in between; None: the watch
    /// cannot say (stat instead).
    pub fn poll(&self) -> Option<u64> {
        let mut g = self.inotify.lock().unwrap_or_else(|e| e.into_inner());
        let forks = FORKS.load(Ordering::Relaxed);
        if g.0 != forks {
            // Forked since: what happened in between is unknown.
            *g = (forks, arm(self.dir.as_fd()));
            self.changes.fetch_add(1, Ordering::AcqRel);
        }
        let fd = g.1.as_ref()?;
        let mut buf = [0u8; 4096];
        let mut moved = false;
        loop {
            // SAFETY: a valid descriptor and a buffer of that length.
            let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                moved = true;
                continue;
            }
            let e = std::io::Error::last_os_error().raw_os_error();
            if n < 0 && e == Some(libc::EINTR) {
                continue;
            }
            if !(n < 0 && e == Some(libc::EAGAIN)) {
                return None;
            }
            break;
        }
        Some(if moved {
            self.changes.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.changes.load(Ordering::Acquire)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_rename_into_the_home_moves_the_count_and_an_append_does_not() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let w = HomeWatch::new(dir.as_fd()).expect("a watch on a local directory");
        let start = w.poll().unwrap();
        assert_eq!(w.poll(), Some(start), "nothing happened");
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.path().join("audit.log"))
            .unwrap();
        let created = w.poll().unwrap();
        assert_ne!(created, start, "a file made in the home");
        use std::io::Write;
        log.write_all(b"record\n").unwrap();
        assert_eq!(w.poll(), Some(created), "an append is not a change");
        std::fs::write(d.path().join("keystore.json.tmp"), b"{}").unwrap();
        let written = w.poll().unwrap();
        std::fs::rename(
            d.path().join("keystore.json.tmp"),
            d.path().join("keystore.json"),
        )
        .unwrap();
        let renamed = w.poll().unwrap();
        assert_ne!(renamed, written, "the keystore renamed into place");
        assert_eq!(w.poll(), Some(renamed));
    }

    #[test]
    fn a_forked_child_watches_on_its_own_and_counts_the_fork_as_a_change() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let w = HomeWatch::new(dir.as_fd()).expect("a watch on a local directory");
        let before = w.poll().unwrap();
        // SAFETY: the child only polls (a lock, inotify calls) and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let ok = (|| {
                let first = w.poll()?;
                let quiet = w.poll()?;
                std::fs::write(d.path().join("made-by-child"), b"x").ok()?;
                let after = w.poll()?;
                Some(first != before && quiet == first && after != quiet)
            })();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok == Some(true) { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's own watch: the fork a change, then quiet, then its file seen (status {status})"
        );
        assert_ne!(
            w.poll(),
            Some(before),
            "the parent sees the child's file too"
        );
    }

    #[test]
    fn a_directory_on_a_network_or_fuse_filesystem_gets_no_watch() {
        // /proc is neither local storage nor on the list: stat every call.
        let proc = std::fs::File::open("/proc/self").unwrap();
        assert!(HomeWatch::new(proc.as_fd()).is_none());
    }
}
