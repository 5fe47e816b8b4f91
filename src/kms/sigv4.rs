//! AWS Signature Version 4, both ways: a client signs a request, the server
//! verifies one. Pure: the caller supplies the request's parts, the secret
//! and the clock, so the AWS test-suite vectors run as unit tests.
//!
//! What the server checks, as AWS does: the Authorization header's form
//! (algorithm, credential scope `DATE/REGION/kms/aws4_request`, signed
//! headers, signature); that `host` and `x-amz-date` are signed; that the
//! scope's date is the request's; that the request's time is within five
//! minutes of the server's; that an `x-amz-content-sha256` header, if sent,
//! is the body's hash; and the signature itself, compared in constant time.
//! Any region is accepted (clients default to us-east-1): the scope binds
//! the signature to the region the client chose.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's time may be from the server's (AWS: five minutes).
pub const MAX_SKEW_SECS: i64 = 300;

/// Why a request's signature was refused, with AWS's error code for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigError {
    pub code: &'static str,
    pub message: String,
}

impl SigError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        SigError {
            code,
            message: message.into(),
        }
    }
    fn incomplete(message: impl Into<String>) -> Self {
        Self::new("IncompleteSignatureException", message)
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidSignatureException", message)
    }
}

/// The parts of an HTTP request that SigV4 covers. `path` and `query` are
/// as they were on the wire (percent-encoded); header names any case.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// A parsed `Authorization: AWS4-HMAC-SHA256 Credential=..., ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// URI-encodes as SigV4 requires: every byte but A-Z a-z 0-9 - _ . ~
/// (and `/` when `keep_slash`) as %XX, upper-case.
pub fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// The canonical URI: each path segment decoded, then encoded once.
/// (KMS is always `POST /`; other paths are canonicalised as the
/// test suite's.)
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    uri_encode(&percent_decode(path), true)
}

/// The canonical query: parameters decoded, encoded, sorted by name then
/// value, `name=value` joined by `&`.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A header value as SigV4 signs it: trimmed, inner runs of spaces one.
fn canonical_value(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The canonical request over the headers named in `signed` (lower-case,
/// sorted), with the body's hash.
pub fn canonical_request(req: &Request, signed: &[String], payload_hash: &str) -> String {
    let mut lines = String::new();
    for name in signed {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| canonical_value(v))
            .collect();
        lines.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.path),
        canonical_query(req.query),
        lines,
        signed.join(";"),
        payload_hash
    )
}

pub fn scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/aws4_request")
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    )
}

/// The key a signature is made with, derived from the secret for one day,
/// region and service.
pub fn signing_key(
    secret: &str,
    date: &str,
    region: &str,
    service: &str,
) -> zeroize::Zeroizing<[u8; 32]> {
    let k = zeroize::Zeroizing::new(format!("AWS4{secret}"));
    let k = zeroize::Zeroizing::new(hmac(k.as_bytes(), date.as_bytes()));
    let k = zeroize::Zeroizing::new(hmac(&*k, region.as_bytes()));
    let k = zeroize::Zeroizing::new(hmac(&*k, service.as_bytes()));
    zeroize::Zeroizing::new(hmac(&*k, b"aws4_request"))
}

/// The signature of `req` (whose headers include `x-amz-date` = `amz_date`)
/// over `signed`, as hex.
pub fn signature(
    req: &Request,
    signed: &[String],
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let date = &amz_date[..amz_date.len().min(8)];
    let canonical = canonical_request(req, signed, &sha256_hex(req.body));
    let sts = string_to_sign(amz_date, &scope(date, region, service), &canonical);
    hex(&hmac(
        &*signing_key(secret, date, region, service),
        sts.as_bytes(),
    ))
}

/// The Authorization header for `req`, signing every header it carries
/// (which must include `host` and `x-amz-date`).
pub fn authorization(
    req: &Request,
    access_key_id: &str,
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let mut signed: Vec<String> = req
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    signed.sort();
    signed.dedup();
    let sig = signature(req, &signed, secret, amz_date, region, service);
    format!(
        "{ALGORITHM} Credential={access_key_id}/{}, SignedHeaders={}, Signature={sig}",
        scope(&amz_date[..8], region, service),
        signed.join(";")
    )
}

