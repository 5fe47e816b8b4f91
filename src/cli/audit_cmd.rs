//! `kmsfs audit verify` and `kmsfs audit show`.

use super::awsargs::when_arg;
use crate::kms::audit_chain::{Anchor, DIGEST_EVENT, STARTED_EVENT};
use crate::kms::audit_query::Filter;
use crate::kms::audit_trail as trail;
use crate::kms::audit_verify::verify_trail;
use clap::Subcommand;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check the whole trail (the log and its rotated files, compressed or not) against its MAC chain, its digests and the keystore's anchor; names the first problem. Needs the root key.
    Verify {
        /// Start at record N, for a trail whose older files were pruned on purpose (N must start a file).
        #[arg(long, value_name = "N", default_value_t = 1)]
        from_record: u64,
    },
    /// Rotate the audit log now: close it with a digest, rename it to audit.log.FIRST-LAST and start a new file that continues the chain.
    Rotate,
    /// Print records (JSON lines, or a table) that match every filter given.
    Show {
        /// Only records of this key: key id, key ARN or the key reference the caller used.
        #[arg(long)]
        key: Option<String>,
        /// Only this event, e.g. Decrypt (case-insensitive). The trail's own records (AuditDigest, LogFileStarted) show only when asked for by name.
        #[arg(long)]
        event: Option<String>,
        /// Only records at or after TIME: RFC 3339, YYYY-MM-DD, Unix seconds, or relative as journalctl takes it (-1h, "2h ago", today, yesterday).
        #[arg(long, value_name = "TIME", value_parser = when_arg, allow_hyphen_values = true)]
        since: Option<i64>,
        /// Only records at or before TIME: the same forms as --since.
        #[arg(long, value_name = "TIME", value_parser = when_arg, allow_hyphen_values = true)]
        until: Option<i64>,
        /// Only failed calls.
        #[arg(long)]
        errors: bool,
        /// Only calls made by this user id.
        #[arg(long)]
        uid: Option<u32>,
        /// Only records of this file path inside a filesystem (kmsfs:path); end with / for a directory.
        #[arg(long)]
        path: Option<String>,
        /// An aligned table, one line per record, instead of JSON lines.
        #[arg(long)]
        table: bool,
    },
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
        since: *since,
        until: *until,
        errors_only: *errors,
        uid: *uid,
        path: fpath.clone(),
    };
    let out = std::io::stdout();
    let mut out = std::io::BufWriter::new(out.lock());
    if !*table {
        return for_each_match(path, &filter, true, |line, _| {
            writeln!(out, "{line}").is_ok() // false: the reader went away (`| head`)
        });
    }
    // The table streams too, in two passes over the file: one for the
    // column widths, one to print. Memory stays small however long the log.
    let mut widths = TABLE_HEADER.map(|h| h.chars().count());
    let n = for_each_match(path, &filter, true, |_, v| {
        for (w, cell) in widths.iter_mut().zip(table_cells(v)) {
            *w = (*w).max(cell.chars().count());
        }
        true
    })?;
    if n == 0 {
        return Ok(0);
    }
    if write_row(&mut out, &TABLE_HEADER.map(String::from), &widths).is_err() {
        return Ok(n);
    }
    for_each_match(path, &filter, false, |_, v| {
        write_row(&mut out, &table_cells(v), &widths).is_ok()
    })?;
    Ok(n)
}

/// Calls `f` with each line of the trail (oldest file first) that matches
/// and its JSON, until it returns false; returns how many matched. Lines
/// that are not JSON are reported (when `report`) and skipped.
fn for_each_match(
    path: &std::path::Path,
    filter: &Filter,
    report: bool,
    mut f: impl FnMut(&str, &Value) -> bool,
) -> Result<u64, String> {
    let (dir, base) = trail::dir_and_name(path).map_err(|e| {
        format!(
            "cannot open the audit log's directory for {}: {e}",
            path.display()
        )
    })?;
    let files = trail::files(&dir, &base)
        .map_err(|e| format!("cannot list the audit trail of {}: {e}", path.display()))?;
    let own_events = filter.event.as_deref().is_some_and(|e| {
        e.eq_ignore_ascii_case(DIGEST_EVENT) || e.eq_ignore_ascii_case(STARTED_EVENT)
    });
    let mut n = 0;
    let mut buf = Vec::new();
    for t in files {
        let shown = Path::new(&t.name).display().to_string();
        let file = trail::open_at(&dir, &t.name, libc::O_RDONLY)
            .and_then(trail::reader)
            .map_err(|e| format!("cannot open the audit log file {shown}: {e}"))?;
        let mut r = file;
        let mut i = 0u64;
        while let Some(whole) =
            trail::next_line(&mut *r, &mut buf).map_err(|e| format!("cannot read {shown}: {e}"))?
        {
            i += 1;
            let v = std::str::from_utf8(&buf)
                .ok()
                .filter(|_| whole)
                .and_then(|l| serde_json::from_str::<Value>(l).ok().map(|v| (l, v)));
            let Some((line, v)) = v else {
                if report {
                    eprintln!("kmsfs: line {i} of {shown} is not JSON; run `kmsfs audit verify`");
                }
                continue;
            };
            if !own_events && v["eventType"] == "AwsServiceEvent" {
                continue;
            }
            if filter.matches(&v) {
                n += 1;
                if !f(line, &v) {
                    return Ok(n);
                }
            }
        }
    }
    Ok(n)
}

