//! Small private state files (JSON, mode 0600) replaced atomically and fsynced, and the random
//! and digest helpers the token modules share.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::Path};

use anyhow::Context as _;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::{
    digest,
    rand::{SecureRandom as _, SystemRandom},
};
use serde::{Serialize, de::DeserializeOwned};

/// Reads `path` as JSON, or the default when it does not exist yet.
pub fn load<T: DeserializeOwned + Default>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read(path) {
        Ok(raw) => {
            serde_json::from_slice(&raw).with_context(|| format!("reading {}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `value` to `path` (0600) through a temporary file, fsyncing file and directory, so a
/// crash leaves either the old or the new content.
pub fn store<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec_pretty(value)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// `n` random bytes from the OS, base64url.
pub fn random_b64(n: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("OS random source failed"))?;
    Ok(B64.encode(b))
}

/// SHA-256 of `s`, base64url.
pub fn sha256_b64(s: &str) -> String {
    B64.encode(digest::digest(&digest::SHA256, s.as_bytes()))
}
