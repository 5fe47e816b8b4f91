//! `kmsfs init`, `kmsfs mount` and `kmsfs unmount`: creating a filesystem,
//! serving it (in the background unless `-f`), and ending it with every byte
//! written before that on disk.

use super::backing::Backing;
use super::config::{Config, FLAG_TYPED_SYMLINKS};
use super::keys::{KeyBackend, config_context};
use super::names::{Names, cipher::NameCipher};
use super::ops::{KmsFs, Options as FsOptions};
use super::root_attr::RootAttr;
use super::tree::Tree;
use crate::kms::{Caller, ErrorCode, Kms, KmsHome, Via};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOCK_NAME: &str = ".kmsfs.lock";
/// How long `mount` waits for the daemon to report, and `unmount` for it to end.
const WAIT: Duration = Duration::from_secs(30);

/// Creates a directory and its missing parents private (0700), whatever
/// the umask: a cipherdir's parents should not be made writable by others.
fn create_private_dirs(p: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(p)
}

/// Creates a filesystem in `cipherdir` whose keys the embedded KMS holds;
/// returns its config.
pub fn init(
    kms: &Kms,
    home: &KmsHome,
    cipherdir: &Path,
    key_id: Option<&str>,
    names: NameMode,
) -> Result<Config, String> {
    let tree = empty_cipherdir(cipherdir)?;
    let caller = Caller::this_process(Via::Cli);
    let fs_id = crate::kms::keyref::KeyId::random().to_string();
    let arn = match key_id {
        Some(k) => {
            let m = kms
                .describe_key(&caller, k)
                .map_err(|e| format!("{}: {}", e.code, e.message))?;
            enabled(&m.key_id, m.key_state)?;
            m.arn
        }
        None => {
            kms.create_managed_key(
                &caller,
                &fs_id,
                &format!("kmsfs filesystem {fs_id} in {}", cipherdir.display()),
            )
            .map_err(|e| format!("{}: {}", e.code, e.message))?
            .arn
        }
    };
    let home_dir = std::fs::canonicalize(&home.dir).unwrap_or(home.dir.clone());
    let cfg = Config::new(fs_id, arn, Some(home_dir));
    finish_init(kms, &tree, cipherdir, cfg, names)
}

/// Creates a filesystem in `cipherdir` whose CMK `key_id` a remote KMS holds.
pub fn init_remote(
    remote: &crate::remote::RemoteKms,
    region: &str,
    cipherdir: &Path,
    key_id: &str,
    names: NameMode,
) -> Result<Config, String> {
    let tree = empty_cipherdir(cipherdir)?;
    let (arn, state) = remote
        .describe_key(key_id)
        .map_err(|e| format!("{}: {}", e.code, e.message))?;
    enabled(&arn, &state)?;
    let fs_id = crate::kms::keyref::KeyId::random().to_string();
    let mut cfg = Config::new(fs_id, arn, None);
    cfg.feature_flags
        .push(super::config::FLAG_REMOTE_KMS.into());
    cfg.kms_endpoint = Some(remote.endpoint().to_string());
    cfg.kms_region = Some(region.to_string());
    finish_init(remote, &tree, cipherdir, cfg, names)
}

/// Whether a new filesystem encrypts its names (the default) or keeps them
/// as they are (`kmsfs init --plaintext-names`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameMode {
    Encrypted,
    Plaintext,
}

/// The name cipher of a filesystem with encrypted names: its name key,
/// unwrapped by the KMS (one audited Decrypt per mount).
pub fn name_cipher(
    kms: &dyn KeyBackend,
    caller: &Caller,
    cfg: &Config,
) -> Result<Option<NameCipher>, String> {
    use base64::Engine;
    let Some(b64) = cfg.name_key.as_deref().filter(|_| cfg.encrypted_names()) else {
        return Ok(None);
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| {
            format!(
                "{}: NameKey is not base64: restore it from a backup of the cipherdir",
                super::config::CONFIG_NAME
            )
        })?;
    let key = kms
        .unwrap(
            caller,
            &blob,
            &super::keys::name_key_context(&cfg.filesystem_id),
        )
        .map_err(|e| {
            format!(
                "unwrapping the filesystem's name key under {}: {}: {}",
                cfg.key_id, e.code, e.message
            )
        })?;
    Ok(Some(NameCipher::new(key.as_bytes(), &cfg.filesystem_id)))
}

