//! The command line: clap definitions and dispatch. Each subcommand is a thin
//! layer over the library; errors name what failed and what to do.

pub mod audit_cmd;
pub mod awsargs;
pub mod fsck_cmd;
pub mod kms_cmd;
pub mod mount_helper;
pub mod remote_args;
pub mod secret;
pub mod units;

use crate::kms::keystore::KmsHome;
use crate::kms::{Caller, Kms, Options, Via};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "kmsfs",
    version,
    about = "Encrypting FUSE filesystem with an embedded AWS-KMS-style key service",
    // The global options reach a subcommand only when clap builds it, so
    // hiding them where they do nothing waits until then (`defer`).
    mut_subcommand("unmount", |c| c.defer(hide_keystore_args)),
    mut_subcommand("audit", |c| c.mut_subcommand("show", |c| c.defer(hide_secret_args))),
)]
pub struct Cli {
    /// Directory holding the keystore and audit log [default: $KMSFS_HOME,
    /// /var/lib/kmsfs for root, else $XDG_DATA_HOME/kmsfs].
    #[arg(long, global = true, value_name = "DIR")]
    pub kms_home: Option<PathBuf>,
    #[command(flatten)]
    pub secret: secret::SecretArgs,
    #[command(flatten)]
    pub audit_log: AuditLogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How the audit log rotates and where else it goes: for every command
/// that writes it.
#[derive(clap::Args, Debug, Clone)]
pub struct AuditLogArgs {
    /// Rotate the audit log once it holds SIZE bytes (K, M, G suffixes; 0: never). Rotated files are named audit.log.FIRST-LAST and the MAC chain runs on through them.
    #[arg(long, global = true, value_name = "SIZE", env = "KMSFS_AUDIT_MAX_SIZE", default_value = "64M", value_parser = units::size_arg)]
    pub audit_max_size: u64,
    /// Rotate the audit log once its first record is DURATION old (s, m, h, d, w suffixes, e.g. 1d). Default: by size only.
    #[arg(long, global = true, value_name = "DURATION", env = "KMSFS_AUDIT_MAX_AGE", value_parser = units::duration_arg)]
    pub audit_max_age: Option<std::time::Duration>,
    /// Also send every audit record to the system journal or syslog (authpriv.info, as `kmsfs[PID]: RECORD`), for shipping off the machine; the file stays the record verify checks.
    #[arg(long, global = true, env = "KMSFS_AUDIT_SYSLOG")]
    pub audit_syslog: bool,
    /// The syslog socket --audit-syslog sends to.
    #[arg(long, global = true, value_name = "SOCKET", env = "KMSFS_AUDIT_SYSLOG_SOCKET", default_value = crate::kms::audit_sink::DEFAULT_SOCKET)]
    pub audit_syslog_socket: PathBuf,
}

/// The audit settings the command line chose, for every KMS it opens.
static AUDIT_SETTINGS: std::sync::OnceLock<crate::kms::audit::Settings> =
    std::sync::OnceLock::new();

fn kms_options() -> Options {
    Options {
        audit: AUDIT_SETTINGS.get().cloned().unwrap_or_default(),
        ..Options::default()
    }
}

/// Still accepted where they do nothing, so that `kmsfs --key-file K
/// unmount M` parses like every other command, but not listed there.
fn hide_secret_args(cmd: clap::Command) -> clap::Command {
    ["key_file", "passphrase_file", "extpass"]
        .into_iter()
        .fold(cmd, |c, id| c.mut_arg(id, |a| a.hide(true)))
}

fn hide_keystore_args(cmd: clap::Command) -> clap::Command {
    hide_secret_args(cmd).mut_arg("kms_home", |a| a.hide(true))
}

/// `kmsfs mount --io-uring`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoUring {
    // (No doc comments here: they would make clap print the values as a
    // list and the whole `mount --help` in its long layout.)
    Auto,
    Off,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Key management and envelope encryption, as `aws kms`.
    Kms {
        /// The formatting style for command output (text is tab-separated, as the AWS CLI's).
        #[arg(long, default_value = "json", global = true, value_parser = ["json", "text"])]
        output: String,
        /// A JMESPath expression to select from the response, as the AWS CLI's --query (e.g. Plaintext, KeyMetadata.KeyId, 'Keys[].KeyId', "Aliases[?TargetKeyId=='K'].AliasName").
        #[arg(long, global = true)]
        query: Option<String>,
        /// Send the operation to a remote KMS (`kmsfs kms serve`, moto, ...) at http://127.0.0.1:PORT, signed with the standard AWS credentials, instead of the local keystore.
        #[arg(long, global = true, value_name = "URL")]
        endpoint_url: Option<String>,
        #[command(flatten)]
        remote: remote_args::ClientArgs,
        #[command(subcommand)]
        op: kms_cmd::KmsCommand,
    },
    /// Read and check the audit log.
    Audit {
        #[command(subcommand)]
        op: audit_cmd::AuditCommand,
    },
    /// Create an encrypted filesystem in CIPHERDIR (empty or new).
    Init {
        /// Directory for the encrypted files: empty, or created.
        cipherdir: PathBuf,
        /// CMK to wrap the data keys [default: a new key kmsfs manages, alias/kmsfs/<filesystem id>]; required with --kms-endpoint.
        #[arg(long)]
        key_id: Option<String>,
        /// Keep file and directory names as they are in the cipherdir (the format before encrypted names; lookups skip one decryption). By default every name is encrypted, so whoever sees the cipherdir (a backup target, a synced folder) learns only the tree's shape and the names' lengths to 16 bytes.
        #[arg(long)]
        plaintext_names: bool,
        #[command(flatten)]
        remote: remote_args::RemoteArgs,
    },
    /// Map paths between the mount and the cipherdir of an encrypted-name filesystem (for operators: which backing file holds a file, which file a backing name is). Unwraps the name key through the KMS, audited.
    Names {
        /// Directory holding the encrypted files.
        cipherdir: PathBuf,
        /// Paths relative to the filesystem's root (as inside the mount), or with --decrypt, relative to the cipherdir. An encrypted name may begin with `-`: put `--` before such paths, as for rm.
        #[arg(required = true)]
        paths: Vec<String>,
        /// Turn cipherdir paths into the mount's paths instead.
        #[arg(long)]
        decrypt: bool,
        #[command(flatten)]
        remote: remote_args::RemoteArgs,
    },
    /// Check a cipherdir without mounting it: every name, file header and key slot, every block's tag, every symlink and kmsfs node, and the rename journal. Reports each problem with its path; exits 1 on any. Each file's key is unwrapped through the KMS (audited).
    Fsck {
        /// Directory holding the encrypted files.
        cipherdir: PathBuf,
        /// One JSON object on stdout instead of text.
        #[arg(long)]
        json: bool,
        /// Repair what cannot hide an attack, naming each repair: an empty file with no header, a stale key slot, a truncate a crash cut short, an interrupted directory rename. Needs the cipherdir unmounted.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        remote: remote_args::RemoteArgs,
    },
    /// Give files new data keys and re-encrypt their content, offline (unmount first), so a data key taken while someone had access opens nothing written from then on. Crash-safe: each file is copied under a hidden name, synced and renamed over. Audited (a Decrypt and a GenerateDataKey per file).
    Rekey {
        /// Directory holding the encrypted files.
        cipherdir: PathBuf,
        /// Files (as paths inside the filesystem, e.g. projects/plan.txt) to rekey; a directory stands for every file below it, "" or / for the whole filesystem.
        #[arg(required = true)]
        paths: Vec<String>,
        #[command(flatten)]
        remote: remote_args::RemoteArgs,
    },
    /// Re-wrap every blob the filesystem keeps under its CMK (each file's data key, hard-link entries, symlink targets, the name key, the attribute key, the config's seal) under the CMK's newest material, or with --to-key under another CMK, inside the KMS: the content is not re-encrypted. While mounted the mount does it (serialised with its renames; files stay in use), else it runs here under the cipherdir's lock; crash-safe, and a rerun finishes what a killed one began. Audited (a ReEncrypt per blob).
    Rewrap {
        /// Directory holding the encrypted files.
        cipherdir: PathBuf,
        /// Move the filesystem to this CMK (key id, ARN or alias) instead of the newest material of its own.
        #[arg(long, value_name = "KEY")]
        to_key: Option<String>,
        #[command(flatten)]
        remote: remote_args::RemoteArgs,
    },
    /// Mount CIPHERDIR on MOUNTPOINT; returns once the mount works.
    Mount {
        /// Directory holding the encrypted files (made by `kmsfs init`).
        cipherdir: PathBuf,
        /// Directory where the decrypted view appears.
        mountpoint: PathBuf,
        /// Stay in the foreground, logging to stderr.
        #[arg(short, long)]
        foreground: bool,
        /// Mount options, comma-separated: ro, allow_other, and others passed to the kernel.
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
        /// Let other users use the mount (permissions still apply).
        #[arg(long)]
        allow_other: bool,
        /// Log file in the background [default: <kms home>/mount-<filesystem id>.log].
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// FUSE worker threads [default: twice the CPUs, 4 to 16].
        #[arg(long)]
        threads: Option<usize>,
        /// Send every write to the daemon as it happens instead of through
        /// the kernel's writeback cache.
        #[arg(long)]
        no_writeback_cache: bool,
        /// Do not read ahead across files and directories. By default the
        /// first open in a directory asks the disk, in the background, for
        /// the start of the files in and around it, and a listing for the
        /// directories below it, so that a program reading a tree file by
        /// file (a backup, cp -r, grep -r) finds them in the page cache:
        /// reading an 8,000-file tree cold 1.2-1.3x faster here. Costs disk
        /// reads of files nobody opens (at most 1,024 files or 64 MiB per
        /// directory a second, 128 MiB a second in all, none once they are
        /// cached).
        #[arg(long)]
        no_prefetch: bool,
        /// FUSE over io_uring (Linux 6.14+), experimental: "auto" uses it
        /// when the kernel offers it (`echo Y > /sys/module/fuse/parameters/enable_uring`,
        /// as root) and /dev/fuse otherwise; "off" (the default) always uses
        /// /dev/fuse. Requests are then served on the caller's CPU: untar,
        /// ls -lR and reading a tree up to 1.2-1.4x faster here, but large
        /// sequential I/O 0.6-0.9x, so it is not the default.
        #[arg(long, value_enum, env = "KMSFS_IO_URING", default_value_t = IoUring::Off)]
        io_uring: IoUring,
        /// Keep extended attributes (user.*, trusted.*, security.*; and
        /// POSIX ACLs with --allow-other), encrypted. Off by default: once
        /// the daemon answers xattr calls, the kernel asks before every
        /// write and chown (security.capability) and `ls -l` asks for each
        /// file, one round trip each (ls -lR 2.8x, random 4K writes 2x,
        /// untar 1.25x slower here). Without it they are EOPNOTSUPP.
        #[arg(long)]
        xattrs: bool,
        /// With --allow-other, serve a cipherdir that other users can enter
        /// or change (refused without this: they could read or swap the
        /// ciphertext behind the mount).
        #[arg(long)]
        shared_cipherdir: bool,
        /// Unmount after DURATION without use: no request and no open file for that long (s, m, h, d suffixes, e.g. 30m). A mount a process has its working directory in stays until it leaves.
        #[arg(long, value_name = "DURATION", value_parser = units::duration_arg)]
        idle: Option<std::time::Duration>,
        #[command(flatten)]
        remote: remote_args::RemoteArgs,
        #[command(flatten)]
        cache: remote_args::CacheArgs,
    },
    /// Unmount a kmsfs mount and wait until its daemon has written everything.
    Unmount {
        /// Where the filesystem is mounted.
        mountpoint: PathBuf,
    },
    /// Print a shell completion script (bash: save it as /usr/share/bash-completion/completions/kmsfs; scripts/install.sh does).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write man pages made from this help: kmsfs.1 and one per subcommand (kmsfs-mount.1, kmsfs-kms-create-key.1, ...) into DIR, or kmsfs.1 to stdout.
    Man {
        /// Directory to write the pages into (e.g. /usr/local/share/man/man1).
        dir: Option<PathBuf>,
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
    let kms = Kms::open(home.clone(), &secret, create, kms_options()).map_err(|e| e.message)?;
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
        audit_log,
        command,
    } = cli;
    let _ = AUDIT_SETTINGS.set(crate::kms::audit::Settings {
        max_bytes: audit_log.audit_max_size,
        max_age: audit_log.audit_max_age,
        syslog: audit_log
            .audit_syslog
            .then(|| audit_log.audit_syslog_socket.clone()),
        ..Default::default()
    });
    let kms_home_flag = kms_home.clone();
    // An error only for the commands that use it (mount finds its own).
    let home = kms_home
        .map_or_else(KmsHome::default_dir, Ok)
        .map(KmsHome::new);
    if let Command::Kms { query, .. } = &command
        && let Err(e) = awsargs::check_query(query.as_deref())
    {
        eprintln!("kmsfs: {e}");
        return exit::USAGE;
    }
    match command {
        Command::Kms {
            output,
            query,
            endpoint_url: Some(url),
            remote,
            op,
        } => run_kms_remote(&url, &remote, &output, query.as_deref(), op),
        Command::Kms {
            output, query, op, ..
        } => match home {
            Ok(home) => run_kms(&home, &secret, &output, query.as_deref(), op),
            Err(e) => report(Err(e)),
        },
        Command::Audit { op } => match home {
            Ok(home) => run_audit(&home, &secret, &op),
            Err(e) => report(Err(e)),
        },
        Command::Init {
            cipherdir,
            key_id,
            plaintext_names,
            remote,
        } => {
            let names = if plaintext_names {
                crate::fs::mount::NameMode::Plaintext
            } else {
                crate::fs::mount::NameMode::Encrypted
            };
            match &remote.kms_endpoint {
                Some(url) => report(home.and_then(|home| {
                    run_init_remote(&home, &remote, url, &cipherdir, key_id.as_deref(), names)
                })),
                None => report(home.and_then(|home| {
                    run_init(&home, &secret, &cipherdir, key_id.as_deref(), names)
                })),
            }
        }
        Command::Names {
            cipherdir,
            paths,
            decrypt,
            remote,
        } => report(run_names(
            kms_home_flag,
            &secret,
            &remote,
            &cipherdir,
            &paths,
            decrypt,
        )),
        Command::Fsck {
            cipherdir,
            json,
            repair,
            remote,
        } => match run_fsck(kms_home_flag, &secret, &remote, &cipherdir, json, repair) {
            Ok(true) => exit::OK,
            Ok(false) => exit::FAILURE,
            Err(e) => {
                eprintln!("kmsfs: {e}");
                exit::FAILURE
            }
        },
        Command::Rewrap {
            cipherdir,
            to_key,
            remote,
        } => report(run_rewrap(
            kms_home_flag,
            &secret,
            &remote,
            &cipherdir,
            to_key,
        )),
        Command::Rekey {
            cipherdir,
            paths,
            remote,
        } => report(run_rekey(
            kms_home_flag,
            &secret,
            &remote,
            &cipherdir,
            &paths,
        )),
        Command::Mount {
            cipherdir,
            mountpoint,
            foreground,
            options,
            allow_other,
            log_file,
            threads,
            no_writeback_cache,
            no_prefetch,
            io_uring,
            xattrs,
            shared_cipherdir,
            idle,
            remote,
            cache,
        } => report(run_mount(
            kms_home_flag,
            &secret,
            (&remote, &cache),
            (
                !no_writeback_cache,
                xattrs,
                idle,
                io_uring == IoUring::Auto,
                !no_prefetch,
            ),
            cipherdir,
            mountpoint,
            foreground,
            options,
            allow_other,
            log_file,
            threads,
            shared_cipherdir,
        )),
        Command::Unmount { mountpoint } => report(crate::fs::mount::unmount(&mountpoint)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "kmsfs", &mut std::io::stdout());
            exit::OK
        }
        Command::Man { dir } => report(man_pages(dir.as_deref())),
    }
}

