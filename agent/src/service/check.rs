//! The token check and forward-auth: revoked (by revocation key, header segment or rule), then
//! the cache, then full validation. A token a rule covers is refused and learned into the
//! kernel ("learned drop"), so its next request stops there.

use std::{sync::Arc, time::Instant};

use agent_common::hash::revocation_hash;
use serde_json::Value;

use super::Service;
use crate::{
    clock::{JWT_EXP_MARGIN, now},
    monitoring::metrics::{RevocationKind, RevocationSource},
    oauth::{
        API_KEY_ISSUER, AuthDecision, Identity, IdentityError, IdentityValue, Presented, presented,
        token_decision,
    },
    revocation::{LearnHeader, StoreHit, rules::RuleFacts},
    tokens::{
        jwks::KeyChanges,
        validate::{Rejection, Verified},
    },
    types::{Refusal, RevokedBy, RuleKind, TokenHash, TokenHashes},
};

/// Longest token accepted over the control socket.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

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

/// What rules match on, read from a verified token.
fn facts(v: &Verified) -> RuleFacts<'_> {
    let claim = |name| v.claim_str(name).unwrap_or_default();
    RuleFacts {
        jti: claim("jti"),
        kid: &v.kid,
        sub: claim("sub"),
        client_id: claim("client_id"),
        iss: claim("iss"),
        iat: v.claims.get("iat").and_then(Value::as_u64).unwrap_or(0),
    }
}

impl Service {
    /// Decides a forward-auth request from its `Authorization` header value, or failing a
    /// bearer token, from the API-key header's value.
    pub fn forward_auth(&self, authorization: Option<&str>, api_key: Option<&str>) -> AuthDecision {
        match presented(authorization, api_key) {
            Presented::Token(t) => token_decision(self.check_token(t)),
            Presented::ApiKey(k) => self.api_key_auth(k),
            Presented::Decided(d) => d,
        }
    }

    /// [`forward_auth`](Self::forward_auth) for an async worker: answers only what needs no
    /// wait (see [`check_token_now`](Self::check_token_now)); `None` means: call
    /// `forward_auth` on a blocking thread.
    pub fn forward_auth_now(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
    ) -> Option<AuthDecision> {
        match presented(authorization, api_key) {
            Presented::Token(t) => self.check_token_now(t).map(token_decision),
            Presented::ApiKey(_) => None,
            Presented::Decided(d) => Some(d),
        }
    }

    fn api_key_auth(&self, presented: &str) -> AuthDecision {
        let hash = revocation_hash(&self.key, presented.as_bytes());
        if self.revocations.get(hash).is_some() {
            return AuthDecision::InvalidToken("API key revoked".into());
        }
        let Some(k) = self.authority.api_key(presented) else {
            return AuthDecision::InvalidToken("unknown API key".into());
        };
        let identity = (|| {
            Ok::<_, IdentityError>(Identity {
                subject: IdentityValue::new("name", &k.name)?,
                client: IdentityValue::new("client", "")?,
                scopes: IdentityValue::new("scopes", &k.scopes.join(" "))?,
                token_id: IdentityValue::new("fingerprint", &TokenHash(hash).to_string())?,
                issuer: IdentityValue::new("iss", API_KEY_ISSUER)?,
            })
        })();
        match identity {
            Ok(id) => AuthDecision::Allow(id),
            Err(e) => AuthDecision::InvalidToken(format!("API key: {e}")),
        }
    }

    /// Checks a bearer token: revoked (by revocation key, header segment or rule), then the
    /// cache, then full validation. A token a rule covers is learned into the kernel map.
    pub fn check_token(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let (hashes, started) = (TokenHashes::of(&self.key, token), Instant::now());
        let result = self.check_uncounted(token, &hashes);
        self.count(hashes.key, started, &result);
        result
    }

