//! SigV4 access keys for `kmsfs kms serve`: made, listed and deleted through
//! the CLI only (whoever holds the keystore's secret), each acting as one
//! principal of this KMS, so key policies and grants judge its requests as
//! they judge that principal's local calls.

use super::{Event, Kms};
use crate::crypto::SecretBytes;
use crate::kms::caller::{Caller, Remote, Via};
use crate::kms::clock::rfc3339;
use crate::kms::error::{KmsError, KmsResult};
use crate::kms::keystore::AccessKey;
use crate::kms::policy::NameResolver;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use zeroize::Zeroizing;

/// Access keys per keystore: a bound, not a quota anyone needs.
const MAX_ACCESS_KEYS: usize = 1000;

/// What an IAM identity's requests run as locally: nobody (65534), so that
/// only policies and grants naming the identity (or the account root) let
/// it in, never a Unix principal.
const NOBODY: u32 = 65534;

/// The uid and primary gid a principal names: `uid:N` or `user:NAME`, or
/// nobody for an IAM ARN of this KMS's account.
fn resolve(kms: &Kms, principal: &str) -> Option<(u32, u32)> {
    if principal.starts_with("arn:") {
        let (account, name) = crate::kms::policy::parse_iam(principal).ok()?;
        return (account == kms.account && name.is_some()).then_some((NOBODY, NOBODY));
    }
    let uid = if let Some(n) = principal.strip_prefix("uid:") {
        n.parse().ok()?
    } else if let Some(name) = principal.strip_prefix("user:") {
        kms.names.uid(name)?
    } else {
        return None;
    };
    Some((uid, primary_gid(uid).unwrap_or(uid)))
}

/// A uid's primary group, remembered for a minute: getpwuid_r reads the
/// user database on every call, which the server would do per request.
fn primary_gid(uid: u32) -> Option<u32> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    type Seen = HashMap<u32, (Instant, Option<u32>)>;
    static SEEN: Mutex<Option<Seen>> = Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let map = seen.get_or_insert_with(HashMap::new);
    if let Some((at, gid)) = map.get(&uid)
        && at.elapsed() < Duration::from_secs(60)
    {
        return *gid;
    }
    let gid = lookup_primary_gid(uid);
    if map.len() > 4096 {
        map.clear();
    }
    map.insert(uid, (Instant::now(), gid));
    gid
}

fn lookup_primary_gid(uid: u32) -> Option<u32> {
    let mut buf = vec![0u8; 16384];
    // SAFETY: getpwuid_r with a zeroed struct and a caller-owned buffer.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let r = libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
            &mut out,
        );
        (r == 0 && !out.is_null()).then_some(pw.pw_gid)
    }
}

fn new_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut r = [0u8; 16];
    crate::crypto::random::fill(&mut r);
    let tail: String = r
        .iter()
        .map(|b| ALPHABET[(*b & 31) as usize] as char)
        .collect();
    format!("KMSF{tail}")
}

fn cli_only(caller: &Caller, op: &str) -> KmsResult<()> {
    if caller.via != Via::Cli {
        return Err(KmsError::access_denied(format!(
            "{op} is done with the kmsfs CLI on the KMS's own host, never over the API"
        )));
    }
    Ok(())
}

impl Kms {
    /// A new access key for `principal`, in IAM's CreateAccessKey shape.
    /// The secret is shown this once; the audit record holds only the id.
    pub fn create_access_key(&self, caller: &Caller, principal: &str) -> KmsResult<Value> {
        let mut ev = Event::new("CreateAccessKey", false, json!({"principal": principal}));
        let r = (|| {
            cli_only(caller, "CreateAccessKey")?;
            if resolve(self, principal).is_none() {
                return Err(KmsError::validation(format!(
                    "--principal {principal:?} is not uid:N or user:NAME of an existing account, nor arn:kmsfs:iam::{}:user/NAME or role/NAME of this KMS's account",
                    self.account
                )));
            }
            let id = new_key_id();
            let secret = Zeroizing::new(B64.encode(SecretBytes::random(30).as_bytes()));
            let created = self.mutate(|s, now| {
                if s.access_keys.len() >= MAX_ACCESS_KEYS {
                    return Err(KmsError::new(
                        crate::kms::ErrorCode::LimitExceededException,
                        format!(
                            "this keystore holds {MAX_ACCESS_KEYS} access keys; delete some first"
                        ),
                    ));
                }
                s.access_keys.insert(
                    id.clone(),
                    AccessKey {
                        secret: SecretBytes::new(secret.as_bytes().to_vec()),
                        principal: principal.to_string(),
                        created: now,
                    },
                );
                Ok(now)
            })?;
            Ok(json!({"AccessKey": {
                "UserName": principal,
                "AccessKeyId": id,
                "Status": "Active",
                "SecretAccessKey": *secret,
                "CreateDate": rfc3339(created),
            }}))
        })();
        if let Ok(v) = &r {
            ev.response = json!({"accessKeyId": v["AccessKey"]["AccessKeyId"]});
        }
        self.finish(caller, ev, r)
    }

    /// Every access key, without secrets, in IAM's ListAccessKeys shape.
    pub fn list_access_keys(&self, caller: &Caller) -> KmsResult<Value> {
        let ev = Event::new("ListAccessKeys", true, json!({}));
        let r = cli_only(caller, "ListAccessKeys").and_then(|_| self.state()).map(|s| {
            let keys: Vec<Value> = s
                .access_keys
                .iter()
                .map(|(id, k)| {
                    json!({"UserName": k.principal, "AccessKeyId": id, "Status": "Active", "CreateDate": rfc3339(k.created)})
                })
                .collect();
            json!({"AccessKeyMetadata": keys, "IsTruncated": false})
        });
        self.finish(caller, ev, r)
    }

    pub fn delete_access_key(&self, caller: &Caller, id: &str) -> KmsResult<()> {
        let ev = Event::new("DeleteAccessKey", false, json!({"accessKeyId": id}));
        let r = cli_only(caller, "DeleteAccessKey").and_then(|_| {
            self.mutate(|s, _| {
                s.access_keys
                    .remove(id)
                    .map(|_| ())
                    .ok_or_else(|| KmsError::not_found(format!("no access key {id}")))
            })
        });
        self.finish(caller, ev, r)
    }

    /// The secret of access key `id` and the caller its requests act as
    /// (from `source_ip` with `user_agent`); `None` for an unknown key or
    /// one whose principal no longer names an account. Read from the
    /// keystore as it is now, so keys made or deleted while the server runs
    /// count at once.
    pub fn access_key(
        &self,
        id: &str,
        source_ip: &str,
        user_agent: Option<&str>,
    ) -> KmsResult<Option<(Zeroizing<String>, Caller)>> {
        let s = self.state()?;
        let Some(k) = s.access_keys.get(id) else {
            return Ok(None);
        };
        let Some((uid, gid)) = resolve(self, &k.principal) else {
            return Ok(None);
        };
        let secret = Zeroizing::new(String::from_utf8_lossy(k.secret.as_bytes()).into_owned());
        Ok(Some((
            secret,
            Caller {
                uid,
                gid,
                pid: 0,
                process: None,
                via: Via::Api,
                source_ip: Some(source_ip.to_string()),
                grant_tokens: vec![],
                remote: Some(Remote {
                    access_key_id: Some(id.to_string()),
                    user_agent: user_agent.map(str::to_string),
                    iam_arn: k.principal.starts_with("arn:").then(|| k.principal.clone()),
                }),
            },
        )))
    }
}
