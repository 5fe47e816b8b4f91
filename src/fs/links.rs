//! Hard links: a data key is bound to one path, so a file with several
//! names carries one wrapped key per name. The header's slots hold the key
//! of the name the file was created under (and what a rename of it writes);
//! every other name has an entry in the backing attribute
//! `user.kmsfs.links`, shared by all names because the backing file is one
//! inode. An entry is a keyed hash of the name's path (no plaintext name
//! in the cipherdir) and the data key wrapped for that path by the KMS:
//! opening by a path that is none of the file's names finds no entry, and
//! an entry copied from another file unwraps a key that opens none of this
//! file's blocks.
//!
//! ```text
//! 0   1  version (1)
//! 1   2  number of entries, little-endian
//! then per entry:
//!     16 tag: HMAC(name key, path) truncated
//!      2 blob length, little-endian
//!      . the KMS ciphertext blob
//! ```
//!
//! The value comes from the hostile cipherdir: it is parsed with every
//! length checked and bounded.

/// The backing attribute holding the entries.
pub const ATTR: &str = "user.kmsfs.links";
/// Most names a file may have beyond the one in its header: EMLINK past
/// it (ext4 keeps a node's attributes in one 4 KiB block).
pub const MAX_ENTRIES: usize = 24;
/// Longest blob an entry may hold.
pub const MAX_BLOB: usize = 1024;
const VERSION: u8 = 1;

pub type Tag = [u8; 16];

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Links {
    pub entries: Vec<(Tag, Vec<u8>)>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadLinks(pub &'static str);

impl Links {
    pub fn decode(raw: &[u8]) -> Result<Links, BadLinks> {
        let (&v, rest) = raw.split_first().ok_or(BadLinks("empty"))?;
        if v != VERSION {
            return Err(BadLinks("unknown version"));
        }
        let n = u16::from_le_bytes(
            rest.get(..2)
                .ok_or(BadLinks("truncated count"))?
                .try_into()
                .expect("2 bytes"),
        ) as usize;
        if n > MAX_ENTRIES {
            return Err(BadLinks("too many entries"));
        }
        let mut at = &rest[2..];
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let tag: Tag = at
                .get(..16)
                .ok_or(BadLinks("truncated tag"))?
                .try_into()
                .expect("16 bytes");
            let len = u16::from_le_bytes(
                at.get(16..18)
                    .ok_or(BadLinks("truncated length"))?
                    .try_into()
                    .expect("2 bytes"),
            ) as usize;
            if len == 0 || len > MAX_BLOB {
                return Err(BadLinks("bad blob length"));
            }
            let blob = at.get(18..18 + len).ok_or(BadLinks("truncated blob"))?;
            if entries.iter().any(|(t, _)| *t == tag) {
                return Err(BadLinks("duplicate entry"));
            }
            entries.push((tag, blob.to_vec()));
            at = &at[18 + len..];
        }
        if !at.is_empty() {
            return Err(BadLinks("trailing bytes"));
        }
        Ok(Links { entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        out.extend_from_slice(&(self.entries.len() as u16).to_le_bytes());
        for (tag, blob) in &self.entries {
            out.extend_from_slice(tag);
            out.extend_from_slice(&(blob.len() as u16).to_le_bytes());
            out.extend_from_slice(blob);
        }
        out
    }

    pub fn get(&self, tag: &Tag) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(t, _)| t == tag)
            .map(|(_, b)| b.as_slice())
    }

    /// Adds or replaces the entry for `tag`; false when the file has as
    /// many names as it may (EMLINK) or the blob is too long.
    pub fn put(&mut self, tag: Tag, blob: Vec<u8>) -> bool {
        if blob.is_empty() || blob.len() > MAX_BLOB {
            return false;
        }
        if let Some(e) = self.entries.iter_mut().find(|(t, _)| *t == tag) {
            e.1 = blob;
            return true;
        }
        if self.entries.len() >= MAX_ENTRIES {
            return false;
        }
        self.entries.push((tag, blob));
        true
    }

    pub fn remove(&mut self, tag: &Tag) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(t, _)| t != tag);
        self.entries.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_put_remove() {
        let mut l = Links::default();
        assert!(l.put([1; 16], vec![9; 100]));
        assert!(l.put([2; 16], vec![8; 50]));
        assert!(l.put([1; 16], vec![7; 10]), "replacing an entry");
        assert_eq!(l.entries.len(), 2);
        let back = Links::decode(&l.encode()).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.get(&[1; 16]), Some(&[7u8; 10][..]));
        assert!(l.remove(&[1; 16]));
        assert!(!l.remove(&[1; 16]));
        assert_eq!(l.get(&[1; 16]), None);
        assert_eq!(
            Links::decode(&Links::default().encode())
                .unwrap()
                .entries
                .len(),
            0
        );
    }

    #[test]
    fn the_limit_is_emlink_not_a_bigger_attribute() {
        let mut l = Links::default();
        for i in 0..MAX_ENTRIES {
            assert!(l.put([i as u8; 16], vec![1; 200]));
        }
        assert!(!l.put([0xff; 16], vec![1; 200]));
        assert!(!l.put([0xfe; 16], vec![]));
        assert!(l.encode().len() < 8192);
    }

    #[test]
    fn hostile_bytes_are_refused() {
        let good = {
            let mut l = Links::default();
            l.put([3; 16], vec![5; 20]);
            l.encode()
        };
        assert_eq!(Links::decode(&[]), Err(BadLinks("empty")));
        assert_eq!(Links::decode(&[2, 0, 0]), Err(BadLinks("unknown version")));
        for cut in 1..good.len() {
            assert!(Links::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert_eq!(Links::decode(&long), Err(BadLinks("trailing bytes")));
        let mut many = good.clone();
        many[1..3].copy_from_slice(&1000u16.to_le_bytes());
        assert_eq!(Links::decode(&many), Err(BadLinks("too many entries")));
        let dup = Links {
            entries: vec![([1; 16], vec![1]), ([1; 16], vec![2])],
        };
        assert_eq!(
            Links::decode(&dup.encode()),
            Err(BadLinks("duplicate entry"))
        );
    }
}
