//! The audit log's writer: one JSON object per line, CloudTrail field names,
//! chained with HMAC-SHA256 (the line format is audit_chain.rs), rotated by
//! size or age into files the chain runs on through. See docs/audit-log.md.
//!
//! Writers in several processes share the log under flock(2) of a lock file
//! beside it that no rotation moves. Before each batch a writer checks that
//! the log's name still leads to the file it holds: another writer's
//! rotation, logrotate's rename or copytruncate, or a deleted log are
//! followed, and the chain is picked up from wherever it last stood.

use super::audit_admit::{Coalescer, Writers, admit};
use super::audit_chain::{
    DigestHead, Head, digest_body, digest_key, seal_line, split_line, started_body,
};
use super::audit_trail as trail;
use crate::crypto::Key256;
use crate::fs::stat::fstat;
use serde::Serialize;
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

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

/// When the log is rotated and digested, and where else it goes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Rotate once the active file holds this many bytes (0: never).
    pub max_bytes: u64,
    /// Rotate once the active file's first record is this old (None: never).
    pub max_age: Option<Duration>,
    /// Write a digest once records are this much newer than the last one.
    pub digest_every: Duration,
    /// Copy every record to this syslog socket (audit_sink.rs).
    pub syslog: Option<PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_bytes: 64 << 20,
            max_age: None,
            digest_every: Duration::from_secs(60),
            syslog: None,
        }
    }
}

/// State of the chain at the end of the file as this process last saw it.
struct Tail {
    file: File,
    /// (st_dev, st_ino) of `file`: whether the log's name still leads to it.
    id: (u64, u64),
    end: u64,
    head: Head,
    digest: DigestHead,
    /// The active file's first chainSeq and when its first record was made
    /// (Unix seconds), for the rotated name and rotation by age.
    first_seq: u64,
    started: i64,
    /// The rotated file the chain came from, for the next LogFileStarted.
    previous_file: Option<OsString>,
    /// When the last digest was written (or this writer began).
    digest_at: Instant,
    /// The directory watch's count when the log's name was last found to
    /// lead to `file` (None: look again).
    named: Option<u64>,
}

