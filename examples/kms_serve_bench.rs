//! `kmsfs kms serve` throughput: Decrypt calls per second from 1, 16 and
//! 64 concurrent SigV4-signing clients over loopback (each its own kept-alive
//! connection), with the audit log on, against the real binary and a real
//! KMS home in a temporary directory. Clients and server share the machine's
//! cores, as they would on one host.
//!
//!     cargo build --release && cargo run --release --example kms_serve_bench [-- SECONDS_PER_CASE]

use kmsfs::kms::EncryptionContext;
use kmsfs::kms::api::{self, Blob, Request};
use kmsfs::remote::creds::Credentials;
use kmsfs::remote::{Client, Endpoint};
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn kmsfs(home: &Path, key: &Path, args: &[&str]) -> serde_json::Value {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("../kmsfs");
    let o = Command::new(bin)
        .arg("--kms-home")
        .arg(home)
        .arg("--key-file")
        .arg(key)
        .args(args)
        .output()
        .expect("run target/release/kmsfs (cargo build --release first)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let dir = tempfile::tempdir().unwrap();
    let (home, key) = (dir.path().join("home"), dir.path().join("root.key"));
    std::fs::write(&key, [7u8; 32]).unwrap();
    let k = kmsfs(&home, &key, &["kms", "create-key"]);
    let key_id = k["KeyMetadata"]["KeyId"].as_str().unwrap().to_string();
    let ak = kmsfs(
        &home,
        &key,
        &["kms", "create-access-key", "--principal", "uid:0"],
    );
    let (id, secret) = (
        ak["AccessKey"]["AccessKeyId"].as_str().unwrap().to_string(),
        ak["AccessKey"]["SecretAccessKey"]
            .as_str()
            .unwrap()
            .to_string(),
    );
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .join("../kmsfs");
    let mut server = Command::new(bin)
        .arg("--kms-home")
        .arg(&home)
        .arg("--key-file")
        .arg(&key)
        .args([
            "kms",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-rate",
            "1000000",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = std::io::BufReader::new(server.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let url = line.rsplit(' ').next().unwrap().to_string();
    let client = || {
        Client::new(
            Endpoint::parse(&url).unwrap(),
            "us-east-1".into(),
            Credentials {
                access_key_id: id.clone(),
                secret_access_key: zeroize::Zeroizing::new(secret.clone()),
                session_token: None,
                source: "bench".into(),
            },
            None,
        )
    };
    let ctx = EncryptionContext::from_pairs([
        ("kmsfs:path", "projects/report.txt"),
        ("kmsfs:fs", "bench"),
    ]);
    let dk = client()
        .call(&Request::GenerateDataKey(api::GenerateDataKey {
            key_id: key_id.clone(),
            key_spec: Some("AES_256".into()),
            number_of_bytes: None,
            encryption_context: ctx.clone(),
            grant_tokens: vec![],
            dry_run: None,
        }))
        .unwrap();
    use base64::Engine;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(dk["CiphertextBlob"].as_str().unwrap())
        .unwrap();
    let decrypt = Request::Decrypt(api::Decrypt {
        ciphertext_blob: Blob::new(blob),
        encryption_context: ctx,
        key_id: None,
        encryption_algorithm: None,
        grant_tokens: vec![],
        dry_run: None,
    });
    println!("kms serve: Decrypt/s over loopback, SigV4, audit log on, {secs} s a case");
    for clients in [1usize, 16, 64] {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let hs: Vec<_> = (0..clients)
            .map(|_| {
                let (c, stop, total, req) =
                    (client(), stop.clone(), total.clone(), decrypt.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        c.call(&req).expect("Decrypt");
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().unwrap();
        }
        let n = total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
        println!("  {clients:>2} clients: {n:>9.0} Decrypt/s");
    }
    let audited = std::fs::read_to_string(home.join("audit.log"))
        .unwrap()
        .lines()
        .count();
    println!("  audit log: {audited} records");
    let _ = server.kill();
    let _ = server.wait();
}
