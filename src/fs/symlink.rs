//! Symlink targets are encrypted too: the backing symlink points at
//! `kmsfs1:` + base64url(KMS ciphertext blob of the target), the blob bound to
//! the link's path like a file's data key. The plaintext length follows from
//! the encoded length, so `lstat` needs no KMS call.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const PREFIX: &str = "kmsfs1:";
/// Blob bytes around the plaintext: header + GCM tag.
const BLOB_OVERHEAD: usize = crate::kms::blob::HEADER_LEN + crate::crypto::TAG_LEN;
/// Longest target that still fits a backing symlink (PATH_MAX 4096).
pub const MAX_TARGET: usize = (4095 - PREFIX.len()) * 3 / 4 - BLOB_OVERHEAD;

pub fn encode(blob: &[u8]) -> String {
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(blob))
}

pub fn decode(stored: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(stored).ok()?;
    URL_SAFE_NO_PAD.decode(s.strip_prefix(PREFIX)?).ok()
}

/// The target's plaintext length, from the backing link's length.
pub fn plain_len(stored_len: u64) -> u64 {
    let b64 = stored_len.saturating_sub(PREFIX.len() as u64);
    // b64 * 3 / 4, which overflowed for a huge (hostile) lstat size.
    let bytes = b64 / 4 * 3 + b64 % 4 * 3 / 4;
    bytes.saturating_sub(BLOB_OVERHEAD as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_length() {
        for n in [1usize, 2, 3, 50, 1000] {
            let blob = vec![0xA5; n + BLOB_OVERHEAD];
            let e = encode(&blob);
            assert_eq!(decode(e.as_bytes()).unwrap(), blob);
            assert_eq!(plain_len(e.len() as u64), n as u64);
        }
        assert!(decode(b"/etc/passwd").is_none());
        assert!(encode(&vec![0; MAX_TARGET + BLOB_OVERHEAD]).len() < 4096);
    }
}
