//! Every access to the cipherdir, relative to one directory descriptor of it.
//!
//! The daemon runs as root and the cipherdir is hostile: anyone who could once
//! write to it may have planted symlinks where kmsfs expects its own files and
//! directories. So no path is ever joined onto the cipherdir's path and handed
//! to a path-taking syscall. A node is reached by `openat2` beneath the root
//! descriptor with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
//! | RESOLVE_NO_XDEV, so a symlink or a mount point in any component fails the
//! walk with ELOOP or EXDEV instead of leading outside; the change itself is
//! then an `*at` call on the parent's descriptor with AT_SYMLINK_NOFOLLOW, or
//! a call on the node's own descriptor. Paths are relative to the cipherdir,
//! so PATH_MAX limits the path inside the mount, not cipherdir + path.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::listing;
use super::names::cipher::is_long_raw;
use super::names::{Listed, Names};

mod long_names;
mod prefetch;
mod reaper;
use long_names::{clear_orphan_sides, stat_at, unlink_side};
use prefetch::Prefetch;
use reaper::Reaper;

/// The largest file (allocated bytes) whose eviction an unlink leaves to
/// the reaper (reaper.rs).
const DEFER_EVICTION_MAX: i64 = 1 << 20;

/// Resolution rules for every walk: stay beneath the root, follow no symlink
/// (magic links included), cross no mount point.
const RESOLVE: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

