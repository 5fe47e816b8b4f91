//! The audit log: one JSON object per line, CloudTrail field names, chained with
//! HMAC-SHA256 so that an edited, deleted, inserted or reordered line is found by
//! `verify`. See docs/audit-log.md.
//!
//! Each line ends with `"chainSeq":N,"chainMac":"HEX"}`; the MAC covers the
//! previous line's MAC and every byte of this line before `,"chainMac"`.
//! Writers in several processes share the file under flock(2), and each picks
//! up the chain from the file's tail when another process wrote since.

use super::audit_admit::{Coalescer, Writers, admit};
use crate::crypto::Key256;
use crate::crypto::kdf::hmac_sha256;
use serde::Serialize;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

const MAC_MARK: &str = ",\"chainMac\":\"";
/// Longest line `verify` reads: a record is about 1.5 KB.
const MAX_LINE: usize = 1 << 20;
const SEQ_MARK: &str = ",\"chainSeq\":";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub principal_id: String,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub process_name: Option<String>,
    pub invoked_by: super::caller::Via,
    /// The SigV4 access key of a request through `kmsfs kms serve`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
}

#[derive(Serialize)]
pub struct Resource {
    #[serde(rename = "accountId")]
    pub account_id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(rename = "ARN")]
    pub arn: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub event_version: &'static str,
    pub user_identity: UserIdentity,
    pub event_time: String,
    pub event_source: &'static str,
    pub event_name: &'static str,
    pub aws_region: &'static str,
    #[serde(rename = "sourceIPAddress")]
    pub source_ip_address: String,
    pub user_agent: String,
    pub request_parameters: Box<serde_json::value::RawValue>,
    pub response_elements: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    #[serde(rename = "requestID")]
    pub request_id: String,
    #[serde(rename = "eventID")]
    pub event_id: String,
    pub read_only: bool,
    pub resources: Vec<Resource>,
    pub event_type: &'static str,
    pub management_event: bool,
    pub recipient_account_id: String,
    pub event_category: &'static str,
    /// Which policy statement or grant allowed or denied the call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_event_data: Option<AdditionalEventData>,
}

/// Typed rather than a `json!` object: building one copied the whole
/// authorization value on every operation.
#[derive(Serialize)]
pub struct AdditionalEventData {
    pub authorization: Value,
}

/// State of the chain at the end of the file as this process last saw it.
struct Tail {
    file: File,
    end: u64,
    seq: u64,
    prev: [u8; 32],
}

pub struct AuditLog {
    path: PathBuf,
    key: Key256,
    tail: Mutex<Tail>,
    commit: Mutex<Commit>,
    committed: Condvar,
    /// `Commit::done`, readable without the lock for spinning followers.
    done: AtomicU64,
}

/// flock(2) held on a descriptor that outlives the guard.
struct Flock(std::os::unix::io::RawFd);

impl Flock {
    /// Longest wait for another process's writer (a batch takes
    /// microseconds; a holder stuck for this long is broken).
    const WAIT: Duration = Duration::from_secs(10);

