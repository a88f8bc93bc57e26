//! Anomaly alerts, judged from the lifecycle stream: a revoked token replayed from several
//! source addresses (theft), kernel hits for one token above a rate (a flood), bad-signature
//! and unknown-key rejections above a rate or a share of checks (a broken key rollout), and
//! refresh-token reuse (always). An alert goes to the log, the event stream, a metric and, when
//! configured, a webhook: JSON POSTs from a bounded queue with retries, so a down webhook never
//! blocks enforcement (a full queue drops the newest alert and counts it).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::labels::AlertRule;
use crate::monitoring::lifecycle::{EventKind, LifecycleEvent};

/// Tokens tracked for replay and rate rules (older ones are forgotten first).
const MAX_TRACKED: usize = 10_000;

/// Thresholds; every rule has a default.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AlertRules {
    /// A revoked token seen by the kernel from more than this many source addresses.
    pub replay_sources: usize,
    /// Kernel hits for one token per minute above this.
    pub hits_per_minute: u64,
    /// Bad-signature plus unknown-key rejections per minute above this…
    pub key_rejections_per_minute: u64,
    /// …or above this share of all checks in the minute (with at least 20 checks).
    pub key_rejection_ratio: f64,
}

impl Default for AlertRules {
    fn default() -> Self {
        Self {
            replay_sources: 3,
            hits_per_minute: 600,
            key_rejections_per_minute: 100,
            key_rejection_ratio: 0.5,
        }
    }
}

/// One alert as logged, streamed and posted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Alert {
    /// `token_theft`, `revoked_token_flood`, `key_rollout`, `refresh_reuse`.
    pub rule: AlertRule,
    /// The token concerned, if one.
    pub fingerprint: Option<String>,
    /// What was seen.
    pub detail: String,
    /// RFC 3339 time.
    pub time: String,
}

impl Alert {
    /// An alert at the current time.
    pub fn now(rule: AlertRule, fingerprint: Option<String>, detail: String) -> Self {
        Self {
            rule,
            fingerprint,
            detail,
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }
}

#[derive(Default)]
struct Minute {
    start: u64,
    checks: u64,
    key_rejections: u64,
    fired: bool,
}

/// Rule state.
pub struct AlertEngine {
    rules: AlertRules,
    sources: HashMap<String, HashSet<String>>,
    hits: HashMap<String, (u64, u64)>,
    fired: HashSet<(String, AlertRule)>,
    minute: Minute,
}

impl AlertEngine {
    /// An engine with these thresholds.
    pub fn new(rules: AlertRules) -> Self {
        Self {
            rules,
            sources: HashMap::new(),
            hits: HashMap::new(),
            fired: HashSet::new(),
            minute: Minute::default(),
        }
    }

    /// Judges one event at unix second `now`; returns the alerts it fires (each rule fires
    /// once per token, and the rollout rule once per minute).
    pub fn observe(&mut self, ev: &LifecycleEvent, now: u64) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut fire = |rule: AlertRule, fp: Option<&String>, detail: String| {
            out.push(Alert {
                rule,
                fingerprint: fp.cloned(),
                detail,
                time: ev.time.clone(),
            })
        };
        if self.sources.len() > MAX_TRACKED || self.hits.len() > MAX_TRACKED {
            self.sources.clear();
            self.hits.clear();
        }
        match ev.kind {
            EventKind::KernelHit => {
                // Only hits with a client behind them count: a spoofed source must neither
                // frame a token as stolen nor raise a flood.
                let Some(fp) = ev.fingerprint.as_ref().filter(|_| ev.from_connection()) else {
                    return out;
                };
                if let Some(src) = &ev.source {
                    // The address without the port: one client reconnecting is one source.
                    let ip = src.rsplit_once(':').map_or(src.as_str(), |(ip, _)| ip);
                    let set = self.sources.entry(fp.clone()).or_default();
                    set.insert(ip.trim_matches(['[', ']']).to_string());
                    if set.len() > self.rules.replay_sources
                        && self.fired.insert((fp.clone(), AlertRule::TokenTheft))
                    {
                        let n = set.len();
                        fire(
                            AlertRule::TokenTheft,
                            Some(fp),
                            format!("revoked token replayed from {n} source addresses"),
                        );
                    }
                }
                let (start, count) = self.hits.entry(fp.clone()).or_insert((now, 0));
                if now >= *start + 60 {
                    (*start, *count) = (now, 0);
                }
                *count += 1;
                if *count > self.rules.hits_per_minute
                    && self
                        .fired
                        .insert((fp.clone(), AlertRule::RevokedTokenFlood))
                {
                    let n = *count;
                    fire(
                        AlertRule::RevokedTokenFlood,
                        Some(fp),
                        format!("{n} kernel hits within a minute"),
                    );
                }
            }
            EventKind::Validated | EventKind::Rejected => {
                let key_rejection = ev.kind == EventKind::Rejected
                    && matches!(ev.detail.as_str(), "bad_signature" | "unknown_key");
                if let Some(detail) = self.count_check(key_rejection, now) {
                    fire(AlertRule::KeyRollout, None, detail);
                }
            }
            EventKind::ReuseDetected => fire(AlertRule::RefreshReuse, None, ev.detail.clone()),
            _ => {}
        }
        out
    }

