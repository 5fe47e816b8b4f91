//! Reading ahead across the files and directories of a tree.
//!
//! The kernel reads ahead within a file, never across files, so a program
//! that reads a tree file by file (a backup, `cp -r`, `grep -r`, tar, a
//! checksum of every file) waits for one cold disk read after another: each
//! directory's blocks and inodes as it is listed, each file's header as it
//! is opened. So, in the background:
//!
//! - the first listing of a directory (for a second) walks the directories
//!   below it, breadth first, up to WALK of them: each is listed and its
//!   entries' inodes read, as the listing through the mount will;
//! - the first open in a directory (for a second) asks for the start (what
//!   an open reads: the header and the first blocks) of the files there,
//!   in the directories below it, then beside it and beside its parents,
//!   nearest first, up to MAX_FILES files or MAX_BYTES, and stops early
//!   when the files it looks at are in the page cache already.
//!
//! The device then works on many requests at once and the opens that follow
//! find their ciphertext cached. Reading every file of an 8,000-file tree
//! cold: see the README's Performance (`--no-prefetch` turns this off).
//!
//! Only ciphertext moves: no key is unwrapped and nothing is audited ahead;
//! the open that follows checks and records as ever. No access time is set
//! (O_NOATIME): a file or directory read ahead was not read by anyone. What it may waste is
//! disk reads of files nobody opens, bounded per scan and, over all scans,
//! per second (RATE: one user of a shared mount cannot keep the disk busy
//! for the others by opening in cold directories). Everything here is
//! best-effort: an entry that fails to open or is not a regular file is
//! skipped, and a job that cannot be queued is dropped.
//!
//! The cipherdir is hostile: directories are opened beneath the root with
//! the walk's rules (no symlink, no mount point followed), entries by a
//! single name with O_PATH and O_NOFOLLOW (no device or FIFO is ever
//! opened), and read only after fstat says they are regular files, through
//! that same descriptor (/proc/self/fd), never by name again.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How much of each file is asked for: what an open reads.
const HEAD: i64 = super::super::backing::PREFETCH_ON_OPEN;
/// Files asked for at most per scan.
const MAX_FILES: usize = 1024;
/// Bytes asked for at most per scan.
const MAX_BYTES: i64 = 64 << 20;
/// Bytes all scans together ask for at most per second (and at once): on a
/// shared mount, one user opening a file in each of many cold directories
/// must not have the daemon read the disk for them without end, so the
/// others' reads wait behind. Twice a scan: a tree read at this rate is
/// read ahead all the way (reading every file of the 96 MiB benchmark tree
/// takes 1.4 s).
const RATE: i64 = 2 * MAX_BYTES;
/// Subdirectories of one directory a scan goes into at most.
const MAX_SUBDIRS: usize = 64;
/// Directories a scan has waiting at most.
const MAX_QUEUED: usize = 256;
/// How long a directory, once scanned or walked, is not again: a program
/// that lists or opens in one directory over and over costs one scan a
/// second at most.
const AGAIN_AFTER: Duration = Duration::from_secs(1);
/// Files a scan looks at before it may find them warm (Budget::spent).
const WARM: usize = 32;
/// Directories remembered as scanned (past that, the expired ones are
/// forgotten, then all).
const REMEMBERED: usize = 4096;
/// Jobs waiting; past that, an open or a listing asks for none.
const QUEUE: usize = 1024;
/// Directories a walk lists at most, from one listing through the mount.
const WALK: usize = 256;
/// Threads: each waits on the disk for directory blocks and inodes, one
/// request at a time, so several keep the device busy (four: a guess, not
/// measured against other counts).
const THREADS: usize = 4;

#[derive(Default)]
pub struct Prefetch {
    /// Set by `start` in the serving daemon (after its fork); until then,
    /// and in the tools, `opened` and `listed` do nothing.
    ahead: OnceLock<Option<Arc<Ahead>>>,
}

/// What the threads share.
struct Ahead {
    root: File,
    tx: SyncSender<Job>,
    /// Directories whose files were asked for.
    scanned: Scanned,
    /// Directories listed by a walk.
    walked: Scanned,
    /// Bytes the scans may still ask for (RATE).
    rate: Mutex<Rate>,
}

/// A token bucket of bytes, refilled at RATE a second up to RATE.
struct Rate {
    left: i64,
    at: Instant,
}

impl Rate {
    fn new(now: Instant) -> Self {
        Rate {
            left: RATE,
            at: now,
        }
    }

