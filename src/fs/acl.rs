//! POSIX ACLs as the kernel passes them (the `system.posix_acl_*` xattr
//! format) and the rules a filesystem applies to them, as ext4 does through
//! the kernel's posix_acl helpers: the mode mirrors the access ACL, chmod
//! updates the ACL, and a directory's default ACL is what new nodes in it
//! start from. With FUSE_POSIX_ACL the kernel enforces ACLs and the
//! filesystem keeps them; these are the keeping rules, pure.
//!
//! ```text
//! u32 version (2), then per entry: u16 tag, u16 perm, u32 id (all LE)
//! tags: USER_OBJ 1, USER 2, GROUP_OBJ 4, GROUP 8, MASK 16, OTHER 32
//! ```

pub const ACCESS: &str = "system.posix_acl_access";
pub const DEFAULT: &str = "system.posix_acl_default";
const VERSION: u32 = 2;
pub const USER_OBJ: u16 = 1;
pub const USER: u16 = 2;
pub const GROUP_OBJ: u16 = 4;
pub const GROUP: u16 = 8;
pub const MASK: u16 = 16;
pub const OTHER: u16 = 32;
/// The kernel's limit on entries in one ACL xattr.
const MAX_ENTRIES: usize = 8191;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub tag: u16,
    pub perm: u16,
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl(pub Vec<Entry>);

