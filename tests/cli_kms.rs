//! `kmsfs kms` and `kmsfs audit` through the real binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Env {
    _dir: tempfile::TempDir,
    home: PathBuf,
    key: PathBuf,
    work: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("root.key");
        std::fs::write(&key, [0x5au8; 32]).unwrap();
        Env {
            home: dir.path().join("home"),
            key,
            work: dir.path().to_path_buf(),
            _dir: dir,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kmsfs"))
            .arg("--kms-home")
            .arg(&self.home)
            .arg("--key-file")
            .arg(&self.key)
            .args(args)
            .env_remove("KMSFS_HOME")
            .env_remove("KMSFS_PASSPHRASE_FILE")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> serde_json::Value {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if o.stdout.is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|_| String::from_utf8_lossy(&o.stdout).trim().into())
    }

    /// Runs a command expected to fail; returns its stderr.
    fn fails(&self, args: &[&str], aws_error: &str) -> String {
        let o = self.run(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(254), "{args:?}: {err}");
        assert!(
            err.contains(&format!("({aws_error})")),
            "{args:?}: wanted {aws_error}, got {err}"
        );
        err
    }

    fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    fn create_key(&self) -> String {
        self.ok(&["kms", "create-key", "--description", "test"])["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn fileb(p: &Path) -> String {
    format!("fileb://{}", p.display())
}

fn b64d(s: &serde_json::Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s.as_str().unwrap())
        .unwrap()
}

#[test]
fn create_encrypt_decrypt_round_trip_and_context_errors() {
    let env = Env::new();
    let key = env.create_key();
    env.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/app",
        "--target-key-id",
        &key,
    ]);
    let secret = env.path("secret.txt");
    std::fs::write(&secret, b"top secret\n").unwrap();
    let enc = env.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        "alias/app",
        "--plaintext",
        &fileb(&secret),
        "--encryption-context",
        "purpose=test,team=ops",
    ]);
    assert_eq!(enc["EncryptionAlgorithm"], "SYMMETRIC_DEFAULT");
    assert!(enc["KeyId"].as_str().unwrap().ends_with(&key));
    let blob = env.path("blob.bin");
    std::fs::write(&blob, b64d(&enc["CiphertextBlob"])).unwrap();
    let dec = env.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &fileb(&blob),
        "--encryption-context",
        "team=ops,purpose=test",
    ]);
    assert_eq!(b64d(&dec["Plaintext"]), b"top secret\n");
    // --query/--output text as scripts use them.
    let text = env.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        &fileb(&blob),
        "--encryption-context",
        r#"{"purpose":"test","team":"ops"}"#,
        "--output",
        "text",
        "--query",
        "Plaintext",
    ]);
    assert_eq!(b64d(&text), b"top secret\n");
    // Wrong or missing context.
    env.fails(
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            &fileb(&blob),
            "--encryption-context",
            "purpose=test,team=dev",
        ],
        "InvalidCiphertextException",
    );
    env.fails(
        &["kms", "decrypt", "--ciphertext-blob", &fileb(&blob)],
        "InvalidCiphertextException",
    );
    // A blob given inline as base64 works too.
    let inline = enc["CiphertextBlob"].as_str().unwrap();
    env.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        inline,
        "--encryption-context",
        "purpose=test,team=ops",
    ]);
}

#[test]
fn disabled_key_and_deletion_lifecycle() {
    let env = Env::new();
    let key = env.create_key();
    let enc = env.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        "aGVsbG8=",
    ]);
    let blob = enc["CiphertextBlob"].as_str().unwrap().to_string();
    env.ok(&["kms", "disable-key", "--key-id", &key]);
    let err = env.fails(
        &["kms", "decrypt", "--ciphertext-blob", &blob],
        "DisabledException",
    );
    assert!(
        err.contains("enable-key"),
        "the message says what to do: {err}"
    );
    env.fails(
        &[
            "kms",
            "encrypt",
            "--key-id",
            &key,
            "--plaintext",
            "aGVsbG8=",
        ],
        "DisabledException",
    );
    env.ok(&["kms", "enable-key", "--key-id", &key]);
    env.ok(&["kms", "decrypt", "--ciphertext-blob", &blob]);

    let s = env.ok(&[
        "kms",
        "schedule-key-deletion",
        "--key-id",
        &key,
        "--pending-window-in-days",
        "7",
    ]);
    assert_eq!(s["KeyState"], "PendingDeletion");
    assert_eq!(s["PendingWindowInDays"], 7);
    env.fails(
        &["kms", "decrypt", "--ciphertext-blob", &blob],
        "KMSInvalidStateException",
    );
    env.fails(
        &[
            "kms",
            "schedule-key-deletion",
            "--key-id",
            &key,
            "--pending-window-in-days",
            "3",
        ],
        "ValidationException",
    );
    env.ok(&["kms", "cancel-key-deletion", "--key-id", &key]);
    let d = env.ok(&["kms", "describe-key", "--key-id", &key]);
    assert_eq!(d["KeyMetadata"]["KeyState"], "Disabled");
    assert!(d["KeyMetadata"].get("DeletionDate").is_none());
}

