//! `kmsfs kms serve`: the AWS KMS JSON API over HTTP/1.1, on TCP and unix
//! sockets, so `aws kms`, boto3 and every AWS SDK reach this KMS with only
//! an endpoint URL changed. One thread per connection (bounded), keep-alive,
//! a request-rate bound answered with ThrottlingException, SigV4 on TCP and
//! the peer's credentials on a unix socket. The KMS core stays unaware of
//! HTTP: this module turns requests into `kms::api` calls and errors into
//! AWS's shapes.

pub mod http;
pub mod throttle;
pub mod tls;

use crate::kms::api::{self, Request};
use crate::kms::sigv4;
use crate::kms::{Caller, ErrorCode, Kms, KmsError, Via};
use serde_json::json;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct ServeOptions {
    pub listen: Vec<SocketAddr>,
    pub unix: Option<PathBuf>,
    /// Requests a second past which ThrottlingException is answered.
    pub max_rate: u32,
    pub max_connections: usize,
    /// Plain HTTP on an address other than loopback.
    pub insecure_http: bool,
    /// PEM certificate chain and private key: TCP is served over TLS.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// How long a connection may sit idle between requests.
const IDLE: Duration = Duration::from_secs(60);
/// How long one request may take to arrive once its first byte has: a
/// client trickling a byte a minute would otherwise hold a connection slot
/// for ever.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    kms: Arc<Kms>,
    bucket: Mutex<throttle::Bucket>,
    started: Instant,
    connections: AtomicUsize,
    max_connections: usize,
}

/// Who is at the other end of a connection.
#[derive(Clone)]
enum Peer {
    Tcp(SocketAddr),
    Unix { uid: u32, gid: u32, pid: u32 },
}

/// An API error as AWS returns it.
struct ApiError {
    status: u16,
    code: String,
    message: String,
}

impl ApiError {
    fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }
}

impl From<KmsError> for ApiError {
    fn from(e: KmsError) -> Self {
        // AWS KMS answers its modelled exceptions with 400 and its own
        // failures with 500.
        let status = if e.code == ErrorCode::KMSInternalException {
            500
        } else {
            400
        };
        ApiError::new(status, e.code.as_str(), e.message)
    }
}

/// Binds every listener, prints one line per address once it answers, and
/// serves until SIGTERM, SIGINT or SIGHUP.
pub fn serve(kms: Kms, opts: ServeOptions) -> Result<(), String> {
    if opts.listen.is_empty() && opts.unix.is_none() {
        return Err("give --listen ADDR:PORT and/or --unix PATH".into());
    }
    let tls = match &opts.tls {
        Some((cert, key)) => Some(tls::server_config(cert, key)?),
        None => None,
    };
    for a in &opts.listen {
        if !a.ip().is_loopback() && !opts.insecure_http && tls.is_none() {
            return Err(format!(
                "--listen {a}: plain HTTP is served only on loopback (127.0.0.1, ::1) or a unix socket: SigV4 keeps requests from being forged, not read; give --tls-cert and --tls-key to serve {a} over TLS (or --insecure-http, behind a TLS proxy)"
            ));
        }
    }
    crate::fs::mount::block_signals();
    let server = Arc::new(Server {
        kms: Arc::new(kms),
        bucket: Mutex::new(throttle::Bucket::new(opts.max_rate)),
        started: Instant::now(),
        connections: AtomicUsize::new(0),
        max_connections: opts.max_connections.max(1),
    });
    let mut lines = vec![];
    for a in &opts.listen {
        let l = TcpListener::bind(a).map_err(|e| format!("--listen {a}: {e}"))?;
        let local = l.local_addr().map_err(|e| e.to_string())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        lines.push(format!("{scheme}://{local}"));
        let (s, tls) = (server.clone(), tls.clone());
        std::thread::spawn(move || accept_tcp(s, l, tls));
    }
    if let Some(p) = &opts.unix {
        match std::fs::symlink_metadata(p) {
            Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                let _ = std::fs::remove_file(p);
            }
            Ok(_) => {
                return Err(format!(
                    "--unix {}: exists and is not a socket; remove it or choose another path",
                    p.display()
                ));
            }
            Err(_) => {}
        }
        let l = UnixListener::bind(p).map_err(|e| format!("--unix {}: {e}", p.display()))?;
        // Anyone may connect: the peer's credentials are its identity, and
        // key policies decide what it may do.
        let _ = std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o666));
        lines.push(format!("unix://{}", p.display()));
        let s = server.clone();
        std::thread::spawn(move || accept_unix(s, l));
    }
    {
        // Coalesced audit records of the mount never arise here, but a
        // failed batch is retried by the flush.
        let kms = server.kms.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_secs(1));
                let _ = kms.flush_audit();
            }
        });
    }
    let mut out = io::stdout().lock();
    for l in &lines {
        let _ = writeln!(out, "kmsfs: serving the KMS API on {l}");
    }
    let _ = out.flush();
    drop(out);
    let sig = crate::fs::mount::wait_signal();
    let _ = server.kms.sync_audit();
    if let Some(p) = &opts.unix {
        let _ = std::fs::remove_file(p);
    }
    eprintln!("kmsfs: signal {sig}: stopped serving");
    Ok(())
}

