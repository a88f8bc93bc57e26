//! Revoking: tokens (by token or fingerprint), batches, JWS header segments (whole signing
//! keys), rules by `jti`, subject, client or key, and lifting a revocation. Every revocation is
//! recorded durably before it reaches the kernel and before it is acknowledged.

use std::collections::BTreeSet;

use agent_common::hash::{revocation_hash, revocation_key_len, token_hash};
use anyhow::{Context as _, bail};

use super::{Service, check::unverified_claim};
use crate::{
    clock::{JWT_EXP_MARGIN, jwt_exp, now},
    control::protocol::{RevokeReply, RuleReply, TokenRef},
    monitoring::lifecycle::{EventKind, LifecycleEvent},
    revocation::{
        Recorded, rules,
        store::{Revocation, Scope},
    },
    service::check::MAX_TOKEN_BYTES,
    types::{RuleKind, TokenHash},
};

impl Service {
    /// The revocation key of a token named in a request: its hash under this host's key (a
    /// JWS's signing input), or the fingerprint given.
    pub(crate) fn hash_of(&self, t: &TokenRef) -> anyhow::Result<TokenHash> {
        match t {
            TokenRef::Token(tok) => {
                let tok = tok.trim();
                if tok.is_empty() {
                    bail!("empty token");
                }
                if tok.len() > MAX_TOKEN_BYTES {
                    bail!("token longer than {MAX_TOKEN_BYTES} bytes");
                }
                if tok.bytes().any(|b| b <= 0x20 || b == 0x7f) {
                    bail!("token contains whitespace or control bytes");
                }
                Ok(TokenHash(revocation_hash(&self.key, tok.as_bytes())))
            }
            TokenRef::Hash(h) => Ok(*h),
        }
    }

    /// Reports a recorded revocation: the `kernel_map_full` alert when it was the first that
    /// did not fit, and its lifecycle event.
    fn reported(&self, r: &Recorded, what: &str) {
        if r.map_became_full {
            self.monitor.alert_kernel_full();
        }
        self.monitor.emit(LifecycleEvent::now(
            EventKind::Revoked,
            Some(TokenHash(r.entry.hash).to_string()),
            format!("{what}{}", r.entry.reason),
        ));
    }

    /// Revokes one hash until `until` (0 or `None`: never).
    pub(crate) fn revoke_hash(
        &self,
        hash: u64,
        until: Option<u64>,
        reason: String,
        api_key: bool,
    ) -> anyhow::Result<Recorded> {
        let recorded = self.revocations.revoke(Revocation {
            hash,
            expires_at: until.unwrap_or(0),
            reason,
            revoked_at: now(),
            api_key,
            scope: Scope::Token,
        })?;
        self.reported(&recorded, "");
        Ok(recorded)
    }

    /// Revokes a token (by token or fingerprint) until `until` (default: a JWT's `exp` plus a
    /// margin, else never). A JWT's `jti` is revoked too, for its issuer.
    pub(crate) fn revoke(
        &self,
        token: &TokenRef,
        until: Option<u64>,
        reason: Option<String>,
        api_key: bool,
    ) -> anyhow::Result<RevokeReply> {
        let started = std::time::Instant::now();
        let hash = self.hash_of(token)?.0;
        let now = now();
        let expires_at = match (until, token) {
            (Some(u), _) => u,
            (None, TokenRef::Token(t)) => {
                jwt_exp(t.trim()).map_or(0, |e| e.saturating_add(JWT_EXP_MARGIN))
            }
            (None, TokenRef::Hash(_)) => 0,
        };
        if expires_at != 0 && expires_at <= now {
            bail!(
                "the revocation would already have lapsed (until {expires_at} <= now {now}); an expired token needs no revocation"
            );
        }
        let recorded = self
            .revoke_hash(hash, Some(expires_at), reason.unwrap_or_default(), api_key)
            .context("recording the revocation")?;
        self.monitor
            .metrics
            .revocation_to_kernel_seconds
            .observe(started.elapsed().as_secs_f64());
        let kept = &recorded.entry;
        log::info!(
            "revoked {} until {} ({}){}",
            TokenHash(hash),
            kept.expires_at,
            kept.reason,
            if recorded.in_kernel {
                ""
            } else {
                "; not in the kernel map (full)"
            }
        );
        let jti_rule = match token {
            TokenRef::Token(t) => self.revoke_jti_of(t.trim(), kept.expires_at, &kept.reason)?,
            TokenRef::Hash(_) => None,
        };
        Ok(RevokeReply {
            fingerprint: TokenHash(hash),
            changed: recorded.changed,
            expires_at: kept.expires_at,
            in_kernel: recorded.in_kernel,
            jti_rule,
        })
    }

