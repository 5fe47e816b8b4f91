//! The audit trail's line format, as pure functions: how a record is sealed
//! into the MAC chain, and the two records the trail writes about itself.
//!
//! Every line ends with `"chainSeq":N,"chainMac":"HEX"}`; the MAC covers the
//! previous line's MAC and every byte of this line before `,"chainMac"`. The
//! sequence and the chain run on across rotated files.
//!
//! - `AuditDigest` (in the spirit of CloudTrail's digest files): covers the
//!   lines since the previous digest, names the last one's MAC and the
//!   previous digest's signature, and is signed under a key derived from the
//!   chain key. Written every minute of activity, when a file is rotated and
//!   when a writer closes.
//! - `LogFileStarted`: the first line of every file after the first, saying
//!   where the chain and the digests stood, so that a trail whose oldest files
//!   were pruned can still be verified from there (`--from-record`).

use crate::crypto::Key256;
use crate::crypto::kdf::{hkdf256, hmac_sha256};
use serde_json::{Value, json};

pub const MAC_MARK: &str = ",\"chainMac\":\"";
pub const SEQ_MARK: &str = ",\"chainSeq\":";
/// Longest line read back: a record is about 1.5 KB.
pub const MAX_LINE: usize = 1 << 20;
pub const DIGEST_EVENT: &str = "AuditDigest";
pub const STARTED_EVENT: &str = "LogFileStarted";
const DIGEST_LABEL: &str = "kmsfs audit digest v1";

/// Where the chain stands: the last line's sequence number and MAC (0 and
/// zeros before the first line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub mac: [u8; 32],
}

/// The last digest: its own sequence number and signature (0 and zeros
/// before the first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DigestHead {
    pub seq: u64,
    pub sig: [u8; 32],
}

/// The chain's head as the keystore keeps it, outside the log: a trail that
/// ends before it, or holds another record in its place, was cut or
/// replaced.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Anchor {
    pub seq: u64,
    /// The record's chainMac, hex.
    pub mac: String,
    /// When it was anchored (RFC 3339).
    pub time: String,
}

impl Anchor {
    pub fn head(&self) -> Option<Head> {
        Some(Head {
            seq: self.seq,
            mac: unhex32(&self.mac)?,
        })
    }
}

/// Splits a line into (the MACed prefix, chainSeq, MAC bytes).
pub fn split_line(line: &str) -> Result<(&str, u64, [u8; 32]), String> {
    let idx = line.rfind(MAC_MARK).ok_or("no chainMac field")?;
    let prefix = &line[..idx];
    let mac_hex = line[idx + MAC_MARK.len()..]
        .strip_suffix("\"}")
        .ok_or("chainMac is not the last field")?;
    let mac = unhex32(mac_hex).ok_or("chainMac is not 64 hex digits")?;
    let sidx = prefix.rfind(SEQ_MARK).ok_or("no chainSeq field")?;
    let seq: u64 = prefix[sidx + SEQ_MARK.len()..]
        .parse()
        .map_err(|_| "chainSeq is not a number")?;
    Ok((prefix, seq, mac))
}

/// 64 hex digits to 32 bytes. Hex digits only: slicing other text in pairs
/// could split a character, and from_str_radix would take "+f" for 0f.
pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn hex(b: &[u8; 32]) -> String {
    let mut s = String::with_capacity(64);
    crate::crypto::hex_into(b, &mut s);
    s
}

/// The MAC of a line whose text before `,"chainMac"` is `prefix`.
pub fn line_mac(key: &Key256, prev: &[u8; 32], prefix: &[u8]) -> [u8; 32] {
    hmac_sha256(key.as_bytes(), &[prev, prefix])
}

/// Appends `body` (a JSON object without its closing brace) to `out` as line
/// `seq` of the chain after `prev`, newline included; returns its MAC.
pub fn seal_line(
    out: &mut String,
    body: &str,
    key: &Key256,
    seq: u64,
    prev: &[u8; 32],
) -> [u8; 32] {
    let start = out.len();
    out.push_str(body);
    out.push_str(SEQ_MARK);
    out.push_str(itoa(seq, &mut [0u8; 20]));
    let mac = line_mac(key, prev, &out.as_bytes()[start..]);
    out.push_str(MAC_MARK);
    crate::crypto::hex_into(&mac, out);
    out.push_str("\"}\n");
    mac
}

fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("digits")
}

/// The digest key: derived from the chain key, so only a holder of the
/// root key can sign a digest.
pub fn digest_key(chain_key: &Key256) -> Key256 {
    hkdf256(chain_key.as_bytes(), b"", DIGEST_LABEL.as_bytes())
}

