//! The audit trail: one JSON line per state change in `audit.log` in the state directory,
//! fsynced before the change is acknowledged. Each record carries the SHA-256 of the previous
//! line (`prev`) and of itself (`hash`, over `prev` and its own fields), so editing a line breaks
//! that line, and deleting or reordering lines breaks the line now in that place. The log is
//! rotated to `audit.<first seq>.log` when it grows past a limit; the chain continues across
//! files. A torn last line (a crash mid-write) is cut off at open, leaving a verifiable chain.
//!
//! Nothing else is ever cut. A damaged line anywhere else is kept as it is: the daemon logs it
//! and keeps appending, chaining from the last line, and [`verify`] reports it (see
//! [`AuditLog::open`]). A failed append is cut back off the file before its error is returned.

use std::{
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use ring::digest;
use serde::{Deserialize, Serialize};

const CURRENT: &str = "audit.log";
/// Rotate the current file past this size.
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// `prev` of the very first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One audit record as written.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// 1, 2, 3… across rotations.
    pub seq: u64,
    /// RFC 3339 time.
    pub time: String,
    /// Who: `uid:N` (control socket), `admin` (HTTP credential), `client:ID`, `system`.
    pub actor: String,
    /// What: `revoke`, `unrevoke`, `revoke_by`, `issue`, `renew`, `reuse_detected`, `keys_add`…
    pub action: String,
    /// Fingerprints (or names of keys, clients, rules) the change concerns; never a token.
    pub subjects: Vec<String>,
    /// Why, when given.
    pub reason: String,
    /// Hex SHA-256 of the previous line.
    pub prev: String,
    /// Hex SHA-256 over `prev` and this record's other fields.
    #[serde(default)]
    pub hash: String,
}

/// What a caller records.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Fingerprints or names.
    pub subjects: Vec<String>,
    /// Why.
    pub reason: String,
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_hex(b: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, b).as_ref())
}

impl Record {
    /// The self-hash: over the record with an empty `hash` field.
    fn compute_hash(&self) -> String {
        let mut r = self.clone();
        r.hash.clear();
        sha256_hex(&serde_json::to_vec(&r).unwrap_or_default())
    }
}

/// The append side.
pub struct AuditLog {
    dir: PathBuf,
    file: File,
    /// Length of the current file up to its last complete line.
    size: u64,
    max_bytes: u64,
    last_line_hash: String,
    next_seq: u64,
    /// Sequence number of the current file's first line (its name once rotated); `None` while
    /// the file is empty.
    first_seq: Option<u64>,
    /// A rotation created the current file but syncing the directory failed: sync it before the
    /// next append, or the file (and what it holds) could vanish in a crash.
    dir_unsynced: bool,
    /// Why appending stopped: a failed append could not be cut back off the file.
    failed: Option<String>,
}

/// Where the chain first breaks.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct Broken {
    /// File name.
    pub file: String,
    /// 1-based line number in that file.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// The audit files of `dir` in chain order: rotated ones by first sequence number, then the
/// current one.
pub fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let seq = name
                .strip_prefix("audit.")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((seq, e.path()))
        })
        .collect();
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    let current = dir.join(CURRENT);
    if current.exists() {
        out.push(current);
    }
    Ok(out)
}

/// Checks the whole chain; returns the number of records.
pub fn verify(dir: &Path) -> anyhow::Result<Result<u64, Broken>> {
    let mut prev = GENESIS.to_string();
    let mut seq = 0u64;
    for path in files(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let reader = BufReader::new(File::open(&path)?);
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line?;
            let broken = |reason: String| Broken {
                file: name.clone(),
                line: i + 1,
                reason,
            };
            let rec: Record = match serde_json::from_slice(&line) {
                Ok(r) => r,
                Err(e) => return Ok(Err(broken(format!("not a record: {e}")))),
            };
            if rec.hash != rec.compute_hash() {
                return Ok(Err(broken(
                    "the record was altered (its hash does not match)".into(),
                )));
            }
            if rec.prev != prev {
                return Ok(Err(broken(
                    "does not follow the previous line (a line was removed, inserted or moved)"
                        .into(),
                )));
            }
            if rec.seq != seq + 1 {
                return Ok(Err(broken(format!("sequence {} after {seq}", rec.seq))));
            }
            prev = sha256_hex(&line);
            seq = rec.seq;
        }
    }
    Ok(Ok(seq))
}

