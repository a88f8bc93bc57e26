//! Monitoring on top of [`Service`]: the lifecycle event stream and per-token timelines, the
//! token list, the audit trail's append, and the metrics snapshot read at scrape time.

use std::sync::Arc;

use crate::{
    clock::now,
    control::protocol::{
        IfaceCounters, MonitoringReply, RevokedInfo, TokenRow, TopSnapshot, TopToken,
    },
    monitoring::alerts::Alert,
    monitoring::audit::Entry,
    monitoring::lifecycle::{EventKind, LifecycleEvent, Timeline},
    monitoring::metrics::{ResultLabel, Snapshot, outcome},
    revocation::hash_key::fingerprint,
    service::Service,
    tokens::validate::Verified,
    types::Refusal,
    types::TokenHash,
};

impl Service {
    /// Publishes a lifecycle event: into the token's timeline, and (except passing checks)
    /// to `watch` clients.
    pub fn emit(&self, ev: LifecycleEvent) {
        if !self.monitoring_on() {
            return;
        }
        self.timelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .apply(&ev);
        let fired = if ev.kind == EventKind::Alert {
            Vec::new()
        } else {
            self.alerts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(&ev, now())
        };
        if ev.kind != EventKind::Validated {
            let _ = self.lifecycle.send(ev);
        }
        for alert in fired {
            self.raise(alert);
        }
    }

    /// Counts one token check in the metrics, the token's timeline and the alert rules. A
    /// passing check of a token that has a timeline builds no event: it is the hot path.
    pub(crate) fn count_check(&self, hash: u64, result: &Result<Arc<Verified>, Refusal>) {
        let m = &self.metrics;
        let v = match result {
            Ok(v) => v,
            Err(r) => {
                let outcome = outcome(r);
                m.count_validation(outcome, "other".into(), String::new());
                let fp = Some(fingerprint(hash));
                return self.emit(LifecycleEvent::now(EventKind::Rejected, fp, outcome));
            }
        };
        let version = m.version_of(m.version_claim.as_deref().and_then(|c| v.claim_str(c)));
        m.count_validation("ok", v.kid.clone(), version);
        let jti = v.claim_str("jti");
        let counted = self
            .timelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count_pass(hash, jti);
        if !counted {
            let ev = LifecycleEvent::now(EventKind::Validated, Some(fingerprint(hash)), "ok");
            return self.emit(match jti {
                Some(j) => ev.with_jti(j),
                None => ev,
            });
        }
        let rollout = self
            .alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count_check(false, now());
        if let Some(detail) = rollout {
            self.raise(Alert::now("key_rollout", None, detail));
        }
    }

    /// Raises the `kernel_map_full` alert: a revocation did not fit in a kernel map.
    pub(crate) fn alert_kernel_full(&self, overflow: usize) {
        self.raise(Alert::now(
            "kernel_map_full",
            None,
            format!(
                "{overflow} revocation(s) did not fit in the kernel maps: forward-auth still refuses them, the kernel does not drop them (raise --max-revoked)"
            ),
        ));
    }

    /// Delivers an alert: log, event stream, metric, webhook (never waiting on it).
    fn raise(&self, alert: Alert) {
        log::warn!(
            "ALERT {}: {} ({})",
            alert.rule,
            alert.detail,
            alert.fingerprint.as_deref().unwrap_or("-")
        );
        self.metrics.count_alert(&alert.rule);
        self.emit(LifecycleEvent::now(
            EventKind::Alert,
            alert.fingerprint.clone(),
            format!("{}: {}", alert.rule, alert.detail),
        ));
        {
            let mut recent = self.recent_alerts.lock().unwrap_or_else(|p| p.into_inner());
            recent.push_back(alert.clone());
            if recent.len() > 20 {
                recent.pop_front();
            }
        }
        if let Some(w) = &self.webhook
            && !w.offer(alert)
        {
            self.metrics
                .alert_deliveries
                .get_or_create(&ResultLabel {
                    result: "dropped".into(),
                })
                .inc();
        }
    }

