//! A directory rename interrupted by SIGKILL of the daemon at different
//! moments: the next mount recovers, and every file is readable under exactly
//! one path with its old content.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FILES: usize = 300;

fn build_tree(fx: &Fixture) -> BTreeMap<String, Vec<u8>> {
    let mut rng = Rng(7);
    let mut want = BTreeMap::new();
    fs::create_dir_all(fx.m("big/sub/deeper")).unwrap();
    for i in 0..FILES {
        // Every tenth name is long: stored as a hash and a side file when
        // names are encrypted, so the crash may fall between the two.
        let name = if i % 10 == 0 {
            format!("{}{i}", "L".repeat(200))
        } else {
            format!("f{i}")
        };
        let rel = match i % 3 {
            0 => name,
            1 => format!("sub/{name}"),
            _ => format!("sub/deeper/{name}"),
        };
        let n = rng.below(9000) as usize + 1;
        let data = rng.bytes(n);
        fs::write(fx.m(&format!("big/{rel}")), &data).unwrap();
        want.insert(rel, data);
    }
    std::os::unix::fs::symlink("f0", fx.m("big/link")).unwrap();
    want
}

/// Checks that each file is under exactly one of the two roots, intact.
fn check(fx: &Fixture, want: &BTreeMap<String, Vec<u8>>, round: usize) {
    for (rel, data) in want {
        let a = fs::read(fx.m(&format!("big/{rel}")));
        let b = fs::read(fx.m(&format!("moved/{rel}")));
        match (a, b) {
            (Ok(x), Err(_)) | (Err(_), Ok(x)) => {
                assert_eq!(&x, data, "round {round}: {rel} has other content")
            }
            (Ok(_), Ok(_)) => panic!("round {round}: {rel} exists under both names"),
            (Err(e1), Err(e2)) => panic!("round {round}: {rel} is lost: {e1} / {e2}"),
        }
    }
    let link = fs::read_link(fx.m("big/link")).or_else(|_| fs::read_link(fx.m("moved/link")));
    assert_eq!(
        link.unwrap().to_str().unwrap(),
        "f0",
        "round {round}: symlink target"
    );
    assert!(
        !fx.c(".kmsfs.journal").exists(),
        "round {round}: the journal was replayed"
    );
}

fn directory_rename_survives_sigkill_at_any_moment_in(init: &[&str]) {
    let fx = Fixture::new_with(init);
    let m = fx.mount();
    let want = build_tree(&fx);
    // Calibrate: how long does the rename take here?
    let t = Instant::now();
    fs::rename(fx.m("big"), fx.m("moved")).unwrap();
    let took = t.elapsed();
    fs::rename(fx.m("moved"), fx.m("big")).unwrap();
    m.unmount();
    eprintln!("a rename of {FILES} files takes {took:?}");

    let rounds = 8;
    let mut recovered = 0;
    for round in 0..rounds {
        let m = fx.mount_foreground();
        // Kill at spread-out moments from just after the start to past the end.
        let delay = took.mul_f64(round as f64 / (rounds - 2) as f64);
        let src = if fx.m("big").exists() { "big" } else { "moved" };
        let dst = if src == "big" { "moved" } else { "big" };
        let mut mv = Command::new("mv")
            .arg(fx.m(src))
            .arg(fx.m(dst))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        m.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        while mv.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "mv hung after the daemon died");
            std::thread::sleep(Duration::from_millis(10));
        }
        // With encrypted names the journal is sealed: it names no path.
        if let Ok(j) = fs::read(fx.c(".kmsfs.journal")) {
            let sealed = j.starts_with(b"kmsfs-journal-siv1\n");
            assert_eq!(sealed, fx.encrypted_names(), "round {round}: journal {j:?}");
            assert_eq!(
                j.windows(b"moved".len()).any(|w| w == b"moved"),
                !fx.encrypted_names()
            );
        }
        eprintln!(
            "round {round}: killed after {delay:?}; journal {}",
            if fx.c(".kmsfs.journal").exists() {
                "present"
            } else {
                "absent"
            }
        );
        let m = fx.mount();
        if m.stderr.contains("completed an interrupted rename") {
            recovered += 1;
        }
        check(&fx, &want, round);
        // Only one of the two directories exists once recovery is done.
        assert!(
            fx.m("big").exists() != fx.m("moved").exists(),
            "round {round}: both or neither directory exists"
        );
        m.unmount();
    }
    eprintln!("{recovered} of {rounds} crashes interrupted a rename and were recovered");
    assert!(
        recovered > 0,
        "no crash landed inside a rename; the test proved nothing"
    );
}

#[test]
fn directory_rename_survives_sigkill_at_any_moment_with_encrypted_names() {
    directory_rename_survives_sigkill_at_any_moment_in(common::NAME_MODES[0]);
}

#[test]
fn directory_rename_survives_sigkill_at_any_moment_with_plaintext_names() {
    directory_rename_survives_sigkill_at_any_moment_in(common::NAME_MODES[1]);
}
