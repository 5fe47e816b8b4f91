//! Long encrypted names' side files (names/cipher.rs): written before the
//! entry they name is made, removed after it goes, and cleared by rmdir when
//! a crash left them without their entry.

use super::{At, Tree, check, cstr, listing};
use crate::fs::names::cipher::{SIDE_SUFFIX, is_long_raw, is_side_raw};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

impl Tree {
    /// Runs `make`, which creates the entry `at`; a long name first gets its
    /// side file (gocryptfs's order: a crash leaves at worst a side file
    /// without its entry, which listings skip and rmdir clears).
    pub(super) fn creating<T>(
        &self,
        at: &At,
        side: Option<&str>,
        mut make: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        self.with_space(|| self.creating_once(at, side, &mut make))
    }

    fn creating_once<T>(
        &self,
        at: &At,
        side: Option<&str>,
        make: &mut impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        let Some(side) = side else { return make() };
        let created = write_side(at, side)?;
        let r = make();
        if let Err(e) = &r
            && created
            && e.raw_os_error() != Some(libc::EEXIST)
        {
            let _ = unlink_side(at);
        }
        r
    }

    /// After the entry `at` went: its side file, if it has one, goes too.
    pub(super) fn removed(&self, at: &At) {
        if at.name.to_str().is_ok_and(is_long_raw) {
            let _ = unlink_side(at);
        }
    }
}

fn side_name(at: &At) -> io::Result<CString> {
    let mut v = at.name.as_bytes().to_vec();
    v.extend_from_slice(SIDE_SUFFIX.as_bytes());
    cstr(&v)
}

/// fstatat without following a symlink.
pub(super) fn stat_at(at: &At) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value to be filled in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid directory descriptor, C name and stat buffer.
    check(unsafe {
        libc::fstatat(
            at.dir_fd(),
            at.name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

/// Writes the side file of the long name `at` holding `side`; true if it
/// was made now. One already there with the same content is kept; one with
/// other content (damaged, planted) is replaced.
pub(super) fn write_side(at: &At, side: &str) -> io::Result<bool> {
    use std::io::Write;
    let name = side_name(at)?;
    for _ in 0..2 {
        // SAFETY: a valid directory descriptor and C name; the descriptor
        // returned is owned below.
        let fd = unsafe {
            libc::openat(
                at.dir_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor, owned once.
            let mut f = unsafe { File::from_raw_fd(fd) };
            if let Err(e) = f.write_all(side.as_bytes()) {
                drop(f);
                let _ = unlink_side(at);
                return Err(e);
            }
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
        // SAFETY: a valid directory descriptor (O_PATH) reopened for reading.
        let dir = unsafe {
            libc::openat(
                at.dir_fd(),
                c".".as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if dir < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor, owned once.
        let dir = unsafe { File::from_raw_fd(dir) };
        let raw = at
            .name
            .to_str()
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if crate::fs::names::read_side(&dir, raw).is_ok_and(|s| s == side) {
            return Ok(false);
        }
        unlink_side(at)?;
    }
    Err(io::Error::from_raw_os_error(libc::EEXIST))
}

pub(super) fn unlink_side(at: &At) -> io::Result<()> {
    let name = side_name(at)?;
    // SAFETY: a valid directory descriptor and C name.
    check(unsafe { libc::unlinkat(at.dir_fd(), name.as_ptr(), 0) })
}

/// A directory rmdir found not empty: if all it holds are long names' side
/// files (whose entries a crash removed), they go, and true is returned.
pub(super) fn clear_orphan_sides(at: &At) -> io::Result<bool> {
    // SAFETY: a valid directory descriptor and C name; owned below.
    let fd = unsafe {
        libc::openat(
            at.dir_fd(),
            at.name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned once.
    let dir = unsafe { File::from_raw_fd(fd) };
    let entries = listing::entries(&dir)?;
    if entries.is_empty() || !entries.iter().all(|(n, _)| is_side_raw(n)) {
        return Ok(false);
    }
    for (n, _) in entries {
        let c = cstr(n.as_bytes())?;
        // SAFETY: a valid directory descriptor and C name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) })?;
    }
    Ok(true)
}
