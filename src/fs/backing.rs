//! The cipherdir and the key operations on its files: creating a file's
//! header with a new data key, unwrapping it for the file's path, re-wrapping
//! it for a new path, and encrypting symlink targets.

use super::config::Config;
use super::cryptfile::{self, CryptFile, integrity_error};
use super::format::{self, Slot};
use super::hardlink::Written;
use super::keys::{KeyBackend, Purpose, file_context};
use super::symlink;
use super::tree::Tree;
use crate::crypto::Key256;
use crate::kms::{Caller, ErrorCode, KmsError};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Prefix of temporary names kmsfs uses inside the cipherdir; hidden from the
/// mount and refused as user names.
pub const TEMP_PREFIX: &str = ".kmsfs-";

/// How much of a file an open asks the kernel to read ahead (the header and
/// the first 32 blocks): a whole small file, one request.
pub(crate) const PREFETCH_ON_OPEN: i64 = 128 << 10;

pub struct Backing {
    pub tree: Tree,
    /// The config as mounted: the filesystem id, header size and flags,
    /// which never change under a mount.
    pub cfg: Config,
    /// The config as `kmsfs.conf` holds it now: an online rewrap moves its
    /// key (new data keys are made under it from then on), name key blob and
    /// seal while the mount serves.
    saved: std::sync::Mutex<Config>,
    pub hs: usize,
    pub kms: Arc<dyn KeyBackend>,
    /// Serialises the repair of files a crash left without a header.
    repair: std::sync::Mutex<()>,
    /// The extended attributes' keys (xattr_store.rs).
    pub(super) xattr: super::xattr_store::XattrSecret,
}

/// A failure that is either an I/O error or a KMS refusal; turned into an
/// errno at the FUSE edge (EIO for integrity, EACCES for refusals).
#[derive(Debug)]
pub enum FsError {
    Io(io::Error),
    Kms(KmsError),
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(e)
    }
}

impl From<KmsError> for FsError {
    fn from(e: KmsError) -> Self {
        FsError::Kms(e)
    }
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsError::Io(e) => write!(f, "{e}"),
            FsError::Kms(e) => write!(f, "{e}"),
        }
    }
}

impl FsError {
    pub fn errno(&self) -> i32 {
        match self {
            FsError::Io(e) if e.kind() == io::ErrorKind::InvalidData => libc::EIO,
            FsError::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            FsError::Kms(e) => match e.code {
                ErrorCode::DisabledException
                | ErrorCode::KMSInvalidStateException
                | ErrorCode::AccessDeniedException => libc::EACCES,
                _ => libc::EIO,
            },
        }
    }
}

pub type FsResult<T> = Result<T, FsError>;

impl Backing {
    pub fn new(tree: Tree, cfg: Config, kms: Arc<dyn KeyBackend>) -> Self {
        let hs = cfg.header_size as usize;
        Backing {
            tree,
            saved: std::sync::Mutex::new(cfg.clone()),
            cfg,
            hs,
            kms,
            repair: std::sync::Mutex::new(()),
            xattr: Default::default(),
        }
    }

    /// The CMK new data keys are made under (the config's, moved by rewrap).
    pub fn key_id(&self) -> String {
        self.saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .key_id
            .clone()
    }

    /// Changes the config (`f` returns it saved), one change at a time;
    /// what it saved is the config from then on.
    pub fn update_config<T>(
        &self,
        f: impl FnOnce(&Config) -> Result<(Config, T), String>,
    ) -> Result<T, String> {
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        let (new, t) = f(&saved)?;
        *saved = new;
        Ok(t)
    }

    /// The encryption context of the data key of the file at `rel`.
    pub fn ctx(&self, rel: &str) -> crate::kms::EncryptionContext {
        file_context(&self.cfg, Purpose::DataKey, rel)
    }

    fn link_ctx(&self, rel: &str) -> crate::kms::EncryptionContext {
        file_context(&self.cfg, Purpose::Symlink, rel)
    }

