//! Revocation rules (by `jti`, subject, client and signing key) and the token check that
//! applies them. A rule is stored durably as a keyed hash of its name and acts twice:
//! at once, by pushing the hash of every indexed live token it covers into the kernel map, and
//! later, by refusing any token it covers on first sight and pushing that token's hash too
//! ("learned drop"), so the token's next request stops in the kernel.

use std::{sync::Arc, time::Instant};

use agent_common::hash::{HashKey, token_hash};
use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    api::TokenRef,
    hashkey::fingerprint,
    lifecycle::{EventKind, LifecycleEvent},
    service::{Inner, Service},
    store::{Revocation, Scope},
    tokens::{
        jwks::KeyChanges,
        validate::{Rejection, Verified},
    },
    until::{JWT_EXP_MARGIN, now},
};

/// What a rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// One token id.
    Jti,
    /// A subject (`sub`): every token issued to it until now.
    Sub,
    /// An OAuth client (`client_id`): every token issued to it until now.
    Client,
    /// A signing key (`kid`): every token it signed, ever.
    Kid,
}

impl RuleKind {
    fn scope(self) -> Scope {
        match self {
            RuleKind::Jti => Scope::Jti,
            RuleKind::Sub => Scope::Subject,
            RuleKind::Client => Scope::Client,
            RuleKind::Kid => Scope::Kid,
        }
    }

    /// Name for output.
    pub fn name(self) -> &'static str {
        match self {
            RuleKind::Jti => "jti",
            RuleKind::Sub => "sub",
            RuleKind::Client => "client",
            RuleKind::Kid => "kid",
        }
    }
}

/// The stored hash of a rule: domain-separated from token hashes and from other kinds.
pub fn rule_hash(key: &HashKey, kind: RuleKind, name: &str) -> u64 {
    token_hash(
        key,
        format!("tokenwall-rule\0{}\0{name}", kind.name()).as_bytes(),
    )
}

/// Why a checked token was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Revoked, directly or by a rule (the description says which, without names).
    Revoked(&'static str),
    /// Failed validation.
    Invalid(Rejection),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Revoked(what) => write!(f, "token revoked ({what})"),
            Refusal::Invalid(r) => r.fmt(f),
        }
    }
}

/// A claim of a token's payload read without verifying it (only to pick a JWKS to refetch).
fn unverified_claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > 8192 {
        return None;
    }
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v.get(name)?.as_str().map(str::to_string)
}

/// A JWT's first segment (the whole token when it has no dot).
fn header_segment(token: &str) -> &str {
    token.split('.').next().unwrap_or_default()
}

/// Whether the store revokes the token itself or its header segment (a signing key).
fn revoked_in_store(inner: &Inner, hash: u64, header_hash: u64) -> Option<Refusal> {
    if inner.store.get(hash).is_some() {
        return Some(Refusal::Revoked("token"));
    }
    inner
        .store
        .get(header_hash)
        .is_some_and(|r| r.scope == Scope::SigningKey)
        .then_some(Refusal::Revoked("signing key"))
}

/// The string claims a rule matches on.
fn claim<'a>(v: &'a Verified, name: &str) -> &'a str {
    v.claim_str(name).unwrap_or_default()
}

impl Service {
    /// Checks a bearer token: revoked (by hash, header segment or rule), then the cache, then
    /// full validation. A token a rule covers is learned into the kernel map.
    pub fn check_token(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let (hash, started) = (token_hash(&self.key, token.as_bytes()), Instant::now());
        let result = self.check_token_uncounted(token, hash);
        self.count(hash, started, &result);
        result
    }

