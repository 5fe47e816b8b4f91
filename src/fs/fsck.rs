//! `kmsfs fsck`: checks a cipherdir without mounting it: every name, every
//! file's header and key slots, every block's tag, every symlink and kmsfs
//! node, and the rename journal. Everything it reads is attacker-controlled,
//! through the same descriptor-relative walk the mount uses. It repairs only
//! what cannot hide an attack, and names each repair:
//!
//! - an empty file with no header (a crash at creation): a new data key, as
//!   the mount itself does;
//! - a stale key slot (a rename a crash interrupted) beside one that opens;
//! - a truncate a crash cut short (the last block's prefix authenticates as
//!   that block): cut where it ends;
//! - an interrupted directory rename: replayed from its journal.

use super::backing::{Backing, FsError};
use super::cryptfile::{self, CryptFile, LastBlock};
use super::format::{self, BLOCK_SIZE};
use super::names::Listed;
use crate::kms::{Caller, ErrorCode};
use serde::Serialize;
use std::io;

/// One problem, at one path (the mount's path; the backing name for a name
/// that does not decrypt).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Finding {
    pub path: String,
    /// `name`, `header`, `slot`, `key`, `block`, `symlink`, `journal`, `moved`.
    pub kind: &'static str,
    pub what: String,
    /// What --repair did about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repaired: Option<String>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub dirs: u64,
    pub files: u64,
    pub symlinks: u64,
    pub special: u64,
    /// FIFOs and sockets (kept as such in the cipherdir: they hold no data).
    pub fifos: u64,
    /// Plaintext bytes whose blocks were checked.
    pub bytes: u64,
    pub findings: Vec<Finding>,
}

/// What the walk reports as it goes, for a progress display.
pub struct Progress<'a> {
    pub nodes: u64,
    pub bytes: u64,
    pub path: &'a str,
}

/// At most this many bad blocks named per file; the count says the rest.
const BLOCKS_NAMED: usize = 8;
/// At most this many other paths tried for a file whose key does not open
/// at its own (each try is a Decrypt, audited).
const MOVED_TRIES: usize = 20_000;

pub struct Fsck<'a> {
    b: &'a Backing,
    caller: Caller,
    repair: bool,
    report: Report,
    /// Every file's path, to name where a moved file's key does open.
    paths: Vec<String>,
    /// Files whose key opens at no path yet tried.
    lost: Vec<usize>,
}

impl<'a> Fsck<'a> {
    pub fn new(b: &'a Backing, caller: Caller, repair: bool) -> Self {
        Fsck {
            b,
            caller,
            repair,
            report: Report::default(),
            paths: vec![],
            lost: vec![],
        }
    }

    pub fn run(mut self, progress: &mut dyn FnMut(&Progress)) -> Report {
        self.journal();
        let mut dirs = vec![String::new()];
        while let Some(dir) = dirs.pop() {
            self.report.dirs += 1;
            for (rel, kind) in self.list(&dir) {
                match kind {
                    fuser::FileType::Directory => dirs.push(rel.clone()),
                    fuser::FileType::Symlink => self.symlink(&rel),
                    fuser::FileType::RegularFile => self.file(&rel),
                    fuser::FileType::NamedPipe | fuser::FileType::Socket => self.report.fifos += 1,
                    _ => self.finding(&rel, "name", "a device node in the cipherdir: kmsfs keeps device nodes as encrypted files, never as devices (planted?)".into()),
                }
                let r = &self.report;
                progress(&Progress {
                    nodes: r.files + r.symlinks + r.special + r.fifos + r.dirs,
                    bytes: r.bytes,
                    path: &rel,
                });
            }
        }
        self.moved();
        self.report
    }

    fn finding(&mut self, path: &str, kind: &'static str, what: String) {
        self.report.findings.push(Finding {
            path: path.to_string(),
            kind,
            what,
            repaired: None,
        });
    }

    fn repaired(&mut self, what: String) {
        if let Some(f) = self.report.findings.last_mut() {
            f.repaired = Some(what);
        }
    }

    /// The entries of `dir` by plaintext path; a name that does not decrypt
    /// is a finding (the mount hides it).
    fn list(&mut self, dir: &str) -> Vec<(String, fuser::FileType)> {
        let tree = &self.b.tree;
        let join = |n: &str| {
            if dir.is_empty() {
                n.to_string()
            } else {
                format!("{dir}/{n}")
            }
        };
        let fd = match tree.open_dir_quiet(dir) {
            Ok(fd) => fd,
            Err(e) => {
                self.finding(dir, "name", format!("cannot open the directory: {e}"));
                return vec![];
            }
        };
        let (mut out, mut foreign) = (vec![], vec![]);
        let r = super::listing::for_each(&fd, 0, |e, d| {
            if e.name == "." || e.name == ".." {
                return false;
            }
            // kmsfs's own files (the config, the lock, the journal, temporary
            // copies): not the user's, checked elsewhere or not at all.
            if super::names::is_internal(dir, e.name) {
                return false;
            }
            match tree.names().list(dir, e.name, d) {
                Listed::Name(n) => out.push((join(&n), e.kind)),
                Listed::Own => out.push((join(e.name), e.kind)),
                Listed::Side => {}
                Listed::Foreign(err) => foreign.push((join(e.name), format!("{err:?}"))),
            }
            false
        });
        if let Err(e) = r {
            self.finding(dir, "name", format!("cannot list the directory: {e}"));
        }
        for (raw, why) in foreign {
            self.finding(&raw, "name", format!("a backing name that is no name of this directory ({why}): the mount hides it (planted, or moved here from another directory?)"));
        }
        out
    }

