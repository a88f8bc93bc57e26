//! Administration and views: status, detach, clients, trusted keys, API keys, the token list
//! and timelines, `top`'s snapshot, the monitoring switch, and the metrics scrape.

use anyhow::{Context as _, bail};

use super::{Service, action_name};
use crate::{
    clock::now,
    control::protocol::{
        self as p, AttachmentInfo, DetachReply, IfaceCounters, MonitoringReply, RevokedInfo,
        StatusReply, TokenRow, TopSnapshot,
    },
    monitoring::{lifecycle::Timeline, metrics::Snapshot},
    tokens::keys::ExternalKey,
    types::TokenHash,
};

/// Revoked tokens `top` lists.
const TOP_REVOKED: usize = 10;

impl Service {
    /// `status`: attachments, kernel counters, store and map sizes.
    pub(crate) fn status(&self) -> anyhow::Result<StatusReply> {
        let (counters, attachments) = {
            let programs = self.programs();
            (programs.counters()?, programs.attachments())
        };
        let counts = self.revocations.counts();
        Ok(StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            attachments: attachments
                .into_iter()
                .map(|a| AttachmentInfo {
                    iface: a.iface,
                    hook: a.hook.name().to_string(),
                })
                .collect(),
            action: action_name(self.settings.action).to_string(),
            ports: self.settings.ports.clone(),
            counters: counters
                .into_iter()
                .map(|(c, v)| (c.name().to_string(), v))
                .collect(),
            revoked_entries: counts.store_entries,
            kernel_entries: counts.kernel_tokens,
            kernel_overflow: counts.overflow,
            store_bytes: counts.log_bytes,
            state_dir: self.settings.state_dir.display().to_string(),
            bpffs: self.settings.bpffs.display().to_string(),
        })
    }

    /// `detach`: removes an interface's attachments (and the pins once none is left).
    pub(crate) fn detach(&self, iface: &str) -> anyhow::Result<DetachReply> {
        let mut programs = self.programs();
        let removed = programs.detach(iface)?;
        if removed == 0 {
            bail!("{iface} is not attached");
        }
        programs.remove_pins_if_unused()?;
        Ok(DetachReply {
            iface: iface.to_string(),
            removed,
            daemon: true,
        })
    }

    /// `token_show`: a token's timeline, by token, fingerprint or `jti`.
    pub(crate) fn token_show(&self, c: p::TokenShow) -> anyhow::Result<Timeline> {
        let fp = c
            .token
            .map(|t| self.hash_of(&t).map(|h| h.to_string()))
            .transpose()?;
        self.monitor
            .timeline(fp.as_deref(), c.jti.as_deref(), |jti| {
                self.authority
                    .indexed(jti)
                    .map(|ix| TokenHash(ix.hash).to_string())
            })
            .context("no timeline for that token (it was never issued, checked or hit here)")
    }

    /// Tokens indexed here (issued, or seen valid), filtered; newest expiry last.
    pub(crate) fn tokens_list(
        &self,
        expiring_within: Option<u64>,
        revoked_only: bool,
        sub: Option<&str>,
    ) -> Vec<TokenRow> {
        let now = now();
        let index = self.authority.indexed_where(|ix| {
            ix.exp > now
                && expiring_within.is_none_or(|d| ix.exp <= now + d)
                && sub.is_none_or(|s| ix.sub == s)
        });
        let hashes: Vec<u64> = index.iter().map(|(_, ix)| ix.hash).collect();
        let revoked = self.revocations.entries_for(&hashes);
        let mut rows: Vec<TokenRow> = index
            .into_iter()
            .filter_map(|(jti, ix)| {
                let revoked = revoked.get(&ix.hash).map(|r| RevokedInfo {
                    reason: r.reason.clone(),
                    at: r.revoked_at,
                });
                (!revoked_only || revoked.is_some()).then(|| TokenRow {
                    fingerprint: TokenHash(ix.hash),
                    jti,
                    iss: ix.iss,
                    sub: ix.sub,
                    client_id: ix.client_id,
                    kid: ix.kid,
                    exp: ix.exp,
                    expires_in: ix.exp - now,
                    revoked,
                })
            })
            .collect();
        rows.sort_by_key(|r| r.exp);
        rows
    }

    /// Turns monitoring on or off, in userspace and in the kernel.
    pub(crate) fn set_monitoring(&self, on: bool) -> anyhow::Result<MonitoringReply> {
        self.config.update(|c| c.monitoring = u32::from(on))?;
        self.monitor.set_on(on);
        Ok(MonitoringReply { monitoring: on })
    }

    /// What `tokenwall top` shows: counters it turns into rates, the most hit revoked
    /// tokens, the last alerts.
    pub(crate) fn top(&self) -> anyhow::Result<TopSnapshot> {
        let (by_iface, attachments) = {
            let programs = self.programs();
            (programs.counters_by_iface()?, programs.attachments())
        };
        Ok(TopSnapshot {
            ifaces: attachments
                .into_iter()
                .map(|a| format!("{} ({})", a.iface, a.hook.name()))
                .collect(),
            kernel: by_iface
                .into_iter()
                .map(|(iface, counters)| IfaceCounters {
                    iface,
                    counters: counters
                        .into_iter()
                        .map(|(c, v)| (c.name().to_string(), v))
                        .collect(),
                })
                .collect(),
            checks: self.monitor.metrics.totals.checks(),
            lifecycle: self.monitor.metrics.lifecycle_totals(),
            revoked_entries: self.revocations.counts().store_entries as u64,
            top_revoked: self.monitor.top_revoked(TOP_REVOKED),
            alerts: self.monitor.recent_alerts(),
        })
    }

    /// `GET /metrics`: OpenMetrics text with kernel counters and gauges read now.
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        let kernel = self
            .programs()
            .counters_by_iface()?
            .into_iter()
            .flat_map(|(iface, counters)| {
                counters
                    .into_iter()
                    .map(move |(c, v)| (iface.clone(), c.name(), v))
            })
            .collect();
        let counts = self.revocations.counts();
        Ok(self.monitor.encode(Snapshot {
            kernel,
            store_entries: counts.store_entries as u64,
            kernel_token_entries: counts.kernel_tokens as u64,
            kernel_header_entries: counts.kernel_headers as u64,
            cached_tokens: self.cache.len() as u64,
            keys: self.authority.key_counts(),
            alert_queue: self.monitor.alert_queue(),
            kernel_overflow: counts.overflow as u64,
        }))
    }

    /// `clients_add`.
    pub(crate) fn clients_add(
        &self,
        id: &str,
        scopes: Vec<String>,
    ) -> anyhow::Result<p::ClientSecret> {
        Ok(p::ClientSecret {
            client_id: id.to_string(),
            client_secret: self.authority.add_client(id, scopes)?,
        })
    }

    /// `clients_list`.
    pub(crate) fn clients_list(&self) -> Vec<p::ClientInfo> {
        self.authority
            .clients()
            .into_iter()
            .map(|(client_id, scopes)| p::ClientInfo { client_id, scopes })
            .collect()
    }

    /// `clients_remove`.
    pub(crate) fn clients_remove(&self, id: &str) -> anyhow::Result<p::Removed> {
        if !self.authority.remove_client(id)? {
            bail!("no client {id}");
        }
        Ok(p::Removed {
            removed: id.to_string(),
        })
    }

    /// `keys_add`: trusts an external key source (a new JWKS URL is fetched at once).
    pub(crate) fn keys_add(&self, key: ExternalKey) -> anyhow::Result<p::KeyAdded> {
        let added = self.authority.add_external(key)?;
        self.refresh_jwks(None);
        Ok(added)
    }

    /// `keys_list`.
    pub(crate) fn keys_list(&self) -> anyhow::Result<Vec<p::KeyInfo>> {
        self.authority.keys_list()
    }

    /// `keys_rotate`.
    pub(crate) fn keys_rotate(&self) -> anyhow::Result<p::KeyRotated> {
        let (active_kid, previous) = self.authority.rotate_key(now())?;
        Ok(p::KeyRotated {
            active_kid,
            previous,
        })
    }

    /// `keys_remove`: stops trusting an external key source; cached verifications go.
    pub(crate) fn keys_remove(&self, id: &str) -> anyhow::Result<p::Removed> {
        if !self.authority.remove_external(id)? {
            bail!("no external key or JWKS URL {id}");
        }
        self.cache.clear();
        Ok(p::Removed {
            removed: id.to_string(),
        })
    }

    /// `api_keys_list`.
    pub(crate) fn api_keys_list(&self) -> Vec<p::ApiKeyInfo> {
        self.authority
            .api_keys()
            .into_iter()
            .map(|k| p::ApiKeyInfo {
                name: k.name,
                scopes: k.scopes,
                fingerprint: TokenHash(k.hash),
                created_at: k.created_at,
            })
            .collect()
    }
}
