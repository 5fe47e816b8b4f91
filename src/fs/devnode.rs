//! Device nodes made through the mount are stored as encrypted regular
//! files, so the cipherdir never holds a node that opens a device (a
//! restored backup or a synced folder could otherwise carry one onto any
//! machine). The backing file is a normal kmsfs file (header, key slot
//! bound to its path) whose one block holds the node's type and number,
//! followed by one byte: a length no regular kmsfs file can have (a block
//! always carries at least one byte besides its 28 of nonce and tag), so
//! `stat` finds device nodes by size without decrypting every file.
//!
//! ```text
//! block 0 plaintext (4096 bytes)
//!   0  16  magic "KMSFS-DEVICE-v1\0"
//!  16   4  file type bits (S_IFCHR or S_IFBLK), little-endian
//!  20   8  rdev, little-endian
//!  28   .  zeros
//! then one byte (0) past the block
//! ```

use super::format::{BLOCK_SIZE, DISK_BLOCK};

const MAGIC: &[u8; 16] = b"KMSFS-DEVICE-v1\0";

/// The backing length of a device node's file.
pub fn backing_len(header_size: usize) -> u64 {
    (header_size + DISK_BLOCK + 1) as u64
}

/// Whether a regular backing file of `len` bytes may be a device node.
pub fn is_candidate(header_size: usize, len: u64) -> bool {
    len == backing_len(header_size)
}

/// The block's plaintext for a device of type `kind` (S_IFCHR, S_IFBLK).
pub fn encode(kind: u32, rdev: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    b[..16].copy_from_slice(MAGIC);
    b[16..20].copy_from_slice(&kind.to_le_bytes());
    b[20..28].copy_from_slice(&rdev.to_le_bytes());
    b
}

/// The type and number of a device node from its decrypted block; `None`
/// for anything else (a damaged regular file of the same length).
pub fn decode(block: &[u8]) -> Option<(u32, u64)> {
    if block.len() != BLOCK_SIZE || &block[..16] != MAGIC || block[28..].iter().any(|&b| b != 0) {
        return None;
    }
    let kind = u32::from_le_bytes(block[16..20].try_into().ok()?);
    let rdev = u64::from_le_bytes(block[20..28].try_into().ok()?);
    matches!(kind, libc::S_IFCHR | libc::S_IFBLK).then_some((kind, rdev))
}

/// What each device node's file decrypted to, keyed by backing inode and
/// valid while its ctime stands (any change to the file moves it): `stat`
/// of a device node then costs no KMS call after the first.
#[derive(Default)]
pub struct DeviceCache {
    known: std::sync::Mutex<std::collections::HashMap<(u64, u64), Known>>,
}

#[derive(Clone, Copy)]
struct Known {
    ctime: (i64, i64),
    kind: u32,
    rdev: u64,
}

impl DeviceCache {
    fn key(st: &libc::stat) -> (u64, u64) {
        (st.st_dev, st.st_ino)
    }

    pub fn get(&self, st: &libc::stat) -> Option<(u32, u64)> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(&Self::key(st))
            .filter(|k| k.ctime == (st.st_ctime, st.st_ctime_nsec))
            .map(|k| (k.kind, k.rdev))
    }

    pub fn put(&self, st: &libc::stat, kind: u32, rdev: u64) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: device nodes are few; a tree of thousands is forgotten
        // rather than kept forever.
        if known.len() >= 4096 {
            known.clear();
        }
        known.insert(
            Self::key(st),
            Known {
                ctime: (st.st_ctime, st.st_ctime_nsec),
                kind,
                rdev,
            },
        );
    }
}

/// `st` of a device node's backing file, made to show the node.
pub fn show(st: &mut libc::stat, kind: u32, rdev: u64) {
    st.st_mode = kind | (st.st_mode & 0o7777);
    st.st_rdev = rdev;
    st.st_size = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::format;

    #[test]
    fn round_trip() {
        for (k, r) in [(libc::S_IFCHR, 0x0103u64), (libc::S_IFBLK, u64::MAX)] {
            assert_eq!(decode(&encode(k, r)), Some((k, r)));
        }
    }

    #[test]
    fn anything_else_is_not_a_device() {
        assert_eq!(decode(&[0u8; BLOCK_SIZE]), None);
        let mut b = encode(libc::S_IFCHR, 1);
        b[100] = 1;
        assert_eq!(decode(&b), None);
        let b = encode(libc::S_IFREG, 1);
        assert_eq!(decode(&b), None);
        assert_eq!(decode(&encode(libc::S_IFCHR, 1)[..100]), None);
    }

    #[test]
    fn no_regular_file_has_a_device_nodes_length() {
        let hs = format::DEFAULT_HEADER_SIZE;
        for plain in [0u64, 1, 4095, 4096, 4097, 8192, 1 << 20] {
            assert!(!is_candidate(hs, format::disk_size(hs, plain)), "{plain}");
        }
        // Every length around it: a device node's is never a regular one's.
        for plain in 0..3 * BLOCK_SIZE as u64 {
            assert_ne!(format::disk_size(hs, plain), backing_len(hs));
        }
    }
}