impl Acl {
    /// Parses an ACL; `None` for anything the kernel would not have made.
    pub fn decode(raw: &[u8]) -> Option<Acl> {
        if raw.len() < 4 || !(raw.len() - 4).is_multiple_of(8) {
            return None;
        }
        if u32::from_le_bytes(raw[..4].try_into().ok()?) != VERSION {
            return None;
        }
        let n = (raw.len() - 4) / 8;
        if n > MAX_ENTRIES {
            return None;
        }
        let entries: Vec<Entry> = raw[4..]
            .chunks_exact(8)
            .map(|c| Entry {
                tag: u16::from_le_bytes([c[0], c[1]]),
                perm: u16::from_le_bytes([c[2], c[3]]),
                id: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let ok = entries.iter().all(|e| {
            e.perm & !7 == 0 && matches!(e.tag, USER_OBJ | USER | GROUP_OBJ | GROUP | MASK | OTHER)
        });
        let one = |t| entries.iter().filter(|e| e.tag == t).count() == 1;
        (ok && one(USER_OBJ) && one(GROUP_OBJ) && one(OTHER)).then_some(Acl(entries))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        for e in &self.0 {
            out.extend_from_slice(&e.tag.to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    fn get(&self, tag: u16) -> Option<&Entry> {
        self.0.iter().find(|e| e.tag == tag)
    }

    fn get_mut(&mut self, tag: u16) -> Option<&mut Entry> {
        self.0.iter_mut().find(|e| e.tag == tag)
    }

    /// Whether the ACL says no more than a mode does (owner, group,
    /// other): it is then kept as the mode alone.
    pub fn is_mode_only(&self) -> bool {
        self.0
            .iter()
            .all(|e| matches!(e.tag, USER_OBJ | GROUP_OBJ | OTHER))
    }

    /// The permission bits an access ACL stands for: the group bits are
    /// the mask's when there is one.
    pub fn mode_bits(&self) -> u32 {
        let p = |t| self.get(t).map_or(0, |e| e.perm as u32);
        let group = if self.get(MASK).is_some() {
            p(MASK)
        } else {
            p(GROUP_OBJ)
        };
        (p(USER_OBJ) << 6) | (group << 3) | p(OTHER)
    }

    /// chmod of a node with this access ACL: owner and other from the
    /// mode, and the mode's group bits into the mask (or the owning
    /// group's entry when there is no mask).
    pub fn chmod(&mut self, mode: u32) {
        let bits = |shift: u32| ((mode >> shift) & 7) as u16;
        if let Some(e) = self.get_mut(USER_OBJ) {
            e.perm = bits(6);
        }
        if self.get(MASK).is_some() {
            self.get_mut(MASK).expect("present").perm = bits(3);
        } else if let Some(e) = self.get_mut(GROUP_OBJ) {
            e.perm = bits(3);
        }
        if let Some(e) = self.get_mut(OTHER) {
            e.perm = bits(0);
        }
    }

    /// A new node in a directory with this default ACL, asked for with
    /// `mode` (the umask does not apply): its access ACL (`None` when the
    /// mode says it all) and its mode.
    pub fn create_masq(&self, mode: u32) -> (Option<Acl>, u32) {
        let mut acl = self.clone();
        let mut mode = mode;
        let has_mask = acl.get(MASK).is_some();
        for e in acl.0.iter_mut() {
            match e.tag {
                USER_OBJ => {
                    e.perm &= ((mode >> 6) & 7) as u16;
                    mode &= ((e.perm as u32) << 6) | !0o700;
                }
                OTHER => {
                    e.perm &= (mode & 7) as u16;
                    mode &= (e.perm as u32) | !0o7;
                }
                MASK => {
                    e.perm &= ((mode >> 3) & 7) as u16;
                    mode &= ((e.perm as u32) << 3) | !0o70;
                }
                GROUP_OBJ if !has_mask => {
                    e.perm &= ((mode >> 3) & 7) as u16;
                    mode &= ((e.perm as u32) << 3) | !0o70;
                }
                _ => {}
            }
        }
        let keep = (!acl.is_mode_only()).then_some(acl);
        (keep, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(entries: &[(u16, u16, u32)]) -> Acl {
        Acl(entries
            .iter()
            .map(|&(tag, perm, id)| Entry { tag, perm, id })
            .collect())
    }

    #[test]
    fn round_trip_and_refusals() {
        let a = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 4, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 5, 0),
            (OTHER, 0, 0),
        ]);
        assert_eq!(Acl::decode(&a.encode()), Some(a.clone()));
        assert_eq!(a.encode().len(), 4 + 5 * 8);
        assert_eq!(Acl::decode(&[]), None);
        assert_eq!(Acl::decode(&[1, 0, 0, 0]), None, "version 1");
        let mut bad = a.encode();
        bad.pop();
        assert_eq!(Acl::decode(&bad), None);
        assert_eq!(
            Acl::decode(&acl(&[(USER_OBJ, 7, 0), (OTHER, 0, 0)]).encode()),
            None
        );
        assert_eq!(
            Acl::decode(&acl(&[(USER_OBJ, 9, 0), (GROUP_OBJ, 0, 0), (OTHER, 0, 0)]).encode()),
            None
        );
    }

    #[test]
    fn the_mode_follows_the_mask_and_chmod_follows_the_mode() {
        let mut a = acl(&[
            (USER_OBJ, 6, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 4, 0),
            (MASK, 6, 0),
            (OTHER, 4, 0),
        ]);
        assert_eq!(a.mode_bits(), 0o664);
        assert!(!a.is_mode_only());
        a.chmod(0o640);
        assert_eq!(a.mode_bits(), 0o640);
        assert_eq!(
            a.get(MASK).unwrap().perm,
            4,
            "the mask takes the group bits"
        );
        assert_eq!(
            a.get(GROUP_OBJ).unwrap().perm,
            4,
            "the owning group's entry stays"
        );
        assert_eq!(a.get(USER).unwrap().perm, 7, "named entries stay");
        let mut m = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 5, 0), (OTHER, 5, 0)]);
        assert!(m.is_mode_only());
        m.chmod(0o700);
        assert_eq!(m.mode_bits(), 0o700);
    }

    #[test]
    fn new_nodes_start_from_the_default_acl() {
        // setfacl -d -m u:1000:rwx,m:rwx on a directory; a file made 0666.
        let d = acl(&[
            (USER_OBJ, 7, 0),
            (USER, 7, 1000),
            (GROUP_OBJ, 5, 0),
            (MASK, 7, 0),
            (OTHER, 5, 0),
        ]);
        let (a, mode) = d.create_masq(0o100666);
        let a = a.unwrap();
        assert_eq!(mode, 0o100664);
        assert_eq!(a.get(MASK).unwrap().perm, 6);
        assert_eq!(a.get(USER_OBJ).unwrap().perm, 6);
        assert_eq!(
            a.get(USER).unwrap().perm,
            7,
            "named entries are masked, not changed"
        );
        // A default ACL that is only a mode gives no access ACL.
        let plain = acl(&[(USER_OBJ, 7, 0), (GROUP_OBJ, 0, 0), (OTHER, 0, 0)]);
        assert_eq!(plain.create_masq(0o40777), (None, 0o40700));
    }
}
