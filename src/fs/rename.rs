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
use super::config::RESERVED_NAMES;
use super::inode::{join, parent};
use super::rename_names::rename_names;
use super::tree::{Tree, is_clean};
use crate::kms::Caller;
use fuser::FileType;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io;

const JOURNAL: &str = ".kmsfs.journal";
const TWIN: &str = ".kmsfs-rewrap.";
/// Longest journal read back: a real one holds two paths.
const MAX_JOURNAL_LEN: u64 = 3 * libc::PATH_MAX as u64;

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub(super) struct Journal {
    pub op: String,
    pub from: String,
    pub to: String,
    /// For an exchange: the backing inode `from` named when it began, which
    /// tells recovery whether the names were swapped yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
}

impl Journal {
    /// The journal is read from the hostile cipherdir: before anything is
    /// replayed, both paths must be clean relative paths that name user
    /// nodes (no kmsfs file or temporary), and the rename must be one the
    /// mount could have started.
    fn validate(&self) -> Result<(), String> {
        if self.op != "rename" && self.op != "exchange" {
            return Err(format!("unknown operation {:?}", self.op));
        }
        if (self.op == "exchange") != self.ino.is_some() {
            return Err(format!(
                "a {} with{} an inode",
                self.op,
                if self.ino.is_some() { "" } else { "out" }
            ));
        }
        for (what, p) in [("from", &self.from), ("to", &self.to)] {
            if p.is_empty() || !is_clean(p) {
                return Err(format!("{what} path {p:?} is not a clean relative path"));
            }
            if p.split('/').any(|c| c.starts_with(TEMP_PREFIX))
                || RESERVED_NAMES.contains(&p.split('/').next().unwrap_or(""))
            {
                return Err(format!(
                    "{what} path {p:?} names a file kmsfs keeps for itself"
                ));
            }
        }
        if self.from == self.to
            || self.to.starts_with(&format!("{}/", self.from))
            || (self.op == "exchange" && self.from.starts_with(&format!("{}/", self.to)))
        {
            return Err(format!("cannot rename {:?} to {:?}", self.from, self.to));
        }
        Ok(())
    }
}

/// A journal's bytes through what `recover` checks before it replays one:
/// the JSON, then `Journal::validate`. For the fuzz targets
/// (src/fuzz_targets.rs).
pub fn parse_journal(bytes: &[u8]) -> Result<(), String> {
    let j: Journal = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    j.validate()
}

/// Makes a set of changed files and directories durable: one fsync each for
/// a few, one syncfs for many (cheaper than thousands of journal commits,
/// dearer than a few when the backing filesystem holds other dirty data).
/// Past a few files no descriptor is kept: a rename of a huge tree must not
/// hold one per file.
#[derive(Default)]
pub(super) struct Flusher {
    files: Vec<std::fs::File>,
    dirs: Vec<String>,
    many: bool,
}

impl Flusher {
    const MANY: usize = 64;

    pub(super) fn file(&mut self, f: std::fs::File) {
        if self.many || self.files.len() >= Self::MANY {
            self.many = true;
            self.files.clear();
        } else {
            self.files.push(f);
        }
    }

    pub(super) fn dir(&mut self, rel: &str) {
        if self.many || self.dirs.len() >= Self::MANY {
            self.many = true;
            self.dirs.clear();
        } else {
            self.dirs.push(rel.to_string());
        }
    }

    pub(super) fn flush(&mut self, tree: &Tree) -> io::Result<()> {
        if self.many {
            tree.syncfs()?;
        } else {
            for f in &self.files {
                f.sync_data()?;
            }
            self.dirs.sort();
            self.dirs.dedup();
            for d in &self.dirs {
                tree.fsync_dir(d)?;
            }
        }
        *self = Flusher::default();
        Ok(())
    }
}

/// A name no one can have planted: O_EXCL creation and a random part.
pub(super) fn temp_name(dir: &str, what: &str) -> String {
    let r: [u8; 8] = crate::crypto::random::array();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    join(dir, &format!("{TEMP_PREFIX}{what}-{hex}"))
}

