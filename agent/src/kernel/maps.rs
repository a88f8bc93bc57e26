//! The kernel maps userspace writes, behind narrow traits: the revoked-token and
//! revoked-header maps ([`RevocationMaps`]) and the configuration record ([`ConfigMap`]). The
//! aya implementations talk to the pinned maps; the in-memory ones ([`MemoryMaps`],
//! [`MemoryConfig`]) let revocation, rules, sessions and the HTTP router be tested without
//! root. [`KernelConfig`] is the one owner of the configuration record.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use agent_common::{config::Config, revoked::RevokedEntry};
use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError as AyaMapError};

/// Which revocation map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapKind {
    /// Revoked tokens, by revocation key (`REVOKED`).
    Tokens,
    /// Revoked JWS header segments: whole signing keys (`REVOKED_HEADERS`).
    Headers,
}

impl MapKind {
    /// Name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            MapKind::Tokens => "revoked-token",
            MapKind::Headers => "revoked-header",
        }
    }
}

/// Why a map operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The map holds as many entries as it can (`E2BIG`/`ENOSPC`/`ENOMEM` from the kernel).
    #[error("the {} map is full", .0.name())]
    Full(MapKind),
    /// Anything else the kernel refused.
    #[error("{what}: {source}")]
    Kernel {
        /// What was being done.
        what: String,
        /// The kernel's answer.
        source: AyaMapError,
    },
}

/// The revocation maps: insert, remove, look up, list.
pub trait RevocationMaps: Send {
    /// Inserts or replaces an entry.
    fn insert(&mut self, map: MapKind, hash: u64, entry: RevokedEntry) -> Result<(), MapError>;
    /// Removes an entry; an absent one is fine.
    fn remove(&mut self, map: MapKind, hash: u64) -> Result<(), MapError>;
    /// Whether the map holds `hash`.
    fn contains(&self, map: MapKind, hash: u64) -> bool;
    /// Every hash in the map.
    fn hashes(&self, map: MapKind) -> Vec<u64>;
}

/// The configuration record the kernel reads per packet.
pub trait ConfigMap: Send {
    /// The record as the kernel has it.
    fn read(&self) -> Result<Config, MapError>;
    /// Replaces the record.
    fn write(&mut self, cfg: &Config) -> Result<(), MapError>;
}

/// The one owner of the kernel's configuration record: every change is a read, a change and
/// a write under one lock, so concurrent changes of different fields never undo each other.
pub struct KernelConfig {
    map: Mutex<Box<dyn ConfigMap>>,
}

impl KernelConfig {
    /// Owns `map` from now on.
    pub fn new(map: Box<dyn ConfigMap>) -> Self {
        Self {
            map: Mutex::new(map),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn ConfigMap>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the record (written only when it changed).
    pub fn update(&self, f: impl FnOnce(&mut Config)) -> Result<(), MapError> {
        let mut map = self.lock();
        let before = map.read()?;
        let mut cfg = before;
        f(&mut cfg);
        if bytes_of(&cfg) != bytes_of(&before) {
            map.write(&cfg)?;
        }
        Ok(())
    }

    /// The record now.
    pub fn read(&self) -> Result<Config, MapError> {
        self.lock().read()
    }
}

/// The bytes of a configuration record, to compare two.
pub(super) fn bytes_of(c: &Config) -> &[u8] {
    // SAFETY: Config is repr(C), Copy and fully initialised (padding is explicit fields), so
    // its size_of bytes are readable for the lifetime of the borrow.
    unsafe { std::slice::from_raw_parts((c as *const Config).cast::<u8>(), size_of::<Config>()) }
}

/// The pinned `REVOKED` and `REVOKED_HEADERS` maps.
pub struct AyaMaps {
    pub(super) tokens: BpfHashMap<MapData, u64, RevokedEntry>,
    pub(super) headers: BpfHashMap<MapData, u64, RevokedEntry>,
}

impl AyaMaps {
    fn map(&self, map: MapKind) -> &BpfHashMap<MapData, u64, RevokedEntry> {
        match map {
            MapKind::Tokens => &self.tokens,
            MapKind::Headers => &self.headers,
        }
    }

    fn map_mut(&mut self, map: MapKind) -> &mut BpfHashMap<MapData, u64, RevokedEntry> {
        match map {
            MapKind::Tokens => &mut self.tokens,
            MapKind::Headers => &mut self.headers,
        }
    }
}

/// The errno of a failed map syscall, if that is what failed.
fn errno(e: &AyaMapError) -> Option<i32> {
    match e {
        AyaMapError::SyscallError(s) => s.io_error.raw_os_error(),
        _ => None,
    }
}

impl RevocationMaps for AyaMaps {
    fn insert(&mut self, map: MapKind, hash: u64, entry: RevokedEntry) -> Result<(), MapError> {
        self.map_mut(map)
            .insert(hash, entry, 0)
            .map_err(|source| match errno(&source) {
                Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM) => MapError::Full(map),
                _ => MapError::Kernel {
                    what: format!("updating the {} map", map.name()),
                    source,
                },
            })
    }

    fn remove(&mut self, map: MapKind, hash: u64) -> Result<(), MapError> {
        match self.map_mut(map).remove(&hash) {
            Ok(()) | Err(AyaMapError::KeyNotFound) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(MapError::Kernel {
                what: format!("removing from the {} map", map.name()),
                source,
            }),
        }
    }

    fn contains(&self, map: MapKind, hash: u64) -> bool {
        self.map(map).get(&hash, 0).is_ok()
    }

    fn hashes(&self, map: MapKind) -> Vec<u64> {
        self.map(map).keys().filter_map(Result::ok).collect()
    }
}

/// The pinned `CONFIG` array (one element).
pub struct AyaConfig(pub(super) Array<MapData, Config>);

impl ConfigMap for AyaConfig {
    fn read(&self) -> Result<Config, MapError> {
        self.0.get(&0, 0).map_err(|source| MapError::Kernel {
            what: "reading the config map".into(),
            source,
        })
    }

