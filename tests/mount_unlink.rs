//! What a caller sees right after an unlink, the ground any faster unlink
//! (one answered before the backing file is freed, say) must keep: the
//! name gone for lookups, creates, listings, rmdir, renames and links; the
//! parent's times changed; an open file's link count 0 and its bytes still
//! readable; nothing left in the cipherdir once the unmount returns; and an
//! unlink the backing filesystem refuses (immutable, append-only) refused
//! to the caller with its errno, the file kept.

mod common;
use common::*;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Each name, right after its unlink: stat says ENOENT, O_EXCL creates it
/// anew, and the new file is the one read; a listing shows none of the
/// names unlinked; rmdir succeeds; and after the unmount nothing of them
/// is left in the cipherdir.
#[test]
fn an_unlinked_name_is_gone_at_once_for_every_operation() {
    for modes in NAME_MODES {
        let fx = Fixture::new_with(modes);
        let m = fx.mount();
        let d = fx.m("d");
        fs::create_dir(&d).unwrap();
        let long = "L".repeat(255);
        let names: Vec<String> = (0..300)
            .map(|i| format!("f{i}"))
            .chain([long.clone(), format!("{}x", &long[..200])])
            .collect();
        for n in &names {
            fs::write(d.join(n), n.as_bytes()).unwrap();
        }
        for n in &names {
            let p = d.join(n);
            fs::remove_file(&p).unwrap();
            assert_eq!(
                errno(fs::symlink_metadata(&p)),
                Some(libc::ENOENT),
                "{modes:?} {n}"
            );
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .unwrap_or_else(|e| panic!("{modes:?}: {n} made again at once: {e}"));
            std::io::Write::write_all(&mut f, b"again").unwrap();
            drop(f);
            assert_eq!(fs::read(&p).unwrap(), b"again");
        }
        // Every other one unlinked, then listed at once.
        let mut kept = Vec::new();
        for (i, n) in names.iter().enumerate() {
            if i % 3 == 0 {
                kept.push(n.clone());
            } else {
                fs::remove_file(d.join(n)).unwrap();
            }
        }
        let mut listed: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        listed.sort();
        kept.sort();
        assert_eq!(
            listed, kept,
            "{modes:?}: the listing right after the unlinks"
        );
        for n in &kept {
            fs::remove_file(d.join(n)).unwrap();
        }
        fs::remove_dir(&d).unwrap_or_else(|e| panic!("{modes:?}: rmdir right after: {e}"));
        assert_eq!(errno(fs::metadata(&d)), Some(libc::ENOENT));
        m.unmount();
        let left: Vec<_> = fs::read_dir(&fx.cipher)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().starts_with(".kmsfs") && n != "kmsfs.conf")
            .collect();
        assert!(
            left.is_empty(),
            "{modes:?}: left in the cipherdir: {left:?}"
        );
    }
}

/// A rename onto a name just unlinked, a hard link made under one, and a
/// directory made under one all work, and the results read right.
#[test]
fn a_name_just_unlinked_takes_a_rename_a_link_and_a_directory() {
    let fx = Fixture::new();
    let m = fx.mount();
    for i in 0..50 {
        let (a, b, c) = (
            fx.m(&format!("a{i}")),
            fx.m(&format!("b{i}")),
            fx.m(&format!("c{i}")),
        );
        fs::write(&a, format!("a{i}")).unwrap();
        fs::write(&b, "old").unwrap();
        fs::write(&c, "old").unwrap();
        fs::remove_file(&b).unwrap();
        fs::rename(&a, &b).unwrap();
        assert_eq!(fs::read_to_string(&b).unwrap(), format!("a{i}"));
        fs::remove_file(&c).unwrap();
        fs::hard_link(&b, &c).unwrap();
        assert_eq!(fs::read_to_string(&c).unwrap(), format!("a{i}"));
        assert_eq!(fs::metadata(&c).unwrap().nlink(), 2);
        fs::remove_file(&b).unwrap();
        fs::remove_file(&c).unwrap();
        fs::write(&b, "x").unwrap();
        fs::remove_file(&b).unwrap();
        fs::create_dir(&b).unwrap();
        fs::remove_dir(&b).unwrap();
    }
    let left: Vec<_> = fs::read_dir(fx.m("")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    m.unmount();
}

/// stat of the parent right after an unlink shows the times the unlink
/// gave it; an open file unlinked has link count 0 at once.
#[test]
fn the_parents_times_and_an_open_files_link_count_change_with_the_unlink() {
    let fx = Fixture::new();
    let m = fx.mount();
    let d = fx.m("d");
    fs::create_dir(&d).unwrap();
    for i in 0..20 {
        let p = d.join(format!("f{i}"));
        fs::write(&p, b"bytes").unwrap();
        let before = fs::metadata(&d).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let f = fs::File::open(&p).unwrap();
        fs::remove_file(&p).unwrap();
        let after = fs::metadata(&d).unwrap();
        assert!(
            (after.mtime(), after.mtime_nsec()) > (before.mtime(), before.mtime_nsec())
                && (after.ctime(), after.ctime_nsec()) > (before.ctime(), before.ctime_nsec()),
            "round {i}: the parent's mtime and ctime moved"
        );
        assert_eq!(f.metadata().unwrap().nlink(), 0, "round {i}");
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut buf).unwrap();
        assert_eq!(buf, b"bytes", "an open file unlinked still reads");
    }
    m.unmount();
}

