//! A running `kmsfs kms serve` for a test, and the Python AWS clients that
//! talk to it (scripts/pydeps.sh installs them). The server is killed when
//! the guard drops, even when the test fails.

use super::{BIN, run_timeout};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The venv holding awscli, boto3 and moto; missing is a failure that says
/// how to make it, never a skip.
pub fn pyenv() -> PathBuf {
    let dir = std::env::var_os("KMSFS_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv"));
    assert!(
        dir.join("bin/python").exists() && dir.join("bin/aws").exists(),
        "{} has no awscli/boto3: run `bash scripts/pydeps.sh` (scripts/test.sh does)",
        dir.display()
    );
    dir
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub key: PathBuf,
    pub port: u16,
    /// http, or https when served with --tls-cert.
    pub scheme: String,
    pub socket: PathBuf,
    child: Child,
}

impl Server {
    /// A KMS home with one key (its id returned by `key_id`), served on a
    /// free loopback port and a unix socket.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let key = dir.path().join("root.key");
        std::fs::write(&key, [0x24u8; 32]).unwrap();
        let socket = dir.path().join("kms.sock");
        let mut s = Server {
            home,
            key,
            port: 0,
            scheme: String::new(),
            socket,
            child: Command::new("true").spawn().unwrap(),
            dir,
        };
        let o = s.cli(&["kms", "create-key", "--description", "served"]);
        assert!(
            o.status.success(),
            "create-key: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::fs::write(s.dir.path().join("key.json"), &o.stdout).unwrap();
        s.spawn("127.0.0.1:0", extra);
        s
    }

    /// Served over TLS with a certificate from a test CA (see `test_pki`):
    /// the server, and the CA's PEM file a client must trust.
    pub fn start_tls() -> (Server, PathBuf) {
        let certs = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = test_pki(certs.path());
        let s = Server::start(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ]);
        // Kept with the server's own directory, which outlives the test's use.
        let kept = s.dir.path().join("ca.crt");
        std::fs::copy(&ca, &kept).unwrap();
        (s, kept)
    }

    /// Starts (again) on `listen`, waiting until it answers.
    fn spawn(&mut self, listen: &str, extra: &[&str]) {
        let s = self;
        let _ = std::fs::remove_file(&s.socket);
        let mut cmd = s.cmd();
        cmd.args(["kms", "serve", "--listen", listen, "--unix"])
            .arg(&s.socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(s.dir.path().join("serve.log")).unwrap(),
            ));
        let mut child = cmd.spawn().expect("spawn kmsfs kms serve");
        let out = child.stdout.take().unwrap();
        s.child = child;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(l) = line else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        // Both addresses are printed once they answer.
        for _ in 0..2 {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| {
                    panic!(
                        "kmsfs kms serve printed no address within 30 s: {}",
                        s.log()
                    )
                });
            let addr = line.strip_prefix("kmsfs: serving the KMS API on ");
            if let Some((scheme, p)) = addr.and_then(|a| a.split_once("://127.0.0.1:")) {
                s.port = p.trim().parse().expect("port");
                s.scheme = scheme.to_string();
            }
        }
        assert_ne!(s.port, 0, "no TCP address printed");
    }

    /// Stops the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let listen = format!("127.0.0.1:{}", self.port);
        self.spawn(&listen, &[]);
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--kms-home")
            .arg(&self.home)
            .arg("--key-file")
            .arg(&self.key)
            .env_remove("KMSFS_HOME")
            .env_remove("KMSFS_PASSPHRASE_FILE")
            .env_remove("KMSFS_KEY_FILE");
        c
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        run_timeout(self.cmd().args(args), 60)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The id of the key made at start.
    pub fn key_id(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.dir.path().join("key.json")).unwrap())
                .unwrap();
        v["KeyMetadata"]["KeyId"].as_str().unwrap().to_string()
    }

    /// A new access key acting as `principal`: (id, secret).
    pub fn access_key(&self, principal: &str) -> (String, String) {
        let o = self.cli(&["kms", "create-access-key", "--principal", principal]);
        assert!(
            o.status.success(),
            "create-access-key: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let k = &v["AccessKey"];
        (
            k["AccessKeyId"].as_str().unwrap().into(),
            k["SecretAccessKey"].as_str().unwrap().into(),
        )
    }

    /// Runs a Python script (with boto3) signed as `creds`; `ENDPOINT`,
    /// `KEY_ID` and `SOCKET` are in its environment.
    pub fn python(&self, creds: &(String, String), script: &str) -> Output {
        let mut c = Command::new(pyenv().join("bin/python"));
        c.arg("-c").arg(script);
        self.client_env(&mut c, creds);
        run_timeout(&mut c, 120)
    }

    /// Runs a bash script with the AWS CLI first on PATH, signed as `creds`.
    pub fn bash(&self, creds: &(String, String), script: &str) -> Output {
        let mut c = Command::new("bash");
        c.arg("-c").arg(format!("set -euo pipefail\n{script}"));
        self.client_env(&mut c, creds);
        let path = format!(
            "{}:{}",
            pyenv().join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        c.env("PATH", path);
        run_timeout(&mut c, 300)
    }

    /// The clients run in the server's own directory: the files their
    /// scripts write (pt, ct, ...) go there, not into the checkout.
    fn client_env(&self, c: &mut Command, creds: &(String, String)) {
        c.current_dir(self.dir.path())
            .env("AWS_ACCESS_KEY_ID", &creds.0)
            .env("AWS_SECRET_ACCESS_KEY", &creds.1)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("ENDPOINT", self.url())
            .env("KEY_ID", self.key_id())
            .env("SOCKET", &self.socket)
            .env("KMSFS_BIN", BIN)
            .env("KMSFS_HOME", &self.home)
            .env("KMSFS_KEY_FILE", &self.key)
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_SESSION_TOKEN");
    }

    /// The audit log's records.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.home.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Stops the server (SIGTERM) and waits for it, bounded.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        for _ in 0..200 {
            if self.child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1 and
/// localhost: (CA, cert, key), PEM.
pub fn test_pki(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let script = r#"
set -e
cd "$1"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=kmsfs-test-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost -keyout tls.key -out tls.csr 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out tls.crt 2>/dev/null
"#;
    let o = run_timeout(
        std::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg("pki")
            .arg(dir),
        60,
    );
    assert!(
        o.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (dir.join("ca.crt"), dir.join("tls.crt"), dir.join("tls.key"))
}

/// Asserts a command succeeded, showing its output if not.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}
