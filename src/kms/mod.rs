//! The embedded KMS: AWS KMS's model for symmetric keys, knowing nothing of FUSE.
//!
//! Pure logic (context canonicalisation, the blob format, key names, the
//! key-state table) lives in small modules with their own tests; `keystore`
//! and `audit` own the file I/O; `service` ties them together.

pub mod api;
pub mod audit;
pub mod audit_admit;
pub mod audit_chain;
pub mod audit_query;
pub mod audit_sink;
pub mod audit_trail;
pub mod audit_verify;
pub mod blob;
pub mod caller;
pub mod clock;
pub mod context;
pub mod error;
pub mod grant;
pub mod import;
pub mod key;
pub mod keyref;
pub mod keystore;
pub mod policy;
mod serde_secret;
pub mod service;
pub mod sigv4;
mod watch;

pub use caller::{Caller, Via};
pub use context::EncryptionContext;
pub use error::{ErrorCode, KmsError, KmsResult};
pub use keystore::{KmsHome, RootSecret};
pub use service::{CreateKeyRequest, DataKeySpec, KeyMetadata, Kms, Options};
