//! A test fixture, not part of kmsfs: a FUSE filesystem holding one file,
//! `disk`, whose reads and writes go to a disk image and fail with EIO where
//! a control file says. A loop device over `disk` then gives the tests a
//! block device that fails the way a dying disk does (this kernel has no
//! device-mapper and no fault injection), with a real ext4 on top deciding
//! what a failed block write means (an error on fsync, then a journal abort
//! and a read-only remount), and kmsfs's cipherdir on that ext4.
//!
//! Usage: `faultfs IMAGE MOUNTPOINT CONTROL`. CONTROL holds one rule a line,
//! re-read whenever it changes (its mtime and size are checked on every
//! request, so a rule applies from the first request after it is written):
//!
//! ```text
//! read START LEN     reads overlapping bytes [START, START+LEN) fail
//! write START LEN    writes overlapping that range fail
//! read all           every read fails
//! write all          every write and flush fails
//! ```
//!
//! An empty or missing CONTROL means healthy storage. Each injected fault is
//! counted; the counts are written to CONTROL.count after each one.

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

const DISK: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

#[derive(Default, Clone, PartialEq)]
struct Rules {
    read: Vec<(u64, u64)>,
    write: Vec<(u64, u64)>,
}

impl Rules {
    fn parse(text: &str) -> Rules {
        let mut r = Rules::default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let range = match w.get(1..) {
                Some(["all"]) => Some((0, u64::MAX)),
                Some([s, l]) => match (s.parse::<u64>(), l.parse::<u64>()) {
                    (Ok(s), Ok(l)) => Some((s, s.saturating_add(l))),
                    _ => None,
                },
                _ => None,
            };
            match (w.first(), range) {
                (Some(&"read"), Some(x)) => r.read.push(x),
                (Some(&"write"), Some(x)) => r.write.push(x),
                (None, _) => {}
                _ => eprintln!("faultfs: ignoring rule {line:?}"),
            }
        }
        r
    }

    fn hits(ranges: &[(u64, u64)], off: u64, len: u64) -> bool {
        let end = off.saturating_add(len.max(1));
        ranges.iter().any(|&(s, e)| off < e && s < end)
    }
}

struct State {
    rules: Rules,
    seen: Option<(i64, i64, u64)>,
    faults: (u64, u64),
}

struct FaultFs {
    image: File,
    control: PathBuf,
    state: Mutex<State>,
}

impl FaultFs {
    fn rules(&self) -> Rules {
        let mut st = self.state.lock().unwrap();
        let now = std::fs::metadata(&self.control)
            .ok()
            .map(|m| (m.mtime(), m.mtime_nsec(), m.size()));
        if now != st.seen {
            st.seen = now;
            let rules = Rules::parse(&std::fs::read_to_string(&self.control).unwrap_or_default());
            if rules != st.rules {
                eprintln!(
                    "faultfs: now failing reads {:?}, writes {:?}",
                    rules.read, rules.write
                );
            }
            st.rules = rules;
        }
        st.rules.clone()
    }

    fn count(&self, write: bool) {
        let mut st = self.state.lock().unwrap();
        if write {
            st.faults.1 += 1;
        } else {
            st.faults.0 += 1;
        }
        let text = format!("read {}\nwrite {}\n", st.faults.0, st.faults.1);
        let _ = std::fs::write(self.control.with_extension("count"), text);
    }

    fn attr(&self, ino: INodeNo) -> FileAttr {
        let (kind, perm, size) = if ino == DISK {
            let len = self.image.metadata().map(|m| m.len()).unwrap_or(0);
            (FileType::RegularFile, 0o600, len)
        } else {
            (FileType::Directory, 0o700, 0)
        };
        FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for FaultFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == "disk" {
            reply.entry(&TTL, &self.attr(DISK), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply.attr(&TTL, &self.attr(ino));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == DISK {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if Rules::hits(&self.rules().read, offset, size.into()) {
            self.count(false);
            return reply.error(Errno::EIO);
        }
        let mut buf = vec![0u8; size as usize];
        match self.image.read_at(&mut buf, offset) {
            Ok(n) => reply.data(&buf[..n]),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if Rules::hits(&self.rules().write, offset, data.len() as u64) {
            self.count(true);
            return reply.error(Errno::EIO);
        }
        match self.image.write_all_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(_) => reply.error(Errno::EIO),
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
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A cache flush of a disk that fails writes fails too.
        if self.rules().write.contains(&(0, u64::MAX)) {
            self.count(true);
            return reply.error(Errno::EIO);
        }
        match self.image.sync_data() {
            Ok(()) => reply.ok(),
            Err(_) => reply.error(Errno::EIO),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (DISK, FileType::RegularFile, "disk"),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: faultfs IMAGE MOUNTPOINT CONTROL (a test fixture; see its source)");
        std::process::exit(2);
    }
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args[1])
        .unwrap_or_else(|e| {
            eprintln!("faultfs: cannot open the image {}: {e}", args[1]);
            std::process::exit(1)
        });
    let fs = FaultFs {
        image,
        control: PathBuf::from(&args[3]),
        state: Mutex::new(State {
            rules: Rules::default(),
            seen: None,
            faults: (0, 0),
        }),
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("faultfs".into()),
        fuser::MountOption::Subtype("faultfs".into()),
    ];
    if let Err(e) = fuser::mount(fs, &args[2], &config) {
        eprintln!("faultfs: cannot mount on {}: {e}", args[2]);
        std::process::exit(1);
    }
}
