//! KMS throughput with the audit log on: Decrypt and GenerateDataKey per second,
//! on one thread and on every core, against a real KMS home (sealed keystore,
//! chained audit log) in a temporary directory.
//!
//!     cargo run --release --example kms_bench [-- SECONDS_PER_CASE]

use kmsfs::crypto::Key256;
use kmsfs::kms::{
    Caller, CreateKeyRequest, DataKeySpec, EncryptionContext, Kms, KmsHome, Options, RootSecret,
    Via,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn run(kms: &Arc<Kms>, key: &str, threads: usize, secs: f64, decrypt: bool) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let ctx = EncryptionContext::from_pairs([
        ("kmsfs:path", "projects/report.txt"),
        ("kmsfs:fs", "bench"),
    ]);
    let caller = Caller::this_process(Via::Mount);
    let blob = kms
        .generate_data_key(&caller, key, &DataKeySpec::aes_256(), &ctx, false)
        .unwrap()
        .ciphertext_blob;
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (kms, stop, total, ctx, caller, blob, key) = (
                kms.clone(),
                stop.clone(),
                total.clone(),
                ctx.clone(),
                caller.clone(),
                blob.clone(),
                key.to_string(),
            );
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..64 {
                        if decrypt {
                            kms.decrypt(&caller, &blob, &ctx, None, None).unwrap();
                        } else {
                            kms.generate_data_key(
                                &caller,
                                &key,
                                &DataKeySpec::aes_256(),
                                &ctx,
                                true,
                            )
                            .unwrap();
                        }
                    }
                    n += 64;
                }
                total.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    total.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let dir = tempfile_dir();
    let home = KmsHome::new(&dir);
    let kms = Arc::new(
        Kms::open(
            home.clone(),
            &RootSecret::KeyFile(Key256::random()),
            true,
            Options::default(),
        )
        .expect("open KMS home"),
    );
    let caller = Caller::this_process(Via::Cli);
    let key = kms
        .create_key(&caller, CreateKeyRequest::default())
        .unwrap()
        .key_id;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "KMS operations per second, audit log on ({}), {secs} s per case",
        home.audit_path().display()
    );
    println!(
        "{:<18} {:>12} {:>12}",
        "operation",
        "1 thread",
        format!("{cores} threads")
    );
    for (name, dec) in [("Decrypt", true), ("GenerateDataKey", false)] {
        let one = run(&kms, &key, 1, secs, dec);
        let all = run(&kms, &key, cores, secs, dec);
        println!("{name:<18} {one:>12.0} {all:>12.0}");
    }
    // The cost of policy evaluation: the same Decrypt under a key whose policy
    // has 20 statements, the matching one last, each with a condition.
    let mut stmts: Vec<String> = (0..19)
        .map(|i| {
            format!(
                r#"{{"Sid":"S{i}","Effect":"Allow","Principal":"*","Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*","Condition":{{"StringLike":{{"kms:EncryptionContext:kmsfs:path":"team{i}/*"}}}}}}"#
            )
        })
        .collect();
    stmts.push(r#"{"Sid":"Everyone","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringLike":{"kms:EncryptionContext:kmsfs:path":"projects/*"}}}"#.into());
    let policy = format!(
        r#"{{"Version":"2012-10-17","Statement":[{}]}}"#,
        stmts.join(",")
    );
    let req = CreateKeyRequest {
        policy: Some(policy),
        bypass_policy_lockout_safety_check: true,
        ..Default::default()
    };
    let big = kms.create_key(&caller, req).unwrap().key_id;
    let base = run(&kms, &key, 1, secs, true);
    let with = run(&kms, &big, 1, secs, true);
    println!(
        "Decrypt, 1 thread: default policy {base:.0}/s, 20-statement policy {with:.0}/s ({:+.1}%)",
        (with / base - 1.0) * 100.0
    );
    let lines = std::fs::File::open(home.audit_path())
        .map(|f| std::io::BufRead::lines(std::io::BufReader::new(f)).count())
        .unwrap_or(0);
    println!("audit records written: {lines}");
    drop(kms);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("kmsfs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
