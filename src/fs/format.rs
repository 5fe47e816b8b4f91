//! The on-disk file format (docs/file-format.md), as pure functions over byte
//! slices: the fixed-size header with two key slots, the encrypted block
//! layout, and the size arithmetic that lets `stat` work without decrypting.
//!
//! ```text
//! header (HEADER_SIZE bytes, fixed per filesystem)
//!   0   8  magic "KMSFS\0v1"
//!   8   2  format version (1)
//!  10   2  header size
//!  12   4  reserved (0)
//!  16  16  file id (random, never rewritten)
//!  32   .  slot A, slot B (each (HEADER_SIZE - 32) / 2 bytes)
//! slot
//!   0   8  sequence number (0 = empty)
//!   8   1  number of wrapped keys (1 in this version)
//!   9   2  length of the wrapped key (a KMS ciphertext blob)
//!  11   .  the blob, zero padded
//! end-16 16 SHA-256(file id || slot[..end-16]) truncated: detects a torn write
//! block i (at HEADER_SIZE + i * (BLOCK + 28))
//!   nonce(12) || AES-256-GCM(content key, plaintext block, AAD = file id || i) || tag(16)
//! ```
//!
//! Rewriting the wrapped key (rename) writes the slot that is not current with
//! a higher sequence number, so a torn write leaves the other slot intact.

use crate::crypto::{AeadKey, Key256, NONCE_LEN, TAG_LEN};
use sha2::{Digest, Sha256};

pub const MAGIC: &[u8; 8] = b"KMSFS\0v1";
pub const FORMAT_VERSION: u16 = 1;
pub const DEFAULT_HEADER_SIZE: usize = 512;
pub const MIN_HEADER_SIZE: usize = 32 + 2 * SLOT_MIN;
const SLOT_MIN: usize = 11 + 160 + 16;
pub const BLOCK_SIZE: usize = 4096;
pub const BLOCK_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
pub const DISK_BLOCK: usize = BLOCK_SIZE + BLOCK_OVERHEAD;
const SLOT_CHECK: usize = 16;
const CONTENT_INFO: &[u8] = b"kmsfs content key v1 AES-256-GCM";

pub type FileId = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    TooShort,
    BadMagic,
    UnsupportedVersion(u16),
    HeaderSizeMismatch(u16),
    NoValidSlot,
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FormatError::TooShort => f.write_str("file is shorter than its header"),
            FormatError::BadMagic => f.write_str("header magic is wrong: not a kmsfs file"),
            FormatError::UnsupportedVersion(v) => {
                write!(f, "file format version {v} is not supported")
            }
            FormatError::HeaderSizeMismatch(s) => {
                write!(f, "header size {s} differs from the filesystem's")
            }
            FormatError::NoValidSlot => f.write_str("neither key slot of the header is intact"),
        }
    }
}

/// One key slot as read from disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    pub blob: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub file_id: FileId,
    /// Slot A and slot B; `None` where a slot is empty or torn.
    pub slots: [Option<Slot>; 2],
}

pub fn slot_len(header_size: usize) -> usize {
    (header_size - 32) / 2
}

/// The largest wrapped key a slot holds.
pub fn max_blob_len(header_size: usize) -> usize {
    slot_len(header_size) - 11 - SLOT_CHECK
}

fn slot_check(file_id: &FileId, body: &[u8]) -> [u8; SLOT_CHECK] {
    let mut h = Sha256::new();
    h.update(file_id);
    h.update(body);
    let d = h.finalize();
    let mut out = [0u8; SLOT_CHECK];
    out.copy_from_slice(&d[..SLOT_CHECK]);
    out
}

/// Encodes slot `s` (None = an empty, invalid slot).
pub fn encode_slot(header_size: usize, file_id: &FileId, s: Option<&Slot>) -> Vec<u8> {
    let len = slot_len(header_size);
    let mut out = vec![0u8; len];
    if let Some(s) = s {
        assert!(
            s.blob.len() <= max_blob_len(header_size),
            "wrapped key larger than the slot"
        );
        out[0..8].copy_from_slice(&s.seq.to_be_bytes());
        out[8] = 1;
        out[9..11].copy_from_slice(&(s.blob.len() as u16).to_be_bytes());
        out[11..11 + s.blob.len()].copy_from_slice(&s.blob);
        let check = slot_check(file_id, &out[..len - SLOT_CHECK]);
        out[len - SLOT_CHECK..].copy_from_slice(&check);
    }
    out
}

