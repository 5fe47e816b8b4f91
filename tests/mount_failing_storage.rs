//! Failing storage: the cipherdir lives on ext4 over a loop device whose
//! blocks come from faultfs (examples/faultfs.rs), which fails the reads and
//! writes it is told to. A read the disk fails returns EIO for that file
//! only and is logged; writes the disk fails are reported by fsync, the
//! ext4 then goes read-only and kmsfs says EROFS, keeps serving reads and
//! never panics; after repair every acknowledged byte is there.

mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// ext4 over a loop device over faultfs's `disk` over an image file.
struct FailingDisk {
    image: PathBuf,
    fuse_mnt: PathBuf,
    control: PathBuf,
    at: PathBuf,
    loopdev: String,
    faultfs: Option<Child>,
}

fn faultfs_bin() -> PathBuf {
    // target/<profile>/deps/<this test> → target/<profile>/examples/faultfs,
    // which `cargo test` builds with the tests.
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/faultfs");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --example faultfs` (cargo test builds it)",
        bin.display()
    );
    bin
}

fn wait_until(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl FailingDisk {
    /// Makes the stack with the ext4 mounted at `at`.
    fn new(work: &Path, at: &Path) -> FailingDisk {
        let image = work.join("disk.img");
        let fuse_mnt = work.join("faultfs");
        let control = work.join("faults");
        fs::create_dir_all(&fuse_mnt).unwrap();
        fs::create_dir_all(at).unwrap();
        fs::File::create(&image).unwrap().set_len(64 << 20).unwrap();
        sh_ok(&format!("mkfs.ext4 -q -F -b 4096 {}", image.display()));
        let faultfs = Command::new(faultfs_bin())
            .arg(&image)
            .arg(&fuse_mnt)
            .arg(&control)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut d = FailingDisk {
            image,
            fuse_mnt,
            control,
            at: at.to_path_buf(),
            loopdev: String::new(),
            faultfs: Some(faultfs),
        };
        wait_until("faultfs mounting", 30, || is_mounted(&d.fuse_mnt));
        d.loopdev = sh_ok(&format!(
            "losetup --find --show {}",
            d.fuse_mnt.join("disk").display()
        ))
        .trim()
        .to_string();
        d.mount_ext4();
        // kmsfs init wants an empty directory (e2fsck makes it again later).
        fs::remove_dir(at.join("lost+found")).unwrap();
        d
    }

    fn mount_ext4(&self) {
        sh_ok(&format!(
            "mount -t ext4 -o errors=remount-ro {} {}",
            self.loopdev,
            self.at.display()
        ));
    }

    fn fail(&self, rules: &str) {
        fs::write(&self.control, rules).unwrap();
    }

    /// The byte ranges of the image holding `file`'s data (FIBMAP, 4 KiB
    /// blocks).
    fn extents(file: &Path) -> Vec<(u64, u64)> {
        let f = fs::File::open(file).unwrap();
        let blocks = f.metadata().unwrap().len().div_ceil(4096);
        (0..blocks)
            .filter_map(|i| {
                let mut b: libc::c_int = i as libc::c_int;
                // SAFETY: FIBMAP reads and writes one int.
                let r = unsafe {
                    libc::ioctl(f.as_raw_fd(), 1 /* FIBMAP */, &mut b)
                };
                assert_eq!(r, 0, "FIBMAP {}", file.display());
                (b != 0).then_some((b as u64 * 4096, 4096))
            })
            .collect()
    }

    /// Whether the ext4 refuses changes now: after its journal aborts, it
    /// fails every change with EROFS (the mount table may still say rw).
    /// Probed with a name kmsfs hides.
    fn is_read_only(&self) -> bool {
        let probe = self.at.join(".kmsfs-probe");
        match fs::create_dir(&probe) {
            Ok(()) => {
                let _ = fs::remove_dir(&probe);
                false
            }
            Err(e) => e.raw_os_error() == Some(libc::EROFS),
        }
    }

    /// Unmounts the ext4, heals the disk, checks and repairs the
    /// filesystem (its journal may have aborted) and mounts it again.
    fn heal_and_remount(&self) {
        sh_ok(&format!("umount {}", self.at.display()));
        self.fail("");
        let o = sh(&format!("e2fsck -fy {}", self.loopdev));
        // 0: clean, 1: errors corrected.
        assert!(
            matches!(o.status.code(), Some(0) | Some(1)),
            "e2fsck: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        self.mount_ext4();
    }
}

impl Drop for FailingDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).output();
        if !self.loopdev.is_empty() {
            let _ = Command::new("losetup").args(["-d", &self.loopdev]).output();
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.fuse_mnt)
            .output();
        if let Some(mut c) = self.faultfs.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(&self.image);
    }
}

/// The daemon's log and the disk under a fixture mounted in the background.
fn failing_fixture() -> (Fixture, FailingDisk, PathBuf) {
    require_fuse();
    let dir = tempfile::tempdir().unwrap();
    let disk = FailingDisk::new(&dir.path().join("disk"), &dir.path().join("cipher"));
    let log = dir.path().join("daemon.log");
    (Fixture::init_in(dir), disk, log)
}

fn content(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (j * 31 + i * 7) as u8).collect()
}