fn accept_tcp(s: Arc<Server>, l: TcpListener, tls: Option<Arc<rustls::ServerConfig>>) {
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        let Ok(peer) = c.peer_addr() else { continue };
        let _ = c.set_nodelay(true);
        match &tls {
            None => spawn_connection(&s, c, Peer::Tcp(peer)),
            Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                // The handshake runs on the connection's thread, at its
                // first read, under the same timeouts.
                Ok(conn) => {
                    spawn_connection(&s, rustls::StreamOwned::new(conn, c), Peer::Tcp(peer))
                }
                Err(e) => crate::log_line!("kmsfs: TLS: {e}"),
            },
        }
    }
}

fn accept_unix(s: Arc<Server>, l: UnixListener) {
    for conn in l.incoming() {
        let Ok(c) = conn else { continue };
        let Some(peer) = peer_cred(&c) else { continue };
        spawn_connection(&s, c, peer);
    }
}

fn peer_cred(c: &UnixStream) -> Option<Peer> {
    let cred = crate::kms::caller::unix_peer(c).ok()?;
    Some(Peer::Unix {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid as u32,
    })
}

trait Stream: Read + Write + Send + 'static {
    fn set_timeout(&self, d: Duration);
}

impl Stream for TcpStream {
    fn set_timeout(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
        let _ = self.set_write_timeout(Some(d));
    }
}

impl Stream for rustls::StreamOwned<rustls::ServerConnection, TcpStream> {
    fn set_timeout(&self, d: Duration) {
        self.sock.set_timeout(d);
    }
}

impl Stream for UnixStream {
    fn set_timeout(&self, d: Duration) {
        let _ = self.set_read_timeout(Some(d));
        let _ = self.set_write_timeout(Some(d));
    }
}

/// Counts a connection while it lives.
struct Slot(Arc<Server>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

fn spawn_connection<S: Stream>(s: &Arc<Server>, mut c: S, peer: Peer) {
    if s.connections.fetch_add(1, Ordering::Relaxed) >= s.max_connections {
        s.connections.fetch_sub(1, Ordering::Relaxed);
        // Refused at once rather than queued: the client's SDK retries.
        let body = error_body("ThrottlingException", "Too many connections");
        let _ = c.write_all(&http::response(400, &request_id(), &body, true));
        return;
    }
    let slot = Slot(s.clone());
    let spawned = std::thread::Builder::new()
        .name("kms-conn".into())
        .spawn(move || {
            let slot = slot;
            c.set_timeout(IDLE);
            let s = slot.0.clone();
            connection(&s, &mut c, &peer);
        });
    if let Err(e) = spawned {
        crate::log_line!("kmsfs: cannot start a connection thread: {e}");
    }
}

fn error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"__type": code, "message": message})).expect("JSON")
}

