//! `kmsfs rekey`: gives files new data keys and re-encrypts their content,
//! so that a data key someone took while they had access (from a core dump,
//! a debugger, a KMS call made under a grant since revoked) opens nothing
//! written from then on. Renaming only re-wraps the same data key; this
//! replaces it.
//!
//! Crash-safe: the new copy is written beside the file under a temporary
//! name kmsfs hides, with its owner, mode, times and extended attributes,
//! synced, then renamed over the file. A crash leaves the old file whole
//! and at most a hidden temporary file. The file keeps its id, which its
//! extended attributes are bound to; its content key still changes, since
//! it is derived from the new data key.

use super::backing::{Backing, FsError, FsResult};
use super::cryptfile::{self, CryptFile};
use super::format::{self, BLOCK_SIZE};
use crate::kms::Caller;
use std::fs::File;
use std::io;
use std::os::unix::io::AsRawFd;
use zeroize::Zeroizing;

/// How the hidden copies begin (the rename module's temporary names).
pub const TEMP_PART: &str = ".kmsfs-rekey-";

/// Copies read at a time.
const CHUNK: usize = 256 * BLOCK_SIZE;

/// Re-encrypts the file at `rel` under a new data key; returns its size.
pub fn rekey_file(b: &Backing, rel: &str, caller: &Caller) -> FsResult<u64> {
    let st = b.tree.lstat(rel)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(refuse(rel, "not a regular file"));
    }
    if st.st_nlink > 1 {
        return Err(refuse(
            rel,
            &format!(
                "it has {} hard links, which share its data key: a new copy would split them",
                st.st_nlink
            ),
        ));
    }
    let len = st.st_size as u64;
    if super::devnode::is_candidate(b.hs, len) || super::longlink::is_candidate(b.hs, len) {
        return Err(refuse(
            rel,
            "a device node or long symlink kept as a file: it holds no user data to re-encrypt",
        ));
    }
    let old = b.open_crypt(rel, caller)?;
    let size = old.plain_size()?;
    let temp = super::rename::temp_name(parent(rel), "rekey");
    let fd = b.tree.create_new(&temp, 0o600)?;
    let result = (|| -> FsResult<()> {
        let (key, blob) = b.kms.new_data_key(caller, &b.key_id(), &b.ctx(rel))?;
        if blob.len() > format::max_blob_len(b.hs) {
            return Err(FsError::Io(io::Error::other(
                "wrapped data key does not fit the header",
            )));
        }
        cryptfile::write_new_header(&fd, b.hs, old.file_id, blob)?;
        let new = CryptFile::new(fd.try_clone()?, b.hs, old.file_id, &key);
        let mut off = 0;
        while off < size {
            let n = CHUNK.min((size - off) as usize);
            let data = Zeroizing::new(old.read_at(off, n)?);
            new.write_at(off, &data)?;
            off += n as u64;
        }
        copy_xattrs(&old.fd, &fd)?;
        // SAFETY: fchown/fchmod on an open descriptor.
        if unsafe { libc::fchown(fd.as_raw_fd(), st.st_uid, st.st_gid) } != 0
            || unsafe { libc::fchmod(fd.as_raw_fd(), st.st_mode & 0o7777) } != 0
        {
            return Err(FsError::Io(io::Error::last_os_error()));
        }
        let times = super::stat::times_of(&st);
        // SAFETY: futimens on an open descriptor with two timespecs.
        if unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) } != 0 {
            return Err(FsError::Io(io::Error::last_os_error()));
        }
        fd.sync_all()?;
        b.tree.rename(&temp, rel, 0)?;
        Ok(())
    })();
    if result.is_err() {
        let _ = b.tree.unlink(&temp);
    }
    result?;
    b.tree.fsync_dir(parent(rel))?;
    Ok(size)
}

fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(p, _)| p)
}

fn refuse(rel: &str, why: &str) -> FsError {
    FsError::Io(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("{rel}: not rekeyed: {why}"),
    ))
}

/// Every kmsfs attribute of the backing file, as stored (encrypted, bound
/// to the file id the copy keeps).
fn copy_xattrs(from: &File, to: &File) -> io::Result<()> {
    use super::xattr_store::{fget, flist, fset};
    for name in flist(from)? {
        fset(to, &name, &fget(from, &name)?, 0)?;
    }
    Ok(())
}