/// Parses an Authorization header; the error names what is missing.
pub fn parse_authorization(h: &str) -> Result<Authorization, SigError> {
    let rest = h
        .strip_prefix(ALGORITHM)
        .filter(|r| r.starts_with(' '))
        .ok_or_else(|| {
            SigError::incomplete(format!(
                "Authorization header requires the {ALGORITHM} algorithm"
            ))
        })?;
    let (mut cred, mut signed, mut sig) = (None, None, None);
    for part in rest.split(',') {
        let part = part.trim();
        let (k, v) = part.split_once('=').ok_or_else(|| {
            SigError::incomplete(format!(
                "Authorization header element {part:?} is not NAME=VALUE"
            ))
        })?;
        let slot = match k {
            "Credential" => &mut cred,
            "SignedHeaders" => &mut signed,
            "Signature" => &mut sig,
            _ => continue,
        };
        if slot.replace(v).is_some() {
            return Err(SigError::incomplete(format!(
                "Authorization header gives {k} twice"
            )));
        }
    }
    let missing = |what: &str| {
        SigError::incomplete(format!("Authorization header requires '{what}' parameter"))
    };
    let cred = cred.ok_or_else(|| missing("Credential"))?;
    let signed = signed.ok_or_else(|| missing("SignedHeaders"))?;
    let sig = sig.ok_or_else(|| missing("Signature"))?;
    let parts: Vec<&str> = cred.split('/').collect();
    let [key, date, region, service, term] = parts[..] else {
        return Err(SigError::incomplete(format!(
            "Credential should be ACCESS_KEY/DATE/REGION/SERVICE/aws4_request, got {} parts",
            parts.len()
        )));
    };
    if term != "aws4_request" {
        return Err(SigError::incomplete(
            "Credential should be scoped with a valid terminator: 'aws4_request'",
        ));
    }
    if key.is_empty()
        || date.len() != 8
        || !date.bytes().all(|b| b.is_ascii_digit())
        || region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(SigError::incomplete(format!(
            "Credential {cred:?} is malformed"
        )));
    }
    let signed_headers: Vec<String> = signed.split(';').map(str::to_string).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
    {
        return Err(SigError::incomplete(
            "SignedHeaders must be lower-case names separated by ';'",
        ));
    }
    if sig.len() != 64 || !sig.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(SigError::incomplete("Signature must be 64 hex digits"));
    }
    Ok(Authorization {
        access_key_id: key.into(),
        date: date.into(),
        region: region.into(),
        service: service.into(),
        signed_headers,
        signature: sig.to_ascii_lowercase(),
    })
}

/// Seconds since the epoch of an `x-amz-date` (`YYYYMMDDTHHMMSSZ`).
pub fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, sec) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + sec)
}

/// `x-amz-date` for a time in seconds since the epoch.
pub fn format_amz_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Checks everything about a request's signature that needs no secret;
/// returns the parsed header, whose access key id then finds the secret.
pub fn check_form(req: &Request, service: &str, now: i64) -> Result<Authorization, SigError> {
    let Some(h) = header(req, "authorization") else {
        return Err(SigError::new(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ));
    };
    let auth = parse_authorization(h)?;
    if auth.service != service {
        return Err(SigError::incomplete(format!(
            "Credential should be scoped to correct service: '{service}'"
        )));
    }
    for required in ["host", "x-amz-date"] {
        if !auth.signed_headers.iter().any(|h| h == required) {
            return Err(SigError::incomplete(format!(
                "SignedHeaders must include '{required}'"
            )));
        }
    }
    let amz_date = header(req, "x-amz-date").unwrap_or_default();
    let at = parse_amz_date(amz_date).ok_or_else(|| {
        SigError::incomplete(format!(
            "X-Amz-Date {amz_date:?} is not YYYYMMDD'T'HHMMSS'Z'"
        ))
    })?;
    if !amz_date.starts_with(&auth.date) {
        return Err(SigError::invalid(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}'",
            auth.date,
            &amz_date[..8]
        )));
    }
    if (at - now).abs() > MAX_SKEW_SECS {
        let (rel, bound, sign) = if at < now {
            ("earlier", now - MAX_SKEW_SECS, '-')
        } else {
            ("later", now + MAX_SKEW_SECS, '+')
        };
        return Err(SigError::invalid(format!(
            "Signature expired: {amz_date} is now {rel} than {} ({} {sign} 5 min.)",
            format_amz_date(bound),
            format_amz_date(now),
        )));
    }
    if let Some(claimed) = header(req, "x-amz-content-sha256")
        && claimed != sha256_hex(req.body)
    {
        return Err(SigError::invalid(
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
        ));
    }
    Ok(auth)
}

