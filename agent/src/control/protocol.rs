//! The control protocol: one JSON request per line, answered by one JSON line (or, for `events`
//! and `watch`, a stream of lines after the first). Every command is a struct with its own
//! typed reply ([`Command::Reply`]); the daemon and the CLI share these types, so a renamed
//! field is a compile error, not a silent `null`. On the wire a request is its struct's fields
//! plus `"cmd": "<snake_case name>"`, and a reply is the [`Envelope`] around the reply struct.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

pub use crate::monitoring::{EventLine, TopToken};
pub use crate::tokens::authority::{KeyAdded, KeyInfo};
use crate::{
    monitoring::alerts::Alert,
    monitoring::lifecycle::{EventKind, Timeline},
    tokens::keys::ExternalKey,
    types::{RuleKind, TokenHash},
};

/// A command and the reply it gets.
pub trait Command: Serialize + Into<Request> {
    /// What the daemon answers.
    type Reply: Serialize + DeserializeOwned;
}

macro_rules! commands {
    ($($(#[$doc:meta])* $variant:ident($ty:ident) -> $reply:ty;)*) => {
        /// A request on the control socket.
        #[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
        #[serde(tag = "cmd", rename_all = "snake_case")]
        pub enum Request {
            $($(#[$doc])* $variant($ty),)*
        }
        $(
            impl From<$ty> for Request {
                fn from(c: $ty) -> Self {
                    Request::$variant(c)
                }
            }
            impl Command for $ty {
                type Reply = $reply;
            }
        )*
    };
}

commands! {
    /// Revoke a token.
    Revoke(Revoke) -> RevokeReply;
    /// Lift a revocation.
    Unrevoke(Unrevoke) -> RevokeReply;
    /// Revoke by rule: a `jti`, a subject, a client or a signing key.
    RevokeBy(RevokeBy) -> RuleReply;
    /// Daemon, kernel and store status.
    Status(Status) -> StatusReply;
    /// Stream kernel hit events ([`EventLine`] per line).
    Events(Events) -> Streaming;
    /// Stream lifecycle events ([`crate::monitoring::lifecycle::LifecycleEvent`] per line).
    Watch(Watch) -> Streaming;
    /// Turn monitoring on or off at run time (kernel counters and hit events too).
    Monitoring(Monitoring) -> MonitoringReply;
    /// What `tokenwall top` shows.
    Top(Top) -> TopSnapshot;
    /// One token's timeline.
    TokenShow(TokenShow) -> Timeline;
    /// Live tokens the daemon has indexed.
    TokensList(TokensList) -> Vec<TokenRow>;
    /// Remove the attachments of an interface.
    Detach(Detach) -> DetachReply;
    /// The fingerprint of a token under this host's key.
    Fingerprint(Fingerprint) -> FingerprintReply;
    /// RFC 7662-style introspection of a token.
    Introspect(Introspect) -> Introspection;
    /// Register an OAuth client; the reply carries its secret, once.
    ClientsAdd(ClientsAdd) -> ClientSecret;
    /// List clients.
    ClientsList(ClientsList) -> Vec<ClientInfo>;
    /// Remove a client.
    ClientsRemove(ClientsRemove) -> Removed;
    /// Trust an external issuer's keys (PEM, JWK/JWKS document, or JWKS URL).
    KeysAdd(KeysAdd) -> KeyAdded;
    /// List trusted keys.
    KeysList(KeysList) -> Vec<KeyInfo>;
    /// Make a new active signing key (the previous one stays trusted through its grace).
    KeysRotate(KeysRotate) -> KeyRotated;
    /// Stop trusting an external key source (by kid or JWKS URL).
    KeysRemove(KeysRemove) -> Removed;
    /// Create an API key; the reply carries it, once.
    ApiKeysAdd(ApiKeysAdd) -> ApiKeyCreated;
    /// List API keys.
    ApiKeysList(ApiKeysList) -> Vec<ApiKeyInfo>;
    /// Remove and revoke an API key.
    ApiKeysRemove(ApiKeysRemove) -> RevokeReply;
}

/// How a client names a token: the plaintext (sent only over the 0600 socket, never stored or
/// logged) or its fingerprint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenRef {
    /// The token itself.
    Token(String),
    /// Its fingerprint.
    Hash(TokenHash),
}

/// `revoke`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revoke {
    /// Which token.
    pub token: TokenRef,
    /// Unix seconds after which the revocation lapses (default: a JWT's `exp` plus a margin,
    /// else never).
    #[serde(default)]
    pub until: Option<u64>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
    /// The token is an API key.
    #[serde(default)]
    pub api_key: bool,
}

/// `unrevoke`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Unrevoke {
    /// Which token.
    pub token: TokenRef,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `revoke_by`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeBy {
    /// What `name` is.
    pub kind: RuleKind,
    /// The jti, sub, client id or kid.
    pub name: String,
    /// Only tokens of this issuer (`iss`); none: of every issuer.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Unix seconds after which the rule lapses (default: never, or a jti's token expiry).
    #[serde(default)]
    pub until: Option<u64>,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// `status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {}

/// `events`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Events {}

/// `watch`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Watch {
    /// Kinds to follow (all when empty).
    #[serde(default)]
    pub kinds: Vec<EventKind>,
}

/// `monitoring`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Monitoring {
    /// On or off.
    pub on: bool,
}

/// `top`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Top {}

/// `token_show`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenShow {
    /// By token (fingerprinted by the daemon) or fingerprint.
    #[serde(default)]
    pub token: Option<TokenRef>,
    /// By `jti`.
    #[serde(default)]
    pub jti: Option<String>,
}

