//! The command line's help and usage errors, through the real binary.

use clap::CommandFactory;
use std::process::{Command, Output};

fn kmsfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kmsfs"))
        .args(args)
        .env_remove("KMSFS_HOME")
        .env_remove("KMSFS_KEY_FILE")
        .env_remove("KMSFS_PASSPHRASE_FILE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every subcommand path, e.g. `["kms", "create-key"]`, without clap's own
/// `help` subcommands.
fn paths(cmd: &clap::Command, prefix: &[String], out: &mut Vec<Vec<String>>) {
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let mut path = prefix.to_vec();
        path.push(sub.get_name().to_string());
        paths(sub, &path, out);
        out.push(path);
    }
}

/// The entries of the "Options:" and "Arguments:" sections: (spec, help),
/// whether clap put the help on the spec's line or under it.
fn entries(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![];
    let mut in_section = false;
    for line in help.lines() {
        if !line.starts_with(' ') {
            in_section = matches!(line, "Options:" | "Arguments:");
            continue;
        }
        if !in_section {
            continue;
        }
        let text = line.trim_start();
        let indent = line.len() - text.len();
        if indent <= 6 && text.starts_with(['-', '<', '[']) {
            let (spec, rest) = text.split_once("  ").unwrap_or((text, ""));
            out.push((spec.to_string(), rest.trim().to_string()));
        } else if let Some(last) = out.last_mut() {
            last.1.push_str(text.trim());
        }
    }
    out
}

