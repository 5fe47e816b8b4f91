//! Key policies: AWS's JSON shape with local Unix principals, and their
//! evaluation. Pure logic: parsing, validation, and the decision for one
//! request; the service supplies the request and records the decision.
//!
//! Evaluation is AWS's: an explicit Deny wins, then an Allow, else the request
//! is denied by default.
//!
//! Principals: `"*"`, `{"Unix": ["uid:1000", "user:alice", "gid:100", "group:backup"]}`,
//! or AWS's `{"AWS": ["arn:aws:iam::ACCOUNT:root", "arn:aws:iam::ACCOUNT:user/NAME"]}`
//! (partition `aws` or `kmsfs`, a bare 12-digit account id for its root): the
//! account root stands for every principal of this KMS, as in AWS, and
//! `user/NAME` / `role/NAME` name access keys made for that identity.
//! How `user:`/`group:` names are matched is decided at [`Binding`].
//! Condition keys: `kms:EncryptionContext:<key>` (the key part matched without
//! regard to case, as AWS condition keys are; values case-sensitive),
//! `kms:EncryptionContextKeys` and `kms:GrantOperations` (multi-valued: use
//! `ForAnyValue:`/`ForAllValues:`), `kmsfs:ViaMount` (Bool). Operators:
//! StringEquals, StringNotEquals, StringEqualsIgnoreCase,
//! StringNotEqualsIgnoreCase, StringLike, StringNotLike, Bool, Null.

use super::context::EncryptionContext;
use serde_json::Value;
use std::collections::BTreeMap;

pub const MAX_POLICY_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Any,
    /// `arn:PARTITION:iam::ACCOUNT:root` (`name` None) or `...:user/NAME`,
    /// `...:role/NAME`.
    Iam {
        account: String,
        name: Option<String>,
    },
    Uid(u32),
    Gid(u32),
    /// `user:NAME`.
    User(Named),
    /// `group:NAME`.
    Group(Named),
}

/// A `user:NAME` or `group:NAME` principal and what it is matched against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    /// The principal as written, e.g. `user:bob`: the key of [`PrincipalIds`].
    pub principal: String,
    pub binding: Binding,
}

impl Named {
    /// The NAME part.
    pub fn name(&self) -> &str {
        self.principal
            .split_once(':')
            .map_or(self.principal.as_str(), |(_, n)| n)
    }
}

/// What the `user:`/`group:` principals of a policy or grant resolved to
/// when it was put or created: principal string (`user:bob`) to uid or gid.
/// A name that did not resolve then is absent.
pub type PrincipalIds = BTreeMap<String, u32>;

/// How a `user:NAME` / `group:NAME` principal is matched.
///
/// The decision: a name is bound to the account it names when the policy is
/// put (PutKeyPolicy, CreateKey with a policy) or the grant is created
/// (CreateGrant), and the id it resolved to then is stored beside the
/// document ([`PrincipalIds`]). At evaluation `user:bob` bound to uid 1002
/// matches a caller only if the caller is uid 1002 *and* `bob` still
/// resolves to 1002. So:
///
/// - a deleted account matches nobody, and the rest of the policy keeps
///   working (a name that does not resolve is never an error);
/// - an account recreated under the same name with another id does not
///   inherit what the old one was given, nor does another account that is
///   handed the old id (its name differs); put the policy again (or create a
///   new grant) to give the new account access, as in AWS, where a policy
///   stores the unique id of the principal it names;
/// - a name that did not resolve when the policy was put matches nobody
///   until the policy is put again, even if the account is created later.
///
/// Policies and grants stored before ids were recorded have none
/// ([`Binding::AtUse`]) and are resolved whenever they are evaluated.
///
/// The check costs one name lookup, and only when the id already matches;
/// the service remembers lookups for a second, so evaluation on every file
/// open does not call getpwnam.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    /// Stored before ids were recorded: the name is resolved at each use.
    AtUse,
    /// Resolved to this id when put: matches it while the name still
    /// resolves to it.
    Bound(u32),
    /// Did not resolve when put: matches nobody.
    Unresolved,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Qualifier {
    Single,
    ForAnyValue,
    ForAllValues,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    StringEquals,
    StringNotEquals,
    StringEqualsIgnoreCase,
    StringNotEqualsIgnoreCase,
    StringLike,
    StringNotLike,
    Bool,
    Null,
}

/// Condition keys, resolved at parse time so evaluation does no string work.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CondKey {
    /// `kms:EncryptionContext:<key>`, the key lowercased.
    Context(String),
    ContextKeys,
    GrantOperations,
    ViaMount,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Condition {
    qualifier: Qualifier,
    op: Op,
    key: CondKey,
    values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    principals: Vec<Principal>,
    actions: Vec<String>,
    /// Which of `KNOWN_ACTIONS` the action patterns match, worked out once at
    /// parse time: matching the patterns as text for every statement of every
    /// request was most of a 20-statement policy's cost.
    known_actions: u64,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

/// The actions the service asks about, the ones every file open asks about
/// first. A request for another action matches the patterns as text.
const KNOWN_ACTIONS: [&str; 34] = [
    "kms:Decrypt",
    "kms:GenerateDataKey",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
    "kms:Encrypt",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:DescribeKey",
    "kms:CancelKeyDeletion",
    "kms:CreateAlias",
    "kms:CreateGrant",
    "kms:DeleteImportedKeyMaterial",
    "kms:DisableKey",
    "kms:DisableKeyRotation",
    "kms:EnableKey",
    "kms:EnableKeyRotation",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:GetParametersForImport",
    "kms:ImportKeyMaterial",
    "kms:ListAliases",
    "kms:ListGrants",
    "kms:ListKeyRotations",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:RetireGrant",
    "kms:RevokeGrant",
    "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:UpdateAlias",
    "kms:UpdateKeyDescription",
    "kms:DeleteAlias",
    "kms:ListKeys",
];

fn known_action_mask(patterns: &[String]) -> u64 {
    KNOWN_ACTIONS
        .iter()
        .enumerate()
        .filter(|(_, a)| patterns.iter().any(|p| like_with(p, a, true)))
        .fold(0, |m, (i, _)| m | 1 << i)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub statements: Vec<Statement>,
    /// Whether any principal is a group: only then are a caller's
    /// supplementary groups worth looking up.
    pub names_groups: bool,
    /// Whether any statement names a resource other than `*`: only then is
    /// the key's ARN needed.
    pub names_resources: bool,
    /// Whether any principal is `user:NAME` or `group:NAME`.
    pub names_accounts: bool,
}

/// Who is asking, as policies see it.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// The account of the KMS judging (what an IAM root principal names).
    pub account: String,
    /// `user/NAME` or `role/NAME` for a caller signing with an access key
    /// made for an IAM identity.
    pub iam: Option<String>,
}

/// Whether an IAM principal (`name` None: the account root) is `s`.
fn iam_matches(account: &str, name: Option<&str>, s: &Subject) -> bool {
    account == s.account && name.is_none_or(|n| s.iam.as_deref() == Some(n))
}

/// An IAM principal's account and name: `arn:PARTITION:iam::ACCOUNT:root`,
/// `...:user/NAME`, `...:role/NAME`, or a bare 12-digit account id (its root).
pub fn parse_iam(s: &str) -> Result<(&str, Option<&str>), String> {
    let bad = || {
        format!(
            "principal {s:?} is not arn:aws:iam::ACCOUNT:root, arn:aws:iam::ACCOUNT:user/NAME or role/NAME (or a 12-digit account id)"
        )
    };
    let account_ok = |a: &str| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit());
    if account_ok(s) {
        return Ok((s, None));
    }
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let ["arn", partition, "iam", "", account, resource] = parts[..] else {
        return Err(bad());
    };
    if !matches!(partition, "aws" | "kmsfs") {
        return Err(format!(
            "principal {s:?}: partition {partition:?}; this KMS answers for aws and kmsfs"
        ));
    }
    if !account_ok(account) {
        return Err(bad());
    }
    if resource == "root" {
        return Ok((account, None));
    }
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 128
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    };
    match resource.split_once('/') {
        Some(("user" | "role", n)) if name_ok(n) => Ok((account, Some(resource))),
        _ => Err(bad()),
    }
}

