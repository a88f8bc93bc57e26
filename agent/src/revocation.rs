//! Revocations: the durable store, the kernel maps kept in step with it, the rules, and what
//! is learned from verified tokens. One component, one lock: a revocation is in the store
//! (fsynced) before it is in a map, and in a map before it is acknowledged. A map that cannot
//! take an entry (full) never fails a revocation: the entry is enforced by userspace,
//! remembered as overflow, and retried after every purge.

pub mod hash_key;
pub mod rules;
pub mod store;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use agent_common::{
    hash::HashKey,
    revoked::{FLAG_API_KEY, Reason, RevokedEntry},
};

use crate::{
    kernel::maps::{KernelConfig, MapError, MapKind, RevocationMaps},
    types::{RevokedBy, RuleKind, TokenHashes},
};
use rules::{MAX_LEARNED_HEADERS_PER_KEY, RuleFacts};
use store::{Revocation, RevocationStore, Scope, StoreError};

/// Why a revocation could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The store refused it (nothing was recorded).
    #[error("recording the revocation: {0}")]
    Store(#[from] StoreError),
    /// A batch stopped part way: the first `recorded` are durable.
    #[error("recording revocation {} of {total} ({recorded} recorded before it): {source}", recorded + 1)]
    Batch {
        /// Revocations recorded before the failure.
        recorded: usize,
        /// Revocations in the batch.
        total: usize,
        /// The store's error.
        source: StoreError,
    },
    /// A kernel map refused a removal or the configuration update.
    #[error(transparent)]
    Map(#[from] MapError),
}

/// How the store revokes a token, if it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreHit {
    /// By its revocation key, or its header segment (a signing key).
    Revoked(RevokedBy),
    /// By the hash of the whole token, as revocations of JWTs were keyed before signing-input
    /// keying: refused, and its revocation key should be learned so the kernel drops it too.
    Legacy {
        /// Unix seconds when the old revocation lapses (0: never).
        expires_at: u64,
    },
}

/// What recording one revocation did.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Whether the hash was newly revoked.
    pub changed: bool,
    /// The entry as kept (a later expiry wins over an earlier one).
    pub entry: Revocation,
    /// Whether its kernel map holds it (rules never are; a full map does not).
    pub in_kernel: bool,
    /// This revocation was the first that a kernel map could not take.
    pub map_became_full: bool,
}

/// What a learned header may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LearnHeader {
    /// Already revoked: nothing to learn.
    Known,
    /// Within the key's bound: record it.
    Allowed,
    /// The key's bound is reached: refused (and counted by the caller).
    Refused,
}

/// Sizes for `status` and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Live revocations in the store (tokens, header segments and rules).
    pub store_entries: usize,
    /// Entries in the kernel's token map.
    pub kernel_tokens: usize,
    /// Entries in the kernel's header-segment map.
    pub kernel_headers: usize,
    /// Revocations the kernel maps could not take.
    pub overflow: usize,
    /// Size of the revocation log.
    pub log_bytes: u64,
}

/// What a purge did.
#[derive(Clone, Debug, Default)]
pub struct Purged {
    /// Hashes that expired and were removed from the store and the maps.
    pub gone: Vec<u64>,
    /// Overflowed revocations the maps took this time.
    pub placed: usize,
    /// Overflowed revocations still waiting for space.
    pub waiting: usize,
    /// The log's size after a compaction, when one ran.
    pub compacted_to: Option<u64>,
}

struct State {
    store: RevocationStore,
    maps: Box<dyn RevocationMaps>,
    overflow: HashSet<u64>,
    learned_headers: HashMap<String, usize>,
}

/// The revocation component.
pub struct Revocations {
    key: HashKey,
    state: Mutex<State>,
    config: Arc<KernelConfig>,
}

/// The kernel's view of a stored revocation.
pub fn kernel_entry(r: &Revocation) -> RevokedEntry {
    RevokedEntry {
        expires_at: r.expires_at,
        reason: if r.reason.is_empty() {
            Reason::Unspecified
        } else {
            Reason::Operator
        } as u32,
        flags: if r.api_key { FLAG_API_KEY } else { 0 },
    }
}

fn map_of(scope: Scope) -> Option<MapKind> {
    match scope {
        Scope::Token => Some(MapKind::Tokens),
        Scope::SigningKey => Some(MapKind::Headers),
        Scope::Jti | Scope::Subject | Scope::Client | Scope::Kid => None,
    }
}

impl State {
    /// Puts a stored revocation into its map; a refusal makes it overflow. Returns (in the
    /// kernel, the map became full with this one).
    fn push(&mut self, r: &Revocation) -> (bool, bool) {
        let Some(map) = map_of(r.scope) else {
            return (false, false);
        };
        match self.maps.insert(map, r.hash, kernel_entry(r)) {
            Ok(()) => {
                self.overflow.remove(&r.hash);
                (true, false)
            }
            Err(e) => {
                let first = self.overflow.is_empty();
                self.overflow.insert(r.hash);
                if first {
                    log::warn!(
                        "{e}: revocations that do not fit are enforced by forward-auth only until space frees (raise --max-revoked)"
                    );
                }
                (false, first)
            }
        }
    }

