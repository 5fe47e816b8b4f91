//! Names of keys: key ids (UUIDs), ARN-like ids, alias names and alias ARNs.
//!
//! Every operation that takes a key accepts any of the four spellings, as AWS
//! does; this module turns them into a `KeyRef` and checks alias naming rules.

use super::error::{ErrorCode, KmsError, KmsResult};
use std::fmt;

/// Alias prefix reserved for keys kmsfs creates and manages itself (the
/// analogue of `alias/aws/`).
pub const MANAGED_ALIAS_PREFIX: &str = "alias/kmsfs/";
const AWS_RESERVED_PREFIX: &str = "alias/aws/";
pub const ARN_PREFIX: &str = "arn:kmsfs:kms:local:";

/// A key id: 16 random bytes shown as a lowercase UUID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// A random (version 4) UUID.
    pub fn random() -> Self {
        let mut b = crate::crypto::random::array::<16>();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        KeyId(b)
    }

    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 36 {
            return None;
        }
        let mut out = [0u8; 16];
        let mut n = 0;
        let mut i = 0;
        while i < 36 {
            if matches!(i, 8 | 13 | 18 | 23) {
                if b[i] != b'-' {
                    return None;
                }
                i += 1;
                continue;
            }
            let hi = hexval(b[i])?;
            let lo = hexval(*b.get(i + 1)?)?;
            out[n] = hi << 4 | lo;
            n += 1;
            i += 2;
        }
        (n == 16).then_some(KeyId(out))
    }

    /// Built by hand: every audited operation writes one or two (format!
    /// showed in profiles).
    pub fn arn(&self, account: &str) -> String {
        let mut s = String::with_capacity(ARN_PREFIX.len() + account.len() + 5 + 36);
        s.push_str(ARN_PREFIX);
        s.push_str(account);
        s.push_str(":key/");
        self.push_to(&mut s);
        s
    }

    /// The id in its usual form (8-4-4-4-12 hex digits), appended to `s`.
    fn push_to(&self, s: &mut String) {
        for (i, chunk) in [
            &self.0[0..4],
            &self.0[4..6],
            &self.0[6..8],
            &self.0[8..10],
            &self.0[10..16],
        ]
        .iter()
        .enumerate()
        {
            if i > 0 {
                s.push('-');
            }
            crate::crypto::hex_into(chunk, s);
        }
    }
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(36);
        self.push_to(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl serde::Serialize for KeyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for KeyId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        KeyId::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("bad key id {s:?}")))
    }
}

/// What a caller named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Id(KeyId),
    Alias(String),
}

impl KeyRef {
    /// Accepts a key id, `arn:...:key/ID`, `alias/NAME` or `arn:...:alias/NAME`.
    /// ARNs of another account are refused: they cannot name a key here.
    pub fn parse(s: &str, account: &str) -> KmsResult<Self> {
        if s.is_empty() {
            return Err(KmsError::validation("KeyId must not be empty"));
        }
        if let Some(rest) = s.strip_prefix("arn:") {
            let full = format!("arn:{rest}");
            let tail = full.strip_prefix(ARN_PREFIX).ok_or_else(|| {
                KmsError::new(
                    ErrorCode::InvalidArnException,
                    format!("{s:?} is not a kmsfs ARN (expected {ARN_PREFIX}ACCOUNT:key/ID or :alias/NAME)"),
                )
            })?;
            let (acct, res) = tail.split_once(':').ok_or_else(|| {
                KmsError::new(
                    ErrorCode::InvalidArnException,
                    format!("malformed ARN {s:?}"),
                )
            })?;
            if acct != account {
                return Err(KmsError::not_found(format!(
                    "ARN {s:?} belongs to account {acct}, this KMS is account {account}"
                )));
            }
            if let Some(id) = res.strip_prefix("key/") {
                return KeyId::parse(id).map(KeyRef::Id).ok_or_else(|| {
                    KmsError::new(
                        ErrorCode::InvalidArnException,
                        format!("bad key id in ARN {s:?}"),
                    )
                });
            }
            if res.starts_with("alias/") {
                return Ok(KeyRef::Alias(res.to_string()));
            }
            return Err(KmsError::new(
                ErrorCode::InvalidArnException,
                format!("ARN {s:?} names neither a key nor an alias"),
            ));
        }
        if s.starts_with("alias/") {
            return Ok(KeyRef::Alias(s.to_string()));
        }
        KeyId::parse(s).map(KeyRef::Id).ok_or_else(|| {
            KmsError::not_found(format!(
                "{s:?} is not a key id, key ARN, alias name (alias/...) or alias ARN"
            ))
        })
    }
}

