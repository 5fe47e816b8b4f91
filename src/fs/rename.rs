//! Renames re-wrap data keys for the new path before the name changes.
//!
//! A file: write a slot wrapped for the new path, fdatasync, rename, then empty
//! the old slot. A crash in between leaves a header whose other slot still
//! opens the file where it is.
//!
//! A directory: every file and symlink below it changes path, so the rename is
//! journaled (`.kmsfs.journal`, fsynced) before anything changes; files get a
//! new-path slot, symlinks a re-encrypted twin named `.kmsfs-rewrap.NAME`;
//! then a flush (fsyncs, or one syncfs for many files), the rename, the twins moved over the originals, the old
//! slots emptied, the journal removed. `recover` replays an unfinished
//! journal at mount, and every step is idempotent.

use super::backing::{Backing, FsError, FsResult, TEMP_PREFIX};
use crate::kms::Caller;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const JOURNAL: &str = ".kmsfs.journal";
const TWIN: &str = ".kmsfs-rewrap.";

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Journal {
    op: String,
    from: String,
    to: String,
}

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let f = std::ffi::CString::new(from.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let t = std::ffi::CString::new(to.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid NUL-terminated paths relative to AT_FDCWD (they are absolute).
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    std::fs::File::open(p)?.sync_all()
}

fn syncfs(root: &Path) -> io::Result<()> {
    let f = std::fs::File::open(root)?;
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes a set of changed files and directories durable: one fsync each for
/// a few, one syncfs for many (cheaper than thousands of journal commits,
/// dearer than a few when the backing filesystem holds other dirty data).
#[derive(Default)]
struct Flusher {
    files: Vec<std::fs::File>,
    dirs: Vec<PathBuf>,
}

impl Flusher {
    const MANY: usize = 64;

    fn flush(&mut self, root: &Path) -> io::Result<()> {
        if self.files.len() + self.dirs.len() > Self::MANY {
            syncfs(root)?;
        } else {
            for f in &self.files {
                f.sync_data()?;
            }
            self.dirs.sort();
            self.dirs.dedup();
            for d in &self.dirs {
                fsync_dir(d)?;
            }
        }
        self.files.clear();
        self.dirs.clear();
        Ok(())
    }
}

fn parent_of(p: &Path) -> &Path {
    p.parent().unwrap_or(Path::new("/"))
}

/// Renames one regular file, re-wrapping its key.
pub fn rename_file(b: &Backing, from: &str, to: &str, flags: u32, caller: &Caller) -> FsResult<()> {
    let (fp, tp) = (b.full(from), b.full(to));
    let (fd, index, file_id) = b.rewrap_file(&fp, from, to, caller)?;
    fd.sync_data()?;
    if let Err(e) = renameat2(&fp, &tp, flags) {
        let _ = b.drop_slot(&fd, &file_id, index);
        return Err(e.into());
    }
    fsync_dir(parent_of(&tp))?;
    b.drop_slot(&fd, &file_id, 1 - index)?;
    Ok(())
}

/// Renames a symlink: a re-encrypted copy replaces the target name, then the
/// old name goes. A crash in between leaves two working links, never none.
pub fn rename_symlink(
    b: &Backing,
    from: &str,
    to: &str,
    flags: u32,
    caller: &Caller,
) -> FsResult<()> {
    let (fp, tp) = (b.full(from), b.full(to));
    if flags & libc::RENAME_NOREPLACE != 0 && std::fs::symlink_metadata(&tp).is_ok() {
        return Err(FsError::Io(io::Error::from_raw_os_error(libc::EEXIST)));
    }
    let twin = parent_of(&tp).join(format!("{TEMP_PREFIX}link-{}", std::process::id()));
    b.rewrap_symlink(&fp, from, to, &twin, caller)?;
    if let Err(e) = renameat2(&twin, &tp, 0) {
        let _ = std::fs::remove_file(&twin);
        return Err(e.into());
    }
    std::fs::remove_file(&fp)?;
    Ok(())
}

/// Every regular file and symlink below `dir` (relative to it), skipping
/// names kmsfs reserves and names that are not UTF-8.
fn walk(dir: &Path) -> io::Result<(Vec<String>, Vec<String>)> {
    let mut files = vec![];
    let mut links = vec![];
    let mut stack = vec![String::new()];
    while let Some(sub) = stack.pop() {
        let d = if sub.is_empty() {
            dir.to_path_buf()
        } else {
            dir.join(&sub)
        };
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let Some(name) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            let rel = super::inode::join(&sub, &name);
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(rel);
            } else if name.starts_with(TEMP_PREFIX) {
                continue;
            } else if ft.is_file() {
                files.push(rel);
            } else if ft.is_symlink() {
                links.push(rel);
            }
        }
    }
    Ok((files, links))
}

fn twin_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    parent_of(path).join(format!("{TWIN}{name}"))
}

fn write_journal(b: &Backing, j: Option<&Journal>) -> io::Result<()> {
    let p = b.root.join(JOURNAL);
    match j {
        Some(j) => {
            let bytes = serde_json::to_vec(j).expect("journal serialises");
            crate::kms::keystore::atomic_write(&p, &bytes).map_err(|e| io::Error::other(e.message))
        }
        None => {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            fsync_dir(&b.root)
        }
    }
}

