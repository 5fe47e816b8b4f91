//! The daemon's own log lines (stderr, which a background mount points at
//! its log file). A log write that fails, on a full disk say, is dropped and
//! counted: `eprintln!` would panic there, and a panic in a FUSE worker or in
//! the audit log's group commit strands every request waiting on it.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Lines allowed per second: a user who makes the daemon log a line per
/// request (refused opens, say) must not fill the log's disk with them.
const PER_SECOND: u64 = 200;
static SECOND: AtomicU64 = AtomicU64::new(0);
static IN_SECOND: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes one line to stderr; never panics, never blocks on a lock another
/// thread could hold while failing.
pub fn line(args: std::fmt::Arguments<'_>) {
    let now = unix_second();
    if SECOND.swap(now, Ordering::Relaxed) != now {
        IN_SECOND.store(0, Ordering::Relaxed);
        let n = SUPPRESSED.swap(0, Ordering::Relaxed);
        if n > 0 {
            let note =
                format!("kmsfs: ({n} log lines suppressed: more than {PER_SECOND} a second)\n");
            let _ = std::io::stderr().write_all(note.as_bytes());
        }
    }
    if IN_SECOND.fetch_add(1, Ordering::Relaxed) >= PER_SECOND {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut buf = Vec::with_capacity(128);
    let _ = buf.write_fmt(args);
    buf.push(b'\n');
    let dropped = DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        // Say once that lines were lost, when writing works again.
        let note = format!("kmsfs: ({dropped} earlier log lines could not be written)\n");
        if std::io::stderr().write_all(note.as_bytes()).is_ok() {
            DROPPED.fetch_sub(dropped, Ordering::Relaxed);
        }
    }
    if std::io::stderr().write_all(&buf).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// Log lines that could not be written since the last one that could.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `eprintln!` for the daemon and the library: never panics.
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
