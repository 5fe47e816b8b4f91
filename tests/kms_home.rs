//! The KMS home belongs to whoever runs kmsfs (usually root): a home another
//! user owns or can write is refused, nothing in it is opened through a link,
//! it is created 0700 whatever the umask, there is no default without HOME,
//! a lost keystore is not silently replaced, and the passphrase prompt gives
//! the terminal back its echo even when interrupted. Through the real binary;
//! the tests run as root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_kmsfs");
const NOBODY: u32 = 65534;

struct Env {
    dir: tempfile::TempDir,
    home: PathBuf,
    key: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("root.key");
        fs::write(&key, [0x42u8; 32]).unwrap();
        Env {
            home: dir.path().join("home"),
            key,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn cmd(&self, home: &Path) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--kms-home")
            .arg(home)
            .arg("--key-file")
            .arg(&self.key)
            .env_remove("KMSFS_HOME")
            .env_remove("KMSFS_KEY_FILE")
            .env_remove("KMSFS_PASSPHRASE_FILE");
        c
    }

    fn run_in(&self, home: &Path, args: &[&str]) -> Output {
        self.cmd(home).args(args).output().unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_in(&self.home, args)
    }

    fn create_key(&self) {
        let o = self.run(&["kms", "create-key"]);
        assert!(o.status.success(), "create-key: {}", stderr(&o));
    }

