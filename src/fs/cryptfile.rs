//! Random-access reads and writes of one encrypted file through its backing
//! file descriptor: only the blocks a request touches are read, decrypted,
//! re-encrypted and written, each request in one pread/pwrite.
//!
//! Callers serialise writers per file (see `ops`); readers may run alongside
//! each other.

use super::format::{self, BLOCK_SIZE, BlockError, DISK_BLOCK, FileId, Header, Slot};
use crate::crypto::{AeadKey, Key256, NONCE_LEN};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use zeroize::Zeroizing;

/// An integrity failure: the read fails with EIO and the reason is logged.
pub fn integrity_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// What `finish_interrupted` found at the end of the file.
#[derive(Debug, PartialEq, Eq)]
pub enum LastBlock {
    /// It authenticates (now): the failure was elsewhere, or another
    /// thread finished the repair first.
    Intact,
    /// It was an interrupted shrink, now finished: the file's new size.
    Finished(u64),
    /// It was the torn end of a write that extended the file, cut off: the
    /// file's new size (see `finish_interrupted`).
    TornWrite(u64),
    /// It fails and is neither.
    Damaged,
}

/// The kernel copies a buffered write into the page cache a page (or a
/// larger folio) at a time and stops between pages when the writer gets a
/// fatal signal, so a SIGKILLed daemon leaves a write torn at a multiple of
/// this, never elsewhere (an OOM kill or `kill -9` of the daemon, measured:
/// a few in 1,000 kills of a process writing 10 KB at a time).
const TEAR_ALIGN: u64 = 4096;

pub struct CryptFile {
    pub fd: File,
    pub header_size: usize,
    pub file_id: FileId,
    key: AeadKey,
}

pub fn read_header(fd: &File, header_size: usize) -> io::Result<Header> {
    let mut raw = vec![0u8; header_size];
    let n = read_full_at(fd, &mut raw, 0)?;
    format::decode_header(header_size, &raw[..n])
        .map_err(|e| integrity_error(format!("bad header: {e}")))
}

/// Writes a whole new header (file creation).
pub fn write_new_header(
    fd: &File,
    header_size: usize,
    file_id: FileId,
    blob: Vec<u8>,
) -> io::Result<()> {
    fd.write_all_at(&new_header(header_size, file_id, blob), 0)
}

/// The bytes of a new file's header: its one slot holds `blob`.
pub fn new_header(header_size: usize, file_id: FileId, blob: Vec<u8>) -> Vec<u8> {
    let h = Header {
        file_id,
        slots: [Some(Slot { seq: 1, blob }), None],
    };
    format::encode_header(header_size, &h)
}