    /// Records a jti rule (scoped to the token's issuer) for a revoked JWT that has a `jti`, so
    /// the same claims signed again are refused too; returns the jti. Claims are read without
    /// verification: the caller named this token.
    fn revoke_jti_of(
        &self,
        token: &str,
        expires_at: u64,
        reason: &str,
    ) -> anyhow::Result<Option<String>> {
        if revocation_key_len(token.as_bytes()) == token.len() {
            return Ok(None);
        }
        let Some(jti) = unverified_claim(token, "jti") else {
            return Ok(None);
        };
        let issuer = unverified_claim(token, "iss");
        self.revoke_by(
            RuleKind::Jti,
            &jti,
            issuer.as_deref(),
            Some(expires_at).filter(|e| *e != 0),
            Some(format!("jti of a revoked token: {reason}")),
        )
        .context("the token is revoked, but recording its jti rule failed")?;
        Ok(Some(jti))
    }

    /// Revokes many token hashes (each until its own expiry): every one is recorded in the
    /// store first, then all go to the kernel. Returns how many were recorded.
    pub(crate) fn revoke_hashes(
        &self,
        batch: &[(u64, u64)],
        reason: &str,
    ) -> anyhow::Result<usize> {
        let now = now();
        let revocations = batch
            .iter()
            .filter(|(_, until)| *until > now)
            .map(|&(hash, until)| Revocation {
                hash,
                expires_at: until,
                reason: reason.to_string(),
                revoked_at: now,
                api_key: false,
                scope: Scope::Token,
            })
            .collect();
        let (recorded, became_full) = self.revocations.revoke_many(revocations)?;
        if became_full {
            self.monitor.alert_kernel_full();
        }
        for r in &recorded {
            self.monitor.emit(LifecycleEvent::now(
                EventKind::Revoked,
                Some(TokenHash(r.hash).to_string()),
                reason,
            ));
        }
        Ok(recorded.len())
    }

    /// Stores a revoked JWS header segment (durably) and puts it in the kernel's header map.
    pub(crate) fn revoke_header(&self, hash: u64, reason: String) -> anyhow::Result<()> {
        let recorded = self.revocations.revoke(Revocation {
            hash,
            expires_at: 0,
            reason,
            revoked_at: now(),
            api_key: false,
            scope: Scope::SigningKey,
        })?;
        self.reported(&recorded, "signing-key header segment: ");
        Ok(())
    }

