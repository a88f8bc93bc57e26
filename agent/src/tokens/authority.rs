//! The token authority: this host's signing keys, its OAuth clients, and the access tokens it
//! issues and validates. State (keys and hashed client secrets) lives in `authority.json` in the
//! state directory, mode 0600, replaced atomically on every change.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use super::index::Indexed;
use super::index::TokenIndex;
use super::jwks::RemoteJwks;
use super::keys::{ExternalKey, KeySource};
use super::private_file::{self, random_b64, sha256_b64};
use super::signing::{self, SigningAlg};
use super::validate::{KeySet, Policy, Rejection, TrustedKey, Verified, validate};

const FILE: &str = "authority.json";

/// One signing key as stored.
#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// Algorithm (keys stored before this field existed are ES256).
    #[serde(default)]
    alg: SigningAlg,
    /// PKCS#8 DER, base64url.
    pkcs8: String,
    created_at: u64,
    /// When a newer key took over; the key keeps verifying (and stays in the JWKS) until the
    /// tokens it signed have expired.
    #[serde(default)]
    retired_at: Option<u64>,
}

/// An OAuth client; only a SHA-256 of its secret is kept (secrets are 256-bit random, so a
/// fast hash is enough: there is nothing to brute-force).
#[derive(Clone, Serialize, Deserialize)]
pub struct Client {
    /// Client id.
    pub id: String,
    /// SHA-256 of the secret, base64url.
    secret_sha256: String,
    /// Scopes the client may request.
    pub scopes: Vec<String>,
}

#[derive(Default, Serialize, Deserialize)]
struct Persisted {
    keys: Vec<StoredKey>,
    clients: BTreeMap<String, Client>,
    /// Keys of external issuers (PEM, JWK, JWKS URL).
    #[serde(default)]
    external: Vec<ExternalKey>,
    /// API keys by name.
    #[serde(default)]
    api_keys: BTreeMap<String, api_keys::ApiKey>,
    /// Own keys that no longer verify, oldest first (at most [`MAX_RETIRED`]).
    #[serde(default)]
    retired: Vec<RetiredKey>,
    /// Own keys revoked by a kid rule, kept verify-only until every token they signed has
    /// expired: a token that verifies under one is known to be genuine, so its header segment
    /// may be learned into the kernel. Nothing is learned from unverified tokens.
    #[serde(default)]
    revoked_keys: Vec<StoredKey>,
}

/// An own signing key that no longer verifies: its grace ran out, or it was removed.
#[derive(Clone, Serialize, Deserialize)]
struct RetiredKey {
    kid: String,
    /// Unix seconds when it stopped verifying.
    at: u64,
}

/// Retired keys remembered (for `keys list` and the `retired` gauge).
const MAX_RETIRED: usize = 64;

/// An access token this authority issued.
#[derive(Clone, Debug, Serialize)]
pub struct Issued {
    /// The JWT (returned once to the caller, never stored).
    #[serde(skip)]
    pub token: String,
    /// Its `jti`.
    pub jti: String,
    /// Unix seconds when it expires.
    pub exp: u64,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// The signing key.
    pub kid: String,
}

/// Issuer settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens.
    pub audience: String,
    /// Access-token lifetime in seconds.
    pub access_ttl: u64,
    /// Least seconds between two fetches of one JWKS URL.
    pub jwks_min_refetch: u64,
    /// Algorithm of new signing keys.
    pub signing_alg: SigningAlg,
}

/// Keys, clients and the token index.
pub struct Authority {
    path: PathBuf,
    settings: Settings,
    state: Persisted,
    /// The trusted keys; shared, so a signature check runs without the authority's lock.
    keys: Arc<KeySet>,
    policy: Policy,
    /// Live tokens by `jti` (bounded).
    pub index: TokenIndex,
    /// Remote JWKS sources with their last good sets.
    remote: Vec<RemoteJwks>,
}

impl Authority {
    /// Loads `authority.json` from `state_dir`, creating a signing key on first use.
    pub fn open(state_dir: &Path, settings: Settings) -> anyhow::Result<Self> {
        super::ring_provider::install();
        let path = state_dir.join(FILE);
        let state: Persisted = private_file::load(&path)?;
        let mut a = Self {
            path,
            settings,
            state,
            keys: Arc::new(KeySet::default()),
            policy: Policy::default(),
            index: TokenIndex::default(),
            remote: Vec::new(),
        };
        a.remote = a
            .state
            .external
            .iter()
            .filter(|e| matches!(e.source, KeySource::JwksUrl { .. }))
            .map(|e| RemoteJwks::new(e.clone(), a.settings.jwks_min_refetch))
            .collect();
        // First start, or the configured algorithm changed: a new active key (the previous one
        // stays trusted through its grace period, so no token is cut short).
        if a.active().map_or(true, |k| k.alg != a.settings.signing_alg) {
            a.rotate_key(crate::clock::now())?;
        }
        a.rebuild_keyset()?;
        Ok(a)
    }