/// AWS's alias rules: `alias/` then 1-250 characters of `[A-Za-z0-9/_-]`, not
/// under a reserved prefix unless kmsfs itself creates it.
pub fn validate_alias_name(name: &str, allow_managed: bool) -> KmsResult<()> {
    let bad = |why: &str| {
        Err(KmsError::new(
            ErrorCode::InvalidAliasNameException,
            format!("alias {name:?} {why}"),
        ))
    };
    let Some(rest) = name.strip_prefix("alias/") else {
        return bad("must begin with \"alias/\"");
    };
    if rest.is_empty() || name.len() > 256 {
        return bad("must have 1 to 250 characters after \"alias/\"");
    }
    if !rest
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'/' | b'_' | b'-'))
    {
        return bad("may contain only letters, digits, '/', '_' and '-'");
    }
    if name.starts_with(AWS_RESERVED_PREFIX) {
        return bad("uses the reserved prefix alias/aws/");
    }
    if name.starts_with(MANAGED_ALIAS_PREFIX) && !allow_managed {
        return bad("uses the prefix alias/kmsfs/, reserved for keys that kmsfs manages");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_round_trip() {
        let k = KeyId::random();
        let s = k.to_string();
        assert_eq!(s.len(), 36);
        assert_eq!(KeyId::parse(&s), Some(k));
        assert_eq!(KeyId::parse(&s.to_uppercase()), Some(k));
        assert_eq!(&s[14..15], "4");
        assert!(KeyId::parse("1234").is_none());
        assert!(KeyId::parse("zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz").is_none());
        assert!(KeyId::parse("1234567801234-5678-1234-567812345678").is_none());
    }

    #[test]
    fn key_ref_spellings() {
        let k = KeyId::random();
        let acct = "111122223333";
        assert_eq!(KeyRef::parse(&k.to_string(), acct).unwrap(), KeyRef::Id(k));
        assert_eq!(KeyRef::parse(&k.arn(acct), acct).unwrap(), KeyRef::Id(k));
        assert_eq!(k.arn(acct), format!("arn:kmsfs:kms:local:{acct}:key/{k}"));
        assert_eq!(k.to_string().len(), 36);
        assert_eq!(
            KeyRef::parse("alias/app", acct).unwrap(),
            KeyRef::Alias("alias/app".into())
        );
        assert_eq!(
            KeyRef::parse(&format!("{ARN_PREFIX}{acct}:alias/app"), acct).unwrap(),
            KeyRef::Alias("alias/app".into())
        );
        let other = KeyRef::parse(&k.arn("999999999999"), acct).unwrap_err();
        assert_eq!(other.code, ErrorCode::NotFoundException);
        let e = KeyRef::parse("arn:aws:kms:us-east-1:1:key/x", acct).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArnException);
        assert_eq!(
            KeyRef::parse("nope", acct).unwrap_err().code,
            ErrorCode::NotFoundException
        );
    }

    #[test]
    fn alias_rules() {
        assert!(validate_alias_name("alias/app-1/x_y", false).is_ok());
        for bad in [
            "app",
            "alias/",
            "alias/a b",
            "alias/aws/x",
            "alias/kmsfs/x",
            "alias/é",
        ] {
            let e = validate_alias_name(bad, false).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidAliasNameException, "{bad}");
        }
        assert!(validate_alias_name("alias/kmsfs/fs-1", true).is_ok());
        assert!(validate_alias_name(&format!("alias/{}", "a".repeat(251)), false).is_err());
    }
}
