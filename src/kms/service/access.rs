//! Who may use a key: key policies and grants.

use super::*;

impl Kms {
    /// Validates a policy document, binds its `user:`/`group:` principals to
    /// the accounts they name now (see `policy::Binding`), and refuses one
    /// that would keep the caller from changing the policy again (AWS's
    /// lockout safety check; root keeps the recovery rule regardless).
    /// Returns what the key record stores and the principals that match
    /// nobody.
    pub(super) fn check_new_policy(
        &self,
        caller: &Caller,
        doc: &str,
        bypass: bool,
    ) -> KmsResult<(String, Vec<String>)> {
        let malformed = |m: String| KmsError::new(ErrorCode::MalformedPolicyDocumentException, m);
        let mut parsed = policy::parse(doc).map_err(malformed)?;
        let names = self.names.fresh();
        let ids = parsed.names_accounts.then(|| parsed.resolve_ids(names));
        parsed.bind(ids.as_ref());
        let unresolved = parsed.unresolved(names);
        if !bypass {
            let subject = subject_of(caller, parsed.names_groups, &self.account);
            let req = PolicyRequest {
                subject: &subject,
                names,
                action: "kms:PutKeyPolicy",
                resource: "*",
                context: None,
                grant_operations: None,
                via_mount: caller.via == Via::Mount,
            };
            if !matches!(parsed.evaluate(&req), Decision::Allow(_)) {
                return Err(malformed(format!(
                    "the policy would not let {} (who is making this request) change it again: every administrator would be locked out; pass --bypass-policy-lockout-safety-check if that is intended",
                    caller.principal()
                )));
            }
        }
        Ok((stored_policy(doc, ids.as_ref()), unresolved))
    }

    pub fn get_key_policy(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
    ) -> KmsResult<Value> {
        self.get_key_policy_with_warnings(caller, key_id, policy_name)
            .map(|(v, _)| v)
    }

    /// GetKeyPolicy, and the policy's principals that match nobody now (the
    /// account was deleted, or recreated with another id, since the policy
    /// was put), for the caller to be warned of.
    pub fn get_key_policy_with_warnings(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
    ) -> KmsResult<(Value, Vec<String>)> {
        let mut ev = Event::new(
            "GetKeyPolicy",
            true,
            json!({"keyId": key_id, "policyName": policy_name}),
        );
        let r = (|| {
            check_policy_name(policy_name)?;
            let s = self.state()?;
            let k = self.usable(caller, &s, key_id, &mut ev, "kms:GetKeyPolicy", None)?;
            // A policy that cannot be evaluated (root reading it to fix it)
            // has no principals to warn of.
            let unresolved = self
                .policy_of(k)
                .map(|(_, u)| u.to_vec())
                .unwrap_or_default();
            let (doc, _) = effective_policy(k);
            Ok((json!({"Policy": doc, "PolicyName": "default"}), unresolved))
        })();
        self.finish(caller, ev, r)
    }

    pub fn put_key_policy(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
        doc: &str,
        bypass: bool,
    ) -> KmsResult<()> {
        self.put_key_policy_with_warnings(caller, key_id, policy_name, doc, bypass)
            .map(|_| ())
    }

    /// PutKeyPolicy; returns the new policy's principals that match nobody
    /// (names without an account), for the caller to be warned of. The
    /// policy is put all the same: they match nobody, the rest applies.
    pub fn put_key_policy_with_warnings(
        &self,
        caller: &Caller,
        key_id: &str,
        policy_name: Option<&str>,
        doc: &str,
        bypass: bool,
    ) -> KmsResult<Vec<String>> {
        let mut ev = Event::new(
            "PutKeyPolicy",
            false,
            json!({"keyId": key_id, "policyName": policy_name, "policy": doc, "bypassPolicyLockoutSafetyCheck": bypass}),
        );
        let r = self.mutate(|s, _| {
            check_policy_name(policy_name)?;
            let k = self.usable_mut(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:PutKeyPolicy",
                Some(Op::Modify),
            )?;
            let (stored, unresolved) = self.check_new_policy(caller, doc, bypass)?;
            k.policy = Some(stored);
            Ok(unresolved)
        });
        if let Ok(unresolved) = &r
            && !unresolved.is_empty()
        {
            ev.response = json!({"unresolvedPrincipals": unresolved});
        }
        self.finish(caller, ev, r)
    }