    fn save(&self) -> anyhow::Result<()> {
        private_file::store(&self.path, &self.state)
    }

    fn rebuild_keyset(&mut self) -> anyhow::Result<()> {
        let mut ks = KeySet::default();
        for k in &self.state.keys {
            ks.insert(self.own_trusted(k)?);
        }
        for e in &self.state.external {
            for k in e.keys()? {
                ks.insert(k);
            }
        }
        for r in &self.remote {
            for k in r.keys() {
                // A remote set never shadows a configured key.
                if ks.get(&k.kid).is_none() {
                    ks.insert(k.clone());
                }
            }
        }
        self.keys = Arc::new(ks);
        Ok(())
    }

    /// Makes a new active key (of the configured algorithm). The previous one keeps verifying,
    /// and stays in the JWKS, until every token it signed has expired.
    pub fn rotate_key(&mut self, now: u64) -> anyhow::Result<String> {
        let alg = self.settings.signing_alg;
        let pkcs8 = alg.generate()?;
        let kid = format!("tw-{}", &random_b64(9)?);
        for k in self
            .state
            .keys
            .iter_mut()
            .filter(|k| k.retired_at.is_none())
        {
            k.retired_at = Some(now);
        }
        self.state.keys.push(StoredKey {
            kid: kid.clone(),
            alg,
            pkcs8: B64.encode(&pkcs8),
            created_at: now,
            retired_at: None,
        });
        self.save()?;
        self.rebuild_keyset()?;
        Ok(kid)
    }

    /// Drops previous keys whose tokens have all expired (lifetime plus 5 minutes of leeway);
    /// returns their ids.
    pub fn prune_keys(&mut self, now: u64) -> anyhow::Result<Vec<String>> {
        let grace = self.settings.access_ttl + crate::clock::JWT_EXP_MARGIN;
        let gone: Vec<String> = self
            .state
            .keys
            .iter()
            .filter(|k| k.retired_at.is_some_and(|r| now >= r + grace))
            .map(|k| k.kid.clone())
            .collect();
        let revoked_before = self.state.revoked_keys.len();
        self.state
            .revoked_keys
            .retain(|k| k.retired_at.is_none_or(|r| now < r + grace));
        if self.state.revoked_keys.len() != revoked_before && gone.is_empty() {
            self.save()?;
        }
        if !gone.is_empty() {
            self.state.keys.retain(|k| !gone.contains(&k.kid));
            for kid in &gone {
                self.remember_retired(kid, now);
            }
            self.save()?;
            self.rebuild_keyset()?;
        }
        Ok(gone)
    }

    /// Stops trusting and publishing `kid` (a kid rule revoked it); if it was the active key, a
    /// new one is made first. The key stays verify-only (see [`Authority::verify_revoked`])
    /// until every token it signed has expired. Returns the active key id afterwards.
    pub fn retire_key(&mut self, kid: &str, now: u64) -> anyhow::Result<String> {
        let Some(stored) = self.state.keys.iter().find(|k| k.kid == kid).cloned() else {
            bail!("no signing key {kid} (see the JWKS)");
        };
        if self.active()?.kid == kid {
            self.rotate_key(now.max(self.active()?.created_at + 1))?;
        }
        self.state.keys.retain(|k| k.kid != kid);
        self.state.revoked_keys.push(StoredKey {
            retired_at: Some(now),
            ..stored
        });
        self.remember_retired(kid, now);
        self.save()?;
        self.rebuild_keyset()?;
        self.active_kid()
    }

    /// Verifies `token` under the own keys a kid rule revoked (verify-only, see
    /// [`Authority::retire_key`]), with every other rule of validation. Returns the key id and
    /// this host's issuer when it verifies: the token is genuine, and its key revoked.
    pub fn verify_revoked(&self, token: &str, now: u64) -> Option<(String, String)> {
        if self.state.revoked_keys.is_empty() {
            return None;
        }
        let mut ks = KeySet::default();
        for k in &self.state.revoked_keys {
            ks.insert(self.own_trusted(k).ok()?);
        }
        let v = validate(token, &ks, &self.policy, now).ok()?;
        Some((v.kid, self.settings.issuer.clone()))
    }

