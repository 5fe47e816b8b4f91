//! The AWS KMS JSON API as one typed table: each operation's request is a
//! struct with AWS's member names (`Blob` members base64), deserialised from
//! a request body by the server, built from flags by the CLI and serialised
//! by the remote client, and run against the core by [`run`]. The CLI, the
//! server and the client cannot drift apart because they share these types.
//! Nothing here knows HTTP.

mod access;
mod crypto;
mod keys;
mod names;

pub use access::*;
pub use crypto::*;
pub use keys::*;
pub use names::*;

use super::{Caller, Kms, KmsError, KmsResult};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A binary member, base64 on the wire; zeroized when dropped, as it may
/// be a plaintext.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Blob(pub zeroize::Zeroizing<Vec<u8>>);

impl Blob {
    pub fn new(bytes: Vec<u8>) -> Self {
        Blob(zeroize::Zeroizing::new(bytes))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&*self.0))
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = zeroize::Zeroizing::new(String::deserialize(d)?);
        B64.decode(s.as_bytes())
            .map(Blob::new)
            .map_err(|_| serde::de::Error::custom("a Blob member is not valid base64"))
    }
}

/// `{"TagKey": ..., "TagValue": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Tag {
    pub tag_key: String,
    pub tag_value: String,
}

/// Declares the operations once: the `Request` enum (tagged by AWS name,
/// `{"Encrypt": {...}}`, so `X-Amz-Target: TrentService.<Name>` and a body
/// make one value), the list of names, and the name and body of a request
/// without serialising it whole.
macro_rules! operations {
    ($($name:ident($ty:ty),)*) => {
        /// Every operation of the API.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub enum Request {
            $($name($ty),)*
        }

        /// The names of every operation, as `X-Amz-Target` gives them.
        pub const OPERATIONS: &[&str] = &[$(stringify!($name),)*];

        impl Request {
            /// The operation's AWS name.
            pub fn operation(&self) -> &'static str {
                match self {
                    $(Request::$name(_) => stringify!($name),)*
                }
            }

            /// The request's body as the client sends it.
            pub fn body(&self) -> Value {
                match self {
                    $(Request::$name(r) => serde_json::to_value(r).expect("requests serialise"),)*
                }
            }

            /// The request `operation` from its body's bytes, parsed once,
            /// straight into its struct; `None` for an unknown operation.
            fn from_body(operation: &str, body: &[u8]) -> Option<Result<Request, serde_json::Error>> {
                Some(match operation {
                    $(stringify!($name) => serde_json::from_slice(body).map(Request::$name),)*
                    _ => return None,
                })
            }

            /// The body's bytes.
            pub fn body_bytes(&self) -> Vec<u8> {
                match self {
                    $(Request::$name(r) => serde_json::to_vec(r).expect("requests serialise"),)*
                }
            }
        }
    };
}

operations! {
    CreateKey(CreateKey),
    DescribeKey(KeyOnly),
    ListKeys(Paging),
    EnableKey(KeyOnly),
    DisableKey(KeyOnly),
    ScheduleKeyDeletion(ScheduleKeyDeletion),
    CancelKeyDeletion(KeyOnly),
    UpdateKeyDescription(UpdateKeyDescription),
    EnableKeyRotation(EnableKeyRotation),
    DisableKeyRotation(KeyOnly),
    GetKeyRotationStatus(KeyOnly),
    RotateKeyOnDemand(KeyOnly),
    ListKeyRotations(KeyPaging),
    CreateAlias(AliasTarget),
    UpdateAlias(AliasTarget),
    DeleteAlias(AliasOnly),
    ListAliases(ListAliases),
    TagResource(TagResource),
    UntagResource(UntagResource),
    ListResourceTags(KeyPaging),
    GetKeyPolicy(GetKeyPolicy),
    PutKeyPolicy(PutKeyPolicy),
    CreateGrant(CreateGrant),
    ListGrants(ListGrants),
    ListRetirableGrants(ListRetirableGrants),
    RetireGrant(RetireGrant),
    RevokeGrant(RevokeGrant),
    Encrypt(Encrypt),
    Decrypt(Decrypt),
    ReEncrypt(ReEncrypt),
    GenerateDataKey(GenerateDataKey),
    GenerateDataKeyWithoutPlaintext(GenerateDataKey),
    GenerateRandom(GenerateRandom),
    GetParametersForImport(GetParametersForImport),
    ImportKeyMaterial(ImportKeyMaterial),
    DeleteImportedKeyMaterial(KeyOnly),
}

