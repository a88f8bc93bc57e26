//! Remote JWKS: fetched over HTTP(S) (ureq with rustls on ring), cached, refreshed in the
//! background, refetched once (rate-limited) when a token names an unknown `kid` — the
//! signing-key rotation case — and never emptied by a failed fetch: the last good set stays.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, bail};
use serde_json::Value;

use super::{
    keys::{ExternalKey, KeySource},
    validate::TrustedKey,
};

/// Background refresh interval, in seconds.
pub const REFRESH_EVERY: u64 = 300;
/// Default least time between two fetches of one URL (refresh, retry or unknown-kid refetch).
pub const MIN_REFETCH: u64 = 30;
/// Largest JWKS document accepted.
const MAX_BYTES: u64 = 256 * 1024;
/// Connect plus read budget of one fetch.
const TIMEOUT: Duration = Duration::from_secs(3);

/// What installing a fetched set changed, by key id. A key counts as replaced when its id
/// stays but its material, algorithm or binding differs (an issuer may reuse a `kid`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyChanges {
    /// Key ids new in the set.
    pub added: Vec<String>,
    /// Key ids still in the set whose key is different.
    pub replaced: Vec<String>,
    /// Key ids gone from the set.
    pub removed: Vec<String>,
}

impl KeyChanges {
    /// The changes from `old` to `new` (the first key of a duplicated id counts, as in the
    /// trusted set).
    pub fn between(old: &[TrustedKey], new: &[TrustedKey]) -> Self {
        let by_kid = |keys: &[TrustedKey]| {
            let mut m = BTreeMap::new();
            for k in keys {
                m.entry(k.kid.clone()).or_insert_with(|| k.clone());
            }
            m
        };
        let (old, new) = (by_kid(old), by_kid(new));
        let mut c = Self::default();
        for (kid, k) in &new {
            match old.get(kid) {
                None => c.added.push(kid.clone()),
                Some(o) if !o.same_key(k) => c.replaced.push(kid.clone()),
                Some(_) => {}
            }
        }
        c.removed = old
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        c
    }

    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.replaced.is_empty() && self.removed.is_empty()
    }

    /// Key ids whose earlier verifications no longer hold: replaced or removed.
    pub fn stale(&self) -> impl Iterator<Item = &str> {
        self.replaced
            .iter()
            .chain(&self.removed)
            .map(String::as_str)
    }

    /// Adds `other`'s changes to these.
    pub fn extend(&mut self, other: KeyChanges) {
        self.added.extend(other.added);
        self.replaced.extend(other.replaced);
        self.removed.extend(other.removed);
    }
}

/// One JWKS URL and what is known of it.
pub struct RemoteJwks {
    /// The configured source (`KeySource::JwksUrl`).
    pub source: ExternalKey,
    keys: Vec<TrustedKey>,
    min_refetch: u64,
    fetched_at: Option<u64>,
    last_attempt: Option<u64>,
    /// The last fetch error, if the last attempt failed.
    pub last_error: Option<String>,
}

impl RemoteJwks {
    /// A source not fetched yet, fetched at most once per `min_refetch` seconds.
    pub fn new(source: ExternalKey, min_refetch: u64) -> Self {
        Self {
            source,
            keys: Vec::new(),
            min_refetch,
            fetched_at: None,
            last_attempt: None,
            last_error: None,
        }
    }

    /// The URL.
    pub fn url(&self) -> &str {
        match &self.source.source {
            KeySource::JwksUrl { url } => url,
            _ => "",
        }
    }

    /// The last good key set.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// Unix seconds of the last successful fetch.
    pub fn fetched_at(&self) -> Option<u64> {
        self.fetched_at
    }

    /// Whether another fetch is allowed at `now` (at most one per `min_refetch` seconds).
    pub fn may_fetch(&self, now: u64) -> bool {
        self.last_attempt
            .is_none_or(|t| now >= t.saturating_add(self.min_refetch))
    }

    /// Whether a background refresh is due at `now`.
    pub fn due(&self, now: u64) -> bool {
        self.may_fetch(now)
            && self
                .fetched_at
                .is_none_or(|t| now >= t.saturating_add(REFRESH_EVERY))
    }

    /// Records that a fetch starts now (so concurrent callers do not all fetch).
    pub fn mark_attempt(&mut self, now: u64) {
        self.last_attempt = Some(now);
    }

    /// Installs a fetch result; on failure the last good set is kept. Returns what changed:
    /// key material is compared, not only key ids.
    pub fn install(&mut self, result: anyhow::Result<Vec<TrustedKey>>, now: u64) -> KeyChanges {
        match result {
            Ok(keys) => {
                let changes = KeyChanges::between(&self.keys, &keys);
                self.keys = keys;
                self.fetched_at = Some(now);
                self.last_error = None;
                changes
            }
            Err(e) => {
                log::warn!("JWKS {}: {e:#}; keeping the last good set", self.url());
                self.last_error = Some(format!("{e:#}"));
                KeyChanges::default()
            }
        }
    }
}

/// Fetches and parses a JWKS (blocking; run it off the async runtime and outside locks).
pub fn fetch(source: &ExternalKey) -> anyhow::Result<Vec<TrustedKey>> {
    let KeySource::JwksUrl { url } = &source.source else {
        bail!("not a JWKS URL");
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .max_redirects(2)
        .build()
        .into();
    let mut resp = agent
        .get(url)
        .header("Accept", "application/json")
        .call()
        .with_context(|| format!("fetching {url}"))?;
    let body = resp
        .body_mut()
        .with_config()
        .limit(MAX_BYTES)
        .read_to_vec()
        .with_context(|| format!("reading {url}"))?;
    let doc: Value = serde_json::from_slice(&body).context("the JWKS is not JSON")?;
    if doc.get("keys").and_then(Value::as_array).is_none() {
        bail!("the document has no keys array");
    }
    source.doc_keys(&doc, source.alg.as_deref().map(parse_alg).transpose()?)
}

fn parse_alg(a: &str) -> anyhow::Result<jsonwebtoken::Algorithm> {
    a.parse()
        .map_err(|_| anyhow::anyhow!("unknown algorithm {a}"))
}

#[cfg(test)]
mod tests;