    fn journal(&mut self) {
        match super::rename::pending_journal(&self.b.tree) {
            Ok(None) => {}
            Ok(Some(what)) => {
                self.finding(
                    "",
                    "journal",
                    format!("an interrupted {what}: the next read-write mount replays it"),
                );
                if self.repair {
                    match super::rename::recover(self.b, &self.caller) {
                        Ok(done) => {
                            self.repaired(format!("replayed: {}", done.unwrap_or_default()))
                        }
                        Err(e) => self.repaired(format!("not replayed: {e}")),
                    }
                }
            }
            Err(e) => self.finding("", "journal", e),
        }
    }

    fn symlink(&mut self, rel: &str) {
        self.report.symlinks += 1;
        let stored = match self.b.tree.readlink(rel) {
            Ok(s) => s,
            Err(e) => return self.finding(rel, "symlink", format!("cannot read: {e}")),
        };
        if let Err(e) = self.b.decrypt_symlink(rel, &stored, &self.caller) {
            self.finding(rel, "symlink", describe(&e));
        }
    }

    fn file(&mut self, rel: &str) {
        let tree = &self.b.tree;
        let flags = if self.repair {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let fd = match tree.open_quiet(rel, flags | libc::O_NONBLOCK | libc::O_NOCTTY) {
            Ok(fd) => fd,
            Err(e) => return self.finding(rel, "header", format!("cannot open: {e}")),
        };
        let len = fd.metadata().map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            self.report.files += 1;
            self.finding(rel, "header", "no header at all (a crash while the file was being created): it was empty; the next mount gives it a new data key".into());
            if self.repair {
                let mount = Caller::this_process(crate::kms::Via::Mount);
                let r = self.b.init_file(&fd, rel, &mount).map_err(|e| describe(&e));
                self.repaired(r.map_or_else(
                    |e| format!("not repaired: {e}"),
                    |_| "given a new data key: an empty file".into(),
                ));
            }
            return;
        }
        let header = match cryptfile::read_header(&fd, self.b.hs) {
            Ok(h) => h,
            Err(e) => {
                self.report.files += 1;
                return self.finding(rel, "header", format!("{e}"));
            }
        };
        let (key, id) = match self.b.unwrap_file(&fd, rel, &self.caller) {
            Ok(k) => k,
            Err(e) => {
                self.report.files += 1;
                if is_wrong_place(&e) {
                    self.lost.push(self.paths.len());
                    self.finding(rel, "moved", "its data key does not open at this path (moved, renamed, copied or swapped behind kmsfs's back)".into());
                } else {
                    self.finding(rel, "key", describe(&e));
                }
                self.paths.push(rel.to_string());
                return;
            }
        };
        self.paths.push(rel.to_string());
        self.slots(rel, &fd, &header);
        let cf = CryptFile::new(fd, self.b.hs, id, &key);
        if self.special(rel, &cf, len) {
            return;
        }
        self.report.files += 1;
        self.blocks(rel, &cf);
    }

    /// A file with two slots keeps the second only while a rename is in
    /// flight; one that does not open here beside one that does is stale.
    fn slots(&mut self, rel: &str, fd: &std::fs::File, h: &format::Header) {
        let order = h.slots_newest_first();
        if order.len() < 2 {
            return;
        }
        let ctx = self.b.ctx(rel);
        let opens: Vec<(usize, bool)> = order
            .iter()
            .map(|&i| {
                let blob = &h.slots[i].as_ref().expect("listed").blob;
                (i, self.b.kms.unwrap(&self.caller, blob, &ctx).is_ok())
            })
            .collect();
        for &(i, ok) in &opens {
            if ok {
                continue;
            }
            self.finding(rel, "slot", format!("key slot {i} does not open at this path beside one that does: left by a rename a crash interrupted"));
            if self.repair && opens.iter().any(|&(_, ok)| ok) {
                let r = self.b.drop_slot(fd, &h.file_id, i);
                self.repaired(r.map_or_else(
                    |e| format!("not dropped: {e}"),
                    |_| format!("dropped slot {i}"),
                ));
            }
        }
    }

    /// A device node or long symlink stored as a file: its payload decoded.
    fn special(&mut self, rel: &str, cf: &CryptFile, len: u64) -> bool {
        let hs = self.b.hs;
        let (dev, link) = (
            super::devnode::is_candidate(hs, len),
            super::longlink::is_candidate(hs, len),
        );
        if !dev && !link {
            return false;
        }
        let want = if dev {
            BLOCK_SIZE
        } else {
            super::longlink::PAYLOAD
        };
        match cf.read_at(0, want) {
            Ok(p) if dev && super::devnode::decode(&p).is_some() => {}
            Ok(p) if link && super::longlink::decode(&p).is_some() => {}
            // A regular file that merely has a special node's length.
            Ok(_) => return false,
            Err(e) => self.finding(
                rel,
                "block",
                format!("a kmsfs node whose payload does not decrypt: {e}"),
            ),
        }
        self.report.special += 1;
        true
    }