fn decode_slot(file_id: &FileId, raw: &[u8]) -> Option<Slot> {
    let len = raw.len();
    let seq = u64::from_be_bytes(raw[0..8].try_into().ok()?);
    // u64::MAX has no successor for `next_slot`: kmsfs never writes it.
    if seq == 0 || seq == u64::MAX || raw[8] != 1 {
        return None;
    }
    if slot_check(file_id, &raw[..len - SLOT_CHECK])[..] != raw[len - SLOT_CHECK..] {
        return None;
    }
    let blen = u16::from_be_bytes(raw[9..11].try_into().ok()?) as usize;
    if blen > len - 11 - SLOT_CHECK {
        return None;
    }
    Some(Slot {
        seq,
        blob: raw[11..11 + blen].to_vec(),
    })
}

/// Byte offset of slot `i` (0 = A, 1 = B).
pub fn slot_offset(header_size: usize, i: usize) -> usize {
    32 + i * slot_len(header_size)
}

pub fn encode_header(header_size: usize, h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_size);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(header_size as u16).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&h.file_id);
    for s in &h.slots {
        out.extend_from_slice(&encode_slot(header_size, &h.file_id, s.as_ref()));
    }
    out.resize(header_size, 0);
    out
}

/// Parses a header; total over arbitrary bytes.
pub fn decode_header(header_size: usize, raw: &[u8]) -> Result<Header, FormatError> {
    if raw.len() < header_size || header_size < MIN_HEADER_SIZE {
        return Err(FormatError::TooShort);
    }
    if &raw[0..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u16::from_be_bytes([raw[8], raw[9]]);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    let hs = u16::from_be_bytes([raw[10], raw[11]]);
    if hs as usize != header_size {
        return Err(FormatError::HeaderSizeMismatch(hs));
    }
    let file_id: FileId = raw[16..32].try_into().expect("16 bytes");
    let sl = slot_len(header_size);
    let a = decode_slot(&file_id, &raw[32..32 + sl]);
    let b = decode_slot(&file_id, &raw[32 + sl..32 + 2 * sl]);
    if a.is_none() && b.is_none() {
        return Err(FormatError::NoValidSlot);
    }
    Ok(Header {
        file_id,
        slots: [a, b],
    })
}

impl Header {
    /// Slot indices, newest first.
    pub fn slots_newest_first(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..2).filter(|&i| self.slots[i].is_some()).collect();
        v.sort_by_key(|&i| std::cmp::Reverse(self.slots[i].as_ref().map_or(0, |s| s.seq)));
        v
    }

    /// The slot to overwrite next (the older or empty one) and its sequence number.
    pub fn next_slot(&self) -> (usize, u64) {
        let order = self.slots_newest_first();
        let newest = order
            .first()
            .and_then(|&i| self.slots[i].as_ref())
            .map_or(0, |s| s.seq);
        let target = match order.first() {
            Some(&i) => 1 - i,
            None => 0,
        };
        (target, newest + 1)
    }
}

/// Plaintext size of a file whose backing file is `disk` bytes: no decryption.
/// A trailing fragment too short to hold a block's nonce and tag (a file cut
/// mid-block) counts as one byte, so that reading it fails instead of the file
/// silently looking shorter.
pub fn plain_size(header_size: usize, disk: u64) -> u64 {
    if disk <= header_size as u64 {
        return 0;
    }
    let body = disk - header_size as u64;
    let full = body / DISK_BLOCK as u64;
    let rem = body % DISK_BLOCK as u64;
    let tail = match rem {
        0 => 0,
        r if r <= BLOCK_OVERHEAD as u64 => 1,
        r => r - BLOCK_OVERHEAD as u64,
    };
    full * BLOCK_SIZE as u64 + tail
}

/// Backing-file size for a plaintext size.
pub fn disk_size(header_size: usize, plain: u64) -> u64 {
    let full = plain / BLOCK_SIZE as u64;
    let rem = plain % BLOCK_SIZE as u64;
    header_size as u64
        + full * DISK_BLOCK as u64
        + if rem > 0 {
            rem + BLOCK_OVERHEAD as u64
        } else {
            0
        }
}