    /// Counts one check in the current minute (`key_rejection`: it failed on a bad signature
    /// or an unknown key); returns the `key_rollout` alert's detail when the rule fires.
    pub fn count_check(&mut self, key_rejection: bool, now: u64) -> Option<String> {
        let m = &mut self.minute;
        if now >= m.start + 60 {
            *m = Minute {
                start: now,
                ..Minute::default()
            };
        }
        m.checks += 1;
        m.key_rejections += u64::from(key_rejection);
        let ratio = m.key_rejections as f64 / m.checks as f64;
        let over_rate = m.key_rejections > self.rules.key_rejections_per_minute;
        let over_ratio = m.checks >= 20 && ratio > self.rules.key_rejection_ratio;
        if !(over_rate || over_ratio) || m.fired {
            return None;
        }
        m.fired = true;
        Some(format!(
            "{} of {} checks this minute failed on signature or unknown key",
            m.key_rejections, m.checks
        ))
    }
}

/// Delivery to a webhook: the sending side of a bounded queue.
pub struct Webhook {
    tx: tokio::sync::mpsc::Sender<Alert>,
}

/// Attempts per alert, and the wait before each retry.
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_millis(800),
    Duration::from_secs(2),
];

/// How long one delivery attempt may take.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(2);

impl Webhook {
    /// Starts the delivery task for `url` with a queue of `capacity` alerts, each attempt
    /// bounded by `timeout`. `on_result` is called per alert with whether it was delivered
    /// (for metrics). The task holds at most one alert outside the queue, the one it delivers.
    pub fn start(
        url: String,
        capacity: usize,
        timeout: Duration,
        on_result: impl Fn(bool) + Send + Sync + 'static,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Alert>(capacity.max(1));
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                let url = url.clone();
                let mut ok = false;
                for (attempt, wait) in BACKOFF.iter().enumerate() {
                    let (u, a) = (url.clone(), alert.clone());
                    let sent = tokio::task::spawn_blocking(move || post(&u, &a, timeout)).await;
                    if matches!(sent, Ok(Ok(()))) {
                        ok = true;
                        break;
                    }
                    if attempt + 1 < BACKOFF.len() {
                        tokio::time::sleep(*wait).await;
                    }
                }
                if !ok {
                    log::warn!(
                        "alert webhook {url}: {} not delivered after {} attempts",
                        alert.rule,
                        BACKOFF.len()
                    );
                }
                on_result(ok);
            }
        });
        Self { tx }
    }

    /// Queues an alert without waiting; `false` when the queue is full (the alert is dropped).
    pub fn offer(&self, alert: Alert) -> bool {
        self.tx.try_send(alert).is_ok()
    }

    /// Alerts waiting for delivery.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

