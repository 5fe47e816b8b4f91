//! `kmsfs kms <operation>`: the AWS CLI's `aws kms` subcommands and flags.

use super::awsargs::{blob_arg, parse_tags, text_arg, time_arg};
use crate::kms::grant::{Constraints, JsonError};
use crate::kms::policy::parse_json_strict;
use crate::kms::{Caller, CreateKeyRequest, DataKeySpec, EncryptionContext, Kms, KmsError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Debug, Clone)]
pub struct KeyIdArg {
    /// Identifies the KMS key: key id, key ARN, alias name (alias/...) or alias ARN.
    #[arg(long)]
    pub key_id: String,
}

#[derive(Args, Debug, Clone)]
pub struct Paging {
    /// The maximum number of items to return (1 to 1000) [default: 100].
    #[arg(long)]
    pub limit: Option<u32>,
    /// The NextMarker of a truncated response, to get the items after it.
    #[arg(long)]
    pub marker: Option<String>,
}

fn ctx_arg(s: &str) -> Result<EncryptionContext, String> {
    let text = text_arg(s, "--encryption-context")?;
    // serde_json would keep the last of a key given twice, silently.
    if text.trim_start().starts_with('{') {
        parse_json_strict(text.trim())
            .map_err(|e| format!("encryption context is not a JSON object of strings: {e}"))?;
    }
    EncryptionContext::parse_cli(&text)
}

/// A JSON parameter's error: its syntax is a usage error, its content (an
/// unknown or miscased member, a key given twice) a ValidationException.
fn json_err(flag: &str, e: serde_json::Error) -> CmdError {
    match e.classify() {
        serde_json::error::Category::Data => {
            CmdError::Kms(KmsError::validation(format!("{flag}: {e}")))
        }
        _ => CmdError::Usage(format!("{flag}: malformed JSON: {e}")),
    }
}

/// `--tags`, whose JSON form may name only TagKey and TagValue: a miscased
/// or unknown member is refused rather than ignored.
fn tags_arg(args: &[String]) -> Result<Vec<(String, String)>, CmdError> {
    for a in args {
        let text = text_arg(a, "--tags")?;
        let t = text.trim();
        if t.starts_with('[') || t.starts_with('{') {
            let v = parse_json_strict(t).map_err(|e| json_err("--tags", e))?;
            let items = match &v {
                Value::Array(a) => a.as_slice(),
                o => std::slice::from_ref(o),
            };
            for (i, item) in items.iter().enumerate() {
                if let Value::Object(m) = item
                    && let Some(k) = m
                        .keys()
                        .find(|k| !matches!(k.as_str(), "TagKey" | "TagValue"))
                {
                    return Err(CmdError::Kms(KmsError::validation(format!(
                        "Tags[{i}]: unknown field {k:?}; a tag has TagKey and TagValue"
                    ))));
                }
            }
        } else {
            for field in ["TagKey=", "TagValue="] {
                if t.split(',').filter(|p| p.starts_with(field)).count() > 1 {
                    return Err(CmdError::Usage(format!(
                        "--tags: {t:?} gives {} twice; give one tag per argument",
                        field.trim_end_matches('=')
                    )));
                }
            }
        }
    }
    Ok(parse_tags(args)?)
}

/// Prints a warning of principals that match nobody (AWS's output has no
/// field for it, so the JSON stays as AWS's).
fn warn_unresolved(what: &str, unresolved: &[String], advice: &str) {
    if !unresolved.is_empty() {
        eprintln!(
            "kmsfs: warning: {what} names {} that match nobody: {}. The rest of the policy applies; {advice}",
            if unresolved.len() == 1 {
                "a principal"
            } else {
                "principals"
            },
            unresolved.join(", ")
        );
    }
}

const UNRESOLVED_AT_PUT: &str = "a user: or group: name is bound to the account it names when the policy is put, so put the policy again once the account exists.";
const UNRESOLVED_NOW: &str = "the account was deleted, or recreated with another id, since the policy was put (a recreated account does not inherit); put the policy again to bind the name to the account it names now.";

