//! The daemon's state and request handlers: the durable store and the kernel maps, kept in
//! step. Every handler is synchronous (it fsyncs); the control server runs it off the runtime.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Mutex, MutexGuard},
};

use agent_common::{
    config::Action,
    hash::{HashKey, revocation_hash},
    revoked::{FLAG_API_KEY, Reason, RevokedEntry},
};
use anyhow::{Context as _, bail};
use tokio::sync::broadcast;

use crate::{
    clock::{JWT_EXP_MARGIN, jwt_exp, now},
    control::protocol::{
        self as p, AttachmentInfo, DetachReply, EventLine, RevokeReply, StatusReply, TokenRef,
    },
    kernel::{self, Kernel},
    monitoring::alerts::{AlertEngine, Webhook},
    monitoring::audit::AuditLog,
    monitoring::lifecycle::{EventKind, LifecycleEvent, Timelines},
    monitoring::metrics::Metrics,
    revocation::hash_key::fingerprint,
    revocation::store::{Revocation, RevocationStore, Scope},
    tokens::{
        authority::Authority,
        cache::{DEFAULT_CAPACITY, VerifiedCache},
        refresh::RefreshStore,
        validate::Policy,
    },
    types::TokenHash,
};

/// Longest token accepted over the control socket.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Fixed settings of a running daemon.
pub struct Settings {
    /// What the kernel does on a hit.
    pub action: Action,
    /// Watched ports.
    pub ports: Vec<u16>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Pin directory.
    pub bpffs: PathBuf,
    /// Header carrying API keys, if any.
    pub api_key_header: Option<String>,
    /// Lifetime of a refresh-token family, in seconds.
    pub refresh_ttl: u64,
    /// Seconds a retired refresh token still rotates (a lost response); 0 = none.
    pub refresh_grace: u64,
    /// SHA-256 (base64url) of the admin bearer credential, if one is configured.
    pub admin_token_sha256: Option<String>,
    /// Monitoring at start.
    pub monitoring: bool,
}

pub(crate) struct Inner {
    pub(crate) store: RevocationStore,
    pub(crate) kernel: Kernel,
    /// Header segments learned per revoked `kid` since start (bounded, see
    /// [`crate::service::check::MAX_LEARNED_HEADERS_PER_KEY`]).
    pub(crate) learned_headers: HashMap<String, usize>,
    /// Stored revocations the kernel map could not take (full): enforced by userspace only,
    /// retried after every purge.
    pub(crate) overflow: HashSet<u64>,
}

/// Shared daemon state.
pub struct Service {
    pub(crate) key: HashKey,
    settings: Settings,
    inner: Mutex<Inner>,
    /// Signing keys, clients and the token index.
    pub(crate) authority: Mutex<Authority>,
    /// Refresh-token families and per-subject claims.
    refresh: Mutex<RefreshStore>,
    /// Verified tokens by hash.
    cache: Mutex<VerifiedCache>,
    /// The hash-chained audit trail.
    pub(crate) audit: Mutex<AuditLog>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Whether monitoring is on (metrics of checks, events, timelines, alerts, kernel counters).
    pub(crate) monitoring: std::sync::atomic::AtomicBool,
    /// The lifecycle event stream (`tokenwall watch`).
    pub lifecycle: broadcast::Sender<LifecycleEvent>,
    /// Per-token timelines (`tokenwall tokens show`).
    pub(crate) timelines: Mutex<Timelines>,
    /// Anomaly rules.
    pub(crate) alerts: Mutex<AlertEngine>,
    /// Alert delivery, if a webhook is configured.
    pub(crate) webhook: Option<Webhook>,
    /// The last alerts, newest last.
    pub(crate) recent_alerts: Mutex<std::collections::VecDeque<crate::monitoring::alerts::Alert>>,
    /// Hit events fan-out to `events` clients.
    pub events: broadcast::Sender<EventLine>,
}

/// Name of an action for output.
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Drop => "drop",
        Action::Reset => "reset",
        Action::Observe => "observe",
    }
}

/// The opened parts a [`Service`] is made of.
pub struct Parts {
    /// The durable revocation store.
    pub store: RevocationStore,
    /// The loaded kernel programs and maps.
    pub kernel: Kernel,
    /// Keys, clients and the token index.
    pub authority: Authority,
    /// Sessions.
    pub refresh: RefreshStore,
    /// The audit trail.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: Metrics,
    /// Anomaly rules.
    pub alerts: AlertEngine,
    /// Alert webhook.
    pub webhook: Option<Webhook>,
}

