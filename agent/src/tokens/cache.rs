//! The verified-token cache: a repeated token costs one hash lookup instead of a signature
//! check. Keyed by the token's keyed hash, bounded in entries, and never serving a token past
//! its `exp` (plus leeway). Revocations are checked by the caller *before* every lookup, so a
//! cached token is never served past a revocation either.

use std::{collections::HashMap, sync::Arc};

use super::validate::Verified;

/// Default number of cached tokens.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// Verified tokens by keyed hash.
pub struct VerifiedCache {
    entries: HashMap<u64, Arc<Verified>>,
    capacity: usize,
    leeway: u64,
}

impl VerifiedCache {
    /// An empty cache holding at most `capacity` tokens (0 disables it).
    pub fn new(capacity: usize, leeway: u64) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
            leeway,
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

    /// Forgets a token (revoked, or covered by a new rule).
    pub fn remove(&mut self, hash: u64) {
        self.entries.remove(&hash);
    }

    /// Forgets every token (a key or rule change makes whole groups stale).
    pub fn clear(&mut self) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::Algorithm;

    fn verified(exp: Option<u64>) -> Arc<Verified> {
        Arc::new(Verified {
            kid: "k".into(),
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
}