#[test]
fn rotation_keeps_old_ciphertext_decryptable() {
    let env = Env::new();
    let key = env.create_key();
    let old =
        env.ok(&["kms", "encrypt", "--key-id", &key, "--plaintext", "b2xk"])["CiphertextBlob"]
            .clone();
    env.ok(&["kms", "rotate-key-on-demand", "--key-id", &key]);
    env.ok(&[
        "kms",
        "enable-key-rotation",
        "--key-id",
        &key,
        "--rotation-period-in-days",
        "180",
    ]);
    let st = env.ok(&["kms", "get-key-rotation-status", "--key-id", &key]);
    assert_eq!(st["KeyRotationEnabled"], true);
    assert_eq!(st["RotationPeriodInDays"], 180);
    let new =
        env.ok(&["kms", "encrypt", "--key-id", &key, "--plaintext", "bmV3"])["CiphertextBlob"]
            .clone();
    assert_ne!(
        b64d(&old)[19..23],
        b64d(&new)[19..23],
        "material version differs"
    );
    let d = env.ok(&["kms", "decrypt", "--ciphertext-blob", old.as_str().unwrap()]);
    assert_eq!(b64d(&d["Plaintext"]), b"old");
    let rot = env.ok(&["kms", "list-key-rotations", "--key-id", &key]);
    assert_eq!(rot["Rotations"][0]["RotationType"], "ON_DEMAND");
}

#[test]
fn data_keys_random_reencrypt_tags_aliases() {
    let env = Env::new();
    let a = env.create_key();
    let b = env.create_key();
    let dk = env.ok(&[
        "kms",
        "generate-data-key",
        "--key-id",
        &a,
        "--key-spec",
        "AES_256",
        "--encryption-context",
        "k=v",
    ]);
    assert_eq!(b64d(&dk["Plaintext"]).len(), 32);
    let wo = env.ok(&[
        "kms",
        "generate-data-key-without-plaintext",
        "--key-id",
        &a,
        "--number-of-bytes",
        "64",
    ]);
    assert!(wo.get("Plaintext").is_none());
    let re = env.ok(&[
        "kms",
        "re-encrypt",
        "--ciphertext-blob",
        dk["CiphertextBlob"].as_str().unwrap(),
        "--source-encryption-context",
        "k=v",
        "--destination-key-id",
        &b,
        "--destination-encryption-context",
        "k=w",
    ]);
    assert!(re.get("Plaintext").is_none());
    let d = env.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        re["CiphertextBlob"].as_str().unwrap(),
        "--encryption-context",
        "k=w",
    ]);
    assert_eq!(d["Plaintext"], dk["Plaintext"]);
    assert_eq!(
        b64d(&env.ok(&["kms", "generate-random", "--number-of-bytes", "48"])["Plaintext"]).len(),
        48
    );
    env.fails(
        &["kms", "generate-random", "--number-of-bytes", "2000"],
        "ValidationException",
    );

    env.ok(&[
        "kms",
        "tag-resource",
        "--key-id",
        &a,
        "--tags",
        "TagKey=team,TagValue=ops",
        "TagKey=env,TagValue=dev",
    ]);
    env.ok(&["kms", "untag-resource", "--key-id", &a, "--tag-keys", "env"]);
    let tags = env.ok(&["kms", "list-resource-tags", "--key-id", &a]);
    assert_eq!(
        tags["Tags"],
        serde_json::json!([{"TagKey": "team", "TagValue": "ops"}])
    );
    env.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/x",
        "--target-key-id",
        &a,
    ]);
    env.ok(&[
        "kms",
        "update-alias",
        "--alias-name",
        "alias/x",
        "--target-key-id",
        &b,
    ]);
    let al = env.ok(&["kms", "list-aliases", "--key-id", &b]);
    assert_eq!(al["Aliases"][0]["AliasName"], "alias/x");
    env.fails(
        &[
            "kms",
            "create-alias",
            "--alias-name",
            "alias/kmsfs/mine",
            "--target-key-id",
            &a,
        ],
        "InvalidAliasNameException",
    );
    env.ok(&["kms", "delete-alias", "--alias-name", "alias/x"]);
    env.fails(
        &["kms", "describe-key", "--key-id", "alias/x"],
        "NotFoundException",
    );
    let keys = env.ok(&["kms", "list-keys", "--limit", "1"]);
    assert_eq!(keys["Truncated"], true);
    let next = env.ok(&[
        "kms",
        "list-keys",
        "--limit",
        "1",
        "--marker",
        keys["NextMarker"].as_str().unwrap(),
    ]);
    assert_eq!(next["Truncated"], false);
}

