//! The audit writer and `verify` together: the chain across opens, writers
//! and rotations, and every kind of damage verify must name.

use super::*;
use crate::kms::audit_chain::{Anchor, hex, line_mac};
use crate::kms::audit_verify::{Report, verify_trail};
use crate::kms::caller::Via;
use serde_json::json;

/// Records differ by their ids, as real ones do: a log rewritten from
/// scratch must not come out byte for byte the same.
fn rec(name: &'static str) -> Record {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Record {
        event_version: "1.08",
        user_identity: UserIdentity {
            kind: "LocalUser",
            principal_id: "uid:0".into(),
            uid: 0,
            gid: 0,
            pid: 1,
            process_name: Some("test".into()),
            invoked_by: Via::Cli,
            access_key_id: None,
        },
        event_time: "2026-01-01T00:00:00Z".into(),
        event_source: "kms.kmsfs.local",
        event_name: name,
        aws_region: "local",
        source_ip_address: "local".into(),
        user_agent: "test".into(),
        request_parameters: serde_json::value::to_raw_value(&json!({"keyId": "k"})).unwrap(),
        response_elements: Value::Null,
        error_code: None,
        error_message: None,
        request_id: format!("r{n}"),
        event_id: format!("e{n}"),
        read_only: true,
        resources: vec![],
        event_type: "AwsApiCall",
        management_event: true,
        recipient_account_id: "1".into(),
        event_category: "Management",
        additional_event_data: None,
    }
}

fn key() -> Key256 {
    Key256::from_bytes([5; 32])
}

fn open_with(dir: &Path, settings: Settings, anchor: Option<&Anchor>) -> AuditLog {
    AuditLog::open_in(
        File::open(dir).unwrap(),
        OsStr::new("audit.log"),
        &dir.join("audit.log"),
        key(),
        settings,
        anchor.and_then(|a| a.head()),
    )
    .unwrap()
}

fn write_n(path: &Path, n: usize) {
    let log = AuditLog::open(path, key()).unwrap();
    for _ in 0..n {
        log.append(&rec("Decrypt")).unwrap();
    }
}

fn check(dir: &Path, anchor: Option<&Anchor>, from: u64) -> Report {
    verify_trail(
        &File::open(dir).unwrap(),
        OsStr::new("audit.log"),
        &key(),
        anchor,
        from,
    )
    .unwrap()
}

fn verify(p: &Path) -> Report {
    check(p.parent().unwrap(), None, 1)
}

/// The line verify stopped at, and what it said.
fn bad(r: &Report) -> (u64, String) {
    let p = r.problem.as_ref().expect("a problem");
    (p.at.as_ref().map_or(0, |a| a.1), p.what.clone())
}

fn anchor_of(log: &AuditLog) -> Anchor {
    let h = log.head();
    Anchor {
        seq: h.seq,
        mac: hex(&h.mac),
        time: "2026-12-02T00:00:00Z".into(),
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(path: &Path, l: &[String]) {
    std::fs::write(path, l.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
}

/// The trail's files but the active log, oldest first.
fn rotated(dir: &Path) -> Vec<String> {
    trail::files(&File::open(dir).unwrap(), OsStr::new("audit.log"))
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string_lossy().into_owned())
        .filter(|n| n != "audit.log")
        .collect()
}

fn small() -> Settings {
    Settings {
        max_bytes: 8 << 10,
        ..Settings::default()
    }
}

#[test]
fn chain_verifies_and_continues_across_opens() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    write_n(&p, 3);
    write_n(&p, 2);
    let r = verify(&p);
    assert_eq!(
        (r.records, r.first_seq, r.last_seq, &r.problem),
        (5, 1, 5, &None)
    );
    for l in lines(&p) {
        let v: Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["eventName"], "Decrypt");
    }
    let other = verify_trail(
        &File::open(d.path()).unwrap(),
        OsStr::new("audit.log"),
        &Key256::from_bytes([6; 32]),
        None,
        1,
    )
    .unwrap();
    assert_eq!(
        bad(&other),
        (1, "MAC mismatch: this line was edited or forged".into())
    );
}