/// The cipherdir, held open.
pub struct Tree {
    root: File,
    /// For messages only: never used to reach a file.
    path: PathBuf,
    /// How the mount's paths map to backing paths: every method here takes
    /// the mount's (plaintext) path and maps it.
    names: Names,
    /// Closes the descriptors that keep unlinked files' inodes until after
    /// the unlink is answered (reaper.rs).
    reaper: Reaper,
    /// Reads ahead the files around an opened one (prefetch.rs).
    prefetch: Prefetch,
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A relative path kmsfs may resolve: "" (the root) or `/`-separated
/// components, none empty, `.` or `..`. Names reach the daemon from the
/// kernel one at a time, so this holds for every path the mount builds; it is
/// checked anyway, for paths read from disk (the rename journal).
pub fn is_clean(rel: &str) -> bool {
    rel.is_empty()
        || (rel.len() < libc::PATH_MAX as usize
            && !rel.contains('\0')
            && rel
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."))
}

fn unclean(rel: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{rel:?} is not a clean relative path"),
    )
}

/// ENAMETOOLONG for a component past NAME_MAX, as the backing filesystem
/// would answer for a plaintext name: an encrypted one would otherwise be
/// stored in its long form, and a lookup say ENOENT.
fn long_component(rel: &str) -> io::Result<()> {
    if rel
        .split('/')
        .any(|c| c.len() > super::names::cipher::MAX_NAME)
    {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    Ok(())
}

/// `rel`'s parent and last component; the root has neither.
fn split(rel: &str) -> io::Result<(&str, &str)> {
    if rel.is_empty() || !is_clean(rel) {
        return Err(unclean(rel));
    }
    Ok(rel.rsplit_once('/').unwrap_or(("", rel)))
}

/// One entry of a listing (`Tree::read_dir`).
pub struct Entry<'a> {
    /// The plaintext name (kmsfs's own files: their backing name).
    pub name: &'a str,
    /// The backing name, for `*at` calls on the listed directory.
    pub raw: &'a str,
    pub kind: fuser::FileType,
    pub next: u64,
}

/// The backing name `raw` in the open directory `dir`, as an `At`.
fn at_raw(dir: &File, raw: &str) -> io::Result<At> {
    Ok(At {
        dir: OwnedFd::from(dir.try_clone()?),
        name: cstr(raw.as_bytes())?,
    })
}

/// A directory descriptor and a name in it: the two halves of an `*at` call.
pub struct At {
    dir: OwnedFd,
    name: CString,
}

impl At {
    pub fn dir_fd(&self) -> libc::c_int {
        self.dir.as_raw_fd()
    }
    pub fn name(&self) -> &CStr {
        &self.name
    }
}

impl Tree {
    /// Opens the cipherdir itself. Its own path is the one the user gave; a
    /// symlink as the cipherdir's last component is refused, so that what the
    /// daemon holds is what `kmsfs init` made.
    pub fn open(path: &Path) -> io::Result<Tree> {
        let c = cstr(path.as_os_str().as_bytes())?;
        // SAFETY: a valid C path; the descriptor returned is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Tree {
            // SAFETY: a fresh descriptor, owned once.
            root: unsafe { File::from_raw_fd(fd) },
            path: path.to_path_buf(),
            names: Names::Plain,
            reaper: Reaper::default(),
            prefetch: Prefetch::default(),
        })
    }

    /// From now on, paths map through `names` (encrypted names, once the
    /// mount has the name key).
    pub fn set_names(&mut self, names: Names) {
        self.names = names;
    }

    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The cipherdir's path, for messages.
    pub fn display(&self) -> std::path::Display<'_> {
        self.path.display()
    }

    /// The descriptor of the cipherdir (fstat, syncfs, fstatvfs, flock).
    pub fn root(&self) -> &File {
        &self.root
    }

    /// `openat2` of `rel` beneath the root. O_NOFOLLOW is always added: with
    /// O_PATH it returns a symlink itself, otherwise a symlink fails.
    fn openat2(&self, rel: &str, flags: i32, mode: u32) -> io::Result<OwnedFd> {
        if !is_clean(rel) {
            return Err(unclean(rel));
        }
        long_component(rel)?;
        let backing = self.names.path(rel);
        // Encrypted names are longer than their plaintext, so a path under
        // PATH_MAX in the mount may be longer in the cipherdir: walked in
        // pieces, each beneath the directory the last one opened.
        let mut dir: Option<OwnedFd> = None;
        let mut rest: &str = &backing;
        while rest.len() >= libc::PATH_MAX as usize {
            let cut = rest[..libc::PATH_MAX as usize - 1]
                .rfind('/')
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENAMETOOLONG))?;
            let from = dir
                .as_ref()
                .map_or(self.root.as_raw_fd(), |d| d.as_raw_fd());
            let next =
                self.openat2_in(from, &rest[..cut], libc::O_PATH | libc::O_DIRECTORY, 0, rel)?;
            dir = Some(next);
            rest = &rest[cut + 1..];
        }
        let from = dir
            .as_ref()
            .map_or(self.root.as_raw_fd(), |d| d.as_raw_fd());
        self.openat2_in(from, rest, flags, mode, rel)
    }

    /// One `openat2` of the backing path `path` beneath `from`.
    fn openat2_in(
        &self,
        from: libc::c_int,
        path: &str,
        flags: i32,
        mode: u32,
        rel: &str,
    ) -> io::Result<OwnedFd> {
        let c = cstr(if path.is_empty() {
            b"."
        } else {
            path.as_bytes()
        })?;
        let r = beneath(
            from,
            &c,
            flags,
            if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
                mode
            } else {
                0
            },
        );
        match r {
            // A symlink or a mount point where kmsfs expects its own
            // directory or file: the cipherdir was tampered with. That
            // entry fails as an integrity error (EIO), and says why.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV)) => {
                crate::log_line!(
                    "kmsfs: {rel:?}: a symlink or mount point in the cipherdir where kmsfs expects its own directory or file (planted?): refused"
                );
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{rel}: a symlink or mount point in the cipherdir ({e})"),
                ))
            }
            r => r,
        }
    }

    /// Opens `rel` with `flags` (O_NOFOLLOW added: a symlink fails with ELOOP).
    pub fn open_file(&self, rel: &str, flags: i32) -> io::Result<File> {
        Ok(File::from(self.openat2(rel, flags, 0)?))
    }

    /// Opens the directory `rel` for reading its entries.
    pub fn open_dir(&self, rel: &str) -> io::Result<File> {
        self.open_file(rel, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// `open_file` with O_NOATIME, for kmsfs's own reads (a rename's
    /// re-wrap and walk, attribute and link bookkeeping): they leave the
    /// access times as the user left them. (Root and the owner may; EPERM
    /// otherwise, then without it.)
    pub fn open_quiet(&self, rel: &str, flags: i32) -> io::Result<File> {
        match self.open_file(rel, flags | libc::O_NOATIME) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => self.open_file(rel, flags),
            other => other,
        }
    }

    /// `open_dir` for kmsfs's own walks, with `open_quiet`.
    pub fn open_dir_quiet(&self, rel: &str) -> io::Result<File> {
        self.open_quiet(rel, libc::O_RDONLY | libc::O_DIRECTORY)
    }

    /// The parent directory of `rel` (held by descriptor) and its last
    /// component's backing name.
    pub fn at(&self, rel: &str) -> io::Result<At> {
        self.at_stored(rel).map(|(at, _)| at)
    }

    /// `at`, with the side file a long encrypted name needs when it is made.
    fn at_stored(&self, rel: &str) -> io::Result<(At, Option<String>)> {
        let (parent, name) = split(rel)?;
        long_component(name)?;
        let dir = self.openat2(parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        let stored = self.names.store_last(rel, parent, name);
        Ok((
            At {
                dir,
                name: cstr(stored.raw.as_bytes())?,
            },
            stored.side,
        ))
    }

    /// lstat of `rel` (the root: fstat of the held descriptor).
    pub fn lstat(&self, rel: &str) -> io::Result<libc::stat> {
        // SAFETY: an all-zero stat is a valid value to be filled in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if rel.is_empty() {
            // SAFETY: a valid descriptor and stat buffer.
            check(unsafe { libc::fstat(self.root.as_raw_fd(), &mut st) })?;
            return Ok(st);
        }
        // One walk to the node itself (O_PATH returns a symlink as itself),
        // then fstat: no second walk to the parent.
        let fd = self.openat2(rel, libc::O_PATH, 0)?;
        // SAFETY: a valid descriptor and stat buffer.
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        Ok(st)
    }

    /// Creates the regular file `rel`, failing if any node has that name.
    pub fn create_new(&self, rel: &str, mode: u32) -> io::Result<File> {
        split(rel)?;
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let name = rel.rsplit('/').next().unwrap_or(rel);
        if !self.names.is_encrypted() || !super::names::cipher::is_long(name.len()) {
            return Ok(File::from(
                self.with_space(|| self.openat2(rel, flags, mode))?,
            ));
        }
        let (at, side) = self.at_stored(rel)?;
        self.creating(&at, side.as_deref(), || {
            let name = at.name.to_str().map_err(|_| unclean(rel))?;
            self.openat2_in(at.dir_fd(), name, flags, mode, rel)
                .map(File::from)
        })
    }

    pub fn mkdir(&self, rel: &str, mode: u32) -> io::Result<()> {
        let (at, side) = self.at_stored(rel)?;
        self.creating(&at, side.as_deref(), || {
            // SAFETY: a valid directory descriptor and C name.
            check(unsafe { libc::mkdirat(at.dir_fd(), at.name.as_ptr(), mode as libc::mode_t) })
        })
    }

    pub fn mknod(&self, rel: &str, mode: u32, dev: u64) -> io::Result<()> {
        let (at, side) = self.at_stored(rel)?;
        self.creating(&at, side.as_deref(), || {
            // SAFETY: a valid directory descriptor and C name.
            check(unsafe {
                libc::mknodat(
                    at.dir_fd(),
                    at.name.as_ptr(),
                    mode as libc::mode_t,
                    dev as libc::dev_t,
                )
            })
        })
    }

    /// Creates the symlink `rel` pointing at `target` (stored as given).
    pub fn symlink(&self, target: &[u8], rel: &str) -> io::Result<()> {
        let (at, side) = self.at_stored(rel)?;
        let t = cstr(target)?;
        self.creating(&at, side.as_deref(), || {
            // SAFETY: a valid directory descriptor and C strings.
            check(unsafe { libc::symlinkat(t.as_ptr(), at.dir_fd(), at.name.as_ptr()) })
        })
    }

    /// The stored target of the symlink `rel` (EINVAL if it is not one).
    pub fn readlink(&self, rel: &str) -> io::Result<Vec<u8>> {
        readlink_at(&self.at(rel)?)
    }

    pub fn unlink(&self, rel: &str) -> io::Result<()> {
        self.unlinkat(rel, 0)
    }

    /// Unlinks `rel`, first calling `before` with what it is about to
    /// remove: one walk to the parent for both (rm -rf's per-file cost).
    pub fn unlink_inspected<T>(
        &self,
        rel: &str,
        before: impl FnOnce(&libc::stat) -> T,
    ) -> io::Result<T> {
        let at = self.at(rel)?;
        // Held across the unlinkat, so that the inode's eviction (freeing
        // and discarding its blocks) happens at the close, off this path.
        // Not held if it cannot be (out of descriptors, say): then as before.
        let held = open_path_at(&at).ok();
        let st = match &held {
            Some(fd) => super::stat::fstat(fd)?,
            None => stat_at(&at)?,
        };
        let t = before(&st);
        // SAFETY: a valid directory descriptor and C name.
        check(unsafe { libc::unlinkat(at.dir_fd(), at.name.as_ptr(), 0) })?;
        self.removed(&at);
        // Only a small file's: its eviction is a fixed cost worth hiding, a
        // large one's grows with its size, and deferred it would only move
        // that disk work under whatever comes next (the benchmark's
        // sequential write, right after deleting the previous 256 MiB file,
        // lost 29% to it).
        if let Some(fd) = held
            && st.st_nlink == 1
            && st.st_blocks.saturating_mul(512) <= DEFER_EVICTION_MAX
        {
            self.reaper.close_later(fd.into());
        }
        Ok(t)
    }

    /// From now on, the last close of an unlinked file happens off the
    /// unlink's path (reaper.rs): the mount daemon, once it serves.
    pub fn close_behind(&self) {
        self.reaper.start();
    }

    /// From now on, the first open in a directory reads ahead the files
    /// around it (prefetch.rs). Called where `close_behind` is, for the
    /// same reason.
    pub fn read_ahead(&self) {
        self.prefetch.start(&self.root);
    }

    /// `rel` was opened: reads ahead its neighbours, once `read_ahead` is on.
    pub fn opened(&self, rel: &str) {
        if !self.prefetch.on() {
            return;
        }
        if let Ok((parent, _)) = split(rel) {
            self.prefetch.opened(&self.names.path(parent));
        }
    }

    /// Waits until the space of every file unlinked so far is given back
    /// (reaper.rs), so that statfs counts it.
    pub fn settle(&self) {
        self.reaper.settle();
    }

    /// Runs `f`, and once more if it failed for want of space (ENOSPC,
    /// EDQUOT) where unlinked files' space may still be on its way back, once
    /// that is done: who deletes a file on a full disk can write at once, as
    /// before. (Whether a close was still behind when `f` failed cannot be
    /// known afterwards; a second try costs nothing next to a full disk.)
    /// Every `f` here changes nothing when it fails so.
    pub fn with_space<T>(&self, mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match f() {
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
                    && self.reaper.started() =>
            {
                self.reaper.settle();
                f()
            }
            r => r,
        }
    }
}