fn enabled(key: &str, state: &str) -> Result<(), String> {
    if state != "Enabled" {
        return Err(format!(
            "key {key} is {state}; a filesystem needs an Enabled key"
        ));
    }
    Ok(())
}

/// The cipherdir, created if need be, checked empty and case-sensitive, and
/// made private.
fn empty_cipherdir(cipherdir: &Path) -> Result<Tree, String> {
    create_private_dirs(cipherdir)
        .map_err(|e| format!("cannot create {}: {e}", cipherdir.display()))?;
    let tree =
        Tree::open(cipherdir).map_err(|e| format!("cannot open {}: {e}", cipherdir.display()))?;
    if tree.lstat(super::config::CONFIG_NAME).is_ok() {
        return Err(format!(
            "{} already holds a kmsfs filesystem",
            cipherdir.display()
        ));
    }
    let entries = super::listing::entries(tree.root())
        .map_err(|e| format!("cannot read {}: {e}", cipherdir.display()))?;
    if !entries.is_empty() {
        return Err(format!(
            "{} is not empty; kmsfs init needs an empty directory",
            cipherdir.display()
        ));
    }
    refuse_folding(&tree, true)?;
    // The cipherdir is the daemon's alone: users reach their files through
    // the mount, never here.
    tree.chmod("", 0o700).map_err(|e| {
        format!(
            "cannot make {} private (chmod 700): {e}",
            cipherdir.display()
        )
    })?;
    Ok(tree)
}

/// Seals and writes the config and the root's attributes.
fn finish_init(
    kms: &dyn KeyBackend,
    tree: &Tree,
    cipherdir: &Path,
    mut cfg: Config,
    names: NameMode,
) -> Result<Config, String> {
    // The seal is the filesystem's own key use, as the mount's are (a
    // managed key allows crypto only through the mount).
    let caller = Caller::this_process(Via::Mount);
    if names == NameMode::Encrypted {
        use base64::Engine;
        let (_, blob) = kms
            .new_data_key(
                &caller,
                &cfg.key_id,
                &super::keys::name_key_context(&cfg.filesystem_id),
            )
            .map_err(|e| {
                format!(
                    "making the name key under {}: {}: {}",
                    cfg.key_id, e.code, e.message
                )
            })?;
        cfg.feature_flags
            .retain(|f| f != super::config::FLAG_PLAINTEXT_NAMES);
        cfg.feature_flags
            .push(super::config::FLAG_ENCRYPTED_NAMES.into());
        cfg.name_key = Some(base64::engine::general_purpose::STANDARD.encode(blob));
    }
    seal(kms, &caller, &mut cfg)?;
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    RootAttr::new(uid, gid).save(tree).map_err(|e| {
        format!(
            "cannot write {}/{}: {e}",
            cipherdir.display(),
            super::config::ROOT_ATTR_NAME
        )
    })?;
    cfg.save(tree)?;
    Ok(cfg)
}

/// Seals the config under its CMK (see config.rs).
pub(super) fn seal(kms: &dyn KeyBackend, caller: &Caller, cfg: &mut Config) -> Result<(), String> {
    use base64::Engine;
    cfg.seal = None;
    let blob = kms
        .encrypt(
            caller,
            &cfg.key_id,
            &cfg.digest(),
            &config_context(&cfg.filesystem_id),
        )
        .map_err(|e| {
            format!(
                "sealing kmsfs.conf under {}: {}: {}",
                cfg.key_id, e.code, e.message
            )
        })?;
    cfg.seal = Some(base64::engine::general_purpose::STANDARD.encode(blob));
    Ok(())
}

/// Checks the config's seal: any field edited since `kmsfs init` (the KMS
/// home, the key, the filesystem id, a flag or a size) is refused.
fn check_seal(kms: &dyn KeyBackend, caller: &Caller, cfg: &Config, at: &str) -> Result<(), String> {
    use base64::Engine;
    let edited = || {
        format!(
            "{at} has been edited since kmsfs wrote it (its seal does not match its fields): refusing to mount. Restore it from a backup of the cipherdir"
        )
    };
    let blob = base64::engine::general_purpose::STANDARD
        .decode(cfg.seal.as_deref().unwrap_or(""))
        .map_err(|_| edited())?;
    match kms.decrypt(caller, &blob, &config_context(&cfg.filesystem_id)) {
        Ok(d) if d.as_slice() == cfg.digest() => Ok(()),
        Ok(_) => Err(edited()),
        Err(e)
            if matches!(
                e.code,
                ErrorCode::InvalidCiphertextException | ErrorCode::NotFoundException
            ) =>
        {
            Err(edited())
        }
        Err(e) => Err(format!(
            "checking the seal of {at}: {}: {}",
            e.code, e.message
        )),
    }
}

