//! The `kmsfs` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() {
    let cli = kmsfs::cli::Cli::parse();
    std::process::exit(kmsfs::cli::run(cli));
}
