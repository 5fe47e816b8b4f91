//! Filesystem operations on a real mount: what programs rely on.

mod common;
use common::*;
use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};

#[test]
fn plaintext_in_mount_ciphertext_in_cipherdir() {
    let fx = Fixture::new();
    let m = fx.mount();
    let secret = b"the quick brown fox jumps over the lazy dog".repeat(200);
    fs::write(fx.m("doc.txt"), &secret).unwrap();
    assert_eq!(fs::read(fx.m("doc.txt")).unwrap(), secret);
    let raw = fs::read(fx.c("doc.txt")).unwrap();
    assert!(
        !raw.windows(9).any(|w| w == b"quick bro"),
        "plaintext leaked into the cipherdir"
    );
    assert_eq!(&raw[..8], b"KMSFS\0v1");
    // stat agrees without decrypting; config and lock files are hidden.
    assert_eq!(
        fs::metadata(fx.m("doc.txt")).unwrap().len(),
        secret.len() as u64
    );
    let names: Vec<String> = fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["doc.txt".to_string()]);
    m.unmount();
    let m = fx.mount();
    assert_eq!(
        fs::read(fx.m("doc.txt")).unwrap(),
        secret,
        "survives a remount"
    );
    // The unwrap on the fresh mount is audited with the path and the reader.
    let recs = fx.audit();
    let dec = recs
        .iter()
        .rev()
        .find(|r| r["eventName"] == "Decrypt")
        .expect("a Decrypt record");
    assert_eq!(
        dec["requestParameters"]["encryptionContext"]["kmsfs:path"],
        "doc.txt"
    );
    assert_eq!(dec["userIdentity"]["invokedBy"], "mount");
    assert!(dec["userIdentity"]["pid"].as_u64().unwrap() > 0);
    m.unmount();
}

#[test]
fn open_flags_truncate_append_excl() {
    let fx = Fixture::new();
    let _m = fx.mount();
    let p = fx.m("f");
    fs::write(&p, b"0123456789").unwrap();
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"abc").unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"0123456789abc");
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"");
    // Truncate grows with zeros and shrinks mid-block.
    let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.set_len(10_000).unwrap();
    assert_eq!(fs::read(&p).unwrap(), vec![0u8; 10_000]);
    let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
    f.seek(SeekFrom::Start(4090)).unwrap();
    f.write_all(&[7u8; 20]).unwrap();
    f.set_len(4095).unwrap();
    let data = fs::read(&p).unwrap();
    assert_eq!(data.len(), 4095);
    assert_eq!(&data[4090..], &[7u8; 5]);
    // Reads across block boundaries at odd offsets.
    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&p, &big).unwrap();
    let mut f = fs::File::open(&p).unwrap();
    f.seek(SeekFrom::Start(4000)).unwrap();
    let mut buf = vec![0u8; 9000];
    f.read_exact(&mut buf).unwrap();
    assert_eq!(buf, &big[4000..13000]);
}