    /// [`check_token`](Self::check_token) for when the answer must not wait (an async
    /// worker): answers only a revoked token, or a cached one no rule covers, and only when
    /// no lock is held elsewhere. `None` means: call `check_token` on a blocking thread.
    pub fn check_token_now(&self, token: &str) -> Option<Result<Arc<Verified>, Refusal>> {
        let (hash, started) = (token_hash(&self.key, token.as_bytes()), Instant::now());
        let header_hash = token_hash(&self.key, header_segment(token).as_bytes());
        let result = {
            let (inner, mut cache) = self.try_lock()?;
            match revoked_in_store(&inner, hash, header_hash) {
                Some(refusal) => Err(refusal),
                None => {
                    let v = cache.get(hash, now())?;
                    if self.covering_rule_in(&inner, &v).is_some() {
                        return None;
                    }
                    Ok(v)
                }
            }
        };
        self.count(hash, started, &result);
        Some(result)
    }

    /// Counts a check in the metrics, when monitoring is on.
    fn count(&self, hash: u64, started: Instant, result: &Result<Arc<Verified>, Refusal>) {
        if self.monitoring_on() {
            self.metrics
                .validation_seconds
                .observe(started.elapsed().as_secs_f64());
            self.count_check(hash, result);
        }
    }

    fn check_token_uncounted(&self, token: &str, hash: u64) -> Result<Arc<Verified>, Refusal> {
        let header = header_segment(token);
        let header_hash = token_hash(&self.key, header.as_bytes());
        if let Some(refusal) = revoked_in_store(&self.lock(), hash, header_hash) {
            return Err(refusal);
        }
        let now = now();
        let (cached, generation) = {
            let mut cache = self.cache();
            (cache.get(hash, now), cache.generation())
        };
        let v = match cached {
            Some(v) => v,
            None => {
                let mut result = self.validate_uncached(token, (hash, header_hash), now);
                // An unknown kid may be a rotation at a remote issuer, and a bad signature a
                // key replaced under its old kid: refetch that issuer's JWKS once
                // (rate-limited per URL) and try again.
                if matches!(result, Err(Rejection::UnknownKey | Rejection::BadSignature))
                    && let Some(iss) = unverified_claim(token, "iss")
                    && self.refresh_jwks(Some(&iss))
                {
                    result = self.validate_uncached(token, (hash, header_hash), now);
                }
                match result {
                    Ok(v) => {
                        let v = Arc::new(v);
                        // Not cached if a key changed while it was verified (the generation
                        // was read before).
                        self.cache()
                            .insert_unless_dropped(hash, v.clone(), now, generation);
                        v
                    }
                    Err(Rejection::UnknownKey) => {
                        return Err(self.learn_header(header, header_hash));
                    }
                    Err(r) => return Err(Refusal::Invalid(r)),
                }
            }
        };
        if let Some(what) = self.covering_rule(&v) {
            self.cache().remove(hash);
            let until = v.exp.map(|e| e + JWT_EXP_MARGIN);
            let reason = format!("learned: covered by a {what} rule");
            // A kid rule covers every token under this header: learn the header segment.
            let learned = if what == "kid" {
                self.revoke_header(header_hash, reason).map(|_| ())
            } else {
                self.revoke(
                    &TokenRef::Hash(fingerprint(hash)),
                    until,
                    Some(reason),
                    false,
                )
                .map(|_| ())
            };
            self.metrics
                .count_revocation(if what == "kid" { "kid" } else { "token" }, "learned");
            let learned = learned.and_then(|()| {
                self.record(
                    "system",
                    "learned_revoke",
                    vec![fingerprint(if what == "kid" { header_hash } else { hash })],
                    &format!("covered by a {what} rule"),
                )
            });
            if let Err(e) = learned {
                log::warn!(
                    "learning {} into the kernel failed: {e:#}",
                    fingerprint(hash)
                );
            }
            return Err(Refusal::Revoked(what));
        }
        Ok(v)
    }