/// Verifies the signature with the access key's secret (constant time).
pub fn verify(req: &Request, auth: &Authorization, secret: &str) -> Result<(), SigError> {
    let amz_date = header(req, "x-amz-date").unwrap_or_default();
    let expected = signature(
        req,
        &auth.signed_headers,
        secret,
        amz_date,
        &auth.region,
        &auth.service,
    );
    if !crate::crypto::ct_eq(expected.as_bytes(), auth.signature.as_bytes()) {
        return Err(SigError::invalid(
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The AWS SigV4 test suite's credentials, time and scope.
    const KEY: &str = "AKIDEXAMPLE";
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const DATE: &str = "20150830T123600Z";

    fn suite_headers() -> Vec<(String, String)> {
        vec![
            ("Host".into(), "example.amazonaws.com".into()),
            ("X-Amz-Date".into(), DATE.into()),
        ]
    }

    fn sign_suite(method: &str, path: &str, query: &str) -> String {
        let h = suite_headers();
        let req = Request {
            method,
            path,
            query,
            headers: &h,
            body: b"",
        };
        authorization(&req, KEY, SECRET, DATE, "us-east-1", "service")
    }

    #[test]
    fn aws_test_suite_vectors() {
        let prefix = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=";
        for (name, method, path, query, sig) in [
            (
                "get-vanilla",
                "GET",
                "/",
                "",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "post-vanilla",
                "POST",
                "/",
                "",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "get-vanilla-query-order-key-case",
                "GET",
                "/",
                "Param2=value2&Param1=value1",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "post-vanilla-query",
                "POST",
                "/",
                "Param1=value1",
                "28038455d6de14eafc1f9222cf5aa6f1a96197d7deb8263271d420d138af7f11",
            ),
            (
                "get-utf8",
                "GET",
                "/\u{1234}",
                "",
                "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
            ),
        ] {
            assert_eq!(
                sign_suite(method, path, query),
                format!("{prefix}{sig}"),
                "{name}"
            );
        }
    }

    #[test]
    fn the_verifier_accepts_the_suites_get_vanilla_request() {
        // The request exactly as the suite gives it, Authorization included.
        let mut h = suite_headers();
        h.push((
            "Authorization".into(),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31".into(),
        ));
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let auth = check_form(&req, "service", 1_440_938_160).unwrap();
        assert_eq!(auth.access_key_id, KEY);
        assert_eq!(verify(&req, &auth, SECRET), Ok(()));
        assert_eq!(
            verify(&req, &auth, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEZ")
                .unwrap_err()
                .code,
            "InvalidSignatureException"
        );
        // Signed for another service: refused before any secret is looked up.
        assert_eq!(
            check_form(&req, "kms", 1_440_938_160).unwrap_err().code,
            "IncompleteSignatureException"
        );
    }

    #[test]
    fn the_suites_intermediate_values() {
        let h = suite_headers();
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let signed = vec!["host".to_string(), "x-amz-date".to_string()];
        let c = canonical_request(&req, &signed, &sha256_hex(b""));
        assert_eq!(
            sha256_hex(c.as_bytes()),
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
        );
        let req = Request {
            method: "POST",
            ..req
        };
        let c = canonical_request(&req, &signed, &sha256_hex(b""));
        let sts = string_to_sign(DATE, &scope("20150830", "us-east-1", "service"), &c);
        assert_eq!(
            sts.lines().last().unwrap(),
            "553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87"
        );
    }

    #[test]
    fn dates_round_trip() {
        assert_eq!(parse_amz_date(DATE), Some(1_440_938_160));
        assert_eq!(format_amz_date(1_440_938_160), DATE);
        for t in [0i64, 951_782_400, 4_102_444_799, 1_709_164_800] {
            assert_eq!(parse_amz_date(&format_amz_date(t)), Some(t), "{t}");
        }
        for bad in [
            "20150830T123600",
            "2015-08-30T12:36:00Z",
            "20151330T123600Z",
            "2015083OT123600Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    fn kms_request(
        body: &'static [u8],
        secret: &str,
        date: &str,
    ) -> (Vec<(String, String)>, &'static [u8]) {
        let mut h = vec![
            ("Host".to_string(), "localhost:8080".to_string()),
            ("X-Amz-Date".to_string(), date.to_string()),
            (
                "X-Amz-Target".to_string(),
                "TrentService.ListKeys".to_string(),
            ),
            (
                "Content-Type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
        ];
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body,
        };
        let a = authorization(&req, "AKIATEST", secret, date, "eu-west-3", "kms");
        h.push(("Authorization".to_string(), a));
        (h, body)
    }

    fn check(h: &[(String, String)], body: &[u8], secret: &str, now: i64) -> Result<(), SigError> {
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: h,
            body,
        };
        let auth = check_form(&req, "kms", now)?;
        assert_eq!(auth.access_key_id, "AKIATEST");
        assert_eq!(auth.region, "eu-west-3");
        verify(&req, &auth, secret)
    }

    #[test]
    fn a_signed_request_verifies_and_every_change_is_refused() {
        let now = 1_440_938_160;
        let (h, body) = kms_request(b"{}", "s3cret", DATE);
        assert_eq!(check(&h, body, "s3cret", now), Ok(()));
        assert_eq!(check(&h, body, "s3cret", now + 299), Ok(()));
        let code = |r: Result<(), SigError>| r.unwrap_err().code;
        assert_eq!(
            code(check(&h, body, "other", now)),
            "InvalidSignatureException"
        );
        assert_eq!(
            code(check(&h, b"{\"Limit\":1}", "s3cret", now)),
            "InvalidSignatureException"
        );
        let e = check(&h, body, "s3cret", now + 301).unwrap_err();
        assert_eq!(e.code, "InvalidSignatureException");
        assert!(
            e.message.starts_with(
                "Signature expired: 20150830T123600Z is now earlier than 20150830T123601Z"
            ),
            "{}",
            e.message
        );
        assert_eq!(
            code(check(&h, body, "s3cret", now - 301)),
            "InvalidSignatureException"
        );
        // A signed header changed in transit.
        let mut t = h.clone();
        t[2].1 = "TrentService.Decrypt".into();
        assert_eq!(
            code(check(&t, body, "s3cret", now)),
            "InvalidSignatureException"
        );
        // No Authorization header at all.
        let t: Vec<_> = h
            .iter()
            .filter(|(n, _)| n != "Authorization")
            .cloned()
            .collect();
        assert_eq!(
            code(check(&t, body, "s3cret", now)),
            "MissingAuthenticationTokenException"
        );
        // A content hash that is not the body's.
        let mut t = h.clone();
        t.push(("X-Amz-Content-Sha256".into(), sha256_hex(b"other")));
        assert_eq!(
            code(check(&t, body, "s3cret", now)),
            "InvalidSignatureException"
        );
    }

    #[test]
    fn malformed_authorization_headers_are_incomplete_signatures() {
        for bad in [
            "AWS4-HMAC-SHA1 Credential=a/20150830/us-east-1/kms/aws4_request, SignedHeaders=host;x-amz-date, Signature=00",
            "AWS4-HMAC-SHA256 SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20150830/us-east-1/kms/aws5_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/2015083/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20150830/us-east-1/kms/aws4_request, SignedHeaders=Host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
            "AWS4-HMAC-SHA256 Credential=a/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=xyz",
            "AWS4-HMAC-SHA256 Credential=a/20150830/us-east-1/kms/aws4_request, Credential=b/20150830/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert_eq!(
                parse_authorization(bad).unwrap_err().code,
                "IncompleteSignatureException",
                "{bad}"
            );
        }
    }
}
