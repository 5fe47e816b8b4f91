//! Mounts whose CMK lives in a remote KMS: `kmsfs kms serve` on loopback,
//! and moto's server (an independent implementation of the AWS KMS API, so
//! the client is not tuned to our own server).

mod common;
use common::serve::{Server, ok, pyenv};
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A fixture without a local filesystem yet: init runs against the remote.
fn remote_fixture() -> Fixture {
    require_fuse();
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = Fixture {
        cipher: dir.path().join("cipher"),
        mnt: dir.path().join("mnt"),
        home: dir.path().join("state"),
        key: dir.path().join("unused.key"),
        dir,
    };
    std::fs::create_dir(&fx.mnt).unwrap();
    fx
}

fn credentials_file(dir: &Path, id: &str, secret: &str) -> PathBuf {
    let p = dir.join("aws-credentials");
    std::fs::write(
        &p,
        format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}\n"),
    )
    .unwrap();
    p
}

/// `kmsfs init` of `fx` against the server `s`, signing with `creds`.
fn init_remote(fx: &Fixture, s: &Server, creds: &Path, extra: &[&str]) -> std::process::Output {
    let (url, key) = (s.url(), s.key_id());
    let mut args = vec![
        "init",
        fx.cipher.to_str().unwrap(),
        "--kms-endpoint",
        &url,
        "--key-id",
        &key,
        "--aws-credentials-file",
        creds.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    fx.cli(&args)
}

/// A `kmsfs kms serve` with an access key for uid 0, and a filesystem made
/// against it (not mounted): the server, the key's id, the fixture and the
/// credentials file.
fn served() -> (Server, String, Fixture, PathBuf) {
    let s = Server::start(&[]);
    let (id, secret) = s.access_key("uid:0");
    let fx = remote_fixture();
    let creds = credentials_file(fx.dir.path(), &id, &secret);
    let o = init_remote(&fx, &s, &creds, &[]);
    assert!(
        o.status.success(),
        "init: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (s, id, fx, creds)
}

/// The records of the mount's data-key cache audit log.
fn cache_hits(fx: &Fixture) -> Vec<serde_json::Value> {
    let fs_id = fx.config()["FilesystemId"].as_str().unwrap().to_string();
    std::fs::read_to_string(fx.home.join(format!("cache-audit-{fs_id}.log")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes, remounts and reads back; a copied ciphertext file is EIO.
fn round_trip(fx: &Fixture, creds: &Path) {
    let c = creds.to_str().unwrap();
    let m = fx.mount_with(&["--aws-credentials-file", c]);
    std::fs::write(fx.m("f"), b"kept remotely").unwrap();
    std::fs::create_dir(fx.m("d")).unwrap();
    std::fs::write(fx.m("d/g"), vec![7u8; 100_000]).unwrap();
    std::os::unix::fs::symlink("over/there", fx.m("l")).unwrap();
    std::fs::rename(fx.m("d"), fx.m("e")).unwrap();
    m.unmount();
    let cred = ["--aws-credentials-file", c];
    std::fs::copy(fx.c_with("f", &cred), fx.c_with("copied", &cred)).unwrap();
    let m = fx.mount_with(&["--aws-credentials-file", c]);
    assert_eq!(std::fs::read(fx.m("f")).unwrap(), b"kept remotely");
    assert_eq!(std::fs::read(fx.m("e/g")).unwrap(), vec![7u8; 100_000]);
    assert_eq!(
        std::fs::read_link(fx.m("l")).unwrap(),
        Path::new("over/there")
    );
    assert_eq!(
        read_err(&fx.m("copied")),
        Some(libc::EIO),
        "path binding holds remotely"
    );
    m.unmount();
}

#[test]
fn a_mount_whose_key_lives_behind_kmsfs_kms_serve() {
    let mut s = Server::start(&[]);
    let (id, secret) = s.access_key("uid:0");
    let fx = remote_fixture();
    let creds = credentials_file(fx.dir.path(), &id, &secret);
    let out = init_remote(&fx, &s, &creds, &[]);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg = fx.config();
    assert_eq!(cfg["KmsEndpoint"], s.url().as_str());
    assert!(
        cfg["FeatureFlags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "RemoteKms")
    );
    assert!(
        !fx.home.join("keystore.json").exists(),
        "a remote filesystem needs no keystore"
    );
    round_trip(&fx, &creds);
    // The server audited the mount's calls under its access key.
    let used: Vec<_> = s
        .audit()
        .into_iter()
        .filter(|r| r["userIdentity"]["accessKeyId"] == id.as_str())
        .map(|r| r["eventName"].as_str().unwrap().to_string())
        .collect();
    for op in [
        "DescribeKey",
        "Encrypt",
        "GenerateDataKey",
        "Decrypt",
        "ReEncrypt",
    ] {
        assert!(used.iter().any(|u| u == op), "no {op} in {used:?}");
    }

    // The KMS stops: opens fail within seconds, with EIO, and the log says
    // why; once it is back they work again.
    let m = fx.mount_with(&["--aws-credentials-file", creds.to_str().unwrap()]);
    s.stop();
    let t = Instant::now();
    assert_eq!(read_err(&fx.m("f")), Some(libc::EIO));
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "an open took {:?} with the KMS down",
        t.elapsed()
    );
    s.restart();
    assert_eq!(std::fs::read(fx.m("f")).unwrap(), b"kept remotely");
    m.unmount();
    let log = std::fs::read_to_string(fx.home.join(format!(
        "mount-{}.log",
        cfg["FilesystemId"].as_str().unwrap()
    )))
    .unwrap();
    assert!(log.contains("did not answer"), "{log}");

    // Another host (here: a fresh state directory) must accept the endpoint
    // once; a different one is refused.
    let fresh = fx.dir.path().join("other-host");
    let mount = |extra: &[&str]| {
        let mut c = Command::new(BIN);
        c.arg("--kms-home").arg(&fresh).args([
            "mount",
            fx.cipher.to_str().unwrap(),
            fx.mnt.to_str().unwrap(),
        ]);
        c.args(["--aws-credentials-file", creds.to_str().unwrap()])
            .args(extra);
        run_timeout(&mut c, 60)
    };
    let o = mount(&[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has not accepted yet"),
        "{o:?}"
    );
    let o = mount(&["--kms-endpoint", "http://127.0.0.1:1"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not the KMS this filesystem names"),
        "{o:?}"
    );
    let o = mount(&["--kms-endpoint", &s.url()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = fx.mounted_in_background();
    assert_eq!(std::fs::read(fx.m("f")).unwrap(), b"kept remotely");
    drop(m);
}

/// moto's KMS server on a free loopback port, killed when dropped.
struct Moto(Child, u16);

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(pyenv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (scripts/pydeps.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto(child, port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_mount_whose_key_lives_in_motos_kms() {
    let moto = Moto::start();
    let url = format!("http://127.0.0.1:{}", moto.1);
    let fx = remote_fixture();
    let creds = credentials_file(fx.dir.path(), "testing", "testing");
    let mut c = Command::new(pyenv().join("bin/aws"));
    c.args([
        "--endpoint-url",
        &url,
        "--region",
        "eu-west-1",
        "kms",
        "create-key",
        "--query",
        "KeyMetadata.KeyId",
        "--output",
        "text",
    ])
    .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
    .env("AWS_CONFIG_FILE", "/dev/null")
    .env_remove("AWS_ACCESS_KEY_ID")
    .env_remove("AWS_SECRET_ACCESS_KEY");
    let key = ok(&run_timeout(&mut c, 60)).trim().to_string();
    let out = fx.cli(&[
        "init",
        fx.cipher.to_str().unwrap(),
        "--kms-endpoint",
        &url,
        "--key-id",
        &key,
        "--region",
        "eu-west-1",
        "--aws-credentials-file",
        creds.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fx.config()["KeyId"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:kms:eu-west-1:"),
        "{}",
        fx.config()
    );
    round_trip(&fx, &creds);
}

#[test]
fn the_data_key_cache_serves_reopens_for_its_max_age_and_records_each_hit() {
    let (s, id, fx, creds) = served();
    let c = creds.to_str().unwrap();
    let m = fx.mount_with(&["--aws-credentials-file", c, "--key-cache-seconds", "8"]);
    std::fs::write(fx.m("cached"), b"one").unwrap();
    std::fs::write(fx.m("other"), b"two").unwrap();
    m.unmount();
    let m = fx.mount_with(&["--aws-credentials-file", c, "--key-cache-seconds", "8"]);
    let decrypts = || {
        s.audit()
            .iter()
            .filter(|r| {
                r["eventName"] == "Decrypt" && r["userIdentity"]["accessKeyId"] == id.as_str()
            })
            .count()
    };
    let before = decrypts();
    for _ in 0..5 {
        assert_eq!(std::fs::read(fx.m("cached")).unwrap(), b"one");
    }
    assert_eq!(decrypts(), before + 1, "one round trip for five opens");
    let hits = cache_hits(&fx);
    assert_eq!(hits.len(), 4, "{hits:?}");
    assert_eq!(hits[0]["cacheHit"], true);
    assert_eq!(
        hits[0]["requestParameters"]["encryptionContext"]["kmsfs:path"],
        "cached"
    );
    assert_eq!(hits[0]["userIdentity"]["uid"], 0);
    // Disabled at the KMS: the kept key still opens its file until it is
    // 8 seconds old (margin for a loaded CI machine); every other file is refused at once, then that one too.
    let o = s.cli(&["kms", "disable-key", "--key-id", &s.key_id()]);
    assert!(o.status.success());
    assert_eq!(std::fs::read(fx.m("cached")).unwrap(), b"one");
    assert_eq!(read_err(&fx.m("other")), Some(libc::EACCES));
    // Until the kept key is 8 seconds old, bounded.
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_err(&fx.m("cached")).is_none() {
        assert!(Instant::now() < deadline, "the cached key outlived its age");
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(read_err(&fx.m("cached")), Some(libc::EACCES));
    m.unmount();
}

#[test]
fn a_mount_reaches_its_kms_over_tls_and_refuses_an_unknown_certificate() {
    let (s, ca) = Server::start_tls();
    let (id, secret) = s.access_key("uid:0");
    let fx = remote_fixture();
    let creds = credentials_file(fx.dir.path(), &id, &secret);
    let c = creds.to_str().unwrap();
    let init = |extra: &[&str]| init_remote(&fx, &s, &creds, extra);
    let o = init(&[]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("UnknownIssuer"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = init(&["--ca-bundle", ca.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "init: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m = fx.mount_with(&[
        "--aws-credentials-file",
        c,
        "--ca-bundle",
        ca.to_str().unwrap(),
    ]);
    std::fs::write(fx.m("f"), b"over TLS").unwrap();
    m.unmount();
    let m = fx.mount_with(&[
        "--aws-credentials-file",
        c,
        "--ca-bundle",
        ca.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(fx.m("f")).unwrap(), b"over TLS");
    m.unmount();
}

#[test]
fn key_readahead_unwraps_the_neighbours_of_an_opened_file_and_their_opens_are_cache_hits() {
    let (s, id, fx, creds) = served();
    let c = creds.to_str().unwrap();
    let m = fx.mount_with(&["--aws-credentials-file", c]);
    std::fs::create_dir_all(fx.m("d/sub")).unwrap();
    let mut near = vec![];
    for i in 0..12 {
        near.push(format!("d/f{i}"));
    }
    for i in 0..3 {
        near.push(format!("d/sub/g{i}"));
    }
    for p in &near {
        std::fs::write(fx.m(p), format!("content of {p}")).unwrap();
    }
    std::fs::write(fx.m("elsewhere"), b"not near").unwrap();
    m.unmount();
    // The paths of the server's Decrypts for this access key, in order.
    let decrypted = || -> Vec<String> {
        s.audit()
            .iter()
            .filter(|r| {
                r["eventName"] == "Decrypt" && r["userIdentity"]["accessKeyId"] == id.as_str()
            })
            .filter_map(|r| {
                r["requestParameters"]["encryptionContext"]["kmsfs:path"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect()
    };

    // Readahead needs the cache it fills.
    let o = fx.cli(&[
        "mount",
        fx.cipher.to_str().unwrap(),
        fx.mnt.to_str().unwrap(),
        "--aws-credentials-file",
        c,
        "--key-readahead",
        "--key-cache-seconds",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("--key-readahead keeps keys in the data-key cache"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!is_mounted(&fx.mnt));

    // Without --key-readahead an open unwraps its own key only.
    let m = fx.mount_with(&["--aws-credentials-file", c, "--key-cache-seconds", "60"]);
    let before = decrypted().len();
    assert_eq!(std::fs::read(fx.m("d/f0")).unwrap(), b"content of d/f0");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(decrypted()[before..], ["d/f0".to_string()]);
    m.unmount();

    // With it: the other files of d and of d/sub, and nothing else.
    let m = fx.mount_with(&[
        "--aws-credentials-file",
        c,
        "--key-cache-seconds",
        "60",
        "--key-readahead",
    ]);
    let before = decrypted().len();
    assert_eq!(std::fs::read(fx.m("d/f0")).unwrap(), b"content of d/f0");
    let deadline = Instant::now() + Duration::from_secs(20);
    while decrypted().len() < before + near.len() {
        assert!(
            Instant::now() < deadline,
            "keys unwrapped ahead: {:?}",
            &decrypted()[before..]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut ahead = decrypted()[before..].to_vec();
    assert_eq!(ahead[0], "d/f0", "the open's own key first");
    ahead.sort();
    let mut want = near.clone();
    want.sort();
    assert_eq!(ahead, want, "each neighbour once, nothing outside d");
    // Their opens now need no round trip, and each is recorded as a hit
    // for the process that opened it.
    let n = decrypted().len();
    for p in &near[1..] {
        assert_eq!(
            std::fs::read(fx.m(p)).unwrap(),
            format!("content of {p}").into_bytes()
        );
    }
    assert_eq!(decrypted().len(), n, "no round trip for a key read ahead");
    let hits = cache_hits(&fx);
    let mut hit_paths: Vec<String> = hits
        .iter()
        .map(|h| {
            assert_eq!(
                (&h["cacheHit"], &h["userIdentity"]["uid"]),
                (&true.into(), &0.into())
            );
            h["requestParameters"]["encryptionContext"]["kmsfs:path"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    hit_paths.sort();
    let mut want_hits = near[1..].to_vec();
    want_hits.sort();
    assert_eq!(hit_paths, want_hits);
    m.unmount();
}
