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
//! call, as before), and not in a process forked after it was made, where
//! the parent could read the events first.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

/// Forks seen by this process's children: a watch made before a fork is
/// not trusted after it.
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
    fd: OwnedFd,
    /// Moves on every batch of events read (or a failed read).
    changes: AtomicU64,
    forks: u64,
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
        // SAFETY: no preconditions; the descriptor is owned below.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor, owned once.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The home by its held descriptor, not by its path (which may have
        // been swapped since the home was checked).
        let path = std::ffi::CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd())).ok()?;
        // SAFETY: a valid inotify descriptor and C path.
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), EVENTS) } < 0 {
            return None;
        }
        Some(HomeWatch {
            fd,
            changes: AtomicU64::new(0),
            forks: FORKS.load(Ordering::Relaxed),
        })
    }

    /// A number that differs from the one returned before whenever
    /// something in the home may have changed in between; None: the watch
    /// cannot say (stat instead).
    pub fn poll(&self) -> Option<u64> {
        if FORKS.load(Ordering::Relaxed) != self.forks {
            return None;
        }
        let mut buf = [0u8; 4096];
        let mut moved = false;
        loop {
            // SAFETY: a valid descriptor and a buffer of that length.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
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
    fn a_forked_child_does_not_trust_its_parents_watch() {
        let d = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(d.path()).unwrap();
        let w = HomeWatch::new(dir.as_fd()).expect("a watch on a local directory");
        assert!(w.poll().is_some());
        // SAFETY: the child only loads an atomic and calls _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = if w.poll().is_none() { 0 } else { 1 };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child trusted the watch (status {status})"
        );
        assert!(w.poll().is_some(), "the parent still does");
    }

    #[test]
    fn a_directory_on_a_network_or_fuse_filesystem_gets_no_watch() {
        // /proc is neither local storage nor on the list: stat every call.
        let proc = std::fs::File::open("/proc/self").unwrap();
        assert!(HomeWatch::new(proc.as_fd()).is_none());
    }
}
