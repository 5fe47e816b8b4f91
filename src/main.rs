//! The `kmsfs` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() {
    // Before anything can hold a key: no core dumps, no same-user ptrace.
    kmsfs::crypto::memory::protect_process();
    let cli = kmsfs::cli::Cli::parse();
    std::process::exit(kmsfs::cli::run(cli));
}
