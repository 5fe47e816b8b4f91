//! The mount's control socket: how `kmsfs rewrap` reaches a filesystem
//! while it is mounted. The daemon holds the cipherdir's lock and is the
//! one writer of its headers, so an online re-wrap runs inside it,
//! serialised against its renames (rewrap.rs); the command only asks and
//! shows progress.
//!
//! The socket lives outside the cipherdir (which is hostile), in a
//! directory only the daemon's user can enter: `/run/kmsfs` for root,
//! `$XDG_RUNTIME_DIR/kmsfs` (or `/tmp/kmsfs-UID`) otherwise, named after
//! the filesystem id. Only root and the daemon's own user are answered
//! (SO_PEERCRED), and a request names the cipherdir it means, so a copy of
//! a cipherdir (same id) mounted elsewhere is not taken for it.
//!
//! The protocol: one JSON request line, then JSON lines back: progress
//! (`{"Progress":{"Nodes":N,"Path":P}}`, a few a second at most), then one
//! `{"Done":{...}}` or `{"Error":"..."}`. A client that goes away does not
//! stop the re-wrap: it finishes and the daemon's log has its summary.

use super::backing::Backing;
use super::fairness::RenameGate;
use crate::kms::{Caller, Via};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A request line longer than this is refused unread.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(tag = "Op", deny_unknown_fields)]
pub enum Request {
    Rewrap {
        /// The cipherdir as the client canonicalised it.
        #[serde(rename = "Cipherdir")]
        cipherdir: PathBuf,
        #[serde(rename = "ToKey", default)]
        to_key: Option<String>,
    },
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub enum Reply {
    Progress {
        #[serde(rename = "Nodes")]
        nodes: u64,
        #[serde(rename = "Path")]
        path: String,
    },
    Done(Summary),
    Error(String),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
#[serde(rename_all = "PascalCase")]
pub struct Summary {
    pub arn: String,
    pub files: u64,
    pub links: u64,
    pub symlinks: u64,
    pub own: u64,
    pub moved: u64,
    pub failed: Vec<String>,
    pub seconds: f64,
}

impl Summary {
    pub fn of(arn: String, r: super::rewrap::Rewrapped, took: Duration) -> Self {
        Summary {
            arn,
            files: r.files,
            links: r.links,
            symlinks: r.symlinks,
            own: r.own,
            moved: r.moved,
            failed: r.failed,
            seconds: took.as_secs_f64(),
        }
    }
}

/// Where the mount of filesystem `fs_id` listens, for this user.
pub fn socket_path(fs_id: &str) -> Result<PathBuf, String> {
    // The id comes from kmsfs.conf: it names a file only if it looks like one.
    if fs_id.is_empty()
        || fs_id.len() > 64
        || !fs_id
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
    {
        return Err(format!(
            "the filesystem id {fs_id:?} in kmsfs.conf is not a kmsfs id"
        ));
    }
    Ok(runtime_dir().join(format!("{fs_id}.sock")))
}

fn runtime_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/kmsfs");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if Path::new(&d).is_absolute() => Path::new(&d).join("kmsfs"),
        _ => PathBuf::from(format!("/tmp/kmsfs-{uid}")),
    }
}

/// The socket's directory, made if missing; refused unless it is a
/// directory of this user's that nobody else can enter (in /tmp another
/// user could have made it first).
fn private_dir(dir: &Path) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot make {}: {e}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if !m.file_type().is_dir() || m.uid() != uid {
        return Err(format!(
            "{} is not a directory of uid {uid}: remove it, or set XDG_RUNTIME_DIR",
            dir.display()
        ));
    }
    if m.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// What the control thread needs of the mount.
pub struct Control {
    pub b: Arc<Backing>,
    pub gate: Arc<RenameGate>,
    pub cipherdir: PathBuf,
}

/// The listening socket; removed when dropped (at unmount).
pub struct Listening {
    path: PathBuf,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens for `kmsfs rewrap` and the like on the socket of `ctl`'s
/// filesystem, answering one client at a time on a thread of its own.
pub fn serve(ctl: Control) -> Result<Listening, String> {
    let path = socket_path(&ctl.b.cfg.filesystem_id)?;
    private_dir(path.parent().expect("a file in a directory"))?;
    if UnixStream::connect(&path).is_ok() {
        return Err(format!(
            "{} is in use: another mount of a filesystem with this id (a copy of the cipherdir?) answers there",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(&path); // a dead mount's
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    if let Err(e) = answer(&ctl, s) {
                        crate::log_line!("kmsfs: control socket: {e}");
                    }
                }
                Err(e) => crate::log_line!("kmsfs: control socket: {e}"),
            }
        }
    });
    Ok(Listening { path })
}

fn send(s: &mut UnixStream, r: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(r).map_err(io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)
}

