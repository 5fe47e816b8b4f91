//! The node an attribute change applies to: its backing name, or, once that
//! name is unlinked while the file is still open, the open descriptor. POSIX
//! keeps fstat, fchmod, fchown, futimens and ftruncate working on an open file
//! whose last name is gone, and temporary files (create, unlink, keep using)
//! rely on it.

use std::fs::{self, File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

pub enum Target {
    Path(PathBuf),
    /// A duplicate of the open file's descriptor, so that no lock on the open
    /// file is held while the change is made (a truncation takes it).
    Open(File),
}

impl Target {
    pub fn metadata(&self) -> io::Result<Metadata> {
        match self {
            Target::Path(p) => fs::symlink_metadata(p),
            Target::Open(f) => f.metadata(),
        }
    }

    pub fn chmod(&self, mode: u32) -> io::Result<()> {
        let perm = fs::Permissions::from_mode(mode & 0o7777);
        match self {
            Target::Path(p) => fs::set_permissions(p, perm),
            Target::Open(f) => f.set_permissions(perm),
        }
    }

    pub fn chown(&self, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        match self {
            Target::Path(p) => std::os::unix::fs::lchown(p, uid, gid),
            Target::Open(f) => std::os::unix::fs::fchown(f, uid, gid),
        }
    }

    /// `times` (access, modification) as utimensat(2) takes them: a time,
    /// UTIME_NOW or UTIME_OMIT.
    pub fn set_times(&self, times: &[libc::timespec; 2]) -> io::Result<()> {
        let r = match self {
            Target::Path(p) => {
                let c = std::ffi::CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: a valid C path and a two-element timespec array.
                unsafe {
                    libc::utimensat(
                        libc::AT_FDCWD,
                        c.as_ptr(),
                        times.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                    )
                }
            }
            // SAFETY: an open descriptor and a two-element timespec array.
            Target::Open(f) => unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) },
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
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