/// Writes one key slot in place. The slot is kmsfs's bookkeeping (a rename
/// re-wraps it), not a change of the file's content: its access and
/// modification times are put back, so `rsync -a` and make see the same
/// file after a rename of it or of a directory above it. (Only ctime,
/// which no one can set, moves, as it does for a rename on ext4.)
pub fn write_slot(
    fd: &File,
    header_size: usize,
    file_id: &FileId,
    index: usize,
    slot: Option<&Slot>,
) -> io::Result<()> {
    let before = crate::fs::stat::fstat(fd)?;
    let raw = format::encode_slot(header_size, file_id, slot);
    fd.write_all_at(&raw, format::slot_offset(header_size, index) as u64)?;
    let times = crate::fs::stat::times_of(&before);
    // SAFETY: futimens on a descriptor we own, with two valid timespecs.
    if unsafe { libc::futimens(std::os::unix::io::AsRawFd::as_raw_fd(fd), times.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn read_full_at(fd: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match fd.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl CryptFile {
    pub fn new(fd: File, header_size: usize, file_id: FileId, data_key: &Key256) -> Self {
        let key = AeadKey::new(&format::content_key(data_key, &file_id));
        CryptFile {
            fd,
            header_size,
            file_id,
            key,
        }
    }

    pub fn plain_size(&self) -> io::Result<u64> {
        Ok(format::plain_size(
            self.header_size,
            self.fd.metadata()?.len(),
        ))
    }

    fn block_err(&self, block: u64, e: BlockError) -> io::Error {
        integrity_error(match e {
            BlockError::Truncated => format!("block {block} is truncated"),
            BlockError::Corrupt => {
                format!("block {block} failed authentication (modified, moved or swapped)")
            }
        })
    }

    /// Reads plaintext `off..off+len` into `buf` (reused across calls: no
    /// allocation or page faults per request) and returns where in `buf` it
    /// is. Blocks are decrypted in place, on two threads for large reads,
    /// then packed together.
    pub fn read_into(
        &self,
        off: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<std::ops::Range<usize>> {
        let disk_len = self.fd.metadata()?.len();
        let size = format::plain_size(self.header_size, disk_len);
        if off >= size || len == 0 {
            return Ok(0..0);
        }
        let end = (off + len as u64).min(size);
        let bs = BLOCK_SIZE as u64;
        let (first, last) = (off / bs, (end - 1) / bs);
        let start = format::block_offset(self.header_size, first);
        let stop = format::block_offset(self.header_size, last + 1).min(disk_len);
        let n = (stop - start) as usize;
        buf.clear();
        buf.resize(n, 0);
        if read_full_at(&self.fd, buf, start)? < n {
            return Err(integrity_error("file shrank while being read".into()));
        }
        let open_range = |chunks: &mut [u8], b0: u64| -> io::Result<()> {
            for (i, chunk) in chunks.chunks_mut(DISK_BLOCK).enumerate() {
                let b = b0 + i as u64;
                format::open_block_in_place(&self.key, &self.file_id, b, chunk)
                    .map_err(|e| self.block_err(b, e))?;
            }
            Ok(())
        };
        let nblocks = n.div_ceil(DISK_BLOCK);
        if nblocks >= 64 {
            let half = nblocks / 2;
            let (a, b) = buf.split_at_mut(half * DISK_BLOCK);
            std::thread::scope(|sc| {
                let t = sc.spawn(|| open_range(b, first + half as u64));
                let ra = open_range(a, first);
                let rb = t.join().expect("decrypt thread");
                ra.and(rb)
            })?;
        } else {
            open_range(buf, first)?;
        }
        // Pack the plaintexts (each after its 12-byte nonce) together.
        let mut w = 0;
        for i in 0..nblocks {
            let cstart = i * DISK_BLOCK;
            let clen = (n - cstart).min(DISK_BLOCK) - format::BLOCK_OVERHEAD;
            buf.copy_within(
                cstart + crate::crypto::NONCE_LEN..cstart + crate::crypto::NONCE_LEN + clen,
                w,
            );
            w += clen;
        }
        let lo = (off - first * bs) as usize;
        let hi = (end - first * bs) as usize;
        if w < hi {
            return Err(integrity_error("file is shorter than its size says".into()));
        }
        Ok(lo..hi)
    }

    /// Completes what a crash interrupted, if that is why the last block
    /// fails, and says which it was:
    /// - a shrink: cuts the file after the prefix of that block that
    ///   authenticates (see `format::authentic_prefix`);
    /// - a write that extended the file, torn by the kernel at a page
    ///   boundary when the daemon was killed: the file ends at a multiple of
    ///   `TEAR_ALIGN` inside its last block and the block before it opens;
    ///   cuts the torn block off. Those bytes were never acknowledged (the
    ///   daemon died before it answered the write), and a cut at a block
    ///   boundary is one the format cannot detect anyway, so an attacker
    ///   gains nothing an ordinary truncate does not give.
    ///
    /// Called only after an operation failed with an integrity error; the
    /// caller retries it unless this says `Damaged`.
    pub fn finish_interrupted(&self) -> io::Result<LastBlock> {
        self.interrupted(true)
    }

    /// What `finish_interrupted` would find; it cuts only if `cut` (fsck
    /// without --repair looks).
    pub fn interrupted(&self, cut: bool) -> io::Result<LastBlock> {
        let disk_len = self.fd.metadata()?.len();
        let size = format::plain_size(self.header_size, disk_len);
        if size == 0 {
            return Ok(LastBlock::Damaged);
        }
        let b = (size - 1) / BLOCK_SIZE as u64;
        let start = format::block_offset(self.header_size, b);
        let mut disk = Zeroizing::new(vec![0u8; (disk_len - start) as usize]);
        if read_full_at(&self.fd, &mut disk, start)? < disk.len() {
            return Ok(LastBlock::Intact);
        }
        let probe = disk.clone();
        if format::open_block_in_place(&self.key, &self.file_id, b, &mut disk).is_ok() {
            return Ok(LastBlock::Intact);
        }
        if let Some(n) = format::authentic_prefix(&self.key, &self.file_id, b, &probe) {
            if cut {
                self.fd.set_len(start + n as u64)?;
            }
            return Ok(LastBlock::Finished(
                b * BLOCK_SIZE as u64 + (n - format::BLOCK_OVERHEAD) as u64,
            ));
        }
        let before_opens = || match self.block_plain(b - 1, size) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(false),
            Err(e) => Err(e),
        };
        if disk_len.is_multiple_of(TEAR_ALIGN) && (b == 0 || before_opens()?) {
            if cut {
                self.fd.set_len(start)?;
            }
            return Ok(LastBlock::TornWrite(b * BLOCK_SIZE as u64));
        }
        Ok(LastBlock::Damaged)
    }

    pub fn read_at(&self, off: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        let r = self.read_into(off, len, &mut buf)?;
        buf.truncate(r.end);
        buf.drain(..r.start);
        Ok(buf)
    }

    /// Plaintext of block `b` as it is now (empty beyond the end).
    /// One block's plaintext, for a read-modify-write. Zeroized on drop, in
    /// buffers sized up front so no reallocation leaves a copy behind.
    fn block_plain(&self, b: u64, size: u64) -> io::Result<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(Vec::with_capacity(BLOCK_SIZE));
        let start = b * BLOCK_SIZE as u64;
        if start >= size {
            return Ok(out);
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(DISK_BLOCK));
        let r = self.read_into(start, BLOCK_SIZE, &mut buf)?;
        out.extend_from_slice(&buf[r]);
        Ok(out)
    }

    fn seal_into(&self, b: u64, plain: &[u8], out: &mut Vec<u8>) {
        let nonce = crate::crypto::random::array::<NONCE_LEN>();
        format::seal_block(&self.key, &self.file_id, b, plain, &nonce, out);
    }

    /// Re-encrypts the last block, if partial, padded with zeros to `to_len`
    /// bytes: needed before the file grows past it, since only the last block
    /// may be short.
    fn pad_last_block(&self, size: u64, to_len: usize) -> io::Result<()> {
        let bs = BLOCK_SIZE as u64;
        if size.is_multiple_of(bs) {
            return Ok(());
        }
        let b = size / bs;
        let mut plain = self.block_plain(b, size)?;
        if plain.len() >= to_len {
            return Ok(());
        }
        plain.resize(to_len, 0);
        let mut out = Vec::with_capacity(DISK_BLOCK);
        self.seal_into(b, &plain, &mut out);
        self.fd
            .write_all_at(&out, format::block_offset(self.header_size, b))
    }

    /// Reserves the backing blocks of `from..to` before anything there is
    /// rewritten: on a full disk the write then fails with ENOSPC before it
    /// has touched a byte, instead of tearing a block that held data the
    /// caller already had acknowledged (a re-encrypted last block, say).
    /// FALLOC_FL_KEEP_SIZE: the size changes only with the write itself.
    /// Backing filesystems without fallocate go on as before.
    fn reserve(&self, from: u64, to: u64) -> io::Result<()> {
        match self.fallocate_backing(libc::FALLOC_FL_KEEP_SIZE, from, to) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS)) => Ok(()),
            other => other,
        }
    }

    /// What a write of `off..end` rewrites on disk, when that needs space:
    /// anything past the end, or anything in a sparse file (holes).
    fn reserve_for(&self, meta: &std::fs::Metadata, from: u64, to: u64) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let len = meta.len();
        if meta.blocks() * 512 < len {
            self.reserve(from, to)
        } else {
            self.reserve(len.max(from), to)
        }
    }

    pub fn write_at(&self, off: u64, data: &[u8]) -> io::Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let bs = BLOCK_SIZE as u64;
        let meta = self.fd.metadata()?;
        let mut disk_len = meta.len();
        let size = format::plain_size(self.header_size, disk_len);
        let end = off + data.len() as u64;
        let (first, last) = (off / bs, (end - 1) / bs);
        // What this write rewrites, and only that (holes stay holes): the
        // old partial last block when the write starts past it (it is
        // padded below), and the blocks written.
        if !size.is_multiple_of(bs) && size / bs < first {
            let b = size / bs;
            self.reserve_for(
                &meta,
                format::block_offset(self.header_size, b),
                format::block_offset(self.header_size, b + 1),
            )?;
        }
        self.reserve_for(
            &meta,
            format::block_offset(self.header_size, first),
            format::block_offset(self.header_size, last + 1)
                .min(format::disk_size(self.header_size, end.max(size))),
        )?;
        if !size.is_multiple_of(bs) && size / bs < first {
            self.pad_last_block(size, BLOCK_SIZE)?;
            disk_len = self.fd.metadata()?.len();
        }
        let size = format::plain_size(self.header_size, disk_len);
        let mut out = Vec::with_capacity(((last - first + 1) as usize) * DISK_BLOCK);
        let mut consumed = 0usize;
        // One getrandom call for every block's nonce, not one per block.
        let mut nonces = vec![0u8; ((last - first + 1) as usize) * NONCE_LEN];
        crate::crypto::random::fill(&mut nonces);
        for b in first..=last {
            let nonce: &[u8; NONCE_LEN] = nonces[((b - first) as usize) * NONCE_LEN..][..NONCE_LEN]
                .try_into()
                .expect("12 bytes");
            let bstart = b * bs;
            let existing = size.saturating_sub(bstart).min(bs) as usize;
            let wlo = (off.max(bstart) - bstart) as usize;
            let whi = (end.min(bstart + bs) - bstart) as usize;
            let piece = &data[consumed..consumed + (whi - wlo)];
            consumed += whi - wlo;
            if wlo == 0 && whi >= existing {
                format::seal_block(&self.key, &self.file_id, b, piece, nonce, &mut out);
                continue;
            }
            let mut plain = self.block_plain(b, size)?;
            if plain.len() < whi {
                plain.resize(whi, 0);
            }
            plain[wlo..whi].copy_from_slice(piece);
            format::seal_block(&self.key, &self.file_id, b, &plain, nonce, &mut out);
        }
        self.fd
            .write_all_at(&out, format::block_offset(self.header_size, first))?;
        Ok(data.len())
    }

    pub fn truncate(&self, new: u64) -> io::Result<()> {
        let bs = BLOCK_SIZE as u64;
        let disk_len = self.fd.metadata()?.len();
        let size = format::plain_size(self.header_size, disk_len);
        if new == size {
            // Also cuts an invalid trailing fragment.
            if disk_len != format::disk_size(self.header_size, new) {
                self.fd.set_len(format::disk_size(self.header_size, new))?;
            }
            return Ok(());
        }
        if new < size {
            let r = (new % bs) as usize;
            if r != 0 {
                let b = new / bs;
                let mut plain = self.block_plain(b, size)?;
                // Whole blocks after b go first, so that b is the last block
                // when its shorter form is written over it: a crash before
                // the final cut then leaves a last block whose prefix
                // authenticates, which `finish_interrupted` finishes.
                let after = format::block_offset(self.header_size, b + 1);
                if after < disk_len {
                    self.fd.set_len(after)?;
                }
                plain.truncate(r);
                let mut out = Vec::with_capacity(DISK_BLOCK);
                self.seal_into(b, &plain, &mut out);
                self.fd
                    .write_all_at(&out, format::block_offset(self.header_size, b))?;
            }
            return self.fd.set_len(format::disk_size(self.header_size, new));
        }
        // Grow: the old last block is padded (to the new end if that falls in
        // it); a new partial last block is written as encrypted zeros; whole
        // blocks in between stay holes. Both are reserved first (see reserve).
        let old_last = size / bs;
        let meta = self.fd.metadata()?;
        self.reserve_for(
            &meta,
            format::block_offset(self.header_size, old_last),
            format::block_offset(self.header_size, old_last + 1)
                .min(format::disk_size(self.header_size, new)),
        )?;
        self.reserve(
            format::block_offset(self.header_size, new / bs),
            format::disk_size(self.header_size, new),
        )?;
        if !size.is_multiple_of(bs) {
            let to = if new / bs == old_last {
                (new % bs) as usize
            } else {
                BLOCK_SIZE
            };
            self.pad_last_block(size, to)?;
        }
        let b = new / bs;
        if !new.is_multiple_of(bs) && b * bs >= size {
            let zeros = vec![0u8; (new % bs) as usize];
            let mut out = Vec::with_capacity(DISK_BLOCK);
            self.seal_into(b, &zeros, &mut out);
            self.fd
                .write_all_at(&out, format::block_offset(self.header_size, b))?;
        }
        self.fd.set_len(format::disk_size(self.header_size, new))
    }
}

