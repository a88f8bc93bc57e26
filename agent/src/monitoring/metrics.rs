//! Prometheus metrics (prometheus-client), served as OpenMetrics text at `GET /metrics`.
//! Lifecycle counters are updated where things happen; kernel counters and gauges are read at
//! scrape time. Labels are bounded: `kid` only names configured keys, `version` at most
//! [`MAX_VERSIONS`] values of the configured claim, `reason` a small set of sources. No label
//! ever carries a token, a fingerprint or a subject.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, text::encode},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

pub use super::labels::{AlertRule, DeliveryResult, Outcome, RevocationKind, RevocationSource};
use crate::types::{Refusal, Rejection};

/// Distinct deployment versions labelled before the rest become `other`.
pub const MAX_VERSIONS: usize = 16;

/// `kid` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KidLabel {
    /// Signing key id.
    pub kid: String,
}

/// Labels of a validation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValidationLabels {
    /// The check's outcome.
    pub outcome: Outcome,
    /// Configured key id, or `other`.
    pub kid: String,
    /// Deployment version claim, `other`, or empty.
    pub version: String,
}

/// Labels of a revocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevocationLabels {
    /// What was revoked.
    pub kind: RevocationKind,
    /// Who or what revoked it.
    pub reason: RevocationSource,
}

/// What is read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Kernel counters summed over CPUs, per interface: (interface, counter, value).
    pub kernel: Vec<(String, &'static str, u64)>,
    /// Live revocations in the store.
    pub store_entries: u64,
    /// Entries in the kernel's token map.
    pub kernel_token_entries: u64,
    /// Entries in the kernel's header-segment map.
    pub kernel_header_entries: u64,
    /// Verified tokens cached.
    pub cached_tokens: u64,
    /// Signing keys by state (`active`, `grace`, `external`).
    pub keys: Vec<(&'static str, u64)>,
    /// Alerts waiting for webhook delivery.
    pub alert_queue: u64,
    /// Revocations the kernel maps could not take (full), enforced by forward-auth only.
    pub kernel_overflow: u64,
}

/// Rows of one gauge: (label name, label value, value); an empty name means no label.
type GaugeRows<'a> = Vec<(&'a str, &'a str, u64)>;

#[derive(Debug, Default)]
struct SnapshotCollector(Arc<Mutex<Snapshot>>);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut names: Vec<&str> = s.kernel.iter().map(|(_, n, _)| *n).collect();
        names.sort();
        names.dedup();
        for name in names {
            let help = format!("Kernel fast path: {name} (summed over CPUs)");
            let metric = format!("kernel_{name}");
            let kind = ConstCounter::new(0u64).metric_type();
            let mut m = encoder.encode_descriptor(&metric, &help, None, kind)?;
            for (iface, _, value) in s.kernel.iter().filter(|(_, n, _)| *n == name) {
                ConstCounter::new(*value).encode(m.encode_family(&[("iface", iface.as_str())])?)?;
            }
        }
        let gauges: [(&str, &str, GaugeRows); 5] = [
            (
                "kernel_overflow",
                "Revocations the kernel maps could not take (full): enforced by forward-auth only",
                vec![("", "", s.kernel_overflow)],
            ),
            (
                "alert_webhook_queue",
                "Alerts waiting for webhook delivery",
                vec![("", "", s.alert_queue)],
            ),
            (
                "revoked_entries",
                "Live revocations in the store and in each kernel map",
                vec![
                    ("where", "store", s.store_entries),
                    ("where", "kernel_tokens", s.kernel_token_entries),
                    ("where", "kernel_headers", s.kernel_header_entries),
                ],
            ),
            (
                "cached_tokens",
                "Verified tokens in the cache",
                vec![("", "", s.cached_tokens)],
            ),
            (
                "signing_keys",
                "Trusted keys by state",
                s.keys
                    .iter()
                    .map(|(state, n)| ("state", *state, *n))
                    .collect(),
            ),
        ];
        for (name, help, values) in gauges {
            let first = ConstGauge::new(0i64);
            let mut m = encoder.encode_descriptor(name, help, None, first.metric_type())?;
            for (label, value, n) in values {
                let g = ConstGauge::new(n as i64);
                if label.is_empty() {
                    g.encode(m.encode_family(&Vec::<(&str, &str)>::new())?)?;
                } else {
                    g.encode(m.encode_family(&[(label, value)])?)?;
                }
            }
        }
        Ok(())
    }
}

/// Running totals of the labelled lifecycle counters, summed over their labels, for
/// `tokenwall top` (read without encoding or parsing metrics text).
#[derive(Debug, Default)]
pub struct Totals {
    checks: [AtomicU64; 9],
    issued: AtomicU64,
    revocations: AtomicU64,
    alerts: AtomicU64,
}