#[test]
fn import_key_material_with_openssl_style_wrapping() {
    let env = Env::new();
    let key = env.ok(&["kms", "create-key", "--origin", "EXTERNAL"])["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let p = env.ok(&[
        "kms",
        "get-parameters-for-import",
        "--key-id",
        &key,
        "--wrapping-algorithm",
        "RSAES_OAEP_SHA_256",
        "--wrapping-key-spec",
        "RSA_2048",
    ]);
    let wrapped = kmsfs::kms::import::wrap_for_import(&b64d(&p["PublicKey"]), &[3u8; 32]).unwrap();
    let (tok, mat) = (env.path("token.bin"), env.path("material.bin"));
    std::fs::write(&tok, b64d(&p["ImportToken"])).unwrap();
    std::fs::write(&mat, wrapped).unwrap();
    env.ok(&[
        "kms",
        "import-key-material",
        "--key-id",
        &key,
        "--import-token",
        &fileb(&tok),
        "--encrypted-key-material",
        &fileb(&mat),
        "--expiration-model",
        "KEY_MATERIAL_DOES_NOT_EXPIRE",
    ]);
    let d = env.ok(&["kms", "describe-key", "--key-id", &key]);
    assert_eq!(d["KeyMetadata"]["KeyState"], "Enabled");
    env.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        "Ynlvaw==",
    ]);
}

