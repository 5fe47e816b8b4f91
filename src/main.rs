//! The `kmsfs` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() {
    // Before anything can hold a key: no core dumps, no same-user ptrace.
    kmsfs::crypto::memory::protect_process();
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Started by mount(8) as /sbin/mount.fuse.kmsfs (fstab, `mount -t fuse.kmsfs`).
    if args
        .first()
        .is_some_and(|a| kmsfs::cli::mount_helper::is_helper(a))
    {
        match kmsfs::cli::mount_helper::translate(&args[1..]) {
            Ok(kmsfs::cli::mount_helper::Helper::Run(rest)) => {
                args.truncate(1);
                args[0] = "kmsfs".into();
                args.extend(rest);
            }
            Ok(kmsfs::cli::mount_helper::Helper::Fake) => std::process::exit(0),
            Err(e) => {
                eprintln!("mount.fuse.kmsfs: {e}");
                eprintln!(
                    "usage: mount.fuse.kmsfs CIPHERDIR MOUNTPOINT [-o OPTIONS] (see the README's fstab section)"
                );
                std::process::exit(kmsfs::cli::exit::USAGE);
            }
        }
    }
    let cli = kmsfs::cli::Cli::parse_from(args);
    std::process::exit(kmsfs::cli::run(cli));
}
