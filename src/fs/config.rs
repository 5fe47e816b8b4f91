//! The filesystem's config file, `kmsfs.conf` in the cipherdir (JSON).
//!
//! It names the CMK and fixes the layout; an unknown feature flag means a newer
//! kmsfs wrote it, and mounting is refused rather than misreading the files.
//! The cipherdir is not trusted, so the config carries a seal: the SHA-256 of
//! every other field, encrypted by the filesystem's CMK under the config's own
//! encryption context. Only a caller who may use the CMK can make one, and the
//! mount checks it before it trusts any field (the KMS home it names above
//! all).

use super::tree::Tree;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const CONFIG_NAME: &str = "kmsfs.conf";
/// Names in the cipherdir's root that belong to kmsfs, never shown in the mount.
pub const RESERVED_NAMES: &[&str] = &[
    CONFIG_NAME,
    ".kmsfs.lock",
    ".kmsfs.journal",
    ".kmsfs.journal.tmp",
    ROOT_ATTR_NAME,
    super::xattr_store::KEY_FILE,
];

/// The mount root's own mode and owner, kept apart from the cipherdir's.
pub const ROOT_ATTR_NAME: &str = ".kmsfs.root";

/// Longest config file read: a real one is under 1 KiB.
const MAX_CONFIG_LEN: u64 = 64 << 10;

