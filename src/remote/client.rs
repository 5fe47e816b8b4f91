//! A SigV4-signing client of the AWS KMS JSON API: one request per call
//! over a kept-alive connection, bounded timeouts, and the AWS SDKs' retry
//! rule (throttling, 5xx and broken connections, with backoff), so an
//! unreachable KMS is a clear error within seconds, never a hung open.

use super::creds::Credentials;
use crate::kms::api::Request;
use crate::kms::sigv4;
use crate::kms::{ErrorCode, KmsError};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per call, as the SDKs' standard retry mode makes.
const ATTEMPTS: u32 = 3;
const MAX_RESPONSE: usize = 1 << 20;

/// Where the KMS is: `https://HOST[:PORT]`, or `http://HOST:PORT` on
/// loopback only (SigV4 protects a request from forgery, not from being
/// read, and a Decrypt response carries a data key in the clear).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let url = url.trim_end_matches('/');
        let (tls, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(r), _) => (true, r),
            (None, Some(r)) => (false, r),
            _ => {
                return Err(format!(
                    "{url}: the KMS endpoint must be https://HOST[:PORT] (or http://127.0.0.1:PORT on loopback)"
                ));
            }
        };
        if rest.contains('/') || rest.contains('@') {
            return Err(format!(
                "{url}: give the endpoint as http://HOST:PORT, no path"
            ));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse().map_err(|_| format!("{url}: bad port {p:?}"))?,
            ),
            _ => (rest.to_string(), if tls { 443 } else { 80 }),
        };
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && !tls {
            return Err(format!(
                "{url}: plain HTTP is used only on loopback: a Decrypt response carries a data key in the clear; use https://"
            ));
        }
        Ok(Endpoint {
            url: url.to_string(),
            host,
            port,
            tls,
        })
    }

    fn addr(&self) -> Result<SocketAddr, String> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("{}: {e}", self.url))?
            .next()
            .ok_or_else(|| format!("{}: no address", self.url))
    }

    fn host_header(&self) -> String {
        if self.port == if self.tls { 443 } else { 80 } {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

pub struct Client {
    pub endpoint: Endpoint,
    pub region: String,
    creds: Credentials,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: Mutex<Vec<Conn>>,
}

/// A connection to the KMS, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(c) => c.read(b),
            Conn::Tls(c) => c.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(c) => c.write(b),
            Conn::Tls(c) => c.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(c) => c.flush(),
            Conn::Tls(c) => c.flush(),
        }
    }
}