impl Totals {
    /// Checks by outcome.
    pub fn checks(&self) -> BTreeMap<String, u64> {
        Outcome::ALL
            .iter()
            .zip(&self.checks)
            .map(|(o, n)| (o.as_str().to_string(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Every metric of the daemon.
#[derive(Debug)]
pub struct Metrics {
    /// Running totals for `tokenwall top`.
    pub totals: Totals,
    registry: Registry,
    snapshot: Arc<Mutex<Snapshot>>,
    versions: Mutex<HashSet<String>>,
    /// The claim naming a token's deployment version, if configured.
    pub version_claim: Option<String>,
    /// Tokens issued, by signing key.
    pub issued: Family<KidLabel, Counter>,
    /// Validations by outcome, key and version.
    pub validated: Family<ValidationLabels, Counter>,
    /// Refresh-token rotations.
    pub renewed: Counter,
    /// Retired refresh tokens presented.
    pub reuse_detected: Counter,
    /// Revocations by kind and reason.
    pub revoked: Family<RevocationLabels, Counter>,
    /// Revocations lifted.
    pub unrevoked: Counter,
    /// Expired store entries purged.
    pub purged: Counter,
    /// Learned revocations refused because their bound was reached (header segments per key).
    pub learn_refused: Counter,
    /// Time to check one token (cache hit or full validation).
    pub validation_seconds: Histogram,
    /// From a revocation request to the kernel map update completing.
    pub revocation_to_kernel_seconds: Histogram,
    /// Alerts fired, by rule.
    pub alerts: Family<RuleLabel, Counter>,
    /// Webhook deliveries by result (`delivered`, `failed`, `dropped` when the queue was full).
    pub alert_deliveries: Family<ResultLabel, Counter>,
}

/// `rule` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    /// Alert rule.
    pub rule: AlertRule,
}

/// `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome.
    pub result: DeliveryResult,
}

/// The `outcome` label of a refusal.
pub fn outcome(r: &Refusal) -> Outcome {
    match r {
        Refusal::Revoked(_) => Outcome::Revoked,
        Refusal::Invalid(rej) => match rej {
            Rejection::Expired => Outcome::Expired,
            Rejection::NotYetValid | Rejection::IssuedInFuture => Outcome::NotYetValid,
            Rejection::BadSignature | Rejection::AlgorithmMismatch => Outcome::BadSignature,
            Rejection::UnknownKey => Outcome::UnknownKey,
            Rejection::WrongIssuer => Outcome::WrongIssuer,
            Rejection::WrongAudience => Outcome::WrongAudience,
            _ => Outcome::Malformed,
        },
    }
}

impl Metrics {
    /// Registers everything; `version_claim` names the deployment-version claim, if any.
    pub fn new(version_claim: Option<String>) -> Self {
        let mut registry = Registry::with_prefix("tokenwall");
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let m = Self {
            snapshot: snapshot.clone(),
            totals: Totals::default(),
            versions: Mutex::new(HashSet::new()),
            version_claim,
            issued: Family::default(),
            validated: Family::default(),
            renewed: Counter::default(),
            reuse_detected: Counter::default(),
            revoked: Family::default(),
            unrevoked: Counter::default(),
            purged: Counter::default(),
            learn_refused: Counter::default(),
            validation_seconds: Histogram::new(exponential_buckets(5e-6, 2.0, 16)),
            revocation_to_kernel_seconds: Histogram::new(exponential_buckets(5e-5, 2.0, 16)),
            alerts: Family::default(),
            alert_deliveries: Family::default(),
            registry: Registry::default(),
        };
        registry.register("tokens_issued", "Access tokens issued", m.issued.clone());
        registry.register(
            "tokens_validated",
            "Token validations by outcome",
            m.validated.clone(),
        );
        registry.register(
            "tokens_renewed",
            "Refresh-token rotations",
            m.renewed.clone(),
        );
        registry.register(
            "refresh_reuse_detected",
            "Retired refresh tokens presented (the family was revoked)",
            m.reuse_detected.clone(),
        );
        registry.register(
            "revocations",
            "Revocations by kind and reason",
            m.revoked.clone(),
        );
        registry.register("unrevocations", "Revocations lifted", m.unrevoked.clone());
        registry.register(
            "expired_purged",
            "Expired revocations purged",
            m.purged.clone(),
        );
        registry.register(
            "learn_refused",
            "Learned revocations refused because their bound was reached",
            m.learn_refused.clone(),
        );
        registry.register(
            "validation_seconds",
            "Time to check one token",
            m.validation_seconds.clone(),
        );
        registry.register(
            "revocation_to_kernel_seconds",
            "From a revocation request to the kernel map update",
            m.revocation_to_kernel_seconds.clone(),
        );
        registry.register("alerts", "Anomaly alerts fired, by rule", m.alerts.clone());
        registry.register(
            "alert_webhook_deliveries",
            "Alert webhook deliveries by result",
            m.alert_deliveries.clone(),
        );
        registry.register_collector(Box::new(SnapshotCollector(snapshot)));
        Self { registry, ..m }
    }

    /// The `version` label of a verified token: the claim's value while fewer than
    /// [`MAX_VERSIONS`] values have been seen, then `other`.
    pub fn version_of(&self, claim: Option<&str>) -> String {
        let (Some(_), Some(v)) = (&self.version_claim, claim) else {
            return String::new();
        };
        let mut seen = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(v) || seen.len() < MAX_VERSIONS {
            seen.insert(v.to_string());
            v.chars().take(64).collect()
        } else {
            "other".into()
        }
    }

    /// Counts a validation (outcome, key, deployment version).
    pub fn count_validation(&self, outcome: Outcome, kid: String, version: String) {
        self.totals.checks[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.validated
            .get_or_create(&ValidationLabels {
                outcome,
                kid,
                version,
            })
            .inc();
    }

    /// Counts an issued token.
    pub fn count_issued(&self, kid: &str) {
        self.totals.issued.fetch_add(1, Ordering::Relaxed);
        self.issued
            .get_or_create(&KidLabel { kid: kid.into() })
            .inc();
    }

    /// Counts a fired alert.
    pub fn count_alert(&self, rule: AlertRule) {
        self.totals.alerts.fetch_add(1, Ordering::Relaxed);
        self.alerts.get_or_create(&RuleLabel { rule }).inc();
    }

    /// Counts what became of an alert sent to the webhook.
    pub fn count_delivery(&self, result: DeliveryResult) {
        self.alert_deliveries
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Lifecycle totals for `tokenwall top`: issued, renewed, revocations, alerts.
    pub fn lifecycle_totals(&self) -> BTreeMap<String, u64> {
        [
            ("issued", self.totals.issued.load(Ordering::Relaxed)),
            ("renewed", self.renewed.get()),
            (
                "revocations",
                self.totals.revocations.load(Ordering::Relaxed),
            ),
            ("alerts", self.totals.alerts.load(Ordering::Relaxed)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Counts a revocation.
    pub fn count_revocation(&self, kind: RevocationKind, reason: RevocationSource) {
        self.totals.revocations.fetch_add(1, Ordering::Relaxed);
        self.revoked
            .get_or_create(&RevocationLabels { kind, reason })
            .inc();
    }

    /// Encodes everything as OpenMetrics text, after installing a fresh snapshot.
    pub fn encode(&self, snapshot: Snapshot) -> String {
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = snapshot;
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_kernel_counters_are_encoded_with_bounded_labels() {
        let m = Metrics::new(Some("ver".into()));
        m.issued.get_or_create(&KidLabel { kid: "k1".into() }).inc();
        for i in 0..(MAX_VERSIONS + 3) {
            let v = m.version_of(Some(&format!("v{i}")));
            let labels = ValidationLabels {
                outcome: Outcome::Ok,
                kid: "k1".into(),
                version: v,
            };
            m.validated.get_or_create(&labels).inc();
        }
        m.count_revocation(RevocationKind::Sub, RevocationSource::Operator);
        let text = m.encode(Snapshot {
            kernel: vec![
                ("eth0".into(), "revoked_hits", 7),
                ("eth1".into(), "revoked_hits", 2),
            ],
            store_entries: 3,
            keys: vec![("active", 1)],
            ..Snapshot::default()
        });
        assert!(
            text.contains("tokenwall_tokens_issued_total{kid=\"k1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("tokenwall_kernel_revoked_hits_total{iface=\"eth0\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("tokenwall_kernel_revoked_hits_total{iface=\"eth1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("tokenwall_revoked_entries{where=\"store\"} 3"),
            "{text}"
        );
        assert!(text.contains("tokenwall_revocations_total{kind=\"sub\",reason=\"operator\"} 1"));
        assert!(
            text.contains("version=\"other\"} 3"),
            "versions beyond the bound: {text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn refusals_map_to_the_documented_outcomes() {
        assert_eq!(
            outcome(&Refusal::Revoked(crate::types::RevokedBy::Token)).as_str(),
            "revoked"
        );
        assert_eq!(
            outcome(&Refusal::Invalid(Rejection::Expired)).as_str(),
            "expired"
        );
        assert_eq!(
            outcome(&Refusal::Invalid(Rejection::AlgNone)).as_str(),
            "malformed"
        );
        assert_eq!(
            outcome(&Refusal::Invalid(Rejection::UnknownKey)).as_str(),
            "unknown_key"
        );
    }
}