/// Feature flags this version understands.
pub const FLAG_PATH_BOUND_KEYS: &str = "PathBoundKeys";
pub const FLAG_PLAINTEXT_NAMES: &str = "PlaintextNames";
pub const FLAG_ENCRYPTED_SYMLINKS: &str = "EncryptedSymlinks";
/// Every blob's context names its purpose (`kmsfs:type`). Filesystems made
/// without it have their symlinks upgraded at mount and keep their data keys'
/// legacy context.
pub const FLAG_TYPED_CONTEXTS: &str = "TypedContexts";
/// Only the symlinks of an older filesystem have been upgraded.
pub const FLAG_TYPED_SYMLINKS: &str = "TypedSymlinks";
/// The CMK lives in a remote KMS (`KmsEndpoint`), not in a local keystore.
pub const FLAG_REMOTE_KMS: &str = "RemoteKms";
/// Every name in the cipherdir is encrypted (names/cipher.rs) under the
/// name key `NameKey` wraps; the other filesystems have PlaintextNames.
pub const FLAG_ENCRYPTED_NAMES: &str = "EncryptedNames";
const KNOWN_FLAGS: &[&str] = &[
    FLAG_ENCRYPTED_NAMES,
    FLAG_REMOTE_KMS,
    FLAG_PATH_BOUND_KEYS,
    FLAG_PLAINTEXT_NAMES,
    FLAG_ENCRYPTED_SYMLINKS,
    FLAG_TYPED_CONTEXTS,
    FLAG_TYPED_SYMLINKS,
];

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Config {
    pub creator: String,
    pub format_version: u16,
    pub feature_flags: Vec<String>,
    /// Random id bound into every data key's encryption context (`kmsfs:fs`).
    pub filesystem_id: String,
    /// ARN of the CMK that wraps every data key.
    pub key_id: String,
    pub block_size: u32,
    pub header_size: u32,
    /// Where the KMS home was when the filesystem was created (the mount's
    /// --kms-home or $KMSFS_HOME wins).
    pub kms_home: Option<PathBuf>,
    /// The remote KMS holding the CMK (with FLAG_REMOTE_KMS), and the
    /// region its requests are signed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_region: Option<String>,
    /// base64 of the KMS blob wrapping the name key (with
    /// FLAG_ENCRYPTED_NAMES), under the context `keys::name_key_context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_key: Option<String>,
    /// base64 of the KMS blob sealing the other fields (see the module doc).
    /// Absent only in configs written before seals, which the first mount
    /// seals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

impl Config {
    pub fn new(filesystem_id: String, key_id: String, kms_home: Option<PathBuf>) -> Self {
        Config {
            creator: format!("kmsfs {}", env!("CARGO_PKG_VERSION")),
            format_version: super::format::FORMAT_VERSION,
            feature_flags: vec![
                FLAG_PATH_BOUND_KEYS.into(),
                FLAG_PLAINTEXT_NAMES.into(),
                FLAG_ENCRYPTED_SYMLINKS.into(),
                FLAG_TYPED_CONTEXTS.into(),
            ],
            filesystem_id,
            key_id,
            block_size: super::format::BLOCK_SIZE as u32,
            header_size: super::format::DEFAULT_HEADER_SIZE as u32,
            kms_home,
            kms_endpoint: None,
            kms_region: None,
            name_key: None,
            seal: None,
        }
    }

    pub fn has(&self, flag: &str) -> bool {
        self.feature_flags.iter().any(|f| f == flag)
    }

    pub fn encrypted_names(&self) -> bool {
        self.has(FLAG_ENCRYPTED_NAMES)
    }

    /// Whether data keys are wrapped under a context naming their purpose.
    pub fn typed_contexts(&self) -> bool {
        self.has(FLAG_TYPED_CONTEXTS)
    }

    /// Whether every symlink's target is encrypted under the symlink context.
    pub fn typed_symlinks(&self) -> bool {
        self.has(FLAG_TYPED_CONTEXTS) || self.has(FLAG_TYPED_SYMLINKS)
    }

    /// What the seal covers: every field but the seal, in a fixed order.
    pub fn digest(&self) -> [u8; 32] {
        let unsealed = Config {
            seal: None,
            ..self.clone()
        };
        let bytes = serde_json::to_vec(&unsealed).expect("config serialises");
        Sha256::digest(&bytes).into()
    }

    /// Parses and checks a config; errors say what is wrong and what to do.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let c: Config = serde_json::from_slice(bytes)
            .map_err(|e| format!("{CONFIG_NAME} is not valid JSON of a kmsfs config ({e})"))?;
        if c.format_version != super::format::FORMAT_VERSION {
            return Err(format!(
                "{CONFIG_NAME} has format version {}; this kmsfs reads version {}",
                c.format_version,
                super::format::FORMAT_VERSION
            ));
        }
        if let Some(f) = c
            .feature_flags
            .iter()
            .find(|f| !KNOWN_FLAGS.contains(&f.as_str()))
        {
            return Err(format!(
                "{CONFIG_NAME} uses feature {f:?}, unknown to this kmsfs: upgrade kmsfs to mount it"
            ));
        }
        if c.has(FLAG_PLAINTEXT_NAMES) == c.has(FLAG_ENCRYPTED_NAMES) {
            return Err(format!(
                "{CONFIG_NAME} must have exactly one of the features {FLAG_PLAINTEXT_NAMES} and {FLAG_ENCRYPTED_NAMES}: it was not written by kmsfs; restore it from a backup of the cipherdir"
            ));
        }
        if c.has(FLAG_ENCRYPTED_NAMES) != c.name_key.is_some() {
            return Err(format!(
                "{CONFIG_NAME}: NameKey must be there exactly when names are encrypted: it was not written by kmsfs; restore it from a backup of the cipherdir"
            ));
        }
        if c.block_size as usize != super::format::BLOCK_SIZE {
            return Err(format!(
                "{CONFIG_NAME} has block size {}; this kmsfs supports {}",
                c.block_size,
                super::format::BLOCK_SIZE
            ));
        }
        let hs = c.header_size as usize;
        if !(super::format::MIN_HEADER_SIZE..=65535).contains(&hs) {
            return Err(format!(
                "{CONFIG_NAME} has header size {hs}, outside {}..=65535",
                super::format::MIN_HEADER_SIZE
            ));
        }
        Ok(c)
    }

    /// Reads the config of the cipherdir at `cipherdir`; errors name the file.
    pub fn load(cipherdir: &Path) -> Result<Self, String> {
        let tree = Tree::open(cipherdir)
            .map_err(|e| format!("cannot open the cipherdir {}: {e}", cipherdir.display()))?;
        Self::load_from(&tree)
    }

    /// Reads the config through the cipherdir's descriptor (never following a
    /// symlink planted as `kmsfs.conf`), bounded in size.
    pub fn load_from(tree: &Tree) -> Result<Self, String> {
        let p = format!("{}/{CONFIG_NAME}", tree.display());
        let missing = |e: String| {
            format!(
                "cannot read {p}: {e}; is {} a kmsfs cipherdir (made by `kmsfs init`)?",
                tree.display()
            )
        };
        let bytes = match tree.read_small(CONFIG_NAME, MAX_CONFIG_LEN) {
            Ok(Some(b)) => b,
            Ok(None) => return Err(missing("no such file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(format!("{p} is not a kmsfs config ({e})"));
            }
            Err(e) => return Err(missing(e.to_string())),
        };
        Self::parse(&bytes).map_err(|e| format!("{p}: {e}"))
    }

    /// Replaces the config atomically (a new file, then a rename over it).
    pub fn save(&self, tree: &Tree) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).expect("config serialises");
        tree.replace(CONFIG_NAME, &bytes, 0o600)
            .map_err(|e| format!("cannot write {}/{CONFIG_NAME}: {e}", tree.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checks() {
        let c = Config::new("fs".into(), "arn:k".into(), None);
        let b = serde_json::to_vec(&c).unwrap();
        assert_eq!(Config::parse(&b).unwrap(), c);
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["FeatureFlags"]
            .as_array_mut()
            .unwrap()
            .push("FutureThing".into());
        assert!(
            Config::parse(&serde_json::to_vec(&v).unwrap())
                .unwrap_err()
                .contains("upgrade kmsfs")
        );
        assert!(Config::parse(b"{").unwrap_err().contains("not valid JSON"));
        // The seal covers every field but itself.
        let mut sealed = c.clone();
        sealed.seal = Some("x".into());
        assert_eq!(sealed.digest(), c.digest());
        let mut moved = c.clone();
        moved.kms_home = Some("/elsewhere".into());
        assert_ne!(moved.digest(), c.digest());
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["HeaderSize"] = 10.into();
        assert!(Config::parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }

    #[test]
    fn exactly_one_naming_mode_and_a_name_key_only_with_encrypted_names() {
        let plain = Config::new("fs".into(), "arn:k".into(), None);
        assert!(!plain.encrypted_names());
        let mut enc = plain.clone();
        enc.feature_flags.retain(|f| f != FLAG_PLAINTEXT_NAMES);
        enc.feature_flags.push(FLAG_ENCRYPTED_NAMES.into());
        enc.name_key = Some("blob".into());
        let parsed = Config::parse(&serde_json::to_vec(&enc).unwrap()).unwrap();
        assert!(parsed.encrypted_names());
        // The name key is sealed with the rest.
        let mut other = enc.clone();
        other.name_key = Some("another".into());
        assert_ne!(other.digest(), enc.digest());
        let bad = |c: &Config| Config::parse(&serde_json::to_vec(c).unwrap()).unwrap_err();
        let mut both = enc.clone();
        both.feature_flags.push(FLAG_PLAINTEXT_NAMES.into());
        assert!(bad(&both).contains("exactly one of"), "{}", bad(&both));
        let mut neither = enc.clone();
        neither.feature_flags.retain(|f| f != FLAG_ENCRYPTED_NAMES);
        assert!(bad(&neither).contains("exactly one of"));
        let mut keyless = enc.clone();
        keyless.name_key = None;
        assert!(bad(&keyless).contains("NameKey"));
        let mut keyed_plain = plain.clone();
        keyed_plain.name_key = Some("blob".into());
        assert!(bad(&keyed_plain).contains("NameKey"));
    }
}