/// The roots a TLS endpoint's certificate is checked against: Mozilla's
/// (webpki-roots, so AWS KMS needs nothing installed), and the PEM bundle
/// `ca_bundle` or $AWS_CA_BUNDLE names (a private CA), as the AWS CLI does.
pub fn tls_config(
    ca_bundle: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let env = std::env::var_os("AWS_CA_BUNDLE").filter(|v| !v.is_empty());
    if let Some(p) = ca_bundle.map(|p| p.as_os_str().to_owned()).or(env) {
        let path = std::path::Path::new(&p);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|i| i.collect::<Result<_, _>>())
            .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "CA bundle {}: no PEM certificate in it",
                path.display()
            ));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| format!("CA bundle {}: {e}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// A call's failure: the KMS's error, or no answer at all.
#[derive(Debug)]
pub enum RemoteError {
    Api { code: String, message: String },
    Unreachable(String),
}

/// What went wrong with one attempt.
enum Failure {
    /// The KMS answered with an error (`__type`, message, HTTP status).
    Api(String, String, u16),
    /// No answer: connection refused, reset or timed out.
    Transport(String),
}

impl Client {
    /// A client; `tls` must be given for an https endpoint.
    pub fn new(
        endpoint: Endpoint,
        region: String,
        creds: Credentials,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Client {
        Client {
            endpoint,
            region,
            creds,
            tls,
            idle: Mutex::new(vec![]),
        }
    }

    /// Sends `req`, retrying as the SDKs do; the response's JSON.
    pub fn call(&self, req: &Request) -> Result<Value, KmsError> {
        self.call_verbatim(req).map_err(|e| match e {
            RemoteError::Api { code, message } => api_error(&code, &message, &self.endpoint.url),
            RemoteError::Unreachable(m) => KmsError::internal(m),
        })
    }

    /// As `call`, with the remote's error code as it sent it (the CLI
    /// prints it as the AWS CLI does).
    pub fn call_verbatim(&self, req: &Request) -> Result<Value, RemoteError> {
        let op = req.operation();
        let body = req.body_bytes();
        let mut last = None;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                // 100 ms, then 400 ms, with jitter.
                let base = 100u64 << (2 * (attempt - 1));
                let jitter = u64::from(crate::crypto::random::array::<1>()[0]) % (base / 2 + 1);
                std::thread::sleep(Duration::from_millis(base + jitter));
            }
            match self.attempt(op, &body) {
                Ok(v) => return Ok(v),
                Err(Failure::Api(code, message, status)) => {
                    let retry = status >= 500 || code.ends_with("ThrottlingException");
                    let e = RemoteError::Api { code, message };
                    if !retry {
                        return Err(e);
                    }
                    last = Some(e);
                }
                Err(Failure::Transport(m)) => {
                    last = Some(RemoteError::Unreachable(format!(
                        "the KMS at {} did not answer {op} ({m}); is it running and reachable?",
                        self.endpoint.url
                    )));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    fn connection(&self) -> Result<Conn, Failure> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let addr = self.endpoint.addr().map_err(Failure::Transport)?;
        let c = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| Failure::Transport(e.to_string()))?;
        let _ = c.set_nodelay(true);
        let _ = c.set_read_timeout(Some(IO_TIMEOUT));
        let _ = c.set_write_timeout(Some(IO_TIMEOUT));
        if !self.endpoint.tls {
            return Ok(Conn::Plain(c));
        }
        let cfg = self.tls.clone().ok_or_else(|| {
            Failure::Transport("no TLS configuration for an https endpoint".into())
        })?;
        let name = rustls::pki_types::ServerName::try_from(self.endpoint.host.clone())
            .map_err(|e| Failure::Transport(format!("{}: {e}", self.endpoint.host)))?;
        let conn = rustls::ClientConnection::new(cfg, name)
            .map_err(|e| Failure::Transport(format!("TLS: {e}")))?;
        Ok(Conn::Tls(Box::new(rustls::StreamOwned::new(conn, c))))
    }

    fn attempt(&self, op: &str, body: &[u8]) -> Result<Value, Failure> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let amz_date = sigv4::format_amz_date(now);
        let mut headers = vec![
            (
                "Content-Type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            ("Host".to_string(), self.endpoint.host_header()),
            ("X-Amz-Date".to_string(), amz_date.clone()),
            ("X-Amz-Target".to_string(), format!("TrentService.{op}")),
        ];
        if let Some(t) = &self.creds.session_token {
            headers.push(("X-Amz-Security-Token".into(), t.to_string()));
        }
        let auth = sigv4::authorization(
            &sigv4::Request {
                method: "POST",
                path: "/",
                query: "",
                headers: &headers,
                body,
            },
            &self.creds.access_key_id,
            &self.creds.secret_access_key,
            &amz_date,
            &self.region,
            "kms",
        );
        let mut msg = String::from("POST / HTTP/1.1\r\n");
        for (k, v) in &headers {
            msg.push_str(&format!("{k}: {v}\r\n"));
        }
        msg.push_str(&format!(
            "Authorization: {auth}\r\nUser-Agent: kmsfs/{}\r\nContent-Length: {}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            body.len()
        ));
        let mut c = self.connection()?;
        let sent = c.write_all(msg.as_bytes()).and_then(|_| c.write_all(body));
        if let Err(e) = sent {
            return Err(Failure::Transport(e.to_string()));
        }
        let (status, keep, resp) = read_response(&mut c).map_err(Failure::Transport)?;
        if keep {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < 64 {
                idle.push(c);
            }
        }
        let v: Value = serde_json::from_slice(if resp.is_empty() { b"{}" } else { &resp })
            .map_err(|e| Failure::Transport(format!("the response is not JSON: {e}")))?;
        if status == 200 {
            return Ok(v);
        }
        let code = v["__type"].as_str().unwrap_or("UnknownError").to_string();
        let message = v["message"]
            .as_str()
            .or(v["Message"].as_str())
            .unwrap_or("")
            .to_string();
        Err(Failure::Api(code, message, status))
    }
}

/// A remote error as the core's: codes this KMS models keep theirs, others
/// (ThrottlingException, UnrecognizedClientException, ...) become
/// KMSInternalException naming the code.
fn api_error(code: &str, message: &str, url: &str) -> KmsError {
    match ErrorCode::parse(code) {
        Some(c) => KmsError::new(c, message),
        None => {
            let short = code.rsplit('#').next().unwrap_or(code);
            let code = if short == "UnrecognizedClientException"
                || short == "InvalidSignatureException"
                || short == "IncompleteSignatureException"
                || short == "MissingAuthenticationTokenException"
            {
                ErrorCode::AccessDeniedException
            } else {
                ErrorCode::KMSInternalException
            };
            KmsError::new(
                code,
                format!("the KMS at {url} answered {short}: {message}"),
            )
        }
    }
}

/// Reads one response: its status, whether the connection stays open, and
/// its body (bounded).
fn read_response(c: &mut impl Read) -> Result<(u16, bool, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(4096);
    let end = loop {
        if let Some(e) = crate::server::http::head_end(&buf) {
            break e;
        }
        if buf.len() > 64 << 10 {
            return Err("response head too large".into());
        }
        let mut chunk = [0u8; 8192];
        match c.read(&mut chunk) {
            Ok(0) => return Err("connection closed before a response".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(e.to_string()),
        }
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed status line {status_line:?}"))?;
    let mut length = None;
    let mut keep = version == "HTTP/1.1";
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = Some(v.parse::<usize>().map_err(|_| "malformed Content-Length")?);
            } else if k.eq_ignore_ascii_case("connection") {
                keep = !v.eq_ignore_ascii_case("close");
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                return Err("chunked responses are not read".into());
            }
        }
    }
    let mut body = buf[end..].to_vec();
    match length {
        Some(n) if n > MAX_RESPONSE => return Err("response too large".into()),
        Some(n) => {
            while body.len() < n {
                let mut chunk = vec![0u8; n - body.len()];
                match c.read(&mut chunk) {
                    Ok(0) => return Err("connection closed mid-response".into()),
                    Ok(k) => body.extend_from_slice(&chunk[..k]),
                    Err(e) => return Err(e.to_string()),
                }
            }
            body.truncate(n);
        }
        None => {
            keep = false;
            c.take(MAX_RESPONSE as u64)
                .read_to_end(&mut body)
                .map_err(|e| e.to_string())?;
        }
    }
    Ok((status, keep, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_https_anywhere_or_http_on_loopback() {
        let e = Endpoint::parse("http://127.0.0.1:8080/").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.host_header()),
            ("127.0.0.1", 8080, "127.0.0.1:8080".into())
        );
        assert_eq!(Endpoint::parse("http://localhost").unwrap().port, 80);
        assert_eq!(Endpoint::parse("http://[::1]:9").unwrap().host, "::1");
        assert!(
            Endpoint::parse("http://10.0.0.1:80")
                .unwrap_err()
                .contains("only on loopback")
        );
        let aws = Endpoint::parse("https://kms.us-east-1.amazonaws.com").unwrap();
        assert_eq!(
            (aws.port, aws.tls, aws.host_header()),
            (443, true, "kms.us-east-1.amazonaws.com".into())
        );
        assert!(
            Endpoint::parse("https://10.0.0.1:8443").unwrap().tls,
            "TLS may leave loopback"
        );
        assert!(Endpoint::parse("ftp://x").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:8080/path").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:99999").is_err());
    }

    #[test]
    fn remote_errors_keep_their_codes() {
        let e = api_error("com.amazonaws.kms#NotFoundException", "gone", "u");
        assert_eq!(e.code, ErrorCode::NotFoundException);
        assert_eq!(
            api_error("UnrecognizedClientException", "bad key", "u").code,
            ErrorCode::AccessDeniedException
        );
        let t = api_error("ThrottlingException", "Rate exceeded", "http://k");
        assert_eq!(t.code, ErrorCode::KMSInternalException);
        assert!(t.message.contains("ThrottlingException"), "{}", t.message);
    }
}
