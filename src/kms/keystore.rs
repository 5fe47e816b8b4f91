//! The sealed keystore: every CMK's metadata and material, aliases and pending
//! imports, in one file sealed with AES-256-GCM under a key derived from the
//! root key. See docs/keystore.md for the format.
//!
//! Writes are atomic and durable (temp file, fsync, rename, fsync of the
//! directory) and serialised across processes by flock(2) on a lock file, so
//! two `kmsfs kms create-key` runs at once both land.
//!
//! The home belongs to the user running kmsfs (who is often root): it must be
//! a directory of theirs that nobody else can write, not a symlink, and every
//! file in it is opened beneath its descriptor without following a link. A
//! home that someone else controls could otherwise make root create, append
//! to or truncate any file on the system through a planted link.

use super::audit::AuditLog;
use super::key::Key;
use super::keyref::KeyId;
use crate::crypto::kdf::{Argon2Params, argon2id, hkdf256, hmac_sha256};
use crate::crypto::{AeadKey, Key256, SecretBytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

const FORMAT: &str = "kmsfs-keystore";
const FORMAT_VERSION: u32 = 1;
/// A keystore larger than this is refused before parsing: no real one comes close.
const MAX_KEYSTORE_BYTES: u64 = 64 << 20;
const KEYSTORE_NAME: &str = "keystore.json";
const LOCK_NAME: &str = "keystore.lock";
const AUDIT_NAME: &str = "audit.log";

/// An import in progress: the RSA private key that unwraps the user's material.
#[derive(Clone, Serialize, Deserialize)]
pub struct PendingImport {
    pub token: String,
    pub wrapping_algorithm: String,
    pub valid_to: i64,
    #[serde(with = "secret_b64")]
    pub private_key_der: SecretBytes,
}

impl std::fmt::Debug for PendingImport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PendingImport(valid_to {}, <redacted>)", self.valid_to)
    }
}

mod secret_b64 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &SecretBytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&Zeroizing::new(B64.encode(v.as_bytes())))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SecretBytes, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        B64.decode(s.as_bytes())
            .map(SecretBytes::new)
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Alias {
    pub target: KeyId,
    pub created: i64,
    pub updated: i64,
}

/// Everything the keystore holds once unsealed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub keys: BTreeMap<KeyId, Key>,
    pub aliases: BTreeMap<String, Alias>,
    pub imports: BTreeMap<KeyId, PendingImport>,
    #[serde(default)]
    pub grants: Vec<super::grant::Grant>,
    /// SigV4 access keys of `kmsfs kms serve`, by access key id.
    #[serde(default)]
    pub access_keys: BTreeMap<String, AccessKey>,
    /// Where the audit trail's chain stood when a writer last anchored it:
    /// a trail cut before it, or deleted, fails `kmsfs audit verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_anchor: Option<super::audit_chain::Anchor>,
}

/// A SigV4 credential: its secret, sealed with the rest of the keystore,
/// and the principal its requests act as.
#[derive(Clone, Serialize, Deserialize)]
pub struct AccessKey {
    #[serde(with = "secret_b64")]
    pub secret: SecretBytes,
    pub principal: String,
    pub created: i64,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessKey({}, <redacted>)", self.principal)
    }
}

/// How the root key is obtained; stored in the clear beside the sealed body.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "kebab-case")]
pub enum RootKeySpec {
    Passphrase {
        kdf: String,
        salt: String,
        params: Argon2Params,
    },
    KeyFile,
}

/// The secret a user supplies.
pub enum RootSecret {
    Passphrase(SecretBytes),
    KeyFile(Key256),
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    format: String,
    version: u32,
    account: String,
    root_key: RootKeySpec,
    /// HMAC of a fixed label under the root key, truncated: tells a wrong
    /// passphrase apart from a corrupted file without revealing anything.
    check: String,
    generation: u64,
    nonce: String,
    sealed: String,
}

