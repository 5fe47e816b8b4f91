//! Filters for `kmsfs audit show`: answers "who decrypted what, when" over the
//! JSON lines without needing the root key.

use super::clock::parse_time;
use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// Key id, ARN or alias as the caller gave it.
    pub key: Option<String>,
    pub event: Option<String>,
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub errors_only: bool,
    pub uid: Option<u32>,
    /// A file path inside a filesystem (the `kmsfs:path` context value); a
    /// trailing `/` matches everything below a directory.
    pub path: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Value) -> bool {
        if let Some(k) = &self.key {
            let in_params = r["requestParameters"]["keyId"].as_str() == Some(k.as_str());
            let in_resources = r["resources"].as_array().is_some_and(|a| {
                a.iter().any(|x| {
                    x["ARN"]
                        .as_str()
                        .is_some_and(|arn| arn == k || arn.ends_with(&format!("/{k}")))
                })
            });
            if !in_params && !in_resources {
                return false;
            }
        }
        if let Some(e) = &self.event
            && !r["eventName"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(e))
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = r["eventTime"].as_str().and_then(parse_time) else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        if self.errors_only && r.get("errorCode").is_none_or(Value::is_null) {
            return false;
        }
        if let Some(u) = self.uid
            && r["userIdentity"]["uid"].as_u64() != Some(u as u64)
        {
            return false;
        }
        if let Some(p) = &self.path {
            let ctx = &r["requestParameters"]["encryptionContext"];
            let hit = |v: &Value| {
                v["kmsfs:path"].as_str().is_some_and(|fp| {
                    if p.ends_with('/') {
                        fp.starts_with(p.as_str())
                    } else {
                        fp == p
                    }
                })
            };
            if !hit(ctx) && !hit(&r["requestParameters"]["sourceEncryptionContext"]) {
                return false;
            }
        }
        true
    }
}

/// One human-readable line: time, event, who, key, context, outcome.
pub fn table_row(r: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    let who = format!(
        "{}({}) pid {}",
        r["userIdentity"]["principalId"].as_str().unwrap_or("?"),
        r["userIdentity"]["processName"].as_str().unwrap_or("?"),
        r["userIdentity"]["pid"]
    );
    let key = r["resources"][0]["ARN"]
        .as_str()
        .and_then(|a| a.rsplit('/').next())
        .map(String::from)
        .unwrap_or_else(|| s(&r["requestParameters"]["keyId"]));
    let ctx = match &r["requestParameters"]["encryptionContext"] {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    };
    let outcome = match r["errorCode"].as_str() {
        Some(c) => c.to_string(),
        None => "ok".into(),
    };
    format!(
        "{}  {:<28} {:<32} {:<36} {}  {}",
        s(&r["eventTime"]),
        s(&r["eventName"]),
        who,
        key,
        ctx,
        outcome
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec() -> Value {
        json!({
            "eventTime": "2026-11-29T10:00:00Z", "eventName": "Decrypt",
            "userIdentity": {"principalId": "uid:1000", "uid": 1000, "pid": 42, "processName": "cat"},
            "requestParameters": {"encryptionContext": {"kmsfs:path": "projects/x.txt", "kmsfs:fs": "f"}},
            "resources": [{"ARN": "arn:kmsfs:kms:local:1:key/abc"}]
        })
    }

    #[test]
    fn each_filter() {
        let r = rec();
        assert!(Filter::default().matches(&r));
        assert!(
            Filter {
                key: Some("abc".into()),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                key: Some("abd".into()),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            Filter {
                event: Some("decrypt".into()),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                event: Some("Encrypt".into()),
                ..Default::default()
            }
            .matches(&r)
        );
        let t = parse_time("2026-11-29T10:00:00Z").unwrap();
        assert!(
            Filter {
                since: Some(t),
                until: Some(t),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                since: Some(t + 1),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                errors_only: true,
                ..Default::default()
            }
            .matches(&r)
        );
        let mut e = rec();
        e["errorCode"] = "AccessDeniedException".into();
        assert!(
            Filter {
                errors_only: true,
                ..Default::default()
            }
            .matches(&e)
        );
        assert!(
            Filter {
                uid: Some(1000),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                uid: Some(0),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            Filter {
                path: Some("projects/".into()),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            Filter {
                path: Some("projects/x.txt".into()),
                ..Default::default()
            }
            .matches(&r)
        );
        assert!(
            !Filter {
                path: Some("projects/x".into()),
                ..Default::default()
            }
            .matches(&r)
        );
    }

    #[test]
    fn table_row_names_who_and_what() {
        let row = table_row(&rec());
        assert!(
            row.contains("uid:1000(cat)")
                && row.contains("abc")
                && row.contains("kmsfs:path=projects/x.txt")
        );
        assert!(row.ends_with("ok"));
    }
}
