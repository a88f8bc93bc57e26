//! The durable revocation store: an append-only log of checksummed records in the state
//! directory, replayed into memory on start and compacted when mostly dead.
//!
//! File `revocations.log`: the 8-byte header `TWREVLG1`, then records of
//! `u32 LE payload length | u32 LE CRC-32 of the payload | payload`, where the payload is one
//! JSON object: `{"op":"revoke","hash":"<16 hex>","expires_at":…,"reason":…,"revoked_at":…,"api_key":…}`
//! or `{"op":"unrevoke","hash":"<16 hex>","reason":…,"at":…}`. Tokens appear only as keyed hashes.
//!
//! Every append is one `write_all` on an `O_APPEND` file followed by `fdatasync`, so a
//! revocation is on disk before it is acknowledged. A crash can leave only the last record torn;
//! replay detects that (short header, short payload, bad CRC at the end, or zero fill), truncates
//! it with a warning and keeps everything before it. Damage followed by more data is not a torn
//! tail: the store refuses to open and leaves the file untouched for an operator to inspect.
//!
//! A failed append (ENOSPC, EIO) is cut back to the last good record and fsynced before the error
//! is returned, so no later append can land after a partial record. If even that fails, the
//! store refuses every change until it is reopened (see [`StoreError::Failed`]). Compaction
//! never leaves appends going to the replaced file. `docs/durability.md` has the whole design.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{self, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 8] = b"TWREVLG1";
const LOG: &str = "revocations.log";
const MAX_PAYLOAD: usize = 64 * 1024;
/// Longest reason text kept.
pub const MAX_REASON: usize = 1024;

/// One live revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Keyed hash of the token.
    #[serde(with = "hex_u64")]
    pub hash: u64,
    /// Unix seconds when it lapses; 0 = never.
    pub expires_at: u64,
    /// Operator's reason.
    pub reason: String,
    /// Unix seconds when it was recorded.
    pub revoked_at: u64,
    /// The token is an API key.
    #[serde(default)]
    pub api_key: bool,
    /// What the hash names: one token, or a JWS header segment (every token of a signing key).
    #[serde(default)]
    pub scope: Scope,
}

/// What a revocation's hash names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One token (or API key).
    #[default]
    Token,
    /// A JWS header segment: every token signed under one `(alg, typ, kid)` header.
    SigningKey,
    /// A rule: the token with this `jti`. The hash is of the name, domain-separated.
    Jti,
    /// A rule: every token of this subject issued at or before `revoked_at`.
    Subject,
    /// A rule: every token of this client issued at or before `revoked_at`.
    Client,
    /// A rule: every token whose header names this `kid` (headers are learned on sight).
    Kid,
}

impl Scope {
    /// Whether entries of this scope live in a kernel map (rules are matched in userspace,
    /// and the tokens they cover are pushed as [`Scope::Token`] entries).
    pub fn in_kernel(self) -> bool {
        matches!(self, Scope::Token | Scope::SigningKey)
    }
}

impl Revocation {
    fn live(&self, now: u64) -> bool {
        self.expires_at == 0 || self.expires_at > now
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Record {
    Revoke(Revocation),
    Unrevoke {
        #[serde(with = "hex_u64")]
        hash: u64,
        reason: String,
        at: u64,
    },
}

pub(crate) mod hex_u64 {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(D::Error::custom)
    }
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// I/O on the log failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not a tokenwall revocation log.
    #[error("{0}: not a tokenwall revocation log (bad header); left untouched")]
    BadHeader(PathBuf),
    /// An append failed; it was cut back off the log, so nothing of it was recorded.
    #[error(
        "{path}: could not record the change: {source}; nothing was recorded (the log was cut back to its last good record)"
    )]
    Append {
        /// The file.
        path: PathBuf,
        /// Why the append failed.
        source: io::Error,
    },
    /// The store refuses changes: an append failed and could not be cut back off the log, or a
    /// compaction replaced the log but could not finish switching to the new file. Everything
    /// acknowledged is kept; reopening the store (restarting the daemon) clears it.
    #[error("{path}: changes are refused: {reason}")]
    Failed {
        /// The file.
        path: PathBuf,
        /// What failed and what clears it.
        reason: String,
    },
    /// Damage that is not a torn tail.
    #[error(
        "{path}: corrupt record at byte {offset} ({reason}) with more data after it; the file was left untouched, inspect or move it aside"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Offset of the bad record.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read.
    pub records: u64,
    /// Live entries after replay.
    pub live: usize,
    /// Entries dropped because they had expired.
    pub expired_dropped: usize,
    /// Bytes of torn tail truncated.
    pub torn_tail_bytes: u64,
}

