//! The audit trail through the real binary: rotation by size and on demand,
//! `audit show` over rotated and compressed files, `audit verify` naming
//! each kind of damage (cut records, a removed rotated file, a deleted or
//! older log), and logrotate with a real config rotating a running mount's
//! log.

mod common;
use common::*;
use std::fs;
use std::path::Path;
use std::process::Output;

fn out(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A key of the test's own: the filesystem's key is kmsfs-managed, used
/// only through the mount.
fn key_id(fx: &Fixture) -> String {
    let o = fx.cli(&["kms", "create-key", "--description", "audit trail test"]);
    assert!(o.status.success(), "create-key: {}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
}

/// `n` Encrypt calls through the CLI, with `extra` global flags.
fn encrypt(fx: &Fixture, n: usize, extra: &[&str]) {
    let key = key_id(fx);
    for _ in 0..n {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["kms", "encrypt", "--key-id", &key, "--plaintext", "eA=="]);
        let o = fx.cli(&args);
        assert!(o.status.success(), "encrypt: {}", out(&o));
    }
}

/// The trail's rotated files: ours in chain order (by their first record),
/// then logrotate's by name.
fn rotated(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(home)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("audit.log.") || n.starts_with("audit.log-"))
        .collect();
    let first = |n: &str| -> (u64, String) {
        let seq = n
            .strip_prefix("audit.log.")
            .and_then(|r| r.split_once('-'))
            .and_then(|(lo, _)| lo.parse().ok())
            .unwrap_or(u64::MAX);
        (seq, n.to_string())
    };
    v.sort_by_key(|n| first(n));
    v
}

fn verify(fx: &Fixture) -> (Option<i32>, String) {
    let o = fx.cli(&["audit", "verify"]);
    (o.status.code(), out(&o))
}

fn count_shown(fx: &Fixture, event: &str) -> usize {
    let o = fx.cli(&["audit", "show", "--event", event]);
    assert!(o.status.success(), "show: {}", out(&o));
    String::from_utf8_lossy(&o.stdout).lines().count()
}

#[test]
fn rotation_by_size_and_on_demand_keeps_one_verified_trail_that_show_reads_whole() {
    let fx = Fixture::new();
    // `kmsfs init` made records of its own.
    let (encrypts, creates) = (count_shown(&fx, "Encrypt"), count_shown(&fx, "CreateKey"));
    encrypt(&fx, 12, &["--audit-max-size", "2K"]);
    let files = rotated(&fx.home);
    assert!(files.len() >= 3, "rotated by size: {files:?}");
    assert!(
        files.iter().all(|f| {
            let (lo, hi) = f.trim_start_matches("audit.log.").split_once('-').unwrap();
            lo.parse::<u64>().unwrap() <= hi.parse::<u64>().unwrap()
        }),
        "named audit.log.FIRST-LAST: {files:?}"
    );
    let o = fx.cli(&["audit", "rotate"]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(
        out(&o).starts_with("rotated the audit log to "),
        "{}",
        out(&o)
    );
    assert_eq!(rotated(&fx.home).len(), files.len() + 1);
    encrypt(&fx, 2, &[]);
    let (code, text) = verify(&fx);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("in {} file(s), chain and ", files.len() + 2)),
        "{text}"
    );
    assert!(
        text.contains("proven complete up to the last record by the keystore's anchor"),
        "{text}"
    );
    // show reads every file, oldest first, and a compressed one too.
    assert_eq!(count_shown(&fx, "Encrypt"), encrypts + 14);
    assert_eq!(count_shown(&fx, "CreateKey"), creates + 2);
    let oldest = fx.home.join(&rotated(&fx.home)[0]);
    sh_ok(&format!("gzip {}", oldest.display()));
    assert_eq!(count_shown(&fx, "Encrypt"), encrypts + 14);
    assert_eq!(count_shown(&fx, "CreateKey"), creates + 2);
    assert_eq!(verify(&fx).0, Some(0));
    // The trail's own records show only when asked for.
    let all = fx.cli(&["audit", "show"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains("AuditDigest"));
    assert!(count_shown(&fx, "AuditDigest") >= files.len());
    assert!(count_shown(&fx, "LogFileStarted") >= files.len());
}

#[test]
fn verify_names_cut_records_a_removed_file_a_deleted_log_and_an_older_copy() {
    let fx = Fixture::new();
    encrypt(&fx, 6, &["--audit-max-size", "2K"]);
    let log = fx.home.join("audit.log");
    assert_eq!(verify(&fx).0, Some(0));
    let saved: Vec<(String, Vec<u8>)> = fs::read_dir(&fx.home)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("audit.log"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    let restore = || {
        for (n, b) in &saved {
            fs::write(fx.home.join(n), b).unwrap();
        }
    };

    // The newest two records cut off.
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3, "{text}");
    fs::write(&log, lines[..lines.len() - 2].join("\n") + "\n").unwrap();
    let (code, t) = verify(&fx);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("the newest records were cut off: the keystore anchors record"),
        "{t}"
    );
    restore();
    assert_eq!(verify(&fx).0, Some(0));

    // A rotated file in the middle removed.
    let files = rotated(&fx.home);
    assert!(files.len() >= 2, "{files:?}");
    fs::remove_file(fx.home.join(&files[1])).unwrap();
    let (code, t) = verify(&fx);
    assert_eq!(code, Some(1), "{t}");
    let (lo, hi) = files[1]
        .trim_start_matches("audit.log.")
        .split_once('-')
        .unwrap();
    assert!(
        t.contains(&format!(
            "records {lo} to {hi} are missing between {} and this file: a rotated file was removed",
            files[0]
        )),
        "{t}"
    );
    restore();

    // An older copy of the active log put back, then written on.
    let before = fs::read(&log).unwrap();
    encrypt(&fx, 3, &[]);
    fs::write(&log, &before).unwrap();
    encrypt(&fx, 3, &[]);
    let (code, t) = verify(&fx);
    assert_eq!(code, Some(1), "{t}");
    assert!(t.contains("the log was replaced with an older copy"), "{t}");

    // The whole trail deleted.
    for n in fs::read_dir(&fx.home)
        .unwrap()
        .map(|e| e.unwrap().file_name())
    {
        if n.to_string_lossy().starts_with("audit.log") {
            fs::remove_file(fx.home.join(n)).unwrap();
        }
    }
    let (code, t) = verify(&fx);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("the audit log is missing or empty, but the keystore anchors record"),
        "{t}"
    );
    // ... and a new writer after it: the hole is named where it is.
    encrypt(&fx, 1, &[]);
    let (code, t) = verify(&fx);
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("audit.log line 1: the trail starts at record "),
        "{t}"
    );
}