    /// Lifts a revocation (store first, then the kernel maps).
    pub(crate) fn unrevoke(
        &self,
        token: &TokenRef,
        reason: Option<String>,
    ) -> anyhow::Result<RevokeReply> {
        let hash = self.hash_of(token)?.0;
        let changed = self
            .revocations
            .unrevoke(hash, reason.as_deref().unwrap_or(""), now())
            .context("recording the unrevocation")?;
        log::info!("unrevoked {}", TokenHash(hash));
        self.monitor.emit(LifecycleEvent::now(
            EventKind::Unrevoked,
            Some(TokenHash(hash).to_string()),
            reason.unwrap_or_default(),
        ));
        Ok(RevokeReply {
            fingerprint: TokenHash(hash),
            changed,
            expires_at: 0,
            in_kernel: self.revocations.in_kernel(hash),
            jti_rule: None,
        })
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
        let printable =
            |s: &str| !s.is_empty() && s.len() <= 1024 && !s.chars().any(char::is_control);
        if !printable(name) {
            bail!("a {} must be 1-1024 printable characters", kind.name());
        }
        if issuer.is_some_and(|i| !printable(i)) {
            bail!("an issuer must be 1-1024 printable characters");
        }
        let now = now();
        let reason = reason.unwrap_or_else(|| format!("{} {name}", kind.name()));
        let hash = self.revocations.rule_hash(kind, issuer, name);
        let own_issuer = self.authority.issuer();
        let covers_own = issuer.is_none_or(|i| i == own_issuer);
        // Live indexed tokens the rule covers now: (revocation key, expiry, header hash).
        let covered: Vec<(u64, u64, u64)> = self
            .authority
            .indexed_where(|ix| {
                let named = match kind {
                    RuleKind::Jti => return false,
                    RuleKind::Sub => ix.sub == name,
                    RuleKind::Client => ix.client_id == name,
                    RuleKind::Kid => ix.kid == name,
                };
                named && ix.exp > now && issuer.is_none_or(|i| ix.iss == i)
            })
            .into_iter()
            .map(|(_, ix)| ix)
            .chain(
                (kind == RuleKind::Jti)
                    .then(|| self.authority.indexed(name))
                    .flatten()
                    .filter(|ix| ix.exp > now && issuer.is_none_or(|i| ix.iss == i)),
            )
            .map(|ix| (ix.hash, ix.exp, ix.header))
            .collect();
        let expires_at = match (until, kind) {
            (Some(u), _) => u,
            // A jti names one token: the rule can lapse with it when its expiry is known.
            (None, RuleKind::Jti) => covered.first().map_or(0, |c| c.1 + JWT_EXP_MARGIN),
            (None, _) => 0,
        };
        let changed = self
            .revocations
            .revoke(Revocation {
                hash,
                expires_at,
                reason: reason.clone(),
                revoked_at: now,
                api_key: false,
                scope: rules::scope(kind),
            })
            .context("recording the rule")?
            .changed;
        let mut active_kid = None;
        let mut headers = BTreeSet::new();
        let mut pushed = 0;
        if kind == RuleKind::Kid {
            // One header-map entry covers every token of the key, seen or not.
            let own_segment = covers_own
                .then(|| self.authority.header_segment(name))
                .flatten();
            if let Some(segment) = own_segment {
                active_kid = Some(self.authority.retire_key(name, now)?);
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
            self.cache.clear();
        }
        let families = if covers_own {
            self.revoke_sessions_by(kind, name, &reason)?
        } else {
            0
        };
        self.monitor.emit(LifecycleEvent::now(
            EventKind::Revoked,
            None,
            format!("rule {} {name}: {reason}", kind.name()),
        ));
        log::warn!(
            "revoked by {} {} ({pushed} live tokens pushed to the kernel, {families} sessions ended)",
            kind.name(),
            TokenHash(hash)
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

    /// Makes the kernel maps equal the store (see [`crate::revocation::Revocations::sync`]);
    /// returns (inserted, removed, overflow).
    pub fn sync_kernel(&self) -> anyhow::Result<(usize, usize, usize)> {
        let synced = self.revocations.sync()?;
        if synced.2 > 0 {
            self.monitor.alert_kernel_full();
        }
        Ok(synced)
    }

    /// Drops what expired: revocations (store and kernel), indexed tokens, keys past their
    /// grace, sessions past their lifetime; retries overflowed revocations; compacts the log
    /// when worthwhile. Returns how many revocations expired.
    pub fn purge_expired(&self) -> anyhow::Result<usize> {
        let now = now();
        let pruned = self.authority.prune(now)?;
        if !pruned.is_empty() {
            log::info!("signing keys past their grace period dropped: {pruned:?}");
        }
        let sessions = self.sessions.purge_expired(now)?;
        if sessions > 0 {
            log::info!("{sessions} sessions reached their refresh lifetime");
        }
        let purged = self.revocations.purge(now)?;
        self.monitor.metrics.purged.inc_by(purged.gone.len() as u64);
        for h in &purged.gone {
            self.monitor.emit(LifecycleEvent::now(
                EventKind::Purged,
                Some(TokenHash(*h).to_string()),
                "expired",
            ));
        }
        if purged.placed > 0 {
            log::info!(
                "{} revocations moved into the kernel map, {} still wait for space",
                purged.placed,
                purged.waiting
            );
        }
        if let Some(bytes) = purged.compacted_to {
            log::info!("compacted the revocation log to {bytes} bytes");
        }
        Ok(purged.gone.len())
    }
}
