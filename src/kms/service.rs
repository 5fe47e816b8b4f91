//! The KMS service: AWS KMS's symmetric-key operations over the sealed keystore,
//! each one checked against key state and caller, and each one audited.
//!
//! Reads work on an in-memory copy of the keystore that is reloaded when the
//! file changes on disk (another process wrote it); writes take the keystore's
//! file lock, apply the change to a copy, persist it, then publish it.

use super::audit::{AdditionalEventData, AuditLog, Record, Resource, UserIdentity};
use super::blob::{self, BlobHeader};
use super::caller::{Caller, Via};
use super::clock::{Clock, DAY, SystemClock, rfc3339};
use super::context::EncryptionContext;
use super::error::{ErrorCode, KmsError, KmsResult};
use super::grant::{self, Constraints, Grant};
use super::key::{ImportState, Key, KeyManager, KeyState, Op, Origin, Rotation, check_state};
use super::keyref::{KeyId, KeyRef, MANAGED_ALIAS_PREFIX, validate_alias_name};
use super::keystore::{
    Alias, HomeError, HomeErrorKind, KmsHome, RootKeySpec, RootKeys, RootSecret, Stamp, State,
};
use super::policy::{
    self, Decision, NameResolver, Policy, PrincipalIds, Request as PolicyRequest, Subject,
    SystemNames,
};
use crate::crypto::kdf::{Argon2Params, hkdf256, hmac_sha256};
use crate::crypto::{AeadKey, Key256, SecretBytes};
use serde::Serialize;

mod access_keys;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

pub const SYMMETRIC_DEFAULT: &str = "SYMMETRIC_DEFAULT";
const BLOB_KDF_INFO: &[u8] = b"kmsfs blob v1";
const MAX_DESCRIPTION: usize = 8192;
const MAX_TAGS: usize = 50;
const MAX_ON_DEMAND_ROTATIONS: usize = 10;
const IMPORT_PARAMETERS_VALID: i64 = DAY;

/// What DescribeKey, CreateKey and friends return, in AWS's shape.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct KeyMetadata {
    #[serde(rename = "AWSAccountId")]
    pub aws_account_id: String,
    pub key_id: String,
    pub arn: String,
    pub creation_date: String,
    pub enabled: bool,
    pub description: String,
    pub key_usage: &'static str,
    pub key_state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_deletion_window_in_days: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_to: Option<String>,
    pub origin: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_model: Option<String>,
    pub key_manager: &'static str,
    pub customer_master_key_spec: &'static str,
    pub key_spec: &'static str,
    pub encryption_algorithms: Vec<&'static str>,
    pub multi_region: bool,
    pub key_rotation_enabled: bool,
    pub current_key_material_version: Option<u32>,
}

#[derive(Debug, Default, Clone)]
pub struct CreateKeyRequest {
    pub description: String,
    pub tags: Vec<(String, String)>,
    /// Only ENCRYPT_DECRYPT (the default) is supported for symmetric keys.
    pub key_usage: Option<String>,
    /// KMSFS (default; `AWS_KMS` is accepted as a synonym) or EXTERNAL.
    pub origin: Option<String>,
    /// Only SYMMETRIC_DEFAULT.
    pub key_spec: Option<String>,
    /// The key policy; the default policy (root and the creator) if absent.
    pub policy: Option<String>,
    pub bypass_policy_lockout_safety_check: bool,
}

#[derive(Debug)]
pub struct EncryptResponse {
    pub ciphertext_blob: Vec<u8>,
    pub key_arn: String,
}

#[derive(Debug)]
pub struct DecryptResponse {
    pub plaintext: SecretBytes,
    pub key_arn: String,
}

#[derive(Debug)]
pub struct DataKey {
    pub ciphertext_blob: Vec<u8>,
    pub plaintext: Option<SecretBytes>,
    pub key_arn: String,
}

#[derive(Debug)]
pub struct ReEncryptResponse {
    pub ciphertext_blob: Vec<u8>,
    pub source_key_arn: String,
    pub key_arn: String,
}

#[derive(Debug, Default, Clone)]
pub struct DataKeySpec {
    pub key_spec: Option<String>,
    pub number_of_bytes: Option<u32>,
}

impl DataKeySpec {
    pub fn aes_256() -> Self {
        DataKeySpec {
            key_spec: Some("AES_256".into()),
            number_of_bytes: None,
        }
    }

    fn len(&self) -> KmsResult<usize> {
        match (&self.key_spec, self.number_of_bytes) {
            (Some(_), Some(_)) => Err(KmsError::validation(
                "give either KeySpec or NumberOfBytes, not both",
            )),
            (None, None) => Err(KmsError::validation(
                "give KeySpec (AES_256, AES_128) or NumberOfBytes",
            )),
            (Some(s), None) => match s.as_str() {
                "AES_256" => Ok(32),
                "AES_128" => Ok(16),
                other => Err(KmsError::validation(format!(
                    "KeySpec {other:?} is not AES_256 or AES_128"
                ))),
            },
            (None, Some(n)) => random_len(n),
        }
    }
}

fn random_len(n: u32) -> KmsResult<usize> {
    if (1..=1024).contains(&n) {
        Ok(n as usize)
    } else {
        Err(KmsError::validation(format!(
            "NumberOfBytes is {n}; it must be 1 to 1024"
        )))
    }
}

/// One audit event under construction.
struct Event {
    name: &'static str,
    read_only: bool,
    /// Serialised once, when the call starts: the hot operations pass a small
    /// struct rather than building a `Value` map per call.
    params: Box<RawValue>,
    response: Value,
    key: Option<KeyId>,
    /// What authorisation sees of the request: the encryption context and,
    /// for CreateGrant, the operations being granted.
    ctx: Option<EncryptionContext>,
    grant_ops: Option<Vec<String>>,
    /// How the call was allowed or denied, for the audit record.
    authz: Option<Value>,
}

impl Event {
    fn new(name: &'static str, read_only: bool, params: impl Serialize) -> Self {
        let params =
            serde_json::value::to_raw_value(&params).expect("request parameters serialise");
        Event {
            name,
            read_only,
            params,
            response: Value::Null,
            key: None,
            ctx: None,
            grant_ops: None,
            authz: None,
        }
    }

    fn with_ctx(mut self, ctx: &EncryptionContext) -> Self {
        self.ctx = Some(ctx.clone());
        self
    }
}

/// requestParameters of the cryptographic operations.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CryptoParams<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    key_id: Option<&'a str>,
    encryption_context: &'a EncryptionContext,
    #[serde(skip_serializing_if = "Option::is_none")]
    encryption_algorithm: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_spec: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    number_of_bytes: Option<u32>,
}

impl<'a> CryptoParams<'a> {
    fn new(key_id: Option<&'a str>, ctx: &'a EncryptionContext) -> Self {
        CryptoParams {
            key_id,
            encryption_context: ctx,
            encryption_algorithm: None,
            key_spec: None,
            number_of_bytes: None,
        }
    }
}

struct Store {
    home: KmsHome,
    spec: RootKeySpec,
    keys: RootKeys,
    writer: Mutex<()>,
}

struct Inner {
    state: Arc<State>,
    stamp: Option<Stamp>,
    generation: u64,
}

/// Options for opening a service.
pub struct Options {
    pub clock: Arc<dyn Clock>,
    pub argon2: Argon2Params,
    /// What the audit log calls this program (`userAgent`).
    pub user_agent: String,
    /// Resolves `user:NAME` / `group:NAME` principals: the system's user and
    /// group databases, or a stand-in in tests.
    pub names: Arc<dyn NameResolver + Send + Sync>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            argon2: Argon2Params::default(),
            user_agent: format!("kmsfs/{}", env!("CARGO_PKG_VERSION")),
            names: Arc::new(SystemNames),
        }
    }
}

/// A parsed policy, the text it was parsed from (`None`: the default), and
/// its principals that matched nobody when last looked at.
struct CachedPolicy {
    text: Option<String>,
    policy: Arc<Policy>,
    unresolved: Arc<[String]>,
    checked: Seen,
}

/// When a remembered answer was found out: it is used within the same second
/// of the service's clock and of real time (tests move the clock to forget).
#[derive(Clone, Copy)]
struct Seen(i64, std::time::Instant);

impl Seen {
    fn now(clock: &dyn Clock) -> Self {
        Seen(clock.now(), std::time::Instant::now())
    }

    fn is_fresh(&self, clock: &dyn Clock) -> bool {
        self.0 == clock.now() && self.1.elapsed() < std::time::Duration::from_secs(1)
    }
}

/// Name lookups for `user:`/`group:` principals, remembered for a second
/// (see [`Seen`]): policies and grants are evaluated on every file open,
/// and getpwnam_r reads /etc/passwd (or asks NSS) each time. A deleted or
/// recreated account is seen within a second. What is recorded when a
/// policy is put or a grant created is looked up afresh ([`Self::fresh`]).
struct NameCache {
    inner: Arc<dyn NameResolver + Send + Sync>,
    clock: Arc<dyn Clock>,
    users: NameMap,
    groups: NameMap,
}

/// Names remembered at most; past it, stale ones are forgotten.
const NAME_CACHE_MAX: usize = 4096;

type NameMap = RwLock<HashMap<String, (Seen, Option<u32>)>>;

impl NameCache {
    fn new(inner: Arc<dyn NameResolver + Send + Sync>, clock: Arc<dyn Clock>) -> Self {
        NameCache {
            inner,
            clock,
            users: RwLock::new(HashMap::new()),
            groups: RwLock::new(HashMap::new()),
        }
    }

    fn lookup(
        &self,
        map: &NameMap,
        name: &str,
        resolve: impl FnOnce(&str) -> Option<u32>,
    ) -> Option<u32> {
        if let Some((at, id)) = map.read().unwrap_or_else(|e| e.into_inner()).get(name)
            && at.is_fresh(&*self.clock)
        {
            return *id;
        }
        let id = resolve(name);
        let at = Seen::now(&*self.clock);
        let mut m = map.write().unwrap_or_else(|e| e.into_inner());
        if m.len() >= NAME_CACHE_MAX {
            m.retain(|_, (t, _)| t.is_fresh(&*self.clock));
            if m.len() >= NAME_CACHE_MAX {
                m.clear();
            }
        }
        m.insert(name.to_string(), (at, id));
        id
    }

    /// The resolver itself, never a remembered answer.
    fn fresh(&self) -> &dyn NameResolver {
        &*self.inner
    }
}

impl NameResolver for NameCache {
    fn uid(&self, name: &str) -> Option<u32> {
        self.lookup(&self.users, name, |n| self.inner.uid(n))
    }

    fn gid(&self, name: &str) -> Option<u32> {
        self.lookup(&self.groups, name, |n| self.inner.gid(n))
    }
}

