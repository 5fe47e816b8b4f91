//! Opens per second in a directory: open, read a byte, close, over every file
//! in it, for a few seconds. Used by scripts/bench-open.sh to measure what a
//! key policy costs each open through a kmsfs mount.
//!
//!     cargo run --release --example open_bench -- DIR [SECONDS]

use std::io::Read;
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: open_bench DIR [SECONDS]");
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("read DIR")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
        .map(|e| e.path())
        .collect();
    assert!(!files.is_empty(), "{dir} has no files");
    let start = Instant::now();
    let mut n = 0u64;
    let mut buf = [0u8; 1];
    while start.elapsed() < Duration::from_secs_f64(secs) {
        for f in &files {
            let mut fh = std::fs::File::open(f).expect("open");
            fh.read_exact(&mut buf).expect("read");
            n += 1;
        }
    }
    println!("{:.0}", n as f64 / start.elapsed().as_secs_f64());
}
