//! The FUSE operations. Each one maps a node to its cipherdir path, does the
//! backing-file work, and answers with an errno that says what happened: EIO
//! for integrity failures, EACCES for KMS refusals, the backing errno else.

use super::backing::{Backing, FsError, FsResult};
use super::cryptfile::{CryptFile, LastBlock};
use super::devnode::{self, DeviceCache};
use super::fairness::{Claim, OpenBudget, RenameGate};
use super::format;
use super::inode::{self, Inodes};
use super::longlink;
use super::node::{self, Target};
use super::rename;
use super::root_attr::RootAttr;
use super::stat::{self, NodeStat};
use super::symlink;

mod acl_ops;
use crate::kms::{Caller, Via};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Per-inode state shared by every handle open on it: one unwrapped key
/// behind one lock that orders writers (and lets a truncation to zero swap
/// in a new key).
pub struct OpenFile {
    io: RwLock<CryptFile>,
}

/// The node a setattr changes: by its name, or, unlinked while open, through
/// the open file.
enum Node {
    Named(String),
    Unlinked(Arc<OpenFile>),
}

/// What identifies a version of a backing file: any write, truncation,
/// re-key or rename changes its ctime, and so does any change made behind the
/// mount's back (ctime cannot be set from user space).
#[derive(Clone, Copy, PartialEq, Eq)]
struct CacheStamp {
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl CacheStamp {
    fn of(m: &Metadata) -> Self {
        CacheStamp {
            ino: std::os::unix::fs::MetadataExt::ino(m),
            size: m.len(),
            mtime: NodeStat::mtime(m),
            ctime: NodeStat::ctime(m),
        }
    }
}

pub struct Options {
    pub attr_ttl: Duration,
    pub read_only: bool,
    /// The kernel's writeback cache: writes land in the page cache and reach
    /// the daemon in large batches; the kernel keeps size and mtime.
    pub writeback_cache: bool,
    /// Read ahead across files and directories (tree/prefetch.rs).
    pub prefetch: bool,
    /// Ask for FUSE over io_uring at INIT (mount.rs starts the ring threads).
    pub io_uring: bool,
    /// The daemon's open-file limit, shared out between users.
    pub open_files: u64,
    /// POSIX ACLs (acl_ops.rs): with --allow-other, where the kernel
    /// checks permissions and so can enforce them.
    pub posix_acl: bool,
    /// Extended attributes kept; without, every xattr call is ENOSYS (the
    /// kernel then answers EOPNOTSUPP itself and stops asking).
    pub xattrs: bool,
    /// Requests and open handles, for `--idle`.
    pub activity: std::sync::Arc<super::activity::Activity>,
}

impl Default for Options {
    fn default() -> Self {
        // Every change to names and attributes goes through this mount, which
        // keeps the kernel's caches right; a long TTL saves round trips.
        Options {
            attr_ttl: Duration::from_secs(30),
            read_only: false,
            writeback_cache: true,
            prefetch: true,
            io_uring: false,
            posix_acl: false,
            xattrs: false,
            activity: Default::default(),
            open_files: 1024,
        }
    }
}

pub struct KmsFs {
    b: Arc<Backing>,
    opts: Options,
    inodes: Mutex<Inodes>,
    open: Mutex<HashMap<u64, Weak<OpenFile>>>,
    /// The backing file's state when the kernel's cached plaintext of it was
    /// last known right (an open that dropped the cache), forgotten on any
    /// change through the mount: an open that finds the same state lets the
    /// kernel keep its cache.
    cached: Mutex<HashMap<u64, CacheStamp>>,
    /// Open file handles (directories have none: see opendir), with the uid
    /// whose share of the descriptors each one counts against.
    handles: Mutex<HashMap<u64, (Arc<OpenFile>, u32)>>,
    next_fh: AtomicU64,
    renames: Arc<RenameGate>,
    budget: OpenBudget,
    as_root: bool,
    /// Any stat, to fill the unused attributes of negative entries.
    root_meta: libc::stat,
    /// What the mount root shows as its mode and owner (not the cipherdir's).
    root_attr: Mutex<RootAttr>,
    devices: DeviceCache,
    /// Nodes known to have no extended attributes (made through this
    /// mount, or found without any), until one is set: the kernel asks
    /// for security.capability before every write and chown, and these
    /// answer with no walk and no syscall.
    bare: Mutex<std::collections::HashSet<u64>>,
    /// Keys of files about to be opened, unwrapped ahead (a remote KMS with
    /// `--key-readahead`).
    readahead: Option<super::key_readahead::KeyReadahead>,
}

/// The largest read or write the kernel sends.
const MAX_READ: usize = 1 << 20;

fn err(e: i32) -> Errno {
    Errno::from_i32(e)
}

fn io_errno(e: &io::Error) -> Errno {
    err(e.raw_os_error().unwrap_or(libc::EIO))
}

fn time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::from_secs((-secs) as u64)
    }
}

/// A name users may create: UTF-8 (it becomes encryption context) and not one
/// kmsfs keeps for itself.
fn user_name(parent: &str, name: &OsStr) -> Result<String, Errno> {
    let n = name.to_str().ok_or(err(libc::EILSEQ))?;
    if !visible(parent, n) {
        return Err(err(libc::EPERM));
    }
    Ok(n.to_string())
}

/// Shows a special node's backing file as the node: a device (`n` its
/// number) or a long symlink (`n` its target's length).
fn show_special(st: &mut libc::stat, kind: u32, n: u64) {
    if kind == libc::S_IFLNK {
        longlink::show(st, n)
    } else {
        devnode::show(st, kind, n)
    }
}

/// Names kmsfs keeps for itself: `.kmsfs-*` anywhere (rename temporaries),
/// and in the root the config, lock and journal files with their temporary
/// copies (`.NAME.tmp-PID`).
fn visible(parent: &str, name: &str) -> bool {
    !super::names::is_internal(parent, name)
}

impl KmsFs {
    pub fn new(b: Backing, opts: Options, root_attr: RootAttr) -> io::Result<Self> {
        let root_meta = b.tree.lstat("")?;
        let budget = OpenBudget::new(opts.open_files);
        let b = Arc::new(b);
        Ok(KmsFs {
            readahead: super::key_readahead::KeyReadahead::new(b.clone()),
            b,
            opts,
            inodes: Mutex::new(Inodes::default()),
            open: Mutex::new(HashMap::new()),
            cached: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            renames: Default::default(),
            budget,
            // SAFETY: geteuid has no preconditions.
            as_root: unsafe { libc::geteuid() } == 0,
            root_meta,
            root_attr: Mutex::new(root_attr),
            devices: DeviceCache::default(),
            bare: Mutex::new(Default::default()),
        })
    }

    /// What the control socket needs to act on this mount (control.rs).
    pub fn control(&self, cipherdir: std::path::PathBuf) -> super::control::Control {
        super::control::Control {
            b: self.b.clone(),
            gate: self.renames.clone(),
            cipherdir,
        }
    }

