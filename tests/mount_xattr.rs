//! Extended attributes through the mount (`--xattrs`): the same calls give
//! the same results as in a plain directory; without the flag they are
//! refused as before; values are encrypted in the cipherdir
//! and bound to their file and name; cp -a and rsync -X carry them.

mod common;
use common::*;
use std::path::Path;

/// Exercises the xattr calls in `dir` and prints what they return.
const SCRIPT: &str = r#"
import os, errno, sys
os.chdir(sys.argv[1])
def attempt(what, f):
    try:
        r = f()
        print(what, "ok", r if r is not None else "")
    except OSError as e:
        print(what, errno.errorcode[e.errno])
open("f", "w").write("content")
os.mkdir("d")
os.symlink("f", "l")
attempt("set", lambda: os.setxattr("f", "user.colour", b"blue"))
attempt("set empty", lambda: os.setxattr("f", "user.empty", b""))
attempt("set big", lambda: os.setxattr("f", "user.big", bytes(range(256)) * 10))
attempt("get", lambda: os.getxattr("f", "user.colour"))
attempt("get empty", lambda: os.getxattr("f", "user.empty"))
attempt("get big", lambda: len(os.getxattr("f", "user.big")))
attempt("get missing", lambda: os.getxattr("f", "user.none"))
attempt("create existing", lambda: os.setxattr("f", "user.colour", b"red", os.XATTR_CREATE))
attempt("replace missing", lambda: os.setxattr("f", "user.none", b"x", os.XATTR_REPLACE))
attempt("replace", lambda: os.setxattr("f", "user.colour", b"green", os.XATTR_REPLACE))
attempt("get replaced", lambda: os.getxattr("f", "user.colour"))
attempt("trusted", lambda: os.setxattr("f", "trusted.t", b"root only"))
attempt("list", lambda: sorted(os.listxattr("f")))
attempt("remove", lambda: os.removexattr("f", "user.empty"))
attempt("remove missing", lambda: os.removexattr("f", "user.empty"))
attempt("list after", lambda: sorted(os.listxattr("f")))
attempt("dir set", lambda: os.setxattr("d", "user.d", b"on a directory"))
attempt("dir get", lambda: os.getxattr("d", "user.d"))
attempt("symlink set", lambda: os.setxattr("l", "user.s", b"x", follow_symlinks=False))
attempt("symlink list", lambda: os.listxattr("l", follow_symlinks=False))
attempt("through symlink", lambda: os.getxattr("l", "user.colour"))
attempt("bad namespace", lambda: os.setxattr("f", "other.x", b"x"))
os.rename("f", "g")
attempt("after rename", lambda: os.getxattr("g", "user.colour"))
open("g", "w").write("")
attempt("after truncate to zero", lambda: os.getxattr("g", "user.colour"))
os.rename("d", "e")
attempt("dir after rename", lambda: os.getxattr("e", "user.d"))
"#;

fn run(dir: &Path) -> String {
    sh_ok(&format!(
        "python3 -c '{}' {}",
        SCRIPT.replace('\'', "'\\''"),
        dir.display()
    ))
}

#[test]
fn xattr_calls_behave_as_in_a_plain_directory_and_survive_remounts() {
    let plain = tempfile::tempdir().unwrap();
    let want = run(plain.path());
    assert!(want.contains("get ok b'blue'"), "{want}");
    let fx = Fixture::new();
    let m = fx.mount_with(&["--xattrs"]);
    let got = run(&fx.mnt);
    assert_eq!(
        got, want,
        "the mount (left) differs from a plain directory (right)"
    );
    m.unmount();

    // Encrypted in the cipherdir: neither names nor values show.
    let raw = sh_ok(&format!(
        "getfattr -d -m - {} {}",
        fx.c("g").display(),
        fx.c("e").display()
    ));
    for secret in ["colour", "green", "on a directory", "user.d", "trusted.t"] {
        assert!(
            !raw.contains(secret),
            "{secret} shows in the cipherdir: {raw}"
        );
    }
    assert!(raw.contains("user.kmsfs.x."), "{raw}");

    let m = fx.mount_with(&["--xattrs"]);
    let after = sh_ok(&format!(
        "getfattr --absolute-names -n user.colour --only-values {}; echo; getfattr --absolute-names -n user.d --only-values {}",
        fx.m("g").display(),
        fx.m("e").display()
    ));
    assert_eq!(after, "green\non a directory");
    m.unmount();
}

