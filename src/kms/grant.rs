//! Grants: narrower, revocable permissions on one key for one principal,
//! optionally limited by encryption-context constraints. Pure matching logic;
//! the service stores grants in the keystore and asks `allows`.
//!
//! A grant's `user:`/`group:` principals are bound to the ids they named
//! when the grant was created, exactly as a key policy's are when it is put
//! (see [`super::policy::Binding`]): a deleted account matches nobody, and an
//! account recreated under the name with another id does not inherit the
//! grant.

use super::context::EncryptionContext;
use super::keyref::KeyId;
pub use super::policy::names_group;
use super::policy::{NameResolver, PrincipalIds, Subject, principal_str_matches};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Operations a grant can allow, in AWS's spelling.
pub const OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "CreateGrant",
    "RetireGrant",
    "DescribeKey",
];

/// Operations that take an encryption context: the only ones a grant with
/// constraints may allow (as in AWS).
const CRYPTO_OPERATIONS: &[&str] = &[
    "Decrypt",
    "Encrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "ReEncryptFrom",
    "ReEncryptTo",
    "RetireGrant",
    "CreateGrant",
];

/// A grant's encryption-context constraints, in AWS's JSON shape. Unknown
/// and miscased members are refused (`EncryptionContextSubSet` would
/// otherwise read as no constraint at all), as is a grant whose constraints
/// name nothing: see [`validate`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Constraints {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context_subset: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encryption_context_equals: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    pub token: String,
    pub key_id: KeyId,
    pub name: Option<String>,
    pub grantee: String,
    pub retiring: Option<String>,
    pub operations: Vec<String>,
    pub constraints: Option<Constraints>,
    pub created: i64,
    pub issuer_uid: u32,
    /// What the `user:`/`group:` grantee and retiring principal resolved to
    /// when the grant was created; `None` for grants created before ids were
    /// recorded (their names are resolved at use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_ids: Option<PrincipalIds>,
}

/// Why a JSON document was refused: its syntax (a usage error) or its
/// content (ValidationException).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    Syntax(String),
    Invalid(String),
}

/// Both are a ValidationException to a library caller (the CLI tells a
/// syntax error apart as a usage error).
impl From<JsonError> for super::error::KmsError {
    fn from(e: JsonError) -> Self {
        match e {
            JsonError::Syntax(m) | JsonError::Invalid(m) => Self::validation(m),
        }
    }
}

impl Constraints {
    /// Constraints from AWS's JSON, e.g.
    /// `{"EncryptionContextSubset": {"k": "v"}}`. Unknown or miscased
    /// members, keys given twice and values that are not strings are
    /// `Invalid`, with a message naming them.
    pub fn from_json(text: &str) -> Result<Self, JsonError> {
        use serde_json::error::Category;
        let v = super::policy::parse_json_strict(text).map_err(|e| match e.classify() {
            Category::Data => JsonError::Invalid(format!("Constraints: {e}")),
            _ => JsonError::Syntax(format!("Constraints: malformed JSON: {e}")),
        })?;
        if !v.is_object() {
            return Err(JsonError::Invalid(
                "Constraints must be an object with EncryptionContextSubset or EncryptionContextEquals".into(),
            ));
        }
        serde_json::from_value(v).map_err(|e| JsonError::Invalid(format!("Constraints: {e}")))
    }
}

/// Validates a grant request's operations and constraints.
pub fn validate(operations: &[String], constraints: Option<&Constraints>) -> Result<(), String> {
    if operations.is_empty() {
        return Err("Operations must list at least one operation".into());
    }
    for op in operations {
        if !OPERATIONS.contains(&op.as_str()) {
            return Err(format!(
                "operation {op:?} cannot be granted; choose from {}",
                OPERATIONS.join(", ")
            ));
        }
    }
    if let Some(c) = constraints {
        match (&c.encryption_context_subset, &c.encryption_context_equals) {
            (Some(_), Some(_)) => {
                return Err(
                    "give EncryptionContextSubset or EncryptionContextEquals, not both".into(),
                );
            }
            // Constraints that name nothing would allow every context.
            (None, None) => {
                return Err("Constraints must give EncryptionContextSubset or EncryptionContextEquals; leave Constraints out for a grant without them".into());
            }
            (Some(m), None) | (None, Some(m)) => {
                let field = if c.encryption_context_subset.is_some() {
                    "EncryptionContextSubset"
                } else {
                    "EncryptionContextEquals"
                };
                if m.is_empty() {
                    return Err(format!(
                        "Constraints.{field} is empty: it would constrain nothing; name at least one encryption context pair"
                    ));
                }
                if m.keys().any(String::is_empty) {
                    return Err(format!(
                        "Constraints.{field}: encryption context keys must not be empty"
                    ));
                }
            }
        }
        if let Some(op) = operations
            .iter()
            .find(|o| !CRYPTO_OPERATIONS.contains(&o.as_str()))
        {
            return Err(format!(
                "a grant with encryption-context constraints cannot allow {op}"
            ));
        }
    }
    Ok(())
}