impl Service {
    /// Wraps the opened parts; call [`Service::sync_kernel`] next.
    pub fn new(key: HashKey, settings: Settings, parts: Parts) -> Self {
        let Parts {
            store,
            kernel,
            authority,
            refresh,
            audit,
            metrics,
            alerts,
            webhook,
        } = parts;
        let (events, _) = broadcast::channel(1024);
        let (lifecycle, _) = broadcast::channel(4096);
        let monitoring = settings.monitoring;
        Self {
            key,
            settings,
            inner: Mutex::new(Inner {
                store,
                kernel,
                learned_headers: HashMap::new(),
                overflow: HashSet::new(),
            }),
            authority: Mutex::new(authority),
            refresh: Mutex::new(refresh),
            cache: Mutex::new(VerifiedCache::new(
                DEFAULT_CAPACITY,
                Policy::default().leeway,
            )),
            audit: Mutex::new(audit),
            metrics,
            monitoring: std::sync::atomic::AtomicBool::new(monitoring),
            lifecycle,
            timelines: Mutex::new(Timelines::default()),
            alerts: Mutex::new(alerts),
            webhook,
            recent_alerts: Mutex::new(Default::default()),
            events,
        }
    }

    /// The daemon's fixed settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn refresh(&self) -> MutexGuard<'_, RefreshStore> {
        self.refresh.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn cache(&self) -> MutexGuard<'_, VerifiedCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store and kernel if nobody holds them (a revocation may be fsyncing), and the
    /// verified cache: for answers that must not wait.
    pub(crate) fn try_lock(
        &self,
    ) -> Option<(MutexGuard<'_, Inner>, MutexGuard<'_, VerifiedCache>)> {
        Some((self.inner.try_lock().ok()?, self.cache.try_lock().ok()?))
    }

