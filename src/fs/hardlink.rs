//! Hard links on the backing side: reading and writing a file's per-name
//! key entries (links.rs has the format), making a new name, forgetting
//! one. Every name's entry is written before the name exists and removed
//! after it is gone, so a crash leaves at worst an entry no name uses.

use super::backing::{Backing, FsError, FsResult};
use super::cryptfile::{self, integrity_error};
use super::links::{self, Links};
use super::xattr_store::{fget, fset};
use crate::kms::Caller;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;

fn errno(n: i32) -> FsError {
    FsError::Io(io::Error::from_raw_os_error(n))
}

/// What a re-wrap for a new path wrote: a header slot (the name the file
/// was made under) or a hard link's entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Slot(usize),
    Link,
}

impl Backing {
    /// The file's hard-link entries (none for a file never linked).
    pub(super) fn read_links(&self, fd: &File) -> FsResult<Links> {
        match fget(fd, links::ATTR) {
            Ok(raw) => Links::decode(&raw).map_err(|e| {
                FsError::Io(integrity_error(format!(
                    "its hard-link entries are damaged ({})",
                    e.0
                )))
            }),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EOPNOTSUPP)) => {
                Ok(Links::default())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn write_links(&self, fd: &File, l: &Links) -> FsResult<()> {
        if !l.entries.is_empty() {
            return Ok(fset(fd, links::ATTR, &l.encode(), 0)?);
        }
        let c = std::ffi::CString::new(links::ATTR).expect("no NUL");
        // SAFETY: a valid descriptor and C name.
        if unsafe { libc::fremovexattr(fd.as_raw_fd(), c.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENODATA) {
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// The data key as wrapped for `rel`, when `rel` is one of the file's
    /// hard links rather than the name in its header.
    pub(super) fn link_blob(&self, fd: &File, rel: &str) -> FsResult<Option<Vec<u8>>> {
        let l = self.read_links(fd)?;
        if l.entries.is_empty() {
            return Ok(None);
        }
        let Some(keys) = self.xattr_keys(false)? else {
            return Ok(None);
        };
        Ok(l.get(&keys.link_tag(rel)).map(<[u8]>::to_vec))
    }

    /// Adds (or replaces) the entry for `rel`: EMLINK past the limit.
    pub(super) fn put_link(&self, fd: &File, rel: &str, blob: Vec<u8>) -> FsResult<()> {
        let keys = self.xattr_keys(true)?.expect("made when missing");
        let mut l = self.read_links(fd)?;
        if !l.put(keys.link_tag(rel), blob) {
            return Err(errno(libc::EMLINK));
        }
        self.write_links(fd, &l)
    }

    /// Removes the entry for `rel`, if the file has one.
    pub(super) fn drop_link(&self, fd: &File, rel: &str) -> FsResult<()> {
        let mut l = self.read_links(fd)?;
        if l.entries.is_empty() {
            return Ok(());
        }
        let Some(keys) = self.xattr_keys(false)? else {
            return Ok(());
        };
        if l.remove(&keys.link_tag(rel)) {
            self.write_links(fd, &l)?;
        }
        Ok(())
    }

    /// The data key of the file open as `fd`, wrapped for path `to`, from
    /// the blob that opens it at `from` (its entry, else a header slot).
    /// The KMS checks the caller may re-encrypt from one path to the other
    /// (ReEncryptFrom and ReEncryptTo).
    pub(super) fn rewrapped_for(
        &self,
        fd: &File,
        h: &super::format::Header,
        from: &str,
        to: &str,
        caller: &Caller,
    ) -> FsResult<(Option<usize>, Vec<u8>)> {
        let (from_ctx, to_ctx) = (self.ctx(from), self.ctx(to));
        let rewrap = |blob: &[u8]| {
            self.kms
                .rewrap(caller, blob, &from_ctx, &self.key_id(), &to_ctx)
        };
        if let Some(blob) = self.link_blob(fd, from)? {
            return Ok((None, rewrap(&blob)?));
        }
        let (slot, blob) = self.first_slot(h, rewrap).map_err(|m| {
            FsError::Io(integrity_error(format!(
                "{from}: no key slot opens it here: {m}"
            )))
        })??;
        Ok((Some(slot), blob))
    }

    /// link(2): the entry for `to` first, then the name. The first link
    /// also gives the header's name an entry (the header's own blob), so
    /// that every name of a linked file has one: a name without one is not
    /// one of its names (linked in the cipherdir behind the mount's back).
    pub fn link_file(&self, from: &str, to: &str, caller: &Caller) -> FsResult<()> {
        let fd = self.open_update(from)?;
        let h = cryptfile::read_header(&fd, self.hs)?;
        let (slot, blob) = self.rewrapped_for(&fd, &h, from, to, caller)?;
        if let Some(i) = slot {
            let own = h.slots[i]
                .as_ref()
                .expect("the slot that opened it")
                .blob
                .clone();
            self.put_link(&fd, from, own)?;
        }
        self.put_link(&fd, to, blob)?;
        if let Err(e) = self.tree.link(from, to) {
            let _ = self.drop_link(&fd, to);
            return Err(e.into());
        }
        self.tree.fsync_dir(super::inode::parent(to))?;
        Ok(())
    }

    /// Whether `rel` is one of the names the mount gave the file open as
    /// `fd` (it has an entry): only those share the file's node.
    pub fn is_link_name(&self, fd: &File, rel: &str) -> bool {
        matches!(self.link_blob(fd, rel), Ok(Some(_)))
    }

    /// `is_link_name` by path, for a lookup.
    pub fn is_link_name_at(&self, rel: &str) -> bool {
        let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;
        match self.tree.open_quiet(rel, flags) {
            Ok(fd) => self.is_link_name(&fd, rel),
            Err(_) => false,
        }
    }

    /// After the name `rel` of a file with other names is gone (unlinked,
    /// or renamed over), its entry goes.
    pub fn forget_name(&self, fd: &File, rel: &str) {
        if let Err(e) = self.drop_link(fd, rel) {
            crate::log_line!("kmsfs: {rel}: its hard-link entry was not removed: {e}");
        }
    }
}