fn report(r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("kmsfs: {e}");
            exit::FAILURE
        }
    }
}

fn run_init_remote(
    home: &KmsHome,
    remote: &remote_args::RemoteArgs,
    url: &str,
    cipherdir: &std::path::Path,
    key_id: Option<&str>,
    names: crate::fs::mount::NameMode,
) -> Result<(), String> {
    let key_id = key_id.ok_or(
        "--kms-endpoint needs --key-id: the CMK (key id, ARN or alias) in that KMS to wrap the data keys",
    )?;
    let region = remote.region(None);
    let kms = remote.open(url, &region)?;
    let cfg = crate::fs::mount::init_remote(&kms, &region, cipherdir, key_id, names)?;
    remote_args::trust(&home.dir, &cfg.filesystem_id, kms.endpoint())?;
    println!(
        "created a kmsfs filesystem in {} (id {})\n  key: {} at {} (region {region})\nThe data keys of every file are wrapped by that key, which lives only in that KMS. This host accepted the endpoint in {}; another host mounts with --kms-endpoint {} once.\nMount it with: kmsfs mount {} MOUNTPOINT",
        cipherdir.display(),
        cfg.filesystem_id,
        cfg.key_id,
        kms.endpoint(),
        home.dir.display(),
        kms.endpoint(),
        cipherdir.display()
    );
    Ok(())
}

