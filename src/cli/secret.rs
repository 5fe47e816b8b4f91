//! Where the root key comes from: a key file, a passphrase file, an external
//! program (`--extpass`, as in gocryptfs), or a prompt on the terminal.

use crate::crypto::{Key256, SecretBytes};
use crate::kms::keystore::{KmsHome, RootKeySpec, RootSecret};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

// KMSFS_KEY_FILE and KMSFS_PASSPHRASE_FILE are read in `resolve`, not with
// clap's `env`: clap rejects an empty variable, and shows an option it took
// from the environment in usage lines as if it had been typed.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// 32-byte root key file (raw bytes, or 64 hex digits) instead of a passphrase [env: KMSFS_KEY_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Read the passphrase from the first line of FILE [env: KMSFS_PASSPHRASE_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Run CMD (with sh -c) and use the first line it prints as the passphrase.
    #[arg(long, global = true, value_name = "CMD")]
    pub extpass: Option<String>,
}

const MAX_SECRET_FILE: u64 = 4096;

fn read_small(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| format!("cannot open {what} {}: {e}", path.display()))?;
    let mut buf = Zeroizing::new(Vec::new());
    Read::by_ref(&mut f)
        .take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if buf.len() as u64 > MAX_SECRET_FILE {
        return Err(format!(
            "{what} {} is larger than {MAX_SECRET_FILE} bytes",
            path.display()
        ));
    }
    Ok(buf)
}

/// A key file holds 32 raw bytes or 64 hex digits (a trailing newline is fine).
pub fn parse_key_file(bytes: &[u8]) -> Option<Key256> {
    if bytes.len() == 32 {
        return Key256::from_slice(bytes);
    }
    let t = std::str::from_utf8(bytes).ok()?.trim();
    if t.len() != 64 {
        return None;
    }
    let mut k = Zeroizing::new([0u8; 32]);
    for i in 0..32 {
        k[i] = u8::from_str_radix(t.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Key256::from_bytes(*k))
}

fn first_line(bytes: &[u8]) -> SecretBytes {
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(bytes.len());
    let line = &bytes[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    SecretBytes::new(line.to_vec())
}

/// An environment variable naming a file; set but empty counts as unset, as
/// `VAR= cmd` is the usual way to switch one off.
fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

impl SecretArgs {
    /// Chooses the secret to open (or, with `creating`, to create) `home`.
    /// An option given on the command line wins over its environment variable.
    pub fn resolve(&self, home: &KmsHome, creating: bool) -> Result<RootSecret, String> {
        SecretArgs {
            key_file: self.key_file.clone().or_else(|| env_path("KMSFS_KEY_FILE")),
            passphrase_file: self
                .passphrase_file
                .clone()
                .or_else(|| env_path("KMSFS_PASSPHRASE_FILE")),
            extpass: self.extpass.clone(),
        }
        .resolve_given(home, creating)
    }

    fn resolve_given(&self, home: &KmsHome, creating: bool) -> Result<RootSecret, String> {
        let spec = if home.exists() {
            Some(home.root_key_spec().map_err(|e| e.message)?)
        } else {
            None
        };
        let want_key_file = match &spec {
            Some(RootKeySpec::KeyFile) => true,
            Some(RootKeySpec::Passphrase { .. }) => false,
            None => self.key_file.is_some(),
        };
        if want_key_file {
            let Some(p) = &self.key_file else {
                return Err(format!(
                    "the KMS home {} is sealed with a key file: pass --key-file FILE (or set KMSFS_KEY_FILE)",
                    home.dir.display()
                ));
            };
            let bytes = read_small(p, "key file")?;
            let key = parse_key_file(&bytes).ok_or_else(|| {
                format!(
                    "key file {} must hold exactly 32 bytes or 64 hex digits (make one with `head -c 32 /dev/urandom > FILE`)",
                    p.display()
                )
            })?;
            return Ok(RootSecret::KeyFile(key));
        }
        if self.key_file.is_some() && self.passphrase_file.is_none() && self.extpass.is_none() {
            return Err(format!(
                "the KMS home {} is sealed with a passphrase, not a key file: give it with --passphrase-file, --extpass or at the prompt",
                home.dir.display()
            ));
        }
        let pw = if let Some(p) = &self.passphrase_file {
            first_line(&read_small(p, "passphrase file")?)
        } else if let Some(cmd) = &self.extpass {
            run_extpass(cmd)?
        } else {
            prompt(creating && spec.is_none())?
        };
        if pw.is_empty() {
            return Err("the passphrase is empty; kmsfs refuses empty passphrases".into());
        }
        Ok(RootSecret::Passphrase(pw))
    }
}

fn run_extpass(cmd: &str) -> Result<SecretBytes, String> {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run --extpass {cmd:?}: {e}"))?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(format!("--extpass {cmd:?} failed ({})", out.status));
    }
    Ok(first_line(&stdout))
}

/// Reads a passphrase from /dev/tty with echo off; asks twice for a new one.
fn prompt(new: bool) -> Result<SecretBytes, String> {
    let mut tty = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").map_err(|_| {
        "no passphrase given and no terminal to ask on: use --passphrase-file FILE, --extpass CMD or --key-file FILE"
            .to_string()
    })?;
    let first = read_hidden(
        &mut tty,
        if new {
            "New passphrase: "
        } else {
            "Passphrase: "
        },
    )?;
    if new {
        let again = read_hidden(&mut tty, "Repeat passphrase: ")?;
        if again != first {
            return Err("the passphrases do not match; nothing was created".into());
        }
    }
    Ok(first)
}

