//! `kmsfs kms <operation>`: the AWS CLI's `aws kms` subcommands and flags.

use super::awsargs::{blob_arg, parse_tags, text_arg, time_arg};
use crate::kms::grant::{Constraints, JsonError};
use crate::kms::policy::parse_json_strict;
use crate::kms::{Caller, EncryptionContext, Kms, KmsError, api};
use clap::{Args, Subcommand};
use serde_json::Value;

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

/// `kms serve`'s flags.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// TCP address to serve on, e.g. 127.0.0.1:8080 (port 0: any free port, printed); repeatable. Requests must be SigV4-signed with an access key of this KMS.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<std::net::SocketAddr>,
    /// Unix socket to serve on; a caller's identity is its uid and gid (SO_PEERCRED), no signature needed.
    #[arg(long, value_name = "PATH")]
    pub unix: Option<std::path::PathBuf>,
    /// Requests per second past which ThrottlingException is answered (AWS's quota for cryptographic operations is 5,500 to 100,000 a region).
    #[arg(long, default_value_t = 50_000)]
    pub max_rate: u32,
    /// Connections served at once; more are refused with ThrottlingException.
    #[arg(long, default_value_t = 512)]
    pub max_connections: usize,
    /// Serve plain HTTP on an address other than loopback (only behind a TLS-terminating proxy).
    #[arg(long)]
    pub insecure_http: bool,
    /// PEM certificate chain to serve TCP over TLS (https://), with --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KmsCommand {
    /// Serve this KMS over the AWS KMS JSON API (as `aws kms --endpoint-url`, boto3 and AWS SDKs speak it), in the foreground; prints one line per address once it answers.
    Serve(ServeArgs),
    /// Make a SigV4 access key whose requests act as PRINCIPAL (prints the secret once, in IAM's CreateAccessKey shape).
    CreateAccessKey {
        /// Who the key's requests act as: uid:N or user:NAME; key policies and grants judge them as that account.
        #[arg(long)]
        principal: String,
    },
    /// List the access keys (without secrets), in IAM's ListAccessKeys shape.
    ListAccessKeys,
    /// Delete an access key; requests signed with it fail from then on.
    DeleteAccessKey {
        /// The key's AccessKeyId.
        #[arg(long)]
        access_key_id: String,
    },
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