    /// Opens an existing regular file read-write where the backing file
    /// allows it, else read-only. A symlink in any component fails (ELOOP);
    /// anything but a regular file (a FIFO, a device planted in a restored
    /// backup) is refused before it is read or written: O_NONBLOCK keeps a
    /// FIFO's open from waiting, O_NOCTTY a terminal from attaching.
    pub fn open_rw(&self, rel: &str) -> io::Result<File> {
        self.open_rw_meta(rel).map(|(f, _)| f)
    }

    /// `open_rw`, with the metadata it checked.
    fn open_rw_meta(&self, rel: &str) -> io::Result<(File, std::fs::Metadata)> {
        let flags = libc::O_NONBLOCK | libc::O_NOCTTY;
        let fd = match self.tree.open_file(rel, libc::O_RDWR | flags) {
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    || e.raw_os_error() == Some(libc::EROFS) =>
            {
                self.tree.open_file(rel, libc::O_RDONLY | flags)?
            }
            other => other?,
        };
        let meta = fd.metadata()?;
        if !meta.is_file() {
            return Err(integrity_error(format!(
                "{rel} is not a regular file in the cipherdir (planted there?)"
            )));
        }
        Ok((fd, meta))
    }

    /// Read-write, for the header rewrites of a rename.
    pub(super) fn open_update(&self, rel: &str) -> io::Result<File> {
        // Reading the header to re-wrap it is kmsfs's business, not an
        // access the user should see in the file's atime.
        let fd = self
            .tree
            .open_quiet(rel, libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY)?;
        if !fd.metadata()?.is_file() {
            return Err(integrity_error(format!(
                "{rel} is not a regular file in the cipherdir (planted there?)"
            )));
        }
        Ok(fd)
    }

    /// A read-write descriptor of the file `old` is open on, for a caller
    /// who opens it for writing while the shared descriptor is read-only
    /// (opened while the cipherdir's filesystem refused writes): the open
    /// then fails with the filesystem's own errno (EROFS) instead of
    /// succeeding and failing every write with EBADF. `None` when `old` is
    /// writable already.
    pub fn writable_twin(&self, rel: &str, old: &File) -> io::Result<Option<File>> {
        // SAFETY: F_GETFL on a descriptor we own.
        let fl = unsafe { libc::fcntl(std::os::unix::io::AsRawFd::as_raw_fd(old), libc::F_GETFL) };
        if fl >= 0 && fl & libc::O_ACCMODE == libc::O_RDWR {
            return Ok(None);
        }
        let fd = self.open_update(rel)?;
        let (a, b) = (old.metadata()?, fd.metadata()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(integrity_error(format!(
                "{rel} was replaced in the cipherdir while open"
            )));
        }
        Ok(Some(fd))
    }

    /// Refuses a write to the file at `rel` unless the caller may create
    /// data keys for it (kms:GenerateDataKey with its context).
    pub fn check_write(&self, rel: &str, caller: &Caller) -> FsResult<()> {
        self.kms
            .may_generate(caller, &self.key_id(), &self.ctx(rel))
            .map_err(FsError::from)
    }

    /// Writes the header of a new, empty file with a fresh data key.
    pub fn init_file(
        &self,
        fd: &File,
        rel: &str,
        caller: &Caller,
    ) -> FsResult<(Key256, format::FileId)> {
        let (key, blob) = self
            .kms
            .new_data_key(caller, &self.key_id(), &self.ctx(rel))?;
        if blob.len() > format::max_blob_len(self.hs) {
            return Err(FsError::Io(io::Error::other(
                "wrapped data key does not fit the header",
            )));
        }
        let file_id = crate::crypto::random::array::<16>();
        let header = cryptfile::new_header(self.hs, file_id, blob);
        self.tree
            .with_space(|| std::os::unix::fs::FileExt::write_all_at(fd, &header, 0))?;
        Ok((key, file_id))
    }

