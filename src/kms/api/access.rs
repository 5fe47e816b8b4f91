//! Who may use a key: key policies and grants.

use super::Output;
use crate::kms::grant::Constraints;
use crate::kms::service::GrantRequest;
use crate::kms::{Caller, Kms, KmsResult};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub(super) const UNRESOLVED_AT_PUT: &str = "a user: or group: name is bound to the account it names when the policy is put, so put the policy again once the account exists.";
const UNRESOLVED_NOW: &str = "the account was deleted, or recreated with another id, since the policy was put (a recreated account does not inherit); put the policy again to bind the name to the account it names now.";

fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetKeyPolicy {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutKeyPolicy {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_name: Option<String>,
    pub policy: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub bypass_policy_lockout_safety_check: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateGrant {
    pub key_id: String,
    pub grantee_principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring_principal: Option<String>,
    pub operations: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_tokens: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListGrants {
    pub key_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grantee_principal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListRetirableGrants {
    pub retiring_principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetireGrant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RevokeGrant {
    pub key_id: String,
    pub grant_id: String,
}

pub(super) fn get_key_policy(kms: &Kms, caller: &Caller, r: GetKeyPolicy) -> KmsResult<Output> {
    let (value, unresolved) =
        kms.get_key_policy_with_warnings(caller, &r.key_id, r.policy_name.as_deref())?;
    Ok(Output {
        value,
        warning: super::unresolved_warning(&unresolved, UNRESOLVED_NOW),
    })
}

pub(super) fn put_key_policy(kms: &Kms, caller: &Caller, r: PutKeyPolicy) -> KmsResult<Output> {
    let unresolved = kms.put_key_policy_with_warnings(
        caller,
        &r.key_id,
        r.policy_name.as_deref(),
        &r.policy,
        r.bypass_policy_lockout_safety_check,
    )?;
    Ok(Output {
        value: Value::Null,
        warning: super::unresolved_warning(&unresolved, UNRESOLVED_AT_PUT),
    })
}

pub(super) fn create_grant(kms: &Kms, caller: &Caller, r: CreateGrant) -> KmsResult<Output> {
    let caller = &super::with_tokens(caller, &r.grant_tokens)?;
    let req = GrantRequest {
        grantee: r.grantee_principal,
        retiring: r.retiring_principal,
        operations: r.operations,
        constraints: r.constraints,
        name: r.name,
    };
    Ok(kms.create_grant(caller, &r.key_id, req)?.into())
}
