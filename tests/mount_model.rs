//! Model-based test: thousands of random operations applied to the mount and
//! to a plain directory alike; the two trees must stay identical, also after
//! an unmount and a remount.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The whole tree: path -> file bytes (None for directories).
fn snapshot(root: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                out.insert(r.display().to_string(), None);
                stack.push(r);
            } else {
                out.insert(
                    r.display().to_string(),
                    Some(fs::read(root.join(&r)).unwrap()),
                );
            }
        }
    }
    out
}

/// Names only (no contents): (files, directories), sorted.
fn all_paths(root: &Path) -> (Vec<String>, Vec<String>) {
    let (mut files, mut dirs) = (vec![], vec![]);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let is_dir = e.file_type().unwrap().is_dir();
            if is_dir {
                stack.push(r.clone());
                dirs.push(r.display().to_string());
            } else {
                files.push(r.display().to_string());
            }
        }
    }
    files.sort();
    dirs.sort();
    (files, dirs)
}

/// Applies one random operation to both roots; errors must agree too.
fn step(rng: &mut Rng, a: &Path, b: &Path) {
    let (files, dirs) = all_paths(a);
    let pick_dir = |rng: &mut Rng| -> String {
        if dirs.is_empty() || rng.below(3) == 0 {
            String::new()
        } else {
            dirs[rng.below(dirs.len() as u64) as usize].clone()
        }
    };
    let name = |rng: &mut Rng, parent: &str| -> String {
        let n = format!("n{}", rng.below(12));
        if parent.is_empty() {
            n
        } else {
            format!("{parent}/{n}")
        }
    };
    let both = |f: &dyn Fn(&Path) -> std::io::Result<()>| {
        let (ra, rb) = (f(a), f(b));
        assert_eq!(
            ra.as_ref().err().map(|e| e.kind()),
            rb.as_ref().err().map(|e| e.kind()),
            "mount: {ra:?} plain: {rb:?}"
        );
    };
    match rng.below(10) {
        0..=2 => {
            // write at a random offset, across block boundaries
            let target = if !files.is_empty() && rng.below(3) != 0 {
                files[rng.below(files.len() as u64) as usize].clone()
            } else {
                let d = pick_dir(rng);
                name(rng, &d)
            };
            let off = rng.below(20_000);
            let n = rng.below(10_000) as usize + 1;
            let data = rng.bytes(n);
            both(&|root| {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(root.join(&target))?;
                f.seek(SeekFrom::Start(off))?;
                f.write_all(&data)
            });
        }
        3 if !files.is_empty() => {
            let t = files[rng.below(files.len() as u64) as usize].clone();
            let len = rng.below(25_000);
            both(&|root| {
                OpenOptions::new()
                    .write(true)
                    .open(root.join(&t))?
                    .set_len(len)
            });
        }
        4 if !files.is_empty() => {
            let t = files[rng.below(files.len() as u64) as usize].clone();
            let n = rng.below(5000) as usize + 1;
            let data = rng.bytes(n);
            both(&|root| {
                OpenOptions::new()
                    .append(true)
                    .open(root.join(&t))?
                    .write_all(&data)
            });
        }
        5 => {
            let d = pick_dir(rng);
            let n = name(rng, &d);
            both(&|root| fs::create_dir(root.join(&n)));
        }
        6 if !files.is_empty() => {
            let t = files[rng.below(files.len() as u64) as usize].clone();
            both(&|root| fs::remove_file(root.join(&t)));
        }
        7 if !dirs.is_empty() => {
            let t = dirs[rng.below(dirs.len() as u64) as usize].clone();
            both(&|root| fs::remove_dir(root.join(&t)));
        }
        8 | 9 => {
            // rename a file or a whole directory
            let pool = if rng.below(2) == 0 || dirs.is_empty() {
                &files
            } else {
                &dirs
            };
            if pool.is_empty() {
                return;
            }
            let src = pool[rng.below(pool.len() as u64) as usize].clone();
            let d = pick_dir(rng);
            let dst = name(rng, &d);
            both(&|root| fs::rename(root.join(&src), root.join(&dst)));
        }
        _ => {}
    }
}

fn random_operations_match_a_plain_directory_in(init: &[&str]) {
    let fx = Fixture::new_with(init);
    let plain = fx.dir.path().join("plain");
    fs::create_dir(&plain).unwrap();
    let seed = std::env::var("KMSFS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9E3779B97F4A7C15u64);
    let ops: usize = std::env::var("KMSFS_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    eprintln!("model test: seed {seed:#x}, {ops} operations");
    let mut rng = Rng(seed);
    let m = fx.mount();
    for i in 0..ops {
        step(&mut rng, &fx.mnt, &plain);
        if i % 250 == 249 {
            assert_eq!(
                snapshot(&fx.mnt),
                snapshot(&plain),
                "trees differ after operation {i} (seed {seed:#x})"
            );
        }
    }
    assert_eq!(snapshot(&fx.mnt), snapshot(&plain));
    m.unmount();
    // Every name the run used (n0..n11) stays out of the cipherdir.
    let used: Vec<String> = (0..12).map(|i| format!("n{i}")).collect();
    fx.assert_names_hidden(&used);
    let m = fx.mount();
    assert_eq!(
        snapshot(&fx.mnt),
        snapshot(&plain),
        "trees differ after remount (seed {seed:#x})"
    );
    m.unmount();
}

#[test]
fn random_operations_match_a_plain_directory_with_encrypted_names() {
    random_operations_match_a_plain_directory_in(common::NAME_MODES[0]);
}

#[test]
fn random_operations_match_a_plain_directory_with_plaintext_names() {
    random_operations_match_a_plain_directory_in(common::NAME_MODES[1]);
}
