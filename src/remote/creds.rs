//! AWS credentials from the standard sources, in the SDKs' order: the
//! environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN),
//! then a profile (AWS_PROFILE, else `default`) of the shared credentials
//! file (AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials), or a file
//! given by flag. The INI parsing is pure and unit-tested.

use zeroize::Zeroizing;

pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Zeroizing<String>,
    pub session_token: Option<Zeroizing<String>>,
    /// Where they came from, for messages (never the secret).
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials({} from {}, <redacted>)",
            self.access_key_id, self.source
        )
    }
}

/// The `[profile]` section of a credentials file's text: its
/// aws_access_key_id, aws_secret_access_key and aws_session_token.
pub fn parse_profile(text: &str, profile: &str, source: &str) -> Result<Credentials, String> {
    let mut in_section = false;
    let mut found = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_section = name == profile || name == format!("profile {profile}");
            found |= in_section;
            continue;
        }
        if !in_section {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        let v = v.trim().to_string();
        match k.trim() {
            "aws_access_key_id" => id = Some(v),
            "aws_secret_access_key" => secret = Some(Zeroizing::new(v)),
            "aws_session_token" => token = Some(Zeroizing::new(v)),
            _ => {}
        }
    }
    if !found {
        return Err(format!("{source} has no profile [{profile}]"));
    }
    match (id, secret) {
        (Some(access_key_id), Some(secret_access_key)) if !access_key_id.is_empty() => {
            Ok(Credentials {
                access_key_id,
                secret_access_key,
                session_token: token,
                source: format!("{source} [{profile}]"),
            })
        }
        _ => Err(format!(
            "profile [{profile}] of {source} lacks aws_access_key_id or aws_secret_access_key"
        )),
    }
}

/// Credentials from the environment, else from `file` (or the shared
/// credentials file) under `profile` (or AWS_PROFILE, or `default`).
pub fn resolve(
    file: Option<&std::path::Path>,
    profile: Option<&str>,
) -> Result<Credentials, String> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if file.is_none()
        && profile.is_none()
        && let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(Credentials {
            access_key_id: id,
            secret_access_key: Zeroizing::new(secret),
            session_token: env("AWS_SESSION_TOKEN").map(Zeroizing::new),
            source: "the environment (AWS_ACCESS_KEY_ID)".into(),
        });
    }
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => match env("AWS_SHARED_CREDENTIALS_FILE") {
            Some(p) => p.into(),
            None => std::path::Path::new(&env("HOME").unwrap_or_else(|| "/root".into()))
                .join(".aws/credentials"),
        },
    };
    let profile = profile
        .map(str::to_string)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "no AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set and {} cannot be read ({e})",
            path.display()
        )
    })?);
    parse_profile(&text, &profile, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_as_the_aws_cli_writes_them() {
        let text = "# comment\n[default]\naws_access_key_id = AKID1\naws_secret_access_key=s1\n\n[profile ops]\naws_access_key_id=AKID2\naws_secret_access_key = s2\naws_session_token = tok\n";
        let d = parse_profile(text, "default", "f").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("AKID1", "s1")
        );
        assert!(d.session_token.is_none());
        let o = parse_profile(text, "ops", "f").unwrap();
        assert_eq!(o.session_token.as_deref().map(String::as_str), Some("tok"));
        assert!(
            parse_profile(text, "none", "f")
                .unwrap_err()
                .contains("no profile [none]")
        );
        assert!(
            parse_profile("[x]\naws_access_key_id=a\n", "x", "f")
                .unwrap_err()
                .contains("lacks")
        );
        assert!(!format!("{o:?}").contains("s2"), "Debug shows no secret");
    }
}
