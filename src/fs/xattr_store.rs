//! Extended attributes on backing nodes: the syscalls, the per-filesystem
//! secret, and what each node's attributes are bound to (xattr.rs holds
//! the format). Every descriptor here was opened beneath the cipherdir.

use super::backing::{Backing, FsError, FsResult};
use super::cryptfile::integrity_error;
use super::xattr::{self, NodeId, XattrKeys};
use crate::kms::{Caller, EncryptionContext, Via};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex};

/// The per-filesystem secret's wrapped form, in the cipherdir's root.
pub const KEY_FILE: &str = ".kmsfs.xattr-key";
/// Longest key file read back: a KMS blob is a few hundred bytes.
const MAX_KEY_FILE: u64 = 4096;

/// The unwrapped secret, once per mount, from the first attribute used.
#[derive(Default)]
pub struct XattrSecret(Mutex<Option<Arc<XattrKeys>>>);

fn errno(n: i32) -> FsError {
    FsError::Io(io::Error::from_raw_os_error(n))
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A variable-sized answer from `call(buf, len)` (an xattr call returning
/// a length): asked for its size first, then again with a buffer that big;
/// asked again if it grew in between (ERANGE).
fn sized(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> io::Result<Vec<u8>> {
    for _ in 0..4 {
        let n = call(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        let m = call(buf.as_mut_ptr().cast(), buf.len());
        if m >= 0 {
            buf.truncate(m as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ERANGE) {
            return Err(e);
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

/// fgetxattr of `name`.
pub(super) fn fget(fd: &File, name: &str) -> io::Result<Vec<u8>> {
    let c = cname(name)?;
    // SAFETY: a valid descriptor and C name; `sized` passes a buffer of
    // the length it names (or null with 0).
    sized(|buf, len| unsafe { libc::fgetxattr(fd.as_raw_fd(), c.as_ptr(), buf, len) })
}

pub(super) fn fset(fd: &File, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let c = cname(name)?;
    // SAFETY: a valid name and a buffer of value.len() bytes.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            c.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The backing attribute names of `fd` that hold kmsfs attributes.
pub(super) fn flist(fd: &File) -> io::Result<Vec<String>> {
    // SAFETY: a valid descriptor; `sized` passes a buffer of the length it
    // names (or null with 0).
    let raw = match sized(|buf, len| unsafe { libc::flistxattr(fd.as_raw_fd(), buf.cast(), len) }) {
        Ok(raw) => raw,
        // No xattrs in the backing filesystem: none here either.
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    Ok(raw
        .split(|&b| b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| n.starts_with(xattr::PREFIX))
        .map(str::to_string)
        .collect())
}

pub(super) fn key_context(fs_id: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([
        (super::keys::CTX_FS, fs_id),
        (super::keys::CTX_TYPE, "xattr-key"),
    ])
}

impl Backing {
    /// A descriptor of the node at `rel` to hold its attributes, and
    /// whether it is a directory. Regular files and directories only, as
    /// user attributes are on Linux: EPERM for the rest.
    pub fn xattr_node(&self, rel: &str) -> io::Result<(File, bool)> {
        let st = self.tree.lstat(rel)?;
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => Ok((self.tree.open_dir_quiet(rel)?, true)),
            libc::S_IFREG => Ok((
                self.tree
                    .open_quiet(rel, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY)?,
                false,
            )),
            _ => Err(io::Error::from_raw_os_error(libc::EPERM)),
        }
    }

    /// The filesystem's attribute keys: unwrapped from `KEY_FILE` once per
    /// mount, or (`create`) made and stored there by the first attribute
    /// ever set. `None`: no attribute was ever set here.
    pub(super) fn xattr_keys(&self, create: bool) -> FsResult<Option<Arc<XattrKeys>>> {
        let mut slot = self.xattr.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = slot.as_ref() {
            return Ok(Some(k.clone()));
        }
        let ctx = key_context(&self.cfg.filesystem_id);
        let mount = Caller::this_process(Via::Mount);
        let secret = match self.tree.read_small(KEY_FILE, MAX_KEY_FILE)? {
            Some(blob) => self.kms.unwrap(&mount, &blob, &ctx)?,
            None if create => {
                let (key, blob) = self.kms.new_data_key(&mount, &self.key_id(), &ctx)?;
                self.tree.replace(KEY_FILE, &blob, 0o600)?;
                key
            }
            None => return Ok(None),
        };
        let keys = Arc::new(XattrKeys::new(&secret));
        *slot = Some(keys.clone());
        Ok(Some(keys))
    }

    /// Replaces the wrapped attribute key in `KEY_FILE` by what `rewrap`
    /// makes of it (rewrap.rs), under the lock the first attribute ever set
    /// makes it under; false when no attribute was ever set.
    pub(super) fn rewrap_key_file(
        &self,
        rewrap: impl FnOnce(&[u8], &EncryptionContext) -> FsResult<Vec<u8>>,
    ) -> FsResult<bool> {
        let _made = self.xattr.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(blob) = self.tree.read_small(KEY_FILE, MAX_KEY_FILE)? else {
            return Ok(false);
        };
        let new = rewrap(&blob, &key_context(&self.cfg.filesystem_id))?;
        self.tree.replace(KEY_FILE, &new, 0o600)?;
        Ok(true)
    }

    /// What the attributes of the node open as `fd` are bound to.
    fn node_id(&self, fd: &File, dir: bool, create: bool) -> FsResult<Option<NodeId>> {
        if !dir {
            // The file id, in the header at bytes 16..32.
            let mut id = [0u8; 16];
            fd.read_exact_at(&mut id, 16).map_err(|_| {
                FsError::Io(integrity_error("no header to bind attributes to".into()))
            })?;
            return Ok(Some(id));
        }
        match fget(fd, xattr::DIR_ID) {
            Ok(v) => v.try_into().map(Some).map_err(|_| {
                FsError::Io(integrity_error(
                    "the directory's attribute id is damaged".into(),
                ))
            }),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) && create => {
                let id = crate::crypto::random::array::<16>();
                match fset(fd, xattr::DIR_ID, &id, libc::XATTR_CREATE) {
                    Ok(()) => Ok(Some(id)),
                    // Another thread made one first: use it.
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                        self.node_id(fd, dir, false)
                    }
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the node open as `fd` holds any kmsfs attribute.
    pub fn has_xattrs(&self, fd: &File) -> bool {
        flist(fd).map(|l| !l.is_empty()).unwrap_or(true)
    }

    /// getxattr: the value, or ENODATA. A node without kmsfs attributes
    /// answers after one flistxattr, with no key use (the kernel asks for
    /// security.capability before every write and chown).
    pub fn xattr_get(&self, fd: &File, dir: bool, name: &str) -> FsResult<Vec<u8>> {
        if !xattr::storable(name) || flist(fd)?.is_empty() {
            return Err(errno(libc::ENODATA));
        }
        let (Some(keys), Some(node)) = (self.xattr_keys(false)?, self.node_id(fd, dir, false)?)
        else {
            return Err(errno(libc::ENODATA));
        };
        let bn = keys.backing_name(name);
        let blob = fget(fd, &bn)?;
        match keys.open(&node, &bn, &blob) {
            Some((_, v)) => Ok(v),
            None => Err(FsError::Io(integrity_error(format!(
                "attribute {name} does not decrypt for this node (copied or edited in the cipherdir?)"
            )))),
        }
    }

    /// listxattr: the names that decrypt for this node; one that does not
    /// is left out and logged.
    pub fn xattr_list(&self, fd: &File, dir: bool, what: &str) -> FsResult<Vec<String>> {
        let backing = flist(fd)?;
        if backing.is_empty() {
            return Ok(vec![]);
        }
        let (Some(keys), Some(node)) = (self.xattr_keys(false)?, self.node_id(fd, dir, false)?)
        else {
            return Ok(vec![]);
        };
        let mut names = vec![];
        for bn in backing {
            match fget(fd, &bn).ok().and_then(|b| keys.open(&node, &bn, &b)) {
                Some((n, _)) => names.push(n),
                None => crate::log_line!(
                    "kmsfs: {what:?}: an extended attribute does not decrypt for it (copied or edited in the cipherdir?): left out"
                ),
            }
        }
        Ok(names)
    }

    /// setxattr, with XATTR_CREATE and XATTR_REPLACE as the backing
    /// filesystem applies them to the one backing attribute.
    pub fn xattr_set(
        &self,
        fd: &File,
        dir: bool,
        name: &str,
        value: &[u8],
        flags: i32,
    ) -> FsResult<()> {
        if !xattr::storable(name) {
            return Err(errno(libc::EOPNOTSUPP));
        }
        if value.len() > xattr::MAX_VALUE {
            return Err(errno(libc::E2BIG));
        }
        let keys = self.xattr_keys(true)?.expect("made when missing");
        let node = self.node_id(fd, dir, true)?.expect("made when missing");
        let bn = keys.backing_name(name);
        fset(fd, &bn, &keys.seal(&node, name, value), flags)?;
        Ok(())
    }

    pub fn xattr_remove(&self, fd: &File, name: &str) -> FsResult<()> {
        let Some(keys) = self.xattr_keys(false)? else {
            return Err(errno(libc::ENODATA));
        };
        let c = cname(&keys.backing_name(name))?;
        // SAFETY: a valid descriptor and C name.
        if unsafe { libc::fremovexattr(fd.as_raw_fd(), c.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(())
    }
}
