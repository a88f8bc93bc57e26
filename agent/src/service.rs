//! The daemon's state and request handlers: the durable store and the kernel maps, kept in
//! step. Every handler is synchronous (it fsyncs); the control server runs it off the runtime.

use std::{
    path::PathBuf,
    sync::{Mutex, MutexGuard},
};

use agent_common::{
    config::Action,
    hash::{HashKey, token_hash},
    revoked::{FLAG_API_KEY, Reason, RevokedEntry},
};
use anyhow::{Context as _, bail};
use tokio::sync::broadcast;

use crate::{
    alerts::{AlertEngine, Webhook},
    api::{AttachmentInfo, EventLine, Reply, Request, RevokeReply, StatusReply, TokenRef},
    audit::AuditLog,
    hashkey::{fingerprint, parse_fingerprint},
    kernel::{self, Kernel},
    lifecycle::{EventKind, LifecycleEvent, Timelines},
    metrics::Metrics,
    store::{Revocation, RevocationStore, Scope},
    tokens::{
        authority::Authority,
        cache::{DEFAULT_CAPACITY, VerifiedCache},
        refresh::RefreshStore,
        validate::Policy,
    },
    until::{JWT_EXP_MARGIN, jwt_exp, now},
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
    pub(crate) recent_alerts: Mutex<std::collections::VecDeque<crate::alerts::Alert>>,
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
            inner: Mutex::new(Inner { store, kernel }),
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

    /// Makes the kernel map equal the store: inserts every live entry, then removes the rest
    /// (insert first, so nothing revoked is ever missing in between).
    pub fn sync_kernel(&self) -> anyhow::Result<(usize, usize)> {
        let mut inner = self.lock();
        let Inner { store, kernel } = &mut *inner;
        let mut inserted = 0;
        for r in store.entries().filter(|r| r.scope.in_kernel()) {
            match r.scope {
                Scope::SigningKey => kernel.insert_header(r.hash, kernel_entry(r))?,
                _ => kernel.insert(r.hash, kernel_entry(r))?,
            }
            inserted += 1;
        }
        let headers = header_count(store);
        kernel.update_config(|c| c.header_revocations = headers)?;
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
        }
        if !gone.is_empty() {
            let headers = header_count(&inner.store);
            inner
                .kernel
                .update_config(|c| c.header_revocations = headers)?;
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

    pub(crate) fn hash_of(&self, t: &TokenRef) -> anyhow::Result<u64> {
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
                Ok(token_hash(&self.key, tok.as_bytes()))
            }
            TokenRef::Hash(h) => parse_fingerprint(h),
        }
    }

    /// Handles one request (not `Events`, which the server streams itself).
    pub fn handle(&self, req: Request) -> Reply {
        self.handle_as(req, "system")
    }

    /// Handles one request for `actor` (`uid:N`, `admin`); a state change is in the audit log
    /// (fsynced) before the reply.
    pub fn handle_as(&self, req: Request, actor: &str) -> Reply {
        let audited = (!req.is_read_only()).then(|| (req.command(), req.audit_subjects()));
        let token_fp = match &req {
            Request::Revoke {
                token: t @ TokenRef::Token(_),
                ..
            }
            | Request::Unrevoke {
                token: t @ TokenRef::Token(_),
                ..
            } => self.hash_of(t).ok().map(fingerprint),
            _ => None,
        };
        let counted = match &req {
            Request::Revoke { api_key, .. } => Some(if *api_key { "api_key" } else { "token" }),
            Request::RevokeBy { kind, .. } => Some(kind.name()),
            Request::ApiKeysRemove { .. } => Some("api_key"),
            _ => None,
        };
        let unrevoke = matches!(req, Request::Unrevoke { .. });
        let mut result = self.dispatch(req);
        if result.is_ok() {
            if let Some(kind) = counted {
                self.metrics.count_revocation(kind, "operator");
            }
            if unrevoke {
                self.metrics.unrevoked.inc();
            }
        }
        if let (Ok(_), Some((action, (mut subjects, reason)))) = (&result, audited) {
            subjects.extend(token_fp);
            if let Err(e) = self.record(actor, &action, subjects, &reason) {
                result = Err(e.context("the change was made, but writing the audit record failed"));
            }
        }
        match result {
            Ok(v) => Reply {
                ok: true,
                error: None,
                data: Some(v),
            },
            Err(e) => Reply::err(format!("{e:#}")),
        }
    }

    fn dispatch(&self, req: Request) -> anyhow::Result<serde_json::Value> {
        match req {
            Request::Revoke {
                token,
                until,
                reason,
                api_key,
            } => self.revoke(&token, until, reason, api_key),
            Request::Unrevoke { token, reason } => self.unrevoke(&token, reason),
            Request::Status => self.status(),
            Request::Detach { iface } => self.detach(&iface),
            Request::Fingerprint { token } => self
                .hash_of(&token)
                .map(|h| serde_json::json!({ "fingerprint": fingerprint(h) })),
            Request::Events | Request::Watch { .. } => Err(anyhow::anyhow!("a stream")),
            Request::TokenShow { token, jti } => {
                let fp = token
                    .map(|t| self.hash_of(&t).map(fingerprint))
                    .transpose()?;
                self.timeline(fp.as_deref(), jti.as_deref())
                    .context(
                        "no timeline for that token (it was never issued, checked or hit here)",
                    )
                    .and_then(|t| Ok(serde_json::to_value(t)?))
            }
            Request::Top => self.top(),
            Request::Monitoring { on } => self.set_monitoring(on),
            Request::TokensList {
                expiring_within,
                revoked,
                sub,
            } => Ok(self.tokens_list(expiring_within, revoked, sub.as_deref())),
            Request::RevokeBy {
                kind,
                name,
                until,
                reason,
            } => self.revoke_by(kind, &name, until, reason),
            Request::Introspect { token } => self.hash_of(&token).and_then(|_| match &token {
                TokenRef::Token(t) => Ok(self.introspect(t.trim())),
                TokenRef::Hash(_) => Err(anyhow::anyhow!("introspection needs the token itself")),
            }),
            Request::ClientsAdd { id, scopes } => self
                .authority()
                .add_client(&id, scopes)
                .map(|secret| serde_json::json!({ "client_id": id, "client_secret": secret })),
            Request::ClientsList => Ok(serde_json::json!(
                self.authority()
                    .clients()
                    .into_iter()
                    .map(|(id, scopes)| serde_json::json!({ "client_id": id, "scopes": scopes }))
                    .collect::<Vec<_>>()
            )),
            Request::KeysAdd { key } => {
                let added = self.authority().add_external(key);
                if added.is_ok() {
                    // Fetch a new JWKS URL now rather than at the next refresh tick.
                    self.refresh_jwks(None);
                }
                added
            }
            Request::KeysList => self.authority().keys_list(),
            Request::KeysRotate => {
                let mut auth = self.authority();
                let previous = auth.active_kid();
                auth.rotate_key(now())
                    .map(|kid| serde_json::json!({ "active_kid": kid, "previous": previous.ok() }))
            }
            Request::ApiKeysAdd { name, scopes } => self.add_api_key(&name, scopes),
            Request::ApiKeysList => Ok(serde_json::json!(
                self.authority()
                    .api_keys()
                    .map(|k| serde_json::json!({
                        "name": k.name, "scopes": k.scopes, "fingerprint": fingerprint(k.hash),
                        "created_at": k.created_at,
                    }))
                    .collect::<Vec<_>>()
            )),
            Request::ApiKeysRemove { name } => self.remove_api_key(&name),
            Request::KeysRemove { id } => match self.authority().remove_external(&id) {
                Ok(true) => {
                    self.cache().clear();
                    Ok(serde_json::json!({ "removed": id }))
                }
                Ok(false) => Err(anyhow::anyhow!("no external key or JWKS URL {id}")),
                Err(e) => Err(e),
            },
            Request::ClientsRemove { id } => match self.authority().remove_client(&id) {
                Ok(true) => Ok(serde_json::json!({ "removed": id })),
                Ok(false) => Err(anyhow::anyhow!("no client {id}")),
                Err(e) => Err(e),
            },
        }
    }

    pub(crate) fn revoke(
        &self,
        token: &TokenRef,
        until: Option<u64>,
        reason: Option<String>,
        api_key: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let started = std::time::Instant::now();
        let hash = self.hash_of(token)?;
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
        apply(&mut inner, &kept)
            .context("the revocation is recorded durably, but updating the kernel map failed")?;
        self.metrics
            .revocation_to_kernel_seconds
            .observe(started.elapsed().as_secs_f64());
        self.emit(LifecycleEvent::now(
            EventKind::Revoked,
            Some(fingerprint(hash)),
            kept.reason.clone(),
        ));
        let in_kernel = inner.kernel.contains(hash);
        log::info!(
            "revoked {} until {} ({})",
            fingerprint(hash),
            kept.expires_at,
            kept.reason
        );
        Ok(serde_json::to_value(RevokeReply {
            fingerprint: fingerprint(hash),
            changed,
            expires_at: kept.expires_at,
            in_kernel,
        })?)
    }

    fn unrevoke(
        &self,
        token: &TokenRef,
        reason: Option<String>,
    ) -> anyhow::Result<serde_json::Value> {
        let hash = self.hash_of(token)?;
        let mut inner = self.lock();
        let changed = inner
            .store
            .unrevoke(hash, reason.as_deref().unwrap_or(""), now())
            .context("recording the unrevocation")?;
        inner.kernel.remove(hash)?;
        inner.kernel.remove_header(hash)?;
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
        Ok(serde_json::to_value(RevokeReply {
            fingerprint: fingerprint(hash),
            changed,
            expires_at: 0,
            in_kernel,
        })?)
    }

    fn status(&self) -> anyhow::Result<serde_json::Value> {
        let inner = self.lock();
        let counters = inner
            .kernel
            .counters()?
            .into_iter()
            .map(|(c, v)| (c.name().to_string(), serde_json::Value::from(v)))
            .collect();
        let reply = StatusReply {
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
            store_bytes: inner.store.log_bytes(),
            state_dir: self.settings.state_dir.display().to_string(),
            bpffs: self.settings.bpffs.display().to_string(),
        };
        Ok(serde_json::to_value(reply)?)
    }

    fn detach(&self, iface: &str) -> anyhow::Result<serde_json::Value> {
        let mut inner = self.lock();
        let removed = inner.kernel.detach(iface)?;
        if removed == 0 {
            bail!("{iface} is not attached");
        }
        kernel::remove_pins_if_unused(&self.settings.bpffs)?;
        Ok(serde_json::json!({ "iface": iface, "removed": removed }))
    }
}

/// Puts a stored revocation into the right kernel map (and announces header revocations);
/// rules stay in userspace.
pub(crate) fn apply(inner: &mut Inner, r: &Revocation) -> anyhow::Result<()> {
    match r.scope {
        Scope::Token => Ok(inner.kernel.insert(r.hash, kernel_entry(r))?),
        Scope::SigningKey => {
            inner.kernel.insert_header(r.hash, kernel_entry(r))?;
            let headers = header_count(&inner.store);
            inner
                .kernel
                .update_config(|c| c.header_revocations = headers)
        }
        Scope::Jti | Scope::Subject | Scope::Client | Scope::Kid => Ok(()),
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
