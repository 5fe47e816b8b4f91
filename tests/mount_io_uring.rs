//! FUSE over io_uring (`kmsfs mount --io-uring auto`, opt-in): with the
//! kernel's `enable_uring` on, every request but forgets goes through the
//! per-CPU ring threads, and the files read and change as over /dev/fuse;
//! with it off, or with `--io-uring off`, /dev/fuse serves and the log says
//! why. The tests switch the kernel parameter, so they hold one lock and
//! put the old value back however they end.

mod common;
use common::*;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";
static KERNEL_PARAM: Mutex<()> = Mutex::new(());

/// Sets `enable_uring` (one test at a time) and restores what it was on drop.
struct Uring {
    was: String,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl Uring {
    fn set(on: bool) -> Uring {
        let one = KERNEL_PARAM.lock().unwrap_or_else(|e| e.into_inner());
        let was = std::fs::read_to_string(PARAM).unwrap_or_else(|e| {
            panic!(
                "{PARAM}: {e}: this kernel has no FUSE over io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING)"
            )
        });
        std::fs::write(PARAM, if on { "Y" } else { "N" }).expect("set enable_uring (needs root)");
        Uring {
            was: was.trim().to_string(),
            _one: one,
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let _ = std::fs::write(PARAM, &self.was);
    }
}

/// Mounts `fx` with `extra` flags and a log file of its own.
fn mount_logged<'a>(fx: &'a Fixture, extra: &[&str]) -> (Mounted<'a>, PathBuf) {
    let log = fx.dir.path().join("mount.log");
    let mut args = extra.to_vec();
    args.extend(["--log-file", log.to_str().unwrap()]);
    (fx.mount_with(&args), log)
}

/// Waits (bounded) for the mount's log to contain `what`; returns the log.
fn log_with(log: &Path, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the mount log never said {what:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How many ring threads the daemon serving `cipher` has.
fn ring_threads(cipher: &Path) -> usize {
    let want = cipher.to_str().unwrap();
    for p in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.contains(&b"mount".as_slice()) && args.contains(&want.as_bytes()) {
            return std::fs::read_dir(p.path().join("task"))
                .unwrap()
                .flatten()
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|n| n.starts_with("fuser-ring-"))
                })
                .count();
        }
    }
    panic!("no kmsfs daemon found for {want}");
}

fn possible_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) as usize }
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get
    // a valid set of the size passed.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// Files, directories, a large file in 1 MiB writes (the ring's payload
/// bound), renames, links, truncation and removal, from one CPU, with
/// every byte and name checked.
fn workload(root: &Path, cpu: usize) {
    pin_to(cpu);
    let mut rng = Rng(0x5eed + cpu as u64);
    let top = root.join(format!("cpu{cpu}"));
    std::fs::create_dir(&top).unwrap();
    let big: Vec<u8> = rng.bytes(3 << 20);
    {
        use std::io::Write;
        let mut f = std::fs::File::create(top.join("big")).unwrap();
        for chunk in big.chunks(1 << 20) {
            f.write_all(chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(std::fs::read(top.join("big")).unwrap(), big);
    let mut files: Vec<(PathBuf, Vec<u8>)> = vec![];
    for d in 0..3 {
        let dir = top.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for i in 0..100 {
            let n = rng.below(9000) as usize;
            let data = rng.bytes(n);
            let p = dir.join(format!("file-{i:03}.txt"));
            std::fs::write(&p, &data).unwrap();
            files.push((p, data));
        }
    }
    std::fs::rename(top.join("d1"), top.join("moved")).unwrap();
    let mut listed: Vec<String> = std::fs::read_dir(top.join("moved"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    listed.sort();
    let want: Vec<String> = (0..100).map(|i| format!("file-{i:03}.txt")).collect();
    assert_eq!(listed, want);
    for (p, data) in &files {
        let p = PathBuf::from(p.to_str().unwrap().replace("/d1/", "/moved/"));
        assert_eq!(&std::fs::read(&p).unwrap(), data, "{}", p.display());
    }
    symlink("moved/file-007.txt", top.join("link")).unwrap();
    assert_eq!(
        std::fs::read_link(top.join("link")).unwrap(),
        Path::new("moved/file-007.txt")
    );
    std::fs::hard_link(top.join("d0/file-001.txt"), top.join("second")).unwrap();
    assert_eq!(
        std::fs::read(top.join("second")).unwrap(),
        std::fs::read(top.join("d0/file-001.txt")).unwrap()
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(top.join("big"))
        .unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    assert_eq!(std::fs::read(top.join("big")).unwrap(), &big[..1000]);
    std::fs::remove_dir_all(&top).unwrap();
    assert_eq!(read_err(&top), Some(libc::ENOENT));
}

#[test]
fn with_the_kernel_offering_it_every_request_goes_over_the_rings() {
    let _uring = Uring::set(true);
    let fx = Fixture::new();
    let (m, log) = mount_logged(&fx, &["--io-uring", "auto"]);
    let cpus = possible_cpus();
    log_with(&log, &format!("FUSE over io_uring: {cpus} queues"));
    let rings = ring_threads(&fx.cipher);
    assert!(rings >= 2 * cpus, "{rings} ring threads for {cpus} CPUs");
    // From every CPU at once: each CPU's requests go to its own queue.
    let online = std::thread::available_parallelism().unwrap().get();
    std::thread::scope(|s| {
        for cpu in 0..online {
            let root = fx.mnt.clone();
            s.spawn(move || workload(&root, cpu));
        }
    });
    assert_eq!(std::fs::read_dir(&fx.mnt).unwrap().count(), 0);
    m.unmount();
    log_with(&log, "kmsfs: unmounted");
    let o = fx.cli(&["fsck", fx.cipher.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "fsck after the ring workload: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn without_the_kernel_offering_it_dev_fuse_serves_and_the_log_says_why() {
    let _uring = Uring::set(false);
    let fx = Fixture::new();
    let (m, log) = mount_logged(&fx, &["--io-uring", "auto"]);
    let text = log_with(&log, "FUSE over io_uring not offered by the kernel");
    assert!(text.contains("enable_uring = Y"), "{text}");
    assert_eq!(ring_threads(&fx.cipher), 0);
    workload(&fx.mnt, 0);
    m.unmount();
}

#[test]
fn io_uring_off_keeps_dev_fuse_even_when_offered() {
    let _uring = Uring::set(true);
    let fx = Fixture::new();
    let (m, log) = mount_logged(&fx, &["--io-uring", "off"]);
    std::fs::write(fx.m("a"), b"over /dev/fuse").unwrap();
    assert_eq!(std::fs::read(fx.m("a")).unwrap(), b"over /dev/fuse");
    assert_eq!(ring_threads(&fx.cipher), 0);
    let text = log_with(&log, "kmsfs: serving");
    assert!(!text.contains("io_uring"), "{text}");
    m.unmount();
}