pub struct MountArgs {
    pub cipherdir: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub read_only: bool,
    pub allow_other: bool,
    /// Other `-o` options, passed to the kernel as they are.
    pub options: Vec<String>,
    pub log_file: Option<PathBuf>,
    pub threads: usize,
    pub writeback_cache: bool,
    /// Read ahead across files and directories (tree/prefetch.rs).
    pub prefetch: bool,
    /// FUSE over io_uring when the kernel offers it.
    pub io_uring: bool,
    /// Extended attributes and (with allow_other) POSIX ACLs.
    pub xattrs: bool,
    /// Serve `--allow-other` from a cipherdir other users can enter.
    pub shared_cipherdir: bool,
    /// The KMS home in use: refused inside the mountpoint, and named.
    pub kms_home: PathBuf,
    /// Unmount after this long without use (`--idle`).
    pub idle: Option<Duration>,
}

/// Worker threads when `--threads` is not given: twice the CPUs, at least 4 and
/// at most 16. A caller blocks on every FUSE request, and the asynchronous
/// RELEASE and FORGET that follow each file occupy workers too, so a small pool
/// leaves requests waiting for a worker to come back to read(). Chosen by
/// measurement, not derived: on 2 CPUs, medians of 4 interleaved
/// rounds went from 2 workers to 4: rm -rf 1.56 s to 1.32 s, ls -lR 0.40 to
/// 0.34, reading every file 3.28 to 3.00, untar 4.31 to 4.22; 8 workers were
/// no better than 4, and large sequential and random I/O did not change.
pub fn default_threads() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (2 * cpus).clamp(4, 16)
}

/// The cipherdir's lock file, opened beneath it (never through a symlink),
/// created if missing, and nothing but a regular file: it is flocked, never
/// written.
fn open_lock(tree: &Tree) -> io::Result<File> {
    let f = tree
        .open_file(LOCK_NAME, libc::O_RDONLY | libc::O_NONBLOCK)
        .or_else(|e| {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            match tree.create_new(LOCK_NAME, 0o600) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    tree.open_file(LOCK_NAME, libc::O_RDONLY | libc::O_NONBLOCK)
                }
                other => other,
            }
        })?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file (planted there?)"));
    }
    Ok(f)
}

/// Holds the cipherdir's lock: one daemon per cipherdir.
fn lock_cipherdir(tree: &Tree) -> Result<File, String> {
    let f =
        open_lock(tree).map_err(|e| format!("cannot open {}/{LOCK_NAME}: {e}", tree.display()))?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "{} is already mounted by another kmsfs process",
            tree.display()
        ));
    }
    Ok(f)
}

/// Refuses mounts that would hang or recurse: the mountpoint on the
/// cipherdir or inside it (every backing access would go back through the
/// mount), the cipherdir or the KMS home or the log inside the mountpoint
/// (hidden by it, or written through it). Paths are canonical.
fn check_layout(
    cipherdir: &Path,
    mountpoint: &Path,
    others: &[(&str, &Path)],
) -> Result<(), String> {
    if mountpoint == cipherdir {
        return Err(format!(
            "cannot mount {} on itself: the mountpoint must be another, empty directory (e.g. kmsfs mount {} /mnt/plain)",
            cipherdir.display(),
            cipherdir.display()
        ));
    }
    if mountpoint.starts_with(cipherdir) {
        return Err(format!(
            "the mountpoint {} is inside the cipherdir {}: the mount would recurse into itself; choose a mountpoint outside it",
            mountpoint.display(),
            cipherdir.display()
        ));
    }
    if cipherdir.starts_with(mountpoint) {
        return Err(format!(
            "the cipherdir {} is inside the mountpoint {}: the mount would hide it; choose a mountpoint outside it",
            cipherdir.display(),
            mountpoint.display()
        ));
    }
    for (what, p) in others {
        if p.starts_with(mountpoint) {
            return Err(format!(
                "the {what} {} is inside the mountpoint {}: it would be written through the mount itself; keep it outside",
                p.display(),
                mountpoint.display()
            ));
        }
    }
    Ok(())
}

