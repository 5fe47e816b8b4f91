//! 32 processes at once on one mount: writers with pwrite and shared mmap on
//! interleaved, block-straddling regions of the same few files, appenders
//! and truncaters on their own files, and others renaming a directory back
//! and forth and listing the tree around them. Every process checks what it
//! reads; at the end every region holds the bytes its writer last wrote. No
//! EIO, no wrong byte, no hang (every process and the whole run are bounded).

mod common;
use common::*;

const WORKLOAD: &str = r#"
import os, sys, mmap, random, hashlib, time
mnt, role, idx = sys.argv[1], sys.argv[2], int(sys.argv[3])
REG, STEP, OFF = 6000, 6000, 100      # regions straddle 4 KiB blocks
deadline = time.time() + 60
rng = random.Random(idx)
def fail(msg):
    print("FAIL %s %d: %s" % (role, idx, msg)); sys.exit(1)
if role == "writer":
    path = "%s/shared%d" % (mnt, idx % 3)
    slot = idx // 3
    off = OFF + slot * STEP
    last = None
    for it in range(150):
        if time.time() > deadline: fail("timeout")
        data = bytes(rng.getrandbits(8) for _ in range(REG))
        fd = os.open(path, os.O_RDWR)
        if it % 3 == 0:
            size = os.fstat(fd).st_size
            if size >= off + REG:
                m = mmap.mmap(fd, 0)
                m[off:off + REG] = data
                m.flush()
                m.close()
            else:
                os.pwrite(fd, data, off)
        else:
            os.pwrite(fd, data, off)
        got = os.pread(fd, REG, off)
        os.close(fd)
        if got != data: fail("read back other bytes at iteration %d" % it)
        last = data
    print("OK", path, off, hashlib.sha256(last).hexdigest())
elif role == "appender":
    path = "%s/own%d" % (mnt, idx)
    want = b""
    for it in range(200):
        if time.time() > deadline: fail("timeout")
        if it % 10 == 9:
            n = rng.randrange(0, len(want) + 5000)
            os.truncate(path, n)
            want = (want + b"\0" * n)[:n]
        else:
            chunk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 9000)))
            with open(path, "ab") as f: f.write(chunk)
            want += chunk
        with open(path, "rb") as f:
            if f.read() != want: fail("content differs at iteration %d" % it)
    print("OK")
elif role == "renamer":
    for it in range(100):
        if time.time() > deadline: fail("timeout")
        a, b = "%s/tree/a" % mnt, "%s/tree/b" % mnt
        try:
            os.rename(a, b)
        except FileNotFoundError:
            try: os.rename(b, a)
            except FileNotFoundError: pass
    print("OK")
else:  # lister
    for it in range(150):
        if time.time() > deadline: fail("timeout")
        for root, dirs, files in os.walk(mnt):
            for name in files:
                p = os.path.join(root, name)
                if "/tree/" in p:
                    try:
                        with open(p, "rb") as f: d = f.read()
                    except FileNotFoundError:
                        continue  # renamed away meanwhile
                    except OSError as e:
                        fail("%s: %s" % (p, e))
                    if d != b"tree file " + name.encode():
                        fail("%s has other bytes" % p)
    print("OK")
"#;

#[test]
fn thirty_two_processes_on_the_same_files_see_no_wrong_byte() {
    let fx = Fixture::new();
    let _m = fx.mount();
    // Three shared files of 24 interleaved regions each (8 writers a file).
    for f in 0..3 {
        std::fs::write(fx.m(&format!("shared{f}")), vec![0u8; 100 + 8 * 6000]).unwrap();
    }
    std::fs::create_dir_all(fx.m("tree/a/deeper")).unwrap();
    for i in 0..30 {
        let name = format!("t{i}");
        let rel = if i % 2 == 0 {
            format!("tree/a/{name}")
        } else {
            format!("tree/a/deeper/{name}")
        };
        std::fs::write(fx.m(&rel), format!("tree file {name}")).unwrap();
    }
    let mut roles = vec![];
    roles.extend((0..24).map(|i| ("writer", i)));
    roles.extend((0..4).map(|i| ("appender", i)));
    roles.extend((0..2).map(|i| ("renamer", i)));
    roles.extend((0..2).map(|i| ("lister", i)));
    assert_eq!(roles.len(), 32);
    let children: Vec<_> = roles
        .iter()
        .map(|(role, i)| {
            std::process::Command::new("python3")
                .args(["-c", WORKLOAD])
                .arg(&fx.mnt)
                .arg(role)
                .arg(i.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut finals = vec![];
    for (mut c, (role, i)) in children.into_iter().zip(&roles) {
        loop {
            if c.try_wait().unwrap().is_some() {
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                panic!("{role} {i} hung");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            for e in std::fs::read_dir(&fx.home).unwrap() {
                let p = e.unwrap().path();
                if p.to_string_lossy().contains("mount-") {
                    eprintln!(
                        "daemon log: {}",
                        std::fs::read_to_string(&p).unwrap_or_default()
                    );
                }
            }
        }
        assert!(
            out.status.success() && stdout.starts_with("OK"),
            "{role} {i}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if *role == "writer" {
            finals.push(stdout);
        }
    }
    // Every region holds what its writer wrote last.
    use sha2::Digest;
    for line in finals {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let (path, off, hash) = (parts[1], parts[2].parse::<usize>().unwrap(), parts[3]);
        let data = std::fs::read(path).unwrap();
        let got = sha2::Sha256::digest(&data[off..off + 6000]);
        let hex: String = got.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, hash, "{path} at {off}");
    }
}
