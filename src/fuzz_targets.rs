//! Fuzz entry points: one function per parser of bytes that kmsfs does not
//! trust (the cipherdir, the KMS home, a caller's documents). Each feeds the
//! input to the real parser, and to what the code does next with a parse that
//! succeeded, and ignores the outcome: none of them may panic, allocate
//! without bound or hang, whatever the bytes.
//!
//! The cargo-fuzz crate in `fuzz/` calls these; `tests/fuzz_corpus.rs`
//! replays the seed corpora (`fuzz/corpus/<name>/`) through them in the
//! normal test suite.

use crate::crypto::{AeadKey, Key256};
use crate::fs::config::Config;
use crate::fs::format::{self, FileId};
use crate::fs::root_attr::RootAttr;
use crate::fs::{rename, symlink};
use crate::kms::context::EncryptionContext;
use crate::kms::grant::{self, Constraints};
use crate::kms::keyref::{self, KeyId, KeyRef};
use crate::kms::policy::{self, NameResolver, Request, Subject};
use crate::kms::{audit, audit_query, blob, keystore};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::sync::OnceLock;

/// A fuzz target: takes any bytes, must never panic.
pub type Target = fn(&[u8]);

/// Every target, by name: the names of `fuzz/fuzz_targets/*.rs` and of the
/// corpus directories.
pub const TARGETS: &[(&str, Target)] = &[
    ("file_header", file_header),
    ("encrypted_block", encrypted_block),
    ("kms_blob", kms_blob),
    ("keystore_envelope", keystore_envelope),
    ("fs_config", fs_config),
    ("key_policy", key_policy),
    ("grant_constraints", grant_constraints),
    ("audit_line", audit_line),
    ("rename_journal", rename_journal),
    ("symlink_target", symlink_target),
    ("root_attr", root_attr),
    ("encryption_context", encryption_context),
    ("key_ref", key_ref),
    ("hard_links", hard_links),
    ("xattr_value", xattr_value),
    ("device_node", device_node),
];

/// A big-endian u64 from the first bytes of `data` (zero-padded).
fn u64_prefix(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_be_bytes(b)
}

/// What the filesystem does with a header it decoded.
fn use_header(header_size: usize, h: &format::Header, data: &[u8]) {
    let order = h.slots_newest_first();
    let _ = h.next_slot();
    for i in order {
        if let Some(s) = &h.slots[i] {
            // The wrapped key goes to the KMS, which parses it as a blob.
            let _ = blob::parse(&s.blob);
        }
    }
    // `stat` sizes from the backing file's length (an st_size: never negative).
    let disk = u64_prefix(data.get(32..).unwrap_or(&[])) & i64::MAX as u64;
    let plain = format::plain_size(header_size, disk);
    let _ = format::disk_size(header_size, plain);
}

