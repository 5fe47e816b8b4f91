//! Symlinks whose encrypted target does not fit a backing symlink (targets
//! of more than `symlink::MAX_TARGET` bytes, up to PATH_MAX - 1) are stored
//! as encrypted regular files, as device nodes are (devnode.rs): a normal
//! kmsfs file whose key slot is bound to the link's path, so renames,
//! directory renames, exchanges, hard links and crash recovery treat it as
//! the file it is. Its backing length is one no regular kmsfs file can have
//! (two full blocks and one byte: a block always carries at least one byte
//! besides its nonce and tag), and differs from a device node's, so `stat`
//! finds these by size without decrypting every file. An extended attribute
//! on the backing symlink was the other way; ext4 keeps all of a node's
//! attributes in one 4 KiB block, which a 4,095-byte target's blob exceeds.
//!
//! ```text
//! blocks 0 and 1, plaintext (8192 bytes)
//!   0  16  magic "KMSFS-SYMLINK-v1"
//!  16   4  target length, little-endian (1 ..= 4095)
//!  20   .  the target, then zeros
//! then one byte (0) past the blocks
//! ```

use super::format::{BLOCK_SIZE, DISK_BLOCK};

const MAGIC: &[u8; 16] = b"KMSFS-SYMLINK-v1";
const HEAD: usize = 20;
/// What the payload spans: the blocks written at offset 0.
pub const PAYLOAD: usize = 2 * BLOCK_SIZE;
/// PATH_MAX - 1: the longest target symlink(2) accepts.
pub const MAX_TARGET: usize = 4095;

/// The backing length of a long symlink's file.
pub fn backing_len(header_size: usize) -> u64 {
    (header_size + 2 * DISK_BLOCK + 1) as u64
}

/// Whether a regular backing file of `len` bytes may be a long symlink.
pub fn is_candidate(header_size: usize, len: u64) -> bool {
    len == backing_len(header_size)
}

/// The payload's plaintext for `target` (1 ..= MAX_TARGET bytes).
pub fn encode(target: &[u8]) -> zeroize::Zeroizing<Vec<u8>> {
    assert!(
        (1..=MAX_TARGET).contains(&target.len()),
        "long symlink target length"
    );
    let mut b = zeroize::Zeroizing::new(vec![0u8; PAYLOAD]);
    b[..16].copy_from_slice(MAGIC);
    b[16..HEAD].copy_from_slice(&(target.len() as u32).to_le_bytes());
    b[HEAD..HEAD + target.len()].copy_from_slice(target);
    b
}

/// The target from a decrypted payload; `None` for anything else (a damaged
/// regular file of the same length, a length out of range, stray bytes past
/// the target or a NUL in it).
pub fn decode(payload: &[u8]) -> Option<&[u8]> {
    if payload.len() != PAYLOAD || &payload[..16] != MAGIC {
        return None;
    }
    let len = u32::from_le_bytes(payload[16..HEAD].try_into().ok()?) as usize;
    if !(1..=MAX_TARGET).contains(&len) {
        return None;
    }
    let (target, rest) = payload[HEAD..].split_at(len);
    (!target.contains(&0) && rest.iter().all(|&b| b == 0)).then_some(target)
}

/// `st` of a long symlink's backing file, made to show the link: any
/// symlink's mode, and its target's length as its size (as lstat gives).
pub fn show(st: &mut libc::stat, len: u64) {
    st.st_mode = libc::S_IFLNK | 0o777;
    st.st_size = len as i64;
    st.st_rdev = 0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::{devnode, format};

    #[test]
    fn round_trip() {
        for n in [1usize, 2, 3000, 4094, 4095] {
            let t: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            assert_eq!(decode(&encode(&t)), Some(&t[..]), "{n}");
        }
    }

    #[test]
    fn anything_else_is_not_a_long_symlink() {
        assert_eq!(decode(&[0u8; PAYLOAD]), None);
        let mut b = encode(b"abc");
        b[HEAD + 3] = b'x'; // past the stated length
        assert_eq!(decode(&b), None);
        let mut b = encode(b"abc");
        b[HEAD + 1] = 0; // a NUL inside the target
        assert_eq!(decode(&b), None);
        let mut b = encode(b"abc");
        b[16..HEAD].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(decode(&b), None);
        b[16..HEAD].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(decode(&b), None);
        assert_eq!(decode(&encode(b"abc")[..PAYLOAD - 1]), None);
        assert_eq!(decode(&devnode::encode(libc::S_IFCHR, 1)), None);
    }

    #[test]
    fn no_regular_file_or_device_node_has_its_length() {
        let hs = format::DEFAULT_HEADER_SIZE;
        for plain in 0..4 * BLOCK_SIZE as u64 {
            assert_ne!(format::disk_size(hs, plain), backing_len(hs), "{plain}");
        }
        assert!(!devnode::is_candidate(hs, backing_len(hs)));
        assert!(!is_candidate(hs, devnode::backing_len(hs)));
    }

    #[test]
    fn show_makes_a_symlink_of_the_targets_length() {
        // SAFETY: an all-zero stat is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFREG | 0o600;
        show(&mut st, 4000);
        assert_eq!(st.st_mode, libc::S_IFLNK | 0o777);
        assert_eq!(st.st_size, 4000);
    }
}
