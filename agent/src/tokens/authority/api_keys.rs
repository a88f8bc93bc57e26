//! API keys: random `twk_…` strings shown once; only their SHA-256 (to recognise them) and
//! their keyed hash (to revoke them in the kernel, through the API-key header) are kept.

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::{Authority, random_b64, sha256_b64};

/// Prefix of generated API keys.
pub const API_KEY_PREFIX: &str = "twk_";

/// One API key as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiKey {
    /// Its name: the identity forward-auth reports.
    pub name: String,
    sha256: String,
    /// Keyed hash (the kernel map key once revoked).
    #[serde(with = "crate::revocation::store::hex_u64")]
    pub hash: u64,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Unix seconds of creation.
    pub created_at: u64,
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        bail!("an API key name must be 1-128 characters of A-Z a-z 0-9 - _ . @");
    }
    Ok(())
}

impl Authority {
    /// Creates an API key; returns it (the only time it is shown).
    pub fn add_api_key(
        &mut self,
        name: &str,
        scopes: Vec<String>,
        hash_of: impl Fn(&str) -> u64,
        now: u64,
    ) -> anyhow::Result<String> {
        let key = format!("{API_KEY_PREFIX}{}", random_b64(32)?);
        self.import_api_key(name, &key, scopes, hash_of, now)?;
        Ok(key)
    }

    /// Registers a given API key (from the config file); a no-op if already registered as is.
    pub fn import_api_key(
        &mut self,
        name: &str,
        key: &str,
        scopes: Vec<String>,
        hash_of: impl Fn(&str) -> u64,
        now: u64,
    ) -> anyhow::Result<()> {
        check_name(name)?;
        if key.len() < 16 || key.bytes().any(|b| b <= 0x20 || b >= 0x7f) {
            bail!("API key {name}: at least 16 printable characters without spaces");
        }
        let sha = sha256_b64(key);
        match self.state.api_keys.get(name) {
            Some(k) if k.sha256 == sha && k.scopes == scopes => return Ok(()),
            Some(_) => bail!(
                "an API key named {name} exists with another key or scopes (apikeys remove it first)"
            ),
            None => {}
        }
        if self.state.api_keys.values().any(|k| k.sha256 == sha) {
            bail!("this API key is already registered under another name");
        }
        self.state.api_keys.insert(
            name.into(),
            ApiKey {
                name: name.into(),
                sha256: sha,
                hash: hash_of(key),
                scopes,
                created_at: now,
            },
        );
        self.save()
    }

    /// Removes an API key; returns it so the caller can revoke its hash.
    pub fn remove_api_key(&mut self, name: &str) -> anyhow::Result<Option<ApiKey>> {
        let removed = self.state.api_keys.remove(name);
        if removed.is_some() {
            self.save()?;
        }
        Ok(removed)
    }

    /// Every API key (no secrets).
    pub fn api_keys(&self) -> impl Iterator<Item = &ApiKey> {
        self.state.api_keys.values()
    }

    /// The API key `presented` is, if any.
    pub fn api_key(&self, presented: &str) -> Option<&ApiKey> {
        let sha = sha256_b64(presented);
        self.state.api_keys.values().find(|k| k.sha256 == sha)
    }
}