fn answer(ctl: &Control, mut s: UnixStream) -> io::Result<()> {
    let uid = crate::kms::caller::unix_peer(&s)?.uid;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if uid != 0 && uid != me {
        return send(
            &mut s,
            &Reply::Error(format!(
                "uid {uid} may not control this mount: only root and uid {me} may"
            )),
        );
    }
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    BufReader::new((&s).take(MAX_REQUEST)).read_until(b'\n', &mut line)?;
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            return send(
                &mut s,
                &Reply::Error(format!("not a kmsfs control request: {e}")),
            );
        }
    };
    match req {
        Request::Rewrap { cipherdir, to_key } => {
            if cipherdir != ctl.cipherdir {
                return send(
                    &mut s,
                    &Reply::Error(format!(
                        "this mount serves {}, not {}: a copy of the cipherdir (same filesystem id) is mounted; unmount it or rewrap offline",
                        ctl.cipherdir.display(),
                        cipherdir.display()
                    )),
                );
            }
            let reply = match rewrap(ctl, to_key.as_deref(), &mut s) {
                Ok(sum) => Reply::Done(sum),
                Err(e) => {
                    crate::log_line!("kmsfs: rewrap: {e}");
                    Reply::Error(e)
                }
            };
            send(&mut s, &reply)
        }
    }
}

fn rewrap(ctl: &Control, to_key: Option<&str>, s: &mut UnixStream) -> Result<Summary, String> {
    let caller = Caller::this_process(Via::Mount);
    let t0 = Instant::now();
    let arn = super::rewrap::target(ctl.b.kms.as_ref(), &caller, to_key, &ctl.b.key_id())?;
    crate::log_line!("kmsfs: rewrap under {arn}: started");
    let mut last = Instant::now();
    let mut client = true;
    let r =
        super::rewrap::Rewrap::new(&ctl.b, Some(&ctl.gate), caller, arn.clone()).run(&mut |p| {
            if client && last.elapsed() >= Duration::from_millis(200) {
                last = Instant::now();
                let r = Reply::Progress {
                    nodes: p.nodes,
                    path: p.path.to_string(),
                };
                // Gone: the re-wrap goes on without it.
                client = send(s, &r).is_ok();
            }
        })?;
    let sum = Summary::of(arn, r, t0.elapsed());
    crate::log_line!(
        "kmsfs: rewrap under {}: {} file data keys, {} hard-link entries, {} symlinks, {} own blobs, {} moved meanwhile, {} failed, in {:.2} s",
        sum.arn,
        sum.files,
        sum.links,
        sum.symlinks,
        sum.own,
        sum.moved,
        sum.failed.len(),
        sum.seconds
    );
    Ok(sum)
}

/// The client side: `None` when no mount of `fs_id` listens (not mounted,
/// or by a kmsfs without a control socket); else the replies, each given
/// to `on_reply` until the last.
pub fn ask(
    fs_id: &str,
    req: &Request,
    mut on_reply: impl FnMut(Reply),
) -> Result<Option<()>, String> {
    let path = socket_path(fs_id)?;
    let mut s = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut line = serde_json::to_vec(req).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for line in BufReader::new(s).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        let r: Reply = serde_json::from_str(&line).map_err(|e| {
            format!(
                "{}: an answer kmsfs does not understand: {e}",
                path.display()
            )
        })?;
        let last = !matches!(r, Reply::Progress { .. });
        on_reply(r);
        if last {
            return Ok(Some(()));
        }
    }
    Err(format!(
        "{}: the mount closed the connection without an answer (see its log)",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_read_back_as_written() {
        let r = Request::Rewrap {
            cipherdir: "/data/c".into(),
            to_key: Some("alias/new".into()),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"Op":"Rewrap","Cipherdir":"/data/c","ToKey":"alias/new"}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        let p = Reply::Progress {
            nodes: 3,
            path: "d/a".into(),
        };
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, r#"{"Progress":{"Nodes":3,"Path":"d/a"}}"#);
        assert_eq!(serde_json::from_str::<Reply>(&j).unwrap(), p);
    }

    #[test]
    fn an_unknown_request_is_refused() {
        for bad in [
            r#"{"Op":"Delete"}"#,
            r#"{"Op":"Rewrap"}"#,
            r#"{"Op":"Rewrap","Cipherdir":"/c","Extra":1}"#,
        ] {
            assert!(
                serde_json::from_str::<Request>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }

    #[test]
    fn only_a_plain_id_names_a_socket() {
        assert!(
            socket_path("4f1c2b3a-0d5e-4e6f-8a9b-0c1d2e3f4a5b")
                .unwrap()
                .ends_with("4f1c2b3a-0d5e-4e6f-8a9b-0c1d2e3f4a5b.sock")
        );
        for bad in ["", "../../etc/x", "a/b", "a.b", &"x".repeat(65)] {
            let e = socket_path(bad).unwrap_err();
            assert!(e.contains("is not a kmsfs id"), "{bad}: {e}");
        }
    }
}