    /// Tokens indexed here (issued, or seen valid), filtered; newest expiry last.
    pub(crate) fn tokens_list(
        &self,
        expiring_within: Option<u64>,
        revoked_only: bool,
        sub: Option<&str>,
    ) -> Vec<TokenRow> {
        let now = now();
        let index: Vec<_> = self
            .authority()
            .index
            .iter()
            .filter(|(_, ix)| ix.exp > now)
            .filter(|(_, ix)| expiring_within.is_none_or(|d| ix.exp <= now + d))
            .filter(|(_, ix)| sub.is_none_or(|s| ix.sub == s))
            .map(|(j, ix)| (j.clone(), ix.clone()))
            .collect();
        let inner = self.lock();
        let mut rows: Vec<TokenRow> = index
            .into_iter()
            .filter_map(|(jti, ix)| {
                let revoked = inner.store.get(ix.hash).map(|r| RevokedInfo {
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

    /// A token's timeline, by fingerprint or `jti`.
    pub fn timeline(&self, fp: Option<&str>, jti: Option<&str>) -> Option<Timeline> {
        let t = self.timelines.lock().unwrap_or_else(|p| p.into_inner());
        let fp = match (fp, jti) {
            (Some(fp), _) => Some(fp.to_string()),
            (None, Some(j)) => t
                .fingerprint_of(j)
                .map(str::to_string)
                .or_else(|| self.authority().index.get(j).map(|ix| fingerprint(ix.hash))),
            _ => None,
        }?;
        t.get(&fp).cloned()
    }

    /// Appends an audit record (fsynced).
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        subjects: Vec<String>,
        reason: &str,
    ) -> anyhow::Result<()> {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        self.audit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .append(
                Entry {
                    actor: actor.into(),
                    action: action.into(),
                    subjects,
                    reason: reason.into(),
                },
                time,
            )
            .map(|_| ())
    }

    /// Whether monitoring is on.
    pub fn monitoring_on(&self) -> bool {
        self.monitoring.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns monitoring on or off, in userspace and in the kernel.
    pub(crate) fn set_monitoring(&self, on: bool) -> anyhow::Result<MonitoringReply> {
        self.lock()
            .kernel
            .update_config(|c| c.monitoring = u32::from(on))?;
        self.monitoring
            .store(on, std::sync::atomic::Ordering::Relaxed);
        Ok(MonitoringReply { monitoring: on })
    }

    /// What `tokenwall top` shows: counters it turns into rates, the most hit revoked
    /// tokens, the last alerts.
    pub(crate) fn top(&self) -> anyhow::Result<TopSnapshot> {
        let top_revoked = self
            .timelines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .top_by_kernel_hits(10)
            .into_iter()
            .map(|(fingerprint, kernel_hits, last_source)| TopToken {
                fingerprint,
                kernel_hits,
                last_source,
            })
            .collect();
        let alerts: Vec<_> = self
            .recent_alerts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let inner = self.lock();
        let ifaces = inner
            .kernel
            .attachments()
            .into_iter()
            .map(|a| format!("{} ({})", a.iface, a.hook.name()))
            .collect();
        let kernel = inner
            .kernel
            .counters_by_iface()?
            .into_iter()
            .map(|(iface, counters)| IfaceCounters {
                iface,
                counters: counters
                    .into_iter()
                    .map(|(c, v)| (c.name().to_string(), v))
                    .collect(),
            })
            .collect();
        Ok(TopSnapshot {
            ifaces,
            kernel,
            checks: self.metrics.totals.checks(),
            lifecycle: self.metrics.lifecycle_totals(),
            revoked_entries: inner.store.len() as u64,
            top_revoked,
            alerts,
        })
    }

    /// `GET /metrics`: OpenMetrics text with kernel counters and gauges read now.
    pub fn metrics_text(&self) -> anyhow::Result<String> {
        let (cached_tokens, keys) = {
            let auth = self.authority();
            (self.cache().len() as u64, auth.key_counts())
        };
        let snapshot = {
            let inner = self.lock();
            Snapshot {
                kernel: inner
                    .kernel
                    .counters_by_iface()?
                    .into_iter()
                    .flat_map(|(iface, counters)| {
                        counters
                            .into_iter()
                            .map(move |(c, v)| (iface.clone(), c.name(), v))
                    })
                    .collect(),
                store_entries: inner.store.len() as u64,
                kernel_token_entries: inner.kernel.revoked_hashes().len() as u64,
                kernel_header_entries: inner.kernel.revoked_header_hashes().len() as u64,
                cached_tokens,
                keys,
                alert_queue: self.webhook.as_ref().map_or(0, |w| w.queued() as u64),
                kernel_overflow: inner.overflow.len() as u64,
            }
        };
        Ok(self.metrics.encode(snapshot))
    }
}

pub mod alerts;
pub mod audit;
pub mod lifecycle;
pub mod metrics;
