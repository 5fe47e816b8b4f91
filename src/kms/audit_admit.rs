//! Keeping the audit trail bounded under abuse without leaving any key use
//! unaccounted for.
//!
//! Two mechanisms, both pure bookkeeping here (the log applies them):
//! - **Coalescing.** Through the mount, one process opening one file in a
//!   loop makes the same Decrypt record over and over. The first is written
//!   at once, as always; identical ones (same caller, process, request
//!   parameters with the path, and outcome) in the next second are counted,
//!   and written as one record carrying `"coalesced": {"count", first and
//!   last event time}` when the second is over, when the log is flushed
//!   (every second by the mount, and at unmount), or when the table is full.
//!   Nothing is coalesced while the log is failing: then every key use must
//!   fail with its record.
//! - **Admission by free space.** Below a soft line of free space on the
//!   log's filesystem, the uid that wrote the most records in the last
//!   window is refused (its key use fails, the others' goes on); below a
//!   hard line only root is admitted, so root can always act.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long identical records are counted before one is written for them.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Keys tracked at once; past this everything pending is written out.
pub const MAX_PENDING: usize = 4096;

/// One coalesced run of identical records.
pub struct Pending {
    /// When the record that opened this run was written.
    pub since: Instant,
    /// Records counted since, not yet written.
    pub count: u64,
    pub first_time: String,
    pub last_time: String,
    /// The newest counted record's line (without its closing brace).
    pub last_body: String,
}

impl Pending {
    /// The line that stands for the counted records.
    pub fn summary(&self) -> String {
        format!(
            "{},\"coalesced\":{{\"count\":{},\"firstEventTime\":\"{}\",\"lastEventTime\":\"{}\"}}",
            self.last_body, self.count, self.first_time, self.last_time
        )
    }
}

#[derive(Default)]
pub struct Coalescer {
    runs: HashMap<String, Pending>,
    /// Runs in the order they started, so that finding the ones whose
    /// window is over costs O(1) per run, not a scan of every run on every
    /// record (each `cat` is a new process, so a run per file read).
    order: std::collections::VecDeque<(Instant, String)>,
}

impl Coalescer {
    /// Counts `body` against an open run of `key`; false when it must be
    /// written (no run, or the run's window is over: the caller then writes
    /// `take_expired`'s summaries first, and `start`s a new run).
    pub fn absorb(&mut self, key: &str, body: &str, time: &str, now: Instant) -> bool {
        match self.runs.get_mut(key) {
            Some(p) if now.duration_since(p.since) < WINDOW => {
                if p.count == 0 {
                    p.first_time = time.to_string();
                }
                p.count += 1;
                p.last_time = time.to_string();
                p.last_body.clear();
                p.last_body.push_str(body);
                true
            }
            _ => false,
        }
    }

    /// Opens a run for a record just written.
    pub fn start(&mut self, key: String, now: Instant) {
        self.order.push_back((now, key.clone()));
        self.runs.insert(
            key,
            Pending {
                since: now,
                count: 0,
                first_time: String::new(),
                last_time: String::new(),
                last_body: String::new(),
            },
        );
    }

    /// Summaries of runs whose window is over (all runs if `all`, or if the
    /// table is full), removing them.
    pub fn take_expired(&mut self, now: Instant, all: bool) -> Vec<String> {
        let all = all || self.runs.len() >= MAX_PENDING;
        let mut out = vec![];
        while let Some((since, _)) = self.order.front() {
            if !all && now.duration_since(*since) < WINDOW {
                break;
            }
            let (since, key) = self.order.pop_front().expect("front exists");
            // A key restarted later has a newer entry further back.
            if self.runs.get(&key).is_some_and(|p| p.since == since)
                && let Some(p) = self.runs.remove(&key)
                && p.count > 0
            {
                out.push(p.summary());
            }
        }
        out
    }
}