    /// Makes the new, empty file `cf` the stored form of a special node
    /// (a device node, devnode.rs, or a long symlink, longlink.rs): its
    /// payload at offset 0, then the one byte past its blocks that gives it
    /// a length no regular file has.
    pub fn write_special(
        &self,
        cf: &CryptFile,
        payload: &[u8],
        backing_len: u64,
    ) -> io::Result<()> {
        cf.write_at(0, payload)?;
        std::os::unix::fs::FileExt::write_all_at(&cf.fd, &[0], backing_len - 1)
    }

    /// The first `len` plaintext bytes of the special node stored at `rel`,
    /// its key unwrapped for `caller` at this path. A special node's size
    /// and type are shown as the mount itself (showing a node is not
    /// reading a user's data); a long symlink's target is read as the user.
    pub fn read_special(
        &self,
        rel: &str,
        len: usize,
        caller: &Caller,
    ) -> FsResult<Zeroizing<Vec<u8>>> {
        let cf = self.open_crypt(rel, caller)?;
        Ok(Zeroizing::new(cf.read_at(0, len)?))
    }

    /// The device node stored in the file at `rel`, if it is one; `None`
    /// for a regular file that merely has a device node's length.
    pub fn read_device(&self, rel: &str) -> FsResult<Option<(u32, u64)>> {
        let mount = Caller::this_process(crate::kms::Via::Mount);
        let block = self.read_special(rel, format::BLOCK_SIZE, &mount)?;
        Ok(super::devnode::decode(&block))
    }

    /// The target of the long symlink stored in the file at `rel`, if it is
    /// one, read for `caller`.
    pub fn read_long_symlink(
        &self,
        rel: &str,
        caller: &Caller,
    ) -> FsResult<Option<Zeroizing<Vec<u8>>>> {
        let payload = self.read_special(rel, super::longlink::PAYLOAD, caller)?;
        Ok(super::longlink::decode(&payload).map(|t| Zeroizing::new(t.to_vec())))
    }

    /// Empties a file and gives it a new data key (it keeps its id). The old
    /// blocks go first, so a crash leaves an empty file under either key.
    pub fn rekey_file(&self, fd: File, rel: &str, caller: &Caller) -> FsResult<CryptFile> {
        let (key, blob) = self
            .kms
            .new_data_key(caller, &self.key_id(), &self.ctx(rel))?;
        if blob.len() > format::max_blob_len(self.hs) {
            return Err(FsError::Io(io::Error::other(
                "wrapped data key does not fit the header",
            )));
        }
        // The file keeps its id (what its extended attributes are bound
        // to, as a native file keeps them across `> file`); its new data
        // key gives it a new content key all the same.
        let file_id = cryptfile::read_header(&fd, self.hs)
            .map(|h| h.file_id)
            .unwrap_or_else(|_| crate::crypto::random::array::<16>());
        fd.set_len(self.hs as u64)?;
        cryptfile::write_new_header(&fd, self.hs, file_id, blob)?;
        Ok(CryptFile::new(fd, self.hs, file_id, &key))
    }

    /// Unwraps the data key of the file open as `fd` at `rel`. The newest slot
    /// is tried first; the other one is there after a crash between writing a
    /// new slot and the rename it was for.
    pub fn unwrap_file(
        &self,
        fd: &File,
        rel: &str,
        caller: &Caller,
    ) -> FsResult<(Key256, format::FileId)> {
        let h = cryptfile::read_header(fd, self.hs)?;
        let ctx = self.ctx(rel);
        // A hard link's own entry (one fgetxattr; none for most files).
        if let Some(blob) = self.link_blob(fd, rel)? {
            return Ok((self.kms.unwrap(caller, &blob, &ctx)?, h.file_id));
        }
        let (_, key) = self.first_slot(&h, |blob| self.kms.unwrap(caller, blob, &ctx)).map_err(|m| {
            FsError::Io(integrity_error(format!(
                "the data key of {rel} does not unwrap for this path and filesystem (moved, renamed, copied or swapped behind kmsfs's back?): {m}"
            )))
        })??;
        Ok((key, h.file_id))
    }

