//! `kmsfs rewrap` through the binary: after `rotate-key-on-demand` every blob
//! the filesystem keeps (file data keys, hard-link entries, symlink targets,
//! the name key, the attribute key, the config's seal) is under the newest
//! material; with --to-key under another CMK, so that the old key can be
//! disabled; killed at random moments and run again, nothing is lost.

mod common;
use common::*;
use kmsfs::kms::blob;
use std::fs;
use std::time::Duration;

/// Every blob's (key id, material version), by where it was found.
fn blobs(fx: &Fixture) -> Vec<(String, String, u32)> {
    let hs = fx.config()["HeaderSize"].as_u64().unwrap() as usize;
    let mut out = vec![];
    let mut push = |what: String, raw: &[u8]| {
        let b = blob::parse(raw).unwrap_or_else(|e| panic!("{what}: {e}"));
        out.push((what, b.header.key_id.to_string(), b.header.material_version));
    };
    use base64::Engine;
    let nk = fx.config()["NameKey"].as_str().unwrap().to_string();
    push(
        "name key".into(),
        &base64::engine::general_purpose::STANDARD
            .decode(nk)
            .unwrap(),
    );
    let seal = fx.config()["Seal"].as_str().unwrap().to_string();
    push(
        "seal".into(),
        &base64::engine::general_purpose::STANDARD
            .decode(seal)
            .unwrap(),
    );
    if let Ok(k) = fs::read(fx.cipher.join(".kmsfs.xattr-key")) {
        push("xattr key".into(), &k);
    }
    let mut stack = vec![fx.cipher.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            let t = e.file_type().unwrap();
            if d == fx.cipher && name.starts_with(['.', 'k']) && !t.is_dir() {
                continue; // kmsfs.conf, the lock, the key file
            }
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_symlink() {
                let stored = fs::read_link(e.path()).unwrap();
                let raw = kmsfs::fs::symlink::decode(stored.to_string_lossy().as_bytes()).unwrap();
                push(format!("symlink {name}"), &raw);
            } else if t.is_file() {
                let bytes = fs::read(e.path()).unwrap();
                let h = kmsfs::fs::format::decode_header(hs, &bytes[..hs]).unwrap();
                for i in h.slots_newest_first() {
                    push(
                        format!("file {name} slot {i}"),
                        &h.slots[i].as_ref().unwrap().blob,
                    );
                }
            }
        }
    }
    out
}

fn populate(fx: &Fixture) {
    let m = fx.mount_with(&["--xattrs"]);
    fs::create_dir_all(fx.m("d/e")).unwrap();
    fs::write(fx.m("d/a"), b"alpha").unwrap();
    fs::write(fx.m("d/e/b"), vec![7u8; 100_000]).unwrap();
    fs::hard_link(fx.m("d/a"), fx.m("d/e/a2")).unwrap();
    std::os::unix::fs::symlink("d/a", fx.m("short")).unwrap();
    sh_ok(&format!(
        "chown -h 4321:4322 {} && touch -h -d 2021-05-06T07:08:09Z {}",
        fx.m("short").display(),
        fx.m("short").display()
    ));
    std::os::unix::fs::symlink("y".repeat(3200), fx.m("long")).unwrap();
    sh_ok(&format!(
        "setfattr -n user.k -v v {}",
        fx.m("d/e/b").display()
    ));
    m.unmount();
}

fn readable(fx: &Fixture) {
    let m = fx.mount_with(&["--xattrs"]);
    assert_eq!(fs::read(fx.m("d/a")).unwrap(), b"alpha");
    assert_eq!(fs::read(fx.m("d/e/a2")).unwrap(), b"alpha");
    assert!(fs::read(fx.m("d/e/b")).unwrap() == vec![7u8; 100_000]);
    assert_eq!(fs::read_link(fx.m("short")).unwrap().to_str(), Some("d/a"));
    let st = fs::symlink_metadata(fx.m("short")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (st.uid(), st.gid(), st.mtime()),
        (4321, 4322, 1_620_284_889),
        "the link's owner and times"
    );
    assert_eq!(
        fs::read_link(fx.m("long")).unwrap().to_string_lossy(),
        "y".repeat(3200)
    );
    assert_eq!(
        sh_ok(&format!(
            "getfattr --only-values -n user.k {}",
            fx.m("d/e/b").display()
        )),
        "v"
    );
    m.unmount();
}

