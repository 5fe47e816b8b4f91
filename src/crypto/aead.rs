//! AES-256-GCM behind one small type.
//!
//! ring's implementation is used because it measured about 3.5x faster than the
//! pure-Rust aes-gcm crate on 4 KiB blocks on this hardware (AES-NI + PCLMULQDQ);
//! callers only see `AeadKey`, so the choice can change without touching them.

use super::secret::Key256;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

/// An expanded AES-256-GCM key, ready for many seal/open calls. Its round
/// keys are wiped on drop (ring does not do it itself).
pub struct AeadKey(std::mem::ManuallyDrop<LessSafeKey>);

impl Drop for AeadKey {
    fn drop(&mut self) {
        // SAFETY: LessSafeKey owns no heap memory and has no drop glue, so
        // skipping its drop and overwriting its bytes frees nothing twice; the
        // value is never read again after this.
        unsafe {
            let p = &mut *self.0 as *mut LessSafeKey as *mut u8;
            let bytes = std::slice::from_raw_parts_mut(p, std::mem::size_of::<LessSafeKey>());
            zeroize::Zeroize::zeroize(bytes);
        }
    }
}

/// Authentication failed: wrong key, wrong AAD, or modified bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthError;

impl AeadKey {
    pub fn new(key: &Key256) -> Self {
        let unbound = UnboundKey::new(&AES_256_GCM, key.as_bytes()).expect("32-byte key");
        AeadKey(std::mem::ManuallyDrop::new(LessSafeKey::new(unbound)))
    }

    /// Encrypts `buf` in place and returns the 16-byte tag.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .expect("AES-GCM input within size limits");
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Decrypts `buf` in place after checking `tag`.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AuthError> {
        let tag = ring::aead::Tag::from(*tag);
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                tag,
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AuthError)
    }

    /// Returns ciphertext || tag.
    pub fn seal(&self, nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place(nonce, aad, &mut out);
        out.extend_from_slice(&tag);
        out
    }

    /// Opens ciphertext || tag; the plaintext comes back in a zeroizing buffer.
    pub fn open(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<super::SecretBytes, AuthError> {
        if sealed.len() < TAG_LEN {
            return Err(AuthError);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().expect("tag length");
        let mut plain = zeroize::Zeroizing::new(ct.to_vec());
        self.open_in_place(nonce, aad, &mut plain, &tag)?;
        Ok(super::SecretBytes::new(std::mem::take(&mut *plain)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::crypto::unhex as hex;

    /// NIST GCM test vector (gcmEncryptExtIV256, Count 0 with 128-bit plaintext):
    /// the known answer pins the implementation and the tag placement.
    #[test]
    fn nist_vector() {
        let key = Key256::from_slice(&hex(
            "31bdadd96698c204aa9ce1448ea94ae1fb4a9a0b3c9d773b51bb1822666b8f22",
        ))
        .unwrap();
        let nonce: [u8; 12] = hex("0d18e06c7c725ac9e362e1ce").try_into().unwrap();
        let pt = hex("2db5168e932556f8089a0622981d017d");
        let k = AeadKey::new(&key);
        let out = k.seal(&nonce, &[], &pt);
        assert_eq!(
            out,
            hex("fa4362189661d163fcd6a56d8bf0405ad636ac1bbedd5cc3ee727dc2ab4a9489")
        );
        assert_eq!(k.open(&nonce, &[], &out).unwrap().as_bytes(), &pt[..]);
    }

    #[test]
    fn tamper_and_wrong_aad_fail() {
        let k = AeadKey::new(&Key256::from_bytes([7; 32]));
        let n = [1u8; 12];
        let mut out = k.seal(&n, b"aad", b"hello world");
        assert!(k.open(&n, b"aad2", &out).is_err());
        out[3] ^= 1;
        assert!(k.open(&n, b"aad", &out).is_err());
        assert!(k.open(&n, b"aad", &out[..10]).is_err());
    }
}
