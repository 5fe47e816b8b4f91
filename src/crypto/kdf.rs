//! Key derivation: HKDF-SHA256 for sub-keys, HMAC-SHA256 for MACs, Argon2id for
//! passphrases. Labels are versioned strings so a later format can derive
//! different keys from the same root without ambiguity.

use super::secret::Key256;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// HKDF-SHA256(ikm, salt, info) -> 32 bytes.
pub fn hkdf256(ikm: &[u8], salt: &[u8], info: &[u8]) -> Key256 {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), ikm);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(info, &mut *okm)
        .expect("32 bytes is a valid HKDF length");
    Key256::from_bytes(*okm)
}

pub type HmacSha256 = Hmac<Sha256>;

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Argon2id cost parameters, stored beside whatever they protect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Argon2Params {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for Argon2Params {
    /// 64 MiB, 3 passes: about a third of a second here, in line with gocryptfs's
    /// scrypt cost and OWASP's Argon2id guidance.
    fn default() -> Self {
        Argon2Params {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

pub fn argon2id(passphrase: &[u8], salt: &[u8], p: Argon2Params) -> Result<Key256, String> {
    let params = argon2::Params::new(p.memory_kib, p.iterations, p.parallelism, Some(32))
        .map_err(|e| format!("invalid Argon2id parameters: {e}"))?;
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    a.hash_password_into(passphrase, salt, &mut *out)
        .map_err(|e| format!("Argon2id failed: {e}"))?;
    Ok(Key256::from_bytes(*out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869 test case 1 (first 32 bytes of OKM).
    #[test]
    fn hkdf_rfc5869_case1() {
        let ikm = [0x0bu8; 22];
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let k = hkdf256(&ikm, &salt, &info);
        assert_eq!(
            k.as_bytes()[..8],
            [0x3c, 0xb2, 0x5f, 0x25, 0xfa, 0xac, 0xd5, 0x7a]
        );
    }

    /// RFC 4231 test case 2.
    #[test]
    fn hmac_rfc4231_case2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(mac[..4], [0x5b, 0xdc, 0xc1, 0x46]);
    }

    #[test]
    fn argon2_is_deterministic_and_salted() {
        let p = Argon2Params {
            memory_kib: 256,
            iterations: 1,
            parallelism: 1,
        };
        let a = argon2id(b"pw", b"saltsaltsaltsalt", p).unwrap();
        let b = argon2id(b"pw", b"saltsaltsaltsalt", p).unwrap();
        let c = argon2id(b"pw", b"saltsaltsaltsalX", p).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