/// The store: the live set in memory, the log on disk.
pub struct RevocationStore {
    path: PathBuf,
    file: File,
    /// Length of the log up to its last good record (what the file holds when healthy).
    bytes: u64,
    live: HashMap<u64, Revocation>,
    /// Sum of the encoded sizes of the live entries' revoke records (what compaction writes,
    /// less the header), kept current so [`RevocationStore::should_compact`] is O(1).
    live_bytes: u64,
    health: Health,
    faults: Faults,
}

/// Whether the store may append.
#[derive(Debug)]
enum Health {
    Ok,
    /// A failed append could not be cut back off: the log may end in a partial record. Only
    /// reopening (which cuts a torn last record) clears this.
    Broken(String),
    /// Compaction renamed the new log into place, but syncing the directory or opening the new
    /// file failed: `file` still names the replaced (unlinked) log and must not be written.
    /// Each later change retries the switch first.
    Switching(String),
}

/// A file operation of the store, named so that unit tests can make it fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Writing a record (fails with ENOSPC after writing half of it).
    Write,
    /// `fdatasync` after writing a record (EIO).
    Sync,
    /// Cutting a failed append back off the log (EIO).
    Truncate,
    /// Compaction's rename (EIO reported after the rename happened, as over a network).
    Rename,
    /// Syncing the directory after compaction's rename (EIO).
    DirSync,
    /// Opening the new log after compaction's rename (EIO).
    Reopen,
}

/// Failures injected into the store's file operations; empty (and free) outside unit tests.
#[derive(Debug, Default)]
struct Faults {
    /// Each planned operation fails this many more times.
    #[cfg(test)]
    planned: Vec<(Op, u32)>,
}

impl Faults {
    /// Fails if a test planned a failure of `op`.
    fn check(&mut self, op: Op) -> io::Result<()> {
        #[cfg(test)]
        if let Some(slot) = self.planned.iter_mut().find(|(o, n)| *o == op && *n > 0) {
            slot.1 -= 1;
            let errno = if op == Op::Write {
                libc::ENOSPC
            } else {
                libc::EIO
            };
            return Err(io::Error::from_raw_os_error(errno));
        }
        let _ = op;
        Ok(())
    }

    /// `write_all`; a planned `Write` failure writes half of `buf` first, as a full disk does.
    fn write(&mut self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        if let Err(e) = self.check(Op::Write) {
            file.write_all(&buf[..buf.len() / 2])?;
            return Err(e);
        }
        file.write_all(buf)
    }

    /// `rename`; a planned `Rename` failure is reported after the rename happened.
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)?;
        self.check(Op::Rename)
    }
}