/// The canonical form of a path that may not exist yet: its nearest existing
/// ancestor canonicalised, the rest appended.
fn canonical_lenient(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut rest = vec![];
    let mut cur = abs.as_path();
    loop {
        if let Ok(c) = std::fs::canonicalize(cur) {
            return rest.iter().rev().fold(c, |acc, n| acc.join(n));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                cur = parent;
            }
            _ => return abs,
        }
    }
}

/// A backing filesystem that folds names would let one file answer to
/// several paths, so several encryption contexts: refused (see
/// `Tree::folds_names`).
fn refuse_folding(tree: &Tree, probe: bool) -> Result<(), String> {
    match tree.folds_names(probe) {
        Ok(false) => Ok(()),
        Ok(true) => Err(format!(
            "{} is on a filesystem (or in a directory) that folds names: case-insensitive or Unicode-normalising. kmsfs binds every file to its exact path, so a second spelling of a path would reach the same file under another key policy context. Put the cipherdir on a case-sensitive filesystem (ext4 without casefold, xfs, btrfs, tmpfs)",
            tree.display()
        )),
        Err(e) => Err(format!(
            "cannot check whether {} folds names: {e}",
            tree.display()
        )),
    }
}

/// With `--allow-other`, users reach files only through the mount: a
/// cipherdir they can enter or read would show them ciphertext, names and
/// owners, and one they can write would let them plant symlinks and swap
/// files.
fn check_private(tree: &Tree, allow_other: bool, shared_ok: bool) -> Result<(), String> {
    let st = tree
        .lstat("")
        .map_err(|e| format!("{}: {e}", tree.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let open = st.st_mode & 0o077 != 0 || st.st_uid != me;
    if !open {
        return Ok(());
    }
    let why = format!(
        "the cipherdir {} is not private to the daemon (mode {:04o}, owner uid {})",
        tree.display(),
        st.st_mode & 0o7777,
        st.st_uid
    );
    if allow_other && !shared_ok {
        return Err(format!(
            "{why}: with --allow-other other users could read or change the ciphertext behind the mount. Make it private with `chown {me} {p} && chmod 700 {p}` (the mount root keeps its own mode: chmod the mountpoint once mounted), or pass --shared-cipherdir to mount anyway",
            p = tree.display()
        ));
    }
    crate::log_line!(
        "kmsfs: warning: {why}; make it private with `chmod 700 {}`",
        tree.display()
    );
    Ok(())
}

fn check_fuse() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist: load the fuse module (modprobe fuse) or run where FUSE is available".into());
    }
    Ok(())
}

/// Mounts and serves. Returns the process exit code; in the background the
/// parent returns once the child reports the mount working (or failing).
/// Where a mount's keys live: the embedded KMS, or a remote one.
pub enum KmsLink {
    Local(Box<Kms>),
    Remote(Box<crate::remote::RemoteKms>),
}

impl KmsLink {
    /// The filesystem's key's id and state.
    fn key_state(&self, caller: &Caller, key_id: &str) -> Result<(String, String), String> {
        self.describe(caller, key_id)
            .map(|(arn, state)| (arn.rsplit('/').next().unwrap_or(&arn).to_string(), state))
            .map_err(|e| format!("the filesystem's key: {}: {}", e.code, e.message))
    }

    fn describe(
        &self,
        caller: &Caller,
        key_id: &str,
    ) -> Result<(String, String), crate::kms::KmsError> {
        self.backend().arn_and_state(caller, key_id)
    }

    pub fn backend(&self) -> &dyn KeyBackend {
        match self {
            KmsLink::Local(k) => k.as_ref(),
            KmsLink::Remote(r) => r.as_ref(),
        }
    }
}

/// The cipherdir as the mount would serve it, without mounting: for
/// `fsck`. Its config's seal is checked; with `exclusive` the cipherdir's
/// lock is held (returned), so no mount writes meanwhile.
pub fn offline_backing(
    link: KmsLink,
    cipherdir: &Path,
    caller: &Caller,
    exclusive: bool,
) -> Result<(Backing, Option<File>), String> {
    let mut tree = Tree::open(cipherdir)
        .map_err(|e| format!("cannot open the cipherdir {}: {e}", cipherdir.display()))?;
    let cfg = Config::load_from(&tree)?;
    let lock = if exclusive {
        Some(lock_cipherdir(&tree).map_err(|e| format!("{e}: unmount it first to repair"))?)
    } else {
        None
    };
    let conf_path = format!("{}/{}", cipherdir.display(), super::config::CONFIG_NAME);
    if cfg.seal.is_some() {
        check_seal(link.backend(), caller, &cfg, &conf_path)?;
    }
    let backend: Arc<dyn KeyBackend> = match link {
        KmsLink::Local(k) => Arc::new(*k),
        KmsLink::Remote(r) => Arc::new(*r),
    };
    if let Some(c) = name_cipher(backend.as_ref(), caller, &cfg)? {
        tree.set_names(Names::encrypted(c));
    }
    Ok((Backing::new(tree, cfg, backend), lock))
}