    /// How one of this host's keys verifies.
    fn own_trusted(&self, k: &StoredKey) -> anyhow::Result<TrustedKey> {
        Ok(TrustedKey {
            kid: k.kid.clone(),
            alg: k.alg.jwt(),
            key: k.alg.decoding_key(&signing::pkcs8(&k.pkcs8)?)?,
            issuer: self.settings.issuer.clone(),
            audiences: vec![self.settings.audience.clone()],
            typ: Some("at+jwt".into()),
        })
    }

    fn remember_retired(&mut self, kid: &str, now: u64) {
        let r = &mut self.state.retired;
        r.push(RetiredKey {
            kid: kid.to_string(),
            at: now,
        });
        if r.len() > MAX_RETIRED {
            r.remove(0);
        }
    }

    /// Forgets indexed tokens that have expired.
    pub fn prune_index(&mut self, now: u64) {
        self.index.prune(now);
    }

    /// `iss` of the tokens this authority issues.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Whether `kid` is one of this authority's own signing keys.
    pub fn owns_key(&self, kid: &str) -> bool {
        self.state.keys.iter().any(|k| k.kid == kid)
    }

    fn active(&self) -> anyhow::Result<&StoredKey> {
        self.state
            .keys
            .iter()
            .filter(|k| k.retired_at.is_none())
            .max_by_key(|k| k.created_at)
            .context("no signing key")
    }

    /// The active key's id.
    pub fn active_kid(&self) -> anyhow::Result<String> {
        Ok(self.active()?.kid.clone())
    }