#[test]
fn an_attribute_copied_to_another_file_in_the_cipherdir_fails_and_is_left_out() {
    let fx = Fixture::new();
    let m = fx.mount_with(&["--xattrs"]);
    std::fs::write(fx.m("a"), b"a").unwrap();
    std::fs::write(fx.m("b"), b"b").unwrap();
    sh_ok(&format!(
        "setfattr -n user.secret -v a-only {} && setfattr -n user.own -v b-own {}",
        fx.m("a").display(),
        fx.m("b").display()
    ));
    m.unmount();
    // Copy a's backing attribute onto b, under its own backing name.
    let dump = sh_ok(&format!(
        "getfattr -d -m user.kmsfs.x. {}",
        fx.c("a").display()
    ));
    let line = dump
        .lines()
        .find(|l| l.starts_with("user.kmsfs.x."))
        .unwrap();
    let (name, value) = line.split_once('=').unwrap();
    sh_ok(&format!(
        "setfattr -n {name} -v {value} {}",
        fx.c("b").display()
    ));

    let m = fx.mount_with(&["--xattrs"]);
    let o = sh(&format!("getfattr -n user.secret {}", fx.m("b").display()));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // b's listing leaves the foreign one out and keeps its own.
    let list = sh_ok(&format!("getfattr -d {}", fx.m("b").display()));
    assert!(
        list.contains("user.own=\"b-own\"") && !list.contains("secret"),
        "{list}"
    );
    let a = sh_ok(&format!(
        "getfattr -n user.secret --only-values {}",
        fx.m("a").display()
    ));
    assert_eq!(a, "a-only");
    m.unmount();
}

#[test]
fn cp_a_and_rsync_x_carry_attributes_into_and_out_of_the_mount() {
    let src = tempfile::tempdir().unwrap();
    let back = tempfile::tempdir().unwrap();
    sh_ok(&format!(
        "cd {} && mkdir -p t/sub && echo one > t/one && echo two > t/sub/two && \
         setfattr -n user.tag -v red t/one && setfattr -n user.tag -v dir t/sub && \
         setfattr -n user.bin -v 0x00ff10 t/sub/two",
        src.path().display()
    ));
    let fx = Fixture::new();
    let m = fx.mount_with(&["--xattrs"]);
    let dump = |d: &Path| {
        sh_ok(&format!(
            "cd {} && find t | sort | xargs -d '\\n' getfattr -d -m user.",
            d.display()
        ))
    };
    let want = dump(src.path());
    sh_ok(&format!(
        "cp -a {}/t {}",
        src.path().display(),
        fx.mnt.display()
    ));
    assert_eq!(dump(&fx.mnt), want, "cp -a into the mount");
    sh_ok(&format!(
        "rsync -aX {}/t {}/",
        fx.mnt.display(),
        back.path().display()
    ));
    assert_eq!(dump(back.path()), want, "rsync -X out of the mount");
    m.unmount();
}

const ACL_SCRIPT: &str = r#"
umask 022
echo x > f && setfacl -m u:1234:rw,g:2345:r f
chmod 640 f
mkdir d && setfacl -d -m u:1234:rwx,m:rwx d
touch d/new && mkdir d/sub
echo y > g && setfacl -m u:1234:r g && setfacl -b g
echo z > h && setfacl -m u::rwx,g::r,o::- h
chmod 0751 d/sub
find . | sort | xargs -d '\n' getfacl -p 2>&1 | grep -v '^# file'
stat -c '%n %a' f g h d d/new d/sub
"#;

