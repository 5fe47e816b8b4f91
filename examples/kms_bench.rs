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

/// Calls per second. `via`: the CLI's calls are each written to the audit
/// log; the mount's identical Decrypts (one process opening one file again
/// and again) are coalesced into a record a second (docs/audit-log.md), so
/// the CLI is the case that measures one record per call.
fn run(kms: &Arc<Kms>, key: &str, threads: usize, secs: f64, decrypt: bool, via: Via) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let ctx = EncryptionContext::from_pairs([
        ("kmsfs:path", "projects/report.txt"),
        ("kmsfs:fs", "bench"),
    ]);
    let caller = Caller::this_process(via);
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

/// A fresh KMS home (so every case starts with an empty audit log) and a key
/// with `policy` (the default policy if `None`).
fn fresh(tag: &str, policy: Option<String>) -> (Arc<Kms>, String, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("kmsfs-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let kms = Kms::open(
        KmsHome::new(&dir),
        &RootSecret::KeyFile(Key256::random()),
        true,
        Options::default(),
    )
    .expect("open KMS home");
    let caller = Caller::this_process(Via::Cli);
    let req = CreateKeyRequest {
        bypass_policy_lockout_safety_check: true,
        policy,
        ..Default::default()
    };
    let key = kms.create_key(&caller, req).unwrap().key_id;
    (Arc::new(kms), key, dir)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "KMS operations per second, audit log on (a real KMS home per run, records written to disk): medians (min-max) of 5 runs of {} s each",
        secs / 2.0
    );
    println!(
        "{:<18} {:>24} {:>24}",
        "operation",
        "1 thread",
        format!("{cores} threads")
    );
    let mut dirs = vec![];
    // Each run on a fresh home, removed right after: a run writes about
    // 100 MB of log per second.
    let cell = |name: &str, threads: usize, dec: bool| -> String {
        let v: Vec<f64> = (0..5)
            .map(|i| {
                let (kms, key, d) = fresh(&format!("{name}-{threads}-{i}"), None);
                let r = run(&kms, &key, threads, secs / 2.0, dec, Via::Cli);
                drop(kms);
                let _ = std::fs::remove_dir_all(d);
                r
            })
            .collect();
        let (lo, hi) = (
            v.iter().copied().fold(f64::MAX, f64::min),
            v.iter().copied().fold(0.0, f64::max),
        );
        format!("{:.0} ({lo:.0}-{hi:.0})", median(v))
    };
    for (name, dec) in [("Decrypt", true), ("GenerateDataKey", false)] {
        let one = cell(name, 1, dec);
        let all = cell(name, cores, dec);
        println!("{name:<18} {one:>24} {all:>24}");
    }
    let (kms, key, d) = fresh("coalesced", None);
    let r = run(&kms, &key, 1, secs / 2.0, true, Via::Mount);
    drop(kms);
    let _ = std::fs::remove_dir_all(d);
    println!(
        "Decrypt of one file by one process through the mount, repeated (coalesced into a record a second): {r:.0}/s on 1 thread"
    );
    // The cost of policy evaluation: the same Decrypt under a key whose policy
    // has 20 statements, each with a condition evaluated, the matching one
    // last; measured alternately in short runs, medians compared.
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
    let (mut base, mut with) = (vec![], vec![]);
    for round in 0..5 {
        let (a, ka, da) = fresh(&format!("p{round}a"), None);
        let (b, kb, db) = fresh(&format!("p{round}b"), Some(policy.clone()));
        base.push(run(&a, &ka, 1, secs / 3.0, true, Via::Cli));
        with.push(run(&b, &kb, 1, secs / 3.0, true, Via::Cli));
        dirs.extend([da, db]);
    }
    let (mb, mw) = (median(base), median(with));
    println!(
        "Decrypt, 1 thread, medians of 5 alternating runs: default policy {mb:.0}/s, 20-statement policy {mw:.0}/s (ratio {:.3})",
        mw / mb
    );
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}