fn run_init(
    home: &KmsHome,
    secret: &secret::SecretArgs,
    cipherdir: &std::path::Path,
    key_id: Option<&str>,
    names: crate::fs::mount::NameMode,
) -> Result<(), String> {
    let kms = open_kms(home, secret, true)?;
    let cfg = crate::fs::mount::init(&kms, home, cipherdir, key_id, names)?;
    println!(
        "created a kmsfs filesystem in {} (id {})\n  key: {}\n  keystore: {}\nThe data keys of every file are wrapped by that key, which lives only in the keystore: without the keystore and its passphrase or key file, the data is lost. Back both up.\nMount it with: kmsfs mount {} MOUNTPOINT",
        cipherdir.display(),
        cfg.filesystem_id,
        cfg.key_id,
        home.keystore_path().display(),
        cipherdir.display()
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_mount(
    kms_home_flag: Option<PathBuf>,
    secret: &secret::SecretArgs,
    (remote, cache): (&remote_args::RemoteArgs, &remote_args::CacheArgs),
    (writeback_cache, xattrs, idle, io_uring, prefetch): (
        bool,
        bool,
        Option<std::time::Duration>,
        bool,
        bool,
    ),
    cipherdir: PathBuf,
    mountpoint: PathBuf,
    foreground: bool,
    options: Vec<String>,
    allow_other: bool,
    log_file: Option<PathBuf>,
    threads: Option<usize>,
    shared_cipherdir: bool,
) -> Result<(), String> {
    let cfg = crate::fs::config::Config::load(&cipherdir)?;
    let (kms, home) = fs_kms(kms_home_flag, secret, remote, cache, &cfg, &cipherdir)?;
    let mut read_only = false;
    let mut allow_other = allow_other;
    let mut rest = vec![];
    for o in options {
        match o.as_str() {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "allow_other" => allow_other = true,
            "" => {}
            _ => rest.push(o),
        }
    }
    let default_log = home.dir.join(format!("mount-{}.log", cfg.filesystem_id));
    let args = crate::fs::mount::MountArgs {
        cipherdir,
        mountpoint,
        foreground,
        read_only,
        allow_other,
        options: rest,
        log_file,
        threads: threads.unwrap_or_else(crate::fs::mount::default_threads),
        writeback_cache,
        prefetch,
        io_uring,
        xattrs,
        shared_cipherdir,
        kms_home: home.dir.clone(),
        idle,
    };
    crate::fs::mount::mount(kms, args, default_log)
}

/// `kmsfs man`: kmsfs.1 to stdout, or every page into `dir`.
fn man_pages(dir: Option<&std::path::Path>) -> Result<(), String> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        let mut out = std::io::stdout();
        return clap_mangen::Man::new(cmd)
            .render(&mut out)
            .map_err(|e| format!("writing the man page: {e}"));
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .map_err(|e| format!("cannot write the man pages into {}: {e}", dir.display()))
}

/// `kmsfs rekey`: every file named, or below a directory named.
fn run_rekey(
    kms_home_flag: Option<PathBuf>,
    secret: &secret::SecretArgs,
    remote: &remote_args::RemoteArgs,
    cipherdir: &std::path::Path,
    paths: &[String],
) -> Result<(), String> {
    let (b, _lock, caller, ()) =
        offline(kms_home_flag, secret, remote, cipherdir, true, |_, _, _| {
            Ok(())
        })
        .map_err(|e| e.replace("to repair", "to rekey"))?;
    let mut files = vec![];
    let mut dirs = std::collections::BTreeSet::new();
    let mut stack: Vec<String> = paths
        .iter()
        .map(|p| p.trim_matches('/').to_string())
        .collect();
    while let Some(p) = stack.pop() {
        let st = b
            .tree
            .lstat(&p)
            .map_err(|e| format!("{}: {e}", if p.is_empty() { "/" } else { &p }))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            for (name, _) in b.tree.entries(&p).map_err(|e| format!("{p}: {e}"))? {
                if !crate::fs::names::is_internal(&p, &name) {
                    stack.push(if p.is_empty() {
                        name
                    } else {
                        format!("{p}/{name}")
                    });
                }
            }
            dirs.insert(p);
        } else if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            dirs.insert(p.rsplit_once('/').map_or("", |(d, _)| d).to_string());
            files.push(p);
        }
    }
    // What a rekey killed before its rename left: hidden copies, removed.
    for d in &dirs {
        for (name, _) in b.tree.entries(d).unwrap_or_default() {
            if name.starts_with(crate::fs::rekey::TEMP_PART) {
                let rel = if d.is_empty() {
                    name.clone()
                } else {
                    format!("{d}/{name}")
                };
                match b.tree.unlink(&rel) {
                    Ok(()) => eprintln!("kmsfs: removed {rel}, a copy an interrupted rekey left"),
                    Err(e) => eprintln!(
                        "kmsfs: cannot remove {rel}, a copy an interrupted rekey left: {e}"
                    ),
                }
            }
        }
    }
    files.sort();
    let mut meter = fsck_cmd::Meter::new();
    let (mut done, mut bytes, mut failed) = (0u64, 0u64, 0u64);
    for (i, f) in files.iter().enumerate() {
        match crate::fs::rekey::rekey_file(&b, f, &caller) {
            Ok(n) => {
                done += 1;
                bytes += n;
            }
            Err(e) => {
                failed += 1;
                eprintln!("kmsfs: {e}");
            }
        }
        meter.tick(&crate::fs::fsck::Progress {
            nodes: i as u64 + 1,
            bytes,
            path: f,
        });
    }
    let took = meter.finish();
    println!(
        "rekeyed {done} file(s), {:.1} MB, in {:.2} s{}",
        bytes as f64 / 1e6,
        took.as_secs_f64(),
        if failed > 0 {
            format!("; {failed} not rekeyed (above)")
        } else {
            String::new()
        }
    );
    if failed > 0 {
        return Err(format!("{failed} file(s) not rekeyed"));
    }
    Ok(())
}

