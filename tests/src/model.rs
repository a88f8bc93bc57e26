//! What the reference model (`agent_common::scan`) says the kernel does with one segment,
//! given what is revoked: whether it hits, and how each counter moves. The differential tests
//! hold the real programs to this.

use std::collections::{BTreeMap, HashSet};

use agent_common::{
    config::{Config, NEEDLE_BEARER, NEEDLE_RAW},
    event::{MATCH_HEADER_SEGMENT, MATCH_TOKEN},
    hash::token_hash,
    scan::{
        StreamEnd,
        flow::{FlowState, Judgement},
    },
};

/// The counters the differential tests compare.
pub const COMPARED: [&str; 10] = [
    "http_requests",
    "bearer_tokens",
    "api_keys",
    "skipped",
    "revoked_hits",
    "revoked_key_hits",
    "unsynced",
    "unjudged",
    "body_segments",
    "syn_data",
];

/// What is revoked: token keys and JWS header segments, by keyed hash.
#[derive(Clone, Debug, Default)]
pub struct Revoked {
    /// `REVOKED` keys.
    pub tokens: HashSet<u64>,
    /// `REVOKED_HEADERS` keys.
    pub headers: HashSet<u64>,
}

/// The model's expectation for one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    /// The first hit: its hash and what matched.
    pub hit: Option<(u64, u16)>,
    /// How each compared counter moves.
    pub counts: BTreeMap<&'static str, u64>,
}

/// The expectation for a segment judged `j` (its payload after any skipped body is
/// `payload[skip..]`) under `cfg`, and whether the packet passes (`passes`: no hit, or the
/// action lets it through).
pub fn expect(cfg: &Config, revoked: &Revoked, payload: &[u8], j: &Judgement, syn: bool) -> Expect {
    let mut counts: BTreeMap<&'static str, u64> = COMPARED.iter().map(|c| (*c, 0)).collect();
    let mut bump = |c: &'static str| *counts.get_mut(c).expect("a compared counter") += 1;
    if syn {
        bump("syn_data");
    }
    let mut hit = None;
    match j {
        Judgement::Body => bump("body_segments"),
        Judgement::Unjudged => bump("unjudged"),
        Judgement::Scanned { skip, scan } => {
            let buf = &payload[*skip..];
            for _ in 0..scan.requests {
                bump("http_requests");
            }
            for t in &scan.tokens {
                match t.key_len {
                    Some(n) => {
                        bump(if t.kind == NEEDLE_RAW {
                            "api_keys"
                        } else {
                            "bearer_tokens"
                        });
                        let h = token_hash(&cfg.key, &buf[t.start..t.start + n]);
                        if revoked.tokens.contains(&h) {
                            hit = Some((h, MATCH_TOKEN));
                            break;
                        }
                    }
                    None => bump("skipped"),
                }
                if t.kind == NEEDLE_BEARER
                    && cfg.header_revocations != 0
                    && let Some(n) = t.header_len
                {
                    let h = token_hash(&cfg.key, &buf[t.start..t.start + n]);
                    if revoked.headers.contains(&h) {
                        bump("revoked_key_hits");
                        hit = Some((h, MATCH_HEADER_SEGMENT));
                        break;
                    }
                }
            }
            if hit.is_some() {
                bump("revoked_hits");
            }
            if scan.end == StreamEnd::Unsynced && passes(cfg, hit.is_some()) {
                bump("unsynced");
            }
        }
    }
    Expect { hit, counts }
}

/// Whether a segment with (or without) a hit passes to the stack under `cfg` (`reset` passes
/// only without a socket; the tests that use it say so themselves).
pub fn passes(cfg: &Config, hit: bool) -> bool {
    !hit || cfg.action == agent_common::config::Action::Observe as u32
}

/// The flow state after the segment, as the kernel keeps it: unchanged when it was dropped.
pub fn next_state(state: FlowState, seq: u32, j: &Judgement, passed: bool) -> FlowState {
    if passed {
        agent_common::scan::flow::after_pass(state, seq, j)
    } else {
        state
    }
}