/// The request being judged.
#[derive(Clone)]
pub struct Request<'a> {
    pub subject: &'a Subject,
    /// Resolves the `user:`/`group:` principals (see [`Binding`]).
    pub names: &'a dyn NameResolver,
    /// e.g. `kms:Decrypt`.
    pub action: &'a str,
    pub resource: &'a str,
    pub context: Option<&'a EncryptionContext>,
    pub grant_operations: Option<&'a [String]>,
    pub via_mount: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed by the statement with this label (Sid or "Statement[i]").
    Allow(String),
    /// Denied explicitly by this statement.
    Deny(String),
    /// No statement allows it.
    DefaultDeny,
}

/// Resolves `user:NAME` / `group:NAME` to ids; injected so tests need no
/// real accounts.
pub trait NameResolver {
    fn uid(&self, name: &str) -> Option<u32>;
    fn gid(&self, name: &str) -> Option<u32>;
}

/// The system's user and group databases (getpwnam_r / getgrnam_r).
pub struct SystemNames;

impl NameResolver for SystemNames {
    fn uid(&self, name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        let mut buf = vec![0u8; 16384];
        // SAFETY: getpwnam_r with a zeroed struct and a caller-owned buffer.
        unsafe {
            let mut pw: libc::passwd = std::mem::zeroed();
            let mut out: *mut libc::passwd = std::ptr::null_mut();
            let r = libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                &mut out,
            );
            (r == 0 && !out.is_null()).then_some(pw.pw_uid)
        }
    }

    fn gid(&self, name: &str) -> Option<u32> {
        let c = std::ffi::CString::new(name).ok()?;
        let mut buf = vec![0u8; 65536];
        // SAFETY: getgrnam_r with a zeroed struct and a caller-owned buffer.
        unsafe {
            let mut gr: libc::group = std::mem::zeroed();
            let mut out: *mut libc::group = std::ptr::null_mut();
            let r = libc::getgrnam_r(
                c.as_ptr(),
                &mut gr,
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                &mut out,
            );
            (r == 0 && !out.is_null()).then_some(gr.gr_gid)
        }
    }
}

/// Parses JSON text as serde_json does, but refuses an object that names a
/// key twice: serde_json keeps the last one silently, so
/// `{"Effect": "Deny", "Effect": "Allow"}` would read as an Allow. Used for
/// the JSON documents users hand the KMS (policies, grant constraints, and
/// the CLI's JSON parameters).
pub fn parse_json_strict(text: &str) -> Result<Value, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct Strict;
    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Strict {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
            Ok(v.into())
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_string()))
        }
        fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E: Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut v = Vec::new();
            while let Some(x) = a.next_element_seed(Strict)? {
                v.push(x);
            }
            Ok(Value::Array(v))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut m = serde_json::Map::new();
            while let Some(k) = a.next_key::<String>()? {
                if m.contains_key(&k) {
                    return Err(A::Error::custom(format_args!(
                        "{k:?} appears twice in one object"
                    )));
                }
                let v = a.next_value_seed(Strict)?;
                m.insert(k, v);
            }
            Ok(Value::Object(m))
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

/// A string or a non-empty list of strings; `bools`: JSON booleans count
/// as "true"/"false" (condition values).
fn strings(v: &Value, what: &str, bools: bool) -> Result<Vec<String>, String> {
    let out: Vec<String> = match v {
        Value::String(s) => vec![s.clone()],
        Value::Bool(b) if bools => vec![b.to_string()],
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Bool(b) if bools => Ok(b.to_string()),
                _ => Err(format!("{what} must be strings")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(format!("{what} must be a string or a list of strings")),
    };
    if out.is_empty() {
        // A Deny (or a negated condition) over nothing would silently never apply.
        return Err(format!("{what} is an empty list"));
    }
    Ok(out)
}

/// Whether a principal string names a group (so the caller's
/// supplementary groups are needed to judge it).
pub fn names_group(principal: &str) -> bool {
    principal.starts_with("gid:") || principal.starts_with("group:")
}

/// Whether a principal string names an account by name (`user:` or
/// `group:`), so that it is bound to an id (see [`Binding`]).
pub fn names_account(principal: &str) -> bool {
    principal.starts_with("user:") || principal.starts_with("group:")
}

/// A principal string's syntax, names not resolved.
enum Syntax<'a> {
    Any,
    Iam(&'a str, Option<&'a str>),
    Uid(u32),
    Gid(u32),
    User(&'a str),
    Group(&'a str),
}

fn syntax(s: &str) -> Result<Syntax<'_>, String> {
    if s == "*" {
        return Ok(Syntax::Any);
    }
    if s.starts_with("arn:") {
        return parse_iam(s).map(|(a, n)| Syntax::Iam(a, n));
    }
    let bad =
        || format!("principal {s:?} is not uid:N, user:NAME, gid:N, group:NAME, an IAM ARN or *");
    let (kind, val) = s.split_once(':').ok_or_else(bad)?;
    // Digits only: `uid:+5` or `uid: 5` is a mistake, not uid 5.
    let number = || {
        val.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| val.parse::<u32>().ok())
            .flatten()
            .ok_or_else(|| format!("principal {s:?}: not a number"))
    };
    let name = || {
        if val.is_empty()
            || val
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':')
        {
            Err(format!("principal {s:?}: not a user or group name"))
        } else {
            Ok(val)
        }
    };
    match kind {
        "uid" => number().map(Syntax::Uid),
        "gid" => number().map(Syntax::Gid),
        "user" => name().map(Syntax::User),
        "group" => name().map(Syntax::Group),
        _ => Err(bad()),
    }
}

/// Parses a principal string. Names are not resolved: they match as
/// [`Binding::AtUse`] until bound with [`Principal::bind`].
pub fn parse_principal(s: &str) -> Result<Principal, String> {
    let named = || Named {
        principal: s.to_string(),
        binding: Binding::AtUse,
    };
    Ok(match syntax(s)? {
        Syntax::Any => Principal::Any,
        Syntax::Iam(account, name) => Principal::Iam {
            account: account.into(),
            name: name.map(str::to_string),
        },
        Syntax::Uid(u) => Principal::Uid(u),
        Syntax::Gid(g) => Principal::Gid(g),
        Syntax::User(_) => Principal::User(named()),
        Syntax::Group(_) => Principal::Group(named()),
    })
}

fn binding_of(principal: &str, ids: Option<&PrincipalIds>) -> Binding {
    match ids {
        None => Binding::AtUse,
        Some(m) => m
            .get(principal)
            .map_or(Binding::Unresolved, |&id| Binding::Bound(id)),
    }
}

fn in_group(g: u32, s: &Subject) -> bool {
    g == s.gid || s.groups.contains(&g)
}

/// Whether the account `name` (a user if `user`, else a group) is `s`,
/// matched as `binding` says.
fn named_matches(
    user: bool,
    name: &str,
    binding: Binding,
    s: &Subject,
    names: &dyn NameResolver,
) -> bool {
    let resolve = |n: &str| if user { names.uid(n) } else { names.gid(n) };
    let is_subject = |id: u32| if user { id == s.uid } else { in_group(id, s) };
    match binding {
        // The cheap test first: most principals are not the caller.
        Binding::Bound(id) => is_subject(id) && resolve(name) == Some(id),
        Binding::AtUse => resolve(name).is_some_and(is_subject),
        Binding::Unresolved => false,
    }
}

