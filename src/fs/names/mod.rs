//! How the mount's paths map to the cipherdir's: as they are (plaintext
//! names), or each component encrypted for its directory (cipher.rs).
//!
//! The mapping is a pure function of the plaintext path, so its cache never
//! goes stale: a rename changes which path a node has, never what a path
//! maps to. Only the bound on its size ever empties it.

pub mod cipher;

use cipher::{NameCipher, NameError, Stored};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::sync::Mutex;

/// Entries each cache holds before it is emptied: a few MiB at most.
const CACHE_MAX: usize = 32 * 1024;
/// Distinct undecryptable entries logged before the log goes quiet.
const LOGGED_MAX: usize = 4096;

/// Whether a component is kmsfs's own (temporaries anywhere; the config,
/// lock, journal and root records in the root): stored as it is, and never
/// a user's name (the mount refuses those).
pub fn is_internal(parent: &str, name: &str) -> bool {
    if name.starts_with(crate::fs::backing::TEMP_PREFIX) {
        return true;
    }
    if parent.is_empty() {
        let base = name
            .strip_prefix('.')
            .filter(|b| b.starts_with(".kmsfs") || b.starts_with("kmsfs.conf"))
            .unwrap_or(name);
        let base = base.split(".tmp-").next().unwrap_or(base);
        return crate::fs::config::RESERVED_NAMES.contains(&base);
    }
    false
}

pub enum Names {
    Plain,
    Encrypted(Box<Encrypted>),
}

pub struct Encrypted {
    cipher: NameCipher,
    /// Plaintext path → backing path.
    paths: Mutex<HashMap<String, String>>,
    /// (directory, backing name) → plaintext name.
    names: Mutex<HashMap<(String, String), String>>,
    logged: Mutex<HashSet<(String, String)>>,
}

/// What a listing found at one backing name.
pub enum Listed {
    /// A user's node, by its plaintext name.
    Name(String),
    /// The name as it is: kmsfs's own file, `.`/`..`, or any name of a
    /// plaintext-name filesystem.
    Own,
    /// A long name's side file: never an entry of its own.
    Side,
    /// Not a name of this directory: hidden (and logged once).
    Foreign(NameError),
}

impl Names {
    pub fn encrypted(cipher: NameCipher) -> Names {
        Names::Encrypted(Box::new(Encrypted {
            cipher,
            paths: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
            logged: Mutex::new(HashSet::new()),
        }))
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, Names::Encrypted(_))
    }

    pub fn cipher(&self) -> Option<&NameCipher> {
        match self {
            Names::Plain => None,
            Names::Encrypted(e) => Some(&e.cipher),
        }
    }

    /// The backing path of the clean plaintext path `rel`.
    pub fn path<'a>(&self, rel: &'a str) -> Cow<'a, str> {
        match self {
            Names::Plain => Cow::Borrowed(rel),
            Names::Encrypted(e) => Cow::Owned(e.path(rel)),
        }
    }

    /// Where the last component `name` of `rel` (in the directory `dir`)
    /// is stored: from the path cache, unless it is long and its side
    /// file's content is needed.
    pub fn store_last(&self, rel: &str, dir: &str, name: &str) -> Stored {
        match self {
            Names::Encrypted(e) if !cipher::is_long(name.len()) || is_internal(dir, name) => {
                let p = e.path(rel);
                let raw = p.rsplit('/').next().unwrap_or(&p).to_string();
                Stored { raw, side: None }
            }
            _ => self.store(dir, name),
        }
    }

    /// Where `name` in the directory `dir` is stored.
    pub fn store(&self, dir: &str, name: &str) -> Stored {
        match self {
            Names::Encrypted(e) if !is_internal(dir, name) => e.cipher.store(dir, name),
            _ => Stored {
                raw: name.to_string(),
                side: None,
            },
        }
    }

    /// What the backing name `raw` in the directory `dir` (open as `fd`) is.
    pub fn list(&self, dir: &str, raw: &str, fd: &File) -> Listed {
        match self {
            Names::Plain => Listed::Own,
            Names::Encrypted(e) => e.list(dir, raw, fd),
        }
    }
}

impl Encrypted {
    fn path(&self, rel: &str) -> String {
        if rel.is_empty() {
            return String::new();
        }
        if let Some(p) = self
            .paths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(rel)
        {
            return p.clone();
        }
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let mut out = self.path(parent);
        if !out.is_empty() {
            out.push('/');
        }
        if is_internal(parent, name) {
            out.push_str(name);
        } else {
            out.push_str(&self.cipher.store(parent, name).raw);
        }
        self.remember(rel, &out);
        out
    }

