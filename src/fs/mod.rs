//! The encrypting filesystem: the file format (pure), encrypted random access
//! over a backing file, the inode table, the rename journal, the FUSE
//! operations and mounting.

pub mod acl;
pub mod activity;
pub mod backing;
pub mod config;
pub mod control;
pub mod cryptfile;
pub mod devnode;
pub mod exchange;
pub mod fairness;
pub mod format;
pub mod fsck;
pub mod hardlink;
pub mod inode;
pub mod key_readahead;
pub mod keys;
pub mod links;
pub mod listing;
pub mod longlink;
pub mod mount;
pub mod names;
pub mod node;
pub mod ops;
pub mod rekey;
pub mod rename;
pub mod rename_names;
pub mod rewrap;
pub mod root_attr;
pub mod stat;
pub mod symlink;
pub mod tree;
pub mod xattr;
pub mod xattr_store;