/// `kmsfs rewrap`: every blob under the target key's newest material; by
/// the mount itself when the cipherdir is mounted (its control socket),
/// else here under the cipherdir's lock.
fn run_rewrap(
    kms_home_flag: Option<PathBuf>,
    secret: &secret::SecretArgs,
    remote: &remote_args::RemoteArgs,
    cipherdir: &std::path::Path,
    to_key: Option<String>,
) -> Result<(), String> {
    if let Some(sum) = rewrap_online(cipherdir, to_key.clone())? {
        return rewrap_summary(&sum);
    }
    let target_arn =
        |link: &crate::fs::mount::KmsLink, caller: &Caller, cfg: &crate::fs::config::Config| {
            crate::fs::rewrap::target(link.backend(), caller, to_key.as_deref(), &cfg.key_id)
        };
    let (b, _lock, caller, arn) =
        offline(kms_home_flag, secret, remote, cipherdir, true, target_arn)
            .map_err(|e| e.replace("to repair", "to rewrap"))?;
    let mut meter = fsck_cmd::Meter::new();
    let r = crate::fs::rewrap::Rewrap::new(&b, None, caller, arn.clone())
        .run(&mut |p| meter.tick(p))?;
    let took = meter.finish();
    rewrap_summary(&crate::fs::control::Summary::of(arn, r, took))
}

