//! The token lifecycle as one event stream (issued, rejected, renewed, reuse detected, revoked,
//! unrevoked, purged, kernel hit, alert) and per-token timelines built from it. Events name
//! tokens by fingerprint only. Timelines are bounded: at most [`MAX_TOKENS`] tokens (the
//! oldest first-seen go first), each with its last [`MAX_EVENTS`] events and
//! [`MAX_SOURCES`] kernel-hit sources.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::revocation::hash_key::parse_fingerprint;

/// Tokens with a timeline.
pub const MAX_TOKENS: usize = 100_000;
/// Events kept per token.
pub const MAX_EVENTS: usize = 32;
/// Kernel-hit source addresses kept per token.
pub const MAX_SOURCES: usize = 8;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A token was issued.
    Issued,
    /// A token was checked and passed (timelines only; not streamed, it would flood).
    Validated,
    /// A token was checked and refused.
    Rejected,
    /// A refresh-token rotation issued this token.
    Renewed,
    /// A retired refresh token was presented; its family was revoked.
    ReuseDetected,
    /// Revoked (directly, by rule, learned, family).
    Revoked,
    /// A revocation was lifted.
    Unrevoked,
    /// An expired revocation was purged.
    Purged,
    /// The kernel stopped (or observed) a request carrying the token.
    KernelHit,
    /// An anomaly rule fired.
    Alert,
}

/// One event.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LifecycleEvent {
    /// RFC 3339 time.
    pub time: String,
    /// What happened.
    pub kind: EventKind,
    /// The token's fingerprint, when the event concerns one token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// Its `jti`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Outcome, reason or action.
    #[serde(default)]
    pub detail: String,
    /// Client address of a kernel hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// What socket the stack had for a kernel hit ([`crate::monitoring::socket_name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl LifecycleEvent {
    /// An event at the current time.
    pub fn now(kind: EventKind, fingerprint: Option<String>, detail: impl Into<String>) -> Self {
        Self {
            time: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            kind,
            fingerprint,
            jti: None,
            detail: detail.into(),
            source: None,
            socket: None,
        }
    }

    /// Whether a client stood behind this kernel hit: a connection or a handshake in progress
    /// (or the socket is not known). Hits without one, possibly from spoofed sources, are
    /// counted and streamed but feed no alert and no timeline source.
    pub fn from_connection(&self) -> bool {
        self.socket
            .as_deref()
            .is_none_or(crate::monitoring::socket_has_connection)
    }

    /// With a `jti`.
    pub fn with_jti(mut self, jti: impl Into<String>) -> Self {
        self.jti = Some(jti.into());
        self
    }
}

/// One token's life.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Timeline {
    /// Fingerprint.
    pub fingerprint: String,
    /// `jti`, when known.
    pub jti: Option<String>,
    /// When it was issued here, if it was.
    pub issued: Option<String>,
    /// When it was first seen (issued or first checked).
    pub first_seen: String,
    /// Checks by outcome (`ok`, `expired`, `revoked`…).
    pub validations: BTreeMap<String, u64>,
    /// Renewals that produced it.
    pub renewals: u64,
    /// When and why it was revoked (the latest).
    pub revoked: Option<(String, String)>,
    /// Kernel hits.
    pub kernel_hits: u64,
    /// The last kernel-hit source addresses.
    pub last_sources: Vec<String>,
    /// The last events.
    pub events: Vec<LifecycleEvent>,
}

/// Timelines by token hash (the fingerprint's value: a passing check needs no formatting).
/// Tokens first seen refused (anyone can send garbage) live in a small pool of their own, so
/// a flood of them never pushes out the timelines of tokens issued, validated or revoked.
#[derive(Default)]
pub struct Timelines {
    by_hash: HashMap<u64, Timeline>,
    order: VecDeque<u64>,
    refused_order: VecDeque<u64>,
    jti_to_hash: HashMap<String, u64>,
}

/// Timelines of tokens first seen refused, at most.
pub const MAX_REFUSED_TOKENS: usize = 1024;