impl Principal {
    /// Binds a `user:`/`group:` principal to the id recorded for it
    /// (`None`: a document stored before ids were recorded).
    pub fn bind(&mut self, ids: Option<&PrincipalIds>) {
        if let Principal::User(n) | Principal::Group(n) = self {
            n.binding = binding_of(&n.principal, ids);
        }
    }

    pub fn named(&self) -> Option<&Named> {
        match self {
            Principal::User(n) | Principal::Group(n) => Some(n),
            _ => None,
        }
    }

    /// Whether this principal is the caller `s`.
    pub fn matches(&self, s: &Subject, names: &dyn NameResolver) -> bool {
        match self {
            Principal::Any => true,
            Principal::Iam { account, name } => iam_matches(account, name.as_deref(), s),
            Principal::Uid(u) => *u == s.uid,
            Principal::Gid(g) => in_group(*g, s),
            Principal::User(n) => named_matches(true, n.name(), n.binding, s, names),
            Principal::Group(n) => named_matches(false, n.name(), n.binding, s, names),
        }
    }
}

/// [`Principal::matches`] for a principal string and the ids recorded for
/// it, without building a `Principal` (grants are matched this way on every
/// request they are asked about). `*` and malformed strings match nobody.
pub fn principal_str_matches(
    principal: &str,
    ids: Option<&PrincipalIds>,
    s: &Subject,
    names: &dyn NameResolver,
) -> bool {
    match syntax(principal) {
        Ok(Syntax::Iam(account, name)) => iam_matches(account, name, s),
        Ok(Syntax::Uid(u)) => u == s.uid,
        Ok(Syntax::Gid(g)) => in_group(g, s),
        Ok(Syntax::User(n)) => named_matches(true, n, binding_of(principal, ids), s, names),
        Ok(Syntax::Group(n)) => named_matches(false, n, binding_of(principal, ids), s, names),
        Ok(Syntax::Any) | Err(_) => false,
    }
}

/// What the `user:`/`group:` principals among `principals` resolve to now:
/// the ids PutKeyPolicy, CreateKey and CreateGrant record. Names that do not
/// resolve are left out (they will match nobody).
pub fn resolve_ids<'a>(
    principals: impl IntoIterator<Item = &'a str>,
    names: &dyn NameResolver,
) -> PrincipalIds {
    let mut out = PrincipalIds::new();
    for p in principals {
        let id = match syntax(p) {
            Ok(Syntax::User(n)) => names.uid(n),
            Ok(Syntax::Group(n)) => names.gid(n),
            _ => None,
        };
        if let Some(id) = id {
            out.insert(p.to_string(), id);
        }
    }
    out
}

/// Whether the named principal `principal`, matched as `binding`, can match
/// nobody now: its name does not resolve, or no longer to the id it was
/// bound to.
pub fn matches_nobody(principal: &str, binding: Binding, names: &dyn NameResolver) -> bool {
    let now = match syntax(principal) {
        Ok(Syntax::User(n)) => names.uid(n),
        Ok(Syntax::Group(n)) => names.gid(n),
        _ => return false,
    };
    match binding {
        Binding::AtUse => now.is_none(),
        Binding::Bound(id) => now != Some(id),
        Binding::Unresolved => true,
    }
}

/// Operators, case-sensitive as in AWS.
const OPERATORS: [(&str, Op); 8] = [
    ("StringEquals", Op::StringEquals),
    ("StringNotEquals", Op::StringNotEquals),
    ("StringEqualsIgnoreCase", Op::StringEqualsIgnoreCase),
    ("StringNotEqualsIgnoreCase", Op::StringNotEqualsIgnoreCase),
    ("StringLike", Op::StringLike),
    ("StringNotLike", Op::StringNotLike),
    ("Bool", Op::Bool),
    ("Null", Op::Null),
];

fn parse_condition_block(v: &Value) -> Result<Vec<Condition>, String> {
    let Value::Object(ops) = v else {
        return Err("Condition must be an object".into());
    };
    if ops.is_empty() {
        return Err("Condition is empty: it would constrain nothing; leave it out".into());
    }
    let mut out = vec![];
    for (opname, body) in ops {
        let (qualifier, base) = match opname.split_once(':') {
            Some(("ForAnyValue", b)) => (Qualifier::ForAnyValue, b),
            Some(("ForAllValues", b)) => (Qualifier::ForAllValues, b),
            Some((q, _)) => {
                return Err(format!(
                    "condition qualifier {q:?} is not ForAnyValue or ForAllValues (qualifiers are case-sensitive)"
                ));
            }
            None => (Qualifier::Single, opname.as_str()),
        };
        let op = match OPERATORS.iter().find(|(n, _)| *n == base) {
            Some((_, op)) => *op,
            None => {
                return Err(
                    match OPERATORS.iter().find(|(n, _)| n.eq_ignore_ascii_case(base)) {
                        Some((n, _)) => format!(
                            "condition operator {base:?} is not supported; operators are case-sensitive: {n}"
                        ),
                        None => format!("condition operator {base:?} is not supported"),
                    },
                );
            }
        };
        let Value::Object(keys) = body else {
            return Err(format!("{opname} must map condition keys to values"));
        };
        if keys.is_empty() {
            return Err(format!(
                "{opname} names no condition key: it would constrain nothing"
            ));
        }
        for (key, vals) in keys {
            let lower = key.to_ascii_lowercase();
            let known = lower.starts_with("kms:encryptioncontext:")
                || matches!(
                    lower.as_str(),
                    "kms:encryptioncontextkeys" | "kms:grantoperations" | "kmsfs:viamount"
                );
            if !known {
                return Err(format!("condition key {key:?} is not supported"));
            }
            let multi = matches!(
                lower.as_str(),
                "kms:encryptioncontextkeys" | "kms:grantoperations"
            );
            if multi && qualifier == Qualifier::Single && op != Op::Null {
                return Err(format!(
                    "{key} has several values: use ForAnyValue:{base} or ForAllValues:{base}"
                ));
            }
            let ck = match lower.strip_prefix("kms:encryptioncontext:") {
                Some("") => {
                    return Err(format!(
                        "condition key {key:?} names no encryption context key"
                    ));
                }
                Some(k) => CondKey::Context(k.to_string()),
                None => match lower.as_str() {
                    "kms:encryptioncontextkeys" => CondKey::ContextKeys,
                    "kms:grantoperations" => CondKey::GrantOperations,
                    _ => CondKey::ViaMount,
                },
            };
            let values = strings(vals, &format!("the values of {key}"), true)?;
            if matches!(op, Op::Bool | Op::Null) {
                // "True" would never equal "true": the condition would
                // silently never (or, for Null, always) hold.
                if let Some(v) = values
                    .iter()
                    .find(|v| !matches!(v.as_str(), "true" | "false"))
                {
                    return Err(format!(
                        "{opname} on {key}: {v:?} is not \"true\" or \"false\""
                    ));
                }
                if op == Op::Null && values.len() != 1 {
                    return Err(format!(
                        "{opname} on {key} takes one value, \"true\" or \"false\""
                    ));
                }
            }
            out.push(Condition {
                qualifier,
                op,
                key: ck,
                values,
            });
        }
    }
    Ok(out)
}