/// What an operation returns: AWS's response (`Null` for none) and, apart
/// from it, a warning AWS has no field for (principals of a policy that
/// match nobody), which the CLI prints and the server logs.
#[derive(Debug)]
pub struct Output {
    pub value: Value,
    pub warning: Option<String>,
}

impl From<Value> for Output {
    fn from(value: Value) -> Self {
        Output {
            value,
            warning: None,
        }
    }
}

/// Why a request body does not make a request, with AWS's error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub code: &'static str,
    pub message: String,
}

impl Request {
    /// The request `operation` with JSON `body`, as the server receives it.
    /// An unknown operation is UnknownOperationException; a body that is not
    /// a JSON object, or a member of the wrong type, SerializationException;
    /// a missing required member, ValidationException (AWS's codes for each).
    pub fn parse(operation: &str, body: &[u8]) -> Result<Request, ParseError> {
        if !OPERATIONS.contains(&operation) {
            return Err(ParseError {
                code: "UnknownOperationException",
                message: format!("Unknown operation {operation}"),
            });
        }
        let first = body.iter().find(|b| !b.is_ascii_whitespace());
        let body: &[u8] = match first {
            None => b"{}",
            // A struct would also deserialise from a JSON array, by position.
            Some(b'{') => body,
            Some(_) => {
                return Err(ParseError {
                    code: "SerializationException",
                    message: "the request body must be a JSON object".into(),
                });
            }
        };
        let parsed = Self::from_body(operation, body).expect("a known operation");
        parsed.map_err(|e| {
            let m = e.to_string();
            let code = match e.classify() {
                serde_json::error::Category::Data if m.starts_with("missing field") => {
                    "ValidationException"
                }
                _ => "SerializationException",
            };
            ParseError {
                code,
                message: format!("{operation}: {m}"),
            }
        })
    }
}

