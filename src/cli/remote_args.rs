//! Flags and local state of filesystems whose CMK lives in a remote KMS.

use crate::remote::{Client, Endpoint, RemoteKms, creds};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone, Default)]
pub struct RemoteArgs {
    /// A remote KMS speaking the AWS KMS JSON API (`kmsfs kms serve`, AWS KMS, moto), as http://127.0.0.1:PORT. With init: the filesystem's CMK (--key-id) lives there. With mount: confirms the endpoint the filesystem names, once per host.
    #[arg(long, value_name = "URL")]
    pub kms_endpoint: Option<String>,
    /// The region requests to the remote KMS are signed for [default: $AWS_REGION, $AWS_DEFAULT_REGION, us-east-1].
    #[arg(long)]
    pub region: Option<String>,
    /// The profile of the AWS credentials file to sign with [default: $AWS_PROFILE, default]; without it the AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment wins.
    #[arg(long)]
    pub profile: Option<String>,
    /// An AWS credentials file (INI, as ~/.aws/credentials) [default: $AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials].
    #[arg(long, value_name = "FILE")]
    pub aws_credentials_file: Option<PathBuf>,
    /// PEM bundle of CA certificates an https endpoint's certificate may chain to, besides the public roots kmsfs carries [default: $AWS_CA_BUNDLE].
    #[arg(long, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
}

/// The TLS configuration an endpoint needs (`None` for plain http).
fn tls_for(
    endpoint: &Endpoint,
    ca: Option<&Path>,
) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, String> {
    if endpoint.tls {
        crate::remote::client::tls_config(ca).map(Some)
    } else {
        Ok(None)
    }
}

impl RemoteArgs {
    pub fn region(&self, recorded: Option<&str>) -> String {
        self.region
            .clone()
            .or_else(|| recorded.map(str::to_string))
            .or_else(|| std::env::var("AWS_REGION").ok().filter(|v| !v.is_empty()))
            .or_else(|| {
                std::env::var("AWS_DEFAULT_REGION")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| "us-east-1".into())
    }

    /// A client of `url`, signing with the standard credentials.
    pub fn open(&self, url: &str, region: &str) -> Result<RemoteKms, String> {
        let endpoint = Endpoint::parse(url)?;
        let creds = creds::resolve(
            self.aws_credentials_file.as_deref(),
            self.profile.as_deref(),
        )?;
        let tls = tls_for(&endpoint, self.ca_bundle.as_deref())?;
        Ok(RemoteKms::new(Client::new(
            endpoint,
            region.to_string(),
            creds,
            tls,
        )))
    }
}

/// How long a mount of a remote filesystem keeps unwrapped data keys.
#[derive(Args, Debug, Clone)]
pub struct CacheArgs {
    /// Keep each file's unwrapped data key this many seconds, so opening it again needs no round trip to the remote KMS (measured on loopback: 2,175 opens/s without, 17,253 with, 17,629 with the embedded KMS); a policy change or revocation there applies to such a file within this time, to every other at once. 0 turns it off. Each use of a kept key is recorded in the state directory's cache-audit-<filesystem id>.log. Only for remote filesystems.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub key_cache_seconds: u64,
    /// ... and for at most this many opens.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub key_cache_uses: u32,
    /// When a file is opened, unwrap into the cache the data keys of the
    /// other files in its directory and in the directories right below, on
    /// 8 connections at once, so a backup, `cp -r` or `grep -r` that opens
    /// them next waits for no round trip each. The remote KMS then unwraps
    /// (and audits) keys of files that may never be opened, and a
    /// revocation there reaches such a file within --key-cache-seconds, as
    /// it does an opened one. Needs the cache; only for remote filesystems.
    #[arg(long)]
    pub key_readahead: bool,
}

/// `kmsfs kms --endpoint-url`'s signing flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// The region to sign for [default: $AWS_REGION, $AWS_DEFAULT_REGION, us-east-1].
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// The AWS credentials-file profile to sign with [default: $AWS_PROFILE, default].
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// PEM bundle of CA certificates for an https endpoint, besides the public roots [default: $AWS_CA_BUNDLE].
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_bundle: Option<PathBuf>,
}

