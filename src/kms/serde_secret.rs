//! Serialises key material as base64 through zeroizing buffers, so the sealed
//! keystore's plaintext JSON leaves no unzeroized copies of keys behind.

use crate::crypto::Key256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serializer};
use zeroize::Zeroizing;

pub fn serialize<S: Serializer>(k: &Key256, s: S) -> Result<S::Ok, S::Error> {
    let enc = Zeroizing::new(STANDARD.encode(k.as_bytes()));
    s.serialize_str(&enc)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Key256, D::Error> {
    let enc: Zeroizing<String> = Zeroizing::new(String::deserialize(d)?);
    let raw = Zeroizing::new(
        STANDARD
            .decode(enc.as_bytes())
            .map_err(serde::de::Error::custom)?,
    );
    Key256::from_slice(&raw)
        .ok_or_else(|| serde::de::Error::custom("key material must be 32 bytes"))
}