    /// The JWS header segment every token of own key `kid` starts with (what the kernel's
    /// header map keys on).
    pub fn header_segment(&self, kid: &str) -> Option<String> {
        self.state
            .keys
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.alg.header_segment(kid))
    }

    /// `/.well-known/jwks.json`: the active key and previous keys still inside their grace.
    pub fn jwks(&self) -> anyhow::Result<Value> {
        let keys = self
            .state
            .keys
            .iter()
            .map(|k| k.alg.jwk(&signing::pkcs8(&k.pkcs8)?, &k.kid))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(json!({ "keys": keys }))
    }

    /// Registers a client and returns its secret (shown once).
    pub fn add_client(&mut self, id: &str, scopes: Vec<String>) -> anyhow::Result<String> {
        let secret = random_b64(32)?;
        self.import_client(id, &secret, scopes)?;
        Ok(secret)
    }

    /// Registers a client with a given secret (from the config file); a no-op when it is
    /// already registered with the same secret and scopes.
    pub fn import_client(
        &mut self,
        id: &str,
        secret: &str,
        scopes: Vec<String>,
    ) -> anyhow::Result<()> {
        if secret.len() < 16 {
            bail!("client {id}: a secret needs at least 16 characters");
        }
        if let Some(c) = self.state.clients.get(id) {
            if c.secret_sha256 == sha256_b64(secret) && c.scopes == scopes {
                return Ok(());
            }
            bail!("client {id} exists with another secret or scopes (clients remove it first)");
        }
        if id.is_empty()
            || id.len() > 128
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bail!("client id must be 1-128 characters of A-Z a-z 0-9 - _ .");
        }
        self.state.clients.insert(
            id.into(),
            Client {
                id: id.into(),
                secret_sha256: sha256_b64(secret),
                scopes,
            },
        );
        self.save()
    }

    /// Removes a client; returns whether it existed.
    pub fn remove_client(&mut self, id: &str) -> anyhow::Result<bool> {
        let existed = self.state.clients.remove(id).is_some();
        if existed {
            self.save()?;
        }
        Ok(existed)
    }

    /// Clients (without secrets).
    pub fn clients(&self) -> Vec<(String, Vec<String>)> {
        self.state
            .clients
            .values()
            .map(|c| (c.id.clone(), c.scopes.clone()))
            .collect()
    }

    /// The client, if `secret` is its secret.
    pub fn authenticate(&self, id: &str, secret: &str) -> Option<&Client> {
        let c = self.state.clients.get(id)?;
        let (given, stored) = (sha256_b64(secret), c.secret_sha256.as_bytes());
        // Compare without an early exit (digests of fixed length).
        let diff = given
            .bytes()
            .zip(stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (given.len() == stored.len() && diff == 0).then_some(c)
    }

    /// Issues an access token (`typ: at+jwt`, RFC 9068) and indexes it under its `jti`.
    pub fn issue(
        &mut self,
        hash_of: impl Fn(&str) -> u64,
        client_id: &str,
        sub: &str,
        scopes: &[String],
        extra: &Value,
        now: u64,
    ) -> anyhow::Result<Issued> {
        let plan = self.plan_issue(client_id, sub, scopes, extra, now)?;
        let signed = plan.sign()?;
        Ok(self.record_issued(plan, signed, hash_of))
    }

    /// Everything an access token needs but its signature (taken under the lock).
    pub fn plan_issue(
        &self,
        client_id: &str,
        sub: &str,
        scopes: &[String],
        extra: &Value,
        now: u64,
    ) -> anyhow::Result<IssuePlan> {
        let key = self.active()?.clone();
        let jti = random_b64(16)?;
        let exp = now + self.settings.access_ttl;
        let scope = scopes.join(" ");
        let mut claims = json!({
            "iss": self.settings.issuer, "sub": sub, "aud": self.settings.audience,
            "exp": exp, "iat": now, "nbf": now, "jti": jti, "client_id": client_id, "scope": scope,
        });
        if let (Value::Object(c), Value::Object(x)) = (&mut claims, extra) {
            for (k, v) in x {
                c.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        Ok(IssuePlan {
            key,
            claims,
            jti,
            exp,
            scope,
            iat: now,
            issuer: self.settings.issuer.clone(),
            sub: sub.into(),
            client_id: client_id.into(),
        })
    }

    /// Indexes a token signed from `plan` and returns it.
    pub fn record_issued(
        &mut self,
        plan: IssuePlan,
        token: String,
        hash_of: impl Fn(&str) -> u64,
    ) -> Issued {
        self.index.insert(
            &plan.jti,
            Indexed {
                hash: hash_of(&token),
                iss: plan.issuer,
                sub: plan.sub,
                client_id: plan.client_id,
                exp: plan.exp,
                iat: plan.iat,
                kid: plan.key.kid.clone(),
                header: hash_of(token.split('.').next().unwrap_or_default()),
            },
        );
        Issued {
            token,
            jti: plan.jti,
            exp: plan.exp,
            scope: plan.scope,
            kid: plan.key.kid,
        }
    }

    /// Validates a token against this authority's keys and indexes it on first sight.
    /// `hash` and `header` are the keyed hashes of the token and of its first segment.
    pub fn validate(
        &mut self,
        token: &str,
        hashes: (u64, u64),
        now: u64,
    ) -> Result<Verified, Rejection> {
        let v = validate(token, &self.keys, &self.policy, now)?;
        self.index_verified(&v, hashes);
        Ok(v)
    }

    /// The trusted keys and the validation policy, to verify without the lock.
    pub fn verifier(&self) -> (Arc<KeySet>, Policy) {
        (self.keys.clone(), self.policy.clone())
    }

    /// Indexes a verified token on first sight (its `jti`).
    pub fn index_verified(&mut self, v: &Verified, (hash, header): (u64, u64)) {
        if let Some(jti) = v.claim_str("jti") {
            self.index.insert(
                jti,
                Indexed {
                    hash,
                    iss: v.claim_str("iss").unwrap_or_default().into(),
                    sub: v.claim_str("sub").unwrap_or_default().into(),
                    client_id: v.claim_str("client_id").unwrap_or_default().into(),
                    exp: v.exp.unwrap_or(0),
                    iat: v.claims.get("iat").and_then(Value::as_u64).unwrap_or(0),
                    kid: v.kid.clone(),
                    header,
                },
            );
        }
    }
}

/// An access token ready to be signed: the key and the claims, taken under the authority's
/// lock; the signature is made outside it.
pub struct IssuePlan {
    key: StoredKey,
    claims: Value,
    jti: String,
    exp: u64,
    scope: String,
    iat: u64,
    issuer: String,
    sub: String,
    client_id: String,
}

impl IssuePlan {
    /// Signs the token (the slow part).
    pub fn sign(&self) -> anyhow::Result<String> {
        Ok(jsonwebtoken::encode(
            &self.key.alg.header(&self.key.kid),
            &self.claims,
            &self.key.alg.encoding_key(&signing::pkcs8(&self.key.pkcs8)?),
        )?)
    }
}

pub mod api_keys;
mod external;
mod shared;
pub use external::{KeyAdded, KeyInfo};
pub use shared::TokenAuthority;

#[cfg(test)]
mod tests;
