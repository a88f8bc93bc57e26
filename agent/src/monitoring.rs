//! Monitoring: Prometheus metrics, the lifecycle event stream and per-token timelines, anomaly
//! alerts (log, stream, metric, webhook), kernel hit events, and the hash-chained audit trail.
//! One component, [`Monitor`], owns all of it; each part has its own small lock, and none is
//! held while another component's is.

pub mod alerts;
pub mod audit;
pub mod labels;
pub mod lifecycle;
pub mod metrics;

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    clock::now,
    tokens::validate::Verified,
    types::{Refusal, TokenHash},
};
use alerts::{Alert, AlertEngine, Webhook};
use audit::{AuditLog, Entry};
use lifecycle::{EventKind, LifecycleEvent, Timeline, Timelines};
use metrics::{DeliveryResult, Metrics, Snapshot, outcome};

/// A kernel hit event as streamed by `events`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventLine {
    /// RFC 3339 time of the hit.
    pub time: String,
    /// Token fingerprint.
    pub fingerprint: TokenHash,
    /// `bearer` or `api_key`.
    pub kind: String,
    /// `drop`, `reset`, `observe` or `passed_to_stack`.
    pub action: String,
    /// `token` (this token is revoked) or `signing_key` (its JWS header segment is).
    pub matched: String,
    /// Interface name (or index when unknown).
    pub iface: String,
    /// Client address and port.
    pub source: String,
    /// Server address and port.
    pub destination: String,
    /// What socket the stack had for the segment ([`socket_name`]): `connection`,
    /// `handshake` (a request socket), `listener`, `time_wait`, `none` (a spoofed source, or
    /// a connection already gone).
    #[serde(default)]
    pub socket: String,
}

/// The name of a kernel `SOCKET_*` value in events.
pub fn socket_name(socket: u32) -> &'static str {
    use agent_common::event::{
        SOCKET_ESTABLISHED, SOCKET_LISTENER, SOCKET_NONE, SOCKET_REQUEST, SOCKET_TIME_WAIT,
    };
    match socket {
        SOCKET_ESTABLISHED => "connection",
        SOCKET_REQUEST => "handshake",
        SOCKET_LISTENER => "listener",
        SOCKET_TIME_WAIT => "time_wait",
        SOCKET_NONE => "none",
        _ => "unknown",
    }
}

/// Whether a socket name from [`socket_name`] means a client stood behind the hit (a
/// connection or a handshake in progress); `unknown` (not looked up) counts as one.
pub fn socket_has_connection(name: &str) -> bool {
    matches!(name, "connection" | "handshake" | "unknown")
}

/// A revoked token the kernel hits often.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TopToken {
    /// Its fingerprint.
    pub fingerprint: String,
    /// Kernel hits.
    pub kernel_hits: u64,
    /// Where the last hit came from.
    pub last_source: Option<String>,
}

/// Alerts kept for `tokenwall top`.
const RECENT_ALERTS: usize = 20;

fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The monitoring component.
pub struct Monitor {
    /// Prometheus metrics.
    pub metrics: Metrics,
    on: AtomicBool,
    lifecycle: broadcast::Sender<LifecycleEvent>,
    hits: broadcast::Sender<EventLine>,
    timelines: Mutex<Timelines>,
    alerts: Mutex<AlertEngine>,
    recent_alerts: Mutex<VecDeque<Alert>>,
    webhook: Option<Webhook>,
    audit: Mutex<AuditLog>,
}

impl Monitor {
    /// Monitoring with these parts; `on` is the switch at start (the audit trail is always on).
    pub fn new(
        metrics: Metrics,
        audit: AuditLog,
        alerts: AlertEngine,
        webhook: Option<Webhook>,
        on: bool,
    ) -> Self {
        Self {
            metrics,
            on: AtomicBool::new(on),
            lifecycle: broadcast::channel(4096).0,
            hits: broadcast::channel(1024).0,
            timelines: Mutex::new(Timelines::default()),
            alerts: Mutex::new(alerts),
            recent_alerts: Mutex::new(VecDeque::new()),
            webhook,
            audit: Mutex::new(audit),
        }
    }