/// One table row: columns two spaces apart, the last one unpadded.
fn write_row<const N: usize>(
    out: &mut impl Write,
    row: &[String; N],
    widths: &[usize; N],
) -> std::io::Result<()> {
    let mut line = String::new();
    for (i, cell) in row.iter().enumerate() {
        if i + 1 == N {
            line.push_str(cell);
        } else {
            let pad = widths[i].saturating_sub(cell.chars().count());
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', pad + 2));
        }
    }
    line.push('\n');
    out.write_all(line.as_bytes())
}

const TABLE_HEADER: [&str; 6] = ["TIME", "EVENT", "CALLER", "KEY", "CONTEXT", "OUTCOME"];

/// One record's cells, escaped: the process name and the context (file
/// paths) are chosen by whoever made the call.
fn table_cells(r: &Value) -> [String; 6] {
    let s = |v: &Value| escape(v.as_str().unwrap_or("-")).into_owned();
    let id = &r["userIdentity"];
    let caller = format!(
        "{}({}) pid {}",
        escape(id["principalId"].as_str().unwrap_or("?")),
        escape(id["processName"].as_str().unwrap_or("?")),
        id["pid"].as_u64().map_or("?".into(), |p| p.to_string())
    );
    let key = match r["resources"][0]["ARN"].as_str() {
        Some(arn) => escape(arn.rsplit('/').next().unwrap_or(arn)).into_owned(),
        None => s(&r["requestParameters"]["keyId"]),
    };
    // `,` and `=` escaped too, so that a path cannot pass for another pair.
    let pair_part = |t: &str| escape(t).replace(',', "\\,").replace('=', "\\=");
    let context = match &r["requestParameters"]["encryptionContext"] {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{}={}", pair_part(k), pair_part(v.as_str().unwrap_or(""))))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    };
    let mut outcome = match r["errorCode"].as_str() {
        Some(c) => escape(c).into_owned(),
        None => "ok".into(),
    };
    // A coalesced record stands for several identical calls.
    if let Some(n) = r["coalesced"]["count"].as_u64() {
        let _ = write!(outcome, " ×{n}");
    }
    [
        s(&r["eventTime"]),
        s(&r["eventName"]),
        caller,
        key,
        context,
        outcome,
    ]
}

/// Columns two spaces apart, each as wide as its widest cell (the last one
/// unpadded): `write_row` over rows held in memory, for the unit tests.
#[cfg(test)]
fn format_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = vec![];
    for row in std::iter::once(&header.map(String::from)).chain(rows) {
        write_row(&mut out, row, &widths).expect("writes to a Vec");
    }
    String::from_utf8(out).expect("UTF-8 in, UTF-8 out")
}

/// Text made safe for a terminal: control characters (newline, tab, escape
/// sequences), backslash itself, and invisible formatting characters (bidi
/// overrides, zero-width spaces, line separators) are written as escapes, so
/// a name cannot start a forged line, move the cursor or reorder what is
/// shown around it.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii() && needs_escape(c) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control() // C0, DEL and C1 (which includes the 8-bit CSI)
        || matches!(c,
            '\u{ad}' | '\u{61c}' | '\u{180e}' | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}')
}