/// fallocate(2) modes kmsfs implements; the kernel refuses the others
/// (collapse, insert, unshare) before asking, and so does `allocate`.
pub const FALLOCATE_MODES: i32 =
    libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;

impl CryptFile {
    /// fallocate(2) on the plaintext range `off..off+len`. Mode 0 and
    /// KEEP_SIZE reserve the backing blocks (the range reads as it did, or
    /// as zeros past the end) and mode 0 grows the size; PUNCH_HOLE and
    /// ZERO_RANGE zero the range: edge blocks are re-encrypted with zeros
    /// in their part of it, whole blocks become holes (all-zero blocks,
    /// which read as zeros), and ZERO_RANGE keeps their space allocated.
    /// Space is reserved before anything changes, so ENOSPC leaves the file
    /// as it was.
    pub fn allocate(&self, off: u64, len: u64, mode: i32) -> io::Result<()> {
        if mode & !FALLOCATE_MODES != 0
            || (mode & libc::FALLOC_FL_PUNCH_HOLE != 0
                && mode & (libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                    != libc::FALLOC_FL_KEEP_SIZE)
        {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let end = off
            .checked_add(len)
            .filter(|&e| e <= i64::MAX as u64 && len > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let bs = BLOCK_SIZE as u64;
        let hs = self.header_size;
        let size = self.plain_size()?;
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        // What the file's blocks will span, reserved first.
        let new_size = if keep { size } else { size.max(end) };
        if !punch {
            self.fallocate_backing(
                libc::FALLOC_FL_KEEP_SIZE,
                format::block_offset(hs, off / bs),
                format::block_offset(hs, end.div_ceil(bs)),
            )?;
            if new_size > size {
                // The old partial last block is padded; blocks in between
                // stay holes over the reserved space.
                self.truncate(new_size)?;
            }
        }
        if !(punch || zero) {
            return Ok(());
        }
        // Zero `off..end` within the file (past the end reads as zeros
        // already).
        let (zs, ze) = (off, end.min(new_size));
        if zs >= ze {
            return Ok(());
        }
        let size = new_size;
        let (first, last) = (zs / bs, (ze - 1) / bs);
        let whole = |b: u64| zs <= b * bs && ze >= (b + 1) * bs;
        let mut out = Vec::with_capacity(DISK_BLOCK);
        // The edge blocks, where the range covers part of a block (or all
        // of a short last block, which cannot be a hole): re-encrypted.
        let edges = if first == last {
            vec![first]
        } else {
            vec![first, last]
        };
        for b in edges.into_iter().filter(|&b| !whole(b)) {
            let mut plain = self.block_plain(b, size)?;
            let lo = (zs.max(b * bs) - b * bs) as usize;
            let hi = ((ze - b * bs).min(bs) as usize).min(plain.len());
            if lo < hi {
                plain[lo..hi].fill(0);
                out.clear();
                self.seal_into(b, &plain, &mut out);
                self.fd.write_all_at(&out, format::block_offset(hs, b))?;
            }
        }
        let (w0, w1) = (zs.div_ceil(bs), ze / bs);
        if w0 < w1 {
            let (from, to) = (format::block_offset(hs, w0), format::block_offset(hs, w1));
            let flags = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            match self.fallocate_backing(flags, from, to) {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    // No hole punching below: zeros written are a hole too.
                    let zeros = vec![0u8; DISK_BLOCK];
                    for b in w0..w1 {
                        self.fd.write_all_at(&zeros, format::block_offset(hs, b))?;
                    }
                }
                other => other?,
            }
            if zero {
                self.fallocate_backing(libc::FALLOC_FL_KEEP_SIZE, from, to)?;
            }
        }
        Ok(())
    }

    /// fallocate on the backing file, the caller's request: unlike
    /// `reserve`, a backing filesystem without it says so (EOPNOTSUPP).
    fn fallocate_backing(&self, mode: i32, from: u64, to: u64) -> io::Result<()> {
        if to <= from {
            return Ok(());
        }
        let mode = if mode == 0 {
            libc::FALLOC_FL_KEEP_SIZE
        } else {
            mode
        };
        // SAFETY: fallocate on an open descriptor with a valid range.
        let r = unsafe {
            libc::fallocate(
                std::os::unix::io::AsRawFd::as_raw_fd(&self.fd),
                mode,
                from as libc::off_t,
                (to - from) as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const H: usize = format::DEFAULT_HEADER_SIZE;

    fn new_file() -> (tempfile::NamedTempFile, CryptFile) {
        let t = tempfile::NamedTempFile::new().unwrap();
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.path())
            .unwrap();
        write_new_header(&fd, H, [4; 16], vec![1; 99]).unwrap();
        let cf = CryptFile::new(fd, H, [4; 16], &Key256::from_bytes([8; 32]));
        (t, cf)
    }

    /// The state a crash leaves between a shrink's write of the shorter
    /// last block and its cut: made from a real truncate by putting back
    /// the old block's tail after it.
    fn interrupted_shrink(from: usize, to: u64) -> (tempfile::NamedTempFile, CryptFile, Vec<u8>) {
        let (t, f) = new_file();
        let data: Vec<u8> = (0..from).map(|i| (i * 7 % 251) as u8).collect();
        f.write_at(0, &data).unwrap();
        let b = to / BLOCK_SIZE as u64;
        let start = format::block_offset(H, b);
        let old = std::fs::read(t.path()).unwrap()[start as usize..].to_vec();
        f.truncate(to).unwrap();
        let short = (f.fd.metadata().unwrap().len() - start) as usize;
        f.fd.write_all_at(&old[short..old.len().min(DISK_BLOCK)], start + short as u64)
            .unwrap();
        (t, f, data)
    }

    #[test]
    fn a_shrink_cut_short_by_a_crash_is_finished_and_reads_as_truncated() {
        for (from, to) in [(10_000, 5_000), (10_000, 8_193), (3_000, 1_000), (4_096, 1)] {
            let (_t, f, data) = interrupted_shrink(from, to);
            let err = f.read_at(0, from).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{from} -> {to}");
            assert_eq!(f.finish_interrupted().unwrap(), LastBlock::Finished(to));
            assert_eq!(f.plain_size().unwrap(), to);
            assert_eq!(f.read_at(0, from).unwrap(), &data[..to as usize]);
            assert_eq!(f.finish_interrupted().unwrap(), LastBlock::Intact);
        }
    }

    /// A write that extended the file, torn where the kernel stops copying
    /// a buffered write when its writer is killed (a page boundary): the
    /// torn block is cut off, the blocks before it read whole.
    #[test]
    fn an_extending_write_torn_at_a_page_boundary_is_cut_back_to_its_whole_blocks() {
        let data: Vec<u8> = (0..20_000).map(|i| (i * 13 % 251) as u8).collect();
        // (bytes first written, disk length the tear leaves, size after).
        for (before, torn_at, kept) in [
            (0, 4_096, 0),
            (0, 8_192, 4_096),
            (0, 16_384, 12_288),
            (5_000, 8_192, 4_096),
            (4_096, 12_288, 8_192),
        ] {
            let (t, f) = new_file();
            f.write_at(0, &data[..before]).unwrap();
            f.write_at(before as u64, &data[before..]).unwrap();
            f.fd.set_len(torn_at).unwrap();
            let err = f.read_at(0, data.len()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{before} {torn_at}");
            assert_eq!(
                f.interrupted(false).unwrap(),
                LastBlock::TornWrite(kept),
                "fsck's look changes nothing"
            );
            assert_eq!(std::fs::metadata(t.path()).unwrap().len(), torn_at);
            assert_eq!(f.finish_interrupted().unwrap(), LastBlock::TornWrite(kept));
            assert_eq!(f.plain_size().unwrap(), kept);
            assert_eq!(f.read_at(0, data.len()).unwrap(), &data[..kept as usize]);
            if kept > 0 {
                assert_eq!(f.finish_interrupted().unwrap(), LastBlock::Intact);
            }
            // And it takes writes again.
            f.write_at(kept, b"more").unwrap();
            assert_eq!(&f.read_at(kept, 10).unwrap(), b"more");
        }
    }

    /// A cut that is no page-aligned tear, or one behind a block that does
    /// not open either, is damage: reported, never cut.
    #[test]
    fn a_cut_a_kill_cannot_leave_is_damage_and_is_left_as_it_is() {
        let data = vec![3u8; 20_000];
        let (t, f) = new_file();
        f.write_at(0, &data).unwrap();
        f.fd.set_len(8_000).unwrap();
        assert_eq!(f.finish_interrupted().unwrap(), LastBlock::Damaged);
        assert_eq!(std::fs::metadata(t.path()).unwrap().len(), 8_000);
        let (t, f) = new_file();
        f.write_at(0, &data).unwrap();
        f.fd.set_len(12_288).unwrap();
        // Block 1 (before the torn block 2) flipped.
        f.fd.write_all_at(&[0xee], format::block_offset(H, 1) + 100)
            .unwrap();
        assert_eq!(f.finish_interrupted().unwrap(), LastBlock::Damaged);
        assert_eq!(std::fs::metadata(t.path()).unwrap().len(), 12_288);
    }

    #[test]
    fn a_damaged_last_block_is_no_interrupted_shrink_and_is_left_as_it_is() {
        let (t, f, _) = interrupted_shrink(10_000, 5_000);
        let len = f.fd.metadata().unwrap().len();
        // The shorter block's tag flipped: no prefix authenticates.
        let tag_at = format::block_offset(H, 1) + (5_000 - 4_096) as u64 + 12;
        f.fd.write_all_at(&[0xff], tag_at).unwrap();
        assert_eq!(f.finish_interrupted().unwrap(), LastBlock::Damaged);
        assert_eq!(std::fs::metadata(t.path()).unwrap().len(), len);
        // A block sealed for another position does not pass either.
        let (t, f, _) = interrupted_shrink(10_000, 5_000);
        let raw = std::fs::read(t.path()).unwrap();
        let b1 = format::block_offset(H, 1) as usize;
        f.fd.write_all_at(&raw[b1..], format::block_offset(H, 0))
            .unwrap();
        f.fd.set_len(b1 as u64).unwrap();
        assert_eq!(f.finish_interrupted().unwrap(), LastBlock::Damaged);
    }

    #[derive(Debug, Clone)]
    enum Action {
        Write(u64, Vec<u8>),
        Truncate(u64),
        Allocate(u64, u64, i32),
    }

    const MODES: [i32; 5] = [
        0,
        libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        libc::FALLOC_FL_ZERO_RANGE,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
    ];

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            (
                0u64..20_000,
                proptest::collection::vec(any::<u8>(), 1..9000)
            )
                .prop_map(|(o, d)| Action::Write(o, d)),
            (0u64..25_000).prop_map(Action::Truncate),
            (0u64..20_000, 1u64..12_000, 0usize..MODES.len())
                .prop_map(|(o, l, m)| Action::Allocate(o, l, MODES[m])),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]
        /// Any sequence of writes, truncates and fallocates reads back like
        /// a plain byte vector.
        #[test]
        fn behaves_like_a_byte_vector(actions in proptest::collection::vec(action(), 1..12)) {
            let (_t, f) = new_file();
            let mut model: Vec<u8> = vec![];
            for a in actions {
                match a {
                    Action::Write(o, d) => {
                        f.write_at(o, &d).unwrap();
                        let end = o as usize + d.len();
                        if model.len() < end { model.resize(end, 0); }
                        model[o as usize..end].copy_from_slice(&d);
                    }
                    Action::Truncate(n) => {
                        f.truncate(n).unwrap();
                        model.resize(n as usize, 0);
                    }
                    Action::Allocate(o, l, mode) => {
                        f.allocate(o, l, mode).unwrap();
                        let (o, end) = (o as usize, (o + l) as usize);
                        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && model.len() < end {
                            model.resize(end, 0);
                        }
                        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                            let e = end.min(model.len());
                            if o < e {
                                model[o..e].fill(0);
                            }
                        }
                    }
                }
                prop_assert_eq!(f.plain_size().unwrap(), model.len() as u64);
                let all = f.read_at(0, model.len() + 10).unwrap();
                prop_assert_eq!(&all, &model);
            }
            let mid = f.read_at(4000, 300).unwrap();
            let want: Vec<u8> = model.iter().skip(4000).take(300).copied().collect();
            prop_assert_eq!(mid, want);
        }
    }

    #[test]
    fn punched_whole_blocks_free_their_space_and_zero_range_keeps_it() {
        use std::os::unix::fs::MetadataExt;
        let (t, f) = new_file();
        let bs = BLOCK_SIZE as u64;
        f.write_at(0, &vec![9u8; 64 * BLOCK_SIZE]).unwrap();
        let blocks = || std::fs::metadata(t.path()).unwrap().blocks() * 512;
        let full = blocks();
        let flags = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        f.allocate(100, 40 * bs, flags).unwrap();
        assert!(blocks() < full - 30 * bs, "{} of {full} bytes", blocks());
        let got = f.read_at(0, 64 * BLOCK_SIZE).unwrap();
        assert!(got[..100].iter().all(|&b| b == 9));
        assert!(got[100..100 + 40 * BLOCK_SIZE].iter().all(|&b| b == 0));
        assert!(got[100 + 40 * BLOCK_SIZE..].iter().all(|&b| b == 9));
        f.allocate(0, 64 * bs, libc::FALLOC_FL_ZERO_RANGE).unwrap();
        assert!(
            blocks() >= full - 2 * bs,
            "ZERO_RANGE keeps the space allocated"
        );
        assert!(
            f.read_at(0, 64 * BLOCK_SIZE)
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );
        // Mode 0 past the end: the size grows and the space is there.
        f.allocate(64 * bs, 64 * bs, 0).unwrap();
        assert_eq!(f.plain_size().unwrap(), 128 * bs);
        assert!(blocks() >= 2 * full - 4 * bs);
        for bad in [libc::FALLOC_FL_PUNCH_HOLE, libc::FALLOC_FL_COLLAPSE_RANGE] {
            let e = f.allocate(0, bs, bad).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP), "mode {bad:#x}");
        }
    }

