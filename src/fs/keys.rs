//! The narrow interface through which the filesystem uses the KMS: wrap a new
//! data key, unwrap one, and re-wrap one for a new path. The embedded `Kms`
//! implements it; a remote KMS speaking the AWS JSON API can later do the same.

use super::config::Config;
use crate::crypto::Key256;
use crate::kms::{Caller, DataKeySpec, EncryptionContext, Kms, KmsError};
use zeroize::Zeroizing;

/// Encryption-context keys that policies and grants match on.
pub const CTX_PATH: &str = "kmsfs:path";
pub const CTX_FS: &str = "kmsfs:fs";
/// What a blob is for, so that one made for one purpose never decrypts as
/// another (a file's wrapped data key read back as a "symlink target").
pub const CTX_TYPE: &str = "kmsfs:type";

/// The purposes the mount asks the KMS for blobs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A file's data key, in its header.
    DataKey,
    /// A symlink's target.
    Symlink,
    /// What filesystems made before purposes were bound used for both:
    /// path and filesystem only. Read for their data keys, and once for
    /// each symlink while it is upgraded at mount.
    Legacy,
}

impl Purpose {
    pub fn label(self) -> Option<&'static str> {
        match self {
            Purpose::DataKey => Some("data-key"),
            Purpose::Symlink => Some("symlink"),
            Purpose::Legacy => None,
        }
    }
}

/// The encryption context of a blob for the node at `rel_path`. Data keys of
/// a filesystem made before purposes were bound keep the legacy context
/// (their headers were wrapped under it); its symlinks are upgraded.
pub fn file_context(cfg: &Config, purpose: Purpose, rel_path: &str) -> EncryptionContext {
    let purpose = match purpose {
        Purpose::DataKey if !cfg.typed_contexts() => Purpose::Legacy,
        p => p,
    };
    let base = [(CTX_PATH, rel_path), (CTX_FS, cfg.filesystem_id.as_str())];
    match purpose.label() {
        Some(t) => EncryptionContext::from_pairs(base.into_iter().chain([(CTX_TYPE, t)])),
        None => EncryptionContext::from_pairs(base),
    }
}

/// The context of the filesystem's name key (`NameKey` in `kmsfs.conf`).
pub fn name_key_context(fs_id: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([(CTX_FS, fs_id), (CTX_TYPE, "name-key")])
}

/// The context of the seal over `kmsfs.conf`: the filesystem, no path.
pub fn config_context(fs_id: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([(CTX_FS, fs_id), (CTX_TYPE, "config")])
}

pub trait KeyBackend: Send + Sync {
    /// A fresh 256-bit data key and its wrapped form.
    fn new_data_key(
        &self,
        caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Key256, Vec<u8>), KmsError>;
    fn unwrap(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Key256, KmsError>;
    /// Whether `caller` may make a data key under `key_id` for `ctx` (AWS's
    /// GenerateDataKey with DryRun): writing to a file needs the right that
    /// creating it does, not merely Decrypt.
    fn may_generate(
        &self,
        caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(), KmsError>;
    fn rewrap(
        &self,
        caller: &Caller,
        blob: &[u8],
        from: &EncryptionContext,
        key_id: &str,
        to: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError>;
    /// Small secrets (symlink targets) under the CMK.
    fn encrypt(
        &self,
        caller: &Caller,
        key_id: &str,
        plain: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError>;
    /// Zeroized when dropped: a symlink target is plaintext.
    fn decrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError>;
    /// The key's ARN and state (DescribeKey): rewrap's target is checked
    /// before anything moves to it.
    fn arn_and_state(&self, caller: &Caller, key_id: &str) -> Result<(String, String), KmsError>;
    /// How long keys unwrapped ahead of their open are kept, if this KMS
    /// keeps them (a remote KMS with its data-key cache and
    /// `--key-readahead`: key_readahead.rs).
    fn reads_ahead(&self) -> Option<std::time::Duration> {
        None
    }
    /// Unwraps `blob` for `ctx` into the cache ahead of its open; a failure
    /// is left for that open to meet (and report).
    fn unwrap_ahead(&self, _blob: &[u8], _ctx: &EncryptionContext) {}
}

impl KeyBackend for Kms {
    fn arn_and_state(&self, caller: &Caller, key_id: &str) -> Result<(String, String), KmsError> {
        self.describe_key(caller, key_id)
            .map(|m| (m.arn, m.key_state.to_string()))
    }

    fn new_data_key(
        &self,
        caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Key256, Vec<u8>), KmsError> {
        let dk = self.generate_data_key(caller, key_id, &DataKeySpec::aes_256(), ctx, true)?;
        let plain = dk.plaintext.expect("GenerateDataKey returns plaintext");
        let key = Key256::from_slice(plain.as_bytes()).expect("AES_256 data keys are 32 bytes");
        Ok((key, dk.ciphertext_blob))
    }

    fn may_generate(
        &self,
        caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(), KmsError> {
        match self.generate_data_key_dry_run(caller, key_id, ctx) {
            Err(e) if e.code == crate::kms::ErrorCode::DryRunOperationException => Ok(()),
            Err(e) => Err(e),
            Ok(()) => Ok(()),
        }
    }

    fn unwrap(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Key256, KmsError> {
        let r = self.decrypt(caller, blob, ctx, None, None)?;
        Key256::from_slice(r.plaintext.as_bytes())
            .ok_or_else(|| KmsError::invalid_ciphertext("the wrapped data key is not 32 bytes"))
    }

    fn rewrap(
        &self,
        caller: &Caller,
        blob: &[u8],
        from: &EncryptionContext,
        key_id: &str,
        to: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        Ok(self
            .re_encrypt(caller, blob, from, None, key_id, to)?
            .ciphertext_blob)
    }

    fn encrypt(
        &self,
        caller: &Caller,
        key_id: &str,
        plain: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        Ok(Kms::encrypt(self, caller, key_id, plain, ctx, None)?.ciphertext_blob)
    }

    fn decrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        Ok(Zeroizing::new(
            Kms::decrypt(self, caller, blob, ctx, None, None)?
                .plaintext
                .as_bytes()
                .to_vec(),
        ))
    }
}