fn encode(rec: &Record) -> Vec<u8> {
    let payload = serde_json::to_vec(rec).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn clip(reason: &str) -> String {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_string()
}

/// Encoded size of the revoke record of `r`: what it adds to a compacted log.
fn revoke_len(r: &Revocation) -> u64 {
    encode(&Record::Revoke(r.clone())).len() as u64
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl RevocationStore {
    /// Opens (creating if needed) `dir/revocations.log`, replays it, and truncates a torn tail.
    pub fn open(dir: &Path, now: u64) -> Result<(Self, ReplayReport), StoreError> {
        let path = dir.join(LOG);
        let io_err = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err)?;
        if data.is_empty() {
            file.write_all(MAGIC)
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            sync_dir(dir).map_err(io_err)?;
            data.extend_from_slice(MAGIC);
        } else if data.len() < MAGIC.len() && MAGIC.starts_with(&data) {
            // Crashed while writing the header of a new file.
            file.set_len(0).map_err(io_err)?;
            file.write_all(MAGIC)
                .and_then(|()| file.sync_all())
                .map_err(io_err)?;
            data = MAGIC.to_vec();
        } else if !data.starts_with(MAGIC) {
            return Err(StoreError::BadHeader(path));
        }
        let mut report = ReplayReport::default();
        let mut live = HashMap::new();
        let mut off = MAGIC.len();
        while off < data.len() {
            match parse_record(&data[off..]) {
                Ok((rec, len)) => {
                    report.records += 1;
                    match rec {
                        Record::Revoke(r) => {
                            live.insert(r.hash, r);
                        }
                        Record::Unrevoke { hash, .. } => {
                            live.remove(&hash);
                        }
                    }
                    off += len;
                }
                Err((reason, end)) => {
                    let rest = &data[off..];
                    let torn = end >= rest.len() || rest.iter().all(|&b| b == 0);
                    if !torn {
                        return Err(StoreError::Corrupt {
                            path,
                            offset: off as u64,
                            reason,
                        });
                    }
                    report.torn_tail_bytes = rest.len() as u64;
                    log::warn!(
                        "{}: dropped a torn last record ({} bytes at offset {off}: {reason}); everything before it is kept",
                        path.display(),
                        rest.len()
                    );
                    file.set_len(off as u64)
                        .and_then(|()| file.sync_all())
                        .map_err(io_err)?;
                    data.truncate(off);
                    break;
                }
            }
        }
        let before = live.len();
        live.retain(|_, r| r.live(now));
        report.expired_dropped = before - live.len();
        report.live = live.len();
        let bytes = data.len() as u64;
        let live_bytes = live.values().map(revoke_len).sum();
        Ok((
            Self {
                path,
                file,
                bytes,
                live,
                live_bytes,
                health: Health::Ok,
                faults: Faults::default(),
            },
            report,
        ))
    }

    fn failed(&self, reason: String) -> StoreError {
        StoreError::Failed {
            path: self.path.clone(),
            reason,
        }
    }

    /// Whether a change may be appended now; retries an unfinished compaction switch first.
    fn writable(&mut self) -> Result<(), StoreError> {
        match &self.health {
            Health::Ok => Ok(()),
            Health::Broken(reason) => Err(self.failed(reason.clone())),
            Health::Switching(reason) => {
                let reason = reason.clone();
                match self.switch_to_new_log() {
                    Ok(()) => {
                        log::info!(
                            "{}: the compacted log is open now; changes are accepted again",
                            self.path.display()
                        );
                        self.health = Health::Ok;
                        Ok(())
                    }
                    Err(e) => Err(self.failed(format!("{reason}; retrying failed too: {e}"))),
                }
            }
        }
    }

    /// Appends one record and fsyncs it; returns its encoded length. A failed append is cut
    /// back off the log (and that cut fsynced) before the error is returned; if the cut fails
    /// too, the store refuses every later change until it is reopened.
    fn append(&mut self, rec: &Record) -> Result<u64, StoreError> {
        self.writable()?;
        let buf = encode(rec);
        let written = self
            .faults
            .write(&mut self.file, &buf)
            .and_then(|()| self.faults.check(Op::Sync))
            .and_then(|()| self.file.sync_data());
        let Err(source) = written else {
            self.bytes += buf.len() as u64;
            return Ok(buf.len() as u64);
        };
        // Part of the record may be in the file (a short write) or in the page cache (a failed
        // fsync). Cut the file back to the last good record so nothing can follow garbage.
        let cut = self
            .faults
            .check(Op::Truncate)
            .and_then(|()| self.file.set_len(self.bytes))
            .and_then(|()| self.file.sync_all());
        match cut {
            Ok(()) => Err(StoreError::Append {
                path: self.path.clone(),
                source,
            }),
            Err(cut) => {
                let reason = format!(
                    "writing a record failed ({source}) and cutting it back off the log failed too ({cut}); \
                     the log may end in a partial record, so nothing more is appended until tokenwall \
                     restarts (opening the log cuts a torn last record); everything acknowledged is kept"
                );
                log::error!("{}: {reason}", self.path.display());
                self.health = Health::Broken(reason.clone());
                Err(self.failed(reason))
            }
        }
    }

    /// Records a revocation durably, then applies it. If the hash is already revoked, the later
    /// expiry wins (0 = never counts as latest). Returns whether the hash was newly revoked.
    pub fn revoke(&mut self, mut r: Revocation) -> Result<bool, StoreError> {
        r.reason = clip(&r.reason);
        let existing = self.live.get(&r.hash).cloned();
        if let Some(old) = &existing {
            if old.expires_at == 0 || (r.expires_at != 0 && r.expires_at <= old.expires_at) {
                r.expires_at = old.expires_at;
            }
            if *old == r {
                return Ok(false);
            }
        }
        let len = self.append(&Record::Revoke(r.clone()))?;
        if let Some(old) = self.live.insert(r.hash, r) {
            self.live_bytes -= revoke_len(&old);
        }
        self.live_bytes += len;
        Ok(existing.is_none())
    }

    /// Records an unrevocation durably; returns whether the hash was revoked.
    pub fn unrevoke(&mut self, hash: u64, reason: &str, now: u64) -> Result<bool, StoreError> {
        self.append(&Record::Unrevoke {
            hash,
            reason: clip(reason),
            at: now,
        })?;
        Ok(self.remove(hash))
    }

    /// Drops `hash` from the live set (not from the log); returns whether it was there.
    fn remove(&mut self, hash: u64) -> bool {
        let Some(old) = self.live.remove(&hash) else {
            return false;
        };
        self.live_bytes -= revoke_len(&old);
        true
    }

    /// Drops entries that expired by `now` and returns their hashes (nothing is written:
    /// expiry follows from the stored time).
    pub fn purge_expired(&mut self, now: u64) -> Vec<u64> {
        let gone: Vec<u64> = self
            .live
            .values()
            .filter(|r| !r.live(now))
            .map(|r| r.hash)
            .collect();
        for h in &gone {
            self.remove(*h);
        }
        gone
    }

    /// Live entries.
    pub fn entries(&self) -> impl Iterator<Item = &Revocation> {
        self.live.values()
    }

    /// The live entry for `hash`.
    pub fn get(&self, hash: u64) -> Option<&Revocation> {
        self.live.get(&hash)
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Size of the log file.
    pub fn log_bytes(&self) -> u64 {
        self.bytes
    }

    /// What a compacted log would hold: the header and one revoke record per live entry.
    /// Kept as a running total, so this is O(1).
    pub fn compacted_bytes(&self) -> u64 {
        MAGIC.len() as u64 + self.live_bytes
    }

    /// Whether compaction would pay: the log is over 1 MiB and over twice the live size.
    pub fn should_compact(&self) -> bool {
        self.bytes > 1 << 20 && self.bytes > 2 * self.compacted_bytes()
    }

    /// Rewrites the log with only the live entries: temp file, fsync, rename, fsync directory,
    /// open the new file. Before the rename a failure leaves the old log in use (and removes the
    /// temp file). After it, the old handle names the replaced file and is never written again:
    /// if syncing the directory or opening the new file fails, changes are refused
    /// ([`StoreError::Failed`]) until a later change retries both successfully. Either file holds
    /// every acknowledged entry, so a crash at any step loses nothing.
    pub fn compact(&mut self, now: u64) -> Result<(), StoreError> {
        self.writable()?;
        self.purge_expired(now);
        let dir = self.dir();
        let tmp = dir.join(format!("{LOG}.compact"));
        let io_err = |source| StoreError::Io {
            path: tmp.clone(),
            source,
        };
        let mut buf = MAGIC.to_vec();
        let mut entries: Vec<&Revocation> = self.live.values().collect();
        entries.sort_by_key(|r| (r.revoked_at, r.hash));
        for r in entries {
            buf.extend_from_slice(&encode(&Record::Revoke(r.clone())));
        }
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&buf).and_then(|()| f.sync_all()))
            .and_then(|()| self.faults.rename(&tmp, &self.path));
        if let Err(e) = written {
            if self.path_names_open_log() {
                // The old log is still in place and in use; do not leave a copy on a full disk.
                let _ = std::fs::remove_file(&tmp);
                return Err(io_err(e));
            }
            // The rename happened after all (or nobody can tell): go on as after a rename.
            log::warn!(
                "{}: compaction failed ({e}), but the log was replaced anyway",
                self.path.display()
            );
        }
        // From here the old handle names the replaced file: nothing may be appended to it.
        self.bytes = buf.len() as u64;
        match self.switch_to_new_log() {
            Ok(()) => {
                self.health = Health::Ok;
                Ok(())
            }
            Err(e) => {
                let reason = format!(
                    "compaction replaced the log, but {e}; nothing is appended to the replaced \
                     file, so changes are refused until the new log is open (each change retries; \
                     restarting tokenwall also clears this); everything acknowledged is kept"
                );
                log::error!("{}: {reason}", self.path.display());
                self.health = Health::Switching(reason.clone());
                Err(self.failed(reason))
            }
        }
    }

    /// Whether the log's path still names the file this store appends to.
    fn path_names_open_log(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (std::fs::metadata(&self.path), self.file.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    }

    fn dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The second half of compaction: makes the rename durable, then opens the new log (which
    /// must be exactly what compaction wrote) for appending.
    fn switch_to_new_log(&mut self) -> Result<(), String> {
        self.faults
            .check(Op::DirSync)
            .and_then(|()| sync_dir(&self.dir()))
            .map_err(|e| format!("syncing the directory failed ({e})"))?;
        let file = self
            .faults
            .check(Op::Reopen)
            .and_then(|()| OpenOptions::new().append(true).open(&self.path))
            .map_err(|e| format!("opening the new log failed ({e})"))?;
        let len = file
            .metadata()
            .map_err(|e| format!("reading the new log's size failed ({e})"))?
            .len();
        if len != self.bytes {
            return Err(format!(
                "the new log is {len} bytes, not the {} compaction wrote (was it replaced?)",
                self.bytes
            ));
        }
        self.file = file;
        Ok(())
    }
}

/// Parses one record at the start of `b`: the record and its length, or why it is bad and where
/// the bad record claims to end.
fn parse_record(b: &[u8]) -> Result<(Record, usize), (String, usize)> {
    if b.len() < 8 {
        return Err(("short record header".into(), 8));
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return Err((format!("impossible length {len}"), 8));
    }
    let end = 8 + len;
    let Some(payload) = b.get(8..end) else {
        return Err(("payload runs past the end of the file".into(), end));
    };
    if crc32fast::hash(payload) != crc {
        return Err(("checksum mismatch".into(), end));
    }
    match serde_json::from_slice(payload) {
        Ok(rec) => Ok((rec, end)),
        Err(e) => Err((format!("unreadable record: {e}"), end)),
    }
}

#[cfg(test)]
mod tests;