/// Free-space lines for a filesystem of `total` bytes: soft (the heaviest
/// writer is refused), hard (only root). A tenth and a twentieth of the
/// filesystem, at most 512 and 128 MiB.
pub fn lines(total: u64) -> (u64, u64) {
    ((total / 10).min(512 << 20), (total / 20).min(128 << 20))
}

/// Records written per uid in the current window, to find the heaviest.
#[derive(Default)]
pub struct Writers {
    counts: HashMap<u32, u64>,
    started: Option<Instant>,
}

impl Writers {
    const SPAN: Duration = Duration::from_secs(10);

    pub fn wrote(&mut self, uid: u32, n: u64, now: Instant) {
        if self
            .started
            .is_none_or(|s| now.duration_since(s) >= Self::SPAN)
        {
            self.counts.clear();
            self.started = Some(now);
        }
        *self.counts.entry(uid).or_default() += n;
    }

    /// The non-root uid with the most records in the window.
    pub fn heaviest(&self) -> Option<u32> {
        self.counts
            .iter()
            .filter(|(u, _)| **u != 0)
            .max_by_key(|(u, n)| (**n, std::cmp::Reverse(**u)))
            .map(|(u, _)| *u)
    }
}

/// Whether a record by `uid` may be written with `free` bytes left.
pub fn admit(
    uid: u32,
    free: u64,
    (soft, hard): (u64, u64),
    heaviest: Option<u32>,
) -> Result<(), String> {
    if uid == 0 || free >= soft {
        return Ok(());
    }
    if free < hard {
        return Err(format!(
            "the audit log's filesystem is nearly full ({} KiB free): only root's key use is audited, and so allowed, until space is freed",
            free >> 10
        ));
    }
    if heaviest == Some(uid) {
        return Err(format!(
            "the audit log's filesystem is filling up ({} KiB free) and uid {uid} wrote the most records recently: its key use is refused until space is freed",
            free >> 10
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_the_window_become_one_summary() {
        let mut c = Coalescer::default();
        let t0 = Instant::now();
        assert!(!c.absorb("k", "{\"a\":1", "t0", t0));
        c.start("k".into(), t0);
        for i in 1..=5 {
            assert!(c.absorb("k", &format!("{{\"a\":{i}"), &format!("t{i}"), t0));
        }
        assert!(!c.absorb("other", "{", "t", t0), "another key is written");
        assert!(c.take_expired(t0, false).is_empty(), "window not over");
        let later = t0 + WINDOW;
        assert!(
            !c.absorb("k", "{\"a\":6", "t6", later),
            "a new window writes"
        );
        let s = c.take_expired(later, false);
        assert_eq!(
            s,
            vec!["{\"a\":5,\"coalesced\":{\"count\":5,\"firstEventTime\":\"t1\",\"lastEventTime\":\"t5\"}".to_string()]
        );
        let v: serde_json::Value = serde_json::from_str(&format!("{}}}", s[0])).unwrap();
        assert_eq!(v["coalesced"]["count"], 5);
        // A run with nothing counted leaves no summary.
        c.start("k".into(), later);
        assert!(c.take_expired(later, true).is_empty());
    }

    #[test]
    fn admission_keeps_root_and_the_quiet_users_going() {
        let l = lines(1000 << 20);
        assert_eq!(l, (100 << 20, 50 << 20));
        let mut w = Writers::default();
        let now = Instant::now();
        w.wrote(1000, 50_000, now);
        w.wrote(1001, 10, now);
        w.wrote(0, 90_000, now);
        assert_eq!(w.heaviest(), Some(1000), "root is never the one refused");
        let h = w.heaviest();
        assert!(admit(1000, 200 << 20, l, h).is_ok());
        assert!(
            admit(1000, 70 << 20, l, h)
                .unwrap_err()
                .contains("uid 1000")
        );
        assert!(admit(1001, 70 << 20, l, h).is_ok());
        assert!(
            admit(1001, 10 << 20, l, h)
                .unwrap_err()
                .contains("only root")
        );
        assert!(admit(0, 0, l, h).is_ok());
    }
}
