//! `kmsfs audit verify` and `kmsfs audit show`.

use crate::kms::audit;
use crate::kms::audit_query::{Filter, table_row};
use crate::kms::clock::parse_time;
use clap::Subcommand;
use std::io::{BufRead, Write};
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the MAC chain; names the first line that was edited, deleted,
    /// inserted or reordered. Needs the root key.
    Verify,
    /// Print records (JSON lines, or a table) that match every filter given.
    Show {
        /// Key id, key ARN or the key reference the caller used.
        #[arg(long)]
        key: Option<String>,
        /// Event name, e.g. Decrypt (case-insensitive).
        #[arg(long)]
        event: Option<String>,
        /// RFC 3339 time, YYYY-MM-DD, or Unix seconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Only failed calls.
        #[arg(long)]
        errors: bool,
        #[arg(long)]
        uid: Option<u32>,
        /// File path inside a filesystem (kmsfs:path); end with / for a directory.
        #[arg(long)]
        path: Option<String>,
        /// One aligned line per record instead of JSON.
        #[arg(long)]
        table: bool,
    },
}

fn time_arg(flag: &str, v: &Option<String>) -> Result<Option<i64>, String> {
    v.as_ref()
        .map(|s| {
            parse_time(s).ok_or_else(|| {
                format!("{flag} {s:?} is not an RFC 3339 time, a date or Unix seconds")
            })
        })
        .transpose()
}

/// Prints matching records; returns how many matched.
pub fn show(path: &Path, cmd: &AuditCommand) -> Result<u64, String> {
    let AuditCommand::Show {
        key,
        event,
        since,
        until,
        errors,
        uid,
        path: fpath,
        table,
    } = cmd
    else {
        unreachable!("show is called with Show");
    };
    let filter = Filter {
        key: key.clone(),
        event: event.clone(),
        since: time_arg("--since", since)?,
        until: time_arg("--until", until)?,
        errors_only: *errors,
        uid: *uid,
        path: fpath.clone(),
    };
    let f = std::fs::File::open(path)
        .map_err(|e| format!("cannot open the audit log {}: {e}", path.display()))?;
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    let mut n = 0;
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            eprintln!(
                "kmsfs: line {} of {} is not JSON; run `kmsfs audit verify`",
                i + 1,
                path.display()
            );
            continue;
        };
        if filter.matches(&v) {
            n += 1;
            let text = if *table { table_row(&v) } else { line };
            if writeln!(out, "{text}").is_err() {
                break; // reader went away (e.g. `| head`)
            }
        }
    }
    Ok(n)
}

pub fn verify(path: &Path, key: &crate::crypto::Key256) -> Result<bool, String> {
    let r = audit::verify(path, key)
        .map_err(|e| format!("cannot read the audit log {}: {e}", path.display()))?;
    match r.first_bad {
        None => {
            println!(
                "audit log {}: {} records, chain intact",
                path.display(),
                r.records
            );
            Ok(true)
        }
        Some((line, why)) => {
            println!(
                "audit log {}: line {line} fails verification: {why} ({} records before it verified)",
                path.display(),
                r.records
            );
            Ok(false)
        }
    }
}