    /// Tries `op` on each key slot, newest first, and returns the first that
    /// works. A slot for another path (or from another KMS) is skipped; if
    /// every slot is, the outer error carries the first such message. Any
    /// other KMS refusal (disabled key, policy) stops at once.
    pub(super) fn first_slot<T>(
        &self,
        h: &format::Header,
        mut op: impl FnMut(&[u8]) -> Result<T, KmsError>,
    ) -> Result<FsResult<(usize, T)>, String> {
        let mut first_err = None;
        for i in h.slots_newest_first() {
            match op(&h.slots[i].as_ref().expect("listed").blob) {
                Ok(v) => return Ok(Ok((i, v))),
                Err(e)
                    if matches!(
                        e.code,
                        ErrorCode::InvalidCiphertextException | ErrorCode::NotFoundException
                    ) =>
                {
                    first_err.get_or_insert(e.message);
                }
                Err(e) => return Ok(Err(e.into())),
            }
        }
        Err(first_err.expect("a header has at least one slot"))
    }

    pub fn open_crypt(&self, rel: &str, caller: &Caller) -> FsResult<CryptFile> {
        let (fd, meta) = self.open_rw_meta(rel)?;
        if meta.len() == 0 {
            self.repair_empty(&fd, rel)?;
        }
        // An open is nearly always followed by a read from the start: ask for
        // the first blocks along with the header, in one disk request, rather
        // than the few pages a 512-byte read would bring in.
        // SAFETY: fadvise on an open descriptor; only a hint.
        unsafe {
            libc::posix_fadvise(
                std::os::unix::io::AsRawFd::as_raw_fd(&fd),
                0,
                PREFETCH_ON_OPEN,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        let (key, id) = self.unwrap_file(&fd, rel, caller)?;
        Ok(CryptFile::new(fd, self.hs, id, &key))
    }

    /// A file with no bytes at all is one a crash caught between its creation
    /// and its header (the header is the first thing written). It was empty,
    /// so it becomes an empty file with a new data key, made by the mount
    /// itself and audited as such, instead of failing as EIO forever. (An
    /// attacker who empties a backing file has destroyed its contents either
    /// way; what the file holds from then on is new data under a new key.)
    /// The caller's own rights still decide what it may do with the file.
    fn repair_empty(&self, fd: &File, rel: &str) -> FsResult<()> {
        let _one = self.repair.lock().unwrap_or_else(|e| e.into_inner());
        if fd.metadata()?.len() != 0 {
            return Ok(()); // another open repaired it meanwhile
        }
        // SAFETY: fcntl F_GETFL on an open descriptor.
        let flags =
            unsafe { libc::fcntl(std::os::unix::io::AsRawFd::as_raw_fd(fd), libc::F_GETFL) };
        if flags < 0 || flags & libc::O_ACCMODE != libc::O_RDWR {
            return Err(FsError::Io(integrity_error(format!(
                "{rel} has no header and cannot be repaired here (read-only backing file)"
            ))));
        }
        crate::log_line!(
            "kmsfs: {rel}: no header (a crash while it was being created?): it is empty; giving it a new data key"
        );
        self.init_file(fd, rel, &Caller::this_process(crate::kms::Via::Mount))?;
        Ok(())
    }

    /// Writes the data key of the backing file `at`, re-wrapped from path
    /// `from` to path `to`: into the header slot that is not current when
    /// `from` is the header's name, else into a hard-link entry for `to`.
    /// What opens it at `from` stays until `finish_rewrap`.
    pub fn rewrap_file(
        &self,
        at: &str,
        from: &str,
        to: &str,
        caller: &Caller,
    ) -> FsResult<(File, Written, format::FileId)> {
        let fd = self.open_update(at)?;
        let h = cryptfile::read_header(&fd, self.hs)?;
        let (good, new_blob) = self.rewrapped_for(&fd, &h, from, to, caller)?;
        let Some(good) = good else {
            self.put_link(&fd, to, new_blob)?;
            return Ok((fd, Written::Link, h.file_id));
        };
        // Overwrite the other slot, keeping the one that works until the rename is done.
        let index = 1 - good;
        // A sequence number read from disk: a wrapped one would order the
        // slots wrongly, so the file is refused instead.
        let seq = h
            .slots
            .iter()
            .flatten()
            .map(|s| s.seq)
            .max()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| {
                FsError::Io(integrity_error(format!(
                    "{from}: key slot sequence number at its maximum (damaged header?)"
                )))
            })?;
        cryptfile::write_slot(
            &fd,
            self.hs,
            &h.file_id,
            index,
            Some(&Slot {
                seq,
                blob: new_blob,
            }),
        )?;
        Ok((fd, Written::Slot(index), h.file_id))
    }

    /// Takes back what `rewrap_file` wrote for `to` (the rename failed).
    pub fn undo_rewrap(
        &self,
        fd: &File,
        id: &format::FileId,
        w: Written,
        to: &str,
    ) -> FsResult<()> {
        match w {
            Written::Slot(i) => Ok(self.drop_slot(fd, id, i)?),
            Written::Link => self.drop_link(fd, to),
        }
    }

    /// After the rename: what opened the file at its old path `from` goes.
    pub fn finish_rewrap(
        &self,
        fd: &File,
        id: &format::FileId,
        w: Written,
        from: &str,
    ) -> FsResult<()> {
        match w {
            Written::Slot(i) => Ok(self.drop_slot(fd, id, 1 - i)?),
            Written::Link => self.drop_link(fd, from),
        }
    }

    /// Empties slot `index` (the one for the old path, after a rename).
    pub fn drop_slot(&self, fd: &File, file_id: &format::FileId, index: usize) -> io::Result<()> {
        cryptfile::write_slot(fd, self.hs, file_id, index, None)
    }

    /// After a directory rename moved the file at `rel` from `old`: the
    /// older header slot, and any hard-link entry for `old`, go.
    pub fn drop_old_name(&self, rel: &str, old: &str) -> FsResult<File> {
        let fd = self.open_update(rel)?;
        let h = cryptfile::read_header(&fd, self.hs)?;
        let order = h.slots_newest_first();
        if order.len() == 2 {
            self.drop_slot(&fd, &h.file_id, order[1])?;
        }
        self.drop_link(&fd, old)?;
        Ok(fd)
    }

    pub fn encrypt_symlink(&self, rel: &str, target: &[u8], caller: &Caller) -> FsResult<String> {
        if target.len() > symlink::MAX_TARGET {
            return Err(FsError::Io(io::Error::from_raw_os_error(
                libc::ENAMETOOLONG,
            )));
        }
        let blob = self
            .kms
            .encrypt(caller, &self.key_id(), target, &self.link_ctx(rel))?;
        Ok(symlink::encode(&blob))
    }

    /// The target of the symlink at `rel`, stored as `stored`; zeroized
    /// when dropped.
    pub fn decrypt_symlink(
        &self,
        rel: &str,
        stored: &[u8],
        caller: &Caller,
    ) -> FsResult<Zeroizing<Vec<u8>>> {
        self.decrypt_symlink_as(rel, stored, caller, &self.link_ctx(rel))
    }

    fn decrypt_symlink_as(
        &self,
        rel: &str,
        stored: &[u8],
        caller: &Caller,
        ctx: &crate::kms::EncryptionContext,
    ) -> FsResult<Zeroizing<Vec<u8>>> {
        let blob = symlink::decode(stored).ok_or_else(|| {
            FsError::Io(integrity_error(format!(
                "symlink {rel} is not a kmsfs encrypted link"
            )))
        })?;
        match self.kms.decrypt(caller, &blob, ctx) {
            Ok(t) => Ok(t),
            Err(e) if e.code == ErrorCode::InvalidCiphertextException => {
                Err(FsError::Io(integrity_error(format!(
                    "symlink {rel} does not decrypt as a symlink at this path (moved behind kmsfs's back, or a blob made for another purpose?)"
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Re-encrypts the symlink at backing name `at` (stored for path `from`)
    /// for path `to`, as a new link at backing name `new`.
    pub fn rewrap_symlink(
        &self,
        at: &str,
        from: &str,
        to: &str,
        new: &str,
        caller: &Caller,
    ) -> FsResult<()> {
        let st = self.tree.lstat(at)?;
        let stored = self.tree.readlink(at)?;
        let target = self.decrypt_symlink(from, &stored, caller)?;
        self.place_link(&st, &target, to, new, caller)
    }

    /// Makes `new` (replacing what is there) a symlink to `target`,
    /// encrypted for the path `to`, with the owner and times of the link
    /// `st` describes.
    pub(super) fn place_link(
        &self,
        st: &libc::stat,
        target: &[u8],
        to: &str,
        new: &str,
        caller: &Caller,
    ) -> FsResult<()> {
        let enc = self.encrypt_symlink(to, target, caller)?;
        match self.tree.unlink(new) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.tree.symlink(enc.as_bytes(), new)?;
        self.keep_link_attrs(st, new)?;
        Ok(())
    }

    /// A re-encrypted symlink is a new backing node: it gets the old one's
    /// owner and times, so a rename keeps them as on any filesystem (and a
    /// sticky directory's owner checks still see the user's link, not
    /// root's).
    fn keep_link_attrs(&self, old: &libc::stat, new: &str) -> io::Result<()> {
        self.tree.chown(new, Some(old.st_uid), Some(old.st_gid))?;
        self.tree.set_times(new, &super::stat::times_of(old))
    }

    /// Re-encrypts a symlink made before symlink targets had a context of
    /// their own (format 1 without TypedContexts) under the symlink context,
    /// in place: a twin, then a rename over the original.
    pub fn upgrade_symlink(&self, rel: &str, twin: &str, caller: &Caller) -> FsResult<bool> {
        let st = self.tree.lstat(rel)?;
        let stored = self.tree.readlink(rel)?;
        if self.decrypt_symlink(rel, &stored, caller).is_ok() {
            return Ok(false);
        }
        let legacy = file_context(&self.cfg, Purpose::Legacy, rel);
        let target = self.decrypt_symlink_as(rel, &stored, caller, &legacy)?;
        let enc = self.encrypt_symlink(rel, &target, caller)?;
        match self.tree.unlink(twin) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        self.tree.symlink(enc.as_bytes(), twin)?;
        self.keep_link_attrs(&st, twin)?;
        self.tree.rename(twin, rel, 0)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::{Kms, Via};

    #[test]
    fn a_stale_newer_slot_does_not_block_the_next_rename() {
        let d = tempfile::tempdir().unwrap();
        let kms = Arc::new(Kms::in_memory());
        let caller = Caller::this_process(Via::Mount);
        let key = kms.create_managed_key(&caller, "t", "t").unwrap().arn;
        let b = Backing::new(
            Tree::open(d.path()).unwrap(),
            Config::new("fs".into(), key, None),
            kms,
        );
        let p = "f";
        let fd = b.tree.create_new(p, 0o600).unwrap();
        b.init_file(&fd, "a", &caller).unwrap();
        // A rename to "b" that never happened leaves a newer slot for "b".
        b.rewrap_file(p, "a", "b", &caller).unwrap();
        assert!(
            b.unwrap_file(&fd, "a", &caller).is_ok(),
            "the older slot still opens it"
        );
        // Renaming to "c" works from the slot that opens it, and keeps it.
        let (_, w, _) = b.rewrap_file(p, "a", "c", &caller).unwrap();
        let Written::Slot(idx) = w else {
            panic!("a file without links re-wraps into a slot")
        };
        assert!(b.unwrap_file(&fd, "c", &caller).is_ok());
        assert!(b.unwrap_file(&fd, "a", &caller).is_ok());
        b.drop_slot(
            &fd,
            &cryptfile::read_header(&fd, b.hs).unwrap().file_id,
            1 - idx,
        )
        .unwrap();
        assert!(b.unwrap_file(&fd, "a", &caller).is_err());
        assert!(b.unwrap_file(&fd, "c", &caller).is_ok());
    }
}