fn post(url: &str, alert: &Alert, timeout: Duration) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build()
        .into();
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(&serde_json::to_vec(alert)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receiver that accepts one connection and answers nothing until released: the
    /// webhook's task is then provably busy with one alert, and the queue's bound is exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_the_newest_alert_and_never_blocks() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (accepted, on_accept) = std::sync::mpsc::channel::<()>();
        let receiver = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            accepted.send(()).unwrap();
            released.recv().unwrap();
            use std::io::{Read as _, Write as _};
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        });
        let results = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = results.clone();
        let hook = Webhook::start(url, 2, Duration::from_secs(60), move |ok| {
            seen.lock().unwrap().push(ok)
        });
        let alert = |i: u32| Alert::now(AlertRule::TokenTheft, None, format!("alert {i}"));
        assert!(hook.offer(alert(0)));
        tokio::task::spawn_blocking(move || on_accept.recv().unwrap())
            .await
            .unwrap();
        // The task holds alert 0 (its receiver is silent); the queue takes two more.
        assert!(hook.offer(alert(1)));
        assert!(hook.offer(alert(2)));
        assert_eq!(hook.queued(), 2);
        assert!(!hook.offer(alert(3)), "a full queue drops the newest alert");
        release.send(()).unwrap();
        receiver.join().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while results.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "alert 0 never finished"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(results.lock().unwrap()[0], "the held alert was delivered");
    }

    fn hit(fp: &str, src: &str) -> LifecycleEvent {
        let mut e = LifecycleEvent::now(EventKind::KernelHit, Some(fp.into()), "drop");
        e.source = Some(src.into());
        e.socket = Some("connection".into());
        e
    }

    #[test]
    fn hits_without_a_connection_raise_no_alert() {
        let rules = AlertRules {
            hits_per_minute: 2,
            ..AlertRules::default()
        };
        let mut a = AlertEngine::new(rules);
        for socket in ["none", "listener", "time_wait"] {
            for ip in 1..=9 {
                let mut e = hit("s", &format!("198.51.100.{ip}:1"));
                e.socket = Some(socket.into());
                assert!(a.observe(&e, 100).is_empty(), "{socket}");
            }
        }
        // The same from real clients (connections and handshakes) fires both rules.
        let fired: Vec<AlertRule> = (1..=4)
            .flat_map(|ip| {
                let mut e = hit("s", &format!("198.51.100.{ip}:1"));
                if ip % 2 == 0 {
                    e.socket = Some("handshake".into());
                }
                a.observe(&e, 100)
            })
            .map(|al| al.rule)
            .collect();
        assert_eq!(
            fired,
            vec![AlertRule::RevokedTokenFlood, AlertRule::TokenTheft]
        );
    }

    #[test]
    fn theft_fires_once_past_the_source_threshold_counting_addresses_not_ports() {
        let mut a = AlertEngine::new(AlertRules::default());
        for port in 1..10 {
            assert!(
                a.observe(&hit("t", &format!("192.0.2.2:{port}")), 100)
                    .is_empty()
            );
        }
        for ip in 3..=4 {
            assert!(
                a.observe(&hit("t", &format!("192.0.2.{ip}:1")), 100)
                    .is_empty()
            );
        }
        let fired = a.observe(&hit("t", "[2001:db8::5]:1"), 100);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule, AlertRule::TokenTheft);
        assert!(
            a.observe(&hit("t", "192.0.2.9:1"), 100).is_empty(),
            "fires once"
        );
    }

    #[test]
    fn a_flood_fires_above_the_rate_within_a_minute_only() {
        let rules = AlertRules {
            hits_per_minute: 5,
            ..AlertRules::default()
        };
        let mut a = AlertEngine::new(rules.clone());
        for i in 0..5 {
            assert!(a.observe(&hit("f", "192.0.2.2:1"), 100 + i * 20).is_empty());
        }
        let mut a = AlertEngine::new(rules);
        let fired: Vec<Alert> = (0..6)
            .flat_map(|_| a.observe(&hit("f", "192.0.2.2:1"), 100))
            .collect();
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].rule, AlertRule::RevokedTokenFlood);
    }

    #[test]
    fn a_key_rollout_fires_on_ratio_and_refresh_reuse_always() {
        let mut a = AlertEngine::new(AlertRules::default());
        let mut fired = Vec::new();
        for i in 0..30 {
            let e = if i % 3 == 0 {
                LifecycleEvent::now(EventKind::Validated, None, "ok")
            } else {
                LifecycleEvent::now(EventKind::Rejected, None, "unknown_key")
            };
            fired.extend(a.observe(&e, 100));
        }
        assert_eq!(fired.len(), 1, "{fired:?}");
        assert_eq!(fired[0].rule, AlertRule::KeyRollout);
        let mut fired = Vec::new();
        for _ in 0..30 {
            let e = LifecycleEvent::now(EventKind::Rejected, None, "expired");
            fired.extend(a.observe(&e, 200));
        }
        assert!(fired.is_empty(), "expired tokens are not a key problem");
        let reuse = LifecycleEvent::now(EventKind::ReuseDetected, None, "family x");
        assert_eq!(a.observe(&reuse, 300)[0].rule, AlertRule::RefreshReuse);
    }
}
