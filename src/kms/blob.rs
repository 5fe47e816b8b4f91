//! The ciphertext blob that Encrypt and GenerateDataKey return.
//!
//! It names the key and the material version, so Decrypt needs no key id, and
//! carries a per-blob salt from which a one-time AES key is derived: random
//! 96-bit GCM nonces alone would cap a key version at about 2^32 messages.
//! See docs/ciphertext-blob.md for the byte layout.
//!
//! Parsing is total: any byte string yields a `Blob` or an error, never a panic.

use super::keyref::KeyId;

pub const MAGIC: [u8; 2] = *b"km";
pub const VERSION: u8 = 1;
pub const SALT_LEN: usize = 16;
pub const HEADER_LEN: usize = 2 + 1 + 16 + 4 + SALT_LEN + crate::crypto::NONCE_LEN;
/// Encrypt accepts at most 4096 bytes, so no valid blob is longer than this.
pub const MAX_PLAINTEXT: usize = 4096;
pub const MAX_BLOB_LEN: usize = HEADER_LEN + MAX_PLAINTEXT + crate::crypto::TAG_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_id: KeyId,
    pub material_version: u32,
    pub salt: [u8; SALT_LEN],
    pub nonce: [u8; crate::crypto::NONCE_LEN],
}

impl BlobHeader {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = VERSION;
        h[3..19].copy_from_slice(&self.key_id.0);
        h[19..23].copy_from_slice(&self.material_version.to_be_bytes());
        h[23..39].copy_from_slice(&self.salt);
        h[39..51].copy_from_slice(&self.nonce);
        h
    }
}

/// A parsed blob borrowing the sealed bytes (ciphertext || tag).
#[derive(Debug)]
pub struct Blob<'a> {
    pub header: BlobHeader,
    pub header_bytes: &'a [u8],
    pub sealed: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobError {
    TooShort(usize),
    TooLong(usize),
    BadMagic,
    UnsupportedVersion(u8),
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::TooShort(n) => write!(
                f,
                "ciphertext blob is {n} bytes, shorter than the {} of the smallest valid blob",
                HEADER_LEN + crate::crypto::TAG_LEN
            ),
            BlobError::TooLong(n) => {
                write!(
                    f,
                    "ciphertext blob is {n} bytes, longer than the {MAX_BLOB_LEN} of the largest valid blob"
                )
            }
            BlobError::BadMagic => f.write_str("not a kmsfs ciphertext blob (bad magic bytes)"),
            BlobError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "ciphertext blob format version {v} is not supported by this kmsfs"
                )
            }
        }
    }
}

pub fn parse(bytes: &[u8]) -> Result<Blob<'_>, BlobError> {
    if bytes.len() < HEADER_LEN + crate::crypto::TAG_LEN {
        return Err(BlobError::TooShort(bytes.len()));
    }
    if bytes.len() > MAX_BLOB_LEN {
        return Err(BlobError::TooLong(bytes.len()));
    }
    if bytes[0..2] != MAGIC {
        return Err(BlobError::BadMagic);
    }
    if bytes[2] != VERSION {
        return Err(BlobError::UnsupportedVersion(bytes[2]));
    }
    let (header_bytes, sealed) = bytes.split_at(HEADER_LEN);
    let header = BlobHeader {
        key_id: KeyId(header_bytes[3..19].try_into().expect("16 bytes")),
        material_version: u32::from_be_bytes(header_bytes[19..23].try_into().expect("4 bytes")),
        salt: header_bytes[23..39].try_into().expect("16 bytes"),
        nonce: header_bytes[39..51].try_into().expect("12 bytes"),
    };
    Ok(Blob {
        header,
        header_bytes,
        sealed,
    })
}

/// Builds a blob: the header followed by ciphertext || tag.
pub fn assemble(header: &BlobHeader, sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(sealed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> BlobHeader {
        BlobHeader {
            key_id: KeyId::random(),
            material_version: 7,
            salt: [3; 16],
            nonce: [9; 12],
        }
    }

    #[test]
    fn round_trip() {
        let h = header();
        let b = assemble(&h, &[5u8; 48]);
        let p = parse(&b).unwrap();
        assert_eq!(p.header, h);
        assert_eq!(p.sealed, &[5u8; 48][..]);
        assert_eq!(p.header_bytes, &h.to_bytes()[..]);
    }

    #[test]
    fn rejects_bad_input() {
        let b = assemble(&header(), &[0u8; 16]);
        assert!(matches!(
            parse(&b[..b.len() - 1]),
            Err(BlobError::TooShort(_))
        ));
        let mut m = b.clone();
        m[0] = b'x';
        assert_eq!(parse(&m).unwrap_err(), BlobError::BadMagic);
        let mut v = b.clone();
        v[2] = 9;
        assert_eq!(parse(&v).unwrap_err(), BlobError::UnsupportedVersion(9));
        let long = assemble(&header(), &vec![0u8; MAX_PLAINTEXT + 17]);
        assert!(matches!(parse(&long), Err(BlobError::TooLong(_))));
    }

    proptest! {
        #[test]
        fn parse_is_total(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn round_trip_any(ver in any::<u32>(), salt in any::<[u8; 16]>(), nonce in any::<[u8; 12]>(),
                          body in proptest::collection::vec(any::<u8>(), 16..200)) {
            let h = BlobHeader { key_id: KeyId::random(), material_version: ver, salt, nonce };
            let b = assemble(&h, &body);
            let p = parse(&b).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.sealed, &body[..]);
        }
    }
}
