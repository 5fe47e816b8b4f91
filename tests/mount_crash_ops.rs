//! SIGKILL of the daemon at random moments while a workload creates, writes
//! and fsyncs files, appends, truncates (up, down, to zero with a re-key),
//! renames, makes symlinks and changes modes: after each remount every file
//! reads without an integrity error, every fsynced file has its bytes, and
//! nothing is under two names.

mod common;
use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

const WORKLOAD: &str = r#"
import os, sys
mnt, log, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
lf = open(log, "a")
def data(i):
    return bytes(((j * 31 + i) & 255) for j in range(1000 + (i * 37) % 9000))
try:
    while True:
        p = "%s/c%d" % (mnt, i)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data(i))
        os.fsync(fd)
        os.close(fd)
        lf.write("%d\n" % i); lf.flush(); os.fsync(lf.fileno())
        s = "%s/s%d" % (mnt, i % 5)
        with open(s, "ab") as f:
            f.write(data(i)[:700])
        os.truncate(s, (i * 97) % 20000)
        if i % 3 == 0:
            os.truncate(s, 0)
            with open(s, "wb") as f:
                f.write(b"rekeyed %d" % i)
        t = "%s/t%d" % (mnt, i % 5)
        os.rename(s, t)
        os.rename(t, s)
        l = "%s/l%d" % (mnt, i % 5)
        if os.path.lexists(l):
            os.unlink(l)
        os.symlink("c%d" % i, l)
        os.chmod(p, 0o600)
        i += 1
except OSError:
    pass
"#;

#[test]
fn sigkill_during_every_kind_of_operation_loses_nothing_fsynced() {
    let fx = Fixture::new();
    let log = fx.dir.path().join("fsynced.log");
    let mut rng = Rng(0x5eed);
    let rounds = 40;
    let mut next = 0usize;
    for round in 0..rounds {
        let m = fx.mount_foreground();
        let mut w = Command::new("python3")
            .args(["-c", WORKLOAD])
            .arg(&fx.mnt)
            .arg(&log)
            .arg(next.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let the workload get going (python starts slowly on a loaded
        // machine), then kill at a random moment.
        let lines = |p: &std::path::Path| fs::read_to_string(p).map_or(0, |s| s.lines().count());
        let before = lines(&log);
        let started = std::time::Instant::now();
        while lines(&log) == before && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        // The crash, then the workload (so it cannot go on writing into the
        // bare mountpoint once the dead mount is detached), then the detach.
        let mut m = m;
        if let Some(c) = m.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = w.kill();
        let _ = w.wait();
        m.kill();
        // Remount and check everything.
        let m = fx.mount_foreground();
        let done: Vec<usize> = fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        for &i in &done {
            let want: Vec<u8> = (0..1000 + (i * 37) % 9000)
                .map(|j| ((j * 31 + i) & 255) as u8)
                .collect();
            let got = fs::read(fx.m(&format!("c{i}")))
                .unwrap_or_else(|e| panic!("round {round}: c{i}, fsynced, reads {e}"));
            assert!(got == want, "round {round}: c{i} lost fsynced bytes");
        }
        for e in fs::read_dir(&fx.mnt).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_file() {
                if let Err(err) = fs::read(&p) {
                    panic!(
                        "round {round}: {} unreadable after a crash: {err}",
                        p.display()
                    );
                }
            } else if ft.is_symlink() {
                fs::read_link(&p).unwrap_or_else(|err| {
                    panic!("round {round}: symlink {} unreadable: {err}", p.display())
                });
            }
        }
        for k in 0..5 {
            assert!(
                !(fx.m(&format!("s{k}")).exists() && fx.m(&format!("t{k}")).exists()),
                "round {round}: s{k} is under two names"
            );
        }
        // A crash between the two renames leaves the scratch file as t{k};
        // put it back so that, within a round, s{k} and t{k} never both
        // exist but for a bug.
        for k in 0..5 {
            if fx.m(&format!("t{k}")).exists() {
                fs::rename(fx.m(&format!("t{k}")), fx.m(&format!("s{k}"))).unwrap();
            }
        }
        next = done.last().map_or(next, |l| l + 1).max(next);
        // A created but unlogged file may exist: skip its number.
        while fx.m(&format!("c{next}")).exists() {
            next += 1;
        }
        m.unmount();
    }
    let total = fs::read_to_string(&log).unwrap_or_default().lines().count();
    eprintln!("{rounds} kills, {total} fsynced files checked after each");
    assert!(total > rounds, "the workload hardly ran ({total} files)");
}

/// A backing file with no bytes is what a crash between create and header
/// leaves: it reads as the empty file it was and takes writes, instead of
/// failing forever; a file cut inside its header still fails.
#[test]
fn a_file_left_without_a_header_reads_as_empty_and_takes_writes() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::write(fx.m("created"), b"").unwrap();
    fs::write(fx.m("cut"), b"some data").unwrap();
    m.unmount();
    fs::write(fx.c("created"), b"").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.c("cut"))
        .unwrap()
        .set_len(100)
        .unwrap();
    let _m = fx.mount();
    assert_eq!(fs::read(fx.m("created")).unwrap(), b"");
    fs::write(fx.m("created"), b"written after the repair").unwrap();
    assert_eq!(
        fs::read(fx.m("created")).unwrap(),
        b"written after the repair"
    );
    assert_eq!(read_err(&fx.m("cut")), Some(libc::EIO));
    let repaired = fx
        .audit()
        .into_iter()
        .filter(|r| {
            r["eventName"] == "GenerateDataKey"
                && r["requestParameters"]["encryptionContext"]["kmsfs:path"] == "created"
                && r["userIdentity"]["invokedBy"] == "mount"
        })
        .count();
    assert!(repaired >= 2, "the create and the repair are both audited");
}
