//! Key policies: AWS's JSON shape with local Unix principals, and their
//! evaluation. Pure logic: parsing, validation, and the decision for one
//! request; the service supplies the request and records the decision.
//!
//! Evaluation is AWS's: an explicit Deny wins, then an Allow, else the request
//! is denied by default.
//!
//! Principals: `"*"`, or `{"Unix": ["uid:1000", "user:alice", "gid:100", "group:backup"]}`.
//! Condition keys: `kms:EncryptionContext:<key>` (the key part matched without
//! regard to case, as AWS condition keys are; values case-sensitive),
//! `kms:EncryptionContextKeys` and `kms:GrantOperations` (multi-valued: use
//! `ForAnyValue:`/`ForAllValues:`), `kmsfs:ViaMount` (Bool). Operators:
//! StringEquals, StringNotEquals, StringEqualsIgnoreCase,
//! StringNotEqualsIgnoreCase, StringLike, StringNotLike, Bool, Null.

use super::context::EncryptionContext;
use serde_json::Value;

pub const MAX_POLICY_BYTES: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Any,
    Uid(u32),
    Gid(u32),
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
}

/// Who is asking, as policies see it.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// The request being judged.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub subject: &'a Subject,
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

fn strings(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("{what} must be strings"))
            })
            .collect(),
        Value::Bool(b) => Ok(vec![b.to_string()]),
        _ => Err(format!("{what} must be a string or a list of strings")),
    }
}

/// Whether a principal string names a group (so the caller's
/// supplementary groups are needed to judge it).
pub fn names_group(principal: &str) -> bool {
    principal.starts_with("gid:") || principal.starts_with("group:")
}

pub fn parse_principal(s: &str, names: &dyn NameResolver) -> Result<Principal, String> {
    if s == "*" {
        return Ok(Principal::Any);
    }
    let (kind, val) = s.split_once(':').ok_or_else(|| {
        format!("principal {s:?} is not uid:N, user:NAME, gid:N, group:NAME or *")
    })?;
    match kind {
        "uid" => val
            .parse()
            .map(Principal::Uid)
            .map_err(|_| format!("principal {s:?}: not a number")),
        "gid" => val
            .parse()
            .map(Principal::Gid)
            .map_err(|_| format!("principal {s:?}: not a number")),
        "user" => names
            .uid(val)
            .map(Principal::Uid)
            .ok_or_else(|| format!("principal {s:?}: no such user")),
        "group" => names
            .gid(val)
            .map(Principal::Gid)
            .ok_or_else(|| format!("principal {s:?}: no such group")),
        _ => Err(format!(
            "principal {s:?} is not uid:N, user:NAME, gid:N, group:NAME or *"
        )),
    }
}

fn parse_condition_block(v: &Value) -> Result<Vec<Condition>, String> {
    let Value::Object(ops) = v else {
        return Err("Condition must be an object".into());
    };
    let mut out = vec![];
    for (opname, body) in ops {
        let (qualifier, base) = match opname.split_once(':') {
            Some(("ForAnyValue", b)) => (Qualifier::ForAnyValue, b),
            Some(("ForAllValues", b)) => (Qualifier::ForAllValues, b),
            Some((q, _)) => {
                return Err(format!(
                    "condition qualifier {q:?} is not ForAnyValue or ForAllValues"
                ));
            }
            None => (Qualifier::Single, opname.as_str()),
        };
        let op = match base {
            "StringEquals" => Op::StringEquals,
            "StringNotEquals" => Op::StringNotEquals,
            "StringEqualsIgnoreCase" => Op::StringEqualsIgnoreCase,
            "StringNotEqualsIgnoreCase" => Op::StringNotEqualsIgnoreCase,
            "StringLike" => Op::StringLike,
            "StringNotLike" => Op::StringNotLike,
            "Bool" => Op::Bool,
            "Null" => Op::Null,
            other => return Err(format!("condition operator {other:?} is not supported")),
        };
        let Value::Object(keys) = body else {
            return Err(format!("{opname} must map condition keys to values"));
        };
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
                Some(k) => CondKey::Context(k.to_string()),
                None => match lower.as_str() {
                    "kms:encryptioncontextkeys" => CondKey::ContextKeys,
                    "kms:grantoperations" => CondKey::GrantOperations,
                    _ => CondKey::ViaMount,
                },
            };
            out.push(Condition {
                qualifier,
                op,
                key: ck,
                values: strings(vals, key)?,
            });
        }
    }
    Ok(out)
}

