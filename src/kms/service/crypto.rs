//! The cryptographic operations: encrypt, decrypt, re-encrypt, data keys
//! and random bytes.

use super::*;

impl Kms {
    pub(super) fn seal_under(
        key: &Key,
        plaintext: &[u8],
        ctx: &EncryptionContext,
    ) -> KmsResult<Vec<u8>> {
        let m = key
            .current_material()
            .ok_or_else(|| invalid_state(format!("key {} has no key material", key.id)))?;
        let header = BlobHeader {
            key_id: key.id,
            material_version: m.version,
            salt: crate::crypto::random::array(),
            nonce: crate::crypto::random::array(),
        };
        let hb = header.to_bytes();
        let k = hkdf256(m.key.as_bytes(), &header.salt, BLOB_KDF_INFO);
        let mut aad = hb.to_vec();
        aad.extend_from_slice(&ctx.canonical_bytes());
        let sealed = AeadKey::new(&k).seal(&header.nonce, &aad, plaintext);
        Ok(blob::assemble(&header, &sealed))
    }

    /// Parses and opens a blob; the key must pass `check` (authorisation and state).
    pub(super) fn open_blob<'s>(
        &self,
        state: &'s State,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
        expected_key: Option<&str>,
        ev: &mut Event,
        check: impl FnOnce(&Key, &mut Event) -> KmsResult<()>,
    ) -> KmsResult<(&'s Key, SecretBytes)> {
        ctx.validate()?;
        let b = blob::parse(ciphertext).map_err(|e| KmsError::invalid_ciphertext(e.to_string()))?;
        let id = b.header.key_id;
        ev.key = Some(id);
        if let Some(want) = expected_key {
            let k = self.resolve(state, want)?;
            if k.id != id {
                return Err(KmsError::new(
                    ErrorCode::IncorrectKeyException,
                    format!(
                        "the ciphertext was encrypted under key {id}, not under {want} ({})",
                        k.id
                    ),
                ));
            }
        }
        let key = state.keys.get(&id).ok_or_else(|| {
            KmsError::not_found(format!(
                "the key that encrypted this ciphertext ({id}) does not exist; it may have been deleted"
            ))
        })?;
        check(key, ev)?;
        let m = key.material(b.header.material_version).ok_or_else(|| {
            KmsError::invalid_ciphertext(format!(
                "key {id} has no material version {}; the ciphertext is corrupt or its material was deleted",
                b.header.material_version
            ))
        })?;
        let k = hkdf256(m.key.as_bytes(), &b.header.salt, BLOB_KDF_INFO);
        let mut aad = b.header_bytes.to_vec();
        aad.extend_from_slice(&ctx.canonical_bytes());
        let plain = AeadKey::new(&k).open(&b.header.nonce, &aad, b.sealed).map_err(|_| {
            KmsError::invalid_ciphertext(
                "the ciphertext does not decrypt: the encryption context differs from the one used to encrypt, or the ciphertext was modified",
            )
        })?;
        Ok((key, plain))
    }

    pub(super) fn check_algorithm(alg: Option<&str>) -> KmsResult<()> {
        match alg {
            None | Some(SYMMETRIC_DEFAULT) => Ok(()),
            Some(a) => Err(KmsError::new(
                ErrorCode::InvalidKeyUsageException,
                format!(
                    "EncryptionAlgorithm {a} is not supported by symmetric keys; use SYMMETRIC_DEFAULT"
                ),
            )),
        }
    }

    pub fn encrypt(
        &self,
        caller: &Caller,
        key_id: &str,
        plaintext: &[u8],
        ctx: &EncryptionContext,
        algorithm: Option<&str>,
    ) -> KmsResult<EncryptResponse> {
        let params = CryptoParams {
            encryption_algorithm: Some(SYMMETRIC_DEFAULT),
            ..CryptoParams::new(Some(key_id), ctx)
        };
        let mut ev = Event::new("Encrypt", true, params).with_ctx(ctx);
        let r = (|| {
            Self::check_algorithm(algorithm)?;
            ctx.validate()?;
            if plaintext.is_empty() || plaintext.len() > blob::MAX_PLAINTEXT {
                return Err(KmsError::validation(format!(
                    "plaintext is {} bytes; Encrypt takes 1 to {} bytes (use GenerateDataKey for larger data)",
                    plaintext.len(),
                    blob::MAX_PLAINTEXT
                )));
            }
            let s = self.state()?;
            let key = self.usable(caller, &s, key_id, &mut ev, "kms:Encrypt", Some(Op::Crypto))?;
            Ok(EncryptResponse {
                ciphertext_blob: Self::seal_under(key, plaintext, ctx)?,
                key_arn: self.arn(&key.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    pub fn decrypt(
        &self,
        caller: &Caller,
        ciphertext: &[u8],
        ctx: &EncryptionContext,
        key_id: Option<&str>,
        algorithm: Option<&str>,
    ) -> KmsResult<DecryptResponse> {
        let params = CryptoParams {
            encryption_algorithm: Some(SYMMETRIC_DEFAULT),
            ..CryptoParams::new(key_id, ctx)
        };
        let mut ev = Event::new("Decrypt", true, params).with_ctx(ctx);
        let r = (|| {
            Self::check_algorithm(algorithm)?;
            let s = self.state()?;
            let (key, plaintext) =
                self.open_blob(&s, ciphertext, ctx, key_id, &mut ev, |k, ev| {
                    self.authorize(caller, &s, k, "kms:Decrypt", ev)?;
                    check_state(Op::Crypto, k)
                })?;
            Ok(DecryptResponse {
                plaintext,
                key_arn: self.arn(&key.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    pub fn re_encrypt(
        &self,
        caller: &Caller,
        ciphertext: &[u8],
        source_ctx: &EncryptionContext,
        source_key_id: Option<&str>,
        destination_key_id: &str,
        destination_ctx: &EncryptionContext,
    ) -> KmsResult<ReEncryptResponse> {
        let mut ev = Event::new(
            "ReEncrypt",
            true,
            json!({"sourceEncryptionContext": source_ctx, "destinationKeyId": destination_key_id,
                   "destinationEncryptionContext": destination_ctx, "sourceKeyId": source_key_id}),
        )
        .with_ctx(source_ctx);
        let r = (|| {
            destination_ctx.validate()?;
            let s = self.state()?;
            let (src, plaintext) = self.open_blob(
                &s,
                ciphertext,
                source_ctx,
                source_key_id,
                &mut ev,
                |k, ev| {
                    self.authorize(caller, &s, k, "kms:ReEncryptFrom", ev)?;
                    check_state(Op::Crypto, k)
                },
            )?;
            let src_arn = self.arn(&src.id);
            let mut dev = Event::new("ReEncrypt", true, Value::Null).with_ctx(destination_ctx);
            let dst = self.usable(
                caller,
                &s,
                destination_key_id,
                &mut dev,
                "kms:ReEncryptTo",
                Some(Op::Crypto),
            );
            ev.authz = Some(json!({"source": ev.authz.take(), "destination": dev.authz}));
            let dst = dst?;
            ev.response = json!({"destinationKeyId": self.arn(&dst.id)});
            Ok(ReEncryptResponse {
                ciphertext_blob: Self::seal_under(dst, plaintext.as_bytes(), destination_ctx)?,
                source_key_arn: src_arn,
                key_arn: self.arn(&dst.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    /// GenerateDataKey (`with_plaintext`) or GenerateDataKeyWithoutPlaintext.
    pub fn generate_data_key(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: &DataKeySpec,
        ctx: &EncryptionContext,
        with_plaintext: bool,
    ) -> KmsResult<DataKey> {
        self.generate_data_key_with(caller, key_id, spec, ctx, with_plaintext, false)
    }

    /// GenerateDataKey with AWS's DryRun: every check a real call makes
    /// (key state, policy, grants, context), audited, and then
    /// DryRunOperationException instead of a key. The mount asks this before
    /// letting a file be opened for writing, which needs the same right as
    /// creating it.
    pub fn generate_data_key_dry_run(
        &self,
        caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> KmsResult<()> {
        match self.generate_data_key_with(caller, key_id, &DataKeySpec::aes_256(), ctx, true, true)
        {
            Ok(_) => Err(KmsError::internal("a dry run returned a key")),
            Err(e) => Err(e),
        }
    }

    pub(super) fn generate_data_key_with(
        &self,
        caller: &Caller,
        key_id: &str,
        spec: &DataKeySpec,
        ctx: &EncryptionContext,
        with_plaintext: bool,
        dry_run: bool,
    ) -> KmsResult<DataKey> {
        let name = if with_plaintext {
            "GenerateDataKey"
        } else {
            "GenerateDataKeyWithoutPlaintext"
        };
        let params = CryptoParams {
            key_spec: spec.key_spec.as_deref(),
            number_of_bytes: spec.number_of_bytes,
            ..CryptoParams::new(Some(key_id), ctx)
        };
        let mut ev = Event::new(name, true, params).with_ctx(ctx);
        let action = if with_plaintext {
            "kms:GenerateDataKey"
        } else {
            "kms:GenerateDataKeyWithoutPlaintext"
        };
        let r = (|| {
            let len = spec.len()?;
            ctx.validate()?;
            let s = self.state()?;
            let key = self.usable(caller, &s, key_id, &mut ev, action, Some(Op::Crypto))?;
            if dry_run {
                return Err(KmsError::new(
                    ErrorCode::DryRunOperationException,
                    "the request would have succeeded, but the DryRun parameter was set",
                ));
            }
            let plaintext = SecretBytes::random(len);
            let ciphertext_blob = Self::seal_under(key, plaintext.as_bytes(), ctx)?;
            Ok(DataKey {
                ciphertext_blob,
                plaintext: with_plaintext.then_some(plaintext),
                key_arn: self.arn(&key.id),
            })
        })();
        self.finish(caller, ev, r)
    }

    pub fn generate_random(&self, caller: &Caller, number_of_bytes: u32) -> KmsResult<SecretBytes> {
        let ev = Event::new(
            "GenerateRandom",
            true,
            json!({"numberOfBytes": number_of_bytes}),
        );
        let r = random_len(number_of_bytes).map(SecretBytes::random);
        self.finish(caller, ev, r)
    }
}