impl Timelines {
    /// Folds an event (and, for a validation, its outcome) into the token's timeline.
    pub fn apply(&mut self, ev: &LifecycleEvent) {
        let Some(fp) = &ev.fingerprint else { return };
        let Ok(hash) = parse_fingerprint(fp) else {
            return;
        };
        if !self.by_hash.contains_key(&hash) {
            let (order, max) = if ev.kind == EventKind::Rejected {
                (&mut self.refused_order, MAX_REFUSED_TOKENS)
            } else {
                (&mut self.order, MAX_TOKENS)
            };
            if order.len() >= max
                && let Some(old) = order.pop_front()
                && let Some(t) = self.by_hash.remove(&old)
                && let Some(j) = t.jti
            {
                self.jti_to_hash.remove(&j);
            }
            order.push_back(hash);
            self.by_hash.insert(
                hash,
                Timeline {
                    fingerprint: fp.clone(),
                    first_seen: ev.time.clone(),
                    ..Timeline::default()
                },
            );
        }
        let t = self.by_hash.get_mut(&hash).expect("inserted above");
        if let Some(j) = &ev.jti
            && t.jti.is_none()
        {
            t.jti = Some(j.clone());
            self.jti_to_hash.insert(j.clone(), hash);
        }
        match ev.kind {
            EventKind::Issued => t.issued = Some(ev.time.clone()),
            EventKind::Renewed => {
                t.issued = Some(ev.time.clone());
                t.renewals += 1;
            }
            EventKind::Validated => *t.validations.entry("ok".into()).or_default() += 1,
            EventKind::Rejected => *t.validations.entry(ev.detail.clone()).or_default() += 1,
            EventKind::Revoked => t.revoked = Some((ev.time.clone(), ev.detail.clone())),
            EventKind::Unrevoked => t.revoked = None,
            EventKind::KernelHit => {
                t.kernel_hits += 1;
                if ev.from_connection()
                    && let Some(s) = &ev.source
                {
                    t.last_sources.retain(|x| x != s);
                    t.last_sources.push(s.clone());
                    if t.last_sources.len() > MAX_SOURCES {
                        t.last_sources.remove(0);
                    }
                }
            }
            EventKind::ReuseDetected | EventKind::Purged | EventKind::Alert => {}
        }
        // Passing checks are counted, not listed: they would push everything else out.
        if ev.kind != EventKind::Validated {
            t.events.push(ev.clone());
            if t.events.len() > MAX_EVENTS {
                t.events.remove(0);
            }
        }
    }

    /// Counts a passing check of a token that already has a timeline, without building an
    /// event (the common case, kept cheap); false when the token has none yet.
    pub fn count_pass(&mut self, hash: u64, jti: Option<&str>) -> bool {
        let Some(t) = self.by_hash.get_mut(&hash) else {
            return false;
        };
        if let Some(j) = jti
            && t.jti.is_none()
        {
            t.jti = Some(j.to_string());
            self.jti_to_hash.insert(j.to_string(), hash);
        }
        match t.validations.get_mut("ok") {
            Some(n) => *n += 1,
            None => {
                t.validations.insert("ok".into(), 1);
            }
        }
        true
    }

    /// The timeline of a fingerprint.
    pub fn get(&self, fp: &str) -> Option<&Timeline> {
        self.by_hash.get(&parse_fingerprint(fp).ok()?)
    }

