//! The files of an audit trail: the active log and its rotated files (ours,
//! `audit.log.FIRST-LAST`, or logrotate's `audit.log.1`, `audit.log.2.gz`,
//! `audit.log-20261201`), found beneath the log's directory descriptor and
//! put in chain order by their first record. Everything here reads files an
//! attacker may have planted: no link is followed, only regular files are
//! read, and every line is bounded.

use super::audit_chain::{DigestHead, Head, MAX_LINE, TrailEvent, split_line};
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::{AsRawFd, FromRawFd};

/// Whether `name` is a file of the trail whose active log is `base`.
pub fn belongs(base: &OsStr, name: &OsStr) -> bool {
    let (b, n) = (base.as_bytes(), name.as_bytes());
    n == b || (n.len() > b.len() + 1 && n.starts_with(b) && matches!(n[b.len()], b'.' | b'-'))
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The directory holding the log at `path`, open, and the log's name: a
/// log outside a KMS home (tests, the remote KMS's cache, `audit show`).
pub fn dir_and_name(path: &std::path::Path) -> io::Result<(File, OsString)> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => std::path::Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    Ok((File::open(parent)?, name.to_os_string()))
}

/// lstat of `name` beneath `dir` (trail names are UTF-8: ours, and those
/// listed, which skips any other).
pub fn stat_at(dir: &File, name: &OsStr) -> io::Result<libc::stat> {
    let name = name
        .to_str()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    crate::fs::stat::lstat_at(dir, name)
}

/// Opens `name` beneath `dir` with `flags` (mode 0600 if created), never
/// through a symlink, and only if it is a regular file.
pub fn open_at(dir: &File, name: &OsStr, flags: libc::c_int) -> io::Result<File> {
    let c = c_name(name)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: openat on an open directory with a NUL-terminated name.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor openat just returned, owned from here on.
    let f = unsafe { File::from_raw_fd(fd) };
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            name.to_string_lossy()
        )));
    }
    Ok(f)
}

/// Renames `from` to `to` beneath `dir`, never over an existing file.
pub fn rename_at(dir: &File, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (f, t) = (c_name(from)?, c_name(to)?);
    // SAFETY: NUL-terminated names beneath an open directory.
    let r = unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            f.as_ptr(),
            dir.as_raw_fd(),
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A reader over a trail file's records: gzip (logrotate's `compress`) is
/// told by its magic number, not its name.
pub fn reader(mut f: File) -> io::Result<Box<dyn BufRead>> {
    let mut magic = [0u8; 2];
    let n = read_full(&mut f, &mut magic)?;
    f.seek(SeekFrom::Start(0))?;
    if n == 2 && magic == [0x1f, 0x8b] {
        return Ok(Box::new(BufReader::with_capacity(
            1 << 16,
            flate2::read::MultiGzDecoder::new(f),
        )));
    }
    Ok(Box::new(BufReader::with_capacity(1 << 16, f)))
}