/// Renames one regular file, re-wrapping its key.
pub fn rename_file(b: &Backing, from: &str, to: &str, flags: u32, caller: &Caller) -> FsResult<()> {
    // What `to` names now: the same file under another of its names
    // (hard links: rename(2) does nothing), or a file that, if it has other
    // names, loses that one.
    let mut replaced = None;
    if let Ok(t) = b.tree.lstat(to) {
        let a = b.tree.lstat(from)?;
        if (a.st_dev, a.st_ino) == (t.st_dev, t.st_ino) {
            return Ok(());
        }
        if t.st_nlink > 1 {
            replaced = b.open_update(to).ok();
        }
    }
    let (fd, written, file_id) = b.rewrap_file(from, from, to, caller)?;
    fd.sync_data()?;
    if let Err(e) = b.tree.rename(from, to, flags) {
        let _ = b.undo_rewrap(&fd, &file_id, written, to);
        return Err(e.into());
    }
    b.tree.fsync_dir(parent(to))?;
    b.finish_rewrap(&fd, &file_id, written, from)?;
    if let Some(r) = replaced {
        b.forget_name(&r, to);
    }
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
    if flags & libc::RENAME_NOREPLACE != 0 && b.tree.lstat(to).is_ok() {
        return Err(FsError::Io(io::Error::from_raw_os_error(libc::EEXIST)));
    }
    let twin = temp_name(parent(to), "link");
    b.rewrap_symlink(from, from, to, &twin, caller)?;
    if let Err(e) = b.tree.rename(&twin, to, 0) {
        let _ = b.tree.unlink(&twin);
        return Err(e.into());
    }
    b.tree.unlink(from)?;
    Ok(())
}

/// Every regular file and symlink below `dir` (relative to it), skipping
/// names kmsfs reserves and names that are not UTF-8. One directory is open
/// at a time.
fn walk(tree: &Tree, dir: &str) -> io::Result<(Vec<String>, Vec<String>)> {
    let mut files = vec![];
    let mut links = vec![];
    let mut stack = vec![String::new()];
    while let Some(sub) = stack.pop() {
        let here = if sub.is_empty() {
            dir.to_string()
        } else {
            join(dir, &sub)
        };
        for (name, kind) in tree.entries(&here)? {
            let rel = join(&sub, &name);
            match kind {
                FileType::Directory => stack.push(rel),
                _ if name.starts_with(TEMP_PREFIX) => {}
                FileType::RegularFile => files.push(rel),
                FileType::Symlink => links.push(rel),
                _ => {}
            }
        }
    }
    Ok((files, links))
}

/// The name of the re-encrypted copy of the symlink `rel` made beside it.
/// With encrypted names it names no plaintext: a hash of the link's stored
/// name.
pub(super) fn twin_of(tree: &Tree, rel: &str) -> String {
    let (dir, name) = (parent(rel), rel.rsplit('/').next().unwrap_or(rel));
    if !tree.names().is_encrypted() {
        return join(dir, &format!("{TWIN}{name}"));
    }
    let raw = tree.names().store(dir, name).raw;
    let mut hex = String::new();
    crate::crypto::hex_into(&sha2::Sha256::digest(raw.as_bytes())[..16], &mut hex);
    join(dir, &format!("{TWIN}{hex}"))
}

pub(super) fn write_journal(b: &Backing, j: Option<&Journal>) -> io::Result<()> {
    match j {
        Some(j) => {
            let mut bytes = serde_json::to_vec(j).expect("journal serialises");
            if let Some(c) = b.tree.names().cipher() {
                bytes = c.seal_journal(&bytes);
            }
            b.tree.replace(JOURNAL, &bytes, 0o600)
        }
        None => {
            match b.tree.unlink(JOURNAL) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            b.tree.fsync_dir("")
        }
    }
}

