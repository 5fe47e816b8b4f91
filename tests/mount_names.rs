//! Encrypted names through real mounts: nothing of a name reaches the
//! cipherdir, names up to 255 bytes work in every operation, and names
//! tampered with in the cipherdir are hidden and logged, never shown as
//! garbage.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

/// Every backing name below `dir`, relative to it.
fn backing_names(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            out.push(e.file_name().to_string_lossy().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

fn long(c: char, bytes: usize) -> String {
    std::iter::repeat_n(c, bytes / c.len_utf8()).collect()
}

fn log_of(fx: &Fixture) -> PathBuf {
    fx.dir.path().join("mount.log")
}

fn mount_logged(fx: &Fixture) -> Mounted<'_> {
    let log = log_of(fx);
    fx.mount_with(&["--log-file", log.to_str().unwrap()])
}

#[test]
fn no_name_used_reaches_the_cipherdir() {
    let fx = Fixture::new();
    let m = mount_logged(&fx);
    let names = [
        "salaries-2026.xlsx".to_string(),
        "Quarterly Report (final).pdf".to_string(),
        ".hidden-dotfile".to_string(),
        "personnel".to_string(),
        "ünïcødé-ファイル".to_string(),
        "renamed-target".to_string(),
        "symlink-name".to_string(),
        "hardlink-name".to_string(),
        "fifo-name".to_string(),
        "moved-directory".to_string(),
        long('q', 255),
        long('é', 254),
        long('w', 160),
    ];
    let d = fx.m("personnel");
    fs::create_dir(&d).unwrap();
    for n in &names[..3] {
        fs::write(d.join(n), n.as_bytes()).unwrap();
    }
    fs::create_dir(d.join(&names[4])).unwrap();
    fs::write(d.join(&names[4]).join(&names[10]), b"long").unwrap();
    fs::create_dir(d.join(&names[11])).unwrap();
    fs::write(d.join(&names[11]).join(&names[12]), b"longer").unwrap();
    fs::rename(d.join(&names[1]), d.join(&names[5])).unwrap();
    symlink("salaries-2026.xlsx", d.join(&names[6])).unwrap();
    fs::hard_link(d.join(&names[0]), d.join(&names[7])).unwrap();
    sh_ok(&format!("mkfifo {}", d.join(&names[8]).display()));
    fs::rename(&d, fx.m(&names[9])).unwrap();
    // An empty directory is an empty backing directory: no per-directory
    // file (gocryptfs's diriv) for two syncing machines to fight over.
    fs::create_dir(fx.m("empty")).unwrap();
    assert_eq!(fs::read_dir(fx.c("empty")).unwrap().count(), 0);
    let listed = sh_ok(&format!("cd {} && find . | sort", fx.mnt.display()));
    // All but the two names renamed away are there.
    for (i, n) in names.iter().enumerate().filter(|(i, _)| *i != 1 && *i != 3) {
        assert!(
            listed.contains(n.as_str()),
            "{i}: {n} missing from\n{listed}"
        );
    }
    m.unmount();
    // Neither file contents nor file names hold any of them (contents are
    // encrypted; the journal and temporaries are gone or sealed).
    let backing = backing_names(&fx.cipher);
    for n in names.iter().chain([&"empty".to_string()]) {
        let o = std::process::Command::new("grep")
            .args(["-r", "-F", "-l", "-e", n])
            .arg(&fx.cipher)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "grep found {n:?}: {:?}", o.stdout);
        assert!(
            !backing.iter().any(|b| b.contains(n.as_str())),
            "a backing name holds {n:?}"
        );
    }
    // Every backing name is kmsfs's own, an encrypted name, or a long
    // name's hash and side file.
    for b in &backing {
        let ok = b.starts_with(".kmsfs")
            || b == "kmsfs.conf"
            || b.starts_with("kmsfs.longname.")
            || b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        assert!(ok, "unexpected backing name {b:?}");
    }
    assert_eq!(
        backing.iter().filter(|b| b.ends_with(".name")).count(),
        3,
        "one side file per long name: {backing:?}"
    );
    // The same tree reads back after a remount.
    let m = fx.mount();
    let again = sh_ok(&format!("cd {} && find . | sort", fx.mnt.display()));
    assert_eq!(again, listed);
    let moved = fx.m(&names[9]);
    assert_eq!(
        fs::read(moved.join(&names[5])).unwrap(),
        names[1].as_bytes()
    );
    assert_eq!(
        fs::read(moved.join(&names[4]).join(&names[10])).unwrap(),
        b"long"
    );
    assert_eq!(
        fs::read_link(moved.join(&names[6])).unwrap(),
        Path::new("salaries-2026.xlsx")
    );
    m.unmount();
}