/// keystore.json's bytes through what opening a keystore checks before the
/// secret is needed: the envelope's JSON, its format and version, a
/// passphrase spec's Argon2 bounds (Argon2 is not run) and the base64
/// fields. For the fuzz targets (src/fuzz_targets.rs).
pub fn parse_envelope(bytes: &[u8]) -> Result<(), String> {
    let env: Envelope = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if env.format != FORMAT || env.version != FORMAT_VERSION {
        return Err(format!("format {:?} version {}", env.format, env.version));
    }
    if let RootKeySpec::Passphrase { salt, params, .. } = &env.root_key {
        KmsHome::check_params(params).map_err(|e| e.message)?;
        B64.decode(salt).map_err(|e| e.to_string())?;
    }
    for field in [&env.check, &env.nonce, &env.sealed] {
        B64.decode(field).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeErrorKind {
    Missing,
    WrongSecret,
    WrongSecretKind,
    Corrupt,
    /// The home is not safe to use: another user's, writable by others, or a link.
    Unsafe,
    Io,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeError {
    pub kind: HomeErrorKind,
    pub message: String,
}

impl HomeError {
    fn new(kind: HomeErrorKind, message: impl Into<String>) -> Self {
        HomeError {
            kind,
            message: message.into(),
        }
    }
    fn io(what: &str, path: &Path, e: io::Error) -> Self {
        Self::new(HomeErrorKind::Io, format!("{what} {}: {e}", path.display()))
    }
}

impl std::fmt::Display for HomeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HomeError {}

/// The keys derived from the root key; the root key itself is not kept.
pub struct RootKeys {
    seal: Key256,
    pub audit: Key256,
    check: [u8; 16],
}

impl RootKeys {
    pub fn derive(root: &Key256) -> Self {
        let mut check = [0u8; 16];
        check.copy_from_slice(&hmac_sha256(root.as_bytes(), &[b"kmsfs root key check v1"])[..16]);
        RootKeys {
            seal: hkdf256(root.as_bytes(), b"", b"kmsfs keystore seal v1"),
            audit: hkdf256(root.as_bytes(), b"", b"kmsfs audit chain v1"),
            check,
        }
    }
}

/// A file's identity; a rename over it changes the inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    ino: u64,
    mtime_ns: i64,
    size: u64,
}

// The field types of `stat` differ between targets.
#[allow(clippy::unnecessary_cast)]
fn stamp_of(st: &libc::stat) -> Stamp {
    Stamp {
        ino: st.st_ino as u64,
        mtime_ns: st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
        size: st.st_size as u64,
    }
}

/// The directory holding keystore.json, keystore.lock and audit.log.
#[derive(Debug, Clone)]
pub struct KmsHome {
    pub dir: PathBuf,
    /// The home's descriptor, opened (O_NOFOLLOW) and checked once, then
    /// shared by clones: every file of the home is opened beneath it, so a
    /// path swapped after the check changes nothing.
    fd: Arc<OnceLock<OwnedFd>>,
}

/// Exclusive flock(2) on keystore.lock, released on drop.
pub struct WriteLock(File);

impl Drop for WriteLock {
    fn drop(&mut self) {
        // SAFETY: flock on an open descriptor.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

impl KmsHome {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        KmsHome {
            dir: dir.into(),
            fd: Arc::default(),
        }
    }

    /// `$KMSFS_HOME`, else /var/lib/kmsfs for root, else
    /// `$XDG_DATA_HOME/kmsfs`, else `$HOME/.local/share/kmsfs`. An empty
    /// variable counts as unset; with none of them there is no default (a
    /// path relative to wherever the command happens to run is not one).
    pub fn default_dir() -> Result<PathBuf, String> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(h) = var("KMSFS_HOME") {
            return Ok(PathBuf::from(h));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(PathBuf::from("/var/lib/kmsfs"));
        }
        // The XDG base directory spec: a relative path is invalid, ignored.
        if let Some(x) = var("XDG_DATA_HOME").filter(|x| Path::new(x).is_absolute()) {
            return Ok(PathBuf::from(x).join("kmsfs"));
        }
        match var("HOME") {
            Some(h) if Path::new(&h).is_absolute() => Ok(PathBuf::from(h).join(".local/share/kmsfs")),
            Some(h) => Err(format!(
                "HOME ({}) is not an absolute path, so there is no default KMS home: set HOME or pass --kms-home DIR (or set KMSFS_HOME)",
                Path::new(&h).display()
            )),
            None => Err(
                "HOME is not set, so there is no default KMS home: set HOME or pass --kms-home DIR (or set KMSFS_HOME)"
                    .into(),
            ),
        }
    }

    pub fn keystore_path(&self) -> PathBuf {
        self.dir.join(KEYSTORE_NAME)
    }
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join(AUDIT_NAME)
    }

    /// Whether there is a keystore here to open. A home that is there but
    /// cannot be used (refused, or an audit log without its keystore) counts
    /// as existing, so that opening it says why instead of offering to
    /// start afresh.
    pub fn exists(&self) -> bool {
        let probe =
            self.home_fd(false)
                .and_then(|dir| match lstat_at(dir, OsStr::new(KEYSTORE_NAME)) {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.no_keystore(dir)),
                    Err(e) => Err(HomeError::io("cannot stat", &self.keystore_path(), e)),
                });
        !matches!(probe, Err(e) if e.kind == HomeErrorKind::Missing)
    }

    /// The error for a home without keystore.json: missing, unless an audit
    /// log shows that a keystore was here (then it is lost, and starting a
    /// new account would orphan every key and blob of the old one).
    fn no_keystore(&self, dir: BorrowedFd<'_>) -> HomeError {
        if lstat_at(dir, OsStr::new(AUDIT_NAME)).is_ok() {
            return HomeError::new(
                HomeErrorKind::Corrupt,
                format!(
                    "the KMS home {} has an audit log but no {KEYSTORE_NAME}: restore the keystore from a backup; refusing to start a new account here",
                    self.dir.display()
                ),
            );
        }
        HomeError::new(
            HomeErrorKind::Missing,
            format!(
                "no keystore at {}; create a key first (`kmsfs kms create-key`) or point --kms-home / KMSFS_HOME at an existing KMS home",
                self.keystore_path().display()
            ),
        )
    }

    /// The home's descriptor, opened and checked on first use (creating the
    /// home and its missing parents, 0700, if `create`).
    fn home_fd(&self, create: bool) -> Result<BorrowedFd<'_>, HomeError> {
        if let Some(fd) = self.fd.get() {
            return Ok(fd.as_fd());
        }
        let fd = self.open_home(create)?;
        // Another thread may have got there first: both name the same checked home.
        let _ = self.fd.set(fd);
        Ok(self.fd.get().expect("set above").as_fd())
    }

    fn open_home(&self, create: bool) -> Result<OwnedFd, HomeError> {
        const WHAT: &str = "the KMS home";
        let missing = || {
            HomeError::new(
                HomeErrorKind::Missing,
                format!(
                    "no KMS home at {}; create a key first (`kmsfs kms create-key`) or point --kms-home / KMSFS_HOME at an existing KMS home",
                    self.dir.display()
                ),
            )
        };
        let Some(name) = self.dir.file_name() else {
            // "/" or a path ending in "..": no last component to be a link.
            let fd = open_dir(&self.dir, libc::O_NOFOLLOW).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    missing()
                } else {
                    HomeError::io("cannot open", &self.dir, e)
                }
            })?;
            check_dir(fd.as_fd(), &self.dir, WHAT)?;
            return Ok(fd);
        };
        // Ancestors that exist are followed as they are (/tmp, /var/lib, a
        // symlinked /home): they are not the home. Those kmsfs creates are
        // made 0700 and checked like it.
        let parent = parent_of(&self.dir);
        let pfd = match open_dir(parent, 0) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => make_dirs(parent)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(missing()),
            Err(e) => return Err(HomeError::io("cannot open", parent, e)),
        };
        if create {
            return ensure_dir(pfd.as_fd(), name, &self.dir, WHAT);
        }
        let fd = open_dir_at(pfd.as_fd(), name).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                missing()
            } else {
                dir_error(pfd.as_fd(), name, &self.dir, WHAT, e)
            }
        })?;
        check_dir(fd.as_fd(), &self.dir, WHAT)?;
        Ok(fd)
    }

    /// Opens `name` in the home beneath its descriptor; see [`open_entry`].
    fn open_in_home(&self, name: &str, flags: libc::c_int, what: &str) -> Result<File, HomeError> {
        let dir = self.home_fd(false)?;
        open_entry(dir, OsStr::new(name), flags, 0o600)
            .map_err(|e| entry_error(what, &self.dir.join(name), e))
    }

    /// A file of the home, if it is there, must be a regular file.
    fn check_entry(&self, name: &str, what: &str) -> Result<(), HomeError> {
        let dir = self.home_fd(false)?;
        let path = self.dir.join(name);
        match lstat_at(dir, OsStr::new(name)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(HomeError::io("cannot stat", &path, e)),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(()),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => Err(entry_error(
                what,
                &path,
                io::Error::from_raw_os_error(libc::ELOOP),
            )),
            Ok(_) => Err(entry_error(
                what,
                &path,
                io::Error::new(io::ErrorKind::InvalidInput, NotRegular),
            )),
        }
    }

    pub fn lock(&self) -> Result<WriteLock, HomeError> {
        let f = self.open_in_home(
            LOCK_NAME,
            libc::O_WRONLY | libc::O_CREAT,
            "cannot open lock file",
        )?;
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            let p = self.dir.join(LOCK_NAME);
            return Err(HomeError::io("cannot lock", &p, io::Error::last_os_error()));
        }
        Ok(WriteLock(f))
    }

    /// Opens (creating, 0600) the home's audit log beneath its descriptor,
    /// its chain continuing from `anchor` if the log is found empty.
    pub fn open_audit_log(
        &self,
        key: Key256,
        settings: super::audit::Settings,
        anchor: Option<&super::audit_chain::Anchor>,
    ) -> Result<AuditLog, HomeError> {
        let path = self.audit_path();
        self.check_entry(AUDIT_NAME, "cannot open the audit log")?;
        let fail = |e: io::Error| {
            HomeError::new(
                HomeErrorKind::Io,
                format!(
                    "cannot open the audit log {}: {e}; kmsfs does not use keys unaudited",
                    path.display()
                ),
            )
        };
        let dir = File::from(self.home_fd(false)?.try_clone_to_owned().map_err(fail)?);
        let anchor = anchor.and_then(|a| a.head());
        AuditLog::open_in(dir, OsStr::new(AUDIT_NAME), &path, key, settings, anchor).map_err(fail)
    }

    /// The home's directory, for reading the audit trail beneath it.
    pub fn dir_file(&self) -> Result<File, HomeError> {
        let fd = self.home_fd(false)?;
        fd.try_clone_to_owned()
            .map(File::from)
            .map_err(|e| HomeError::io("cannot open", &self.dir, e))
    }

    pub fn stamp(&self) -> Option<Stamp> {
        let dir = self.home_fd(false).ok()?;
        lstat_at(dir, OsStr::new(KEYSTORE_NAME))
            .ok()
            .map(|st| stamp_of(&st))
    }

    /// The root-key spec, readable without the secret (to know what to ask for).
    pub fn root_key_spec(&self) -> Result<RootKeySpec, HomeError> {
        Ok(self.read_envelope()?.root_key)
    }

    fn read_envelope(&self) -> Result<Envelope, HomeError> {
        Ok(self.read_envelope_stamped()?.0)
    }

    /// The envelope and the stamp of the very file it was read from: a stamp
    /// taken by path before or after the read could belong to a keystore that
    /// another process renamed into place in between, and a state cached
    /// under that stamp would then silently drop that process's change.
    fn read_envelope_stamped(&self) -> Result<(Envelope, Stamp), HomeError> {
        let p = self.keystore_path();
        let dir = self.home_fd(false)?;
        let mut f = match open_entry(dir, OsStr::new(KEYSTORE_NAME), libc::O_RDONLY, 0) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(self.no_keystore(dir)),
            Err(e) => return Err(entry_error("cannot open", &p, e)),
        };
        let meta = fstat(f.as_fd()).map_err(|e| HomeError::io("cannot stat", &p, e))?;
        let len = meta.st_size as u64;
        if len > MAX_KEYSTORE_BYTES {
            return Err(HomeError::new(
                HomeErrorKind::Corrupt,
                format!("{} is {len} bytes, too large to be a keystore", p.display()),
            ));
        }
        let mut data = Vec::with_capacity(len as usize);
        io::Read::read_to_end(&mut f, &mut data)
            .map_err(|e| HomeError::io("cannot read", &p, e))?;
        let env: Envelope = serde_json::from_slice(&data).map_err(|e| {
            HomeError::new(
                HomeErrorKind::Corrupt,
                format!(
                    "{} is not a kmsfs keystore ({e}); restore it from a backup",
                    p.display()
                ),
            )
        })?;
        if env.format != FORMAT || env.version != FORMAT_VERSION {
            return Err(HomeError::new(
                HomeErrorKind::Corrupt,
                format!(
                    "{} has format {:?} version {}; this kmsfs reads {FORMAT} version {FORMAT_VERSION}",
                    p.display(),
                    env.format,
                    env.version
                ),
            ));
        }
        Ok((env, stamp_of(&meta)))
    }

    /// Argon2 cost parameters read from disk are bounded before use: a
    /// keystore edited to ask for terabytes of memory or years of passes is
    /// refused as damaged, not obeyed.
    fn check_params(p: &Argon2Params) -> Result<(), HomeError> {
        let ok = (8..=(4 << 20)).contains(&p.memory_kib)
            && (1..=64).contains(&p.iterations)
            && (1..=64).contains(&p.parallelism)
            && p.memory_kib >= 8 * p.parallelism;
        if ok {
            Ok(())
        } else {
            Err(HomeError::new(
                HomeErrorKind::Corrupt,
                format!(
                    "the keystore asks for Argon2 parameters outside the accepted bounds (memory {} KiB, {} passes, {} lanes; at most 4 GiB, 64, 64): it is damaged or was edited",
                    p.memory_kib, p.iterations, p.parallelism
                ),
            ))
        }
    }

    /// Derives the root key for an existing keystore's spec.
    pub fn derive_root(spec: &RootKeySpec, secret: &RootSecret) -> Result<Key256, HomeError> {
        match (spec, secret) {
            (RootKeySpec::Passphrase { kdf, salt, params }, RootSecret::Passphrase(pw)) => {
                if kdf != "argon2id" {
                    return Err(HomeError::new(
                        HomeErrorKind::Corrupt,
                        format!("unknown KDF {kdf:?}"),
                    ));
                }
                Self::check_params(params)?;
                let salt = B64.decode(salt).map_err(|_| {
                    HomeError::new(HomeErrorKind::Corrupt, "keystore salt is not base64")
                })?;
                if !(8..=64).contains(&salt.len()) {
                    return Err(HomeError::new(
                        HomeErrorKind::Corrupt,
                        "the keystore's salt is not 8 to 64 bytes: it is damaged or was edited",
                    ));
                }
                argon2id(pw.as_bytes(), &salt, *params)
                    .map_err(|e| HomeError::new(HomeErrorKind::Corrupt, e))
            }
            (RootKeySpec::KeyFile, RootSecret::KeyFile(k)) => Ok(hkdf256(
                k.as_bytes(),
                b"",
                b"kmsfs root key from key file v1",
            )),
            (RootKeySpec::KeyFile, RootSecret::Passphrase(_)) => Err(HomeError::new(
                HomeErrorKind::WrongSecretKind,
                "this KMS home is sealed with a key file; pass --key-file FILE",
            )),
            (RootKeySpec::Passphrase { .. }, RootSecret::KeyFile(_)) => Err(HomeError::new(
                HomeErrorKind::WrongSecretKind,
                "this KMS home is sealed with a passphrase; give it with --passphrase-file, --extpass or at the prompt instead of --key-file",
            )),
        }
    }

    /// Opens an existing keystore: (account, root keys, state, stamp).
    pub fn open(&self, secret: &RootSecret) -> Result<Opened, HomeError> {
        let (env, stamp) = self.read_envelope_stamped()?;
        // The lock is opened (without following links) only when a write
        // comes; a planted one is reported now, before any work is done.
        self.check_entry(LOCK_NAME, "cannot open lock file")?;
        let root = Self::derive_root(&env.root_key, secret)?;
        let keys = RootKeys::derive(&root);
        let check = B64.decode(&env.check).unwrap_or_default();
        if !crate::crypto::ct_eq(&check, &keys.check) {
            return Err(HomeError::new(
                HomeErrorKind::WrongSecret,
                format!(
                    "wrong passphrase or key file for the KMS home {}; nothing was changed",
                    self.dir.display()
                ),
            ));
        }
        let state = self.unseal(&env, &keys)?;
        Ok(Opened {
            account: env.account,
            spec: env.root_key,
            keys,
            state,
            generation: env.generation,
            stamp: Some(stamp),
        })
    }

    fn unseal(&self, env: &Envelope, keys: &RootKeys) -> Result<State, HomeError> {
        let corrupt = |why: &str| {
            HomeError::new(
                HomeErrorKind::Corrupt,
                format!(
                    "keystore {} is damaged ({why}); the passphrase is right, so restore the file from a backup",
                    self.keystore_path().display()
                ),
            )
        };
        let nonce: [u8; 12] = B64
            .decode(&env.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| corrupt("bad nonce"))?;
        let sealed = B64
            .decode(&env.sealed)
            .map_err(|_| corrupt("sealed body is not base64"))?;
        let aad = envelope_aad(&env.account, env.generation);
        let plain = AeadKey::new(&keys.seal)
            .open(&nonce, &aad, &sealed)
            .map_err(|_| corrupt("authentication failed"))?;
        serde_json::from_slice(plain.as_bytes())
            .map_err(|_| corrupt("sealed body is not a keystore"))
    }

    /// Re-reads the keystore with keys already derived (after another process wrote it).
    pub fn reload(&self, keys: &RootKeys) -> Result<(State, u64, Option<Stamp>), HomeError> {
        let (env, stamp) = self.read_envelope_stamped()?;
        Ok((self.unseal(&env, keys)?, env.generation, Some(stamp)))
    }

    /// Creates a new, empty keystore. Fails if one exists.
    pub fn create(&self, secret: &RootSecret, params: Argon2Params) -> Result<Opened, HomeError> {
        let dir = self.home_fd(true)?;
        let _lock = self.lock()?;
        match lstat_at(dir, OsStr::new(KEYSTORE_NAME)) {
            Ok(_) => {
                return Err(HomeError::new(
                    HomeErrorKind::Io,
                    format!(
                        "a keystore already exists at {}",
                        self.keystore_path().display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(HomeError::io("cannot stat", &self.keystore_path(), e)),
        }
        let orphan = self.no_keystore(dir);
        if orphan.kind != HomeErrorKind::Missing {
            return Err(orphan);
        }
        let spec = match secret {
            RootSecret::Passphrase(_) => RootKeySpec::Passphrase {
                kdf: "argon2id".into(),
                salt: B64.encode(crate::crypto::random::array::<16>()),
                params,
            },
            RootSecret::KeyFile(_) => RootKeySpec::KeyFile,
        };
        let root = Self::derive_root(&spec, secret)?;
        let keys = RootKeys::derive(&root);
        let n: u64 = u64::from_be_bytes(crate::crypto::random::array::<8>());
        let account = format!("{:012}", n % 1_000_000_000_000);
        let opened = Opened {
            account,
            spec,
            keys,
            state: State::default(),
            generation: 0,
            stamp: None,
        };
        self.write(
            &opened.account,
            &opened.spec,
            &opened.keys,
            &opened.state,
            1,
        )?;
        // Still under the lock: the file just written.
        Ok(Opened {
            generation: 1,
            stamp: self.stamp(),
            ..opened
        })
    }

    /// Seals and atomically replaces the keystore. The caller holds the lock.
    pub fn write(
        &self,
        account: &str,
        spec: &RootKeySpec,
        keys: &RootKeys,
        state: &State,
        generation: u64,
    ) -> Result<(), HomeError> {
        let plain = serialize_secret(state);
        let nonce = crate::crypto::random::array::<12>();
        let sealed =
            AeadKey::new(&keys.seal).seal(&nonce, &envelope_aad(account, generation), &plain);
        let env = Envelope {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            account: account.into(),
            root_key: spec.clone(),
            check: B64.encode(keys.check),
            generation,
            nonce: B64.encode(nonce),
            sealed: B64.encode(&sealed),
        };
        let bytes = serde_json::to_vec_pretty(&env).expect("envelope serialises");
        let dir = self.home_fd(false)?;
        replace_at(dir, OsStr::new(KEYSTORE_NAME), &bytes)
            .map_err(|e| entry_error("cannot write", &self.keystore_path(), e))
    }
}

/// JSON of a value holding key material, in a buffer zeroized on drop and
/// sized exactly beforehand: a growing Vec would leave unzeroized copies in
/// the memory it reallocated away from.
fn serialize_secret<T: Serialize>(v: &T) -> Zeroizing<Vec<u8>> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    serde_json::to_writer(&mut n, v).expect("state serialises");
    let mut out = Zeroizing::new(Vec::with_capacity(n.0));
    serde_json::to_writer(&mut *out, v).expect("state serialises");
    debug_assert_eq!(out.capacity(), n.0);
    out
}

fn envelope_aad(account: &str, generation: u64) -> Vec<u8> {
    let mut aad = b"kmsfs-keystore-v1\0".to_vec();
    aad.extend_from_slice(account.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&generation.to_be_bytes());
    aad
}

/// `path`'s parent directory; "" (a relative name) is ".".
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned_fd(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory by path (`extra`: O_NOFOLLOW or 0).
fn open_dir(path: &Path, extra: libc::c_int) -> io::Result<OwnedFd> {
    let c = c_name(path.as_os_str())?;
    // SAFETY: open with a NUL-terminated path.
    owned_fd(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC | extra,
        )
    })
}

/// Opens the directory `name` beneath `dir`, refusing a symlink.
fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let c = c_name(name)?;
    // SAFETY: openat on an open directory with a NUL-terminated name.
    owned_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: fstat fills the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// lstat of `name` beneath `dir`: a link is described, not followed.
fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let c = c_name(name)?;
    // SAFETY: fstatat on an open directory, filling the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}

/// "uid N (name)", or "uid N" for a uid without a passwd entry.
fn who(uid: libc::uid_t) -> String {
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    // SAFETY: getpwuid_r writes into `pw` and `buf`, which outlive the call;
    // `out` is non-null only when `pw` was filled in.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r == 0 && !out.is_null() && !pw.pw_name.is_null() {
        // SAFETY: pw_name points to a NUL-terminated string in `buf`.
        let name = unsafe { CStr::from_ptr(pw.pw_name) }.to_string_lossy();
        return format!("uid {uid} ({name})");
    }
    format!("uid {uid}")
}