/// Keys compared without regard to case, values exactly (AWS's rule).
fn find<'a>(ctx: &'a EncryptionContext, key: &str) -> Option<&'a str> {
    ctx.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

pub fn constraints_hold(c: &Constraints, ctx: Option<&EncryptionContext>) -> bool {
    // Constraints naming nothing: only a grant stored before they were
    // refused has them, made from a miscased member that was dropped. Its
    // issuer meant to constrain it; it allows nothing (fail closed).
    if c.encryption_context_subset.is_none() && c.encryption_context_equals.is_none() {
        return false;
    }
    let empty = EncryptionContext::new();
    let ctx = ctx.unwrap_or(&empty);
    if let Some(sub) = &c.encryption_context_subset
        && !sub.iter().all(|(k, v)| find(ctx, k) == Some(v.as_str()))
    {
        return false;
    }
    if let Some(eq) = &c.encryption_context_equals
        && (eq.len() != ctx.len() || !eq.iter().all(|(k, v)| find(ctx, k) == Some(v.as_str())))
    {
        return false;
    }
    true
}

impl Grant {
    /// Whether `principal` (the grantee or retiring principal) is `s`; `*`
    /// is no grant's principal.
    fn is(&self, principal: &str, s: &Subject, names: &dyn NameResolver) -> bool {
        principal_str_matches(principal, self.principal_ids.as_ref(), s, names)
    }

    /// Whether this grant lets `s` do `operation` (AWS name, no `kms:`) on
    /// `key` with `ctx`.
    pub fn allows(
        &self,
        s: &Subject,
        operation: &str,
        key: &KeyId,
        ctx: Option<&EncryptionContext>,
        names: &dyn NameResolver,
    ) -> bool {
        self.key_id == *key
            && self.operations.iter().any(|o| o == operation)
            && self.is(&self.grantee, s, names)
            && self
                .constraints
                .as_ref()
                .is_none_or(|c| constraints_hold(c, ctx))
    }

    pub fn can_retire(&self, s: &Subject, names: &dyn NameResolver) -> bool {
        s.uid == 0
            || self
                .retiring
                .as_deref()
                .is_some_and(|r| self.is(r, s, names))
            || (self.operations.iter().any(|o| o == "RetireGrant")
                && self.is(&self.grantee, s, names))
    }