fn request_id() -> String {
    let r = crate::crypto::random::array::<16>();
    let h = sigv4::hex(&r);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Serves requests on one connection until it closes, errs or idles out.
fn connection<S: Stream>(s: &Server, c: &mut S, peer: &Peer) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        // The head: read until its blank line, bounded in size and time.
        let mut started = (!buf.is_empty()).then(Instant::now);
        let late =
            |started: Option<Instant>| started.is_some_and(|t| t.elapsed() > REQUEST_DEADLINE);
        let end = loop {
            if let Some(e) = http::head_end(&buf) {
                break e;
            }
            if buf.len() > http::MAX_HEAD {
                let body = error_body("ValidationException", "request head too large");
                let _ = c.write_all(&http::response(431, &request_id(), &body, true));
                return;
            }
            if late(started) {
                return;
            }
            let mut chunk = [0u8; 8192];
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    started.get_or_insert_with(Instant::now);
                    buf.extend_from_slice(&chunk[..n])
                }
            }
        };
        let head = match http::parse_head(&buf[..end]) {
            Ok(h) => h,
            Err(e) => {
                let code = if e.status == 413 {
                    "ValidationException"
                } else {
                    "SerializationException"
                };
                let body = error_body(code, &e.message);
                let _ = c.write_all(&http::response(e.status, &request_id(), &body, true));
                return;
            }
        };
        let want = end + head.content_length;
        while buf.len() < want {
            if late(started) {
                return;
            }
            let mut chunk = vec![0u8; (want - buf.len()).min(64 << 10)];
            match c.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[end..want].to_vec();
        buf.drain(..want);
        let id = request_id();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            handle(s, &head, &body, peer)
        }))
        .unwrap_or_else(|_| {
            Err(ApiError::new(
                500,
                "KMSInternalException",
                "the server failed on this request; it was logged",
            ))
        });
        let (status, out) = match result {
            Ok(v) => (200, v),
            Err(e) => (e.status, error_body(&e.code, &e.message)),
        };
        if c.write_all(&http::response(status, &id, &out, head.close))
            .is_err()
            || head.close
        {
            return;
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One request: method and target, rate, identity, operation, result.
fn handle(s: &Server, head: &http::Head, body: &[u8], peer: &Peer) -> Result<Vec<u8>, ApiError> {
    if head.method != "POST" || head.path != "/" {
        return Err(ApiError::new(
            404,
            "UnknownOperationException",
            "the KMS API is POST / with X-Amz-Target: TrentService.<Operation>",
        ));
    }
    if !s
        .bucket
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(s.started.elapsed().as_secs_f64())
    {
        return Err(ApiError::new(400, "ThrottlingException", "Rate exceeded"));
    }
    let op = head
        .header("x-amz-target")
        .and_then(|t| t.strip_prefix("TrentService."))
        .ok_or_else(|| {
            ApiError::new(
                400,
                "UnknownOperationException",
                "X-Amz-Target must be TrentService.<Operation>",
            )
        })?;
    let caller = authenticate(s, head, body, peer)?;
    let req = Request::parse(op, body).map_err(|e| ApiError::new(400, e.code, e.message))?;
    let out = api::run(&s.kms, &caller, req)?;
    if let Some(w) = out.warning {
        crate::log_line!("kmsfs: {op}: {w}");
    }
    let value = if out.value.is_null() {
        json!({})
    } else {
        out.value
    };
    Ok(serde_json::to_vec(&value).expect("JSON"))
}

fn authenticate(
    s: &Server,
    head: &http::Head,
    body: &[u8],
    peer: &Peer,
) -> Result<Caller, ApiError> {
    let user_agent = head
        .header("user-agent")
        .map(|u| u.chars().take(256).collect::<String>());
    match peer {
        Peer::Unix { uid, gid, pid } => {
            let mut c = Caller::local(*uid, *gid, *pid, Via::Api);
            c.source_ip = Some("unix".into());
            c.remote = Some(crate::kms::caller::Remote {
                access_key_id: None,
                user_agent,
                iam_arn: None,
            });
            Ok(c)
        }
        Peer::Tcp(addr) => {
            let req = sigv4::Request {
                method: &head.method,
                path: &head.path,
                query: &head.query,
                headers: &head.headers,
                body,
            };
            let sig_err = |e: sigv4::SigError| ApiError::new(400, e.code, e.message);
            let auth = sigv4::check_form(&req, "kms", now_secs()).map_err(sig_err)?;
            let found = s.kms.access_key(
                &auth.access_key_id,
                &addr.ip().to_string(),
                user_agent.as_deref(),
            )?;
            let Some((secret, caller)) = found else {
                return Err(ApiError::new(
                    400,
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                ));
            };
            sigv4::verify(&req, &auth, &secret).map_err(sig_err)?;
            Ok(caller)
        }
    }
}
