//! Using a key: encrypt, decrypt, re-encrypt, data keys and random bytes.

use super::{Blob, Output};
use crate::kms::{Caller, DataKeySpec, EncryptionContext, Kms, KmsError, KmsResult};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::json;

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn is_empty(c: &EncryptionContext) -> bool {
    c.is_empty()
}

/// A DryRun request is refused rather than run: this KMS does not model
/// dry runs of these operations, and running one for real would surprise.
fn no_dry_run(op: &str, dry_run: Option<bool>) -> KmsResult<()> {
    if dry_run == Some(true) {
        return Err(KmsError::new(
            crate::kms::ErrorCode::UnsupportedOperationException,
            format!("{op}: DryRun is not supported"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Encrypt {
    pub key_id: String,
    pub plaintext: Blob,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub encryption_context: EncryptionContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_tokens: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Decrypt {
    pub ciphertext_blob: Blob,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub encryption_context: EncryptionContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_tokens: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ReEncrypt {
    pub ciphertext_blob: Blob,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub source_encryption_context: EncryptionContext,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_key_id: Option<String>,
    pub destination_key_id: String,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub destination_encryption_context: EncryptionContext,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_tokens: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// The members GenerateDataKey and GenerateDataKeyWithoutPlaintext share.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateDataKey {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_of_bytes: Option<u32>,
    #[serde(default, skip_serializing_if = "is_empty")]
    pub encryption_context: EncryptionContext,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_tokens: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GenerateRandom {
    pub number_of_bytes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetParametersForImport {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapping_algorithm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapping_key_spec: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImportKeyMaterial {
    pub key_id: String,
    pub import_token: Blob,
    pub encrypted_key_material: Blob,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<String>,
    /// Seconds since the epoch (AWS's JSON timestamp).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<f64>,
}

pub(super) fn encrypt(kms: &Kms, caller: &Caller, r: Encrypt) -> KmsResult<Output> {
    no_dry_run("Encrypt", r.dry_run)?;
    let caller = &super::with_tokens(caller, &r.grant_tokens)?;
    let out = kms.encrypt(
        caller,
        &r.key_id,
        r.plaintext.as_bytes(),
        &r.encryption_context,
        r.encryption_algorithm.as_deref(),
    )?;
    Ok(json!({"CiphertextBlob": b64(&out.ciphertext_blob), "KeyId": out.key_arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}).into())
}

pub(super) fn decrypt(kms: &Kms, caller: &Caller, r: Decrypt) -> KmsResult<Output> {
    no_dry_run("Decrypt", r.dry_run)?;
    let caller = &super::with_tokens(caller, &r.grant_tokens)?;
    let out = kms.decrypt(
        caller,
        r.ciphertext_blob.as_bytes(),
        &r.encryption_context,
        r.key_id.as_deref(),
        r.encryption_algorithm.as_deref(),
    )?;
    Ok(json!({"KeyId": out.key_arn, "Plaintext": b64(out.plaintext.as_bytes()), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}).into())
}

pub(super) fn re_encrypt(kms: &Kms, caller: &Caller, r: ReEncrypt) -> KmsResult<Output> {
    no_dry_run("ReEncrypt", r.dry_run)?;
    let caller = &super::with_tokens(caller, &r.grant_tokens)?;
    let out = kms.re_encrypt(
        caller,
        r.ciphertext_blob.as_bytes(),
        &r.source_encryption_context,
        r.source_key_id.as_deref(),
        &r.destination_key_id,
        &r.destination_encryption_context,
    )?;
    Ok(json!({"CiphertextBlob": b64(&out.ciphertext_blob), "SourceKeyId": out.source_key_arn, "KeyId": out.key_arn,
              "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT", "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"}).into())
}

pub(super) fn generate_data_key(
    kms: &Kms,
    caller: &Caller,
    r: GenerateDataKey,
    with_plaintext: bool,
) -> KmsResult<Output> {
    let caller = &super::with_tokens(caller, &r.grant_tokens)?;
    if r.dry_run == Some(true) {
        // AWS's answer to a dry run that would succeed is an error too:
        // DryRunOperationException.
        kms.generate_data_key_dry_run(caller, &r.key_id, &r.encryption_context)?;
        return Ok(serde_json::Value::Null.into());
    }
    let spec = DataKeySpec {
        key_spec: r.key_spec,
        number_of_bytes: r.number_of_bytes,
    };
    let out = kms.generate_data_key(
        caller,
        &r.key_id,
        &spec,
        &r.encryption_context,
        with_plaintext,
    )?;
    // AWS's member order: CiphertextBlob, Plaintext, KeyId.
    Ok(match &out.plaintext {
        Some(p) => json!({"CiphertextBlob": b64(&out.ciphertext_blob), "Plaintext": b64(p.as_bytes()), "KeyId": out.key_arn}),
        None => json!({"CiphertextBlob": b64(&out.ciphertext_blob), "KeyId": out.key_arn}),
    }
    .into())
}

pub(super) fn generate_random(kms: &Kms, caller: &Caller, r: GenerateRandom) -> KmsResult<Output> {
    Ok(
        json!({"Plaintext": b64(kms.generate_random(caller, r.number_of_bytes)?.as_bytes())})
            .into(),
    )
}
