//! Refresh-token families (RFC 9700 rotation with reuse detection) and the extra claims a
//! login service keeps per subject. Refresh tokens are opaque 256-bit random strings; only
//! their SHA-256 is kept. State lives in `sessions.json` in the state directory, mode 0600,
//! replaced atomically and fsynced before any change is acknowledged.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::private_file::{self, random_b64, sha256_b64};

const FILE: &str = "sessions.json";
/// Retired refresh tokens remembered per family (older ones are simply unknown).
const MAX_RETIRED: usize = 32;
/// Prefix of refresh tokens, so they are recognisable in logs of other tools and by scanners.
pub const REFRESH_PREFIX: &str = "twr_";

/// One login: the refresh-token chain and the access tokens issued from it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Family {
    /// Subject.
    pub sub: String,
    /// The client that created the session (only it may refresh).
    pub client_id: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Unix seconds the session began.
    pub created_at: u64,
    /// Unix seconds after which no refresh is accepted.
    pub expires_at: u64,
    /// SHA-256 (base64url) of the one live refresh token.
    current: String,
    /// SHA-256 of retired refresh tokens, with when they were retired.
    retired: Vec<(String, u64)>,
    /// Retired refresh tokens that already used their one rotation inside the grace window.
    #[serde(default)]
    graced: Vec<String>,
    /// Keyed hashes and expiries of access tokens issued in this family.
    pub access: Vec<(u64, u64)>,
}

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    families: BTreeMap<String, Family>,
    claims: BTreeMap<String, Value>,
}

/// What presenting a refresh token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// A new refresh token for the family (the presented one is now retired).
    Rotated {
        /// Family id.
        family_id: String,
        /// The family after rotation.
        family: Family,
        /// The new refresh token (returned once).
        refresh_token: String,
    },
    /// A retired token was presented outside the grace window: the family is gone and its
    /// access tokens must be revoked.
    Reused {
        /// Family id.
        family_id: String,
        /// The removed family.
        family: Family,
    },
    /// Unknown, expired or from a family already ended.
    Unknown,
}

/// Refresh-token families and per-subject claims.
pub struct RefreshStore {
    path: PathBuf,
    state: Persisted,
    /// SHA-256 of a refresh token -> family id.
    by_token: HashMap<String, String>,
}