/// Asks the mount of `cipherdir` to re-wrap; `None` when none answers.
fn rewrap_online(
    cipherdir: &std::path::Path,
    to_key: Option<String>,
) -> Result<Option<crate::fs::control::Summary>, String> {
    use crate::fs::control::{Reply, Request, ask};
    let cfg = crate::fs::config::Config::load(cipherdir)?;
    let canonical = std::fs::canonicalize(cipherdir)
        .map_err(|e| format!("cipherdir {}: {e}", cipherdir.display()))?;
    let req = Request::Rewrap {
        cipherdir: canonical,
        to_key,
    };
    let mut meter: Option<fsck_cmd::Meter> = None;
    let mut out: Option<Result<crate::fs::control::Summary, String>> = None;
    let asked = ask(&cfg.filesystem_id, &req, |r| {
        let m = meter.get_or_insert_with(fsck_cmd::Meter::new);
        match r {
            Reply::Progress { nodes, path } => m.tick(&crate::fs::fsck::Progress {
                nodes,
                bytes: 0,
                path: &path,
            }),
            Reply::Done(sum) => out = Some(Ok(sum)),
            Reply::Error(e) => out = Some(Err(format!("the mount: {e}"))),
        }
    })?;
    if let Some(mut m) = meter {
        m.finish();
    }
    match (asked, out) {
        (None, _) => Ok(None),
        (Some(()), Some(r)) => r.map(Some),
        (Some(()), None) => Err("the mount gave no answer (see its log)".into()),
    }
}

