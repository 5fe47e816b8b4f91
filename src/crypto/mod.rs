//! Cryptographic building blocks shared by the KMS core and the filesystem.
//!
//! Everything here works on byte slices and owns no I/O, so each primitive can be
//! tested against known vectors and swapped (e.g. for a faster AEAD) behind one
//! small interface.

pub mod aead;
pub mod kdf;
pub mod memory;
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

/// The bytes of a hex string, for test vectors.
#[cfg(test)]
pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The low `digits` hex digits of `v`, most significant first, zero-padded:
/// `format!("{v:0digits$x}")` without the formatting machinery.
pub fn hex_u64_into(v: u64, digits: usize, out: &mut String) {
    for i in (0..digits).rev() {
        out.push(HEX_DIGITS[((v >> (4 * i)) & 15) as usize] as char);
    }
}

/// Lowercase hex, appended to `out`: on the audit hot path, where `format!`
/// per byte showed up in profiles.
pub fn hex_into(bytes: &[u8], out: &mut String) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX_DIGITS[(b >> 4) as usize] as char);
        out.push(HEX_DIGITS[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_digits_match_format() {
        for (v, d) in [
            (0u64, 3),
            (0xabc, 3),
            (0x1234, 3),
            (u64::MAX, 12),
            (42, 12),
            (7, 1),
        ] {
            let mut s = String::new();
            super::hex_u64_into(v, d, &mut s);
            let want = format!("{:0d$x}", v & ((1u64 << (4 * d)) - 1), d = d);
            assert_eq!(s, want, "{v:x}/{d}");
        }
    }
}