/// What a digest signs. Every field is fixed-width or ends at a newline, so
/// no two digests share the signed text.
pub fn digest_signature(
    dkey: &Key256,
    range: (u64, u64),
    last_mac: &[u8; 32],
    prev_sig: &[u8; 32],
    time: &str,
) -> [u8; 32] {
    let text = format!(
        "{DIGEST_LABEL}\n{}\n{}\n{}\n{}\n{time}\n",
        range.0,
        range.1,
        hex(last_mac),
        hex(prev_sig)
    );
    hmac_sha256(dkey.as_bytes(), &[text.as_bytes()])
}

/// The fields every record the trail writes about itself shares, CloudTrail
/// style, ending with `serviceEventDetails`; returned without the closing
/// brace, ready for [`seal_line`].
fn service_event(name: &str, time: &str, details: Value) -> String {
    let v = json!({
        "eventVersion": "1.08",
        "userIdentity": {"type": "AWSService", "invokedBy": "kmsfs", "pid": std::process::id()},
        "eventTime": time,
        "eventSource": "kms.kmsfs.local",
        "eventName": name,
        "awsRegion": "local",
        "readOnly": true,
        "eventType": "AwsServiceEvent",
        "managementEvent": true,
        "eventCategory": "Management",
        "serviceEventDetails": details,
    });
    let mut s = v.to_string();
    s.pop();
    s
}

/// A digest over lines `range` (inclusive), the last of which has MAC
/// `last_mac`; returns the body and its signature.
pub fn digest_body(
    dkey: &Key256,
    range: (u64, u64),
    last_mac: &[u8; 32],
    prev: &DigestHead,
    time: &str,
) -> (String, [u8; 32]) {
    let sig = digest_signature(dkey, range, last_mac, &prev.sig, time);
    let body = service_event(
        DIGEST_EVENT,
        time,
        json!({
            "digestStartChainSeq": range.0,
            "digestEndChainSeq": range.1,
            "lastChainMac": hex(last_mac),
            "previousDigestChainSeq": prev.seq,
            "previousDigestSignature": hex(&prev.sig),
            "digestSignature": hex(&sig),
        }),
    );
    (body, sig)
}

/// The first line of a file that continues the chain after `prev`.
pub fn started_body(
    prev: &Head,
    digest: &DigestHead,
    previous_file: Option<&str>,
    time: &str,
) -> String {
    service_event(
        STARTED_EVENT,
        time,
        json!({
            "previousChainSeq": prev.seq,
            "previousChainMac": hex(&prev.mac),
            "previousDigestChainSeq": digest.seq,
            "previousDigestSignature": hex(&digest.sig),
            "previousLogFile": previous_file,
        }),
    )
}

/// A record the trail wrote about itself, as read back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrailEvent {
    Digest {
        range: (u64, u64),
        last_mac: [u8; 32],
        prev: DigestHead,
        sig: [u8; 32],
        time: String,
    },
    Started {
        prev: Head,
        digest: DigestHead,
    },
}

