//! The reply of every control command (see [`super::Command::Reply`]).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{
    monitoring::{TopToken, alerts::Alert},
    types::{RuleKind, TokenHash},
};

/// The first line of a stream's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Streaming {
    /// Always true.
    pub streaming: bool,
}

/// Result of a revoke or unrevoke.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeReply {
    /// The token's fingerprint.
    pub fingerprint: TokenHash,
    /// Whether the state changed (newly revoked / actually unrevoked).
    pub changed: bool,
    /// Unix seconds when the revocation lapses; 0 = never.
    pub expires_at: u64,
    /// Whether the kernel map now holds the entry (revoke) or no longer does (unrevoke).
    /// `false` after a revoke means the map is full: forward-auth still refuses the token.
    pub in_kernel: bool,
    /// The `jti` of a revoked JWT, now revoked too (for its issuer), so re-signed copies of
    /// the same claims are refused as well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti_rule: Option<String>,
}

/// Result of a rule.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuleReply {
    /// What the rule names.
    pub kind: RuleKind,
    /// The jti, sub, client id or kid.
    pub name: String,
    /// The issuer it is scoped to, or `any`.
    pub issuer: String,
    /// The rule's fingerprint.
    pub fingerprint: TokenHash,
    /// Whether the rule is new.
    pub changed: bool,
    /// Live indexed tokens it covered, pushed into the kernel map.
    pub tokens_pushed: usize,
    /// Sessions (refresh families) it ended.
    pub sessions_revoked: usize,
    /// JWS header segments put into the kernel's header map (kid rules).
    pub headers_pushed: usize,
    /// This host's active signing key afterwards, when the rule retired one of its keys.
    pub active_kid: Option<String>,
}

/// One attachment in a status reply.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// Interface name.
    pub iface: String,
    /// `xdp`, `xdp-generic` or `tc`.
    pub hook: String,
}

/// Reply to `status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReply {
    /// Daemon version.
    pub version: String,
    /// Attached interfaces and hooks.
    pub attachments: Vec<AttachmentInfo>,
    /// `drop`, `reset` or `observe`.
    pub action: String,
    /// Watched ports.
    pub ports: Vec<u16>,
    /// Kernel counters summed over CPUs and interfaces, by name.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Live revocations in the store.
    pub revoked_entries: usize,
    /// Entries in the kernel's token map.
    pub kernel_entries: usize,
    /// Revocations the kernel maps could not take (full): enforced by forward-auth only.
    #[serde(default)]
    pub kernel_overflow: usize,
    /// Size of the revocation log in bytes.
    pub store_bytes: u64,
    /// Clients following `tokenwall watch` now.
    #[serde(default)]
    pub watchers: usize,
    /// Clients following `tokenwall events` now.
    #[serde(default)]
    pub event_followers: usize,
    /// State directory.
    pub state_dir: String,
    /// bpffs pin directory.
    pub bpffs: String,
}

/// Reply to `monitoring`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MonitoringReply {
    /// Whether monitoring is now on.
    pub monitoring: bool,
}

/// One interface's kernel counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct IfaceCounters {
    /// Interface name, or `other`.
    pub iface: String,
    /// Counters summed over CPUs, by name.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Reply to `top`: the counters `tokenwall top` turns into rates.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct TopSnapshot {
    /// Attached interfaces, as `name (hook)`.
    pub ifaces: Vec<String>,
    /// Kernel counters per interface.
    pub kernel: Vec<IfaceCounters>,
    /// Token checks by outcome (`ok`, `expired`, `revoked`, …).
    pub checks: std::collections::BTreeMap<String, u64>,
    /// Lifecycle totals: `issued`, `renewed`, `revocations`, `alerts`.
    pub lifecycle: std::collections::BTreeMap<String, u64>,
    /// Live revocations in the store.
    pub revoked_entries: u64,
    /// The revoked tokens with the most kernel hits.
    pub top_revoked: Vec<TopToken>,
    /// The last alerts, newest last.
    pub alerts: Vec<Alert>,
}

/// One row of `tokens_list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRow {
    /// The token's fingerprint.
    pub fingerprint: TokenHash,
    /// Its `jti`.
    pub jti: String,
    /// Issuer.
    pub iss: String,
    /// Subject.
    pub sub: String,
    /// Client.
    pub client_id: String,
    /// Signing key.
    pub kid: String,
    /// Unix seconds of expiry.
    pub exp: u64,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// When and why it was revoked, if it was.
    pub revoked: Option<RevokedInfo>,
}

/// When and why a token was revoked.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokedInfo {
    /// The reason recorded.
    pub reason: String,
    /// Unix seconds.
    pub at: u64,
}

/// Reply to `detach`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DetachReply {
    /// Interface name.
    pub iface: String,
    /// Attachments removed.
    pub removed: usize,
    /// Whether a running daemon did it (false: the CLI removed the pins itself).
    #[serde(default = "yes")]
    pub daemon: bool,
}

fn yes() -> bool {
    true
}

/// Reply to `fingerprint`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FingerprintReply {
    /// The token's fingerprint under this host's key.
    pub fingerprint: TokenHash,
}

/// Reply to `introspect` (RFC 7662 section 2.2): `active`, and for an active token its claims.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Introspection {
    /// Whether the token is active (valid, unexpired, not revoked).
    pub active: bool,
    /// `token_type` and the claims, for an active token.
    #[serde(flatten)]
    pub claims: Map<String, Value>,
}

/// Reply to `clients_add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientSecret {
    /// Client id.
    pub client_id: String,
    /// The secret, shown once.
    pub client_secret: String,
}

/// One client in `clients_list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientInfo {
    /// Client id.
    pub client_id: String,
    /// Scopes it may request.
    pub scopes: Vec<String>,
}

/// Reply to a removal.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Removed {
    /// What was removed.
    pub removed: String,
}

/// Reply to `keys_rotate`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyRotated {
    /// The new active key.
    pub active_kid: String,
    /// The previous one (trusted through its grace period).
    pub previous: Option<String>,
}

/// Reply to `api_keys_add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyCreated {
    /// Name.
    pub name: String,
    /// The key, shown once.
    pub api_key: String,
}

/// One API key in `api_keys_list`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyInfo {
    /// Name.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Its fingerprint (what a revocation of it is keyed on).
    pub fingerprint: TokenHash,
    /// Unix seconds created.
    pub created_at: u64,
}

/// Envelope of every reply line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Envelope {
    /// Whether the request succeeded.
    pub ok: bool,
    /// One-line error when it did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl Envelope {
    /// A successful reply carrying `data`.
    pub fn ok<T: Serialize>(data: &T) -> Self {
        match serde_json::to_value(data) {
            Ok(v) => Self {
                ok: true,
                error: None,
                data: Some(v),
            },
            Err(e) => Self::err(format!("encoding reply: {e}")),
        }
    }

    /// A failed reply.
    pub fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: None,
        }
    }
}