    #[test]
    fn holes_stay_holes() {
        let (t, f) = new_file();
        f.write_at(100 * BLOCK_SIZE as u64, b"end").unwrap();
        let meta = std::fs::metadata(t.path()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < 64 * 1024,
            "sparse: {} blocks",
            meta.blocks()
        );
        assert_eq!(f.read_at(5 * BLOCK_SIZE as u64, 10).unwrap(), vec![0; 10]);
        f.truncate(1 << 30).unwrap();
        assert!(std::fs::metadata(t.path()).unwrap().blocks() * 512 < 64 * 1024);
        assert_eq!(f.plain_size().unwrap(), 1 << 30);
    }

    #[test]
    fn corruption_is_an_error_not_garbage() {
        let (t, f) = new_file();
        f.write_at(0, &vec![7u8; 10_000]).unwrap();
        let raw = std::fs::OpenOptions::new()
            .write(true)
            .open(t.path())
            .unwrap();
        // Flip a byte (writing a fixed value left it unchanged 1 time in 256).
        let at = (H + DISK_BLOCK + 100) as u64;
        let mut b = [0u8];
        std::fs::File::open(t.path())
            .unwrap()
            .read_exact_at(&mut b, at)
            .unwrap();
        raw.write_all_at(&[b[0] ^ 0xff], at).unwrap();
        assert!(f.read_at(0, 100).is_ok(), "block 0 is intact");
        let e = f.read_at(DISK_BLOCK as u64, 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // Truncated mid-block: the torn tail fails, the blocks before read.
        raw.set_len((H + 2 * DISK_BLOCK + 10) as u64).unwrap();
        assert_eq!(f.plain_size().unwrap(), 2 * BLOCK_SIZE as u64 + 1);
        assert_eq!(
            f.read_at(2 * BLOCK_SIZE as u64, 1).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert!(f.read_at(0, 100).is_ok());
    }
}