/// A file header (`decode_header`) with its two key slots, read as the
/// filesystem reads it with the default header size and with a header size
/// taken from the input's own size field (bytes 10..12), mapped into the
/// range a config may give. Then the same bytes again with the magic, version,
/// size and both slots' torn-write checks made right, so that the slot fields
/// behind the check (sequence number, count, blob length) are reached too.
pub fn file_header(data: &[u8]) {
    if let Ok(h) = format::decode_header(format::DEFAULT_HEADER_SIZE, data) {
        use_header(format::DEFAULT_HEADER_SIZE, &h, data);
    }
    let field = match data {
        [_, _, _, _, _, _, _, _, _, _, a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
        _ => 0,
    };
    let hs = if field >= format::MIN_HEADER_SIZE {
        field
    } else {
        format::MIN_HEADER_SIZE + field
    };
    if let Ok(h) = format::decode_header(hs, data) {
        use_header(hs, &h, data);
    }
    // Structure-aware: a header whose checks hold.
    let mut raw = data.to_vec();
    if raw.len() < hs {
        raw.resize(hs, 0);
    }
    raw[0..8].copy_from_slice(format::MAGIC);
    raw[8..10].copy_from_slice(&format::FORMAT_VERSION.to_be_bytes());
    raw[10..12].copy_from_slice(&(hs as u16).to_be_bytes());
    let file_id: FileId = raw[16..32].try_into().expect("16 bytes");
    let sl = format::slot_len(hs);
    for i in 0..2 {
        let off = format::slot_offset(hs, i);
        let slot = &mut raw[off..off + sl];
        let mut d = Sha256::new();
        d.update(file_id);
        d.update(&slot[..sl - 16]);
        let check = d.finalize();
        slot[sl - 16..].copy_from_slice(&check[..16]);
    }
    if let Ok(h) = format::decode_header(hs, &raw) {
        use_header(hs, &h, data);
    }
}

/// The content key and file id the block target opens blocks with: fixed,
/// so the corpus can hold a block that authenticates.
pub const BLOCK_KEY: [u8; 32] = [0x42; 32];
pub const BLOCK_FILE_ID: FileId = [0x17; 16];

/// An encrypted block (`open_block_in_place`): the first input byte is the
/// block number, the rest the bytes on disk (at most one disk block, as the
/// filesystem reads). Anything but a real block of that file and position,
/// or a hole, must be rejected, never panic.
pub fn encrypted_block(data: &[u8]) {
    static KEY: OnceLock<AeadKey> = OnceLock::new();
    let key = KEY.get_or_init(|| AeadKey::new(&Key256::from_bytes(BLOCK_KEY)));
    let Some((&block, disk)) = data.split_first() else {
        return;
    };
    let mut disk = disk[..disk.len().min(format::DISK_BLOCK)].to_vec();
    let _ = format::open_block_in_place(key, &BLOCK_FILE_ID, block as u64, &mut disk);
}

/// A KMS ciphertext blob (`blob::parse`), as Decrypt and ReEncrypt get it.
pub fn kms_blob(data: &[u8]) {
    if let Ok(b) = blob::parse(data) {
        let _ = b.header.key_id.arn("123456789012");
        let _ = b.header.to_bytes();
    }
}

/// keystore.json (`keystore::parse_envelope`): the envelope, its format and
/// version, the Argon2 bounds and the base64 fields. Argon2 itself is never
/// run: its parameters here are the attacker's.
pub fn keystore_envelope(data: &[u8]) {
    let _ = keystore::parse_envelope(data);
}

/// kmsfs.conf (`Config::parse`), and what the mount reads from a config that
/// parsed: its digest (what the seal covers), flags and seal.
pub fn fs_config(data: &[u8]) {
    if let Ok(c) = Config::parse(data) {
        let _ = c.digest();
        let _ = c.typed_contexts();
        let _ = c.typed_symlinks();
        if let Some(s) = &c.seal
            && let Ok(b) = base64::engine::general_purpose::STANDARD.decode(s)
        {
            let _ = blob::parse(&b);
        }
    }
}

/// A resolver that knows no account: every `user:`/`group:` name is unknown.
struct NoNames;

impl NameResolver for NoNames {
    fn uid(&self, _: &str) -> Option<u32> {
        None
    }
    fn gid(&self, _: &str) -> Option<u32> {
        None
    }
}

/// A key policy (`policy::parse`), on UTF-8 input; a policy that parsed is
/// bound (names resolving to nothing) and evaluated for a few requests.
pub fn key_policy(data: &[u8]) {
    let Ok(doc) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut p) = policy::parse(doc) else {
        return;
    };
    let ids = p.resolve_ids(&NoNames);
    let _ = p.unresolved(&NoNames);
    let subject = Subject {
        uid: 1000,
        gid: 100,
        groups: vec![100, 4],
        account: "111122223333".into(),
        iam: Some("user/alice".into()),
    };
    let ctx = EncryptionContext::from_pairs([("kmsfs:path", "projects/a.txt"), ("Team", "ops")]);
    let ops = ["Decrypt".to_string(), "Encrypt".to_string()];
    for bound in [false, true] {
        if bound {
            p.bind(Some(&ids));
        }
        for (action, context, grant_operations, via_mount) in [
            ("kms:Decrypt", Some(&ctx), None, true),
            ("kms:CreateGrant", None, Some(&ops[..]), false),
            ("kms:SomethingElse", Some(&ctx), None, false),
        ] {
            let _ = p.evaluate(&Request {
                subject: &subject,
                names: &NoNames,
                action,
                resource: "arn:kmsfs:kms:local:123456789012:key/00000000-0000-4000-8000-000000000000",
                context,
                grant_operations,
                via_mount,
            });
        }
    }
}