/// A home (or a parent kmsfs made for it) must be the caller's and
/// writable by nobody else: whoever can write in it can replace the
/// keystore, or plant a link that makes kmsfs (often root) write elsewhere.
fn check_dir(fd: BorrowedFd<'_>, path: &Path, what: &str) -> Result<(), HomeError> {
    let st = fstat(fd).map_err(|e| HomeError::io("cannot stat", path, e))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let p = path.display();
    if st.st_uid != me {
        return Err(HomeError::new(
            HomeErrorKind::Unsafe,
            format!(
                "refusing {what} {p}: it is owned by {}, not by {} who runs kmsfs, so its owner could swap the keystore or plant links in it. Use a directory of your own (--kms-home DIR or KMSFS_HOME), or if this one is meant to be yours: chown {me} {p} && chmod 700 {p}",
                who(st.st_uid),
                who(me),
            ),
        ));
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        let by = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "its group and by others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(HomeError::new(
            HomeErrorKind::Unsafe,
            format!(
                "refusing {what} {p}: it is writable by {by} (mode {mode:04o}), who could replace the keystore or plant links in it. Fix it with: chmod 700 {p}"
            ),
        ));
    }
    Ok(())
}

/// Why the directory `name` beneath `parent` did not open.
fn dir_error(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    what: &str,
    e: io::Error,
) -> HomeError {
    if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR))
        && let Ok(st) = lstat_at(parent, name)
    {
        let p = path.display();
        return HomeError::new(
            HomeErrorKind::Unsafe,
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                format!(
                    "refusing {what} {p}: it is a symbolic link, and kmsfs follows none there (whoever can change it could point kmsfs anywhere). Pass the directory itself with --kms-home or KMSFS_HOME"
                )
            } else {
                format!("{what} {p} is not a directory")
            },
        );
    }
    HomeError::io("cannot open", path, e)
}