pub fn mount(link: KmsLink, args: MountArgs, default_log: PathBuf) -> Result<(), String> {
    check_fuse()?;
    let cipherdir = std::fs::canonicalize(&args.cipherdir)
        .map_err(|e| format!("cipherdir {}: {e}", args.cipherdir.display()))?;
    let mountpoint = std::fs::canonicalize(&args.mountpoint)
        .map_err(|e| format!("mountpoint {}: {e}", args.mountpoint.display()))?;
    if !mountpoint.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        ));
    }
    let log = args.log_file.clone().unwrap_or(default_log);
    let home = canonical_lenient(&args.kms_home);
    let log_canon = canonical_lenient(&log);
    let mut others = vec![("KMS home", home.as_path())];
    if !args.foreground {
        others.push(("log file", log_canon.as_path()));
    }
    check_layout(&cipherdir, &mountpoint, &others)?;
    if std::fs::read_dir(&mountpoint).is_ok_and(|mut d| d.next().is_some()) {
        crate::log_line!(
            "kmsfs: note: the mountpoint {} is not empty; what it holds is hidden while mounted",
            mountpoint.display()
        );
    }
    let tree = Tree::open(&cipherdir)
        .map_err(|e| format!("cannot open the cipherdir {}: {e}", cipherdir.display()))?;
    check_private(&tree, args.allow_other, args.shared_cipherdir)?;
    refuse_folding(&tree, !args.read_only)?;
    let mut cfg = Config::load_from(&tree)?;
    crate::log_line!("kmsfs: KMS home {}", home.display());
    let caller = Caller::this_process(Via::Mount);
    let (key, state) = link.key_state(&caller, &cfg.key_id)?;
    if state != "Enabled" {
        return Err(format!(
            "the filesystem's key {key} is {state}: files could not be read or written (enable it with `kmsfs kms enable-key`)"
        ));
    }
    let lock = lock_cipherdir(&tree)?;
    let conf_path = format!("{}/{}", cipherdir.display(), super::config::CONFIG_NAME);
    if cfg.seal.is_some() {
        check_seal(link.backend(), &caller, &cfg, &conf_path)?;
    } else if args.read_only {
        crate::log_line!(
            "kmsfs: warning: {conf_path} was written by an older kmsfs and has no seal; a read-write mount seals it"
        );
    } else {
        crate::log_line!("kmsfs: sealing {conf_path} (written by an older kmsfs) under its key");
        seal(link.backend(), &caller, &mut cfg)?;
        cfg.save(&tree)?;
    }
    let root_attr = RootAttr::load(&tree)?;
    // The embedded KMS also keeps the audit log, flushed below.
    let (backend, kms): (Arc<dyn KeyBackend>, Option<Arc<Kms>>) = match link {
        KmsLink::Local(k) => {
            let k = Arc::new(*k);
            (k.clone(), Some(k))
        }
        KmsLink::Remote(r) => (Arc::new(*r), None),
    };
    let mut tree = tree;
    if let Some(c) = name_cipher(backend.as_ref(), &caller, &cfg)? {
        tree.set_names(Names::encrypted(c));
    }
    let mut backing = Backing::new(tree, cfg, backend);
    if let Some(done) = super::rename::recover(&backing, &caller)? {
        crate::log_line!("kmsfs: {done}");
    }
    if !backing.cfg.typed_symlinks() && !args.read_only {
        let n = super::rename::upgrade_symlinks(&backing, &caller)?;
        crate::log_line!(
            "kmsfs: re-encrypted {n} symlink targets under their own encryption context"
        );
        backing.update_config(|saved| {
            let mut cfg = saved.clone();
            cfg.feature_flags.push(FLAG_TYPED_SYMLINKS.into());
            seal(backing.kms.as_ref(), &caller, &mut cfg)?;
            cfg.save(&backing.tree)?;
            Ok((cfg, ()))
        })?;
        backing.cfg.feature_flags.push(FLAG_TYPED_SYMLINKS.into());
    }

    let mut notify: Option<File> = None;
    if !args.foreground {
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: no threads exist yet in this process (the KMS spawns none),
        // so the child may continue running Rust code after fork.
        match unsafe { libc::fork() } {
            -1 => return Err(format!("fork: {}", io::Error::last_os_error())),
            0 => {
                drop(r);
                notify = Some(w);
                daemonize(&log)?;
            }
            _ => {
                drop(w);
                drop(lock);
                return wait_for_child(r, &mountpoint, &log);
            }
        }
    }

    let mut opts = vec![
        fuser::MountOption::FSName(cipherdir.display().to_string()),
        // As a kernel option: fuser's own Subtype reaches only fusermount,
        // and a root mount showed as plain `fuse` in /proc/mounts. The
        // kernel takes `subtype=` itself (and fusermount passes it on), so
        // `mount`, `df -T` and findmnt say `fuse.kmsfs`.
        fuser::MountOption::CUSTOM("subtype=kmsfs".into()),
    ];
    // With allow_other the kernel must check mode bits for every user.
    // Without it only the mounting user gets in, and the daemon runs as that
    // user, so the backing files' own permissions apply; skipping the
    // kernel's checks spares a GETATTR of the parent after every create and
    // unlink.
    if args.allow_other {
        opts.push(fuser::MountOption::DefaultPermissions);
    }
    // nodev and nosuid unless asked otherwise: a cipherdir should not carry
    // devices or set-id programs into the mount.
    if !args.options.iter().any(|o| o == "dev") {
        opts.push(fuser::MountOption::NoDev);
    }
    if !args.options.iter().any(|o| o == "suid") {
        opts.push(fuser::MountOption::NoSuid);
    }
    if args.read_only {
        opts.push(fuser::MountOption::RO);
    }
    for o in &args.options {
        opts.push(mount_option(o));
    }
    let mut config = fuser::Config::default();
    config.mount_options = opts;
    config.acl = if args.allow_other {
        fuser::SessionACL::All
    } else {
        fuser::SessionACL::Owner
    };
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    if args.io_uring {
        // As many per CPU queue as /dev/fuse has in all: the kernel does not
        // move requests between queues, so a CPU's callers have only their
        // queue's threads, and it takes as many stuck requests (a long
        // directory rename, a slow KMS) to hold up one queue as to hold up
        // /dev/fuse. ~2 MiB of buffers each.
        config.io_uring_threads = args.threads.max(2);
    }

    // The kernel passes each request's own umask, already applied to its
    // mode: the daemon's must not take bits away a second time (0620 became
    // 0600). kmsfs's own files are created with explicit modes.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    if let Err(e) = crate::crypto::memory::lock_memory() {
        crate::log_line!("kmsfs: warning: {e}");
    }
    block_signals();
    let activity = Arc::new(super::activity::Activity::default());
    let fs = KmsFs::new(
        backing,
        FsOptions {
            read_only: args.read_only,
            writeback_cache: args.writeback_cache,
            prefetch: args.prefetch,
            open_files: super::fairness::raise_open_file_limit(),
            posix_acl: args.allow_other && args.xattrs,
            xattrs: args.xattrs,
            io_uring: args.io_uring,
            activity: activity.clone(),
            ..FsOptions::default()
        },
        root_attr,
    )
    .map_err(|e| format!("the cipherdir {}: {e}", cipherdir.display()))?;
    let control = fs.control(cipherdir.clone());
    let mut session = match fuser::Session::new(fs, &mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot mount on {}: {e}", mountpoint.display());
            if let Some(mut w) = notify {
                let _ = writeln!(w, "{msg}");
            }
            return Err(msg);
        }
    };
    // Coalesced audit records are written within a second or two, even
    // when the mount goes idle. (No fsync here: one a second competed with
    // the files' own I/O, 10-15% on reading a tree cold.)
    let flusher = kms.as_ref().map(Arc::downgrade).unwrap_or_default();
    std::thread::spawn(move || {
        let mut failing = false;
        while let Some(kms) = flusher.upgrade() {
            match kms.flush_audit() {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    crate::log_line!("kmsfs: flushing the audit log: {e}");
                }
                Err(_) => {}
            }
            drop(kms);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    if let Some(limit) = args.idle {
        let mp = std::fs::canonicalize(&mountpoint).unwrap_or(mountpoint.clone());
        std::thread::spawn(move || watch_idle(&activity, limit, &mp));
    }
    // Online rewrap; a mount without it still serves (rewrap then says to
    // unmount first).
    let listening = super::control::serve(control)
        .map_err(|e| crate::log_line!("kmsfs: no control socket: {e}"))
        .ok();
    let mut unmounter = session.unmount_callable();
    let reopen = (!args.foreground).then(|| log.clone());
    std::thread::spawn(move || {
        loop {
            let sig = wait_signal();
            if sig == libc::SIGHUP {
                // logrotate's convention: reopen the log, keep serving.
                match &reopen {
                    Some(p) => match reopen_log(p) {
                        Ok(()) => {
                            crate::log_line!("kmsfs: SIGHUP: reopened the log {}", p.display())
                        }
                        Err(e) => {
                            crate::log_line!(
                                "kmsfs: SIGHUP: cannot reopen the log {}: {e}",
                                p.display()
                            )
                        }
                    },
                    None => crate::log_line!(
                        "kmsfs: SIGHUP: logging to stderr in the foreground; nothing to reopen"
                    ),
                }
                continue;
            }
            crate::log_line!("kmsfs: signal {sig}: unmounting");
            if let Err(e) = unmounter.unmount() {
                crate::log_line!("kmsfs: unmount failed: {e}; use `umount -l`");
            }
            return;
        }
    });
    crate::log_line!(
        "kmsfs: serving {} on {}",
        cipherdir.display(),
        mountpoint.display()
    );
    if let Some(mut w) = notify.take() {
        let _ = writeln!(w, "ok");
    }
    if args.io_uring {
        report_io_uring(session.io_uring_offered());
    }
    let r = session.run();
    if let Some(kms) = &kms {
        let _ = kms.sync_audit();
    }
    crate::log_line!("kmsfs: unmounted {}", mountpoint.display());
    // Before the lock: the next mount's socket must not be the one removed.
    drop(listening);
    drop(lock);
    r.map_err(|e| format!("the FUSE session ended with an error: {e}"))
}

/// Says in the log which transport serves the mount. Whether INIT granted
/// the rings is known once the session exists; whether they registered, once
/// `run` has started them (within seconds), hence the bounded wait.
fn report_io_uring(offered: bool) {
    if !offered {
        crate::log_line!(
            "kmsfs: FUSE over io_uring not offered by the kernel (needs Linux 6.14+ and /sys/module/fuse/parameters/enable_uring = Y): serving through /dev/fuse"
        );
        return;
    }
    std::thread::spawn(|| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match fuser::io_uring_state() {
                fuser::IoUringState::Active { queues, threads } => {
                    crate::log_line!(
                        "kmsfs: FUSE over io_uring: {queues} queues, {threads} threads"
                    );
                    return;
                }
                fuser::IoUringState::Refused(why) => {
                    crate::log_line!(
                        "kmsfs: FUSE over io_uring refused by the kernel ({why}): serving through /dev/fuse"
                    );
                    return;
                }
                fuser::IoUringState::Off => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    });
}

/// `--idle`: unmounts once the mount has gone unused for `limit`; a mount
/// some process still has its working directory in stays, and is tried
/// again after another `limit`.
fn watch_idle(activity: &super::activity::Activity, limit: Duration, mp: &Path) {
    let mut clock = super::activity::IdleClock::new(limit, Instant::now());
    loop {
        std::thread::sleep(Duration::from_secs(1).min(limit));
        if !clock.due(activity.sample(), Instant::now()) {
            continue;
        }
        crate::log_line!(
            "kmsfs: unused for {}s (--idle): unmounting {}",
            limit.as_secs(),
            mp.display()
        );
        match detach(mp) {
            Ok(()) => return,
            Err(e) => {
                crate::log_line!("kmsfs: {e}; staying mounted");
                clock.busy(Instant::now());
            }
        }
    }
}

/// Mount flags by their usual names; anything else goes to the kernel as a
/// FUSE mount option (where an unknown one makes the mount fail with a reason).
fn mount_option(o: &str) -> fuser::MountOption {
    use fuser::MountOption::*;
    match o {
        "noatime" => NoAtime,
        "atime" => Atime,
        "noexec" => NoExec,
        "exec" => Exec,
        "nosuid" => NoSuid,
        "suid" => Suid,
        "nodev" => NoDev,
        "dev" => Dev,
        "sync" => Sync,
        "async" => Async,
        "dirsync" => DirSync,
        _ => CUSTOM(o.to_string()),
    }
}

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: freshly created descriptors, owned once each.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Opens the daemon's log for appending: created 0600, never through a
/// symlink in its last component.
fn open_log(log: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)
}