#[test]
fn names_up_to_255_bytes_work_in_every_operation() {
    let fx = Fixture::new();
    let m = fx.mount();
    let u255 = format!("{}x", long('é', 254)); // 127 two-byte chars and one
    assert_eq!(u255.len(), 255);
    let (n255, d255, l255) = (long('a', 255), long('d', 255), long('l', 255));
    let files = [
        "a".to_string(),
        long('b', 159),
        long('c', 160),
        long('e', 200),
        n255.clone(),
        u255.clone(),
    ];
    for n in &files {
        fs::write(fx.m(n), format!("content of {n}")).unwrap();
    }
    fs::create_dir(fx.m(&d255)).unwrap();
    fs::write(fx.m(&format!("{d255}/{n255}")), b"inner").unwrap();
    symlink(&n255, fx.m(&l255)).unwrap();
    let mut want: Vec<String> = files.to_vec();
    want.extend([d255.clone(), l255.clone()]);
    want.sort();
    let listing = |dir: &Path| {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(listing(&fx.mnt), want);
    // readdir's names are the names: stat by each one works.
    for n in &want {
        fs::symlink_metadata(fx.m(n)).unwrap();
    }
    for n in &files {
        assert_eq!(
            fs::read(fx.m(n)).unwrap(),
            format!("content of {n}").as_bytes()
        );
    }
    assert_eq!(fs::read(fx.m(&format!("{d255}/{n255}"))).unwrap(), b"inner");
    assert_eq!(fs::read_link(fx.m(&l255)).unwrap(), Path::new(&n255));
    assert_eq!(
        fs::read(fx.m(&l255)).unwrap(),
        format!("content of {n255}").as_bytes()
    );
    // Renames between long and short names, of files and of a directory
    // holding a long name.
    fs::rename(fx.m(&n255), fx.m("short")).unwrap();
    fs::rename(fx.m("short"), fx.m(&long('f', 201))).unwrap();
    fs::rename(fx.m(&long('f', 201)), fx.m(&n255)).unwrap();
    fs::rename(fx.m(&d255), fx.m("dshort")).unwrap();
    fs::rename(fx.m("dshort"), fx.m(&long('g', 250))).unwrap();
    assert_eq!(
        fs::read(fx.m(&format!("{}/{n255}", long('g', 250)))).unwrap(),
        b"inner"
    );
    fs::rename(fx.m(&long('g', 250)), fx.m(&d255)).unwrap();
    assert_eq!(listing(&fx.mnt), want);
    fs::remove_file(fx.m(&u255)).unwrap();
    fs::remove_file(fx.m(&l255)).unwrap();
    fs::remove_dir_all(fx.m(&d255)).unwrap();
    // 256 bytes: ENAMETOOLONG, as on any Linux filesystem.
    let e = fs::write(fx.m(&long('z', 256)), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    let e = fs::create_dir(fx.m(&long('z', 256))).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    m.unmount();
    let m = fx.mount();
    let mut left = files[..5].to_vec();
    left.sort();
    assert_eq!(listing(&fx.mnt), left);
    m.unmount();
    // Left: three long names (c160, e200, a255), three side files; none
    // of the removed or renamed names left one behind.
    let sides = backing_names(&fx.cipher)
        .into_iter()
        .filter(|b| b.ends_with(".name"))
        .count();
    assert_eq!(sides, 3);
}

#[test]
fn names_tampered_with_in_the_cipherdir_are_hidden_and_logged_and_swaps_fail() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::create_dir_all(fx.m("a")).unwrap();
    fs::create_dir_all(fx.m("b")).unwrap();
    for n in ["a/one", "a/two", "a/report.txt", "a/kept", "b/other"] {
        fs::write(fx.m(n), n.as_bytes()).unwrap();
    }
    fs::write(fx.m(&format!("a/{}", long('L', 220))), b"long").unwrap();
    m.unmount();
    let (one, two) = (fx.c("a/one"), fx.c("a/two"));
    let report = fx.c("a/report.txt");
    let moved_from = fx.c("b/other");
    let long_raw = fx.c(&format!("a/{}", long('L', 220)));
    // Two names swapped within a directory: each decrypts, to the other
    // file, whose key is bound to its own path: EIO, audited.
    let tmp = fx.dir.path().join("swap");
    fs::rename(&one, &tmp).unwrap();
    fs::rename(&two, &one).unwrap();
    fs::rename(&tmp, &two).unwrap();
    // A file moved in from another directory: its name is not one of `a`.
    let moved_to = fx
        .cipher
        .join(one.parent().unwrap().strip_prefix(&fx.cipher).unwrap());
    fs::rename(&moved_from, moved_to.join(moved_from.file_name().unwrap())).unwrap();
    // A sync tool's conflict copy, a stray file, and a long name whose side
    // file was replaced with garbage.
    let conflict = format!(
        "{} (conflicted copy 2026-12-01).txt",
        report.file_name().unwrap().to_string_lossy()
    );
    fs::copy(&report, moved_to.join(&conflict)).unwrap();
    fs::write(moved_to.join("notes.txt"), b"stray").unwrap();
    let mut side = long_raw.clone().into_os_string();
    side.push(".name");
    fs::write(
        &side,
        b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .unwrap();
    let m = mount_logged(&fx);
    let listed = sh_ok(&format!("ls -1 {}", fx.m("a").display()));
    let mut got: Vec<&str> = listed.lines().collect();
    got.sort();
    assert_eq!(got, ["kept", "one", "report.txt", "two"], "{listed}");
    assert_eq!(read_err(&fx.m("a/one")), Some(libc::EIO));
    assert_eq!(read_err(&fx.m("a/two")), Some(libc::EIO));
    assert_eq!(fs::read(fx.m("a/kept")).unwrap(), b"a/kept");
    assert_eq!(fs::read(fx.m("a/report.txt")).unwrap(), b"a/report.txt");
    assert_eq!(read_err(&fx.m("a/other")), Some(libc::ENOENT));
    assert!(fs::read_dir(fx.m("b")).unwrap().next().is_none());
    // ls -lR and find over the damaged directory complete.
    sh_ok(&format!(
        "ls -lR {} >/dev/null && find {} >/dev/null",
        fx.mnt.display(),
        fx.mnt.display()
    ));
    m.unmount();
    let log = fs::read_to_string(log_of(&fx)).unwrap();
    assert!(
        log.contains("looks like a sync tool's conflict copy of \"report.txt\""),
        "{log}"
    );
    assert!(log.contains("\"notes.txt\" not an encrypted name"), "{log}");
    assert!(log.contains("does not decrypt in this directory"), "{log}");
    assert_eq!(
        log.matches("hidden from the mount").count(),
        4,
        "each hidden entry logged once: {log}"
    );
    // The swapped files' failed unwraps are in the audit log.
    let failed: Vec<_> = fx
        .audit()
        .into_iter()
        .filter(|r| r["eventName"] == "Decrypt" && r["errorCode"] == "InvalidCiphertextException")
        .map(|r| r["requestParameters"]["encryptionContext"]["kmsfs:path"].clone())
        .collect();
    assert!(
        failed.contains(&"a/one".into()) && failed.contains(&"a/two".into()),
        "{failed:?}"
    );
}

#[test]
fn rmdir_clears_side_files_a_crash_left_without_their_entry() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::create_dir(fx.m("d")).unwrap();
    let n = format!("d/{}", long('s', 240));
    fs::write(fx.m(&n), b"x").unwrap();
    m.unmount();
    // The entry gone, its side file left (a crash between the two unlinks).
    fs::remove_file(fx.c(&n)).unwrap();
    assert_eq!(fs::read_dir(fx.c("d")).unwrap().count(), 1);
    let m = fx.mount();
    assert!(fs::read_dir(fx.m("d")).unwrap().next().is_none());
    fs::remove_dir(fx.m("d")).unwrap();
    // A directory holding anything else is still not empty.
    fs::create_dir(fx.m("e")).unwrap();
    m.unmount();
    fs::write(fx.c("e").join("stray"), b"").unwrap();
    let m = fx.mount();
    let e = fs::remove_dir(fx.m("e")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    m.unmount();
    assert!(!fx.cipher.join("d").exists() && fx.c("e").join("stray").exists());
}

#[test]
fn kmsfs_names_maps_paths_both_ways() {
    let fx = Fixture::new();
    let m = fx.mount();
    let deep = format!("x/{}/y", long('n', 200));
    fs::create_dir_all(fx.m(&deep)).unwrap();
    m.unmount();
    let c = fx.cipher.to_str().unwrap();
    let o = fx.cli(&["names", c, "x", &deep]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let backing: Vec<&str> = out.lines().collect();
    assert_eq!(backing.len(), 2);
    assert!(fx.cipher.join(backing[1]).is_dir());
    assert!(backing[1].starts_with(&format!("{}/kmsfs.longname.", backing[0])));
    let o = fx.cli(&["names", c, "--decrypt", "--", backing[1], backing[0]]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("{deep}\nx\n"));
    // A stored name may begin with `-` (1 in 64): after `--`, a path.
    let many: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();
    let mut args = vec!["names", c];
    args.extend(many.iter().map(String::as_str));
    let o = fx.cli(&args);
    let stored = String::from_utf8(o.stdout).unwrap();
    let (i, dash) = stored
        .lines()
        .enumerate()
        .find(|(_, l)| l.starts_with('-'))
        .expect("one of 1000 stored names begins with - (all but 1 in 6 million runs)");
    let o = fx.cli(&["names", c, "--decrypt", "--", dash]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), format!("n{i}\n"));
    // A name that is not one of the directory's: exit 1, named.
    let o = fx.cli(&["names", c, "--decrypt", "not-encrypted"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not-encrypted: not an encrypted name"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A plaintext-name filesystem has nothing to map.
    let p = Fixture::plaintext();
    let o = p.cli(&["names", p.cipher.to_str().unwrap(), "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("keeps its names in plaintext"));
    assert!(
        p.config()["FeatureFlags"]
            .as_array()
            .unwrap()
            .contains(&"PlaintextNames".into())
    );
    assert!(
        fx.config()["FeatureFlags"]
            .as_array()
            .unwrap()
            .contains(&"EncryptedNames".into())
    );
    assert!(fx.config()["NameKey"].is_string() && p.config()["NameKey"].is_null());
}
