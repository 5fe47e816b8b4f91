//! Key policies and grants enforced inside the mount, with real users:
//! root may do everything; alice may Decrypt and GenerateDataKey except
//! under private/; group backup may Decrypt under projects/; carol, absent
//! from the policy, gets EACCES until a grant lets her read one file.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn ensure_users() {
    common::ensure_users(
        &["backup"],
        &[
            ("kmsfs-alice", &[]),
            ("kmsfs-bob", &["backup"]),
            ("kmsfs-carol", &[]),
        ],
    );
}

fn denied(r: Result<String, String>) -> bool {
    matches!(r, Err(e) if e.contains("Permission denied"))
}

const POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "RootAll", "Effect": "Allow", "Principal": {"Unix": ["uid:0"]}, "Action": "kms:*", "Resource": "*"},
    {"Sid": "AliceUse", "Effect": "Allow", "Principal": {"Unix": ["user:kmsfs-alice"]},
     "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": "*"},
    {"Sid": "AliceNotPrivate", "Effect": "Deny", "Principal": {"Unix": ["user:kmsfs-alice"]}, "Action": "kms:*", "Resource": "*",
     "Condition": {"StringLike": {"kms:EncryptionContext:kmsfs:path": "private/*"}}},
    {"Sid": "BackupReadsProjects", "Effect": "Allow", "Principal": {"Unix": ["group:backup"]}, "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"StringLike": {"kms:EncryptionContext:kmsfs:path": "projects/*"}}}
  ]
}"#;

/// A filesystem whose key has `policy`, with the test users made.
fn policy_fixture(policy: &str) -> (Fixture, String) {
    ensure_users();
    Fixture::with_policy(policy)
}

#[test]
fn policy_and_grants_decide_who_reads_what() {
    let (fx, kid) = policy_fixture(POLICY);
    let _m = fx.mount_with(&["--allow-other"]);

    for d in ["projects", "private", "shared"] {
        fs::create_dir(fx.m(d)).unwrap();
        fs::set_permissions(fx.m(d), fs::Permissions::from_mode(0o777)).unwrap();
    }
    fs::write(fx.m("projects/x"), b"project data").unwrap();
    fs::write(fx.m("private/y"), b"private data").unwrap();
    fs::write(fx.m("shared/report.txt"), b"the report").unwrap();
    let m = |p: &str| fx.m(p).display().to_string();

    // bob (group backup): projects yes, private no, and no GenerateDataKey.
    assert_eq!(
        as_user("kmsfs-bob", &format!("cat {}", m("projects/x"))).unwrap(),
        "project data"
    );
    assert!(denied(as_user(
        "kmsfs-bob",
        &format!("cat {}", m("private/y"))
    )));
    assert!(denied(as_user(
        "kmsfs-bob",
        &format!("echo hi > {}", m("projects/new-by-bob"))
    )));
    // alice: reads projects, the explicit Deny wins on private, and she may create files.
    assert_eq!(
        as_user("kmsfs-alice", &format!("cat {}", m("projects/x"))).unwrap(),
        "project data"
    );
    assert!(denied(as_user(
        "kmsfs-alice",
        &format!("cat {}", m("private/y"))
    )));
    as_user(
        "kmsfs-alice",
        &format!("echo hi > {}", m("projects/by-alice")),
    )
    .unwrap();
    assert!(denied(as_user(
        "kmsfs-alice",
        &format!("echo hi > {}", m("private/by-alice"))
    )));
    // carol: nothing, whatever the mode bits say.
    assert!(denied(as_user(
        "kmsfs-carol",
        &format!("cat {}", m("projects/x"))
    )));
    assert!(denied(as_user(
        "kmsfs-carol",
        &format!("cat {}", m("shared/report.txt"))
    )));

    // A grant constrained to one path lets carol read that file and nothing else.
    let g = fx.cli(&[
        "kms",
        "create-grant",
        "--key-id",
        &kid,
        "--grantee-principal",
        "user:kmsfs-carol",
        "--operations",
        "Decrypt",
        "--constraints",
        "EncryptionContextSubset={kmsfs:path=shared/report.txt}",
        "--name",
        "carol-report",
    ]);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let gv: serde_json::Value = serde_json::from_slice(&g.stdout).unwrap();
    let gid = gv["GrantId"].as_str().unwrap().to_string();
    assert_eq!(
        as_user("kmsfs-carol", &format!("cat {}", m("shared/report.txt"))).unwrap(),
        "the report"
    );
    assert!(denied(as_user(
        "kmsfs-carol",
        &format!("cat {}", m("projects/x"))
    )));
    assert!(denied(as_user(
        "kmsfs-carol",
        &format!("cat {}", m("private/y"))
    )));
    // Revoking takes effect on her next open.
    assert!(
        fx.cli(&["kms", "revoke-grant", "--key-id", &kid, "--grant-id", &gid])
            .status
            .success()
    );
    assert!(denied(as_user(
        "kmsfs-carol",
        &format!("cat {}", m("shared/report.txt"))
    )));

    // The audit log says who was refused, and which statement or grant decided.
    let recs = fx.audit();
    let carol_uid: u64 = sh_ok("id -u kmsfs-carol").trim().parse().unwrap();
    let alice_uid: u64 = sh_ok("id -u kmsfs-alice").trim().parse().unwrap();
    let find = |uid: u64, path: &str, err: bool| {
        recs.iter().any(|r| {
            r["eventName"] == "Decrypt"
                && r["userIdentity"]["uid"] == uid
                && r["requestParameters"]["encryptionContext"]["kmsfs:path"] == path
                && r.get("errorCode").is_some() == err
        })
    };
    assert!(
        find(carol_uid, "shared/report.txt", false) && find(carol_uid, "shared/report.txt", true)
    );
    let by = |uid: u64, path: &str| -> Vec<String> {
        recs.iter()
            .filter(|r| {
                r["userIdentity"]["uid"] == uid
                    && r["requestParameters"]["encryptionContext"]["kmsfs:path"] == path
            })
            .filter_map(|r| {
                r["additionalEventData"]["authorization"]["by"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    };
    assert!(
        by(alice_uid, "private/y")
            .iter()
            .any(|b| b.contains("AliceNotPrivate")),
        "{:?}",
        by(alice_uid, "private/y")
    );
    assert!(
        by(carol_uid, "shared/report.txt")
            .iter()
            .any(|b| b.contains(&format!("grant {gid}")))
    );
}

const OPEN_POLICY: &str = r#"{
  "Version": "2012-10-17",
  "Statement": [
    {"Sid": "Everyone", "Effect": "Allow", "Principal": {"Unix": ["*"]}, "Action": "kms:*", "Resource": "*"}
  ]
}"#;

/// The mount clears set-user-id and set-group-id bits where the kernel would
/// (FUSE_HANDLE_KILLPRIV leaves that to the daemon): the same steps on a
/// plain directory and in the mount end with the same modes.
#[test]
fn set_id_bits_are_cleared_like_on_a_native_filesystem() {
    let (fx, _) = policy_fixture(OPEN_POLICY);
    let native = fx.dir.path().join("native");
    fs::create_dir(&native).unwrap();
    let run = |d: &std::path::Path| -> Vec<String> {
        fs::set_permissions(d, fs::Permissions::from_mode(0o777)).unwrap();
        let f = |n: &str| d.join(n).display().to_string();
        let mode = |n: &str| format!("{n}:{:o}", fs::metadata(d.join(n)).unwrap().mode() & 0o7777);
        // (name, starting mode, who acts, what they run on the file)
        let cases = [
            // A write by an unprivileged user clears both bits (group execute set).
            ("w", 0o6777, Some("kmsfs-bob"), "echo more >>"),
            // Without group execute, set-group-id stays unless the writer is
            // outside the file's group (bob is).
            ("g", 0o6766, Some("kmsfs-bob"), "echo more >>"),
            // Truncation by an unprivileged user.
            ("t", 0o4777, Some("kmsfs-bob"), "truncate -s 2"),
            // chown, even by root.
            ("c", 0o4755, None, "chown kmsfs-bob"),
            // root keeps them when writing (CAP_FSETID).
            ("r", 0o4755, None, "echo more >>"),
        ];
        cases
            .iter()
            .map(|&(n, start, user, cmd)| {
                fs::write(d.join(n), b"data").unwrap();
                fs::set_permissions(d.join(n), fs::Permissions::from_mode(start)).unwrap();
                let script = format!("{cmd} {}", f(n));
                match user {
                    Some(u) => {
                        as_user(u, &script).unwrap();
                    }
                    None => {
                        sh_ok(&script);
                    }
                }
                mode(n)
            })
            .collect()
    };
    let want = run(&native);
    // Both write paths: through the kernel's writeback cache and without it.
    for (mode, extra) in [
        ("writeback", &["--allow-other"][..]),
        ("direct", &["--allow-other", "--no-writeback-cache"][..]),
    ] {
        let m = fx.mount_with(extra);
        let d = fx.m(mode);
        fs::create_dir(&d).unwrap();
        assert_eq!(run(&d), want, "{mode}");
        // The contents survived the mode changes.
        assert_eq!(fs::read(d.join("w")).unwrap(), b"datamore\n");
        assert_eq!(fs::read(d.join("t")).unwrap(), b"da");
        m.unmount();
    }
}

/// A user named in the key policy is deleted: the policy's other principals
/// keep working, the filesystem still mounts, and root can still replace the
/// policy (before, every call failed with "no such user", root's included).
#[test]
fn a_deleted_user_in_the_policy_locks_no_one_out() {
    common::ensure_users(&[], &[("kmsfs-gone", &[])]);
    let policy = r#"{"Version": "2012-10-17", "Statement": [
      {"Sid": "RootAll", "Effect": "Allow", "Principal": {"Unix": ["uid:0"]}, "Action": "kms:*", "Resource": "*"},
      {"Sid": "Gone", "Effect": "Allow", "Principal": {"Unix": ["user:kmsfs-gone"]}, "Action": "kms:Decrypt", "Resource": "*"}]}"#;
    let (fx, kid) = Fixture::with_policy(policy);
    let m = fx.mount();
    fs::write(fx.m("f"), b"still mine").unwrap();
    m.unmount();
    sh_ok("flock -w 60 /run/lock/kmsfs-test-users.lock userdel kmsfs-gone");
    let m = fx.mount();
    assert_eq!(fs::read(fx.m("f")).unwrap(), b"still mine");
    m.unmount();
    let o = fx.cli(&[
        "kms",
        "get-key-policy",
        "--key-id",
        &kid,
        "--policy-name",
        "default",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("user:kmsfs-gone"),
        "the unresolved principal is named: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let root_only = fx.dir.path().join("root-only.json");
    fs::write(
        &root_only,
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "RootAll", "Effect": "Allow", "Principal": {"Unix": ["uid:0"]}, "Action": "kms:*", "Resource": "*"}]}"#,
    )
    .unwrap();
    let o = fx.cli(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &kid,
        "--policy-name",
        "default",
        "--policy",
        &format!("file://{}", root_only.display()),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
