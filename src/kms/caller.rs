//! Who is calling: the identity that key policies judge and the audit log records.

use serde::Serialize;

/// The path a request came in by. Keys that kmsfs manages for a filesystem may
/// be used only through the mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    Cli,
    Mount,
    Api,
    /// kmsfs itself: scheduled deletion, automatic rotation, expiry.
    Service,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    pub process: Option<String>,
    pub via: Via,
    /// Peer address for network callers; `None` for local ones.
    pub source_ip: Option<String>,
    /// Grant tokens sent with the request (AWS's GrantTokens parameter).
    pub grant_tokens: Vec<String>,
    /// For a request through `kmsfs kms serve`: how it authenticated.
    pub remote: Option<Remote>,
}

/// What the audit log records of a network caller besides its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The SigV4 access key the request was signed with (`None` over a
    /// unix socket, where the peer's credentials are the identity).
    pub access_key_id: Option<String>,
    pub user_agent: Option<String>,
    /// The IAM identity (`arn:...:iam::ACCOUNT:user/NAME`) of an access key
    /// made for one rather than for a local account.
    pub iam_arn: Option<String>,
}

impl Remote {
    /// `user/NAME` or `role/NAME`: what policies' IAM principals match.
    pub fn iam_name(&self) -> Option<&str> {
        let arn = self.iam_arn.as_deref()?;
        super::policy::parse_iam(arn).ok()?.1
    }
}

impl Caller {
    /// The current process, as seen by the kernel.
    pub fn this_process(via: Via) -> Self {
        // SAFETY: these libc calls have no preconditions and cannot fail.
        let (uid, gid, pid) = unsafe { (libc::getuid(), libc::getgid(), libc::getpid()) };
        Caller {
            uid,
            gid,
            pid: pid as u32,
            process: process_name(pid as u32),
            via,
            source_ip: None,
            grant_tokens: vec![],
            remote: None,
        }
    }

    /// A FUSE request's originator.
    pub fn local(uid: u32, gid: u32, pid: u32, via: Via) -> Self {
        Caller {
            uid,
            gid,
            pid,
            process: process_name(pid),
            via,
            source_ip: None,
            grant_tokens: vec![],
            remote: None,
        }
    }

    pub fn service() -> Self {
        Caller {
            via: Via::Service,
            ..Caller::this_process(Via::Service)
        }
    }

    /// The principal string policies use, e.g. `uid:1000`, or the IAM ARN
    /// of an access key made for one.
    pub fn principal(&self) -> String {
        match self.remote.as_ref().and_then(|r| r.iam_arn.clone()) {
            Some(arn) => arn,
            None => format!("uid:{}", self.uid),
        }
    }
}

/// `/proc/PID/comm`, which the process itself controls: record it, never trust it.
///
/// Remembered per thread for a second: a process opening many files costs
/// one read of /proc instead of five syscalls per open. A pid is not reused
/// within a second (the kernel hands them out in increasing order up to
/// pid_max), so the name cannot belong to another process.
pub fn process_name(pid: u32) -> Option<String> {
    use std::cell::RefCell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: RefCell<Option<(u32, Instant, Option<String>)>> = const { RefCell::new(None) };
    }
    LAST.with(|l| {
        let mut l = l.borrow_mut();
        if let Some((p, at, name)) = &*l
            && *p == pid
            && at.elapsed() < Duration::from_secs(1)
        {
            return name.clone();
        }
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()
            .map(|s| s.trim_end().to_string());
        *l = Some((pid, Instant::now(), name.clone()));
        name
    })
}

/// Supplementary groups of a process, from /proc/PID/status ("Groups:").
pub fn supplementary_groups(pid: u32) -> Vec<u32> {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return vec![];
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The credentials (pid, uid, gid) of the process at the other end of a
/// unix socket, as the kernel recorded them when it connected
/// (SO_PEERCRED): the KMS server's and the mount's control socket's callers.
pub fn unix_peer(s: &std::os::unix::net::UnixStream) -> std::io::Result<libc::ucred> {
    use std::os::fd::AsRawFd;
    // SAFETY: ucred is plain data; all-zero is a valid value to be filled in.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of the length passed.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred)
}
