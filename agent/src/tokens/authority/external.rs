//! Trusting external issuers: `keys add|list|remove`, and the remote JWKS refresh cycle
//! (plan under the lock, fetch outside it, install under it again).

use anyhow::bail;
use serde_json::{Value, json};

use super::{Authority, ExternalKey, KeySource, RemoteJwks};
use crate::tokens::jwks::KeyChanges;

impl Authority {
    /// Trusts an external issuer's key source (persisted). PEM and JWK sources are parsed
    /// now, so a bad key is refused here; a JWKS URL is fetched by the refresh cycle.
    pub fn add_external(&mut self, ext: ExternalKey) -> anyhow::Result<Value> {
        if self.state.external.contains(&ext) {
            // Applying the same config twice changes nothing.
            return Ok(json!({ "id": ext.id()?, "issuer": ext.issuer, "unchanged": true }));
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
        Ok(json!({ "id": ext.id()?, "issuer": ext.issuer, "kids": kids }))
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
    pub fn keys_list(&self) -> anyhow::Result<Value> {
        let active = self.active_kid()?;
        let mut out: Vec<Value> = self
            .state
            .keys
            .iter()
            .map(|k| {
                json!({
                    "kid": k.kid, "alg": format!("{:?}", k.alg.jwt()), "issuer": self.settings.issuer,
                    "source": "own", "state": if k.kid == active { "active" } else { "grace" },
                    "created_at": k.created_at, "retired_at": k.retired_at,
                })
            })
            .collect();
        out.extend(self.state.retired.iter().map(|r| {
            json!({ "kid": r.kid, "issuer": self.settings.issuer, "source": "own", "state": "retired", "retired_at": r.at })
        }));
        for e in &self.state.external {
            match &e.source {
                KeySource::JwksUrl { url } => {
                    let r = self.remote.iter().find(|r| r.url() == url);
                    out.push(json!({
                        "url": url, "issuer": e.issuer, "source": "jwks_url",
                        "kids": r.map(|r| r.keys().iter().map(|k| k.kid.clone()).collect::<Vec<_>>()),
                        "fetched_at": r.and_then(RemoteJwks::fetched_at),
                        "last_error": r.and_then(|r| r.last_error.clone()),
                    }));
                }
                KeySource::Pem { .. } | KeySource::Jwk { .. } => {
                    for k in e.keys()? {
                        out.push(json!({
                            "kid": k.kid, "alg": format!("{:?}", k.alg), "issuer": e.issuer,
                            "source": if matches!(e.source, KeySource::Pem { .. }) { "pem" } else { "jwk" },
                        }));
                    }
                }
            }
        }
        Ok(Value::Array(out))
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