#[test]
fn logrotate_with_a_real_config_rotates_a_running_mounts_log() {
    let fx = Fixture::new();
    let m = fx.mount_foreground();
    let pid = m.child.as_ref().unwrap().id();
    let conf = fx.dir.path().join("logrotate.conf");
    let state = fx.dir.path().join("logrotate.state");
    fs::write(
        &conf,
        format!(
            "{}/audit.log {{\n  size 1\n  rotate 10\n  compress\n  delaycompress\n  missingok\n  create 0600 root root\n  postrotate\n    kill -HUP {pid}\n  endscript\n}}\n",
            fx.home.display()
        ),
    )
    .unwrap();
    let logrotate = format!("logrotate -s {} {}", state.display(), conf.display());
    for round in 0..3 {
        for i in 0..4 {
            fs::write(fx.m(&format!("r{round}-{i}")), b"data").unwrap();
            assert_eq!(fs::read(fx.m(&format!("r{round}-{i}"))).unwrap(), b"data");
        }
        let o = sh(&logrotate);
        assert!(o.status.success(), "logrotate: {}", out(&o));
    }
    fs::write(fx.m("last"), b"x").unwrap();
    m.unmount();
    let files = rotated(&fx.home);
    assert!(files.contains(&"audit.log.1".to_string()), "{files:?}");
    assert!(files.contains(&"audit.log.2.gz".to_string()), "{files:?}");
    assert!(files.contains(&"audit.log.3.gz".to_string()), "{files:?}");
    let (code, t) = verify(&fx);
    assert_eq!(code, Some(0), "{t}");
    assert!(t.contains("in 4 file(s)"), "{t}");
    // Every file's creation through the mount is in the trail, whichever
    // file logrotate moved it to.
    for round in 0..3 {
        for i in 0..4 {
            let o = fx.cli(&["audit", "show", "--path", &format!("r{round}-{i}")]);
            assert!(o.status.success(), "{}", out(&o));
            let n = String::from_utf8_lossy(&o.stdout).lines().count();
            assert!(n >= 1, "no record of r{round}-{i}");
        }
    }
}

#[test]
fn audit_syslog_sends_each_record_as_written_to_the_file() {
    use std::os::unix::net::UnixDatagram;
    let fx = Fixture::new();
    let sock = fx.dir.path().join("dev-log");
    let rx = UnixDatagram::bind(&sock).unwrap();
    rx.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let before = fs::read_to_string(fx.home.join("audit.log"))
        .unwrap()
        .lines()
        .count();
    let flags = [
        "--audit-syslog",
        "--audit-syslog-socket",
        sock.to_str().unwrap(),
    ];
    encrypt(&fx, 3, &flags);
    let lines: Vec<String> = fs::read_to_string(fx.home.join("audit.log"))
        .unwrap()
        .lines()
        .skip(before)
        .map(String::from)
        .collect();
    assert_eq!(lines.len(), 4, "a CreateKey and three Encrypts");
    let mut buf = vec![0u8; 1 << 16];
    // The key was made without --audit-syslog; the Encrypts with it.
    for line in &lines[1..] {
        let n = rx.recv(&mut buf).expect("a datagram per record");
        let got = std::str::from_utf8(&buf[..n]).unwrap();
        let (head, record) = got.split_once("]: ").unwrap();
        assert!(head.starts_with("<86>kmsfs["), "{head}");
        assert_eq!(record, line, "the very line the file holds");
    }
    // Nobody listening: key use goes on, the file has every record.
    drop(rx);
    encrypt(&fx, 1, &flags);
    assert_eq!(verify(&fx).0, Some(0));
}

#[test]
fn rotation_under_concurrent_writer_processes_loses_no_record() {
    let fx = Fixture::new();
    let key = key_id(&fx);
    let before = count_shown(&fx, "Encrypt");
    let children: Vec<_> = (0..4)
        .map(|_| {
            let script = format!(
                "for i in $(seq 12); do {bin} --kms-home {home} --key-file {keyf} --audit-max-size 3K kms encrypt --key-id {key} --plaintext eA== >/dev/null || exit 1; done",
                bin = BIN,
                home = fx.home.display(),
                keyf = fx.key.display(),
            );
            std::process::Command::new("sh").arg("-c").arg(script).spawn().unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    assert_eq!(count_shown(&fx, "Encrypt"), before + 48);
    let (code, t) = verify(&fx);
    assert_eq!(code, Some(0), "{t}");
    assert!(rotated(&fx.home).len() >= 5, "{:?}", rotated(&fx.home));
}