/// Parses and validates a policy document; errors name the problem.
///
/// Unknown or miscased elements, operators, qualifiers and principal types
/// are refused, as are keys given twice and empty lists and blocks (which
/// would silently constrain nothing). `user:`/`group:` principals are not
/// resolved here, so a name without an account is not an error: bind them
/// with [`Policy::bind`] (until then they match as [`Binding::AtUse`]).
pub fn parse(doc: &str) -> Result<Policy, String> {
    if doc.len() > MAX_POLICY_BYTES {
        return Err(format!(
            "the policy is {} bytes; at most {MAX_POLICY_BYTES} are allowed",
            doc.len()
        ));
    }
    let v = parse_json_strict(doc).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => format!("the policy is malformed: {e}"),
        _ => format!("the policy is not valid JSON: {e}"),
    })?;
    let Value::Object(top) = &v else {
        return Err("the policy must be a JSON object".into());
    };
    for k in top.keys() {
        if !matches!(k.as_str(), "Version" | "Id" | "Statement") {
            return Err(format!("unknown top-level element {k:?}"));
        }
    }
    if let Some(ver) = top.get("Version")
        && ver != "2012-10-17"
    {
        return Err(format!("Version {ver} is not \"2012-10-17\""));
    }
    if top.get("Id").is_some_and(|i| !i.is_string()) {
        return Err("Id must be a string".into());
    }
    let stmts = match top.get("Statement") {
        Some(Value::Array(a)) => a.clone(),
        Some(o @ Value::Object(_)) => vec![o.clone()],
        _ => return Err("the policy needs a Statement list".into()),
    };
    if stmts.is_empty() {
        return Err("the Statement list is empty".into());
    }
    let mut statements = vec![];
    let mut names_groups = false;
    let mut names_accounts = false;
    for (i, s) in stmts.iter().enumerate() {
        let label = s
            .get("Sid")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("Statement[{i}]"));
        let err = |m: String| format!("statement {label}: {m}");
        let Value::Object(o) = s else {
            return Err(err("must be an object".into()));
        };
        for k in o.keys() {
            if !matches!(
                k.as_str(),
                "Sid" | "Effect" | "Principal" | "Action" | "Resource" | "Condition"
            ) {
                return Err(err(format!("element {k:?} is not supported")));
            }
        }
        if o.get("Sid").is_some_and(|s| !s.is_string()) {
            return Err(err("Sid must be a string".into()));
        }
        let effect = match o.get("Effect").and_then(Value::as_str) {
            Some("Allow") => Effect::Allow,
            Some("Deny") => Effect::Deny,
            _ => return Err(err("Effect must be \"Allow\" or \"Deny\"".into())),
        };
        let principals = match o.get("Principal") {
            Some(Value::String(s)) if s == "*" => vec![Principal::Any],
            Some(Value::Object(p)) => {
                let mut out = vec![];
                for (k, v) in p {
                    let aws = match k.as_str() {
                        "Unix" => false,
                        "AWS" => true,
                        _ => {
                            return Err(err(format!(
                                "principal type {k:?} is not supported; use \"Unix\" or \"AWS\" (principal types are case-sensitive)"
                            )));
                        }
                    };
                    for s in strings(v, "Principal", false).map_err(err)? {
                        if aws && s != "*" {
                            // An IAM principal, or an account id for its root.
                            let (account, name) = parse_iam(&s).map_err(err)?;
                            out.push(Principal::Iam {
                                account: account.into(),
                                name: name.map(str::to_string),
                            });
                            continue;
                        }
                        if !aws && s.starts_with("arn:") {
                            return Err(err(format!(
                                "principal {s:?} is an IAM ARN: list it under \"AWS\", not \"Unix\""
                            )));
                        }
                        names_groups |= names_group(&s);
                        names_accounts |= names_account(&s);
                        out.push(parse_principal(&s).map_err(err)?);
                    }
                }
                if out.is_empty() {
                    return Err(err("Principal lists no one".into()));
                }
                out
            }
            _ => {
                return Err(err(
                    "Principal must be \"*\", {\"Unix\": [...]} or {\"AWS\": [...]}".into(),
                ));
            }
        };
        let actions = strings(
            o.get("Action")
                .ok_or_else(|| err("Action is missing".into()))?,
            "Action",
            false,
        )
        .map_err(err)?;
        // Actions are case-insensitive: kept lowercased for evaluation.
        let actions: Vec<String> = actions
            .into_iter()
            .map(|a| a.to_ascii_lowercase())
            .collect();
        for a in &actions {
            if a != "*" && !a.starts_with("kms:") {
                return Err(err(format!("action {a:?} is not a kms: action")));
            }
        }
        let resources = strings(
            o.get("Resource")
                .ok_or_else(|| err("Resource is missing".into()))?,
            "Resource",
            false,
        )
        .map_err(err)?;
        let conditions = match o.get("Condition") {
            Some(c) => parse_condition_block(c).map_err(err)?,
            None => vec![],
        };
        statements.push(Statement {
            sid: o.get("Sid").and_then(Value::as_str).map(String::from),
            effect,
            principals,
            known_actions: known_action_mask(&actions),
            actions,
            resources,
            conditions,
        });
    }
    let names_resources = statements
        .iter()
        .any(|s| s.resources.iter().any(|r| r != "*"));
    Ok(Policy {
        statements,
        names_groups,
        names_resources,
        names_accounts,
    })
}

impl Policy {
    /// The `user:`/`group:` principals, once each, in document order.
    pub fn named_principals(&self) -> Vec<&Named> {
        let mut out: Vec<&Named> = vec![];
        for p in self.statements.iter().flat_map(|s| &s.principals) {
            if let Some(n) = p.named()
                && !out.iter().any(|o| o.principal == n.principal)
            {
                out.push(n);
            }
        }
        out
    }

    /// What the named principals resolve to now (to record when the policy
    /// is put).
    pub fn resolve_ids(&self, names: &dyn NameResolver) -> PrincipalIds {
        resolve_ids(
            self.named_principals()
                .into_iter()
                .map(|n| n.principal.as_str()),
            names,
        )
    }

    /// Binds the named principals to the ids recorded when the policy was
    /// put; `None` for a document stored before ids were recorded.
    pub fn bind(&mut self, ids: Option<&PrincipalIds>) {
        for s in &mut self.statements {
            for p in &mut s.principals {
                p.bind(ids);
            }
        }
    }

    /// The named principals that match nobody now (the account is gone, or
    /// is not the one the name was bound to): for warnings and the audit
    /// record.
    pub fn unresolved(&self, names: &dyn NameResolver) -> Vec<String> {
        self.named_principals()
            .into_iter()
            .filter(|n| matches_nobody(&n.principal, n.binding, names))
            .map(|n| n.principal.clone())
            .collect()
    }
}

/// `*` and `?` wildcards, as in StringLike, actions and resources.
pub fn like(pattern: &str, s: &str) -> bool {
    like_with(pattern, s, false)
}

/// Wildcard match without allocating; `fold` compares ASCII letters without
/// regard to case (for actions). Non-ASCII text falls back to characters so
/// that `?` matches one character.
fn like_with(pattern: &str, s: &str, fold: bool) -> bool {
    if pattern == "*" {
        return true;
    }
    // A byte scan: `contains(['*', '?'])` goes through the generic
    // char-pattern searcher, which showed in profiles of 20-statement policies.
    let first_wild = pattern.bytes().position(|b| b == b'*' || b == b'?');
    let same = |p: &str, t: &str| {
        if fold {
            p.eq_ignore_ascii_case(t)
        } else {
            p == t
        }
    };
    match first_wild {
        None => return same(pattern, s),
        // The usual shape, `projects/*`: a prefix test.
        Some(i) if i + 1 == pattern.len() && pattern.ends_with('*') => {
            return s.len() >= i && s.is_char_boundary(i) && same(&pattern[..i], &s[..i]);
        }
        Some(_) => {}
    }
    if pattern.is_ascii() && s.is_ascii() {
        wild(pattern.as_bytes(), s.as_bytes(), |a, b| {
            if fold {
                a.eq_ignore_ascii_case(&b)
            } else {
                a == b
            }
        })
    } else {
        let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
        wild(&p, &t, |a, b| {
            if fold {
                a.eq_ignore_ascii_case(&b)
            } else {
                a == b
            }
        })
    }
}