    fn blocks(&mut self, rel: &str, cf: &CryptFile) {
        let size = match cf.plain_size() {
            Ok(s) => s,
            Err(e) => return self.finding(rel, "block", format!("{e}")),
        };
        let chunk = 256 * BLOCK_SIZE as u64;
        let mut bad = vec![];
        let mut off = 0;
        while off < size {
            let len = chunk.min(size - off) as usize;
            if cf.read_at(off, len).is_err() {
                // Which blocks: one at a time through this chunk.
                let mut b = off;
                while b < off + len as u64 {
                    let n = (BLOCK_SIZE as u64).min(size - b) as usize;
                    if let Err(e) = cf.read_at(b, n) {
                        bad.push((b / BLOCK_SIZE as u64, e.to_string()));
                    }
                    b += BLOCK_SIZE as u64;
                }
            }
            off += len as u64;
        }
        self.report.bytes += size;
        let Some(last) = bad.last().map(|b| b.0) else {
            return;
        };
        let last_block = size.saturating_sub(1) / BLOCK_SIZE as u64;
        if bad.len() == 1 && last == last_block {
            // Perhaps a truncate or an extending write a crash cut short.
            let what = match cf.interrupted(self.repair) {
                Ok(LastBlock::Finished(n)) => Some((
                    n,
                    format!("a truncate to {n} bytes cut short by a crash leaves"),
                )),
                Ok(LastBlock::TornWrite(n)) => Some((
                    n,
                    format!(
                        "an extending write torn by a crash leaves (never acknowledged; the {n} bytes before it are whole)"
                    ),
                )),
                Ok(LastBlock::Intact | LastBlock::Damaged) => None,
                Err(e) => return self.finding(rel, "block", format!("{e}")),
            };
            if let Some((n, what)) = what {
                self.finding(rel, "block", format!("the last block is what {what}"));
                if self.repair {
                    self.repaired(format!("cut to {n} bytes"));
                }
                return;
            }
        }
        let n = bad.len();
        for (i, (block, e)) in bad.into_iter().enumerate().take(BLOCKS_NAMED) {
            let more = if i + 1 == BLOCKS_NAMED && n > BLOCKS_NAMED {
                format!(" (and {} more bad blocks)", n - BLOCKS_NAMED)
            } else {
                String::new()
            };
            self.finding(
                rel,
                "block",
                format!(
                    "block {block} (bytes {} to {}): {e}{more}",
                    block * BLOCK_SIZE as u64,
                    (block + 1) * BLOCK_SIZE as u64 - 1
                ),
            );
        }
    }

    /// For each file whose key opened at no path: the other paths of the
    /// tree where it does, if any (a file copied or moved there).
    fn moved(&mut self) {
        let mut tries = 0;
        for &i in &self.lost.clone() {
            let rel = self.paths[i].clone();
            let Ok(fd) = self
                .b
                .tree
                .open_quiet(&rel, libc::O_RDONLY | libc::O_NONBLOCK)
            else {
                continue;
            };
            let Ok(h) = cryptfile::read_header(&fd, self.b.hs) else {
                continue;
            };
            let mut found = None;
            'paths: for (j, other) in self.paths.iter().enumerate() {
                if j == i {
                    continue;
                }
                for s in h.slots_newest_first() {
                    tries += 1;
                    if tries > MOVED_TRIES {
                        break 'paths;
                    }
                    let blob = &h.slots[s].as_ref().expect("listed").blob;
                    if self
                        .b
                        .kms
                        .unwrap(&self.caller, blob, &self.b.ctx(other))
                        .is_ok()
                    {
                        found = Some(other.clone());
                        break 'paths;
                    }
                }
            }
            let what = match found {
                Some(p) => format!("its data key opens at {p}: a copy or a move of that file"),
                None if tries > MOVED_TRIES => "its data key opens at none of the paths tried".into(),
                None => "its data key opens at no path of this tree (from another filesystem, or its file was removed)".into(),
            };
            if let Some(f) = self
                .report
                .findings
                .iter_mut()
                .find(|f| f.path == rel && f.kind == "moved")
            {
                f.what = format!("{}; {what}", f.what);
            }
        }
    }
}

fn is_wrong_place(e: &FsError) -> bool {
    match e {
        FsError::Kms(k) => matches!(
            k.code,
            ErrorCode::InvalidCiphertextException | ErrorCode::NotFoundException
        ),
        FsError::Io(io) => {
            io.kind() == io::ErrorKind::InvalidData
                && io.to_string().contains("does not unwrap for this path")
        }
    }
}

fn describe(e: &FsError) -> String {
    match e {
        FsError::Kms(k) => format!("the KMS refused: {}: {}", k.code.as_str(), k.message),
        FsError::Io(e) => e.to_string(),
    }
}