#[test]
fn posix_acls_behave_as_on_ext4_and_are_enforced_for_other_users() {
    ensure_users(&[], &[("kmsfs-alice", &[]), ("kmsfs-bob", &[])]);
    let plain = tempfile::tempdir().unwrap();
    let want = sh_ok(&format!(
        "cd {} && {{ {ACL_SCRIPT} }}",
        plain.path().display()
    ));
    assert!(want.contains("default:user:1234:rwx"), "{want}");
    let (fx, _) = Fixture::with_policy(
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "All", "Effect": "Allow", "Principal": {"Unix": ["uid:0", "user:kmsfs-alice", "user:kmsfs-bob"]}, "Action": "kms:*", "Resource": "*"}]}"#,
    );
    let m = fx.mount_with(&["--allow-other", "--xattrs"]);
    std::fs::create_dir(fx.m("t")).unwrap();
    let got = sh_ok(&format!("cd {} && {{ {ACL_SCRIPT} }}", fx.m("t").display()));
    assert_eq!(got, want, "the mount (left) differs from ext4 (right)");

    // Enforced: alice is named in the ACL of a file only its owner may
    // otherwise read; bob is not.
    let secret = fx.m("secret");
    sh_ok(&format!(
        "echo for-alice > {0} && chmod 600 {0} && chmod 755 {1} && setfacl -m u:kmsfs-alice:r {0}",
        secret.display(),
        fx.mnt.display()
    ));
    assert_eq!(
        as_user("kmsfs-alice", &format!("cat {}", secret.display())).unwrap(),
        "for-alice\n"
    );
    let e = as_user("kmsfs-bob", &format!("cat {}", secret.display())).unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    // chmod 600 again: the mask drops alice's read.
    sh_ok(&format!("chmod 600 {}", secret.display()));
    let e = as_user("kmsfs-alice", &format!("cat {}", secret.display())).unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    m.unmount();

    // Kept across a remount, encrypted in the cipherdir.
    let m = fx.mount_with(&["--allow-other", "--xattrs"]);
    let again = sh_ok(&format!(
        "cd {} && find . | sort | xargs -d '\\n' getfacl -p 2>&1 | grep -v '^# file'",
        fx.m("t").display()
    ));
    assert!(
        again.contains("user:1234:rw-") && again.contains("default:mask::rwx"),
        "{again}"
    );
    let raw = sh_ok(&format!("getfattr -R -d -m - {} 2>&1", fx.c("t").display()));
    assert!(!raw.contains("posix_acl"), "{raw}");
    m.unmount();
}

#[test]
fn rsync_axh_carries_acls_xattrs_and_links_through_the_mount() {
    let src = tempfile::tempdir().unwrap();
    let back = tempfile::tempdir().unwrap();
    sh_ok(&format!(
        "cd {} && mkdir -p t/d && echo a > t/a && ln t/a t/d/a2 && setfacl -m u:1234:rw t/a && \
         setfattr -n user.k -v v t/d && setfacl -d -m g:2345:rx t/d && echo b > t/d/b",
        src.path().display()
    ));
    let (fx, _) = Fixture::with_policy(
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "Root", "Effect": "Allow", "Principal": {"Unix": ["uid:0"]}, "Action": "kms:*", "Resource": "*"}]}"#,
    );
    let m = fx.mount_with(&["--allow-other", "--xattrs"]);
    let dump = |d: &Path| {
        sh_ok(&format!(
            "cd {} && find t | sort | xargs -d '\\n' getfacl -p 2>&1 && find t | sort | xargs -d '\\n' getfattr -d -m user. && find t -type f -printf '%p %n\\n' | sort",
            d.display()
        ))
    };
    sh_ok(&format!(
        "rsync -aHAX {}/t {}/",
        src.path().display(),
        fx.mnt.display()
    ));
    assert_eq!(
        dump(&fx.mnt),
        dump(src.path()),
        "rsync -aHAX into the mount"
    );
    sh_ok(&format!(
        "rsync -aHAX {}/t {}/",
        fx.mnt.display(),
        back.path().display()
    ));
    assert_eq!(
        dump(back.path()),
        dump(src.path()),
        "rsync -aHAX out of the mount"
    );
    m.unmount();
}

#[test]
fn without_xattrs_attributes_are_refused_as_unsupported() {
    let fx = Fixture::new();
    let m = fx.mount();
    std::fs::write(fx.m("f"), b"x").unwrap();
    let o = sh(&format!("setfattr -n user.k -v v {}", fx.m("f").display()));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Operation not supported"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = sh(&format!("getfattr -n user.k {}", fx.m("f").display()));
    assert!(String::from_utf8_lossy(&o.stderr).contains("Operation not supported"));
    m.unmount();
}
