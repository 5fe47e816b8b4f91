//! RENAME_EXCHANGE: two names swap what they name, so each side is
//! re-wrapped for the other's path, journaled like a directory rename.
//!
//! Journal (with the backing inode `from` named), then each side prepared
//! for its new path (a file: a new slot or link entry; a symlink: a
//! re-encrypted twin beside it; a directory: every file and symlink below
//! it, as a rename prepares them), a flush, the backing exchange, then each
//! side finished (old slots and entries dropped, twins moved over), and
//! the journal removed. Recovery compares the inode at `from` with the
//! journal's to tell whether the swap happened, then redoes what is left;
//! every step is idempotent.

use super::backing::{Backing, FsError, FsResult};
use super::inode::parent;
use super::rename::{
    Flusher, Journal, finish_tree, prepare_tree, restore_dir_times, twin_of, write_journal,
};
use super::rename_names::rename_names;
use crate::kms::Caller;
use std::io;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    File,
    Symlink,
    Dir,
    /// FIFOs and sockets: no key, nothing to re-wrap.
    Plain,
}

fn kind(b: &Backing, rel: &str) -> io::Result<(Kind, libc::stat)> {
    let st = b.tree.lstat(rel)?;
    let k = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFDIR => Kind::Dir,
        _ => Kind::Plain,
    };
    Ok((k, st))
}

/// The times of directories a side's twins were made in.
type DirTimes = Vec<(String, [libc::timespec; 2])>;

/// Readies what `from` names (of kind `k`) for the path `to`.
fn prepare(
    b: &Backing,
    (k, from, to): (Kind, &str, &str),
    caller: &Caller,
    recovering: bool,
    flush: &mut Flusher,
    times: &mut DirTimes,
) -> FsResult<()> {
    match k {
        Kind::File => {
            let (fd, _, _) = b.rewrap_file(from, from, to, caller)?;
            flush.file(fd);
        }
        Kind::Symlink => {
            b.rewrap_symlink(from, from, to, &twin_of(&b.tree, from), caller)?;
            flush.dir(parent(from));
        }
        Kind::Dir => prepare_tree(b, from, to, caller, recovering, flush, times)?,
        Kind::Plain => {}
    }
    Ok(())
}

/// After the swap: what was at `from` is at `to`; drop what opened it at
/// `from` and put its twin in place.
fn finish(
    b: &Backing,
    k: Kind,
    (from, to): (&str, &str),
    caller: &Caller,
    flush: &mut Flusher,
) -> FsResult<()> {
    match k {
        Kind::File => flush.file(b.drop_old_name(to, from)?),
        Kind::Symlink => {
            // The twin (made beside `from`) replaces the link now at `to`.
            match b.tree.rename(&twin_of(&b.tree, from), to, 0) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
            flush.dir(parent(to));
        }
        Kind::Dir => {
            rename_names(b, to, from, caller, flush)?;
            finish_tree(b, from, to, flush)?;
        }
        Kind::Plain => {}
    }
    Ok(())
}

/// Exchanges `a` and `b` (both exist: the kernel checked).
pub fn exchange(bk: &Backing, a: &str, b: &str, caller: &Caller) -> FsResult<()> {
    if a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/")) {
        return Err(FsError::Io(io::Error::from_raw_os_error(libc::EINVAL)));
    }
    let (ka, sa) = kind(bk, a)?;
    let (kb, sb) = kind(bk, b)?;
    // Two names of one file: nothing changes.
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino) {
        return Ok(());
    }
    write_journal(
        bk,
        Some(&Journal {
            op: "exchange".into(),
            from: a.into(),
            to: b.into(),
            ino: Some(sa.st_ino),
        }),
    )?;
    let mut flush = Flusher::default();
    let (mut ta, mut tb) = (vec![], vec![]);
    let prepared = prepare(bk, (ka, a, b), caller, false, &mut flush, &mut ta)
        .and_then(|()| prepare(bk, (kb, b, a), caller, false, &mut flush, &mut tb));
    if let Err(e) = prepared {
        // Nothing swapped: what was written for the other paths is newer
        // but opens nothing here; twins are left for the next exchange or
        // rename to replace.
        let _ = write_journal(bk, None);
        return Err(e);
    }
    flush.flush(&bk.tree)?;
    bk.tree.rename(a, b, libc::RENAME_EXCHANGE)?;
    bk.tree.fsync_dir(parent(a))?;
    if parent(a) != parent(b) {
        bk.tree.fsync_dir(parent(b))?;
    }
    finish(bk, ka, (a, b), caller, &mut flush)?;
    finish(bk, kb, (b, a), caller, &mut flush)?;
    restore_dir_times(bk, b, &ta);
    restore_dir_times(bk, a, &tb);
    flush.flush(&bk.tree)?;
    write_journal(bk, None)?;
    Ok(())
}

/// Finishes an exchange a crash interrupted.
pub(super) fn recover(bk: &Backing, j: &Journal, caller: &Caller) -> Result<String, String> {
    let step = |e: String| format!("recovering the exchange of {} and {}: {e}", j.from, j.to);
    let (a, b) = (j.from.as_str(), j.to.as_str());
    let (ka_now, sa) = kind(bk, a).map_err(|e| step(e.to_string()))?;
    let (kb_now, _) = kind(bk, b).map_err(|e| step(e.to_string()))?;
    let mut flush = Flusher::default();
    let swapped = Some(sa.st_ino) != j.ino;
    // What each side was before the swap.
    let (ka, kb) = if swapped {
        (kb_now, ka_now)
    } else {
        (ka_now, kb_now)
    };
    if !swapped {
        let mut times = vec![];
        prepare(bk, (ka, a, b), caller, true, &mut flush, &mut times)
            .map_err(|e| step(e.to_string()))?;
        prepare(bk, (kb, b, a), caller, true, &mut flush, &mut times)
            .map_err(|e| step(e.to_string()))?;
        flush.flush(&bk.tree).map_err(|e| step(e.to_string()))?;
        bk.tree
            .rename(a, b, libc::RENAME_EXCHANGE)
            .map_err(|e| step(e.to_string()))?;
    }
    finish(bk, ka, (a, b), caller, &mut flush).map_err(|e| step(e.to_string()))?;
    finish(bk, kb, (b, a), caller, &mut flush).map_err(|e| step(e.to_string()))?;
    flush.flush(&bk.tree).map_err(|e| step(e.to_string()))?;
    write_journal(bk, None).map_err(|e| step(e.to_string()))?;
    Ok(format!("completed an interrupted exchange of {a} and {b}"))
}
