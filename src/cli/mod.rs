//! The command line: clap definitions and dispatch. Each subcommand is a thin
//! layer over the library; errors name what failed and what to do.

pub mod audit_cmd;
pub mod awsargs;
pub mod kms_cmd;
pub mod secret;

use crate::kms::keystore::KmsHome;
use crate::kms::{Caller, Kms, Options, Via};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kmsfs",
    version,
    about = "Encrypting FUSE filesystem with an embedded AWS-KMS-style key service"
)]
pub struct Cli {
    /// Directory holding the keystore and audit log [default: $KMSFS_HOME,
    /// /var/lib/kmsfs for root, else $XDG_DATA_HOME/kmsfs].
    #[arg(long, global = true, value_name = "DIR")]
    pub kms_home: Option<PathBuf>,
    #[command(flatten)]
    pub secret: secret::SecretArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Key management and envelope encryption, as `aws kms`.
    Kms {
        /// json (default) or text.
        #[arg(long, default_value = "json", global = true)]
        output: String,
        /// Print only this field (e.g. Plaintext, KeyMetadata.KeyId).
        #[arg(long, global = true)]
        query: Option<String>,
        #[command(subcommand)]
        op: kms_cmd::KmsCommand,
    },
    /// Read and check the audit log.
    Audit {
        #[command(subcommand)]
        op: audit_cmd::AuditCommand,
    },
}

/// Exit codes, as the AWS CLI uses them where they overlap.
pub mod exit {
    pub const OK: i32 = 0;
    /// Local failure: keystore, passphrase, files, a failed verification.
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    /// The KMS answered with an error (AWS CLI v2 uses 254 for service errors).
    pub const SERVICE_ERROR: i32 = 254;
}

fn open_kms(home: &KmsHome, secret: &secret::SecretArgs, create: bool) -> Result<Kms, String> {
    if !home.exists() && !create {
        return Err(format!(
            "no KMS home at {}: create a key first (`kmsfs kms create-key`), or point --kms-home / KMSFS_HOME at an existing one",
            home.dir.display()
        ));
    }
    let existed = home.exists();
    let secret = secret.resolve(home, create)?;
    let kms =
        Kms::open(home.clone(), &secret, create, Options::default()).map_err(|e| e.message)?;
    if !existed {
        eprintln!(
            "kmsfs: created a new KMS home at {} (account {}). Every key lives only there, sealed under your passphrase or key file: back it up, and keep the secret; without both, data encrypted under these keys is lost.",
            home.dir.display(),
            kms.account()
        );
    }
    Ok(kms)
}

pub fn run(cli: Cli) -> i32 {
    let Cli {
        kms_home,
        secret,
        command,
    } = cli;
    let home = KmsHome::new(kms_home.unwrap_or_else(KmsHome::default_dir));
    match command {
        Command::Kms { output, query, op } => {
            run_kms(&home, &secret, &output, query.as_deref(), op)
        }
        Command::Audit { op } => run_audit(&home, &secret, &op),
    }
}

fn run_kms(
    home: &KmsHome,
    secret: &secret::SecretArgs,
    output: &str,
    query: Option<&str>,
    op: kms_cmd::KmsCommand,
) -> i32 {
    let name = kms_cmd::operation_name(&op);
    let kms = match open_kms(home, secret, op.creates_home()) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kmsfs: {e}");
            return exit::FAILURE;
        }
    };
    let caller = Caller::this_process(Via::Cli);
    match kms_cmd::run(&kms, &caller, op) {
        Ok(v) if v.is_null() => exit::OK,
        Ok(v) => {
            let v = match query.map(|q| awsargs::query(&v, q)) {
                None => v,
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    eprintln!("kmsfs: {e}");
                    return exit::USAGE;
                }
            };
            println!("{}", awsargs::render(&v, output));
            exit::OK
        }
        Err(kms_cmd::CmdError::Usage(e)) => {
            eprintln!("kmsfs: {e}");
            exit::USAGE
        }
        Err(kms_cmd::CmdError::Kms(e)) => {
            eprintln!(
                "An error occurred ({}) when calling the {name} operation: {}",
                e.code, e.message
            );
            exit::SERVICE_ERROR
        }
    }
}

fn run_audit(home: &KmsHome, secret: &secret::SecretArgs, op: &audit_cmd::AuditCommand) -> i32 {
    let path = home.audit_path();
    let result = match op {
        audit_cmd::AuditCommand::Verify => secret
            .resolve(home, false)
            .and_then(|s| home.open(&s).map_err(|e| e.message))
            .and_then(|o: crate::kms::keystore::Opened| audit_cmd::verify(&path, &o.keys.audit)),
        show => audit_cmd::show(&path, show).map(|_| true),
    };
    match result {
        Ok(true) => exit::OK,
        Ok(false) => exit::FAILURE,
        Err(e) => {
            eprintln!("kmsfs: {e}");
            exit::FAILURE
        }
    }
}