    /// Up to `want` bytes, taken from what is left at `now`.
    fn take(&mut self, want: i64, now: Instant) -> i64 {
        let refill = now.duration_since(self.at).as_secs_f64() * RATE as f64;
        self.left = (self.left as f64 + refill).min(RATE as f64) as i64;
        self.at = now;
        let n = want.min(self.left).max(0);
        self.left -= n;
        n
    }

    /// What a scan took and did not ask for; less than nothing if its last
    /// file took it past its share (a debt the next scans wait out).
    fn give_back(&mut self, n: i64) {
        self.left = (self.left + n).min(RATE);
    }
}

enum Job {
    /// Ask for the files in and around this directory.
    Files(String),
    /// List this directory, and queue its subdirectories while the walk's
    /// budget (directories still to list) lasts.
    Dirs(String, Arc<AtomicUsize>),
}

/// Backing directories scanned, and when.
#[derive(Default)]
struct Scanned(Mutex<HashMap<String, Instant>>);

impl Scanned {
    /// True if `dir` is due for a scan, which is then counted as done.
    fn claim(&self, dir: &str) -> bool {
        let now = Instant::now();
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.get(dir)
            .is_some_and(|t| now.duration_since(*t) < AGAIN_AFTER)
        {
            return false;
        }
        if s.len() >= REMEMBERED {
            s.retain(|_, t| now.duration_since(*t) < AGAIN_AFTER);
            if s.len() >= REMEMBERED {
                s.clear();
            }
        }
        s.insert(dir.to_string(), now);
        true
    }

    /// `dir` was claimed but not scanned: due again.
    fn release(&self, dir: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(dir);
    }
}

impl Prefetch {
    /// Whether `start` ran and succeeded: callers skip the backing path's
    /// computation otherwise.
    pub fn on(&self) -> bool {
        matches!(self.ahead.get(), Some(Some(_)))
    }

    /// Starts the threads over the cipherdir `root` (a duplicate of its
    /// descriptor is kept). Once; a failure leaves prefetching off.
    pub fn start(&self, root: &File) {
        self.ahead.get_or_init(|| {
            let (tx, rx) = sync_channel::<Job>(QUEUE);
            let ahead = Arc::new(Ahead {
                root: root.try_clone().ok()?,
                tx,
                scanned: Scanned::default(),
                walked: Scanned::default(),
                rate: Mutex::new(Rate::new(Instant::now())),
            });
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..THREADS {
                let (ahead, rx) = (ahead.clone(), rx.clone());
                std::thread::Builder::new()
                    .name(format!("kmsfs-ahead-{i}"))
                    .spawn(move || serve(&ahead, &rx))
                    .ok()?;
            }
            Some(ahead)
        });
    }

    /// A file in the backing directory `dir` ("" for the root) was opened.
    pub fn opened(&self, dir: &str) {
        let Some(Some(a)) = self.ahead.get() else {
            return;
        };
        if dir.len() < libc::PATH_MAX as usize
            && a.scanned.claim(dir)
            && a.tx.try_send(Job::Files(dir.to_string())).is_err()
        {
            a.scanned.release(dir);
        }
    }

    /// The backing directory `dir` is being listed from its start.
    pub fn listed(&self, dir: &str) {
        let Some(Some(a)) = self.ahead.get() else {
            return;
        };
        if dir.len() < libc::PATH_MAX as usize && a.walked.claim(dir) {
            let left = Arc::new(AtomicUsize::new(WALK));
            if a.tx.try_send(Job::Dirs(dir.to_string(), left)).is_err() {
                a.walked.release(dir);
            }
        }
    }
}

fn serve(a: &Ahead, rx: &Mutex<Receiver<Job>>) {
    loop {
        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        match next {
            Err(_) => return,
            Ok(Job::Files(dir)) => {
                let lock = || a.rate.lock().unwrap_or_else(|e| e.into_inner());
                let bytes = lock().take(MAX_BYTES, Instant::now());
                let mut budget = Budget::new(MAX_FILES, bytes);
                let _ = scan(&a.root, &dir, &a.scanned, &mut budget);
                lock().give_back(budget.bytes);
            }
            Ok(Job::Dirs(dir, left)) => walk(a, &dir, &left),
        }
    }
}

