//! `kmsfs fsck` through the binary: a clean tree is clean (every kind of
//! node kmsfs makes), every kind of damage is found at its path and nothing
//! else is, `--json` says the same, and `--repair` repairs only what cannot
//! hide an attack, naming it.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

/// The exit code and what fsck printed on stdout (its report); stderr
/// (progress, the errors of a refused run) after it.
fn fsck(fx: &Fixture, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["fsck", fx.cipher.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = fx.cli(&args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    let err: String = err
        .lines()
        .filter(|l| !l.contains("hidden from the mount"))
        .map(|l| format!("{l}\n"))
        .collect();
    (o.status.code(), format!("{out}{err}"))
}

/// Files, directories, symlinks (short and long), a device node, a FIFO and
/// a hard link, through the mount; and a device node planted in the
/// cipherdir only where a test asks.
fn populate(fx: &Fixture) {
    let m = fx.mount();
    fs::create_dir_all(fx.m("d/e")).unwrap();
    for (name, len) in [
        ("empty", 0usize),
        ("one", 1),
        ("block", 4096),
        ("block1", 4097),
        ("big", 300_000),
    ] {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        fs::write(fx.m(&format!("d/{name}")), &data).unwrap();
    }
    for n in ["a", "b", "c", "f", "g"] {
        fs::write(fx.m(n), format!("file {n} ").repeat(2000)).unwrap();
    }
    std::os::unix::fs::symlink("d/one", fx.m("link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(3500), fx.m("d/e/longlink")).unwrap();
    sh_ok(&format!(
        "mknod {} c 1 3 && mkfifo {}",
        fx.m("d/null").display(),
        fx.m("d/fifo").display()
    ));
    fs::hard_link(fx.m("d/block"), fx.m("d/e/hard")).unwrap();
    // Renamed files and a renamed directory: their keys were re-wrapped.
    fs::write(fx.m("d/e/was"), b"renamed").unwrap();
    fs::rename(fx.m("d/e/was"), fx.m("d/e/now")).unwrap();
    fs::create_dir(fx.m("olddir")).unwrap();
    fs::write(fx.m("olddir/in"), b"moved with its directory").unwrap();
    fs::rename(fx.m("olddir"), fx.m("d/newdir")).unwrap();
    m.unmount();
}

#[test]
fn a_clean_tree_is_clean_in_text_and_json() {
    let fx = Fixture::new();
    populate(&fx);
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(0), "{out}");
    let last = out.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("fsck {}: 4 directories, ", fx.cipher.display())),
        "{out}"
    );
    assert!(last.ends_with("): clean"), "{out}");
    let (code, out) = fsck(&fx, &["--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["clean"], true);
    assert_eq!(v["problems"], serde_json::json!([]));
    assert_eq!(v["directories"], 4);
    assert_eq!(
        v["symlinks"], 1,
        "the short link; the long one is a kmsfs node"
    );
    assert_eq!(v["kmsfsNodes"], 2, "the long symlink and the device node");
    assert_eq!(v["fifosAndSockets"], 1);
    // 5 in d, 5 in the root, the hard link's second name and the two renamed.
    assert_eq!(v["files"], 13, "{v}");
    let bytes = 1 + 4096 + 4097 + 300_000 + 5 * 14_000 + 4096 + 7 + 24;
    assert_eq!(v["bytes"], bytes, "{v}");
}

fn flip(path: &std::path::Path, at: u64) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    std::io::Read::read_exact(&mut f, &mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x40]).unwrap();
}

#[test]
fn every_kind_of_damage_is_found_at_its_path_and_nothing_else() {
    let fx = Fixture::new();
    populate(&fx);
    let header = fx.config()["HeaderSize"].as_u64().unwrap();
    // A flipped bit in a block of `a`; the header of `b`; `c` cut inside
    // its last block; `f` emptied; `d/big` copied over `g`'s backing file
    // (its key opens at d/big, not at g); a backing name that is no name,
    // planted in the root; a device node planted under a valid name; a
    // symlink's stored target replaced.
    flip(&fx.c("a"), header + 100);
    flip(&fx.c("b"), 2);
    let c = fx.c("c");
    let len = fs::metadata(&c).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&c)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(fx.c("f"))
        .unwrap()
        .set_len(0)
        .unwrap();
    fs::copy(fx.c("d/big"), fx.c("g")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(fx.cipher.join("planted-by-hand"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    sh_ok(&format!("mknod {} c 1 3", fx.c("dev0").display()));
    let link = fx.c("link");
    let stored = fs::read_link(&link).unwrap();
    fs::remove_file(&link).unwrap();
    let mut forged = stored.to_string_lossy().into_owned();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    std::os::unix::fs::symlink(&forged, &link).unwrap();

    let (code, out) = fsck(&fx, &["--json"]);
    assert_eq!(code, Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let found: BTreeSet<(String, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["path"].as_str().unwrap().to_string(),
                p["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("a", "block"),
        ("b", "header"),
        ("c", "block"),
        ("f", "header"),
        ("g", "moved"),
        (
            "planted-by-hand",
            if fx.encrypted_names() {
                "name"
            } else {
                "header"
            },
        ),
        ("link", "symlink"),
        ("dev0", "name"),
    ]
    .into_iter()
    .map(|(p, k)| (p.to_string(), k.to_string()))
    .collect();
    assert_eq!(found, want, "{out}");
    let what = |path: &str| {
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == path)
            .unwrap()["what"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        what("g").ends_with("its data key opens at d/big: a copy or a move of that file"),
        "{}",
        what("g")
    );
    assert!(
        what("a").starts_with("block 0 (bytes 0 to 4095): "),
        "{}",
        what("a")
    );
    assert!(what("f").starts_with("no header at all"), "{}", what("f"));

    // The text form names the same paths, one line each.
    let (code, text) = fsck(&fx, &[]);
    assert_eq!(code, Some(1));
    for (p, k) in &want {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{p}: {k}: "))),
            "{p} {k}: {text}"
        );
    }
    assert!(
        text.lines().last().unwrap().ends_with(": 8 problem(s)"),
        "{text}"
    );

    // --repair: only the header-less empty file is repaired, and says so.
    let (code, text) = fsck(&fx, &["--repair"]);
    assert_eq!(code, Some(1), "{text}");
    let fixed: Vec<&str> = text.lines().filter(|l| l.contains("[repaired: ")).collect();
    assert_eq!(fixed.len(), 1, "{text}");
    assert!(
        fixed[0].starts_with("f: header: ")
            && fixed[0].ends_with("[repaired: given a new data key: an empty file]"),
        "{text}"
    );
    let (_, after) = fsck(&fx, &[]);
    assert!(!after.lines().any(|l| l.starts_with("f: ")), "{after}");
    assert!(
        after.lines().last().unwrap().ends_with(": 7 problem(s)"),
        "{after}"
    );
    // The mount agrees: the repaired file is an empty file.
    let m = fx.mount();
    assert_eq!(fs::read(fx.m("f")).unwrap(), b"");
    m.unmount();
}

#[test]
fn repair_refuses_a_mounted_cipherdir_and_a_check_of_one_runs() {
    let fx = Fixture::new();
    let m = fx.mount();
    fs::write(fx.m("x"), b"hello").unwrap();
    let (code, out) = fsck(&fx, &["--repair"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("is already mounted by another kmsfs process: unmount it first to repair"),
        "{out}"
    );
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(0), "{out}");
    m.unmount();
}

#[test]
fn an_8000_file_tree_made_through_the_mount_is_clean() {
    let fx = Fixture::new();
    let m = fx.mount();
    sh_ok(&format!(
        "python3 - {} <<'PY'\nimport os, sys\nroot = sys.argv[1]\nfor d in range(40):\n    os.mkdir(f'{{root}}/d{{d}}')\nfor i in range(8000):\n    with open(f'{{root}}/d{{i % 40}}/f{{i}}', 'wb') as f:\n        f.write(os.urandom(1 + (i * 7919) % 9000))\nPY",
        fx.mnt.display()
    ));
    m.unmount();
    let (code, out) = fsck(&fx, &["--json"]);
    assert_eq!(code, Some(0), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(
        (v["files"].as_u64(), v["directories"].as_u64()),
        (Some(8000), Some(41))
    );
    let want: u64 = (0..8000u64).map(|i| 1 + (i * 7919) % 9000).sum();
    assert_eq!(v["bytes"].as_u64(), Some(want));
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn repair_finishes_a_truncate_a_crash_cut_short() {
    let fx = Fixture::new();
    let (data, _) = interrupted_shrink(&fx, "f");
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with("f: block: the last block is what a truncate to 5000 bytes cut short by a crash leaves\n"),
        "{out}"
    );
    let (code, out) = fsck(&fx, &["--repair"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("[repaired: cut to 5000 bytes]"), "{out}");
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(0), "{out}");
    let m = fx.mount();
    assert!(
        fs::read(fx.m("f")).unwrap() == data[..5_000],
        "the first 5,000 bytes, and no more"
    );
    m.unmount();
}

#[test]
fn repair_cuts_off_a_block_a_kill_tore_in_an_extending_write() {
    let fx = Fixture::new();
    let (data, kept) = torn_write(&fx, "f");
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.starts_with(&format!("f: block: the last block is what an extending write torn by a crash leaves (never acknowledged; the {kept} bytes before it are whole)\n")),
        "{out}"
    );
    let (code, out) = fsck(&fx, &["--repair"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("[repaired: cut to {kept} bytes]")),
        "{out}"
    );
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(0), "{out}");
    let m = fx.mount();
    assert!(fs::read(fx.m("f")).unwrap() == data[..kept as usize]);
    m.unmount();
}

#[test]
fn a_stale_key_slot_is_found_and_repair_drops_only_it() {
    use kmsfs::fs::format::{Slot, decode_header, encode_slot, slot_offset};
    use std::os::unix::fs::FileExt;
    let fx = Fixture::new();
    let m = fx.mount();
    fs::write(fx.m("x"), b"the file").unwrap();
    fs::write(fx.m("y"), b"another").unwrap();
    m.unmount();
    let hs = fx.config()["HeaderSize"].as_u64().unwrap() as usize;
    let (cx, cy) = (fx.c("x"), fx.c("y"));
    let hx = decode_header(hs, &fs::read(&cx).unwrap()[..hs]).unwrap();
    let hy = decode_header(hs, &fs::read(&cy).unwrap()[..hs]).unwrap();
    assert_eq!(
        hx.slots_newest_first().len(),
        1,
        "a file has one slot at rest"
    );
    // What a crash mid-rename leaves: a newer slot wrapped for the path the
    // file was being renamed to.
    let blob = hy.slots[hy.slots_newest_first()[0]].clone().unwrap().blob;
    let live = hx.slots_newest_first()[0];
    let seq = hx.slots[live].as_ref().unwrap().seq;
    let stale = Slot { seq: seq + 1, blob };
    let raw = encode_slot(hs, &hx.file_id, Some(&stale));
    fs::OpenOptions::new()
        .write(true)
        .open(&cx)
        .unwrap()
        .write_all_at(&raw, slot_offset(hs, 1 - live) as u64)
        .unwrap();
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(1), "{out}");
    let first = out.lines().next().unwrap();
    assert_eq!(
        first,
        format!(
            "x: slot: key slot {} does not open at this path beside one that does: left by a rename a crash interrupted",
            1 - live
        )
    );
    let (_, out) = fsck(&fx, &["--repair"]);
    assert!(
        out.contains(&format!("[repaired: dropped slot {}]", 1 - live)),
        "{out}"
    );
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(0), "{out}");
    let m = fx.mount();
    assert_eq!(fs::read(fx.m("x")).unwrap(), b"the file");
    m.unmount();
}

/// A directory rename a crash interrupted (its journal written, nothing
/// moved yet: the first moment a crash can leave) is named, replayed by
/// --repair, and clean after; a journal kmsfs did not write is named and
/// left alone, nothing replayed.
#[test]
fn an_interrupted_directory_rename_is_named_and_replayed_and_a_foreign_journal_is_left() {
    let fx = Fixture::plaintext();
    let m = fx.mount();
    fs::create_dir_all(fx.m("a/sub")).unwrap();
    fs::write(fx.m("a/f"), b"data of f").unwrap();
    fs::write(fx.m("a/sub/g"), b"data of g").unwrap();
    m.unmount();
    fs::write(
        fx.c(".kmsfs.journal"),
        r#"{"op":"rename","from":"a","to":"b"}"#,
    )
    .unwrap();
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("journal") && out.contains("an interrupted rename of a to b"),
        "{out}"
    );
    assert!(fx.c("a/f").exists(), "a plain fsck changes nothing");
    let (code, out) = fsck(&fx, &["--repair"]);
    assert!(out.contains("replayed"), "{out}");
    assert_eq!(code, Some(1), "a run that found something says so: {out}");
    let (code, out) = fsck(&fx, &[]);
    assert_eq!(code, Some(0), "{out}");
    let _m = fx.mount();
    assert_eq!(fs::read(fx.m("b/f")).unwrap(), b"data of f");
    assert_eq!(fs::read(fx.m("b/sub/g")).unwrap(), b"data of g");
    assert!(!fx.m("a").exists());
    drop(_m);

    fs::write(fx.c(".kmsfs.journal"), "not json").unwrap();
    let (code, out) = fsck(&fx, &["--repair"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("journal: the rename journal")
            && out.contains("is damaged")
            && out.contains("nothing was replayed"),
        "{out}"
    );
    assert_eq!(fs::read(fx.c(".kmsfs.journal")).unwrap(), b"not json");
    assert!(fx.c("b/f").exists() && !fx.c("a").exists(), "nothing moved");
}