    fn exclusive(fd: std::os::unix::io::RawFd) -> io::Result<Self> {
        let deadline = Instant::now() + Self::WAIT;
        loop {
            // SAFETY: flock on a descriptor the caller keeps open.
            if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Flock(fd));
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "another process has held the audit log's lock for 10 s",
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking cannot be meaningfully handled on failure.
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

fn itoa_u64(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("digits")
}

#[derive(Default)]
struct Commit {
    queue: Vec<String>,
    queued: u64,
    done: u64,
    leader: bool,
    /// Threads asleep on `committed`: a wake-up is a syscall, made only
    /// when someone waits.
    sleepers: usize,
    /// Ticket ranges whose batch failed to write, with the error.
    failures: Vec<(u64, u64, String)>,
    /// The last batch failed: nothing is coalesced until one is written.
    failing: bool,
    coalesce: Coalescer,
    writers: Writers,
    /// Free bytes on the log's filesystem, its (soft, hard) lines, and when
    /// they were measured.
    space: Option<(Instant, u64, (u64, u64))>,
}

/// How often the free space under the log is measured.
const SPACE_EVERY: Duration = Duration::from_millis(100);

/// Records that may be coalesced: a file's open through the mount, the one
/// record a user can make in a tight loop. The key is everything that makes
/// two such records the same event but for their time and request id.
fn coalesce_key(rec: &Record) -> Option<String> {
    if rec.event_name != "Decrypt" || rec.user_identity.invoked_by != super::caller::Via::Mount {
        return None;
    }
    let u = &rec.user_identity;
    let authz = rec
        .additional_event_data
        .as_ref()
        .map(|a| a.authorization.to_string())
        .unwrap_or_default();
    Some(format!(
        "{}\0{}\0{}\0{:?}\0{}\0{:?}\0{authz}",
        u.uid,
        u.gid,
        u.pid,
        u.process_name,
        rec.request_parameters.get(),
        rec.error_code
    ))
}

/// Splits a line into (the MACed prefix, chainSeq, MAC bytes).
fn split_line(line: &str) -> Result<(&str, u64, [u8; 32]), String> {
    let idx = line.rfind(MAC_MARK).ok_or("no chainMac field")?;
    let prefix = &line[..idx];
    let mac_hex = line[idx + MAC_MARK.len()..]
        .strip_suffix("\"}")
        .ok_or("chainMac is not the last field")?;
    // Hex digits only: slicing other text in pairs could split a character
    // (a panic), and from_str_radix would take "+f" for 0f.
    if mac_hex.len() != 64 || !mac_hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("chainMac is not 64 hex digits".into());
    }
    let mut mac = [0u8; 32];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = u8::from_str_radix(&mac_hex[2 * i..2 * i + 2], 16)
            .map_err(|_| "chainMac is not hex")?;
    }
    let sidx = prefix.rfind(SEQ_MARK).ok_or("no chainSeq field")?;
    let seq: u64 = prefix[sidx + SEQ_MARK.len()..]
        .parse()
        .map_err(|_| "chainSeq is not a number")?;
    Ok((prefix, seq, mac))
}

