//! Key lifecycle: create, describe, list, enable and disable, scheduled
//! deletion, description, and rotation (AWS's key-management operations).

use super::*;

impl Kms {
    pub(super) fn metadata(&self, k: &Key) -> KeyMetadata {
        let import = k.import.as_ref();
        KeyMetadata {
            aws_account_id: self.account.clone(),
            key_id: k.id.to_string(),
            arn: self.arn(&k.id),
            creation_date: rfc3339(k.created),
            enabled: k.state == KeyState::Enabled,
            description: k.description.clone(),
            key_usage: "ENCRYPT_DECRYPT",
            key_state: k.state.as_str(),
            deletion_date: k.deletion_date.map(rfc3339),
            pending_deletion_window_in_days: k.pending_window_days,
            valid_to: import.and_then(|i| i.valid_to).map(rfc3339),
            origin: k.origin.as_str(),
            expiration_model: import.and_then(|i| i.expiration_model.clone()),
            key_manager: k.manager.as_str(),
            customer_master_key_spec: SYMMETRIC_DEFAULT,
            key_spec: SYMMETRIC_DEFAULT,
            encryption_algorithms: vec![SYMMETRIC_DEFAULT],
            multi_region: false,
            key_rotation_enabled: k.rotation_period_days.is_some(),
            current_key_material_version: k.current_material().map(|m| m.version),
        }
    }

    pub fn create_key(&self, caller: &Caller, req: CreateKeyRequest) -> KmsResult<KeyMetadata> {
        self.create_key_with_warnings(caller, req).map(|(m, _)| m)
    }

    /// CreateKey, and the principals of the key's policy that match nobody
    /// (names without an account: see `policy::Binding`), for the caller to
    /// be warned of; AWS has no field for them.
    pub fn create_key_with_warnings(
        &self,
        caller: &Caller,
        req: CreateKeyRequest,
    ) -> KmsResult<(KeyMetadata, Vec<String>)> {
        let mut ev = Event::new(
            "CreateKey",
            false,
            json!({"description": req.description, "keyUsage": req.key_usage, "origin": req.origin,
                   "keySpec": req.key_spec, "tags": tags_json(&req.tags)}),
        );
        let r = self.create_key_inner(caller, &req, KeyManager::Customer, None, &mut ev);
        if let Ok((m, unresolved)) = &r {
            ev.response = json!({"keyMetadata": m});
            if !unresolved.is_empty() {
                ev.response["unresolvedPrincipals"] = json!(unresolved);
            }
        }
        self.finish(caller, ev, r)
    }

    /// Creates a key that kmsfs manages for a filesystem, under `alias/kmsfs/<suffix>`.
    pub fn create_managed_key(
        &self,
        caller: &Caller,
        alias_suffix: &str,
        description: &str,
    ) -> KmsResult<KeyMetadata> {
        let alias = format!("{MANAGED_ALIAS_PREFIX}{alias_suffix}");
        let mut ev = Event::new(
            "CreateKey",
            false,
            json!({"description": description, "aliasName": alias}),
        );
        let req = CreateKeyRequest {
            description: description.into(),
            ..Default::default()
        };
        let r = self
            .create_key_inner(caller, &req, KeyManager::Kmsfs, Some(alias), &mut ev)
            .map(|(m, _)| m);
        if let Ok(m) = &r {
            ev.response = json!({"keyMetadata": m});
        }
        self.finish(caller, ev, r)
    }

    pub(super) fn create_key_inner(
        &self,
        caller: &Caller,
        req: &CreateKeyRequest,
        manager: KeyManager,
        alias: Option<String>,
        ev: &mut Event,
    ) -> KmsResult<(KeyMetadata, Vec<String>)> {
        if req.description.len() > MAX_DESCRIPTION {
            return Err(KmsError::validation(format!(
                "Description is longer than {MAX_DESCRIPTION} characters"
            )));
        }
        if let Some(u) = &req.key_usage
            && u != "ENCRYPT_DECRYPT"
        {
            return Err(KmsError::validation(format!(
                "KeyUsage {u:?} is not supported: kmsfs keys are symmetric ENCRYPT_DECRYPT keys"
            )));
        }
        if let Some(s) = &req.key_spec
            && s != SYMMETRIC_DEFAULT
        {
            return Err(KmsError::validation(format!(
                "KeySpec {s:?} is not supported; use SYMMETRIC_DEFAULT"
            )));
        }
        let origin = match req.origin.as_deref() {
            None | Some("KMSFS") | Some("AWS_KMS") => Origin::Kmsfs,
            Some("EXTERNAL") => Origin::External,
            Some(o) => {
                return Err(KmsError::validation(format!(
                    "Origin {o:?} is not KMSFS (AWS_KMS) or EXTERNAL"
                )));
            }
        };
        let tags = validate_tags(&BTreeMap::new(), &req.tags)?;
        if let Some(a) = &alias {
            validate_alias_name(a, true)?;
        }
        let (policy, unresolved) = match &req.policy {
            Some(p) => {
                let (stored, unresolved) =
                    self.check_new_policy(caller, p, req.bypass_policy_lockout_safety_check)?;
                (Some(stored), unresolved)
            }
            None => (None, vec![]),
        };
        let meta = self.mutate(|s, now| {
            let mut key = Key {
                id: KeyId::random(),
                description: req.description.clone(),
                created: now,
                state: if origin == Origin::External {
                    KeyState::PendingImport
                } else {
                    KeyState::Enabled
                },
                origin,
                manager,
                deletion_date: None,
                pending_window_days: None,
                rotation_period_days: None,
                next_rotation: None,
                rotations: vec![],
                materials: vec![],
                tags,
                import: (origin == Origin::External).then_some(ImportState {
                    expiration_model: None,
                    valid_to: None,
                    fingerprint: None,
                }),
                policy,
                creator: Some(caller.uid),
            };
            if origin == Origin::Kmsfs {
                key.add_material(Key256::random(), now);
            }
            if manager == KeyManager::Kmsfs {
                // Like AWS managed keys: rotated yearly, always.
                key.rotation_period_days = Some(365);
                key.next_rotation = Some(now + 365 * DAY);
            }
            if let Some(a) = &alias {
                if s.aliases.contains_key(a) {
                    return Err(KmsError::new(
                        ErrorCode::AlreadyExistsException,
                        format!("alias {a} already exists"),
                    ));
                }
                s.aliases.insert(
                    a.clone(),
                    Alias {
                        target: key.id,
                        created: now,
                        updated: now,
                    },
                );
            }
            let meta = self.metadata(&key);
            s.keys.insert(key.id, key);
            Ok(meta)
        })?;
        ev.key = KeyId::parse(&meta.key_id);
        Ok((meta, unresolved))
    }