    fn header_count(&self) -> u32 {
        self.store
            .entries()
            .filter(|r| r.scope == Scope::SigningKey)
            .count() as u32
    }

    fn lookup(&self, h: &TokenHashes) -> Option<StoreHit> {
        if self.store.get(h.key).is_some() {
            return Some(StoreHit::Revoked(RevokedBy::Token));
        }
        if self
            .store
            .get(h.header)
            .is_some_and(|r| r.scope == Scope::SigningKey)
        {
            return Some(StoreHit::Revoked(RevokedBy::SigningKey));
        }
        if h.whole != h.key
            && let Some(r) = self.store.get(h.whole).filter(|r| r.scope == Scope::Token)
        {
            return Some(StoreHit::Legacy {
                expires_at: r.expires_at,
            });
        }
        None
    }
}

/// A read of the revocations under their lock: the store lookup and the rule check of one
/// token check see the same state.
pub struct Read<'a> {
    state: MutexGuard<'a, State>,
    key: &'a HashKey,
}

impl Read<'_> {
    /// Whether the store revokes the token itself, its header segment, or (legacy) its whole
    /// hash.
    pub fn lookup(&self, h: &TokenHashes) -> Option<StoreHit> {
        self.state.lookup(h)
    }

    /// The kind of the first rule covering a verified token.
    pub fn covering_rule(&self, facts: &RuleFacts<'_>) -> Option<RuleKind> {
        rules::covering(&self.state.store, self.key, facts)
    }
}

impl Revocations {
    /// Owns the store and the maps from now on; `config` is shared with the rest of the daemon.
    pub fn new(
        key: HashKey,
        store: RevocationStore,
        maps: Box<dyn RevocationMaps>,
        config: Arc<KernelConfig>,
    ) -> Self {
        Self {
            key,
            state: Mutex::new(State {
                store,
                maps,
                overflow: HashSet::new(),
                learned_headers: HashMap::new(),
            }),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads under the lock.
    pub fn read(&self) -> Read<'_> {
        Read {
            state: self.lock(),
            key: &self.key,
        }
    }

    /// Reads only if nobody holds the lock (a revocation may be fsyncing): for answers that
    /// must not wait.
    pub fn try_read(&self) -> Option<Read<'_>> {
        Some(Read {
            state: self.state.try_lock().ok()?,
            key: &self.key,
        })
    }

    /// Records a revocation durably, then puts it into its kernel map.
    pub fn revoke(&self, r: Revocation) -> Result<Recorded, RevocationError> {
        let mut st = self.lock();
        let changed = st.store.revoke(r.clone())?;
        // The store keeps the later expiry when a hash is revoked twice; mirror what it kept.
        let entry = st.store.get(r.hash).cloned().unwrap_or(r);
        let (in_kernel, map_became_full) = st.push(&entry);
        if entry.scope == Scope::SigningKey {
            let headers = st.header_count();
            self.config.update(|c| c.header_revocations = headers)?;
        }
        Ok(Recorded {
            changed,
            entry,
            in_kernel,
            map_became_full,
        })
    }

    /// Records many revocations: every one in the store first, then all into the kernel maps,
    /// so a failure part way never leaves recorded ones out of the kernel, nor later ones
    /// half done. Returns the entries newly revoked or extended (hashes already revoked at least
    /// as long are left out) and whether a map became full.
    pub fn revoke_many(
        &self,
        batch: Vec<Revocation>,
    ) -> Result<(Vec<Revocation>, bool), RevocationError> {
        let mut st = self.lock();
        let total = batch.len();
        let mut recorded = Vec::with_capacity(total);
        for r in batch {
            let before = st.store.get(r.hash).cloned();
            if let Err(source) = st.store.revoke(r.clone()) {
                let n = recorded.len();
                for kept in &recorded {
                    st.push(kept);
                }
                return Err(RevocationError::Batch {
                    recorded: n,
                    total,
                    source,
                });
            }
            let kept = st.store.get(r.hash).cloned().unwrap_or(r);
            // Already revoked until at least then: nothing new to record or report.
            if before.is_none_or(|b| b.expires_at != kept.expires_at) {
                recorded.push(kept);
            }
        }
        let mut became_full = false;
        for r in &recorded {
            became_full |= st.push(r).1;
        }
        Ok((recorded, became_full))
    }

    /// Lifts a revocation (store first, then the maps); returns whether it was revoked.
    pub fn unrevoke(&self, hash: u64, reason: &str, now: u64) -> Result<bool, RevocationError> {
        let mut st = self.lock();
        let was = st.store.get(hash).map(|r| r.scope);
        let changed = st.store.unrevoke(hash, reason, now)?;
        st.maps.remove(MapKind::Tokens, hash)?;
        st.maps.remove(MapKind::Headers, hash)?;
        st.overflow.remove(&hash);
        if was == Some(Scope::SigningKey) {
            let headers = st.header_count();
            self.config.update(|c| c.header_revocations = headers)?;
        }
        Ok(changed)
    }