impl RefreshStore {
    /// Opens (or starts) `sessions.json` in `state_dir`.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(FILE);
        let state: Persisted = private_file::load(&path)?;
        let mut s = Self {
            path,
            state,
            by_token: HashMap::new(),
        };
        s.reindex();
        Ok(s)
    }

    fn reindex(&mut self) {
        self.by_token.clear();
        for (id, f) in &self.state.families {
            self.by_token.insert(f.current.clone(), id.clone());
            for (h, _) in &f.retired {
                self.by_token.insert(h.clone(), id.clone());
            }
        }
    }

    fn save(&self) -> anyhow::Result<()> {
        private_file::store(&self.path, &self.state)
    }

    /// Starts a family; returns its id and first refresh token (durable on return).
    pub fn create(
        &mut self,
        sub: &str,
        client_id: &str,
        scopes: Vec<String>,
        now: u64,
        ttl: u64,
    ) -> anyhow::Result<(String, String)> {
        let id = random_b64(12)?;
        let token = format!("{REFRESH_PREFIX}{}", random_b64(32)?);
        let family = Family {
            sub: sub.into(),
            client_id: client_id.into(),
            scopes,
            created_at: now,
            expires_at: now.saturating_add(ttl),
            current: sha256_b64(&token),
            retired: Vec::new(),
            graced: Vec::new(),
            access: Vec::new(),
        };
        self.by_token.insert(family.current.clone(), id.clone());
        self.state.families.insert(id.clone(), family);
        self.save()?;
        Ok((id, token))
    }

    /// The family a refresh token belongs to (live or retired), without changing anything.
    pub fn family_of(&self, refresh_token: &str) -> Option<(&str, &Family)> {
        let id = self.by_token.get(&sha256_b64(refresh_token))?;
        self.state.families.get(id).map(|f| (id.as_str(), f))
    }

    /// Presents a refresh token at `now`: rotates it, or detects reuse of a retired one.
    /// Within `grace` seconds of its retirement a retired token still rotates once (a lost
    /// response); a second presentation is reuse. Callers that issue an access token for the
    /// rotation record it with [`RefreshStore::record_access`] while still holding the store
    /// (one critical section), so a concurrent reuse always finds it in the family.
    pub fn rotate(
        &mut self,
        refresh_token: &str,
        now: u64,
        grace: u64,
    ) -> anyhow::Result<Rotation> {
        let presented = sha256_b64(refresh_token);
        let Some(id) = self.by_token.get(&presented).cloned() else {
            return Ok(Rotation::Unknown);
        };
        let Some(family) = self.state.families.get_mut(&id) else {
            return Ok(Rotation::Unknown);
        };
        if now >= family.expires_at {
            self.end(&id)?;
            return Ok(Rotation::Unknown);
        }
        // A retired token rotates once more inside the grace window (its response was lost),
        // never twice.
        let graced = family.current != presented
            && !family.graced.contains(&presented)
            && family
                .retired
                .iter()
                .any(|(h, at)| *h == presented && grace > 0 && now.saturating_sub(*at) <= grace);
        if family.current != presented && !graced {
            let family = self.end(&id)?.context("family vanished")?;
            return Ok(Rotation::Reused {
                family_id: id,
                family,
            });
        }
        let token = format!("{REFRESH_PREFIX}{}", random_b64(32)?);
        let new = sha256_b64(&token);
        let old = std::mem::replace(&mut family.current, new.clone());
        if graced {
            family.graced.push(presented);
        }
        family.retired.retain(|(h, _)| *h != old);
        family.retired.push((old, now));
        if family.retired.len() > MAX_RETIRED {
            let (gone, _) = family.retired.remove(0);
            family.graced.retain(|g| *g != gone);
            self.by_token.remove(&gone);
        }
        let family = family.clone();
        self.by_token.insert(new, id.clone());
        self.save()?;
        Ok(Rotation::Rotated {
            family_id: id,
            family,
            refresh_token: token,
        })
    }

    /// Records an access token issued in a family (for family revocation); prunes expired ones.
    pub fn record_access(
        &mut self,
        family_id: &str,
        hash: u64,
        exp: u64,
        now: u64,
    ) -> anyhow::Result<()> {
        if let Some(f) = self.state.families.get_mut(family_id) {
            f.access.retain(|(_, e)| *e > now);
            f.access.push((hash, exp));
            self.save()?;
        }
        Ok(())
    }

    /// Ends a family (durably); returns it.
    pub fn end(&mut self, family_id: &str) -> anyhow::Result<Option<Family>> {
        let Some(f) = self.state.families.remove(family_id) else {
            return Ok(None);
        };
        self.by_token.remove(&f.current);
        for (h, _) in &f.retired {
            self.by_token.remove(h);
        }
        self.save()?;
        Ok(Some(f))
    }

    /// Ends every family matching `pred`; returns them.
    pub fn end_where(&mut self, pred: impl Fn(&Family) -> bool) -> anyhow::Result<Vec<Family>> {
        let ids: Vec<String> = self
            .state
            .families
            .iter()
            .filter(|(_, f)| pred(f))
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::new();
        for id in ids {
            if let Some(f) = self.state.families.remove(&id) {
                out.push(f);
            }
        }
        if !out.is_empty() {
            self.reindex();
            self.save()?;
        }
        Ok(out)
    }

    /// Drops families past their refresh lifetime; returns how many.
    pub fn purge_expired(&mut self, now: u64) -> anyhow::Result<usize> {
        Ok(self.end_where(|f| now >= f.expires_at)?.len())
    }

    /// Replaces the extra claims of `sub` (applied at the next issue or refresh).
    pub fn set_claims(&mut self, sub: &str, claims: Value) -> anyhow::Result<()> {
        self.state.claims.insert(sub.into(), claims);
        self.save()
    }

    /// The extra claims of `sub` (an empty object if none).
    pub fn claims(&self, sub: &str) -> Value {
        self.state
            .claims
            .get(sub)
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default()))
    }

    /// Live families.
    pub fn len(&self) -> usize {
        self.state.families.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.state.families.is_empty()
    }
}

/// The refresh-token families as a component of the daemon. A renewal holds its lock from
/// the rotation to the recording of the new access token ([`Sessions::transaction`]), so two
/// parallel refreshes of one token are one rotation and one reuse.
pub struct Sessions {
    inner: std::sync::Mutex<RefreshStore>,
}

impl Sessions {
    /// Owns `store` from now on.
    pub fn new(store: RefreshStore) -> Self {
        Self {
            inner: std::sync::Mutex::new(store),
        }
    }

    /// The store, locked for one renewal or session change: nothing else changes it until
    /// the guard drops.
    pub fn transaction(&self) -> std::sync::MutexGuard<'_, RefreshStore> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends a family; returns it.
    pub fn end(&self, family_id: &str) -> anyhow::Result<Option<Family>> {
        self.transaction().end(family_id)
    }

    /// Ends every family matching `pred`; returns them.
    pub fn end_where(&self, pred: impl Fn(&Family) -> bool) -> anyhow::Result<Vec<Family>> {
        self.transaction().end_where(pred)
    }

    /// Drops families past their refresh lifetime; returns how many.
    pub fn purge_expired(&self, now: u64) -> anyhow::Result<usize> {
        self.transaction().purge_expired(now)
    }

    /// Replaces the extra claims of `sub`.
    pub fn set_claims(&self, sub: &str, claims: Value) -> anyhow::Result<()> {
        self.transaction().set_claims(sub, claims)
    }

    /// The family id and owning client of a refresh token (live or retired).
    pub fn owner(&self, refresh_token: &str) -> Option<(String, String)> {
        self.transaction()
            .family_of(refresh_token)
            .map(|(id, f)| (id.to_string(), f.client_id.clone()))
    }

    /// Live families.
    pub fn len(&self) -> usize {
        self.transaction().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