/// Lists `dir` (which reads its inode and blocks into the caches, as a
/// listing through the mount is about to), and queues its subdirectories.
fn walk(a: &Ahead, dir: &str, left: &Arc<AtomicUsize>) {
    let Ok(f) = open_dir(&a.root, dir) else {
        return;
    };
    let mut below = vec![];
    let _ = super::listing::for_each(&f, 0, |e, d| {
        match e.kind {
            fuser::FileType::Directory if e.name != "." && e.name != ".." => {
                if below.len() < MAX_SUBDIRS {
                    below.push(e.name.to_string());
                }
            }
            fuser::FileType::Directory => {}
            _ => {
                let _ = super::super::stat::lstat_at(d, e.name);
            }
        }
        false
    });
    for name in below {
        // One of the walk's directories, if any are left.
        if left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_err()
        {
            return;
        }
        let sub = join(dir, &name);
        if a.walked.claim(&sub) && a.tx.try_send(Job::Dirs(sub.clone(), left.clone())).is_err() {
            a.walked.release(&sub);
            return;
        }
    }
}

/// What a scan may still ask for.
struct Budget {
    files: usize,
    bytes: i64,
    /// Files looked at, and those of them found already in the page cache.
    seen: usize,
    cached: usize,
}

impl Budget {
    fn new(files: usize, bytes: i64) -> Self {
        Budget {
            files,
            bytes,
            seen: 0,
            cached: 0,
        }
    }

    /// Out of files or bytes, or the files are in the page cache already
    /// (three in four of the first WARM looked at): the rest likely are too,
    /// and asking for them would only cost the daemon CPU.
    fn spent(&self) -> bool {
        self.files == 0 || self.bytes <= 0 || self.warm()
    }

    fn warm(&self) -> bool {
        self.seen >= WARM && self.cached * 4 >= self.seen * 3
    }

    fn count(&mut self, head: Head) {
        self.seen += 1;
        match head {
            Head::Cached => self.cached += 1,
            Head::Asked(n) => {
                self.files = self.files.saturating_sub(1);
                self.bytes -= n;
            }
        }
    }
}