/// Opens the directory `name` beneath `parent`, creating it 0700 (whatever
/// the umask) if it is missing, and checks it.
fn ensure_dir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    what: &str,
) -> Result<OwnedFd, HomeError> {
    let c = c_name(name).map_err(|e| HomeError::io("cannot create", path, e))?;
    // SAFETY: mkdirat on an open directory with a NUL-terminated name.
    let created = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) } == 0;
    if !created {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(HomeError::io("cannot create", path, e));
        }
    }
    let fd = open_dir_at(parent, name).map_err(|e| dir_error(parent, name, path, what, e))?;
    // SAFETY: fchmod on the directory just created and opened.
    if created && unsafe { libc::fchmod(fd.as_raw_fd(), 0o700) } != 0 {
        return Err(HomeError::io(
            "cannot set the mode of",
            path,
            io::Error::last_os_error(),
        ));
    }
    check_dir(fd.as_fd(), path, what)?;
    Ok(fd)
}

/// Opens `path`, creating it and its missing parents, each 0700 and checked.
fn make_dirs(path: &Path) -> Result<OwnedFd, HomeError> {
    let Some(name) = path.file_name() else {
        return open_dir(path, 0).map_err(|e| HomeError::io("cannot open", path, e));
    };
    let parent = parent_of(path);
    let pfd = match open_dir(parent, 0) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => make_dirs(parent)?,
        Err(e) => return Err(HomeError::io("cannot open", parent, e)),
    };
    ensure_dir(pfd.as_fd(), name, path, "the KMS home's parent")
}