    /// Whether monitoring is on.
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Turns monitoring on or off (userspace; the kernel's switch is its configuration).
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Subscribes to lifecycle events (`tokenwall watch`).
    pub fn lifecycle_events(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.lifecycle.subscribe()
    }

    /// Subscribes to kernel hit events (`tokenwall events`).
    pub fn hit_events(&self) -> broadcast::Receiver<EventLine> {
        self.hits.subscribe()
    }

    /// Clients following `watch` and `events`: (lifecycle, hits).
    pub fn subscribers(&self) -> (usize, usize) {
        (self.lifecycle.receiver_count(), self.hits.receiver_count())
    }

    /// A kernel hit: to `events` clients, and (when a connection stood behind it) into the
    /// token's timeline and the alert rules.
    pub fn kernel_hit(&self, line: EventLine, ev: LifecycleEvent) {
        self.emit(ev);
        let _ = self.hits.send(line);
    }

    /// Publishes a lifecycle event: into the token's timeline, the alert rules, and (except
    /// passing checks) to `watch` clients.
    pub fn emit(&self, ev: LifecycleEvent) {
        if !self.is_on() {
            return;
        }
        guard(&self.timelines).apply(&ev);
        let fired = if ev.kind == EventKind::Alert {
            Vec::new()
        } else {
            guard(&self.alerts).observe(&ev, now())
        };
        if ev.kind != EventKind::Validated {
            let _ = self.lifecycle.send(ev);
        }
        for alert in fired {
            self.raise(alert);
        }
    }

    /// Counts one token check (by revocation key) in the metrics, the token's timeline and the
    /// alert rules. A passing check of a token that has a timeline builds no event: it is the
    /// hot path.
    pub fn count_check(&self, hash: u64, result: &Result<Arc<Verified>, Refusal>) {
        let m = &self.metrics;
        let v = match result {
            Ok(v) => v,
            Err(r) => {
                let outcome = outcome(r);
                m.count_validation(outcome, "other".into(), String::new());
                let fp = Some(TokenHash(hash).to_string());
                return self.emit(LifecycleEvent::now(
                    EventKind::Rejected,
                    fp,
                    outcome.as_str(),
                ));
            }
        };
        let version = m.version_of(m.version_claim.as_deref().and_then(|c| v.claim_str(c)));
        m.count_validation(metrics::Outcome::Ok, v.kid.clone(), version);
        let jti = v.claim_str("jti");
        if !guard(&self.timelines).count_pass(hash, jti) {
            let ev = LifecycleEvent::now(
                EventKind::Validated,
                Some(TokenHash(hash).to_string()),
                "ok",
            );
            return self.emit(match jti {
                Some(j) => ev.with_jti(j),
                None => ev,
            });
        }
        let rollout = guard(&self.alerts).count_check(false, now());
        if let Some(detail) = rollout {
            self.raise(Alert::now(metrics::AlertRule::KeyRollout, None, detail));
        }
    }

    /// Raises the `kernel_map_full` alert: a revocation did not fit in a kernel map.
    pub fn alert_kernel_full(&self) {
        self.raise(Alert::now(
            metrics::AlertRule::KernelMapFull,
            None,
            "a revocation did not fit in a kernel map: forward-auth still refuses it, the kernel does not drop it (raise --max-revoked)".into(),
        ));
    }

    /// Delivers an alert: log, event stream, metric, webhook (never waiting on it).
    pub fn raise(&self, alert: Alert) {
        log::warn!(
            "ALERT {}: {} ({})",
            alert.rule,
            alert.detail,
            alert.fingerprint.as_deref().unwrap_or("-")
        );
        self.metrics.count_alert(alert.rule);
        self.emit(LifecycleEvent::now(
            EventKind::Alert,
            alert.fingerprint.clone(),
            format!("{}: {}", alert.rule, alert.detail),
        ));
        {
            let mut recent = guard(&self.recent_alerts);
            recent.push_back(alert.clone());
            if recent.len() > RECENT_ALERTS {
                recent.pop_front();
            }
        }
        if let Some(w) = &self.webhook
            && !w.offer(alert)
        {
            self.metrics.count_delivery(DeliveryResult::Dropped);
        }
    }

    /// The last alerts, newest last.
    pub fn recent_alerts(&self) -> Vec<Alert> {
        guard(&self.recent_alerts).iter().cloned().collect()
    }

    /// The revoked tokens with the most kernel hits.
    pub fn top_revoked(&self, n: usize) -> Vec<TopToken> {
        guard(&self.timelines)
            .top_by_kernel_hits(n)
            .into_iter()
            .map(|(fingerprint, kernel_hits, last_source)| TopToken {
                fingerprint,
                kernel_hits,
                last_source,
            })
            .collect()
    }

    /// A token's timeline, by fingerprint, or by a `jti` an event named (`indexed` gives the
    /// fingerprint of an indexed `jti` that no event named).
    pub fn timeline(
        &self,
        fp: Option<&str>,
        jti: Option<&str>,
        indexed: impl FnOnce(&str) -> Option<String>,
    ) -> Option<Timeline> {
        let t = guard(&self.timelines);
        let fp = match (fp, jti) {
            (Some(fp), _) => Some(fp.to_string()),
            (None, Some(j)) => t
                .fingerprint_of(j)
                .map(str::to_string)
                .or_else(|| indexed(j)),
            _ => None,
        }?;
        t.get(&fp).cloned()
    }

    /// Appends an audit record (fsynced before this returns).
    pub fn record(
        &self,
        actor: &str,
        action: &str,
        subjects: Vec<String>,
        reason: &str,
    ) -> anyhow::Result<()> {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        guard(&self.audit)
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

    /// Alerts waiting for webhook delivery.
    pub fn alert_queue(&self) -> u64 {
        self.webhook.as_ref().map_or(0, |w| w.queued() as u64)
    }

    /// OpenMetrics text with `snapshot` (what is read at scrape time) installed.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        self.metrics.encode(snapshot)
    }
}
