//! Name encryption, pure: one plaintext name in one directory to the name
//! stored in the cipherdir, and back.
//!
//! AES-256-SIV (RFC 5297, RustCrypto's `aes-siv`): deterministic, so a
//! lookup computes the stored name without listing the directory, and
//! misuse-resistant, so equal names reveal only that they are equal, and
//! only within one directory. EME (gocryptfs's choice) has no maintained
//! Rust implementation; SIV also authenticates, which EME does not, so a
//! name edited, or moved in from another directory, fails to decrypt
//! instead of decrypting to garbage.
//!
//! The per-directory tweak is the SIV associated data: the directory's
//! plaintext path inside the mount. Nothing is stored per directory (no
//! `diriv` file two syncing machines could fight over); the price is that a
//! directory rename re-encrypts the names below it (rename_names.rs).
//!
//! ```text
//! stored = base64url_nopad( SIV(16) || CTR-ciphertext(pad16(name)) )
//! AD     = [ "kmsfs-name-v1", directory path ]
//! pad16  = PKCS#7 to a multiple of 16 bytes (lengths leak only to 16)
//! key    = HKDF-SHA256(name key, salt = filesystem id,
//!                      info = "kmsfs names v1 AES-256-SIV"), 64 bytes
//! ```
//!
//! A stored name longer than 255 bytes (plaintext names of 160 bytes and
//! more) cannot be a backing file's name: it is stored as
//! `kmsfs.longname.<base64url(SHA-256(stored))>` beside a side file of that
//! name plus `.name` holding the stored form, as gocryptfs does.

use aes_siv::KeyInit;
use aes_siv::siv::Aes256Siv;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const NAME_AD: &[u8] = b"kmsfs-name-v1";
const JOURNAL_AD: &[u8] = b"kmsfs-journal-v1";
const NAME_INFO: &[u8] = b"kmsfs names v1 AES-256-SIV";
const JOURNAL_INFO: &[u8] = b"kmsfs journal v1 AES-256-SIV";
/// What a sealed journal starts with.
pub const JOURNAL_MAGIC: &[u8] = b"kmsfs-journal-siv1\n";
/// Longest stored name kept as the backing name itself (NAME_MAX).
pub const MAX_SHORT: usize = 255;
/// The prefix of a long name's hashed backing name.
pub const LONG_PREFIX: &str = "kmsfs.longname.";
/// What a long name's side file adds to the hashed name.
pub const SIDE_SUFFIX: &str = ".name";
/// Longest plaintext name (NAME_MAX of the mount).
pub const MAX_NAME: usize = 255;
/// Longest stored form: 16 bytes of SIV and 256 padded bytes, in base64.
pub const MAX_STORED: usize = 363;

/// Why a stored name is not a name of this directory.
#[derive(Debug, PartialEq, Eq)]
pub enum NameError {
    /// Not base64url of a whole number of blocks: never written by kmsfs
    /// (a sync tool's conflict copy, a stray file).
    NotEncrypted,
    /// Well-formed but it does not authenticate here: moved in from another
    /// directory, edited, or made under another key.
    WrongDirectory,
    /// Decrypts, but to something no name may be (bad padding, not UTF-8,
    /// `/`, NUL, `.`, `..`): made with the key by someone else's tool.
    Invalid,
}

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameError::NotEncrypted => "not an encrypted name",
            NameError::WrongDirectory => "does not decrypt in this directory",
            NameError::Invalid => "decrypts to an invalid name",
        })
    }
}

/// The keys, derived once per mount from the name key the KMS unwraps.
pub struct NameCipher {
    names: Zeroizing<[u8; 64]>,
    journal: Zeroizing<[u8; 64]>,
}

impl std::fmt::Debug for NameCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameCipher(..)")
    }
}

fn expand(key: &[u8; 32], salt: &[u8], info: &[u8]) -> Zeroizing<[u8; 64]> {
    let mut out = Zeroizing::new([0u8; 64]);
    hkdf::Hkdf::<Sha256>::new(Some(salt), key)
        .expand(info, out.as_mut())
        .expect("64 bytes is a valid HKDF-SHA256 length");
    out
}

