//! Types that hold key material.
//!
//! They zeroize on drop and never print their contents: `Debug` shows only the
//! length, so a secret cannot leak through a log line, an error or a panic message.

use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A 256-bit symmetric key.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct Key256([u8; 32]);

impl Key256 {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Key256(bytes)
    }

    /// Copies from a slice; `None` unless it is exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: [u8; 32] = bytes.try_into().ok()?;
        Some(Key256(arr))
    }

    pub fn random() -> Self {
        let mut k = [0u8; 32];
        crate::crypto::random::fill(&mut k);
        Key256(k)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Key256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key256(<redacted>)")
    }
}

/// Variable-length secret bytes (plaintext, data keys of any size).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(v: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(v))
    }

    pub fn random(len: usize) -> Self {
        let mut v = vec![0u8; len];
        crate::crypto::random::fill(&mut v);
        SecretBytes::new(v)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for SecretBytes {
    fn from(v: Vec<u8>) -> Self {
        SecretBytes::new(v)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let k = Key256::from_bytes([0xAB; 32]);
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        let b = SecretBytes::new(vec![0x41; 5]);
        let s = format!("{b:?}");
        assert_eq!(s, "SecretBytes(<5 bytes redacted>)");
    }

    #[test]
    fn from_slice_checks_length() {
        assert!(Key256::from_slice(&[0u8; 31]).is_none());
        assert!(Key256::from_slice(&[0u8; 32]).is_some());
    }
}
