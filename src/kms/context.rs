//! Encryption context: a string map bound to a ciphertext as AAD.
//!
//! The map is canonicalised before use: pairs sorted by key bytes, and every key
//! and value length-prefixed. Without the length prefixes `{"ab":"c"}` and
//! `{"a":"bc"}` would serialise alike and one context would decrypt the other's
//! ciphertext, as happens in emulators that concatenate strings.

use super::error::{KmsError, KmsResult};
use std::collections::BTreeMap;

/// Total bytes of keys and values; AWS documents 8 KiB for the whole context.
pub const MAX_CONTEXT_BYTES: usize = 8192;
const DOMAIN: &[u8] = b"kmsfs-encryption-context-v1";

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct EncryptionContext(BTreeMap<String, String>);

impl EncryptionContext {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        EncryptionContext(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    pub fn insert(&mut self, k: impl Into<String>, v: impl Into<String>) {
        self.0.insert(k.into(), v.into());
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Enforces the limits AWS enforces, with ValidationException.
    pub fn validate(&self) -> KmsResult<()> {
        let mut total = 0usize;
        for (k, v) in &self.0 {
            if k.is_empty() {
                return Err(KmsError::validation(
                    "encryption context keys must not be empty",
                ));
            }
            total += k.len() + v.len();
        }
        if total > MAX_CONTEXT_BYTES {
            return Err(KmsError::validation(format!(
                "encryption context is {total} bytes; at most {MAX_CONTEXT_BYTES} are allowed"
            )));
        }
        Ok(())
    }

    /// The unambiguous byte string that is bound as AAD.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let size: usize = self.0.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
        let mut out = Vec::with_capacity(DOMAIN.len() + 4 + size);
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (k, v) in &self.0 {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    /// Parses the AWS CLI's two spellings: shorthand `k1=v1,k2=v2` or a JSON object.
    pub fn parse_cli(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.starts_with('{') {
            let m: BTreeMap<String, String> = serde_json::from_str(t)
                .map_err(|e| format!("encryption context is not a JSON object of strings: {e}"))?;
            return Ok(EncryptionContext(m));
        }
        let mut m = BTreeMap::new();
        if t.is_empty() {
            return Ok(EncryptionContext(m));
        }
        for pair in t.split(',') {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                format!("encryption context pair {pair:?} is not KEY=VALUE (use JSON for values with commas)")
            })?;
            if m.insert(k.to_string(), v.to_string()).is_some() {
                return Err(format!("encryption context key {k:?} appears twice"));
            }
        }
        Ok(EncryptionContext(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn order_does_not_matter() {
        let a = EncryptionContext::from_pairs([("x", "1"), ("y", "2")]);
        let b = EncryptionContext::from_pairs([("y", "2"), ("x", "1")]);
        assert_eq!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn concatenation_does_not_collide() {
        let a = EncryptionContext::from_pairs([("ab", "c")]);
        let b = EncryptionContext::from_pairs([("a", "bc")]);
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        let c = EncryptionContext::from_pairs([("a", ""), ("b", "")]);
        let d = EncryptionContext::from_pairs([("a", "\0\0\0\0\0\0\0\x01b")]);
        assert_ne!(c.canonical_bytes(), d.canonical_bytes());
    }

    #[test]
    fn case_sensitive() {
        let a = EncryptionContext::from_pairs([("Purpose", "x")]);
        let b = EncryptionContext::from_pairs([("purpose", "x")]);
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn empty_context_is_distinct_from_empty_pair() {
        let a = EncryptionContext::new();
        let b = EncryptionContext::from_pairs([("k", "")]);
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
    }

    #[test]
    fn limits() {
        let big = EncryptionContext::from_pairs([("k", "v".repeat(MAX_CONTEXT_BYTES))]);
        assert!(big.validate().is_err());
        assert!(
            EncryptionContext::from_pairs([("", "v")])
                .validate()
                .is_err()
        );
        let ok = EncryptionContext::from_pairs([("k", "v".repeat(MAX_CONTEXT_BYTES - 1))]);
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn cli_forms() {
        let a = EncryptionContext::parse_cli("purpose=test,team=ops").unwrap();
        let b = EncryptionContext::parse_cli(r#"{"team":"ops","purpose":"test"}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("team"), Some("ops"));
        assert!(EncryptionContext::parse_cli("novalue").is_err());
        assert!(EncryptionContext::parse_cli("a=1,a=2").is_err());
        assert!(EncryptionContext::parse_cli("{\"a\":1}").is_err());
        assert_eq!(
            EncryptionContext::parse_cli("k=a=b").unwrap().get("k"),
            Some("a=b")
        );
    }

    proptest! {
        /// Canonical bytes are injective: different maps never share an encoding,
        /// and permutations of one map always do.
        #[test]
        fn canonical_injective(
            a in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..5),
            b in proptest::collection::btree_map(".{0,6}", ".{0,6}", 0..5),
        ) {
            let ca = EncryptionContext(a.clone()).canonical_bytes();
            let cb = EncryptionContext(b.clone()).canonical_bytes();
            prop_assert_eq!(a == b, ca == cb);
        }

        #[test]
        fn permutation_invariant(pairs in proptest::collection::vec((".{1,6}", ".{0,6}"), 0..6)) {
            let fwd = EncryptionContext::from_pairs(pairs.iter().cloned());
            // Insert in reverse, keeping the first occurrence of each key as BTreeMap would from forward order.
            let mut dedup: BTreeMap<String, String> = BTreeMap::new();
            for (k, v) in &pairs { dedup.insert(k.clone(), v.clone()); }
            let rev = EncryptionContext::from_pairs(dedup.into_iter().rev());
            prop_assert_eq!(fwd.canonical_bytes(), rev.canonical_bytes());
        }
    }
}
