//! Unwrapped data keys of a remote KMS, kept for a bounded age and number
//! of uses (the AWS Encryption SDK's caching model), so that opening a file
//! again does not cost a round trip to the KMS each time. A policy change,
//! a disabled key or a revoked grant at the remote KMS therefore applies to
//! a file already opened within the last `max_age`, and to every other at
//! once. Each hit is recorded in the mount's local audit log (cache.rs's
//! caller writes it), as AWS's CloudTrail never sees it.

use crate::crypto::Key256;
use crate::kms::EncryptionContext;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries kept at most; past it, expired ones go, then everything.
const MAX_ENTRIES: usize = 65_536;

pub struct KeyCache {
    max_age: Duration,
    max_uses: u32,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

struct Entry {
    key: Key256,
    made: Instant,
    uses: u32,
}

/// What a blob and its context are cached under: a hash, so the map holds
/// neither (and a blob under another context is another entry).
pub fn slot(blob: &[u8], ctx: &EncryptionContext) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((blob.len() as u64).to_le_bytes());
    h.update(blob);
    h.update(ctx.canonical_bytes());
    h.finalize().into()
}

impl KeyCache {
    /// `None` when caching is off (`max_age` zero).
    pub fn new(max_age: Duration, max_uses: u32) -> Option<KeyCache> {
        (!max_age.is_zero() && max_uses > 0).then(|| KeyCache {
            max_age,
            max_uses,
            entries: Mutex::new(HashMap::new()),
        })
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// The key for `blob` under `ctx`, if unwrapped within `max_age` and
    /// used fewer than `max_uses` times; counts the use.
    /// `slot` is [`slot`] of the blob and its context.
    pub fn get(&self, k: [u8; 32], now: Instant) -> Option<Key256> {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.get_mut(&k)?;
        if now.duration_since(e.made) >= self.max_age || e.uses >= self.max_uses {
            m.remove(&k);
            return None;
        }
        e.uses += 1;
        Some(e.key.clone())
    }

    /// Whether a key for `slot` is kept and still usable (not counted as a
    /// use): readahead skips those.
    pub fn holds(&self, k: [u8; 32], now: Instant) -> bool {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k)
            .is_some_and(|e| now.duration_since(e.made) < self.max_age && e.uses < self.max_uses)
    }

    pub fn put(&self, k: [u8; 32], key: &Key256, now: Instant) {
        let mut m = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_ENTRIES {
            let age = self.max_age;
            m.retain(|_, e| now.duration_since(e.made) < age);
            if m.len() >= MAX_ENTRIES {
                m.clear();
            }
        }
        m.insert(
            k,
            Entry {
                key: key.clone(),
                made: now,
                uses: 0,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_by_age_and_by_uses_and_are_bound_to_their_context() {
        let c = KeyCache::new(Duration::from_secs(5), 2).unwrap();
        let (ctx, other) = (
            EncryptionContext::from_pairs([("kmsfs:path", "a")]),
            EncryptionContext::from_pairs([("kmsfs:path", "b")]),
        );
        let key = Key256::from_bytes([9; 32]);
        let t0 = Instant::now();
        assert!(c.get(slot(b"blob", &ctx), t0).is_none());
        c.put(slot(b"blob", &ctx), &key, t0);
        assert!(
            c.get(slot(b"blob", &other), t0).is_none(),
            "another path is another entry"
        );
        assert!(c.get(slot(b"blob2", &ctx), t0).is_none());
        assert!(c.get(slot(b"blob", &ctx), t0 + Duration::from_secs(1)) == Some(key.clone()));
        assert!(c.get(slot(b"blob", &ctx), t0 + Duration::from_secs(2)) == Some(key.clone()));
        assert!(
            c.get(slot(b"blob", &ctx), t0 + Duration::from_secs(3))
                .is_none(),
            "two uses, then gone"
        );
        c.put(slot(b"blob", &ctx), &key, t0);
        assert!(
            c.get(slot(b"blob", &ctx), t0 + Duration::from_secs(5))
                .is_none(),
            "five seconds old"
        );
        assert!(
            KeyCache::new(Duration::ZERO, 10).is_none(),
            "zero age is off"
        );
    }
}
