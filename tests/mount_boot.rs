//! Boot and unattended mounts: `mount -t fuse.kmsfs` and an fstab line
//! through the mount helper, `--idle`, and the systemd unit template's own
//! commands (mount, clean stop on SIGTERM, restart after a crash).

mod common;
use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELPER: &str = "/sbin/mount.fuse.kmsfs";

/// Points /sbin/mount.fuse.kmsfs at the binary under test while alive, and
/// puts back whatever was there (an installed kmsfs) afterwards.
struct HelperLink {
    before: Option<PathBuf>,
}

impl HelperLink {
    fn install() -> Self {
        let before = fs::read_link(HELPER).ok();
        let _ = fs::remove_file(HELPER);
        std::os::unix::fs::symlink(BIN, HELPER).expect("link the mount helper (needs root)");
        HelperLink { before }
    }
}

impl Drop for HelperLink {
    fn drop(&mut self) {
        let _ = fs::remove_file(HELPER);
        if let Some(b) = &self.before {
            let _ = std::os::unix::fs::symlink(b, HELPER);
        }
    }
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {secs}s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fstype(mnt: &Path) -> String {
    sh_ok(&format!(
        "findmnt -n -o FSTYPE --mountpoint {}",
        mnt.display()
    ))
    .trim()
    .to_string()
}

#[test]
fn mount_t_fuse_kmsfs_and_an_fstab_line_mount_through_the_helper() {
    let fx = Fixture::new();
    let _link = HelperLink::install();
    let opts = format!(
        "defaults,noauto,x-systemd.automount,_netdev,allow_other,keyfile={},kms_home={},noatime",
        fx.key.display(),
        fx.home.display()
    );
    let o = run_timeout(
        Command::new("mount")
            .args(["-t", "fuse.kmsfs"])
            .arg(&fx.cipher)
            .arg(&fx.mnt)
            .args(["-o", &opts])
            .env_remove("KMSFS_HOME")
            .env_remove("KMSFS_KEY_FILE"),
        60,
    );
    let m = fx.mounted_in_background();
    assert!(
        o.status.success(),
        "mount -t fuse.kmsfs: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fstype(&fx.mnt), "fuse.kmsfs");
    let mopts = sh_ok(&format!(
        "findmnt -n -o OPTIONS --mountpoint {}",
        fx.mnt.display()
    ));
    assert!(
        mopts.contains("noatime") && mopts.contains("allow_other"),
        "{mopts}"
    );
    fs::write(fx.m("via-mount"), b"hello").unwrap();
    assert_eq!(fs::read(fx.m("via-mount")).unwrap(), b"hello");
    // umount(8) itself unmounts it.
    let o = sh(&format!("umount {}", fx.mnt.display()));
    assert!(
        o.status.success(),
        "umount: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    wait_until(10, "unmounted", || !is_mounted(&fx.mnt));
    drop(m);

    // The same through an fstab line (mount -T reads another fstab).
    let fstab = fx.dir.path().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# kmsfs\n{} {} fuse.kmsfs {opts},ro 0 0\n",
            fx.cipher.display(),
            fx.mnt.display()
        ),
    )
    .unwrap();
    let o = run_timeout(Command::new("mount").arg("-T").arg(&fstab).arg(&fx.mnt), 60);
    let m = fx.mounted_in_background();
    assert!(
        o.status.success(),
        "mount -T: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(fs::read(fx.m("via-mount")).unwrap(), b"hello");
    assert_eq!(
        fs::write(fx.m("ro"), b"x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    m.unmount();

    // A mistake in the options is named, with the usage, exit 2.
    let o = Command::new(HELPER)
        .arg(&fx.cipher)
        .arg(&fx.mnt)
        .args(["-o", "passfile="])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("mount.fuse.kmsfs: the mount option passfile needs a value (passfile=...)\nusage: mount.fuse.kmsfs CIPHERDIR MOUNTPOINT"),
        "{err}"
    );
    assert!(!is_mounted(&fx.mnt));
}

#[test]
fn idle_unmounts_an_unused_mount_but_never_under_an_open_file() {
    let fx = Fixture::new();
    let m = fx.mount_with(&["--idle", "2s"]);
    fs::write(fx.m("held"), b"x").unwrap();
    // A reader keeps the file open for 5 s: longer than the idle limit.
    let mut holder = Command::new("python3")
        .arg("-c")
        .arg("import sys, time\nf = open(sys.argv[1], 'rb')\nprint('open', flush=True)\ntime.sleep(5)")
        .arg(fx.m("held"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line, "open\n");
    std::thread::sleep(Duration::from_secs(4));
    assert!(is_mounted(&fx.mnt), "unmounted under an open file");
    holder.wait().unwrap();
    let closed = Instant::now();
    wait_until(15, "the idle mount unmounted", || !is_mounted(&fx.mnt));
    let after = closed.elapsed();
    assert!(
        after >= Duration::from_secs(2),
        "unmounted {after:?} after the close"
    );
    let log = fs::read_dir(&fx.home)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("mount-")
        })
        .map(|p| fs::read_to_string(p).unwrap())
        .unwrap_or_default();
    assert!(
        log.contains("kmsfs: unused for 2s (--idle): unmounting"),
        "{log}"
    );
    m.wait_exit(10);
}

/// The unit's Exec lines, with its environment file's values put in the
/// way systemd does for these forms ($VAR split into words, ${VAR} one word).
fn unit_commands(conf: &[(&str, String)]) -> Vec<(String, Vec<String>)> {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/kmsfs@.service"
    ))
    .unwrap();
    let mut out = vec![];
    for line in unit.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if !k.starts_with("Exec") {
            continue;
        }
        let mut v = v.to_string();
        for (name, val) in conf {
            v = v.replace(&format!("${{{name}}}"), &val.replace(' ', "\u{1}"));
        }
        let words: Vec<String> = if let Some(script) = v.strip_prefix("/bin/sh -c ") {
            vec![
                "/bin/sh".into(),
                "-c".into(),
                script.trim_matches('\'').to_string(),
            ]
        } else {
            v.split(' ')
                .flat_map(|w| match conf.iter().find(|(n, _)| w == format!("${n}")) {
                    Some((_, val)) => val.split(' ').map(String::from).collect::<Vec<_>>(),
                    None => vec![w.replace('\u{1}', " ")],
                })
                .filter(|w| !w.is_empty())
                .collect()
        };
        out.push((k.to_string(), words));
    }
    out
}