    fn write(&mut self, cfg: &Config) -> Result<(), MapError> {
        self.0.set(0, cfg, 0).map_err(|source| MapError::Kernel {
            what: "writing the config map".into(),
            source,
        })
    }
}

/// In-memory revocation maps with a capacity per map (for tests: a full map behaves like a
/// full kernel map).
#[derive(Debug, Default, Clone)]
pub struct MemoryMaps {
    tokens: HashMap<u64, RevokedEntry>,
    headers: HashMap<u64, RevokedEntry>,
    capacity: Option<usize>,
}

impl MemoryMaps {
    /// Maps that take at most `capacity` entries each.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: Some(capacity),
            ..Self::default()
        }
    }

    fn map(&self, map: MapKind) -> &HashMap<u64, RevokedEntry> {
        match map {
            MapKind::Tokens => &self.tokens,
            MapKind::Headers => &self.headers,
        }
    }

    /// The entry for `hash`.
    pub fn get(&self, map: MapKind, hash: u64) -> Option<RevokedEntry> {
        self.map(map).get(&hash).copied()
    }
}

impl RevocationMaps for MemoryMaps {
    fn insert(&mut self, map: MapKind, hash: u64, entry: RevokedEntry) -> Result<(), MapError> {
        let capacity = self.capacity;
        let m = match map {
            MapKind::Tokens => &mut self.tokens,
            MapKind::Headers => &mut self.headers,
        };
        if !m.contains_key(&hash) && capacity.is_some_and(|c| m.len() >= c) {
            return Err(MapError::Full(map));
        }
        m.insert(hash, entry);
        Ok(())
    }

    fn remove(&mut self, map: MapKind, hash: u64) -> Result<(), MapError> {
        match map {
            MapKind::Tokens => self.tokens.remove(&hash),
            MapKind::Headers => self.headers.remove(&hash),
        };
        Ok(())
    }

    fn contains(&self, map: MapKind, hash: u64) -> bool {
        self.map(map).contains_key(&hash)
    }

    fn hashes(&self, map: MapKind) -> Vec<u64> {
        self.map(map).keys().copied().collect()
    }
}

/// An in-memory configuration record.
#[derive(Debug, Default, Clone, Copy)]
pub struct MemoryConfig(pub Config);

impl ConfigMap for MemoryConfig {
    fn read(&self) -> Result<Config, MapError> {
        Ok(self.0)
    }

    fn write(&mut self, cfg: &Config) -> Result<(), MapError> {
        self.0 = *cfg;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_memory_map_refuses_new_keys_but_replaces_old_ones() {
        let mut m = MemoryMaps::with_capacity(1);
        m.insert(MapKind::Tokens, 1, RevokedEntry::default())
            .unwrap();
        let again = RevokedEntry {
            expires_at: 9,
            ..RevokedEntry::default()
        };
        m.insert(MapKind::Tokens, 1, again).unwrap();
        assert_eq!(m.get(MapKind::Tokens, 1), Some(again));
        assert!(matches!(
            m.insert(MapKind::Tokens, 2, RevokedEntry::default()),
            Err(MapError::Full(MapKind::Tokens))
        ));
        m.insert(MapKind::Headers, 2, RevokedEntry::default())
            .expect("each map has its own capacity");
    }

    #[test]
    fn config_updates_read_modify_write_under_one_owner() {
        let cfg = KernelConfig::new(Box::new(MemoryConfig::default()));
        cfg.update(|c| c.monitoring = 1).unwrap();
        cfg.update(|c| c.header_revocations = 3).unwrap();
        let now = cfg.read().unwrap();
        assert_eq!((now.monitoring, now.header_revocations), (1, 3));
    }
}