fn rewrap_summary(r: &crate::fs::control::Summary) -> Result<(), String> {
    for f in &r.failed {
        eprintln!("kmsfs: not re-wrapped: {f}");
    }
    println!(
        "re-wrapped under {}: {} file data keys, {} hard-link entries, {} symlinks and {} of the filesystem's own blobs, in {:.2} s{}{}",
        r.arn,
        r.files,
        r.links,
        r.symlinks,
        r.own,
        r.seconds,
        if r.moved > 0 {
            format!(
                "; {} renamed or removed through the mount meanwhile (a rename re-wraps what it moves)",
                r.moved
            )
        } else {
            String::new()
        },
        if r.failed.is_empty() {
            String::new()
        } else {
            format!(
                "; {} not re-wrapped (above): run it again once they are fixed",
                r.failed.len()
            )
        }
    );
    if !r.failed.is_empty() {
        return Err(format!("{} blob(s) not re-wrapped", r.failed.len()));
    }
    Ok(())
}

/// The cipherdir for fsck, rekey and rewrap, unmounted (with `exclusive`,
/// its lock held: no mount meanwhile), acting as the mount does towards the
/// KMS; `before` looks at the KMS and the config first.
fn offline<T>(
    kms_home_flag: Option<PathBuf>,
    secret: &secret::SecretArgs,
    remote: &remote_args::RemoteArgs,
    cipherdir: &std::path::Path,
    exclusive: bool,
    before: impl FnOnce(
        &crate::fs::mount::KmsLink,
        &Caller,
        &crate::fs::config::Config,
    ) -> Result<T, String>,
) -> Result<
    (
        crate::fs::backing::Backing,
        Option<std::fs::File>,
        Caller,
        T,
    ),
    String,
