//! Grants: narrower, revocable permissions on one key for one principal,
//! optionally limited by encryption-context constraints. Pure matching logic;
//! the service stores grants in the keystore and asks `allows`.

use super::context::EncryptionContext;
use super::keyref::KeyId;
pub use super::policy::names_group;
use super::policy::{NameResolver, Principal, Subject, parse_principal};
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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
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
        if c.encryption_context_subset.is_some() && c.encryption_context_equals.is_some() {
            return Err("give EncryptionContextSubset or EncryptionContextEquals, not both".into());
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

fn principal_matches(grantee: &str, s: &Subject, names: &dyn NameResolver) -> bool {
    match parse_principal(grantee, names) {
        Ok(Principal::Any) => false, // a grant names one principal
        Ok(Principal::Uid(u)) => u == s.uid,
        Ok(Principal::Gid(g)) => g == s.gid || s.groups.contains(&g),
        Err(_) => false,
    }
}

/// Keys compared without regard to case, values exactly (AWS's rule).
fn find<'a>(ctx: &'a EncryptionContext, key: &str) -> Option<&'a str> {
    ctx.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

pub fn constraints_hold(c: &Constraints, ctx: Option<&EncryptionContext>) -> bool {
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
            && principal_matches(&self.grantee, s, names)
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
                .is_some_and(|r| principal_matches(r, s, names))
            || (self.operations.iter().any(|o| o == "RetireGrant")
                && principal_matches(&self.grantee, s, names))
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
        }
    }

    #[test]
    fn subset_and_equals_constraints() {
        let carol = Subject {
            uid: 1003,
            gid: 1003,
            groups: vec![],
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
    fn validation_and_retiring() {
        assert!(validate(&[], None).is_err());
        assert!(
            validate(&["Sign".into()], None)
                .unwrap_err()
                .contains("cannot be granted")
        );
        let c = Constraints {
            encryption_context_subset: Some(BTreeMap::new()),
            encryption_context_equals: None,
        };
        assert!(validate(&["DescribeKey".into()], Some(&c)).is_err());
        assert!(validate(&["Decrypt".into(), "RetireGrant".into()], Some(&c)).is_ok());
        let g = grant(&["Decrypt"], None);
        let carol = Subject {
            uid: 1003,
            gid: 1003,
            groups: vec![],
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
