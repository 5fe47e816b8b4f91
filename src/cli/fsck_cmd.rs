//! `kmsfs fsck`: the check's output, as text or JSON, and the progress of
//! fsck and rekey.

use crate::fs::fsck::{Progress, Report};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress on stderr: an indicatif spinner line on a terminal, a plain
/// line every ten seconds otherwise (a log, a pipe).
pub struct Meter {
    bar: Option<indicatif::ProgressBar>,
    start: Instant,
    last: Instant,
}

impl Meter {
    pub fn new() -> Self {
        let now = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_msg}")
            {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(120));
            b
        });
        Meter {
            bar,
            start: now,
            last: now,
        }
    }

    pub fn tick(&mut self, p: &Progress) {
        let every = if self.bar.is_some() {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(10)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let line = format!(
            "{} nodes, {:.1} MB: {}",
            p.nodes,
            p.bytes as f64 / 1e6,
            super::audit_cmd::escape(p.path)
        );
        match &self.bar {
            Some(b) => b.set_message(line),
            None => {
                let _ = writeln!(
                    std::io::stderr(),
                    "{line} ({:.0} s)",
                    self.start.elapsed().as_secs_f64()
                );
            }
        }
    }

    pub fn finish(&mut self) -> Duration {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.start.elapsed()
    }
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

/// Prints the report; returns whether the cipherdir is clean.
pub fn print(cipherdir: &std::path::Path, r: &Report, took: Duration, json: bool) -> bool {
    let secs = took.as_secs_f64().max(1e-9);
    let nodes = r.files + r.symlinks + r.special;
    let repaired = r.findings.iter().filter(|f| f.repaired.is_some()).count();
    let mut out = std::io::stdout().lock();
    if json {
        let v = serde_json::json!({
            "cipherdir": cipherdir.display().to_string(),
            "clean": r.findings.is_empty(),
            "directories": r.dirs,
            "files": r.files,
            "symlinks": r.symlinks,
            "kmsfsNodes": r.special,
            "fifosAndSockets": r.fifos,
            "bytes": r.bytes,
            "seconds": took.as_secs_f64(),
            "problems": r.findings,
        });
        let _ = writeln!(out, "{v}");
    } else {
        for f in &r.findings {
            let path = if f.path.is_empty() {
                "/".to_string()
            } else {
                super::audit_cmd::escape(&f.path).into_owned()
            };
            let fix = f
                .repaired
                .as_deref()
                .map(|x| format!(" [repaired: {x}]"))
                .unwrap_or_default();
            let _ = writeln!(out, "{path}: {}: {}{fix}", f.kind, f.what);
        }
        let _ = writeln!(
            out,
            "fsck {}: {} directories, {} files, {} symlinks, {} kmsfs nodes, {} FIFOs and sockets, {:.1} MB in {:.2} s ({:.0} files/s, {:.1} MB/s): {}",
            cipherdir.display(),
            r.dirs,
            r.files,
            r.symlinks,
            r.special,
            r.fifos,
            r.bytes as f64 / 1e6,
            secs,
            nodes as f64 / secs,
            r.bytes as f64 / 1e6 / secs,
            match (r.findings.len(), repaired) {
                (0, _) => "clean".to_string(),
                (n, 0) => format!("{n} problem(s)"),
                (n, k) => format!("{n} problem(s), {k} repaired"),
            }
        );
    }
    r.findings.is_empty()
}