#[test]
fn every_command_and_option_has_help() {
    let mut all = vec![];
    paths(&kmsfs::cli::Cli::command(), &[], &mut all);
    assert!(all.len() > 40, "{all:?}");
    let mut missing = vec![];
    for path in std::iter::once(vec![]).chain(all) {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = kmsfs(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let help = stdout(&o);
        let first = help.lines().next().unwrap_or("");
        if first.trim().is_empty() || first.starts_with("Usage:") {
            missing.push(format!("kmsfs {}: no description", path.join(" ")));
        }
        let found = entries(&help);
        assert!(
            found.iter().any(|(spec, _)| spec.contains("--help")),
            "{args:?}: options not found in\n{help}"
        );
        for (spec, text) in found {
            if text.is_empty() {
                missing.push(format!("kmsfs {} {spec}: no help", path.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn aws_descriptions() {
    let o = kmsfs(&["kms", "--help"]);
    let help = stdout(&o);
    for line in [
        "create-key                           Creates a unique customer managed KMS key",
        "decrypt                              Decrypts ciphertext that was encrypted by a KMS key",
    ] {
        assert!(help.contains(line), "{help}");
    }
    // A comment on the struct the data key commands share is not their help.
    assert!(!help.contains("share"), "{help}");
}

#[test]
fn unmount_lists_only_what_it_uses_and_still_takes_global_options() {
    for args in [&["unmount", "--help"][..], &["help", "unmount"]] {
        let help = stdout(&kmsfs(args));
        assert!(help.contains("<MOUNTPOINT>"), "{help}");
        for unused in ["passphrase", "key-file", "extpass", "kms-home"] {
            assert!(
                !help.contains(unused),
                "{args:?} mentions {unused}:\n{help}"
            );
        }
    }
    let help = stdout(&kmsfs(&["audit", "show", "--help"]));
    assert!(
        !help.contains("passphrase") && help.contains("--kms-home"),
        "{help}"
    );
    // Commands that use them still list them.
    for args in [&["mount", "--help"][..], &["kms", "encrypt", "--help"]] {
        let help = stdout(&kmsfs(args));
        assert!(help.contains("--key-file") && help.contains("--passphrase-file"));
    }
    // Given before the subcommand, as scripts and the mount tests do, or after it.
    let dir = tempfile::tempdir().unwrap();
    let (home, key) = (dir.path().join("home"), dir.path().join("root.key"));
    std::fs::write(&key, [7u8; 32]).unwrap();
    let (home, key, mnt) = (
        home.to_str().unwrap(),
        key.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    );
    for args in [
        &["--kms-home", home, "--key-file", key, "unmount", mnt][..],
        &["unmount", "--kms-home", home, "--passphrase-file", key, mnt],
    ] {
        let o = kmsfs(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("is not a kmsfs mount"),
            "{}",
            stderr(&o)
        );
    }
}

#[test]
fn bad_times_are_usage_errors_that_say_what_is_expected() {
    for args in [
        &["audit", "show", "--since", "someday"][..],
        &["audit", "show", "--until", "2026-13-01"],
        &["audit", "show", "--uid", "abc"],
        &[
            "kms",
            "import-key-material",
            "--key-id",
            "k",
            "--import-token",
            "eA==",
            "--encrypted-key-material",
            "eA==",
            "--valid-to",
            "soon",
        ],
    ] {
        let o = kmsfs(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
    let err = stderr(&kmsfs(&["audit", "show", "--since", "someday"]));
    assert!(
        err.contains("'someday'") && err.contains("RFC 3339") && err.contains("2026-01-31"),
        "{err}"
    );
    let o = kmsfs(&["kms", "list-keys", "--output", "yaml"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn secret_file_variables_empty_means_unset_and_stay_out_of_usage_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (home, key) = (dir.path().join("home"), dir.path().join("root.key"));
    std::fs::write(&key, [7u8; 32]).unwrap();
    let run = |args: &[&str], var: &str, value: &std::ffi::OsStr| {
        Command::new(env!("CARGO_BIN_EXE_kmsfs"))
            .arg("--kms-home")
            .arg(&home)
            .args(args)
            .env_remove("KMSFS_HOME")
            .env_remove("KMSFS_KEY_FILE")
            .env_remove("KMSFS_PASSPHRASE_FILE")
            .env(var, value)
            .output()
            .unwrap()
    };
    let key_flag = ["--key-file", key.to_str().unwrap()];
    let o = run(
        &[&key_flag[..], &["kms", "create-key"]].concat(),
        "KMSFS_PASSPHRASE_FILE",
        "".as_ref(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for var in ["KMSFS_PASSPHRASE_FILE", "KMSFS_KEY_FILE"] {
        // Empty is unset: the command goes on, and fails only for want of the key file.
        let o = run(&["kms", "list-keys"], var, "".as_ref());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{var}=: {err}");
        assert!(!err.contains("a value is required"), "{var}=: {err}");
        assert!(err.contains("sealed with a key file"), "{var}=: {err}");
        let o = run(
            &[&key_flag[..], &["kms", "list-keys"]].concat(),
            var,
            "".as_ref(),
        );
        assert!(o.status.success(), "{var}=: {}", stderr(&o));

        // A variable that is set does not show up in usage lines as if typed.
        let o = run(&["kms", "encrypt"], var, key.as_os_str());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        let usage = err.lines().find(|l| l.starts_with("Usage:")).unwrap();
        assert_eq!(
            usage, "Usage: kmsfs kms encrypt --key-id <KEY_ID> --plaintext <PLAINTEXT>",
            "{var}"
        );
    }
    // And the variable still works when set.
    let o = run(&["kms", "list-keys"], "KMSFS_KEY_FILE", key.as_os_str());
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    let o = kmsfs(&["completions", "bash"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let bash = stdout(&o);
    assert!(bash.contains("_kmsfs()"), "a bash completion function");
    for word in ["fsck", "mount", "create-key", "--audit-max-size", "--idle"] {
        assert!(bash.contains(word), "{word} is completed");
    }
    let o = kmsfs(&["completions", "zsh"]);
    assert!(o.status.success() && stdout(&o).starts_with("#compdef kmsfs"));
    let o = kmsfs(&["man"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let page = stdout(&o);
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq \\(aq") || page.contains(".TH kmsfs 1"),
        "roff: {}",
        &page[..200.min(page.len())]
    );
    assert!(page.contains("fsck"));
    let d = tempfile::tempdir().unwrap();
    let o = kmsfs(&["man", d.path().join("man1").to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for p in [
        "kmsfs.1",
        "kmsfs-mount.1",
        "kmsfs-fsck.1",
        "kmsfs-kms-create-key.1",
        "kmsfs-audit-verify.1",
    ] {
        let text = std::fs::read_to_string(d.path().join("man1").join(p)).unwrap_or_default();
        assert!(text.contains(".TH"), "{p} is a man page");
    }
    // A shell that does not exist is a usage error, exit 2.
    let o = kmsfs(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("invalid value 'tcsh'"),
        "{}",
        stderr(&o)
    );
}
