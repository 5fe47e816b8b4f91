//! SIGKILL of the daemon at random moments (280 kills in all) while
//! workloads create, write and fsync files, append, truncate (up, down, to
//! zero with a re-key), rename files and directories, make and replace
//! symlinks, link and unlink names of linked files, exchange directories
//! (RENAME_EXCHANGE), and change modes,
//! owners and times: after each remount every file reads without an
//! integrity error, every fsynced file has its bytes under each of its
//! names, and nothing is under two names.

mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

/// What every workload starts with: its arguments (mountpoint, log, first
/// number), `note` (a line in the log, fsynced) and `data` (file i's bytes).
const PRELUDE: &str = r#"
import ctypes, os, sys
mnt, log, i = sys.argv[1], sys.argv[2], int(sys.argv[3])
lf = open(log, "a")
def note(s):
    lf.write(s + "\n"); lf.flush(); os.fsync(lf.fileno())
def data(i):
    return bytes(((j * 31 + i) & 255) for j in range(1000 + (i * 37) % 9000))
"#;

const WORKLOAD: &str = r#"
try:
    while True:
        p = "%s/c%d" % (mnt, i)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data(i))
        os.fsync(fd)
        os.close(fd)
        note("%d" % i)
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

/// Runs `workload` (python: mountpoint, log, first number) in a fresh
/// mount, SIGKILLs the daemon at a random moment once it has logged a line,
/// remounts and hands the log's lines to `check`, `rounds` times. Returns
/// how many lines were logged in all.
fn crash_rounds(
    fx: &Fixture,
    workload: &str,
    rounds: usize,
    seed: u64,
    mut check: impl FnMut(usize, &[String]),
) -> usize {
    let log = fx.dir.path().join("fsynced.log");
    let mut rng = Rng(seed);
    let lines = |p: &std::path::Path| -> Vec<String> {
        fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let mut next = 0usize;
    for round in 0..rounds {
        let m = fx.mount_foreground();
        let mut w = Command::new("python3")
            .args(["-c", &format!("{PRELUDE}{workload}")])
            .arg(&fx.mnt)
            .arg(&log)
            .arg(next.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let the workload get going (python starts slowly on a loaded
        // machine), then kill at a random moment.
        let before = lines(&log).len();
        let started = std::time::Instant::now();
        while lines(&log).len() == before && started.elapsed() < Duration::from_secs(10) {
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
        let m = fx.mount_foreground();
        let done = lines(&log);
        check(round, &done);
        // Numbers go on past everything logged or left behind.
        next = done
            .iter()
            .filter_map(|l| {
                l.trim_start_matches(|c: char| !c.is_ascii_digit())
                    .parse()
                    .ok()
            })
            .map(|n: usize| n + 1)
            .max()
            .unwrap_or(next)
            .max(next)
            + 1;
        m.unmount();
    }
    lines(&log).len()
}

fn data(i: usize) -> Vec<u8> {
    (0..1000 + (i * 37) % 9000)
        .map(|j| ((j * 31 + i) & 255) as u8)
        .collect()
}

/// Every file below `dir` reads without an integrity error and every
/// symlink resolves to its target text.
fn all_readable(dir: &std::path::Path, round: usize) {
    for e in fs::read_dir(dir).unwrap() {
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
        } else if ft.is_dir() {
            all_readable(&p, round);
        }
    }
}

#[test]
fn sigkill_during_file_operations_loses_nothing_fsynced() {
    let fx = Fixture::new();
    let rounds = 80;
    let total = crash_rounds(&fx, WORKLOAD, rounds, 0x5eed, |round, done| {
        for i in done.iter().map(|l| l.parse::<usize>().unwrap()) {
            let got = fs::read(fx.m(&format!("c{i}")))
                .unwrap_or_else(|e| panic!("round {round}: c{i}, fsynced, reads {e}"));
            assert!(got == data(i), "round {round}: c{i} lost fsynced bytes");
        }
        all_readable(&fx.mnt, round);
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
    });
    eprintln!("{rounds} kills, {total} fsynced files checked after each");
    assert!(total > rounds, "the workload hardly ran ({total} files)");
}

/// New files of 26 to 260 KB, each written in one write and fsynced: the kernel
/// flushes each in requests of up to 1 MiB, which the daemon writes with
/// one pwrite of up to 64 pages, so a kill often lands inside one and the kernel
/// leaves it torn at a page boundary (before the fix for that, 40 kills
/// here left files that read as EIO). After each remount every file reads
/// whole or cut back to whole blocks, and every fsynced one has its bytes.
const LARGE_WORKLOAD: &str = r#"
try:
    while True:
        p = "%s/big%d" % (mnt, i)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data(i) * 26)
        os.fsync(fd)
        os.close(fd)
        note("%d" % i)
        i += 1
except OSError:
    pass
"#;

#[test]
fn sigkill_during_large_writes_leaves_nothing_unreadable() {
    let fx = Fixture::new();
    let rounds = 40;
    let total = crash_rounds(&fx, LARGE_WORKLOAD, rounds, 0x7ea5, |round, done| {
        for i in done.iter().map(|l| l.parse::<usize>().unwrap()) {
            let got = fs::read(fx.m(&format!("big{i}")))
                .unwrap_or_else(|e| panic!("round {round}: big{i}, fsynced, reads {e}"));
            assert!(
                got == data(i).repeat(26),
                "round {round}: big{i} lost fsynced bytes"
            );
        }
        all_readable(&fx.mnt, round);
    });
    eprintln!("{rounds} kills, {total} fsynced files checked after each");
    assert!(total > rounds, "the workload hardly ran ({total} files)");
}

/// Directories renamed with the fsynced files in them (each file's slot
/// re-wrapped under its new path), files renamed and unlinked, symlinks
/// made and replaced, modes, owners and times set.
const NAMES_WORKLOAD: &str = r#"
try:
    while True:
        k = i % 4
        d, e = "%s/d%d" % (mnt, k), "%s/e%d" % (mnt, k)
        os.makedirs(d, exist_ok=True)
        p = "%s/f%d" % (d, i)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data(i))
        os.fsync(fd)
        os.close(fd)
        note("%d" % i)
        os.chmod(p, 0o640)
        os.chown(p, 1000 + i % 3, 1000)
        os.utime(p, (1000000 + i, 2000000 + i))
        os.rename(p, "%s/g%d" % (d, i))
        os.rename("%s/g%d" % (d, i), p)
        l = "%s/l%d" % (d, i % 3)
        if os.path.lexists(l):
            os.unlink(l)
        os.symlink("f%d" % i, l)
        os.rename(d, e)
        os.rename(e, d)
        if i >= 8 and i % 2 == 0:
            victim = "%s/f%d" % (d, i - 8)
            if os.path.exists(victim):
                note("-%d" % (i - 8))
                os.unlink(victim)
        i += 1
except OSError:
    pass
"#;

#[test]
fn sigkill_during_renames_of_files_and_directories_loses_nothing_fsynced() {
    let fx = Fixture::new();
    let rounds = 70;
    let total = crash_rounds(&fx, NAMES_WORKLOAD, rounds, 0xd1e5, |round, done| {
        // A crash between a directory's two renames leaves it as e{k}, and
        // one between a file's as g{i}: each is put back once checked.
        for k in 0..4 {
            let (d, e) = (fx.m(&format!("d{k}")), fx.m(&format!("e{k}")));
            assert!(
                !(d.exists() && e.exists()),
                "round {round}: directory d{k} is under two names"
            );
            if e.exists() {
                fs::rename(&e, &d).unwrap();
            }
        }
        let gone: std::collections::HashSet<usize> = done
            .iter()
            .filter_map(|l| l.strip_prefix('-')?.parse().ok())
            .collect();
        for i in done.iter().filter_map(|l| l.parse::<usize>().ok()) {
            let dir = fx.m(&format!("d{}", i % 4));
            let (f, g) = (dir.join(format!("f{i}")), dir.join(format!("g{i}")));
            if gone.contains(&i) && !f.exists() && !g.exists() {
                continue;
            }
            assert!(
                !(f.exists() && g.exists()),
                "round {round}: f{i} is under two names"
            );
            if g.exists() {
                fs::rename(&g, &f).unwrap();
            }
            let got =
                fs::read(&f).unwrap_or_else(|e| panic!("round {round}: f{i}, fsynced, reads {e}"));
            assert!(got == data(i), "round {round}: f{i} lost fsynced bytes");
        }
        all_readable(&fx.mnt, round);
    });
    eprintln!("{rounds} kills, {total} fsynced files and unlinks checked after each");
    assert!(total > rounds, "the workload hardly ran ({total} lines)");
}

/// Hard links: names added in other directories, a directory renamed with
/// linked names inside, one of several names unlinked.
const LINKS_WORKLOAD: &str = r#"
try:
    for d in ("a", "b/c"):
        os.makedirs("%s/%s" % (mnt, d), exist_ok=True)
    while True:
        p = "%s/a/f%d" % (mnt, i)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data(i))
        os.fsync(fd)
        os.close(fd)
        os.link(p, "%s/b/c/g%d" % (mnt, i))
        os.link(p, "%s/b/h%d" % (mnt, i))
        note("%d" % i)
        os.rename("%s/b" % mnt, "%s/B" % mnt)
        os.rename("%s/B" % mnt, "%s/b" % mnt)
        os.unlink("%s/b/h%d" % (mnt, i))
        i += 1
