//! The token authority as a component of the daemon: it owns its lock and holds it only for
//! bookkeeping. Signature checks and signing run outside it, so checks of never-seen tokens run
//! in parallel on every core instead of one at a time.

use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::{
    super::{
        jwks::KeyChanges,
        keys::ExternalKey,
        validate::{Rejection, Verified, validate},
    },
    Authority, Client, Issued, KeyAdded, KeyInfo,
    api_keys::ApiKey,
};
use crate::tokens::index::Indexed;

/// Keys, clients, API keys and the token index, behind one lock.
pub struct TokenAuthority {
    inner: Mutex<Authority>,
}

impl TokenAuthority {
    /// Owns `authority` from now on.
    pub fn new(authority: Authority) -> Self {
        Self {
            inner: Mutex::new(authority),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Authority> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Validates a token (RFC 8725 rules, every trusted key) and indexes it on first sight.
    /// `hashes` are its revocation key and header-segment hash.
    pub fn validate(
        &self,
        token: &str,
        hashes: (u64, u64),
        now: u64,
    ) -> Result<Verified, Rejection> {
        let (keys, policy) = self.lock().verifier();
        let v = validate(token, &keys, &policy, now)?;
        self.lock().index_verified(&v, hashes);
        Ok(v)
    }

    /// Issues an access token: claims under the lock, signature outside it.
    pub fn issue(
        &self,
        hash_of: impl Fn(&str) -> u64,
        client_id: &str,
        sub: &str,
        scopes: &[String],
        extra: &Value,
        now: u64,
    ) -> anyhow::Result<Issued> {
        let plan = self.lock().plan_issue(client_id, sub, scopes, extra, now)?;
        let token = plan.sign()?;
        Ok(self.lock().record_issued(plan, token, hash_of))
    }

    /// Verifies under own keys a kid rule revoked (see [`Authority::verify_revoked`]).
    pub fn verify_revoked(&self, token: &str, now: u64) -> Option<(String, String)> {
        self.lock().verify_revoked(token, now)
    }

    /// `iss` of the tokens this host issues.
    pub fn issuer(&self) -> String {
        self.lock().issuer().to_string()
    }

    /// The header segment every token of own key `kid` starts with.
    pub fn header_segment(&self, kid: &str) -> Option<String> {
        self.lock().header_segment(kid)
    }

    /// Retires own key `kid` (a kid rule revoked it); returns the active key afterwards.
    pub fn retire_key(&self, kid: &str, now: u64) -> anyhow::Result<String> {
        self.lock().retire_key(kid, now)
    }

    /// A new active signing key; returns (new, previous).
    pub fn rotate_key(&self, now: u64) -> anyhow::Result<(String, Option<String>)> {
        let mut a = self.lock();
        let previous = a.active_kid().ok();
        Ok((a.rotate_key(now)?, previous))
    }

    /// Drops expired index entries and keys past their grace; returns the dropped key ids.
    pub fn prune(&self, now: u64) -> anyhow::Result<Vec<String>> {
        let mut a = self.lock();
        a.prune_index(now);
        a.prune_keys(now)
    }

    /// The live indexed token with `jti`.
    pub fn indexed(&self, jti: &str) -> Option<Indexed> {
        self.lock().index.get(jti).cloned()
    }

    /// Live indexed tokens matching `keep`, with their `jti`.
    pub fn indexed_where(&self, keep: impl Fn(&Indexed) -> bool) -> Vec<(String, Indexed)> {
        self.lock()
            .index
            .iter()
            .filter(|(_, ix)| keep(ix))
            .map(|(j, ix)| (j.clone(), ix.clone()))
            .collect()
    }

    /// `/.well-known/jwks.json`.
    pub fn jwks(&self) -> anyhow::Result<Value> {
        self.lock().jwks()
    }

    /// Registers a client; returns its secret (shown once).
    pub fn add_client(&self, id: &str, scopes: Vec<String>) -> anyhow::Result<String> {
        self.lock().add_client(id, scopes)
    }

    /// Removes a client; returns whether it existed.
    pub fn remove_client(&self, id: &str) -> anyhow::Result<bool> {
        self.lock().remove_client(id)
    }

    /// Clients (without secrets).
    pub fn clients(&self) -> Vec<(String, Vec<String>)> {
        self.lock().clients()
    }

    /// The client, if `secret` is its secret.
    pub fn authenticate(&self, id: &str, secret: &str) -> Option<Client> {
        self.lock().authenticate(id, secret).cloned()
    }

    /// Trusts an external key source.
    pub fn add_external(&self, key: ExternalKey) -> anyhow::Result<KeyAdded> {
        self.lock().add_external(key)
    }

    /// Stops trusting an external key source; returns whether it existed.
    pub fn remove_external(&self, id: &str) -> anyhow::Result<bool> {
        self.lock().remove_external(id)
    }

    /// Trusted keys and sources.
    pub fn keys_list(&self) -> anyhow::Result<Vec<KeyInfo>> {
        self.lock().keys_list()
    }

    /// Keys by state, for the `signing_keys` gauge.
    pub fn key_counts(&self) -> Vec<(&'static str, u64)> {
        self.lock().key_counts()
    }

    /// Remote JWKS to fetch now (see [`Authority::jwks_to_fetch`]).
    pub fn jwks_to_fetch(
        &self,
        now: u64,
        unknown_kid_of: Option<&str>,
    ) -> Vec<(String, ExternalKey)> {
        self.lock().jwks_to_fetch(now, unknown_kid_of)
    }

    /// Installs a fetched JWKS (see [`Authority::install_jwks`]).
    pub fn install_jwks(
        &self,
        url: &str,
        result: anyhow::Result<Vec<super::super::validate::TrustedKey>>,
        now: u64,
    ) -> anyhow::Result<KeyChanges> {
        self.lock().install_jwks(url, result, now)
    }

    /// Creates an API key (returned once).
    pub fn add_api_key(
        &self,
        name: &str,
        scopes: Vec<String>,
        hash_of: impl Fn(&str) -> u64,
        now: u64,
    ) -> anyhow::Result<String> {
        self.lock().add_api_key(name, scopes, hash_of, now)
    }

    /// Forgets an API key; returns it.
    pub fn remove_api_key(&self, name: &str) -> anyhow::Result<Option<ApiKey>> {
        self.lock().remove_api_key(name)
    }

    /// API keys.
    pub fn api_keys(&self) -> Vec<ApiKey> {
        self.lock().api_keys().cloned().collect()
    }

    /// The API key presented, if it is one.
    pub fn api_key(&self, presented: &str) -> Option<ApiKey> {
        self.lock().api_key(presented).cloned()
    }
}
