//! The audit trail: one JSON line per state change in `audit.log` in the state directory,
//! fsynced before the change is acknowledged. Each record carries the SHA-256 of the previous
//! line (`prev`) and of itself (`hash`, over `prev` and its own fields), so editing a line breaks
//! that line, and deleting or reordering lines breaks the line now in that place. The log is
//! rotated to `audit.<first seq>.log` when it grows past a limit; the chain continues across
//! files. A torn last line (a crash mid-write) is cut off at open, leaving a verifiable chain.

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
    size: u64,
    max_bytes: u64,
    last_line_hash: String,
    next_seq: u64,
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
        for line in BufReader::new(File::open(&path)?).lines() {
            let rec: Record = serde_json::from_str(&line?)
                .with_context(|| format!("reading {}", path.display()))?;
            if rec.time.as_str() >= since {
                out.push(rec);
            }
        }
    }
    Ok(out)
}

impl AuditLog {
    /// Opens the log in `dir`, cutting off a torn last line, and finds where the chain ends.
    pub fn open(dir: &Path, max_bytes: u64) -> anyhow::Result<Self> {
        let path = dir.join(CURRENT);
        let mut last_line_hash = GENESIS.to_string();
        let mut next_seq = 1;
        // The chain may end in a rotated file when the current one is new.
        for p in files(dir)? {
            let raw = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let mut good = 0usize;
            for line in raw.split_inclusive(|b| *b == b'\n') {
                let complete = line.ends_with(b"\n");
                let body = line.strip_suffix(b"\n").unwrap_or(line);
                match serde_json::from_slice::<Record>(body) {
                    Ok(r) if complete => {
                        last_line_hash = sha256_hex(body);
                        next_seq = r.seq + 1;
                        good += line.len();
                    }
                    _ => break,
                }
            }
            if good < raw.len() {
                if p != path {
                    bail!(
                        "{} is damaged at byte {good}; run `tokenwall audit verify`",
                        p.display()
                    );
                }
                log::warn!(
                    "audit log: cutting a torn last record ({} bytes) left by a crash",
                    raw.len() - good
                );
                let f = OpenOptions::new().write(true).open(&p)?;
                f.set_len(good as u64)?;
                f.sync_all()?;
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
        })
    }

    /// Appends one record and fsyncs it; returns its sequence number.
    pub fn append(&mut self, e: Entry, time: String) -> anyhow::Result<u64> {
        if self.size >= self.max_bytes {
            self.rotate()?;
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
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.size += buf.len() as u64;
        self.last_line_hash = sha256_hex(&line);
        self.next_seq += 1;
        Ok(rec.seq)
    }

    fn rotate(&mut self) -> anyhow::Result<()> {
        let rotated = self
            .dir
            .join(format!("audit.{}.log", self.first_seq_of_current()?));
        std::fs::rename(self.dir.join(CURRENT), &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.dir.join(CURRENT))?;
        File::open(&self.dir)?.sync_all()?;
        self.size = 0;
        Ok(())
    }

    fn first_seq_of_current(&self) -> anyhow::Result<u64> {
        let f = File::open(self.dir.join(CURRENT))?;
        let first = BufReader::new(f)
            .lines()
            .next()
            .transpose()?
            .context("rotating an empty audit log")?;
        Ok(serde_json::from_str::<Record>(&first)?.seq)
    }
}

#[cfg(test)]
mod tests;