/// One `openat2` of `path` beneath the directory `from` with the walk's
/// rules (RESOLVE; O_NOFOLLOW and O_CLOEXEC added), tried again when a
/// concurrent rename or a signal interrupted it.
fn beneath(from: libc::c_int, path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain data; all-zero is its default.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64;
    how.mode = u64::from(mode & 0o7777);
    how.resolve = RESOLVE;
    loop {
        // SAFETY: a valid directory descriptor, C path and open_how of the
        // size passed; the descriptor returned is owned below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                from,
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor, owned once.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
            return Err(e);
        }
    }
}

/// The node `at` names itself (a symlink is not followed), as an O_PATH
/// descriptor: it opens no device or FIFO and reads nothing.
fn open_path_at(at: &At) -> io::Result<File> {
    open_path_in(at.dir_fd(), &at.name)
}

/// `open_path_at` of `name` in the directory `dir`.
fn open_path_in(dir: libc::c_int, name: &CStr) -> io::Result<File> {
    // SAFETY: a valid directory descriptor and C name; the descriptor
    // returned is owned below.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned once.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn readlink_at(at: &At) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: a valid directory descriptor, C name and buffer of that length.
    let n = unsafe {
        libc::readlinkat(
            at.dir_fd(),
            at.name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

impl Tree {
    pub fn rmdir(&self, rel: &str) -> io::Result<()> {
        self.unlinkat(rel, libc::AT_REMOVEDIR)
    }

    fn unlinkat(&self, rel: &str, flags: i32) -> io::Result<()> {
        let at = self.at(rel)?;
        // As in unlink_inspected, for directories (small, and rm -rf
        // removes one for every ten files): the eviction happens at this
        // close.
        let dir = flags & libc::AT_REMOVEDIR != 0;
        let held = dir.then(|| open_path_at(&at).ok()).flatten();
        // SAFETY: a valid directory descriptor and C name.
        let mut r = check(unsafe { libc::unlinkat(at.dir_fd(), at.name.as_ptr(), flags) });
        if dir
            && matches!(&r, Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY))
            && self.names.is_encrypted()
            && clear_orphan_sides(&at)?
        {
            // SAFETY: as above.
            r = check(unsafe { libc::unlinkat(at.dir_fd(), at.name.as_ptr(), flags) });
        }
        r?;
        self.removed(&at);
        if let Some(fd) = held {
            self.reaper.close_later(fd.into());
        }
        Ok(())
    }

    /// renameat2 of `from` to `to`, both beneath the root.
    pub fn rename(&self, from: &str, to: &str, flags: u32) -> io::Result<()> {
        self.rename_from(&self.at(from)?, to, flags)
    }

    /// Moves the entry with backing name `raw` in the open directory `dir`
    /// to the path `to` (never over another node): for re-encrypting the
    /// names below a moved directory (rename_names.rs).
    pub fn move_raw(&self, dir: &File, raw: &str, to: &str) -> io::Result<()> {
        self.rename_from(&at_raw(dir, raw)?, to, libc::RENAME_NOREPLACE)
    }

    fn rename_from(&self, f: &At, to: &str, flags: u32) -> io::Result<()> {
        let (t, side) = self.at_stored(to)?;
        self.creating(&t, side.as_deref(), || {
            // SAFETY: valid directory descriptors and C names.
            check(unsafe {
                libc::renameat2(
                    f.dir_fd(),
                    f.name.as_ptr(),
                    t.dir_fd(),
                    t.name.as_ptr(),
                    flags,
                )
            })
        })?;
        // The old name's side file goes with the old name; an exchange, or
        // a rename between two names of one file, leaves both names.
        if flags & libc::RENAME_EXCHANGE == 0
            && f.name.to_str().is_ok_and(is_long_raw)
            && stat_at(f).is_err_and(|e| e.raw_os_error() == Some(libc::ENOENT))
        {
            let _ = unlink_side(f);
        }
        Ok(())
    }

    /// A second name for the node at `from` (linkat without
    /// AT_SYMLINK_FOLLOW: a symlink is linked, never its target).
    pub fn link(&self, from: &str, to: &str) -> io::Result<()> {
        let f = self.at(from)?;
        let (t, side) = self.at_stored(to)?;
        self.creating(&t, side.as_deref(), || {
            // SAFETY: valid directory descriptors and C names.
            check(unsafe {
                libc::linkat(f.dir_fd(), f.name.as_ptr(), t.dir_fd(), t.name.as_ptr(), 0)
            })
        })
    }

    /// Unlinks the non-directory with backing name `raw` in `dir` (and its
    /// side file).
    pub fn unlink_raw(&self, dir: &File, raw: &str) -> io::Result<()> {
        let at = at_raw(dir, raw)?;
        // SAFETY: a valid directory descriptor and C name.
        check(unsafe { libc::unlinkat(at.dir_fd(), at.name.as_ptr(), 0) })?;
        self.removed(&at);
        Ok(())
    }

    /// The stored target of the symlink with backing name `raw` in `dir`.
    pub fn readlink_raw(&self, dir: &File, raw: &str) -> io::Result<Vec<u8>> {
        readlink_at(&at_raw(dir, raw)?)
    }

    /// Calls `f` for each entry of the directory `rel`, open as `dir`, from
    /// the backing position `offset`, by its plaintext name (`Entry::raw`
    /// is the backing name, for `*at` calls on `dir`), until `f` returns
    /// true. kmsfs's own files pass by their own names (the caller hides
    /// them); side files and names that do not decrypt here are skipped.
    pub fn read_dir(
        &self,
        rel: &str,
        dir: &File,
        offset: u64,
        mut f: impl FnMut(&Entry, &File) -> bool,
    ) -> io::Result<()> {
        if offset == 0 && self.prefetch.on() {
            self.prefetch.listed(&self.names.path(rel));
        }
        listing::for_each(dir, offset, |e, d| {
            let named;
            let name = match self.names.list(rel, e.name, d) {
                Listed::Own => e.name,
                Listed::Name(n) => {
                    named = n;
                    &named
                }
                Listed::Side | Listed::Foreign(_) => return false,
            };
            f(
                &Entry {
                    name,
                    raw: e.name,
                    kind: e.kind,
                    next: e.next,
                },
                d,
            )
        })
    }

    /// Every entry of the directory `rel` but `.` and `..`, by plaintext
    /// name: (name, kind).
    pub fn entries(&self, rel: &str) -> io::Result<Vec<(String, fuser::FileType)>> {
        let dir = self.open_dir_quiet(rel)?;
        let mut out = vec![];
        self.read_dir(rel, &dir, 0, |e, _| {
            if e.name != "." && e.name != ".." {
                out.push((e.name.to_string(), e.kind));
            }
            false
        })?;
        Ok(out)
    }

    /// lchown: a symlink's own owner, never its target's.
    pub fn chown(&self, rel: &str, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
        if rel.is_empty() {
            // SAFETY: a valid descriptor; -1 leaves an id unchanged.
            return check(unsafe { libc::fchown(self.root.as_raw_fd(), u, g) });
        }
        let at = self.at(rel)?;
        // SAFETY: a valid directory descriptor and C name; -1 leaves an id as is.
        check(unsafe {
            libc::fchownat(
                at.dir_fd(),
                at.name.as_ptr(),
                u,
                g,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// chmod without following a symlink: fchmodat2 with AT_SYMLINK_NOFOLLOW
    /// (Linux 6.6), which refuses symlinks (EOPNOTSUPP); on older kernels, an
    /// O_PATH descriptor of the node, checked not to be a symlink, changed
    /// through its /proc/self/fd entry (the daemon's own descriptor, not a
    /// path anyone else controls).
    pub fn chmod(&self, rel: &str, mode: u32) -> io::Result<()> {
        let mode = (mode & 0o7777) as libc::mode_t;
        if rel.is_empty() {
            // SAFETY: a valid descriptor.
            return check(unsafe { libc::fchmod(self.root.as_raw_fd(), mode) });
        }
        let at = self.at(rel)?;
        // SAFETY: a valid directory descriptor and C name.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fchmodat2,
                at.dir_fd(),
                at.name.as_ptr(),
                mode,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOSYS) {
            return Err(e);
        }
        let fd = self.openat2(rel, libc::O_PATH, 0)?;
        // SAFETY: an all-zero stat is valid; fstat fills it in.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and stat buffer.
        check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let proc = cstr(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_bytes())?;
        // SAFETY: a valid C path naming our own descriptor.
        check(unsafe { libc::chmod(proc.as_ptr(), mode) })
    }

    /// utimensat without following a symlink; `times` as utimensat(2) takes
    /// them (a time, UTIME_NOW or UTIME_OMIT).
    pub fn set_times(&self, rel: &str, times: &[libc::timespec; 2]) -> io::Result<()> {
        if rel.is_empty() {
            // SAFETY: a valid descriptor and a two-element array.
            return check(unsafe { libc::futimens(self.root.as_raw_fd(), times.as_ptr()) });
        }
        let at = self.at(rel)?;
        // SAFETY: a valid directory descriptor, C name and two-element array.
        check(unsafe {
            libc::utimensat(
                at.dir_fd(),
                at.name.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    }

    /// access(2) for the daemon's own user, without following a symlink.
    pub fn access(&self, rel: &str, mask: i32) -> io::Result<()> {
        let c;
        let (dir, name) = if rel.is_empty() {
            (self.root.as_raw_fd(), c"." as &CStr)
        } else {
            let at = self.at(rel)?;
            c = at;
            (c.dir_fd(), c.name.as_c_str())
        };
        // SAFETY: a valid directory descriptor and C name.
        check(unsafe { libc::faccessat(dir, name.as_ptr(), mask, libc::AT_SYMLINK_NOFOLLOW) })
    }

    /// Flushes the whole backing filesystem (syncfs of the cipherdir's).
    pub fn syncfs(&self) -> io::Result<()> {
        // SAFETY: a valid descriptor.
        check(unsafe { libc::syncfs(self.root.as_raw_fd()) })
    }

    /// fsync of the directory `rel` (its entries made durable).
    pub fn fsync_dir(&self, rel: &str) -> io::Result<()> {
        self.open_dir(rel)?.sync_all()
    }

    /// The whole of kmsfs's own small file `rel` (config, journal, root
    /// record), never through a symlink and never more than `max` bytes;
    /// None if there is no such file. Anything but a regular file of at most
    /// `max` bytes is an error that says so.
    pub fn read_small(&self, rel: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
        use std::io::Read;
        let f = match self.open_file(rel, libc::O_RDONLY | libc::O_NONBLOCK) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        if !meta.is_file() || meta.len() > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a regular file of at most {max} bytes"),
            ));
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        f.take(max).read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Replaces the file `rel` with `bytes`, atomically and durably: a new
    /// file under a random name (O_CREAT | O_EXCL, so nothing planted under
    /// that name is ever opened), fsync, rename over `rel`, fsync of the
    /// directory. A crash leaves the old file or the new one.
    pub fn replace(&self, rel: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        let (parent, _) = split(rel)?;
        let mut rnd = [0u8; 8];
        crate::crypto::random::fill(&mut rnd);
        let hex: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
        let tmp = super::inode::join(parent, &format!("{}tmp-{hex}", super::backing::TEMP_PREFIX));
        let mut f = self.create_new(&tmp, mode)?;
        let written = f.write_all(bytes).and_then(|()| f.sync_all());
        let renamed = written.and_then(|()| self.rename(&tmp, rel, 0));
        if let Err(e) = renamed {
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        self.fsync_dir(parent)
    }

    /// Whether the backing filesystem folds names (case-insensitive, like
    /// ext4's casefold directories, vfat or a CIFS share; or normalising, so
    /// that two spellings of "é" are one name). There another spelling of a
    /// path would reach the same backing file under a different
    /// `kmsfs:path`, and a Deny on `private/*` would not stop `PRIVATE/x`.
    /// Asked of the root directory's flags, and, where `probe` allows writing,
    /// by creating a name and looking up its other spellings.
    pub fn folds_names(&self, probe: bool) -> io::Result<bool> {
        /// _IOR('f', 1, long) and FS_CASEFOLD_FL, from linux/fs.h.
        const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
        const FS_CASEFOLD_FL: libc::c_long = 0x4000_0000;
        let mut flags: libc::c_long = 0;
        // SAFETY: a valid descriptor and an out-parameter of the size the
        // ioctl writes; filesystems without flags answer ENOTTY.
        let r = unsafe { libc::ioctl(self.root.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) };
        if r == 0 && flags & FS_CASEFOLD_FL != 0 {
            return Ok(true);
        }
        if !probe {
            return Ok(false);
        }
        let r: [u8; 8] = crate::crypto::random::array();
        let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
        let base = format!("{}case-{hex}-", super::backing::TEMP_PREFIX);
        let name = format!("{base}A\u{e9}");
        drop(self.create_new(&name, 0o600)?);
        let folded = [format!("{base}a\u{e9}"), format!("{base}Ae\u{301}")]
            .iter()
            .any(|v| self.lstat(v).is_ok());
        self.unlink(&name)?;
        Ok(folded)
    }

    pub fn statvfs(&self) -> io::Result<libc::statvfs> {
        self.settle();
        // SAFETY: an all-zero statvfs is valid; fstatvfs fills it in.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and out-struct.
        check(unsafe { libc::fstatvfs(self.root.as_raw_fd(), &mut s) })?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests;