    /// [`check_token`](Self::check_token) for when the answer must not wait (an async
    /// worker): answers only a revoked token, or a cached one no rule covers, and only when
    /// no lock is held elsewhere. `None` means: call `check_token` on a blocking thread.
    pub fn check_token_now(&self, token: &str) -> Option<Result<Arc<Verified>, Refusal>> {
        let (hashes, started) = (TokenHashes::of(&self.key, token), Instant::now());
        let result = {
            let read = self.revocations.try_read()?;
            match read.lookup(&hashes) {
                Some(StoreHit::Revoked(by)) => Err(Refusal::Revoked(by)),
                // Learning needs the store: the blocking path does it.
                Some(StoreHit::Legacy { .. }) => return None,
                None => {
                    let v = self.cache.try_get(hashes.whole, now())??;
                    if read.covering_rule(&facts(&v)).is_some() {
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
        if self.monitor.is_on() {
            self.monitor
                .metrics
                .validation_seconds
                .observe(started.elapsed().as_secs_f64());
            self.monitor.count_check(hash, result);
        }
    }

    fn check_uncounted(&self, token: &str, hashes: &TokenHashes) -> Result<Arc<Verified>, Refusal> {
        let hit = self.revocations.read().lookup(hashes);
        match hit {
            Some(StoreHit::Revoked(by)) => return Err(Refusal::Revoked(by)),
            Some(StoreHit::Legacy { expires_at }) => {
                let until = Some(expires_at).filter(|e| *e != 0);
                self.learn_token(hashes.key, until, "an older revocation");
                return Err(Refusal::Revoked(RevokedBy::Token));
            }
            None => {}
        }
        let now = now();
        let (cached, generation) = self.cache.get(hashes.whole, now);
        let v = match cached {
            Some(v) => v,
            None => {
                let verify = || {
                    self.authority
                        .validate(token, (hashes.key, hashes.header), now)
                };
                let mut result = verify();
                // An unknown kid may be a rotation at a remote issuer, and a bad signature a
                // key replaced under its old kid: refetch that issuer's JWKS once (rate-limited
                // per URL) and try again.
                if matches!(result, Err(Rejection::UnknownKey | Rejection::BadSignature))
                    && let Some(iss) = unverified_claim(token, "iss")
                    && self.refresh_jwks(Some(&iss))
                {
                    result = verify();
                }
                match result {
                    Ok(v) => {
                        let v = Arc::new(v);
                        // Not cached if a key changed while it was verified (the generation
                        // was read before).
                        self.cache
                            .insert_unless_dropped(hashes.whole, v.clone(), now, generation);
                        v
                    }
                    Err(Rejection::UnknownKey) => return Err(self.learn_header(token, hashes)),
                    Err(r) => return Err(Refusal::Invalid(r)),
                }
            }
        };
        let covering = self.revocations.read().covering_rule(&facts(&v));
        if let Some(kind) = covering {
            self.cache.remove(hashes.whole);
            if kind == RuleKind::Kid {
                // A kid rule covers every token under this (verified) header.
                self.learn_header_of(&v.kid, hashes.header);
            } else {
                let until = v.exp.map(|e| e + JWT_EXP_MARGIN);
                self.learn_token(hashes.key, until, &format!("a {} rule", kind.name()));
            }
            return Err(Refusal::Revoked(RevokedBy::Rule(kind)));
        }
        Ok(v)
    }

    /// Records the revocation key of a token a rule or an older revocation covers, so its next
    /// request stops in the kernel. Failures are logged: the refusal stands either way.
    fn learn_token(&self, hash: u64, until: Option<u64>, covered_by: &str) {
        let reason = format!("learned: covered by {covered_by}");
        let learned = self.revoke_hash(hash, until, reason, false).and_then(|_| {
            self.monitor
                .metrics
                .count_revocation(RevocationKind::Token, RevocationSource::Learned);
            self.monitor.record(
                "system",
                "learned_revoke",
                vec![TokenHash(hash).to_string()],
                &format!("covered by {covered_by}"),
            )
        });
        if let Err(e) = learned {
            log::warn!("learning {} failed: {e:#}", TokenHash(hash));
        }
    }

    /// A token whose `kid` is not trusted. If it verifies under one of this host's keys that a
    /// kid rule revoked (kept verify-only for exactly this), its header segment is learned into
    /// the kernel's header map. Nothing is learned from a token whose signature was not
    /// verified: a forged header under a revoked `kid` is just an unknown key.
    fn learn_header(&self, token: &str, hashes: &TokenHashes) -> Refusal {
        let unknown = Refusal::Invalid(Rejection::UnknownKey);
        let Some((kid, issuer)) = self.authority.verify_revoked(token, now()) else {
            return unknown;
        };
        if self
            .revocations
            .rule(RuleKind::Kid, &issuer, &kid)
            .is_none()
        {
            return unknown;
        }
        self.learn_header_of(&kid, hashes.header);
        Refusal::Revoked(RevokedBy::SigningKey)
    }

    /// Records a verified token's JWS header segment under a revoked `kid`, within the key's
    /// bound (more are counted and refused).
    fn learn_header_of(&self, kid: &str, header: u64) {
        match self.revocations.learn_header(kid, header) {
            LearnHeader::Known => return,
            LearnHeader::Refused => {
                self.monitor.metrics.learn_refused.inc();
                log::debug!("not learning another header of key {kid}: its limit is reached");
                return;
            }
            LearnHeader::Allowed => {}
        }
        let learned = self
            .revoke_header(header, format!("learned: signing key {kid}"))
            .and_then(|()| {
                self.monitor
                    .metrics
                    .count_revocation(RevocationKind::Kid, RevocationSource::Learned);
                self.monitor.record(
                    "system",
                    "learned_revoke",
                    vec![TokenHash(header).to_string()],
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
        let plan = self.authority.jwks_to_fetch(now, unknown_kid_of);
        let mut changes = KeyChanges::default();
        for (url, source) in plan {
            let result = crate::tokens::jwks::fetch(&source);
            match self.authority.install_jwks(&url, result, now) {
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
            let dropped = self.cache.remove_kids(changes.stale());
            if dropped > 0 {
                log::info!("{dropped} cached verifications of replaced or removed keys dropped");
            }
        }
        !changes.is_empty()
    }
}
