//! `kmsfs kms <operation>`: the AWS CLI's `aws kms` subcommands and flags.

use super::awsargs::{blob_arg, parse_tags, text_arg};
use crate::kms::clock::parse_time;
use crate::kms::{Caller, CreateKeyRequest, DataKeySpec, EncryptionContext, Kms, KmsError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[derive(Args, Debug, Clone)]
pub struct KeyIdArg {
    /// Key id, key ARN, alias name (alias/...) or alias ARN.
    #[arg(long)]
    pub key_id: String,
}

#[derive(Args, Debug, Clone)]
pub struct Paging {
    #[arg(long)]
    pub limit: Option<u32>,
    #[arg(long)]
    pub marker: Option<String>,
}

fn ctx_arg(s: &str) -> Result<EncryptionContext, String> {
    let text = text_arg(s, "--encryption-context")?;
    EncryptionContext::parse_cli(&text)
}

/// The flags GenerateDataKey and GenerateDataKeyWithoutPlaintext share.
#[derive(Args, Debug, Clone)]
pub struct DataKeyArgs {
    #[command(flatten)]
    pub key: KeyIdArg,
    /// AES_256 or AES_128.
    #[arg(long)]
    pub key_spec: Option<String>,
    /// 1 to 1024, instead of --key-spec.
    #[arg(long)]
    pub number_of_bytes: Option<u32>,
    #[arg(long)]
    pub encryption_context: Option<String>,
    #[arg(long, num_args = 1..)]
    pub grant_tokens: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum KmsCommand {
    CreateKey {
        #[arg(long, default_value = "")]
        description: String,
        /// `TagKey=k,TagValue=v` (repeatable) or a JSON list.
        #[arg(long, num_args = 1..)]
        tags: Vec<String>,
        #[arg(long)]
        key_usage: Option<String>,
        /// KMSFS (default, alias AWS_KMS) or EXTERNAL for imported material.
        #[arg(long)]
        origin: Option<String>,
        #[arg(long)]
        key_spec: Option<String>,
        /// Key policy (JSON, or file://FILE) [default: root and the creator may do everything].
        #[arg(long)]
        policy: Option<String>,
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
    DescribeKey(KeyIdArg),
    GetKeyPolicy {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long)]
        policy_name: Option<String>,
    },
    PutKeyPolicy {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long)]
        policy_name: Option<String>,
        /// JSON, or file://FILE.
        #[arg(long)]
        policy: String,
        #[arg(long)]
        bypass_policy_lockout_safety_check: bool,
    },
    CreateGrant {
        #[command(flatten)]
        key: KeyIdArg,
        /// uid:N, user:NAME, gid:N or group:NAME.
        #[arg(long)]
        grantee_principal: String,
        #[arg(long)]
        retiring_principal: Option<String>,
        /// Decrypt, Encrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext,
        /// ReEncryptFrom, ReEncryptTo, CreateGrant, RetireGrant, DescribeKey.
        #[arg(long, num_args = 1.., required = true, value_delimiter = ',')]
        operations: Vec<String>,
        /// `EncryptionContextSubset={k=v,...}`, `EncryptionContextEquals={...}`, or JSON.
        #[arg(long)]
        constraints: Option<String>,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    ListGrants {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long)]
        grant_id: Option<String>,
        #[arg(long)]
        grantee_principal: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    ListRetirableGrants {
        #[arg(long)]
        retiring_principal: String,
        #[command(flatten)]
        paging: Paging,
    },
    RetireGrant {
        #[arg(long)]
        grant_token: Option<String>,
        #[arg(long)]
        key_id: Option<String>,
        #[arg(long)]
        grant_id: Option<String>,
    },
    RevokeGrant {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long)]
        grant_id: String,
    },
    ListKeys(Paging),
    EnableKey(KeyIdArg),
    DisableKey(KeyIdArg),
    ScheduleKeyDeletion {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long)]
        pending_window_in_days: Option<u32>,
    },
    CancelKeyDeletion(KeyIdArg),
    UpdateKeyDescription {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long)]
        description: String,
    },
    EnableKeyRotation {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long)]
        rotation_period_in_days: Option<u32>,
    },
    DisableKeyRotation(KeyIdArg),
    GetKeyRotationStatus(KeyIdArg),
    RotateKeyOnDemand(KeyIdArg),
    ListKeyRotations {
        #[command(flatten)]
        key: KeyIdArg,
        #[command(flatten)]
        paging: Paging,
    },
    CreateAlias {
        #[arg(long)]
        alias_name: String,
        #[arg(long)]
        target_key_id: String,
    },
    UpdateAlias {
        #[arg(long)]
        alias_name: String,
        #[arg(long)]
        target_key_id: String,
    },
    DeleteAlias {
        #[arg(long)]
        alias_name: String,
    },
    ListAliases {
        #[arg(long)]
        key_id: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
    TagResource {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long, num_args = 1.., required = true)]
        tags: Vec<String>,
    },
    UntagResource {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long, num_args = 1.., required = true)]
        tag_keys: Vec<String>,
    },
    ListResourceTags {
        #[command(flatten)]
        key: KeyIdArg,
        #[command(flatten)]
        paging: Paging,
    },
    Encrypt {
        #[command(flatten)]
        key: KeyIdArg,
        /// base64, or fileb://FILE for raw bytes (at most 4096).
        #[arg(long)]
        plaintext: String,
        /// `k1=v1,k2=v2` or a JSON object.
        #[arg(long)]
        encryption_context: Option<String>,
        #[arg(long)]
        encryption_algorithm: Option<String>,
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    Decrypt {
        /// base64, or fileb://FILE for raw bytes.
        #[arg(long)]
        ciphertext_blob: String,
        #[arg(long)]
        encryption_context: Option<String>,
        #[arg(long)]
        key_id: Option<String>,
        #[arg(long)]
        encryption_algorithm: Option<String>,
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    ReEncrypt {
        #[arg(long)]
        ciphertext_blob: String,
        #[arg(long)]
        source_encryption_context: Option<String>,
        #[arg(long)]
        source_key_id: Option<String>,
        #[arg(long)]
        destination_key_id: String,
        #[arg(long)]
        destination_encryption_context: Option<String>,
        #[arg(long, num_args = 1..)]
        grant_tokens: Vec<String>,
    },
    GenerateDataKey(DataKeyArgs),
    GenerateDataKeyWithoutPlaintext(DataKeyArgs),
    GenerateRandom {
        #[arg(long)]
        number_of_bytes: u32,
    },
    GetParametersForImport {
        #[command(flatten)]
        key: KeyIdArg,
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        wrapping_algorithm: String,
        #[arg(long, default_value = "RSA_2048")]
        wrapping_key_spec: String,
    },
    ImportKeyMaterial {
        #[command(flatten)]
        key: KeyIdArg,
        /// base64, or fileb://FILE.
        #[arg(long)]
        import_token: String,
        /// base64, or fileb://FILE: the material wrapped with RSAES_OAEP_SHA_256.
        #[arg(long)]
        encrypted_key_material: String,
        /// KEY_MATERIAL_EXPIRES (needs --valid-to) or KEY_MATERIAL_DOES_NOT_EXPIRE.
        #[arg(long)]
        expiration_model: Option<String>,
        /// RFC 3339 time or Unix seconds.
        #[arg(long)]
        valid_to: Option<String>,
    },
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
fn parse_constraints(s: &str) -> Result<crate::kms::grant::Constraints, String> {
    let text = text_arg(s, "--constraints")?;
    let t = text.trim();
    if t.starts_with('{') {
        return serde_json::from_str(t).map_err(|e| format!("--constraints: malformed JSON: {e}"));
    }
    let (kind, body) = t
        .split_once('=')
        .ok_or("--constraints: expected EncryptionContextSubset={k=v,...}")?;
    let inner = body
        .strip_prefix('{')
        .and_then(|b| b.strip_suffix('}'))
        .ok_or("--constraints: the pairs go in braces: EncryptionContextSubset={k=v,...}")?;
    let map: std::collections::BTreeMap<String, String> = EncryptionContext::parse_cli(inner)?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut c = crate::kms::grant::Constraints::default();
    match kind {
        "EncryptionContextSubset" => c.encryption_context_subset = Some(map),
        "EncryptionContextEquals" => c.encryption_context_equals = Some(map),
        other => {
            return Err(format!(
                "--constraints: {other} is not EncryptionContextSubset or EncryptionContextEquals"
            ));
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
                tags: parse_tags(&tags)?,
                key_usage,
                origin,
                key_spec,
                policy,
                bypass_policy_lockout_safety_check,
            };
            json!({"KeyMetadata": kms.create_key(caller, req)?})
        }
        DescribeKey(k) => json!({"KeyMetadata": kms.describe_key(caller, &k.key_id)?}),
        GetKeyPolicy { key, policy_name } => {
            kms.get_key_policy(caller, &key.key_id, policy_name.as_deref())?
        }
        PutKeyPolicy {
            key,
            policy_name,
            policy,
            bypass_policy_lockout_safety_check,
        } => {
            let doc = text_arg(&policy, "--policy")?;
            kms.put_key_policy(
                caller,
                &key.key_id,
                policy_name.as_deref(),
                &doc,
                bypass_policy_lockout_safety_check,
            )?;
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
            kms.tag_resource(caller, &key.key_id, &parse_tags(&tags)?)?;
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
            let valid_to = valid_to
                .map(|v| {
                    parse_time(&v).ok_or(format!(
                        "--valid-to {v:?} is not an RFC 3339 time or Unix seconds"
                    ))
                })
                .transpose()?;
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
