//! The secret key of the token hash: 16 bytes from the OS CSPRNG, created on first start and
//! kept in the state directory (mode 0600). Every map key depends on it.

use std::{
    fs::{self, OpenOptions},
    io::{ErrorKind, Read as _, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
};

use agent_common::hash::HashKey;
use anyhow::{Context as _, bail};

const FILE: &str = "hash.key";

/// Loads the key from `state_dir`, creating it on first use.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<HashKey> {
    let path = state_dir.join(FILE);
    match OpenOptions::new().read(true).open(&path) {
        Ok(mut f) => {
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            let Ok(raw) = <[u8; 16]>::try_from(buf.as_slice()) else {
                bail!(
                    "{} must hold exactly 16 bytes, found {}",
                    path.display(),
                    buf.len()
                );
            };
            Ok(HashKey::from_bytes(raw))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let mut raw = [0u8; 16];
            getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("OS random source: {e}"))?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            f.write_all(&raw)?;
            f.sync_all()?;
            fs::File::open(state_dir)?.sync_all()?;
            log::info!("created a new token hash key in {}", path.display());
            Ok(HashKey::from_bytes(raw))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Short, non-reversible name of a token for output and logs: its keyed hash in hex.
pub fn fingerprint(hash: u64) -> String {
    format!("{hash:016x}")
}

/// Parses a fingerprint / hash given on the command line (16 hex digits, optional `0x`).
pub fn parse_fingerprint(s: &str) -> anyhow::Result<u64> {
    let hex = s.strip_prefix("0x").unwrap_or(s);
    if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "hash must be up to 16 hex digits, got {} characters",
            s.len()
        );
    }
    Ok(u64::from_str_radix(hex, 16)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a, b);
        let meta = fs::metadata(dir.path().join(FILE)).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let other = tempfile::tempdir().unwrap();
        assert_ne!(a, load_or_create(other.path()).unwrap());
    }

    #[test]
    fn a_truncated_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(FILE), [1u8; 7]).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("exactly 16 bytes"), "{err}");
    }

    #[test]
    fn fingerprints_round_trip() {
        assert_eq!(
            parse_fingerprint(&fingerprint(0xdead_beef)).unwrap(),
            0xdead_beef
        );
        assert!(parse_fingerprint("xyz").is_err());
        assert!(parse_fingerprint("12345678901234567").is_err());
    }
}