    /// Runs a command expected to fail locally (exit 1); returns its stderr.
    fn refused(&self, home: &Path, args: &[&str]) -> String {
        let o = self.run_in(home, args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        err
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn chown(p: &Path, uid: u32) {
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
}

#[test]
fn a_home_owned_by_another_user_is_refused() {
    let env = Env::new();
    fs::create_dir(&env.home).unwrap();
    fs::set_permissions(&env.home, fs::Permissions::from_mode(0o700)).unwrap();
    chown(&env.home, NOBODY);
    let home = env.home.display().to_string();
    for args in [&["kms", "create-key"][..], &["kms", "list-keys"]] {
        let err = env.refused(&env.home, args);
        assert!(
            err.contains(&format!("refusing the KMS home {home}"))
                && err.contains("owned by uid 65534")
                && err.contains("not by uid 0")
                && err.contains(&format!("chown 0 {home} && chmod 700 {home}")),
            "{args:?}: {err}"
        );
    }
    assert!(
        names(&env.home).is_empty(),
        "nothing was created in it: {:?}",
        names(&env.home)
    );
    // Once it is root's, the same directory works.
    chown(&env.home, 0);
    env.create_key();
}

#[test]
fn a_home_writable_by_group_or_others_is_refused() {
    let env = Env::new();
    env.create_key();
    let before = fs::read(env.home.join("keystore.json")).unwrap();
    let home = env.home.display().to_string();
    for (m, by) in [
        (0o770, "writable by its group (mode 0770)"),
        (0o703, "writable by others (mode 0703)"),
        (0o777, "writable by its group and by others (mode 0777)"),
        (0o1777, "writable by its group and by others (mode 1777)"),
    ] {
        fs::set_permissions(&env.home, fs::Permissions::from_mode(m)).unwrap();
        for args in [&["kms", "create-key"][..], &["kms", "list-keys"]] {
            let err = env.refused(&env.home, args);
            assert!(
                err.contains(&format!("refusing the KMS home {home}"))
                    && err.contains(by)
                    && err.contains(&format!("chmod 700 {home}")),
                "{m:o} {args:?}: {err}"
            );
        }
    }
    assert_eq!(fs::read(env.home.join("keystore.json")).unwrap(), before);
    // Readable by others is not a reason to refuse: the keystore is sealed.
    fs::set_permissions(&env.home, fs::Permissions::from_mode(0o755)).unwrap();
    let o = env.run(&["kms", "list-keys", "--query", "Keys[0].KeyId"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_home_that_is_a_symlink_is_refused() {
    let env = Env::new();
    env.create_key();
    let link = env.path("link");
    symlink(&env.home, &link).unwrap();
    let slash = PathBuf::from(format!("{}/", link.display()));
    for home in [&link, &slash] {
        let err = env.refused(home, &["kms", "list-keys"]);
        assert!(
            err.contains(&format!("refusing the KMS home {}", home.display()))
                && err.contains("is a symbolic link"),
            "{}: {err}",
            home.display()
        );
    }
    // The directory itself is fine.
    let o = env.run(&["kms", "list-keys"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_planted_audit_log_link_is_refused_and_its_target_is_unchanged() {
    let env = Env::new();
    env.create_key();
    // A root-owned file outside, whose last line is torn: following the link,
    // opening the log would have cut that line off.
    let victim = env.path("root-owned");
    let bytes = b"first line\nno newline at the end".to_vec();
    fs::write(&victim, &bytes).unwrap();
    let audit = env.home.join("audit.log");
    fs::remove_file(&audit).unwrap();
    symlink(&victim, &audit).unwrap();
    for args in [&["kms", "list-keys"][..], &["kms", "create-key"]] {
        let err = env.refused(&env.home, args);
        assert!(
            err.contains(&format!("cannot open the audit log {}", audit.display()))
                && err.contains("is a symbolic link"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(fs::read(&victim).unwrap(), bytes, "same bytes");
    assert_eq!(fs::metadata(&victim).unwrap().len(), bytes.len() as u64);
    assert_eq!(fs::read_link(&audit).unwrap(), victim, "the link is left");
}

#[test]
fn a_planted_lock_link_is_refused_and_creates_nothing() {
    let env = Env::new();
    env.create_key();
    let target = env.path("made-by-root");
    let lock = env.home.join("keystore.lock");
    fs::remove_file(&lock).unwrap();
    symlink(&target, &lock).unwrap();
    let before = fs::read(env.home.join("keystore.json")).unwrap();
    let err = env.refused(&env.home, &["kms", "create-key"]);
    assert!(
        err.contains(&format!("cannot open lock file {}", lock.display()))
            && err.contains("is a symbolic link"),
        "{err}"
    );
    assert!(!target.exists(), "no file at the link's target");
    assert_eq!(fs::read(env.home.join("keystore.json")).unwrap(), before);

    // In a new (empty, root's, 0700) home too: no keystore is started there.
    let fresh = env.path("fresh");
    fs::create_dir(&fresh).unwrap();
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o700)).unwrap();
    symlink(&target, fresh.join("keystore.lock")).unwrap();
    let err = env.refused(&fresh, &["kms", "create-key"]);
    assert!(err.contains("is a symbolic link"), "{err}");
    assert!(!target.exists(), "no file at the link's target");
    assert_eq!(names(&fresh), ["keystore.lock"]);
}

#[test]
fn a_planted_keystore_link_is_refused() {
    let env = Env::new();
    env.create_key();
    let ks = env.home.join("keystore.json");
    let elsewhere = env.path("keystore-copy.json");
    fs::rename(&ks, &elsewhere).unwrap();
    let bytes = fs::read(&elsewhere).unwrap();
    symlink(&elsewhere, &ks).unwrap();
    for args in [&["kms", "list-keys"][..], &["kms", "create-key"]] {
        let err = env.refused(&env.home, args);
        assert!(
            err.contains(&format!("cannot open {}", ks.display()))
                && err.contains("is a symbolic link"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(fs::read(&elsewhere).unwrap(), bytes);
}

#[test]
fn a_new_home_and_its_parents_are_0700_whatever_the_umask() {
    let env = Env::new();
    let home = env.path("a/b/home");
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("--kms-home")
        .arg(&home)
        .arg("--key-file")
        .arg(&env.key)
        .args(["kms", "create-key"])
        .env_remove("KMSFS_HOME")
        .env_remove("KMSFS_KEY_FILE")
        .env_remove("KMSFS_PASSPHRASE_FILE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for d in [env.path("a"), env.path("a/b"), home.clone()] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(
        names(&home),
        [
            ".audit.log.lock",
            "audit.log",
            "keystore.json",
            "keystore.lock"
        ]
    );
    for f in names(&home) {
        assert_eq!(mode(&home.join(&f)), 0o600, "{f}");
    }
    // Ancestors that exist are not the home: a home made under a
    // world-writable one (as under /tmp) is the caller's own, and works.
    let shared = env.path("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let o = env.run_in(&shared.join("home"), &["kms", "create-key"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&shared.join("home")), 0o700);
}

#[test]
fn without_home_a_non_root_user_has_no_default() {
    let env = Env::new();
    // nobody's working directory: a relative default would land here.
    let cwd = env.path("cwd");
    fs::create_dir(&cwd).unwrap();
    chown(&cwd, NOBODY);
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for unset in [
        &["-u", "HOME", "-u", "XDG_DATA_HOME", "-u", "KMSFS_HOME"][..],
        &["HOME=", "XDG_DATA_HOME=", "KMSFS_HOME="],
    ] {
        let o = Command::new("runuser")
            .args(["-u", "nobody", "--", "env"])
            .args(unset)
            .args([BIN, "kms", "list-keys"])
            .current_dir(&cwd)
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{unset:?}: {err}");
        assert!(
            err.contains("HOME is not set") && err.contains("set HOME or pass --kms-home"),
            "{unset:?}: {err}"
        );
        assert!(names(&cwd).is_empty(), "{:?}", names(&cwd));
    }
    // Commands that need no KMS home still run.
    let o = Command::new("runuser")
        .args(["-u", "nobody", "--", "env", "-u", "HOME", BIN, "unmount"])
        .arg(&cwd)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(
        !err.contains("HOME is not set") && err.contains("is not a kmsfs mount"),
        "{err}"
    );
}

#[test]
fn a_missing_keystore_beside_an_audit_log_is_an_error() {
    let env = Env::new();
    env.create_key();
    fs::remove_file(env.home.join("keystore.json")).unwrap();
    let audit = env.home.join("audit.log");
    let log = fs::read(&audit).unwrap();
    let want = format!(
        "the KMS home {} has an audit log but no keystore.json: restore the keystore from a backup; refusing to start a new account here",
        env.home.display()
    );
    for args in [&["kms", "create-key"][..], &["kms", "list-keys"]] {
        let err = env.refused(&env.home, args);
        assert!(err.contains(&want), "{args:?}: {err}");
    }
    assert!(!env.home.join("keystore.json").exists());
    assert_eq!(fs::read(&audit).unwrap(), log, "nothing appended");
}

/// In a pseudo-terminal: the prompt turns echo off, Ctrl-C ends kmsfs, and
/// `stty -a` on the same terminal afterwards shows echo on again.
#[test]
fn ctrl_c_at_the_passphrase_prompt_gives_the_terminal_its_echo_back() {
    if !Command::new("python3")
        .args(["-c", "import pty, termios, fcntl"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("skipped: needs python3 with pty, termios and fcntl");
        return;
    }
    let env = Env::new();
    let pw = env.path("pw");
    fs::write(&pw, "correct horse\n").unwrap();
    let o = Command::new(BIN)
        .arg("--kms-home")
        .arg(&env.home)
        .arg("--passphrase-file")
        .arg(&pw)
        .args(["kms", "create-key"])
        .env_remove("KMSFS_HOME")
        .env_remove("KMSFS_KEY_FILE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let script = env.path("pty.py");
    fs::write(&script, PTY_SCRIPT).unwrap();
    let o = Command::new("python3")
        .arg(&script)
        .arg(BIN)
        .arg(&env.home)
        .env_remove("KMSFS_HOME")
        .env_remove("KMSFS_KEY_FILE")
        .env_remove("KMSFS_PASSPHRASE_FILE")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{out}\n{}", stderr(&o));
    let line = |tag: &str| -> Vec<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag} in {out}"))
            .split(|c: char| c.is_whitespace() || c == ';')
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    };
    let during = line("during:");
    assert!(during.contains(&"-echo".to_string()), "{during:?}");
    assert_eq!(line("status:"), ["signal", "2"], "ended by its SIGINT");
    let after = line("after:");
    assert!(
        after.contains(&"echo".to_string()) && !after.contains(&"-echo".to_string()),
        "{after:?}"
    );
}

const PTY_SCRIPT: &str = r#"
import fcntl, os, select, signal, subprocess, sys, termios, time
binary, home = sys.argv[1], sys.argv[2]
master, slave = os.openpty()
pid = os.fork()
if pid == 0:
    # As a shell starts a foreground job: a harness run in the background
    # (nohup, `cmd &`) has SIGINT ignored, which would carry over.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.execv(binary, [binary, "--kms-home", home, "kms", "list-keys"])

def stty():
    r = subprocess.run(["stty", "-a"], stdin=slave, capture_output=True, text=True)
    return " ".join(r.stdout.split())

seen = b""
deadline = time.time() + 60
while b"Passphrase: " not in seen:
    left = deadline - time.time()
    ready = select.select([master], [], [], max(left, 0))[0]
    if not ready:
        print("timeout waiting for the prompt:", seen)
        sys.exit(1)
    seen += os.read(master, 4096)
print("during:", stty())
os.write(master, b"\x03")
deadline = time.time() + 30
while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        break
    if time.time() > deadline:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("timeout: Ctrl-C did not end kmsfs within 30 s")
        sys.exit(1)
    time.sleep(0.02)
if os.WIFSIGNALED(status):
    print("status: signal", os.WTERMSIG(status))
else:
    print("status: exit", os.WEXITSTATUS(status))
print("after:", stty())
"#;