/// `tokens_list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokensList {
    /// Only tokens expiring within this many seconds.
    #[serde(default)]
    pub expiring_within: Option<u64>,
    /// Only revoked ones.
    #[serde(default)]
    pub revoked: bool,
    /// Only this subject's.
    #[serde(default)]
    pub sub: Option<String>,
}

/// `detach`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Detach {
    /// Interface name.
    pub iface: String,
}

/// `fingerprint`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Fingerprint {
    /// Which token.
    pub token: TokenRef,
}

/// `introspect`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Introspect {
    /// Which token (the plaintext is needed).
    pub token: TokenRef,
}

/// `clients_add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientsAdd {
    /// Client id.
    pub id: String,
    /// Scopes it may request.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `clients_list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientsList {}

/// `clients_remove`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientsRemove {
    /// Client id.
    pub id: String,
}

/// `keys_add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysAdd {
    /// The source and the rules bound to it.
    pub key: ExternalKey,
}

/// `keys_list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysList {}

/// `keys_rotate`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysRotate {}

/// `keys_remove`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysRemove {
    /// Key id or JWKS URL.
    pub id: String,
}

/// `api_keys_add`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeysAdd {
    /// Name.
    pub name: String,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `api_keys_list`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeysList {}

/// `api_keys_remove`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeysRemove {
    /// Name.
    pub name: String,
}

impl Request {
    /// The command name as on the wire (`revoke`, `clients_add`, …), for logs and audit.
    pub fn command(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("cmd").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_default()
    }

    /// What an audit record of this request names (rule, client, key and API-key names;
    /// tokens appear only as the fingerprints the caller adds) and its reason.
    pub fn audit_subjects(&self) -> (Vec<String>, String) {
        let r = |x: &Option<String>| x.clone().unwrap_or_default();
        match self {
            Request::Revoke(Revoke {
                token: TokenRef::Hash(h),
                reason,
                ..
            })
            | Request::Unrevoke(Unrevoke {
                token: TokenRef::Hash(h),
                reason,
            }) => (vec![h.to_string()], r(reason)),
            Request::Revoke(Revoke { reason, .. }) | Request::Unrevoke(Unrevoke { reason, .. }) => {
                (vec![], r(reason))
            }
            Request::RevokeBy(RevokeBy {
                kind,
                name,
                issuer,
                reason,
                ..
            }) => {
                let mut subjects = vec![format!("{}:{name}", kind.name())];
                subjects.extend(issuer.as_ref().map(|i| format!("issuer:{i}")));
                (subjects, r(reason))
            }
            Request::Detach(Detach { iface }) => (vec![format!("iface:{iface}")], String::new()),
            Request::ClientsAdd(ClientsAdd { id, .. })
            | Request::ClientsRemove(ClientsRemove { id }) => {
                (vec![format!("client:{id}")], String::new())
            }
            Request::KeysAdd(KeysAdd { key }) => {
                (vec![format!("issuer:{}", key.issuer)], String::new())
            }
            Request::KeysRemove(KeysRemove { id }) => (vec![format!("key:{id}")], String::new()),
            Request::ApiKeysAdd(ApiKeysAdd { name, .. })
            | Request::ApiKeysRemove(ApiKeysRemove { name }) => {
                (vec![format!("apikey:{name}")], String::new())
            }
            _ => (vec![], String::new()),
        }
    }

    /// Whether the request only reads state.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status(_)
                | Request::Events(_)
                | Request::Watch(_)
                | Request::TokenShow(_)
                | Request::TokensList(_)
                | Request::Top(_)
                | Request::Fingerprint(_)
                | Request::Introspect(_)
                | Request::ClientsList(_)
                | Request::KeysList(_)
                | Request::ApiKeysList(_)
        )
    }

    /// Whether the answer is a stream of lines rather than one reply.
    pub fn is_stream(&self) -> bool {
        matches!(self, Request::Events(_) | Request::Watch(_))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_is_the_fields_plus_cmd() {
        let r: Request = RevokeBy {
            kind: RuleKind::Sub,
            name: "alice".into(),
            issuer: None,
            until: None,
            reason: None,
        }
        .into();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["cmd"], "revoke_by");
        assert_eq!(v["name"], "alice");
        let back: Request =
            serde_json::from_str(r#"{"cmd":"revoke_by","kind":"sub","name":"alice"}"#).unwrap();
        assert_eq!(back, r);
        let status: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(status, Request::Status(Status {}));
    }

    #[test]
    fn every_command_name_is_its_wire_tag() {
        let all: Vec<Request> = vec![
            Status {}.into(),
            Events {}.into(),
            Watch::default().into(),
            Top {}.into(),
            TokenShow::default().into(),
            TokensList::default().into(),
            ClientsList {}.into(),
            KeysList {}.into(),
            KeysRotate {}.into(),
            ApiKeysList {}.into(),
            Monitoring { on: true }.into(),
            Detach { iface: "x".into() }.into(),
            ClientsRemove { id: "x".into() }.into(),
            KeysRemove { id: "x".into() }.into(),
            ApiKeysRemove { name: "x".into() }.into(),
            ApiKeysAdd {
                name: "x".into(),
                scopes: vec![],
            }
            .into(),
            ClientsAdd {
                id: "x".into(),
                scopes: vec![],
            }
            .into(),
            Fingerprint {
                token: TokenRef::Hash(TokenHash(1)),
            }
            .into(),
            Introspect {
                token: TokenRef::Hash(TokenHash(1)),
            }
            .into(),
            Revoke {
                token: TokenRef::Hash(TokenHash(1)),
                until: None,
                reason: None,
                api_key: false,
            }
            .into(),
            Unrevoke {
                token: TokenRef::Hash(TokenHash(1)),
                reason: None,
            }
            .into(),
        ];
        for r in all {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["cmd"], r.command(), "{r:?}");
        }
    }
}