pub struct Kms {
    account: String,
    /// Parsed key policies, keyed by key and checked against the policy text.
    policies: Mutex<HashMap<KeyId, CachedPolicy>>,
    inner: RwLock<Inner>,
    store: Option<Store>,
    audit: Option<AuditLog>,
    clock: Arc<dyn Clock>,
    next_due: AtomicI64,
    request_counter: AtomicU64,
    /// The constant part of request ids: random per instance.
    request_prefix: String,
    user_agent: String,
    names: NameCache,
}

fn home_err(e: HomeError) -> KmsError {
    KmsError::internal(e.message)
}

fn invalid_state(msg: String) -> KmsError {
    KmsError::new(ErrorCode::KMSInvalidStateException, msg)
}

/// Management and use actions that read nothing secret and change nothing.
fn is_read_action(action: &str) -> bool {
    matches!(
        action,
        "kms:DescribeKey"
            | "kms:GetKeyRotationStatus"
            | "kms:ListResourceTags"
            | "kms:ListKeyRotations"
            | "kms:GetKeyPolicy"
    )
}

impl Kms {
    /// A service with no persistence and no audit log: for tests and examples.
    pub fn in_memory() -> Self {
        Self::in_memory_with(Options::default())
    }

    pub fn in_memory_with(options: Options) -> Self {
        Self::build(
            random_account(),
            None,
            None,
            options,
            State::default(),
            None,
            0,
        )
    }

    /// A non-persistent service that audits to `path` with `audit_key`.
    pub fn in_memory_audited(
        path: &std::path::Path,
        audit_key: Key256,
        options: Options,
    ) -> KmsResult<Self> {
        let log = AuditLog::open(path, audit_key).map_err(|e| {
            KmsError::internal(format!("cannot open audit log {}: {e}", path.display()))
        })?;
        Ok(Self::build(
            random_account(),
            None,
            Some(log),
            options,
            State::default(),
            None,
            0,
        ))
    }

    /// Opens the KMS home, creating it (and its keystore) if `create` and it is missing.
    pub fn open(
        home: KmsHome,
        secret: &RootSecret,
        create: bool,
        options: Options,
    ) -> Result<Self, HomeError> {
        let opened = match home.open(secret) {
            Err(e) if e.kind == HomeErrorKind::Missing && create => {
                home.create(secret, options.argon2)?
            }
            other => other?,
        };
        // Beneath the home's descriptor, following no link.
        let log = home.open_audit_log(opened.keys.audit.clone())?;
        let stamp = opened.stamp;
        let store = Store {
            home,
            spec: opened.spec,
            keys: opened.keys,
            writer: Mutex::new(()),
        };
        let kms = Self::build(
            opened.account,
            Some(store),
            Some(log),
            options,
            opened.state,
            stamp,
            opened.generation,
        );
        Ok(kms)
    }

    fn build(
        account: String,
        store: Option<Store>,
        audit: Option<AuditLog>,
        options: Options,
        state: State,
        stamp: Option<Stamp>,
        generation: u64,
    ) -> Self {
        let due = next_due(&state);
        let names = NameCache::new(options.names, options.clock.clone());
        Kms {
            names,
            account,
            policies: Mutex::new(HashMap::new()),
            inner: RwLock::new(Inner {
                state: Arc::new(state),
                stamp,
                generation,
            }),
            store,
            audit,
            clock: options.clock,
            next_due: AtomicI64::new(due),
            request_counter: AtomicU64::new(0),
            request_prefix: {
                let p = u64::from_be_bytes(crate::crypto::random::array::<8>());
                format!(
                    "{:08x}-{:04x}-4{:03x}-8",
                    (p >> 32) as u32,
                    (p >> 16) as u16,
                    (p & 0xfff) as u16
                )
            },
            user_agent: options.user_agent,
        }
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn audit_path(&self) -> Option<&std::path::Path> {
        self.audit.as_ref().map(|a| a.path())
    }

    pub fn sync_audit(&self) -> std::io::Result<()> {
        self.audit.as_ref().map_or(Ok(()), |a| a.sync())
    }

    /// Writes the records that stand for coalesced calls whose second is
    /// over (the mount calls this every second); no fsync.
    pub fn flush_audit(&self) -> std::io::Result<()> {
        self.audit
            .as_ref()
            .map_or(Ok(()), |a| a.flush_coalesced(false))
    }

    // ----- state access -------------------------------------------------

    /// The current state, reloaded if another process changed the keystore,
    /// after any due maintenance (deletion, automatic rotation, expiry).
    fn state(&self) -> KmsResult<Arc<State>> {
        if let Some(store) = &self.store {
            let stale =
                self.inner.read().unwrap_or_else(|e| e.into_inner()).stamp != store.home.stamp();
            if stale {
                let (state, generation, stamp) =
                    store.home.reload(&store.keys).map_err(home_err)?;
                self.next_due.store(next_due(&state), Ordering::Relaxed);
                let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
                *inner = Inner {
                    state: Arc::new(state),
                    stamp,
                    generation,
                };
            }
        }
        if self.clock.now() >= self.next_due.load(Ordering::Relaxed) {
            self.maintain()?;
        }
        Ok(self
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .state
            .clone())
    }

    /// Applies `f` to a copy of the state and publishes it once persisted; on
    /// error nothing changes, in memory or on disk.
    fn mutate<T>(&self, f: impl FnOnce(&mut State, i64) -> KmsResult<T>) -> KmsResult<T> {
        if self.clock.now() >= self.next_due.load(Ordering::Relaxed) {
            self.maintain()?;
        }
        self.mutate_now(f)
    }

    fn mutate_now<T>(&self, f: impl FnOnce(&mut State, i64) -> KmsResult<T>) -> KmsResult<T> {
        let now = self.clock.now();
        let Some(store) = &self.store else {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            let mut s = (*inner.state).clone();
            let r = f(&mut s, now)?;
            self.next_due.store(next_due(&s), Ordering::Relaxed);
            inner.state = Arc::new(s);
            return Ok(r);
        };
        let _w = store.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _flock = store.home.lock().map_err(home_err)?;
        let (mut s, generation) = {
            let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
            if store.home.stamp() == inner.stamp {
                ((*inner.state).clone(), inner.generation)
            } else {
                drop(inner);
                let (s, generation, _) = store.home.reload(&store.keys).map_err(home_err)?;
                (s, generation)
            }
        };
        let r = f(&mut s, now)?;
        store
            .home
            .write(&self.account, &store.spec, &store.keys, &s, generation + 1)
            .map_err(home_err)?;
        let stamp = store.home.stamp();
        self.next_due.store(next_due(&s), Ordering::Relaxed);
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        *inner = Inner {
            state: Arc::new(s),
            stamp,
            generation: generation + 1,
        };
        Ok(r)
    }

    /// Carries out what time has made due: deletes keys whose waiting period
    /// ended, rotates keys whose rotation date passed, expires imported material.
    pub fn maintain(&self) -> KmsResult<()> {
        let events = self.mutate_now(|s, now| Ok(apply_maintenance(s, now)))?;
        let caller = Caller::service();
        for (name, id, params) in events {
            let mut ev = Event::new(name, false, params);
            ev.key = Some(id);
            self.audit_event(&caller, ev, &Ok(()))?;
        }
        Ok(())
    }

    // ----- audit and authorisation --------------------------------------

    fn arn(&self, id: &KeyId) -> String {
        id.arn(&self.account)
    }

    /// A UUID-shaped id per request: the instance's random prefix and a
    /// counter, written digit by digit (one per operation, format! showed in
    /// profiles).
    fn request_id(&self) -> String {
        let n = self.request_counter.fetch_add(1, Ordering::Relaxed);
        let mut s = String::with_capacity(36);
        s.push_str(&self.request_prefix);
        crate::crypto::hex_u64_into((n >> 48) & 0xfff, 3, &mut s);
        s.push('-');
        crate::crypto::hex_u64_into(n & 0xffff_ffff_ffff, 12, &mut s);
        s
    }

    fn audit_event<T>(&self, caller: &Caller, ev: Event, result: &KmsResult<T>) -> KmsResult<()> {
        let Some(log) = &self.audit else {
            return Ok(());
        };
        let (error_code, error_message) = match result {
            Ok(_) => (None, None),
            Err(e) => (Some(e.code.as_str()), Some(e.message.clone())),
        };
        let resources = ev
            .key
            .map(|k| {
                vec![Resource {
                    account_id: self.account.clone(),
                    kind: "AWS::KMS::Key",
                    arn: self.arn(&k),
                }]
            })
            .unwrap_or_default();
        let id = self.request_id();
        let rec = Record {
            event_version: "1.08",
            user_identity: UserIdentity {
                kind: match (caller.via, &caller.remote) {
                    (Via::Service, _) => "KmsfsService",
                    (_, Some(r)) if r.access_key_id.is_some() => "AccessKey",
                    _ => "LocalUser",
                },
                principal_id: caller.principal(),
                uid: caller.uid,
                gid: caller.gid,
                pid: caller.pid,
                process_name: caller.process.clone(),
                invoked_by: caller.via,
                access_key_id: caller.remote.as_ref().and_then(|r| r.access_key_id.clone()),
            },
            event_time: cached_rfc3339(self.clock.now()),
            event_source: "kms.kmsfs.local",
            event_name: ev.name,
            aws_region: "local",
            source_ip_address: caller.source_ip.clone().unwrap_or_else(|| "local".into()),
            user_agent: caller
                .remote
                .as_ref()
                .and_then(|r| r.user_agent.clone())
                .unwrap_or_else(|| self.user_agent.clone()),
            request_parameters: ev.params,
            response_elements: ev.response,
            error_code,
            error_message,
            request_id: id.clone(),
            event_id: id,
            read_only: ev.read_only,
            resources,
            event_type: "AwsApiCall",
            management_event: true,
            recipient_account_id: self.account.clone(),
            event_category: "Management",
            additional_event_data: ev
                .authz
                .map(|authorization| AdditionalEventData { authorization }),
        };
        log.append(&rec).map_err(|e| {
            KmsError::internal(format!(
                "the audit log {} could not be written ({e}); kmsfs refuses to use keys unaudited",
                log.path().display()
            ))
        })
    }

    /// Records the call and returns its result; a result whose record cannot be
    /// written becomes an error (fail closed).
    fn finish<T>(&self, caller: &Caller, ev: Event, result: KmsResult<T>) -> KmsResult<T> {
        match self.audit_event(caller, ev, &result) {
            Ok(()) => result,
            Err(audit_err) => Err(result.err().unwrap_or(audit_err)),
        }
    }

    /// Who may do what, in AWS's order: the managed-key rule, then the key
    /// policy (an explicit Deny wins, then an Allow), then grants, else deny;
    /// and then the root recovery rule: root, through the CLI, may always
    /// read and replace a key's policy, whatever the policy says (or if it
    /// cannot be evaluated), so that no policy can lock a key for good.
    /// The decision is kept on the event for the audit record.
    fn authorize(
        &self,
        caller: &Caller,
        state: &State,
        key: &Key,
        action: &str,
        ev: &mut Event,
    ) -> KmsResult<()> {
        match self.authorize_by_rules(caller, state, key, action, ev) {
            Err(e)
                if e.code == ErrorCode::AccessDeniedException
                    && caller.uid == 0
                    && caller.via == Via::Cli
                    && matches!(action, "kms:PutKeyPolicy" | "kms:GetKeyPolicy") =>
            {
                let mut a = json!({"decision": "Allow", "by": "root recovery rule"});
                if let Some(mut denied) = ev.authz.take() {
                    if let Some(u) = denied
                        .as_object_mut()
                        .and_then(|d| d.remove("unresolvedPrincipals"))
                    {
                        a["unresolvedPrincipals"] = u;
                    }
                    a["overrides"] = denied;
                }
                ev.authz = Some(a);
                Ok(())
            }
            r => r,
        }
    }

    fn authorize_by_rules(
        &self,
        caller: &Caller,
        state: &State,
        key: &Key,
        action: &str,
        ev: &mut Event,
    ) -> KmsResult<()> {
        if key.manager == KeyManager::Kmsfs
            && !matches!(caller.via, Via::Mount | Via::Service)
            && !is_read_action(action)
        {
            ev.authz = Some(json!({"decision": "Deny", "by": "kmsfs managed-key rule"}));
            return Err(KmsError::access_denied(format!(
                "key {} is managed by kmsfs for a filesystem: it can be described, but {action} on it is allowed only through the mount",
                key.id
            )));
        }
        if caller.via == Via::Service {
            return Ok(());
        }
        for t in &caller.grant_tokens {
            if !state.grants.iter().any(|g| g.token == *t) {
                return Err(KmsError::new(
                    ErrorCode::InvalidGrantTokenException,
                    "a grant token does not belong to any current grant (retired, revoked or malformed)",
                ));
            }
        }
        let (policy, unresolved) = self.policy_of(key).inspect_err(|_| {
            ev.authz =
                Some(json!({"decision": "Deny", "by": "the key policy cannot be evaluated"}));
        })?;
        // A decision the policy took part in names its principals that match
        // nobody (deleted accounts, or recreated ones: see policy::Binding).
        let note = |mut v: Value| {
            if !unresolved.is_empty() {
                v["unresolvedPrincipals"] = json!(&*unresolved);
            }
            Some(v)
        };
        let subject = subject_of(
            caller,
            policy.names_groups || state.grants.iter().any(|g| grant::names_group(&g.grantee)),
            &self.account,
        );
        let arn = if policy.names_resources {
            self.arn(&key.id)
        } else {
            String::new()
        };
        let req = PolicyRequest {
            subject: &subject,
            names: &self.names,
            action,
            resource: &arn,
            context: ev.ctx.as_ref(),
            grant_operations: ev.grant_ops.as_deref(),
            via_mount: caller.via == Via::Mount,
        };
        match policy.evaluate(&req) {
            Decision::Allow(sid) => {
                ev.authz =
                    note(json!({"decision": "Allow", "by": format!("key policy statement {sid}")}));
                Ok(())
            }
            Decision::Deny(sid) => {
                ev.authz =
                    note(json!({"decision": "Deny", "by": format!("key policy statement {sid}")}));
                Err(KmsError::access_denied(format!(
                    "{} may not {action} key {}: explicitly denied by key policy statement {sid}",
                    caller.principal(),
                    key.id
                )))
            }
            Decision::DefaultDeny => {
                let op = action.strip_prefix("kms:").unwrap_or(action);
                if let Some(g) = state
                    .grants
                    .iter()
                    .find(|g| g.allows(&subject, op, &key.id, ev.ctx.as_ref(), &self.names))
                {
                    ev.authz =
                        note(json!({"decision": "Allow", "by": format!("grant {}", g.grant_id)}));
                    return Ok(());
                }
                ev.authz = note(
                    json!({"decision": "Deny", "by": "no statement or grant allows it (default deny)"}),
                );
                Err(KmsError::access_denied(format!(
                    "{} may not {action} key {}: no key policy statement or grant allows it",
                    caller.principal(),
                    key.id
                )))
            }
        }
    }

    /// The key's policy, parsed and bound once per policy text, and its
    /// principals that match nobody, looked at again after a second (only
    /// for policies that name accounts; the lookups are made outside the
    /// lock).
    fn policy_of(&self, key: &Key) -> KmsResult<(Arc<Policy>, Arc<[String]>)> {
        let stale = {
            let cache = self.policies.lock().unwrap_or_else(|e| e.into_inner());
            match cache.get(&key.id) {
                Some(c) if c.text == key.policy => {
                    if !c.policy.names_accounts || c.checked.is_fresh(&*self.clock) {
                        return Ok((c.policy.clone(), c.unresolved.clone()));
                    }
                    Some(c.policy.clone())
                }
                _ => None,
            }
        };
        let policy = match stale {
            Some(p) => p,
            None => {
                let (doc, ids) = effective_policy(key);
                let mut parsed = policy::parse(&doc).map_err(|e| {
                    KmsError::access_denied(format!(
                        "the key policy of {} cannot be evaluated ({e}); root can replace it with put-key-policy",
                        key.id
                    ))
                })?;
                parsed.bind(ids.as_ref());
                Arc::new(parsed)
            }
        };
        let checked = Seen::now(&*self.clock);
        let unresolved: Arc<[String]> = if policy.names_accounts {
            policy.unresolved(&self.names).into()
        } else {
            Vec::new().into()
        };
        self.policies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                key.id,
                CachedPolicy {
                    text: key.policy.clone(),
                    policy: policy.clone(),
                    unresolved: unresolved.clone(),
                    checked,
                },
            );
        Ok((policy, unresolved))
    }