/// Where a name is stored: the backing name, and for a long name the stored
/// form its side file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub raw: String,
    pub side: Option<String>,
}

/// Whether a plaintext name of `len` bytes gets the long form: the stored
/// length follows from the plaintext length alone.
pub fn is_long(len: usize) -> bool {
    stored_len(len) > MAX_SHORT
}

fn stored_len(len: usize) -> usize {
    let bytes = 16 + (len / 16 + 1) * 16;
    (bytes * 4).div_ceil(3)
}

/// The hashed backing name of a long stored form.
pub fn long_name(stored: &str) -> String {
    let h = Sha256::digest(stored.as_bytes());
    format!("{LONG_PREFIX}{}", URL_SAFE_NO_PAD.encode(h))
}

/// Whether `raw` is a long name's hashed form (its side file is `raw.name`).
pub fn is_long_raw(raw: &str) -> bool {
    raw.strip_prefix(LONG_PREFIX)
        .is_some_and(|h| h.len() == 43 && !h.contains('.'))
}

/// Whether `raw` is a long name's side file.
pub fn is_side_raw(raw: &str) -> bool {
    raw.strip_suffix(SIDE_SUFFIX).is_some_and(is_long_raw)
}

/// A name the mount may show: what the kernel could have handed kmsfs.
fn valid_name(n: &[u8]) -> bool {
    !n.is_empty()
        && n.len() <= MAX_NAME
        && n != b"."
        && n != b".."
        && !n.contains(&b'/')
        && !n.contains(&0)
}

impl NameCipher {
    pub fn new(name_key: &[u8; 32], filesystem_id: &str) -> Self {
        NameCipher {
            names: expand(name_key, filesystem_id.as_bytes(), NAME_INFO),
            journal: expand(name_key, filesystem_id.as_bytes(), JOURNAL_INFO),
        }
    }

    fn siv(key: &[u8; 64]) -> Aes256Siv {
        Aes256Siv::new(key.into())
    }

    /// The stored form of `name` in the directory `dir` (base64url).
    pub fn encrypt(&self, dir: &str, name: &str) -> String {
        let n = name.as_bytes();
        let pad = 16 - n.len() % 16;
        let mut p = Zeroizing::new(Vec::with_capacity(n.len() + pad));
        p.extend_from_slice(n);
        p.resize(n.len() + pad, pad as u8);
        let c = Self::siv(&self.names)
            .encrypt([NAME_AD, dir.as_bytes()], &p)
            .expect("SIV encryption of a short name cannot fail");
        URL_SAFE_NO_PAD.encode(c)
    }

    /// Where `name` in `dir` is stored: its stored form, or for a long one
    /// the hashed name and the side file's content.
    pub fn store(&self, dir: &str, name: &str) -> Stored {
        let s = self.encrypt(dir, name);
        if s.len() > MAX_SHORT {
            Stored {
                raw: long_name(&s),
                side: Some(s),
            }
        } else {
            Stored { raw: s, side: None }
        }
    }

    /// The plaintext name of the stored form `stored` in `dir`.
    pub fn decrypt(&self, dir: &str, stored: &str) -> Result<String, NameError> {
        if stored.len() > MAX_STORED {
            return Err(NameError::NotEncrypted);
        }
        let c = URL_SAFE_NO_PAD
            .decode(stored)
            .map_err(|_| NameError::NotEncrypted)?;
        if c.len() < 32 || c.len() % 16 != 0 {
            return Err(NameError::NotEncrypted);
        }
        let p = Zeroizing::new(
            Self::siv(&self.names)
                .decrypt([NAME_AD, dir.as_bytes()], &c)
                .map_err(|_| NameError::WrongDirectory)?,
        );
        let pad = *p.last().ok_or(NameError::Invalid)? as usize;
        if pad == 0 || pad > 16 || p[p.len() - pad..].iter().any(|&b| b as usize != pad) {
            return Err(NameError::Invalid);
        }
        let n = &p[..p.len() - pad];
        if !valid_name(n) {
            return Err(NameError::Invalid);
        }
        String::from_utf8(n.to_vec()).map_err(|_| NameError::Invalid)
    }

