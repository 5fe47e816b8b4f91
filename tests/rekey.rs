//! `kmsfs rekey` through the binary: every block's ciphertext changes, the
//! old data key opens nothing written after, owner, mode, times and
//! extended attributes stay, hard-linked files are named and left, a
//! mounted cipherdir is refused, and a rekey killed at any moment loses
//! nothing.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::{Duration, Instant};

fn rekey(fx: &Fixture, paths: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["rekey", fx.cipher.to_str().unwrap()];
    args.extend_from_slice(paths);
    let o = fx.cli(&args);
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn every_block_changes_and_the_old_key_opens_nothing_written_after() {
    let fx = Fixture::new();
    let body = data(3 * 4096 + 100, 7);
    let m = fx.mount_with(&["--xattrs"]);
    fs::write(fx.m("f"), &body).unwrap();
    sh_ok(&format!(
        "setfattr -n user.tag -v kept {f} && chown 1234:2345 {f} && chmod 0640 {f} && touch -d 2020-01-02T03:04:05Z {f}",
        f = fx.m("f").display()
    ));
    m.unmount();
    let hs = fx.config()["HeaderSize"].as_u64().unwrap() as usize;
    let before = fs::read(fx.c("f")).unwrap();
    let meta = fs::metadata(fx.c("f")).unwrap();
    let gdk_before = gdk_for(&fx, "f");
    let (code, out) = rekey(&fx, &["f"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("rekeyed 1 file(s), 0.0 MB"), "{out}");
    let after = fs::read(fx.c("f")).unwrap();
    assert_eq!(after.len(), before.len());
    assert_ne!(after[..hs], before[..hs], "a new wrapped data key");
    // Every block, nonce and tag included, is new ciphertext.
    for (i, (a, b)) in after[hs..]
        .chunks(4124)
        .zip(before[hs..].chunks(4124))
        .enumerate()
    {
        assert_ne!(a, b, "block {i} unchanged");
    }
    let now = fs::metadata(fx.c("f")).unwrap();
    assert_eq!(
        (now.uid(), now.gid(), now.mode() & 0o7777),
        (meta.uid(), meta.gid(), meta.mode() & 0o7777)
    );
    assert_eq!(now.mtime(), meta.mtime());
    let m = fx.mount_with(&["--xattrs"]);
    assert!(
        fs::read(fx.m("f")).unwrap() == body,
        "the content, under the new key"
    );
    let tag = sh_ok(&format!(
        "getfattr --only-values -n user.tag {}",
        fx.m("f").display()
    ));
    assert_eq!(tag, "kept");
    let st = fs::metadata(fx.m("f")).unwrap();
    assert_eq!(
        (st.uid(), st.gid(), st.permissions().mode() & 0o7777),
        (1234, 2345, 0o640)
    );
    assert_eq!(st.mtime(), 1_577_934_245);
    m.unmount();
    // The old header (the old data key) with the new blocks: nothing opens.
    let mut spliced = before[..hs].to_vec();
    spliced.extend_from_slice(&after[hs..]);
    fs::write(fx.c("f"), &spliced).unwrap();
    let m = fx.mount_with(&["--xattrs"]);
    assert_eq!(
        read_err(&fx.m("f")),
        Some(libc::EIO),
        "the old key opens the new content"
    );
    m.unmount();
    // Audited: one new data key for f.
    assert_eq!(
        gdk_for(&fx, "f"),
        gdk_before + 1,
        "the rekey's GenerateDataKey"
    );
}

fn gdk_for(fx: &Fixture, path: &str) -> usize {
    fx.audit()
        .iter()
        .filter(|r| {
            r["eventName"] == "GenerateDataKey"
                && r["requestParameters"]["encryptionContext"]["kmsfs:path"] == path
        })
        .count()
}

#[test]
fn a_directory_rekeys_every_file_below_and_hard_links_are_named_and_left() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::create_dir_all(fx.m("p/q")).unwrap();
    for (i, f) in ["p/a", "p/q/b", "p/q/c", "top"].iter().enumerate() {
        fs::write(fx.m(f), data(5000 * (i + 1), i as u8)).unwrap();
    }
    fs::hard_link(fx.m("p/q/c"), fx.m("p/c2")).unwrap();
    m.unmount();
    let raw = |f: &str| fs::read(fx.c(f)).unwrap();
    let (a, b, top) = (raw("p/a"), raw("p/q/b"), raw("top"));
    let (code, out) = rekey(&fx, &["p"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("rekeyed 2 file(s)"), "{out}");
    for l in [
        "p/c2: not rekeyed: it has 2 hard links",
        "p/q/c: not rekeyed: it has 2 hard links",
    ] {
        assert!(out.contains(l), "{l}: {out}");
    }
    assert_ne!(raw("p/a"), a);
    assert_ne!(raw("p/q/b"), b);
    assert_eq!(raw("top"), top, "outside the directory named");
    let o = fx.cli(&["fsck", fx.cipher.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let m = fx.mount();
    for (i, f) in ["p/a", "p/q/b", "p/q/c", "top"].iter().enumerate() {
        assert!(
            fs::read(fx.m(f)).unwrap() == data(5000 * (i + 1), i as u8),
            "{f}"
        );
    }
    m.unmount();
}

#[test]
fn a_mounted_cipherdir_is_refused() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::write(fx.m("f"), b"x").unwrap();
    let (code, out) = rekey(&fx, &["f"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("is already mounted by another kmsfs process: unmount it first to rekey"),
        "{out}"
    );
    m.unmount();
}

#[test]
fn a_rekey_killed_at_any_moment_loses_nothing_and_leaves_nothing_visible() {
    let fx = Fixture::new();
    let big = data(24 << 20, 3);
    let m = fx.mount();
    fs::write(fx.m("big"), &big).unwrap();
    fs::write(fx.m("small"), b"small file").unwrap();
    m.unmount();
    for delay_ms in [30u64, 120, 400, 900] {
        let mut cmd = fx.cmd();
        cmd.args(["rekey", fx.cipher.to_str().unwrap(), ""]);
        kill_after(cmd, Duration::from_millis(delay_ms));
        let m = fx.mount();
        assert!(
            fs::read(fx.m("big")).unwrap() == big,
            "after a kill at {delay_ms} ms"
        );
        assert_eq!(fs::read(fx.m("small")).unwrap(), b"small file");
        let names: Vec<String> = fs::read_dir(&fx.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "nothing else shows: {names:?}");
        m.unmount();
    }
    // A later rekey finishes, and removes what the killed ones left.
    let start = Instant::now();
    let (code, out) = rekey(&fx, &[""]);
    assert_eq!(code, Some(0), "{out}");
    assert!(start.elapsed() < Duration::from_secs(120));
    let leftovers = sh_ok(&format!(
        "find {} -name '.kmsfs-rekey-*' | wc -l",
        fx.cipher.display()
    ));
    assert_eq!(leftovers.trim(), "0", "{out}");
    let o = Command::new(BIN)
        .args([
            "--kms-home",
            fx.home.to_str().unwrap(),
            "--key-file",
            fx.key.to_str().unwrap(),
            "fsck",
            fx.cipher.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