#[test]
fn detects_edit_delete_insert_reorder() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    write_n(&p, 5);
    let orig = lines(&p);

    let mut edited = orig.clone();
    edited[2] = edited[2].replace("Decrypt", "Encrypt");
    write_lines(&p, &edited);
    assert_eq!(
        bad(&verify(&p)),
        (3, "MAC mismatch: this line was edited or forged".into())
    );

    let mut deleted = orig.clone();
    deleted.remove(1);
    write_lines(&p, &deleted);
    assert_eq!(
        bad(&verify(&p)),
        (
            2,
            "chainSeq is 3 where 2 was expected: a line was deleted, inserted or reordered here"
                .into()
        )
    );

    let mut inserted = orig.clone();
    inserted.insert(3, orig[0].clone());
    write_lines(&p, &inserted);
    assert_eq!(bad(&verify(&p)).0, 4);

    let mut swapped = orig.clone();
    swapped.swap(3, 4);
    write_lines(&p, &swapped);
    assert_eq!(bad(&verify(&p)).0, 4);
}

#[test]
fn torn_tail_is_cut_and_chain_continues() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    write_n(&p, 2);
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"{\"eventVersion\":\"1.0").unwrap();
    assert_eq!(
        bad(&verify(&p)),
        (3, "the last line is incomplete (torn write)".into())
    );
    write_n(&p, 1);
    let r = verify(&p);
    assert_eq!((r.records, &r.problem), (3, &None));
}

#[test]
fn two_writers_interleave_without_breaking_the_chain() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let a = AuditLog::open(&p, key()).unwrap();
    let b = AuditLog::open(&p, key()).unwrap();
    for i in 0..10 {
        if i % 3 == 0 {
            b.append(&rec("Encrypt"))
        } else {
            a.append(&rec("Decrypt"))
        }
        .unwrap();
    }
    let r = verify(&p);
    assert_eq!((r.records, &r.problem), (10, &None));
}

#[test]
fn rotation_by_size_keeps_one_chain_and_closes_each_file_with_a_digest() {
    let d = tempfile::tempdir().unwrap();
    let log = open_with(d.path(), small(), None);
    for _ in 0..60 {
        log.append(&rec("Decrypt")).unwrap();
    }
    let files = rotated(d.path());
    assert!(files.len() >= 3, "{files:?}");
    for (i, name) in files.iter().enumerate() {
        let l = lines(&d.path().join(name));
        let last: Value = serde_json::from_str(l.last().unwrap()).unwrap();
        assert_eq!(last["eventName"], "AuditDigest", "{name}");
        let first: Value = serde_json::from_str(&l[0]).unwrap();
        let want = if i == 0 { "Decrypt" } else { "LogFileStarted" };
        assert_eq!(first["eventName"], want, "{name}");
        // Named for the records it holds.
        let (lo, hi) = (
            first["chainSeq"].as_u64().unwrap(),
            last["chainSeq"].as_u64().unwrap(),
        );
        assert_eq!(name, &format!("audit.log.{lo}-{hi}"));
    }
    let r = check(d.path(), None, 1);
    assert_eq!(r.problem, None);
    assert_eq!(r.files, files.len() + 1);
    assert_eq!(r.digests as usize, files.len());
    assert_eq!(r.records, r.last_seq);
}

