//! `kmsfs audit verify`: checks the whole trail, oldest file first, against
//! the MAC chain, the digests and the keystore's anchor. Names the first
//! problem: an edited, deleted, inserted or reordered record, a rotated file
//! removed, the newest records cut off, the log deleted or replaced with an
//! older copy.

use super::audit_chain::{
    Anchor, DigestHead, Head, TrailEvent, digest_key, digest_signature, line_mac, split_line,
};
use super::audit_trail::{self as trail, TrailFile};
use crate::crypto::Key256;
use std::ffi::OsStr;
use std::fs::File;
use std::io;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file and 1-based line, or `None` for the trail as a whole.
    pub at: Option<(String, u64)>,
    pub what: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    /// Records whose MAC was checked.
    pub records: u64,
    pub digests: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_time: Option<String>,
    /// The newest digest verified: its chainSeq and time.
    pub last_digest: Option<(u64, String)>,
    /// The keystore's anchor, found in the trail as anchored.
    pub anchored: Option<Anchor>,
    pub problem: Option<Problem>,
}

struct Walk<'a> {
    key: &'a Key256,
    dkey: Key256,
    anchor: Option<&'a Anchor>,
    from: u64,
    prev: Option<Head>,
    /// The last digest, once known (a trail read from mid-chain learns it
    /// from the first LogFileStarted or digest).
    digest: Option<DigestHead>,
    prev_file: Option<String>,
    r: Report,
}

/// Verifies the trail of the log `base` beneath `dir`, from record `from`
/// (1: all of it; more when older files were pruned on purpose).
pub fn verify_trail(
    dir: &File,
    base: &OsStr,
    key: &Key256,
    anchor: Option<&Anchor>,
    from: u64,
) -> io::Result<Report> {
    let files = trail::files(dir, base)?;
    let mut w = Walk {
        key,
        dkey: digest_key(key),
        anchor,
        from: from.max(1),
        prev: None,
        digest: None,
        prev_file: None,
        r: Report::default(),
    };
    for (i, f) in files.iter().enumerate() {
        // A file wholly before `from`: the next one starts at or before it.
        if files
            .get(i + 1)
            .and_then(|n| n.first_seq)
            .is_some_and(|s| s <= w.from)
        {
            continue;
        }
        w.r.files += 1;
        if let Err(p) = w.file(dir, f)? {
            w.r.problem = Some(p);
            return Ok(w.r);
        }
        w.prev_file = Some(f.name.to_string_lossy().into_owned());
    }
    if let Some(a) = anchor
        && a.seq >= w.from
        && w.r.last_seq < a.seq
    {
        let what = if w.r.records == 0 {
            format!(
                "the audit log is missing or empty, but the keystore anchors record {} (written by {}): the log was deleted or replaced",
                a.seq, a.time
            )
        } else {
            format!(
                "the newest records were cut off: the keystore anchors record {} (written by {}), but the trail ends at record {}",
                a.seq, a.time, w.r.last_seq
            )
        };
        w.r.problem = Some(Problem { at: None, what });
    }
    Ok(w.r)
}