    pub fn describe_key(&self, caller: &Caller, key_id: &str) -> KmsResult<KeyMetadata> {
        let mut ev = Event::new("DescribeKey", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:DescribeKey", None)?;
            Ok(self.metadata(k))
        });
        self.finish(caller, ev, r)
    }

    pub fn list_keys(
        &self,
        caller: &Caller,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let ev = Event::new("ListKeys", true, json!({"limit": limit, "marker": marker}));
        let r = self.state().and_then(|s| {
            let ids: Vec<String> = s.keys.keys().map(|k| k.to_string()).collect();
            let (page, next) = paginate(&ids, limit, marker)?;
            let keys: Vec<Value> = page
                .iter()
                .map(|id| json!({"KeyId": id, "KeyArn": format!("{}{}:key/{id}", crate::kms::keyref::ARN_PREFIX, self.account)}))
                .collect();
            Ok(page_json("Keys", keys, next))
        });
        self.finish(caller, ev, r)
    }

    pub(super) fn set_enabled(&self, caller: &Caller, key_id: &str, enable: bool) -> KmsResult<()> {
        let name = if enable { "EnableKey" } else { "DisableKey" };
        let mut ev = Event::new(name, false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                if enable {
                    "kms:EnableKey"
                } else {
                    "kms:DisableKey"
                },
                Some(if enable { Op::Enable } else { Op::Disable }),
            )?;
            k.state = if enable {
                KeyState::Enabled
            } else {
                KeyState::Disabled
            };
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn enable_key(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        self.set_enabled(caller, key_id, true)
    }

    pub fn disable_key(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        self.set_enabled(caller, key_id, false)
    }

    pub fn schedule_key_deletion(
        &self,
        caller: &Caller,
        key_id: &str,
        pending_window_in_days: Option<u32>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "ScheduleKeyDeletion",
            false,
            json!({"keyId": key_id, "pendingWindowInDays": pending_window_in_days}),
        );
        let r = self.mutate(|s, now| {
            let days = pending_window_in_days.unwrap_or(30);
            if !(7..=30).contains(&days) {
                return Err(KmsError::validation(format!(
                    "PendingWindowInDays is {days}; it must be 7 to 30"
                )));
            }
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:ScheduleKeyDeletion",
                Some(Op::ScheduleDeletion),
            )?;
            k.state = KeyState::PendingDeletion;
            k.deletion_date = Some(now + days as i64 * DAY);
            k.pending_window_days = Some(days);
            Ok(
                json!({"KeyId": self.arn(&k.id), "DeletionDate": rfc3339(now + days as i64 * DAY),
                      "KeyState": "PendingDeletion", "PendingWindowInDays": days}),
            )
        });
        if let Ok(v) = &r {
            ev.response = json!({"deletionDate": v["DeletionDate"]});
        }
        self.finish(caller, ev, r)
    }

    pub fn cancel_key_deletion(&self, caller: &Caller, key_id: &str) -> KmsResult<Value> {
        let mut ev = Event::new("CancelKeyDeletion", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:CancelKeyDeletion",
                Some(Op::CancelDeletion),
            )?;
            // As in AWS, a key whose deletion is cancelled comes back Disabled
            // (or PendingImport if it has no material).
            k.state = if k.materials.is_empty() {
                KeyState::PendingImport
            } else {
                KeyState::Disabled
            };
            k.deletion_date = None;
            k.pending_window_days = None;
            Ok(json!({"KeyId": self.arn(&k.id)}))
        });
        self.finish(caller, ev, r)
    }

    pub fn update_key_description(
        &self,
        caller: &Caller,
        key_id: &str,
        description: &str,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "UpdateKeyDescription",
            false,
            json!({"keyId": key_id, "description": description}),
        );
        let r = self.mutate(|s, _| {
            if description.len() > MAX_DESCRIPTION {
                return Err(KmsError::validation(format!(
                    "Description is longer than {MAX_DESCRIPTION} characters"
                )));
            }
            self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:UpdateKeyDescription",
                Some(Op::Modify),
            )?
            .description = description.to_string();
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    // ----- rotation -----------------------------------------------------

    pub fn enable_key_rotation(
        &self,
        caller: &Caller,
        key_id: &str,
        period_days: Option<u32>,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "EnableKeyRotation",
            false,
            json!({"keyId": key_id, "rotationPeriodInDays": period_days}),
        );
        let r = self.mutate(|s, now| {
            let days = period_days.unwrap_or(365);
            if !(90..=2560).contains(&days) {
                return Err(KmsError::validation(format!("RotationPeriodInDays is {days}; it must be 90 to 2560")));
            }
            let k = self.usable_mut(caller, s, key_id, &mut ev, "kms:EnableKeyRotation", Some(Op::Rotation))?;
            if k.origin == Origin::External {
                return Err(KmsError::new(
                    ErrorCode::UnsupportedOperationException,
                    format!("key {} has imported material; kmsfs cannot rotate material it did not generate", k.id),
                ));
            }
            k.rotation_period_days = Some(days);
            k.next_rotation = Some(now + days as i64 * DAY);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn disable_key_rotation(&self, caller: &Caller, key_id: &str) -> KmsResult<()> {
        let mut ev = Event::new("DisableKeyRotation", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, _| {
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:DisableKeyRotation",
                Some(Op::Rotation),
            )?;
            if k.origin == Origin::External {
                return Err(KmsError::new(
                    ErrorCode::UnsupportedOperationException,
                    "keys with imported material do not rotate",
                ));
            }
            k.rotation_period_days = None;
            k.next_rotation = None;
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn get_key_rotation_status(&self, caller: &Caller, key_id: &str) -> KmsResult<Value> {
        let mut ev = Event::new("GetKeyRotationStatus", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:GetKeyRotationStatus", None)?;
            let mut v = json!({"KeyId": self.arn(&k.id), "KeyRotationEnabled": k.rotation_period_days.is_some()});
            if let (Some(p), Some(n)) = (k.rotation_period_days, k.next_rotation) {
                v["RotationPeriodInDays"] = p.into();
                v["NextRotationDate"] = rfc3339(n).into();
            }
            if let Some(r) = k.rotations.iter().rev().find(|r| r.kind == "ON_DEMAND") {
                v["OnDemandRotationStartDate"] = rfc3339(r.date).into();
            }
            Ok(v)
        });
        self.finish(caller, ev, r)
    }

    pub fn rotate_key_on_demand(&self, caller: &Caller, key_id: &str) -> KmsResult<Value> {
        let mut ev = Event::new("RotateKeyOnDemand", false, json!({"keyId": key_id}));
        let r = self.mutate(|s, now| {
            let k = self.usable_mut(caller, s, key_id, &mut ev, "kms:RotateKeyOnDemand", Some(Op::Rotation))?;
            if k.origin == Origin::External {
                return Err(KmsError::new(
                    ErrorCode::UnsupportedOperationException,
                    format!("key {} has imported material; kmsfs cannot rotate material it did not generate", k.id),
                ));
            }
            if k.rotations.iter().filter(|r| r.kind == "ON_DEMAND").count() >= MAX_ON_DEMAND_ROTATIONS {
                return Err(KmsError::new(
                    ErrorCode::LimitExceededException,
                    format!("key {} has had {MAX_ON_DEMAND_ROTATIONS} on-demand rotations, the most allowed; enable automatic rotation instead", k.id),
                ));
            }
            let v = k.add_material(Key256::random(), now);
            k.rotations.push(Rotation { date: now, kind: "ON_DEMAND".into() });
            Ok((json!({"KeyId": self.arn(&k.id)}), v))
        });
        let r = r.map(|(v, version)| {
            ev.response = json!({"keyMaterialVersion": version});
            v
        });
        self.finish(caller, ev, r)
    }

    pub fn list_key_rotations(
        &self,
        caller: &Caller,
        key_id: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new("ListKeyRotations", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:ListKeyRotations", None)?;
            let idx: Vec<String> = (0..k.rotations.len()).map(|i| format!("{i:08}")).collect();
            let (page, next) = paginate(&idx, limit, marker)?;
            let items = page
                .iter()
                .map(|i| {
                    let r = &k.rotations[i.parse::<usize>().expect("index")];
                    json!({"KeyId": self.arn(&k.id), "RotationDate": rfc3339(r.date), "RotationType": r.kind})
                })
                .collect();
            Ok(page_json("Rotations", items, next))
        });
        self.finish(caller, ev, r)
    }
}