/// The filesystem's key, as its config names it.
fn key_uuid(fx: &Fixture) -> String {
    fx.config()["KeyId"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// Every blob under `new` (the config naming `new_arn`), then `old`
/// disabled: every file still opens.
fn moved_off(fx: &Fixture, old: &str, new: &str, new_arn: &str) {
    assert_eq!(fx.config()["KeyId"], new_arn);
    let left: Vec<_> = blobs(fx)
        .into_iter()
        .filter(|(_, k, _)| *k != new)
        .collect();
    assert!(left.is_empty(), "still under the old key: {left:?}");
    let o = fx.cli(&["kms", "disable-key", "--key-id", old]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    readable(fx);
}

#[test]
fn after_rotate_key_on_demand_every_blob_is_under_the_newest_material() {
    let fx = Fixture::new();
    populate(&fx);
    // The filesystem's own managed key rotates only through kmsfs; a key
    // of the operator's: moved to it first, then rotated.
    let o = fx.cli(&["kms", "create-key", "--description", "operator's key"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let key = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap(), "--to-key", &key]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(blobs(&fx).iter().all(|(_, k, v)| *v == 1 && *k == key));
    let o = fx.cli(&["kms", "rotate-key-on-demand", "--key-id", &key]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(
            "file data keys, 2 hard-link entries, 1 symlinks and 3 of the filesystem's own blobs"
        ),
        "{out}"
    );
    let all = blobs(&fx);
    let old: Vec<_> = all.iter().filter(|(_, _, v)| *v != 2).collect();
    assert!(
        old.is_empty(),
        "blobs still under the old material: {old:?}"
    );
    assert!(all.iter().all(|(_, k, _)| *k == key));
    readable(&fx);
    let o = fx.cli(&["fsck", fx.cipher.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn to_another_key_killed_at_random_moments_and_resumed_leaves_every_file_readable() {
    let fx = Fixture::new();
    populate(&fx);
    let m = fx.mount();
    for i in 0..300 {
        fs::write(fx.m(&format!("d/many{i}")), format!("file {i}")).unwrap();
    }
    m.unmount();
    // From an operator's key (the managed one can be disabled only through
    // kmsfs), to another.
    let o = fx.cli(&["kms", "create-key", "--description", "the old key"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let old = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap(), "--to-key", &old]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(key_uuid(&fx), old);
    let o = fx.cli(&["kms", "create-key", "--description", "the new key"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (new, new_arn) = (
        v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string(),
        v["KeyMetadata"]["Arn"].as_str().unwrap().to_string(),
    );
    for delay_ms in [40u64, 150, 400] {
        let mut cmd = fx.cmd();
        cmd.args(["rewrap", fx.cipher.to_str().unwrap(), "--to-key", &new]);
        kill_after(cmd, Duration::from_millis(delay_ms));
        readable(&fx);
        let m = fx.mount();
        for i in (0..300).step_by(37) {
            assert_eq!(
                fs::read_to_string(fx.m(&format!("d/many{i}"))).unwrap(),
                format!("file {i}")
            );
        }
        m.unmount();
    }
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap(), "--to-key", &new]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The old key is no longer needed: disabled, everything still opens,
    // and a new file's data key is made under the new key.
    moved_off(&fx, &old, &new, &new_arn);
    let m = fx.mount();
    fs::write(fx.m("after"), b"new").unwrap();
    m.unmount();
    let hs = fx.config()["HeaderSize"].as_u64().unwrap() as usize;
    let raw = fs::read(fx.c("after")).unwrap();
    let h = kmsfs::fs::format::decode_header(hs, &raw[..hs]).unwrap();
    let b = h.slots[h.slots_newest_first()[0]].clone().unwrap().blob;
    assert_eq!(blob::parse(&b).unwrap().header.key_id.to_string(), new);
}

#[test]
fn a_disabled_target_is_refused_offline_and_by_the_mount() {
    let fx = Fixture::new();
    let o = fx.cli(&["kms", "create-key"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let k = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    fx.cli(&["kms", "disable-key", "--key-id", &k]);
    let before = fx.config();
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap(), "--to-key", &k]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("is Disabled: blobs can be re-wrapped only under an enabled key")
    );
    let m = fx.mount();
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap(), "--to-key", &k]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the mount: the key")
            && err.contains("is Disabled: blobs can be re-wrapped only under an enabled key"),
        "{err}"
    );
    m.unmount();
    assert_eq!(fx.config(), before, "nothing moved");
}

/// The mount's control socket, for the filesystem `fx` made.
fn control_socket(fx: &Fixture) -> std::path::PathBuf {
    let id = fx.config()["FilesystemId"].as_str().unwrap().to_string();
    kmsfs::fs::control::socket_path(&id).unwrap()
}

/// One request line to the mount, its first answer line back.
fn ask_raw(fx: &Fixture, line: &[u8]) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(control_socket(fx)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(line).unwrap();
    let mut out = String::new();
    std::io::BufReader::new(s).read_line(&mut out).unwrap();
    out
}

#[test]
fn the_control_socket_is_private_refuses_bad_requests_and_goes_with_the_mount() {
    use std::os::unix::fs::PermissionsExt;
    let fx = Fixture::new();
    let m = fx.mount();
    let sock = control_socket(&fx);
    let mode = |p: &std::path::Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(sock.parent().unwrap()), 0o700, "{}", sock.display());
    assert_eq!(mode(&sock), 0o600);
    let a = ask_raw(&fx, b"{\"Op\":\"Rewrap\",\n");
    assert!(
        a.starts_with(r#"{"Error":"not a kmsfs control request"#),
        "{a}"
    );
    let a = ask_raw(&fx, b"{\"Op\":\"Delete\"}\n");
    assert!(
        a.starts_with(r#"{"Error":"not a kmsfs control request"#),
        "{a}"
    );
    let a = ask_raw(&fx, b"{\"Op\":\"Rewrap\",\"Cipherdir\":\"/elsewhere\"}\n");
    assert!(
        a.contains("this mount serves") && a.contains("not /elsewhere"),
        "{a}"
    );
    // Still serving, and still answering.
    fs::write(fx.m("f"), b"still here").unwrap();
    assert_eq!(fs::read(fx.m("f")).unwrap(), b"still here");
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    m.unmount();
    assert!(!sock.exists(), "{} left behind", sock.display());
}

#[test]
fn while_mounted_the_mount_rewraps_beside_renames_and_writes_and_loses_nothing() {
    const FILES: u32 = 1500;
    const HOT: u32 = 40;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let fx = Fixture::new();
    populate(&fx);
    let o = fx.cli(&["kms", "create-key", "--description", "the old key"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let old = v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let o = fx.cli(&["rewrap", fx.cipher.to_str().unwrap(), "--to-key", &old]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fx.cli(&["kms", "create-key", "--description", "the new key"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (new, new_arn) = (
        v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string(),
        v["KeyMetadata"]["Arn"].as_str().unwrap().to_string(),
    );
    let m = fx.mount_with(&["--xattrs"]);
    fs::create_dir_all(fx.m("busy/sub")).unwrap();
    fs::create_dir_all(fx.m("busy/hotdir")).unwrap();
    for i in 0..FILES {
        fs::write(fx.m(&format!("busy/f{i}")), format!("file {i}")).unwrap();
    }
    // Beside the re-wrap: files renamed back and forth, a directory moved
    // back and forth, new files written, a file held open and appended to.
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, mnt) = (stop.clone(), fx.mnt.clone());
    let load = std::thread::spawn(move || {
        use std::io::Write;
        let p = |r: &str| mnt.join(r);
        let mut held = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p("busy/held"))
            .unwrap();
        let mut i = 0u32;
        while !s2.load(Ordering::Relaxed) {
            let f = i % FILES;
            fs::rename(p(&format!("busy/f{f}")), p(&format!("busy/sub/g{f}"))).unwrap();
            fs::rename(p(&format!("busy/sub/g{f}")), p(&format!("busy/f{f}"))).unwrap();
            if i.is_multiple_of(10) {
                fs::rename(p("busy/sub"), p("busy/sub2")).unwrap();
                fs::rename(p("busy/sub2"), p("busy/sub")).unwrap();
            }
            fs::write(p(&format!("busy/new{i}")), format!("new {i}")).unwrap();
            writeln!(held, "line {i}").unwrap();
            i += 1;
        }
        held.sync_all().unwrap();
        i
    });
    // And a few files renamed as fast as the mount allows: the walk meets
    // each of them mid-rename unless it waits for the rename.
    let (s3, mnt) = (stop.clone(), fx.mnt.clone());
    for j in 0..HOT {
        fs::write(fx.m(&format!("busy/hot{j}")), format!("hot {j}")).unwrap();
    }
    let hot = std::thread::spawn(move || {
        let p = |r: String| mnt.join(r);
        let mut renames = 0u64;
        while !s3.load(Ordering::Relaxed) {
            for j in 0..HOT {
                fs::rename(p(format!("busy/hot{j}")), p(format!("busy/hotdir/hot{j}"))).unwrap();
                fs::rename(p(format!("busy/hotdir/hot{j}")), p(format!("busy/hot{j}"))).unwrap();
                renames += 2;
            }
        }
        renames
    });
    std::thread::sleep(Duration::from_millis(300));
    // Moved to the new key, then twice more to its newest material: three
    // walks for the load to run beside.
    for to in [Some(new.as_str()), None, None] {
        let mut args = vec!["rewrap", fx.cipher.to_str().unwrap()];
        args.extend(to.map(|k| ["--to-key", k]).into_iter().flatten());
        let o = fx.cli(&args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            out.contains(&format!("re-wrapped under {new_arn}:")),
            "{out}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let n = load.join().unwrap();
    assert!(n > 0, "the load ran");
    assert!(hot.join().unwrap() > 0, "the renames ran");
    let check = || {
        for i in 0..FILES {
            assert_eq!(
                fs::read_to_string(fx.m(&format!("busy/f{i}"))).unwrap(),
                format!("file {i}")
            );
        }
        for i in 0..n {
            assert_eq!(
                fs::read_to_string(fx.m(&format!("busy/new{i}"))).unwrap(),
                format!("new {i}")
            );
        }
        for j in 0..HOT {
            assert_eq!(
                fs::read_to_string(fx.m(&format!("busy/hot{j}"))).unwrap(),
                format!("hot {j}")
            );
        }
        let held = fs::read_to_string(fx.m("busy/held")).unwrap();
        assert_eq!(held.lines().count(), n as usize);
    };
    check();
    m.unmount();
    moved_off(&fx, &old, &new, &new_arn);
    let m = fx.mount();
    check();
    m.unmount();
    let o = fx.cli(&["fsck", fx.cipher.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