/// Parses and validates a policy document; errors name the problem.
pub fn parse(doc: &str, names: &dyn NameResolver) -> Result<Policy, String> {
    if doc.len() > MAX_POLICY_BYTES {
        return Err(format!(
            "the policy is {} bytes; at most {MAX_POLICY_BYTES} are allowed",
            doc.len()
        ));
    }
    let v: Value =
        serde_json::from_str(doc).map_err(|e| format!("the policy is not valid JSON: {e}"))?;
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
                    if k != "Unix" {
                        return Err(err(format!(
                            "principal type {k:?} is not supported; use \"Unix\""
                        )));
                    }
                    for s in strings(v, "Principal")? {
                        if names_group(&s) {
                            names_groups = true;
                        }
                        out.push(parse_principal(&s, names).map_err(err)?);
                    }
                }
                if out.is_empty() {
                    return Err(err("Principal lists no one".into()));
                }
                out
            }
            _ => return Err(err("Principal must be \"*\" or {\"Unix\": [...]}".into())),
        };
        let actions = strings(
            o.get("Action")
                .ok_or_else(|| err("Action is missing".into()))?,
            "Action",
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
    })
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

fn principal_matches(p: &Principal, s: &Subject) -> bool {
    match p {
        Principal::Any => true,
        Principal::Uid(u) => *u == s.uid,
        Principal::Gid(g) => *g == s.gid || s.groups.contains(g),
    }
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
fn statement_applies(s: &Statement, r: &Request, known: Option<usize>) -> bool {
    s.principals.iter().any(|p| principal_matches(p, r.subject))
        && match known {
            Some(i) => s.known_actions & 1 << i != 0,
            None => s.actions.iter().any(|a| like_with(a, r.action, true)),
        }
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
        }
    }

    fn req<'a>(s: &'a Subject, action: &'a str, ctx: Option<&'a EncryptionContext>) -> Request<'a> {
        Request {
            subject: s,
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
        let p = parse(doc, &FakeNames).unwrap();
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
        parse(
            r#"{"Version":"2012-10-17","Statement":[
              {"Sid":"Root","Effect":"Allow","Principal":{"Unix":["uid:0"]},"Action":"kms:*","Resource":"*"},
              {"Sid":"AliceUse","Effect":"Allow","Principal":{"Unix":"user:alice"},"Action":["kms:Decrypt","kms:GenerateDataKey"],"Resource":"*"},
              {"Sid":"AliceNotPrivate","Effect":"Deny","Principal":{"Unix":["user:alice"]},"Action":"kms:*","Resource":"*",
               "Condition":{"StringLike":{"kms:EncryptionContext:kmsfs:path":"private/*"}}},
              {"Sid":"BackupProjects","Effect":"Allow","Principal":{"Unix":["group:backup"]},"Action":"kms:Decrypt","Resource":"*",
               "Condition":{"StringLike":{"kms:EncryptionContext:kmsfs:path":"projects/*"}}}
            ]}"#,
            &FakeNames,
        )
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
        let p = parse(
            r#"{"Statement":{"Effect":"Allow","Principal":"*","Action":"KMS:Generate*","Resource":"arn:kmsfs:kms:local:1:key/*"}}"#,
            &FakeNames,
        )
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
        parse(
            &format!(r#"{{"Statement":[{{"Sid":"C","Effect":"Allow","Principal":"*","Action":"kms:*","Resource":"*","Condition":{cond}}}]}}"#),
            &FakeNames,
        )
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
            let e = parse(doc, &FakeNames).unwrap_err();
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
            "Unix",
        );
        bad(
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Unix":"user:nobody-here"},"Action":"kms:*","Resource":"*"}]}"#,
            "no such user",
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

    #[test]
    fn default_policies_parse() {
        let d = parse(&default_policy(Some(1000)), &FakeNames).unwrap();
        assert!(matches!(
            d.evaluate(&req(&subj(1000, 1, &[]), "kms:PutKeyPolicy", None)),
            Decision::Allow(_)
        ));
        assert_eq!(
            d.evaluate(&req(&subj(1001, 1, &[]), "kms:Decrypt", None)),
            Decision::DefaultDeny
        );
        let m = parse(&managed_key_policy(), &FakeNames).unwrap();
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
