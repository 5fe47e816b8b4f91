//! Extended attributes, as stored in the backing filesystem's own xattrs:
//! pure naming and sealing (xattr_store.rs does the I/O).
//!
//! Every attribute of a node becomes one backing attribute
//! `user.kmsfs.x.<tag>`, where the tag is a keyed hash of the attribute's
//! name (so the cipherdir shows neither names nor values), and whose value
//! is `nonce || AES-256-GCM(name length || name || value)`. The
//! authenticated data binds it to the node (its file id, or a directory's
//! random id) and to its tag, so a value copied to another file or
//! attribute fails to open. The keys come from one per-filesystem secret
//! the KMS protects (`.kmsfs.xattr-key`, a blob under the CMK with its own
//! encryption context).

use crate::crypto::{AeadKey, Key256, NONCE_LEN, TAG_LEN, kdf};
use base64::Engine;

/// Prefix of the backing attributes holding user-visible ones.
pub const PREFIX: &str = "user.kmsfs.x.";
/// A directory's random id, what its attributes are bound to.
pub const DIR_ID: &str = "user.kmsfs.id";
/// The largest value the kernel passes (XATTR_SIZE_MAX).
pub const MAX_VALUE: usize = 65536;
const AAD_LABEL: &[u8] = b"kmsfs-xattr-v1\0";

/// What a node's attributes are bound to: a regular file's id from its
/// header, or a directory's `DIR_ID`.
pub type NodeId = [u8; 16];

pub struct XattrKeys {
    names: Key256,
    values: AeadKey,
}

impl XattrKeys {
    pub fn new(secret: &Key256) -> Self {
        let names = kdf::hkdf256(secret.as_bytes(), b"", b"kmsfs xattr names v1");
        let values = kdf::hkdf256(secret.as_bytes(), b"", b"kmsfs xattr values v1");
        XattrKeys {
            names,
            values: AeadKey::new(&values),
        }
    }

    /// The backing attribute that holds attribute `name`.
    pub fn backing_name(&self, name: &str) -> String {
        let tag = kdf::hmac_sha256(self.names.as_bytes(), &[name.as_bytes()]);
        let mut s = String::from(PREFIX);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(&tag[..16], &mut s);
        s
    }

    /// The tag of a hard link's entry for `path` (links.rs): keyed, so
    /// the cipherdir does not confirm a guessed name.
    pub fn link_tag(&self, path: &str) -> [u8; 16] {
        let mac = kdf::hmac_sha256(
            self.names.as_bytes(),
            &[b"kmsfs-link-v1\0", path.as_bytes()],
        );
        mac[..16].try_into().expect("16 bytes")
    }

    fn aad(node: &NodeId, backing: &str) -> Vec<u8> {
        [AAD_LABEL, node.as_slice(), backing.as_bytes()].concat()
    }

    /// The backing value of attribute `name` of `node`.
    pub fn seal(&self, node: &NodeId, name: &str, value: &[u8]) -> Vec<u8> {
        let mut plain = Vec::with_capacity(1 + name.len() + value.len());
        plain.push(name.len() as u8);
        plain.extend_from_slice(name.as_bytes());
        plain.extend_from_slice(value);
        let nonce = crate::crypto::random::array::<NONCE_LEN>();
        let mut out = nonce.to_vec();
        out.extend(
            self.values
                .seal(&nonce, &Self::aad(node, &self.backing_name(name)), &plain),
        );
        zeroize::Zeroize::zeroize(&mut plain);
        out
    }

    /// Name and value from the backing attribute `backing` of `node`;
    /// `None` when it was not made for this node and name (moved, copied
    /// or edited in the cipherdir).
    pub fn open(&self, node: &NodeId, backing: &str, blob: &[u8]) -> Option<(String, Vec<u8>)> {
        if blob.len() < NONCE_LEN + TAG_LEN + 1 || !backing.starts_with(PREFIX) {
            return None;
        }
        let nonce: [u8; NONCE_LEN] = blob[..NONCE_LEN].try_into().ok()?;
        let plain = self
            .values
            .open(&nonce, &Self::aad(node, backing), &blob[NONCE_LEN..])
            .ok()?;
        let plain = plain.as_bytes();
        let n = *plain.first()? as usize;
        let name = std::str::from_utf8(plain.get(1..1 + n)?).ok()?.to_string();
        // The tag must be the name's: a value sealed for another name of
        // the same node under this tag cannot exist, but say so anyway.
        if self.backing_name(&name) != backing {
            return None;
        }
        Some((name, plain[1 + n..].to_vec()))
    }
}

/// Names as listxattr(2) returns them: each followed by a NUL.
pub fn list_bytes<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = vec![];
    for n in names {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
    }
    out
}

/// Whether `name` (as the kernel passes it) is one kmsfs stores: a
/// namespace the kernel knows and a length it allows, or a POSIX ACL.
pub fn storable(name: &str) -> bool {
    let ok_ns = ["user.", "trusted.", "security."]
        .iter()
        .any(|p| name.len() > p.len() && name.starts_with(p));
    // POSIX ACLs: the kernel passes them only when the mount keeps them
    // (acl_ops.rs).
    let acl = name == super::acl::ACCESS || name == super::acl::DEFAULT;
    (ok_ns || acl) && name.len() <= 255
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> XattrKeys {
        XattrKeys::new(&Key256::from_bytes([7; 32]))
    }

    #[test]
    fn round_trip_and_binding() {
        let k = keys();
        let (a, b) = ([1u8; 16], [2u8; 16]);
        let blob = k.seal(&a, "user.colour", b"blue");
        let bn = k.backing_name("user.colour");
        assert_eq!(
            k.open(&a, &bn, &blob),
            Some(("user.colour".into(), b"blue".to_vec()))
        );
        // Another node, another attribute, an edited byte: refused.
        assert_eq!(k.open(&b, &bn, &blob), None);
        assert_eq!(k.open(&a, &k.backing_name("user.size"), &blob), None);
        let mut bad = blob.clone();
        bad[20] ^= 1;
        assert_eq!(k.open(&a, &bn, &bad), None);
        assert_eq!(k.open(&a, &bn, &blob[..10]), None);
        // An empty value is a value.
        let e = k.seal(&a, "user.e", b"");
        assert_eq!(
            k.open(&a, &k.backing_name("user.e"), &e),
            Some(("user.e".into(), vec![]))
        );
    }

    #[test]
    fn backing_names_hide_the_name_and_fit_the_kernels_limit() {
        let k = keys();
        let long = format!("user.{}", "n".repeat(250));
        let bn = k.backing_name(&long);
        assert!(
            bn.starts_with(PREFIX) && !bn.contains('n') && bn.len() < 64,
            "{bn}"
        );
        assert_ne!(k.backing_name("user.a"), k.backing_name("user.b"));
        // Other filesystems' keys give other names.
        let other = XattrKeys::new(&Key256::from_bytes([8; 32]));
        assert_ne!(other.backing_name("user.a"), k.backing_name("user.a"));
    }

    #[test]
    fn namespaces() {
        for ok in ["user.a", "trusted.overlay.opaque", "security.capability"] {
            assert!(storable(ok), "{ok}");
        }
        assert!(storable("system.posix_acl_default"));
        for no in ["user.", "system.other", "other.x", "user"] {
            assert!(!storable(no), "{no}");
        }
        assert_eq!(list_bytes(["user.a", "user.b"]), b"user.a\0user.b\0");
    }
}