fn read_hidden(tty: &mut std::fs::File, label: &str) -> Result<SecretBytes, String> {
    use std::os::unix::io::AsRawFd;
    // Echo is back on when the guard drops: on success, on a read error, on
    // a panic, and (through its signal handler) on Ctrl-C, kill or hang-up.
    let _echo_off = EchoOff::new(tty.as_raw_fd());
    let _ = tty.write_all(label.as_bytes());
    let mut line = Zeroizing::new(Vec::new());
    let mut byte = [0u8; 1];
    let res = loop {
        match tty.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    res.map_err(|e| format!("cannot read the passphrase: {e}"))?;
    Ok(first_line(&line))
}

/// The signals that end a process at a prompt: the terminal's (Ctrl-C,
/// Ctrl-\, hang-up) and a plain kill.
const FATAL: [libc::c_int; 4] = [libc::SIGINT, libc::SIGQUIT, libc::SIGTERM, libc::SIGHUP];

/// What the signal handler needs, set before it is installed and read only by
/// it: plain memory, as nothing else is safe to touch in a handler.
struct Saved {
    termios: std::cell::UnsafeCell<std::mem::MaybeUninit<libc::termios>>,
    actions: std::cell::UnsafeCell<[std::mem::MaybeUninit<libc::sigaction>; FATAL.len()]>,
}

// SAFETY: written only while no handler of ours is installed (under
// `PROMPT_LOCK`, before `SAVED_FD` is published), read only after.
unsafe impl Sync for Saved {}

static SAVED: Saved = Saved {
    termios: std::cell::UnsafeCell::new(std::mem::MaybeUninit::uninit()),
    actions: std::cell::UnsafeCell::new([std::mem::MaybeUninit::uninit(); FATAL.len()]),
};
/// The terminal whose settings `SAVED` holds, or -1.
static SAVED_FD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
/// One prompt at a time owns `SAVED`.
static PROMPT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Puts the terminal's settings back and lets the signal do what it would
/// have done: only async-signal-safe calls (tcsetattr, write, sigaction, raise).
extern "C" fn restore_and_reraise(sig: libc::c_int) {
    let fd = SAVED_FD.load(std::sync::atomic::Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `SAVED` was filled in before `SAVED_FD` was set; the calls
        // are async-signal-safe.
        unsafe {
            libc::tcsetattr(fd, libc::TCSANOW, (*SAVED.termios.get()).as_ptr());
            // The Enter that never came: the shell's prompt starts a new line.
            libc::write(fd, b"\n".as_ptr().cast(), 1);
        }
    }
    if let Some(i) = FATAL.iter().position(|&s| s == sig) {
        // SAFETY: the action saved when ours was installed; the signal is
        // blocked in its handler, so it is delivered to that action on return.
        unsafe {
            libc::sigaction(
                sig,
                (*SAVED.actions.get())[i].as_ptr(),
                std::ptr::null_mut(),
            );
            libc::raise(sig);
        }
    }
}

/// Echo off on a terminal until dropped (ECHONL on, so Enter still shows).
/// While it lives, a fatal signal restores the settings before it acts.
struct EchoOff {
    fd: libc::c_int,
    saved: libc::termios,
    _one_prompt: std::sync::MutexGuard<'static, ()>,
}

impl EchoOff {
    /// `None` if `fd` is not a terminal (nothing to hide or restore).
    fn new(fd: libc::c_int) -> Option<Self> {
        let one = PROMPT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: tcgetattr fills the zeroed struct.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        // SAFETY: no handler of ours is installed (the lock is held, and the
        // guard before dropped its own), so nothing reads `SAVED` meanwhile.
        unsafe {
            (*SAVED.termios.get()).write(saved);
            let actions = &mut *SAVED.actions.get();
            for (slot, &sig) in actions.iter_mut().zip(&FATAL) {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(sig, std::ptr::null(), &mut old);
                slot.write(old);
            }
        }
        SAVED_FD.store(fd, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: sigaction with a handler that only makes async-signal-safe
        // calls, and tcsetattr on the terminal just read.
        unsafe {
            let mut handler: libc::sigaction = std::mem::zeroed();
            handler.sa_sigaction = restore_and_reraise as extern "C" fn(libc::c_int) as usize;
            handler.sa_flags = libc::SA_RESTART;
            // The other signals wait while one handler restores the terminal.
            libc::sigemptyset(&mut handler.sa_mask);
            for &sig in &FATAL {
                libc::sigaddset(&mut handler.sa_mask, sig);
            }
            for (old, &sig) in (*SAVED.actions.get()).iter().zip(&FATAL) {
                // An ignored signal stays ignored (nohup, a background job).
                if old.assume_init_ref().sa_sigaction != libc::SIG_IGN {
                    libc::sigaction(sig, &handler, std::ptr::null_mut());
                }
            }
            let mut t = saved;
            t.c_lflag &= !libc::ECHO;
            t.c_lflag |= libc::ECHONL;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
        Some(EchoOff {
            fd,
            saved,
            _one_prompt: one,
        })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new` on the same descriptor,
        // then the signal actions saved there, then unpublishes `SAVED`.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved);
            for (old, &sig) in (*SAVED.actions.get()).iter().zip(&FATAL) {
                libc::sigaction(sig, old.as_ptr(), std::ptr::null_mut());
            }
        }
        SAVED_FD.store(-1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_forms() {
        assert!(parse_key_file(&[7u8; 32]).is_some());
        let hex = "ab".repeat(32) + "\n";
        assert_eq!(
            parse_key_file(hex.as_bytes()).unwrap().as_bytes(),
            &[0xab; 32]
        );
        assert!(parse_key_file(b"short").is_none());
        assert!(parse_key_file("zz".repeat(32).as_bytes()).is_none());
    }

    #[test]
    fn passphrase_is_first_line() {
        assert_eq!(first_line(b"secret\nrest").as_bytes(), b"secret");
        assert_eq!(first_line(b"secret\r\n").as_bytes(), b"secret");
        assert_eq!(first_line(b"secret").as_bytes(), b"secret");
    }

    /// The tests below look at process-wide signal actions: one at a time.
    static SIGNALS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A pseudo-terminal: (master, slave).
    fn pty() -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd;
        let (mut m, mut s) = (-1, -1);
        // SAFETY: openpty fills in two new descriptors, which the files own.
        let r = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
        unsafe { (std::fs::File::from_raw_fd(m), std::fs::File::from_raw_fd(s)) }
    }

    fn echo_on(tty: &std::fs::File) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: tcgetattr fills the zeroed struct.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) }, 0);
        t.c_lflag & libc::ECHO != 0
    }

    fn sigint_handler() -> libc::sighandler_t {
        // SAFETY: sigaction only reads the current action into the zeroed struct.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        unsafe { libc::sigaction(libc::SIGINT, std::ptr::null(), &mut act) };
        act.sa_sigaction
    }

    #[test]
    fn echo_is_off_only_while_the_guard_lives_and_so_is_the_handler() {
        use std::os::fd::AsRawFd;
        let _one = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        // A process started in the background by a shell without job
        // control inherits SIGINT ignored, which EchoOff rightly keeps: the
        // test starts from the default action and puts back what it found.
        let inherited = sigint_handler();
        // SAFETY: sets SIGINT's disposition, under the lock the signal
        // tests share.
        unsafe { libc::signal(libc::SIGINT, libc::SIG_DFL) };
        let (_master, slave) = pty();
        assert!(echo_on(&slave));
        let before = sigint_handler();
        {
            let _g = EchoOff::new(slave.as_raw_fd()).expect("a terminal");
            assert!(!echo_on(&slave));
            assert_eq!(
                sigint_handler(),
                restore_and_reraise as extern "C" fn(libc::c_int) as usize
            );
        }
        assert!(echo_on(&slave));
        assert_eq!(sigint_handler(), before, "the old action is back");
        // Not a terminal: nothing to do, and no handler.
        let file = tempfile::tempfile().unwrap();
        assert!(EchoOff::new(file.as_raw_fd()).is_none());
        assert_eq!(sigint_handler(), before);
        // SAFETY: as above.
        unsafe { libc::signal(libc::SIGINT, inherited) };
    }

    #[test]
    fn echo_comes_back_after_a_passphrase_and_after_a_failed_read() {
        use std::os::fd::AsRawFd;
        let _one = SIGNALS.lock().unwrap_or_else(|e| e.into_inner());
        let (mut master, mut slave) = pty();
        master.write_all(b"hunter2\n").unwrap();
        let pw = read_hidden(&mut slave, "Passphrase: ").unwrap();
        assert_eq!(pw.as_bytes(), b"hunter2");
        assert!(echo_on(&slave));
        // The same terminal opened write-only: the read fails (EBADF).
        let mut write_only = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{}", slave.as_raw_fd()))
            .unwrap();
        let e = read_hidden(&mut write_only, "Passphrase: ").unwrap_err();
        assert!(e.starts_with("cannot read the passphrase: "), "{e}");
        assert!(echo_on(&slave), "echo is back after the failed read");
    }
}
