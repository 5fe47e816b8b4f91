//! Imported key material (BYOK), wrapped the way AWS KMS does it: the user
//! encrypts 32 bytes of AES key material to a fresh RSA public key with
//! RSAES-OAEP-SHA-256, so `openssl pkeyutl` works as it does with AWS:
//!
//! ```text
//! openssl pkeyutl -encrypt -in material.bin -out wrapped.bin -inkey pub.der -keyform DER \
//!   -pubin -pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256
//! ```

use super::error::{ErrorCode, KmsError, KmsResult};
use crate::crypto::{Key256, SecretBytes};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};

pub struct WrappingKey {
    pub public_der: Vec<u8>,
    pub private_der: SecretBytes,
}

impl WrappingKey {
    pub fn generate(bits: usize) -> KmsResult<Self> {
        let mut rng = rand_core::OsRng;
        let private = RsaPrivateKey::new(&mut rng, bits)
            .map_err(|e| KmsError::internal(format!("RSA key generation failed: {e}")))?;
        let public_der = RsaPublicKey::from(&private)
            .to_public_key_der()
            .map_err(|e| KmsError::internal(format!("cannot encode the wrapping key: {e}")))?
            .as_bytes()
            .to_vec();
        let private_der = SecretBytes::new(
            private
                .to_pkcs8_der()
                .map_err(|e| KmsError::internal(format!("cannot encode the wrapping key: {e}")))?
                .as_bytes()
                .to_vec(),
        );
        Ok(WrappingKey {
            public_der,
            private_der,
        })
    }
}

/// Unwraps the user's material with the pending import's private key.
pub fn unwrap(private_der: &SecretBytes, wrapped: &[u8]) -> KmsResult<Key256> {
    let private = RsaPrivateKey::from_pkcs8_der(private_der.as_bytes())
        .map_err(|_| KmsError::internal("the stored wrapping key is unreadable"))?;
    let material = private.decrypt(Oaep::new::<sha2::Sha256>(), wrapped).map_err(|_| {
        KmsError::invalid_ciphertext(
            "the encrypted key material does not decrypt with this import's wrapping key (RSAES_OAEP_SHA_256)",
        )
    })?;
    let material = SecretBytes::new(material);
    Key256::from_slice(material.as_bytes()).ok_or_else(|| {
        KmsError::new(
            ErrorCode::IncorrectKeyMaterialException,
            format!(
                "imported key material is {} bytes; a symmetric key needs exactly 32",
                material.len()
            ),
        )
    })
}

/// Wraps material as a user would (tests and examples use it).
pub fn wrap_for_import(public_der: &[u8], material: &[u8]) -> Result<Vec<u8>, String> {
    use rsa::pkcs8::DecodePublicKey;
    let public = RsaPublicKey::from_public_key_der(public_der)
        .map_err(|e| format!("bad public key: {e}"))?;
    public
        .encrypt(&mut rand_core::OsRng, Oaep::new::<sha2::Sha256>(), material)
        .map_err(|e| format!("RSA-OAEP encryption failed: {e}"))
}
