//! A shared mount cannot be turned against the host. Each attack that once
//! worked is run again, as an unprivileged user where a user can try it, or
//! by planting objects in the cipherdir as whoever can write it (a restored
//! backup, a synced folder, a cipherdir shared with --shared-cipherdir), and
//! must fail while the same user's ordinary work keeps working. Nothing
//! outside the cipherdir may be read, written, listed, chmodded or deleted.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

const MALLORY: &str = "kmsfs-mallory";

fn ensure_mallory() {
    ensure_users(&[], &[(MALLORY, &[])]);
}

fn uid_of(user: &str) -> u32 {
    sh_ok(&format!("id -u {user}")).trim().parse().unwrap()
}

/// A fixture whose mountpoint other users can reach.
fn shared_fixture() -> Fixture {
    ensure_mallory();
    let fx = Fixture::new();
    fs::set_permissions(fx.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fx
}

/// A root-only place outside the cipherdir, with things an attacker wants:
/// a secret file, a root-owned program to make set-user-id, a directory.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(dir.path().join("secret"), b"root only").unwrap();
        fs::set_permissions(dir.path().join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.path().join("program"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(
            dir.path().join("program"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        Outside { dir }
    }

    fn p(&self, rel: &str) -> std::path::PathBuf {
        self.dir.path().join(rel)
    }

    /// Every name, mode, owner and content, to compare before and after.
    fn snapshot(&self) -> Vec<(String, u32, u32, Vec<u8>)> {
        let mut out = vec![];
        let mut stack = vec![self.dir.path().to_path_buf()];
        while let Some(d) = stack.pop() {
            let m = fs::symlink_metadata(&d).unwrap();
            out.push((d.display().to_string(), m.mode(), m.uid(), vec![]));
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p);
                } else {
                    out.push((
                        p.display().to_string(),
                        m.mode(),
                        m.uid(),
                        fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    }
}

#[test]
fn init_makes_the_cipherdir_private_and_a_shared_mount_refuses_an_open_one() {
    let fx = shared_fixture();
    let mode = fs::metadata(&fx.cipher).unwrap().mode() & 0o7777;
    assert_eq!(mode, 0o700, "init leaves the cipherdir private");
    let e = as_user(MALLORY, &format!("ls {}", fx.cipher.display())).unwrap_err();
    assert!(e.contains("Permission denied"), "{e}");
    fs::set_permissions(&fx.cipher, fs::Permissions::from_mode(0o755)).unwrap();
    let o = fx.cli(&[
        "mount",
        fx.cipher.to_str().unwrap(),
        fx.mnt.to_str().unwrap(),
        "--allow-other",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not private") && err.contains("chmod 700"),
        "{err}"
    );
    assert!(!is_mounted(&fx.mnt));
    // The explicit override mounts, and the mount root keeps its own mode:
    // sharing the mount with chmod 1777 leaves the cipherdir as it was.
    fs::set_permissions(&fx.cipher, fs::Permissions::from_mode(0o700)).unwrap();
    let m = fx.mount_with(&["--allow-other"]);
    fs::set_permissions(&fx.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    assert_eq!(fs::metadata(&fx.mnt).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(fs::metadata(&fx.cipher).unwrap().mode() & 0o7777, 0o700);
    as_user(
        MALLORY,
        &format!("echo mine > {}/by-mallory", fx.mnt.display()),
    )
    .unwrap();
    assert_eq!(fs::read(fx.m("by-mallory")).unwrap(), b"mine\n");
    m.unmount();
    // The root's mode survives a remount.
    let _m = fx.mount_with(&["--allow-other"]);
    assert_eq!(fs::metadata(&fx.mnt).unwrap().mode() & 0o7777, 0o1777);
}

/// The original attack: a user who can write the cipherdir swaps her own
/// backing directory and file for symlinks to root-only places, then works
/// through the mount's cached nodes.
#[test]
fn planted_symlinks_never_lead_outside_the_cipherdir() {
    let fx = shared_fixture();
    let out = Outside::new();
    let before = out.snapshot();
    let _m = fx.mount_with(&["--allow-other", "--shared-cipherdir"]);
    fs::set_permissions(&fx.mnt, fs::Permissions::from_mode(0o1777)).unwrap();
    let mnt = fx.mnt.display().to_string();
    as_user(
        MALLORY,
        &format!("mkdir {mnt}/mine && echo x > {mnt}/mine/x && echo f > {mnt}/file && echo kept > {mnt}/keep && ls -l {mnt}/mine {mnt}/file"),
    )
    .unwrap();
    // Behind the mount's back: the directory and the file become symlinks.
    fs::rename(fx.c("mine"), fx.c("mine.old")).unwrap();
    symlink(out.dir.path(), fx.c("mine")).unwrap();
    fs::remove_file(fx.c("file")).unwrap();
    symlink(out.p("program"), fx.c("file")).unwrap();
    for attack in [
        format!("ls {mnt}/mine"),
        format!("cat {mnt}/mine/secret"),
        format!("echo pwned > {mnt}/mine/new"),
        format!("mkdir {mnt}/mine/newdir"),
        format!("rm -f {mnt}/mine/secret"),
        format!("rmdir {mnt}/mine/sub"),
        format!("mv {mnt}/mine/secret {mnt}/stolen"),
        format!("chmod 04755 {mnt}/mine/program"),
        format!("chmod 04755 {mnt}/file"),
        format!("cat {mnt}/file"),
        format!("echo pwned > {mnt}/file"),
        format!("touch -d 2001-01-01 {mnt}/mine/program"),
    ] {
        let r = as_user(MALLORY, &attack);
        assert!(r.is_err(), "{attack} succeeded: {r:?}");
    }
    // Root through the mount fares no better: the daemon never follows.
    assert!(fs::read_dir(fx.m("mine")).is_err());
    assert!(fs::read(fx.m("mine/secret")).is_err());
    assert_eq!(
        out.snapshot(),
        before,
        "something outside the cipherdir changed"
    );
    // The user's other work goes on.
    as_user(
        MALLORY,
        &format!("echo ok > {mnt}/after && cat {mnt}/after"),
    )
    .unwrap();
    assert_eq!(fs::read(fx.m("keep")).unwrap(), b"kept\n");
    // mine.old/x was moved behind kmsfs's back: it no longer decrypts
    // (with encrypted names its name does not, so it is not there).
    let want = if fx.encrypted_names() {
        libc::ENOENT
    } else {
        libc::EIO
    };
    assert_eq!(read_err(&fx.m("mine.old/x")), Some(want));
}

/// kmsfs's own names, planted as symlinks or other objects.
#[test]
fn planted_kmsfs_files_are_refused_not_followed() {
    let fx = shared_fixture();
    let out = Outside::new();
    let before = out.snapshot();
    // The lock file: the mount refuses, the target is untouched.
    symlink(out.p("secret"), fx.c(".kmsfs.lock")).unwrap();
    let args = [
        "mount",
        fx.cipher.to_str().unwrap(),
        fx.mnt.to_str().unwrap(),
    ];
    let o = fx.cli(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(".kmsfs.lock"));
    fs::remove_file(fx.c(".kmsfs.lock")).unwrap();
    // The config: refused, never read through the link.
    fs::rename(fx.c("kmsfs.conf"), fx.dir.path().join("conf.saved")).unwrap();
    symlink(fx.dir.path().join("conf.saved"), fx.c("kmsfs.conf")).unwrap();
    let o = fx.cli(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("kmsfs.conf") && err.contains("symbolic links"),
        "{err}"
    );
    fs::remove_file(fx.c("kmsfs.conf")).unwrap();
    fs::rename(fx.dir.path().join("conf.saved"), fx.c("kmsfs.conf")).unwrap();
    // The journal as a symlink: refused at mount, its target unread.
    symlink(out.p("secret"), fx.c(".kmsfs.journal")).unwrap();
    let o = fx.cli(&args);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(".kmsfs.journal") && err.contains("symbolic links"),
        "{err}"
    );
    fs::remove_file(fx.c(".kmsfs.journal")).unwrap();
    // Planted while mounted: a directory rename writes its journal through a
    // new file renamed over the link (which replaces the link itself), never
    // into the target.
    let m = fx.mount();
    symlink(out.p("secret"), fx.c(".kmsfs.journal")).unwrap();
    fs::create_dir(fx.m("d")).unwrap();
    fs::write(fx.m("d/f"), b"in d").unwrap();
    fs::rename(fx.m("d"), fx.m("e")).unwrap();
    assert_eq!(fs::read(fx.m("e/f")).unwrap(), b"in d");
    m.unmount();
    assert!(fs::symlink_metadata(fx.c(".kmsfs.journal")).is_err());
    // A device node planted where a file was: refused, never opened.
    fs::write(fx.c("dev"), b"").unwrap();
    fs::remove_file(fx.c("dev")).unwrap();
    sh_ok(&format!("mknod {} c 1 3", fx.c("dev").display())); // /dev/null's numbers
    let _m = fx.mount();
    assert_eq!(read_err(&fx.m("dev")), Some(libc::EIO));
    let names: Vec<_> = fs::read_dir(&fx.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!names.contains(&"dev".to_string()), "{names:?}");
    assert_eq!(fs::read(fx.m("e/f")).unwrap(), b"in d");
    assert_eq!(
        out.snapshot(),
        before,
        "something outside the cipherdir changed"
    );
}

#[test]
fn a_journal_naming_paths_outside_is_refused_and_nothing_moves() {
    let fx = shared_fixture();
    let out = Outside::new();
    let m = fx.mount();
    fs::create_dir(fx.m("a")).unwrap();
    fs::write(fx.m("a/f"), b"data").unwrap();
    m.unmount();
    let before = out.snapshot();
    for journal in [
        format!(
            r#"{{"op":"rename","from":"a","to":"{}"}}"#,
            out.p("sub/moved").display()
        ),
        r#"{"op":"rename","from":"a","to":"../escaped"}"#.to_string(),
        r#"{"op":"rename","from":"../../etc","to":"b"}"#.to_string(),
        r#"{"op":"rename","from":"a","to":"kmsfs.conf"}"#.to_string(),
        "not json".to_string(),
    ] {
        fs::write(fx.c(".kmsfs.journal"), &journal).unwrap();
        let o = fx.cli(&[
            "mount",
            fx.cipher.to_str().unwrap(),
            fx.mnt.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{journal}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(".kmsfs.journal") && err.contains("nothing was replayed"),
            "{journal}: {err}"
        );
        assert!(!is_mounted(&fx.mnt));
        assert!(!fs::read(fx.c("a/f")).unwrap().is_empty());
    }
    assert_eq!(out.snapshot(), before);
    assert!(!fx.dir.path().join("escaped").exists());
    fs::remove_file(fx.c(".kmsfs.journal")).unwrap();
    let _m = fx.mount();
    assert_eq!(fs::read(fx.m("a/f")).unwrap(), b"data");
}

/// The blob of a file's data key, planted as a symlink's target at the same
/// path, does not decrypt as a symlink: readlink never returns key material.
#[test]
fn a_data_key_planted_as_a_symlink_is_not_served() {
    use base64::Engine;
    let fx = shared_fixture();
    let m = fx.mount();
    fs::write(fx.m("f"), b"secret content").unwrap();
    m.unmount();
    let raw = fs::read(fx.c("f")).unwrap();
    let h = kmsfs::fs::format::decode_header(512, &raw[..512]).unwrap();
    let blob = &h.slots[0].as_ref().unwrap().blob;
    let planted = format!(
        "kmsfs1:{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(blob)
    );
    fs::rename(fx.c("f"), fx.dir.path().join("f.saved")).unwrap();
    symlink(&planted, fx.c("f")).unwrap();
    let _m = fx.mount();
    let e = fs::read_link(fx.m("f")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let failed = fx
        .audit()
        .into_iter()
        .filter(|r| r["eventName"] == "Decrypt" && r["errorCode"] == "InvalidCiphertextException")
        .count();
    assert!(failed >= 1, "the refused decrypt is audited");
}

const DECRYPT_ONLY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "RootAll", "Effect": "Allow", "Principal": {"Unix": ["uid:0"]}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "MalloryReads", "Effect": "Allow", "Principal": {"Unix": ["user:kmsfs-mallory"]},
     "Action": "kms:Decrypt", "Resource": "*"},
    {"Sid": "NoOneReadsPrivate", "Effect": "Deny", "Principal": {"Unix": ["user:kmsfs-mallory"]},
     "Action": "kms:*", "Resource": "*",
     "Condition": {"StringLike": {"kms:EncryptionContext:kmsfs:path": "private/*"}}}
  ]
}"#;

fn policy_fixture(policy: &str) -> Fixture {
    ensure_mallory();
    Fixture::with_policy(policy).0
}

/// Decrypt alone reads; writing in place needs GenerateDataKey, as creating
/// does; a denied user never gets a symlink's target, even after root read it.
#[test]
fn writing_needs_generate_data_key_and_denied_links_stay_denied() {
    let fx = policy_fixture(DECRYPT_ONLY);
    let _m = fx.mount_with(&["--allow-other"]);
    fs::create_dir(fx.m("private")).unwrap();
    fs::write(fx.m("shared"), b"0123456789").unwrap();
    fs::set_permissions(fx.m("shared"), fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::symlink("../shared", fx.m("private/link")).unwrap();
    fs::set_permissions(fx.m("private"), fs::Permissions::from_mode(0o755)).unwrap();
    let mnt = fx.mnt.display().to_string();
    assert_eq!(
        as_user(MALLORY, &format!("cat {mnt}/shared")).unwrap(),
        "0123456789"
    );
    for write in [
        format!("printf XX | dd of={mnt}/shared conv=notrunc status=none"),
        format!("echo more >> {mnt}/shared"),
        format!("truncate -s 3 {mnt}/shared"),
        format!("echo new > {mnt}/shared"),
    ] {
        let e = as_user(MALLORY, &write).unwrap_err();
        assert!(e.contains("Permission denied"), "{write}: {e}");
    }
    assert_eq!(fs::read(fx.m("shared")).unwrap(), b"0123456789");
    // Root reads the link first; mallory, denied on private/*, still gets EACCES.
    assert_eq!(
        fs::read_link(fx.m("private/link")).unwrap(),
        Path::new("../shared")
    );
    let e = as_user(MALLORY, &format!("readlink {mnt}/private/link")).unwrap_err();
    assert!(e.is_empty() || e.contains("Permission denied"), "{e}");
    let denied = fx
        .audit()
        .into_iter()
        .filter(|r| {
            r["errorCode"] == "AccessDeniedException" && r["userIdentity"]["uid"] == uid_of(MALLORY)
        })
        .count();
    assert!(denied >= 5, "every refusal is audited ({denied})");
}

#[test]
fn an_edited_config_is_refused_at_mount() {
    let fx = Fixture::new();
    let conf = fs::read(fx.c("kmsfs.conf")).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&conf).unwrap();
    assert!(v["Seal"].is_string(), "init seals the config");
    for (field, value) in [
        (
            "KmsHome",
            serde_json::json!("/srv/old-copy-of-the-kms-home"),
        ),
        (
            "FilesystemId",
            serde_json::json!("00000000-0000-0000-0000-000000000000"),
        ),
        ("HeaderSize", serde_json::json!(1024)),
    ] {
        let saved = v[field].clone();
        v[field] = value;
        fs::write(fx.c("kmsfs.conf"), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        let o = fx.cli(&[
            "mount",
            fx.cipher.to_str().unwrap(),
            fx.mnt.to_str().unwrap(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{field}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("has been edited"), "{field}: {err}");
        assert!(!is_mounted(&fx.mnt));
        v[field] = saved;
    }
    fs::write(fx.c("kmsfs.conf"), &conf).unwrap();
    let m = fx.mount();
    assert!(
        m.stderr.contains("KMS home"),
        "the mount names its KMS home: {}",
        m.stderr
    );
}

/// Paths up to PATH_MAX inside the mount work as on a plain directory: the
/// daemon resolves relative to the cipherdir, not cipherdir + path.
#[test]
fn a_4095_byte_path_works_as_on_a_plain_directory() {
    let fx = Fixture::new();
    let _m = fx.mount();
    let plain = tempfile::tempdir().unwrap();
    // The longest relative path whose absolute form fits PATH_MAX.
    let run = |base: &Path| {
        let budget = 4095 - base.as_os_str().len() - 1;
        let mut rel = String::new();
        while rel.len() + 256 < budget - 10 {
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(&"d".repeat(255));
        }
        let fill = budget - rel.len() - 1 - 1;
        let file = format!("{rel}/{}", "f".repeat(fill.min(255)));
        let script = format!(
            "set -e; cd {b}; mkdir -p {rel}; echo hello > {file}; stat -c %s {file}; mv {file} {rel}/g; cat {rel}/g; rm {rel}/g; echo ok",
            b = base.display()
        );
        sh(&script)
    };
    let a = run(&fx.mnt);
    let b = run(plain.path());
    assert_eq!(
        (
            a.status.code(),
            String::from_utf8_lossy(&a.stdout).to_string()
        ),
        (
            b.status.code(),
            String::from_utf8_lossy(&b.stdout).to_string()
        ),
        "mount: {}; plain: {}",
        String::from_utf8_lossy(&a.stderr),
        String::from_utf8_lossy(&b.stderr)
    );
    assert!(String::from_utf8_lossy(&a.stdout).ends_with("ok\n"));
}

/// The daemon holds keys: it dumps no core and keeps its pages out of swap.
#[test]
fn the_daemon_dumps_no_core_and_locks_its_memory() {
    let fx = Fixture::new();
    let _m = fx.mount();
    fs::write(fx.m("f"), b"x").unwrap();
    let pid = sh_ok(&format!(
        "fuser -m {} 2>/dev/null || pgrep -f 'kmsfs.*mount.*{}'",
        fx.mnt.display(),
        fx.cipher.display()
    ));
    let pid: u32 = pid
        .split_whitespace()
        .next()
        .expect("daemon pid")
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(core.split_whitespace().nth(4), Some("0"), "{core}");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked: u64 = status
        .lines()
        .find(|l| l.starts_with("VmLck:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    assert!(locked > 0, "VmLck is {locked} kB");
}
