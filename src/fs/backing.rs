//! The cipherdir and the key operations on its files: creating a file's
//! header with a new data key, unwrapping it for the file's path, re-wrapping
//! it for a new path, and encrypting symlink targets.

use super::config::Config;
use super::cryptfile::{self, CryptFile, integrity_error};
use super::format::{self, Slot};
use super::keys::{KeyBackend, file_context};
use super::symlink;
use crate::crypto::Key256;
use crate::kms::{Caller, ErrorCode, KmsError};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Prefix of temporary names kmsfs uses inside the cipherdir; hidden from the
/// mount and refused as user names.
pub const TEMP_PREFIX: &str = ".kmsfs-";

/// How much of a file an open asks the kernel to read ahead (the header and
/// the first 32 blocks): a whole small file, one request.
const PREFETCH_ON_OPEN: i64 = 128 << 10;

pub struct Backing {
    pub root: PathBuf,
    pub cfg: Config,
    pub hs: usize,
    pub kms: Arc<dyn KeyBackend>,
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
    pub fn new(root: PathBuf, cfg: Config, kms: Arc<dyn KeyBackend>) -> Self {
        let hs = cfg.header_size as usize;
        Backing { root, cfg, hs, kms }
    }

    pub fn full(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    pub fn ctx(&self, rel: &str) -> crate::kms::EncryptionContext {
        file_context(&self.cfg.filesystem_id, rel)
    }

    /// Read-write, not following a symlink swapped in behind our back.
    fn open_update(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }

    /// Read-write where the backing file allows it, else read-only.
    pub fn open_rw(&self, path: &Path) -> io::Result<File> {
        match Self::open_update(path) {
            Err(e)
                if e.raw_os_error() == Some(libc::EACCES)
                    || e.raw_os_error() == Some(libc::EROFS) =>
            {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
            }
            other => other,
        }
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
            .new_data_key(caller, &self.cfg.key_id, &self.ctx(rel))?;
        if blob.len() > format::max_blob_len(self.hs) {
            return Err(FsError::Io(io::Error::other(
                "wrapped data key does not fit the header",
            )));
        }
        let file_id = crate::crypto::random::array::<16>();
        cryptfile::write_new_header(fd, self.hs, file_id, blob)?;
        Ok((key, file_id))
    }

    /// Empties a file and gives it a new data key and file id. The old
    /// blocks go first, so a crash leaves an empty file under either key.
    pub fn rekey_file(&self, fd: File, rel: &str, caller: &Caller) -> FsResult<CryptFile> {
        let (key, blob) = self
            .kms
            .new_data_key(caller, &self.cfg.key_id, &self.ctx(rel))?;
        if blob.len() > format::max_blob_len(self.hs) {
            return Err(FsError::Io(io::Error::other(
                "wrapped data key does not fit the header",
            )));
        }
        fd.set_len(self.hs as u64)?;
        let file_id = crate::crypto::random::array::<16>();
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
    fn first_slot<T>(
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
        let fd = self.open_rw(&self.full(rel))?;
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

    /// Writes a slot holding the data key re-wrapped for `to`; returns the
    /// slot index written. The old slot stays until `drop_slot`.
    pub fn rewrap_file(
        &self,
        path: &Path,
        from: &str,
        to: &str,
        caller: &Caller,
    ) -> FsResult<(File, usize, format::FileId)> {
        let fd = Self::open_update(path)?;
        let h = cryptfile::read_header(&fd, self.hs)?;
        // The slot that opens the file at `from` may not be the newest: a
        // crash or a failed rename can leave a newer slot for another path.
        let (from_ctx, to_ctx) = (self.ctx(from), self.ctx(to));
        let (good, new_blob) = self
            .first_slot(&h, |blob| {
                self.kms
                    .rewrap(caller, blob, &from_ctx, &self.cfg.key_id, &to_ctx)
            })
            .map_err(|m| {
                FsError::Io(integrity_error(format!(
                    "{from}: no key slot opens it here: {m}"
                )))
            })??;
        // Overwrite the other slot, keeping the one that works until the rename is done.
        let index = 1 - good;
        let seq = h.slots.iter().flatten().map(|s| s.seq).max().unwrap_or(0) + 1;
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
        Ok((fd, index, h.file_id))
    }

    /// Empties slot `index` (the one for the old path, after a rename).
    pub fn drop_slot(&self, fd: &File, file_id: &format::FileId, index: usize) -> io::Result<()> {
        cryptfile::write_slot(fd, self.hs, file_id, index, None)
    }

    /// Empties the older slot of a file whose newest slot is current.
    pub fn drop_older_slot(&self, path: &Path) -> io::Result<File> {
        let fd = Self::open_update(path)?;
        let h = cryptfile::read_header(&fd, self.hs)?;
        let order = h.slots_newest_first();
        if order.len() == 2 {
            self.drop_slot(&fd, &h.file_id, order[1])?;
        }
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
            .encrypt(caller, &self.cfg.key_id, target, &self.ctx(rel))?;
        Ok(symlink::encode(&blob))
    }

    pub fn decrypt_symlink(&self, rel: &str, stored: &[u8], caller: &Caller) -> FsResult<Vec<u8>> {
        let blob = symlink::decode(stored).ok_or_else(|| {
            FsError::Io(integrity_error(format!(
                "symlink {rel} is not a kmsfs encrypted link"
            )))
        })?;
        match self.kms.decrypt(caller, &blob, &self.ctx(rel)) {
            Ok(t) => Ok(t),
            Err(e) if e.code == ErrorCode::InvalidCiphertextException => {
                Err(FsError::Io(integrity_error(format!(
                    "symlink {rel} does not decrypt for this path (moved behind kmsfs's back?)"
                ))))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Re-encrypts the symlink at `from_path` (stored for `from`) for path
    /// `to`, as a new link at `new_path`.
    pub fn rewrap_symlink(
        &self,
        from_path: &Path,
        from: &str,
        to: &str,
        new_path: &Path,
        caller: &Caller,
    ) -> FsResult<()> {
        let stored = std::fs::read_link(from_path)?;
        let target = self.decrypt_symlink(
            from,
            std::os::unix::ffi::OsStrExt::as_bytes(stored.as_os_str()),
            caller,
        )?;
        let enc = self.encrypt_symlink(to, &target, caller)?;
        let _ = std::fs::remove_file(new_path);
        std::os::unix::fs::symlink(enc, new_path)?;
        Ok(())
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
            d.path().to_path_buf(),
            Config::new("fs".into(), key, None),
            kms,
        );
        let p = d.path().join("f");
        let fd = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        b.init_file(&fd, "a", &caller).unwrap();
        // A rename to "b" that never happened leaves a newer slot for "b".
        b.rewrap_file(&p, "a", "b", &caller).unwrap();
        assert!(
            b.unwrap_file(&fd, "a", &caller).is_ok(),
            "the older slot still opens it"
        );
        // Renaming to "c" works from the slot that opens it, and keeps it.
        let (_, idx, _) = b.rewrap_file(&p, "a", "c", &caller).unwrap();
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