> {
    let cfg = crate::fs::config::Config::load(cipherdir)?;
    let cache = remote_args::CacheArgs {
        key_cache_seconds: 0,
        key_cache_uses: 0,
        key_readahead: false,
    };
    let (link, _) = fs_kms(kms_home_flag, secret, remote, &cache, &cfg, cipherdir)?;
    let caller = Caller::this_process(Via::Mount);
    let t = before(&link, &caller, &cfg)?;
    let (b, lock) = crate::fs::mount::offline_backing(link, cipherdir, &caller, exclusive)?;
    Ok((b, lock, caller, t))
}

/// `kmsfs fsck`: whether the cipherdir is clean.
fn run_fsck(
    kms_home_flag: Option<PathBuf>,
    secret: &secret::SecretArgs,
    remote: &remote_args::RemoteArgs,
    cipherdir: &std::path::Path,
    json: bool,
    repair: bool,
) -> Result<bool, String> {
    let (backing, _lock, caller, ()) = offline(
        kms_home_flag,
        secret,
        remote,
        cipherdir,
        repair,
        |_, _, _| Ok(()),
    )?;
    let mut meter = fsck_cmd::Meter::new();
    let report = crate::fs::fsck::Fsck::new(&backing, caller, repair).run(&mut |p| meter.tick(p));
    let took = meter.finish();
    Ok(fsck_cmd::print(cipherdir, &report, took, json))
}

/// `kmsfs names`: paths mapped through the filesystem's name cipher.
fn run_names(
    kms_home_flag: Option<PathBuf>,
    secret: &secret::SecretArgs,
    remote: &remote_args::RemoteArgs,
    cipherdir: &std::path::Path,
    paths: &[String],
    decrypt: bool,
) -> Result<(), String> {
    let cfg = crate::fs::config::Config::load(cipherdir)?;
    if !cfg.encrypted_names() {
        return Err(format!(
            "{} keeps its names in plaintext (made with --plaintext-names): its paths are the same in the mount and the cipherdir",
            cipherdir.display()
        ));
    }
    let cache = remote_args::CacheArgs {
        key_cache_seconds: 0,
        key_cache_uses: 0,
        key_readahead: false,
    };
    let (link, _) = fs_kms(kms_home_flag, secret, remote, &cache, &cfg, cipherdir)?;
    let caller = Caller::this_process(Via::Mount);
    let cipher = crate::fs::mount::name_cipher(link.backend(), &caller, &cfg)?
        .expect("a filesystem with encrypted names has a name cipher");
    let mut tree = crate::fs::tree::Tree::open(cipherdir)
        .map_err(|e| format!("cannot open {}: {e}", cipherdir.display()))?;
    tree.set_names(crate::fs::names::Names::encrypted(cipher));
    let mut failed = false;
    let mut stdout = std::io::stdout().lock();
    for p in paths {
        let p = p.trim_matches('/');
        let r = if decrypt {
            crate::fs::names::decrypt_path(&tree, p)
        } else if crate::fs::tree::is_clean(p) {
            Ok(tree.names().path(p).into_owned())
        } else {
            Err(format!("{p:?} is not a clean relative path"))
        };
        match r {
            // A reader that stopped (`| head`) ends the listing, quietly.
            Ok(out) => {
                if std::io::Write::write_fmt(&mut stdout, format_args!("{out}\n")).is_err() {
                    return Ok(());
                }
            }
            Err(e) => {
                eprintln!("kmsfs: {p}: {e}");
                failed = true;
            }
        }
    }
    if failed {
        return Err("some paths could not be mapped".into());
    }
    Ok(())
}