    /// The live entry for `hash`.
    pub fn get(&self, hash: u64) -> Option<Revocation> {
        self.lock().store.get(hash).cloned()
    }

    /// Whether a kernel map holds `hash`.
    pub fn in_kernel(&self, hash: u64) -> bool {
        let st = self.lock();
        st.maps.contains(MapKind::Tokens, hash) || st.maps.contains(MapKind::Headers, hash)
    }

    /// The rule of `kind` naming `name` that applies to tokens of `iss` (every issuer's, or
    /// one scoped to `iss`).
    pub fn rule(&self, kind: RuleKind, iss: &str, name: &str) -> Option<Revocation> {
        rules::find(&self.lock().store, &self.key, kind, iss, name).cloned()
    }

    /// The stored hash of a rule.
    pub fn rule_hash(&self, kind: RuleKind, issuer: Option<&str>, name: &str) -> u64 {
        rules::rule_hash(&self.key, kind, issuer, name)
    }

    /// Whether a verified token's header segment under revoked key `kid` may be learned (at
    /// most [`MAX_LEARNED_HEADERS_PER_KEY`] per key); counts it when allowed.
    pub fn learn_header(&self, kid: &str, header: u64) -> LearnHeader {
        let mut st = self.lock();
        if st.store.get(header).is_some() {
            return LearnHeader::Known;
        }
        let n = st.learned_headers.entry(kid.to_string()).or_default();
        if *n >= MAX_LEARNED_HEADERS_PER_KEY {
            return LearnHeader::Refused;
        }
        *n += 1;
        LearnHeader::Allowed
    }

    /// Makes the kernel maps equal the store: inserts every live entry, then removes the rest
    /// (insert first, so nothing revoked is ever missing in between). Entries a full map cannot
    /// take overflow; they never stop a start. Returns (inserted, removed, overflow).
    pub fn sync(&self) -> Result<(usize, usize, usize), RevocationError> {
        let mut st = self.lock();
        let live: Vec<Revocation> = st
            .store
            .entries()
            .filter(|r| r.scope.in_kernel())
            .cloned()
            .collect();
        let mut inserted = 0;
        for r in &live {
            inserted += usize::from(st.push(r).0);
        }
        let headers = st.header_count();
        self.config.update(|c| c.header_revocations = headers)?;
        let mut removed = 0;
        for (map, scope) in [
            (MapKind::Tokens, Scope::Token),
            (MapKind::Headers, Scope::SigningKey),
        ] {
            for h in st.maps.hashes(map) {
                if st.store.get(h).is_none_or(|r| r.scope != scope) {
                    st.maps.remove(map, h)?;
                    removed += 1;
                }
            }
        }
        Ok((inserted, removed, st.overflow.len()))
    }

    /// Drops what expired by `now` from the store and the maps, retries the overflow, and
    /// compacts the log when worthwhile.
    pub fn purge(&self, now: u64) -> Result<Purged, RevocationError> {
        let mut st = self.lock();
        let gone = st.store.purge_expired(now);
        for h in &gone {
            // Expired entries may be of either scope; removing an absent key is fine.
            st.maps.remove(MapKind::Tokens, *h)?;
            st.maps.remove(MapKind::Headers, *h)?;
            st.overflow.remove(h);
        }
        if !gone.is_empty() {
            let headers = st.header_count();
            self.config.update(|c| c.header_revocations = headers)?;
        }
        let waiting: Vec<Revocation> = st
            .overflow
            .iter()
            .filter_map(|h| st.store.get(*h).cloned())
            .collect();
        let State {
            store, overflow, ..
        } = &mut *st;
        overflow.retain(|h| store.get(*h).is_some());
        let placed = waiting.iter().filter(|r| st.push(r).0).count();
        let compacted_to = if st.store.should_compact() {
            st.store.compact(now)?;
            Some(st.store.log_bytes())
        } else {
            None
        };
        Ok(Purged {
            gone,
            placed,
            waiting: st.overflow.len(),
            compacted_to,
        })
    }

    /// Sizes for `status` and metrics.
    pub fn counts(&self) -> Counts {
        let st = self.lock();
        Counts {
            store_entries: st.store.len(),
            kernel_tokens: st.maps.hashes(MapKind::Tokens).len(),
            kernel_headers: st.maps.hashes(MapKind::Headers).len(),
            overflow: st.overflow.len(),
            log_bytes: st.store.log_bytes(),
        }
    }

    /// The store entries, for `tokens list` (revoked info by hash).
    pub fn entries_for(&self, hashes: &[u64]) -> HashMap<u64, Revocation> {
        let st = self.lock();
        hashes
            .iter()
            .filter_map(|h| st.store.get(*h).map(|r| (*h, r.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests;
