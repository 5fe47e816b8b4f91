//! `kmsfs rewrap`: every blob the filesystem keeps under its CMK, wrapped
//! again (ReEncrypt, inside the KMS: no data key leaves it in the clear)
//! under the CMK's newest material or under another CMK. The content is not
//! re-encrypted: that is envelope encryption's point (see rekey.rs for when
//! it must be).
//!
//! The blobs: `kmsfs.conf`'s name key and seal, the extended-attribute key
//! file, every file's data key (and each of a hard-linked file's names'
//! entries), every symlink's target. Each blob is self-describing (it names
//! its key and material), so a tree half re-wrapped, the config first,
//! reads whole. Crash-safe and resumable: a file's new slot is written
//! beside the one that opens and the old one dropped only after; the
//! extended-attribute key file and symlinks are replaced by rename. A rerun
//! re-wraps everything again, which is idempotent.

use super::backing::{Backing, FsError, FsResult};
use super::cryptfile;
use super::format::Slot;
use crate::kms::Caller;
use base64::Engine;

#[derive(Debug, Default, Clone)]
pub struct Rewrapped {
    pub files: u64,
    pub links: u64,
    pub symlinks: u64,
    /// The config's name key and seal, the attribute key file.
    pub own: u64,
    pub failed: Vec<String>,
}

pub struct Rewrap<'a> {
    b: &'a mut Backing,
    caller: Caller,
    to: String,
    out: Rewrapped,
}

impl<'a> Rewrap<'a> {
    /// Re-wraps under `to`, the key's ARN (the filesystem's own key for its
    /// newest material); the config records it.
    pub fn new(b: &'a mut Backing, caller: Caller, to: String) -> Self {
        Rewrap {
            b,
            caller,
            to,
            out: Rewrapped::default(),
        }
    }

    pub fn run(
        mut self,
        progress: &mut dyn FnMut(&super::fsck::Progress),
    ) -> Result<Rewrapped, String> {
        self.config()?;
        self.xattr_key()?;
        let mut dirs = vec![String::new()];
        let mut n = 0;
        while let Some(dir) = dirs.pop() {
            let entries = self
                .b
                .tree
                .entries(&dir)
                .map_err(|e| format!("listing {dir:?}: {e}"))?;
            for (name, kind) in entries {
                if super::names::is_internal(&dir, &name) {
                    continue;
                }
                let rel = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let r = match kind {
                    fuser::FileType::Directory => {
                        dirs.push(rel.clone());
                        Ok(())
                    }
                    fuser::FileType::RegularFile => self.file(&rel),
                    fuser::FileType::Symlink => self.symlink(&rel),
                    _ => Ok(()),
                };
                if let Err(e) = r {
                    self.out.failed.push(format!("{rel}: {e}"));
                }
                n += 1;
                progress(&super::fsck::Progress {
                    nodes: n,
                    bytes: 0,
                    path: &rel,
                });
            }
        }
        Ok(self.out)
    }

    fn rewrap(&self, blob: &[u8], ctx: &crate::kms::EncryptionContext) -> FsResult<Vec<u8>> {
        Ok(self.b.kms.rewrap(&self.caller, blob, ctx, &self.to, ctx)?)
    }

    /// The config names the key new data keys are made under, wraps the
    /// name key and is sealed under the key: all three move, in one save.
    fn config(&mut self) -> Result<(), String> {
        let fs_id = self.b.cfg.filesystem_id.clone();
        let mut cfg = self.b.cfg.clone();
        if let Some(b64) = cfg.name_key.clone() {
            let blob = base64::engine::general_purpose::STANDARD
                .decode(&b64)
                .map_err(|_| "kmsfs.conf: NameKey is not base64".to_string())?;
            let new = self
                .rewrap(&blob, &super::keys::name_key_context(&fs_id))
                .map_err(|e| format!("re-wrapping the name key: {e}"))?;
            cfg.name_key = Some(base64::engine::general_purpose::STANDARD.encode(new));
            self.out.own += 1;
        }
        cfg.key_id = self.to.clone();
        super::mount::seal(self.b.kms.as_ref(), &self.caller, &mut cfg)?;
        self.out.own += 1;
        cfg.save(&self.b.tree)?;
        self.b.cfg = cfg;
        Ok(())
    }

