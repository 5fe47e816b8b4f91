//! Hard links with path-bound keys: every name of a file has its own
//! wrapped key. A random sequence of links, renames of names and of
//! directories above them, unlinks and writes through one name or another
//! gives the same tree as in a plain directory, before and after a
//! remount; a file copied to a path that is none of its names is EIO; and
//! real tools (cp -a, rsync -H, rsync --link-dest, git clone --local) work.

mod common;
use common::*;
use std::path::Path;

/// Random operations on a tree of linked files (seeded: the same in both
/// directories), run in `dir` from step `from` to step `to`.
const OPS: &str = r#"
import os, random, sys
dir, seed, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.chdir(dir)
rng = random.Random(seed)
def files():
    out = []
    for root, dirs, fs in os.walk("."):
        dirs.sort()
        for f in sorted(fs):
            out.append(os.path.join(root, f)[2:])
    return out
def dirs():
    out = ["."]
    for root, ds, _ in os.walk("."):
        ds.sort()
        out += [os.path.join(root, d)[2:] for d in ds]
    return out
for step in range(stop):
    op = rng.randrange(7)
    fs, ds = files(), dirs()
    arg = rng.random(), rng.random(), rng.randrange(1 << 30)
    if step < start:
        continue
    try:
        if op == 0 or not fs:
            d = ds[int(arg[0] * len(ds))]
            with open(os.path.join(d, "f%d" % arg[2]), "w") as f:
                f.write("file %d\n" % arg[2])
        elif op == 1:
            src = fs[int(arg[0] * len(fs))]
            d = ds[int(arg[1] * len(ds))]
            os.link(src, os.path.join(d, "l%d" % arg[2]))
        elif op == 2:
            src = fs[int(arg[0] * len(fs))]
            d = ds[int(arg[1] * len(ds))]
            os.rename(src, os.path.join(d, "r%d" % arg[2]))
        elif op == 3 and len(fs) > 3:
            os.unlink(fs[int(arg[0] * len(fs))])
        elif op == 4:
            with open(fs[int(arg[0] * len(fs))], "a") as f:
                f.write("appended at step %d\n" % step)
        elif op == 5:
            os.makedirs("d%d/sub" % (arg[2] % 4), exist_ok=True)
        elif op == 6 and len(ds) > 1:
            d = ds[1 + int(arg[0] * (len(ds) - 1))]
            new = "m%d" % arg[2]
            if not (new + "/").startswith(d + "/"):
                os.rename(d, new)
    except OSError as e:
        print("step", step, "op", op, "error", e.errno)
"#;

/// Every file's content, link count and which names share an inode.
const SHOW: &str = r#"
import os, sys, hashlib
os.chdir(sys.argv[1])
groups = {}
for root, dirs, fs in sorted(os.walk(".")):
    dirs.sort()
    for f in sorted(fs):
        p = os.path.join(root, f)[2:]
        st = os.lstat(p)
        g = groups.setdefault(st.st_ino, len(groups))
        h = hashlib.sha256(open(p, "rb").read()).hexdigest()[:12]
        print(p, "nlink", st.st_nlink, "group", g, h)
"#;

fn py(script: &str, args: &[String]) -> String {
    let mut c = std::process::Command::new("python3");
    c.arg("-c").arg(script).args(args);
    let o = run_timeout(&mut c, 120);
    assert!(
        o.status.success(),
        "python: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn ops(dir: &Path, seed: u64, from: usize, to: usize) -> String {
    py(
        OPS,
        &[
            dir.display().to_string(),
            seed.to_string(),
            from.to_string(),
            to.to_string(),
        ],
    )
}

fn show(dir: &Path) -> String {
    py(SHOW, &[dir.display().to_string()])
}

#[test]
fn random_links_renames_and_unlinks_match_a_plain_directory_across_remounts() {
    for seed in [1u64, 2, 3] {
        let plain = tempfile::tempdir().unwrap();
        let fx = Fixture::new();
        let (mut want, mut got) = (String::new(), String::new());
        let mut m = Some(fx.mount());
        for (from, to) in [(0, 60), (60, 120), (120, 200)] {
            want += &ops(plain.path(), seed, from, to);
            got += &ops(&fx.mnt, seed, from, to);
            // Remounted between the rounds: every name opens with its own
            // key, not a key the daemon remembered.
            m.take().unwrap().unmount();
            m = Some(fx.mount());
            assert_eq!(
                show(&fx.mnt),
                show(plain.path()),
                "seed {seed}, after step {to}"
            );
        }
        assert_eq!(got, want, "seed {seed}: the same errors in the same steps");
        let listing = show(&fx.mnt);
        assert!(
            listing.lines().any(|l| !l.contains("nlink 1 ")),
            "seed {seed} made no links: {listing}"
        );
        m.take().unwrap().unmount();
    }
}

#[test]
fn a_linked_file_at_a_path_that_is_none_of_its_names_is_eio() {
    let fx = Fixture::new();
    let m = fx.mount();
    std::fs::create_dir(fx.m("d")).unwrap();
    std::fs::write(fx.m("a"), b"linked content").unwrap();
    std::fs::hard_link(fx.m("a"), fx.m("d/b")).unwrap();
    m.unmount();
    // Copied, and linked, in the cipherdir to paths it never had.
    std::fs::copy(fx.c("d/b"), fx.c("copy")).unwrap();
    std::fs::hard_link(fx.c("a"), fx.c("planted")).unwrap();
    let m = fx.mount();
    assert_eq!(read_err(&fx.m("copy")), Some(libc::EIO));
    assert_eq!(read_err(&fx.m("planted")), Some(libc::EIO));
    assert_eq!(std::fs::read(fx.m("a")).unwrap(), b"linked content");
    assert_eq!(std::fs::read(fx.m("d/b")).unwrap(), b"linked content");
    m.unmount();
}

const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "RootAll", "Effect": "Allow", "Principal": {"Unix": ["uid:0"]}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "AliceUse", "Effect": "Allow", "Principal": {"Unix": ["user:kmsfs-alice"]},
     "Action": ["kms:Decrypt", "kms:GenerateDataKey", "kms:ReEncrypt*"], "Resource": "*"},
    {"Sid": "AliceNotPrivate", "Effect": "Deny", "Principal": {"Unix": ["user:kmsfs-alice"]}, "Action": "kms:*", "Resource": "*",
     "Condition": {"StringLike": {"kms:EncryptionContext:kmsfs:path": "private/*"}}},
    {"Sid": "BobReads", "Effect": "Allow", "Principal": {"Unix": ["user:kmsfs-bob"]}, "Action": "kms:Decrypt", "Resource": "*"}
  ]
}"#;