    /// The `n` tokens with the most kernel hits: (fingerprint, hits, last source).
    pub fn top_by_kernel_hits(&self, n: usize) -> Vec<(String, u64, Option<String>)> {
        let mut v: Vec<_> = self
            .by_hash
            .values()
            .filter(|t| t.kernel_hits > 0)
            .map(|t| {
                (
                    t.fingerprint.clone(),
                    t.kernel_hits,
                    t.last_sources.last().cloned(),
                )
            })
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// The fingerprint of a `jti` seen in an event.
    pub fn fingerprint_of(&self, jti: &str) -> Option<&str> {
        let hash = self.jti_to_hash.get(jti)?;
        Some(&self.by_hash.get(hash)?.fingerprint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revocation::hash_key::fingerprint;

    fn ev(kind: EventKind, fp: &str, detail: &str) -> LifecycleEvent {
        LifecycleEvent::now(kind, Some(fp.into()), detail)
    }

    #[test]
    fn a_timeline_counts_outcomes_and_keeps_revocation_and_sources() {
        let mut t = Timelines::default();
        t.apply(&ev(EventKind::Issued, "aa", "client m").with_jti("j1"));
        for _ in 0..3 {
            t.apply(&ev(EventKind::Validated, "aa", "ok"));
        }
        t.apply(&ev(EventKind::Rejected, "aa", "expired"));
        t.apply(&ev(EventKind::Revoked, "aa", "stolen"));
        for i in 0..10 {
            let mut hit = ev(EventKind::KernelHit, "aa", "drop");
            hit.source = Some(format!("192.0.2.{i}:1"));
            t.apply(&hit);
        }
        let tl = t.get(t.fingerprint_of("j1").unwrap()).unwrap();
        assert!(tl.issued.is_some());
        assert_eq!(tl.validations["ok"], 3);
        assert_eq!(tl.validations["expired"], 1);
        assert_eq!(tl.revoked.as_ref().unwrap().1, "stolen");
        assert_eq!(tl.kernel_hits, 10);
        assert_eq!(tl.last_sources.len(), MAX_SOURCES);
        assert_eq!(tl.last_sources.last().unwrap(), "192.0.2.9:1");
        assert!(tl.events.iter().all(|e| e.kind != EventKind::Validated));
    }

    #[test]
    fn hits_without_a_connection_are_counted_but_name_no_source() {
        let mut t = Timelines::default();
        for (i, socket) in ["none", "listener", "connection", "handshake"]
            .iter()
            .enumerate()
        {
            let mut hit = ev(EventKind::KernelHit, "bb", "drop");
            hit.source = Some(format!("198.51.100.{i}:1"));
            hit.socket = Some((*socket).into());
            t.apply(&hit);
        }
        let tl = t.get("bb").unwrap();
        assert_eq!(tl.kernel_hits, 4);
        assert_eq!(tl.last_sources, vec!["198.51.100.2:1", "198.51.100.3:1"]);
    }

    #[test]
    fn a_counted_pass_equals_an_applied_validation() {
        let (mut a, mut b) = (Timelines::default(), Timelines::default());
        assert!(!a.count_pass(0xcc, None), "no timeline yet");
        // One event applied to both: its time is part of the timeline.
        let issued = ev(EventKind::Issued, "cc", "client m");
        for t in [&mut a, &mut b] {
            t.apply(&issued);
        }
        for _ in 0..3 {
            a.apply(&ev(EventKind::Validated, "cc", "ok").with_jti("j9"));
            assert!(b.count_pass(0xcc, Some("j9")));
        }
        assert_eq!(a.get("cc"), b.get("cc"));
        assert_eq!(b.fingerprint_of("j9"), Some("cc"));
    }

    #[test]
    fn a_flood_of_refused_tokens_never_pushes_out_other_timelines() {
        let mut t = Timelines::default();
        t.apply(&ev(EventKind::Issued, "aa", "client m"));
        for i in 0..(MAX_REFUSED_TOKENS as u64 * 3) {
            t.apply(&ev(
                EventKind::Rejected,
                &fingerprint(0x1000 + i),
                "bad_signature",
            ));
        }
        assert!(
            t.get("aa").is_some(),
            "the issued token's timeline was evicted"
        );
        assert_eq!(t.by_hash.len(), 1 + MAX_REFUSED_TOKENS);
        let newest = fingerprint(0x1000 + MAX_REFUSED_TOKENS as u64 * 3 - 1);
        assert!(
            t.get(&newest).is_some(),
            "the newest refused token has a timeline"
        );
        assert!(t.get(&fingerprint(0x1000)).is_none(), "the oldest went");
    }

    #[test]
    fn events_per_token_are_bounded() {
        let mut t = Timelines::default();
        for _ in 0..(MAX_EVENTS * 3) {
            t.apply(&ev(EventKind::Rejected, "bb", "bad_signature"));
        }
        assert_eq!(t.get("bb").unwrap().events.len(), MAX_EVENTS);
        assert_eq!(
            t.get("bb").unwrap().validations["bad_signature"],
            MAX_EVENTS as u64 * 3
        );
    }
}