pub fn block_offset(header_size: usize, block: u64) -> u64 {
    header_size as u64 + block * DISK_BLOCK as u64
}

/// Per-file content key: HKDF(data key, salt = file id).
pub fn content_key(data_key: &Key256, file_id: &FileId) -> Key256 {
    crate::crypto::kdf::hkdf256(data_key.as_bytes(), file_id, CONTENT_INFO)
}

fn block_aad(file_id: &FileId, block: u64) -> [u8; 24] {
    let mut aad = [0u8; 24];
    aad[..16].copy_from_slice(file_id);
    aad[16..].copy_from_slice(&block.to_be_bytes());
    aad
}

/// Encrypts `plain` (at most BLOCK_SIZE bytes) as block number `block` with a
/// fresh random `nonce`, appending nonce || ciphertext || tag to `out`.
pub fn seal_block(
    key: &AeadKey,
    file_id: &FileId,
    block: u64,
    plain: &[u8],
    nonce: &[u8; NONCE_LEN],
    out: &mut Vec<u8>,
) {
    debug_assert!(plain.len() <= BLOCK_SIZE && !plain.is_empty());
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plain);
    let tag = key.seal_in_place(nonce, &block_aad(file_id, block), &mut out[start..]);
    out.extend_from_slice(&tag);
}

#[derive(Debug, PartialEq, Eq)]
pub enum BlockError {
    /// Shorter than nonce + tag: a truncated file.
    Truncated,
    /// Authentication failed: modified, moved or swapped.
    Corrupt,
}

/// Decrypts one on-disk block in place: afterwards the plaintext sits after
/// the 12-byte nonce. An all-zero full block is a hole: it is left as zeros.
pub fn open_block_in_place(
    key: &AeadKey,
    file_id: &FileId,
    block: u64,
    disk: &mut [u8],
) -> Result<(), BlockError> {
    if disk.len() <= BLOCK_OVERHEAD {
        return Err(BlockError::Truncated);
    }
    if disk.len() == DISK_BLOCK && disk.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let n = disk.len();
    let nonce: [u8; NONCE_LEN] = disk[..NONCE_LEN].try_into().expect("nonce");
    let tag: [u8; TAG_LEN] = disk[n - TAG_LEN..].try_into().expect("tag");
    key.open_in_place(
        &nonce,
        &block_aad(file_id, block),
        &mut disk[NONCE_LEN..n - TAG_LEN],
        &tag,
    )
    .map_err(|_| BlockError::Corrupt)
}

