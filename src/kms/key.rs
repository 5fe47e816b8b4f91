//! A customer master key: its metadata, its material versions, and the table of
//! which operations each key state allows (AWS's "key states" table).

use super::error::{ErrorCode, KmsError, KmsResult};
use super::keyref::KeyId;
use crate::crypto::Key256;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    Enabled,
    Disabled,
    PendingDeletion,
    PendingImport,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Enabled => "Enabled",
            KeyState::Disabled => "Disabled",
            KeyState::PendingDeletion => "PendingDeletion",
            KeyState::PendingImport => "PendingImport",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Material generated inside kmsfs (AWS's `AWS_KMS`).
    #[serde(rename = "KMSFS")]
    Kmsfs,
    /// Material imported by the user (BYOK).
    #[serde(rename = "EXTERNAL")]
    External,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Kmsfs => "KMSFS",
            Origin::External => "EXTERNAL",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyManager {
    #[serde(rename = "CUSTOMER")]
    Customer,
    /// Created and managed by kmsfs for a filesystem (AWS's `AWS` managed keys).
    #[serde(rename = "KMSFS")]
    Kmsfs,
}

impl KeyManager {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyManager::Customer => "CUSTOMER",
            KeyManager::Kmsfs => "KMSFS",
        }
    }
}

/// One version of a key's AES-256 material. Old versions stay so that old
/// ciphertext decrypts after rotation.
#[derive(Clone, Serialize, Deserialize)]
pub struct Material {
    pub version: u32,
    pub created: i64,
    #[serde(with = "super::serde_secret")]
    pub key: Key256,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Material(v{}, <redacted>)", self.version)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rotation {
    pub date: i64,
    /// "AUTOMATIC" or "ON_DEMAND", as ListKeyRotations reports.
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportState {
    /// "KEY_MATERIAL_EXPIRES" or "KEY_MATERIAL_DOES_NOT_EXPIRE".
    pub expiration_model: Option<String>,
    pub valid_to: Option<i64>,
    /// HMAC of the material under itself, so a re-import can be checked to be
    /// the same material without storing it after it was deleted.
    pub fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Key {
    pub id: KeyId,
    pub description: String,
    pub created: i64,
    pub state: KeyState,
    pub origin: Origin,
    pub manager: KeyManager,
    pub deletion_date: Option<i64>,
    pub pending_window_days: Option<u32>,
    pub rotation_period_days: Option<u32>,
    pub next_rotation: Option<i64>,
    pub rotations: Vec<Rotation>,
    pub materials: Vec<Material>,
    pub tags: BTreeMap<String, String>,
    pub import: Option<ImportState>,
    /// The key policy document, `None` for the default policy.
    pub policy: Option<String>,
    /// Who created the key: the default policy lets them administer it.
    #[serde(default)]
    pub creator: Option<u32>,
}

impl Key {
    pub fn current_material(&self) -> Option<&Material> {
        self.materials.last()
    }

    pub fn material(&self, version: u32) -> Option<&Material> {
        self.materials.iter().find(|m| m.version == version)
    }

    pub fn add_material(&mut self, key: Key256, now: i64) -> u32 {
        let version = self.materials.last().map_or(1, |m| m.version + 1);
        self.materials.push(Material {
            version,
            created: now,
            key,
        });
        version
    }
}

/// The operations whose availability depends on key state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Encrypt, Decrypt, ReEncrypt, GenerateDataKey*.
    Crypto,
    Enable,
    Disable,
    ScheduleDeletion,
    CancelDeletion,
    /// Enable/DisableKeyRotation, RotateKeyOnDemand.
    Rotation,
    /// Tag/UntagResource, UpdateKeyDescription, PutKeyPolicy.
    Modify,
    /// CreateAlias/UpdateAlias pointing at the key.
    AliasTarget,
    GetParametersForImport,
    ImportKeyMaterial,
    DeleteImportedKeyMaterial,
}

/// AWS's key-state table for symmetric keys. Reads (Describe, List*, GetKey*)
/// work in every state and are not listed.
pub fn check_state(op: Op, key: &Key) -> KmsResult<()> {
    use KeyState::*;
    let id = key.id;
    let invalid = |what: &str| {
        Err(KmsError::new(
            ErrorCode::KMSInvalidStateException,
            format!("key {id} is {}: {what}", key.state.as_str()),
        ))
    };
    match (op, key.state) {
        (Op::Crypto, Enabled) => Ok(()),
        (Op::Crypto, Disabled) => Err(KmsError::new(
            ErrorCode::DisabledException,
            format!("key {id} is disabled; enable it with `kmsfs kms enable-key --key-id {id}`"),
        )),
        (Op::Crypto, PendingDeletion) => invalid(
            "it cannot be used; cancel the deletion with `kmsfs kms cancel-key-deletion` to keep it",
        ),
        (Op::Crypto, PendingImport) => invalid("import key material before using it"),
        (Op::Enable | Op::Disable, Enabled | Disabled) => Ok(()),
        (Op::Enable | Op::Disable, _) => invalid("only Enabled or Disabled keys change that way"),
        (Op::ScheduleDeletion, PendingDeletion) => invalid("deletion is already scheduled"),
        (Op::ScheduleDeletion, _) => Ok(()),
        (Op::CancelDeletion, PendingDeletion) => Ok(()),
        (Op::CancelDeletion, _) => invalid("no deletion is scheduled"),
        (Op::Rotation, Enabled) => Ok(()),
        (Op::Rotation, Disabled) => Err(KmsError::new(
            ErrorCode::DisabledException,
            format!("key {id} is disabled; rotation settings need an enabled key"),
        )),
        (Op::Rotation, _) => invalid("rotation needs an enabled key"),
        (Op::Modify, PendingDeletion) => invalid("a key pending deletion cannot be changed"),
        (Op::Modify, _) => Ok(()),
        (Op::AliasTarget, PendingDeletion) => {
            invalid("an alias cannot point at a key pending deletion")
        }
        (Op::AliasTarget, _) => Ok(()),
        (Op::GetParametersForImport | Op::ImportKeyMaterial | Op::DeleteImportedKeyMaterial, _)
            if key.origin != Origin::External =>
        {
            Err(KmsError::new(
                ErrorCode::UnsupportedOperationException,
                format!(
                    "key {id} has origin {}; only EXTERNAL keys take imported material",
                    key.origin.as_str()
                ),
            ))
        }
        (Op::GetParametersForImport | Op::ImportKeyMaterial, PendingDeletion) => {
            invalid("cancel the deletion before importing material")
        }
        (Op::GetParametersForImport | Op::ImportKeyMaterial, _) => Ok(()),
        (Op::DeleteImportedKeyMaterial, PendingDeletion | PendingImport) => {
            invalid("there is no material to delete")
        }
        (Op::DeleteImportedKeyMaterial, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(state: KeyState, origin: Origin) -> Key {
        Key {
            id: KeyId::random(),
            description: String::new(),
            created: 0,
            state,
            origin,
            manager: KeyManager::Customer,
            deletion_date: None,
            pending_window_days: None,
            rotation_period_days: None,
            next_rotation: None,
            rotations: vec![],
            materials: vec![],
            tags: BTreeMap::new(),
            import: None,
            policy: None,
            creator: None,
        }
    }

    fn code(op: Op, s: KeyState, o: Origin) -> Option<ErrorCode> {
        check_state(op, &key(s, o)).err().map(|e| e.code)
    }

    #[test]
    fn state_table() {
        use ErrorCode::*;
        use KeyState::*;
        let k = Origin::Kmsfs;
        let x = Origin::External;
        assert_eq!(code(Op::Crypto, Enabled, k), None);
        assert_eq!(code(Op::Crypto, Disabled, k), Some(DisabledException));
        assert_eq!(
            code(Op::Crypto, PendingDeletion, k),
            Some(KMSInvalidStateException)
        );
        assert_eq!(
            code(Op::Crypto, PendingImport, x),
            Some(KMSInvalidStateException)
        );
        assert_eq!(code(Op::Enable, Disabled, k), None);
        assert_eq!(
            code(Op::Enable, PendingDeletion, k),
            Some(KMSInvalidStateException)
        );
        assert_eq!(
            code(Op::Disable, PendingImport, x),
            Some(KMSInvalidStateException)
        );
        assert_eq!(code(Op::ScheduleDeletion, Disabled, k), None);
        assert_eq!(code(Op::ScheduleDeletion, PendingImport, x), None);
        assert_eq!(
            code(Op::ScheduleDeletion, PendingDeletion, k),
            Some(KMSInvalidStateException)
        );
        assert_eq!(
            code(Op::CancelDeletion, Enabled, k),
            Some(KMSInvalidStateException)
        );
        assert_eq!(code(Op::CancelDeletion, PendingDeletion, k), None);
        assert_eq!(code(Op::Rotation, Disabled, k), Some(DisabledException));
        assert_eq!(
            code(Op::Modify, PendingDeletion, k),
            Some(KMSInvalidStateException)
        );
        assert_eq!(code(Op::Modify, Disabled, k), None);
        assert_eq!(
            code(Op::AliasTarget, PendingDeletion, k),
            Some(KMSInvalidStateException)
        );
        assert_eq!(
            code(Op::GetParametersForImport, Enabled, k),
            Some(UnsupportedOperationException)
        );
        assert_eq!(code(Op::GetParametersForImport, PendingImport, x), None);
        assert_eq!(
            code(Op::ImportKeyMaterial, PendingDeletion, x),
            Some(KMSInvalidStateException)
        );
        assert_eq!(
            code(Op::DeleteImportedKeyMaterial, PendingImport, x),
            Some(KMSInvalidStateException)
        );
        assert_eq!(code(Op::DeleteImportedKeyMaterial, Enabled, x), None);
    }

    #[test]
    fn material_versions_increase() {
        let mut k = key(KeyState::Enabled, Origin::Kmsfs);
        assert_eq!(k.add_material(Key256::random(), 1), 1);
        assert_eq!(k.add_material(Key256::random(), 2), 2);
        assert_eq!(k.current_material().unwrap().version, 2);
        assert!(k.material(1).is_some());
        assert!(k.material(3).is_none());
        assert!(!format!("{:?}", k.materials).contains("key:"));
    }
}