fn scan(root: &File, dir: &str, scanned: &Scanned, budget: &mut Budget) -> io::Result<()> {
    // Nearest first: `dir`, the directories below it, breadth first, then
    // those beside it and beside each of its parents: a walk of the tree
    // (depth first, as tar, cp -r and find go) reads them next.
    let mut todo = VecDeque::from([dir.to_string()]);
    let mut up = Some(dir);
    loop {
        while let Some(d) = todo.pop_front() {
            if budget.spent() {
                // Not reached: due for a scan of their own.
                scanned.release(&d);
                for d in todo.drain(..) {
                    scanned.release(&d);
                }
                return Ok(());
            }
            let Ok(f) = open_dir(root, &d) else { continue };
            let mut below = vec![];
            let _ = files_of(&f, budget, &mut below);
            if budget.spent() && !budget.warm() {
                // Cut short: its other files are asked for when it is opened in.
                scanned.release(&d);
            }
            for name in below {
                let sub = join(&d, &name);
                if todo.len() < MAX_QUEUED && scanned.claim(&sub) {
                    todo.push_back(sub);
                }
            }
        }
        // The parent's other directories (those beside the one just done).
        let Some(child) = up else { return Ok(()) };
        if child.is_empty() {
            return Ok(());
        }
        let parent = child.rsplit_once('/').map_or("", |(p, _)| p);
        up = Some(parent);
        let f = open_dir(root, parent)?;
        let mut below = vec![];
        let _ = files_of(&f, &mut Budget::new(0, 0), &mut below);
        for name in below {
            let sub = join(parent, &name);
            if todo.len() < MAX_QUEUED && scanned.claim(&sub) {
                todo.push_back(sub);
            }
        }
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The backing directory `dir` ("" for the root), opened beneath the root
/// with the walk's rules.
fn open_dir(root: &File, dir: &str) -> io::Result<File> {
    let path = CString::new(if dir.is_empty() { "." } else { dir })?;
    // O_NOATIME: a listing here is not one through the mount, and must not
    // set the access time a user sees (with relatime, the first listing
    // after a change would). A directory the daemon may not open so is
    // left alone (EPERM).
    let fd = super::beneath(
        root.as_raw_fd(),
        &path,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOATIME,
        0,
    )?;
    Ok(File::from(fd))
}

/// Asks for the head of each regular file in `dir` while the budget lasts
/// (none with a spent one), and collects its subdirectories' names.
fn files_of(dir: &File, budget: &mut Budget, below: &mut Vec<String>) -> io::Result<()> {
    super::listing::for_each(dir, 0, |e, d| {
        match e.kind {
            fuser::FileType::RegularFile if !budget.spent() => {
                if let Some(head) = ask_for_head(d, e.name) {
                    budget.count(head);
                }
            }
            fuser::FileType::Directory
                if e.name != "." && e.name != ".." && below.len() < MAX_SUBDIRS =>
            {
                below.push(e.name.to_string());
            }
            _ => {}
        }
        false
    })
}

/// What `ask_for_head` found.
enum Head {
    /// Its first page is in the page cache already: nothing asked for.
    Cached,
    /// Its first bytes, this many, are being read.
    Asked(i64),
}

/// Starts reading the head of `name` in `dir` if it is a regular file with
/// bytes in it that are not in the page cache.
fn ask_for_head(dir: &File, name: &str) -> Option<Head> {
    let c = CString::new(name).ok()?;
    // O_PATH opens nothing (no device's open).
    let held = super::open_path_in(dir.as_raw_fd(), &c).ok()?;
    let fd = held.as_raw_fd();
    let st = super::super::stat::fstat(&held).ok()?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_size <= 0 {
        return None;
    }
    let n = st.st_size.min(HEAD);
    let again = CString::new(format!("/proc/self/fd/{fd}")).ok()?;
    let open = |flags| {
        // SAFETY: a C path; the descriptor returned is owned below.
        let r = unsafe { libc::open(again.as_ptr(), flags | libc::O_RDONLY | libc::O_CLOEXEC) };
        // SAFETY: a fresh descriptor, owned once.
        (r >= 0).then(|| unsafe { OwnedFd::from_raw_fd(r) })
    };
    // The same inode as the fstat above (the magic link is the descriptor,
    // not the name). O_NOATIME leaves the access time as the user left it:
    // the read in in_cache would set it, and nobody has read the file. A
    // file the daemon may not open so (not its own, no CAP_FOWNER) is only
    // asked for, which sets no time.
    let Some(f) = open(libc::O_NOATIME) else {
        let f = open(0)?;
        // SAFETY: fadvise on an open descriptor; only a hint.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, n, libc::POSIX_FADV_WILLNEED) };
        return Some(Head::Asked(n));
    };
    if in_cache(&f) {
        return Some(Head::Cached);
    }
    // SAFETY: fadvise on an open descriptor; only a hint.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, n, libc::POSIX_FADV_WILLNEED) };
    Some(Head::Asked(n))
}

/// True if the first byte of `f` is in the page cache: a read that must
/// not wait for the disk (RWF_NOWAIT) gets it. On a miss the kernel starts
/// its own read-ahead of the file before it says EAGAIN (RWF_NOWAIT is not
/// RWF_NOIO), which the fadvise that follows asks for anyway.
fn in_cache(f: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    let iov = libc::iovec {
        iov_base: b.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: one iovec over a live 1-byte buffer, on an open descriptor.
    let r = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    r == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_scans_together_ask_for_at_most_rate_bytes_a_second() {
        let t0 = Instant::now();
        let mut r = Rate::new(t0);
        assert_eq!(r.take(MAX_BYTES, t0), MAX_BYTES);
        assert_eq!(r.take(MAX_BYTES, t0), MAX_BYTES);
        assert_eq!(r.take(MAX_BYTES, t0), 0, "the bucket is empty");
        // Half a second refills half of RATE.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(r.take(MAX_BYTES, t1), RATE / 2);
        // What a scan did not use comes back; what it overshot is owed.
        r.give_back(1000);
        assert_eq!(r.take(MAX_BYTES, t1), 1000);
        r.give_back(-4096);
        assert_eq!(r.take(MAX_BYTES, t1), 0);
        let t2 = t1 + Duration::from_secs(1);
        assert_eq!(r.take(i64::MAX, t2), RATE - 4096, "the debt is paid first");
        let t3 = t2 + Duration::from_secs(10);
        assert_eq!(r.take(i64::MAX, t3), RATE, "refilled up to RATE, no more");
    }

    #[test]
    fn a_claim_holds_until_released_or_expired() {
        let s = Scanned::default();
        assert!(s.claim("a"));
        assert!(!s.claim("a"), "claimed twice within AGAIN_AFTER");
        assert!(s.claim("b"));
        s.release("a");
        assert!(s.claim("a"), "released, so due again");
        std::thread::sleep(AGAIN_AFTER + Duration::from_millis(50));
        assert!(s.claim("b"), "expired, so due again");
    }

    #[test]
    fn a_scan_stops_once_most_files_are_cached_and_not_before() {
        let mut b = Budget::new(MAX_FILES, MAX_BYTES);
        for _ in 0..WARM - 1 {
            b.count(Head::Cached);
        }
        assert!(!b.spent(), "judged warm before WARM files were seen");
        b.count(Head::Cached);
        assert!(b.spent() && b.warm());
        // Half cached: cold enough to go on.
        let mut b = Budget::new(MAX_FILES, MAX_BYTES);
        for i in 0..WARM * 2 {
            b.count(if i % 2 == 0 {
                Head::Cached
            } else {
                Head::Asked(4096)
            });
        }
        assert!(!b.spent());
        assert_eq!(
            (b.files, b.bytes),
            (MAX_FILES - WARM, MAX_BYTES - 4096 * WARM as i64)
        );
        // Out of bytes.
        let mut b = Budget::new(MAX_FILES, 8192);
        b.count(Head::Asked(8192));
        assert!(b.spent() && !b.warm());
    }

    fn ahead(root: &std::path::Path) -> (Ahead, Receiver<Job>) {
        let (tx, rx) = sync_channel(QUEUE);
        let a = Ahead {
            root: File::open(root).unwrap(),
            tx,
            scanned: Scanned::default(),
            walked: Scanned::default(),
            rate: Mutex::new(Rate::new(Instant::now())),
        };
        (a, rx)
    }

    fn queued(rx: &Receiver<Job>) -> Vec<String> {
        let mut v: Vec<String> = rx
            .try_iter()
            .map(|j| match j {
                Job::Dirs(d, _) => d,
                Job::Files(d) => panic!("a walk queued a file scan of {d}"),
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_walk_queues_subdirectories_within_its_budget_and_never_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        for d in ["top/a", "top/b", "top/c", "top/c/deep", "elsewhere"] {
            std::fs::create_dir_all(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("top/file"), b"x").unwrap();
        std::os::unix::fs::symlink("../elsewhere", t.path().join("top/link")).unwrap();
        let (a, rx) = ahead(t.path());
        walk(&a, "top", &Arc::new(AtomicUsize::new(WALK)));
        assert_eq!(queued(&rx), ["top/a", "top/b", "top/c"]);
        // Walked in the last second: not queued again.
        walk(&a, "top", &Arc::new(AtomicUsize::new(WALK)));
        assert_eq!(queued(&rx), Vec::<String>::new());
        // A budget of two directories queues two, and leaves the third due.
        let (a, rx) = ahead(t.path());
        walk(&a, "top", &Arc::new(AtomicUsize::new(2)));
        assert_eq!(queued(&rx).len(), 2);
        assert_eq!(
            [
                a.walked.claim("top/a"),
                a.walked.claim("top/b"),
                a.walked.claim("top/c")
            ]
            .iter()
            .filter(|c| **c)
            .count(),
            1
        );
        // A directory swapped for a symlink after its listing is refused:
        // O_NOFOLLOW|O_DIRECTORY meets the link itself and says ENOTDIR
        // (RESOLVE_NO_SYMLINKS would say ELOOP for one mid-path).
        let e = open_dir(&a.root, "top/link").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        let e = open_dir(&a.root, "top/link/x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn only_regular_files_with_bytes_are_asked_for() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        std::fs::write(d.join("file"), vec![7u8; 10_000]).unwrap();
        std::fs::write(d.join("empty"), b"").unwrap();
        std::fs::create_dir(d.join("dir")).unwrap();
        std::os::unix::fs::symlink("file", d.join("link")).unwrap();
        let fifo = CString::new(d.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a C path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let dir = File::open(d).unwrap();
        assert!(matches!(
            ask_for_head(&dir, "file"),
            Some(Head::Asked(10_000)) | Some(Head::Cached)
        ));
        for n in ["empty", "dir", "link", "fifo", "missing"] {
            assert!(ask_for_head(&dir, n).is_none(), "{n} asked for");
        }
        // Nobody holds the FIFO open for reading: a writer that will not
        // wait is refused (ENXIO).
        // SAFETY: a C path; a descriptor, if any, is closed at once.
        let fd = unsafe { libc::open(fifo.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
        let e = io::Error::last_os_error().raw_os_error();
        if fd >= 0 {
            // SAFETY: a descriptor of ours.
            unsafe { libc::close(fd) };
        }
        assert_eq!((fd, e), (-1, Some(libc::ENXIO)));
    }
}