/// Runs one request against the core.
pub fn run(kms: &Kms, caller: &Caller, req: Request) -> KmsResult<Output> {
    use Request::*;
    match req {
        CreateKey(r) => keys::create_key(kms, caller, r),
        DescribeKey(r) => keys::describe_key(kms, caller, r),
        ListKeys(r) => kms
            .list_keys(caller, r.limit, r.marker.as_deref())
            .map(Into::into),
        EnableKey(r) => kms.enable_key(caller, &r.key_id).map(none),
        DisableKey(r) => kms.disable_key(caller, &r.key_id).map(none),
        ScheduleKeyDeletion(r) => kms
            .schedule_key_deletion(caller, &r.key_id, r.pending_window_in_days)
            .map(Into::into),
        CancelKeyDeletion(r) => kms.cancel_key_deletion(caller, &r.key_id).map(Into::into),
        UpdateKeyDescription(r) => kms
            .update_key_description(caller, &r.key_id, &r.description)
            .map(none),
        EnableKeyRotation(r) => kms
            .enable_key_rotation(caller, &r.key_id, r.rotation_period_in_days)
            .map(none),
        DisableKeyRotation(r) => kms.disable_key_rotation(caller, &r.key_id).map(none),
        GetKeyRotationStatus(r) => kms
            .get_key_rotation_status(caller, &r.key_id)
            .map(Into::into),
        RotateKeyOnDemand(r) => kms.rotate_key_on_demand(caller, &r.key_id).map(Into::into),
        ListKeyRotations(r) => kms
            .list_key_rotations(caller, &r.key_id, r.limit, r.marker.as_deref())
            .map(Into::into),
        CreateAlias(r) => kms
            .create_alias(caller, &r.alias_name, &r.target_key_id)
            .map(none),
        UpdateAlias(r) => kms
            .update_alias(caller, &r.alias_name, &r.target_key_id)
            .map(none),
        DeleteAlias(r) => kms.delete_alias(caller, &r.alias_name).map(none),
        ListAliases(r) => kms
            .list_aliases(caller, r.key_id.as_deref(), r.limit, r.marker.as_deref())
            .map(Into::into),
        TagResource(r) => names::tag_resource(kms, caller, r),
        UntagResource(r) => kms.untag_resource(caller, &r.key_id, &r.tag_keys).map(none),
        ListResourceTags(r) => kms
            .list_resource_tags(caller, &r.key_id, r.limit, r.marker.as_deref())
            .map(Into::into),
        GetKeyPolicy(r) => access::get_key_policy(kms, caller, r),
        PutKeyPolicy(r) => access::put_key_policy(kms, caller, r),
        CreateGrant(r) => access::create_grant(kms, caller, r),
        ListGrants(r) => kms
            .list_grants(
                caller,
                &r.key_id,
                r.grant_id.as_deref(),
                r.grantee_principal.as_deref(),
                r.limit,
                r.marker.as_deref(),
            )
            .map(Into::into),
        ListRetirableGrants(r) => kms
            .list_retirable_grants(caller, &r.retiring_principal, r.limit, r.marker.as_deref())
            .map(Into::into),
        RetireGrant(r) => kms
            .retire_grant(
                caller,
                r.grant_token.as_deref(),
                r.key_id.as_deref(),
                r.grant_id.as_deref(),
            )
            .map(none),
        RevokeGrant(r) => kms.revoke_grant(caller, &r.key_id, &r.grant_id).map(none),
        Encrypt(r) => crypto::encrypt(kms, caller, r),
        Decrypt(r) => crypto::decrypt(kms, caller, r),
        ReEncrypt(r) => crypto::re_encrypt(kms, caller, r),
        GenerateDataKey(r) => crypto::generate_data_key(kms, caller, r, true),
        GenerateDataKeyWithoutPlaintext(r) => crypto::generate_data_key(kms, caller, r, false),
        GenerateRandom(r) => crypto::generate_random(kms, caller, r),
        GetParametersForImport(r) => kms
            .get_parameters_for_import(
                caller,
                &r.key_id,
                r.wrapping_algorithm
                    .as_deref()
                    .unwrap_or("RSAES_OAEP_SHA_256"),
                r.wrapping_key_spec.as_deref().unwrap_or("RSA_2048"),
            )
            .map(Into::into),
        ImportKeyMaterial(r) => kms
            .import_key_material(
                caller,
                &r.key_id,
                r.import_token.as_bytes(),
                r.encrypted_key_material.as_bytes(),
                r.expiration_model.as_deref(),
                r.valid_to.map(|t| t as i64),
            )
            .map(none),
        DeleteImportedKeyMaterial(r) => kms
            .delete_imported_key_material(caller, &r.key_id)
            .map(none),
    }
}

fn none(_: ()) -> Output {
    Value::Null.into()
}

/// The caller with the request's grant tokens (which the KMS checks).
fn with_tokens(caller: &Caller, tokens: &[String]) -> KmsResult<Caller> {
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(KmsError::validation("GrantTokens: a token is empty"));
    }
    Ok(Caller {
        grant_tokens: tokens.to_vec(),
        ..caller.clone()
    })
}

/// A warning for principals that match nobody, `None` if there are none.
fn unresolved_warning(unresolved: &[String], advice: &str) -> Option<String> {
    (!unresolved.is_empty()).then(|| {
        format!(
            "the key policy names {} that match nobody: {}. The rest of the policy applies; {advice}",
            if unresolved.len() == 1 {
                "a principal"
            } else {
                "principals"
            },
            unresolved.join(", ")
        )
    })
}

#[cfg(test)]
mod tests;