/// Grant constraints (`Constraints::from_json`), then the validation and
/// matching a grant made from them goes through.
pub fn grant_constraints(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Constraints::from_json(text) else {
        return;
    };
    let _ = grant::validate(&["Decrypt".to_string()], Some(&c));
    let ctx = EncryptionContext::from_pairs([("kmsfs:path", "a")]);
    let _ = grant::constraints_hold(&c, Some(&ctx));
    let _ = grant::constraints_hold(&c, None);
    let _ = serde_json::to_string(&c);
}

/// Audit log lines, as `kmsfs audit verify` reads them (JSON, then the chain
/// fields: `audit::parse_line`) and as `kmsfs audit show` reads them (the
/// filters and the table row). Several lines may come at once.
pub fn audit_line(data: &[u8]) {
    // One criterion each: `matches` stops at the first that fails.
    let filters = [
        audit_query::Filter {
            since: Some(0),
            until: Some(i64::MAX),
            ..Default::default()
        },
        audit_query::Filter {
            key: Some("alias/x".into()),
            ..Default::default()
        },
        audit_query::Filter {
            event: Some("decrypt".into()),
            ..Default::default()
        },
        audit_query::Filter {
            errors_only: true,
            ..Default::default()
        },
        audit_query::Filter {
            uid: Some(0),
            ..Default::default()
        },
        audit_query::Filter {
            path: Some("projects/".into()),
            ..Default::default()
        },
    ];
    for raw in data.split(|&b| b == b'\n') {
        let Ok(line) = std::str::from_utf8(raw) else {
            continue;
        };
        let _ = audit::parse_line(line);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            for f in &filters {
                let _ = f.matches(&v);
            }
            let _ = audit_query::table_row(&v);
        }
    }
}

/// The rename journal (`rename::parse_journal`): JSON, then the checks that
/// decide whether a replay may touch the paths it names.
pub fn rename_journal(data: &[u8]) {
    let _ = rename::parse_journal(data);
}

/// A backing symlink's target (`symlink::decode`), then the blob in it; and
/// `plain_len` on the input's length and on a length from its first bytes
/// (an lstat size from a hostile backing filesystem can be anything).
pub fn symlink_target(data: &[u8]) {
    if let Some(b) = symlink::decode(data) {
        let _ = blob::parse(&b);
    }
    let _ = symlink::plain_len(data.len() as u64);
    let _ = symlink::plain_len(u64_prefix(data));
}

/// The mount root's attribute record (`RootAttr::parse`).
pub fn root_attr(data: &[u8]) {
    let _ = RootAttr::parse(data);
}

/// An encryption context as the CLI takes it (`parse_cli`: shorthand or
/// JSON), then its validation and canonical form.
pub fn encryption_context(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = EncryptionContext::parse_cli(s) {
        let _ = c.validate();
        let _ = c.canonical_bytes();
    }
}

/// A key reference as a caller names a key (`KeyRef::parse`: id, ARN,
/// alias), a bare key id, and an alias name's validation.
pub fn key_ref(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = KeyRef::parse(s, "123456789012");
    let _ = KeyId::parse(s);
    let _ = keyref::validate_alias_name(s, false);
}

/// A file's hard-link entries (`Links::decode`): what decodes must encode
/// back to the same bytes.
pub fn hard_links(data: &[u8]) {
    if let Ok(l) = crate::fs::links::Links::decode(data) {
        assert_eq!(l.encode(), data, "links round-trip");
    }
}

/// A backing attribute value opened as an extended attribute
/// (`XattrKeys::open`), under a fixed key and node, with a name from the
/// first byte.
pub fn xattr_value(data: &[u8]) {
    let keys = crate::fs::xattr::XattrKeys::new(&crate::crypto::Key256::from_bytes([3; 32]));
    let name = format!("user.{}", data.first().copied().unwrap_or(0));
    let _ = keys.open(&[1; 16], &keys.backing_name(&name), data);
}

/// A decrypted block read as a device node (`devnode::decode`).
pub fn device_node(data: &[u8]) {
    let _ = crate::fs::devnode::decode(data);
    let mut block = vec![0u8; crate::fs::format::BLOCK_SIZE];
    let n = data.len().min(block.len());
    block[..n].copy_from_slice(&data[..n]);
    let _ = crate::fs::devnode::decode(&block);
}
