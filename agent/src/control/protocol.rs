//! The control protocol: one JSON request per line, answered by one JSON line (or, for `events`
//! and `watch`, a stream of lines after the first). Every command is a struct with its own
//! typed reply ([`Command::Reply`]); the daemon and the CLI share these types, so a renamed
//! field is a compile error, not a silent `null`. On the wire a request is its struct's fields
//! plus `"cmd": "<snake_case name>"`, and a reply is the [`Envelope`] around the reply struct.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

mod replies;

pub use crate::monitoring::{EventLine, TopToken};
pub use crate::tokens::authority::{KeyAdded, KeyInfo};
use crate::{
    monitoring::lifecycle::{EventKind, Timeline},
    tokens::keys::ExternalKey,
    types::{RuleKind, TokenHash},
};
pub use replies::*;

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