    pub(crate) fn authority(&self) -> MutexGuard<'_, Authority> {
        self.authority.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` with the kernel (attach, config).
    pub fn with_kernel<T>(&self, f: impl FnOnce(&mut Kernel) -> T) -> T {
        f(&mut self.lock().kernel)
    }

    /// Makes the kernel maps equal the store: inserts every live entry, then removes the rest
    /// (insert first, so nothing revoked is ever missing in between). Entries a full map cannot
    /// take are enforced by userspace and reported (`kernel_overflow`); they never stop a start.
    pub fn sync_kernel(&self) -> anyhow::Result<(usize, usize)> {
        let mut inner = self.lock();
        let live: Vec<Revocation> = inner
            .store
            .entries()
            .filter(|r| r.scope.in_kernel())
            .cloned()
            .collect();
        let mut inserted = 0;
        for r in &live {
            inserted += usize::from(self.push_to_kernel(&mut inner, r));
        }
        let headers = header_count(&inner.store);
        inner
            .kernel
            .update_config(|c| c.header_revocations = headers)?;
        let Inner { store, kernel, .. } = &mut *inner;
        let mut removed = 0;
        for h in kernel.revoked_hashes() {
            if store.get(h).is_none_or(|r| r.scope != Scope::Token) {
                kernel.remove(h)?;
                removed += 1;
            }
        }
        for h in kernel.revoked_header_hashes() {
            if store.get(h).is_none_or(|r| r.scope != Scope::SigningKey) {
                kernel.remove_header(h)?;
                removed += 1;
            }
        }
        Ok((inserted, removed))
    }

    /// Puts a stored revocation into its kernel map (rules stay in userspace). A map that
    /// cannot take it is not an error: the entry stays enforced by userspace (forward-auth is
    /// authoritative), is remembered as overflow, reported, and retried after every purge.
    /// Returns whether the kernel holds it.
    pub(crate) fn push_to_kernel(&self, inner: &mut Inner, r: &Revocation) -> bool {
        let result = match r.scope {
            Scope::Token => inner.kernel.insert(r.hash, kernel_entry(r)),
            Scope::SigningKey => inner
                .kernel
                .insert_header(r.hash, kernel_entry(r))
                .and_then(|()| {
                    let headers = header_count(&inner.store);
                    inner
                        .kernel
                        .update_config(|c| c.header_revocations = headers)
                }),
            Scope::Jti | Scope::Subject | Scope::Client | Scope::Kid => return false,
        };
        match result {
            Ok(()) => {
                inner.overflow.remove(&r.hash);
                true
            }
            Err(e) => {
                let first = inner.overflow.is_empty();
                inner.overflow.insert(r.hash);
                if first {
                    log::warn!(
                        "a kernel map is full ({e:#}): further revocations are enforced by forward-auth only until space frees (raise --max-revoked)"
                    );
                    self.alert_kernel_full(inner.overflow.len());
                }
                false
            }
        }
    }

    /// Drops expired entries from the store and the kernel; compacts the log when worthwhile.
    pub fn purge_expired(&self) -> anyhow::Result<usize> {
        let now = now();
        self.authority().prune_index(now);
        let pruned = self.authority().prune_keys(now)?;
        if !pruned.is_empty() {
            log::info!("signing keys past their grace period dropped: {pruned:?}");
        }
        let sessions = self.refresh().purge_expired(now)?;
        if sessions > 0 {
            log::info!("{sessions} sessions reached their refresh lifetime");
        }
        let mut inner = self.lock();
        let gone = inner.store.purge_expired(now);
        self.metrics.purged.inc_by(gone.len() as u64);
        for h in &gone {
            self.emit(LifecycleEvent::now(
                EventKind::Purged,
                Some(fingerprint(*h)),
                "expired",
            ));
        }
        for h in &gone {
            // Expired entries may be of either scope; removing an absent key is fine.
            inner.kernel.remove(*h)?;
            inner.kernel.remove_header(*h)?;
            inner.overflow.remove(h);
        }
        if !gone.is_empty() {
            let headers = header_count(&inner.store);
            inner
                .kernel
                .update_config(|c| c.header_revocations = headers)?;
        }
        // Space may have freed up: retry what the kernel could not take.
        let waiting: Vec<Revocation> = inner
            .overflow
            .iter()
            .filter_map(|h| inner.store.get(*h).cloned())
            .collect();
        let Inner {
            store, overflow, ..
        } = &mut *inner;
        overflow.retain(|h| store.get(*h).is_some());
        let mut placed = 0;
        for r in &waiting {
            placed += usize::from(self.push_to_kernel(&mut inner, r));
        }
        if placed > 0 {
            log::info!(
                "{placed} revocations moved into the kernel map, {} still wait for space",
                inner.overflow.len()
            );
        }
        if inner.store.should_compact() {
            inner.store.compact(now)?;
            log::info!(
                "compacted the revocation log to {} bytes",
                inner.store.log_bytes()
            );
        }
        Ok(gone.len())
    }

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

    /// `token_show`: a token's timeline, by token, fingerprint or `jti`.
    pub(crate) fn token_show(
        &self,
        c: p::TokenShow,
    ) -> anyhow::Result<crate::monitoring::lifecycle::Timeline> {
        let fp = c
            .token
            .map(|t| self.hash_of(&t).map(|h| h.to_string()))
            .transpose()?;
        self.timeline(fp.as_deref(), c.jti.as_deref())
            .context("no timeline for that token (it was never issued, checked or hit here)")
    }

    /// `clients_add`.
    pub(crate) fn clients_add(
        &self,
        id: &str,
        scopes: Vec<String>,
    ) -> anyhow::Result<p::ClientSecret> {
        let client_secret = self.authority().add_client(id, scopes)?;
        Ok(p::ClientSecret {
            client_id: id.to_string(),
            client_secret,
        })
    }

    /// `clients_list`.
    pub(crate) fn clients_list(&self) -> Vec<p::ClientInfo> {
        self.authority()
            .clients()
            .into_iter()
            .map(|(client_id, scopes)| p::ClientInfo { client_id, scopes })
            .collect()
    }

    /// `clients_remove`.
    pub(crate) fn clients_remove(&self, id: &str) -> anyhow::Result<p::Removed> {
        if !self.authority().remove_client(id)? {
            bail!("no client {id}");
        }
        Ok(p::Removed {
            removed: id.to_string(),
        })
    }

    /// `keys_add`: trusts an external key source (a new JWKS URL is fetched at once).
    pub(crate) fn keys_add(
        &self,
        key: crate::tokens::keys::ExternalKey,
    ) -> anyhow::Result<p::KeyAdded> {
        let added = self.authority().add_external(key)?;
        self.refresh_jwks(None);
        Ok(added)
    }

    /// `keys_list`.
    pub(crate) fn keys_list(&self) -> anyhow::Result<Vec<p::KeyInfo>> {
        self.authority().keys_list()
    }

    /// `keys_rotate`.
    pub(crate) fn keys_rotate(&self) -> anyhow::Result<p::KeyRotated> {
        let mut auth = self.authority();
        let previous = auth.active_kid().ok();
        let active_kid = auth.rotate_key(now())?;
        Ok(p::KeyRotated {
            active_kid,
            previous,
        })
    }

    /// `keys_remove`: stops trusting an external key source; cached verifications go.
    pub(crate) fn keys_remove(&self, id: &str) -> anyhow::Result<p::Removed> {
        if !self.authority().remove_external(id)? {
            bail!("no external key or JWKS URL {id}");
        }
        self.cache().clear();
        Ok(p::Removed {
            removed: id.to_string(),
        })
    }

    /// `api_keys_list`.
    pub(crate) fn api_keys_list(&self) -> Vec<p::ApiKeyInfo> {
        self.authority()
            .api_keys()
            .map(|k| p::ApiKeyInfo {
                name: k.name.clone(),
                scopes: k.scopes.clone(),
                fingerprint: TokenHash(k.hash),
                created_at: k.created_at,
            })
            .collect()
    }

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
        let rev = Revocation {
            hash,
            expires_at,
            reason: reason.unwrap_or_default(),
            revoked_at: now,
            api_key,
            scope: Scope::Token,
        };
        let (changed, kept, in_kernel) = {
            let mut inner = self.lock();
            let changed = inner
                .store
                .revoke(rev)
                .context("recording the revocation")?;
            // The store keeps the later expiry when a token is revoked twice; mirror what it kept.
            let kept = inner
                .store
                .get(hash)
                .cloned()
                .context("revocation missing after recording it")?;
            let in_kernel = self.push_to_kernel(&mut inner, &kept);
            (changed, kept, in_kernel)
        };
        self.metrics
            .revocation_to_kernel_seconds
            .observe(started.elapsed().as_secs_f64());
        self.emit(LifecycleEvent::now(
            EventKind::Revoked,
            Some(fingerprint(hash)),
            kept.reason.clone(),
        ));
        log::info!(
            "revoked {} until {} ({}){}",
            fingerprint(hash),
            kept.expires_at,
            kept.reason,
            if in_kernel {
                ""
            } else {
                "; not in the kernel map (full)"
            }
        );
        // A JWT's jti is revoked too (for its issuer): the same claims signed again, by the
        // issuer or under another of its keys, are refused and learned on first sight.
        let jti_rule = match token {
            TokenRef::Token(t) => self.revoke_jti_of(t.trim(), kept.expires_at, &kept.reason)?,
            TokenRef::Hash(_) => None,
        };
        Ok(RevokeReply {
            fingerprint: TokenHash(hash),
            changed,
            expires_at: kept.expires_at,
            in_kernel,
            jti_rule,
        })
    }

    /// Records a jti rule (scoped to the token's issuer) for a revoked JWT that has a `jti`;
    /// returns the jti. Claims are read without verification: the caller named this token.
    fn revoke_jti_of(
        &self,
        token: &str,
        expires_at: u64,
        reason: &str,
    ) -> anyhow::Result<Option<String>> {
        if agent_common::hash::revocation_key_len(token.as_bytes()) == token.len() {
            return Ok(None);
        }
        let Some(jti) = crate::service::check::unverified_claim(token, "jti") else {
            return Ok(None);
        };
        let issuer = crate::service::check::unverified_claim(token, "iss");
        self.revoke_by(
            crate::types::RuleKind::Jti,
            &jti,
            issuer.as_deref(),
            Some(expires_at).filter(|e| *e != 0),
            Some(format!("jti of a revoked token: {reason}")),
        )
        .context("the token is revoked, but recording its jti rule failed")?;
        Ok(Some(jti))
    }

    /// Revokes many token hashes (each until its own expiry): every one is recorded in the
    /// store first, then all go to the kernel, so one failure never leaves the rest unrecorded.
    /// Returns how many were recorded.
    pub(crate) fn revoke_hashes(
        &self,
        batch: &[(u64, u64)],
        reason: &str,
    ) -> anyhow::Result<usize> {
        let now = now();
        let mut inner = self.lock();
        let mut recorded = Vec::with_capacity(batch.len());
        for &(hash, until) in batch.iter().filter(|(_, until)| *until > now) {
            inner
                .store
                .revoke(Revocation {
                    hash,
                    expires_at: until,
                    reason: reason.to_string(),
                    revoked_at: now,
                    api_key: false,
                    scope: Scope::Token,
                })
                .with_context(|| {
                    format!(
                        "recording revocation {} of {} ({} recorded before it)",
                        recorded.len() + 1,
                        batch.len(),
                        recorded.len()
                    )
                })?;
            recorded.push(hash);
        }
        for hash in &recorded {
            if let Some(kept) = inner.store.get(*hash).cloned() {
                self.push_to_kernel(&mut inner, &kept);
            }
        }
        drop(inner);
        for hash in &recorded {
            self.emit(LifecycleEvent::now(
                EventKind::Revoked,
                Some(fingerprint(*hash)),
                reason,
            ));
        }
        Ok(recorded.len())
    }

    /// Lifts a revocation (store first, then the kernel maps).
    pub(crate) fn unrevoke(
        &self,
        token: &TokenRef,
        reason: Option<String>,
    ) -> anyhow::Result<RevokeReply> {
        let hash = self.hash_of(token)?.0;
        let mut inner = self.lock();
        let changed = inner
            .store
            .unrevoke(hash, reason.as_deref().unwrap_or(""), now())
            .context("recording the unrevocation")?;
        inner.kernel.remove(hash)?;
        inner.kernel.remove_header(hash)?;
        inner.overflow.remove(&hash);
        let headers = header_count(&inner.store);
        inner
            .kernel
            .update_config(|c| c.header_revocations = headers)?;
        let in_kernel = inner.kernel.contains(hash);
        log::info!("unrevoked {}", fingerprint(hash));
        self.emit(LifecycleEvent::now(
            EventKind::Unrevoked,
            Some(fingerprint(hash)),
            reason.clone().unwrap_or_default(),
        ));
        Ok(RevokeReply {
            fingerprint: TokenHash(hash),
            changed,
            expires_at: 0,
            in_kernel,
            jti_rule: None,
        })
    }

    /// `status`: attachments, kernel counters, store and map sizes.
    pub(crate) fn status(&self) -> anyhow::Result<StatusReply> {
        let inner = self.lock();
        let counters = inner
            .kernel
            .counters()?
            .into_iter()
            .map(|(c, v)| (c.name().to_string(), v))
            .collect();
        Ok(StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            attachments: inner
                .kernel
                .attachments()
                .into_iter()
                .map(|a| AttachmentInfo {
                    iface: a.iface,
                    hook: a.hook.name().to_string(),
                })
                .collect(),
            action: action_name(self.settings.action).to_string(),
            ports: self.settings.ports.clone(),
            counters,
            revoked_entries: inner.store.len(),
            kernel_entries: inner.kernel.revoked_hashes().len(),
            kernel_overflow: inner.overflow.len(),
            store_bytes: inner.store.log_bytes(),
            state_dir: self.settings.state_dir.display().to_string(),
            bpffs: self.settings.bpffs.display().to_string(),
        })
    }

    /// `detach`: removes an interface's attachments (and the pins once none is left).
    pub(crate) fn detach(&self, iface: &str) -> anyhow::Result<DetachReply> {
        let mut inner = self.lock();
        let removed = inner.kernel.detach(iface)?;
        if removed == 0 {
            bail!("{iface} is not attached");
        }
        kernel::remove_pins_if_unused(&self.settings.bpffs)?;
        Ok(DetachReply {
            iface: iface.to_string(),
            removed,
            daemon: true,
        })
    }
}

fn header_count(store: &RevocationStore) -> u32 {
    store
        .entries()
        .filter(|r| r.scope == Scope::SigningKey)
        .count() as u32
}

/// The kernel's view of a stored revocation.
pub fn kernel_entry(r: &Revocation) -> RevokedEntry {
    RevokedEntry {
        expires_at: r.expires_at,
        reason: if r.reason.is_empty() {
            Reason::Unspecified
        } else {
            Reason::Operator
        } as u32,
        flags: if r.api_key { FLAG_API_KEY } else { 0 },
    }
}

mod check;
mod dispatch;
pub mod sessions;
