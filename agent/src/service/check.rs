//! Revocation rules (by `jti`, subject, client and signing key) and the token check that
//! applies them. A rule is stored durably as a keyed hash of its name and acts twice:
//! at once, by pushing the hash of every indexed live token it covers into the kernel map, and
//! later, by refusing any token it covers on first sight and pushing that token's hash too
//! ("learned drop"), so the token's next request stops in the kernel.

use std::{sync::Arc, time::Instant};

use agent_common::hash::{HashKey, token_hash};
use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{
    clock::{JWT_EXP_MARGIN, now},
    control::protocol::{RuleReply, TokenRef},
    monitoring::lifecycle::{EventKind, LifecycleEvent},
    revocation::hash_key::{TokenHashes, fingerprint},
    revocation::store::{Revocation, Scope},
    service::{Inner, Service},
    tokens::{
        jwks::KeyChanges,
        validate::{Rejection, Verified},
    },
    types::TokenHash,
};

pub use crate::types::RuleKind;

/// The store scope of a rule of this kind.
fn scope(kind: RuleKind) -> Scope {
    match kind {
        RuleKind::Jti => Scope::Jti,
        RuleKind::Sub => Scope::Subject,
        RuleKind::Client => Scope::Client,
        RuleKind::Kid => Scope::Kid,
    }
}

/// The stored hash of a rule: domain-separated from token hashes, from other kinds, and
/// between issuers. `issuer: None` covers every issuer (and keeps the form rules had before
/// they could be scoped, so stored rules keep working); `Some(iss)` covers tokens whose `iss`
/// claim is exactly `iss`.
pub fn rule_hash(key: &HashKey, kind: RuleKind, issuer: Option<&str>, name: &str) -> u64 {
    let text = match issuer {
        None => format!("tokenwall-rule\0{}\0{name}", kind.name()),
        Some(iss) => format!("tokenwall-rule\0{}\0{name}\0iss\0{iss}", kind.name()),
    };
    token_hash(key, text.as_bytes())
}

/// Learned JWS header segments kept per signing key: an issuer signs every token of one key
/// under one header (a few when it changes `typ` or `alg` spelling), so more than this is
/// not learned (and counted).
pub const MAX_LEARNED_HEADERS_PER_KEY: usize = 16;

pub use crate::types::Refusal;
use crate::types::RevokedBy;

/// A string claim of a token's payload read without verifying it (to pick a JWKS to refetch,
/// or the jti and issuer of a token an operator revoked).
pub(crate) fn unverified_claim(token: &str, name: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    if payload.len() > 8192 {
        return None;
    }
    let raw =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).ok()?;
    let v: Value = serde_json::from_slice(&raw).ok()?;
    v.get(name)?.as_str().map(str::to_string)
}

/// How the store revokes a token, if it does.
enum StoreHit {
    /// By its revocation key or its header segment (a signing key).
    Revoked(Refusal),
    /// By the hash of the whole token, as revocations of JWTs were keyed before signing-input
    /// keying: refused, and its revocation key should be learned so the kernel drops it too.
    Legacy {
        /// Unix seconds when the old revocation lapses (0: never).
        expires_at: u64,
    },
}

/// Whether the store revokes the token itself or its header segment (a signing key).
fn revoked_in_store(inner: &Inner, h: &TokenHashes) -> Option<StoreHit> {
    if inner.store.get(h.key).is_some() {
        return Some(StoreHit::Revoked(Refusal::Revoked(RevokedBy::Token)));
    }
    if inner
        .store
        .get(h.header)
        .is_some_and(|r| r.scope == Scope::SigningKey)
    {
        return Some(StoreHit::Revoked(Refusal::Revoked(RevokedBy::SigningKey)));
    }
    if h.whole != h.key
        && let Some(r) = inner.store.get(h.whole).filter(|r| r.scope == Scope::Token)
    {
        return Some(StoreHit::Legacy {
            expires_at: r.expires_at,
        });
    }
    None
}