except OSError:
    pass
"#;

#[test]
fn sigkill_during_links_unlinks_and_renames_over_linked_files_loses_nothing() {
    let fx = Fixture::new();
    let rounds = 50;
    let total = crash_rounds(&fx, LINKS_WORKLOAD, rounds, 0x11c5, |round, _| {
        // A crash between the directory's two renames leaves it as B.
        let (b, big) = (fx.m("b"), fx.m("B"));
        assert!(
            !(b.exists() && big.exists()),
            "round {round}: b is under two names"
        );
        if big.exists() {
            std::fs::rename(&big, &b).unwrap();
        }
        all_readable(&fx.mnt, round);
    });
    // Every logged file reads, under each of its names that exist.
    let m = fx.mount();
    let done = fs::read_to_string(fx.dir.path().join("fsynced.log")).unwrap_or_default();
    for i in done.lines().map(|l| l.parse::<usize>().unwrap()) {
        for name in [format!("a/f{i}"), format!("b/c/g{i}"), format!("b/h{i}")] {
            match fs::read(fx.m(&name)) {
                Ok(got) => assert!(got == data(i), "{name} lost fsynced bytes"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !name.starts_with("a/") => {}
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
    m.unmount();
    eprintln!("{rounds} kills, {total} linked files checked after each");
    assert!(total > rounds, "the workload hardly ran ({total} files)");
}

/// RENAME_EXCHANGE of two directories full of fsynced files (and a
/// symlink each), and of two files.
const EXCHANGE_WORKLOAD: &str = r#"
libc = ctypes.CDLL(None, use_errno=True)
def xchg(a, b):
    if libc.renameat2(-100, a.encode(), -100, b.encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), "exchange")
try:
    for d in ("X", "Y"):
        os.makedirs("%s/%s/sub" % (mnt, d), exist_ok=True)
        if not os.path.lexists("%s/%s/sub/link" % (mnt, d)):
            os.symlink("target-" + d, "%s/%s/sub/link" % (mnt, d))
    while True:
        d = "XY"[i % 2]
        p = "%s/%s/sub/%s%d" % (mnt, d, d, i)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
        os.write(fd, data(i))
        os.fsync(fd)
        os.close(fd)
        note("%d" % i)
        xchg(mnt + "/X", mnt + "/Y")
        xchg(mnt + "/X", mnt + "/Y")
        i += 1
except OSError:
    pass
"#;

#[test]
fn sigkill_during_rename_exchange_loses_nothing_and_keeps_each_side_whole() {
    let fx = Fixture::new();
    let rounds = 40;
    let total = crash_rounds(&fx, EXCHANGE_WORKLOAD, rounds, 0xe8c4, |round, done| {
        all_readable(&fx.mnt, round);
        // Each side moves whole: its files and its link stay together,
        // whichever name it ends under.
        let target = |d: &str| fs::read_link(fx.m(&format!("{d}/sub/link"))).unwrap();
        let x_is = if target("X") == std::path::Path::new("target-X") {
            "X"
        } else {
            "Y"
        };
        let y_is = if x_is == "X" { "Y" } else { "X" };
        assert_eq!(
            target(y_is),
            std::path::Path::new("target-Y"),
            "round {round}"
        );
        for i in done.iter().map(|l| l.parse::<usize>().unwrap()) {
            let (side, name) = if i % 2 == 0 { (x_is, "X") } else { (y_is, "Y") };
            let p = fx.m(&format!("{side}/sub/{name}{i}"));
            let got =
                fs::read(&p).unwrap_or_else(|e| panic!("round {round}: {}: {e}", p.display()));
            assert!(
                got == data(i),
                "round {round}: {} lost fsynced bytes",
                p.display()
            );
        }
        // Put the sides back under their own names for the next round.
        if x_is == "Y" {
            let ex = "import ctypes,sys; l=ctypes.CDLL(None); sys.exit(l.renameat2(-100, sys.argv[1].encode(), -100, sys.argv[2].encode(), 2))";
            let st = std::process::Command::new("python3")
                .args(["-c", ex])
                .arg(fx.m("X"))
                .arg(fx.m("Y"))
                .status()
                .unwrap();
            assert!(st.success(), "round {round}: swapping back");
        }
    });
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

/// A crash's trace in `f` (made by `make`, which returns the bytes written
/// and how many of them survive), repaired by the next read: those bytes
/// read back and the kernel shows no others but zeros (with its writeback
/// cache it may keep the size it saw before the repair, for this mount),
/// the log says `said`, the other files are untouched, and after a remount
/// the file has the size kept and takes writes again. `check` looks at the
/// cipherdir and at the bytes read, unmounted.
fn repaired_when_next_read(
    modes: &[&str],
    make: impl Fn(&Fixture) -> (Vec<u8>, u64),
    said: &str,
    check: impl Fn(&Fixture, &[u8]),
) {
    let fx = Fixture::new_with(modes);
    let m = fx.mount();
    fs::write(fx.m("other"), b"untouched").unwrap();
    m.unmount();
    let (data, kept) = make(&fx);
    let kept = kept as usize;
    let log = fx.dir.path().join("mount.log");
    let m = fx.mount_with(&["--log-file", log.to_str().unwrap()]);
    let got = fs::read(fx.m("f")).unwrap();
    assert!(
        got[..kept] == data[..kept] && got[kept..].iter().all(|&b| b == 0),
        "{modes:?}: {} bytes read",
        got.len()
    );
    assert_eq!(fs::read(fx.m("other")).unwrap(), b"untouched");
    m.unmount();
    check(&fx, &got);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(said),
        "{modes:?}: the log says what was repaired:\n{text}"
    );
    let m = fx.mount();
    assert_eq!(fs::metadata(fx.m("f")).unwrap().len(), kept as u64);
    let mut f = fs::OpenOptions::new().append(true).open(fx.m("f")).unwrap();
    f.write_all(b"appended").unwrap();
    drop(f);
    let mut want = data[..kept].to_vec();
    want.extend_from_slice(b"appended");
    assert!(fs::read(fx.m("f")).unwrap() == want, "{modes:?}");
    m.unmount();
}

/// The state a crash leaves in the middle of a shrink into a block (the
/// shorter last block written, the file not yet cut), made by hand: the
/// next read finishes the truncate to 5,000 bytes.
#[test]
fn a_truncate_cut_short_by_a_crash_is_finished_when_the_file_is_next_read() {
    for modes in NAME_MODES {
        let disk = std::cell::Cell::new(0);
        repaired_when_next_read(
            modes,
            |fx| {
                let (data, kept) = interrupted_shrink(fx, "f");
                disk.set(kept);
                (data, 5_000)
            },
            "completed an interrupted truncate of \"f\" to 5000 bytes",
            |fx, got| {
                // The kernel took the size (8,192) from the crash's layout.
                assert!(got.len() == 5_000 || got.len() == 8_192, "{}", got.len());
                assert_eq!(fs::metadata(fx.c("f")).unwrap().len(), disk.get());
            },
        );
    }
}

/// The state a SIGKILL in the middle of a write that extends a file leaves
/// (the kernel stops copying at a page boundary, here inside the second
/// block), made by hand: the next read cuts the torn block off.
#[test]
fn a_write_torn_by_a_kill_is_cut_back_to_its_whole_blocks_when_next_read() {
    for modes in NAME_MODES {
        repaired_when_next_read(
            modes,
            |fx| torn_write(fx, "f"),
            "\"f\" ended in a block that a crash tore while it was being written (a write never acknowledged): cut back to 4096 bytes",
            |_, _| {},
        );
    }
}
