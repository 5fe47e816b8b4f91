//! Aliases and tags.

use super::{Output, Tag};
use crate::kms::{Caller, Kms, KmsResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasTarget {
    pub alias_name: String,
    pub target_key_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AliasOnly {
    pub alias_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListAliases {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct TagResource {
    pub key_id: String,
    pub tags: Vec<Tag>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UntagResource {
    pub key_id: String,
    pub tag_keys: Vec<String>,
}

pub(super) fn tag_resource(kms: &Kms, caller: &Caller, r: TagResource) -> KmsResult<Output> {
    let tags: Vec<(String, String)> = r
        .tags
        .into_iter()
        .map(|t| (t.tag_key, t.tag_value))
        .collect();
    kms.tag_resource(caller, &r.key_id, &tags)?;
    Ok(Value::Null.into())
}