/// Opens `name` beneath `dir` with `flags` (and `mode` if created): no
/// symlink is followed, the descriptor is close-on-exec, and anything but a
/// regular file (a FIFO would block a non-blocking open's caller forever,
/// a device is not kmsfs's) is refused.
fn open_entry(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::c_uint,
) -> io::Result<File> {
    let c = c_name(name)?;
    // SAFETY: openat on an open directory with a NUL-terminated name.
    let fd = owned_fd(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            mode,
        )
    })?;
    if fstat(fd.as_fd())?.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegular));
    }
    Ok(File::from(fd))
}

#[derive(Debug)]
struct NotRegular;

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a regular file")
    }
}

impl std::error::Error for NotRegular {}

/// The error for a file of the home that did not open: a planted link or
/// special file is named as such.
fn entry_error(what: &str, path: &Path, e: io::Error) -> HomeError {
    let p = path.display();
    if e.raw_os_error() == Some(libc::ELOOP) {
        return HomeError::new(
            HomeErrorKind::Unsafe,
            format!(
                "{what} {p}: it is a symbolic link, and kmsfs follows no link in its KMS home (one planted there could make it write elsewhere): remove it, and find out who made it"
            ),
        );
    }
    if e.get_ref().is_some_and(|i| i.is::<NotRegular>()) {
        return HomeError::new(
            HomeErrorKind::Unsafe,
            format!("{what} {p}: it is not a regular file; remove or move it"),
        );
    }
    HomeError::io(what, path, e)
}

