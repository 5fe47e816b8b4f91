//! Unwrapping the data keys of files about to be opened, for a remote KMS
//! (`mount --key-readahead`).
//!
//! Through a remote KMS the first open of each file costs a round trip (the
//! data-key cache helps only from the second): reading a tree of 8,000
//! files waits for 8,000 of them, one after the other. Programs that read
//! many files (backups, `cp -r`, `grep -r`, tar) open them directory by
//! directory, so the first open in a directory asks, in the background, for
//! the keys of the other files there and in the directories right below,
//! on several connections at once; the opens that follow find them in the
//! cache. Nothing changes for the open that triggers it, and a key that
//! does not unwrap ahead is left for its own open to fail on (and report).
//!
//! The cost is the remote KMS's: it unwraps (and audits) keys of files that
//! may never be opened, which is why this is not the default.

use super::backing::Backing;
use crate::kms::EncryptionContext;
use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Keys asked for ahead at most per directory opened into.
const MAX_PER_SCAN: usize = 1024;
/// Unwraps in flight at once (connections to the remote KMS).
const UNWRAPPERS: usize = 8;
/// Keys waiting for an unwrapper; past that, the rest of a scan is dropped.
const QUEUE: usize = 2048;

type Wanted = (Vec<u8>, EncryptionContext);

struct Workers {
    dirs: SyncSender<String>,
}

pub struct KeyReadahead {
    b: Arc<Backing>,
    /// How long a directory, once scanned, is not scanned again: the cache's
    /// age, after which its keys are gone anyway.
    every: Duration,
    scanned: Mutex<HashMap<String, Instant>>,
    /// Started on the first open (the daemon has forked by then).
    workers: OnceLock<Option<Workers>>,
}

/// The newest key slot of the regular file `rel`, if it is one with a
/// single name (a hard link's key is in its link entry) and a header.
fn wanted(b: &Backing, rel: &str) -> Option<Wanted> {
    let fd = b
        .tree
        .open_quiet(rel, libc::O_RDONLY | libc::O_NONBLOCK)
        .ok()?;
    let m = fd.metadata().ok()?;
    if !m.is_file() || std::os::unix::fs::MetadataExt::nlink(&m) != 1 || m.len() == 0 {
        return None;
    }
    let h = super::cryptfile::read_header(&fd, b.hs).ok()?;
    let i = *h.slots_newest_first().first()?;
    let blob = h.slots[i].as_ref()?.blob.clone();
    Some((blob, b.ctx(rel)))
}

/// The entries of `dir` that are the mount's (not kmsfs's own), by path.
fn listed(b: &Backing, dir: &str) -> Vec<(String, fuser::FileType)> {
    b.tree
        .entries(dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|(name, _)| !super::names::is_internal(dir, name))
        .map(|(name, kind)| (super::inode::join(dir, &name), kind))
        .collect()
}

/// Sends the keys of the files in `dir` and the directories right below it.
fn scan(b: &Backing, dir: &str, keys: &SyncSender<Wanted>) {
    let top = listed(b, dir);
    let below = top
        .iter()
        .filter(|(_, kind)| *kind == fuser::FileType::Directory)
        .flat_map(|(sub, _)| listed(b, sub));
    let mut sent = 0;
    for (rel, kind) in top.iter().cloned().chain(below) {
        if kind != fuser::FileType::RegularFile {
            continue;
        }
        if let Some(w) = wanted(b, &rel) {
            if keys.try_send(w).is_err() {
                return;
            }
            sent += 1;
            if sent >= MAX_PER_SCAN {
                return;
            }
        }
    }
}

fn unwrap_ahead(b: &Backing, rx: &Mutex<Receiver<Wanted>>) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((blob, ctx)) = next else { return };
        b.kms.unwrap_ahead(&blob, &ctx);
    }
}

impl KeyReadahead {
    /// Readahead for `b`, if its KMS keeps keys it is given ahead.
    pub fn new(b: Arc<Backing>) -> Option<KeyReadahead> {
        let every = b.kms.reads_ahead()?;
        Some(KeyReadahead {
            b,
            every,
            scanned: Mutex::new(HashMap::new()),
            workers: OnceLock::new(),
        })
    }

    fn start(&self) -> Option<Workers> {
        let (dirs, dir_rx) = sync_channel::<String>(64);
        let (keys, key_rx) = sync_channel::<Wanted>(QUEUE);
        let key_rx = Arc::new(Mutex::new(key_rx));
        for i in 0..UNWRAPPERS {
            let (b, rx) = (self.b.clone(), key_rx.clone());
            std::thread::Builder::new()
                .name(format!("kmsfs-keys-{i}"))
                .spawn(move || unwrap_ahead(&b, &rx))
                .ok()?;
        }
        let b = self.b.clone();
        std::thread::Builder::new()
            .name("kmsfs-keyscan".into())
            .spawn(move || {
                for dir in dir_rx {
                    scan(&b, &dir, &keys);
                }
            })
            .ok()?;
        Some(Workers { dirs })
    }

    /// `rel` was opened: the first open in its directory for a while asks
    /// for the keys around it.
    pub fn opened(&self, rel: &str) {
        let dir = super::inode::parent(rel);
        let now = Instant::now();
        {
            let mut s = self.scanned.lock().unwrap_or_else(|e| e.into_inner());
            if s.get(dir)
                .is_some_and(|t| now.duration_since(*t) < self.every)
            {
                return;
            }
            if s.len() >= 4096 {
                let every = self.every;
                s.retain(|_, t| now.duration_since(*t) < every);
            }
            s.insert(dir.to_string(), now);
        }
        if let Some(w) = self.workers.get_or_init(|| self.start()) {
            let _ = w.dirs.try_send(dir.to_string());
        }
    }
}
