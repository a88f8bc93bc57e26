//! Trusting external issuers: `keys add|list|remove`, and the remote JWKS refresh cycle
//! (plan under the lock, fetch outside it, install under it again).

use anyhow::bail;
use serde::{Deserialize, Serialize};

use super::{Authority, ExternalKey, KeySource, RemoteJwks};
use crate::tokens::jwks::KeyChanges;

/// Reply to `keys_add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyAdded {
    /// The source's id (its JWKS URL, or its first kid).
    pub id: String,
    /// The issuer it verifies.
    pub issuer: String,
    /// Key ids read from the source (none yet for a JWKS URL: fetched by the daemon).
    #[serde(default)]
    pub kids: Vec<String>,
    /// The same source was already trusted: nothing changed.
    #[serde(default)]
    pub unchanged: bool,
}

/// One trusted key or key source in `keys_list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyInfo {
    /// `own`, `pem`, `jwk` or `jwks_url`.
    pub source: String,
    /// The issuer whose tokens it verifies.
    pub issuer: String,
    /// Key id (not for a JWKS URL, which lists `kids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// Algorithm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// Own keys: `active`, `grace` or `retired`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Own keys: unix seconds created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<u64>,
    /// Own keys: unix seconds retired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<u64>,
    /// JWKS URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// JWKS URL: the key ids of the last good fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kids: Option<Vec<String>>,
    /// JWKS URL: unix seconds of the last good fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<u64>,
    /// JWKS URL: the last fetch error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Authority {
    /// Trusts an external issuer's key source (persisted). PEM and JWK sources are parsed
    /// now, so a bad key is refused here; a JWKS URL is fetched by the refresh cycle.
    pub fn add_external(&mut self, ext: ExternalKey) -> anyhow::Result<KeyAdded> {
        if self.state.external.contains(&ext) {
            // Applying the same config twice changes nothing.
            return Ok(KeyAdded {
                id: ext.id()?,
                issuer: ext.issuer.clone(),
                kids: Vec::new(),
                unchanged: true,
            });
        }
        if ext.issuer.is_empty() {
            bail!("--issuer is required: a key verifies the tokens of one issuer only");
        }
        let kids: Vec<String> = match &ext.source {
            KeySource::JwksUrl { url } => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    bail!("a JWKS URL must be http:// or https://");
                }
                if self.remote.iter().any(|r| r.url() == url) {
                    bail!("{url} is already configured");
                }
                Vec::new()
            }
            _ => ext.keys()?.into_iter().map(|k| k.kid).collect(),
        };
        if let Some(dup) = kids.iter().find(|k| self.keys.get(k).is_some()) {
            bail!("a key with kid {dup} is already trusted (keys remove it first)");
        }
        if let KeySource::JwksUrl { .. } = ext.source {
            self.remote
                .push(RemoteJwks::new(ext.clone(), self.settings.jwks_min_refetch));
        }
        self.state.external.push(ext.clone());
        self.save()?;
        self.rebuild_keyset()?;
        Ok(KeyAdded {
            id: ext.id()?,
            issuer: ext.issuer.clone(),
            kids,
            unchanged: false,
        })
    }

    /// Stops trusting an external source, named by its JWKS URL or one of its key ids.
    pub fn remove_external(&mut self, id: &str) -> anyhow::Result<bool> {
        if self.owns_key(id) {
            bail!("{id} is this host's own signing key: `tokenwall revoke --kid {id}` retires it");
        }
        let before = self.state.external.len();
        self.state.external.retain(|e| match &e.source {
            KeySource::JwksUrl { url } => url != id,
            _ => !e.keys().is_ok_and(|keys| keys.iter().any(|k| k.kid == id)),
        });
        self.remote.retain(|r| r.url() != id);
        let removed = self.state.external.len() != before;
        if removed {
            self.save()?;
            self.rebuild_keyset()?;
        }
        Ok(removed)
    }

    /// Trusted keys by state: this host's `active` and `grace` keys, and `external` ones.
    pub fn key_counts(&self) -> Vec<(&'static str, u64)> {
        let grace = self
            .state
            .keys
            .iter()
            .filter(|k| k.retired_at.is_some())
            .count() as u64;
        let own = self.state.keys.len() as u64;
        vec![
            ("active", own - grace),
            ("grace", grace),
            ("retired", self.state.retired.len() as u64),
            ("external", self.keys.len() as u64 - own),
        ]
    }

    /// Every trusted key: this host's own, configured external ones, and remote sets.
    pub fn keys_list(&self) -> anyhow::Result<Vec<KeyInfo>> {
        let active = self.active_kid()?;
        let own = |kid: &str| KeyInfo {
            source: "own".into(),
            issuer: self.settings.issuer.clone(),
            kid: Some(kid.to_string()),
            ..KeyInfo::default()
        };
        let mut out: Vec<KeyInfo> = self
            .state
            .keys
            .iter()
            .map(|k| KeyInfo {
                alg: Some(format!("{:?}", k.alg.jwt())),
                state: Some(if k.kid == active { "active" } else { "grace" }.into()),
                created_at: Some(k.created_at),
                retired_at: k.retired_at,
                ..own(&k.kid)
            })
            .collect();
        out.extend(self.state.retired.iter().map(|r| KeyInfo {
            state: Some("retired".into()),
            retired_at: Some(r.at),
            ..own(&r.kid)
        }));
        for e in &self.state.external {
            match &e.source {
                KeySource::JwksUrl { url } => {
                    let r = self.remote.iter().find(|r| r.url() == url);
                    out.push(KeyInfo {
                        source: "jwks_url".into(),
                        issuer: e.issuer.clone(),
                        url: Some(url.clone()),
                        kids: r.map(|r| r.keys().iter().map(|k| k.kid.clone()).collect()),
                        fetched_at: r.and_then(RemoteJwks::fetched_at),
                        last_error: r.and_then(|r| r.last_error.clone()),
                        ..KeyInfo::default()
                    });
                }
                KeySource::Pem { .. } | KeySource::Jwk { .. } => {
                    for k in e.keys()? {
                        let source = if matches!(e.source, KeySource::Pem { .. }) {
                            "pem"
                        } else {
                            "jwk"
                        };
                        out.push(KeyInfo {
                            source: source.into(),
                            issuer: e.issuer.clone(),
                            kid: Some(k.kid),
                            alg: Some(format!("{:?}", k.alg)),
                            ..KeyInfo::default()
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    /// Remote sources to fetch now: those due a refresh, or (for an unknown `kid` in a token
    /// claiming `issuer`) those of that issuer that may be refetched. Marks them attempted.
    pub fn jwks_to_fetch(
        &mut self,
        now: u64,
        unknown_kid_of: Option<&str>,
    ) -> Vec<(String, ExternalKey)> {
        self.remote
            .iter_mut()
            .filter(|r| match unknown_kid_of {
                Some(iss) => r.source.issuer == iss && r.may_fetch(now),
                None => r.due(now),
            })
            .map(|r| {
                r.mark_attempt(now);
                (r.url().to_string(), r.source.clone())
            })
            .collect()
    }

    /// Installs a fetch result and, when any key was added, replaced (new material under an
    /// old `kid`) or removed, rebuilds the trusted set. Returns what changed.
    pub fn install_jwks(
        &mut self,
        url: &str,
        result: anyhow::Result<Vec<super::TrustedKey>>,
        now: u64,
    ) -> anyhow::Result<KeyChanges> {
        let Some(r) = self.remote.iter_mut().find(|r| r.url() == url) else {
            return Ok(KeyChanges::default()); // removed meanwhile
        };
        let changes = r.install(result, now);
        if !changes.is_empty() {
            self.rebuild_keyset()?;
        }
        Ok(changes)
    }
}