    fn remember(&self, rel: &str, backing: &str) {
        let mut m = self.paths.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= CACHE_MAX {
            m.clear();
        }
        m.insert(rel.to_string(), backing.to_string());
    }

    fn list(&self, dir: &str, raw: &str, fd: &File) -> Listed {
        if raw == "." || raw == ".." || is_internal(dir, raw) {
            return Listed::Own;
        }
        if cipher::is_side_raw(raw) {
            return Listed::Side;
        }
        let key = (dir.to_string(), raw.to_string());
        if let Some(n) = self
            .names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Listed::Name(n.clone());
        }
        let got = if cipher::is_long_raw(raw) {
            read_side(fd, raw)
                .map_err(|_| NameError::WrongDirectory)
                .and_then(|side| self.cipher.decrypt_long(dir, raw, &side))
        } else {
            self.cipher.decrypt(dir, raw)
        };
        match got {
            Ok(n) => {
                let mut m = self.names.lock().unwrap_or_else(|e| e.into_inner());
                if m.len() >= CACHE_MAX {
                    m.clear();
                }
                m.insert(key, n.clone());
                drop(m);
                Listed::Name(n)
            }
            Err(e) => {
                self.log_foreign(dir, raw, &e);
                Listed::Foreign(e)
            }
        }
    }

    /// Says once per entry that a listing hid it, and why; a conflict copy
    /// a sync tool made of an encrypted name is named as one.
    fn log_foreign(&self, dir: &str, raw: &str, e: &NameError) {
        {
            let mut l = self.logged.lock().unwrap_or_else(|e| e.into_inner());
            if l.len() >= LOGGED_MAX || !l.insert((dir.to_string(), raw.to_string())) {
                return;
            }
        }
        let shown = if dir.is_empty() { "/" } else { dir };
        let prefix: String = raw
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect();
        let copy_of = (prefix.len() < raw.len())
            .then(|| self.cipher.decrypt(dir, &prefix).ok())
            .flatten();
        match copy_of {
            Some(orig) => crate::log_line!(
                "kmsfs: {shown}: cipherdir entry {raw:?} looks like a sync tool's conflict copy of {orig:?}; hidden from the mount (its content is bound to the original's path: resolve the conflict in the cipherdir, or see the README)"
            ),
            None => crate::log_line!(
                "kmsfs: {shown}: cipherdir entry {raw:?} {e} (moved or renamed behind kmsfs's back, or not made by kmsfs); hidden from the mount"
            ),
        }
    }
}

/// A long name's side file, read beneath the directory's descriptor: a
/// regular file of at most MAX_STORED bytes, never through a symlink.
pub fn read_side(dir: &File, raw: &str) -> io::Result<String> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let c = std::ffi::CString::new(format!("{raw}{}", cipher::SIDE_SUFFIX))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid directory descriptor and C name; the descriptor
    // returned is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned once.
    let f = unsafe { File::from_raw_fd(fd) };
    let meta = f.metadata()?;
    if !meta.is_file() || meta.len() > cipher::MAX_STORED as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a long name's side file that is not a small regular file",
        ));
    }
    let mut s = String::new();
    f.take(cipher::MAX_STORED as u64).read_to_string(&mut s)?;
    Ok(s)
}

/// The mount's path of the cipherdir path `backing` (`kmsfs names
/// --decrypt`): each component decrypted for the directory above it.
pub fn decrypt_path(tree: &super::tree::Tree, backing: &str) -> Result<String, String> {
    let mut out = String::new();
    for raw in backing.split('/').filter(|c| !c.is_empty()) {
        let dir = tree
            .open_dir_quiet(&out)
            .map_err(|e| format!("{}: {e}", if out.is_empty() { "/" } else { &out }))?;
        let name = match tree.names().list(&out, raw, &dir) {
            Listed::Name(n) => n,
            Listed::Own => raw.to_string(),
            Listed::Side => return Err(format!("{raw} is a long name's side file")),
            Listed::Foreign(e) => return Err(format!("{raw}: {e}")),
        };
        if !out.is_empty() {
            out.push('/');
        }
        out.push_str(&name);
    }
    Ok(out)
}