fn read_full(f: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The next line (without its newline) into `buf`: `Ok(None)` at the end,
/// `Ok(Some(false))` for a line longer than MAX_LINE or one the file ends
/// in the middle of (then `buf` holds what was read).
pub fn next_line(r: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<Option<bool>> {
    buf.clear();
    let got = r.take(MAX_LINE as u64 + 1).read_until(b'\n', buf)?;
    if got == 0 {
        return Ok(None);
    }
    if buf.len() > MAX_LINE || buf.last() != Some(&b'\n') {
        return Ok(Some(false));
    }
    buf.pop();
    Ok(Some(true))
}

/// One file of the trail.
#[derive(Debug, Clone)]
pub struct TrailFile {
    pub name: OsString,
    /// The first line's chainSeq; `None` if the file is empty or its first
    /// line is no record (verify says which).
    pub first_seq: Option<u64>,
}

/// The trail's files beneath `dir`, in chain order; empty ones left out.
/// Files whose first line is no record come last, by name.
pub fn files(dir: &File, base: &OsStr) -> io::Result<Vec<TrailFile>> {
    let mut out = vec![];
    for (name, kind) in crate::fs::listing::entries(dir)? {
        let name = OsString::from(name);
        if !belongs(base, &name) || kind != fuser::FileType::RegularFile {
            continue;
        }
        let f = match open_at(dir, &name, libc::O_RDONLY) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // rotated away meanwhile
            Err(e) => return Err(e),
        };
        if f.metadata()?.len() == 0 {
            continue;
        }
        let mut r = reader(f)?;
        let mut buf = Vec::new();
        let first_seq = match next_line(&mut *r, &mut buf)? {
            Some(true) => std::str::from_utf8(&buf)
                .ok()
                .and_then(|l| split_line(l).ok())
                .map(|(_, seq, _)| seq),
            _ => None,
        };
        out.push(TrailFile { name, first_seq });
    }
    out.sort_by(|a, b| {
        (a.first_seq.is_none(), a.first_seq, &a.name).cmp(&(
            b.first_seq.is_none(),
            b.first_seq,
            &b.name,
        ))
    });
    Ok(out)
}

/// The name the trail's file `id` (st_dev, st_ino) has now, if any: where
/// a rotation by another program moved the file a writer held.
pub fn name_of(dir: &File, base: &OsStr, id: (u64, u64)) -> io::Result<Option<OsString>> {
    for (name, _) in crate::fs::listing::entries(dir)? {
        let name = OsString::from(name);
        if belongs(base, &name)
            && name != base
            && let Ok(st) = stat_at(dir, &name)
            && (st.st_dev, st.st_ino) == id
        {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// What reading a stretch of the trail learnt: where the chain and the
/// digests stand after it, and the stretch's first record.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    pub head: Head,
    pub digest: DigestHead,
    /// The first record's chainSeq and eventTime.
    pub first: Option<(u64, String)>,
    /// Bytes read up to the end of the last complete line.
    pub good_bytes: u64,
    /// The stretch ends in a line cut short.
    pub torn: bool,
    /// Why the last complete line is no record, if it is not.
    pub last_bad: Option<String>,
}

const SERVICE_EVENT_MARK: &str = "\"eventType\":\"AwsServiceEvent\"";

/// Reads every line of `r`, carrying on from `from` (head and digest).
/// Lines that are no record are passed over: verify is what judges them.
pub fn scan(r: &mut dyn BufRead, from: Scan) -> io::Result<Scan> {
    let mut s = Scan {
        first: None,
        good_bytes: 0,
        torn: false,
        last_bad: None,
        ..from
    };
    let mut buf = Vec::new();
    while let Some(whole) = next_line(r, &mut buf)? {
        if !whole {
            s.torn = true;
            break;
        }
        s.good_bytes += buf.len() as u64 + 1;
        let Some(line) = std::str::from_utf8(&buf).ok() else {
            s.last_bad = Some("not UTF-8".into());
            continue;
        };
        let (seq, mac) = match split_line(line) {
            Ok((_, seq, mac)) => (seq, mac),
            Err(e) => {
                s.last_bad = Some(e);
                continue;
            }
        };
        s.last_bad = None;
        s.head = Head { seq, mac };
        let value = || serde_json::from_str::<serde_json::Value>(line).ok();
        if s.first.is_none() {
            let time = value()
                .and_then(|v| v["eventTime"].as_str().map(String::from))
                .unwrap_or_default();
            s.first = Some((seq, time));
        }
        if line.contains(SERVICE_EVENT_MARK)
            && let Some(v) = value()
        {
            match TrailEvent::parse(&v) {
                Some(Ok(TrailEvent::Digest { sig, .. })) => s.digest = DigestHead { seq, sig },
                Some(Ok(TrailEvent::Started { digest, .. })) => s.digest = digest,
                _ => {}
            }
        }
    }
    Ok(s)
}

/// The newest chain state among the trail's files other than `skip`: where
/// the chain stood when a log was found empty (rotated, or cut by
/// logrotate's copytruncate). Reads the newest file whole.
pub fn newest(dir: &File, base: &OsStr, skip: &OsStr) -> io::Result<Option<(Scan, OsString)>> {
    let Some(t) = files(dir, base)?
        .into_iter()
        .rfind(|t| t.name != skip && t.first_seq.is_some())
    else {
        return Ok(None);
    };
    let f = open_at(dir, &t.name, libc::O_RDONLY)?;
    let s = scan(&mut *reader(f)?, Scan::default())?;
    Ok((s.head.seq > 0).then_some((s, t.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belongs_takes_rotated_names_and_nothing_else() {
        let b = OsStr::new("audit.log");
        for yes in [
            "audit.log",
            "audit.log.1",
            "audit.log.2.gz",
            "audit.log-20261201",
            "audit.log.1-40",
        ] {
            assert!(belongs(b, OsStr::new(yes)), "{yes}");
        }
        for no in [
            "audit.log.",
            "audit.logx",
            ".audit.log.lock",
            "keystore.json",
            "xaudit.log.1",
            "audit",
        ] {
            assert!(!belongs(b, OsStr::new(no)), "{no}");
        }
    }

    #[test]
    fn next_line_bounds_lines_and_reports_a_torn_end() {
        let data = b"one\ntwo".to_vec();
        let mut r: Box<dyn BufRead> = Box::new(io::Cursor::new(data));
        let mut buf = vec![];
        assert_eq!(next_line(&mut *r, &mut buf).unwrap(), Some(true));
        assert_eq!(buf, b"one");
        assert_eq!(next_line(&mut *r, &mut buf).unwrap(), Some(false));
        assert_eq!(buf, b"two");
        assert_eq!(next_line(&mut *r, &mut buf).unwrap(), None);
        let long = vec![b'x'; MAX_LINE + 10];
        let mut r: Box<dyn BufRead> = Box::new(io::Cursor::new(long));
        assert_eq!(next_line(&mut *r, &mut buf).unwrap(), Some(false));
        assert_eq!(buf.len(), MAX_LINE + 1);
    }

    #[test]
    fn a_gzip_file_is_read_by_its_magic() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log.2");
        let mut gz = flate2::write::GzEncoder::new(
            File::create(&p).unwrap(),
            flate2::Compression::default(),
        );
        gz.write_all(b"hello\nworld\n").unwrap();
        gz.finish().unwrap();
        let mut r = reader(File::open(&p).unwrap()).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello\nworld\n");
    }
}
