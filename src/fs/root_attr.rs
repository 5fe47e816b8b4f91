//! The mount root's own mode and owner, kept apart from the cipherdir's.
//!
//! The cipherdir stays private to the daemon (0700), whatever the mount root
//! shows: an admin who shares a mount with `chmod 1777 /mnt` changes this
//! record, never the cipherdir. Stored as `.kmsfs.root` in the cipherdir; like
//! everything there it is read as hostile input: bounded, and only the
//! permission bits are taken.

use super::config::ROOT_ATTR_NAME;
use super::tree::Tree;
use serde::{Deserialize, Serialize};
use std::io;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RootAttr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl RootAttr {
    /// What a new filesystem's root shows: its creator's, 0755.
    pub fn new(uid: u32, gid: u32) -> Self {
        RootAttr {
            mode: 0o755,
            uid,
            gid,
        }
    }

    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let a: RootAttr = serde_json::from_slice(bytes).ok()?;
        Some(RootAttr {
            mode: a.mode & 0o7777,
            ..a
        })
    }

    /// The record in `tree`; a filesystem made before it existed shows what
    /// its cipherdir showed (and the mount says to make the cipherdir
    /// private). A damaged record is an error that names the file.
    pub fn load(tree: &Tree) -> Result<Self, String> {
        let p = format!("{}/{ROOT_ATTR_NAME}", tree.display());
        let bytes = match tree.read_small(ROOT_ATTR_NAME, 4096) {
            Ok(Some(b)) => b,
            Ok(None) => {
                let st = tree
                    .lstat("")
                    .map_err(|e| format!("{}: {e}", tree.display()))?;
                return Ok(RootAttr {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid,
                    gid: st.st_gid,
                });
            }
            Err(e) => return Err(format!("cannot read {p}: {e}")),
        };
        Self::parse(&bytes).ok_or_else(|| {
            format!("{p} is damaged; remove it (the mount root then shows the cipherdir's mode and owner) or write {{\"Mode\":493,\"Uid\":0,\"Gid\":0}} into it")
        })
    }

    pub fn save(&self, tree: &Tree) -> io::Result<()> {
        let bytes = serde_json::to_vec(self).expect("serialises");
        tree.replace(ROOT_ATTR_NAME, &bytes, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_takes_only_permission_bits_and_known_fields() {
        let a = RootAttr::parse(br#"{"Mode":36845,"Uid":5,"Gid":6}"#).unwrap();
        assert_eq!(
            a,
            RootAttr {
                mode: 0o7755,
                uid: 5,
                gid: 6
            }
        );
        assert!(RootAttr::parse(br#"{"Mode":493,"Uid":0}"#).is_none());
        assert!(RootAttr::parse(br#"{"Mode":493,"Uid":0,"Gid":0,"X":1}"#).is_none());
        assert!(RootAttr::parse(b"garbage").is_none());
        let d = tempfile::tempdir().unwrap();
        let t = Tree::open(d.path()).unwrap();
        let a = RootAttr::new(1, 2);
        a.save(&t).unwrap();
        assert_eq!(RootAttr::load(&t).unwrap(), a);
    }
}