/// Replaces `name` beneath `dir` with `bytes`: a temp file under a random
/// name (O_EXCL, so nothing there is reused), fsync, renameat over `name`,
/// fsync of the directory. After a crash the file is either the old one or
/// the new one, never a mix.
fn replace_at(dir: BorrowedFd<'_>, name: &OsStr, bytes: &[u8]) -> io::Result<()> {
    let mut suffix = String::new();
    crate::crypto::hex_into(&crate::crypto::random::array::<8>(), &mut suffix);
    let mut tmp = OsString::from(".");
    tmp.push(name);
    tmp.push(".tmp-");
    tmp.push(&suffix);
    let (c_tmp, c_dst) = (c_name(&tmp)?, c_name(name)?);
    let mut f = open_entry(
        dir,
        &tmp,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )?;
    let res = (|| -> io::Result<()> {
        f.write_all(bytes)?;
        f.sync_all()?;
        let fd = dir.as_raw_fd();
        // SAFETY: renameat and fsync on an open directory with NUL-terminated names.
        if unsafe { libc::renameat(fd, c_tmp.as_ptr(), fd, c_dst.as_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if unsafe { libc::fsync(fd) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    if res.is_err() {
        // SAFETY: unlinkat on an open directory; harmless if already renamed.
        unsafe { libc::unlinkat(dir.as_raw_fd(), c_tmp.as_ptr(), 0) };
    }
    res
}

pub struct Opened {
    pub account: String,
    pub spec: RootKeySpec,
    pub keys: RootKeys,
    pub state: State,
    pub generation: u64,
    /// The keystore file `state` was read from (or written as).
    pub stamp: Option<Stamp>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fast() -> Argon2Params {
        Argon2Params {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        }
    }

    fn pw(s: &str) -> RootSecret {
        RootSecret::Passphrase(SecretBytes::new(s.as_bytes().to_vec()))
    }

    #[test]
    fn create_open_and_wrong_passphrase() {
        let d = tempfile::tempdir().unwrap();
        let home = KmsHome::new(d.path().join("h"));
        let o = home.create(&pw("right"), fast()).unwrap();
        assert_eq!(o.account.len(), 12);
        let before = fs::read(home.keystore_path()).unwrap();
        let e = home.open(&pw("wrong")).err().unwrap();
        assert_eq!(e.kind, HomeErrorKind::WrongSecret);
        assert!(e.message.contains("wrong passphrase"));
        assert_eq!(fs::read(home.keystore_path()).unwrap(), before);
        let e = home
            .open(&RootSecret::KeyFile(Key256::random()))
            .err()
            .unwrap();
        assert_eq!(e.kind, HomeErrorKind::WrongSecretKind);
        let o2 = home.open(&pw("right")).unwrap();
        assert_eq!(o2.account, o.account);
        assert!(home.create(&pw("right"), fast()).is_err());
    }

    #[test]
    fn corruption_is_reported_not_panicked() {
        let d = tempfile::tempdir().unwrap();
        let home = KmsHome::new(d.path());
        home.create(&RootSecret::KeyFile(Key256::from_bytes([1; 32])), fast())
            .unwrap();
        let p = home.keystore_path();
        let mut env: serde_json::Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        let sealed = env["sealed"].as_str().unwrap().to_string();
        let mut raw = B64.decode(sealed).unwrap();
        raw[0] ^= 1;
        env["sealed"] = B64.encode(raw).into();
        fs::write(&p, serde_json::to_vec(&env).unwrap()).unwrap();
        let e = home
            .open(&RootSecret::KeyFile(Key256::from_bytes([1; 32])))
            .err()
            .unwrap();
        assert_eq!(e.kind, HomeErrorKind::Corrupt);
        fs::write(&p, b"{not json").unwrap();
        assert_eq!(
            home.open(&RootSecret::KeyFile(Key256::random()))
                .err()
                .unwrap()
                .kind,
            HomeErrorKind::Corrupt
        );
    }

    #[test]
    fn writes_leave_only_the_keystore_and_its_lock() {
        let d = tempfile::tempdir().unwrap();
        let home = KmsHome::new(d.path().join("h"));
        let secret = RootSecret::KeyFile(Key256::from_bytes([3; 32]));
        let o = home.create(&secret, fast()).unwrap();
        let _lock = home.lock().unwrap();
        home.write(&o.account, &o.spec, &o.keys, &o.state, 2)
            .unwrap();
        let mut names: Vec<_> = fs::read_dir(&home.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["keystore.json", "keystore.lock"]);
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(p).unwrap().permissions()) & 0o777
        };
        assert_eq!(mode(&home.dir), 0o700);
        assert_eq!(mode(&home.keystore_path()), 0o600);
        assert_eq!(home.open(&secret).unwrap().generation, 2);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_keystore_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let d = tempfile::tempdir().unwrap();
            let home = KmsHome::new(d.path());
            fs::write(home.keystore_path(), &bytes).unwrap();
            proptest::prop_assert!(home.open(&RootSecret::KeyFile(Key256::random())).is_err());
        }
    }
}