#[test]
fn a_link_needs_the_key_for_both_paths_and_symlinks_are_not_linked() {
    ensure_users(
        &["backup"],
        &[("kmsfs-alice", &[]), ("kmsfs-bob", &["backup"])],
    );
    let (fx, _key) = Fixture::with_policy(POLICY);
    let m = fx.mount_with(&["--allow-other"]);
    for d in ["shared", "private"] {
        std::fs::create_dir(fx.m(d)).unwrap();
        sh_ok(&format!("chmod 1777 {}", fx.m(d).display()));
    }
    let p = |s: &str| fx.m(s).display().to_string();
    as_user("kmsfs-alice", &format!("echo mine > {}", p("shared/f"))).unwrap();
    // Into private/: her key use there is denied (ReEncryptTo).
    let e = as_user(
        "kmsfs-alice",
        &format!("ln {} {}", p("shared/f"), p("private/f")),
    )
    .unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    assert!(!fx.m("private/f").exists());
    // Within shared/: fine, and the new name reads.
    as_user(
        "kmsfs-alice",
        &format!("ln {} {}", p("shared/f"), p("shared/g")),
    )
    .unwrap();
    assert_eq!(
        as_user("kmsfs-alice", &format!("cat {}", p("shared/g"))).unwrap(),
        "mine\n"
    );
    // Bob may read but not re-encrypt: no new names from him.
    sh_ok(&format!("chmod 0666 {}", p("shared/f")));
    let e = as_user(
        "kmsfs-bob",
        &format!("ln {} {}", p("shared/f"), p("shared/h")),
    )
    .unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    assert_eq!(
        as_user("kmsfs-bob", &format!("cat {}", p("shared/g"))).unwrap(),
        "mine\n"
    );

    std::os::unix::fs::symlink("f", fx.m("shared/s")).unwrap();
    let e = std::fs::hard_link(fx.m("shared/s"), fx.m("shared/s2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    m.unmount();
}

#[test]
fn cp_rsync_and_git_keep_hard_links() {
    let src = tempfile::tempdir().unwrap();
    let back = tempfile::tempdir().unwrap();
    sh_ok(&format!(
        "cd {} && mkdir -p t/x t/y && echo shared > t/x/a && ln t/x/a t/y/b && ln t/x/a t/c && echo own > t/d",
        src.path().display()
    ));
    let fx = Fixture::new();
    let m = fx.mount();
    let groups = |d: &Path| show(&d.join("t"));
    sh_ok(&format!(
        "cp -a {}/t {}/",
        src.path().display(),
        fx.mnt.display()
    ));
    assert_eq!(groups(&fx.mnt), groups(src.path()), "cp -a into the mount");
    sh_ok(&format!(
        "rm -rf {}/t && rsync -aH {}/t {}/",
        fx.mnt.display(),
        src.path().display(),
        fx.mnt.display()
    ));
    assert_eq!(
        groups(&fx.mnt),
        groups(src.path()),
        "rsync -aH into the mount"
    );
    sh_ok(&format!(
        "rsync -aH {}/t {}/",
        fx.mnt.display(),
        back.path().display()
    ));
    assert_eq!(
        groups(back.path()),
        groups(src.path()),
        "rsync -aH out of the mount"
    );
    // An incremental backup inside the mount: unchanged files become links.
    sh_ok(&format!(
        "cd {} && rsync -a t/ snap1/ && rsync -a --link-dest=../snap1 t/ snap2/",
        fx.mnt.display()
    ));
    let ino = |p: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(fx.m(p)).unwrap().ino()
    };
    assert_eq!(
        ino("snap1/d"),
        ino("snap2/d"),
        "--link-dest linked the unchanged file"
    );
    // git clone --local hard-links the object store.
    sh_ok(&format!(
        "cd {} && git init -q repo && cd repo && git -c user.email=t@e -c user.name=t commit -q --allow-empty -m one && \
         echo hello > h && git add h && git -c user.email=t@e -c user.name=t commit -q -m two && \
         cd .. && git clone -q --local repo clone && cd clone && git log --oneline | wc -l && cat h",
        fx.mnt.display()
    ));
    let out = sh_ok(&format!(
        "cd {}/clone && git fsck 2>/dev/null && cat h",
        fx.mnt.display()
    ));
    assert_eq!(out, "hello\n");
    m.unmount();
}