pub struct AuditLog {
    path: PathBuf,
    dir: File,
    name: OsString,
    /// The lock every writer takes around a batch; rotation leaves it be.
    lock: File,
    key: Key256,
    digest_key: Key256,
    settings: Settings,
    sink: Option<super::audit_sink::Sink>,
    tail: Mutex<Tail>,
    commit: Mutex<Commit>,
    committed: Condvar,
    /// `Commit::done`, readable without the lock for spinning followers.
    done: AtomicU64,
    /// Says when an entry of the log's directory was made, renamed or
    /// removed (watch.rs): until then the name still leads to the file held.
    watch: Option<Arc<super::watch::HomeWatch>>,
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

/// A line's chainSeq, as `verify` splits it (the MAC is not checked). For
/// the fuzz targets (src/fuzz_targets.rs).
pub fn parse_line(line: &str) -> Result<u64, String> {
    split_line(line).map(|(_, seq, _)| seq)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn file_id(st: &libc::stat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

impl AuditLog {
    /// Opens (creating, mode 0600) the log at `path` and finds the end of its
    /// chain; for a log outside a KMS home (tests, the remote KMS's cache).
    pub fn open(path: &Path, key: Key256) -> io::Result<Self> {
        let (dir, name) = trail::dir_and_name(path)?;
        Self::open_in(dir, &name, path, key, Settings::default(), None)
    }

    /// Opens the log `name` beneath the directory `dir` (the KMS home opens
    /// its own beneath the home's descriptor); `path` names it in messages.
    /// `anchor` is where the keystore last saw the chain: a log found empty
    /// with no rotated file to continue from goes on from there.
    pub fn open_in(
        dir: File,
        name: &OsStr,
        path: &Path,
        key: Key256,
        settings: Settings,
        anchor: Option<Head>,
    ) -> io::Result<Self> {
        let mut lock_name = OsString::from(".");
        lock_name.push(name);
        lock_name.push(".lock");
        // The log first: nothing is created beside something that is not one.
        let file = trail::open_at(&dir, name, libc::O_RDWR | libc::O_APPEND | libc::O_CREAT)?;
        let lock = trail::open_at(&dir, &lock_name, libc::O_RDWR | libc::O_CREAT)?;
        let id = file_id(&fstat(&file)?);
        let tail = Tail {
            file,
            id,
            end: u64::MAX,
            head: anchor.unwrap_or_default(),
            digest: DigestHead::default(),
            first_seq: 0,
            started: 0,
            previous_file: None,
            digest_at: Instant::now(),
            named: None,
        };
        let sink = match &settings.syslog {
            Some(p) => Some(super::audit_sink::Sink::open(p)?),
            None => None,
        };
        let watch = super::watch::HomeWatch::new(std::os::fd::AsFd::as_fd(&dir)).map(Arc::new);
        let log = AuditLog {
            watch,
            sink,
            path: path.to_path_buf(),
            dir,
            name: name.to_os_string(),
            lock,
            digest_key: digest_key(&key),
            key,
            settings,
            tail: Mutex::new(tail),
            commit: Mutex::new(Commit::default()),
            committed: Condvar::new(),
            done: AtomicU64::new(0),
        };
        {
            let mut t = log.tail.lock().unwrap_or_else(|e| e.into_inner());
            let _lock = Flock::exclusive(log.lock.as_raw_fd())?;
            log.resync(&mut t, true)?;
            if let Some(a) = anchor
                && t.head.seq < a.seq
            {
                tracing_warn(&format!(
                    "audit log {}: the trail ends at record {} but the keystore anchors record {}: records were cut or the log replaced; `kmsfs audit verify` names what is missing",
                    log.path.display(),
                    t.head.seq,
                    a.seq
                ));
            }
        }
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The watch on the log's directory, for others watching it too (the
    /// keystore beside it): one inotify read per call for both.
    pub(crate) fn dir_watch(&self) -> Option<Arc<super::watch::HomeWatch>> {
        self.watch.clone()
    }

    /// The last digest this writer wrote or saw: the anchor follows it.
    pub fn digest_seq(&self) -> u64 {
        self.tail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .digest
            .seq
    }

    /// Where the chain stands as this writer last saw it: for the anchor.
    pub fn head(&self) -> Head {
        self.tail.lock().unwrap_or_else(|e| e.into_inner()).head
    }

    /// Makes sure `t.file` is the file the log's name leads to, following a
    /// rotation or a deleted log, and that `t` knows the chain's end.
    fn follow(&self, t: &mut Tail) -> io::Result<()> {
        let seen = self.watch.as_ref().and_then(|w| w.poll());
        if seen.is_some() && seen == t.named {
            // Only the length can have moved: another writer's records.
            let size = (&t.file).seek(SeekFrom::End(0))?;
            if size != t.end {
                self.resync(t, false)?;
            }
            return Ok(());
        }
        t.named = None;
        self.follow_by_name(t)?;
        t.named = seen;
        Ok(())
    }

    /// `follow` by the log's name: one fstatat.
    fn follow_by_name(&self, t: &mut Tail) -> io::Result<()> {
        let st = match trail::stat_at(&self.dir, &self.name) {
            Ok(st) => Some(st),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(st) = &st
            && file_id(st) == t.id
        {
            if st.st_size as u64 != t.end {
                self.resync(t, false)?;
            }
            return Ok(());
        }
        // The file held was rotated or removed: learn what others wrote to
        // it first (so the head is exact), then go on in the file the name
        // leads to now.
        self.resync(t, false)?;
        t.previous_file = trail::name_of(&self.dir, &self.name, t.id)?;
        self.reopen(t)
    }

    /// Opens (creating) the file the log's name leads to now, after the
    /// file `t` holds, whose end `t` knows exactly: an empty one continues
    /// from there without looking for the chain elsewhere (reading a 64 MiB
    /// rotated file back at every rotation cost a fifth of the throughput).
    fn reopen(&self, t: &mut Tail) -> io::Result<()> {
        let file = trail::open_at(
            &self.dir,
            &self.name,
            libc::O_RDWR | libc::O_APPEND | libc::O_CREAT,
        )?;
        let st = fstat(&file)?;
        t.id = file_id(&st);
        t.file = file;
        if st.st_size == 0 {
            t.end = 0;
            t.first_seq = t.head.seq + 1;
            t.started = now_secs();
            return Ok(());
        }
        t.end = u64::MAX;
        self.resync(t, true)
    }

    /// Reads what was appended to `t.file` since `t.end` (all of it when
    /// `whole` or the file is new to `t`) to continue the chain after other
    /// writers, and cuts off a torn final line (a crash mid-write) so the
    /// next record starts clean. A file found empty, or shorter than this
    /// writer left it (copytruncate), continues from the newest of: this
    /// writer's head, the newest rotated file, the keystore's anchor.
    fn resync(&self, t: &mut Tail, whole: bool) -> io::Result<()> {
        let size = fstat(&t.file)?.st_size as u64;
        let from = if whole || t.end == u64::MAX || size < t.end {
            0
        } else {
            t.end
        };
        if size == 0 {
            return self.continue_empty(t);
        }
        let mut f = t.file.try_clone()?;
        f.seek(SeekFrom::Start(from))?;
        let before = trail::Scan {
            head: if from == 0 { Head::default() } else { t.head },
            digest: if from == 0 {
                DigestHead::default()
            } else {
                t.digest
            },
            ..Default::default()
        };
        let s = trail::scan(&mut io::BufReader::with_capacity(1 << 16, f), before)?;
        let good = from + s.good_bytes;
        if s.torn {
            t.file.set_len(good)?;
            tracing_warn(&format!(
                "audit log {}: removed a torn final record ({} bytes)",
                self.path.display(),
                size - good
            ));
        }
        if good == 0 {
            return self.continue_empty(t);
        }
        if let Some(e) = s.last_bad {
            t.end = u64::MAX;
            return Err(io::Error::other(format!(
                "the audit log's last line cannot continue the chain ({e}); run `kmsfs audit verify`"
            )));
        }
        if from == 0 {
            let (first, time) = s.first.clone().unwrap_or((s.head.seq, String::new()));
            t.first_seq = first;
            t.started = super::clock::parse_time(&time).unwrap_or_else(now_secs);
        }
        // A file that starts mid-chain without saying where the digests
        // stood keeps what this writer knew.
        if from > 0
            || s.first.as_ref().is_none_or(|f| f.0 <= 1)
            || s.digest != DigestHead::default()
        {
            t.digest = s.digest;
        }
        t.head = s.head;
        t.end = good;
        Ok(())
    }

    /// The log is empty: the next batch starts it with a LogFileStarted
    /// after the newest chain state known.
    fn continue_empty(&self, t: &mut Tail) -> io::Result<()> {
        t.end = 0;
        if let Some((s, name)) = trail::newest(&self.dir, &self.name, &self.name)?
            && s.head.seq >= t.head.seq
        {
            if s.head.seq > t.head.seq {
                t.head = s.head;
                t.digest = s.digest;
            }
            t.previous_file = Some(name);
        }
        t.first_seq = t.head.seq + 1;
        t.started = now_secs();
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
        let _lock = Flock::exclusive(self.lock.as_raw_fd())?;
        self.follow(&mut t)?;
        if self.rotation_due(&t) {
            self.rotate_locked(&mut t)?;
        }
        let mut out =
            String::with_capacity(batch.iter().map(|b| b.len() + 110).sum::<usize>() + 1024);
        let mut head = t.head;
        // Only the trail's own records need the time.
        let time = || super::clock::rfc3339(now_secs());
        if t.end == 0 && head.seq > 0 {
            let prev = t
                .previous_file
                .as_ref()
                .map(|n| n.to_string_lossy().into_owned());
            let body = started_body(&head, &t.digest, prev.as_deref(), &time());
            head = self.seal(&mut out, &body, head);
        }
        for body in &batch {
            head = self.seal(&mut out, body, head);
        }
        let mut digest = t.digest;
        if head.seq > digest.seq && t.digest_at.elapsed() >= self.settings.digest_every {
            (digest, head) = self.seal_digest(&mut out, head, digest, &time());
        }
        self.append_locked(&mut t, &out, head, digest)
    }

    fn seal(&self, out: &mut String, body: &str, head: Head) -> Head {
        let seq = head.seq + 1;
        Head {
            seq,
            mac: seal_line(out, body, &self.key, seq, &head.mac),
        }
    }

    /// Appends a digest over the lines after `digest` up to `head`; returns
    /// the new digest head and the chain's head after it.
    fn seal_digest(
        &self,
        out: &mut String,
        head: Head,
        digest: DigestHead,
        time: &str,
    ) -> (DigestHead, Head) {
        let (body, sig) = digest_body(
            &self.digest_key,
            (digest.seq + 1, head.seq),
            &head.mac,
            &digest,
            time,
        );
        let after = self.seal(out, &body, head);
        (
            DigestHead {
                seq: after.seq,
                sig,
            },
            after,
        )
    }

    /// Writes `out` (sealed lines ending at `head`) to the held file.
    fn append_locked(
        &self,
        t: &mut Tail,
        out: &str,
        head: Head,
        digest: DigestHead,
    ) -> io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        if let Err(e) = (&t.file).write_all(out.as_bytes()) {
            // A partial write is cut off by the next resync.
            t.end = u64::MAX;
            return Err(e);
        }
        t.end += out.len() as u64;
        if let Some(s) = &self.sink {
            s.send(out);
        }
        if digest != t.digest {
            t.digest_at = Instant::now();
        }
        t.head = head;
        t.digest = digest;
        Ok(())
    }

    fn rotation_due(&self, t: &Tail) -> bool {
        if t.end == 0 || t.end == u64::MAX {
            return false;
        }
        let by_size = self.settings.max_bytes > 0 && t.end >= self.settings.max_bytes;
        let by_age = self
            .settings
            .max_age
            .is_some_and(|age| now_secs().saturating_sub(t.started) >= age.as_secs() as i64);
        by_size || by_age
    }

    /// Closes the active file with a digest, renames it to
    /// `NAME.FIRST-LAST` and starts a new one; under the lock, `t` current.
    fn rotate_locked(&self, t: &mut Tail) -> io::Result<OsString> {
        if t.head.seq > t.digest.seq {
            let mut out = String::new();
            let time = super::clock::rfc3339(now_secs());
            let (digest, head) = self.seal_digest(&mut out, t.head, t.digest, &time);
            self.append_locked(t, &out, head, digest)?;
        }
        // No fsync here: a rotated file's records reach the disk as the
        // active file's do (at the mount's sync points and when a writer
        // closes). Syncing 64 MiB at every rotation cost the KMS a fifth
        // of its throughput under a sustained load.
        let mut rotated = OsString::from(&self.name);
        rotated.push(format!(".{}-{}", t.first_seq, t.head.seq));
        let mut n = 1;
        loop {
            let mut candidate = rotated.clone();
            if n > 1 {
                candidate.push(format!(".{n}"));
            }
            match trail::rename_at(&self.dir, &self.name, &candidate) {
                Ok(()) => {
                    rotated = candidate;
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) && n < 100 => n += 1,
                Err(e) => return Err(e),
            }
        }
        t.previous_file = Some(rotated.clone());
        self.reopen(t)?;
        Ok(rotated)
    }

    /// Rotates now (`kmsfs audit rotate`); `None` if the log is empty. The
    /// new file gets its LogFileStarted at once, so the chain shows there.
    pub fn rotate(&self) -> io::Result<Option<OsString>> {
        self.flush_coalesced(true)?;
        let mut t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let _lock = Flock::exclusive(self.lock.as_raw_fd())?;
        self.follow(&mut t)?;
        if t.end == 0 || t.head.seq == 0 {
            return Ok(None);
        }
        // An operator's rotation is durable when the command returns.
        t.file.sync_data()?;
        let rotated = self.rotate_locked(&mut t)?;
        if t.end == 0 {
            let mut out = String::new();
            let time = super::clock::rfc3339(now_secs());
            let prev = rotated.to_string_lossy().into_owned();
            let body = started_body(&t.head, &t.digest, Some(&prev), &time);
            let head = self.seal(&mut out, &body, t.head);
            let digest = t.digest;
            self.append_locked(&mut t, &out, head, digest)?;
            t.file.sync_data()?;
        }
        // SAFETY: fsync of the directory, so the rename survives a crash.
        unsafe { libc::fsync(self.dir.as_raw_fd()) };
        Ok(Some(rotated))
    }

    /// Writes a digest if records are due one (the mount and the server
    /// call this every second, so a burst followed by silence is covered).
    pub fn tick(&self) -> io::Result<()> {
        self.flush_coalesced(false)?;
        let due = {
            let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            t.head.seq > t.digest.seq && t.digest_at.elapsed() >= self.settings.digest_every
        };
        if due {
            self.write_batch(vec![])?;
        }
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

#[cfg(test)]
#[path = "audit_tests.rs"]
mod tests;
