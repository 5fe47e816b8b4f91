//! Directory listings read straight from the backing directory, resumable at
//! the backing filesystem's own positions (`d_off`). With those as the FUSE
//! offsets the daemon keeps no state between readdir calls, so the kernel can
//! skip opendir and releasedir (two round trips per directory read), and a
//! listing resumes correctly even when entries are removed in between (rm -rf
//! deletes while it reads): the positions are the filesystem's cookies, not
//! indexes that shift.

use fuser::FileType;
use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::unix::io::{FromRawFd, IntoRawFd};

/// One entry: its name, its kind, and the position just after it.
pub struct Entry<'a> {
    pub name: &'a str,
    pub kind: FileType,
    pub next: u64,
}

/// Calls `f` for each entry of `dir` from position `offset` (0: the start)
/// until `f` returns true (its reply is full) or the directory ends. `f` also
/// gets the open directory, to stat entries relative to it. Names that are not
/// UTF-8 are skipped (the path is the encryption context, a string).
pub fn for_each(
    file: &File,
    offset: u64,
    mut f: impl FnMut(&Entry, &File) -> bool,
) -> io::Result<()> {
    let stream = Stream::open(file)?;
    if offset != 0 {
        // SAFETY: a valid stream; the position came from this directory's d_off.
        unsafe { libc::seekdir(stream.0, offset as libc::c_long) };
    } else {
        // The stream shares its position with `file` and every earlier
        // stream over it: start from the top, not where the last one ended.
        // SAFETY: a valid stream.
        unsafe { libc::rewinddir(stream.0) };
    }
    loop {
        // SAFETY: errno is thread-local; cleared so end-of-directory (NULL,
        // errno untouched) is told apart from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a valid stream, read by this thread only.
        let ent = unsafe { libc::readdir64(stream.0) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(e),
            };
        }
        // SAFETY: readdir64 returned a valid entry, alive until the next call.
        let (name, d_type, next) = unsafe {
            let e = &*ent;
            (CStr::from_ptr(e.d_name.as_ptr()), e.d_type, e.d_off as u64)
        };
        let Ok(name) = name.to_str() else { continue };
        // A d_type is the file-type bits of a mode shifted down by 12 (see
        // IFTODT); filesystems without one say DT_UNKNOWN, and are asked.
        let mode = if d_type == libc::DT_UNKNOWN {
            match super::stat::lstat_at(file, name) {
                Ok(st) => st.st_mode,
                Err(_) => continue,
            }
        } else {
            u32::from(d_type) << 12
        };
        let kind = super::stat::kind(mode);
        if f(&Entry { name, kind, next }, file) {
            return Ok(());
        }
    }
}

/// Every entry of the directory open as `dir` but `.` and `..`: (name, kind).
pub fn entries(dir: &File) -> io::Result<Vec<(String, FileType)>> {
    let mut out = vec![];
    for_each(dir, 0, |e, _| {
        if e.name != "." && e.name != ".." {
            out.push((e.name.to_string(), e.kind));
        }
        false
    })?;
    Ok(out)
}

/// A `DIR*` over a duplicate of the directory's descriptor, closed on drop.
struct Stream(*mut libc::DIR);

impl Stream {
    fn open(dir: &File) -> io::Result<Stream> {
        let dup = dir.try_clone()?;
        let fd = dup.into_raw_fd();
        // SAFETY: fd is an open directory descriptor that the stream now owns.
        let p = unsafe { libc::fdopendir(fd) };
        if p.is_null() {
            let e = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so fd is still ours to close.
            drop(unsafe { File::from_raw_fd(fd) });
            return Err(e);
        }
        Ok(Stream(p))
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: the stream is open and closed once.
        unsafe { libc::closedir(self.0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn names_from(dir: &Path, offset: u64, limit: usize) -> Vec<(String, u64)> {
        let mut out = vec![];
        for_each(&File::open(dir).unwrap(), offset, |e, _| {
            if out.len() == limit {
                return true;
            }
            out.push((e.name.to_string(), e.next));
            false
        })
        .unwrap();
        out
    }

    #[test]
    fn resumes_at_the_position_after_the_last_entry_even_after_removals() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..50 {
            std::fs::write(d.path().join(format!("f{i}")), b"x").unwrap();
        }
        std::fs::create_dir(d.path().join("sub")).unwrap();
        let all = names_from(d.path(), 0, usize::MAX);
        let mut names: Vec<_> = all.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(names.len(), 53); // 50 files, sub, . and ..
        // Read in pages of 7, deleting what was read before each next page:
        // every entry that was never deleted is seen exactly once.
        let (mut seen, mut off) = (vec![], 0);
        loop {
            let page = names_from(d.path(), off, 7);
            let Some(last) = page.last() else { break };
            off = last.1;
            for (n, _) in &page {
                if n.starts_with('f') {
                    std::fs::remove_file(d.path().join(n)).unwrap();
                }
                seen.push(n.clone());
            }
        }
        seen.sort();
        assert_eq!(seen, names);
        let kinds: Vec<_> = {
            let mut k = vec![];
            for_each(&File::open(d.path()).unwrap(), 0, |e, _| {
                k.push((e.name.to_string(), e.kind));
                false
            })
            .unwrap();
            k
        };
        assert!(kinds.contains(&("sub".to_string(), FileType::Directory)));
        // Every f was deleted above; the dots are left out.
        let e = entries(&File::open(d.path()).unwrap()).unwrap();
        assert_eq!(e, vec![("sub".to_string(), FileType::Directory)]);
    }
}
