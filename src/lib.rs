//! kmsfs: a FUSE filesystem that encrypts every file with its own data key,
//! wrapped by an embedded key service that follows AWS KMS's model.
//!
//! `kms` is the key service (usable on its own, see examples/envelope.rs);
//! `crypto` holds the primitives both share.

pub mod cli;
pub mod crypto;
pub mod fs;
pub mod fuzz_targets;
pub mod kms;
pub mod log;
pub mod remote;
pub mod server;
