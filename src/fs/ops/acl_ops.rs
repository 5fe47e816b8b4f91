//! POSIX ACLs through the mount (`--allow-other`, where the kernel checks
//! permissions): the kernel enforces them and caches them; the daemon keeps
//! them as ext4 does (acl.rs holds the rules): stored encrypted like any
//! extended attribute, the mode mirroring the access ACL, chmod updating
//! it, and a directory's default ACL inherited by what is made in it.

use super::*;
use crate::fs::acl::{self, Acl};
use std::fs::File;

fn errno(n: i32) -> FsError {
    FsError::Io(io::Error::from_raw_os_error(n))
}

impl KmsFs {
    /// The mode a node made in `parent` gets, and the default ACL it
    /// inherits if the directory has one (the umask then does not apply).
    pub(super) fn creation_mode(&self, parent: &str, mode: u32, umask: u32) -> (u32, Option<Acl>) {
        if !self.opts.posix_acl {
            return (mode & !umask, None);
        }
        let default = self
            .b
            .tree
            .open_dir_quiet(parent)
            .ok()
            .and_then(|fd| self.b.xattr_get(&fd, true, acl::DEFAULT).ok())
            .and_then(|v| Acl::decode(&v));
        match default {
            Some(d) => (d.create_masq(mode).1, Some(d)),
            None => (mode & !umask, None),
        }
    }

    /// Gives the node just made at `rel` (asked for with `mode`) what it
    /// inherits from its directory's default ACL: an access ACL, and a
    /// directory the default ACL itself.
    pub(super) fn inherit_acl(&self, rel: &str, default: &Acl, mode: u32) {
        let r = self
            .b
            .xattr_node(rel)
            .map_err(FsError::from)
            .and_then(|(fd, dir)| {
                if let (Some(access), _) = default.create_masq(mode) {
                    self.b
                        .xattr_set(&fd, dir, acl::ACCESS, &access.encode(), 0)?;
                }
                if dir {
                    self.b
                        .xattr_set(&fd, dir, acl::DEFAULT, &default.encode(), 0)?;
                }
                Ok(())
            });
        if let Err(e) = r {
            self.log("inheriting the default ACL", rel, &e);
        }
    }

    /// setxattr of an ACL. An access ACL sets the mode's permission bits
    /// (the group bits from its mask), and one that says no more than a
    /// mode is kept as the mode alone; a default ACL is for directories.
    pub(super) fn set_acl(&self, fd: &File, dir: bool, name: &str, value: &[u8]) -> FsResult<()> {
        let a = Acl::decode(value).ok_or_else(|| errno(libc::EINVAL))?;
        if name == acl::DEFAULT {
            if !dir {
                return Err(errno(libc::EACCES));
            }
            return self.b.xattr_set(fd, dir, name, value, 0);
        }
        let st = stat::fstat(fd)?;
        let mode = (st.st_mode & 0o7000) | a.mode_bits();
        // SAFETY: fchmod on a descriptor we own.
        if unsafe { libc::fchmod(std::os::unix::io::AsRawFd::as_raw_fd(fd), mode) } != 0 {
            return Err(io::Error::last_os_error().into());
        }
        if a.is_mode_only() {
            return match self.b.xattr_remove(fd, name) {
                Err(e) if e.errno() == libc::ENODATA => Ok(()),
                other => other,
            };
        }
        self.b.xattr_set(fd, dir, name, value, 0)
    }

    /// After chmod of node `ino`: its access ACL, if it has one, follows
    /// the new mode (owner, mask or group, other).
    pub(super) fn chmod_acl(&self, ino: INodeNo, mode: u32) -> Result<(), Errno> {
        if !self.opts.posix_acl || self.is_bare(ino.0) {
            return Ok(());
        }
        self.with_xattr_node(ino, "chmod (ACL)", |fd, dir| {
            match self.b.xattr_get(fd, dir, acl::ACCESS) {
                Ok(v) => match Acl::decode(&v) {
                    Some(mut a) => {
                        a.chmod(mode);
                        self.b.xattr_set(fd, dir, acl::ACCESS, &a.encode(), 0)
                    }
                    None => Ok(()),
                },
                Err(e) if e.errno() == libc::ENODATA => Ok(()),
                Err(e) => Err(e),
            }
        })
        .or_else(|e| if e == Errno::EPERM { Ok(()) } else { Err(e) })
    }
}