#[test]
fn metadata_dirs_links_fifos() {
    let fx = Fixture::new();
    let _m = fx.mount();
    let p = fx.m("f");
    fs::write(&p, b"x").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
    std::os::unix::fs::chown(&p, Some(1234), Some(4321)).unwrap();
    let md = fs::metadata(&p).unwrap();
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
    sh_ok(&format!(
        "touch -d '2001-02-03 04:05:06 UTC' {}",
        p.display()
    ));
    assert_eq!(fs::metadata(&p).unwrap().mtime(), 981173106);

    fs::create_dir_all(fx.m("a/b/c")).unwrap();
    assert_eq!(
        fs::remove_dir(fx.m("a")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_dir(fx.m("a/b/c")).unwrap();

    std::os::unix::fs::symlink("../f", fx.m("a/link")).unwrap();
    assert_eq!(
        fs::read_link(fx.m("a/link")).unwrap().to_str().unwrap(),
        "../f"
    );
    assert_eq!(fs::symlink_metadata(fx.m("a/link")).unwrap().len(), 4);
    assert_eq!(fs::read(fx.m("a/link")).unwrap(), b"x");
    let stored = fs::read_link(fx.c("a/link")).unwrap();
    assert!(
        stored.to_str().unwrap().starts_with("kmsfs1:"),
        "target is encrypted: {stored:?}"
    );

    // A hard link is a second name with its own key (mount_hardlinks.rs).
    fs::hard_link(&p, fx.m("hard")).unwrap();
    assert_eq!(fs::metadata(fx.m("hard")).unwrap().nlink(), 2);
    assert_eq!(
        fs::metadata(fx.m("hard")).unwrap().ino(),
        fs::metadata(&p).unwrap().ino()
    );
    assert_eq!(fs::read(fx.m("hard")).unwrap(), fs::read(&p).unwrap());

    sh_ok(&format!("mkfifo {}", fx.m("fifo").display()));
    assert!(fs::metadata(fx.m("fifo")).unwrap().file_type().is_fifo());

    // Mode bits still decide execution without default_permissions.
    fs::write(fx.m("s.sh"), b"#!/bin/sh\necho ran\n").unwrap();
    fs::set_permissions(fx.m("s.sh"), fs::Permissions::from_mode(0o644)).unwrap();
    assert!(!sh(&fx.m("s.sh").display().to_string()).status.success());
    fs::set_permissions(fx.m("s.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(sh_ok(&fx.m("s.sh").display().to_string()).trim(), "ran");

    // Reserved names cannot be created or seen.
    assert!(fs::write(fx.m("kmsfs.conf"), b"x").is_err());
    assert!(fs::write(fx.m(".kmsfs-x"), b"x").is_err());

    // xattrs: refused unless the mount keeps them (--xattrs, mount_xattr.rs).
    let o = sh(&format!("setfattr -n user.k -v v {}", p.display()));
    assert!(!o.status.success());
    let st = sh_ok(&format!("stat -f -c %b {}", fx.mnt.display()));
    assert!(
        st.trim().parse::<u64>().unwrap() > 0,
        "statfs reports the backing filesystem"
    );
}

#[test]
fn renames_files_dirs_and_noreplace() {
    let fx = Fixture::new();
    let _m = fx.mount();
    fs::create_dir_all(fx.m("d/sub")).unwrap();
    fs::write(fx.m("d/one"), b"1").unwrap();
    fs::write(fx.m("d/sub/two"), b"2").unwrap();
    std::os::unix::fs::symlink("one", fx.m("d/ln")).unwrap();
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    assert_eq!(fs::read(fx.m("e/one")).unwrap(), b"1");
    assert_eq!(fs::read(fx.m("e/sub/two")).unwrap(), b"2");
    assert_eq!(
        fs::read_link(fx.m("e/ln")).unwrap().to_str().unwrap(),
        "one"
    );
    assert!(!fx.c("d").exists());
    fs::rename(fx.m("e/one"), fx.m("top")).unwrap();
    assert_eq!(fs::read(fx.m("top")).unwrap(), b"1");
    // Over an existing file.
    fs::write(fx.m("other"), b"old").unwrap();
    fs::rename(fx.m("top"), fx.m("other")).unwrap();
    assert_eq!(fs::read(fx.m("other")).unwrap(), b"1");
    // No journal or temporaries are left behind.
    let left: Vec<_> = fs::read_dir(&fx.cipher)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().contains("journal")),
        "{left:?}"
    );
    // RENAME_NOREPLACE via renameat2.
    fs::write(fx.m("a"), b"a").unwrap();
    let (a, b) = (
        std::ffi::CString::new(fx.m("a").to_str().unwrap()).unwrap(),
        std::ffi::CString::new(fx.m("other").to_str().unwrap()).unwrap(),
    );
    let r = rename2(&a, &b, libc::RENAME_NOREPLACE);
    assert_eq!(r, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EEXIST)
    );
    // RENAME_EXCHANGE swaps the two (mount_posix.rs covers every kind).
    let before_other = fs::read(fx.m("other")).unwrap();
    let r = rename2(&a, &b, libc::RENAME_EXCHANGE);
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    assert_eq!(fs::read(fx.m("other")).unwrap(), b"a");
    assert_eq!(fs::read(fx.m("a")).unwrap(), before_other);
    let r = rename2(&a, &b, libc::RENAME_EXCHANGE);
    assert_eq!(r, 0);
    assert_eq!(fs::read(fx.m("a")).unwrap(), b"a");
}

#[test]
fn mmap_shared_writable() {
    let fx = Fixture::new();
    let _m = fx.mount();
    let p = fx.m("mapped");
    fs::write(&p, vec![b'a'; 3 * 4096 + 100]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(0)
        .open(&p)
        .unwrap();
    let len = 3 * 4096 + 100;
    use std::os::unix::io::AsRawFd;
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let s = std::slice::from_raw_parts_mut(ptr as *mut u8, len);
        assert_eq!(s[5000], b'a');
        s[5000] = b'Z';
        s[len - 1] = b'Y';
        assert_eq!(libc::msync(ptr, len, libc::MS_SYNC), 0);
        libc::munmap(ptr, len);
    }
    drop(f);
    let data = fs::read(&p).unwrap();
    assert_eq!((data[5000], data[len - 1], data[4999]), (b'Z', b'Y', b'a'));
}

#[test]
fn disabled_key_gives_eacces_and_durability_after_fsync_and_kill() {
    let fx = Fixture::new();
    let m = fx.mount_foreground();
    let mut f = fs::File::create(fx.m("durable")).unwrap();
    f.write_all(&vec![9u8; 100_000]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.kill();
    let m = fx.mount();
    assert_eq!(
        fs::read(fx.m("durable")).unwrap(),
        vec![9u8; 100_000],
        "fsync'd data survives SIGKILL"
    );
    m.unmount();

    // The filesystem's key is managed by kmsfs: the CLI cannot disable it...
    let key = fx.config()["KeyId"].as_str().unwrap().to_string();
    let o = fx.cli(&["kms", "disable-key", "--key-id", &key]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("AccessDeniedException"));
}

#[test]
fn customer_key_disabled_while_mounted_gives_eacces() {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let (cipher, mnt, home, key) = (
        dir.path().join("c"),
        dir.path().join("m"),
        dir.path().join("h"),
        dir.path().join("k"),
    );
    fs::create_dir(&mnt).unwrap();
    fs::write(&key, [1u8; 32]).unwrap();
    let cli = |args: &[&str]| {
        run_timeout(
            std::process::Command::new(BIN)
                .arg("--kms-home")
                .arg(&home)
                .arg("--key-file")
                .arg(&key)
                .args(args),
            60,
        )
    };
    let o = cli(&[
        "kms",
        "create-key",
        "--query",
        "KeyMetadata.KeyId",
        "--output",
        "text",
    ]);
    let kid = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(
        cli(&["init", cipher.to_str().unwrap(), "--key-id", &kid])
            .status
            .success()
    );
    let fx = Fixture {
        dir,
        cipher,
        mnt,
        home,
        key,
    };
    let m = fx.mount();
    fs::write(fx.m("a"), b"data").unwrap();
    assert!(
        fx.cli(&["kms", "disable-key", "--key-id", &kid])
            .status
            .success()
    );
    assert_eq!(read_err(&fx.m("a")), Some(libc::EACCES));
    assert_eq!(
        fs::write(fx.m("b"), b"x").unwrap_err().raw_os_error(),
        Some(libc::EACCES)
    );
    assert!(
        fx.cli(&["kms", "enable-key", "--key-id", &kid])
            .status
            .success()
    );
    assert_eq!(fs::read(fx.m("a")).unwrap(), b"data");
    m.unmount();
    // Mounting with the key disabled fails with a reason.
    assert!(
        fx.cli(&["kms", "disable-key", "--key-id", &kid])
            .status
            .success()
    );
    let o = fx.cli(&[
        "mount",
        fx.cipher.to_str().unwrap(),
        fx.mnt.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Disabled"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!is_mounted(&fx.mnt));
}

#[test]
fn sigterm_sigint_umount_and_ro_end_cleanly() {
    let fx = Fixture::new();
    for (i, how) in ["TERM", "INT", "umount"].iter().enumerate() {
        let mut m = fx.mount_foreground();
        let data = vec![i as u8 + 1; 70_000];
        fs::write(fx.m(&format!("f{i}")), &data).unwrap();
        let pid = m.child.as_ref().unwrap().id();
        if *how == "umount" {
            sh_ok(&format!("umount {}", fx.mnt.display()));
        } else {
            sh_ok(&format!("kill -{how} {pid}"));
        }
        let mut child = m.child.take().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "daemon did not exit after {how}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(status.success(), "daemon exit after {how}: {status:?}");
        assert!(!is_mounted(&fx.mnt), "still mounted after {how}");
        drop(m);
        let m = fx.mount();
        assert_eq!(
            fs::read(fx.m(&format!("f{i}"))).unwrap(),
            data,
            "data written before {how}"
        );
        m.unmount();
    }
    // A read-only mount reads but refuses writes.
    let _m = fx.mount_with(&["-o", "ro,noexec,noatime"]);
    let opts = sh_ok(&format!("findmnt -n -o OPTIONS {}", fx.mnt.display()));
    assert!(
        opts.contains("ro") && opts.contains("noexec") && opts.contains("noatime"),
        "{opts}"
    );
    assert_eq!(fs::read(fx.m("f0")).unwrap().len(), 70_000);
    assert_eq!(
        fs::write(fx.m("new"), b"x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
}

/// Listings come straight from the backing directory at its own positions:
/// the dots are there, a directory larger than one reply is listed whole and
/// once, and deleting entries while reading (what `rm -rf` and
/// `find -delete` do) skips none of the others. Reserved names stay hidden.
#[test]
fn listings_are_whole_and_survive_deletion_while_reading() {
    let fx = Fixture::new();
    let _m = fx.mount();
    fs::create_dir(fx.m("big")).unwrap();
    for i in 0..3000 {
        fs::write(fx.m(&format!("big/file-with-a-longish-name-{i:05}")), b"x").unwrap();
    }
    // Through a file: the test harness reads output only at the end.
    let out = fx.dir.path().join("ls.txt");
    sh_ok(&format!(
        "ls -a {} > {}",
        fx.m("big").display(),
        out.display()
    ));
    let ls = fs::read_to_string(&out).unwrap();
    let names: Vec<&str> = ls.lines().collect();
    assert_eq!(names.len(), 3002);
    assert_eq!(&names[..2], &[".", ".."]);
    let mut uniq = names.clone();
    uniq.dedup();
    assert_eq!(uniq.len(), 3002, "no entry listed twice");
    let root = sh_ok(&format!("ls -a {}", fx.mnt.display()));
    assert_eq!(root.lines().collect::<Vec<_>>(), [".", "..", "big"]);
    // find -delete unlinks each entry as it reads the directory.
    sh_ok(&format!(
        "find {} -mindepth 1 -delete",
        fx.m("big").display()
    ));
    assert_eq!(fs::read_dir(fx.m("big")).unwrap().count(), 0);
    assert_eq!(fs::read_dir(fx.c("big")).unwrap().count(), 0);
    fs::remove_dir(fx.m("big")).unwrap();
}

/// A file unlinked while open keeps working, as on a native filesystem:
/// temporary files are created, unlinked, then written, truncated, chmod'ed
/// and stat'ed through the descriptor. Each step's outcome is compared with
/// the same steps in a plain directory, with and without the writeback cache.
#[test]
fn an_open_file_keeps_working_after_its_name_is_unlinked() {
    fn outcome<T: std::fmt::Debug>(r: std::io::Result<T>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error: {e}"),
        }
    }
    let run = |d: &std::path::Path| -> Vec<String> {
        let p = d.join("tmp");
        fs::write(&p, b"hello world").unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        fs::remove_file(&p).unwrap();
        let epoch = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let mut steps = vec![
            outcome(f.metadata().map(|m| m.len())),
            outcome(f.set_permissions(fs::Permissions::from_mode(0o600))),
            outcome(f.metadata().map(|m| format!("{:o}", m.mode() & 0o7777))),
            outcome(std::os::unix::fs::fchown(&f, Some(0), Some(0))),
            outcome(f.set_len(5)),
            outcome(f.metadata().map(|m| m.len())),
            outcome(f.set_times(fs::FileTimes::new().set_modified(epoch))),
            outcome(f.metadata().map(|m| m.mtime())),
            outcome(
                f.seek(SeekFrom::End(0))
                    .and_then(|_| f.write_all(b", again")),
            ),
            outcome(f.set_len(16)),
            outcome(f.sync_all()),
            outcome(f.metadata().map(|m| m.len())),
        ];
        let mut back = vec![];
        steps.push(outcome(
            f.seek(SeekFrom::Start(0))
                .and_then(|_| f.read_to_end(&mut back)),
        ));
        steps.push(format!("{back:?}"));
        steps
    };
    let fx = Fixture::new();
    let native = fx.dir.path().join("native");
    fs::create_dir(&native).unwrap();
    let want = run(&native);
    assert_eq!(
        want[want.len() - 1],
        format!("{:?}", b"hello, again\0\0\0\0")
    );
    for (mode, extra) in [
        ("writeback", &[][..]),
        ("direct", &["--no-writeback-cache"][..]),
    ] {
        let m = fx.mount_with(extra);
        fs::create_dir(fx.m(mode)).unwrap();
        assert_eq!(run(&fx.m(mode)), want, "{mode}");
        // The backing file went with its last descriptor.
        assert_eq!(fs::read_dir(fx.c(mode)).unwrap().count(), 0, "{mode}");
        m.unmount();
    }
}

/// renameat2(2) of two C paths; its return value.
fn rename2(a: &std::ffi::CStr, b: &std::ffi::CStr, flags: u32) -> i32 {
    // SAFETY: two NUL-terminated paths.
    unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    }
}
