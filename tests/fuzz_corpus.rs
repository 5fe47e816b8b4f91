//! Replays the fuzz corpora (fuzz/corpus/<target>/, minimised by cargo fuzz
//! cmin) through the fuzz targets of src/fuzz_targets.rs, so that every input
//! the fuzzers kept, and every crash they found, stays a test in the normal
//! suite. Run the fuzzers themselves with cargo-fuzz (see fuzz/Cargo.toml).

use kmsfs::fs::format::{self, FormatError, Header, Slot};
use kmsfs::fs::symlink;
use kmsfs::fuzz_targets::{self, TARGETS};
use kmsfs::kms::{audit, clock};
use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

#[test]
fn every_corpus_replays_without_panic() {
    let mut total = 0;
    for (name, target) in TARGETS {
        let dir = corpus_dir(name);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!("the corpus of fuzz target {name} ({}): {e}", dir.display())
        });
        let mut n = 0;
        for e in entries {
            let path = e.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(
                r.is_ok(),
                "fuzz target {name} panicked on {}",
                path.display()
            );
            n += 1;
        }
        assert!(
            n > 0,
            "the corpus of fuzz target {name} ({}) is empty",
            dir.display()
        );
        total += n;
    }
    assert!(total >= TARGETS.len());
}

#[test]
fn every_fuzz_target_has_a_cargo_fuzz_binary() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for (name, _) in TARGETS {
        let src = std::fs::read_to_string(dir.join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz/fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("kmsfs::fuzz_targets::{name}(")),
            "fuzz/fuzz_targets/{name}.rs does not call kmsfs::fuzz_targets::{name}"
        );
    }
}

// Regression inputs: each one panicked a target before its parser was fixed.

/// symlink_target: `plain_len` computed `b64 * 3`, which overflowed for an
/// lstat size above u64::MAX / 3 (a hostile backing filesystem reports any
/// size); the target takes such a size from the input's first 8 bytes.
#[test]
fn symlink_plain_len_of_a_huge_size() {
    fuzz_targets::symlink_target(
        b"kmsfs1:a20BqZjVM6S-SMqGkdlSWJ3lxwAAAAHuzpcO9_eODcNqkSFx57rzCqoFJXQzphBMgBaErgn1adY2eJvE-R2r1aU56kDBdI8R4Le4lAEz3Vphug",
    );
    fuzz_targets::symlink_target(&[0xff; 8]);
    let exact = |n: u64| ((n.saturating_sub(7) as u128 * 3 / 4) as u64).saturating_sub(67);
    for n in (0..20_000).chain([u64::MAX / 3, u64::MAX / 3 + 1, u64::MAX - 1, u64::MAX]) {
        assert_eq!(symlink::plain_len(n), exact(n), "{n}");
    }
}

/// file_header: a key slot with sequence number u64::MAX (its torn-write
/// check is a plain SHA-256, so whoever can write the cipherdir can make
/// one) made `Header::next_slot` overflow computing the next rename's
/// sequence number. Such a slot now reads as torn. The fuzzer's input was
/// this header (size 1024, slot A seq u64::MAX with a 99-byte blob).
#[test]
fn header_slot_with_the_last_sequence_number() {
    let slot = |seq| {
        Some(Slot {
            seq,
            blob: vec![0x63; 99],
        })
    };
    let only = Header {
        file_id: [7; 16],
        slots: [slot(u64::MAX), None],
    };
    let raw = format::encode_header(1024, &only);
    fuzz_targets::file_header(&raw);
    assert_eq!(
        format::decode_header(1024, &raw),
        Err(FormatError::NoValidSlot)
    );
    let both = Header {
        file_id: [7; 16],
        slots: [slot(u64::MAX), slot(3)],
    };
    let raw = format::encode_header(512, &both);
    fuzz_targets::file_header(&raw);
    let h = format::decode_header(512, &raw).unwrap();
    assert!(h.slots[0].is_none());
    assert_eq!(h.next_slot(), (0, 4));
}

/// audit_line: a chainMac of 64 bytes that are not all ASCII was sliced in
/// pairs and panicked at a character boundary (the fuzzer put U+035D into a
/// real line's MAC); "+f" was also read as the byte 0x0f.
#[test]
fn audit_mac_that_is_not_hex() {
    let line = "{\"eventName\":\"CreateKey\",\"chainSeq\":1,\"chainMac\":\"0a2c60538eacb878863549d6f34fa9032ad9cbe9d787f81\u{35d}43e53483363410c\"}";
    fuzz_targets::audit_line(line.as_bytes());
    assert!(audit::parse_line(line).is_err());
    let plus = format!(
        "{{\"e\":1,\"chainSeq\":1,\"chainMac\":\"+f{}\"}}",
        "0".repeat(62)
    );
    assert!(audit::parse_line(&plus).is_err());
    let good = format!(
        "{{\"e\":1,\"chainSeq\":7,\"chainMac\":\"{}\"}}",
        "0f".repeat(32)
    );
    assert_eq!(audit::parse_line(&good), Ok(7));
}

/// audit_line (`kmsfs audit show --since`): an eventTime whose UTC offset
/// has absurd hours overflowed in `parse_time`. Found reading the code the
/// target reaches; the fuzzer had not hit it in its run.
#[test]
fn audit_time_with_a_huge_offset() {
    let t = "2026-12-01T21:41:21+9999999999999999:00";
    assert_eq!(clock::parse_time(t), None);
    assert_eq!(
        clock::parse_time("2026-12-01T21:41:21-9999999999999999:99"),
        None
    );
    assert_eq!(
        clock::parse_time("2026-12-01T23:41:21+02:00"),
        clock::parse_time("2026-12-01T21:41:21Z")
    );
    let line = format!("{{\"eventTime\":\"{t}\",\"chainSeq\":1,\"chainMac\":\"00\"}}");
    fuzz_targets::audit_line(line.as_bytes());
}