// The flags GenerateDataKey and GenerateDataKeyWithoutPlaintext share. (Not a
// doc comment: clap would show it as both commands' description.)
#[derive(Args, Debug, Clone)]
pub struct DataKeyArgs {
    #[command(flatten)]
    pub key: KeyIdArg,
    /// The length of the data key: AES_256 or AES_128.
    #[arg(long)]
    pub key_spec: Option<String>,
    /// The length of the data key in bytes, 1 to 1024, instead of --key-spec.
    #[arg(long)]
    pub number_of_bytes: Option<u32>,
    /// The encryption context to bind to the encrypted data key: `k1=v1,k2=v2` or a JSON object.
    #[arg(long)]
    pub encryption_context: Option<String>,
    /// A list of grant tokens.
    #[arg(long, num_args = 1..)]
    pub grant_tokens: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum KmsCommand {
    /// Creates a unique customer managed KMS key.
    CreateKey {
        /// A description of the KMS key.
        #[arg(long, default_value = "")]
        description: String,
        /// Tags for the KMS key: `TagKey=k,TagValue=v` (repeatable) or a JSON list.
        #[arg(long, num_args = 1..)]
        tags: Vec<String>,
        /// The cryptographic operations the KMS key is for: only ENCRYPT_DECRYPT.
        #[arg(long)]
        key_usage: Option<String>,
        /// The source of the key material: KMSFS (default, alias AWS_KMS) or EXTERNAL for imported material.
        #[arg(long)]
        origin: Option<String>,
        /// The type of KMS key to create: only SYMMETRIC_DEFAULT.
        #[arg(long)]
        key_spec: Option<String>,
        /// The key policy (JSON, or file://FILE) [default: root and the creator may do everything].
        #[arg(long)]
        policy: Option<String>,
        /// Skips the check that the policy lets the caller change the policy later.
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
    /// Provides detailed information about a KMS key.
    DescribeKey(KeyIdArg),
    /// Gets a key policy attached to the specified KMS key.
    GetKeyPolicy {
        #[command(flatten)]
        key: KeyIdArg,
        /// The name of the key policy: only default.
        #[arg(long)]
        policy_name: Option<String>,
    },
    /// Attaches a key policy to the specified KMS key.
    PutKeyPolicy {
        #[command(flatten)]
        key: KeyIdArg,
        /// The name of the key policy: only default.
        #[arg(long)]
        policy_name: Option<String>,
        /// The key policy: JSON, or file://FILE.
        #[arg(long)]
        policy: String,
        /// Skips the check that the policy lets the caller change the policy later.
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
    /// Adds a grant to a KMS key.
    CreateGrant {
        #[command(flatten)]
        key: KeyIdArg,
        /// The principal given permission by the grant: uid:N, user:NAME, gid:N or group:NAME.
        #[arg(long)]
        grantee_principal: String,
        /// The principal that may retire the grant (same forms as --grantee-principal).
        #[arg(long)]
        retiring_principal: Option<String>,
        /// The operations the grant permits: Decrypt, Encrypt, GenerateDataKey,
        /// GenerateDataKeyWithoutPlaintext, ReEncryptFrom, ReEncryptTo, CreateGrant,
        /// RetireGrant, DescribeKey.
        #[arg(long, num_args = 1.., required = true, value_delimiter = ',')]
        operations: Vec<String>,
        /// Encryption context the request must have: `EncryptionContextSubset={k=v,...}`,
        /// `EncryptionContextEquals={...}`, or JSON.
        #[arg(long)]
        constraints: Option<String>,
        /// A friendly name for the grant: 1 to 256 letters, digits and :/_-.
        #[arg(long)]
        name: Option<String>,
        /// A list of grant tokens.
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    /// Gets a list of all grants for the specified KMS key.
    ListGrants {
        #[command(flatten)]
        key: KeyIdArg,
        /// Returns only the grant with the specified grant id.
        #[arg(long)]
        grant_id: Option<String>,
        /// Returns only grants where the specified principal is the grantee.
        #[arg(long)]
        grantee_principal: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Returns information about all grants in this KMS home that have the specified retiring principal.
    ListRetirableGrants {
        /// The retiring principal whose grants to list: uid:N, user:NAME, gid:N or group:NAME.
        #[arg(long)]
        retiring_principal: String,
        #[command(flatten)]
        paging: Paging,
    },
    /// Deletes a grant, by its grant token or by key and grant id.
    RetireGrant {
        /// Identifies the grant to be retired by its grant token.
        #[arg(long)]
        grant_token: Option<String>,
        /// The KMS key associated with the grant (with --grant-id).
        #[arg(long)]
        key_id: Option<String>,
        /// Identifies the grant to retire (with --key-id).
        #[arg(long)]
        grant_id: Option<String>,
    },
    /// Deletes the specified grant.
    RevokeGrant {
        #[command(flatten)]
        key: KeyIdArg,
        /// Identifies the grant to revoke.
        #[arg(long)]
        grant_id: String,
    },
    /// Gets a list of all KMS keys in this KMS home.
    ListKeys(Paging),
    /// Sets the key state of a KMS key to enabled.
    EnableKey(KeyIdArg),
    /// Sets the state of a KMS key to disabled.
    DisableKey(KeyIdArg),
    /// Schedules the deletion of a KMS key.
    ScheduleKeyDeletion {
        #[command(flatten)]
        key: KeyIdArg,
        /// The waiting period before the key is deleted, 7 to 30 days [default: 30].
        #[arg(long)]
        pending_window_in_days: Option<u32>,
    },
    /// Cancels the deletion of a KMS key.
    CancelKeyDeletion(KeyIdArg),
    /// Updates the description of a KMS key.
    UpdateKeyDescription {
        #[command(flatten)]
        key: KeyIdArg,
        /// New description for the KMS key.
        #[arg(long)]
        description: String,
    },
    /// Enables automatic rotation of the key material of the specified KMS key.
    EnableKeyRotation {
        #[command(flatten)]
        key: KeyIdArg,
        /// The number of days between automatic rotations, 90 to 2560 [default: 365].
        #[arg(long)]
        rotation_period_in_days: Option<u32>,
    },
    /// Disables automatic rotation of the key material of the specified KMS key.
    DisableKeyRotation(KeyIdArg),
    /// Provides detailed information about the rotation status for a KMS key.
    GetKeyRotationStatus(KeyIdArg),
    /// Immediately initiates rotation of the key material of the specified KMS key.
    RotateKeyOnDemand(KeyIdArg),
    /// Returns information about all completed key material rotations for the specified KMS key.
    ListKeyRotations {
        #[command(flatten)]
        key: KeyIdArg,
        #[command(flatten)]
        paging: Paging,
    },
    /// Creates a friendly name for a KMS key.
    CreateAlias {
        /// The alias name, beginning with alias/.
        #[arg(long)]
        alias_name: String,
        /// The KMS key the alias points to: key id or key ARN.
        #[arg(long)]
        target_key_id: String,
    },
    /// Associates an existing alias with a different KMS key.
    UpdateAlias {
        /// The alias that is changing its KMS key, beginning with alias/.
        #[arg(long)]
        alias_name: String,
        /// The KMS key to associate with the alias: key id or key ARN.
        #[arg(long)]
        target_key_id: String,
    },
    /// Deletes the specified alias.
    DeleteAlias {
        /// The alias to be deleted, beginning with alias/.
        #[arg(long)]
        alias_name: String,
    },
    /// Gets a list of aliases in this KMS home.
    ListAliases {
        /// Lists only aliases that are associated with the specified KMS key.
        #[arg(long)]
        key_id: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    /// Adds or edits tags on a customer managed key.
    TagResource {
        #[command(flatten)]
        key: KeyIdArg,
        /// One or more tags: `TagKey=k,TagValue=v` (repeatable) or a JSON list.
        #[arg(long, num_args = 1.., required = true)]
        tags: Vec<String>,
    },
    /// Deletes tags from a customer managed key.
    UntagResource {
        #[command(flatten)]
        key: KeyIdArg,
        /// One or more tag keys (only the keys, not the values).
        #[arg(long, num_args = 1.., required = true)]
        tag_keys: Vec<String>,
    },
    /// Returns all tags on the specified KMS key.
    ListResourceTags {
        #[command(flatten)]
        key: KeyIdArg,
        #[command(flatten)]
        paging: Paging,
    },
    /// Encrypts plaintext of up to 4,096 bytes using a KMS key.
    Encrypt {
        #[command(flatten)]
        key: KeyIdArg,
        /// The data to encrypt: base64, or fileb://FILE for raw bytes (at most 4096).
        #[arg(long)]
        plaintext: String,
        /// The encryption context, needed again to decrypt: `k1=v1,k2=v2` or a JSON object.
        #[arg(long)]
        encryption_context: Option<String>,
        /// The encryption algorithm: only SYMMETRIC_DEFAULT.
        #[arg(long)]
        encryption_algorithm: Option<String>,
        /// A list of grant tokens.
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    /// Decrypts ciphertext that was encrypted by a KMS key.
    Decrypt {
        /// The ciphertext to decrypt: base64, or fileb://FILE for raw bytes.
        #[arg(long)]
        ciphertext_blob: String,
        /// The encryption context the data was encrypted with: `k1=v1,k2=v2` or a JSON object.
        #[arg(long)]
        encryption_context: Option<String>,
        /// The KMS key the ciphertext must have been encrypted under.
        #[arg(long)]
        key_id: Option<String>,
        /// The encryption algorithm: only SYMMETRIC_DEFAULT.
        #[arg(long)]
        encryption_algorithm: Option<String>,
        /// A list of grant tokens.
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    /// Decrypts ciphertext and then reencrypts it entirely within the KMS.
    ReEncrypt {
        /// The ciphertext to reencrypt: base64, or fileb://FILE for raw bytes.
        #[arg(long)]
        ciphertext_blob: String,
        /// The encryption context the data was encrypted with: `k1=v1,k2=v2` or a JSON object.
        #[arg(long)]
        source_encryption_context: Option<String>,
        /// The KMS key the ciphertext must have been encrypted under.
        #[arg(long)]
        source_key_id: Option<String>,
        /// The KMS key to reencrypt the data under.
        #[arg(long)]
        destination_key_id: String,
        /// The encryption context for the reencrypted data: `k1=v1,k2=v2` or a JSON object.
        #[arg(long)]
        destination_encryption_context: Option<String>,
        /// A list of grant tokens.
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    /// Returns a unique symmetric data key, in plaintext and encrypted under a KMS key.
    GenerateDataKey(DataKeyArgs),
    /// Returns a unique symmetric data key encrypted under a KMS key, without its plaintext.
    GenerateDataKeyWithoutPlaintext(DataKeyArgs),
    /// Returns a random byte string that is cryptographically secure.
    GenerateRandom {
        /// The length of the random byte string, 1 to 1024.
        #[arg(long)]
        number_of_bytes: u32,
    },
    /// Returns the public key and an import token you need to import key material for a KMS key.
    GetParametersForImport {
        #[command(flatten)]
        key: KeyIdArg,
        /// The algorithm you will wrap the key material with: only RSAES_OAEP_SHA_256.
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        wrapping_algorithm: String,
        /// The type of RSA public key to return: RSA_2048, RSA_3072 or RSA_4096.
        #[arg(long, default_value = "RSA_2048")]
        wrapping_key_spec: String,
    },
    /// Imports or reimports key material into a KMS key that was created without key material.
    ImportKeyMaterial {
        #[command(flatten)]
        key: KeyIdArg,
        /// The import token from GetParametersForImport: base64, or fileb://FILE.
        #[arg(long)]
        import_token: String,
        /// The key material wrapped with RSAES_OAEP_SHA_256: base64, or fileb://FILE.
        #[arg(long)]
        encrypted_key_material: String,
        /// Whether the key material expires: KEY_MATERIAL_EXPIRES (needs --valid-to) or
        /// KEY_MATERIAL_DOES_NOT_EXPIRE.
        #[arg(long)]
        expiration_model: Option<String>,
        /// When the key material expires: RFC 3339 time, YYYY-MM-DD or Unix seconds.
        #[arg(long, value_name = "TIME", value_parser = time_arg)]
        valid_to: Option<i64>,
    },
    /// Deletes key material that was previously imported.
    DeleteImportedKeyMaterial(KeyIdArg),
}

impl KmsCommand {
    /// Whether this command may create a KMS home that does not exist yet.
    pub fn creates_home(&self) -> bool {
        matches!(self, KmsCommand::CreateKey { .. })
    }
}

/// Failures: a usage error (exit 2-like) or a KMS error with its AWS name.
pub enum CmdError {
    Usage(String),
    Kms(KmsError),
}

impl From<KmsError> for CmdError {
    fn from(e: KmsError) -> Self {
        CmdError::Kms(e)
    }
}

impl From<String> for CmdError {
    fn from(e: String) -> Self {
        CmdError::Usage(e)
    }
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

fn ctx_opt(s: &Option<String>) -> Result<EncryptionContext, String> {
    s.as_deref()
        .map(ctx_arg)
        .transpose()
        .map(Option::unwrap_or_default)
}

fn data_key(
    kms: &Kms,
    caller: &Caller,
    a: DataKeyArgs,
    with_plaintext: bool,
) -> Result<Value, CmdError> {
    let caller = &with_tokens(caller, a.grant_tokens)?;
    let spec = DataKeySpec {
        key_spec: a.key_spec,
        number_of_bytes: a.number_of_bytes,
    };
    let r = kms.generate_data_key(
        caller,
        &a.key.key_id,
        &spec,
        &ctx_opt(&a.encryption_context)?,
        with_plaintext,
    )?;
    // AWS's field order: CiphertextBlob, Plaintext, KeyId.
    Ok(match &r.plaintext {
        Some(p) => {
            json!({"CiphertextBlob": b64(&r.ciphertext_blob), "Plaintext": b64(p.as_bytes()), "KeyId": r.key_arn})
        }
        None => json!({"CiphertextBlob": b64(&r.ciphertext_blob), "KeyId": r.key_arn}),
    })
}

/// The caller with the request's grant tokens (checked by the KMS).
fn with_tokens(caller: &Caller, tokens: Vec<String>) -> Result<Caller, String> {
    if tokens.iter().any(|t| t.is_empty()) {
        return Err("--grant-tokens: empty token".into());
    }
    Ok(Caller {
        grant_tokens: tokens,
        ..caller.clone()
    })
}

/// `EncryptionContextSubset={k=v,k2=v2}` (AWS CLI shorthand) or JSON.
/// Unknown and miscased members are a ValidationException naming them (a
/// dropped `EncryptionContextSubSet` would leave the grant unconstrained);
/// the service refuses constraints that name nothing.
fn parse_constraints(s: &str) -> Result<Constraints, CmdError> {
    let text = text_arg(s, "--constraints")?;
    let t = text.trim();
    if t.starts_with('{') {
        return Constraints::from_json(t).map_err(|e| match e {
            JsonError::Syntax(m) => CmdError::Usage(format!("--constraints: {m}")),
            JsonError::Invalid(m) => CmdError::Kms(KmsError::validation(m)),
        });
    }
    let (kind, body) = t
        .split_once('=')
        .ok_or_else(|| "--constraints: expected EncryptionContextSubset={k=v,...}".to_string())?;
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or_else(|| {
            "--constraints: the pairs go in braces: EncryptionContextSubset={k=v,...}".to_string()
        })?;
    let map: std::collections::BTreeMap<String, String> = EncryptionContext::parse_cli(inner)?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut c = Constraints::default();
    match kind {
        "EncryptionContextSubset" => c.encryption_context_subset = Some(map),
        "EncryptionContextEquals" => c.encryption_context_equals = Some(map),
        other => {
            return Err(CmdError::Kms(KmsError::validation(format!(
                "Constraints: unknown field {other:?}, expected EncryptionContextSubset or EncryptionContextEquals (field names are case-sensitive)"
            ))));
        }
    }
    Ok(c)
}

/// The operation's AWS name, used in error messages as the AWS CLI does.
pub fn operation_name(cmd: &KmsCommand) -> String {
    let dbg = format!("{cmd:?}");
    dbg.split([' ', '(', '{']).next().unwrap_or("").to_string()
}

/// Runs one operation and returns its JSON output (`Null` prints nothing).
pub fn run(kms: &Kms, caller: &Caller, cmd: KmsCommand) -> Result<Value, CmdError> {
    use KmsCommand::*;
    let v = match cmd {
        CreateKey {
            description,
            tags,
            key_usage,
            origin,
            key_spec,
            policy,
            bypass_policy_lockout_safety_check,
        } => {
            let policy = policy.map(|p| text_arg(&p, "--policy")).transpose()?;
            let req = CreateKeyRequest {
                description,
                tags: tags_arg(&tags)?,
                key_usage,
                origin,
                key_spec,
                policy,
                bypass_policy_lockout_safety_check,
            };
            let (meta, unresolved) = kms.create_key_with_warnings(caller, req)?;
            warn_unresolved("the key policy", &unresolved, UNRESOLVED_AT_PUT);
            json!({"KeyMetadata": meta})
        }
        DescribeKey(k) => json!({"KeyMetadata": kms.describe_key(caller, &k.key_id)?}),
        GetKeyPolicy { key, policy_name } => {
            let (v, unresolved) =
                kms.get_key_policy_with_warnings(caller, &key.key_id, policy_name.as_deref())?;
            warn_unresolved("the key policy", &unresolved, UNRESOLVED_NOW);
            v
        }
        PutKeyPolicy {
            key,
            policy_name,
            policy,
            bypass_policy_lockout_safety_check,
        } => {
            let doc = text_arg(&policy, "--policy")?;
            let unresolved = kms.put_key_policy_with_warnings(
                caller,
                &key.key_id,
                policy_name.as_deref(),
                &doc,
                bypass_policy_lockout_safety_check,
            )?;
            warn_unresolved("the key policy", &unresolved, UNRESOLVED_AT_PUT);
            Value::Null
        }
        CreateGrant {
            key,
            grantee_principal,
            retiring_principal,
            operations,
            constraints,
            name,
            grant_tokens,
        } => {
            let caller = &with_tokens(caller, grant_tokens)?;
            let constraints = constraints.map(|c| parse_constraints(&c)).transpose()?;
            let req = crate::kms::service::GrantRequest {
                grantee: grantee_principal,
                retiring: retiring_principal,
                operations,
                constraints,
                name,
            };
            kms.create_grant(caller, &key.key_id, req)?
        }
        ListGrants {
            key,
            grant_id,
            grantee_principal,
            paging,
        } => kms.list_grants(
            caller,
            &key.key_id,
            grant_id.as_deref(),
            grantee_principal.as_deref(),
            paging.limit,
            paging.marker.as_deref(),
        )?,
        ListRetirableGrants {
            retiring_principal,
            paging,
        } => kms.list_retirable_grants(
            caller,
            &retiring_principal,
            paging.limit,
            paging.marker.as_deref(),
        )?,
        RetireGrant {
            grant_token,
            key_id,
            grant_id,
        } => {
            kms.retire_grant(
                caller,
                grant_token.as_deref(),
                key_id.as_deref(),
                grant_id.as_deref(),
            )?;
            Value::Null
        }
        RevokeGrant { key, grant_id } => {
            kms.revoke_grant(caller, &key.key_id, &grant_id)?;
            Value::Null
        }
        ListKeys(p) => kms.list_keys(caller, p.limit, p.marker.as_deref())?,
        EnableKey(k) => {
            kms.enable_key(caller, &k.key_id)?;
            Value::Null
        }
        DisableKey(k) => {
            kms.disable_key(caller, &k.key_id)?;
            Value::Null
        }
        ScheduleKeyDeletion {
            key,
            pending_window_in_days,
        } => kms.schedule_key_deletion(caller, &key.key_id, pending_window_in_days)?,
        CancelKeyDeletion(k) => kms.cancel_key_deletion(caller, &k.key_id)?,
        UpdateKeyDescription { key, description } => {
            kms.update_key_description(caller, &key.key_id, &description)?;
            Value::Null
        }
        EnableKeyRotation {
            key,
            rotation_period_in_days,
        } => {
            kms.enable_key_rotation(caller, &key.key_id, rotation_period_in_days)?;
            Value::Null
        }
        DisableKeyRotation(k) => {
            kms.disable_key_rotation(caller, &k.key_id)?;
            Value::Null
        }
        GetKeyRotationStatus(k) => kms.get_key_rotation_status(caller, &k.key_id)?,
        RotateKeyOnDemand(k) => kms.rotate_key_on_demand(caller, &k.key_id)?,
        ListKeyRotations { key, paging } => {
            kms.list_key_rotations(caller, &key.key_id, paging.limit, paging.marker.as_deref())?
        }
        CreateAlias {
            alias_name,
            target_key_id,
        } => {
            kms.create_alias(caller, &alias_name, &target_key_id)?;
            Value::Null
        }
        UpdateAlias {
            alias_name,
            target_key_id,
        } => {
            kms.update_alias(caller, &alias_name, &target_key_id)?;
            Value::Null
        }
        DeleteAlias { alias_name } => {
            kms.delete_alias(caller, &alias_name)?;
            Value::Null
        }
        ListAliases { key_id, paging } => kms.list_aliases(
            caller,
            key_id.as_deref(),
            paging.limit,
            paging.marker.as_deref(),
        )?,
        TagResource { key, tags } => {
            kms.tag_resource(caller, &key.key_id, &tags_arg(&tags)?)?;
            Value::Null
        }
        UntagResource { key, tag_keys } => {
            kms.untag_resource(caller, &key.key_id, &tag_keys)?;
            Value::Null
        }
        ListResourceTags { key, paging } => {
            kms.list_resource_tags(caller, &key.key_id, paging.limit, paging.marker.as_deref())?
        }
        Encrypt {
            key,
            plaintext,
            encryption_context,
            encryption_algorithm,
            grant_tokens,
        } => {
            let caller = &with_tokens(caller, grant_tokens)?;
            let pt = zeroize::Zeroizing::new(blob_arg(&plaintext, "--plaintext")?);
            let ctx = ctx_opt(&encryption_context)?;
            let r = kms.encrypt(
                caller,
                &key.key_id,
                &pt,
                &ctx,
                encryption_algorithm.as_deref(),
            )?;
            json!({"CiphertextBlob": b64(&r.ciphertext_blob), "KeyId": r.key_arn, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
        }
        Decrypt {
            ciphertext_blob,
            encryption_context,
            key_id,
            encryption_algorithm,
            grant_tokens,
        } => {
            let caller = &with_tokens(caller, grant_tokens)?;
            let blob = blob_arg(&ciphertext_blob, "--ciphertext-blob")?;
            let ctx = ctx_opt(&encryption_context)?;
            let r = kms.decrypt(
                caller,
                &blob,
                &ctx,
                key_id.as_deref(),
                encryption_algorithm.as_deref(),
            )?;
            json!({"KeyId": r.key_arn, "Plaintext": b64(r.plaintext.as_bytes()), "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
        }
        ReEncrypt {
            ciphertext_blob,
            source_encryption_context,
            source_key_id,
            destination_key_id,
            destination_encryption_context,
            grant_tokens,
        } => {
            let caller = &with_tokens(caller, grant_tokens)?;
            let blob = blob_arg(&ciphertext_blob, "--ciphertext-blob")?;
            let r = kms.re_encrypt(
                caller,
                &blob,
                &ctx_opt(&source_encryption_context)?,
                source_key_id.as_deref(),
                &destination_key_id,
                &ctx_opt(&destination_encryption_context)?,
            )?;
            json!({"CiphertextBlob": b64(&r.ciphertext_blob), "SourceKeyId": r.source_key_arn, "KeyId": r.key_arn,
                   "SourceEncryptionAlgorithm": "SYMMETRIC_DEFAULT", "DestinationEncryptionAlgorithm": "SYMMETRIC_DEFAULT"})
        }
        GenerateDataKey(a) => data_key(kms, caller, a, true)?,
        GenerateDataKeyWithoutPlaintext(a) => data_key(kms, caller, a, false)?,
        GenerateRandom { number_of_bytes } => {
            json!({"Plaintext": b64(kms.generate_random(caller, number_of_bytes)?.as_bytes())})
        }
        GetParametersForImport {
            key,
            wrapping_algorithm,
            wrapping_key_spec,
        } => kms.get_parameters_for_import(
            caller,
            &key.key_id,
            &wrapping_algorithm,
            &wrapping_key_spec,
        )?,
        ImportKeyMaterial {
            key,
            import_token,
            encrypted_key_material,
            expiration_model,
            valid_to,
        } => {
            let token = blob_arg(&import_token, "--import-token")?;
            let material = blob_arg(&encrypted_key_material, "--encrypted-key-material")?;
            kms.import_key_material(
                caller,
                &key.key_id,
                &token,
                &material,
                expiration_model.as_deref(),
                valid_to,
            )?;
            Value::Null
        }
        DeleteImportedKeyMaterial(k) => {
            kms.delete_imported_key_material(caller, &k.key_id)?;
            Value::Null
        }
    };
    Ok(v)
}