fn ctx_opt(s: &Option<String>) -> Result<EncryptionContext, String> {
    s.as_deref()
        .map(ctx_arg)
        .transpose()
        .map(Option::unwrap_or_default)
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

/// The API request a command stands for: flags become the members of the
/// same typed request the server parses from a body (`kms::api`).
pub fn request(cmd: KmsCommand) -> Result<api::Request, CmdError> {
    use KmsCommand::*;
    use api::Request as R;
    let tags = |t: &[String]| -> Result<Vec<api::Tag>, CmdError> {
        Ok(tags_arg(t)?
            .into_iter()
            .map(|(tag_key, tag_value)| api::Tag { tag_key, tag_value })
            .collect())
    };
    let key = |k: KeyIdArg| api::KeyOnly { key_id: k.key_id };
    let key_paging = |k: KeyIdArg, p: Paging| api::KeyPaging {
        key_id: k.key_id,
        limit: p.limit,
        marker: p.marker,
    };
    let blob = |v: &str, flag: &str| -> Result<api::Blob, CmdError> {
        Ok(api::Blob::new(blob_arg(v, flag)?))
    };
    let tokens = |t: Vec<String>| -> Result<Vec<String>, CmdError> {
        if t.iter().any(|t| t.is_empty()) {
            return Err(CmdError::Usage("--grant-tokens: empty token".into()));
        }
        Ok(t)
    };
    let data_key = |a: DataKeyArgs| -> Result<api::GenerateDataKey, CmdError> {
        Ok(api::GenerateDataKey {
            key_id: a.key.key_id,
            key_spec: a.key_spec,
            number_of_bytes: a.number_of_bytes,
            encryption_context: ctx_opt(&a.encryption_context)?,
            grant_tokens: tokens(a.grant_tokens)?,
            dry_run: None,
        })
    };
    Ok(match cmd {
        Serve(_) | CreateAccessKey { .. } | ListAccessKeys | DeleteAccessKey { .. } => {
            return Err(CmdError::Usage(format!(
                "{} is not an operation of the AWS KMS API",
                operation_name(&cmd)
            )));
        }
        CreateKey {
            description,
            tags: t,
            key_usage,
            origin,
            key_spec,
            policy,
            bypass_policy_lockout_safety_check,
        } => R::CreateKey(api::CreateKey {
            description: Some(description),
            tags: tags(&t)?,
            key_usage,
            origin,
            key_spec,
            policy: policy.map(|p| text_arg(&p, "--policy")).transpose()?,
            bypass_policy_lockout_safety_check,
            multi_region: None,
        }),
        DescribeKey(k) => R::DescribeKey(key(k)),
        GetKeyPolicy {
            key: k,
            policy_name,
        } => R::GetKeyPolicy(api::GetKeyPolicy {
            key_id: k.key_id,
            policy_name,
        }),
        PutKeyPolicy {
            key: k,
            policy_name,
            policy,
            bypass_policy_lockout_safety_check,
        } => R::PutKeyPolicy(api::PutKeyPolicy {
            key_id: k.key_id,
            policy_name,
            policy: text_arg(&policy, "--policy")?,
            bypass_policy_lockout_safety_check,
        }),
        CreateGrant {
            key: k,
            grantee_principal,
            retiring_principal,
            operations,
            constraints,
            name,
            grant_tokens,
        } => R::CreateGrant(api::CreateGrant {
            key_id: k.key_id,
            grantee_principal,
            retiring_principal,
            operations,
            constraints: constraints.map(|c| parse_constraints(&c)).transpose()?,
            name,
            grant_tokens: tokens(grant_tokens)?,
        }),
        ListGrants {
            key: k,
            grant_id,
            grantee_principal,
            paging,
        } => R::ListGrants(api::ListGrants {
            key_id: k.key_id,
            grant_id,
            grantee_principal,
            limit: paging.limit,
            marker: paging.marker,
        }),
        ListRetirableGrants {
            retiring_principal,
            paging,
        } => R::ListRetirableGrants(api::ListRetirableGrants {
            retiring_principal,
            limit: paging.limit,
            marker: paging.marker,
        }),
        RetireGrant {
            grant_token,
            key_id,
            grant_id,
        } => R::RetireGrant(api::RetireGrant {
            grant_token,
            key_id,
            grant_id,
        }),
        RevokeGrant { key: k, grant_id } => R::RevokeGrant(api::RevokeGrant {
            key_id: k.key_id,
            grant_id,
        }),
        ListKeys(p) => R::ListKeys(api::Paging {
            limit: p.limit,
            marker: p.marker,
        }),
        EnableKey(k) => R::EnableKey(key(k)),
        DisableKey(k) => R::DisableKey(key(k)),
        ScheduleKeyDeletion {
            key: k,
            pending_window_in_days,
        } => R::ScheduleKeyDeletion(api::ScheduleKeyDeletion {
            key_id: k.key_id,
            pending_window_in_days,
        }),
        CancelKeyDeletion(k) => R::CancelKeyDeletion(key(k)),
        UpdateKeyDescription {
            key: k,
            description,
        } => R::UpdateKeyDescription(api::UpdateKeyDescription {
            key_id: k.key_id,
            description,
        }),
        EnableKeyRotation {
            key: k,
            rotation_period_in_days,
        } => R::EnableKeyRotation(api::EnableKeyRotation {
            key_id: k.key_id,
            rotation_period_in_days,
        }),
        DisableKeyRotation(k) => R::DisableKeyRotation(key(k)),
        GetKeyRotationStatus(k) => R::GetKeyRotationStatus(key(k)),
        RotateKeyOnDemand(k) => R::RotateKeyOnDemand(key(k)),
        ListKeyRotations { key: k, paging } => R::ListKeyRotations(key_paging(k, paging)),
        CreateAlias {
            alias_name,
            target_key_id,
        } => R::CreateAlias(api::AliasTarget {
            alias_name,
            target_key_id,
        }),
        UpdateAlias {
            alias_name,
            target_key_id,
        } => R::UpdateAlias(api::AliasTarget {
            alias_name,
            target_key_id,
        }),
        DeleteAlias { alias_name } => R::DeleteAlias(api::AliasOnly { alias_name }),
        ListAliases { key_id, paging } => R::ListAliases(api::ListAliases {
            key_id,
            limit: paging.limit,
            marker: paging.marker,
        }),
        TagResource { key: k, tags: t } => R::TagResource(api::TagResource {
            key_id: k.key_id,
            tags: tags(&t)?,
        }),
        UntagResource { key: k, tag_keys } => R::UntagResource(api::UntagResource {
            key_id: k.key_id,
            tag_keys,
        }),
        ListResourceTags { key: k, paging } => R::ListResourceTags(key_paging(k, paging)),
        Encrypt {
            key: k,
            plaintext,
            encryption_context,
            encryption_algorithm,
            grant_tokens,
        } => R::Encrypt(api::Encrypt {
            key_id: k.key_id,
            plaintext: blob(&plaintext, "--plaintext")?,
            encryption_context: ctx_opt(&encryption_context)?,
            encryption_algorithm,
            grant_tokens: tokens(grant_tokens)?,
            dry_run: None,
        }),
        Decrypt {
            ciphertext_blob,
            encryption_context,
            key_id,
            encryption_algorithm,
            grant_tokens,
        } => R::Decrypt(api::Decrypt {
            ciphertext_blob: blob(&ciphertext_blob, "--ciphertext-blob")?,
            encryption_context: ctx_opt(&encryption_context)?,
            key_id,
            encryption_algorithm,
            grant_tokens: tokens(grant_tokens)?,
            dry_run: None,
        }),
        ReEncrypt {
            ciphertext_blob,
            source_encryption_context,
            source_key_id,
            destination_key_id,
            destination_encryption_context,
            grant_tokens,
        } => R::ReEncrypt(api::ReEncrypt {
            ciphertext_blob: blob(&ciphertext_blob, "--ciphertext-blob")?,
            source_encryption_context: ctx_opt(&source_encryption_context)?,
            source_key_id,
            destination_key_id,
            destination_encryption_context: ctx_opt(&destination_encryption_context)?,
            grant_tokens: tokens(grant_tokens)?,
            dry_run: None,
        }),
        GenerateDataKey(a) => R::GenerateDataKey(data_key(a)?),
        GenerateDataKeyWithoutPlaintext(a) => R::GenerateDataKeyWithoutPlaintext(data_key(a)?),
        GenerateRandom { number_of_bytes } => {
            R::GenerateRandom(api::GenerateRandom { number_of_bytes })
        }
        GetParametersForImport {
            key: k,
            wrapping_algorithm,
            wrapping_key_spec,
        } => R::GetParametersForImport(api::GetParametersForImport {
            key_id: k.key_id,
            wrapping_algorithm: Some(wrapping_algorithm),
            wrapping_key_spec: Some(wrapping_key_spec),
        }),
        ImportKeyMaterial {
            key: k,
            import_token,
            encrypted_key_material,
            expiration_model,
            valid_to,
        } => R::ImportKeyMaterial(api::ImportKeyMaterial {
            key_id: k.key_id,
            import_token: blob(&import_token, "--import-token")?,
            encrypted_key_material: blob(&encrypted_key_material, "--encrypted-key-material")?,
            expiration_model,
            valid_to: valid_to.map(|t| t as f64),
        }),
        DeleteImportedKeyMaterial(k) => R::DeleteImportedKeyMaterial(key(k)),
    })
}

/// Runs one operation and returns its JSON output (`Null` prints nothing).
pub fn run(kms: &Kms, caller: &Caller, cmd: KmsCommand) -> Result<Value, CmdError> {
    match cmd {
        KmsCommand::CreateAccessKey { principal } => {
            return Ok(kms.create_access_key(caller, &principal)?);
        }
        KmsCommand::ListAccessKeys => return Ok(kms.list_access_keys(caller)?),
        KmsCommand::DeleteAccessKey { access_key_id } => {
            kms.delete_access_key(caller, &access_key_id)?;
            return Ok(Value::Null);
        }
        _ => {}
    }
    let out = api::run(kms, caller, request(cmd)?)?;
    if let Some(w) = out.warning {
        eprintln!("kmsfs: warning: {w}");
    }
    Ok(out.value)
}
