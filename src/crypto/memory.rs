//! Keeping secrets out of core dumps and swap.
//!
//! Every kmsfs process that holds a root key or key material (the daemon, and
//! any command that opens the keystore) is made non-dumpable with no core
//! size, so a crash or a `gcore`/ptrace by another user of the same uid
//! cannot write keys to disk. The daemon also locks its pages in memory as
//! they are touched, so no key is ever written to swap.

use std::io;

/// No core dumps and no ptrace attach by other processes of the same user.
/// Best effort: a failure is reported, never fatal.
pub fn protect_process() {
    // SAFETY: prctl and setrlimit with constant, valid arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            eprintln!(
                "kmsfs: warning: cannot make this process non-dumpable: {}",
                io::Error::last_os_error()
            );
        }
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            eprintln!(
                "kmsfs: warning: cannot disable core dumps: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// Linux 4.4; not in the libc crate for every target.
const MCL_ONFAULT: libc::c_int = 4;

/// Below this a locked daemon could fail to allocate: its pages are locked
/// as they fault in, and a busy mount touches tens of MiB.
const MIN_LOCK_LIMIT: u64 = 256 << 20;

/// Locks the process's pages in memory as they are touched (MCL_ONFAULT: no
/// page is populated up front, so idle thread stacks cost nothing). Where the
/// memory-lock limit is too low to do that safely, says so and how to fix it.
/// Memory locks are not inherited across fork: call it in the daemon itself.
pub fn lock_memory() -> Result<(), String> {
    // SAFETY: an all-zero rlimit is valid; getrlimit fills it in.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: a valid resource and out-struct.
    unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root && lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < MIN_LOCK_LIMIT {
        return Err(format!(
            "memory not locked: the memory-lock limit is {} KiB, below the {} MiB kmsfs needs, so key material could reach swap. Raise it (ulimit -l unlimited, or LimitMEMLOCK= in a systemd unit), or run the mount as root",
            lim.rlim_cur >> 10,
            MIN_LOCK_LIMIT >> 20
        ));
    }
    // SAFETY: mlockall with valid flags.
    let r = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | MCL_ONFAULT) };
    if r != 0 {
        return Err(format!(
            "memory not locked ({}); key material could reach swap",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}
