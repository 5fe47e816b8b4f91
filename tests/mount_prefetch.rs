//! Read-ahead across files (src/fs/tree/prefetch.rs), seen from the page
//! cache of the backing filesystem: one open through the mount brings the
//! ciphertext of its neighbours into the cache, `--no-prefetch` does not,
//! and what is planted in the cipherdir (a FIFO, symlinks out of it) is
//! never opened or followed.

mod common;
use common::*;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Whether the first page of `p` is in the page cache, by mincore over a
/// mapping of it: unlike a read that may not wait (RWF_NOWAIT), which
/// starts the kernel's read-ahead on a miss, this reads nothing. O_NOATIME:
/// a mapping counts as an access.
fn cached(p: &Path) -> bool {
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    // SAFETY: a fresh shared read-only mapping of one page of an open,
    // non-empty file, unmapped below; mincore writes one byte into `v`.
    unsafe {
        let a = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(a, libc::MAP_FAILED, "mmap {}", p.display());
        let mut v = [0u8; 1];
        let r = libc::mincore(a, 4096, v.as_mut_ptr());
        libc::munmap(a, 4096);
        assert_eq!(r, 0, "mincore {}", p.display());
        v[0] & 1 == 1
    }
}

/// Drops `p`'s clean pages from the page cache (after a sync) and checks
/// they are gone, so what caches them again is the test's doing.
fn evict(p: &Path) {
    let f = File::open(p).unwrap();
    // SAFETY: an advice on an open descriptor; it touches no memory of ours.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "fadvise DONTNEED {}", p.display());
    assert!(
        !cached(p),
        "{} is still cached after DONTNEED: is the cipherdir on a filesystem that keeps pages (tmpfs)?",
        p.display()
    );
}

/// Every regular non-empty file under `dir`, not following symlinks.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() && e.metadata().unwrap().len() > 0 {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Polls (at most `secs`) until `ok` holds; says whether it did.
fn within(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if ok() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An access time older than every mtime here.
const OLD: i64 = 1_000_000_000;

fn content(i: usize) -> Vec<u8> {
    Rng(i as u64 + 1).bytes(20_000 + i * 97)
}

/// d/f0..f39 and d/sub/s0..s4, written through a mount that is gone when
/// this returns, so neither the daemon nor the kernel's FUSE cache holds
/// any of them.
fn tree(fx: &Fixture) {
    let m = fx.mount();
    fs::create_dir_all(fx.m("d/sub")).unwrap();
    for i in 0..40 {
        fs::write(fx.m(&format!("d/f{i}")), content(i)).unwrap();
    }
    for i in 0..5 {
        fs::write(fx.m(&format!("d/sub/s{i}")), content(100 + i)).unwrap();
    }
    m.unmount();
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

#[test]
fn one_open_brings_its_neighbours_ciphertext_into_the_page_cache() {
    for modes in NAME_MODES {
        let fx = Fixture::new_with(modes);
        tree(&fx);
        let (backing_d, backing_sub) = (fx.c("d"), fx.c("d/sub"));
        let all = files_under(&backing_d);
        assert!(all.len() >= 45, "{} backing files: {all:?}", all.len());
        let f0 = fx.c("d/f0");
        let others: Vec<&PathBuf> = all.iter().filter(|p| **p != f0).collect();

        // Off: one open caches nothing but itself.
        all.iter().for_each(|p| evict(p));
        let m = fx.mount_with(&["--no-prefetch"]);
        assert_eq!(fs::read(fx.m("d/f0")).unwrap(), content(0));
        std::thread::sleep(Duration::from_millis(1500));
        let warm: Vec<_> = others.iter().filter(|p| cached(p)).collect();
        assert!(warm.is_empty(), "with --no-prefetch, cached: {warm:?}");
        m.unmount();

        // On (the default): the files beside it and below it follow. Their
        // access times, and their directories', stay as they were (old
        // enough that relatime would set them on a read or a listing).
        all.iter().for_each(|p| evict(p));
        sh_ok(&format!(
            "find '{}' -exec touch -a -h -d @{OLD} {{}} +",
            backing_d.display()
        ));
        let m = fx.mount();
        assert_eq!(fs::read(fx.m("d/f0")).unwrap(), content(0));
        let done = within(10, || others.iter().all(|p| cached(p)));
        let cold: Vec<_> = others.iter().filter(|p| !cached(p)).collect();
        assert!(done, "10 s after one open, not cached: {cold:?}");
        for p in others.iter().copied().chain([&backing_d, &backing_sub]) {
            let at = fs::symlink_metadata(p).unwrap().atime();
            assert_eq!(at, OLD, "read ahead set the access time of {}", p.display());
        }
        let at = fs::metadata(fx.m("d/sub")).unwrap().atime();
        assert_eq!(at, OLD, "d/sub's access time through the mount");
        // What was read ahead reads back as written, through the mount.
        for i in 0..40 {
            assert_eq!(fs::read(fx.m(&format!("d/f{i}"))).unwrap(), content(i));
        }
        for i in 0..5 {
            assert_eq!(
                fs::read(fx.m(&format!("d/sub/s{i}"))).unwrap(),
                content(100 + i)
            );
        }
        m.unmount();
    }
}

#[test]
fn a_planted_fifo_or_symlink_is_never_opened_or_followed() {
    let fx = Fixture::new();
    tree(&fx);
    let backing_d = fx.c("d");
    let all = files_under(&backing_d);
    // Planted behind the daemon's back: a FIFO, and symlinks to a file and
    // to a directory outside the cipherdir.
    let outside = fx.dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let secret = outside.join("secret");
    let inner = outside.join("inner");
    fs::write(&secret, vec![9u8; 50_000]).unwrap();
    fs::write(&inner, vec![8u8; 50_000]).unwrap();
    let fifo = backing_d.join("planted-fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid C path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
    std::os::unix::fs::symlink(&secret, backing_d.join("planted-file-link")).unwrap();
    std::os::unix::fs::symlink(&outside, backing_d.join("planted-dir-link")).unwrap();
    std::os::unix::fs::symlink(&outside, backing_d.join("sub-link")).unwrap();
    // SAFETY: as above.
    unsafe { libc::sync() };
    for p in all.iter().chain([&secret, &inner]) {
        evict(p);
    }

    let m = fx.mount();
    // A listing (walks below d) and an open (reads ahead in and below d).
    let mut names: Vec<String> = fs::read_dir(fx.m("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert!(names.contains(&"f7".to_string()) && names.contains(&"sub".to_string()));
    assert_eq!(fs::read(fx.m("d/f7")).unwrap(), content(7));
    let f7 = fx.c("d/f7");
    let ok = within(10, || all.iter().filter(|p| **p != f7).all(|p| cached(p)));
    assert!(ok, "the neighbours were not read ahead within 10 s");

    // Nothing outside the cipherdir was read through the links.
    assert!(!cached(&secret), "a symlink to a file outside was followed");
    assert!(
        !cached(&inner),
        "a symlink to a directory outside was followed"
    );
    // Nobody holds the FIFO open for reading: a non-blocking writer finds
    // no reader (ENXIO), and no read-ahead thread is stuck in its open.
    let w = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo);
    assert_eq!(w.err().and_then(|e| e.raw_os_error()), Some(libc::ENXIO));
    // The mount serves every file, and a second open in another directory
    // (a new scan) still completes.
    assert_eq!(fs::read(fx.m("d/sub/s3")).unwrap(), content(103));
    for i in 0..40 {
        assert_eq!(fs::read(fx.m(&format!("d/f{i}"))).unwrap(), content(i));
    }
    m.unmount();
}
