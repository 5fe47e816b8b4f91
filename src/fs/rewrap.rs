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
//!
//! Online (control.rs: the mount runs it on `kmsfs rewrap`'s request), each
//! file is re-wrapped under an exclusive claim on its path, the one a rename
//! takes, so no rename, open or truncation of it runs meanwhile; a file a
//! rename moves before the walk reaches it was re-wrapped by the rename,
//! which wraps for the new path under the config's key, moved first.

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
    /// Online: files renamed or removed through the mount before the walk
    /// reached them (a rename re-wraps what it moves).
    pub moved: u64,
    /// The config's name key and seal, the attribute key file.
    pub own: u64,
    pub failed: Vec<String>,
}

/// The ARN to re-wrap under: `to_key`, else the filesystem's own key
/// (`current`) for its newest material; refused unless it is enabled.
pub fn target(
    kms: &dyn super::keys::KeyBackend,
    caller: &Caller,
    to_key: Option<&str>,
    current: &str,
) -> Result<String, String> {
    let target = to_key.unwrap_or(current);
    let (arn, state) = kms
        .arn_and_state(caller, target)
        .map_err(|e| format!("the key {target}: {}: {}", e.code, e.message))?;
    if state != "Enabled" {
        return Err(format!(
            "the key {arn} is {state}: blobs can be re-wrapped only under an enabled key (kmsfs kms enable-key)"
        ));
    }
    Ok(arn)
}

pub struct Rewrap<'a> {
    b: &'a Backing,
    /// The mount's renames, when it runs online.
    gate: Option<&'a super::fairness::RenameGate>,
    caller: Caller,
    to: String,
    out: Rewrapped,
}

impl<'a> Rewrap<'a> {
    /// Re-wraps under `to`, the key's ARN (the filesystem's own key for its
    /// newest material); the config records it.
    pub fn new(
        b: &'a Backing,
        gate: Option<&'a super::fairness::RenameGate>,
        caller: Caller,
        to: String,
    ) -> Self {
        Rewrap {
            b,
            gate,
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
        // Online: what began under the old key (a create that made its data
        // key before the config moved) is on disk before the walk lists it.
        if let Some(g) = self.gate {
            drop(g.claim("", ""));
        }
        self.xattr_key()?;
        let mut dirs = vec![String::new()];
        let mut n = 0;
        while let Some(dir) = dirs.pop() {
            let entries = match self.b.tree.entries(&dir) {
                Ok(e) => e,
                Err(e) if self.moved(&e) => continue, // see above
                Err(e) => return Err(format!("listing {dir:?}: {e}")),
            };
            for (name, kind) in entries {
                if super::names::is_internal(&dir, &name) {
                    continue;
                }
                let rel = if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                };
                let claim = match kind {
                    fuser::FileType::RegularFile | fuser::FileType::Symlink => {
                        self.gate.map(|g| g.claim(&rel, &rel))
                    }
                    _ => None,
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
                drop(claim);
                match r {
                    // Renamed or removed through the mount since the
                    // listing: a rename wrapped it for its new path.
                    Err(FsError::Io(e)) if self.moved(&e) => self.out.moved += 1,
                    Err(e) => self.out.failed.push(format!("{rel}: {e}")),
                    Ok(()) => {}
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
    /// name key and is sealed under the key: all three move, in one save,
    /// and the mount makes new data keys under the new key from then on.
    fn config(&mut self) -> Result<(), String> {
        let fs_id = self.b.cfg.filesystem_id.clone();
        let own = self.b.update_config(|saved| {
            let mut cfg = saved.clone();
            let mut own = 0;
            if let Some(b64) = cfg.name_key.clone() {
                let blob = base64::engine::general_purpose::STANDARD
                    .decode(&b64)
                    .map_err(|_| "kmsfs.conf: NameKey is not base64".to_string())?;
                let new = self
                    .rewrap(&blob, &super::keys::name_key_context(&fs_id))
                    .map_err(|e| format!("re-wrapping the name key: {e}"))?;
                cfg.name_key = Some(base64::engine::general_purpose::STANDARD.encode(new));
                own += 1;
            }
            cfg.key_id = self.to.clone();
            super::mount::seal(self.b.kms.as_ref(), &self.caller, &mut cfg)?;
            cfg.save(&self.b.tree)?;
            Ok((cfg, own + 1))
        })?;
        self.out.own += own;
        Ok(())
    }

    fn xattr_key(&mut self) -> Result<(), String> {
        let done = self
            .b
            .rewrap_key_file(|blob, ctx| self.rewrap(blob, ctx))
            .map_err(|e| format!("{}: {e}", super::xattr_store::KEY_FILE))?;
        self.out.own += u64::from(done);
        Ok(())
    }

    /// Online, a path the mount renamed or removed since it was listed.
    fn moved(&self, e: &std::io::Error) -> bool {
        self.gate.is_some() && e.raw_os_error() == Some(libc::ENOENT)
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