    fn caller(req: &Request) -> Caller {
        Caller::local(req.uid(), req.gid(), req.pid(), Via::Mount)
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        let p = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .path(ino.0)
            .ok_or(Errno::ENOENT)?;
        if p.starts_with('\0') {
            return Err(Errno::ENOENT);
        }
        Ok(p)
    }

    fn child(&self, parent: INodeNo, name: &OsStr) -> Result<(String, String), Errno> {
        let pp = self.path(parent)?;
        let n = name.to_str().ok_or(Errno::ENOENT)?;
        if !visible(&pp, n) {
            return Err(Errno::ENOENT);
        }
        Ok((inode::join(&pp, n), pp))
    }

    /// The path of `ino` under a shared claim (see RenameGate): no rename
    /// that overlaps it runs until the claim is dropped, so the path stays
    /// the file's while it becomes a key context.
    fn claimed_path(&self, ino: INodeNo) -> Result<(String, Claim<'_>), Errno> {
        loop {
            let p = self.path(ino)?;
            let c = self.renames.share(&p);
            if self.path(ino)? == p {
                return Ok((p, c));
            }
        }
    }

    /// `parent/name` under a shared claim on that path (not on the parent,
    /// which would wait for every rename beside it).
    fn claimed_child(
        &self,
        parent: INodeNo,
        name: &str,
    ) -> Result<(String, String, Claim<'_>), Errno> {
        loop {
            let pp = self.path(parent)?;
            let rel = inode::join(&pp, name);
            let c = self.renames.share(&rel);
            if self.path(parent)? == pp {
                return Ok((rel, pp, c));
            }
        }
    }

