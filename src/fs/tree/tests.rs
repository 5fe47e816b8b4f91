//! Unit tests of the cipherdir access: planted symlinks never followed,
//! operations on real nodes, long paths.

use super::*;
use std::os::unix::fs::symlink;

fn errno<T>(r: io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn clean_paths() {
    for ok in ["", "a", "a/b", ".hidden", "a/..b", "...", "a b"] {
        assert!(is_clean(ok), "{ok:?}");
    }
    for bad in [
        "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "a\0b", "../x",
    ] {
        assert!(!is_clean(bad), "{bad:?}");
    }
    assert!(!is_clean(&"a".repeat(4096)));
    assert!(is_clean(&"a".repeat(4095)));
}

#[test]
fn no_operation_follows_a_planted_symlink() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"root only").unwrap();
    let d = tempfile::tempdir().unwrap();
    let t = Tree::open(d.path()).unwrap();
    // A directory component and a last component that are symlinks out.
    symlink(outside.path(), d.path().join("dir")).unwrap();
    symlink(outside.path().join("secret"), d.path().join("file")).unwrap();
    // A symlink met in the walk fails it with ELOOP; one that should be
    // the parent directory, opened O_DIRECTORY | O_NOFOLLOW, with ENOTDIR.
    let refused = |e: io::Result<()>| match e {
        Err(e) => e.kind() == io::ErrorKind::InvalidData || e.raw_os_error() == Some(libc::ENOTDIR),
        Ok(()) => false,
    };
    assert!(refused(
        t.open_file("dir/secret", libc::O_RDONLY).map(|_| ())
    ));
    assert!(refused(t.open_dir("dir").map(|_| ())));
    assert!(refused(t.open_file("file", libc::O_RDWR).map(|_| ())));
    assert!(refused(t.lstat("dir/secret").map(|_| ())));
    assert!(refused(t.create_new("dir/new", 0o600).map(|_| ())));
    assert!(refused(t.mkdir("dir/new", 0o700).map(|_| ())));
    assert!(refused(t.unlink("dir/secret").map(|_| ())));
    assert!(refused(t.chmod("dir/secret", 0o4755).map(|_| ())));
    assert!(refused(t.chown("dir/secret", Some(1), Some(1)).map(|_| ())));
    assert!(refused(t.rename("dir/secret", "x", 0).map(|_| ())));
    let now = [libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_NOW,
    }; 2];
    assert!(refused(t.set_times("dir/secret", &now)));
    assert!(refused(t.symlink(b"x", "dir/l").map(|_| ())));
    assert!(refused(t.replace("dir/x", b"x", 0o600).map(|_| ())));
    // chmod of a symlink itself is refused, never applied to its target.
    assert_eq!(errno(t.chmod("file", 0o4755)), Some(libc::EOPNOTSUPP));
    // The last component may be a symlink for lstat, readlink, lchown,
    // unlink: those act on the link itself.
    let st = t.lstat("file").unwrap();
    assert_eq!(st.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(
        t.readlink("file").unwrap(),
        outside.path().join("secret").as_os_str().as_bytes()
    );
    t.unlink("file").unwrap();
    let m = std::fs::metadata(outside.path().join("secret")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7000,
        0
    );
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"root only"
    );
    assert!(!outside.path().join("new").exists());
    // Escapes by name are refused before any syscall.
    assert_eq!(
        t.open_file("../x", libc::O_RDONLY).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
}

#[test]
fn operations_work_on_real_nodes() {
    let d = tempfile::tempdir().unwrap();
    let t = Tree::open(d.path()).unwrap();
    t.mkdir("a", 0o755).unwrap();
    let f = t.create_new("a/f", 0o640).unwrap();
    drop(f);
    assert_eq!(errno(t.create_new("a/f", 0o640)), Some(libc::EEXIST));
    t.chmod("a/f", 0o600).unwrap();
    assert_eq!(t.lstat("a/f").unwrap().st_mode & 0o7777, 0o600);
    t.symlink(b"kmsfs1:x", "a/l").unwrap();
    assert_eq!(t.readlink("a/l").unwrap(), b"kmsfs1:x");
    t.rename("a/f", "g", 0).unwrap();
    assert!(d.path().join("g").exists());
    let times = [
        libc::timespec {
            tv_sec: 5,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 7,
            tv_nsec: 0,
        },
    ];
    t.set_times("g", &times).unwrap();
    assert_eq!(t.lstat("g").unwrap().st_mtime, 7);
    t.unlink("a/l").unwrap();
    t.rmdir("a").unwrap();
    assert_eq!(t.lstat("").unwrap().st_mode & libc::S_IFMT, libc::S_IFDIR);
    // A long path works: the limit is on the relative path.
    let mut rel = String::new();
    while rel.len() + 201 < 4000 {
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(&"d".repeat(200));
        t.mkdir(&rel, 0o755).unwrap();
    }
    t.create_new(&format!("{rel}/file"), 0o600).unwrap();
    assert!(t.lstat(&format!("{rel}/file")).is_ok());
    // The temporary directory is on a filesystem that keeps names apart.
    assert!(!t.folds_names(true).unwrap());
    assert!(!t.folds_names(false).unwrap());
}

#[test]
fn an_unlinked_files_space_is_waited_for_once_on_enospc_where_closes_are_behind() {
    let d = tempfile::tempdir().unwrap();
    let t = Tree::open(d.path()).unwrap();
    let full = || Err::<(), _>(io::Error::from_raw_os_error(libc::ENOSPC));
    // The tools close inline: nothing to wait for, no second try.
    let mut tries = 0;
    let r = t.with_space(|| {
        tries += 1;
        full()
    });
    assert_eq!((errno(r), tries), (Some(libc::ENOSPC), 1));
    t.close_behind();
    std::fs::write(d.path().join("f"), b"x").unwrap();
    t.unlink("f").unwrap();
    assert_eq!(
        errno(std::fs::metadata(d.path().join("f"))),
        Some(libc::ENOENT)
    );
    let mut tries = 0;
    let r = t.with_space(|| {
        tries += 1;
        if tries == 1 { full() } else { Ok(()) }
    });
    assert_eq!((errno(r), tries), (None, 2));
    assert!(
        !t.reaper.busy(),
        "the second try came before the closes were done"
    );
    // Other errors, and a second ENOSPC, are the caller's.
    let mut tries = 0;
    let r = t.with_space(|| {
        tries += 1;
        full()
    });
    assert_eq!((errno(r), tries), (Some(libc::ENOSPC), 2));
    let mut tries = 0;
    let r = t.with_space(|| {
        tries += 1;
        Err::<(), _>(io::Error::from_raw_os_error(libc::EIO))
    });
    assert_eq!((errno(r), tries), (Some(libc::EIO), 1));
}