    /// Fetches remote JWKS: those due a refresh, or (for an unknown kid or a bad signature)
    /// those of `issuer`. Network I/O happens outside every lock. Cached verifications made
    /// with a key that was replaced (new material under its `kid`) or removed are dropped.
    /// Returns whether any trusted key changed.
    pub fn refresh_jwks(&self, unknown_kid_of: Option<&str>) -> bool {
        let now = now();
        let plan = self.authority().jwks_to_fetch(now, unknown_kid_of);
        let mut changes = KeyChanges::default();
        for (url, source) in plan {
            let result = crate::tokens::jwks::fetch(&source);
            match self.authority().install_jwks(&url, result, now) {
                Ok(c) => {
                    if !c.is_empty() {
                        log::info!(
                            "JWKS {url}: keys added {:?}, replaced {:?}, removed {:?}",
                            c.added,
                            c.replaced,
                            c.removed
                        );
                    }
                    changes.extend(c);
                }
                Err(e) => log::warn!("installing the JWKS of {url}: {e:#}"),
            }
        }
        // After the new set is in place: a verification racing with this is either made with
        // the new set or dropped here (or, by the generation, never inserted).
        if changes.stale().next().is_some() {
            let dropped = self.cache().remove_kids(changes.stale());
            if dropped > 0 {
                log::info!("{dropped} cached verifications of replaced or removed keys dropped");
            }
        }
        !changes.is_empty()
    }

    fn validate_uncached(
        &self,
        token: &str,
        hashes: (u64, u64),
        now: u64,
    ) -> Result<Verified, Rejection> {
        self.authority().validate(token, hashes, now)
    }