#[test]
fn digests_come_when_due_and_a_forged_one_is_named() {
    let d = tempfile::tempdir().unwrap();
    let every_batch = Settings {
        digest_every: Duration::ZERO,
        ..Settings::default()
    };
    let log = open_with(d.path(), every_batch, None);
    for _ in 0..3 {
        log.append(&rec("Decrypt")).unwrap();
    }
    drop(log);
    let p = d.path().join("audit.log");
    let l = lines(&p);
    let names: Vec<String> = l
        .iter()
        .map(|x| {
            serde_json::from_str::<Value>(x).unwrap()["eventName"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        names,
        [
            "Decrypt",
            "AuditDigest",
            "Decrypt",
            "AuditDigest",
            "Decrypt",
            "AuditDigest"
        ]
    );
    let r = verify(&p);
    assert_eq!((r.digests, &r.problem), (3, &None));
    assert_eq!(r.last_digest.as_ref().map(|d| d.0), Some(6));

    // A digest with a made-up signature, its MAC recomputed (as only a
    // holder of the chain key could): the signature is what fails.
    let mut v: Value = serde_json::from_str(&l[3]).unwrap();
    v["serviceEventDetails"]["digestSignature"] = json!(hex(&[9; 32]));
    let (prefix, _, _) = split_line(&l[2]).unwrap();
    let prev = split_line(&l[2]).unwrap().2;
    let _ = prefix;
    let mut body = v.to_string();
    let cut = body.find(",\"chainSeq\"").unwrap();
    body.truncate(cut);
    let mut forged = String::new();
    let mac = seal_line(&mut forged, &body, &key(), 4, &prev);
    assert_eq!(
        line_mac(
            &key(),
            &prev,
            forged.rsplit_once(",\"chainMac\"").unwrap().0.as_bytes()
        ),
        mac
    );
    let mut edited = l[..3].to_vec();
    edited.push(forged.trim_end().to_string());
    write_lines(&p, &edited);
    assert_eq!(
        bad(&verify(&p)),
        (4, "the digest's signature is wrong: forged".into())
    );
}

#[test]
fn cutting_the_newest_records_is_found_by_the_anchor() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let log = open_with(d.path(), Settings::default(), None);
    for _ in 0..10 {
        log.append(&rec("Decrypt")).unwrap();
    }
    let a = anchor_of(&log);
    drop(log);
    let r = check(d.path(), Some(&a), 1);
    assert_eq!((&r.problem, r.anchored.as_ref()), (&None, Some(&a)));
    let l = lines(&p);
    write_lines(&p, &l[..7]);
    let r = check(d.path(), Some(&a), 1);
    assert_eq!(
        r.problem.unwrap().what,
        "the newest records were cut off: the keystore anchors record 10 (written by 2026-12-02T00:00:00Z), but the trail ends at record 7"
    );
    // Without the anchor the cut cannot be told from a log that ended there.
    assert_eq!(check(d.path(), None, 1).problem, None);
}

#[test]
fn a_deleted_log_and_one_recreated_in_its_place_are_named() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let log = open_with(d.path(), Settings::default(), None);
    for _ in 0..4 {
        log.append(&rec("Decrypt")).unwrap();
    }
    let a = anchor_of(&log);
    drop(log);
    std::fs::remove_file(&p).unwrap();
    assert_eq!(
        check(d.path(), Some(&a), 1).problem.unwrap().what,
        "the audit log is missing or empty, but the keystore anchors record 4 (written by 2026-12-02T00:00:00Z): the log was deleted or replaced"
    );
    // A writer that finds the log gone goes on from the anchor, so the
    // hole shows where it is.
    let log = open_with(d.path(), Settings::default(), Some(&a));
    log.append(&rec("Decrypt")).unwrap();
    drop(log);
    let first: Value = serde_json::from_str(&lines(&p)[0]).unwrap();
    assert_eq!(
        (first["eventName"].as_str(), first["chainSeq"].as_u64()),
        (Some("LogFileStarted"), Some(5))
    );
    let r = check(d.path(), Some(&a), 1);
    assert_eq!(
        bad(&r),
        (1, "the trail starts at record 5: records 1 to 4 are missing (its oldest files were removed, or the log deleted); if they were pruned on purpose, verify with --from-record 5".into())
    );
    // A log recreated by hand, not continuing anything, fails against the anchor.
    std::fs::remove_file(&p).unwrap();
    write_n(&p, 5);
    assert_eq!(
        bad(&check(d.path(), Some(&a), 1)).1,
        "this is not the record the keystore anchors as record 4 (written by 2026-12-02T00:00:00Z): the log was replaced with an older copy, or records were cut and others written after them"
    );
}

#[test]
fn an_older_copy_put_back_is_named_even_after_more_records() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    write_n(&p, 5);
    let old = std::fs::read(&p).unwrap();
    let log = open_with(d.path(), Settings::default(), None);
    for _ in 0..5 {
        log.append(&rec("Decrypt")).unwrap();
    }
    let a = anchor_of(&log);
    drop(log);
    std::fs::write(&p, &old).unwrap();
    assert!(
        check(d.path(), Some(&a), 1)
            .problem
            .unwrap()
            .what
            .starts_with("the newest records were cut off")
    );
    write_n(&p, 6);
    assert_eq!(
        bad(&check(d.path(), Some(&a), 1)),
        (10, "this is not the record the keystore anchors as record 10 (written by 2026-12-02T00:00:00Z): the log was replaced with an older copy, or records were cut and others written after them".into())
    );
}