#[test]
fn wrong_passphrase_is_clear_and_changes_nothing() {
    let env = Env::new();
    let pw = env.path("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let run = |pwfile: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kmsfs"))
            .arg("--kms-home")
            .arg(&env.home)
            .arg("--passphrase-file")
            .arg(pwfile)
            .args(args)
            .env_remove("KMSFS_KEY_FILE")
            .output()
            .unwrap()
    };
    let o = run(&pw, &["kms", "create-key"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("created a new KMS home"));
    let ks = env.home.join("keystore.json");
    let before = std::fs::read(&ks).unwrap();
    let bad = env.path("bad");
    std::fs::write(&bad, "wrong horse\n").unwrap();
    let o = run(&bad, &["kms", "create-key"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert_eq!(
        std::fs::read(&ks).unwrap(),
        before,
        "the keystore is unchanged"
    );
    // --extpass works like gocryptfs's.
    let o = run(
        &bad,
        &["kms", "list-keys", "--extpass", "echo 'correct horse'"],
    );
    assert!(!o.status.success(), "--passphrase-file wins over --extpass");
    let o = Command::new(env!("CARGO_BIN_EXE_kmsfs"))
        .args([
            "--kms-home",
            env.home.to_str().unwrap(),
            "--extpass",
            "echo 'correct horse'",
            "kms",
            "list-keys",
        ])
        .env_remove("KMSFS_PASSPHRASE_FILE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A key file on a passphrase home is refused with advice.
    let e = env.run(&["kms", "list-keys"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("sealed with a passphrase"));
}

#[test]
fn tampered_audit_line_is_named_by_verify() {
    let env = Env::new();
    let key = env.create_key();
    for _ in 0..4 {
        env.ok(&["kms", "encrypt", "--key-id", &key, "--plaintext", "eA=="]);
    }
    let v = env.run(&["audit", "verify"]);
    assert!(v.status.success());
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(
        out.contains("records 1 to 5 in 1 file(s), chain and 0 digest(s) intact; proven complete up to the last record by the keystore's anchor"),
        "{out}"
    );
    let log = env.home.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[2] = lines[2]
        .replace("\"uid\":0", "\"uid\":1000")
        .replace("Encrypt", "Decrypt");
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let v = env.run(&["audit", "verify"]);
    assert_eq!(v.status.code(), Some(1));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains("line 3"), "{out}");

    // audit show filters.
    std::fs::write(&log, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_kmsfs"))
        .args([
            "--kms-home",
            env.home.to_str().unwrap(),
            "audit",
            "show",
            "--event",
            "Encrypt",
            "--key",
            &key,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 4);
}

#[test]
fn two_processes_creating_keys_at_once_both_persist() {
    let env = Env::new();
    env.create_key();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_kmsfs"))
            .arg("--kms-home")
            .arg(&env.home)
            .arg("--key-file")
            .arg(&env.key)
            .args([
                "kms",
                "create-key",
                "--query",
                "KeyMetadata.KeyId",
                "--output",
                "text",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut created = vec![];
    for _ in 0..5 {
        let (a, b) = (spawn(), spawn());
        for c in [a, b] {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success());
            created.push(String::from_utf8(o.stdout).unwrap().trim().to_string());
        }
    }
    let keys = env.ok(&["kms", "list-keys"]);
    let listed: Vec<&str> = keys["Keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["KeyId"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 11);
    for k in &created {
        assert!(listed.contains(&k.as_str()), "{k} was lost");
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let env = Env::new();
    let key = env.create_key();
    let o = env.run(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        "not base64!",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("fileb://"));
    let big = env.path("big");
    std::fs::write(&big, vec![0u8; 5000]).unwrap();
    env.fails(
        &[
            "kms",
            "encrypt",
            "--key-id",
            &key,
            "--plaintext",
            &fileb(&big),
        ],
        "ValidationException",
    );
    let o = env.run(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        "eA==",
        "--encryption-context",
        "{\"a\":",
    ]);
    assert_eq!(o.status.code(), Some(2));
    env.fails(
        &["kms", "decrypt", "--ciphertext-blob", "AAAA"],
        "InvalidCiphertextException",
    );
    // A missing home is named, and not created by a read.
    let o = Command::new(env!("CARGO_BIN_EXE_kmsfs"))
        .args([
            "--kms-home",
            env.path("nohome").to_str().unwrap(),
            "--key-file",
            env.key.to_str().unwrap(),
            "kms",
            "list-keys",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no KMS home"));
    assert!(!env.path("nohome").exists());
    // A corrupt keystore is reported, not a panic.
    std::fs::write(env.home.join("keystore.json"), b"{ garbage").unwrap();
    let o = env.run(&["kms", "list-keys"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("not a kmsfs keystore") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn key_policy_get_put_lockout_and_malformed() {
    let env = Env::new();
    let key = env.create_key();
    let p = env.ok(&[
        "kms",
        "get-key-policy",
        "--key-id",
        &key,
        "--policy-name",
        "default",
    ]);
    assert_eq!(p["PolicyName"], "default");
    let doc: serde_json::Value = serde_json::from_str(p["Policy"].as_str().unwrap()).unwrap();
    assert_eq!(doc["Statement"][0]["Principal"]["Unix"][0], "uid:0");
    // Malformed and oversized documents name the problem.
    let err = env.fails(
        &[
            "kms",
            "put-key-policy",
            "--key-id",
            &key,
            "--policy",
            "{\"Statement\": 5}",
        ],
        "MalformedPolicyDocumentException",
    );
    assert!(err.contains("Statement"), "{err}");
    let big = format!(
        "{{\"Statement\":[{{\"Sid\":\"{}\",\"Effect\":\"Allow\",\"Principal\":\"*\",\"Action\":\"kms:*\",\"Resource\":\"*\"}}]}}",
        "s".repeat(33_000)
    );
    let bigf = env.path("big.json");
    std::fs::write(&bigf, big).unwrap();
    env.fails(
        &[
            "kms",
            "put-key-policy",
            "--key-id",
            &key,
            "--policy",
            &format!("file://{}", bigf.display()),
        ],
        "MalformedPolicyDocumentException",
    );
    // A policy that leaves no one able to change it is refused, unless bypassed.
    let lockout = r#"{"Version":"2012-10-17","Statement":[{"Sid":"OnlyUse","Effect":"Allow","Principal":{"Unix":["uid:0"]},"Action":["kms:Encrypt","kms:Decrypt"],"Resource":"*"}]}"#;
    let err = env.fails(
        &[
            "kms",
            "put-key-policy",
            "--key-id",
            &key,
            "--policy",
            lockout,
        ],
        "MalformedPolicyDocumentException",
    );
    assert!(err.contains("bypass-policy-lockout-safety-check"), "{err}");
    env.ok(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &key,
        "--policy",
        lockout,
        "--bypass-policy-lockout-safety-check",
    ]);
    // Now even root cannot describe or disable it, but can still encrypt.
    env.fails(
        &["kms", "describe-key", "--key-id", &key],
        "AccessDeniedException",
    );
    env.fails(
        &["kms", "disable-key", "--key-id", &key],
        "AccessDeniedException",
    );
    env.ok(&["kms", "encrypt", "--key-id", &key, "--plaintext", "eA=="]);
    // The denial is audited with the decision.
    let log = std::fs::read_to_string(env.home.join("audit.log")).unwrap();
    let last_denied = log
        .lines()
        .rev()
        .find(|l| l.contains("AccessDeniedException"))
        .unwrap();
    assert!(last_denied.contains("default deny"), "{last_denied}");
    // A key created with a policy gets it.
    let own = r#"{"Statement":[{"Sid":"Root","Effect":"Allow","Principal":{"Unix":"uid:0"},"Action":"kms:*","Resource":"*"},
                 {"Sid":"NoDecrypt","Effect":"Deny","Principal":"*","Action":"kms:Decrypt","Resource":"*","Condition":{"StringEquals":{"kms:EncryptionContext:tier":"secret"}}}]}"#;
    let k2 = env.ok(&["kms", "create-key", "--policy", own])["KeyMetadata"]["KeyId"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = env.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &k2,
        "--plaintext",
        "eA==",
        "--encryption-context",
        "tier=secret",
    ])["CiphertextBlob"]
        .clone();
    env.fails(
        &[
            "kms",
            "decrypt",
            "--ciphertext-blob",
            blob.as_str().unwrap(),
            "--encryption-context",
            "tier=secret",
        ],
        "AccessDeniedException",
    );
}

#[test]
fn grants_and_grant_tokens() {
    let env = Env::new();
    let key = env.create_key();
    // Hand the key to uid 4242 only through grants: root keeps the default policy.
    let g = env.ok(&[
        "kms",
        "create-grant",
        "--key-id",
        &key,
        "--grantee-principal",
        "uid:4242",
        "--retiring-principal",
        "uid:0",
        "--operations",
        "Decrypt",
        "Encrypt",
        "--constraints",
        r#"{"EncryptionContextSubset":{"app":"x"}}"#,
        "--name",
        "app-x",
    ]);
    let (gid, token) = (
        g["GrantId"].as_str().unwrap().to_string(),
        g["GrantToken"].as_str().unwrap().to_string(),
    );
    // Retrying with the same name and parameters returns the same grant.
    let again = env.ok(&[
        "kms",
        "create-grant",
        "--key-id",
        &key,
        "--grantee-principal",
        "uid:4242",
        "--retiring-principal",
        "uid:0",
        "--operations",
        "Decrypt",
        "Encrypt",
        "--constraints",
        r#"{"EncryptionContextSubset":{"app":"x"}}"#,
        "--name",
        "app-x",
    ]);
    assert_eq!(again["GrantId"].as_str().unwrap(), gid);
    let list = env.ok(&["kms", "list-grants", "--key-id", &key]);
    assert_eq!(list["Grants"].as_array().unwrap().len(), 1);
    assert_eq!(
        list["Grants"][0]["Operations"],
        serde_json::json!(["Decrypt", "Encrypt"])
    );
    assert_eq!(
        list["Grants"][0]["Constraints"]["EncryptionContextSubset"]["app"],
        "x"
    );
    let ret = env.ok(&[
        "kms",
        "list-retirable-grants",
        "--retiring-principal",
        "uid:0",
    ]);
    assert_eq!(ret["Grants"][0]["GrantId"].as_str().unwrap(), gid);
    // Grant tokens are accepted by cryptographic operations; unknown ones are refused.
    env.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        "eA==",
        "--grant-tokens",
        &token,
    ]);
    env.fails(
        &[
            "kms",
            "encrypt",
            "--key-id",
            &key,
            "--plaintext",
            "eA==",
            "--grant-tokens",
            "bogus",
        ],
        "InvalidGrantTokenException",
    );
    env.fails(
        &[
            "kms",
            "create-grant",
            "--key-id",
            &key,
            "--grantee-principal",
            "uid:1",
            "--operations",
            "Sign",
        ],
        "ValidationException",
    );
    env.fails(
        &[
            "kms",
            "create-grant",
            "--key-id",
            &key,
            "--grantee-principal",
            "*",
            "--operations",
            "Decrypt",
        ],
        "ValidationException",
    );
    // Retire by token, then the token is no longer valid.
    env.ok(&["kms", "retire-grant", "--grant-token", &token]);
    env.fails(
        &[
            "kms",
            "encrypt",
            "--key-id",
            &key,
            "--plaintext",
            "eA==",
            "--grant-tokens",
            &token,
        ],
        "InvalidGrantTokenException",
    );
    assert_eq!(
        env.ok(&["kms", "list-grants", "--key-id", &key])["Grants"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    // Retire by key and id, and revoke.
    let g2 = env.ok(&[
        "kms",
        "create-grant",
        "--key-id",
        &key,
        "--grantee-principal",
        "user:root",
        "--operations",
        "Decrypt",
    ]);
    env.ok(&[
        "kms",
        "retire-grant",
        "--key-id",
        &key,
        "--grant-id",
        g2["GrantId"].as_str().unwrap(),
    ]);
    let g3 = env.ok(&[
        "kms",
        "create-grant",
        "--key-id",
        &key,
        "--grantee-principal",
        "gid:0",
        "--operations",
        "DescribeKey",
    ]);
    env.ok(&[
        "kms",
        "revoke-grant",
        "--key-id",
        &key,
        "--grant-id",
        g3["GrantId"].as_str().unwrap(),
    ]);
    env.fails(
        &[
            "kms",
            "revoke-grant",
            "--key-id",
            &key,
            "--grant-id",
            g3["GrantId"].as_str().unwrap(),
        ],
        "InvalidGrantIdException",
    );
}

#[test]
fn text_output_is_one_line_per_list_element() {
    let env = Env::new();
    let (a, b) = (env.create_key(), env.create_key());
    let text = |args: &[&str]| {
        let o = env.run(&[args, &["--output", "text"]].concat());
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let out = text(&["kms", "list-keys"]);
    let keys: Vec<&str> = out.lines().filter(|l| l.starts_with("KEYS\t")).collect();
    assert_eq!(keys.len(), 2, "{out}");
    for id in [&a, &b] {
        assert!(
            keys.iter()
                .any(|l| l.ends_with(&format!("key/{id}\t{id}")) && l.split('\t').count() == 3),
            "{out}"
        );
    }
    env.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/app",
        "--target-key-id",
        &a,
    ]);
    let out = text(&["kms", "list-aliases"]);
    let aliases: Vec<&str> = out.lines().filter(|l| l.starts_with("ALIASES\t")).collect();
    assert_eq!(aliases.len(), 1, "{out}");
    assert!(aliases[0].contains("\talias/app\t") && aliases[0].contains(&a));
    env.ok(&[
        "kms",
        "create-grant",
        "--key-id",
        &a,
        "--grantee-principal",
        "uid:1000",
        "--operations",
        "Decrypt,Encrypt",
    ]);
    let out = text(&["kms", "list-grants", "--key-id", &a]);
    assert_eq!(out.lines().filter(|l| l.starts_with("GRANTS\t")).count(), 1);
    assert!(
        out.contains("OPERATIONS\tDecrypt\nOPERATIONS\tEncrypt\n"),
        "{out}"
    );
    // A scalar picked with --query is printed bare, as scripts expect.
    assert_eq!(
        text(&[
            "kms",
            "describe-key",
            "--key-id",
            &a,
            "--query",
            "KeyMetadata.KeyId"
        ]),
        format!("{a}\n")
    );
}

#[test]
fn audit_table_is_aligned_and_escapes_names() {
    let env = Env::new();
    let key = env.create_key();
    let forged = "x\n2026-01-01T00:00:00Z  Decrypt  uid:0(cat) pid 1  \u{1b}[2Jfake";
    let ctx = serde_json::json!({"kmsfs:path": forged}).to_string();
    env.ok(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        "eA==",
        "--encryption-context",
        &ctx,
    ]);
    env.fails(
        &["kms", "describe-key", "--key-id", "alias/nope"],
        "NotFoundException",
    );
    let o = env.run(&["audit", "show", "--table"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three records:\n{out}");
    assert!(!out.contains('\u{1b}'), "{out:?}");
    assert!(
        lines[2].contains(
            "kmsfs:path=x\\n2026-01-01T00:00:00Z  Decrypt  uid:0(cat) pid 1  \\x1b[2Jfake"
        )
    );
    assert!(lines[3].contains("alias/nope") && lines[3].ends_with("NotFoundException"));
    for title in ["EVENT", "CALLER", "KEY", "CONTEXT", "OUTCOME"] {
        let at = lines[0].find(title).unwrap();
        for l in &lines[1..] {
            assert!(
                l[..at].ends_with("  ") && !l[at..].starts_with(' '),
                "{title}:\n{out}"
            );
        }
    }
}

#[test]
fn miscased_or_empty_grant_constraints_are_refused() {
    let env = Env::new();
    let key = env.create_key();
    let create_grant = |constraints: &str| {
        vec![
            "kms".to_string(),
            "create-grant".into(),
            "--key-id".into(),
            key.clone(),
            "--grantee-principal".into(),
            "uid:4242".into(),
            "--operations".into(),
            "Decrypt".into(),
            "--constraints".into(),
            constraints.into(),
        ]
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let miscased = create_grant(r#"{"EncryptionContextSubSet": {"kmsfs:path": "shared/a"}}"#);
    let err = env.fails(&args(&miscased), "ValidationException");
    assert!(
        err.starts_with(
            "An error occurred (ValidationException) when calling the CreateGrant operation: "
        ),
        "{err}"
    );
    assert!(err.contains("EncryptionContextSubSet"), "{err}");
    for (bad, names) in [
        ("{}", "EncryptionContextSubset or EncryptionContextEquals"),
        (
            r#"{"EncryptionContextSubset": {}}"#,
            "Constraints.EncryptionContextSubset is empty",
        ),
        (
            "EncryptionContextSubset={}",
            "Constraints.EncryptionContextSubset is empty",
        ),
        ("EncryptionContextSubSet={app=x}", "EncryptionContextSubSet"),
        (
            r#"{"EncryptionContextSubset": {"app": "x"}, "Extra": 1}"#,
            "unknown field `Extra`",
        ),
        (
            r#"{"EncryptionContextSubset": {"app": "x", "app": "y"}}"#,
            "\"app\" appears twice",
        ),
    ] {
        let err = env.fails(&args(&create_grant(bad)), "ValidationException");
        assert!(
            err.contains("when calling the CreateGrant operation") && err.contains(names),
            "{bad}: {err}"
        );
    }
    // Nothing was granted.
    assert_eq!(
        env.ok(&["kms", "list-grants", "--key-id", &key])["Grants"],
        serde_json::json!([])
    );
    // Malformed JSON is a usage error, as before.
    let o = env.run(&args(&create_grant(r#"{"EncryptionContextSubset":"#)));
    assert_eq!(o.status.code(), Some(2));
    // The shorthand still works, and the grant is constrained.
    env.ok(&args(&create_grant("EncryptionContextSubset={app=x}")));
    let list = env.ok(&["kms", "list-grants", "--key-id", &key]);
    assert_eq!(
        list["Grants"][0]["Constraints"],
        serde_json::json!({"EncryptionContextSubset": {"app": "x"}})
    );
    // Tags in JSON take TagKey and TagValue only.
    let err = env.fails(
        &[
            "kms",
            "tag-resource",
            "--key-id",
            &key,
            "--tags",
            r#"[{"TagKey": "team", "Tagvalue": "ops"}]"#,
        ],
        "ValidationException",
    );
    assert!(err.contains("Tags[0]: unknown field \"Tagvalue\""), "{err}");
    // An encryption context naming a key twice is a usage error.
    let o = env.run(&[
        "kms",
        "encrypt",
        "--key-id",
        &key,
        "--plaintext",
        "eA==",
        "--encryption-context",
        r#"{"app": "x", "app": "y"}"#,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("\"app\" appears twice"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_policy_naming_a_missing_user_is_put_with_a_warning() {
    let env = Env::new();
    let key = env.create_key();
    let doc = r#"{"Version":"2012-10-17","Statement":[
        {"Sid":"Root","Effect":"Allow","Principal":{"Unix":"uid:0"},"Action":"kms:*","Resource":"*"},
        {"Sid":"Gone","Effect":"Allow","Principal":{"Unix":["user:kmsfs-no-such-user-xyz"]},"Action":"kms:Decrypt","Resource":"*"}]}"#;
    let warned = |o: &Output| {
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        assert!(
            err.starts_with("kmsfs: warning: ") && err.contains("user:kmsfs-no-such-user-xyz"),
            "{err}"
        );
    };
    let o = env.run(&["kms", "put-key-policy", "--key-id", &key, "--policy", doc]);
    warned(&o);
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // get-key-policy prints AWS's JSON, and warns on stderr.
    let o = env.run(&["kms", "get-key-policy", "--key-id", &key]);
    warned(&o);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        out,
        serde_json::json!({"Policy": doc, "PolicyName": "default"})
    );
    // The rest of the policy applies.
    let blob =
        env.ok(&["kms", "encrypt", "--key-id", &key, "--plaintext", "eA=="])["CiphertextBlob"]
            .clone();
    env.ok(&[
        "kms",
        "decrypt",
        "--ciphertext-blob",
        blob.as_str().unwrap(),
    ]);
    env.ok(&["kms", "disable-key", "--key-id", &key]);
    // The decisions name the principal that resolves to no account.
    let log = std::fs::read_to_string(env.home.join("audit.log")).unwrap();
    let rec: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .rfind(|r| r["eventName"] == "DisableKey")
        .unwrap();
    let authz = &rec["additionalEventData"]["authorization"];
    assert_eq!(authz["by"], "key policy statement Root");
    assert_eq!(
        authz["unresolvedPrincipals"],
        serde_json::json!(["user:kmsfs-no-such-user-xyz"])
    );
    // create-key --policy warns the same way and prints AWS's JSON.
    let o = env.run(&["kms", "create-key", "--policy", doc]);
    warned(&o);
    let out: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        out.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["KeyMetadata"]
    );
    // A policy naming only accounts that exist warns of nothing.
    let o = env.run(&[
        "kms",
        "put-key-policy",
        "--key-id",
        &key,
        "--policy",
        &doc.replace("kmsfs-no-such-user-xyz", "root"),
    ]);
    assert!(o.status.success() && o.stderr.is_empty(), "{o:?}");
    // Operators are case-sensitive, as in AWS.
    let err = env.fails(
        &[
            "kms",
            "put-key-policy",
            "--key-id",
            &key,
            "--policy",
            r#"{"Statement":[{"Effect":"Allow","Principal":{"Unix":"uid:0"},"Action":"kms:*","Resource":"*",
                "Condition":{"stringlike":{"kms:EncryptionContext:kmsfs:path":"x/*"}}}]}"#,
        ],
        "MalformedPolicyDocumentException",
    );
    assert!(
        err.contains("operators are case-sensitive: StringLike"),
        "{err}"
    );
}

#[test]
fn query_is_jmespath_and_a_bad_one_is_a_usage_error_before_anything_is_done() {
    let env = Env::new();
    let (a, b) = (env.create_key(), env.create_key());
    env.ok(&[
        "kms",
        "create-alias",
        "--alias-name",
        "alias/bee",
        "--target-key-id",
        &b,
    ]);
    let o = env.run(&[
        "kms",
        "list-keys",
        "--query",
        "Keys[].KeyId",
        "--output",
        "text",
    ]);
    assert!(o.status.success());
    let mut ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .trim()
        .split('\t')
        .map(String::from)
        .collect();
    ids.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(ids, want);
    let q = format!("Aliases[?TargetKeyId=='{b}'].AliasName | [0]");
    assert_eq!(
        env.ok(&["kms", "list-aliases", "--query", &q]),
        serde_json::json!("alias/bee")
    );
    assert_eq!(
        env.ok(&["kms", "list-keys", "--query", "length(Keys)"]),
        serde_json::json!(2)
    );
    // A query that does not compile: exit 2, and no key was made.
    let o = env.run(&[
        "kms",
        "create-key",
        "--query",
        "KeyMetadata.[",
        "--description",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("kmsfs: --query \"KeyMetadata.[\" is not a JMESPath expression: "),
        "{err}"
    );
    assert_eq!(
        env.ok(&["kms", "list-keys", "--query", "length(Keys)"]),
        serde_json::json!(2)
    );
}