/// Points stdout and stderr at a freshly opened log (after a rotation).
fn reopen_log(log: &Path) -> io::Result<()> {
    let logf = open_log(log)?;
    // SAFETY: dup2 onto the standard descriptors, from one we own.
    unsafe {
        libc::dup2(logf.as_raw_fd(), 1);
        libc::dup2(logf.as_raw_fd(), 2);
    }
    Ok(())
}

fn daemonize(log: &Path) -> Result<(), String> {
    if let Some(dir) = log.parent() {
        let _ = create_private_dirs(dir);
    }
    let logf = open_log(log).map_err(|e| format!("cannot open log file {}: {e}", log.display()))?;
    let null = File::open("/dev/null").map_err(|e| e.to_string())?;
    // SAFETY: setsid and dup2 on descriptors we own.
    unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(logf.as_raw_fd(), 1);
        libc::dup2(logf.as_raw_fd(), 2);
    }
    let _ = std::env::set_current_dir("/");
    Ok(())
}

fn wait_for_child(mut r: File, mountpoint: &Path, log: &Path) -> Result<(), String> {
    let mut pfd = libc::pollfd {
        fd: r.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, WAIT.as_millis() as i32) };
    if n <= 0 {
        return Err(format!(
            "the kmsfs daemon did not report within {}s; see {}",
            WAIT.as_secs(),
            log.display()
        ));
    }
    let mut msg = String::new();
    let _ = r.read_to_string(&mut msg);
    let msg = msg.trim();
    if msg == "ok" {
        crate::log_line!(
            "kmsfs: mounted on {} (log: {})",
            mountpoint.display(),
            log.display()
        );
        Ok(())
    } else if msg.is_empty() {
        Err(format!(
            "the kmsfs daemon exited before mounting; see {}",
            log.display()
        ))
    } else {
        Err(msg.to_string())
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks the ending signals in this thread (and the threads it spawns after),
/// so one thread can wait for them and unmount cleanly.
pub(crate) fn block_signals() {
    let set = signal_set();
    // SAFETY: valid signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

pub(crate) fn wait_signal() -> i32 {
    let set = signal_set();
    let mut sig = 0;
    // SAFETY: valid signal set and out-parameter.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// The cipherdir behind a mountpoint, from /proc/self/mountinfo.
fn cipherdir_of(mountpoint: &Path) -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mp = mountpoint.to_str()?;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        if fields.get(4) == Some(&mp) && fields.get(sep + 1).is_some_and(|t| t.starts_with("fuse"))
        {
            let src = PathBuf::from(fields.get(sep + 2)?.replace("\\040", " "));
            // Beneath the cipherdir, not following a planted kmsfs.conf.
            if Tree::open(&src).is_ok_and(|t| t.lstat(super::config::CONFIG_NAME).is_ok()) {
                return Some(src);
            }
        }
    }
    None
}

/// Unmounts and waits (bounded) for the daemon to finish syncing and exit.
/// Unmounts `mp` (not lazily: a busy mount stays, EBUSY), through
/// fusermount3 where this process may not unmount itself.
fn detach(mp: &Path) -> Result<(), String> {
    let c =
        std::ffi::CString::new(mp.as_os_str().as_bytes()).map_err(|_| "bad path".to_string())?;
    // SAFETY: valid path.
    if unsafe { libc::umount2(c.as_ptr(), libc::UMOUNT_NOFOLLOW) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EPERM) {
        return Err(format!("cannot unmount {}: {e}", mp.display()));
    }
    let st = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mp)
        .stdin(std::process::Stdio::null())
        .status();
    if !st.map(|s| s.success()).unwrap_or(false) {
        return Err(format!(
            "cannot unmount {}: {e} (and fusermount3 -u failed)",
            mp.display()
        ));
    }
    Ok(())
}

pub fn unmount(mountpoint: &Path) -> Result<(), String> {
    let mp = std::fs::canonicalize(mountpoint).unwrap_or(mountpoint.to_path_buf());
    let cipherdir =
        cipherdir_of(&mp).ok_or_else(|| format!("{} is not a kmsfs mount", mp.display()))?;
    detach(&mp)?;
    let Ok(tree) = Tree::open(&cipherdir) else {
        return Ok(());
    };
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        let Ok(f) = tree.open_file(LOCK_NAME, libc::O_RDONLY | libc::O_NONBLOCK) else {
            return Ok(());
        };
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "{} is unmounted, but its daemon did not exit within {}s",
        mp.display(),
        WAIT.as_secs()
    ))
}
