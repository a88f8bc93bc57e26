//! The verified-token cache: a repeated token costs one hash lookup instead of a signature
//! check. Keyed by the token's keyed hash, bounded in entries, and never serving a token past
//! its `exp` (plus leeway). Revocations are checked by the caller *before* every lookup, so a
//! cached token is never served past a revocation either. When a signing key changes or goes
//! away (a JWKS refresh), the entries it verified are dropped ([`VerifiedCache::remove_kids`]);
//! a verification that raced with that drop is not inserted (see [`VerifiedCache::generation`]).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::validate::Verified;

/// Default number of cached tokens.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// Verified tokens by keyed hash.
pub struct VerifiedCache {
    entries: HashMap<u64, Arc<Verified>>,
    capacity: usize,
    leeway: u64,
    generation: u64,
}

impl VerifiedCache {
    /// An empty cache holding at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize, leeway: u64) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            leeway,
            generation: 0,
        }
    }

    /// The cached verification of `hash`, if still inside its lifetime at `now`.
    pub fn get(&mut self, hash: u64, now: u64) -> Option<Arc<Verified>> {
        let v = self.entries.get(&hash)?;
        if v.exp.is_some_and(|e| now >= e.saturating_add(self.leeway)) {
            self.entries.remove(&hash);
            return None;
        }
        Some(v.clone())
    }

    /// Caches a verified token. When full, expired entries go first, then an arbitrary eighth.
    pub fn insert(&mut self, hash: u64, v: Arc<Verified>, now: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            let leeway = self.leeway;
            self.entries
                .retain(|_, v| v.exp.is_none_or(|e| now < e.saturating_add(leeway)));
        }
        if self.entries.len() >= self.capacity {
            let evict: Vec<u64> = self
                .entries
                .keys()
                .take(self.capacity.div_ceil(8))
                .copied()
                .collect();
            for h in evict {
                self.entries.remove(&h);
            }
        }
        self.entries.insert(hash, v);
    }

    /// Counts the group drops ([`remove_kids`](Self::remove_kids), [`clear`](Self::clear)):
    /// read it before verifying a token and pass it to
    /// [`insert_unless_dropped`](Self::insert_unless_dropped), so a verification made with a
    /// key that was replaced meanwhile is not cached.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// [`insert`](Self::insert), unless a group drop happened since `generation` was read.
    pub fn insert_unless_dropped(
        &mut self,
        hash: u64,
        v: Arc<Verified>,
        now: u64,
        generation: u64,
    ) {
        if generation == self.generation {
            self.insert(hash, v, now);
        }
    }

    /// Forgets a token (revoked, or covered by a new rule).
    pub fn remove(&mut self, hash: u64) {
        self.entries.remove(&hash);
    }

    /// Forgets every token verified by one of these keys (replaced or removed); returns how
    /// many were dropped.
    pub fn remove_kids<'a>(&mut self, kids: impl IntoIterator<Item = &'a str>) -> usize {
        let kids: std::collections::HashSet<&str> = kids.into_iter().collect();
        self.generation += 1;
        let before = self.entries.len();
        self.entries.retain(|_, v| !kids.contains(v.kid.as_str()));
        before - self.entries.len()
    }

    /// Forgets every token (a key or rule change makes whole groups stale).
    pub fn clear(&mut self) {
        self.generation += 1;
        self.entries.clear();
    }

    /// Cached tokens.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The cache as a component of the daemon: its own lock, never held while another
/// component's is.
pub struct TokenCache {
    inner: Mutex<VerifiedCache>,
}