/// A line's chainSeq, as `verify` splits it (the MAC is not checked). For
/// the fuzz targets (src/fuzz_targets.rs).
pub fn parse_line(line: &str) -> Result<u64, String> {
    split_line(line).map(|(_, seq, _)| seq)
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log and finds the end of its chain.
    /// A symlink at `path` is not followed.
    pub fn open(path: &Path, key: Key256) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        Self::open_file(file, path, key)
    }

    /// The same, for a log already opened to read and append (the KMS home
    /// opens its own beneath the home's descriptor); `path` names it.
    pub fn open_file(file: File, path: &Path, key: Key256) -> io::Result<Self> {
        let mut tail = Tail {
            file,
            end: u64::MAX,
            seq: 0,
            prev: [0; 32],
        };
        {
            let _lock = Flock::exclusive(tail.file.as_raw_fd())?;
            Self::resync(&mut tail)?;
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            key,
            tail: Mutex::new(tail),
            commit: Mutex::new(Commit::default()),
            committed: Condvar::new(),
            done: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the last line to continue the chain after another writer, and cuts
    /// off a torn final line (a crash mid-write) so the next record starts clean.
    fn resync(t: &mut Tail) -> io::Result<()> {
        let size = t.file.metadata()?.len();
        if size == 0 {
            t.end = 0;
            t.seq = 0;
            t.prev = [0; 32];
            return Ok(());
        }
        let window = size.min(1 << 20);
        let mut buf = vec![0u8; window as usize];
        t.file.seek(SeekFrom::Start(size - window))?;
        t.file.read_exact(&mut buf)?;
        let mut end = size;
        if buf.last() != Some(&b'\n') {
            let keep = buf.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
            end = size - window + keep as u64;
            t.file.set_len(end)?;
            buf.truncate(keep);
            tracing_warn(&format!(
                "audit log: removed a torn final record ({} bytes)",
                size - end
            ));
        }
        t.end = end;
        if buf.is_empty() {
            t.seq = 0;
            t.prev = [0; 32];
            return Ok(());
        }
        let body = &buf[..buf.len() - 1];
        let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        let last = std::str::from_utf8(&body[start..])
            .map_err(|_| io::Error::other("the audit log's last line is not UTF-8"))?;
        let (_, seq, mac) = split_line(last).map_err(|e| {
            io::Error::other(format!(
                "the audit log's last line cannot continue the chain ({e}); run `kmsfs audit verify`"
            ))
        })?;
        t.seq = seq;
        t.prev = mac;
        Ok(())
    }

    /// Appends one record; returns only once it is in the file (or counted
    /// in a coalesced run whose first record is: see audit_admit.rs). An
    /// error here must fail the operation it records.
    ///
    /// Group commit: concurrent callers queue their records and one of them
    /// writes the whole queue under a single flock and a single write(2), so
    /// threads do not take turns at the file lock.
    pub fn append(&self, rec: &Record) -> io::Result<()> {
        // Sized for a typical record (about 1.2 KB): growing from serde_json's
        // default took four reallocations per record.
        let mut body = Vec::with_capacity(2048);
        serde_json::to_writer(&mut body, rec).map_err(io::Error::other)?;
        body.pop(); // the closing brace; the chain fields close the object
        let body = String::from_utf8(body).map_err(io::Error::other)?;
        let key = coalesce_key(rec);
        let uid = rec.user_identity.uid;
        let now = Instant::now();
        let mut c = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        let (free, lines) = self.space(&mut c, now);
        let heaviest = c.writers.heaviest();
        admit(uid, free, lines, heaviest)
            .map_err(|m| io::Error::new(io::ErrorKind::StorageFull, m))?;
        if let Some(k) = &key
            && !c.failing
            && c.coalesce.absorb(k, &body, &rec.event_time, now)
        {
            return Ok(());
        }
        let mut bodies = c.coalesce.take_expired(now, false);
        bodies.push(body);
        if let Some(k) = key {
            c.coalesce.start(k, now);
        }
        c.writers.wrote(uid, 1, now);
        self.submit(c, bodies)
    }

    /// Free bytes under the log, measured at most every SPACE_EVERY. A
    /// failed measurement admits everyone: a statvfs error must not stop
    /// key use that the write itself would allow.
    fn space(&self, c: &mut Commit, now: Instant) -> (u64, (u64, u64)) {
        if let Some((at, free, lines)) = c.space
            && now.duration_since(at) < SPACE_EVERY
        {
            return (free, lines);
        }
        let measured = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(
            self.path.as_os_str(),
        ))
        .ok()
        .and_then(|p| {
            // SAFETY: an all-zero statvfs is valid; statvfs fills it in.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: a valid C path and out-struct.
            (unsafe { libc::statvfs(p.as_ptr(), &mut st) } == 0).then(|| {
                let f = st.f_frsize.max(1);
                (st.f_bavail.saturating_mul(f), st.f_blocks.saturating_mul(f))
            })
        });
        let (free, lines) = match measured {
            Some((free, total)) => (free, super::audit_admit::lines(total)),
            None => (u64::MAX, (0, 0)),
        };
        c.space = Some((now, free, lines));
        (free, lines)
    }

    /// Writes `bodies` (in order, in one batch) through the group commit.
    fn submit<'a>(&'a self, mut c: MutexGuard<'a, Commit>, bodies: Vec<String>) -> io::Result<()> {
        c.queued += bodies.len() as u64;
        c.queue.extend(bodies);
        let mine = c.queued;
        loop {
            if c.done >= mine {
                return match c.failures.iter().find(|f| f.0 <= mine && mine <= f.1) {
                    Some(f) => Err(io::Error::other(f.2.clone())),
                    None => Ok(()),
                };
            }
            if c.leader {
                // A batch takes a few microseconds: spin briefly before
                // sleeping, since a futex wake-up costs more than the wait.
                drop(c);
                let mut spins = 0;
                while self.done.load(Ordering::Acquire) < mine && spins < 2000 {
                    std::hint::spin_loop();
                    spins += 1;
                }
                c = self.commit.lock().unwrap_or_else(|e| e.into_inner());
                if c.done < mine && c.leader {
                    c.sleepers += 1;
                    c = self.committed.wait(c).unwrap_or_else(|e| e.into_inner());
                    c.sleepers -= 1;
                }
                continue;
            }
            c.leader = true;
            let batch = std::mem::take(&mut c.queue);
            let (lo, hi) = (c.done + 1, c.queued);
            drop(c);
            // Whatever happens in the write, even a panic, the waiters are
            // told: a stranded follower would hang its FUSE request forever.
            let res =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write_batch(batch)))
                    .unwrap_or_else(|_| {
                        Err(io::Error::other("the audit log writer failed unexpectedly"))
                    });
            c = self.commit.lock().unwrap_or_else(|e| e.into_inner());
            c.failing = res.is_err();
            if let Err(e) = res {
                if c.failures.len() >= 64 {
                    c.failures.remove(0);
                }
                c.failures.push((lo, hi, e.to_string()));
            }
            c.done = hi;
            self.done.store(hi, Ordering::Release);
            c.leader = false;
            if c.sleepers > 0 {
                self.committed.notify_all();
            }
        }
    }

    /// Writes the summaries of coalesced runs: those whose window is over,
    /// or all of them.
    pub fn flush_coalesced(&self, all: bool) -> io::Result<()> {
        let mut c = self.commit.lock().unwrap_or_else(|e| e.into_inner());
        let bodies = c.coalesce.take_expired(Instant::now(), all);
        if bodies.is_empty() {
            return Ok(());
        }
        self.submit(c, bodies)
    }

    fn write_batch(&self, batch: Vec<String>) -> io::Result<()> {
        let mut t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let _lock = Flock::exclusive(t.file.as_raw_fd())?;
        if t.file.metadata()?.len() != t.end {
            Self::resync(&mut t)?;
        }
        let mut out = String::with_capacity(batch.iter().map(|b| b.len() + 110).sum());
        let (mut seq, mut prev) = (t.seq, t.prev);
        for body in batch {
            let start = out.len();
            seq += 1;
            out.push_str(&body);
            out.push_str(SEQ_MARK);
            out.push_str(itoa_u64(seq, &mut [0u8; 20]));
            prev = hmac_sha256(self.key.as_bytes(), &[&prev, &out.as_bytes()[start..]]);
            out.push_str(MAC_MARK);
            crate::crypto::hex_into(&prev, &mut out);
            out.push_str("\"}\n");
        }
        if let Err(e) = (&t.file).write_all(out.as_bytes()) {
            // A partial write is cut off by the next resync.
            t.end = u64::MAX;
            return Err(e);
        }
        t.end += out.len() as u64;
        t.seq = seq;
        t.prev = prev;
        Ok(())
    }

    /// Writes every coalesced run's summary, then makes every record
    /// written so far durable.
    pub fn sync(&self) -> io::Result<()> {
        let flushed = self.flush_coalesced(true);
        // fdatasync outside the tail's lock, so appenders do not wait on it.
        let file = {
            let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            t.file.try_clone()?
        };
        file.sync_data()?;
        flushed
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

fn tracing_warn(msg: &str) {
    crate::log_line!("kmsfs: warning: {msg}");
}

/// Opens a log to read it: never through a symlink planted as its last
/// component, and only a regular file (a FIFO would block `audit show`).
pub fn open_for_reading(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(f)
}

/// The outcome of `kmsfs audit verify`.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    /// 1-based line number and what is wrong with it.
    pub first_bad: Option<(u64, String)>,
}