impl ClientArgs {
    pub fn client(&self, url: &str) -> Result<Client, String> {
        let r = RemoteArgs {
            kms_endpoint: None,
            region: self.region.clone(),
            profile: self.profile.clone(),
            aws_credentials_file: None,
            ca_bundle: None,
        };
        let creds = creds::resolve(None, self.profile.as_deref())?;
        let endpoint = Endpoint::parse(url)?;
        let tls = tls_for(&endpoint, self.ca_bundle.as_deref())?;
        Ok(Client::new(endpoint, r.region(None), creds, tls))
    }
}

const TRUST_NAME: &str = "remote-endpoints.json";

/// The endpoints this host has accepted for remote filesystems, by
/// filesystem id. kmsfs.conf names its endpoint, but the cipherdir is not
/// trusted to choose where keys are unwrapped: a planted endpoint could hand
/// out data keys its owner knows. So a filesystem's endpoint is accepted
/// once per host: by `init` there, or by `mount --kms-endpoint URL`.
fn load_trust(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read(dir.join(TRUST_NAME))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn trust(dir: &Path, fs_id: &str, endpoint: &str) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode_private()
        .create(dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut t = load_trust(dir);
    t.insert(fs_id.to_string(), endpoint.to_string());
    let tmp = dir.join(format!("{TRUST_NAME}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&t).expect("JSON"))
        .and_then(|_| std::fs::rename(&tmp, dir.join(TRUST_NAME)))
        .map_err(|e| format!("cannot record the endpoint in {}: {e}", dir.display()))
}

trait Private {
    fn mode_private(&mut self) -> &mut Self;
}

impl Private for std::fs::DirBuilder {
    fn mode_private(&mut self) -> &mut Self {
        std::os::unix::fs::DirBuilderExt::mode(self, 0o700)
    }
}

/// Whether the filesystem `fs_id`, naming `endpoint`, may be mounted here:
/// this host accepted that endpoint before, or `confirmed` names it now
/// (and is recorded).
pub fn check_trusted(
    dir: &Path,
    fs_id: &str,
    endpoint: &str,
    confirmed: Option<&str>,
) -> Result<(), String> {
    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    if let Some(c) = confirmed {
        if !same(c, endpoint) {
            return Err(format!(
                "--kms-endpoint {c} is not the KMS this filesystem names ({endpoint}); a filesystem stays with the KMS its keys were made in"
            ));
        }
        return trust(dir, fs_id, endpoint);
    }
    match load_trust(dir).get(fs_id) {
        Some(t) if same(t, endpoint) => Ok(()),
        Some(t) => Err(format!(
            "kmsfs.conf now names the KMS {endpoint}, but this host accepted {t} for this filesystem: refusing (a cipherdir is not trusted to choose where keys are unwrapped)"
        )),
        None => Err(format!(
            "this filesystem's keys live in the remote KMS {endpoint}, which this host has not accepted yet: mount with --kms-endpoint {endpoint} once to accept it (recorded in {})",
            dir.join(TRUST_NAME).display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_endpoint_is_accepted_once_per_host_and_never_silently_changed() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("state");
        let e = check_trusted(&dir, "fs1", "http://127.0.0.1:1", None).unwrap_err();
        assert!(
            e.contains("mount with --kms-endpoint http://127.0.0.1:1"),
            "{e}"
        );
        let e = check_trusted(
            &dir,
            "fs1",
            "http://127.0.0.1:1",
            Some("http://127.0.0.1:2"),
        )
        .unwrap_err();
        assert!(e.contains("is not the KMS this filesystem names"), "{e}");
        check_trusted(
            &dir,
            "fs1",
            "http://127.0.0.1:1",
            Some("http://127.0.0.1:1/"),
        )
        .unwrap();
        check_trusted(&dir, "fs1", "http://127.0.0.1:1", None).unwrap();
        let e = check_trusted(&dir, "fs1", "http://127.0.0.1:9", None).unwrap_err();
        assert!(e.contains("this host accepted http://127.0.0.1:1"), "{e}");
        assert!(check_trusted(&dir, "fs2", "http://127.0.0.1:1", None).is_err());
    }
}