impl Walk<'_> {
    /// `Ok(Err(problem))` stops the walk there.
    fn file(&mut self, dir: &File, f: &TrailFile) -> io::Result<Result<(), Problem>> {
        let name = f.name.to_string_lossy().into_owned();
        let mut r = trail::reader(trail::open_at(dir, &f.name, libc::O_RDONLY)?)?;
        let mut buf = Vec::with_capacity(4096);
        let mut lineno = 0u64;
        while let Some(whole) = trail::next_line(&mut *r, &mut buf)? {
            lineno += 1;
            let bad = |what: String| {
                Ok(Err(Problem {
                    at: Some((name.clone(), lineno)),
                    what,
                }))
            };
            if !whole {
                return bad(if buf.len() > super::audit_chain::MAX_LINE {
                    "longer than 1 MiB (not a kmsfs record)".into()
                } else {
                    "the last line is incomplete (torn write)".into()
                });
            }
            let Ok(line) = std::str::from_utf8(&buf) else {
                return bad("not UTF-8".into());
            };
            if let Err(what) = self.line(line, lineno == 1) {
                return bad(what);
            }
        }
        Ok(Ok(()))
    }

    fn line(&mut self, line: &str, first_of_file: bool) -> Result<(), String> {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|_| "not a JSON object (edited)".to_string())?;
        let (prefix, seq, mac) = split_line(line).map_err(|e| format!("{e} (edited)"))?;
        if seq < self.from {
            // Before the range asked for: its MAC is taken on trust.
            self.prev = Some(Head { seq, mac });
            return Ok(());
        }
        let event = TrailEvent::parse(&v).transpose()?;
        let prev_mac = match self.prev {
            Some(p) if seq == p.seq + 1 => p.mac,
            Some(p) if first_of_file && seq > p.seq + 1 => {
                return Err(format!(
                    "records {} to {} are missing between {} and this file: a rotated file was removed",
                    p.seq + 1,
                    seq - 1,
                    self.prev_file.as_deref().unwrap_or("?")
                ));
            }
            Some(p) => {
                return Err(format!(
                    "chainSeq is {seq} where {} was expected: a line was deleted, inserted or reordered here",
                    p.seq + 1
                ));
            }
            None if seq == 1 => {
                self.digest = Some(DigestHead::default());
                [0; 32]
            }
            None => {
                if self.from == 1 {
                    return Err(format!(
                        "the trail starts at record {seq}: records 1 to {} are missing (its oldest files were removed, or the log deleted); if they were pruned on purpose, verify with --from-record {seq}",
                        seq - 1
                    ));
                }
                if seq > self.from {
                    return Err(format!(
                        "record {} is not in the trail, which starts at record {seq}",
                        self.from
                    ));
                }
                match &event {
                    Some(TrailEvent::Started { prev, digest }) => {
                        self.digest = Some(*digest);
                        prev.mac
                    }
                    _ => {
                        return Err(format!(
                            "record {seq} does not start a log file, so nothing says where the chain stood before it: verify from the first record of a file"
                        ));
                    }
                }
            }
        };
        if !crate::crypto::ct_eq(&line_mac(self.key, &prev_mac, prefix.as_bytes()), &mac) {
            return Err(if first_of_file && self.prev.is_some() {
                format!(
                    "MAC mismatch: this file does not continue the chain of {}",
                    self.prev_file.as_deref().unwrap_or("?")
                )
            } else {
                "MAC mismatch: this line was edited or forged".into()
            });
        }
        match event {
            Some(TrailEvent::Digest {
                range,
                last_mac,
                prev,
                sig,
                time,
            }) => {
                if let Some(d) = self.digest
                    && (prev != d || range.0 != d.seq + 1)
                {
                    return Err(format!(
                        "the digest does not follow the previous one (record {}): a digest was removed or forged",
                        d.seq
                    ));
                }
                if range.1 + 1 != seq || last_mac != prev_mac {
                    return Err("the digest does not cover the records before it".into());
                }
                let want = digest_signature(&self.dkey, range, &last_mac, &prev.sig, &time);
                if !crate::crypto::ct_eq(&want, &sig) {
                    return Err("the digest's signature is wrong: forged".into());
                }
                self.digest = Some(DigestHead { seq, sig });
                self.r.digests += 1;
                self.r.last_digest = Some((seq, time));
            }
            Some(TrailEvent::Started { prev, digest }) => {
                if prev.seq + 1 != seq || prev.mac != prev_mac {
                    return Err("LogFileStarted does not name the record before it".into());
                }
                if let Some(d) = self.digest
                    && d != digest
                {
                    return Err(format!(
                        "LogFileStarted names digest record {} but the last digest is record {}",
                        digest.seq, d.seq
                    ));
                }
                self.digest = Some(digest);
            }
            None => {}
        }
        if let Some(a) = self.anchor
            && a.seq == seq
        {
            if a.head().map(|h| h.mac) != Some(mac) {
                return Err(format!(
                    "this is not the record the keystore anchors as record {seq} (written by {}): the log was replaced with an older copy, or records were cut and others written after them",
                    a.time
                ));
            }
            self.r.anchored = Some(a.clone());
        }
        if self.r.records == 0 {
            self.r.first_seq = seq;
        }
        self.r.records += 1;
        self.r.last_seq = seq;
        self.r.last_time = v["eventTime"].as_str().map(String::from);
        self.prev = Some(Head { seq, mac });
        Ok(())
    }
}
