//! The slice of HTTP/1.1 the KMS API needs, parsed with bounds: a request
//! head (request line and headers) and a Content-Length body. Pure: it
//! sees bytes, never a socket, so hostile input is unit-tested. Chunked
//! bodies are refused (AWS's SDKs send a length for these small JSON
//! bodies), as are bodies past the bound and heads past theirs.

/// Longest request head accepted (AWS's front end allows about 16 KiB).
pub const MAX_HEAD: usize = 16 << 10;
pub const MAX_HEADERS: usize = 64;
/// Longest body: a KMS request is at most a 4 KiB plaintext or a 32 KiB
/// policy, in base64 and JSON.
pub const MAX_BODY: usize = 256 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub content_length: usize,
    /// HTTP/1.0, or `Connection: close`.
    pub close: bool,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a request cannot be read: its HTTP status and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub message: String,
}

fn bad(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

/// Where the head ends in `buf` (the index past its blank line), if it has.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses a complete head (`buf` up to and including its blank line).
pub fn parse_head(buf: &[u8]) -> Result<Head, HttpError> {
    if buf.len() > MAX_HEAD {
        return Err(bad(431, "request head too large"));
    }
    let text = std::str::from_utf8(buf).map_err(|_| bad(400, "request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad(400, "malformed method"));
    }
    if !target.starts_with('/') {
        return Err(bad(400, "the request target must be a path"));
    }
    let close_by_default = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ if version.starts_with("HTTP/") => {
            return Err(bad(505, "only HTTP/1.1 and HTTP/1.0 are served"));
        }
        _ => return Err(bad(400, "malformed request line")),
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if headers.len() == MAX_HEADERS {
            return Err(bad(431, "too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(400, "malformed header line"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(bad(400, "malformed header name"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let mut head = Head {
        method: method.into(),
        path: path.into(),
        query: query.into(),
        headers,
        content_length: 0,
        close: close_by_default,
    };
    if head.header("transfer-encoding").is_some() {
        return Err(bad(411, "send the body with a Content-Length"));
    }
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    head.content_length = match lengths[..] {
        [] => 0,
        [one] => one
            .parse()
            .ok()
            .filter(|_| one.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad(400, "malformed Content-Length"))?,
        _ => return Err(bad(400, "Content-Length given twice")),
    };
    if head.content_length > MAX_BODY {
        return Err(bad(413, format!("request body over {MAX_BODY} bytes")));
    }
    if let Some(c) = head.header("connection") {
        if c.eq_ignore_ascii_case("close") {
            head.close = true;
        } else if c.eq_ignore_ascii_case("keep-alive") {
            head.close = false;
        }
    }
    Ok(head)
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

/// A whole response with a JSON body.
pub fn response(status: u16, request_id: &str, body: &[u8], close: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nx-amzn-RequestId: {request_id}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n{}\r\n",
        reason(status),
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "POST / HTTP/1.1\r\nHost: localhost\r\nX-Amz-Target: TrentService.ListKeys\r\nContent-Length: 2\r\n\r\n";

    #[test]
    fn a_kms_request_head_parses() {
        let h = parse_head(OK.as_bytes()).unwrap();
        assert_eq!(
            (h.method.as_str(), h.path.as_str(), h.content_length),
            ("POST", "/", 2)
        );
        assert_eq!(h.header("x-amz-target"), Some("TrentService.ListKeys"));
        assert!(!h.close);
        assert_eq!(head_end(format!("{OK}{{}}").as_bytes()), Some(OK.len()));
        let h = parse_head(b"GET /x?a=b HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(
            (h.path.as_str(), h.query.as_str(), h.close),
            ("/x", "a=b", true)
        );
    }

    #[test]
    fn hostile_heads_get_a_status_not_a_panic() {
        let status = |s: &str| parse_head(s.as_bytes()).unwrap_err().status;
        assert_eq!(status("POST /\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/2\r\n\r\n"), 505);
        assert_eq!(status("\x16\x03\x01 not http\r\n\r\n"), 400);
        assert_eq!(status("post / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("POST http://x/ HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n"), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n"),
            413
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            411
        );
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(status(&format!("POST / HTTP/1.1\r\n{many}\r\n")), 431);
        let huge = format!("POST / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(&huge), 431);
        assert_eq!(
            parse_head(&[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n'])
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn responses_carry_length_and_request_id() {
        let r = String::from_utf8(response(400, "rid", b"{}", true)).unwrap();
        assert!(r.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{r}");
        assert!(r.contains("x-amzn-RequestId: rid\r\n") && r.contains("Content-Length: 2\r\n"));
        assert!(r.ends_with("Connection: close\r\n\r\n{}"));
    }
}
