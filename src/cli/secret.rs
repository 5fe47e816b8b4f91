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
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on an open terminal descriptor with a zeroed struct
    // that tcgetattr fills in.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    let have_termios = unsafe { libc::tcgetattr(fd, &mut old) } == 0;
    if have_termios {
        let mut t = old;
        t.c_lflag &= !libc::ECHO;
        t.c_lflag |= libc::ECHONL;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
    }
    let _ = tty.write_all(label.as_bytes());
    let mut line = Zeroizing::new(Vec::new());
    let mut byte = [0u8; 1];
    let res = loop {
        match tty.read(&mut byte) {
            Ok(0) => break Ok(()),
            Ok(_) if byte[0] == b'\n' => break Ok(()),
            Ok(_) => line.push(byte[0]),
            Err(e) => break Err(e),
        }
    };
    if have_termios {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    }
    res.map_err(|e| format!("cannot read the passphrase: {e}"))?;
    Ok(first_line(&line))
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
}