    /// CreateGrant; returns GrantToken and GrantId.
    pub fn create_grant(
        &self,
        caller: &Caller,
        key_id: &str,
        req: GrantRequest,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "CreateGrant",
            false,
            json!({"keyId": key_id, "granteePrincipal": req.grantee, "retiringPrincipal": req.retiring,
                   "operations": req.operations, "constraints": req.constraints, "name": req.name}),
        );
        ev.grant_ops = Some(req.operations.clone());
        let r = self.mutate(|s, now| {
            grant::validate(&req.operations, req.constraints.as_ref())
                .map_err(KmsError::validation)?;
            // Names must resolve now (a grant for no one is a mistake), and
            // are bound to the accounts they name now (see policy::Binding).
            let names = self.names.fresh();
            let principals =
                || std::iter::once(req.grantee.as_str()).chain(req.retiring.as_deref());
            for p in principals() {
                match policy::parse_principal(p) {
                    Ok(policy::Principal::Any) => {
                        return Err(KmsError::validation("a grant names one principal, not *"));
                    }
                    Ok(policy::Principal::User(n)) if names.uid(n.name()).is_none() => {
                        return Err(KmsError::validation(format!(
                            "principal {p:?}: no such user"
                        )));
                    }
                    Ok(policy::Principal::Group(n)) if names.gid(n.name()).is_none() => {
                        return Err(KmsError::validation(format!(
                            "principal {p:?}: no such group"
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(KmsError::validation(e)),
                }
            }
            let principal_ids = principals()
                .any(policy::names_account)
                .then(|| policy::resolve_ids(principals(), names));
            if let Some(n) = &req.name
                && (n.is_empty()
                    || n.len() > 256
                    || !n
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || b":/_-".contains(&c)))
            {
                return Err(KmsError::validation(
                    "Name must be 1 to 256 characters of letters, digits and :/_-",
                ));
            }
            let key = self.usable(
                caller,
                s,
                key_id,
                &mut ev,
                "kms:CreateGrant",
                Some(Op::Crypto),
            )?;
            // A grant made under another grant cannot give more than that one has.
            if let Some(by) = ev
                .authz
                .as_ref()
                .and_then(|a| a["by"].as_str())
                .and_then(|b| b.strip_prefix("grant "))
                && let Some(parent) = s.grants.iter().find(|g| g.grant_id == by)
                && let Some(op) = req
                    .operations
                    .iter()
                    .find(|o| !parent.operations.contains(o))
            {
                return Err(KmsError::access_denied(format!(
                    "grant {by} does not include {op}, so it cannot grant it"
                )));
            }
            let id = key.id;
            let mut g = Grant {
                grant_id: String::new(),
                token: String::new(),
                key_id: id,
                name: req.name.clone(),
                grantee: req.grantee.clone(),
                retiring: req.retiring.clone(),
                operations: req.operations.clone(),
                constraints: req.constraints.clone(),
                created: now,
                issuer_uid: caller.uid,
                principal_ids,
            };
            if let Some(existing) = s.grants.iter().find(|e| e.same_request(&g)) {
                return Ok(json!({"GrantToken": existing.token, "GrantId": existing.grant_id}));
            }
            let mut gid = String::new();
            crate::crypto::hex_into(&crate::crypto::random::array::<32>(), &mut gid);
            g.token = format!(
                "kmsfs-grant-{}",
                b64url(&crate::crypto::random::array::<48>())
            );
            g.grant_id = gid;
            let out = json!({"GrantToken": g.token, "GrantId": g.grant_id});
            s.grants.push(g);
            Ok(out)
        });
        if let Ok(v) = &r {
            ev.response = json!({"grantId": v["GrantId"]});
        }
        self.finish(caller, ev, r)
    }

    pub(super) fn grant_json(&self, g: &Grant) -> Value {
        let mut v = json!({
            "KeyId": self.arn(&g.key_id), "GrantId": g.grant_id, "CreationDate": rfc3339(g.created),
            "GranteePrincipal": g.grantee, "IssuingAccount": self.account, "Operations": g.operations,
        });
        if let Some(n) = &g.name {
            v["Name"] = n.clone().into();
        }
        if let Some(r) = &g.retiring {
            v["RetiringPrincipal"] = r.clone().into();
        }
        if let Some(c) = &g.constraints {
            v["Constraints"] = serde_json::to_value(c).expect("constraints serialise");
        }
        v
    }

    pub fn list_grants(
        &self,
        caller: &Caller,
        key_id: &str,
        grant_id: Option<&str>,
        grantee: Option<&str>,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ev = Event::new(
            "ListGrants",
            true,
            json!({"keyId": key_id, "grantId": grant_id, "granteePrincipal": grantee}),
        );
        let r = self.state().and_then(|s| {
            let id = self
                .usable(caller, &s, key_id, &mut ev, "kms:ListGrants", None)?
                .id;
            self.grants_page(
                &s,
                |g| {
                    g.key_id == id
                        && grant_id.is_none_or(|x| x == g.grant_id)
                        && grantee.is_none_or(|x| x == g.grantee)
                },
                limit,
                marker,
            )
        });
        self.finish(caller, ev, r)
    }

    pub fn list_retirable_grants(
        &self,
        caller: &Caller,
        retiring: &str,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let ev = Event::new(
            "ListRetirableGrants",
            true,
            json!({"retiringPrincipal": retiring}),
        );
        let r = self.state().and_then(|s| {
            self.grants_page(
                &s,
                |g| g.retiring.as_deref() == Some(retiring),
                limit,
                marker,
            )
        });
        self.finish(caller, ev, r)
    }

    /// One page of the grants that `keep` selects, ordered by grant id.
    pub(super) fn grants_page(
        &self,
        s: &State,
        keep: impl Fn(&Grant) -> bool,
        limit: Option<u32>,
        marker: Option<&str>,
    ) -> KmsResult<Value> {
        let mut ids: Vec<String> = s
            .grants
            .iter()
            .filter(|g| keep(g))
            .map(|g| g.grant_id.clone())
            .collect();
        ids.sort();
        let (page, next) = paginate(&ids, limit, marker)?;
        let items = page
            .iter()
            .filter_map(|i| s.grants.iter().find(|g| g.grant_id == *i))
            .map(|g| self.grant_json(g))
            .collect();
        Ok(page_json("Grants", items, next))
    }

    /// RetireGrant, by token or by key and grant id.
    pub fn retire_grant(
        &self,
        caller: &Caller,
        token: Option<&str>,
        key_id: Option<&str>,
        grant_id: Option<&str>,
    ) -> KmsResult<()> {
        let mut ev = Event::new(
            "RetireGrant",
            false,
            json!({"keyId": key_id, "grantId": grant_id}),
        );
        let r = self.mutate(|s, _| {
            let idx = match (token, key_id, grant_id) {
                (Some(t), None, None) => s.grants.iter().position(|g| g.token == t).ok_or_else(|| {
                    KmsError::new(ErrorCode::InvalidGrantTokenException, "no current grant has this token")
                })?,
                (None, Some(k), Some(gid)) => {
                    let key = self.resolve(s, k)?.id;
                    s.grants.iter().position(|g| g.key_id == key && g.grant_id == gid).ok_or_else(|| {
                        KmsError::new(ErrorCode::InvalidGrantIdException, format!("key {key} has no grant {gid}"))
                    })?
                }
                _ => return Err(KmsError::validation("give either --grant-token, or both --key-id and --grant-id")),
            };
            let g = &s.grants[idx];
            ev.key = Some(g.key_id);
            let subject = subject_of(
                caller,
                grant::names_group(&g.grantee) || g.retiring.as_deref().is_some_and(grant::names_group),
                &self.account,
            );
            if !g.can_retire(&subject, &self.names) {
                return Err(KmsError::access_denied(format!(
                    "{} is neither the retiring principal of grant {} nor its grantee with RetireGrant",
                    caller.principal(),
                    g.grant_id
                )));
            }
            s.grants.remove(idx);
            Ok(())
        });
        self.finish(caller, ev, r)
    }

    pub fn revoke_grant(&self, caller: &Caller, key_id: &str, grant_id: &str) -> KmsResult<()> {
        let mut ev = Event::new(
            "RevokeGrant",
            false,
            json!({"keyId": key_id, "grantId": grant_id}),
        );
        let r = self.mutate(|s, _| {
            let id = self
                .usable(caller, s, key_id, &mut ev, "kms:RevokeGrant", None)?
                .id;
            let idx = s
                .grants
                .iter()
                .position(|g| g.key_id == id && g.grant_id == grant_id)
                .ok_or_else(|| {
                    KmsError::new(
                        ErrorCode::InvalidGrantIdException,
                        format!("key {id} has no grant {grant_id}"),
                    )
                })?;
            s.grants.remove(idx);
            Ok(())
        });
        self.finish(caller, ev, r)
    }
}
