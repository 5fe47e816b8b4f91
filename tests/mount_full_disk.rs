//! A full backing filesystem: the operation that runs out of space fails
//! with ENOSPC, nothing acknowledged before is lost, no file becomes
//! unreadable (no torn block, no name without a header), and once space is
//! freed everything works and reads back as written.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

/// A fixture whose cipherdir is a small tmpfs of its own.
fn small_cipherdir(size: &str) -> (Fixture, SmallFs) {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let small = SmallFs::mount(&dir.path().join("cipher"), size, "0700");
    (Fixture::init_in(dir), small)
}

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j * 31 + i * 7) as u8).collect()
}

/// Writes and fsyncs: with the writeback cache, ENOSPC may come from the
/// write or only from the fsync that pushes the pages to the daemon.
fn write_synced(p: &Path, data: &[u8], append: bool) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(p)?;
    f.write_all(data)?;
    f.sync_all()
}

fn enospc(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// Every file in the model reads back: exactly, or, for a file whose last
/// write failed (`Prefix`), beginning with what was acknowledged before it
/// (the failed write may have landed in part: with the writeback cache the
/// kernel even keeps the pages it could not write back). No other file
/// reads with EIO.
#[derive(Clone)]
enum Want {
    Exactly(Vec<u8>),
    Prefix(Vec<u8>),
}

fn check(fx: &Fixture, model: &BTreeMap<String, Want>) {
    for (name, want) in model {
        let got = fs::read(fx.m(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        match want {
            Want::Exactly(w) => {
                assert!(
                    got == *w,
                    "{name}: {} bytes, {} expected",
                    got.len(),
                    w.len()
                )
            }
            Want::Prefix(w) => assert!(got.starts_with(w), "{name}: lost acknowledged data"),
        }
    }
    for e in fs::read_dir(&fx.mnt).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            assert!(fs::read(&p).is_ok(), "{} became unreadable", p.display());
        }
    }
}

fn both(mode: &[&str]) {
    let (fx, _small) = small_cipherdir("6m");
    let mut model = BTreeMap::new();
    {
        let _m = fx.mount_with(mode);
        // Files of 10,000 bytes (a partial last block) until the disk is full.
        let mut full = false;
        for i in 0..2000 {
            let name = format!("f{i}");
            match write_synced(&fx.m(&name), &content(i, 10_000), false) {
                Ok(()) => {
                    model.insert(name, Want::Exactly(content(i, 10_000)));
                }
                Err(e) => {
                    assert!(enospc(&e), "{name}: {e}");
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "the 6 MiB filesystem never filled");
        // Every operation that needs space now says so, and loses nothing.
        let first = model.keys().next().unwrap().clone();
        let e = write_synced(&fx.m(&first), &[7u8; 50_000], true).unwrap_err();
        assert!(enospc(&e), "append: {e}");
        model.insert(first.clone(), Want::Prefix(content(0, 10_000)));
        let before = model.len();
        let r = write_synced(&fx.m("new-on-a-full-disk"), &[1u8; 20_000], false);
        assert!(r.as_ref().is_err_and(enospc), "create: {r:?}");
        // A create that failed leaves no name without a header, a file
        // written partly leaves a readable prefix.
        if let Ok(b) = fs::read(fx.m("new-on-a-full-disk")) {
            assert!(
                b.iter().all(|&x| x == 1),
                "a torn new file reads as data it was not given"
            );
        }
        let r = fs::OpenOptions::new()
            .write(true)
            .open(fx.m(&first))
            .and_then(|f| f.set_len(3_000_000));
        if let Err(e) = &r {
            assert!(enospc(e), "truncate up: {e}");
        }
        check(&fx, &model);
        assert_eq!(model.len(), before);
        // Free space, and everything works again.
        for i in 0..40 {
            let name = format!("f{i}");
            fs::remove_file(fx.m(&name)).unwrap();
            model.remove(&name);
        }
        let _ = fs::remove_file(fx.m("new-on-a-full-disk"));
        let second = model.keys().next().unwrap().clone();
        write_synced(&fx.m(&second), b"appended", true).unwrap();
        if let Some(Want::Exactly(v)) = model.get_mut(&second) {
            v.extend_from_slice(b"appended");
        }
        write_synced(&fx.m("after"), b"after the disk was full", false).unwrap();
        model.insert(
            "after".into(),
            Want::Exactly(b"after the disk was full".to_vec()),
        );
        fs::create_dir(fx.m("d")).unwrap();
        fs::rename(fx.m("after"), fx.m("d/after")).unwrap();
        let v = model.remove("after").unwrap();
        model.insert("d/after".into(), v);
        check(&fx, &model);
    }
    // And after a remount.
    let _m = fx.mount_with(mode);
    check(&fx, &model);
}

#[test]
fn a_full_backing_disk_loses_nothing_acknowledged() {
    both(&[]);
}

#[test]
fn a_full_backing_disk_loses_nothing_acknowledged_without_the_writeback_cache() {
    both(&["--no-writeback-cache"]);
}

/// A directory rename on a full disk cannot write its journal: it fails
/// with ENOSPC and every file stays under its old name.
#[test]
fn a_directory_rename_on_a_full_disk_fails_cleanly() {
    let (fx, _small) = small_cipherdir("4m");
    let _m = fx.mount();
    fs::create_dir(fx.m("d")).unwrap();
    write_synced(&fx.m("d/inner"), b"inner", false).unwrap();
    let mut i = 0;
    while write_synced(&fx.m(&format!("fill{i}")), &[0u8; 100_000], false).is_ok() {
        i += 1;
    }
    // Fill the last pages too.
    while write_synced(&fx.m(&format!("small{i}")), &[0u8; 1_000], false).is_ok() {
        i += 1;
    }
    match fs::rename(fx.m("d"), fx.m("e")) {
        Err(e) => {
            assert!(enospc(&e), "{e}");
            assert_eq!(fs::read(fx.m("d/inner")).unwrap(), b"inner");
            assert!(!fx.m("e").exists());
        }
        // A journal that still fit is fine too: then the rename is whole.
        Ok(()) => assert_eq!(fs::read(fx.m("e/inner")).unwrap(), b"inner"),
    }
    for e in fs::read_dir(&fx.mnt).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            assert!(fs::read(&p).is_ok(), "{} became unreadable", p.display());
        }
    }
}

fn free_bytes(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: an all-zero statvfs is valid; statvfs fills it in.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C path and statvfs buffer.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s.f_bavail * s.f_frsize
}

/// An unlink is answered before a small file's inode is evicted, which
/// gives its space back (tree/reaper.rs): statfs right after it, and a write
/// right after it on a full disk, must not see the difference.
#[test]
fn space_unlinks_free_is_there_at_once_for_statfs_and_writes() {
    const LEN: usize = 100_000;
    const BATCH: usize = 20;
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let _small = SmallFs::ext4(&dir.path().join("cipher"), 16, "0700");
    let fx = Fixture::init_in(dir);
    let _m = fx.mount();
    // Fill the disk with small files.
    let mut names = Vec::new();
    for i in 0..2000 {
        let name = format!("f{i}");
        match write_synced(&fx.m(&name), &content(i, LEN), false) {
            Ok(()) => names.push(name),
            Err(e) => {
                assert!(enospc(&e), "{name}: {e}");
                let _ = fs::remove_file(fx.m(&name));
                break;
            }
        }
    }
    assert!(
        names.len() >= 4 * BATCH,
        "only {} files fitted",
        names.len()
    );
    let again = content(7, (BATCH - 1) * LEN);
    for round in 0..3 {
        let before = free_bytes(&fx.mnt);
        for name in names.drain(..BATCH) {
            fs::remove_file(fx.m(&name)).unwrap();
        }
        let after = free_bytes(&fx.mnt);
        assert!(
            after >= before + (BATCH * LEN) as u64,
            "round {round}: statfs right after {BATCH} unlinks of {LEN} bytes says {after} bytes free, {before} before"
        );
        let name = format!("again{round}");
        write_synced(&fx.m(&name), &again, false)
            .unwrap_or_else(|e| panic!("round {round}: writing right after the unlinks: {e}"));
        assert!(
            fs::read(fx.m(&name)).unwrap() == again,
            "{name} reads back wrong"
        );
    }
    for name in &names {
        let i: usize = name[1..].parse().unwrap();
        assert!(fs::read(fx.m(name)).unwrap() == content(i, LEN), "{name}");
    }
}