    fn resolve<'s>(&self, state: &'s State, key_ref: &str) -> KmsResult<&'s Key> {
        let id = match KeyRef::parse(key_ref, &self.account)? {
            KeyRef::Id(id) => id,
            KeyRef::Alias(name) => state.aliases.get(&name).map(|a| a.target).ok_or_else(|| {
                KmsError::not_found(format!(
                    "alias {name} does not exist; see `kmsfs kms list-aliases`"
                ))
            })?,
        };
        state.keys.get(&id).ok_or_else(|| {
            KmsError::not_found(format!(
                "key {id} does not exist in account {}",
                self.account
            ))
        })
    }

    /// Resolves, records the key on the event, authorises and checks state.
    fn usable<'s>(
        &self,
        caller: &Caller,
        state: &'s State,
        key_ref: &str,
        ev: &mut Event,
        action: &str,
        op: Option<Op>,
    ) -> KmsResult<&'s Key> {
        let key = self.resolve(state, key_ref)?;
        ev.key = Some(key.id);
        self.authorize(caller, state, key, action, ev)?;
        if let Some(op) = op {
            check_state(op, key)?;
        }
        Ok(key)
    }

    // ----- key lifecycle -------------------------------------------------

    fn metadata(&self, k: &Key) -> KeyMetadata {
        let import = k.import.as_ref();
        KeyMetadata {
            aws_account_id: self.account.clone(),
            key_id: k.id.to_string(),
            arn: self.arn(&k.id),
            creation_date: rfc3339(k.created),
            enabled: k.state == KeyState::Enabled,
            description: k.description.clone(),
            key_usage: "ENCRYPT_DECRYPT",
            key_state: k.state.as_str(),
            deletion_date: k.deletion_date.map(rfc3339),
            pending_deletion_window_in_days: k.pending_window_days,
            valid_to: import.and_then(|i| i.valid_to).map(rfc3339),
            origin: k.origin.as_str(),
            expiration_model: import.and_then(|i| i.expiration_model.clone()),
            key_manager: k.manager.as_str(),
            customer_master_key_spec: SYMMETRIC_DEFAULT,
            key_spec: SYMMETRIC_DEFAULT,
            encryption_algorithms: vec![SYMMETRIC_DEFAULT],
            multi_region: false,
            key_rotation_enabled: k.rotation_period_days.is_some(),
            current_key_material_version: k.current_material().map(|m| m.version),
        }
    }

    pub fn create_key(&self, caller: &Caller, req: CreateKeyRequest) -> KmsResult<KeyMetadata> {
        self.create_key_with_warnings(caller, req).map(|(m, _)| m)
    }

    /// CreateKey, and the principals of the key's policy that match nobody
    /// (names without an account: see `policy::Binding`), for the caller to
    /// be warned of; AWS has no field for them.
    pub fn create_key_with_warnings(
        &self,
        caller: &Caller,
        req: CreateKeyRequest,
    ) -> KmsResult<(KeyMetadata, Vec<String>)> {
        let mut ev = Event::new(
            "CreateKey",
            false,
            json!({"description": req.description, "keyUsage": req.key_usage, "origin": req.origin,
                   "keySpec": req.key_spec, "tags": tags_json(&req.tags)}),
        );
        let r = self.create_key_inner(caller, &req, KeyManager::Customer, None, &mut ev);
        if let Ok((m, unresolved)) = &r {
            ev.response = json!({"keyMetadata": m});
            if !unresolved.is_empty() {
                ev.response["unresolvedPrincipals"] = json!(unresolved);
            }
        }
        self.finish(caller, ev, r)
    }

    /// Creates a key that kmsfs manages for a filesystem, under `alias/kmsfs/<suffix>`.
    pub fn create_managed_key(
        &self,
        caller: &Caller,
        alias_suffix: &str,
        description: &str,
    ) -> KmsResult<KeyMetadata> {
        let alias = format!("{MANAGED_ALIAS_PREFIX}{alias_suffix}");
        let mut ev = Event::new(
            "CreateKey",
            false,
            json!({"description": description, "aliasName": alias}),
        );
        let req = CreateKeyRequest {
            description: description.into(),
            ..Default::default()
        };
        let r = self
            .create_key_inner(caller, &req, KeyManager::Kmsfs, Some(alias), &mut ev)
            .map(|(m, _)| m);
        if let Ok(m) = &r {
            ev.response = json!({"keyMetadata": m});
        }
        self.finish(caller, ev, r)
    }

    fn create_key_inner(
        &self,
        caller: &Caller,
        req: &CreateKeyRequest,
        manager: KeyManager,
        alias: Option<String>,
        ev: &mut Event,
    ) -> KmsResult<(KeyMetadata, Vec<String>)> {
        if req.description.len() > MAX_DESCRIPTION {
            return Err(KmsError::validation(format!(
                "Description is longer than {MAX_DESCRIPTION} characters"
            )));
        }
        if let Some(u) = &req.key_usage
            && u != "ENCRYPT_DECRYPT"
        {
            return Err(KmsError::validation(format!(
                "KeyUsage {u:?} is not supported: kmsfs keys are symmetric ENCRYPT_DECRYPT keys"
            )));
        }
        if let Some(s) = &req.key_spec
            && s != SYMMETRIC_DEFAULT
        {
            return Err(KmsError::validation(format!(
                "KeySpec {s:?} is not supported; use SYMMETRIC_DEFAULT"
            )));
        }
        let origin = match req.origin.as_deref() {
            None | Some("KMSFS") | Some("AWS_KMS") => Origin::Kmsfs,
            Some("EXTERNAL") => Origin::External,
            Some(o) => {
                return Err(KmsError::validation(format!(
                    "Origin {o:?} is not KMSFS (AWS_KMS) or EXTERNAL"
                )));
            }
        };
        let tags = validate_tags(&BTreeMap::new(), &req.tags)?;
        if let Some(a) = &alias {
            validate_alias_name(a, true)?;
        }
        let (policy, unresolved) = match &req.policy {
            Some(p) => {
                let (stored, unresolved) =
                    self.check_new_policy(caller, p, req.bypass_policy_lockout_safety_check)?;
                (Some(stored), unresolved)
            }
            None => (None, vec![]),
        };
        let meta = self.mutate(|s, now| {
            let mut key = Key {
                id: KeyId::random(),
                description: req.description.clone(),
                created: now,
                state: if origin == Origin::External {
                    KeyState::PendingImport
                } else {
                    KeyState::Enabled
                },
                origin,
                manager,
                deletion_date: None,
                pending_window_days: None,
                rotation_period_days: None,
                next_rotation: None,
                rotations: vec![],
                materials: vec![],
                tags,
                import: (origin == Origin::External).then_some(ImportState {
                    expiration_model: None,
                    valid_to: None,
                    fingerprint: None,
                }),
                policy,
                creator: Some(caller.uid),
            };
            if origin == Origin::Kmsfs {
                key.add_material(Key256::random(), now);
            }
            if manager == KeyManager::Kmsfs {
                // Like AWS managed keys: rotated yearly, always.
                key.rotation_period_days = Some(365);
                key.next_rotation = Some(now + 365 * DAY);
            }
            if let Some(a) = &alias {
                if s.aliases.contains_key(a) {
                    return Err(KmsError::new(
                        ErrorCode::AlreadyExistsException,
                        format!("alias {a} already exists"),
                    ));
                }
                s.aliases.insert(
                    a.clone(),
                    Alias {
                        target: key.id,
                        created: now,
                        updated: now,
                    },
                );
            }
            let meta = self.metadata(&key);
            s.keys.insert(key.id, key);
            Ok(meta)
        })?;
        ev.key = KeyId::parse(&meta.key_id);
        Ok((meta, unresolved))
    }

    pub fn describe_key(&self, caller: &Caller, key_id: &str) -> KmsResult<KeyMetadata> {
        let mut ev = Event::new("DescribeKey", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:DescribeKey", None)?;
            Ok(self.metadata(k))
        });
        self.finish(caller, ev, r)
    }

    pub fn list_keys(
        &self,
        caller: &Caller,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let ev = Event::new("ListKeys", true, json!({"limit": limit, "marker": marker}));
        let r = self.state().and_then(|s| {
            let ids: Vec<String> = s.keys.keys().map(|k| k.to_string()).collect();
            let (page, next) = paginate(&ids, limit, marker)?;
            let keys: Vec<Value> = page
                .iter()
                .map(|id| json!({"KeyId": id, "KeyArn": format!("{}{}:key/{id}", super::keyref::ARN_PREFIX, self.account)}))
                .collect();
            Ok(page_json("Keys", keys, next))
        });
        self.finish(caller, ev, r)
    }

    fn set_enabled(&self, caller: &Caller, key_id: &str, enable: bool) -> KmsResult<()> {
        let name = if enable { "EnableKey" } else { "DisableKey" };
        let mut ev = Event::new(name, false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let key = self.usable(
                caller,
                s,
                key_id,
                &mut ev,
                if enable {
                    "kms:EnableKey"
                } else {
                    "kms:DisableKey"
                },
                Some(if enable { Op::Enable } else { Op::Disable }),
            )?;
            let id = key.id;
            s.keys.get_mut(&id).expect("resolved").state = if enable {
                KeyState::Enabled
            } else {
                KeyState::Disabled
            };
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn enable_key(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        self.set_enabled(caller, key_id, true)
    }

    pub fn disable_key(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        self.set_enabled(caller, key_id, false)
    }

    pub fn schedule_key_deletion(
        &self,
        caller: &Caller,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "ScheduleKeyDeletion",
            false,
            json!({"keyId": key_id, "pendingWindowInDays": pending_window_in_days}),
        );
        let r = self.mutate(|s, now| {
            let days = pending_window_in_days.unwrap_or(30);
            if !(7..=30).contains(&days) {
                return Err(KmsError::validation(format!(
                    "PendingWindowInDays is {days}; it must be 7 to 30"
                )));
            }
            let key = self.usable(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:ScheduleKeyDeletion",
                Some(Op::ScheduleDeletion),
            )?;
            let id = key.id;
            let k = s.keys.get_mut(&id).expect("resolved");
            k.state = KeyState::PendingDeletion;
            k.deletion_date = Some(now + days as i64 * DAY);
            k.pending_window_days = Some(days);
            Ok(
                json!({"KeyId": self.arn(&id), "DeletionDate": rfc3339(now + days as i64 * DAY),
                      "KeyState": "PendingDeletion", "PendingWindowInDays": days}),
            )
        });
        if let Ok(v) = &r {
            ev.response = json!({"deletionDate": v["DeletionDate"]});
        }
        self.finish(caller, ev, r)
    }

    pub fn cancel_key_deletion(&self, caller: &Caller, key_id: &str) -> KmsResult<Value> {
        let mut ev = Event::new("CancelKeyDeletion", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let id = self
                .usable(
                    caller,
                    s,
                    key_id,
                    &mut ev,
                    "kms:CancelKeyDeletion",
                    Some(Op::CancelDeletion),
                )?
                .id;
            let k = s.keys.get_mut(&id).expect("resolved");
            // As in AWS, a key whose deletion is cancelled comes back Disabled
            // (or PendingImport if it has no material).
            k.state = if k.materials.is_empty() {
                KeyState::PendingImport
            } else {
                KeyState::Disabled
            };
            k.deletion_date = None;
            k.pending_window_days = None;
            Ok(json!({"KeyId": self.arn(&id)}))
        });
        self.finish(caller, ev, r)
    }

    pub fn update_key_description(
        &self,
        caller: &Caller,
        key_id: &str,
        description: &str,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "UpdateKeyDescription",
            false,
            json!({"keyId": key_id, "description": description}),
        );
        let r = self.mutate(|s, _| {
            if description.len() > MAX_DESCRIPTION {
                return Err(KmsError::validation(format!(
                    "Description is longer than {MAX_DESCRIPTION} characters"
                )));
            }
            let id = self
                .usable(
                    caller,
                    s,
                    key_id,
                    &mut ev,
                    "kms:UpdateKeyDescription",
                    Some(Op::Modify),
                )?
                .id;
            s.keys.get_mut(&id).expect("resolved").description = description.to_string();
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    // ----- rotation -----------------------------------------------------

    pub fn enable_key_rotation(
        &self,
        caller: &Caller,
        key_id: &str,
        period_days: Option<u32>,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "EnableKeyRotation",
            false,
            json!({"keyId": key_id, "rotationPeriodInDays": period_days}),
        );
        let r = self.mutate(|s, now| {
            let days = period_days.unwrap_or(365);
            if !(90..=2560).contains(&days) {
                return Err(KmsError::validation(format!("RotationPeriodInDays is {days}; it must be 90 to 2560")));
            }
            let key = self.usable(caller, s, key_id, &mut ev, "kms:EnableKeyRotation", Some(Op::Rotation))?;
            if key.origin == Origin::External {
                return Err(KmsError::new(
                    ErrorCode::UnsupportedOperationException,
                    format!("key {} has imported material; kmsfs cannot rotate material it did not generate", key.id),
                ));
            }
            let id = key.id;
            let k = s.keys.get_mut(&id).expect("resolved");
            k.rotation_period_days = Some(days);
            k.next_rotation = Some(now + days as i64 * DAY);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn disable_key_rotation(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        let mut ev = Event::new("DisableKeyRotation", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let key = self.usable(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:DisableKeyRotation",
                Some(Op::Rotation),
            )?;
            if key.origin == Origin::External {
                return Err(KmsError::new(
                    ErrorCode::UnsupportedOperationException,
                    "keys with imported material do not rotate",
                ));
            }
            let id = key.id;
            let k = s.keys.get_mut(&id).expect("resolved");
            k.rotation_period_days = None;
            k.next_rotation = None;
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn get_key_rotation_status(&self, caller: &Caller, key_id: &str) -> KmsResult<Value> {
        let mut ev = Event::new("GetKeyRotationStatus", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:GetKeyRotationStatus", None)?;
            let mut v = json!({"KeyId": self.arn(&k.id), "KeyRotationEnabled": k.rotation_period_days.is_some()});
            if let (Some(p), Some(n)) = (k.rotation_period_days, k.next_rotation) {
                v["RotationPeriodInDays"] = p.into();
                v["NextRotationDate"] = rfc3339(n).into();
            }
            if let Some(r) = k.rotations.iter().rev().find(|r| r.kind == "ON_DEMAND") {
                v["OnDemandRotationStartDate"] = rfc3339(r.date).into();
            }
            Ok(v)
        });
        self.finish(caller, ev, r)
    }

    pub fn rotate_key_on_demand(&self, caller: &Caller, key_id: &str) -> KmsResult<Value> {
        let mut ev = Event::new("RotateKeyOnDemand", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, now| {
            let key = self.usable(caller, s, key_id, &mut ev, "kms:RotateKeyOnDemand", Some(Op::Rotation))?;
            if key.origin == Origin::External {
                return Err(KmsError::new(
                    ErrorCode::UnsupportedOperationException,
                    format!("key {} has imported material; kmsfs cannot rotate material it did not generate", key.id),
                ));
            }
            if key.rotations.iter().filter(|r| r.kind == "ON_DEMAND").count() >= MAX_ON_DEMAND_ROTATIONS {
                return Err(KmsError::new(
                    ErrorCode::LimitExceededException,
                    format!("key {} has had {MAX_ON_DEMAND_ROTATIONS} on-demand rotations, the most allowed; enable automatic rotation instead", key.id),
                ));
            }
            let id = key.id;
            let k = s.keys.get_mut(&id).expect("resolved");
            let v = k.add_material(Key256::random(), now);
            k.rotations.push(Rotation { date: now, kind: "ON_DEMAND".into() });
            Ok((json!({"KeyId": self.arn(&id)}), v))
        });
        let r = r.map(|(v, version)| {
            ev.response = json!({"keyMaterialVersion": version});
            v
        });
        self.finish(caller, ev, r)
    }

    pub fn list_key_rotations(
        &self,
        caller: &Caller,
        key_id: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new("ListKeyRotations", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:ListKeyRotations", None)?;
            let idx: Vec<String> = (0..k.rotations.len()).map(|i| format!("{i:08}")).collect();
            let (page, next) = paginate(&idx, limit, marker)?;
            let items = page
                .iter()
                .map(|i| {
                    let r = &k.rotations[i.parse::<usize>().expect("index")];
                    json!({"KeyId": self.arn(&k.id), "RotationDate": rfc3339(r.date), "RotationType": r.kind})
                })
                .collect();
            Ok(page_json("Rotations", items, next))
        });
        self.finish(caller, ev, r)
    }

    // ----- aliases ------------------------------------------------------

    /// The key an alias may point at: usable for aliasing, and not one that
    /// kmsfs manages (its aliases are kmsfs's own).
    fn alias_target(
        &self,
        caller: &Caller,
        s: &State,
        key_ref: &str,
        ev: &mut Event,
        action: &str,
    ) -> KmsResult<KeyId> {
        let key = self.usable(caller, s, key_ref, ev, action, Some(Op::AliasTarget))?;
        if key.manager == KeyManager::Kmsfs {
            return Err(KmsError::access_denied(
                "aliases of keys that kmsfs manages are reserved to kmsfs",
            ));
        }
        Ok(key.id)
    }

    pub fn create_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "CreateAlias",
            false,
            json!({"aliasName": alias_name, "targetKeyId": target_key_id}),
        );
        let r = self.mutate(|s, now| {
            validate_alias_name(alias_name, false)?;
            if matches!(
                KeyRef::parse(target_key_id, &self.account)?,
                KeyRef::Alias(_)
            ) {
                return Err(KmsError::validation(
                    "TargetKeyId must be a key id or key ARN, not an alias",
                ));
            }
            let id = self.alias_target(caller, s, target_key_id, &mut ev, "kms:CreateAlias")?;
            if s.aliases.contains_key(alias_name) {
                return Err(KmsError::new(
                    ErrorCode::AlreadyExistsException,
                    format!("alias {alias_name} already exists"),
                ));
            }
            s.aliases.insert(
                alias_name.to_string(),
                Alias {
                    target: id,
                    created: now,
                    updated: now,
                },
            );
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn update_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "UpdateAlias",
            false,
            json!({"aliasName": alias_name, "targetKeyId": target_key_id}),
        );
        let r = self.mutate(|s, now| {
            if alias_name.starts_with(MANAGED_ALIAS_PREFIX) {
                return Err(KmsError::access_denied(format!(
                    "{alias_name} is managed by kmsfs and cannot be re-pointed"
                )));
            }
            validate_alias_name(alias_name, false)?;
            if !s.aliases.contains_key(alias_name) {
                return Err(KmsError::not_found(format!(
                    "alias {alias_name} does not exist"
                )));
            }
            let id = self.alias_target(caller, s, target_key_id, &mut ev, "kms:UpdateAlias")?;
            let a = s.aliases.get_mut(alias_name).expect("checked");
            a.target = id;
            a.updated = now;
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn delete_alias(&self, caller: &Caller, alias_name: &str) -> KmsResult<()> {
        let mut ev = Event::new("DeleteAlias", false, json!({"aliasName": alias_name}));
        let r = self.mutate(|s, _| {
            if alias_name.starts_with(MANAGED_ALIAS_PREFIX) {
                return Err(KmsError::access_denied(format!(
                    "{alias_name} is managed by kmsfs and cannot be deleted"
                )));
            }
            let a = s
                .aliases
                .remove(alias_name)
                .ok_or_else(|| KmsError::not_found(format!("alias {alias_name} does not exist")))?;
            ev.key = Some(a.target);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn list_aliases(
        &self,
        caller: &Caller,
        key_id: Option<&str>,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "ListAliases",
            true,
            json!({"keyId": key_id, "limit": limit}),
        );
        let r = self.state().and_then(|s| {
            let filter = match key_id {
                Some(k) => Some(self.usable(caller, &s, k, &mut ev, "kms:ListAliases", None)?.id),
                None => None,
            };
            let names: Vec<String> = s
                .aliases
                .iter()
                .filter(|(_, a)| filter.is_none_or(|f| f == a.target))
                .map(|(n, _)| n.clone())
                .collect();
            let (page, next) = paginate(&names, limit, marker)?;
            let items = page
                .iter()
                .map(|n| {
                    let a = &s.aliases[n];
                    json!({"AliasName": n, "AliasArn": format!("{}{}:{n}", super::keyref::ARN_PREFIX, self.account),
                           "TargetKeyId": a.target.to_string(), "CreationDate": rfc3339(a.created),
                           "LastUpdatedDate": rfc3339(a.updated)})
                })
                .collect();
            Ok(page_json("Aliases", items, next))
        });
        self.finish(caller, ev, r)
    }

    // ----- tags ---------------------------------------------------------

    pub fn tag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tags: &[(String, String)],
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "TagResource",
            false,
            json!({"keyId": key_id, "tags": tags_json(tags)}),
        );
        let r = self.mutate(|s, _| {
            let key = self.usable(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:TagResource",
                Some(Op::Modify),
            )?;
            let merged = validate_tags(&key.tags, tags)?;
            let id = key.id;
            s.keys.get_mut(&id).expect("resolved").tags = merged;
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn untag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tag_keys: &[String],
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "UntagResource",
            false,
            json!({"keyId": key_id, "tagKeys": tag_keys}),
        );
        let r = self.mutate(|s, _| {
            let id = self
                .usable(
                    caller,
                    s,
                    key_id,
                    &mut ev,
                    "kms:UntagResource",
                    Some(Op::Modify),
                )?
                .id;
            let k = s.keys.get_mut(&id).expect("resolved");
            for t in tag_keys {
                k.tags.remove(t);
            }
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn list_resource_tags(
        &self,
        caller: &Caller,
        key_id: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new("ListResourceTags", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:ListResourceTags", None)?;
            let names: Vec<String> = k.tags.keys().cloned().collect();
            let (page, next) = paginate(&names, limit, marker)?;
            let items = page
                .iter()
                .map(|t| json!({"TagKey": t, "TagValue": k.tags[t]}))
                .collect();
            Ok(page_json("Tags", items, next))
        });
        self.finish(caller, ev, r)
    }

    // ----- key policies and grants --------------------------------------

    /// Validates a policy document, binds its `user:`/`group:` principals to
    /// the accounts they name now (see `policy::Binding`), and refuses one
    /// that would keep the caller from changing the policy again (AWS's
    /// lockout safety check; root keeps the recovery rule regardless).
    /// Returns what the key record stores and the principals that match
    /// nobody.
    fn check_new_policy(
        &self,
        caller: &Caller,
        doc: &str,
        bypass: bool,
    ) -> KmsResult<(String, Vec<String>)> {
        let malformed = |m: String| KmsError::new(ErrorCode::MalformedPolicyDocumentException, m);
        let mut parsed = policy::parse(doc).map_err(malformed)?;
        let names = self.names.fresh();
        let ids = parsed.names_accounts.then(|| parsed.resolve_ids(names));
        parsed.bind(ids.as_ref());
        let unresolved = parsed.unresolved(names);
        if !bypass {
            let subject = subject_of(caller, parsed.names_groups, &self.account);
            let req = PolicyRequest {
                subject: &subject,
                names,
                action: "kms:PutKeyPolicy",
                resource: "*",
                context: None,
                grant_operations: None,
                via_mount: caller.via == Via::Mount,
            };
            if !matches!(parsed.evaluate(&req), Decision::Allow(_)) {
                return Err(malformed(format!(
                    "the policy would not let {} (who is making this request) change it again: every administrator would be locked out; pass --bypass-policy-lockout-safety-check if that is intended",
                    caller.principal()
                )));
            }
        }
        Ok((stored_policy(doc, ids.as_ref()), unresolved))
    }

    pub fn get_key_policy(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
    ) -> KmsResult<Value> {
        self.get_key_policy_with_warnings(caller, key_id, policy_name)
            .map(|(v, _)| v)
    }

    /// GetKeyPolicy, and the policy's principals that match nobody now (the
    /// account was deleted, or recreated with another id, since the policy
    /// was put), for the caller to be warned of.
    pub fn get_key_policy_with_warnings(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
    ) -> KmsResult<(Value, Vec<String>)> {
        let mut ev = Event::new(
            "GetKeyPolicy",
            true,
            json!({"keyId": key_id, "policyName": policy_name}),
        );
        let r = (|| {
            check_policy_name(policy_name)?;
            let s = self.state()?;
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:GetKeyPolicy", None)?;
            // A policy that cannot be evaluated (root reading it to fix it)
            // has no principals to warn of.
            let unresolved = self
                .policy_of(k)
                .map(|(_, u)| u.to_vec())
                .unwrap_or_default();
            let (doc, _) = effective_policy(k);
            Ok((json!({"Policy": doc, "PolicyName": "default"}), unresolved))
        })();
        self.finish(caller, ev, r)
    }

    pub fn put_key_policy(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
        doc: &str,
        bypass: bool,
    ) -> KmsResult<()> {
        self.put_key_policy_with_warnings(caller, key_id, policy_name, doc, bypass)
            .map(|_| ())
    }

    /// PutKeyPolicy; returns the new policy's principals that match nobody
    /// (names without an account), for the caller to be warned of. The
    /// policy is put all the same: they match nobody, the rest applies.
    pub fn put_key_policy_with_warnings(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
        doc: &str,
        bypass: bool,
    ) -> KmsResult<Vec<String>> {
        let mut ev = Event::new(
            "PutKeyPolicy",
            false,
            json!({"keyId": key_id, "policyName": policy_name, "policy": doc, "bypassPolicyLockoutSafetyCheck": bypass}),
        );
        let r = self.mutate(|s, _| {
            check_policy_name(policy_name)?;
            let id = self
                .usable(
                    caller,
                    s,
                    key_id,
                    &mut ev,
                    "kms:PutKeyPolicy",
                    Some(Op::Modify),
                )?
                .id;
            let (stored, unresolved) = self.check_new_policy(caller, doc, bypass)?;
            s.keys.get_mut(&id).expect("resolved").policy = Some(stored);
            Ok(unresolved)
        });
        if let Ok(unresolved) = &r
            && !unresolved.is_empty()
        {
            ev.response = json!({"unresolvedPrincipals": unresolved});
        }
        self.finish(caller, ev, r)
    }

    /// CreateGrant; returns GrantToken and GrantId.
    pub fn create_grant(
        &self,
        caller: &Caller,
        key_id: &str,
        req: GrantRequest,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "CreateGrant",
            false,
            json!({"keyId": key_id, "granteePrincipal": req.grantee, "retiringPrincipal": req.retiring,
                   "operations": req.operations, "constraints": req.constraints, "name": req.name}),
        );
        ev.grant_ops = Some(req.operations.clone());
        let r = self.mutate(|s, now| {
            grant::validate(&req.operations, req.constraints.as_ref())
                .map_err(KmsError::validation)?;
            // Names must resolve now (a grant for no one is a mistake), and
            // are bound to the accounts they name now (see policy::Binding).
            let names = self.names.fresh();
            let principals =
                || std::iter::once(req.grantee.as_str()).chain(req.retiring.as_deref());
            for p in principals() {
                match policy::parse_principal(p) {
                    Ok(policy::Principal::Any) => {
                        return Err(KmsError::validation("a grant names one principal, not *"));
                    }
                    Ok(policy::Principal::User(n)) if names.uid(n.name()).is_none() => {
                        return Err(KmsError::validation(format!(
                            "principal {p:?}: no such user"
                        )));
                    }
                    Ok(policy::Principal::Group(n)) if names.gid(n.name()).is_none() => {
                        return Err(KmsError::validation(format!(
                            "principal {p:?}: no such group"
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(KmsError::validation(e)),
                }
            }
            let principal_ids = principals()
                .any(policy::names_account)
                .then(|| policy::resolve_ids(principals(), names));
            if let Some(n) = &req.name
                && (n.is_empty()
                    || n.len() > 256
                    || !n
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b":/_-".contains(&c)))
            {
                return Err(KmsError::validation(
                    "Name must be 1 to 256 characters of letters, digits and :/_-",
                ));
            }
            let key = self.usable(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:CreateGrant",
                Some(Op::Crypto),
            )?;
            // A grant made under another grant cannot give more than that one has.
            if let Some(by) = ev
                .authz
                .as_ref()
                .and_then(|a| a["by"].as_str())
                .and_then(|b| b.strip_prefix("grant "))
                && let Some(parent) = s.grants.iter().find(|g| g.grant_id == by)
                && let Some(op) = req
                    .operations
                    .iter()
                    .find(|o| !parent.operations.contains(o))
            {
                return Err(KmsError::access_denied(format!(
                    "grant {by} does not include {op}, so it cannot grant it"
                )));
            }
            let id = key.id;
            let mut g = Grant {
                grant_id: String::new(),
                token: String::new(),
                key_id: id,
                name: req.name.clone(),
                grantee: req.grantee.clone(),
                retiring: req.retiring.clone(),
                operations: req.operations.clone(),
                constraints: req.constraints.clone(),
                created: now,
                issuer_uid: caller.uid,
                principal_ids,
            };
            if let Some(existing) = s.grants.iter().find(|e| e.same_request(&g)) {
                return Ok(json!({"GrantToken": existing.token, "GrantId": existing.grant_id}));
            }
            let mut gid = String::new();
            crate::crypto::hex_into(&crate::crypto::random::array::<32>(), &mut gid);
            g.token = format!(
                "kmsfs-grant-{}",
                b64url(&crate::crypto::random::array::<48>())
            );
            g.grant_id = gid;
            let out = json!({"GrantToken": g.token, "GrantId": g.grant_id});
            s.grants.push(g);
            Ok(out)
        });
        if let Ok(v) = &r {
            ev.response = json!({"grantId": v["GrantId"]});
        }
        self.finish(caller, ev, r)
    }

    fn grant_json(&self, g: &Grant) -> Value {
        let mut v = json!({
            "KeyId": self.arn(&g.key_id), "GrantId": g.grant_id, "CreationDate": rfc3339(g.created),
            "GranteePrincipal": g.grantee, "IssuingAccount": self.account, "Operations": g.operations,
        });
        if let Some(n) = &g.name {
            v["Name"] = n.clone().into();
        }
        if let Some(r) = &g.retiring {
            v["RetiringPrincipal"] = r.clone().into();
        }
        if let Some(c) = &g.constraints {
            v["Constraints"] = serde_json::to_value(c).expect("constraints serialise");
        }
        v
    }

    pub fn list_grants(
        &self,
        caller: &Caller,
        key_id: &str,
        grant_id: Option<&str>,
        grantee: Option<&str>,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "ListGrants",
            true,
            json!({"keyId": key_id, "grantId": grant_id, "granteePrincipal": grantee}),
        );
        let r = self.state().and_then(|s| {
            let id = self
                .usable(caller, &s, key_id, &mut ev, "kms:ListGrants", None)?
                .id;
            self.grants_page(
                &s,
                |g| {
                    g.key_id == id
                        && grant_id.is_none_or(|x| x == g.grant_id)
                        && grantee.is_none_or(|x| x == g.grantee)
                },
                limit,
                marker,
            )
        });
        self.finish(caller, ev, r)
    }

    pub fn list_retirable_grants(
        &self,
        caller: &Caller,
        retiring: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let ev = Event::new(
            "ListRetirableGrants",
            true,
            json!({"retiringPrincipal": retiring}),
        );
        let r = self.state().and_then(|s| {
            self.grants_page(
                &s,
                |g| g.retiring.as_deref() == Some(retiring),
                limit,
                marker,
            )
        });
        self.finish(caller, ev, r)
    }

    /// One page of the grants that `keep` selects, ordered by grant id.
    fn grants_page(
        &self,
        s: &State,
        keep: impl Fn(&Grant) -> bool,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ids: Vec<String> = s
            .grants
            .iter()
            .filter(|g| keep(g))
            .map(|g| g.grant_id.clone())
            .collect();
        ids.sort();
        let (page, next) = paginate(&ids, limit, marker)?;
        let items = page
            .iter()
            .filter_map(|i| s.grants.iter().find(|g| g.grant_id == *i))
            .map(|g| self.grant_json(g))
            .collect();
        Ok(page_json("Grants", items, next))
    }

    /// RetireGrant, by token or by key and grant id.
    pub fn retire_grant(
        &self,
        caller: &Caller,
        token: Option<&str>,
        key_id: Option<&str>,
        grant_id: Option<&str>,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "RetireGrant",
            false,
            json!({"keyId": key_id, "grantId": grant_id}),
        );
        let r = self.mutate(|s, _| {
            let idx = match (token, key_id, grant_id) {
                (Some(t), None, None) => s.grants.iter().position(|g| g.token == t).ok_or_else(|| {
                    KmsError::new(ErrorCode::InvalidGrantTokenException, "no current grant has this token")
                })?,
                (None, Some(k), Some(gid)) => {
                    let key = self.resolve(s, k)?.id;
                    s.grants.iter().position(|g| g.key_id == key && g.grant_id == gid).ok_or_else(|| {
                        KmsError::new(ErrorCode::InvalidGrantIdException, format!("key {key} has no grant {gid}"))
                    })?
                }
                _ => return Err(KmsError::validation("give either --grant-token, or both --key-id and --grant-id")),
            };
            let g = &s.grants[idx];
            ev.key = Some(g.key_id);
            let subject = subject_of(
                caller,
                grant::names_group(&g.grantee) || g.retiring.as_deref().is_some_and(grant::names_group),
                &self.account,
            );
            if !g.can_retire(&subject, &self.names) {
                return Err(KmsError::access_denied(format!(
                    "{} is neither the retiring principal of grant {} nor its grantee with RetireGrant",
                    caller.principal(),
                    g.grant_id
                )));
            }
            s.grants.remove(idx);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn revoke_grant(&self, caller: &Caller, key_id: &str, grant_id: &str) -> KmsResult<()> {
        let mut ev = Event::new(
            "RevokeGrant",
            false,
            json!({"keyId": key_id, "grantId": grant_id}),
        );
        let r = self.mutate(|s, _| {
            let id = self
                .usable(caller, s, key_id, &mut ev, "kms:RevokeGrant", None)?
                .id;
            let idx = s
                .grants
                .iter()
                .position(|g| g.key_id == id && g.grant_id == grant_id)
                .ok_or_else(|| {
                    KmsError::new(
                        ErrorCode::InvalidGrantIdException,
                        format!("key {id} has no grant {grant_id}"),
                    )
                })?;
            s.grants.remove(idx);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    // ----- cryptographic operations -------------------------------------

    fn seal_under(key: &Key, plaintext: &[u8], ctx: &EncryptionContext) -> KmsResult<Vec<u8>> {
        let m = key
            .current_material()
            .ok_or_else(|| invalid_state(format!("key {} has no key material", key.id)))?;
        let header = BlobHeader {
            key_id: key.id,
            material_version: m.version,
            salt: crate::crypto::random::array(),
            nonce: crate::crypto::random::array(),
        };
        let hb = header.to_bytes();
        let k = hkdf256(m.key.as_bytes(), &header.salt, BLOB_KDF_INFO);
        let mut aad = hb.to_vec();
        aad.extend_from_slice(&ctx.canonical_bytes());
        let sealed = AeadKey::new(&k).seal(&header.nonce, &aad, plaintext);
        Ok(blob::assemble(&header, &sealed))
    }

    /// Parses and opens a blob; the key must pass `check` (authorisation and state).
    fn open_blob<'s>(
        &self,
        state: &'s State,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
        expected_key: Option<&str>,
        ev: &mut Event,
        check: impl FnOnce(&Key, &mut Event) -> KmsResult<()>,
    ) -> KmsResult<(&'s Key, SecretBytes)> {
        ctx.validate()?;
        let b = blob::parse(ciphertext).map_err(|e| KmsError::invalid_ciphertext(e.to_string()))?;
        let id = b.header.key_id;
        ev.key = Some(id);
        if let Some(want) = expected_key {
            let k = self.resolve(state, want)?;
            if k.id != id {
                return Err(KmsError::new(
                    ErrorCode::IncorrectKeyException,
                    format!(
                        "the ciphertext was encrypted under key {id}, not under {want} ({})",
                        k.id
                    ),
                ));
            }
        }
        let key = state.keys.get(&id).ok_or_else(|| {
            KmsError::not_found(format!(
                "the key that encrypted this ciphertext ({id}) does not exist; it may have been deleted"
            ))
        })?;
        check(key, ev)?;
        let m = key.material(b.header.material_version).ok_or_else(|| {
            KmsError::invalid_ciphertext(format!(
                "key {id} has no material version {}; the ciphertext is corrupt or its material was deleted",
                b.header.material_version
            ))
        })?;
        let k = hkdf256(m.key.as_bytes(), &b.header.salt, BLOB_KDF_INFO);
        let mut aad = b.header_bytes.to_vec();
        aad.extend_from_slice(&ctx.canonical_bytes());
        let plain = AeadKey::new(&k).open(&b.header.nonce, &aad, b.sealed).map_err(|_| {
            KmsError::invalid_ciphertext(
                "the ciphertext does not decrypt: the encryption context differs from the one used to encrypt, or the ciphertext was modified",
            )
        })?;
        Ok((key, plain))
    }

    fn check_algorithm(alg: Option<&str>) -> KmsResult<()> {
        match alg {
            None | Some(SYMMETRIC_DEFAULT) => Ok(()),
            Some(a) => Err(KmsError::new(
                ErrorCode::InvalidKeyUsageException,
                format!(
                    "EncryptionAlgorithm {a} is not supported by symmetric keys; use SYMMETRIC_DEFAULT"
                ),
            )),
        }
    }

    pub fn encrypt(
        &self,
        caller: &Caller,
        key_id: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
        algorithm: Option<&str>,
    ) -> KmsResult<EncryptResponse> {
        let params = CryptoParams {
            encryption_algorithm: Some(SYMMETRIC_DEFAULT),
            ..CryptoParams::new(Some(key_id), ctx)
        };
        let mut ev = Event::new("Encrypt", true, params).with_ctx(ctx);
        let r = (|| {
            Self::check_algorithm(algorithm)?;
            ctx.validate()?;
            if plaintext.is_empty() || plaintext.len() > blob::MAX_PLAINTEXT {
                return Err(KmsError::validation(format!(
                    "plaintext is {} bytes; Encrypt takes 1 to {} bytes (use GenerateDataKey for larger data)",
                    plaintext.len(),
                    blob::MAX_PLAINTEXT
                )));
            }
            let s = self.state()?;
            let key = self.usable(caller, &s, key_id, &mut ev, "kms:Encrypt", Some(Op::Crypto))?;
            Ok(EncryptResponse {
                ciphertext_blob: Self::seal_under(key, plaintext, ctx)?,
                key_arn: self.arn(&key.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    pub fn decrypt(
        &self,
        caller: &Caller,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
        key_id: Option<&str>,
        algorithm: Option<&str>,
    ) -> KmsResult<DecryptResponse> {
        let params = CryptoParams {
            encryption_algorithm: Some(SYMMETRIC_DEFAULT),
            ..CryptoParams::new(key_id, ctx)
        };
        let mut ev = Event::new("Decrypt", true, params).with_ctx(ctx);
        let r = (|| {
            Self::check_algorithm(algorithm)?;
            let s = self.state()?;
            let (key, plaintext) =
                self.open_blob(&s, ciphertext, ctx, key_id, &mut ev, |k, ev| {
                    self.authorize(caller, &s, k, "kms:Decrypt", ev)?;
                    check_state(Op::Crypto, k)
                })?;
            Ok(DecryptResponse {
                plaintext,
                key_arn: self.arn(&key.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    pub fn re_encrypt(
        &self,
        caller: &Caller,
        ciphertext: &[u8],
        source_ctx: &EncryptionContext,
        source_key_id: Option<&str>,
        destination_key_id: &str,
        destination_ctx: &EncryptionContext,
    ) -> KmsResult<ReEncryptResponse> {
        let mut ev = Event::new(
            "ReEncrypt",
            true,
            json!({"sourceEncryptionContext": source_ctx, "destinationKeyId": destination_key_id,
                   "destinationEncryptionContext": destination_ctx, "sourceKeyId": source_key_id}),
        )
        .with_ctx(source_ctx);
        let r = (|| {
            destination_ctx.validate()?;
            let s = self.state()?;
            let (src, plaintext) = self.open_blob(
                &s,
                ciphertext,
                source_ctx,
                source_key_id,
                &mut ev,
                |k, ev| {
                    self.authorize(caller, &s, k, "kms:ReEncryptFrom", ev)?;
                    check_state(Op::Crypto, k)
                },
            )?;
            let src_arn = self.arn(&src.id);
            let mut dev = Event::new("ReEncrypt", true, Value::Null).with_ctx(destination_ctx);
            let dst = self.usable(
                caller,
                &s,
                destination_key_id,
                &mut dev,
                "kms:ReEncryptTo",
                Some(Op::Crypto),
            );
            ev.authz = Some(json!({"source": ev.authz.take(), "destination": dev.authz}));
            let dst = dst?;
            ev.response = json!({"destinationKeyId": self.arn(&dst.id)});
            Ok(ReEncryptResponse {
                ciphertext_blob: Self::seal_under(dst, plaintext.as_bytes(), destination_ctx)?,
                source_key_arn: src_arn,
                key_arn: self.arn(&dst.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    /// GenerateDataKey (`with_plaintext`) or GenerateDataKeyWithoutPlaintext.
    pub fn generate_data_key(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: &DataKeySpec,
        ctx: &EncryptionContext,
        with_plaintext: bool,
    ) -> KmsResult<DataKey> {
        self.generate_data_key_with(caller, key_id, spec, ctx, with_plaintext, false)
    }

    /// GenerateDataKey with AWS's DryRun: every check a real call makes
    /// (key state, policy, grants, context), audited, and then
    /// DryRunOperationException instead of a key. The mount asks this before
    /// letting a file be opened for writing, which needs the same right as
    /// creating it.
    pub fn generate_data_key_dry_run(
        &self,
        caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> KmsResult<()> {
        match self.generate_data_key_with(caller, key_id, &DataKeySpec::aes_256(), ctx, true, true)
        {
            Ok(_) => Err(KmsError::internal("a dry run returned a key")),
            Err(e) => Err(e),
        }
    }

    fn generate_data_key_with(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: &DataKeySpec,
        ctx: &EncryptionContext,
        with_plaintext: bool,
        dry_run: bool,
    ) -> KmsResult<DataKey> {
        let name = if with_plaintext {
            "GenerateDataKey"
        } else {
            "GenerateDataKeyWithoutPlaintext"
        };
        let params = CryptoParams {
            key_spec: spec.key_spec.as_deref(),
            number_of_bytes: spec.number_of_bytes,
            ..CryptoParams::new(Some(key_id), ctx)
        };
        let mut ev = Event::new(name, true, params).with_ctx(ctx);
        let action = if with_plaintext {
            "kms:GenerateDataKey"
        } else {
            "kms:GenerateDataKeyWithoutPlaintext"
        };
        let r = (|| {
            let len = spec.len()?;
            ctx.validate()?;
            let s = self.state()?;
            let key = self.usable(caller, &s, key_id, &mut ev, action, Some(Op::Crypto))?;
            if dry_run {
                return Err(KmsError::new(
                    ErrorCode::DryRunOperationException,
                    "the request would have succeeded, but the DryRun parameter was set",
                ));
            }
            let plaintext = SecretBytes::random(len);
            let ciphertext_blob = Self::seal_under(key, plaintext.as_bytes(), ctx)?;
            Ok(DataKey {
                ciphertext_blob,
                plaintext: with_plaintext.then_some(plaintext),
                key_arn: self.arn(&key.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    pub fn generate_random(&self, caller: &Caller, number_of_bytes: u32) -> KmsResult<SecretBytes> {
        let ev = Event::new(
            "GenerateRandom",
            true,
            json!({"numberOfBytes": number_of_bytes}),
        );
        let r = random_len(number_of_bytes).map(SecretBytes::random);
        self.finish(caller, ev, r)
    }

    // ----- imported key material ------------------------------------------

    pub fn get_parameters_for_import(
        &self,
        caller: &Caller,
        key_id: &str,
        wrapping_algorithm: &str,
        wrapping_key_spec: &str,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "GetParametersForImport",
            true,
            json!({"keyId": key_id, "wrappingAlgorithm": wrapping_algorithm, "wrappingKeySpec": wrapping_key_spec}),
        );
        let r = (|| {
            if wrapping_algorithm != "RSAES_OAEP_SHA_256" {
                return Err(KmsError::validation(format!(
                    "WrappingAlgorithm {wrapping_algorithm} is not supported; use RSAES_OAEP_SHA_256"
                )));
            }
            let bits = match wrapping_key_spec {
                "RSA_2048" => 2048,
                "RSA_3072" => 3072,
                "RSA_4096" => 4096,
                other => {
                    return Err(KmsError::validation(format!(
                        "WrappingKeySpec {other} is not RSA_2048, RSA_3072 or RSA_4096"
                    )));
                }
            };
            // Check the key before spending time on RSA key generation.
            {
                let s = self.state()?;
                self.usable(
                    caller,
                    &s,
                    key_id,
                    &mut ev,
                    "kms:GetParametersForImport",
                    Some(Op::GetParametersForImport),
                )?;
            }
            let wrapping = super::import::WrappingKey::generate(bits)?;
            let token = crate::crypto::random::array::<32>();
            let r = self.mutate(|s, now| {
                let id = self
                    .usable(
                        caller,
                        s,
                        key_id,
                        &mut Event::new("", true, Value::Null),
                        "kms:GetParametersForImport",
                        Some(Op::GetParametersForImport),
                    )?
                    .id;
                let valid_to = now + IMPORT_PARAMETERS_VALID;
                s.imports.insert(
                    id,
                    super::keystore::PendingImport {
                        token: b64(&token),
                        wrapping_algorithm: wrapping_algorithm.to_string(),
                        valid_to,
                        private_key_der: wrapping.private_der.clone(),
                    },
                );
                Ok((id, valid_to))
            })?;
            Ok(
                json!({"KeyId": self.arn(&r.0), "ImportToken": b64(&token), "PublicKey": b64(&wrapping.public_der),
                      "ParametersValidTo": rfc3339(r.1)}),
            )
        })();
        self.finish(caller, ev, r)
    }

    pub fn import_key_material(
        &self,
        caller: &Caller,
        key_id: &str,
        import_token: &[u8],
        encrypted_key_material: &[u8],
        expiration_model: Option<&str>,
        valid_to: Option<i64>,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "ImportKeyMaterial",
            false,
            json!({"keyId": key_id, "expirationModel": expiration_model, "validTo": valid_to.map(rfc3339)}),
        );
        let r = self.mutate(|s, now| {
            let model = expiration_model.unwrap_or("KEY_MATERIAL_EXPIRES");
            match (model, valid_to) {
                ("KEY_MATERIAL_EXPIRES", None) => {
                    return Err(KmsError::validation("ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES"));
                }
                ("KEY_MATERIAL_EXPIRES", Some(t)) if t <= now || t > now + 365 * DAY => {
                    return Err(KmsError::validation("ValidTo must be in the future and at most 365 days away"));
                }
                ("KEY_MATERIAL_DOES_NOT_EXPIRE", Some(_)) => {
                    return Err(KmsError::validation("ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE"));
                }
                ("KEY_MATERIAL_EXPIRES" | "KEY_MATERIAL_DOES_NOT_EXPIRE", _) => {}
                (other, _) => return Err(KmsError::validation(format!("ExpirationModel {other} is not KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE"))),
            }
            let id = self.usable(caller, s, key_id, &mut ev, "kms:ImportKeyMaterial", Some(Op::ImportKeyMaterial))?.id;
            let pending = s.imports.get(&id).ok_or_else(|| {
                KmsError::new(ErrorCode::InvalidImportTokenException, "no import is pending for this key; call get-parameters-for-import first")
            })?;
            if !crate::crypto::ct_eq(b64(import_token).as_bytes(), pending.token.as_bytes()) {
                return Err(KmsError::new(ErrorCode::InvalidImportTokenException, "the import token does not belong to this key's latest GetParametersForImport"));
            }
            if pending.valid_to <= now {
                return Err(KmsError::new(ErrorCode::ExpiredImportTokenException, "the import token expired; call get-parameters-for-import again"));
            }
            let material = super::import::unwrap(&pending.private_key_der, encrypted_key_material)?;
            let k = s.keys.get_mut(&id).expect("resolved");
            let fp = b64(&hmac_sha256(material.as_bytes(), &[b"kmsfs import fingerprint v1"]));
            let import = k.import.get_or_insert(ImportState { expiration_model: None, valid_to: None, fingerprint: None });
            if let Some(old) = &import.fingerprint
                && *old != fp
            {
                return Err(KmsError::new(
                    ErrorCode::IncorrectKeyMaterialException,
                    format!("key {id} was created with different key material; a key can only ever hold the material first imported into it"),
                ));
            }
            import.fingerprint = Some(fp);
            import.expiration_model = Some(model.to_string());
            import.valid_to = valid_to;
            if k.materials.is_empty() {
                k.materials.push(super::key::Material { version: 1, created: now, key: material });
            }
            if k.state == KeyState::PendingImport {
                k.state = KeyState::Enabled;
            }
            s.imports.remove(&id);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn delete_imported_key_material(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        let mut ev = Event::new("DeleteImportedKeyMaterial", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let id = self
                .usable(
                    caller,
                    s,
                    key_id,
                    &mut ev,
                    "kms:DeleteImportedKeyMaterial",
                    Some(Op::DeleteImportedKeyMaterial),
                )?
                .id;
            let k = s.keys.get_mut(&id).expect("resolved");
            k.materials.clear();
            k.state = KeyState::PendingImport;
            if let Some(i) = &mut k.import {
                i.valid_to = None;
                i.expiration_model = None;
            }
            Ok(())
        });
        self.finish(caller, ev, r)
    }
}

/// eventTime changes once a second; formatting it per record showed in profiles.
fn cached_rfc3339(t: i64) -> String {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        if l.0 != t {
            *l = (t, rfc3339(t));
        }
        l.1.clone()
    })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn random_account() -> String {
    format!(
        "{:012}",
        u64::from_be_bytes(crate::crypto::random::array::<8>()) % 1_000_000_000_000
    )
}

fn tags_json(tags: &[(String, String)]) -> Value {
    Value::Array(
        tags.iter()
            .map(|(k, v)| json!({"tagKey": k, "tagValue": v}))
            .collect(),
    )
}

/// AWS's tag rules, applied to `existing` merged with `new`.
fn validate_tags(
    existing: &BTreeMap<String, String>,
    new: &[(String, String)],
) -> KmsResult<BTreeMap<String, String>> {
    let tag_err = |m: String| Err(KmsError::new(ErrorCode::TagException, m));
    let mut out = existing.clone();
    for (k, v) in new {
        if k.is_empty() || k.chars().count() > 128 {
            return tag_err(format!("tag key {k:?} must be 1 to 128 characters"));
        }
        if v.chars().count() > 256 {
            return tag_err(format!(
                "the value of tag {k:?} is longer than 256 characters"
            ));
        }
        if k.starts_with("aws:") || k.starts_with("kmsfs:") {
            return tag_err(format!(
                "tag key {k:?} uses a reserved prefix (aws: or kmsfs:)"
            ));
        }
        out.insert(k.clone(), v.clone());
    }
    if out.len() > MAX_TAGS {
        return Err(KmsError::new(
            ErrorCode::LimitExceededException,
            format!("a key can have at most {MAX_TAGS} tags"),
        ));
    }
    Ok(out)
}

/// One page of sorted `items` after `marker` (the last item of the previous page).
fn paginate<'a>(
    items: &'a [String],
    limit: Option<u32>,
    marker: Option<&str>,
) -> KmsResult<(&'a [String], Option<String>)> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(KmsError::validation(format!(
            "Limit is {limit}; it must be 1 to 1000"
        )));
    }
    let start = match marker {
        None => 0,
        Some(m) => match items.binary_search_by(|i| i.as_str().cmp(m)) {
            Ok(i) => i + 1,
            Err(_) => {
                return Err(KmsError::new(
                    ErrorCode::InvalidMarkerException,
                    "the marker does not come from a previous response, or its item is gone",
                ));
            }
        },
    };
    let end = (start + limit as usize).min(items.len());
    let page = &items[start..end];
    let next = (end < items.len()).then(|| page.last().cloned()).flatten();
    Ok((page, next))
}

fn page_json(field: &str, items: Vec<Value>, next: Option<String>) -> Value {
    let mut v = json!({ field: items, "Truncated": next.is_some() });
    if let Some(n) = next {
        v["NextMarker"] = n.into();
    }
    v
}

/// The earliest time at which maintenance has something to do.
fn next_due(s: &State) -> i64 {
    let mut due = i64::MAX;
    for k in s.keys.values() {
        if let Some(d) = k.deletion_date {
            due = due.min(d);
        }
        if k.state == KeyState::Enabled
            && let Some(n) = k.next_rotation
        {
            due = due.min(n);
        }
        if !k.materials.is_empty()
            && let Some(t) = k.import.as_ref().and_then(|i| i.valid_to)
        {
            due = due.min(t);
        }
    }
    for p in s.imports.values() {
        due = due.min(p.valid_to);
    }
    due
}

type MaintenanceEvent = (&'static str, KeyId, Value);

fn apply_maintenance(s: &mut State, now: i64) -> Vec<MaintenanceEvent> {
    let mut events = vec![];
    let doomed: Vec<KeyId> = s
        .keys
        .values()
        .filter(|k| k.deletion_date.is_some_and(|d| d <= now))
        .map(|k| k.id)
        .collect();
    for id in doomed {
        s.keys.remove(&id);
        s.imports.remove(&id);
        s.aliases.retain(|_, a| a.target != id);
        events.push(("DeleteKey", id, json!({"keyId": id.to_string()})));
    }
    for k in s.keys.values_mut() {
        if k.state == KeyState::Enabled
            && let (Some(n), Some(p)) = (k.next_rotation, k.rotation_period_days)
            && n <= now
        {
            let v = k.add_material(Key256::random(), now);
            k.rotations.push(Rotation {
                date: now,
                kind: "AUTOMATIC".into(),
            });
            k.next_rotation = Some(now + p as i64 * DAY);
            events.push((
                "RotateKey",
                k.id,
                json!({"keyId": k.id.to_string(), "keyMaterialVersion": v}),
            ));
        }
        if !k.materials.is_empty()
            && let Some(t) = k.import.as_ref().and_then(|i| i.valid_to)
            && t <= now
        {
            k.materials.clear();
            if k.state != KeyState::PendingDeletion {
                k.state = KeyState::PendingImport;
            }
            events.push((
                "DeleteExpiredKeyMaterial",
                k.id,
                json!({"keyId": k.id.to_string()}),
            ));
        }
    }
    s.imports.retain(|_, p| p.valid_to > now);
    events
}

fn check_policy_name(name: Option<&str>) -> KmsResult<()> {
    match name {
        None | Some("default") => Ok(()),
        Some(n) => Err(KmsError::not_found(format!(
            "key policies are named \"default\"; there is no policy {n:?}"
        ))),
    }
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What CreateGrant asks for.
#[derive(Debug, Clone, Default)]
pub struct GrantRequest {
    pub grantee: String,
    pub retiring: Option<String>,
    pub operations: Vec<String>,
    pub constraints: Option<Constraints>,
    pub name: Option<String>,
}

/// The policy document in force for a key, and the ids its names were
/// bound to when it was put (`None`: put before ids were recorded, or a
/// default policy, which names no accounts).
fn effective_policy(key: &Key) -> (String, Option<PrincipalIds>) {
    match (&key.policy, key.manager) {
        (Some(p), _) => {
            let (doc, ids) = split_stored_policy(p);
            (doc.to_string(), ids)
        }
        (None, KeyManager::Kmsfs) => (policy::managed_key_policy(), None),
        (None, KeyManager::Customer) => (policy::default_policy(key.creator), None),
    }
}

/// Between a stored key policy document and the ids its `user:`/`group:`
/// principals were bound to when it was put (see `policy::Binding`). The
/// key record keeps one string for its policy, so the ids follow the
/// document after a NUL, which no policy contains: JSON allows no control
/// character outside strings and escapes them inside, and the strict parser
/// refuses anything after the document. GetKeyPolicy returns the document
/// alone. A policy stored before ids were recorded has no NUL.
const POLICY_IDS_SEPARATOR: char = '\0';

/// What the key record stores: the document, and its ids if it names accounts.
fn stored_policy(doc: &str, ids: Option<&PrincipalIds>) -> String {
    match ids {
        None => doc.to_string(),
        Some(ids) => format!(
            "{doc}{POLICY_IDS_SEPARATOR}{}",
            serde_json::to_string(ids).expect("ids serialise")
        ),
    }
}

fn split_stored_policy(stored: &str) -> (&str, Option<PrincipalIds>) {
    match stored.split_once(POLICY_IDS_SEPARATOR) {
        None => (stored, None),
        // Unreadable ids (the keystore is authenticated, so never in
        // practice) bind nothing: every name matches nobody.
        Some((doc, ids)) => (doc, Some(serde_json::from_str(ids).unwrap_or_default())),
    }
}

/// The caller as policies see it; supplementary groups only when asked for
/// (they cost a read of /proc).
fn subject_of(caller: &Caller, with_groups: bool, account: &str) -> Subject {
    let groups = if with_groups && caller.pid != 0 {
        super::caller::supplementary_groups(caller.pid)
    } else {
        vec![]
    };
    Subject {
        uid: caller.uid,
        gid: caller.gid,
        groups,
        account: account.to_string(),
        iam: caller
            .remote
            .as_ref()
            .and_then(|r| r.iam_name().map(str::to_string)),
    }
}