/// Prepares every file and symlink below `from` for its path below `to`.
fn prepare_tree(
    b: &Backing,
    from: &str,
    to: &str,
    caller: &Caller,
    recovering: bool,
    flush: &mut Flusher,
) -> FsResult<()> {
    let (files, links) = walk(&b.full(from))?;
    for f in files {
        let (src, dst) = (format!("{from}/{f}"), format!("{to}/{f}"));
        match b.rewrap_file(&b.full(&src), &src, &dst, caller) {
            Ok((fd, _, _)) => flush.files.push(fd),
            // Already re-wrapped before a crash, or damaged: either way there
            // is nothing to re-wrap; a damaged file stays unreadable.
            Err(e) if recovering || e.errno() == libc::EIO => {
                eprintln!("kmsfs: rename: {src}: not re-wrapped: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    for l in links {
        let (src, dst) = (format!("{from}/{l}"), format!("{to}/{l}"));
        let sp = b.full(&src);
        match b.rewrap_symlink(&sp, &src, &dst, &twin_of(&sp), caller) {
            Ok(()) => flush.dirs.push(parent_of(&sp).to_path_buf()),
            Err(e) => eprintln!("kmsfs: rename: symlink {src}: not re-wrapped: {e}"),
        }
    }
    Ok(())
}

/// After the directory moved: twins replace their links, old slots go.
fn finish_tree(b: &Backing, to: &str, flush: &mut Flusher) -> io::Result<()> {
    let root = b.full(to);
    let mut stack = vec![root.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ft = e.file_type()?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if ft.is_dir() {
                stack.push(e.path());
            } else if let Some(orig) = name.strip_prefix(TWIN) {
                renameat2(&e.path(), &d.join(orig), 0)?;
                flush.dirs.push(d.clone());
            } else if ft.is_file() && !name.starts_with(TEMP_PREFIX) {
                match b.drop_older_slot(&e.path()) {
                    Ok(fd) => flush.files.push(fd),
                    Err(err) => eprintln!(
                        "kmsfs: rename: {}: old slot not cleared: {err}",
                        e.path().display()
                    ),
                }
            }
        }
    }
    Ok(())
}

pub fn rename_dir(b: &Backing, from: &str, to: &str, flags: u32, caller: &Caller) -> FsResult<()> {
    let (fp, tp) = (b.full(from), b.full(to));
    if flags & libc::RENAME_NOREPLACE != 0 && std::fs::symlink_metadata(&tp).is_ok() {
        return Err(FsError::Io(io::Error::from_raw_os_error(libc::EEXIST)));
    }
    if let Ok(m) = std::fs::symlink_metadata(&tp) {
        if !m.is_dir() {
            return Err(FsError::Io(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        if std::fs::read_dir(&tp)?.next().is_some() {
            return Err(FsError::Io(io::Error::from_raw_os_error(libc::ENOTEMPTY)));
        }
    }
    if to.starts_with(&format!("{from}/")) {
        return Err(FsError::Io(io::Error::from_raw_os_error(libc::EINVAL)));
    }
    write_journal(
        b,
        Some(&Journal {
            op: "rename".into(),
            from: from.into(),
            to: to.into(),
        }),
    )?;
    let mut flush = Flusher::default();
    if let Err(e) = prepare_tree(b, from, to, caller, false, &mut flush) {
        // Nothing moved: forget the journal; new-path slots already written
        // are newer but do not open the files here, the older ones do.
        let _ = write_journal(b, None);
        return Err(e);
    }
    flush.flush(&b.root)?;
    renameat2(&fp, &tp, flags)?;
    fsync_dir(parent_of(&tp))?;
    if parent_of(&fp) != parent_of(&tp) {
        fsync_dir(parent_of(&fp))?;
    }
    finish_tree(b, to, &mut flush)?;
    flush.flush(&b.root)?;
    write_journal(b, None)?;
    Ok(())
}

/// Replays an unfinished directory rename; returns what it did, if anything.
pub fn recover(b: &Backing, caller: &Caller) -> Result<Option<String>, String> {
    let p = b.root.join(JOURNAL);
    let bytes = match std::fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    let j: Journal = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is damaged ({e}); remove it to mount", p.display()))?;
    let (fp, tp) = (b.full(&j.from), b.full(&j.to));
    let step = |e: String| format!("recovering the rename of {} to {}: {e}", j.from, j.to);
    if fp.exists() {
        // The rename did not happen: finish preparing, then do it.
        let mut flush = Flusher::default();
        prepare_tree(b, &j.from, &j.to, caller, true, &mut flush)
            .map_err(|e| step(e.to_string()))?;
        flush.flush(&b.root).map_err(|e| step(e.to_string()))?;
        if tp.exists() {
            std::fs::remove_dir(&tp)
                .map_err(|e| step(format!("{} is in the way: {e}", tp.display())))?;
        }
        renameat2(&fp, &tp, 0).map_err(|e| step(e.to_string()))?;
    }
    let mut flush = Flusher::default();
    finish_tree(b, &j.to, &mut flush).map_err(|e| step(e.to_string()))?;
    flush.flush(&b.root).map_err(|e| step(e.to_string()))?;
    write_journal(b, None).map_err(|e| step(e.to_string()))?;
    Ok(Some(format!(
        "completed an interrupted rename of {} to {}",
        j.from, j.to
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trip() {
        let j = Journal {
            op: "rename".into(),
            from: "a".into(),
            to: "b".into(),
        };
        let s = serde_json::to_vec(&j).unwrap();
        assert_eq!(serde_json::from_slice::<Journal>(&s).unwrap(), j);
        assert_eq!(
            twin_of(Path::new("/x/y/name")),
            PathBuf::from("/x/y/.kmsfs-rewrap.name")
        );
    }
}