/// Everything unlinked just before the unmount is gone from the cipherdir
/// once the unmount returns, and stays gone after a remount.
#[test]
fn the_unmount_finishes_every_unlink_it_answered() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::create_dir(fx.m("d")).unwrap();
    for i in 0..1000 {
        fs::write(fx.m(&format!("d/f{i}")), b"x").unwrap();
    }
    let backing = fx.c("d");
    assert_eq!(fs::read_dir(&backing).unwrap().count(), 1000);
    for i in 0..1000 {
        fs::remove_file(fx.m(&format!("d/f{i}"))).unwrap();
    }
    m.unmount();
    let left = fs::read_dir(&backing).unwrap().count();
    assert_eq!(left, 0, "backing files left after the unmount");
    let m = fx.mount();
    assert_eq!(fs::read_dir(fx.m("d")).unwrap().count(), 0);
    m.unmount();
}

const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
const FS_IOC_SETFLAGS: libc::c_ulong = 0x4008_6602;
const FS_IMMUTABLE_FL: libc::c_long = 0x10;
const FS_APPEND_FL: libc::c_long = 0x20;

/// Sets or clears `flag` on `path` (chattr +i / +a), as a hostile owner of
/// the cipherdir could.
fn set_flag(path: &std::path::Path, flag: libc::c_long, on: bool) {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    let mut flags: libc::c_long = 0;
    // SAFETY: a valid descriptor and a long to fill in.
    assert_eq!(
        unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS, &mut flags) },
        0
    );
    flags = if on { flags | flag } else { flags & !flag };
    // SAFETY: as above.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SETFLAGS, &flags) };
    assert_eq!(
        r,
        0,
        "chattr on {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A backing file made immutable, or its directory immutable or
/// append-only, cannot be unlinked: the caller gets EPERM (not a success
/// followed by the file coming back), the file stays readable, and once
/// the flag is gone the unlink works.
#[test]
fn an_unlink_the_backing_filesystem_refuses_is_refused_to_the_caller() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::create_dir(fx.m("d")).unwrap();
    fs::write(fx.m("d/f"), b"kept").unwrap();
    fs::write(fx.m("d/g"), b"kept too").unwrap();
    let (bf, bd) = (fx.c("d/f"), fx.c("d"));
    for (what, path, flag) in [
        ("immutable file", &bf, FS_IMMUTABLE_FL),
        ("immutable directory", &bd, FS_IMMUTABLE_FL),
        ("append-only directory", &bd, FS_APPEND_FL),
    ] {
        set_flag(path, flag, true);
        let r = fs::remove_file(fx.m("d/f"));
        set_flag(path, flag, false);
        assert_eq!(errno(r), Some(libc::EPERM), "{what}");
        assert_eq!(fs::read(fx.m("d/f")).unwrap(), b"kept", "{what}");
    }
    fs::remove_file(fx.m("d/f")).unwrap();
    assert_eq!(
        fs::metadata(fx.m("d/f")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(fs::read(fx.m("d/g")).unwrap(), b"kept too");
    m.unmount();
    assert!(!bf.exists());
}