impl TokenCache {
    /// Owns `cache` from now on.
    pub fn new(cache: VerifiedCache) -> Self {
        Self {
            inner: Mutex::new(cache),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VerifiedCache> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached verification of `hash` and the current generation (see
    /// [`VerifiedCache::generation`]).
    pub fn get(&self, hash: u64, now: u64) -> (Option<Arc<Verified>>, u64) {
        let mut c = self.lock();
        (c.get(hash, now), c.generation())
    }

    /// [`get`](Self::get) only if nobody holds the lock (for answers that must not wait):
    /// `None` when busy.
    pub fn try_get(&self, hash: u64, now: u64) -> Option<Option<Arc<Verified>>> {
        Some(self.inner.try_lock().ok()?.get(hash, now))
    }

    /// See [`VerifiedCache::insert_unless_dropped`].
    pub fn insert_unless_dropped(&self, hash: u64, v: Arc<Verified>, now: u64, generation: u64) {
        self.lock().insert_unless_dropped(hash, v, now, generation);
    }

    /// See [`VerifiedCache::remove`].
    pub fn remove(&self, hash: u64) {
        self.lock().remove(hash);
    }

    /// See [`VerifiedCache::remove_kids`].
    pub fn remove_kids<'a>(&self, kids: impl IntoIterator<Item = &'a str>) -> usize {
        self.lock().remove_kids(kids)
    }

    /// See [`VerifiedCache::clear`].
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Cached tokens.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    fn verified(exp: Option<u64>) -> Arc<Verified> {
        by_kid("k", exp)
    }

    fn by_kid(kid: &str, exp: Option<u64>) -> Arc<Verified> {
        Arc::new(Verified {
            kid: kid.into(),
            alg: Algorithm::ES256,
            claims: Default::default(),
            exp,
            header_segment_len: 10,
        })
    }

    #[test]
    fn serves_until_exp_plus_leeway_and_not_after() {
        let mut c = VerifiedCache::new(8, 30);
        c.insert(1, verified(Some(1000)), 900);
        assert!(c.get(1, 1029).is_some());
        assert!(c.get(1, 1030).is_none());
        assert!(c.is_empty(), "an expired entry is dropped on lookup");
    }

    #[test]
    fn stays_within_capacity_and_evicts_expired_first() {
        let mut c = VerifiedCache::new(16, 0);
        for h in 0..8 {
            c.insert(h, verified(Some(100)), 50);
        }
        for h in 8..16 {
            c.insert(h, verified(Some(10_000)), 50);
        }
        c.insert(99, verified(Some(10_000)), 200);
        assert_eq!(
            c.len(),
            9,
            "the 8 expired entries were evicted, nothing else"
        );
        for h in 100..1000 {
            c.insert(h, verified(None), 200);
            assert!(c.len() <= 16);
        }
        assert!(c.get(999, 200).is_some(), "the newest entry is kept");
    }

    #[test]
    fn zero_capacity_disables_and_remove_forgets() {
        let mut c = VerifiedCache::new(0, 0);
        c.insert(1, verified(None), 0);
        assert!(c.get(1, 0).is_none());
        let mut c = VerifiedCache::new(4, 0);
        c.insert(1, verified(None), 0);
        c.remove(1);
        assert!(c.get(1, 0).is_none());
    }

    #[test]
    fn remove_kids_drops_only_what_those_keys_verified() {
        let mut c = VerifiedCache::new(8, 0);
        c.insert(1, by_kid("old", None), 0);
        c.insert(2, by_kid("gone", None), 0);
        c.insert(3, by_kid("kept", None), 0);
        assert_eq!(c.remove_kids(["old", "gone"]), 2);
        assert!(c.get(1, 0).is_none() && c.get(2, 0).is_none());
        assert!(c.get(3, 0).is_some(), "other keys' entries stay");
    }

    #[test]
    fn a_verification_that_raced_a_key_change_is_not_cached() {
        let mut c = VerifiedCache::new(8, 0);
        let before = c.generation();
        // A key change lands while the token is being verified with the old key.
        c.remove_kids(["old"]);
        c.insert_unless_dropped(1, by_kid("old", None), 0, before);
        assert!(
            c.get(1, 0).is_none(),
            "the stale verification was not cached"
        );
        let now = c.generation();
        c.insert_unless_dropped(1, by_kid("old", None), 0, now);
        assert!(c.get(1, 0).is_some());
        c.clear();
        c.insert_unless_dropped(2, by_kid("k", None), 0, now);
        assert!(c.get(2, 0).is_none(), "clear counts as a drop too");
    }
}
