//! Node attributes from either `std::fs::Metadata` or a raw `libc::stat`, so
//! a directory listing can stat its entries relative to the open directory
//! (one `fstatat` each, no path walk) and still share one attribute mapping.

use fuser::FileType;
use std::ffi::CString;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;

/// The fields of a stat the FUSE attributes are built from.
pub trait NodeStat {
    fn mode(&self) -> u32;
    fn size(&self) -> u64;
    fn blocks(&self) -> u64;
    fn atime(&self) -> (i64, i64);
    fn mtime(&self) -> (i64, i64);
    fn ctime(&self) -> (i64, i64);
    fn nlink(&self) -> u64;
    fn uid(&self) -> u32;
    fn gid(&self) -> u32;
    fn rdev(&self) -> u64;
}

impl NodeStat for Metadata {
    fn mode(&self) -> u32 {
        MetadataExt::mode(self)
    }
    fn size(&self) -> u64 {
        self.len()
    }
    fn blocks(&self) -> u64 {
        MetadataExt::blocks(self)
    }
    fn atime(&self) -> (i64, i64) {
        (MetadataExt::atime(self), self.atime_nsec())
    }
    fn mtime(&self) -> (i64, i64) {
        (MetadataExt::mtime(self), self.mtime_nsec())
    }
    fn ctime(&self) -> (i64, i64) {
        (MetadataExt::ctime(self), self.ctime_nsec())
    }
    fn nlink(&self) -> u64 {
        MetadataExt::nlink(self)
    }
    fn uid(&self) -> u32 {
        MetadataExt::uid(self)
    }
    fn gid(&self) -> u32 {
        MetadataExt::gid(self)
    }
    fn rdev(&self) -> u64 {
        MetadataExt::rdev(self)
    }
}

impl NodeStat for libc::stat {
    fn mode(&self) -> u32 {
        self.st_mode
    }
    fn size(&self) -> u64 {
        self.st_size as u64
    }
    fn blocks(&self) -> u64 {
        self.st_blocks as u64
    }
    fn atime(&self) -> (i64, i64) {
        (self.st_atime, self.st_atime_nsec)
    }
    fn mtime(&self) -> (i64, i64) {
        (self.st_mtime, self.st_mtime_nsec)
    }
    fn ctime(&self) -> (i64, i64) {
        (self.st_ctime, self.st_ctime_nsec)
    }
    fn nlink(&self) -> u64 {
        self.st_nlink
    }
    fn uid(&self) -> u32 {
        self.st_uid
    }
    fn gid(&self) -> u32 {
        self.st_gid
    }
    fn rdev(&self) -> u64 {
        self.st_rdev
    }
}

/// The FUSE node kind of a mode's file-type bits.
pub fn kind(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

/// fstat of an open file.
pub fn fstat(f: &File) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value; fstat fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: an open descriptor and a stat buffer.
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// lstat of `name` inside the open directory `dir`.
pub fn lstat_at(dir: &File, name: &str) -> io::Result<libc::stat> {
    let c = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: an all-zero stat is a valid value; fstatat fills it in.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid directory descriptor, NUL-terminated name, stat buffer.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A node's access and modification times, as utimensat takes them.
pub fn times_of(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_at_agrees_with_metadata() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), b"hello").unwrap();
        std::os::unix::fs::symlink("f", d.path().join("l")).unwrap();
        let dir = File::open(d.path()).unwrap();
        for name in ["f", "l"] {
            let raw = lstat_at(&dir, name).unwrap();
            let m = std::fs::symlink_metadata(d.path().join(name)).unwrap();
            assert_eq!(NodeStat::mode(&raw), NodeStat::mode(&m));
            assert_eq!(NodeStat::size(&raw), NodeStat::size(&m));
            assert_eq!(NodeStat::mtime(&raw), NodeStat::mtime(&m));
            assert_eq!(NodeStat::uid(&raw), NodeStat::uid(&m));
        }
        assert_eq!(
            kind(lstat_at(&dir, "l").unwrap().st_mode),
            FileType::Symlink
        );
        assert_eq!(
            kind(lstat_at(&dir, ".").unwrap().st_mode),
            FileType::Directory
        );
        assert_eq!(
            lstat_at(&dir, "missing").unwrap_err().raw_os_error(),
            Some(libc::ENOENT)
        );
    }
}