    fn attr(&self, ino: u64, m: &impl NodeStat) -> FileAttr {
        let kind = stat::kind(m.mode());
        let (perm, uid, gid) = if ino == inode::ROOT {
            let r = *self.root_attr.lock().unwrap_or_else(|e| e.into_inner());
            (r.mode, r.uid, r.gid)
        } else {
            (m.mode() & 0o7777, m.uid(), m.gid())
        };
        let size = match kind {
            FileType::RegularFile => format::plain_size(self.b.hs, m.size()),
            // Made the target's length by as_special.
            _ => m.size(),
        };
        let (at, mt, ct) = (m.atime(), m.mtime(), m.ctime());
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: m.blocks(),
            atime: time(at.0, at.1),
            mtime: time(mt.0, mt.1),
            ctime: time(ct.0, ct.1),
            crtime: UNIX_EPOCH,
            kind,
            perm: perm as u16,
            nlink: m.nlink() as u32,
            uid,
            gid,
            rdev: m.rdev() as u32,
            blksize: format::BLOCK_SIZE as u32,
            flags: 0,
        }
    }

    fn log(&self, what: &str, path: &str, e: &FsError) {
        match e {
            // The backing filesystem's own error, not kmsfs's judgement: say
            // so, since the fix (the disk) is elsewhere.
            FsError::Io(io) if io.raw_os_error().is_some() => {
                crate::log_line!("kmsfs: {what} {path:?}: the cipherdir's storage failed: {e}")
            }
            _ => crate::log_line!("kmsfs: {what} {path:?}: {e}"),
        }
    }

    /// The errno for `e`, logged when it is one an operator must see: an
    /// integrity failure or a storage error (EIO), a refusal (EACCES), or
    /// the cipherdir's filesystem having turned read-only (EROFS).
    fn fs_errno(&self, what: &str, path: &str, e: FsError) -> Errno {
        let n = e.errno();
        if matches!(n, libc::EIO | libc::EACCES | libc::EROFS) {
            self.log(what, path, &e);
        }
        err(n)
    }

    /// `op` on `cf`, once more if it failed with an integrity error that a
    /// shrink or an extending write interrupted by a crash explains, now
    /// finished and logged (see `CryptFile::finish_interrupted`). Each
    /// operation here fails before it writes if the last block does not
    /// open, so a rerun repeats nothing.
    fn after_crash_tail<T>(
        &self,
        ino: u64,
        cf: &CryptFile,
        mut op: impl FnMut() -> io::Result<T>,
    ) -> io::Result<T> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let rel = || self.path(INodeNo(ino)).unwrap_or_default();
                match cf.finish_interrupted() {
                    Ok(LastBlock::Finished(size)) => crate::log_line!(
                        "kmsfs: completed an interrupted truncate of {:?} to {size} bytes",
                        rel()
                    ),
                    Ok(LastBlock::TornWrite(size)) => crate::log_line!(
                        "kmsfs: {:?} ended in a block that a crash tore while it was being \
                         written (a write never acknowledged): cut back to {size} bytes",
                        rel()
                    ),
                    Ok(LastBlock::Intact) => return op(),
                    Ok(LastBlock::Damaged) | Err(_) => return Err(e),
                }
                self.changed(ino);
                op()
            }
            r => r,
        }
    }

    /// lstat of a node, refusing what kmsfs never makes: a device node in the
    /// cipherdir was planted (a restored backup, a synced folder) and is not
    /// served.
    fn stat(&self, rel: &str) -> Result<libc::stat, Errno> {
        let mut st = self.b.tree.lstat(rel).map_err(|e| io_errno(&e))?;
        if foreign(st.st_mode) {
            crate::log_line!(
                "kmsfs: {rel:?}: a device node in the cipherdir, not made by kmsfs: refused"
            );
            return Err(Errno::EIO);
        }
        self.as_special(rel, &mut st);
        Ok(st)
    }

    /// A backing file with a device node's or a long symlink's length shows
    /// as the node it stores (devnode.rs, longlink.rs); one that does not
    /// decode as one stays the regular file it is (and fails as one when
    /// opened, if damaged).
    /// A backing symlink's size is its encoded target's; the target's own
    /// length follows from it (symlink.rs).
    fn as_special(&self, rel: &str, st: &mut libc::stat) {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => {
                st.st_size = symlink::plain_len(st.st_size as u64) as i64;
                return;
            }
            libc::S_IFREG => {}
            _ => return,
        }
        let len = st.st_size as u64;
        let (device, link) = (
            devnode::is_candidate(self.b.hs, len),
            longlink::is_candidate(self.b.hs, len),
        );
        if !device && !link {
            return;
        }
        if let Some((kind, n)) = self.devices.get(st) {
            return show_special(st, kind, n);
        }
        let mount = Caller::this_process(crate::kms::Via::Mount);
        let found = if device {
            self.b.read_device(rel)
        } else {
            self.b
                .read_long_symlink(rel, &mount)
                .map(|t| t.map(|t| (libc::S_IFLNK, t.len() as u64)))
        };
        match found {
            Ok(Some((kind, n))) => {
                self.devices.put(st, kind, n);
                show_special(st, kind, n);
            }
            Ok(None) => {}
            Err(e) => self.log("reading the special node", rel, &e),
        }
    }

    /// Answers a lookup-like call: lstat, count the lookup, reply.
    fn entry_for(&self, rel: &str) -> Result<(FileAttr, u64), Errno> {
        let m = self.stat(rel)?;
        let ino = self.count_lookup(rel, &m);
        Ok((self.attr(ino, &m), ino))
    }

    /// The node for `rel`, counting a kernel lookup: one per backing inode
    /// for a file with several names, each of which has its own key entry.
    /// A name without one (a link made in the cipherdir behind the mount's
    /// back) gets a node of its own, so opening it tries its own path's key
    /// and fails, instead of sharing the node a real name opens.
    fn count_lookup(&self, rel: &str, m: &libc::stat) -> u64 {
        let kind = m.st_mode & libc::S_IFMT;
        let linked = m.st_nlink > 1
            && match kind {
                libc::S_IFREG => self.b.is_link_name_at(rel),
                libc::S_IFIFO | libc::S_IFSOCK => true,
                _ => false,
            };
        let mut inodes = self.inodes.lock().unwrap_or_else(|e| e.into_inner());
        if linked {
            inodes.lookup_linked(rel, (m.st_dev, m.st_ino))
        } else {
            inodes.lookup(rel)
        }
    }

    /// Gives a new node the owner and group a native filesystem would: the
    /// creator's uid, and her gid unless the parent directory is set-group-id,
    /// where the node keeps the directory's group (the backing filesystem gave
    /// it that, and a new directory the set-group-id bit, as it does for any
    /// creator). Run as root, the daemon creates and then hands over.
    fn own(&self, rel: &str, req: &Request) -> io::Result<()> {
        if !self.as_root {
            return Ok(());
        }
        let parent = self.b.tree.lstat(inode::parent(rel))?;
        let gid = (parent.st_mode & libc::S_ISGID == 0).then(|| req.gid());
        self.b.tree.chown(rel, Some(req.uid()), gid)
    }

    /// release: forget the handle; the last handle of a file takes its key
    /// (wiped on drop) and its entry in the open map with it.
    fn drop_handle(&self, ino: u64, fh: FileHandle) {
        let h = self
            .handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&fh.0);
        if let Some((f, uid)) = h {
            self.opts.activity.closed();
            drop(f);
            self.budget.give_back(uid);
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.get(&ino).is_some_and(|w| w.strong_count() == 0) {
                open.remove(&ino);
            }
        }
    }

    /// Whether the kernel may keep its cached plaintext of this file: the
    /// backing file is in the state recorded when that cache was last
    /// dropped, with no change through the mount since. When not, the kernel
    /// drops it and the state now is recorded. Recording at open (never at
    /// close, which the kernel sends asynchronously) means a change behind
    /// the mount's back is never mistaken for the cached state.
    fn keep_cache(&self, ino: u64, f: &Arc<OpenFile>) -> bool {
        let cf = f.io.read().unwrap_or_else(|e| e.into_inner());
        let now = cf.fd.metadata().ok().map(|m| CacheStamp::of(&m));
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if now.is_some() && cached.get(&ino) == now.as_ref() {
            return true;
        }
        match now {
            Some(st) => cached.insert(ino, st),
            None => cached.remove(&ino),
        };
        false
    }

    /// The file changes through the mount: the next open drops the cache.
    fn changed(&self, ino: u64) {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ino);
    }

    /// chmod and chown of the mount root change what the root shows, never
    /// the cipherdir, which stays private to the daemon. The kernel has
    /// checked the caller (owner or root) with default_permissions; without
    /// it only the mounting user gets in.
    fn set_root_attr(
        &self,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        let mut r = self.root_attr.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = *r;
        if let Some(m) = mode {
            new.mode = m & 0o7777;
        }
        if let Some(u) = uid {
            new.uid = u;
        }
        if let Some(g) = gid {
            new.gid = g;
        }
        if new != *r {
            new.save(&self.b.tree).map_err(|e| {
                crate::log_line!("kmsfs: saving the mount root's mode and owner: {e}");
                io_errno(&e)
            })?;
            *r = new;
        }
        Ok(())
    }

    /// The node numbers of a directory's `.` and `..` entries; None for other
    /// names. The kernel passes the dots on without counting a lookup.
    fn dot_ino(&self, name: &str, dir: INodeNo, rel: &str) -> Option<u64> {
        match name {
            "." => Some(dir.0),
            ".." => Some(self.peek_or_hash(inode::parent(rel))),
            _ => None,
        }
    }

    /// The node number of a path the kernel has looked up, else a stable
    /// number for it (plain readdir does not count lookups).
    fn peek_or_hash(&self, rel: &str) -> u64 {
        self.inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .peek(rel)
            .unwrap_or_else(|| 1 << 62 | (fxhash(rel) >> 2))
    }

    /// Records a handle counted against `uid`'s share (see `take_share`).
    fn new_fh(&self, h: Arc<OpenFile>, uid: u32) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(fh, (h, uid));
        self.opts.activity.opened();
        fh
    }

    /// One more open file for this user, or EMFILE for her alone: no user
    /// can take the descriptors every other user needs.
    fn take_share(&self, req: &Request) -> Result<u32, Errno> {
        let uid = req.uid();
        if self.budget.take(uid) {
            Ok(uid)
        } else {
            crate::log_line!(
                "kmsfs: uid {uid} has {} files open, its share of the daemon's descriptors: EMFILE",
                self.budget.per_user()
            );
            Err(Errno::EMFILE)
        }
    }

    fn file_handle(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fh.0)
            .map(|(f, _)| f.clone())
            .ok_or(Errno::EBADF)
    }

    /// An open file of the node: the handle the kernel named, else any handle
    /// open on it. What is left of a file unlinked while open.
    fn open_handle(&self, ino: u64, fh: Option<FileHandle>) -> Option<Arc<OpenFile>> {
        fh.and_then(|h| self.file_handle(h).ok()).or_else(|| {
            self.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&ino)
                .and_then(Weak::upgrade)
        })
    }

    /// The shared open state of a file. Every open unwraps the data key
    /// through the KMS, even when another handle already holds it: that is
    /// the access check (key state, and policies later) and the audit record
    /// naming the opening process. The unwrapped key is then used only if no
    /// handle has one yet.
    fn open_file(&self, ino: u64, rel: &str, caller: &Caller) -> FsResult<Arc<OpenFile>> {
        let existing = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .and_then(Weak::upgrade);
        if let Some(f) = existing {
            // The check and the record, through the descriptor already open.
            let cf = f.io.read().unwrap_or_else(|e| e.into_inner());
            self.b.unwrap_file(&cf.fd, rel, caller)?;
            drop(cf);
            return Ok(f);
        }
        let cf = self.b.open_crypt(rel, caller)?;
        Ok(self.publish(ino, cf))
    }

    /// `open_file` for a writer: the shared descriptor is made read-write
    /// if it was opened read-only (while the cipherdir's filesystem refused
    /// writes), or the open fails with that filesystem's errno (EROFS), not
    /// every later write with EBADF.
    fn open_for_writing(&self, ino: u64, rel: &str, caller: &Caller) -> FsResult<Arc<OpenFile>> {
        let f = self.open_file(ino, rel, caller)?;
        let twin = {
            let cf = f.io.read().unwrap_or_else(|e| e.into_inner());
            self.b.writable_twin(rel, &cf.fd)?
        };
        if let Some(fd) = twin {
            f.io.write().unwrap_or_else(|e| e.into_inner()).fd = fd;
        }
        Ok(f)
    }

    fn publish(&self, ino: u64, cf: CryptFile) -> Arc<OpenFile> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = open.get(&ino).and_then(Weak::upgrade) {
            return f; // another thread won the race; our copy is dropped and wiped
        }
        let f = Arc::new(OpenFile {
            io: RwLock::new(cf),
        });
        open.insert(ino, Arc::downgrade(&f));
        f
    }

    /// Truncation to zero (O_TRUNC, `> file`): an overwrite. The file gets a
    /// new data key and file id, which needs kms:GenerateDataKey rather than
    /// Decrypt; handles open on it switch to the new key.
    fn overwrite(&self, ino: u64, rel: &str, caller: &Caller) -> FsResult<()> {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino)
            .and_then(Weak::upgrade);
        let fd = self.b.open_rw(rel)?;
        match open {
            Some(f) => {
                let mut cf = f.io.write().unwrap_or_else(|e| e.into_inner());
                *cf = self.b.rekey_file(fd, rel, caller)?;
            }
            None => {
                self.b.rekey_file(fd, rel, caller)?;
            }
        }
        Ok(())
    }

    /// unlink and rmdir: remove the backing name, then detach the node.
    fn remove(
        &self,
        parent: INodeNo,
        name: &OsStr,
        op: impl FnOnce(&str) -> io::Result<()>,
        reply: ReplyEmpty,
    ) {
        let r = self.child(parent, name).and_then(|(rel, _)| {
            op(&rel).map_err(|e| io_errno(&e))?;
            self.inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unlink(&rel);
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Answers a call that made a node (mkdir, mknod, symlink).
    fn reply_entry(&self, r: Result<(FileAttr, u64), Errno>, reply: ReplyEntry) {
        match r {
            Ok((attr, _)) => reply.entry(&self.opts.attr_ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn create_file(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
    ) -> Result<(u64, Arc<OpenFile>, Metadata), Errno> {
        let pp = self.path(parent)?;
        let n = user_name(&pp, name)?;
        // Under the claim, no directory rename can walk past this file
        // before it has its key for this path.
        let (rel, _, _claim) = self.claimed_child(parent, &n)?;
        let (made, inherit) = self.creation_mode(&pp, mode, umask);
        let fd = self
            .b
            .tree
            .create_new(&rel, made & 0o7777)
            .map_err(|e| io_errno(&e))?;
        // A crash before the header is written leaves an empty file, which
        // the next open repairs (Backing::repair_empty): cheaper than making
        // every file unnamed first (O_TMPFILE and linkat cost ~45 us a file
        // on ext4 here, a third more on untar).
        let caller = Self::caller(req);
        let (key, id) = match self.b.init_file(&fd, &rel, &caller) {
            Ok(k) => k,
            Err(e) => {
                let _ = self.b.tree.unlink(&rel);
                return Err(self.fs_errno("create", &rel, e));
            }
        };
        if let Some(d) = &inherit {
            self.inherit_acl(&rel, d, mode);
        }
        let mut m = fd.metadata().map_err(|e| io_errno(&e))?;
        if self.as_root && (NodeStat::uid(&m), NodeStat::gid(&m)) != (req.uid(), req.gid()) {
            self.own(&rel, req).map_err(|e| io_errno(&e))?;
            m = fd.metadata().map_err(|e| io_errno(&e))?;
        }
        let ino = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .lookup(&rel);
        if inherit.is_none() {
            self.set_bare(ino, true);
        }
        let f = self.publish(ino, CryptFile::new(fd, self.b.hs, id, &key));
        Ok((ino, f, m))
    }

    /// Creates a special node stored as an encrypted regular file: a device
    /// (`shown` = its type and number) or a long symlink (S_IFLNK and its
    /// target's length), `payload` its plaintext and `len` its backing
    /// length. Nothing is left behind if writing it fails.
    #[allow(clippy::too_many_arguments)]
    fn make_special(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        perm: u32,
        umask: u32,
        shown: (u32, u64),
        payload: &[u8],
        len: u64,
    ) -> Result<(u64, libc::stat), Errno> {
        let (ino, f, _) = self.create_file(req, parent, name, perm | libc::S_IFREG, umask)?;
        let rel = self.path(INodeNo(ino))?;
        let cf = f.io.read().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.b.write_special(&cf, payload, len) {
            drop(cf);
            let _ = self.b.tree.unlink(&rel);
            self.inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .forget(ino, 1);
            let what = if shown.0 == libc::S_IFLNK {
                "symlink"
            } else {
                "mknod"
            };
            return Err(self.fs_errno(what, &rel, e.into()));
        }
        let mut st = stat::fstat(&cf.fd).map_err(|e| io_errno(&e))?;
        self.devices.put(&st, shown.0, shown.1);
        show_special(&mut st, shown.0, shown.1);
        Ok((ino, st))
    }
}

impl KmsFs {
    fn is_bare(&self, ino: u64) -> bool {
        self.bare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&ino)
    }

    fn set_bare(&self, ino: u64, bare: bool) {
        let mut b = self.bare.lock().unwrap_or_else(|e| e.into_inner());
        if bare {
            b.insert(ino);
        } else {
            b.remove(&ino);
        }
    }

    /// Runs `f` on a descriptor of node `ino` that holds its extended
    /// attributes: the open file's own when there is one (no path walk:
    /// the kernel asks for security.capability before every write), else
    /// one opened beneath the cipherdir.
    fn with_xattr_node<T>(
        &self,
        ino: INodeNo,
        what: &str,
        f: impl FnOnce(&std::fs::File, bool) -> FsResult<T>,
    ) -> Result<T, Errno> {
        let open = self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ino.0)
            .and_then(Weak::upgrade);
        let r = match open {
            Some(of) => {
                let cf = of.io.read().unwrap_or_else(|e| e.into_inner());
                f(&cf.fd, false)
            }
            None => {
                let rel = self.path(ino)?;
                let (fd, dir) = self.b.xattr_node(&rel).map_err(|e| io_errno(&e))?;
                f(&fd, dir)
            }
        };
        r.map_err(|e| {
            let rel = self.path(ino).unwrap_or_default();
            self.fs_errno(what, &rel, e)
        })
    }
}

/// Answers getxattr or listxattr as the kernel asks: the size alone, the
/// bytes, or ERANGE when they do not fit.
fn reply_xattr(reply: ReplyXattr, bytes: &[u8], size: u32) {
    if size == 0 {
        reply.size(bytes.len() as u32)
    } else if bytes.len() > size as usize {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(bytes)
    }
}

impl Filesystem for KmsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // In the process that serves, after any fork (tree/reaper.rs).
        self.b.tree.close_behind();
        if self.opts.prefetch {
            self.b.tree.read_ahead();
        }
        let _ = config.set_max_write(MAX_READ as u32);
        let _ = config.set_max_readahead(MAX_READ as u32);
        let _ = config.add_capabilities(
            fuser::InitFlags::FUSE_DO_READDIRPLUS
                | fuser::InitFlags::FUSE_PARALLEL_DIROPS
                | fuser::InitFlags::FUSE_MAX_PAGES
                // Set-id bits are cleared here (see setattr): one GETATTR
                // less per chown, which tar and rsync do for every file.
                | fuser::InitFlags::FUSE_HANDLE_KILLPRIV
                // See opendir.
                | fuser::InitFlags::FUSE_NO_OPENDIR_SUPPORT,
        );
        if self.opts.posix_acl {
            // The kernel enforces ACLs; the daemon keeps them and applies
            // the umask itself (none where a default ACL is inherited).
            let _ = config.add_capabilities(
                fuser::InitFlags::FUSE_POSIX_ACL | fuser::InitFlags::FUSE_DONT_MASK,
            );
        }
        if self.opts.writeback_cache && !self.opts.read_only {
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_WRITEBACK_CACHE);
        }
        if self.opts.io_uring {
            // Refused (Err) when the kernel does not offer it: /dev/fuse.
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_OVER_IO_URING);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        // Every unlinked file's space back before the flush (tree/reaper.rs).
        self.b.tree.settle();
        if let Err(e) = self.b.tree.syncfs() {
            crate::log_line!("kmsfs: flushing the cipherdir at unmount: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.opts.activity.touch();
        let r = name.to_str().ok_or(Errno::ENOENT).and_then(|n| {
            let (rel, pp, _claim) = self.claimed_child(parent, n)?;
            if !visible(&pp, n) {
                return Err(Errno::ENOENT);
            }
            self.entry_for(&rel)
        });
        match r {
            Ok((attr, _)) => reply.entry(&self.opts.attr_ttl, &attr, Generation(0)),
            // A negative entry (node id 0) the kernel may cache: names are only
            // created through this mount, which invalidates it.
            Err(e) if e == Errno::ENOENT => {
                let attr = FileAttr {
                    ino: INodeNo(0),
                    ..self.attr(0, &self.root_meta)
                };
                reply.entry(&self.opts.attr_ttl, &attr, Generation(0))
            }
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let gone = self
            .inodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(ino.0, nlookup);
        if gone {
            self.cached
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ino.0);
            self.set_bare(ino.0, false);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.opts.activity.touch();
        let r = match self.path(ino) {
            Ok(p) => self.stat(&p),
            // Unlinked while open: fstat(2) still answers, and the kernel asks
            // before reading past the size it knows.
            Err(e) => match self.open_handle(ino.0, fh) {
                Some(f) => {
                    let cf = f.io.read().unwrap_or_else(|e| e.into_inner());
                    stat::fstat(&cf.fd).map_err(|e| io_errno(&e))
                }
                None => Err(e),
            },
        };
        match r {
            Ok(m) => reply.attr(&self.opts.attr_ttl, &self.attr(ino.0, &m)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.opts.activity.touch();
        // A truncation turns the path into a key (a new one at zero): it
        // holds a claim on it, so no rename moves the file meanwhile.
        let claimed = if size.is_some() {
            self.claimed_path(ino).ok()
        } else {
            None
        };
        let path = match &claimed {
            Some((p, _)) => Ok(p.clone()),
            None => self.path(ino),
        };
        // The node by its name; a file unlinked while open, through its open
        // descriptor (fchmod, ftruncate, futimens and fsync's time update).
        let dup_of = |f: &Arc<OpenFile>| {
            f.io.read()
                .unwrap_or_else(|e| e.into_inner())
                .fd
                .try_clone()
        };
        let (node, target) = match path {
            // Through an open descriptor of the node, the change needs no path
            // walk at all; by name otherwise. The kernel names the handle only
            // for ftruncate: fchmod, fchown and futimens (tar and rsync set
            // every file's attributes so, three SETATTRs a file) come without
            // one, so any handle open on the inode serves, as for an unlinked
            // file below. The descriptor is the inode the caller holds open,
            // whatever its name became since.
            Ok(p) => match self.open_handle(ino.0, fh) {
                Some(f) => match dup_of(&f) {
                    Ok(d) => (Node::Named(p), Target::Open(d)),
                    Err(e) => return reply.error(io_errno(&e)),
                },
                None => match self.b.tree.open_file(&p, libc::O_PATH) {
                    Ok(n) => (Node::Named(p), Target::Node(n)),
                    Err(e) => return reply.error(io_errno(&e)),
                },
            },
            Err(e) => match self.open_handle(ino.0, fh) {
                Some(f) => match dup_of(&f) {
                    Ok(d) => (Node::Unlinked(f), Target::Open(d)),
                    Err(e) => return reply.error(io_errno(&e)),
                },
                None => return reply.error(e),
            },
        };
        // With FUSE_HANDLE_KILLPRIV the kernel leaves clearing set-id bits to
        // us (and skips a GETATTR before every chown). It asks with a setattr
        // that sets nothing (a write by a process without CAP_FSETID) or with
        // a truncation; chown clears them in the backing filesystem itself.
        let nothing = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none()
            && ctime.is_none();
        let kill_setid = nothing || (size.is_some() && req.uid() != 0);
        let t = &self.b.tree;
        let r = (|| -> Result<(), Errno> {
            if ino == INodeNo(inode::ROOT) && (mode.is_some() || uid.is_some() || gid.is_some()) {
                return self.set_root_attr(mode, uid, gid);
            }
            if kill_setid {
                clear_setid(t, &target, req).map_err(|e| io_errno(&e))?;
            }
            if let Some(m) = mode {
                target.chmod(t, m).map_err(|e| io_errno(&e))?;
                self.chmod_acl(ino, m)?;
            }
            if uid.is_some() || gid.is_some() {
                target.chown(t, uid, gid).map_err(|e| io_errno(&e))?;
            }
            if let Some(sz) = size {
                self.changed(ino.0);
                let truncate = match &node {
                    // A named file truncated to zero gets a new data key; one
                    // unlinked while open keeps its key (no one can open it
                    // again).
                    Node::Named(rel) if sz == 0 => {
                        self.overwrite(ino.0, rel, &Self::caller(req))
                            .map_err(|e| self.fs_errno("truncate", rel, e))?;
                        None
                    }
                    // Through a handle opened for writing (checked then), or
                    // by name: checked here as a write.
                    Node::Named(rel) => match fh.and_then(|h| self.file_handle(h).ok()) {
                        Some(f) => Some((f, rel.as_str())),
                        None => {
                            let caller = Self::caller(req);
                            let opened = self
                                .b
                                .check_write(rel, &caller)
                                .and_then(|()| self.open_for_writing(ino.0, rel, &caller))
                                .map_err(|e| self.fs_errno("truncate", rel, e))?;
                            Some((opened, rel.as_str()))
                        }
                    },
                    Node::Unlinked(f) => Some((f.clone(), "(unlinked)")),
                };
                if let Some((f, name)) = truncate {
                    let cf = f.io.write().unwrap_or_else(|e| e.into_inner());
                    self.after_crash_tail(ino.0, &cf, || cf.truncate(sz))
                        .map_err(|e| self.fs_errno("truncate", name, e.into()))?;
                }
            }
            if atime.is_some() || mtime.is_some() {
                target
                    .set_times(t, &utimens(atime, mtime))
                    .map_err(|e| io_errno(&e))?;
            }
            Ok(())
        })();
        if let Err(e) = r {
            return reply.error(e);
        }
        match target.stat(t) {
            Ok(mut m) => {
                if let Node::Named(rel) = &node {
                    self.as_special(rel, &mut m);
                }
                reply.attr(&self.opts.attr_ttl, &self.attr(ino.0, &m))
            }
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.opts.activity.touch();
        let (rel, _claim) = match self.claimed_path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let caller = Self::caller(req);
        let stored = match self.b.tree.readlink(&rel) {
            Ok(s) => s,
            // Not a backing symlink: a long one is a regular file.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return match self.b.read_long_symlink(&rel, &caller) {
                    Ok(Some(t)) => reply.data(&t),
                    Ok(None) => reply.error(Errno::EINVAL),
                    Err(e) => reply.error(self.fs_errno("readlink", &rel, e)),
                };
            }
            Err(e) => return reply.error(io_errno(&e)),
        };
        match self.b.decrypt_symlink(&rel, &stored, &caller) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(self.fs_errno("readlink", &rel, e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.opts.activity.touch();
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFREG {
            return match self.create_file(req, parent, name, mode, umask) {
                // create_file counted the lookup this reply stands for.
                Ok((ino, _, m)) => {
                    reply.entry(&self.opts.attr_ttl, &self.attr(ino, &m), Generation(0))
                }
                Err(e) => reply.error(e),
            };
        }
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            // Stored as an encrypted regular file (devnode.rs): the
            // cipherdir never holds a node that opens a device. (The kernel
            // has checked CAP_MKNOD.)
            let rdev = u64::from(rdev);
            let payload = devnode::encode(kind, rdev);
            let len = devnode::backing_len(self.b.hs);
            let r = self.make_special(
                req,
                parent,
                name,
                mode & 0o7777,
                umask,
                (kind, rdev),
                &payload,
                len,
            );
            return match r {
                // create_file counted the lookup this reply stands for.
                Ok((ino, st)) => {
                    reply.entry(&self.opts.attr_ttl, &self.attr(ino, &st), Generation(0))
                }
                Err(e) => reply.error(e),
            };
        }
        if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
            return reply.error(Errno::EINVAL);
        }
        let r = (|| {
            let pp = self.path(parent)?;
            let rel = inode::join(&pp, &user_name(&pp, name)?);
            // The mode a default ACL gives; the ACL itself is not kept on
            // FIFOs and sockets (the backing filesystem refuses the user
            // attributes it would be stored in).
            let (made, _) = self.creation_mode(&pp, mode, umask);
            self.b
                .tree
                .mknod(&rel, made, u64::from(rdev))
                .map_err(|e| io_errno(&e))?;
            self.own(&rel, req).map_err(|e| io_errno(&e))?;
            self.entry_for(&rel)
        })();
        self.reply_entry(r, reply)
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        self.opts.activity.touch();
        let r = (|| {
            let pp = self.path(parent)?;
            let rel = inode::join(&pp, &user_name(&pp, name)?);
            let (made, inherit) = self.creation_mode(&pp, mode | libc::S_IFDIR, umask);
            self.b
                .tree
                .mkdir(&rel, made & 0o7777)
                .map_err(|e| io_errno(&e))?;
            self.own(&rel, req).map_err(|e| io_errno(&e))?;
            if let Some(d) = &inherit {
                self.inherit_acl(&rel, d, mode);
            }
            let (attr, ino) = self.entry_for(&rel)?;
            if inherit.is_none() {
                self.set_bare(ino, true);
            }
            Ok((attr, ino))
        })();
        self.reply_entry(r, reply)
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.opts.activity.touch();
        self.remove(
            parent,
            name,
            |p| {
                // A file with other names keeps them: this name's hard-link
                // entry goes with it (after the name, so a crash leaves an
                // unused entry, never a name without one).
                let linked = self.b.tree.unlink_inspected(p, |st| {
                    (st.st_nlink > 1 && st.st_mode & libc::S_IFMT == libc::S_IFREG)
                        .then(|| self.b.open_update(p).ok())
                        .flatten()
                })?;
                if let Some(fd) = linked {
                    self.b.forget_name(&fd, p);
                }
                Ok(())
            },
            reply,
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.opts.activity.touch();
        self.remove(parent, name, |p| self.b.tree.rmdir(p), reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.opts.activity.touch();
        let target = target.as_os_str().as_bytes();
        if target.len() > symlink::MAX_TARGET {
            // Too long for a backing symlink once encrypted: stored as an
            // encrypted regular file (longlink.rs).
            if target.len() > longlink::MAX_TARGET {
                return reply.error(Errno::ENAMETOOLONG);
            }
            let shown = (libc::S_IFLNK, target.len() as u64);
            let payload = longlink::encode(target);
            let len = longlink::backing_len(self.b.hs);
            let r = self.make_special(req, parent, link_name, 0o600, 0, shown, &payload, len);
            return match r {
                Ok((ino, st)) => {
                    reply.entry(&self.opts.attr_ttl, &self.attr(ino, &st), Generation(0))
                }
                Err(e) => reply.error(e),
            };
        }
        let r = (|| {
            let pp = self.path(parent)?;
            let n = user_name(&pp, link_name)?;
            let (rel, _, _claim) = self.claimed_child(parent, &n)?;
            let enc = self
                .b
                .encrypt_symlink(&rel, target, &Self::caller(req))
                .map_err(|e| self.fs_errno("symlink", &rel, e))?;
            self.b
                .tree
                .symlink(enc.as_bytes(), &rel)
                .map_err(|e| io_errno(&e))?;
            self.own(&rel, req).map_err(|e| io_errno(&e))?;
            self.entry_for(&rel)
        })();
        self.reply_entry(r, reply)
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.opts.activity.touch();
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            // Whiteouts are for overlayfs over a native filesystem.
            return reply.error(Errno::EINVAL);
        }
        let exchange = flags.contains(RenameFlags::RENAME_EXCHANGE);
        let r = (|| {
            // Waits only for claims whose paths overlap these; the paths
            // are looked up again once it holds them (a rename it waited for
            // may have moved a parent).
            let (from, to, _claim) = loop {
                let (from, _) = self.child(parent, name)?;
                let np = self.path(newparent)?;
                let to = inode::join(&np, &user_name(&np, newname)?);
                if from == to {
                    return Ok(());
                }
                let claim = self.renames.claim(&from, &to);
                if self.child(parent, name)?.0 == from && self.path(newparent)? == np {
                    break (from, to, claim);
                }
            };
            let m = self.stat(&from)?;
            let caller = Self::caller(req);
            if exchange {
                super::exchange::exchange(&self.b, &from, &to, &caller)
                    .map_err(|e| self.fs_errno("rename (exchange)", &from, e))?;
                self.inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .exchange(&from, &to);
                return Ok(());
            }
            let res = match stat::kind(m.st_mode) {
                FileType::Directory => {
                    rename::rename_dir(&self.b, &from, &to, flags.bits(), &caller)
                }
                // A device node is a regular file in the cipherdir, keyed
                // like one.
                FileType::RegularFile | FileType::CharDevice | FileType::BlockDevice => {
                    rename::rename_file(&self.b, &from, &to, flags.bits(), &caller)
                }
                // A long symlink is a regular file in the cipherdir.
                FileType::Symlink
                    if self.b.tree.lstat(&from)?.st_mode & libc::S_IFMT == libc::S_IFREG =>
                {
                    rename::rename_file(&self.b, &from, &to, flags.bits(), &caller)
                }
                FileType::Symlink => {
                    rename::rename_symlink(&self.b, &from, &to, flags.bits(), &caller)
                }
                _ => self
                    .b
                    .tree
                    .rename(&from, &to, flags.bits())
                    .map_err(FsError::from),
            };
            res.map_err(|e| self.fs_errno("rename", &from, e))?;
            self.inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rename(&from, &to);
            Ok(())
        })();
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.opts.activity.touch();
        let r = (|| {
            // Both names claimed at once, as a rename claims them (two
            // shared claims taken one after the other could wait on a
            // rename that waits on the first): no rename moves either
            // meanwhile.
            let (from, to, _claim) = loop {
                let from = self.path(ino)?;
                let np = self.path(newparent)?;
                let to = inode::join(&np, &user_name(&np, newname)?);
                let claim = self.renames.claim(&from, &to);
                if self.path(ino)? == from && self.path(newparent)? == np {
                    break (from, to, claim);
                }
            };
            let st = self.b.tree.lstat(&from).map_err(|e| io_errno(&e))?;
            match st.st_mode & libc::S_IFMT {
                // The new name gets its own wrapped key (hardlink.rs).
                libc::S_IFREG => self
                    .b
                    .link_file(&from, &to, &Self::caller(req))
                    .map_err(|e| self.fs_errno("link", &from, e))?,
                // No key: the name is all there is.
                libc::S_IFIFO | libc::S_IFSOCK => {
                    self.b.tree.link(&from, &to).map_err(|e| io_errno(&e))?
                }
                // A symlink's target is encrypted for its one path.
                _ => return Err(Errno::EPERM),
            }
            let m = self.stat(&to)?;
            self.changed(ino.0);
            self.inodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .add_link(ino.0, &to, (m.st_dev, m.st_ino));
            Ok(self.attr(ino.0, &m))
        })();
        match r {
            Ok(attr) => reply.entry(&self.opts.attr_ttl, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        // The kernel sends open only for regular files; a symlink or a
        // directory swapped in behind its back fails in open_rw (O_NOFOLLOW,
        // O_RDWR) without a separate lstat here.
        let write = flags.acc_mode() != fuser::OpenAccMode::O_RDONLY;
        let uid = match self.take_share(req) {
            Ok(u) => u,
            Err(e) => return reply.error(e),
        };
        let r = self.claimed_path(ino).and_then(|(rel, _claim)| {
            let caller = Self::caller(req);
            if write {
                // Writing needs what creating needs (kms:GenerateDataKey);
                // reading alone, kms:Decrypt.
                self.b
                    .check_write(&rel, &caller)
                    .map_err(|e| self.fs_errno("open for writing", &rel, e))?;
            }
            let f = if write {
                self.open_for_writing(ino.0, &rel, &caller)
                    .map_err(|e| self.fs_errno("open for writing", &rel, e))
            } else {
                self.open_file(ino.0, &rel, &caller)
                    .map_err(|e| self.fs_errno("open", &rel, e))
            }?;
            if let Some(ra) = &self.readahead {
                ra.opened(&rel);
            }
            self.b.tree.opened(&rel);
            Ok(f)
        });
        match r {
            Ok(f) => {
                let flags = if self.keep_cache(ino.0, &f) {
                    FopenFlags::FOPEN_KEEP_CACHE
                } else {
                    FopenFlags::empty()
                };
                reply.opened(FileHandle(self.new_fh(f, uid)), flags)
            }
            Err(e) => {
                self.budget.give_back(uid);
                reply.error(e)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let f = match self.file_handle(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        thread_local! {
            // Plaintext: zeroized when the thread ends, and sized for the
            // largest read (max_read, plus a partial block each side) so it
            // never reallocates and leaves an unzeroized copy behind.
            static READ_BUF: std::cell::RefCell<zeroize::Zeroizing<Vec<u8>>> =
                std::cell::RefCell::new(zeroize::Zeroizing::new(Vec::with_capacity(
                    ((MAX_READ / format::BLOCK_SIZE) + 2) * format::DISK_BLOCK,
                )));
        }
        let cf = f.io.read().unwrap_or_else(|e| e.into_inner());
        // Decrypted into a per-thread buffer and sent from there: no
        // allocation or copy per request.
        let res = READ_BUF.with(move |b| {
            let mut b = b.borrow_mut();
            match self.after_crash_tail(ino.0, &cf, || cf.read_into(offset, size as usize, &mut b))
            {
                Ok(r) => {
                    reply.data(&b[r]);
                    Ok(())
                }
                Err(e) => Err((e, reply)),
            }
        });
        if let Err((e, reply)) = res {
            let rel = self.path(ino).unwrap_or_default();
            reply.error(self.fs_errno("read", &rel, e.into()))
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let f = match self.file_handle(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let cf = f.io.write().unwrap_or_else(|e| e.into_inner());
        self.changed(ino.0);
        let write = || self.b.tree.with_space(|| cf.write_at(offset, data));
        match self.after_crash_tail(ino.0, &cf, write) {
            Ok(n) => reply.written(n as u32),
            Err(e) => {
                let rel = self.path(ino).unwrap_or_default();
                reply.error(self.fs_errno("write", &rel, e.into()))
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is buffered here: writes reach the backing file as they
        // come. ENOSYS makes the kernel stop sending flush on every close (it
        // still writes back its dirty pages and reports their errors first),
        // one round trip less per file.
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.drop_handle(ino.0, fh);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.file_handle(fh).and_then(|f| {
            let cf = f.io.read().unwrap_or_else(|e| e.into_inner());
            let res = if datasync {
                cf.fd.sync_data()
            } else {
                cf.fd.sync_all()
            };
            res.map_err(|e| {
                let rel = self.path(ino).unwrap_or_default();
                self.fs_errno("fsync", &rel, e.into())
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.opts.activity.touch();
        // Listings are read straight from the backing directory at the
        // positions the kernel passes (listing.rs), so there is nothing to
        // open: ENOSYS with FUSE_NO_OPENDIR_SUPPORT makes the kernel stop
        // sending opendir and releasedir, two round trips per directory read.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.opts.activity.touch();
        let rel = match self.path(ino) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let dir = match self.b.tree.open_dir(&rel) {
            Ok(d) => d,
            Err(e) => return reply.error(io_errno(&e)),
        };
        let r = self.b.tree.read_dir(&rel, &dir, offset, |e, _| {
            if !visible(&rel, e.name)
                || matches!(e.kind, FileType::BlockDevice | FileType::CharDevice)
            {
                return false;
            }
            let n = self
                .dot_ino(e.name, ino, &rel)
                .unwrap_or_else(|| self.peek_or_hash(&inode::join(&rel, e.name)));
            reply.add(INodeNo(n), e.next, e.kind, e.name)
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.opts.activity.touch();
        // Under a claim: the entries it counts as looked up get paths that a
        // rename in between could not make stale.
        let (rel, _claim) = match self.claimed_path(ino) {
            Ok(r) => r,
            Err(e) => return reply.error(e),
        };
        let dir = match self.b.tree.open_dir(&rel) {
            Ok(d) => d,
            Err(e) => return reply.error(io_errno(&e)),
        };
        let r = self.b.tree.read_dir(&rel, &dir, offset, |e, dir| {
            if !visible(&rel, e.name) {
                return false;
            }
            let Ok(mut m) = stat::lstat_at(dir, e.raw) else {
                return false;
            };
            if foreign(m.st_mode) {
                return false;
            }
            self.as_special(&inode::join(&rel, e.name), &mut m);
            // A child's entry counts a lookup; the dots' do not.
            let (n, counted) = match self.dot_ino(e.name, ino, &rel) {
                Some(n) => (n, false),
                None => (self.count_lookup(&inode::join(&rel, e.name), &m), true),
            };
            let attr = self.attr(n, &m);
            let full = reply.add(
                INodeNo(n),
                e.next,
                e.name,
                &self.opts.attr_ttl,
                &attr,
                Generation(0),
            );
            if full && counted {
                // Not sent: the kernel will not count this lookup.
                self.inodes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .forget(n, 1);
            }
            full
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(io_errno(&e)),
        }
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self
            .path(ino)
            .and_then(|p| self.b.tree.fsync_dir(&p).map_err(|e| io_errno(&e)))
        {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = match self.b.tree.statvfs() {
            Ok(s) => s,
            Err(e) => return reply.error(io_errno(&e)),
        };
        reply.statfs(
            s.f_blocks,
            s.f_bfree,
            s.f_bavail,
            s.f_files,
            s.f_ffree,
            s.f_bsize as u32,
            255,
            s.f_frsize as u32,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        if !self.opts.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let Some(name) = name.to_str() else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        self.set_bare(ino.0, false);
        let r = self.with_xattr_node(ino, "setxattr", |fd, dir| {
            if name == super::acl::ACCESS || name == super::acl::DEFAULT {
                self.set_acl(fd, dir, name, value)
            } else {
                self.b.xattr_set(fd, dir, name, value, flags)
            }
        });
        match r {
            Ok(()) => {
                self.changed(ino.0);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        if !self.opts.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        if self.is_bare(ino.0) {
            return reply.error(Errno::ENODATA);
        }
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENODATA);
        };
        let r = self.with_xattr_node(ino, "getxattr", |fd, dir| {
            let v = self.b.xattr_get(fd, dir, name);
            if matches!(&v, Err(e) if e.errno() == libc::ENODATA) && !self.b.has_xattrs(fd) {
                self.set_bare(ino.0, true);
            }
            v
        });
        match r {
            Ok(v) => reply_xattr(reply, &v, size),
            // Symlinks, FIFOs and sockets hold none.
            Err(e) if e == Errno::EPERM => reply.error(Errno::ENODATA),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        if !self.opts.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        if self.is_bare(ino.0) {
            return reply_xattr(reply, &[], size);
        }
        let r = self.with_xattr_node(ino, "listxattr", |fd, dir| {
            self.b.xattr_list(fd, dir, &format!("inode {}", ino.0))
        });
        match r {
            Ok(names) => {
                // As ext4 does: trusted.* only for the privileged.
                let shown = names
                    .iter()
                    .filter(|n| req.uid() == 0 || !n.starts_with("trusted."))
                    .map(String::as_str);
                reply_xattr(reply, &super::xattr::list_bytes(shown), size)
            }
            Err(e) if e == Errno::EPERM => reply_xattr(reply, &[], size),
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if !self.opts.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENODATA);
        };
        let r = self.with_xattr_node(ino, "removexattr", |fd, _| self.b.xattr_remove(fd, name));
        match r {
            Ok(()) => {
                self.changed(ino.0);
                reply.ok()
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        // With allow_other the kernel checks mode bits (default_permissions)
        // and never asks. Otherwise the caller is the mounting user, as the
        // daemon is: the backing file answers for it.
        let r = self.path(ino).and_then(|rel| {
            self.b
                .tree
                .access(&rel, mask.bits())
                .map_err(|e| io_errno(&e))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let uid = match self.take_share(req) {
            Ok(u) => u,
            Err(e) => return reply.error(e),
        };
        match self.create_file(req, parent, name, mode, umask) {
            Ok((ino, f, m)) => {
                let fh = self.new_fh(f, uid);
                reply.created(
                    &self.opts.attr_ttl,
                    &self.attr(ino, &m),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                )
            }
            Err(e) => {
                self.budget.give_back(uid);
                reply.error(e)
            }
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // The kernel sends it only on a handle opened for writing.
        let f = match self.file_handle(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let cf = f.io.write().unwrap_or_else(|e| e.into_inner());
        self.changed(ino.0);
        let allocate = || self.b.tree.with_space(|| cf.allocate(offset, length, mode));
        match self.after_crash_tail(ino.0, &cf, allocate) {
            Ok(()) => reply.ok(),
            Err(e) => {
                let rel = self.path(ino).unwrap_or_default();
                reply.error(self.fs_errno("fallocate", &rel, e.into()))
            }
        }
    }
}

/// Clears the set-id bits of a regular file as the kernel does when an
/// unprivileged process writes to or truncates it: set-user-id always,
/// set-group-id when group execute is set or the writer is not in the
/// file's group.
fn clear_setid(tree: &super::tree::Tree, t: &Target, req: &Request) -> io::Result<()> {
    let m = t.stat(tree)?;
    if m.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Ok(());
    }
    let gid = NodeStat::gid(&m);
    let in_group =
        || gid == req.gid() || crate::kms::caller::supplementary_groups(req.pid()).contains(&gid);
    match node::setid_cleared(NodeStat::mode(&m), in_group) {
        Some(new) => t.chmod(tree, new),
        None => Ok(()),
    }
}

/// The times a setattr asks for, as utimensat(2) and futimens(2) take them.
fn utimens(atime: Option<TimeOrNow>, mtime: Option<TimeOrNow>) -> [libc::timespec; 2] {
    let ts = |t: Option<TimeOrNow>| match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
            libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            }
        }
    };
    [ts(atime), ts(mtime)]
}

/// Node kinds kmsfs never creates in the cipherdir (see `mknod`).
fn foreign(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFBLK | libc::S_IFCHR)
}

/// FNV-1a: a stable 64-bit number for a path.
fn fxhash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::visible;

    #[test]
    fn reserved_names_are_hidden() {
        for n in [
            "kmsfs.conf",
            ".kmsfs.lock",
            ".kmsfs.journal",
            "..kmsfs.journal.tmp-12",
            ".kmsfs.conf.tmp-9",
            ".kmsfs-link-3",
        ] {
            assert!(!visible("", n), "{n}");
        }
        assert!(!visible("a/b", ".kmsfs-rewrap.x"));
        for n in ["normal", ".hidden", "kmsfs.conf2", ".kmsfsx"] {
            assert!(visible("", n), "{n}");
        }
        assert!(visible("sub", "kmsfs.conf"));
    }
}
