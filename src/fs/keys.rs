//! The narrow interface through which the filesystem uses the KMS: wrap a new
//! data key, unwrap one, and re-wrap one for a new path. The embedded `Kms`
//! implements it; a remote KMS speaking the AWS JSON API can later do the same.

use crate::crypto::Key256;
use crate::kms::{Caller, DataKeySpec, EncryptionContext, Kms, KmsError};

/// Encryption-context keys that policies and grants match on.
pub const CTX_PATH: &str = "kmsfs:path";
pub const CTX_FS: &str = "kmsfs:fs";

pub fn file_context(fs_id: &str, rel_path: &str) -> EncryptionContext {
    EncryptionContext::from_pairs([(CTX_PATH, rel_path), (CTX_FS, fs_id)])
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
    fn decrypt(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError>;
}

impl KeyBackend for Kms {
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
    ) -> Result<Vec<u8>, KmsError> {
        Ok(Kms::decrypt(self, caller, blob, ctx, None, None)?
            .plaintext
            .as_bytes()
            .to_vec())
    }
}
