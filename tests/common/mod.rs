//! Shared set-up for tests that mount: a fixture with a cipherdir, a
//! mountpoint and a KMS home, and a guard that always unmounts, with a
//! watchdog that aborts the FUSE connection if a test hangs.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub mod serve;

pub const BIN: &str = env!("CARGO_BIN_EXE_kmsfs");

/// Mount tests need /dev/fuse; without it they fail, loudly.
pub fn require_fuse() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: these tests mount real FUSE filesystems; run them where FUSE works (as root, or with fuse3 installed)"
    );
}

/// Runs a command, killing it after `secs`.
pub fn run_timeout(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Drained while the child runs, so a large output cannot fill the pipe
    // and stall the child until the deadline.
    // (A grandchild that outlives a killed child may hold the pipe open: the
    // readers are then waited for at most a second.)
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![];
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            let _ = tx.send(buf);
        });
        rx
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let wait = Duration::from_secs(5);
            return Output {
                status,
                stdout: out.recv_timeout(wait).unwrap_or_default(),
                stderr: err.recv_timeout(wait).unwrap_or_default(),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {secs}s; stderr: {}",
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn sh(script: &str) -> Output {
    run_timeout(Command::new("bash").arg("-c").arg(script), 120)
}

pub fn sh_ok(script: &str) -> String {
    let o = sh(script);
    assert!(
        o.status.success(),
        "{script} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `kmsfs init` flags of each naming mode, for tests that must hold for
/// both: encrypted names (the default) and plaintext names.
pub const NAME_MODES: [&[&str]; 2] = [&[], &["--plaintext-names"]];

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub cipher: PathBuf,
    pub mnt: PathBuf,
    pub home: PathBuf,
    pub key: PathBuf,
}

impl Fixture {
    /// A fresh filesystem (kmsfs init) with its own KMS home and root key
    /// file, with encrypted names (the default).
    pub fn new() -> Self {
        Fixture::new_with(&[])
    }

    /// A fresh filesystem with plaintext names (`init --plaintext-names`).
    pub fn plaintext() -> Self {
        Fixture::new_with(&["--plaintext-names"])
    }

    pub fn new_with(init_args: &[&str]) -> Self {
        require_fuse();
        let dir = tempfile::tempdir().expect("tempdir");
        let (cipher, mnt, home, key) = (
            dir.path().join("cipher"),
            dir.path().join("mnt"),
            dir.path().join("home"),
            dir.path().join("root.key"),
        );
        std::fs::create_dir(&mnt).unwrap();
        std::fs::write(&key, [0x42u8; 32]).unwrap();
        let fx = Fixture {
            dir,
            cipher,
            mnt,
            home,
            key,
        };
        let mut args = vec!["init", fx.cipher.to_str().unwrap()];
        args.extend_from_slice(init_args);
        let o = fx.cli(&args);
        assert!(
            o.status.success(),
            "init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        fx
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--kms-home")
            .arg(&self.home)
            .arg("--key-file")
            .arg(&self.key);
        c.env_remove("KMSFS_HOME")
            .env_remove("KMSFS_PASSPHRASE_FILE")
            .env_remove("KMSFS_KEY_FILE");
        c
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run_timeout(self.cmd().args(args), 60)
    }

    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Where the mount's path `rel` is stored in the cipherdir: with
    /// encrypted names, as `kmsfs names` maps it.
    pub fn c(&self, rel: &str) -> PathBuf {
        self.c_with(rel, &[])
    }

    /// `c`, with more flags for `kmsfs names` (a remote KMS's credentials).
    pub fn c_with(&self, rel: &str, extra: &[&str]) -> PathBuf {
        let own =
            !rel.contains('/') && (rel.starts_with(".kmsfs") || rel.starts_with("kmsfs.conf"));
        if rel.is_empty() || own || !self.encrypted_names() {
            return self.cipher.join(rel);
        }
        let mut args = vec!["names", self.cipher.to_str().unwrap(), rel];
        args.extend_from_slice(extra);
        let o = self.cli(&args);
        assert!(
            o.status.success(),
            "kmsfs names {rel}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        self.cipher
            .join(String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'))
    }

    /// With encrypted names: no backing name is any of `names`, and no
    /// cipherdir file holds one long enough not to occur by chance in
    /// ciphertext (8 bytes or more).
    pub fn assert_names_hidden<S: AsRef<str>>(&self, names: &[S]) {
        if !self.encrypted_names() {
            return;
        }
        let names: std::collections::BTreeSet<&str> = names.iter().map(|n| n.as_ref()).collect();
        let mut stack = vec![self.cipher.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let n = e.file_name().to_string_lossy().to_string();
                assert!(
                    !names.contains(n.as_str()),
                    "{n:?} is a name in the cipherdir"
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        for n in names.iter().filter(|n| n.len() >= 8) {
            let o = Command::new("grep")
                .args(["-r", "-F", "-q", "-e", n])
                .arg(&self.cipher)
                .output()
                .unwrap();
            assert_eq!(o.status.code(), Some(1), "a cipherdir file holds {n:?}");
        }
    }

    pub fn encrypted_names(&self) -> bool {
        self.config()["FeatureFlags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "EncryptedNames"))
    }

    pub fn config(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.cipher.join("kmsfs.conf")).unwrap()).unwrap()
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.home.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Mounts in the background through the CLI (returns once mounted).
    pub fn mount(&self) -> Mounted<'_> {
        self.mount_with(&[])
    }

    pub fn mount_with(&self, extra: &[&str]) -> Mounted<'_> {
        let mut args = vec![
            "mount",
            self.cipher.to_str().unwrap(),
            self.mnt.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let o = self.cli(&args);
        assert!(
            o.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut m = Mounted::new(self, None);
        m.stderr = String::from_utf8_lossy(&o.stderr).to_string();
        m
    }

    /// The guard for a mount a test made itself (in the background), so it
    /// is unmounted whatever happens.
    pub fn mounted_in_background(&self) -> Mounted<'_> {
        Mounted::new(self, None)
    }

    /// Mounts in the foreground as a child process, so a test can kill it.
    pub fn mount_foreground(&self) -> Mounted<'_> {
        self.mount_foreground_with(&[])
    }

    pub fn mount_foreground_with(&self, extra: &[&str]) -> Mounted<'_> {
        let child = self
            .cmd()
            .args([
                "mount",
                "-f",
                self.cipher.to_str().unwrap(),
                self.mnt.to_str().unwrap(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kmsfs mount -f");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&self.mnt) {
            assert!(
                Instant::now() < deadline,
                "kmsfs mount -f did not mount within 30s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Mounted::new(self, Some(child))
    }
}

pub fn is_mounted(mnt: &Path) -> bool {
    let mp = std::fs::canonicalize(mnt).unwrap_or(mnt.to_path_buf());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap_or("")))
}

/// Aborts the FUSE connection behind `mnt` (unblocks any hung syscall) and
/// detaches the mount.
fn force_unmount(mnt: &Path, conn: Option<u32>) {
    if let Some(c) = conn {
        let ctl = Path::new("/sys/fs/fuse/connections");
        if std::fs::read_dir(ctl)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
        {
            let _ = Command::new("mount")
                .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
                .output();
        }
        let _ = std::fs::write(ctl.join(c.to_string()).join("abort"), "1");
    }
    let _ = Command::new("umount").arg("-l").arg(mnt).output();
}

pub struct Mounted<'a> {
    pub fx: &'a Fixture,
    /// What `kmsfs mount` printed (background mounts).
    pub stderr: String,
    pub child: Option<Child>,
    done: Arc<AtomicBool>,
    conn: Option<u32>,
}

impl<'a> Mounted<'a> {
    fn new(fx: &'a Fixture, child: Option<Child>) -> Self {
        let dev = std::fs::metadata(&fx.mnt).map(|m| m.dev()).ok();
        // SAFETY: minor() is a pure computation on the device number.
        let conn = dev.map(|d| libc::minor(d));
        let done = Arc::new(AtomicBool::new(false));
        let (d2, mnt) = (done.clone(), fx.mnt.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(600);
            while Instant::now() < deadline {
                if d2.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            eprintln!(
                "watchdog: mount {} outlived 600s; aborting it",
                mnt.display()
            );
            force_unmount(&mnt, conn);
        });
        Mounted {
            fx,
            stderr: String::new(),
            child,
            done,
            conn,
        }
    }

    /// SIGKILLs the foreground daemon (a crash), then detaches the dead mount.
    pub fn kill(mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
        force_unmount(&self.fx.mnt, self.conn);
        self.done.store(true, Ordering::SeqCst);
        std::mem::forget(self);
    }

    /// SIGKILLs the foreground daemon and leaves its dead mount in place,
    /// for a test of what clears it; a later guard must unmount.
    pub fn kill_leaving_mount(mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = None;
        self.done.store(true, Ordering::SeqCst);
        std::mem::forget(self);
    }

    /// Waits (bounded) for the foreground daemon to exit by itself, e.g.
    /// after a signal, and asserts it did.
    pub fn wait_exit(mut self, secs: u64) {
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(secs);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("the daemon did not exit within {secs}s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.done.store(true, Ordering::SeqCst);
        if is_mounted(&self.fx.mnt) {
            force_unmount(&self.fx.mnt, self.conn);
        }
        std::mem::forget(self);
    }

    /// Clean unmount through `kmsfs unmount`, asserting it worked.
    pub fn unmount(mut self) {
        let o = self.fx.cli(&["unmount", self.fx.mnt.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "unmount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().unwrap().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "daemon did not exit after unmount"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.done.store(true, Ordering::SeqCst);
        std::mem::forget(self);
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let ok = Command::new("timeout")
            .args(["30", BIN, "unmount"])
            .arg(&self.fx.mnt)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok || is_mounted(&self.fx.mnt) {
            force_unmount(&self.fx.mnt, self.conn);
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce from the seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub fn read_err(p: &Path) -> Option<i32> {
    std::fs::read(p).err().and_then(|e| e.raw_os_error())
}

/// Creates the local users and groups a test needs, if missing: safe when
/// several test binaries or threads ask at once (one lock file serialises
/// them, because useradd refuses to run beside another useradd and `id u ||
/// useradd u` races), and a no-op once they exist. `users` are (name,
/// supplementary groups).
pub fn ensure_users(groups: &[&str], users: &[(&str, &[&str])]) {
    let mut script = String::from("set -e\n");
    for g in groups {
        script.push_str(&format!("getent group {g} >/dev/null || groupadd {g}\n"));
    }
    for (u, gs) in users {
        script.push_str(&format!(
            "id {u} >/dev/null 2>&1 || useradd -M -N -s /usr/sbin/nologin {u}\n"
        ));
        for g in gs.iter() {
            script.push_str(&format!(
                "id -nG {u} | tr ' ' '\\n' | grep -qx {g} || usermod -aG {g} {u}\n"
            ));
        }
    }
    let o = run_timeout(
        Command::new("flock")
            .args(["-w", "60", "/run/lock/kmsfs-test-users.lock", "sh", "-c"])
            .arg(&script),
        90,
    );
    assert!(
        o.status.success(),
        "creating test users failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A size-limited tmpfs mounted for a test (a small disk to fill),
/// unmounted when dropped.
pub struct SmallFs(PathBuf);

impl SmallFs {
    pub fn mount(at: &Path, size: &str, mode: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        sh_ok(&format!(
            "mount -t tmpfs -o size={size},mode={mode} tmpfs {}",
            at.display()
        ));
        SmallFs(at.to_path_buf())
    }

    /// A small ext4 on a loop device, mounted with `discard` (evicting an
    /// inode then waits for the device, as on this project's test machine).
    pub fn ext4(at: &Path, size_mb: u64, mode: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let img = at.with_extension("img");
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(size_mb << 20).unwrap();
        sh_ok(&format!(
            "mkfs.ext4 -q -F -m 0 {img} && mount -o loop,discard {img} {at} && chmod {mode} {at} && rmdir {at}/lost+found",
            img = img.display(),
            at = at.display()
        ));
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

impl Fixture {
    /// The usual paths in `dir`, the mountpoint made and the root key
    /// written; nothing initialised.
    fn layout(dir: tempfile::TempDir, key: [u8; 32]) -> Self {
        let fx = Fixture {
            cipher: dir.path().join("cipher"),
            mnt: dir.path().join("mnt"),
            home: dir.path().join("home"),
            key: dir.path().join("root.key"),
            dir,
        };
        std::fs::create_dir_all(&fx.mnt).unwrap();
        std::fs::write(&fx.key, key).unwrap();
        fx
    }

    /// A fixture in `dir` with the usual layout, made with `kmsfs init`
    /// (for tests that first put the cipherdir or the home on a filesystem
    /// of their own).
    pub fn init_in(dir: tempfile::TempDir) -> Self {
        let fx = Fixture::layout(dir, [0x42u8; 32]);
        let o = fx.cli(&["init", fx.cipher.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        fx
    }
}

impl Fixture {
    /// A filesystem on a new key with `policy`, in a directory other users
    /// can reach (so that test users can use the mount). Returns the key id.
    pub fn with_policy(policy: &str) -> (Fixture, String) {
        require_fuse();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let fx = Fixture::layout(dir, [3u8; 32]);
        let pfile = fx.dir.path().join("policy.json");
        std::fs::write(&pfile, policy).unwrap();
        let o = fx.cli(&[
            "kms",
            "create-key",
            "--policy",
            &format!("file://{}", pfile.display()),
            "--query",
            "KeyMetadata.KeyId",
            "--output",
            "text",
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let kid = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let o = fx.cli(&["init", fx.cipher.to_str().unwrap(), "--key-id", &kid]);
        assert!(
            o.status.success(),
            "init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        (fx, kid)
    }
}

/// Runs `script` with `sh -c` as `user`: Ok(stdout) or Err(stderr).
pub fn as_user(user: &str, script: &str) -> Result<String, String> {
    let o = as_user_output(user, script);
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).to_string())
    }
}

/// The whole output of `script` run with `sh -c` as `user`.
pub fn as_user_output(user: &str, script: &str) -> Output {
    run_timeout(
        Command::new("runuser").args(["-u", user, "--", "sh", "-c", script]),
        120,
    )
}

/// What a crash between a shrink's two steps leaves: `rel` (10,000 bytes,
/// written through a mount) truncated to 5,000, then the old second block's
/// tail put back after the new short block. Returns the data written and
/// the backing length the finished truncate has.
pub fn interrupted_shrink(fx: &Fixture, rel: &str) -> (Vec<u8>, u64) {
    use std::os::unix::fs::FileExt;
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let m = fx.mount();
    std::fs::write(fx.m(rel), &data).unwrap();
    m.unmount();
    let raw = std::fs::read(fx.c(rel)).unwrap();
    // Two whole blocks (4,124 bytes on disk each) and one of 1,808 (+28).
    let h = raw.len() - (2 * 4124 + 1808 + 28);
    let old_block1 = raw[h + 4124..h + 2 * 4124].to_vec();
    let m = fx.mount();
    std::fs::OpenOptions::new()
        .write(true)
        .open(fx.m(rel))
        .unwrap()
        .set_len(5_000)
        .unwrap();
    m.unmount();
    let short = std::fs::metadata(fx.c(rel)).unwrap().len() as usize - (h + 4124);
    assert_eq!(short, 5_000 - 4096 + 28);
    std::fs::OpenOptions::new()
        .write(true)
        .open(fx.c(rel))
        .unwrap()
        .write_all_at(&old_block1[short..], (h + 4124 + short) as u64)
        .unwrap();
    (data, (h + 4124 + short) as u64)
}

/// The state a SIGKILL of the daemon in the middle of writing `rel` (10,000
/// bytes, a new file) leaves: the kernel stopped copying the write at the
/// page boundary inside its second block. Returns the bytes written and the
/// plaintext size that survives (the first block).
pub fn torn_write(fx: &Fixture, rel: &str) -> (Vec<u8>, u64) {
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 17 % 253) as u8).collect();
    let m = fx.mount();
    std::fs::write(fx.m(rel), &data).unwrap();
    m.unmount();
    let len = std::fs::metadata(fx.c(rel)).unwrap().len();
    let h = len - (2 * 4124 + 1808 + 28);
    let tear = (h + 4124).next_multiple_of(4096);
    assert!(tear < h + 2 * 4124, "a page boundary inside block 1");
    std::fs::OpenOptions::new()
        .write(true)
        .open(fx.c(rel))
        .unwrap()
        .set_len(tear)
        .unwrap();
    (data, 4096)
}

/// Starts `cmd` (output discarded) and SIGKILLs it after `after`: a crash
/// at some moment of whatever it was doing.
pub fn kill_after(mut cmd: Command, after: Duration) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    std::thread::sleep(after);
    let _ = child.kill();
    let _ = child.wait();
}