/// Prepares every file and symlink below `from` for its path below `to`.
pub(super) fn prepare_tree(
    b: &Backing,
    from: &str,
    to: &str,
    caller: &Caller,
    recovering: bool,
    flush: &mut Flusher,
    dir_times: &mut Vec<(String, [libc::timespec; 2])>,
) -> FsResult<()> {
    let (files, links) = walk(&b.tree, from)?;
    // A large tree replayed at mount: a line every 5 s on the mount's log,
    // and one at the end, so a slow start is seen to be working.
    let (total, started) = (files.len(), std::time::Instant::now());
    let mut said = started;
    for (i, f) in files.into_iter().enumerate() {
        if recovering && said.elapsed() >= std::time::Duration::from_secs(5) {
            said = std::time::Instant::now();
            crate::log_line!(
                "kmsfs: replaying the rename of {from} to {to}: {i} of {total} files re-wrapped, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
        let (src, dst) = (format!("{from}/{f}"), format!("{to}/{f}"));
        match b.rewrap_file(&src, &src, &dst, caller) {
            Ok((fd, _, _)) => flush.file(fd),
            // Already re-wrapped before a crash, or damaged: either way there
            // is nothing to re-wrap; a damaged file stays unreadable.
            Err(e) if recovering || e.errno() == libc::EIO => {
                crate::log_line!("kmsfs: rename: {src}: not re-wrapped: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    if recovering && total > 0 {
        crate::log_line!(
            "kmsfs: replaying the rename of {from} to {to}: {total} files re-wrapped in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    // Twins are made in the directories holding symlinks, which moves their
    // times: recorded here, put back once the twins are renamed over.
    let mut seen = std::collections::HashSet::new();
    // With encrypted names, links are made anew once the directory has
    // moved, with their new names (rename_names.rs): no twins.
    let links = if b.tree.names().is_encrypted() {
        vec![]
    } else {
        links
    };
    for l in &links {
        let sub = parent(l);
        if seen.insert(sub) {
            let here = if sub.is_empty() {
                from.to_string()
            } else {
                format!("{from}/{sub}")
            };
            if let Ok(st) = b.tree.lstat(&here) {
                dir_times.push((sub.to_string(), super::stat::times_of(&st)));
            }
        }
    }
    for l in links {
        let (src, dst) = (format!("{from}/{l}"), format!("{to}/{l}"));
        match b.rewrap_symlink(&src, &src, &dst, &twin_of(&b.tree, &src), caller) {
            Ok(()) => flush.dir(parent(&src)),
            Err(e) => crate::log_line!("kmsfs: rename: symlink {src}: not re-wrapped: {e}"),
        }
    }
    Ok(())
}

/// After the directory moved: twins replace their links, old slots go.
pub(super) fn finish_tree(
    b: &Backing,
    from: &str,
    to: &str,
    flush: &mut Flusher,
) -> io::Result<()> {
    let twins = !b.tree.names().is_encrypted();
    let mut stack = vec![to.to_string()];
    while let Some(d) = stack.pop() {
        for (name, kind) in b.tree.entries(&d)? {
            let rel = join(&d, &name);
            if kind == FileType::Directory {
                stack.push(rel);
            } else if let Some(orig) = name.strip_prefix(TWIN).filter(|_| twins) {
                b.tree.rename(&rel, &join(&d, orig), 0)?;
                flush.dir(&d);
            } else if kind == FileType::RegularFile && !name.starts_with(TEMP_PREFIX) {
                let old = format!("{from}{}", &rel[to.len()..]);
                match b.drop_old_name(&rel, &old) {
                    Ok(fd) => flush.file(fd),
                    Err(err) => {
                        crate::log_line!("kmsfs: rename: {rel}: old slot not cleared: {err}")
                    }
                }
            }
        }
    }
    Ok(())
}

pub fn rename_dir(b: &Backing, from: &str, to: &str, flags: u32, caller: &Caller) -> FsResult<()> {
    if flags & libc::RENAME_NOREPLACE != 0 && b.tree.lstat(to).is_ok() {
        return Err(FsError::Io(io::Error::from_raw_os_error(libc::EEXIST)));
    }
    if let Ok(st) = b.tree.lstat(to) {
        if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            return Err(FsError::Io(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        if !b.tree.entries(to)?.is_empty() {
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
            ino: None,
        }),
    )?;
    let mut flush = Flusher::default();
    let mut dir_times = vec![];
    if let Err(e) = prepare_tree(b, from, to, caller, false, &mut flush, &mut dir_times) {
        // Nothing moved: forget the journal; new-path slots already written
        // are newer but do not open the files here, the older ones do.
        let _ = write_journal(b, None);
        return Err(e);
    }
    flush.flush(&b.tree)?;
    b.tree.rename(from, to, flags)?;
    b.tree.fsync_dir(parent(to))?;
    if parent(from) != parent(to) {
        b.tree.fsync_dir(parent(from))?;
    }
    rename_names(b, to, from, caller, &mut flush)?;
    finish_tree(b, from, to, &mut flush)?;
    restore_dir_times(b, to, &dir_times);
    flush.flush(&b.tree)?;
    write_journal(b, None)?;
    Ok(())
}

/// Puts back the times `prepare_tree` recorded of directories below what
/// is now at `to`.
pub(super) fn restore_dir_times(
    b: &Backing,
    to: &str,
    dir_times: &[(String, [libc::timespec; 2])],
) {
    for (sub, times) in dir_times {
        let here = if sub.is_empty() {
            to.to_string()
        } else {
            format!("{to}/{sub}")
        };
        if let Err(e) = b.tree.set_times(&here, times) {
            crate::log_line!("kmsfs: rename: {here}: times not restored: {e}");
        }
    }
}

/// The unfinished operation the journal records, for `fsck`: e.g. "rename
/// of a to b"; an error for a journal that is not kmsfs's.
pub fn pending_journal(tree: &Tree) -> Result<Option<String>, String> {
    Ok(read_journal(tree)?.map(|j| format!("{} of {} to {}", j.op, j.from, j.to)))
}

/// Reads the journal, if there is one: never through a symlink, bounded in
/// size, and validated before it is trusted.
fn read_journal(tree: &Tree) -> Result<Option<Journal>, String> {
    let p = format!("{}/{JOURNAL}", tree.display());
    let bytes = match tree.read_small(JOURNAL, MAX_JOURNAL_LEN) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return Err(format!(
                "the rename journal {p} is not a kmsfs journal ({e}); nothing was replayed"
            ));
        }
        Err(e) => return Err(format!("cannot read the rename journal {p}: {e}")),
    };
    let bytes = match tree.names().cipher() {
        None => bytes,
        Some(c) => c.open_journal(&bytes).ok_or_else(|| {
            format!(
                "the rename journal {p} is not one this filesystem wrote (it does not authenticate under its name key); nothing was replayed. Remove it to mount"
            )
        })?,
    };
    let j: Journal = serde_json::from_slice(&bytes).map_err(|e| {
        format!("the rename journal {p} is damaged ({e}); nothing was replayed. Remove it to mount")
    })?;
    j.validate().map_err(|e| {
        format!("the rename journal {p} is not one kmsfs wrote ({e}); nothing was replayed. Remove it to mount")
    })?;
    Ok(Some(j))
}

/// Replays an unfinished directory rename; returns what it did, if anything.
pub fn recover(b: &Backing, caller: &Caller) -> Result<Option<String>, String> {
    let Some(j) = read_journal(&b.tree)? else {
        return Ok(None);
    };
    if j.op == "exchange" {
        return super::exchange::recover(b, &j, caller).map(Some);
    }
    let step = |e: String| format!("recovering the rename of {} to {}: {e}", j.from, j.to);
    let is_dir = |rel: &str| {
        b.tree
            .lstat(rel)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
    };
    match is_dir(&j.from) {
        Ok(true) => {
            // The rename did not happen: finish preparing, then do it.
            let mut flush = Flusher::default();
            prepare_tree(b, &j.from, &j.to, caller, true, &mut flush, &mut vec![])
                .map_err(|e| step(e.to_string()))?;
            flush.flush(&b.tree).map_err(|e| step(e.to_string()))?;
            if b.tree.lstat(&j.to).is_ok() {
                b.tree
                    .rmdir(&j.to)
                    .map_err(|e| step(format!("{} is in the way: {e}", j.to)))?;
            }
            b.tree
                .rename(&j.from, &j.to, 0)
                .map_err(|e| step(e.to_string()))?;
        }
        Ok(false) => return Err(step(format!("{} is not a directory", j.from))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(step(e.to_string())),
    }
    if !is_dir(&j.to).map_err(|e| step(e.to_string()))? {
        return Err(step(format!("{} is not a directory", j.to)));
    }
    let mut flush = Flusher::default();
    rename_names(b, &j.to, &j.from, caller, &mut flush).map_err(|e| step(e.to_string()))?;
    finish_tree(b, &j.from, &j.to, &mut flush).map_err(|e| step(e.to_string()))?;
    flush.flush(&b.tree).map_err(|e| step(e.to_string()))?;
    write_journal(b, None).map_err(|e| step(e.to_string()))?;
    Ok(Some(format!(
        "completed an interrupted rename of {} to {}",
        j.from, j.to
    )))
}

/// Upgrades the symlinks of a filesystem made before symlink targets had a
/// context of their own; returns how many were re-encrypted.
pub fn upgrade_symlinks(b: &Backing, caller: &Caller) -> Result<usize, String> {
    let (_, links) = walk(&b.tree, "").map_err(|e| format!("listing the cipherdir: {e}"))?;
    let mut n = 0;
    for l in links {
        let twin = temp_name(parent(&l), "link");
        match b.upgrade_symlink(&l, &twin, caller) {
            Ok(true) => n += 1,
            Ok(false) => {}
            // A damaged or foreign link stays as it is: reading it fails.
            Err(e) if e.errno() == libc::EIO => {
                crate::log_line!("kmsfs: symlink {l}: not upgraded: {e}")
            }
            Err(e) => return Err(format!("upgrading symlink {l}: {e}")),
        }
    }
    b.tree
        .syncfs()
        .map_err(|e| format!("flushing the cipherdir: {e}"))?;
    Ok(n)
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
            ino: None,
        };
        let s = serde_json::to_vec(&j).unwrap();
        assert_eq!(serde_json::from_slice::<Journal>(&s).unwrap(), j);
        let d = tempfile::tempdir().unwrap();
        let t = Tree::open(d.path()).unwrap();
        assert_eq!(twin_of(&t, "x/y/name"), "x/y/.kmsfs-rewrap.name");
        assert_eq!(twin_of(&t, "name"), ".kmsfs-rewrap.name");
    }

    #[test]
    fn a_journal_from_disk_is_validated_before_replay() {
        let j = |from: &str, to: &str| Journal {
            op: "rename".into(),
            from: from.into(),
            to: to.into(),
            ino: None,
        };
        assert!(j("a/b", "c").validate().is_ok());
        for (from, to) in [
            ("a", "/etc/systemd/system/ssh.service.d"),
            ("a", "../outside"),
            ("a/../../x", "b"),
            ("", "b"),
            ("a", ""),
            ("a", "a/b"),
            ("a", "a"),
            ("a", "kmsfs.conf"),
            (".kmsfs.journal", "b"),
            ("a/.kmsfs-rewrap.x", "b"),
            ("a//b", "c"),
            ("a/", "c"),
        ] {
            assert!(j(from, to).validate().is_err(), "{from:?} -> {to:?}");
        }
        let mut bad = j("a", "b");
        bad.op = "delete".into();
        assert!(bad.validate().is_err());
        // An exchange names the inode it began with, a rename none; and
        // neither side of an exchange may be below the other.
        let mut x = j("a", "b");
        x.op = "exchange".into();
        assert!(x.validate().is_err());
        x.ino = Some(7);
        assert!(x.validate().is_ok());
        x.from = "b/c".into();
        assert!(x.validate().is_err());
        let mut r = j("a", "b");
        r.ino = Some(7);
        assert!(r.validate().is_err());
        assert!(
            serde_json::from_str::<Journal>(r#"{"op":"rename","from":"a","to":"b","x":1}"#)
                .is_err()
        );
    }
}