impl TrailEvent {
    /// `None` for an ordinary record; `Some(Err)` for a trail record whose
    /// fields are malformed.
    pub fn parse(v: &Value) -> Option<Result<Self, String>> {
        if v["eventType"] != "AwsServiceEvent" {
            return None;
        }
        let name = v["eventName"].as_str()?;
        let d = &v["serviceEventDetails"];
        let num = |k: &str| {
            d[k].as_u64()
                .ok_or_else(|| format!("{name}: {k} is not a number"))
        };
        let mac = |k: &str| {
            d[k].as_str()
                .and_then(unhex32)
                .ok_or_else(|| format!("{name}: {k} is not 64 hex digits"))
        };
        let parsed = match name {
            DIGEST_EVENT => (|| {
                Ok(TrailEvent::Digest {
                    range: (num("digestStartChainSeq")?, num("digestEndChainSeq")?),
                    last_mac: mac("lastChainMac")?,
                    prev: DigestHead {
                        seq: num("previousDigestChainSeq")?,
                        sig: mac("previousDigestSignature")?,
                    },
                    sig: mac("digestSignature")?,
                    time: v["eventTime"].as_str().unwrap_or_default().to_string(),
                })
            })(),
            STARTED_EVENT => (|| {
                Ok(TrailEvent::Started {
                    prev: Head {
                        seq: num("previousChainSeq")?,
                        mac: mac("previousChainMac")?,
                    },
                    digest: DigestHead {
                        seq: num("previousDigestChainSeq")?,
                        sig: mac("previousDigestSignature")?,
                    },
                })
            })(),
            _ => return None,
        };
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key256 {
        Key256::from_bytes([7; 32])
    }

    #[test]
    fn a_sealed_line_splits_back_and_its_mac_covers_the_prefix() {
        let mut out = String::new();
        let prev = [3u8; 32];
        let mac = seal_line(&mut out, "{\"a\":1", &key(), 42, &prev);
        assert!(out.ends_with("\"}\n"));
        let line = out.trim_end();
        assert!(serde_json::from_str::<Value>(line).is_ok(), "{line}");
        let (prefix, seq, m) = split_line(line).unwrap();
        assert_eq!((prefix, seq, m), ("{\"a\":1,\"chainSeq\":42", 42, mac));
        assert_eq!(line_mac(&key(), &prev, prefix.as_bytes()), mac);
        assert_ne!(line_mac(&key(), &[0; 32], prefix.as_bytes()), mac);
    }

    #[test]
    fn split_line_names_what_is_wrong() {
        assert_eq!(split_line("{}").unwrap_err(), "no chainMac field");
        let bad_hex = format!("{{\"chainSeq\":1,\"chainMac\":\"{}\"}}", "+f".repeat(32));
        assert_eq!(
            split_line(&bad_hex).unwrap_err(),
            "chainMac is not 64 hex digits"
        );
        let nonascii = format!("{{\"chainSeq\":1,\"chainMac\":\"{}é\"}}", "0".repeat(62));
        assert_eq!(
            split_line(&nonascii).unwrap_err(),
            "chainMac is not 64 hex digits"
        );
        let seq = format!(
            "{{\"a\":1,\"chainSeq\":x,\"chainMac\":\"{}\"}}",
            "0".repeat(64)
        );
        assert_eq!(split_line(&seq).unwrap_err(), "chainSeq is not a number");
    }

    /// HMAC-SHA256 of RFC 4231 test case 2, through the chain's MAC: the
    /// line MAC is plain HMAC over prev || prefix.
    #[test]
    fn line_mac_is_hmac_sha256_over_prev_and_prefix() {
        let k = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex(&k),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn digests_and_started_records_parse_back() {
        let dkey = digest_key(&key());
        assert_ne!(dkey.as_bytes(), key().as_bytes());
        let prev = DigestHead {
            seq: 9,
            sig: [1; 32],
        };
        let (body, sig) = digest_body(&dkey, (10, 20), &[2; 32], &prev, "2026-12-01T00:00:00Z");
        let v: Value = serde_json::from_str(&format!("{body}}}")).unwrap();
        assert_eq!(
            TrailEvent::parse(&v).unwrap().unwrap(),
            TrailEvent::Digest {
                range: (10, 20),
                last_mac: [2; 32],
                prev,
                sig,
                time: "2026-12-01T00:00:00Z".into()
            }
        );
        // Any signed field changes the signature.
        let t = "2026-12-01T00:00:00Z";
        let base = digest_signature(&dkey, (10, 20), &[2; 32], &[1; 32], t);
        assert_eq!(base, sig);
        for other in [
            digest_signature(&dkey, (10, 21), &[2; 32], &[1; 32], t),
            digest_signature(&dkey, (11, 20), &[2; 32], &[1; 32], t),
            digest_signature(&dkey, (10, 20), &[3; 32], &[1; 32], t),
            digest_signature(&dkey, (10, 20), &[2; 32], &[0; 32], t),
            digest_signature(&dkey, (10, 20), &[2; 32], &[1; 32], "2026-12-01T00:00:01Z"),
            digest_signature(&key(), (10, 20), &[2; 32], &[1; 32], t),
        ] {
            assert_ne!(other, base);
        }
        let head = Head {
            seq: 5,
            mac: [4; 32],
        };
        let body = started_body(&head, &prev, Some("audit.log.1-5"), t);
        let v: Value = serde_json::from_str(&format!("{body}}}")).unwrap();
        assert_eq!(v["serviceEventDetails"]["previousLogFile"], "audit.log.1-5");
        assert_eq!(
            TrailEvent::parse(&v).unwrap().unwrap(),
            TrailEvent::Started {
                prev: head,
                digest: prev
            }
        );
        let mut broken = v.clone();
        broken["serviceEventDetails"]["previousChainMac"] = json!("zz");
        assert_eq!(
            TrailEvent::parse(&broken).unwrap().unwrap_err(),
            "LogFileStarted: previousChainMac is not 64 hex digits"
        );
        assert_eq!(TrailEvent::parse(&json!({"eventName": "Decrypt"})), None);
    }
}