/// `kmsfs audit verify`: prints what was proven, or the first problem.
pub fn verify(
    path: &Path,
    dir: &std::fs::File,
    key: &crate::crypto::Key256,
    anchor: Option<&Anchor>,
    from: u64,
) -> Result<bool, String> {
    let base = path.file_name().unwrap_or_default();
    let r = verify_trail(dir, base, key, anchor, from)
        .map_err(|e| format!("cannot read the audit trail {}: {e}", path.display()))?;
    let span = if r.records == 0 {
        "no records".to_string()
    } else {
        format!(
            "records {} to {} in {} file(s)",
            r.first_seq, r.last_seq, r.files
        )
    };
    if let Some(p) = &r.problem {
        let at = match &p.at {
            Some((file, line)) => format!("{file} line {line}: "),
            None => String::new(),
        };
        println!(
            "audit trail {}: {at}{} ({span} verified before it)",
            path.display(),
            p.what
        );
        return Ok(false);
    }
    let mut msg = format!(
        "audit trail {}: {span}, chain and {} digest(s) intact",
        path.display(),
        r.digests
    );
    match &r.anchored {
        Some(a) if a.seq == r.last_seq => {
            let _ = write!(msg, "; proven complete up to the last record by the keystore's anchor ({})", a.time);
        }
        Some(a) => {
            let _ = write!(
                msg,
                "; proven complete up to record {} by the keystore's anchor ({}); records {} to {} were written after it",
                a.seq,
                a.time,
                a.seq + 1,
                r.last_seq
            );
        }
        None if r.records > 0 => msg.push_str("; no anchor in the keystore covers it yet, so the newest records are not proven complete"),
        None => {}
    }
    println!("{msg}");
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escape_shows_control_and_invisible_characters() {
        assert!(matches!(escape("projects/x.txt"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape("\x1b[2J\x07\x7f\0"), "\\x1b[2J\\x07\\x7f\\x00");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("invoice\u{202e}fdp.exe"), "invoice\\u{202e}fdp.exe");
        assert_eq!(escape("a\u{200b}b\u{2028}"), "a\\u{200b}b\\u{2028}");
        // A backslash typed in a name cannot pass for an escape.
        assert_eq!(escape("a\\nb"), "a\\\\nb");
        assert_eq!(escape("日本語 é"), "日本語 é");
    }

    fn rec(path: &str, process: &str, error: Option<&str>) -> Value {
        let mut r = json!({
            "eventTime": "2026-11-29T10:00:00Z", "eventName": "Decrypt",
            "userIdentity": {"principalId": "uid:1000", "uid": 1000, "pid": 42, "processName": process},
            "requestParameters": {"encryptionContext": {"kmsfs:path": path}},
            "resources": [{"ARN": "arn:kmsfs:kms:local:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}]
        });
        if let Some(e) = error {
            r["errorCode"] = json!(e);
        }
        r
    }

    #[test]
    fn table_is_aligned_and_names_cannot_forge_rows() {
        let forged = "x\n2026-01-01T00:00:00Z  Decrypt  uid:0(cat) pid 1  k  -  ok";
        let rows = [
            table_cells(&rec("a.txt", "cat", None)),
            table_cells(&rec(
                forged,
                "evil\x1b]0;pwned\x07",
                Some("AccessDeniedException"),
            )),
            table_cells(&rec("b.txt,kmsfs:fs=other", "sh", None)),
            // No resource: the key as the caller named it, here a long alias ARN.
            table_cells(&json!({
                "eventTime": "2026-11-29T10:00:01Z", "eventName": "GenerateDataKeyWithoutPlaintext",
                "userIdentity": {"principalId": "uid:0", "pid": 7},
                "requestParameters": {"keyId": "arn:kmsfs:kms:local:111122223333:alias/a-rather-long-alias-name"},
                "errorCode": "NotFoundException"
            })),
        ];
        let t = format_table(&TABLE_HEADER, &rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "a header and one line per record:\n{t}");
        assert!(!t.contains(['\x1b', '\x07']), "{t:?}");
        assert!(lines[2].contains("kmsfs:path=x\\n2026-01-01T00:00:00Z  Decrypt"));
        assert!(lines[2].contains("(evil\\x1b]0;pwned\\x07) pid 42"));
        assert!(lines[3].contains("kmsfs:path=b.txt\\,kmsfs:fs\\=other"));
        assert!(lines[4].contains("alias/a-rather-long-alias-name"));
        // Each column starts where its title does, after at least two spaces.
        let starts: Vec<usize> = TABLE_HEADER
            .iter()
            .map(|h| lines[0].find(h).unwrap())
            .collect();
        for (line, cells) in lines[1..].iter().zip(&rows) {
            for (&at, cell) in starts.iter().zip(cells) {
                assert!(
                    line[at..].starts_with(cell.as_str()),
                    "{cell:?} not at {at}:\n{t}"
                );
                assert!(at == 0 || line[..at].ends_with("  "), "{line}");
            }
        }
        assert!(lines[1].ends_with("  ok"));
    }
}
