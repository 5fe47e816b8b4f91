//! POSIX behaviour compared with a plain directory on the machine's own
//! filesystem: the same script runs in both, and what it prints (modes,
//! owners, times, contents) must be identical.

mod common;
use common::*;
use std::path::Path;

/// Runs `script` in `dir` (bash, as root) and returns what it printed.
fn run_in(dir: &Path, script: &str) -> String {
    sh_ok(&format!(
        "cd {} && {{\n{script}\n}} 2>&1",
        shell_quote(dir.to_str().unwrap())
    ))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The script's output in a plain directory and in the mount, asserted equal.
fn same_as_plain(script: &str, drop_caches_between: bool) -> String {
    let plain = tempfile::tempdir().unwrap();
    let fx = Fixture::new();
    let m = fx.mount();
    let (first, second) = script.split_once("#--\n").unwrap_or((script, ""));
    let mut outs = vec![];
    for dir in [plain.path(), fx.mnt.as_path()] {
        let mut out = run_in(dir, first);
        if drop_caches_between {
            std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
        }
        if !second.is_empty() {
            out += &run_in(dir, second);
        }
        outs.push(out);
    }
    assert_eq!(
        outs[1], outs[0],
        "the mount (left) differs from a plain directory (right)"
    );
    m.unmount();
    outs.remove(0)
}

#[test]
fn creation_modes_keep_what_the_caller_asked_for_under_its_umask() {
    let out = same_as_plain(
        r#"
umask 0
python3 -c "
import os
os.close(os.open('f0620', os.O_CREAT | os.O_WRONLY, 0o620))
os.close(os.open('s4777', os.O_CREAT | os.O_WRONLY, 0o4777))
os.close(os.open('g2755', os.O_CREAT | os.O_WRONLY, 0o2755))
os.mkdir('d0777', 0o777)
os.mkdir('t1777', 0o1777)
os.mkfifo('p0666', 0o666)
"
umask 027
touch u027
mkdir v027
umask 0
stat -c '%n %a %F' f0620 s4777 g2755 d0777 t1777 p0666 u027 v027
"#,
        false,
    );
    assert!(out.contains("s4777 4777"), "{out}");
    assert!(out.contains("f0620 620"), "{out}");
    assert!(out.contains("u027 640"), "{out}");
}

#[test]
fn a_path_of_path_max_minus_one_bytes_works() {
    // 4095 bytes: 15 directories of 255 bytes, then a file name filling up.
    let out = same_as_plain(
        r#"
p=.
for i in $(seq 1 15); do
  p=$p/$(printf "d%.0s" $(seq 1 254))$((i % 10))
done
mkdir -p "$p"
rel=${p#./}
name=$(printf "f%.0s" $(seq 1 $((4095 - ${#rel} - 1))))
echo content > "$rel/$name"
echo ${#rel} $((${#rel} + 1 + ${#name}))
cat "$rel/$name"
mv "$rel/$name" "$rel/${name%f}g"
cat "$rel/${name%f}g"
"#,
        false,
    );
    assert!(out.contains(" 4095\n"), "{out}");
}

#[test]
fn renames_keep_owners_modes_and_times_of_everything_they_move() {
    let out = same_as_plain(
        r#"
ln -s target L
chown -h 1234:2345 L
touch -h -d '2001-02-03 04:05:06' L
mkdir -p D/sub/deeper
echo hi > D/sub/f
echo there > D/sub/deeper/g
chmod 0604 D/sub/f
chown 1234:2345 D/sub/f
ln -s f D/sub/l
ln -s ../f D/sub/deeper/m
chown -h 1234:2345 D/sub/l
touch -d '2002-01-01 01:01:01' D/sub/f D/sub/deeper/g
touch -h -d '2003-01-01 01:01:01' D/sub/l D/sub/deeper/m
touch -d '2004-01-01 01:01:01' D/sub/deeper D/sub
touch -d '2005-01-01 01:01:01' D
echo file > F
chown 1234:2345 F
touch -d '2006-01-01 01:01:01' F
mv L L2
mv F F2
mkdir P
mv D P/E
#--
stat -c '%n %u %g %a %X %Y' L2 F2 P/E/sub P/E/sub/deeper P/E/sub/f P/E/sub/l P/E/sub/deeper/g P/E/sub/deeper/m
readlink P/E/sub/l P/E/sub/deeper/m L2
cat P/E/sub/f P/E/sub/deeper/g F2
"#,
        true,
    );
    assert!(out.contains("L2 1234 2345 777"), "{out}");
    assert!(out.contains("P/E/sub/l 1234 2345"), "{out}");
}

#[test]
fn the_mount_shows_its_type_as_fuse_kmsfs() {
    let fx = Fixture::new();
    let m = fx.mount();
    let mnt = std::fs::canonicalize(&fx.mnt).unwrap();
    let line = std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == mnt.to_str())
        .map(str::to_string)
        .expect("the mount is in /proc/mounts");
    assert_eq!(line.split(' ').nth(2), Some("fuse.kmsfs"), "{line}");
    let df = sh_ok(&format!("df --output=fstype {}", mnt.display()));
    assert_eq!(df.lines().nth(1).map(str::trim), Some("fuse.kmsfs"), "{df}");
    m.unmount();
}

#[test]
fn device_nodes_show_as_devices_but_the_cipherdir_holds_none() {
    let out = same_as_plain(
        r#"
umask 022
mknod null c 1 3
mknod -m 0620 zero c 1 5
mknod loop b 7 0
mkfifo fifo
mkdir d
mknod d/full c 1 7
mv null null2
mv d e
stat -c '%n %F %t %T %a %u %g' null2 zero loop fifo e/full
find . -type c | sort
find . -type b
"#,
        true,
    );
    assert!(
        out.contains("null2 character special file 1 3 644"),
        "{out}"
    );
    assert!(out.contains("loop block special file 7 0"), "{out}");

    let fx = Fixture::new();
    let m = fx.mount();
    sh_ok(&format!(
        "cd {} && mknod null c 1 3 && mknod zero c 1 5 && mkdir d && mknod d/zero c 1 5",
        fx.mnt.display()
    ));
    for name in ["null", "zero", "d/zero"] {
        let st = std::fs::symlink_metadata(fx.c(name)).unwrap();
        assert!(
            st.file_type().is_file(),
            "{name} is a regular file in the cipherdir"
        );
    }
    // nodev (the default): the kernel refuses to open them.
    let e = std::fs::File::open(fx.m("zero")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    m.unmount();

    // With `-o dev` they are the devices, after a remount and a rename.
    let m = fx.mount_with(&["-o", "dev"]);
    std::fs::rename(fx.m("d"), fx.m("e")).unwrap();
    std::fs::write(fx.m("null"), b"into the void").unwrap();
    let mut buf = [0xffu8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open(fx.m("e/zero")).unwrap(), &mut buf).unwrap();
    assert_eq!(buf, [0u8; 16]);
    m.unmount();

    // Moved behind the mount's back, a device node's file no longer opens
    // at its new path: it shows as a regular file that reads as EIO.
    std::fs::rename(fx.c("zero"), fx.c("moved")).unwrap();
    let m = fx.mount();
    let st = std::fs::symlink_metadata(fx.m("moved")).unwrap();
    assert!(st.file_type().is_file(), "{st:?}");
    assert_eq!(read_err(&fx.m("moved")), Some(libc::EIO));
    m.unmount();
}

#[test]
fn symlink_targets_up_to_path_max_minus_one_bytes_work_as_natively() {
    // Targets past what an encrypted backing symlink holds (about 3,000
    // bytes) are stored as encrypted files; every operation on them must
    // still see a symlink.
    let out = same_as_plain(
        r#"
t() { head -c "$1" /dev/zero | tr '\0' "$2"; }
ln -s "$(t 2900 a)" short
ln -s "$(t 3100 b)" l3100
ln -s "$(t 4095 c)" l4095
ln -s "/$(t 4094 d)" abs4095
ln -s "$(t 4096 e)" l4096 2>&1 | sed 's/.*: //'
mkdir -p d1/sub d2
ln -s "$(t 4000 f)" d1/sub/deep
touch -h -d '2002-03-04 05:06:07' l3100 abs4095 d1/sub/deep
mv l3100 d2/moved
mv d1 d3
touch -h -d '2001-02-03 04:05:06' l4095
chown -h 1234:5678 abs4095
ln l4095 l4095.hard 2>&1 | sed 's/.*: //'
python3 -c "
import os
os.rename('l4095', 'short', )
"
for l in short d2/moved abs4095 d3/sub/deep; do
  printf '%s %s %s\n' "$l" "$(readlink "$l" | sha256sum | cut -c1-16)" "$(readlink "$l" | wc -c)"
done
stat -c '%n %F %s %a %u %g %Y' short d2/moved abs4095 d3/sub/deep
find . -type l | sort
find . -type f | sort
ls -l d2 | tail -n +2 | cut -c1-10
cat short 2>&1 | sed 's/.*: //'
#--
stat -c '%n %F %s %u %g %Y' short abs4095 d3/sub/deep
readlink d2/moved | wc -c
rm short d2/moved
find . -type l | sort
"#,
        true,
    );
    assert!(
        out.contains("d2/moved symbolic link 3100 777 0 0 1015218367"),
        "{out}"
    );
    assert!(
        out.contains("abs4095 symbolic link 4095 777 1234 5678"),
        "{out}"
    );
    assert!(
        out.contains("short symbolic link 4095 777 0 0 981173106"),
        "{out}"
    );
    assert!(out.contains("File name too long"), "{out}");

    // In the cipherdir they are regular files (no symlink to follow); moved
    // behind the mount's back, one no longer shows as a symlink and reads
    // as EIO, as a moved file does.
    let fx = Fixture::new();
    let m = fx.mount();
    let long = "x".repeat(4000);
    std::os::unix::fs::symlink(&long, fx.m("long")).unwrap();
    std::os::unix::fs::symlink(&long, fx.m("other")).unwrap();
    assert_eq!(
        std::fs::read_link(fx.m("long")).unwrap().as_os_str().len(),
        4000
    );
    m.unmount();
    assert!(
        std::fs::symlink_metadata(fx.c("long"))
            .unwrap()
            .file_type()
            .is_file()
    );
    std::fs::rename(fx.c("long"), fx.c("moved")).unwrap();
    let m = fx.mount();
    let st = std::fs::symlink_metadata(fx.m("moved")).unwrap();
    assert!(st.file_type().is_file(), "{st:?}");
    assert_eq!(read_err(&fx.m("moved")), Some(libc::EIO));
    // The other link still works after the remount.
    assert_eq!(
        std::fs::read_link(fx.m("other")).unwrap().as_os_str().len(),
        4000
    );
    m.unmount();
}

#[test]
fn fallocate_reserves_and_zeroes_as_on_a_native_filesystem() {
    let out = same_as_plain(
        r#"
fallocate -l 1000000 grown
yes kmsfs | head -c 200000 > punched
fallocate -p -o 5000 -l 50000 punched
yes kmsfs | head -c 200000 > zeroed
fallocate -z -o 70000 -l 200000 zeroed
yes kmsfs | head -c 20000 > kept
fallocate -n -o 0 -l 900000 kept
yes kmsfs | head -c 10000 > tail
fallocate -z -n -o 9000 -l 5000 tail
python3 -c "import os; fd = os.open('posix', os.O_CREAT | os.O_RDWR); os.posix_fallocate(fd, 4096, 123456)"
for f in grown punched zeroed kept tail posix; do
  echo "$f $(stat -c %s $f) $(sha256sum < $f | cut -c1-16)"
done
"#,
        true,
    );
    assert!(out.contains("grown 1000000"), "{out}");
    assert!(out.contains("zeroed 270000"), "{out}");

    // The space is reserved in the cipherdir.
    let fx = Fixture::new();
    let m = fx.mount();
    sh_ok(&format!("fallocate -l 4000000 {}", fx.m("big").display()));
    use std::os::unix::fs::MetadataExt;
    let st = std::fs::metadata(fx.c("big")).unwrap();
    assert!(
        st.blocks() * 512 >= 4_000_000,
        "{} bytes allocated",
        st.blocks() * 512
    );
    // Collapsing or inserting a range would move every later block to
    // another index (part of its authentication): refused, as on
    // filesystems without it.
    for flag in ["-c", "-i"] {
        let o = sh(&format!(
            "fallocate {flag} -o 0 -l 4096 {}",
            fx.m("big").display()
        ));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Operation not supported"),
            "fallocate {flag}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    m.unmount();
}

/// renameat2(RENAME_EXCHANGE) from python (coreutils here has no
/// `mv --exchange`).
const EXCHANGE: &str = r#"
xchg() { python3 -c '
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.renameat2(-100, sys.argv[1].encode(), -100, sys.argv[2].encode(), 2) != 0:
    print("exchange", sys.argv[1], sys.argv[2], os.strerror(ctypes.get_errno()))
' "$1" "$2"; }
"#;

#[test]
fn rename_exchange_swaps_files_symlinks_and_directories_as_natively() {
    let script = format!(
        "{EXCHANGE}{}",
        r#"
echo A > fa; echo B > fb
mkdir -p da/s db; echo in-a > da/s/f; ln -s f da/s/l; echo in-b > db/g
ln -s fa la
mkfifo pipe
touch -h -d '2002-02-02' fa fb da db la pipe da/s da/s/f da/s/l db/g
chown 1234:2345 fa; touch -d '2001-01-01' fa da
xchg fa fb
xchg da db
xchg la fb
xchg fa da
xchg pipe la
xchg fb missing
xchg db db/s
#--
for p in fa fb la pipe da db db/s db/s/f db/s/l fa/g; do stat -c '%n %F %u %g %a %Y' $p; done
cat fb fa/g da da/s/f pipe/s/l 2>&1
readlink pipe la fb 2>&1
find . | sort
"#
    );
    let out = same_as_plain(&script, true);
    assert!(
        out.contains("exchange fb missing No such file or directory"),
        "{out}"
    );
}
