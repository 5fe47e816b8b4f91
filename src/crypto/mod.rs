//! Cryptographic building blocks shared by the KMS core and the filesystem.
//!
//! Everything here works on byte slices and owns no I/O, so each primitive can be
//! tested against known vectors and swapped (e.g. for a faster AEAD) behind one
//! small interface.

pub mod aead;
pub mod kdf;
pub mod random;
pub mod secret;

pub use aead::{AeadKey, NONCE_LEN, TAG_LEN};
pub use secret::{Key256, SecretBytes};

/// Compares secrets (MACs, tokens, check values) without an early exit, so
/// timing does not tell how many leading bytes matched.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex, appended to `out`: on the audit hot path, where `format!`
/// per byte showed up in profiles.
pub fn hex_into(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX_DIGITS[(b >> 4) as usize] as char);
        out.push(HEX_DIGITS[(b & 15) as usize] as char);
    }
}
