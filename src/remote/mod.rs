//! A KMS on another machine: any service speaking the AWS KMS JSON API
//! (`kmsfs kms serve`, moto, AWS KMS behind a loopback TLS tunnel), used by
//! a mount through the same narrow interface as the embedded KMS. The
//! remote KMS sees one identity, the access key's: it judges the host, and
//! the mount's own permission checks judge its users.

pub mod cache;
pub mod client;
pub mod creds;

use crate::crypto::Key256;
use crate::fs::keys::KeyBackend;
use crate::kms::api::{self, Blob, Request};
use crate::kms::{Caller, EncryptionContext, ErrorCode, KmsError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use zeroize::Zeroizing;

trait Private {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Private for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

pub use client::{Client, Endpoint, RemoteError};

pub struct RemoteKms {
    client: Client,
    cache: Option<cache::KeyCache>,
    /// The mount's local record of what the remote KMS never sees: each
    /// data key served from the cache, one JSON line each.
    hits: Option<std::sync::Mutex<std::fs::File>>,
    /// `--key-readahead`: keys of files about to be opened are unwrapped
    /// into the cache ahead (fs/key_readahead.rs).
    readahead: bool,
}

fn blob_field(v: &Value, name: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    let s = v[name]
        .as_str()
        .ok_or_else(|| KmsError::internal(format!("the KMS's response has no {name}")))?;
    B64.decode(s)
        .map(Zeroizing::new)
        .map_err(|_| KmsError::internal(format!("the KMS's {name} is not base64")))
}

fn data_key(plain: &[u8]) -> Result<Key256, KmsError> {
    Key256::from_slice(plain)
        .ok_or_else(|| KmsError::invalid_ciphertext("the wrapped data key is not 32 bytes"))
}

impl RemoteKms {
    pub fn new(client: Client) -> Self {
        RemoteKms {
            client,
            cache: None,
            hits: None,
            readahead: false,
        }
    }

    /// Lets the mount unwrap keys ahead of their opens into the cache
    /// (nothing without a cache).
    pub fn with_readahead(mut self, on: bool) -> Self {
        self.readahead = on;
        self
    }

    /// Keeps unwrapped data keys for `max_age` and `max_uses` (off if
    /// either is zero), recording each hit in `audit` (appended).
    pub fn with_cache(
        mut self,
        max_age: std::time::Duration,
        max_uses: u32,
        audit: &std::path::Path,
    ) -> Result<Self, String> {
        self.cache = cache::KeyCache::new(max_age, max_uses);
        if self.cache.is_some() {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode_0600()
                .open(audit)
                .map_err(|e| format!("cannot open the cache audit log {}: {e}", audit.display()))?;
            self.hits = Some(std::sync::Mutex::new(f));
        }
        Ok(self)
    }

    fn record_hit(&self, caller: &Caller, ctx: &EncryptionContext) -> Result<(), KmsError> {
        let Some(f) = &self.hits else { return Ok(()) };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let rec = serde_json::json!({
            "eventTime": crate::kms::clock::rfc3339(now),
            "eventName": "Decrypt",
            "eventSource": "kmsfs.data-key-cache",
            "kmsEndpoint": self.endpoint(),
            "userIdentity": {"uid": caller.uid, "gid": caller.gid, "pid": caller.pid, "processName": caller.process},
            "requestParameters": {"encryptionContext": ctx},
            "cacheHit": true,
        });
        let mut line = serde_json::to_vec(&rec).expect("JSON");
        line.push(b'\n');
        use std::io::Write;
        // As the local audit log does: a use that cannot be recorded fails.
        f.lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_all(&line)
            .map_err(|e| KmsError::internal(format!("the cache audit log could not be written ({e}); refusing to use a cached key unaudited")))
    }

    pub fn endpoint(&self) -> &str {
        &self.client.endpoint.url
    }

    /// The key's ARN and state, as DescribeKey gives them.
    pub fn describe_key(&self, key_id: &str) -> Result<(String, String), KmsError> {
        let v = self.client.call(&Request::DescribeKey(api::KeyOnly {
            key_id: key_id.into(),
        }))?;
        let m = &v["KeyMetadata"];
        Ok((
            m["Arn"].as_str().unwrap_or(key_id).to_string(),
            m["KeyState"].as_str().unwrap_or("Unknown").to_string(),
        ))
    }

    fn generate(
        &self,
        key_id: &str,
        ctx: &EncryptionContext,
        dry_run: bool,
    ) -> Result<Value, KmsError> {
        self.client
            .call(&Request::GenerateDataKey(api::GenerateDataKey {
                key_id: key_id.into(),
                key_spec: Some("AES_256".into()),
                number_of_bytes: None,
                encryption_context: ctx.clone(),
                grant_tokens: vec![],
                dry_run: dry_run.then_some(true),
            }))
    }
}

impl KeyBackend for RemoteKms {
    fn arn_and_state(&self, _caller: &Caller, key_id: &str) -> Result<(String, String), KmsError> {
        self.describe_key(key_id)
    }

    fn new_data_key(
        &self,
        _caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(Key256, Vec<u8>), KmsError> {
        let v = self.generate(key_id, ctx, false)?;
        let key = data_key(&blob_field(&v, "Plaintext")?)?;
        Ok((key, blob_field(&v, "CiphertextBlob")?.to_vec()))
    }

    fn unwrap(
        &self,
        caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Key256, KmsError> {
        let now = std::time::Instant::now();
        // Hashed once per open, for the lookup and the insertion.
        let slot = self.cache.as_ref().map(|_| cache::slot(blob, ctx));
        if let (Some(c), Some(k)) = (&self.cache, slot)
            && let Some(key) = c.get(k, now)
        {
            self.record_hit(caller, ctx)?;
            return Ok(key);
        }
        let key = data_key(&self.decrypt(caller, blob, ctx)?)?;
        if let (Some(c), Some(k)) = (&self.cache, slot) {
            c.put(k, &key, now);
        }
        Ok(key)
    }

    fn reads_ahead(&self) -> Option<std::time::Duration> {
        self.cache
            .as_ref()
            .filter(|_| self.readahead)
            .map(|c| c.max_age())
    }

    fn unwrap_ahead(&self, blob: &[u8], ctx: &EncryptionContext) {
        let Some(c) = &self.cache else { return };
        let slot = cache::slot(blob, ctx);
        let now = std::time::Instant::now();
        if c.holds(slot, now) {
            return;
        }
        // Not a use: the open that takes it is recorded as a hit.
        if let Ok(key) = self
            .decrypt(&Caller::service(), blob, ctx)
            .and_then(|p| data_key(&p))
        {
            c.put(slot, &key, now);
        }
    }

    fn may_generate(
        &self,
        _caller: &Caller,
        key_id: &str,
        ctx: &EncryptionContext,
    ) -> Result<(), KmsError> {
        match self.generate(key_id, ctx, true) {
            Err(e) if e.code == ErrorCode::DryRunOperationException => Ok(()),
            // A KMS that ignores DryRun made a key nobody keeps: allowed.
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn rewrap(
        &self,
        _caller: &Caller,
        blob: &[u8],
        from: &EncryptionContext,
        key_id: &str,
        to: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        let v = self.client.call(&Request::ReEncrypt(api::ReEncrypt {
            ciphertext_blob: Blob::new(blob.to_vec()),
            source_encryption_context: from.clone(),
            source_key_id: None,
            destination_key_id: key_id.into(),
            destination_encryption_context: to.clone(),
            grant_tokens: vec![],
            dry_run: None,
        }))?;
        Ok(blob_field(&v, "CiphertextBlob")?.to_vec())
    }

    fn encrypt(
        &self,
        _caller: &Caller,
        key_id: &str,
        plain: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Vec<u8>, KmsError> {
        let v = self.client.call(&Request::Encrypt(api::Encrypt {
            key_id: key_id.into(),
            plaintext: Blob::new(plain.to_vec()),
            encryption_context: ctx.clone(),
            encryption_algorithm: None,
            grant_tokens: vec![],
            dry_run: None,
        }))?;
        Ok(blob_field(&v, "CiphertextBlob")?.to_vec())
    }

    fn decrypt(
        &self,
        _caller: &Caller,
        blob: &[u8],
        ctx: &EncryptionContext,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let v = self.client.call(&Request::Decrypt(api::Decrypt {
            ciphertext_blob: Blob::new(blob.to_vec()),
            encryption_context: ctx.clone(),
            key_id: None,
            encryption_algorithm: None,
            grant_tokens: vec![],
            dry_run: None,
        }))?;
        blob_field(&v, "Plaintext")
    }
}