/// The length of the prefix of a last block that fails authentication which
/// authenticates as block `block`, if one does: the trace of a shrink that a
/// crash interrupted. A shrink into the middle of a block writes the shorter
/// block over the start of the old one before it cuts the file (see
/// `CryptFile::truncate`), so a crash between the two leaves the new block
/// followed by the old one's tail. Only a block sealed under this file's key
/// for this position can authenticate, so accepting it grants an attacker
/// nothing beyond what block rollback and a cut at a block boundary, which
/// the format does not detect, already do. Tries every length (about 8 MB
/// of AES-GCM, a few milliseconds): only reached when a read already failed.
pub fn authentic_prefix(key: &AeadKey, file_id: &FileId, block: u64, disk: &[u8]) -> Option<usize> {
    if disk.len() <= BLOCK_OVERHEAD {
        return None;
    }
    let aad = block_aad(file_id, block);
    let nonce: [u8; NONCE_LEN] = disk[..NONCE_LEN].try_into().expect("nonce");
    let mut scratch = zeroize::Zeroizing::new(vec![0u8; disk.len()]);
    (BLOCK_OVERHEAD + 1..disk.len().min(DISK_BLOCK + 1))
        .rev()
        .find(|&n| {
            let tag: [u8; TAG_LEN] = disk[n - TAG_LEN..n].try_into().expect("tag");
            let body = &mut scratch[..n - BLOCK_OVERHEAD];
            body.copy_from_slice(&disk[NONCE_LEN..n - TAG_LEN]);
            key.open_in_place(&nonce, &aad, body, &tag).is_ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: usize = DEFAULT_HEADER_SIZE;

    fn header() -> Header {
        Header {
            file_id: [7; 16],
            slots: [
                Some(Slot {
                    seq: 1,
                    blob: vec![9; 99],
                }),
                None,
            ],
        }
    }

    #[test]
    fn header_round_trip_and_slot_rotation() {
        let h = header();
        let raw = encode_header(H, &h);
        assert_eq!(raw.len(), H);
        assert_eq!(decode_header(H, &raw).unwrap(), h);
        assert_eq!(h.next_slot(), (1, 2));
        let mut h2 = h.clone();
        h2.slots[1] = Some(Slot {
            seq: 2,
            blob: vec![1; 50],
        });
        assert_eq!(h2.slots_newest_first(), vec![1, 0]);
        assert_eq!(h2.next_slot(), (0, 3));
    }

    #[test]
    fn torn_slot_falls_back_to_the_other() {
        let mut h = header();
        h.slots[1] = Some(Slot {
            seq: 2,
            blob: vec![1; 50],
        });
        let mut raw = encode_header(H, &h);
        raw[slot_offset(H, 1) + 20] ^= 1; // torn write in slot B
        let d = decode_header(H, &raw).unwrap();
        assert!(d.slots[1].is_none());
        assert_eq!(d.slots[0].as_ref().unwrap().seq, 1);
        raw[slot_offset(H, 0) + 20] ^= 1;
        assert_eq!(
            decode_header(H, &raw).unwrap_err(),
            FormatError::NoValidSlot
        );
    }

    #[test]
    fn header_errors() {
        let raw = encode_header(H, &header());
        assert_eq!(
            decode_header(H, &raw[..100]).unwrap_err(),
            FormatError::TooShort
        );
        let mut m = raw.clone();
        m[0] = b'X';
        assert_eq!(decode_header(H, &m).unwrap_err(), FormatError::BadMagic);
        let mut v = raw.clone();
        v[9] = 9;
        assert_eq!(
            decode_header(H, &v).unwrap_err(),
            FormatError::UnsupportedVersion(9)
        );
        assert!(matches!(
            decode_header(1024, &[raw.clone(), vec![0; 512]].concat()),
            Err(FormatError::HeaderSizeMismatch(512))
        ));
    }

    #[test]
    fn size_arithmetic() {
        assert_eq!(plain_size(H, 0), 0);
        assert_eq!(plain_size(H, H as u64), 0);
        for p in [0u64, 1, 4095, 4096, 4097, 8192, 1_000_000] {
            assert_eq!(plain_size(H, disk_size(H, p)), p, "{p}");
        }
        assert_eq!(disk_size(H, 1), H as u64 + 29);
        // A fragment of 28 bytes or fewer cannot hold data: it shows as one
        // byte, whose read fails.
        assert_eq!(plain_size(H, H as u64 + 28), 1);
        assert_eq!(plain_size(H, H as u64 + 29), 1);
    }

    #[test]
    fn blocks_bind_file_and_position() {
        let key = AeadKey::new(&Key256::from_bytes([3; 32]));
        let id = [1u8; 16];
        let mut disk = vec![];
        seal_block(&key, &id, 5, b"hello", &[9; NONCE_LEN], &mut disk);
        let open = |id: &FileId, b: u64, d: &[u8]| {
            let mut d = d.to_vec();
            open_block_in_place(&key, id, b, &mut d)
                .map(|_| d[NONCE_LEN..d.len() - TAG_LEN].to_vec())
        };
        assert_eq!(open(&id, 5, &disk).unwrap(), b"hello");
        assert_eq!(open(&id, 6, &disk), Err(BlockError::Corrupt));
        assert_eq!(open(&[2; 16], 5, &disk), Err(BlockError::Corrupt));
        let mut t = disk.clone();
        t[13] ^= 1;
        assert_eq!(open(&id, 5, &t), Err(BlockError::Corrupt));
        assert_eq!(open(&id, 5, &disk[..20]), Err(BlockError::Truncated));
        let hole = vec![0u8; DISK_BLOCK];
        assert_eq!(open(&id, 0, &hole).unwrap(), vec![0u8; BLOCK_SIZE]);
    }

    #[test]
    fn blob_fits_in_slot() {
        // A kmsfs blob for a 32-byte data key is 99 bytes.
        assert!(max_blob_len(H) >= 99 + 60);
    }

    proptest! {
        #[test]
        fn decode_header_is_total(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_header(H, &raw);
        }
    }
}