#[test]
fn a_removed_rotated_file_is_named_and_pruning_is_verified_from_a_record() {
    let d = tempfile::tempdir().unwrap();
    let log = open_with(d.path(), Settings::default(), None);
    for _ in 0..4 {
        for _ in 0..3 {
            log.append(&rec("Decrypt")).unwrap();
        }
        log.rotate().unwrap().unwrap();
    }
    log.append(&rec("Decrypt")).unwrap();
    let files = rotated(d.path());
    assert_eq!(files.len(), 4, "{files:?}");
    assert_eq!(check(d.path(), None, 1).problem, None);
    std::fs::remove_file(d.path().join(&files[1])).unwrap();
    let r = check(d.path(), None, 1);
    let p = r.problem.unwrap();
    let (lo, hi) = files[1]
        .trim_start_matches("audit.log.")
        .split_once('-')
        .unwrap();
    assert_eq!(p.at, Some((files[2].clone(), 1)));
    assert_eq!(
        p.what,
        format!(
            "records {lo} to {hi} are missing between {} and this file: a rotated file was removed",
            files[0]
        )
    );
    // Pruned on purpose: the oldest two gone, verified from the third's start.
    std::fs::remove_file(d.path().join(&files[0])).unwrap();
    let start: u64 = files[2]
        .trim_start_matches("audit.log.")
        .split_once('-')
        .unwrap()
        .0
        .parse()
        .unwrap();
    assert!(
        bad(&check(d.path(), None, 1))
            .1
            .starts_with(&format!("the trail starts at record {start}"))
    );
    let r = check(d.path(), None, start);
    assert_eq!((&r.problem, r.first_seq, r.files), (&None, start, 3));
    // From inside a file, the record before is taken on trust.
    let r = check(d.path(), None, start + 1);
    assert_eq!((&r.problem, r.first_seq), (&None, start + 1));
    // Before the trail's start: named.
    assert_eq!(
        bad(&check(d.path(), None, start - 1)).1,
        format!(
            "record {} is not in the trail, which starts at record {start}",
            start - 1
        )
    );
}

#[test]
fn logrotate_rename_copytruncate_and_compression_are_followed() {
    use std::io::Write as _;
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("audit.log");
    let log = open_with(d.path(), Settings::default(), None);
    for _ in 0..3 {
        log.append(&rec("Decrypt")).unwrap();
    }
    // logrotate's default: rename, then `create` a new empty log.
    std::fs::rename(&p, d.path().join("audit.log.1")).unwrap();
    std::fs::write(&p, b"").unwrap();
    log.append(&rec("Encrypt")).unwrap();
    let first: Value = serde_json::from_str(&lines(&p)[0]).unwrap();
    assert_eq!(first["eventName"], "LogFileStarted");
    assert_eq!(
        first["serviceEventDetails"]["previousLogFile"],
        "audit.log.1"
    );
    // `nocreate`: the writer creates the log itself.
    std::fs::rename(&p, d.path().join("audit.log.2")).unwrap();
    log.append(&rec("Encrypt")).unwrap();
    // `copytruncate`: same file, emptied after a copy.
    std::fs::copy(&p, d.path().join("audit.log.3")).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(0)
        .unwrap();
    log.append(&rec("Encrypt")).unwrap();
    // `compress`: the oldest rotated file gzipped.
    let plain = std::fs::read(d.path().join("audit.log.1")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(
        File::create(d.path().join("audit.log.1.gz")).unwrap(),
        flate2::Compression::default(),
    );
    gz.write_all(&plain).unwrap();
    gz.finish().unwrap();
    std::fs::remove_file(d.path().join("audit.log.1")).unwrap();
    let a = anchor_of(&log);
    drop(log);
    let r = check(d.path(), Some(&a), 1);
    assert_eq!(r.problem, None);
    assert_eq!((r.files, r.last_seq, r.records), (4, 9, 9));
}

#[test]
fn concurrent_writers_across_rotations_lose_no_record() {
    let d = tempfile::tempdir().unwrap();
    let logs: Vec<AuditLog> = (0..3).map(|_| open_with(d.path(), small(), None)).collect();
    std::thread::scope(|s| {
        for (i, log) in logs.iter().enumerate() {
            for _ in 0..2 {
                s.spawn(move || {
                    for _ in 0..150 {
                        log.append(&rec(if i == 0 { "Decrypt" } else { "Encrypt" }))
                            .unwrap();
                    }
                });
            }
        }
    });
    drop(logs);
    let r = check(d.path(), None, 1);
    assert_eq!(r.problem, None);
    assert!(r.files > 10, "{} files", r.files);
    let mut calls = 0;
    for t in trail::files(&File::open(d.path()).unwrap(), OsStr::new("audit.log")).unwrap() {
        for l in lines(&d.path().join(&t.name)) {
            let v: Value = serde_json::from_str(&l).unwrap();
            if v["eventType"] == "AwsApiCall" {
                calls += 1;
            }
        }
    }
    assert_eq!(calls, 900);
}