/// The KMS a filesystem's keys are in (and the KMS home, for the state
/// kept beside it): the remote one its config names, or the local one.
fn fs_kms(
    kms_home_flag: Option<PathBuf>,
    secret: &secret::SecretArgs,
    remote: &remote_args::RemoteArgs,
    cache: &remote_args::CacheArgs,
    cfg: &crate::fs::config::Config,
    cipherdir: &std::path::Path,
) -> Result<(crate::fs::mount::KmsLink, KmsHome), String> {
    // The KMS home: --kms-home, then $KMSFS_HOME, then where init recorded it.
    let dir = kms_home_flag
        .or_else(|| {
            std::env::var_os("KMSFS_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
        .or(cfg.kms_home.clone())
        .map_or_else(KmsHome::default_dir, Ok)?;
    let home = KmsHome::new(dir);
    let kms = match &cfg.kms_endpoint {
        Some(url) => {
            remote_args::check_trusted(
                &home.dir,
                &cfg.filesystem_id,
                url,
                remote.kms_endpoint.as_deref(),
            )?;
            if cache.key_readahead && (cache.key_cache_seconds == 0 || cache.key_cache_uses == 0) {
                return Err(
                    "--key-readahead keeps keys in the data-key cache, which --key-cache-seconds 0 or --key-cache-uses 0 turns off: drop one of them".into(),
                );
            }
            let region = remote.region(cfg.kms_region.as_deref());
            let audit = home
                .dir
                .join(format!("cache-audit-{}.log", cfg.filesystem_id));
            let kms = remote.open(url, &region)?.with_cache(
                std::time::Duration::from_secs(cache.key_cache_seconds),
                cache.key_cache_uses,
                &audit,
            )?;
            let kms = kms.with_readahead(cache.key_readahead);
            crate::fs::mount::KmsLink::Remote(Box::new(kms))
        }

        None if remote.kms_endpoint.is_some() => {
            return Err(format!(
                "{} keeps its keys in the local KMS home, not a remote KMS: drop --kms-endpoint",
                cipherdir.display()
            ));
        }
        None if cache.key_readahead => {
            return Err(format!(
                "{} keeps its keys in the local KMS home, which unwraps them without a round trip: --key-readahead is for filesystems whose keys live in a remote KMS; drop it",
                cipherdir.display()
            ));
        }
        None => crate::fs::mount::KmsLink::Local(Box::new(open_kms(&home, secret, false)?)),
    };
    Ok((kms, home))
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
    if let kms_cmd::KmsCommand::Serve(a) = op {
        let opts = crate::server::ServeOptions {
            listen: a.listen,
            unix: a.unix,
            max_rate: a.max_rate,
            max_connections: a.max_connections,
            insecure_http: a.insecure_http,
            tls: a.tls_cert.zip(a.tls_key),
        };
        return match crate::server::serve(kms, opts) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("kmsfs: {e}");
                exit::FAILURE
            }
        };
    }
    let caller = Caller::this_process(Via::Cli);
    print_result(&name, output, query, kms_cmd::run(&kms, &caller, op))
}

/// `kmsfs kms --endpoint-url URL OP`: the same request, sent to a remote KMS.
fn run_kms_remote(
    url: &str,
    remote: &remote_args::ClientArgs,
    output: &str,
    query: Option<&str>,
    op: kms_cmd::KmsCommand,
) -> i32 {
    let name = kms_cmd::operation_name(&op);
    let client = match remote.client(url) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kmsfs: {e}");
            return exit::USAGE;
        }
    };
    let req = match kms_cmd::request(op) {
        Ok(r) => r,
        Err(e) => return print_result(&name, output, query, Err(e)),
    };
    match client.call_verbatim(&req) {
        Ok(v) => {
            // AWS answers an operation without output with `{}`.
            let v = if v.as_object().is_some_and(|o| o.is_empty()) {
                serde_json::Value::Null
            } else {
                v
            };
            print_result(&name, output, query, Ok(v))
        }
        Err(crate::remote::RemoteError::Api { code, message }) => {
            eprintln!("An error occurred ({code}) when calling the {name} operation: {message}");
            exit::SERVICE_ERROR
        }
        Err(crate::remote::RemoteError::Unreachable(m)) => {
            eprintln!("kmsfs: {m}");
            exit::FAILURE
        }
    }
}

fn print_result(
    name: &str,
    output: &str,
    query: Option<&str>,
    r: Result<serde_json::Value, kms_cmd::CmdError>,
) -> i32 {
    match r {
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
            let text = awsargs::render(&v, output);
            // Text output of an empty list is nothing at all, as in the AWS CLI.
            if !text.is_empty() {
                println!("{text}");
            }
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
        audit_cmd::AuditCommand::Verify { from_record } => secret
            .resolve(home, false)
            .and_then(|s| home.open(&s).map_err(|e| e.message))
            .and_then(|o: crate::kms::keystore::Opened| {
                let dir = home.dir_file().map_err(|e| e.message)?;
                audit_cmd::verify(
                    &path,
                    &dir,
                    &o.keys.audit,
                    o.state.audit_anchor.as_ref(),
                    *from_record,
                )
            }),
        audit_cmd::AuditCommand::Rotate => {
            open_kms(home, secret, false).and_then(|kms| match kms.rotate_audit() {
                Ok(Some(name)) => {
                    println!("rotated the audit log to {}", home.dir.join(name).display());
                    Ok(true)
                }
                Ok(None) => {
                    println!(
                        "the audit log {} is empty: nothing to rotate",
                        path.display()
                    );
                    Ok(true)
                }
                Err(e) => Err(format!(
                    "cannot rotate the audit log {}: {e}",
                    path.display()
                )),
            })
        }
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
