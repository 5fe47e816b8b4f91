//! Imported key material: wrapping parameters, import and deletion.

use super::*;

impl Kms {
    pub fn get_parameters_for_import(
        &self,
        caller: &Caller,
        key_id: &str,
        wrapping_algorithm: &str,
        wrapping_key_spec: &str,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "GetParametersForImport",
            true,
            json!({"keyId": key_id, "wrappingAlgorithm": wrapping_algorithm, "wrappingKeySpec": wrapping_key_spec}),
        );
        let r = (|| {
            if wrapping_algorithm != "RSAES_OAEP_SHA_256" {
                return Err(KmsError::validation(format!(
                    "WrappingAlgorithm {wrapping_algorithm} is not supported; use RSAES_OAEP_SHA_256"
                )));
            }
            let bits = match wrapping_key_spec {
                "RSA_2048" => 2048,
                "RSA_3072" => 3072,
                "RSA_4096" => 4096,
                other => {
                    return Err(KmsError::validation(format!(
                        "WrappingKeySpec {other} is not RSA_2048, RSA_3072 or RSA_4096"
                    )));
                }
            };
            // Check the key before spending time on RSA key generation.
            {
                let s = self.state()?;
                self.usable(
                    caller,
                    &s,
                    key_id,
                    &mut ev,
                    "kms:GetParametersForImport",
                    Some(Op::GetParametersForImport),
                )?;
            }
            let wrapping = crate::kms::import::WrappingKey::generate(bits)?;
            let token = crate::crypto::random::array::<32>();
            let r = self.mutate(|s, now| {
                let id = self
                    .usable(
                        caller,
                        s,
                        key_id,
                        &mut Event::new("", true, Value::Null),
                        "kms:GetParametersForImport",
                        Some(Op::GetParametersForImport),
                    )?
                    .id;
                let valid_to = now + IMPORT_PARAMETERS_VALID;
                s.imports.insert(
                    id,
                    crate::kms::keystore::PendingImport {
                        token: b64(&token),
                        wrapping_algorithm: wrapping_algorithm.to_string(),
                        valid_to,
                        private_key_der: wrapping.private_der.clone(),
                    },
                );
                Ok((id, valid_to))
            })?;
            Ok(
                json!({"KeyId": self.arn(&r.0), "ImportToken": b64(&token), "PublicKey": b64(&wrapping.public_der),
                      "ParametersValidTo": rfc3339(r.1)}),
            )
        })();
        self.finish(caller, ev, r)
    }

    pub fn import_key_material(
        &self,
        caller: &Caller,
        key_id: &str,
        import_token: &[u8],
        encrypted_key_material: &[u8],
        expiration_model: Option<&str>,
        valid_to: Option<i64>,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "ImportKeyMaterial",
            false,
            json!({"keyId": key_id, "expirationModel": expiration_model, "validTo": valid_to.map(rfc3339)}),
        );
        let r = self.mutate(|s, now| {
            let model = expiration_model.unwrap_or("KEY_MATERIAL_EXPIRES");
            match (model, valid_to) {
                ("KEY_MATERIAL_EXPIRES", None) => {
                    return Err(KmsError::validation("ValidTo is required when ExpirationModel is KEY_MATERIAL_EXPIRES"));
                }
                ("KEY_MATERIAL_EXPIRES", Some(t)) if t <= now || t > now + 365 * DAY => {
                    return Err(KmsError::validation("ValidTo must be in the future and at most 365 days away"));
                }
                ("KEY_MATERIAL_DOES_NOT_EXPIRE", Some(_)) => {
                    return Err(KmsError::validation("ValidTo must be omitted when ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE"));
                }
                ("KEY_MATERIAL_EXPIRES" | "KEY_MATERIAL_DOES_NOT_EXPIRE", _) => {}
                (other, _) => return Err(KmsError::validation(format!("ExpirationModel {other} is not KEY_MATERIAL_EXPIRES or KEY_MATERIAL_DOES_NOT_EXPIRE"))),
            }
            let id = self.usable(caller, s, key_id, &mut ev, "kms:ImportKeyMaterial", Some(Op::ImportKeyMaterial))?.id;
            let pending = s.imports.get(&id).ok_or_else(|| {
                KmsError::new(ErrorCode::InvalidImportTokenException, "no import is pending for this key; call get-parameters-for-import first")
            })?;
            if !crate::crypto::ct_eq(b64(import_token).as_bytes(), pending.token.as_bytes()) {
                return Err(KmsError::new(ErrorCode::InvalidImportTokenException, "the import token does not belong to this key's latest GetParametersForImport"));
            }
            if pending.valid_to <= now {
                return Err(KmsError::new(ErrorCode::ExpiredImportTokenException, "the import token expired; call get-parameters-for-import again"));
            }
            let material = crate::kms::import::unwrap(&pending.private_key_der, encrypted_key_material)?;
            let k = s.keys.get_mut(&id).expect("resolved");
            let fp = b64(&hmac_sha256(material.as_bytes(), &[b"kmsfs import fingerprint v1"]));
            let import = k.import.get_or_insert(ImportState { expiration_model: None, valid_to: None, fingerprint: None });
            if let Some(old) = &import.fingerprint
                && *old != fp
            {
                return Err(KmsError::new(
                    ErrorCode::IncorrectKeyMaterialException,
                    format!("key {id} was created with different key material; a key can only ever hold the material first imported into it"),
                ));
            }
            import.fingerprint = Some(fp);
            import.expiration_model = Some(model.to_string());
            import.valid_to = valid_to;
            if k.materials.is_empty() {
                k.materials.push(crate::kms::key::Material { version: 1, created: now, key: material });
            }
            if k.state == KeyState::PendingImport {
                k.state = KeyState::Enabled;
            }
            s.imports.remove(&id);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn delete_imported_key_material(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        let mut ev = Event::new("DeleteImportedKeyMaterial", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:DeleteImportedKeyMaterial",
                Some(Op::DeleteImportedKeyMaterial),
            )?;
            k.materials.clear();
            k.state = KeyState::PendingImport;
            if let Some(i) = &mut k.import {
                i.valid_to = None;
                i.expiration_model = None;
            }
            Ok(())
        });
        self.finish(caller, ev, r)
    }
}