/// Checks the whole chain. Deleting the newest lines cannot be told from a log
/// that simply ended there; everything else can.
pub fn verify(path: &Path, key: &Key256) -> io::Result<VerifyReport> {
    use std::io::BufRead;
    // Streamed line by line, each line bounded: memory stays small however
    // long the log is.
    let mut r = io::BufReader::with_capacity(1 << 16, open_for_reading(path)?);
    let mut prev = [0u8; 32];
    let mut n = 0u64;
    let mut raw = Vec::with_capacity(4096);
    for i in 0u64.. {
        raw.clear();
        let got = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut raw)?;
        if got == 0 {
            break;
        }
        let lineno = i + 1;
        if raw.len() > MAX_LINE {
            return Ok(VerifyReport {
                records: n,
                first_bad: Some((
                    lineno,
                    format!("longer than {MAX_LINE} bytes (not a kmsfs record)"),
                )),
            });
        }
        let raw = &raw[..];
        let bad = |why: String| {
            Ok(VerifyReport {
                records: n,
                first_bad: Some((lineno, why)),
            })
        };
        let Some(raw) = raw.strip_suffix(b"\n") else {
            return bad("the last line is incomplete (torn write)".into());
        };
        let Ok(line) = std::str::from_utf8(raw) else {
            return bad("not UTF-8".into());
        };
        if serde_json::from_str::<Value>(line).is_err() {
            return bad("not a JSON object (edited)".into());
        }
        let (prefix, seq, mac) = match split_line(line) {
            Ok(p) => p,
            Err(e) => return bad(format!("{e} (edited)")),
        };
        let expected = lineno;
        if seq != expected {
            return bad(format!(
                "chainSeq is {seq} where {expected} was expected: a line was deleted, inserted or reordered here"
            ));
        }
        let want = hmac_sha256(key.as_bytes(), &[&prev, prefix.as_bytes()]);
        if !crate::crypto::ct_eq(&want, &mac) {
            return bad("MAC mismatch: this line was edited or forged".into());
        }
        prev = mac;
        n += 1;
    }
    Ok(VerifyReport {
        records: n,
        first_bad: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::caller::Via;
    use serde_json::json;

    fn rec(name: &'static str) -> Record {
        Record {
            event_version: "1.08",
            user_identity: UserIdentity {
                kind: "LocalUser",
                principal_id: "uid:0".into(),
                uid: 0,
                gid: 0,
                pid: 1,
                process_name: Some("test".into()),
                invoked_by: Via::Cli,
                access_key_id: None,
            },
            event_time: "2026-01-01T00:00:00Z".into(),
            event_source: "kms.kmsfs.local",
            event_name: name,
            aws_region: "local",
            source_ip_address: "local".into(),
            user_agent: "test".into(),
            request_parameters: serde_json::value::to_raw_value(&json!({"keyId": "k"})).unwrap(),
            response_elements: Value::Null,
            error_code: None,
            error_message: None,
            request_id: "r".into(),
            event_id: "e".into(),
            read_only: true,
            resources: vec![],
            event_type: "AwsApiCall",
            management_event: true,
            recipient_account_id: "1".into(),
            event_category: "Management",
            additional_event_data: None,
        }
    }

    fn key() -> Key256 {
        Key256::from_bytes([5; 32])
    }

    fn write_n(path: &Path, n: usize) {
        let log = AuditLog::open(path, key()).unwrap();
        for _ in 0..n {
            log.append(&rec("Decrypt")).unwrap();
        }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write_lines(path: &Path, l: &[String]) {
        std::fs::write(path, l.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn chain_verifies_and_continues_across_opens() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        write_n(&p, 3);
        write_n(&p, 2);
        let r = verify(&p, &key()).unwrap();
        assert_eq!(
            r,
            VerifyReport {
                records: 5,
                first_bad: None
            }
        );
        for l in lines(&p) {
            let v: Value = serde_json::from_str(&l).unwrap();
            assert_eq!(v["eventName"], "Decrypt");
        }
        assert!(
            verify(&p, &Key256::from_bytes([6; 32]))
                .unwrap()
                .first_bad
                .is_some()
        );
    }

    #[test]
    fn detects_edit_delete_insert_reorder() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        write_n(&p, 5);
        let orig = lines(&p);

        let mut edited = orig.clone();
        edited[2] = edited[2].replace("Decrypt", "Encrypt");
        write_lines(&p, &edited);
        assert_eq!(verify(&p, &key()).unwrap().first_bad.unwrap().0, 3);

        let mut deleted = orig.clone();
        deleted.remove(1);
        write_lines(&p, &deleted);
        assert_eq!(verify(&p, &key()).unwrap().first_bad.unwrap().0, 2);

        let mut inserted = orig.clone();
        inserted.insert(3, orig[0].clone());
        write_lines(&p, &inserted);
        assert_eq!(verify(&p, &key()).unwrap().first_bad.unwrap().0, 4);

        let mut swapped = orig.clone();
        swapped.swap(3, 4);
        write_lines(&p, &swapped);
        assert_eq!(verify(&p, &key()).unwrap().first_bad.unwrap().0, 4);
    }

    #[test]
    fn torn_tail_is_cut_and_chain_continues() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        write_n(&p, 2);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"eventVersion\":\"1.0").unwrap();
        assert!(verify(&p, &key()).unwrap().first_bad.is_some());
        write_n(&p, 1);
        assert_eq!(
            verify(&p, &key()).unwrap(),
            VerifyReport {
                records: 3,
                first_bad: None
            }
        );
    }

    #[test]
    fn two_writers_interleave_without_breaking_the_chain() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.log");
        let a = AuditLog::open(&p, key()).unwrap();
        let b = AuditLog::open(&p, key()).unwrap();
        for i in 0..10 {
            if i % 3 == 0 {
                b.append(&rec("Encrypt"))
            } else {
                a.append(&rec("Decrypt"))
            }
            .unwrap();
        }
        assert_eq!(
            verify(&p, &key()).unwrap(),
            VerifyReport {
                records: 10,
                first_bad: None
            }
        );
    }
}