fn write_synced(p: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = fs::File::create(p)?;
    f.write_all(data)?;
    f.sync_all()
}

fn drop_caches() {
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn a_read_the_disk_fails_is_eio_for_that_file_only_logged_and_heals() {
    let (fx, disk, log) = failing_fixture();
    let m = fx.mount_with(&["--log-file", log.to_str().unwrap()]);
    let a = content(1, 300_000);
    let b = content(2, 50_000);
    write_synced(&fx.m("a"), &a).unwrap();
    write_synced(&fx.m("b"), &b).unwrap();
    // A block in the middle of a's content, past its header.
    let extents = FailingDisk::extents(&fx.c("a"));
    assert!(extents.len() > 40, "a has {} blocks", extents.len());
    let (start, len) = extents[40];
    disk.fail(&format!("read {start} {len}\n"));
    drop_caches();

    assert_eq!(errno(fs::read(fx.m("a"))), Some(libc::EIO));
    assert_eq!(fs::read(fx.m("b")).unwrap(), b, "another file still reads");
    // The first blocks of a are still there: the failure is the block's.
    let mut head = vec![0u8; 4096];
    let f = fs::File::open(fx.m("a")).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
    assert_eq!(head, a[..4096]);
    drop(f);

    // The header's block failing fails the open.
    let (hstart, hlen) = extents[0];
    disk.fail(&format!("read {hstart} {hlen}\n"));
    drop_caches();
    assert_eq!(errno(fs::File::open(fx.m("a"))), Some(libc::EIO));
    assert_eq!(fs::read(fx.m("b")).unwrap(), b);

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("\"a\"") && l.contains("Input/output error")),
        "the daemon log names the failed read: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");

    // The disk heals: nothing was poisoned, no cache holds the error.
    disk.fail("");
    drop_caches();
    assert_eq!(fs::read(fx.m("a")).unwrap(), a);
    m.unmount();
}

#[test]
fn writes_the_disk_fails_are_reported_then_the_read_only_disk_still_serves_reads() {
    let (fx, disk, log) = failing_fixture();
    let m = fx.mount_with(&["--log-file", log.to_str().unwrap()]);
    let kept: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| (format!("kept{i}"), content(i, 20_000 + i * 30_000)))
        .collect();
    for (name, data) in &kept {
        write_synced(&fx.m(name), data).unwrap();
    }
    fs::create_dir(fx.m("dir")).unwrap();
    sh_ok(&format!("sync -f {}", fx.cipher.display()));

    disk.fail("write all\n");
    // Written into the page caches, then lost on the way to the disk: the
    // fsync must say so, not acknowledge it.
    let r = write_synced(&fx.m("lost"), &content(9, 100_000));
    assert_eq!(
        errno(r),
        Some(libc::EIO),
        "fsync of a write the disk failed"
    );
    // ext4 gives up on its journal and turns read-only.
    let _ = Command::new("sync")
        .arg("-f")
        .arg(&fx.cipher)
        .stderr(Stdio::null())
        .output();
    wait_until("ext4 turning read-only", 30, || disk.is_read_only());

    // Every change now fails with the disk's error, and nothing moves.
    assert_eq!(errno(fs::File::create(fx.m("new"))), Some(libc::EROFS));
    // (An aborted ext4 still opens files for writing, as it would for a
    // program on it directly; the write is what fails.)
    let append = fs::OpenOptions::new()
        .append(true)
        .open(fx.m("kept0"))
        .and_then(|mut f| f.write_all(b"more").and_then(|()| f.sync_all()));
    assert_eq!(errno(append), Some(libc::EROFS));
    assert_eq!(errno(fs::create_dir(fx.m("newdir"))), Some(libc::EROFS));
    assert_eq!(
        errno(fs::rename(fx.m("kept1"), fx.m("moved"))),
        Some(libc::EROFS)
    );
    assert_eq!(errno(fs::remove_file(fx.m("kept2"))), Some(libc::EROFS));
    assert_eq!(
        errno(std::os::unix::fs::symlink("kept0", fx.m("link"))),
        Some(libc::EROFS)
    );
    let c = std::ffi::CString::new(fx.m("kept3").to_str().unwrap()).unwrap();
    // SAFETY: truncate(2) of a NUL-terminated path.
    let r = unsafe { libc::truncate(c.as_ptr(), 10) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EROFS)),
        "truncate of a file on the read-only disk"
    );
    // Reads are served, from the disk (the caches are dropped).
    drop_caches();
    for (name, data) in &kept {
        assert_eq!(&fs::read(fx.m(name)).unwrap(), data, "{name}");
    }
    assert!(fx.m("dir").is_dir());
    assert!(!fx.m("moved").exists());

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().any(|l| l.contains("\"lost\"")
            && (l.contains("Input/output error") || l.contains("Read-only file system"))),
        "the daemon log names the failed write: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    m.unmount();

    // Repaired and mounted again: everything acknowledged is there.
    disk.heal_and_remount();
    let m = fx.mount();
    for (name, data) in &kept {
        assert_eq!(&fs::read(fx.m(name)).unwrap(), data, "{name} after repair");
    }
    write_synced(&fx.m("after"), b"the disk works again").unwrap();
    assert_eq!(fs::read(fx.m("after")).unwrap(), b"the disk works again");
    m.unmount();
}