    /// The kind of the first rule covering a verified token.
    fn covering_rule(&self, v: &Verified) -> Option<&'static str> {
        self.covering_rule_in(&self.lock(), v)
    }

    fn covering_rule_in(&self, inner: &Inner, v: &Verified) -> Option<&'static str> {
        let iat = v.claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
        let rule = |kind: RuleKind, name: &str| {
            (!name.is_empty())
                .then(|| inner.store.get(rule_hash(&self.key, kind, name)))
                .flatten()
                .filter(|r| r.scope == kind.scope())
        };
        if rule(RuleKind::Jti, claim(v, "jti")).is_some() {
            return Some("jti");
        }
        if rule(RuleKind::Kid, &v.kid).is_some() {
            return Some("kid");
        }
        for (kind, name) in [
            (RuleKind::Sub, claim(v, "sub")),
            (RuleKind::Client, claim(v, "client_id")),
        ] {
            if rule(kind, name).is_some_and(|r| iat <= r.revoked_at) {
                return Some(kind.name());
            }
        }
        None
    }

    /// A token whose `kid` is unknown: if a kid rule names it, its header segment goes into the
    /// kernel's header map, so every token under that header is dropped from now on.
    fn learn_header(&self, header: &str, header_hash: u64) -> Refusal {
        let kid = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header)
            .ok()
            .and_then(|raw| serde_json::from_slice::<Value>(&raw).ok())
            .and_then(|h| h.get("kid").and_then(Value::as_str).map(str::to_string));
        let Some(kid) = kid else {
            return Refusal::Invalid(Rejection::UnknownKey);
        };
        let ruled = self
            .lock()
            .store
            .get(rule_hash(&self.key, RuleKind::Kid, &kid))
            .is_some();
        if !ruled {
            return Refusal::Invalid(Rejection::UnknownKey);
        }
        if let Err(e) = self.revoke_header(header_hash, format!("learned: signing key {kid}")) {
            log::warn!("learning a header of key {kid} failed: {e:#}");
        }
        Refusal::Revoked("signing key")
    }

    /// Stores a revoked JWS header segment (durably) and puts it in the kernel's header map.
    fn revoke_header(&self, hash: u64, reason: String) -> anyhow::Result<bool> {
        self.emit(LifecycleEvent::now(
            EventKind::Revoked,
            Some(fingerprint(hash)),
            format!("signing-key header segment: {reason}"),
        ));
        let rev = Revocation {
            hash,
            expires_at: 0,
            reason,
            revoked_at: now(),
            api_key: false,
            scope: Scope::SigningKey,
        };
        let mut inner = self.lock();
        let changed = inner.store.revoke(rev)?;
        let kept = inner.store.get(hash).cloned().context("revocation lost")?;
        crate::service::apply(&mut inner, &kept)?;
        Ok(changed)
    }

    /// Revokes by `jti`, subject, client or signing key: the rule is stored durably, every
    /// indexed live token it covers is pushed into the kernel map, and later tokens it covers
    /// are refused and learned. Revoking one of this host's own keys also retires it (a new
    /// active key is made if needed) and puts its header segment in the kernel's header map.
    pub fn revoke_by(
        &self,
        kind: RuleKind,
        name: &str,
        until: Option<u64>,
        reason: Option<String>,
    ) -> anyhow::Result<Value> {
        if name.is_empty() || name.len() > 1024 || name.chars().any(char::is_control) {
            bail!("a {} must be 1-1024 printable characters", kind.name());
        }
        let now = now();
        let reason = reason.unwrap_or_else(|| format!("{} {name}", kind.name()));
        let hash = rule_hash(&self.key, kind, name);
        // Tokens the rule covers now: (token hash, expiry, header-segment hash).
        let covered: Vec<(u64, u64, u64)> = {
            let auth = self.authority();
            match kind {
                RuleKind::Jti => auth.index.get(name).into_iter().collect::<Vec<_>>(),
                _ => auth
                    .index
                    .values()
                    .filter(|ix| match kind {
                        RuleKind::Sub => ix.sub == name,
                        RuleKind::Client => ix.client_id == name,
                        _ => ix.kid == name,
                    })
                    .collect(),
            }
            .into_iter()
            .filter(|ix| ix.exp > now)
            .map(|ix| (ix.hash, ix.exp, ix.header))
            .collect()
        };
        let expires_at = match (until, kind) {
            (Some(u), _) => u,
            // A jti names one token: the rule can lapse with it when its expiry is known.
            (None, RuleKind::Jti) => covered.first().map_or(0, |c| c.1 + JWT_EXP_MARGIN),
            (None, _) => 0,
        };
        let changed = {
            let mut inner = self.lock();
            inner
                .store
                .revoke(Revocation {
                    hash,
                    expires_at,
                    reason: reason.clone(),
                    revoked_at: now,
                    api_key: false,
                    scope: kind.scope(),
                })
                .context("recording the rule")?
        };
        let mut active_kid = None;
        let mut headers = std::collections::BTreeSet::new();
        let mut pushed = 0;
        if kind == RuleKind::Kid {
            // One header-map entry covers every token of the key, seen or not.
            let own_segment = self.authority().header_segment(name);
            if let Some(segment) = own_segment {
                active_kid = Some(self.authority().retire_key(name, now)?);
                headers.insert(token_hash(&self.key, segment.as_bytes()));
            }
            headers.extend(covered.iter().map(|c| c.2));
            for h in &headers {
                self.revoke_header(*h, reason.clone())?;
            }
        } else {
            for (h, exp, _) in &covered {
                self.revoke(
                    &TokenRef::Hash(fingerprint(*h)),
                    Some(exp + JWT_EXP_MARGIN),
                    Some(reason.clone()),
                    false,
                )?;
                self.cache().remove(*h);
                pushed += 1;
            }
        }
        if kind != RuleKind::Jti {
            // Whole groups may be cached; the rule check runs on every hit anyway, this only
            // frees the memory early.
            self.cache().clear();
        }
        let families = self.revoke_sessions_by(kind, name, &reason)?;
        self.emit(LifecycleEvent::now(
            EventKind::Revoked,
            None,
            format!("rule {} {name}: {reason}", kind.name()),
        ));
        log::warn!(
            "revoked by {} {} ({pushed} live tokens pushed to the kernel, {families} sessions ended)",
            kind.name(),
            fingerprint(hash)
        );
        Ok(json!({
            "kind": kind.name(), "name": name, "fingerprint": fingerprint(hash),
            "changed": changed, "tokens_pushed": pushed, "sessions_revoked": families,
            "headers_pushed": headers.len(), "active_kid": active_kid,
        }))
    }
}
