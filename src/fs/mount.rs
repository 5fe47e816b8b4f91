//! `kmsfs init`, `kmsfs mount` and `kmsfs unmount`: creating a filesystem,
//! serving it (in the background unless `-f`), and ending it with every byte
//! written before that on disk.

use super::backing::Backing;
use super::config::Config;
use super::keys::KeyBackend;
use super::ops::{KmsFs, Options as FsOptions};
use crate::kms::{Caller, Kms, KmsHome, Via};
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

/// Creates a filesystem in `cipherdir`; returns its config.
pub fn init(
    kms: &Kms,
    home: &KmsHome,
    cipherdir: &Path,
    key_id: Option<&str>,
) -> Result<Config, String> {
    std::fs::create_dir_all(cipherdir)
        .map_err(|e| format!("cannot create {}: {e}", cipherdir.display()))?;
    if cipherdir.join(super::config::CONFIG_NAME).exists() {
        return Err(format!(
            "{} already holds a kmsfs filesystem",
            cipherdir.display()
        ));
    }
    let mut entries = std::fs::read_dir(cipherdir)
        .map_err(|e| format!("cannot read {}: {e}", cipherdir.display()))?;
    if entries.next().is_some() {
        return Err(format!(
            "{} is not empty; kmsfs init needs an empty directory",
            cipherdir.display()
        ));
    }
    let caller = Caller::this_process(Via::Cli);
    let fs_id = crate::kms::keyref::KeyId::random().to_string();
    let arn = match key_id {
        Some(k) => {
            let m = kms
                .describe_key(&caller, k)
                .map_err(|e| format!("{}: {}", e.code, e.message))?;
            if m.key_state != "Enabled" {
                return Err(format!(
                    "key {} is {}; a filesystem needs an Enabled key",
                    m.key_id, m.key_state
                ));
            }
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
    cfg.save(cipherdir)?;
    Ok(cfg)
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

/// Holds the cipherdir's lock: one daemon per cipherdir.
fn lock_cipherdir(cipherdir: &Path) -> Result<File, String> {
    let p = cipherdir.join(LOCK_NAME);
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| format!("cannot open {}: {e}", p.display()))?;
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "{} is already mounted by another kmsfs process",
            cipherdir.display()
        ));
    }
    Ok(f)
}

fn check_fuse() -> Result<(), String> {
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse does not exist: load the fuse module (modprobe fuse) or run where FUSE is available".into());
    }
    Ok(())
}

/// Mounts and serves. Returns the process exit code; in the background the
/// parent returns once the child reports the mount working (or failing).
pub fn mount(kms: Kms, args: MountArgs, default_log: PathBuf) -> Result<(), String> {
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
    let cfg = Config::load(&cipherdir)?;
    let caller = Caller::this_process(Via::Mount);
    let meta = kms
        .describe_key(&caller, &cfg.key_id)
        .map_err(|e| format!("the filesystem's key: {}: {}", e.code, e.message))?;
    if meta.key_state != "Enabled" {
        return Err(format!(
            "the filesystem's key {} is {}: files could not be read or written (enable it with `kmsfs kms enable-key`)",
            meta.key_id, meta.key_state
        ));
    }
    let lock = lock_cipherdir(&cipherdir)?;
    let kms: Arc<Kms> = Arc::new(kms);
    let backend: Arc<dyn KeyBackend> = kms.clone();
    let backing = Backing::new(cipherdir.clone(), cfg, backend);
    if let Some(done) = super::rename::recover(&backing, &caller)? {
        eprintln!("kmsfs: {done}");
    }

    let mut notify: Option<File> = None;
    if !args.foreground {
        let log = args.log_file.clone().unwrap_or(default_log);
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
        fuser::MountOption::Subtype("kmsfs".into()),
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

    block_signals();
    let fs = KmsFs::new(
        backing,
        FsOptions {
            read_only: args.read_only,
            writeback_cache: args.writeback_cache,
            ..FsOptions::default()
        },
    );
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
    let mut unmounter = session.unmount_callable();
    std::thread::spawn(move || {
        let sig = wait_signal();
        eprintln!("kmsfs: signal {sig}: unmounting");
        if let Err(e) = unmounter.unmount() {
            eprintln!("kmsfs: unmount failed: {e}; use `umount -l`");
        }
    });
    eprintln!(
        "kmsfs: serving {} on {}",
        cipherdir.display(),
        mountpoint.display()
    );
    if let Some(mut w) = notify.take() {
        let _ = writeln!(w, "ok");
    }
    let r = session.run();
    sync_path(&cipherdir);
    let _ = kms.sync_audit();
    eprintln!("kmsfs: unmounted {}", mountpoint.display());
    drop(lock);
    r.map_err(|e| format!("the FUSE session ended with an error: {e}"))
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

fn daemonize(log: &Path) -> Result<(), String> {
    if let Some(dir) = log.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let logf = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
        .map_err(|e| format!("cannot open log file {}: {e}", log.display()))?;
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
        eprintln!(
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
fn block_signals() {
    let set = signal_set();
    // SAFETY: valid signal set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn wait_signal() -> i32 {
    let set = signal_set();
    let mut sig = 0;
    // SAFETY: valid signal set and out-parameter.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

fn sync_path(p: &Path) {
    if let Ok(f) = File::open(p) {
        // SAFETY: syncfs on an open descriptor.
        unsafe { libc::syncfs(f.as_raw_fd()) };
    }
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
            if src.join(super::config::CONFIG_NAME).exists() {
                return Some(src);
            }
        }
    }
    None
}

/// Unmounts and waits (bounded) for the daemon to finish syncing and exit.
pub fn unmount(mountpoint: &Path) -> Result<(), String> {
    let mp = std::fs::canonicalize(mountpoint).unwrap_or(mountpoint.to_path_buf());
    let cipherdir =
        cipherdir_of(&mp).ok_or_else(|| format!("{} is not a kmsfs mount", mp.display()))?;
    let c =
        std::ffi::CString::new(mp.as_os_str().as_bytes()).map_err(|_| "bad path".to_string())?;
    // SAFETY: valid path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            let st = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg(&mp)
                .status();
            if !st.map(|s| s.success()).unwrap_or(false) {
                return Err(format!(
                    "cannot unmount {}: {e} (and fusermount3 -u failed)",
                    mp.display()
                ));
            }
        } else {
            return Err(format!("cannot unmount {}: {e}", mp.display()));
        }
    }
    let lock = cipherdir.join(LOCK_NAME);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(f) = OpenOptions::new().write(true).open(&lock) {
            // SAFETY: flock on an open descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(());
            }
        } else {
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