    /// The plaintext name of a long name, from its hashed backing name and
    /// its side file's content: the hash must match, so a side file swapped
    /// with another long name's is refused.
    pub fn decrypt_long(&self, dir: &str, raw: &str, side: &str) -> Result<String, NameError> {
        if long_name(side) != raw {
            return Err(NameError::WrongDirectory);
        }
        self.decrypt(dir, side)
    }

    /// The rename journal's bytes, sealed so that it names no path in
    /// plaintext and cannot be forged.
    pub fn seal_journal(&self, json: &[u8]) -> Vec<u8> {
        let c = Self::siv(&self.journal)
            .encrypt([JOURNAL_AD], json)
            .expect("SIV encryption cannot fail");
        [JOURNAL_MAGIC, &c].concat()
    }

    pub fn open_journal(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let c = bytes.strip_prefix(JOURNAL_MAGIC)?;
        Self::siv(&self.journal).decrypt([JOURNAL_AD], c).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::unhex as hex;

    /// RFC 5297 A.1: the primitive as the crate implements it.
    #[test]
    fn rfc5297_deterministic_vector() {
        use aes_siv::siv::Aes128Siv;
        let key = hex("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let ad = hex("101112131415161718191a1b1c1d1e1f2021222324252627");
        let pt = hex("112233445566778899aabbccddee");
        let mut siv = Aes128Siv::new(key.as_slice().into());
        let ct = siv.encrypt([&ad], &pt).unwrap();
        assert_eq!(
            ct,
            hex("85632d07c6e8f37f950acd320a2ecc9340c02b9690c4dc04daef7f6afe5c")
        );
    }

    fn cipher() -> NameCipher {
        NameCipher::new(&[7u8; 32], "fs-test-vector")
    }

    /// kmsfs's own vectors, computed independently with pyca/cryptography
    /// (OpenSSL's AES-SIV and HKDF; the script is in docs/names.md): a
    /// change to the scheme (key derivation, AD, padding, encoding) changes
    /// these and would break every existing cipherdir.
    #[test]
    fn kmsfs_name_vectors() {
        let c = cipher();
        let v = [
            ("", "a"),
            ("", "salaries-2026.xlsx"),
            ("docs/private", "salaries-2026.xlsx"),
        ];
        let got: Vec<String> = v.iter().map(|(d, n)| c.encrypt(d, n)).collect();
        assert_eq!(
            got,
            [
                "8FU3yOkutLEqi3CmHSKePhEUwYqdUbmnXr_PokpvWfk",
                "BkJOt4C7xd6jlCWGja8ujINCgwEPoOOLwFNX8ggVZ4gxVJ9_wB3pTW4KIL7AWmvn",
                "XAWrfssSgRvXr99TZlz_fliAMfXho_jZDSdt4wKjCKHilbITw5E8ZwXMszA60vps",
            ]
        );
        for ((d, n), s) in v.iter().zip(&got) {
            assert_eq!(c.decrypt(d, s).unwrap(), *n);
        }
    }

    #[test]
    fn deterministic_per_directory_and_different_across_directories() {
        let c = cipher();
        assert_eq!(c.encrypt("a", "x.txt"), c.encrypt("a", "x.txt"));
        assert_ne!(c.encrypt("a", "x.txt"), c.encrypt("b", "x.txt"));
        assert_ne!(c.encrypt("a", "x.txt"), c.encrypt("", "x.txt"));
        assert_ne!(c.encrypt("a/b", "c"), c.encrypt("a", "b/c"));
        // Another filesystem id or name key: other names.
        let other = NameCipher::new(&[7u8; 32], "another-fs");
        assert_ne!(c.encrypt("a", "x"), other.encrypt("a", "x"));
        assert_ne!(
            c.encrypt("a", "x"),
            NameCipher::new(&[8u8; 32], "fs-test-vector").encrypt("a", "x")
        );
    }

    #[test]
    fn a_name_from_another_directory_or_edited_does_not_decrypt() {
        let c = cipher();
        let s = c.encrypt("a", "report.pdf");
        assert_eq!(c.decrypt("b", &s), Err(NameError::WrongDirectory));
        let mut edited = s.clone().into_bytes();
        edited[3] = if edited[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            c.decrypt("a", std::str::from_utf8(&edited).unwrap()),
            Err(NameError::WrongDirectory)
        );
        for junk in [
            "report.pdf",
            &format!("{s} (conflicted copy)"),
            &format!("{s}.sync-conflict-20261201-101010-ABCDEFG"),
            "",
            "AAAA",
            &s[..s.len() - 1],
        ] {
            assert_eq!(c.decrypt("a", junk), Err(NameError::NotEncrypted), "{junk}");
        }
        assert_eq!(
            c.decrypt("a", &"A".repeat(MAX_STORED + 1)),
            Err(NameError::NotEncrypted)
        );
    }

    #[test]
    fn stored_names_are_safe_backing_names_and_lengths_leak_only_to_16() {
        let c = cipher();
        for len in 1..=MAX_NAME {
            let n = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let s = c.encrypt("d", &n);
            assert_eq!(s.len(), stored_len(n.len()));
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            let st = c.store("d", &n);
            assert_eq!(st.side.is_some(), is_long(n.len()), "{len}");
            assert!(st.raw.len() <= MAX_SHORT);
            assert!(!st.raw.contains('/') && !st.raw.starts_with('.'));
            let back = match &st.side {
                None => c.decrypt("d", &st.raw),
                Some(side) => c.decrypt_long("d", &st.raw, side),
            };
            assert_eq!(back.unwrap(), n);
        }
        assert_eq!(
            c.encrypt("d", "a").len(),
            c.encrypt("d", "abcdefghijklmno").len()
        );
        assert!(!is_long(159) && is_long(160));
    }

    #[test]
    fn long_names_use_a_hash_and_a_side_file_bound_to_it() {
        let c = cipher();
        let n = "n".repeat(255);
        let st = c.store("dir", &n);
        let side = st.side.clone().unwrap();
        assert!(is_long_raw(&st.raw) && !is_side_raw(&st.raw));
        assert!(is_side_raw(&format!("{}{SIDE_SUFFIX}", st.raw)));
        assert_eq!(st.raw.len(), LONG_PREFIX.len() + 43);
        // Another long name's side file under this hash is refused.
        let other = c.store("dir", &"m".repeat(200)).side.unwrap();
        assert_eq!(
            c.decrypt_long("dir", &st.raw, &other),
            Err(NameError::WrongDirectory)
        );
        assert_eq!(c.decrypt_long("dir", &st.raw, &side).unwrap(), n);
        assert_eq!(
            c.decrypt_long("elsewhere", &st.raw, &side),
            Err(NameError::WrongDirectory)
        );
    }

    #[test]
    fn the_journal_is_sealed() {
        let c = cipher();
        let j = br#"{"op":"rename","from":"secret/a","to":"secret/b"}"#;
        let s = c.seal_journal(j);
        assert!(!s.windows(6).any(|w| w == b"secret"));
        assert_eq!(c.open_journal(&s).unwrap(), j);
        let mut bad = s.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(c.open_journal(&bad), None);
        assert_eq!(c.open_journal(j), None);
        assert_eq!(
            NameCipher::new(&[9u8; 32], "fs-test-vector").open_journal(&s),
            None
        );
    }

    proptest::proptest! {
        #[test]
        fn round_trip(dir in "[a-z/]{0,20}", name in "[^/\u{0}]{1,60}") {
            proptest::prop_assume!(name != "." && name != ".." && name.len() <= MAX_NAME);
            let c = cipher();
            let st = c.store(&dir, &name);
            let back = match &st.side {
                None => c.decrypt(&dir, &st.raw),
                Some(side) => c.decrypt_long(&dir, &st.raw, side),
            };
            proptest::prop_assert_eq!(back.unwrap(), name);
        }
    }
}