    fn xattr_key(&mut self) -> Result<(), String> {
        let name = super::xattr_store::KEY_FILE;
        let Some(blob) = self
            .b
            .tree
            .read_small(name, 4096)
            .map_err(|e| format!("{name}: {e}"))?
        else {
            return Ok(());
        };
        let ctx = super::xattr_store::key_context(&self.b.cfg.filesystem_id);
        let new = self
            .rewrap(&blob, &ctx)
            .map_err(|e| format!("{name}: {e}"))?;
        self.b
            .tree
            .replace(name, &new, 0o600)
            .map_err(|e| format!("{name}: {e}"))?;
        self.out.own += 1;
        Ok(())
    }

    fn file(&mut self, rel: &str) -> FsResult<()> {
        let fd = self.b.open_rw(rel)?;
        if fd.metadata()?.len() == 0 {
            return Ok(()); // no header yet: the next open gives it one
        }
        let ctx = self.b.ctx(rel);
        // A hard-linked file: this name's own entry, and the header's slot
        // if it was wrapped for this name (it is for one of them).
        let linked = match self.b.link_blob(&fd, rel)? {
            Some(blob) => {
                let new = self.rewrap(&blob, &ctx)?;
                self.b.put_link(&fd, rel, new)?;
                self.out.links += 1;
                true
            }
            None => false,
        };
        let h = cryptfile::read_header(&fd, self.b.hs)?;
        let found = self.b.first_slot(&h, |blob| {
            self.b.kms.rewrap(&self.caller, blob, &ctx, &self.to, &ctx)
        });
        let (i, new) = match found {
            Ok(r) => r?,
            Err(_) if linked => return Ok(()), // the slot is another name's
            Err(m) => {
                return Err(FsError::Io(cryptfile::integrity_error(format!(
                    "the data key of {rel} does not open at this path: {m}"
                ))));
            }
        };
        let seq = h.slots[i].as_ref().expect("opened").seq;
        let other = 1 - i;
        // The new slot beside the one that opens; the old one dropped after.
        cryptfile::write_slot(
            &fd,
            self.b.hs,
            &h.file_id,
            other,
            Some(&Slot {
                seq: seq + 1,
                blob: new,
            }),
        )?;
        fd.sync_data()?;
        self.b.drop_slot(&fd, &h.file_id, i)?;
        self.out.files += 1;
        Ok(())
    }

    fn symlink(&mut self, rel: &str) -> FsResult<()> {
        let stored = self.b.tree.readlink(rel)?;
        let blob = super::symlink::decode(&stored).ok_or_else(|| {
            FsError::Io(cryptfile::integrity_error(format!(
                "symlink {rel} is not a kmsfs encrypted link"
            )))
        })?;
        let ctx = super::keys::file_context(&self.b.cfg, super::keys::Purpose::Symlink, rel);
        let new = super::symlink::encode(&self.rewrap(&blob, &ctx)?);
        let parent = rel.rsplit_once('/').map_or("", |(p, _)| p);
        let twin = super::rename::temp_name(parent, "rewrap");
        // The link's owner and times are the mount's to show: kept.
        let st = self.b.tree.lstat(rel)?;
        self.b.tree.symlink(new.as_bytes(), &twin)?;
        let kept = self
            .b
            .tree
            .chown(&twin, Some(st.st_uid), Some(st.st_gid))
            .and_then(|()| self.b.tree.set_times(&twin, &super::stat::times_of(&st)))
            .and_then(|()| self.b.tree.rename(&twin, rel, 0));
        if let Err(e) = kept {
            let _ = self.b.tree.unlink(&twin);
            return Err(FsError::Io(e));
        }
        self.out.symlinks += 1;
        Ok(())
    }
}
