//! Easy mistakes with `kmsfs mount` are refused at once with a message that
//! says what to do, instead of a mount that hangs every process touching it;
//! and SIGHUP does what it does to every daemon: reopen the log, keep serving.

mod common;
use common::*;
use std::fs;
use std::time::{Duration, Instant};

fn mount_fails(fx: &Fixture, cipher: &std::path::Path, mnt: &std::path::Path) -> String {
    let o = fx.cli(&["mount", cipher.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "mount should have been refused");
    assert!(
        !is_mounted(mnt),
        "a refused mount left {} mounted",
        mnt.display()
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn a_cipherdir_mounted_on_itself_or_inside_itself_is_refused() {
    let fx = Fixture::new();
    let err = mount_fails(&fx, &fx.cipher, &fx.cipher);
    assert!(err.contains("on itself"), "{err}");
    fs::create_dir(fx.c("sub")).unwrap();
    let err = mount_fails(&fx, &fx.cipher, &fx.c("sub"));
    assert!(err.contains("inside the cipherdir"), "{err}");
    // The other way round: the mount would hide the cipherdir.
    let err = mount_fails(&fx, &fx.cipher, fx.dir.path());
    assert!(err.contains("inside the mountpoint"), "{err}");
    // A KMS home inside the mountpoint would be written through the mount.
    let o = run_timeout(
        std::process::Command::new(BIN)
            .args(["--kms-home"])
            .arg(fx.m("home"))
            .arg("--key-file")
            .arg(&fx.key)
            .args([
                "mount",
                fx.cipher.to_str().unwrap(),
                fx.mnt.to_str().unwrap(),
            ]),
        60,
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("KMS home"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!is_mounted(&fx.mnt));
    fs::remove_dir(fx.c("sub")).unwrap();
    // And the filesystem still mounts where it should.
    let m = fx.mount();
    fs::write(fx.m("f"), b"ok").unwrap();
    m.unmount();
}

#[test]
fn key_readahead_on_a_filesystem_with_local_keys_is_refused() {
    let fx = Fixture::new();
    let o = fx.cli(&[
        "mount",
        fx.cipher.to_str().unwrap(),
        fx.mnt.to_str().unwrap(),
        "--key-readahead",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--key-readahead is for filesystems whose keys live in a remote KMS"),
        "{err}"
    );
    assert!(!is_mounted(&fx.mnt));
}

#[test]
fn a_non_empty_mountpoint_is_mentioned() {
    let fx = Fixture::new();
    fs::write(fx.mnt.join("hidden-by-the-mount"), b"x").unwrap();
    let m = fx.mount();
    assert!(m.stderr.contains("not empty"), "{}", m.stderr);
    assert!(fs::read(fx.m("hidden-by-the-mount")).is_err());
    m.unmount();
    assert!(fx.mnt.join("hidden-by-the-mount").exists());
}

fn daemon_pid(fx: &Fixture) -> u32 {
    let out = sh_ok(&format!("pgrep -f -- 'mount {} '", fx.cipher.display()));
    out.split_whitespace()
        .next()
        .expect("the daemon's pid")
        .parse()
        .unwrap()
}

#[test]
fn sighup_reopens_the_log_and_the_mount_keeps_serving() {
    let fx = Fixture::new();
    let log = fx.dir.path().join("daemon.log");
    let m = fx.mount_with(&["--log-file", log.to_str().unwrap()]);
    fs::write(fx.m("f"), b"before").unwrap();
    let pid = daemon_pid(&fx);
    // What logrotate does: move the log away, then SIGHUP.
    let rotated = fx.dir.path().join("daemon.log.1");
    fs::rename(&log, &rotated).unwrap();
    sh_ok(&format!("kill -HUP {pid}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("reopened the log")
    {
        assert!(
            Instant::now() < deadline,
            "the daemon did not reopen its log"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(is_mounted(&fx.mnt), "SIGHUP unmounted the filesystem");
    assert_eq!(fs::read(fx.m("f")).unwrap(), b"before");
    fs::write(fx.m("g"), b"after").unwrap();
    assert_eq!(fs::read(fx.m("g")).unwrap(), b"after");
    assert!(fs::read_to_string(&rotated).unwrap().contains("serving"));
    m.unmount();
    assert!(fs::read_to_string(&log).unwrap().contains("unmounted"));
}
