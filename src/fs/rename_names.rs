//! A moved directory's names, re-encrypted for where it now is.
//!
//! With encrypted names each directory's entries are encrypted for the
//! directory's path (names/cipher.rs), so once a directory moves (rename,
//! exchange), every name below it must be encrypted again for its new
//! path: top down, each entry renamed in place from its old stored name to
//! its new one. A symlink is made anew at its new name with its target
//! re-encrypted for its new path, then the old one goes (two working links
//! for a moment, never none). Files were already re-wrapped for their new
//! paths before the move (rename.rs); they are only renamed here.
//!
//! This runs under the rename journal, so a crash in the middle is finished
//! at the next mount. Every step is idempotent: an entry that decrypts for
//! the new path is done; one that decrypts for the old path is next;
//! SIV authenticates, so no entry decrypts for both.

use super::backing::{Backing, FsError, FsResult};
use super::inode::join;
use super::listing;
use super::names::cipher::{is_long_raw, is_side_raw, long_name};
use super::names::{is_internal, read_side};
use super::rename::Flusher;
use crate::kms::Caller;
use fuser::FileType;
use std::os::fd::AsRawFd;

/// Re-encrypts every name below the directory now at `now` that is still
/// encrypted for `was`, its path before it moved. Nothing to do with
/// plaintext names.
pub(super) fn rename_names(
    b: &Backing,
    now: &str,
    was: &str,
    caller: &Caller,
    flush: &mut Flusher,
) -> FsResult<()> {
    let Some(cipher) = b.tree.names().cipher() else {
        return Ok(());
    };
    let mut stack = vec![(now.to_string(), was.to_string())];
    while let Some((now_d, was_d)) = stack.pop() {
        let dir = b.tree.open_dir_quiet(&now_d)?;
        let times = super::stat::times_of(&super::stat::fstat(&dir)?);
        let mut changed = false;
        for (raw, kind) in listing::entries(&dir)? {
            if is_internal(&now_d, &raw) || is_side_raw(&raw) {
                continue;
            }
            let stored = if is_long_raw(&raw) {
                match read_side(&dir, &raw) {
                    Ok(s) if long_name(&s) == raw => s,
                    _ => {
                        crate::log_line!(
                            "kmsfs: rename: {now_d}: {raw:?} has no valid side file; left as it is"
                        );
                        continue;
                    }
                }
            } else {
                raw.clone()
            };
            // Done before a crash: only its subtree may be left.
            if let Ok(n) = cipher.decrypt(&now_d, &stored) {
                if kind == FileType::Directory {
                    stack.push((join(&now_d, &n), join(&was_d, &n)));
                }
                continue;
            }
            let n = match cipher.decrypt(&was_d, &stored) {
                Ok(n) => n,
                Err(e) => {
                    crate::log_line!(
                        "kmsfs: rename: {now_d}: cipherdir entry {raw:?} {e} (was {was_d}); left as it is"
                    );
                    continue;
                }
            };
            let (new_rel, old_rel) = (join(&now_d, &n), join(&was_d, &n));
            if kind == FileType::Symlink {
                relink(b, &dir, &raw, &old_rel, &new_rel, caller)?;
            } else {
                b.tree.move_raw(&dir, &raw, &new_rel)?;
            }
            changed = true;
            if kind == FileType::Directory {
                stack.push((new_rel, old_rel));
            }
        }
        if changed {
            // The renames inside are kmsfs's, not the user's: the
            // directory keeps its times, as below any rename on ext4.
            // SAFETY: a valid descriptor and a two-element array.
            let _ = unsafe { libc::futimens(dir.as_raw_fd(), times.as_ptr()) };
            flush.dir(&now_d);
        }
    }
    Ok(())
}

/// A symlink once at `old_rel` (backing name `raw` in `dir`), made again at
/// `new_rel` with its target encrypted for that path; then the old one goes.
fn relink(
    b: &Backing,
    dir: &std::fs::File,
    raw: &str,
    old_rel: &str,
    new_rel: &str,
    caller: &Caller,
) -> FsResult<()> {
    let st = super::stat::lstat_at(dir, raw)?;
    let stored = b.tree.readlink_raw(dir, raw)?;
    let target = match b.decrypt_symlink(old_rel, &stored, caller) {
        Ok(t) => t,
        // Damaged, or moved here behind kmsfs's back: it keeps its stored
        // target and fails to read at its new path, as it did at the old.
        Err(e) if e.errno() == libc::EIO => {
            crate::log_line!("kmsfs: rename: symlink {old_rel}: not re-wrapped: {e}");
            return b.tree.move_raw(dir, raw, new_rel).map_err(FsError::Io);
        }
        Err(e) => return Err(e),
    };
    b.place_link(&st, &target, new_rel, new_rel, caller)?;
    b.tree.unlink_raw(dir, raw)?;
    Ok(())
}
