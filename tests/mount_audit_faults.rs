//! The audit trail under abuse and under a full disk: one process's open
//! loop is coalesced (every open still counted), one user's flood of key use
//! cannot stop root's or another user's, and a full audit disk fails key use
//! closed without hanging anything, then recovers by itself.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// A fixture whose KMS home (audit log, daemon log) is on a small tmpfs.
fn small_home_fixture(size: &str) -> (Fixture, SmallFs) {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let small = SmallFs::mount(&dir.path().join("home"), size, "0700");
    (Fixture::init_in(dir), small)
}

fn records_for(fx: &Fixture, path: &str) -> (usize, u64) {
    let mut lines = 0;
    let mut opens = 0;
    for r in fx.audit() {
        if r["eventName"] == "Decrypt"
            && r["requestParameters"]["encryptionContext"]["kmsfs:path"] == path
        {
            lines += 1;
            // A coalesced record stands for `count` calls, itself included.
            opens += r["coalesced"]["count"].as_u64().unwrap_or(1);
        }
    }
    (lines, opens)
}

fn verify(fx: &Fixture) -> String {
    let o = fx.cli(&["audit", "verify"]);
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "audit verify failed: {out}");
    out
}

#[test]
fn one_process_opening_one_file_in_a_loop_is_coalesced_and_every_open_counted() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::write(fx.m("hot"), b"x").unwrap();
    let n = 5000;
    sh_ok(&format!(
        "python3 -c 'import sys\nfor _ in range({n}): open(sys.argv[1], \"rb\").read()' {}",
        fx.m("hot").display()
    ));
    m.unmount();
    let (lines, opens) = records_for(&fx, "hot");
    eprintln!("{n} opens by one process: {lines} audit lines");
    assert_eq!(opens, n as u64, "every open is accounted for");
    assert!(lines < 100, "{lines} lines for {n} identical opens");
    verify(&fx);
}

/// The deadlock of a full audit disk: every request hung in the group
/// commit about one run in two. Now key use fails within a bound, the rest
/// of the mount answers, and it all resumes when space returns.
#[test]
fn a_full_audit_disk_fails_key_use_closed_and_recovers_without_hanging() {
    let (fx, _small) = small_home_fixture("8m");
    let m = fx.mount_foreground_with(&[]);
    fs::write(fx.m("f"), b"content").unwrap();
    fs::write(fx.m("open-before"), b"still readable").unwrap();
    for round in 0..5 {
        let held = fs::File::open(fx.m("open-before")).unwrap();
        // Fill the KMS home's filesystem to the last byte.
        let _ = sh(&format!(
            "dd if=/dev/zero of={}/fill bs=64k status=none",
            fx.home.display()
        ));
        // The log's last page may still hold a record or two; after that
        // every open fails, each within its bound, none hangs.
        let t = Instant::now();
        let mut o = sh(&format!("timeout 20 cat {}", fx.m("f").display()));
        for _ in 0..50 {
            assert_ne!(
                o.status.code(),
                Some(124),
                "round {round}: an open hung on a full audit disk"
            );
            if !o.status.success() {
                break;
            }
            o = sh(&format!("timeout 20 cat {}", fx.m("f").display()));
        }
        assert!(
            !o.status.success(),
            "round {round}: opens kept succeeding on a full disk"
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("Input/output error") || err.contains("Permission denied"),
            "round {round}: {err}"
        );
        assert!(t.elapsed() < Duration::from_secs(60));
        // Metadata and already-open files still answer.
        assert_eq!(fs::metadata(fx.m("f")).unwrap().len(), 7);
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut &held, &mut buf).unwrap();
        assert_eq!(buf, "still readable");
        // Space back: key use resumes by itself.
        fs::remove_file(fx.home.join("fill")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if fs::read(fx.m("f")).is_ok_and(|b| b == b"content") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: key use did not resume"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // SIGTERM still unmounts.
    let pid = m.child.as_ref().unwrap().id();
    sh_ok(&format!("kill -TERM {pid}"));
    m.wait_exit(30);
    assert!(!is_mounted(&fx.mnt));
    let out = verify(&fx);
    eprintln!("after 5 full-disk rounds: {}", out.trim());
}

#[test]
fn one_users_flood_of_opens_cannot_stop_root_or_another_user() {
    ensure_users(&[], &[("kmsfs-mallory", &[]), ("kmsfs-trent", &[])]);
    let (fx, _small) = small_home_fixture("16m");
    let _m = fx.mount_with(&["--allow-other"]);
    fs::set_permissions(&fx.mnt, fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["m1", "t1"] {
        fs::write(fx.m(f), b"data").unwrap();
        fs::set_permissions(fx.m(f), fs::Permissions::from_mode(0o644)).unwrap();
    }
    // Mallory opens with a new process each time (no coalescing helps),
    // for at most 60 s or until her key use is refused.
    let flood = format!(
        "end=$(( $(date +%s) + 60 )); n=0; while [ $(date +%s) -lt $end ]; do cat {} >/dev/null 2>&1 || {{ echo refused after $n; exit 0; }}; n=$((n+1)); done; echo never refused after $n",
        fx.m("m1").display()
    );
    let mallory = Command::new("runuser")
        .args(["-u", "kmsfs-mallory", "--", "sh", "-c", &flood])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Meanwhile trent's and root's opens keep working, and how long they take.
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let t = Instant::now();
        let o = run_timeout(
            Command::new("runuser")
                .args(["-u", "kmsfs-trent", "--", "cat"])
                .arg(fx.m("t1")),
            30,
        );
        assert!(
            o.status.success(),
            "trent's open failed during the flood: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = mallory.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let log_bytes = fs::metadata(fx.home.join("audit.log")).unwrap().len();
    eprintln!(
        "flood: mallory {}; trent's slowest open {:?}; audit log {} KiB",
        said.trim(),
        worst,
        log_bytes >> 10
    );
    // Whatever she did, root and trent still use keys.
    assert_eq!(fs::read(fx.m("t1")).unwrap(), b"data");
    let o = run_timeout(
        Command::new("runuser")
            .args(["-u", "kmsfs-trent", "--", "cat"])
            .arg(fx.m("t1")),
        30,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // If the disk came near full, it was mallory who was refused.
    if said.starts_with("refused") {
        let refused = fx
            .audit()
            .into_iter()
            .filter(|r| r["userIdentity"]["uid"] == 0 && r["errorCode"].is_string())
            .count();
        assert_eq!(refused, 0, "root was refused");
    }
}