/// The string claims a rule matches on.
fn claim<'a>(v: &'a Verified, name: &str) -> &'a str {
    v.claim_str(name).unwrap_or_default()
}

impl Service {
    /// Checks a bearer token: revoked (by its revocation key, header segment or rule), then the
    /// cache, then full validation. A token a rule covers is learned into the kernel map.
    pub fn check_token(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let (hashes, started) = (TokenHashes::of(&self.key, token), Instant::now());
        let result = self.check_token_uncounted(token, &hashes);
        self.count(hashes.key, started, &result);
        result
    }

    /// [`check_token`](Self::check_token) for when the answer must not wait (an async
    /// worker): answers only a revoked token, or a cached one no rule covers, and only when
    /// no lock is held elsewhere. `None` means: call `check_token` on a blocking thread.
    pub fn check_token_now(&self, token: &str) -> Option<Result<Arc<Verified>, Refusal>> {
        let (hashes, started) = (TokenHashes::of(&self.key, token), Instant::now());
        let result = {
            let (inner, mut cache) = self.try_lock()?;
            match revoked_in_store(&inner, &hashes) {
                Some(StoreHit::Revoked(refusal)) => Err(refusal),
                // Learning needs the store: the blocking path does it.
                Some(StoreHit::Legacy { .. }) => return None,
                None => {
                    let v = cache.get(hashes.whole, now())?;
                    if self.covering_rule_in(&inner, &v).is_some() {
                        return None;
                    }
                    Ok(v)
                }
            }
        };
        self.count(hashes.key, started, &result);
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

    fn check_token_uncounted(
        &self,
        token: &str,
        hashes: &TokenHashes,
    ) -> Result<Arc<Verified>, Refusal> {
        let hit = revoked_in_store(&self.lock(), hashes);
        match hit {
            Some(StoreHit::Revoked(refusal)) => return Err(refusal),
            Some(StoreHit::Legacy { expires_at }) => {
                self.learn_token(hashes.key, Some(expires_at).filter(|e| *e != 0), "token");
                return Err(Refusal::Revoked(RevokedBy::Token));
            }
            None => {}
        }
        let now = now();
        let (cached, generation) = {
            let mut cache = self.cache();
            (cache.get(hashes.whole, now), cache.generation())
        };
        let v = match cached {
            Some(v) => v,
            None => {
                let mut result = self.validate_uncached(token, hashes, now);
                // An unknown kid may be a rotation at a remote issuer, and a bad signature a
                // key replaced under its old kid: refetch that issuer's JWKS once
                // (rate-limited per URL) and try again.
                if matches!(result, Err(Rejection::UnknownKey | Rejection::BadSignature))
                    && let Some(iss) = unverified_claim(token, "iss")
                    && self.refresh_jwks(Some(&iss))
                {
                    result = self.validate_uncached(token, hashes, now);
                }
                match result {
                    Ok(v) => {
                        let v = Arc::new(v);
                        // Not cached if a key changed while it was verified (the generation
                        // was read before).
                        self.cache().insert_unless_dropped(
                            hashes.whole,
                            v.clone(),
                            now,
                            generation,
                        );
                        v
                    }
                    Err(Rejection::UnknownKey) => return Err(self.learn_header(token, hashes)),
                    Err(r) => return Err(Refusal::Invalid(r)),
                }
            }
        };
        if let Some(kind) = self.covering_rule(&v) {
            self.cache().remove(hashes.whole);
            if kind == RuleKind::Kid {
                // A kid rule covers every token under this (verified) header.
                self.learn_header_of(&v.kid, hashes.header);
            } else {
                self.learn_token(hashes.key, v.exp.map(|e| e + JWT_EXP_MARGIN), kind.name());
            }
            return Err(Refusal::Revoked(RevokedBy::Rule(kind)));
        }
        Ok(v)
    }

    /// Records the revocation key of a token a rule or an old revocation covers, so its next
    /// request stops in the kernel. Failures are logged: the refusal stands either way.
    fn learn_token(&self, hash: u64, until: Option<u64>, what: &str) {
        let reason = format!("learned: covered by a {what} rule");
        let learned = self
            .revoke(&TokenRef::Hash(TokenHash(hash)), until, Some(reason), false)
            .and_then(|_| {
                self.metrics.count_revocation("token", "learned");
                self.record(
                    "system",
                    "learned_revoke",
                    vec![fingerprint(hash)],
                    &format!("covered by a {what} rule"),
                )
            });
        if let Err(e) = learned {
            log::warn!("learning {} failed: {e:#}", fingerprint(hash));
        }
    }

    /// Records a verified token's JWS header segment under a revoked `kid` (at most
    /// [`MAX_LEARNED_HEADERS_PER_KEY`] per key; more are counted and refused).
    fn learn_header_of(&self, kid: &str, header_hash: u64) {
        let allowed = {
            let mut inner = self.lock();
            if inner.store.get(header_hash).is_some() {
                return;
            }
            let n = inner.learned_headers.entry(kid.to_string()).or_default();
            let allowed = *n < MAX_LEARNED_HEADERS_PER_KEY;
            *n += usize::from(allowed);
            allowed
        };
        if !allowed {
            self.metrics.learn_refused.inc();
            log::debug!("not learning another header of key {kid}: its limit is reached");
            return;
        }
        let learned = self
            .revoke_header(header_hash, format!("learned: signing key {kid}"))
            .and_then(|_| {
                self.metrics.count_revocation("kid", "learned");
                self.record(
                    "system",
                    "learned_revoke",
                    vec![fingerprint(header_hash)],
                    &format!("header of revoked key {kid}"),
                )
            });
        if let Err(e) = learned {
            log::warn!("learning a header of key {kid} failed: {e:#}");
        }
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
        hashes: &TokenHashes,
        now: u64,
    ) -> Result<Verified, Rejection> {
        self.authority()
            .validate(token, (hashes.key, hashes.header), now)
    }

    /// The kind of the first rule covering a verified token.
    fn covering_rule(&self, v: &Verified) -> Option<RuleKind> {
        self.covering_rule_in(&self.lock(), v)
    }

    fn covering_rule_in(&self, inner: &Inner, v: &Verified) -> Option<RuleKind> {
        let iat = v.claims.get("iat").and_then(Value::as_u64).unwrap_or(0);
        let iss = claim(v, "iss");
        // A rule for every issuer, or one scoped to this token's issuer.
        let rule = |kind: RuleKind, name: &str| {
            if name.is_empty() {
                return None;
            }
            [None, Some(iss)]
                .into_iter()
                .filter_map(|scope| inner.store.get(rule_hash(&self.key, kind, scope, name)))
                .find(|r| r.scope == scope(kind))
        };
        if rule(RuleKind::Jti, claim(v, "jti")).is_some() {
            return Some(RuleKind::Jti);
        }
        if rule(RuleKind::Kid, &v.kid).is_some() {
            return Some(RuleKind::Kid);
        }
        for (kind, name) in [
            (RuleKind::Sub, claim(v, "sub")),
            (RuleKind::Client, claim(v, "client_id")),
        ] {
            if rule(kind, name).is_some_and(|r| iat <= r.revoked_at) {
                return Some(kind);
            }
        }
        None
    }

    /// A token whose `kid` is not trusted. If it verifies under one of this host's keys that a
    /// kid rule revoked (kept verify-only for exactly this), its header segment is learned into
    /// the kernel's header map. Nothing is learned from a token whose signature was not
    /// verified: a forged header under a revoked `kid` is just an unknown key.
    fn learn_header(&self, token: &str, hashes: &TokenHashes) -> Refusal {
        let unknown = Refusal::Invalid(Rejection::UnknownKey);
        let Some((kid, issuer)) = self.authority().verify_revoked(token, now()) else {
            return unknown;
        };
        let ruled = {
            let inner = self.lock();
            [None, Some(issuer.as_str())].into_iter().any(|scope| {
                inner
                    .store
                    .get(rule_hash(&self.key, RuleKind::Kid, scope, &kid))
                    .is_some()
            })
        };
        if !ruled {
            return unknown;
        }
        self.learn_header_of(&kid, hashes.header);
        Refusal::Revoked(RevokedBy::SigningKey)
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
        self.push_to_kernel(&mut inner, &kept);
        Ok(changed)
    }

    /// Revokes by `jti`, subject, client or signing key, for tokens of `issuer` (`None`: of
    /// every issuer): the rule is stored durably, every indexed live token it covers is pushed
    /// into the kernel map, and later tokens it covers are refused and learned. Revoking one of
    /// this host's own keys also retires it (a new active key is made if needed, the old one
    /// stays verify-only) and puts its header segment in the kernel's header map; sessions are
    /// ended when the rule covers this host's own issuer.
    pub fn revoke_by(
        &self,
        kind: RuleKind,
        name: &str,
        issuer: Option<&str>,
        until: Option<u64>,
        reason: Option<String>,
    ) -> anyhow::Result<RuleReply> {
        if name.is_empty() || name.len() > 1024 || name.chars().any(char::is_control) {
            bail!("a {} must be 1-1024 printable characters", kind.name());
        }
        if issuer.is_some_and(|i| i.is_empty() || i.len() > 1024 || i.chars().any(char::is_control))
        {
            bail!("an issuer must be 1-1024 printable characters");
        }
        let now = now();
        let reason = reason.unwrap_or_else(|| format!("{} {name}", kind.name()));
        let hash = rule_hash(&self.key, kind, issuer, name);
        let own_issuer = self.authority().issuer().to_string();
        let covers_own = issuer.is_none_or(|i| i == own_issuer);
        // Tokens the rule covers now: (token hash, expiry, header-segment hash).
        let covered: Vec<(u64, u64, u64)> = {
            let auth = self.authority();
            match kind {
                RuleKind::Jti => auth.index.get(name).into_iter().collect::<Vec<_>>(),
                _ => auth
                    .index
                    .iter()
                    .map(|(_, ix)| ix)
                    .filter(|ix| match kind {
                        RuleKind::Sub => ix.sub == name,
                        RuleKind::Client => ix.client_id == name,
                        _ => ix.kid == name,
                    })
                    .collect(),
            }
            .into_iter()
            .filter(|ix| ix.exp > now && issuer.is_none_or(|i| ix.iss == i))
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
                    scope: scope(kind),
                })
                .context("recording the rule")?
        };
        let mut active_kid = None;
        let mut headers = std::collections::BTreeSet::new();
        let mut pushed = 0;
        if kind == RuleKind::Kid {
            // One header-map entry covers every token of the key, seen or not.
            let own_segment = covers_own
                .then(|| self.authority().header_segment(name))
                .flatten();
            if let Some(segment) = own_segment {
                active_kid = Some(self.authority().retire_key(name, now)?);
                headers.insert(token_hash(&self.key, segment.as_bytes()));
            }
            headers.extend(covered.iter().map(|c| c.2));
            for h in &headers {
                self.revoke_header(*h, reason.clone())?;
            }
        } else {
            let batch: Vec<(u64, u64)> = covered
                .iter()
                .map(|(h, exp, _)| (*h, exp + JWT_EXP_MARGIN))
                .collect();
            pushed = self.revoke_hashes(&batch, &reason)?;
        }
        if kind != RuleKind::Jti {
            // Whole groups may be cached; the rule check runs on every hit anyway, this only
            // frees the memory early.
            self.cache().clear();
        }
        let families = if covers_own {
            self.revoke_sessions_by(kind, name, &reason)?
        } else {
            0
        };
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
        Ok(RuleReply {
            kind,
            name: name.to_string(),
            issuer: issuer.unwrap_or("any").to_string(),
            fingerprint: TokenHash(hash),
            changed,
            tokens_pushed: pushed,
            sessions_revoked: families,
            headers_pushed: headers.len(),
            active_kid,
        })
    }
}