/// Records with `time >= since` (RFC 3339 strings compare in time order when in UTC).
pub fn export(dir: &Path, since: &str) -> anyhow::Result<Vec<Record>> {
    let mut out = Vec::new();
    for path in files(dir)? {
        for (i, line) in BufReader::new(File::open(&path)?).lines().enumerate() {
            let rec: Record = serde_json::from_str(&line?)
                .with_context(|| format!("{}:{}: not an audit record", path.display(), i + 1))?;
            if rec.time.as_str() >= since {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

impl AuditLog {
    /// Opens the log in `dir`, cutting off a torn last line of `audit.log`, and finds where the
    /// chain ends.
    ///
    /// Only the last line of `audit.log` is ever cut, and only when it is torn: it lacks its
    /// newline, or it does not parse and nothing follows it. Any other damaged line (in
    /// `audit.log` or a rotated file) is kept byte for byte and logged as a warning naming the
    /// file and line; the log still opens and new records chain from the hash of the last line,
    /// damaged or not, so the daemon keeps recording changes and `tokenwall audit verify` keeps
    /// reporting the damage (`file:line`). The daemon does not refuse to start over damaged
    /// evidence: enforcement does not depend on the audit trail, and refusing would leave an
    /// operator nothing to do but move the file away, which loses more than it protects.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        let path = dir.join(CURRENT);
        let mut last_line_hash = GENESIS.to_string();
        let mut next_seq = 1;
        let mut first_seq = None;
        // The chain may end in a rotated file when the current one is new.
        for p in files(dir)? {
            let current = p == path;
            let name = p.display();
            let mut raw = std::fs::read(&p).with_context(|| format!("reading {name}"))?;
            if current {
                let torn = torn_tail(&raw);
                if torn > 0 {
                    let keep = raw.len() - torn;
                    log::warn!(
                        "{name}: cutting a torn last line ({torn} bytes at byte {keep}) left by a crash or a failed write; every line before it is kept"
                    );
                    let f = OpenOptions::new()
                        .write(true)
                        .open(&p)
                        .with_context(|| format!("opening {name} to cut its torn last line"))?;
                    f.set_len(keep as u64)
                        .and_then(|()| f.sync_all())
                        .with_context(|| format!("cutting the torn last line of {name}"))?;
                    raw.truncate(keep);
                }
            }
            let mut damaged = Vec::new();
            for (i, line) in raw.split_inclusive(|b| *b == b'\n').enumerate() {
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                match serde_json::from_slice::<Record>(body) {
                    Ok(r) => next_seq = r.seq + 1,
                    Err(e) => {
                        // Counted as one record, so later sequence numbers stay in step.
                        damaged.push(format!("line {}: {e}", i + 1));
                        next_seq += 1;
                    }
                }
                if current && i == 0 {
                    first_seq = Some(next_seq - 1);
                }
                last_line_hash = sha256_hex(body);
            }
            if let Some(first) = damaged.first() {
                log::warn!(
                    "{name}: {} damaged line(s), first {first}; kept as they are (`tokenwall audit verify` reports them), new records continue the chain from the last line",
                    damaged.len()
                );
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let size = file.metadata()?.len();
        Ok(Self {
            dir: dir.to_path_buf(),
            file,
            size,
            max_bytes,
            last_line_hash,
            next_seq,
            first_seq,
            dir_unsynced: false,
            failed: None,
        })
    }

    /// Appends one record and fsyncs it; returns its sequence number. A failed write is cut
    /// back off the file (and that cut fsynced) before the error is returned; if the cut fails
    /// too, every later append fails until the log is reopened.
    pub fn append(&mut self, e: Entry, time: String) -> anyhow::Result<u64> {
        if let Some(reason) = &self.failed {
            bail!(
                "{}: appending is stopped: {reason}",
                self.current().display()
            );
        }
        if self.size >= self.max_bytes {
            self.rotate()?;
        }
        if self.dir_unsynced {
            self.sync_dir()?;
        }
        let mut rec = Record {
            seq: self.next_seq,
            time,
            actor: e.actor,
            action: e.action,
            subjects: e.subjects,
            reason: e.reason,
            prev: self.last_line_hash.clone(),
            hash: String::new(),
        };
        rec.hash = rec.compute_hash();
        let line = serde_json::to_vec(&rec)?;
        let mut buf = line.clone();
        buf.push(b'\n');
        if let Err(err) = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data())
        {
            let path = self.current();
            if let Err(cut) = self
                .file
                .set_len(self.size)
                .and_then(|()| self.file.sync_all())
            {
                let reason = format!(
                    "writing a record failed ({err}) and cutting it back off failed too ({cut}); \
                     the file may end in a partial line, so nothing more is appended until \
                     tokenwall restarts (opening the log cuts a torn last line)"
                );
                log::error!("{}: {reason}", path.display());
                self.failed = Some(reason.clone());
                bail!("{}: {reason}", path.display());
            }
            return Err(anyhow::Error::new(err).context(format!(
                "{}: writing an audit record failed; nothing was written",
                path.display()
            )));
        }
        self.size += buf.len() as u64;
        self.last_line_hash = sha256_hex(&line);
        self.next_seq += 1;
        self.first_seq.get_or_insert(rec.seq);
        Ok(rec.seq)
    }

    fn current(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    fn sync_dir(&mut self) -> anyhow::Result<()> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| {
                format!(
                    "syncing {} after rotating the audit log",
                    self.dir.display()
                )
            })?;
        self.dir_unsynced = false;
        Ok(())
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        let first = self.first_seq.context("rotating an empty audit log")?;
        let rotated = self.dir.join(format!("audit.{first}.log"));
        if rotated.exists() {
            bail!(
                "{} already exists; refusing to overwrite it when rotating the audit log",
                rotated.display()
            );
        }
        std::fs::rename(self.current(), &rotated)
            .with_context(|| format!("rotating the audit log to {}", rotated.display()))?;
        let file = match OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.current())
        {
            Ok(f) => f,
            Err(e) => {
                // Put the file back so the chain stays in one place; appending continues there.
                let back = std::fs::rename(&rotated, self.current());
                return Err(anyhow::Error::new(e).context(format!(
                    "opening a new {} after rotating (moving the old one back: {})",
                    self.current().display(),
                    back.map_or_else(|e| e.to_string(), |()| "done".into())
                )));
            }
        };
        self.file = file;
        self.size = 0;
        self.first_seq = None;
        self.dir_unsynced = true;
        self.sync_dir()
    }
}

/// Bytes at the end of `raw` that are a torn last line: a last line without its newline, or a
/// complete last line that does not parse as a record. Nothing before the last line counts.
fn torn_tail(raw: &[u8]) -> usize {
    if raw.is_empty() {
        return 0;
    }
    let body_end = if raw.ends_with(b"\n") {
        raw.len() - 1
    } else {
        raw.len()
    };
    let start = raw[..body_end]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let complete = body_end < raw.len();
    if complete && serde_json::from_slice::<Record>(&raw[start..body_end]).is_ok() {
        0
    } else {
        raw.len() - start
    }
}

#[cfg(test)]
mod tests;