fn wild<T: Copy + PartialEq + From<u8>>(p: &[T], t: &[T], eq: impl Fn(T, T) -> bool) -> bool {
    let (star, any) = (T::from(b'*'), T::from(b'?'));
    let (mut pi, mut ti, mut back, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != star && (p[pi] == any || eq(p[pi], t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == star {
            back = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(b) = back {
            pi = b + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == star)
}

fn value_matches(op: Op, pattern: &str, v: &str) -> bool {
    match op {
        Op::StringEquals | Op::StringNotEquals | Op::Bool => pattern == v,
        Op::StringEqualsIgnoreCase | Op::StringNotEqualsIgnoreCase => {
            pattern.eq_ignore_ascii_case(v)
        }
        Op::StringLike | Op::StringNotLike => like(pattern, v),
        Op::Null => false,
    }
}

fn negated(op: Op) -> bool {
    matches!(
        op,
        Op::StringNotEquals | Op::StringNotEqualsIgnoreCase | Op::StringNotLike
    )
}

/// Judges a condition against the key's values in the request (`None`: the
/// key is absent).
fn judge<'a>(c: &Condition, vals: Option<impl Iterator<Item = &'a str>>) -> bool {
    if c.op == Op::Null {
        let want_absent = c.values.iter().any(|v| v == "true");
        let absent = vals.is_none_or(|mut v| v.next().is_none());
        return absent == want_absent;
    }
    let one = |v: &str| {
        let hit = c.values.iter().any(|p| value_matches(c.op, p, v));
        if negated(c.op) { !hit } else { hit }
    };
    match c.qualifier {
        Qualifier::Single => match vals.and_then(|mut v| v.next()) {
            Some(v) => one(v),
            // An absent key fails positive operators and satisfies negated ones.
            None => negated(c.op),
        },
        Qualifier::ForAnyValue => vals.is_some_and(|mut v| v.any(one)),
        Qualifier::ForAllValues => vals.is_none_or(|mut v| v.all(one)),
    }
}

fn condition_holds(c: &Condition, r: &Request) -> bool {
    match &c.key {
        // The key part is compared without regard to case; the first pair
        // that matches is taken.
        CondKey::Context(k) => {
            let v = r.context.and_then(|ctx| {
                // `k` is lowercased: context keys usually are too, and a
                // plain comparison settles those without folding each byte.
                ctx.iter()
                    .find(|(ck, _)| *ck == k || ck.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.as_str())
            });
            judge(c, v.map(std::iter::once))
        }
        CondKey::ContextKeys => judge(c, r.context.map(|ctx| ctx.iter().map(|(k, _)| k.as_str()))),
        CondKey::GrantOperations => {
            judge(c, r.grant_operations.map(|g| g.iter().map(String::as_str)))
        }
        CondKey::ViaMount => judge(
            c,
            Some(std::iter::once(if r.via_mount { "true" } else { "false" })),
        ),
    }
}

/// `known`: the request's action's index in `KNOWN_ACTIONS`, if it has one.
/// The action first: a bit test, where a named principal may cost a lookup.
fn statement_applies(s: &Statement, r: &Request, known: Option<usize>) -> bool {
    let action = match known {
        Some(i) => s.known_actions & 1 << i != 0,
        None => s.actions.iter().any(|a| like_with(a, r.action, true)),
    };
    action
        && s.principals.iter().any(|p| p.matches(r.subject, r.names))
        && s.resources.iter().any(|res| like(res, r.resource))
        && s.conditions.iter().all(|c| condition_holds(c, r))
}

impl Policy {
    pub fn evaluate(&self, r: &Request) -> Decision {
        let label =
            |i: usize, s: &Statement| s.sid.clone().unwrap_or_else(|| format!("Statement[{i}]"));
        let mut allow = None;
        let known = KNOWN_ACTIONS.iter().position(|a| *a == r.action);
        for (i, s) in self.statements.iter().enumerate() {
            if !statement_applies(s, r, known) {
                continue;
            }
            match s.effect {
                Effect::Deny => return Decision::Deny(label(i, s)),
                Effect::Allow => {
                    if allow.is_none() {
                        allow = Some(i);
                    }
                }
            }
        }
        allow.map_or(Decision::DefaultDeny, |i| {
            Decision::Allow(label(i, &self.statements[i]))
        })
    }
}

/// The policy a key gets when none is given: root and the key's creator may
/// do everything (AWS's default policy gives the account full access).
pub fn default_policy(creator: Option<u32>) -> String {
    let mut who = vec!["uid:0".to_string()];
    if let Some(c) = creator.filter(|&c| c != 0) {
        who.push(format!("uid:{c}"));
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [{
            "Sid": "Enable root and the key creator",
            "Effect": "Allow",
            "Principal": {"Unix": who},
            "Action": "kms:*",
            "Resource": "*"
        }]
    }))
    .expect("policy serialises")
}

/// The policy of keys kmsfs manages for a filesystem: any local user may use
/// the key through the mount (file permissions decide who opens what), and
/// root may read and administer it.
pub fn managed_key_policy() -> String {
    serde_json::to_string_pretty(&serde_json::json!({
        "Version": "2012-10-17",
        "Id": "kmsfs-managed-key",
        "Statement": [
            {
                "Sid": "Allow use through the kmsfs mount",
                "Effect": "Allow",
                "Principal": "*",
                "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey*", "kms:ReEncrypt*", "kms:DescribeKey"],
                "Resource": "*",
                "Condition": {"Bool": {"kmsfs:ViaMount": "true"}}
            },
            {
                "Sid": "Allow root to read and administer the key",
                "Effect": "Allow",
                "Principal": {"Unix": ["uid:0"]},
                "Action": "kms:*",
                "Resource": "*"
            }
        ]
    }))
    .expect("policy serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeNames;
    impl NameResolver for FakeNames {
        fn uid(&self, n: &str) -> Option<u32> {
            match n {
                "alice" => Some(1001),
                "bob" => Some(1002),
                _ => None,
            }
        }
        fn gid(&self, n: &str) -> Option<u32> {
            (n == "backup").then_some(34)
        }
    }

    const KEY: &str = "arn:kmsfs:kms:local:1:key/k";

    fn subj(uid: u32, gid: u32, groups: &[u32]) -> Subject {
        Subject {
            uid,
            gid,
            groups: groups.to_vec(),
            account: "111122223333".into(),
            iam: None,
        }
    }

    #[test]
    fn iam_principals_name_the_account_root_or_one_identity() {
        let p = parse(
            r#"{"Version":"2012-10-17","Statement":[
              {"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:root"},"Action":"kms:DescribeKey","Resource":"*"},
              {"Effect":"Allow","Principal":{"AWS":["arn:kmsfs:iam::111122223333:user/alice","444455556666"]},"Action":"kms:Decrypt","Resource":"*"}]}"#,
        )
        .unwrap();
        let unix = subj(1000, 1000, &[]);
        let alice = Subject {
            iam: Some("user/alice".into()),
            ..subj(65534, 65534, &[])
        };
        let bob = Subject {
            iam: Some("user/bob".into()),
            ..subj(65534, 65534, &[])
        };
        let other_account = Subject {
            account: "999988887777".into(),
            ..alice.clone()
        };
        let allowed =
            |s: &Subject, a: &str| matches!(p.evaluate(&req(s, a, None)), Decision::Allow(_));
        // The root stands for every principal of the account.
        for s in [&unix, &alice, &bob] {
            assert!(allowed(s, "kms:DescribeKey"), "{s:?}");
        }
        assert!(!allowed(&other_account, "kms:DescribeKey"));
        assert!(allowed(&alice, "kms:Decrypt"));
        assert!(!allowed(&bob, "kms:Decrypt"));
        assert!(!allowed(&unix, "kms:Decrypt"));
        for bad in [
            r#"{"AWS":"arn:aws:iam::1234:root"}"#,
            r#"{"AWS":"arn:aws:iam::111122223333:group/x"}"#,
            r#"{"AWS":"arn:aws-cn:iam::111122223333:root"}"#,
            r#"{"AWS":"uid:0"}"#,
            r#"{"Unix":"arn:aws:iam::111122223333:root"}"#,
        ] {
            let doc = format!(
                r#"{{"Statement":[{{"Effect":"Allow","Principal":{bad},"Action":"kms:*","Resource":"*"}}]}}"#
            );
            assert!(parse(&doc).is_err(), "{bad}");
        }
        let grantee = "arn:aws:iam::111122223333:user/alice";
        assert!(principal_str_matches(grantee, None, &alice, &FakeNames));
        assert!(!principal_str_matches(grantee, None, &bob, &FakeNames));
    }

    fn req<'a>(s: &'a Subject, action: &'a str, ctx: Option<&'a EncryptionContext>) -> Request<'a> {
        Request {
            subject: s,
            names: &FakeNames,
            action,
            resource: KEY,
            context: ctx,
            grant_operations: None,
            via_mount: true,
        }
    }

    fn path(p: &str) -> EncryptionContext {
        EncryptionContext::from_pairs([("kmsfs:path", p), ("kmsfs:fs", "f")])
    }

    /// The action mask worked out at parse time decides as matching the
    /// patterns as text does (an action in another case is not in the table,
    /// so it takes the text path).
    #[test]
    fn known_actions_decide_as_the_text_match_does() {
        let doc = r#"{"Statement":[
            {"Sid":"A","Effect":"Allow","Principal":"*","Action":["kms:generate*","kms:Re*crypt?o"],"Resource":"*"},
            {"Sid":"B","Effect":"Deny","Principal":"*","Action":"kms:List*","Resource":"*"},
            {"Sid":"C","Effect":"Allow","Principal":"*","Action":["KMS:DECRYPT","kms:*Key"],"Resource":"*"},
            {"Sid":"D","Effect":"Allow","Principal":"*","Action":"kms:?ncrypt","Resource":"*"}]}"#;
        let p = parse(doc).unwrap();
        let s = subj(1000, 1000, &[]);
        let mut decided = std::collections::BTreeSet::new();
        for a in KNOWN_ACTIONS {
            let other_case = format!("kms:{}", a[4..].to_ascii_uppercase());
            assert!(!KNOWN_ACTIONS.contains(&other_case.as_str()));
            let d = p.evaluate(&req(&s, a, None));
            assert_eq!(d, p.evaluate(&req(&s, &other_case, None)), "{a}");
            decided.insert(format!("{d:?}"));
        }
        // Every statement and the default decided something.
        assert_eq!(decided.len(), 5, "{decided:?}");
    }

    /// The policy of the issue's mount test.
    fn team_policy() -> Policy {
        parse(r#"{"Version":"2012-10-17","Statement":[
              {"Sid":"Root","Effect":"Allow","Principal":{"Unix":["uid:0"]},"Action":"kms:*","Resource":"*"},
              {"Sid":"AliceUse","Effect":"Allow","Principal":{"Unix":"user:alice"},"Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*"},
              {"Sid":"AliceNotPrivate","Effect":"Deny","Principal":{"Unix":["user:alice"]},"Action":"kms:*","Resource":"*",
               "Condition":{"StringLike":{"kms:EncryptionContext:kmsfs:path":"private/*"}}},
              {"Sid":"BackupProjects","Effect":"Allow","Principal":{"Unix":["group:backup"]},"Action":"kms:Decrypt","Resource":"*",
               "Condition":{"StringLike":{"kms:EncryptionContext:kmsfs:path":"projects/*"}}}
            ]}"#)
        .unwrap()
    }

    #[test]
    fn deny_beats_allow_and_default_is_deny() {
        let p = team_policy();
        assert!(p.names_groups);
        let alice = subj(1001, 1001, &[]);
        let (proj, private) = (path("projects/x"), path("private/y"));
        assert_eq!(
            p.evaluate(&req(&alice, "kms:Decrypt", Some(&proj))),
            Decision::Allow("AliceUse".into())
        );
        assert_eq!(
            p.evaluate(&req(&alice, "kms:Decrypt", Some(&private))),
            Decision::Deny("AliceNotPrivate".into())
        );
        assert_eq!(
            p.evaluate(&req(&alice, "kms:DisableKey", None)),
            Decision::DefaultDeny
        );
        let bob = subj(1002, 1002, &[34]);
        assert_eq!(
            p.evaluate(&req(&bob, "kms:Decrypt", Some(&proj))),
            Decision::Allow("BackupProjects".into())
        );
        assert_eq!(
            p.evaluate(&req(&bob, "kms:Decrypt", Some(&private))),
            Decision::DefaultDeny
        );
        assert_eq!(
            p.evaluate(&req(&bob, "kms:GenerateDataKey", Some(&proj))),
            Decision::DefaultDeny
        );
        let carol = subj(1003, 1003, &[]);
        assert_eq!(
            p.evaluate(&req(&carol, "kms:Decrypt", Some(&proj))),
            Decision::DefaultDeny
        );
        let root = subj(0, 0, &[]);
        assert_eq!(
            p.evaluate(&req(&root, "kms:PutKeyPolicy", None)),
            Decision::Allow("Root".into())
        );
        // Primary group counts as well as supplementary groups.
        let primary = subj(1004, 34, &[]);
        assert_eq!(
            p.evaluate(&req(&primary, "kms:Decrypt", Some(&proj))),
            Decision::Allow("BackupProjects".into())
        );
    }

    #[test]
    fn wildcards() {
        assert!(like(
            "kms:generatedatakey*",
            "kms:generatedatakeywithoutplaintext"
        ));
        assert!(like("a?c", "abc") && !like("a?c", "abbc"));
        assert!(
            like("*", "") && like("projects/*", "projects/") && !like("projects/*", "projects")
        );
        assert!(like("*/x/*", "a/x/b") && !like("*/x/*", "a/y/b"));
        let p = parse(r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"KMS:Generate*","Resource":"arn:kmsfs:kms:local:1:key/*"}}"#)
        .unwrap();
        let s = subj(5, 5, &[]);
        assert!(
            matches!(
                p.evaluate(&req(&s, "kms:GenerateDataKey", None)),
                Decision::Allow(_)
            ),
            "actions ignore case"
        );
        assert_eq!(
            p.evaluate(&req(&s, "kms:Decrypt", None)),
            Decision::DefaultDeny
        );
        let other = Request {
            resource: "arn:kmsfs:kms:local:2:key/k",
            ..req(&s, "kms:GenerateDataKey", None)
        };
        assert_eq!(p.evaluate(&other), Decision::DefaultDeny);
    }

    fn one_condition(cond: &str) -> Policy {
        parse(&format!(r#"{{"Statement":[{{"Sid":"C","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{cond}}}]}}"#))
        .unwrap()
    }

    fn allowed(p: &Policy, ctx: Option<&EncryptionContext>) -> bool {
        let s = subj(7, 7, &[]);
        matches!(p.evaluate(&req(&s, "kms:Decrypt", ctx)), Decision::Allow(_))
    }

    #[test]
    fn condition_operators() {
        let ctx = EncryptionContext::from_pairs([("Purpose", "Test"), ("team", "ops")]);
        let other = EncryptionContext::from_pairs([("purpose", "prod")]);
        let empty = EncryptionContext::new();
        let c = |s: &str| one_condition(s);
        // Context key names ignore case; values do not.
        let eq = c(r#"{"StringEquals":{"kms:EncryptionContext:purpose":"Test"}}"#);
        assert!(allowed(&eq, Some(&ctx)));
        assert!(!allowed(
            &c(r#"{"StringEquals":{"kms:EncryptionContext:purpose":"test"}}"#),
            Some(&ctx)
        ));
        assert!(allowed(
            &c(r#"{"StringEqualsIgnoreCase":{"kms:EncryptionContext:purpose":"test"}}"#),
            Some(&ctx)
        ));
        assert!(!allowed(&eq, Some(&other)) && !allowed(&eq, Some(&empty)) && !allowed(&eq, None));
        // Negated operators hold when the key is absent.
        let ne = c(r#"{"StringNotEquals":{"kms:EncryptionContext:purpose":"Test"}}"#);
        assert!(
            !allowed(&ne, Some(&ctx)) && allowed(&ne, Some(&other)) && allowed(&ne, Some(&empty))
        );
        assert!(allowed(
            &c(r#"{"StringNotEqualsIgnoreCase":{"kms:EncryptionContext:purpose":"TEST"}}"#),
            Some(&other)
        ));
        let lk = c(r#"{"StringLike":{"kms:EncryptionContext:team":["dev*","op?"]}}"#);
        assert!(allowed(&lk, Some(&ctx)) && !allowed(&lk, Some(&other)));
        let nl = c(r#"{"StringNotLike":{"kms:EncryptionContext:team":"op*"}}"#);
        assert!(!allowed(&nl, Some(&ctx)) && allowed(&nl, Some(&other)));
        // Multi-valued keys: key names compared exactly.
        let any = c(r#"{"ForAnyValue:StringEquals":{"kms:EncryptionContextKeys":"Purpose"}}"#);
        assert!(
            allowed(&any, Some(&ctx))
                && !allowed(&any, Some(&other))
                && !allowed(&any, Some(&empty))
        );
        let all =
            c(r#"{"ForAllValues:StringEquals":{"kms:EncryptionContextKeys":["Purpose","team"]}}"#);
        assert!(
            allowed(&all, Some(&ctx))
                && !allowed(&all, Some(&other))
                && allowed(&all, Some(&empty))
        );
        // Null: the key must be present ("false") or absent ("true").
        let present = c(r#"{"Null":{"kms:EncryptionContext:team":"false"}}"#);
        assert!(allowed(&present, Some(&ctx)) && !allowed(&present, Some(&other)));
        let absent = c(r#"{"Null":{"kms:EncryptionContextKeys":"true"}}"#);
        assert!(allowed(&absent, None) && !allowed(&absent, Some(&ctx)));
        // Bool on kmsfs:ViaMount.
        let s = subj(1, 1, &[]);
        let via = c(r#"{"Bool":{"kmsfs:ViaMount":"true"}}"#);
        assert!(matches!(
            via.evaluate(&req(&s, "kms:Decrypt", None)),
            Decision::Allow(_)
        ));
        let cli = Request {
            via_mount: false,
            ..req(&s, "kms:Decrypt", None)
        };
        assert_eq!(via.evaluate(&cli), Decision::DefaultDeny);
        // kms:GrantOperations.
        let g = c(r#"{"ForAllValues:StringEquals":{"kms:GrantOperations":["Decrypt","Encrypt"]}}"#);
        let ops = vec!["Decrypt".to_string()];
        let with = Request {
            grant_operations: Some(&ops),
            ..req(&s, "kms:CreateGrant", None)
        };
        assert!(matches!(g.evaluate(&with), Decision::Allow(_)));
        let bad = vec!["Decrypt".to_string(), "RetireGrant".to_string()];
        let with_bad = Request {
            grant_operations: Some(&bad),
            ..req(&s, "kms:CreateGrant", None)
        };
        assert_eq!(g.evaluate(&with_bad), Decision::DefaultDeny);
    }

    #[test]
    fn malformed_documents_are_named() {
        let bad = |doc: &str, want: &str| {
            let e = parse(doc).unwrap_err();
            assert!(e.contains(want), "{doc}: {e}");
        };
        bad("{", "not valid JSON");
        bad("[]", "JSON object");
        bad(r#"{"Statement":[]}"#, "empty");
        bad(r#"{"Version":"2008-10-17","Statement":[]}"#, "Version");
        bad(
            r#"{"Statement":[{"Effect":"Maybe","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
            "Effect",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"AWS":"x"},"Action":"kms:*","Resource":"*"}]}"#,
            "is not arn:aws:iam::ACCOUNT:root",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Service":"x"},"Action":"kms:*","Resource":"*"}]}"#,
            "use \"Unix\" or \"AWS\"",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"unix":"uid:1"},"Action":"kms:*","Resource":"*"}]}"#,
            "principal type \"unix\" is not supported",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Unix":"User:alice"},"Action":"kms:*","Resource":"*"}]}"#,
            "is not uid:N",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Unix":"uid:+5"},"Action":"kms:*","Resource":"*"}]}"#,
            "number",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Unix":"user:"},"Action":"kms:*","Resource":"*"}]}"#,
            "not a user or group name",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Unix":[]},"Action":"kms:*","Resource":"*"}]}"#,
            "empty list",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Unix":"uid:x"},"Action":"kms:*","Resource":"*"}]}"#,
            "number",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"s3:GetObject","Resource":"*"}]}"#,
            "kms:",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Resource":"*"}]}"#,
            "Action is missing",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"NumericLessThan":{"kms:GrantOperations":"1"}}}]}"#,
            "not supported",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContextKeys":"a"}}}]}"#,
            "ForAnyValue",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","NotAction":"x"}]}"#,
            "not supported",
        );
        bad(
            &format!(
                r#"{{"Statement":[{{"Sid":"{}","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}}]}}"#,
                "x".repeat(40_000)
            ),
            "at most",
        );
    }

    /// The Condition block is as strict as the rest: operators and
    /// qualifiers are case-sensitive (as in AWS), unknown operators are
    /// named, and nothing that would silently constrain nothing is taken.
    #[test]
    fn condition_blocks_fail_closed() {
        let bad = |cond: &str, want: &str| {
            let doc = format!(
                r#"{{"Statement":[{{"Sid":"S","Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*","Condition":{cond}}}]}}"#
            );
            let e = parse(&doc).unwrap_err();
            assert!(e.contains(want), "{cond}: {e}");
            assert!(e.starts_with("statement S: "), "{e}");
        };
        bad(
            r#"{"stringlike":{"kms:EncryptionContext:kmsfs:path":"private/*"}}"#,
            "operators are case-sensitive: StringLike",
        );
        bad(
            r#"{"StringEqualsIfExists":{"kms:EncryptionContext:a":"b"}}"#,
            "\"StringEqualsIfExists\" is not supported",
        );
        bad(
            r#"{"forAnyValue:StringEquals":{"kms:EncryptionContextKeys":"a"}}"#,
            "qualifier \"forAnyValue\"",
        );
        bad(
            r#"{"StringEquals":{"kms:EncryptionContex:a":"b"}}"#,
            "condition key \"kms:EncryptionContex:a\" is not supported",
        );
        bad("{}", "Condition is empty");
        bad(r#"{"StringEquals":{}}"#, "names no condition key");
        bad(
            r#"{"StringEquals":{"kms:EncryptionContext:a":[]}}"#,
            "empty list",
        );
        bad(
            r#"{"StringEquals":{"kms:EncryptionContext:":"b"}}"#,
            "names no encryption context key",
        );
        bad(
            r#"{"Null":{"kms:EncryptionContext:a":"True"}}"#,
            "\"True\" is not \"true\" or \"false\"",
        );
        bad(r#"{"Bool":{"kmsfs:ViaMount":"yes"}}"#, "\"yes\" is not");
        bad(
            r#"{"Null":{"kms:EncryptionContext:a":["true","false"]}}"#,
            "takes one value",
        );
        bad(
            r#"{"StringEquals":{"kms:EncryptionContext:a":5}}"#,
            "must be a string or a list of strings",
        );
        bad("[]", "Condition must be an object");
        // A JSON boolean is a condition value, not an action or resource.
        let e = parse(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":true,"Resource":"*"}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("Action must be a string"), "{e}");
        let p = one_condition(r#"{"Bool":{"kmsfs:ViaMount":true}}"#);
        assert!(allowed(&p, None));
    }

    /// serde_json keeps the last of two equal keys; a policy that names an
    /// element twice is refused instead of read as its last spelling.
    #[test]
    fn keys_given_twice_are_refused() {
        let e = parse(
            r#"{"Statement":[{"Effect":"Deny","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*"}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("\"Effect\" appears twice"), "{e}");
        let e = parse(
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*",
               "Condition":{"StringEquals":{"kms:EncryptionContext:a":"x"},"StringEquals":{"kms:EncryptionContext:a":"y"}}}]}"#,
        )
        .unwrap_err();
        assert!(e.contains("\"StringEquals\" appears twice"), "{e}");
        assert!(parse_json_strict(r#"{"a":[{"b":1},{"b":2}]}"#).is_ok());
        assert!(parse_json_strict("{} x").is_err());
    }

    struct Accounts(Vec<(&'static str, u32)>, Vec<(&'static str, u32)>);
    impl NameResolver for Accounts {
        fn uid(&self, n: &str) -> Option<u32> {
            self.0.iter().find(|(u, _)| *u == n).map(|(_, id)| *id)
        }
        fn gid(&self, n: &str) -> Option<u32> {
            self.1.iter().find(|(g, _)| *g == n).map(|(_, id)| *id)
        }
    }

    /// See `Binding`: a name matches the account it named when the policy
    /// was put, while that account keeps the name.
    #[test]
    fn names_are_bound_to_the_account_they_named_when_put() {
        let doc = r#"{"Statement":[
            {"Sid":"Bob","Effect":"Allow","Principal":{"Unix":["user:bob","user:ghost"]},"Action":"kms:Decrypt","Resource":"*"},
            {"Sid":"Ops","Effect":"Allow","Principal":{"Unix":"group:ops"},"Action":"kms:Encrypt","Resource":"*"},
            {"Sid":"Root","Effect":"Allow","Principal":{"Unix":"uid:0"},"Action":"kms:*","Resource":"*"}]}"#;
        let then = Accounts(vec![("bob", 1002)], vec![("ops", 50)]);
        let mut p = parse(doc).unwrap();
        assert!(p.names_accounts && p.names_groups);
        let ids = p.resolve_ids(&then);
        assert_eq!(
            ids,
            [
                ("group:ops".to_string(), 50),
                ("user:bob".to_string(), 1002)
            ]
            .into()
        );
        p.bind(Some(&ids));
        assert_eq!(p.unresolved(&then), vec!["user:ghost".to_string()]);
        let decide = |p: &Policy, names: &dyn NameResolver, s: &Subject, action: &str| {
            p.evaluate(&Request {
                names,
                ..req(s, action, None)
            })
        };
        let bob = subj(1002, 1002, &[]);
        let new_bob = subj(1010, 1010, &[]);
        let in_ops = subj(7, 7, &[50]);
        let root = subj(0, 0, &[]);
        assert_eq!(
            decide(&p, &then, &bob, "kms:Decrypt"),
            Decision::Allow("Bob".into())
        );
        assert_eq!(
            decide(&p, &then, &in_ops, "kms:Encrypt"),
            Decision::Allow("Ops".into())
        );
        // bob and ops deleted: they match nobody; the rest still works.
        let gone = Accounts(vec![], vec![]);
        assert_eq!(
            decide(&p, &gone, &bob, "kms:Decrypt"),
            Decision::DefaultDeny
        );
        assert_eq!(
            decide(&p, &gone, &in_ops, "kms:Encrypt"),
            Decision::DefaultDeny
        );
        assert_eq!(
            decide(&p, &gone, &root, "kms:PutKeyPolicy"),
            Decision::Allow("Root".into())
        );
        assert_eq!(
            p.unresolved(&gone),
            vec!["user:bob", "user:ghost", "group:ops"]
        );
        // bob recreated with another uid: the new account does not inherit,
        // and the account now holding the old uid is not bob either.
        let recreated = Accounts(vec![("bob", 1010), ("eve", 1002)], vec![("ops", 51)]);
        assert_eq!(
            decide(&p, &recreated, &new_bob, "kms:Decrypt"),
            Decision::DefaultDeny
        );
        assert_eq!(
            decide(&p, &recreated, &bob, "kms:Decrypt"),
            Decision::DefaultDeny
        );
        assert_eq!(
            decide(&p, &recreated, &subj(8, 8, &[51]), "kms:Encrypt"),
            Decision::DefaultDeny
        );
        // ghost, absent when the policy was put, does not match once created.
        let later = Accounts(vec![("bob", 1002), ("ghost", 1003)], vec![]);
        assert_eq!(
            decide(&p, &later, &subj(1003, 1003, &[]), "kms:Decrypt"),
            Decision::DefaultDeny
        );
        // A document stored before ids were recorded resolves at use.
        p.bind(None);
        assert_eq!(
            decide(&p, &recreated, &new_bob, "kms:Decrypt"),
            Decision::Allow("Bob".into())
        );
        assert_eq!(p.unresolved(&recreated), vec!["user:ghost".to_string()]);
        // Grants match principal strings the same way.
        let gids = resolve_ids(["user:bob", "uid:5", "group:ops"], &then);
        assert_eq!(gids.len(), 2);
        assert!(principal_str_matches("user:bob", Some(&gids), &bob, &then));
        assert!(!principal_str_matches("user:bob", Some(&gids), &bob, &gone));
        assert!(!principal_str_matches(
            "user:bob",
            Some(&gids),
            &new_bob,
            &recreated
        ));
        assert!(principal_str_matches(
            "user:bob", None, &new_bob, &recreated
        ));
        assert!(!principal_str_matches(
            "user:ghost",
            Some(&gids),
            &bob,
            &later
        ));
        assert!(principal_str_matches(
            "group:ops",
            Some(&gids),
            &in_ops,
            &then
        ));
        assert!(principal_str_matches(
            "uid:5",
            Some(&gids),
            &subj(5, 5, &[]),
            &gone
        ));
        assert!(!principal_str_matches("*", None, &bob, &then));
    }

    #[test]
    fn default_policies_parse() {
        let d = parse(&default_policy(Some(1000))).unwrap();
        assert!(matches!(
            d.evaluate(&req(&subj(1000, 1, &[]), "kms:PutKeyPolicy", None)),
            Decision::Allow(_)
        ));
        assert_eq!(
            d.evaluate(&req(&subj(1001, 1, &[]), "kms:Decrypt", None)),
            Decision::DefaultDeny
        );
        let m = parse(&managed_key_policy()).unwrap();
        assert!(matches!(
            m.evaluate(&req(&subj(1001, 1, &[]), "kms:Decrypt", None)),
            Decision::Allow(_)
        ));
        let user = subj(1001, 1, &[]);
        let cli = Request {
            via_mount: false,
            ..req(&user, "kms:Decrypt", None)
        };
        assert_eq!(m.evaluate(&cli), Decision::DefaultDeny);
    }
}
