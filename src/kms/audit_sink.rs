//! A copy of every audit record for the system journal or a syslog daemon
//! (`--audit-syslog`), for operators who ship logs off the machine. The file
//! stays the record of truth: the chain, the digests and `audit verify` are
//! the file's. A copy that cannot be sent is counted and reported, never
//! fatal to the key use it records (the file write is what fails closed).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where journald (and rsyslog, syslog-ng) listen.
pub const DEFAULT_SOCKET: &str = "/dev/log";
/// authpriv (10) × 8 + info (6): records of who used which key.
const PRIORITY: u8 = 86;

/// One datagram: `<86>kmsfs[PID]: LINE`, the RFC 3164 form journald and
/// syslog daemons parse (they stamp the time themselves).
pub fn datagram(pid: u32, line: &str) -> Vec<u8> {
    format!("<{PRIORITY}>kmsfs[{pid}]: {line}").into_bytes()
}

pub struct Sink {
    path: PathBuf,
    sock: UnixDatagram,
    dropped: AtomicU64,
}

impl Sink {
    pub fn open(path: &Path) -> std::io::Result<Sink> {
        let sock = UnixDatagram::unbound()?;
        sock.set_nonblocking(true)?;
        Ok(Sink {
            path: path.to_path_buf(),
            sock,
            dropped: AtomicU64::new(0),
        })
    }

    /// Sends each line of `batch` (newline-separated records).
    pub fn send(&self, batch: &str) {
        let pid = std::process::id();
        for line in batch.lines() {
            if self.sock.send_to(&datagram(pid, line), &self.path).is_err() {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // The first, then every thousandth: a stopped journal must
                // not turn into a flood of the daemon's own log.
                if n == 1 || n.is_multiple_of(1000) {
                    crate::log_line!(
                        "kmsfs: warning: {n} audit record(s) not copied to {} (the audit log file has them)",
                        self.path.display()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_go_out_as_rfc3164_datagrams_one_per_line() {
        assert_eq!(
            datagram(42, "{\"a\":1}"),
            b"<86>kmsfs[42]: {\"a\":1}".to_vec()
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let rx = UnixDatagram::bind(&p).unwrap();
        let s = Sink::open(&p).unwrap();
        s.send("{\"n\":1}\n{\"n\":2}\n");
        let mut buf = [0u8; 256];
        for want in ["{\"n\":1}", "{\"n\":2}"] {
            let n = rx.recv(&mut buf).unwrap();
            let got = std::str::from_utf8(&buf[..n]).unwrap();
            assert!(
                got.starts_with("<86>kmsfs[") && got.ends_with(&format!("]: {want}")),
                "{got}"
            );
        }
        // Nobody listening: counted, not fatal.
        drop(rx);
        s.send("{\"n\":3}\n");
        assert_eq!(s.dropped.load(Ordering::Relaxed), 1);
    }
}
