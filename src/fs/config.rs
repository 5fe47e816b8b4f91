//! The filesystem's config file, `kmsfs.conf` in the cipherdir (JSON).
//!
//! It names the CMK and fixes the layout; an unknown feature flag means a newer
//! kmsfs wrote it, and mounting is refused rather than misreading the files.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const CONFIG_NAME: &str = "kmsfs.conf";
/// Names in the cipherdir's root that belong to kmsfs, never shown in the mount.
pub const RESERVED_NAMES: &[&str] = &[
    CONFIG_NAME,
    ".kmsfs.lock",
    ".kmsfs.journal",
    ".kmsfs.journal.tmp",
];

/// Feature flags this version understands.
pub const FLAG_PATH_BOUND_KEYS: &str = "PathBoundKeys";
pub const FLAG_PLAINTEXT_NAMES: &str = "PlaintextNames";
pub const FLAG_ENCRYPTED_SYMLINKS: &str = "EncryptedSymlinks";
const KNOWN_FLAGS: &[&str] = &[
    FLAG_PATH_BOUND_KEYS,
    FLAG_PLAINTEXT_NAMES,
    FLAG_ENCRYPTED_SYMLINKS,
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
    /// Where the KMS home was when the filesystem was created (a hint; the
    /// mount's --kms-home wins).
    pub kms_home: Option<PathBuf>,
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
            ],
            filesystem_id,
            key_id,
            block_size: super::format::BLOCK_SIZE as u32,
            header_size: super::format::DEFAULT_HEADER_SIZE as u32,
            kms_home,
        }
    }

    /// Parses and checks a config; errors say what is wrong and what to do.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let c: Config = serde_json::from_slice(bytes)
            .map_err(|e| format!("{CONFIG_NAME} is not valid ({e})"))?;
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
        if !c.feature_flags.iter().any(|f| f == FLAG_PLAINTEXT_NAMES) {
            return Err(format!(
                "{CONFIG_NAME} asks for encrypted names, which this kmsfs does not implement"
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

    pub fn load(cipherdir: &Path) -> Result<Self, String> {
        let p = cipherdir.join(CONFIG_NAME);
        let bytes = std::fs::read(&p).map_err(|e| {
            format!(
                "cannot read {}: {e}; is {} a kmsfs cipherdir (made by `kmsfs init`)?",
                p.display(),
                cipherdir.display()
            )
        })?;
        Self::parse(&bytes)
    }

    pub fn save(&self, cipherdir: &Path) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(self).expect("config serialises");
        crate::kms::keystore::atomic_write(&cipherdir.join(CONFIG_NAME), &bytes)
            .map_err(|e| e.message)
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
        assert!(Config::parse(b"{").is_err());
        let mut v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        v["HeaderSize"] = 10.into();
        assert!(Config::parse(&serde_json::to_vec(&v).unwrap()).is_err());
    }
}
