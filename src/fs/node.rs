//! The node an attribute change applies to: its backing name, or, once that
//! name is unlinked while the file is still open, the open descriptor. POSIX
//! keeps fstat, fchmod, fchown, futimens and ftruncate working on an open file
//! whose last name is gone, and temporary files (create, unlink, keep using)
//! rely on it.

use super::tree::Tree;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

pub enum Target {
    /// A path relative to the cipherdir, reached through `Tree`.
    Path(String),
    /// The node itself, opened O_PATH beneath the cipherdir without
    /// following it: one walk for a whole setattr (mode, owner, times and the
    /// stat of the reply), where each change by path walked again.
    Node(File),
    /// A duplicate of the open file's descriptor, so that no lock on the open
    /// file is held while the change is made (a truncation takes it).
    Open(File),
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Target {
    pub fn stat(&self, t: &Tree) -> io::Result<libc::stat> {
        match self {
            Target::Path(p) => t.lstat(p),
            Target::Open(f) | Target::Node(f) => {
                // SAFETY: an all-zero stat is valid; fstat fills it in.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: an open descriptor and a stat buffer.
                check(unsafe { libc::fstat(f.as_raw_fd(), &mut st) })?;
                Ok(st)
            }
        }
    }

    pub fn chmod(&self, t: &Tree, mode: u32) -> io::Result<()> {
        match self {
            Target::Path(p) => t.chmod(p, mode),
            // SAFETY: an open descriptor.
            Target::Open(f) => check(unsafe { libc::fchmod(f.as_raw_fd(), mode & 0o7777) }),
            Target::Node(f) => {
                // SAFETY: an O_PATH descriptor, an empty C name and AT_EMPTY_PATH.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_fchmodat2,
                        f.as_raw_fd(),
                        c"".as_ptr(),
                        (mode & 0o7777) as libc::mode_t,
                        libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                    )
                };
                if r == 0 {
                    return Ok(());
                }
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOSYS) {
                    return Err(e);
                }
                // Before Linux 6.6: through the daemon's own /proc entry,
                // never for a symlink (whose target it would reach).
                let st = self.stat(t)?;
                if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                    return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
                }
                let proc = std::ffi::CString::new(format!("/proc/self/fd/{}", f.as_raw_fd()))
                    .expect("no NUL");
                // SAFETY: a valid C path naming our own descriptor.
                check(unsafe { libc::chmod(proc.as_ptr(), (mode & 0o7777) as libc::mode_t) })
            }
        }
    }

    pub fn chown(&self, t: &Tree, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        match self {
            Target::Path(p) => t.chown(p, uid, gid),
            Target::Open(f) => std::os::unix::fs::fchown(f, uid, gid),
            // SAFETY: an O_PATH descriptor, an empty C name; -1 keeps an id.
            Target::Node(f) => check(unsafe {
                libc::fchownat(
                    f.as_raw_fd(),
                    c"".as_ptr(),
                    uid.unwrap_or(u32::MAX),
                    gid.unwrap_or(u32::MAX),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            }),
        }
    }

    /// `times` (access, modification) as utimensat(2) takes them: a time,
    /// UTIME_NOW or UTIME_OMIT.
    pub fn set_times(&self, t: &Tree, times: &[libc::timespec; 2]) -> io::Result<()> {
        match self {
            Target::Path(p) => t.set_times(p, times),
            // SAFETY: an open descriptor and a two-element timespec array.
            Target::Open(f) => check(unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) }),
            // SAFETY: an O_PATH descriptor, an empty C name, two timespecs.
            Target::Node(f) => check(unsafe {
                libc::utimensat(
                    f.as_raw_fd(),
                    c"".as_ptr(),
                    times.as_ptr(),
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            }),
        }
    }
}

/// The mode a regular file is left with when an unprivileged write or
/// truncation clears its set-id bits as the kernel would: set-user-id always,
/// set-group-id only when group-execute is set or the writer is outside the
/// file's group (asked only then: it reads /proc). None when nothing changes.
pub fn setid_cleared(mode: u32, in_group: impl FnOnce() -> bool) -> Option<u32> {
    let mut new = mode & 0o7777 & !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group()) {
        new &= !libc::S_ISGID;
    }
    (new != mode & 0o7777).then_some(new)
}

#[cfg(test)]
mod tests {
    use super::setid_cleared;

    #[test]
    fn set_id_bits_clear_as_the_kernel_clears_them() {
        let never = || -> bool { panic!("group membership asked without set-group-id") };
        // (mode, writer in the file's group, mode after)
        let cases = [
            (0o4755, true, Some(0o755)),
            (0o6777, true, Some(0o777)),
            (0o2775, true, Some(0o775)),
            // No group execute: set-group-id is a mandatory-locking mark and
            // stays for a writer in the group, not for one outside it.
            (0o2764, true, None),
            (0o2764, false, Some(0o764)),
            (0o6764, true, Some(0o2764)),
        ];
        for (mode, in_group, want) in cases {
            assert_eq!(setid_cleared(mode, || in_group), want, "{mode:o}");
        }
        assert_eq!(setid_cleared(0o644, never), None);
        assert_eq!(setid_cleared(0o4644, never), Some(0o644));
    }
}
