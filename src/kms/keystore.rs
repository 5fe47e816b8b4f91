//! The sealed keystore: every CMK's metadata and material, aliases and pending
//! imports, in one file sealed with AES-256-GCM under a key derived from the
//! root key. See docs/keystore.md for the format.
//!
//! Writes are atomic and durable (temp file, fsync, rename, fsync of the
//! directory) and serialised across processes by flock(2) on a lock file, so
//! two `kmsfs kms create-key` runs at once both land.

use super::key::Key;
use super::keyref::KeyId;
use crate::crypto::kdf::{Argon2Params, argon2id, hkdf256, hmac_sha256};
use crate::crypto::{AeadKey, Key256, SecretBytes};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const FORMAT: &str = "kmsfs-keystore";
const FORMAT_VERSION: u32 = 1;
/// A keystore larger than this is refused before parsing: no real one comes close.
const MAX_KEYSTORE_BYTES: u64 = 64 << 20;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HomeErrorKind {
    Missing,
    WrongSecret,
    WrongSecretKind,
    Corrupt,
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

fn stamp_of(m: &fs::Metadata) -> Stamp {
    Stamp {
        ino: m.ino(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        size: m.size(),
    }
}

/// The directory holding keystore.json, keystore.lock and audit.log.
#[derive(Debug, Clone)]
pub struct KmsHome {
    pub dir: PathBuf,
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
        KmsHome { dir: dir.into() }
    }

    /// `$KMSFS_HOME`, else /var/lib/kmsfs for root, else $XDG_DATA_HOME/kmsfs.
    pub fn default_dir() -> PathBuf {
        if let Some(h) = std::env::var_os("KMSFS_HOME") {
            return PathBuf::from(h);
        }
        // SAFETY: getuid has no preconditions.
        if unsafe { libc::getuid() } == 0 {
            return PathBuf::from("/var/lib/kmsfs");
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(x).join("kmsfs");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        PathBuf::from(home).join(".local/share/kmsfs")
    }

    pub fn keystore_path(&self) -> PathBuf {
        self.dir.join("keystore.json")
    }
    pub fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.log")
    }
    fn lock_path(&self) -> PathBuf {
        self.dir.join("keystore.lock")
    }

    pub fn exists(&self) -> bool {
        self.keystore_path().exists()
    }

    pub fn lock(&self) -> Result<WriteLock, HomeError> {
        let p = self.lock_path();
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&p)
            .map_err(|e| HomeError::io("cannot open lock file", &p, e))?;
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(HomeError::io("cannot lock", &p, io::Error::last_os_error()));
        }
        Ok(WriteLock(f))
    }

    pub fn stamp(&self) -> Option<Stamp> {
        fs::metadata(self.keystore_path())
            .ok()
            .map(|m| stamp_of(&m))
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
        let mut f = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(HomeError::new(
                    HomeErrorKind::Missing,
                    format!(
                        "no keystore at {}; create a key first (`kmsfs kms create-key`) or point --kms-home / KMSFS_HOME at an existing KMS home",
                        p.display()
                    ),
                ));
            }
            Err(e) => return Err(HomeError::io("cannot open", &p, e)),
        };
        let meta = f
            .metadata()
            .map_err(|e| HomeError::io("cannot stat", &p, e))?;
        let len = meta.len();
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
        fs::create_dir_all(&self.dir).map_err(|e| HomeError::io("cannot create", &self.dir, e))?;
        let _ = fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        let _lock = self.lock()?;
        if self.exists() {
            return Err(HomeError::new(
                HomeErrorKind::Io,
                format!(
                    "a keystore already exists at {}",
                    self.keystore_path().display()
                ),
            ));
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
        atomic_write(&self.keystore_path(), &bytes)
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

/// temp file, fsync, rename, fsync of the directory: after a crash the file is
/// either the old one or the new one, never a mix.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let res = (|| -> io::Result<()> {
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    res.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        HomeError::io("cannot write", path, e)
    })
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
