//! Key management: create, describe, list, enable and disable, deletion,
//! description and rotation.

use super::{Output, Tag};
use crate::kms::{Caller, CreateKeyRequest, Kms, KmsError, KmsResult};
use serde::{Deserialize, Serialize};
use serde_json::json;

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_usage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_spec: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub bypass_policy_lockout_safety_check: bool,
    /// Refused when true: this KMS has one region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_region: Option<bool>,
}

/// The members of operations that take only a key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyOnly {
    pub key_id: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Paging {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct KeyPaging {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ScheduleKeyDeletion {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_window_in_days: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateKeyDescription {
    pub key_id: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnableKeyRotation {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_period_in_days: Option<u32>,
}

pub(super) fn create_key(kms: &Kms, caller: &Caller, r: CreateKey) -> KmsResult<Output> {
    if r.multi_region == Some(true) {
        return Err(KmsError::new(
            crate::kms::ErrorCode::UnsupportedOperationException,
            "MultiRegion keys are not supported: this KMS has one region",
        ));
    }
    let req = CreateKeyRequest {
        description: r.description.unwrap_or_default(),
        tags: r
            .tags
            .into_iter()
            .map(|t| (t.tag_key, t.tag_value))
            .collect(),
        key_usage: r.key_usage,
        origin: r.origin,
        key_spec: r.key_spec,
        policy: r.policy,
        bypass_policy_lockout_safety_check: r.bypass_policy_lockout_safety_check,
    };
    let (meta, unresolved) = kms.create_key_with_warnings(caller, req)?;
    Ok(Output {
        value: json!({ "KeyMetadata": meta }),
        warning: super::unresolved_warning(&unresolved, super::access::UNRESOLVED_AT_PUT),
    })
}

pub(super) fn describe_key(kms: &Kms, caller: &Caller, r: KeyOnly) -> KmsResult<Output> {
    Ok(json!({ "KeyMetadata": kms.describe_key(caller, &r.key_id)? }).into())
}
