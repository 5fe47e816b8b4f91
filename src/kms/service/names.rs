//! Aliases and tags.

use super::*;

impl Kms {
    /// The key an alias may point at: usable for aliasing, and not one that
    /// kmsfs manages (its aliases are kmsfs's own).
    pub(super) fn alias_target(
        &self,
        caller: &Caller,
        s: &State,
        key_ref: &str,
        ev: &mut Event,
        action: &str,
    ) -> KmsResult<KeyId> {
        let key = self.usable(caller, s, key_ref, ev, action, Some(Op::AliasTarget))?;
        if key.manager == KeyManager::Kmsfs {
            return Err(KmsError::access_denied(
                "aliases of keys that kmsfs manages are reserved to kmsfs",
            ));
        }
        Ok(key.id)
    }

    pub fn create_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "CreateAlias",
            false,
            json!({"aliasName": alias_name, "targetKeyId": target_key_id}),
        );
        let r = self.mutate(|s, now| {
            validate_alias_name(alias_name, false)?;
            if matches!(
                KeyRef::parse(target_key_id, &self.account)?,
                KeyRef::Alias(_)
            ) {
                return Err(KmsError::validation(
                    "TargetKeyId must be a key id or key ARN, not an alias",
                ));
            }
            let id = self.alias_target(caller, s, target_key_id, &mut ev, "kms:CreateAlias")?;
            if s.aliases.contains_key(alias_name) {
                return Err(KmsError::new(
                    ErrorCode::AlreadyExistsException,
                    format!("alias {alias_name} already exists"),
                ));
            }
            s.aliases.insert(
                alias_name.to_string(),
                Alias {
                    target: id,
                    created: now,
                    updated: now,
                },
            );
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn update_alias(
        &self,
        caller: &Caller,
        alias_name: &str,
        target_key_id: &str,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "UpdateAlias",
            false,
            json!({"aliasName": alias_name, "targetKeyId": target_key_id}),
        );
        let r = self.mutate(|s, now| {
            if alias_name.starts_with(MANAGED_ALIAS_PREFIX) {
                return Err(KmsError::access_denied(format!(
                    "{alias_name} is managed by kmsfs and cannot be re-pointed"
                )));
            }
            validate_alias_name(alias_name, false)?;
            if !s.aliases.contains_key(alias_name) {
                return Err(KmsError::not_found(format!(
                    "alias {alias_name} does not exist"
                )));
            }
            let id = self.alias_target(caller, s, target_key_id, &mut ev, "kms:UpdateAlias")?;
            let a = s.aliases.get_mut(alias_name).expect("checked");
            a.target = id;
            a.updated = now;
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn delete_alias(&self, caller: &Caller, alias_name: &str) -> KmsResult<()> {
        let mut ev = Event::new("DeleteAlias", false, json!({"aliasName": alias_name}));
        let r = self.mutate(|s, _| {
            if alias_name.starts_with(MANAGED_ALIAS_PREFIX) {
                return Err(KmsError::access_denied(format!(
                    "{alias_name} is managed by kmsfs and cannot be deleted"
                )));
            }
            let a = s
                .aliases
                .remove(alias_name)
                .ok_or_else(|| KmsError::not_found(format!("alias {alias_name} does not exist")))?;
            ev.key = Some(a.target);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn list_aliases(
        &self,
        caller: &Caller,
        key_id: Option<&str>,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "ListAliases",
            true,
            json!({"keyId": key_id, "limit": limit}),
        );
        let r = self.state().and_then(|s| {
            let filter = match key_id {
                Some(k) => Some(self.usable(caller, &s, k, &mut ev, "kms:ListAliases", None)?.id),
                None => None,
            };
            let names: Vec<String> = s
                .aliases
                .iter()
                .filter(|(_, a)| filter.is_none_or(|f| f == a.target))
                .map(|(n, _)| n.clone())
                .collect();
            let (page, next) = paginate(&names, limit, marker)?;
            let items = page
                .iter()
                .map(|n| {
                    let a = &s.aliases[n];
                    json!({"AliasName": n, "AliasArn": format!("{}{}:{n}", crate::kms::keyref::ARN_PREFIX, self.account),
                           "TargetKeyId": a.target.to_string(), "CreationDate": rfc3339(a.created),
                           "LastUpdatedDate": rfc3339(a.updated)})
                })
                .collect();
            Ok(page_json("Aliases", items, next))
        });
        self.finish(caller, ev, r)
    }

    // ----- tags ---------------------------------------------------------

    pub fn tag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tags: &[(String, String)],
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "TagResource",
            false,
            json!({"keyId": key_id, "tags": tags_json(tags)}),
        );
        let r = self.mutate(|s, _| {
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:TagResource",
                Some(Op::Modify),
            )?;
            k.tags = validate_tags(&k.tags, tags)?;
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn untag_resource(
        &self,
        caller: &Caller,
        key_id: &str,
        tag_keys: &[String],
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "UntagResource",
            false,
            json!({"keyId": key_id, "tagKeys": tag_keys}),
        );
        let r = self.mutate(|s, _| {
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:UntagResource",
                Some(Op::Modify),
            )?;
            for t in tag_keys {
                k.tags.remove(t);
            }
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn list_resource_tags(
        &self,
        caller: &Caller,
        key_id: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new("ListResourceTags", true, json!({"keyId": key_id}));
        let r = self.state().and_then(|s| {
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:ListResourceTags", None)?;
            let names: Vec<String> = k.tags.keys().cloned().collect();
            let (page, next) = paginate(&names, limit, marker)?;
            let items = page
                .iter()
                .map(|t| json!({"TagKey": t, "TagValue": k.tags[t]}))
                .collect();
            Ok(page_json("Tags", items, next))
        });
        self.finish(caller, ev, r)
    }
}
