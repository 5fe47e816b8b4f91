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

mod access;
mod access_keys;
mod crypto;
mod import_ops;
mod keys;
mod names;
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
    /// Says when the keystore may have changed (watch.rs); None: stat it
    /// before every call.
    watch: Option<Arc<super::watch::HomeWatch>>,
    /// One more than the watch's count when the stamp was last compared
    /// (0: never).
    confirmed: AtomicU64,
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
    /// When the audit log rotates and is digested.
    pub audit: super::audit::Settings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            clock: Arc::new(SystemClock),
            argon2: Argon2Params::default(),
            user_agent: format!("kmsfs/{}", env!("CARGO_PKG_VERSION")),
            names: Arc::new(SystemNames),
            audit: super::audit::Settings::default(),
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

impl Drop for Kms {
    /// A closing writer anchors where it left the chain, so that cutting
    /// the records it wrote last shows.
    fn drop(&mut self) {
        if let Err(e) = self.sync_audit() {
            crate::log_line!("kmsfs: warning: {e}");
        }
    }
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
        let log = home.open_audit_log(
            opened.keys.audit.clone(),
            options.audit.clone(),
            opened.state.audit_anchor.as_ref(),
        )?;
        let stamp = opened.stamp;
        // The audit log is beside the keystore: one watch for both.
        let watch = log.dir_watch();
        let store = Store {
            home,
            spec: opened.spec,
            keys: opened.keys,
            writer: Mutex::new(()),
            watch,
            confirmed: AtomicU64::new(0),
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

    /// Makes every audit record durable and anchors the chain's head in
    /// the keystore.
    pub fn sync_audit(&self) -> std::io::Result<()> {
        self.audit.as_ref().map_or(Ok(()), |a| a.sync())?;
        self.keep_anchor()
    }

    /// Writes the records that stand for coalesced calls whose second is
    /// over, and a digest when one is due, anchoring it (the mount and the
    /// server call this every second); no fsync.
    pub fn flush_audit(&self) -> std::io::Result<()> {
        let Some(a) = &self.audit else {
            return Ok(());
        };
        // Anchored only after a digest (a minute of activity at most): an
        // fsync and a keystore write every second cut reading a tree cold
        // by half.
        a.tick()?;
        if a.digest_seq() > self.anchored_seq() {
            a.sync()?;
            self.keep_anchor()?;
        }
        Ok(())
    }

    /// Rotates the audit log now; the rotated file's name, `None` if the
    /// log was empty.
    pub fn rotate_audit(&self) -> std::io::Result<Option<std::ffi::OsString>> {
        let Some(a) = &self.audit else {
            return Ok(None);
        };
        let r = a.rotate()?;
        self.keep_anchor()?;
        Ok(r)
    }

    fn anchored_seq(&self) -> u64 {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.state.audit_anchor.as_ref().map_or(0, |a| a.seq)
    }

    /// Keeps the audit chain's head in the keystore, if it is newer than
    /// the one kept there: outside the log, so cutting the log's newest
    /// records, or deleting it, shows. Never moves the anchor back.
    fn keep_anchor(&self) -> std::io::Result<()> {
        let (Some(a), Some(_)) = (&self.audit, &self.store) else {
            return Ok(());
        };
        let head = a.head();
        if head.seq == 0 || head.seq <= self.anchored_seq() {
            return Ok(());
        }
        self.mutate_now(|s, now| {
            if s.audit_anchor.as_ref().is_none_or(|old| old.seq < head.seq) {
                s.audit_anchor = Some(super::audit_chain::Anchor {
                    seq: head.seq,
                    mac: super::audit_chain::hex(&head.mac),
                    time: super::clock::rfc3339(now),
                });
            }
            Ok(())
        })
        .map_err(|e| {
            std::io::Error::other(format!(
                "cannot anchor the audit trail in the keystore: {}",
                e.message
            ))
        })
    }

    // ----- state access -------------------------------------------------

    /// The current state, reloaded if another process changed the keystore,
    /// after any due maintenance (deletion, automatic rotation, expiry).
    fn state(&self) -> KmsResult<Arc<State>> {
        if let Some(store) = &self.store {
            // Nothing in the home moved since the stamp was last compared:
            // the state held is the keystore's.
            let seen = store.watch.as_ref().and_then(|w| w.poll());
            if seen.is_none_or(|n| n + 1 != store.confirmed.load(Ordering::Acquire)) {
                self.reload_if_changed(store)?;
                if let Some(n) = seen {
                    store.confirmed.fetch_max(n + 1, Ordering::AcqRel);
                }
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

    /// Reloads the keystore if its stamp is not the one the state came from.
    fn reload_if_changed(&self, store: &Store) -> KmsResult<()> {
        let stale =
            self.inner.read().unwrap_or_else(|e| e.into_inner()).stamp != store.home.stamp();
        if stale {
            let (state, generation, stamp) = store.home.reload(&store.keys).map_err(home_err)?;
            self.next_due.store(next_due(&state), Ordering::Relaxed);
            *self.inner.write().unwrap_or_else(|e| e.into_inner()) = Inner {
                state: Arc::new(state),
                stamp,
                generation,
            };
        }
        Ok(())
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

    /// `usable`, for an operation that changes the key: the same checks,
    /// then the key itself, to change.
    fn usable_mut<'s>(
        &self,
        caller: &Caller,
        state: &'s mut State,
        key_ref: &str,
        ev: &mut Event,
        action: &str,
        op: Option<Op>,
    ) -> KmsResult<&'s mut Key> {
        let id = self.usable(caller, state, key_ref, ev, action, op)?.id;
        Ok(state.keys.get_mut(&id).expect("resolved"))
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