#[test]
fn the_systemd_unit_mounts_stops_cleanly_on_sigterm_and_restarts_after_a_crash() {
    let fx = Fixture::new();
    let conf: Vec<(&str, String)> = vec![
        ("CIPHERDIR", fx.cipher.display().to_string()),
        ("MOUNTPOINT", fx.mnt.display().to_string()),
        ("KMSFS_MOUNT_FLAGS", "--allow-other --threads 4".into()),
    ];
    let cmds = unit_commands(&conf);
    let names: Vec<&str> = cmds.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["ExecStartPre", "ExecStart", "ExecStartPost"]);
    let env = |c: &mut Command| {
        for (k, v) in &conf {
            c.env(k, v);
        }
        c.env("KMSFS_HOME", &fx.home).env("KMSFS_KEY_FILE", &fx.key);
    };
    let run = |which: &str| {
        let (_, w) = cmds.iter().find(|(k, _)| k == which).unwrap();
        let mut c = Command::new(&w[0]);
        c.args(&w[1..]);
        env(&mut c);
        c
    };
    let start = || {
        let o = run_timeout(&mut run("ExecStartPre"), 30);
        assert!(
            o.status.success(),
            "ExecStartPre: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (_, w) = cmds.iter().find(|(k, _)| k == "ExecStart").unwrap();
        assert_eq!(w[0], "/usr/local/bin/kmsfs");
        // The binary under test stands in for the installed one.
        let mut daemon = Command::new(BIN);
        daemon.args(&w[1..]);
        env(&mut daemon);
        let child = daemon
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let o = run_timeout(&mut run("ExecStartPost"), 60);
        assert!(
            o.status.success(),
            "ExecStartPost: the mount did not appear"
        );
        let mut m = fx.mounted_in_background();
        m.child = Some(child);
        m
    };
    let mut m = start();
    fs::write(fx.m("unit"), b"first").unwrap();
    // systemctl stop: SIGTERM to the daemon, which unmounts and exits 0.
    let pid = m.child.as_ref().unwrap().id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = {
        let c = m.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(status.success(), "stopped with {status}");
    assert!(!is_mounted(&fx.mnt));
    m.child = None;
    drop(m);

    // A crash (SIGKILL) leaves the dead mount; the restart's ExecStartPre
    // clears it and the daemon comes back with the data.
    let m = start();
    m.kill_leaving_mount();
    assert_eq!(
        fstype(&fx.mnt),
        "fuse.kmsfs",
        "the dead mount is still there"
    );
    let m = start();
    assert_eq!(fs::read(fx.m("unit")).unwrap(), b"first");
    m.unmount();

    if Path::new("/usr/bin/systemd-analyze").exists() {
        let d = tempfile::tempdir().unwrap();
        let unit = d.path().join("kmsfs@demo.service");
        fs::copy(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/contrib/systemd/kmsfs@.service"
            ),
            &unit,
        )
        .unwrap();
        let o = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&unit)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        // The binary need not be installed here; nothing else may be wrong.
        let other: Vec<&str> = err
            .lines()
            .filter(|l| {
                !l.contains("/usr/local/bin/kmsfs")
                    && !l.contains("kmsfs@demo.service: Command")
                    && !l.trim().is_empty()
            })
            .filter(|l| !l.contains("ConditionPathExists") && !l.contains("/etc/kmsfs/demo.conf"))
            .collect();
        assert!(other.is_empty(), "systemd-analyze verify: {err}");
    }
}
