//! The token index: what is known about live JWTs by `jti` (indexed when issued here or first
//! validated), so a rule can push every live token it covers into the kernel at once. Anyone
//! can present new valid tokens, so the index is bounded: when full, the entry that expires
//! first makes room (a token missing from the index is still refused by its rule on sight and
//! learned then; only the push at rule time is lost).

use std::collections::{BTreeSet, HashMap};

/// Tokens indexed at most, by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// What is known about a token by `jti`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indexed {
    /// Revocation key (fingerprint) of the token.
    pub hash: u64,
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Client.
    pub client_id: String,
    /// Expiry.
    pub exp: u64,
    /// Issued at (0 when the token had no `iat`).
    pub iat: u64,
    /// The key that signed it.
    pub kid: String,
    /// Keyed hash of its JWS header segment (what a kid revocation puts in the kernel).
    pub header: u64,
}

/// Live tokens by `jti`, bounded.
#[derive(Debug)]
pub struct TokenIndex {
    by_jti: HashMap<String, Indexed>,
    by_exp: BTreeSet<(u64, String)>,
    capacity: usize,
    evicted: u64,
}

impl Default for TokenIndex {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TokenIndex {
    /// An empty index holding at most `capacity` tokens.
    pub fn new(capacity: usize) -> Self {
        Self {
            by_jti: HashMap::new(),
            by_exp: BTreeSet::new(),
            capacity,
            evicted: 0,
        }
    }

    /// Indexes a token unless its `jti` is already indexed; when full, the entry that expires
    /// first goes (which may be the new one itself).
    pub fn insert(&mut self, jti: &str, ix: Indexed) {
        if self.capacity == 0 || self.by_jti.contains_key(jti) {
            return;
        }
        if self.by_jti.len() >= self.capacity {
            let Some(first) = self.by_exp.first().cloned() else {
                return;
            };
            if first.0 >= ix.exp {
                self.evicted += 1;
                return;
            }
            self.by_exp.remove(&first);
            self.by_jti.remove(&first.1);
            self.evicted += 1;
        }
        self.by_exp.insert((ix.exp, jti.to_string()));
        self.by_jti.insert(jti.to_string(), ix);
    }

    /// The token with `jti`.
    pub fn get(&self, jti: &str) -> Option<&Indexed> {
        self.by_jti.get(jti)
    }

    /// Every indexed token with its `jti`.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Indexed)> {
        self.by_jti.iter()
    }

    /// Forgets tokens that expired by `now`.
    pub fn prune(&mut self, now: u64) {
        while let Some(first) = self.by_exp.first().cloned() {
            if first.0 > now {
                break;
            }
            self.by_exp.remove(&first);
            self.by_jti.remove(&first.1);
        }
    }

    /// Indexed tokens.
    pub fn len(&self) -> usize {
        self.by_jti.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_jti.is_empty()
    }

    /// Tokens not indexed, or pushed out, because the index was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ix(hash: u64, exp: u64) -> Indexed {
        Indexed {
            hash,
            iss: "i".into(),
            sub: "s".into(),
            client_id: "c".into(),
            exp,
            iat: 0,
            kid: "k".into(),
            header: 0,
        }
    }

    #[test]
    fn a_full_index_keeps_the_tokens_that_live_longest() {
        let mut index = TokenIndex::new(3);
        for (i, exp) in [(1, 50), (2, 10), (3, 30)] {
            index.insert(&format!("j{i}"), ix(i, exp));
        }
        index.insert("j4", ix(4, 40));
        assert_eq!(index.len(), 3);
        assert!(index.get("j2").is_none(), "the first to expire went");
        assert!(index.get("j4").is_some());
        index.insert("j5", ix(5, 5));
        assert!(
            index.get("j5").is_none(),
            "shorter-lived than everything kept"
        );
        assert_eq!(index.evicted(), 2);
        index.prune(35);
        assert_eq!(index.len(), 2, "j3 expired");
        assert_eq!(index.iter().count(), 2);
    }

    #[test]
    fn a_jti_is_indexed_once() {
        let mut index = TokenIndex::new(10);
        index.insert("j", ix(1, 10));
        index.insert("j", ix(2, 20));
        assert_eq!(index.get("j").map(|i| i.hash), Some(1));
        assert_eq!(index.len(), 1);
        index.prune(10);
        assert!(index.is_empty());
    }
}