    /// Same request as an earlier one with this name (AWS's idempotent retry).
    pub fn same_request(&self, other: &Grant) -> bool {
        self.name.is_some()
            && self.name == other.name
            && self.key_id == other.key_id
            && self.grantee == other.grantee
            && self.retiring == other.retiring
            && self.operations == other.operations
            && self.constraints == other.constraints
            // The same names bound to other accounts are another request.
            && (self.principal_ids.is_none()
                || other.principal_ids.is_none()
                || self.principal_ids == other.principal_ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Names;
    impl NameResolver for Names {
        fn uid(&self, n: &str) -> Option<u32> {
            (n == "carol").then_some(1003)
        }
        fn gid(&self, _: &str) -> Option<u32> {
            None
        }
    }

    fn grant(ops: &[&str], c: Option<Constraints>) -> Grant {
        Grant {
            grant_id: "g".into(),
            token: "t".into(),
            key_id: KeyId([1; 16]),
            name: None,
            grantee: "user:carol".into(),
            retiring: Some("uid:0".into()),
            operations: ops.iter().map(|s| s.to_string()).collect(),
            constraints: c,
            created: 0,
            issuer_uid: 0,
            principal_ids: None,
        }
    }

    #[test]
    fn subset_and_equals_constraints() {
        let carol = Subject {
            uid: 1003,
            gid: 1003,
            groups: vec![],
            ..Default::default()
        };
        let sub = Constraints {
            encryption_context_subset: Some(
                [("kmsfs:path".to_string(), "shared/report.txt".to_string())].into(),
            ),
            encryption_context_equals: None,
        };
        let g = grant(&["Decrypt"], Some(sub));
        let k = KeyId([1; 16]);
        let ctx = |p: &str| EncryptionContext::from_pairs([("kmsfs:path", p), ("kmsfs:fs", "f")]);
        assert!(g.allows(
            &carol,
            "Decrypt",
            &k,
            Some(&ctx("shared/report.txt")),
            &Names
        ));
        assert!(!g.allows(
            &carol,
            "Decrypt",
            &k,
            Some(&ctx("shared/other.txt")),
            &Names
        ));
        assert!(!g.allows(
            &carol,
            "Encrypt",
            &k,
            Some(&ctx("shared/report.txt")),
            &Names
        ));
        assert!(!g.allows(
            &carol,
            "Decrypt",
            &KeyId([2; 16]),
            Some(&ctx("shared/report.txt")),
            &Names
        ));
        let dave = Subject {
            uid: 1004,
            gid: 1004,
            groups: vec![],
            ..Default::default()
        };
        assert!(!g.allows(
            &dave,
            "Decrypt",
            &k,
            Some(&ctx("shared/report.txt")),
            &Names
        ));
        // Keys ignore case, values do not.
        let upper = EncryptionContext::from_pairs([("KMSFS:PATH", "shared/report.txt")]);
        assert!(g.allows(&carol, "Decrypt", &k, Some(&upper), &Names));
        let upper_val = EncryptionContext::from_pairs([("kmsfs:path", "SHARED/report.txt")]);
        assert!(!g.allows(&carol, "Decrypt", &k, Some(&upper_val), &Names));

        let eq = Constraints {
            encryption_context_subset: None,
            encryption_context_equals: Some([("a".to_string(), "1".to_string())].into()),
        };
        let g = grant(&["Decrypt"], Some(eq));
        assert!(g.allows(
            &carol,
            "Decrypt",
            &k,
            Some(&EncryptionContext::from_pairs([("A", "1")])),
            &Names
        ));
        assert!(!g.allows(
            &carol,
            "Decrypt",
            &k,
            Some(&EncryptionContext::from_pairs([("a", "1"), ("b", "2")])),
            &Names
        ));
        assert!(!g.allows(&carol, "Decrypt", &k, None, &Names));
    }

    #[test]
    fn constraints_json_refuses_unknown_and_miscased_members() {
        let ok =
            Constraints::from_json(r#"{"EncryptionContextSubset": {"kmsfs:path": "a"}}"#).unwrap();
        assert_eq!(
            ok.encryption_context_subset,
            Some([("kmsfs:path".to_string(), "a".to_string())].into())
        );
        let invalid = |text: &str, want: &str| match Constraints::from_json(text) {
            Err(JsonError::Invalid(m)) => assert!(m.contains(want), "{text}: {m}"),
            other => panic!("{text}: {other:?}"),
        };
        invalid(
            r#"{"EncryptionContextSubSet": {"kmsfs:path": "a"}}"#,
            "unknown field `EncryptionContextSubSet`",
        );
        invalid(
            r#"{"encryptionContextEquals": {"a": "b"}}"#,
            "unknown field `encryptionContextEquals`",
        );
        invalid(
            r#"{"EncryptionContextSubset": {"a": "b"}, "Extra": 1}"#,
            "unknown field `Extra`",
        );
        invalid(
            r#"{"EncryptionContextSubset": {"a": "b", "a": "c"}}"#,
            "\"a\" appears twice",
        );
        invalid(r#"{"EncryptionContextSubset": {"a": 1}}"#, "invalid type");
        invalid("[]", "must be an object");
        assert!(matches!(
            Constraints::from_json("{\"EncryptionContextSubset\":"),
            Err(JsonError::Syntax(_))
        ));
        // Stored before empty constraints were refused: allows nothing.
        assert!(!constraints_hold(&Constraints::default(), None));
    }

    #[test]
    fn validation_and_retiring() {
        assert!(validate(&[], None).is_err());
        assert!(
            validate(&["Sign".into()], None)
                .unwrap_err()
                .contains("cannot be granted")
        );
        let c = Constraints {
            encryption_context_subset: Some([("a".to_string(), "1".to_string())].into()),
            encryption_context_equals: None,
        };
        assert!(
            validate(&["DescribeKey".into()], Some(&c))
                .unwrap_err()
                .contains("cannot allow DescribeKey")
        );
        assert!(validate(&["Decrypt".into(), "RetireGrant".into()], Some(&c)).is_ok());
        // Constraints that name nothing, or an empty map, constrain nothing.
        let dec = ["Decrypt".to_string()];
        let e = validate(&dec, Some(&Constraints::default())).unwrap_err();
        assert!(e.contains("must give EncryptionContextSubset"), "{e}");
        for (sub, eq, field) in [
            (Some(BTreeMap::new()), None, "EncryptionContextSubset"),
            (None, Some(BTreeMap::new()), "EncryptionContextEquals"),
        ] {
            let c = Constraints {
                encryption_context_subset: sub,
                encryption_context_equals: eq,
            };
            let e = validate(&dec, Some(&c)).unwrap_err();
            assert!(e.contains(&format!("Constraints.{field} is empty")), "{e}");
        }
        let blank_key = Constraints {
            encryption_context_subset: Some([(String::new(), "v".to_string())].into()),
            encryption_context_equals: None,
        };
        assert!(
            validate(&dec, Some(&blank_key))
                .unwrap_err()
                .contains("must not be empty")
        );
        let g = grant(&["Decrypt"], None);
        let carol = Subject {
            uid: 1003,
            gid: 1003,
            groups: vec![],
            ..Default::default()
        };
        assert!(
            !g.can_retire(&carol, &Names),
            "carol may not retire without RetireGrant"
        );
        assert!(g.can_retire(&Subject::default(), &Names), "root retires");
        let g2 = grant(&["Decrypt", "RetireGrant"], None);
        assert!(g2.can_retire(&carol, &Names));
    }
}
