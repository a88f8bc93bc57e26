//! Control-socket protocol: one JSON request per line, answered by one JSON line (or, for
//! `events`, a stream of lines). The same types back the CLI.

use serde::{Deserialize, Serialize};

/// How a client names a token: the plaintext (sent only over the 0600 socket, never stored or
/// logged) or its keyed hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenRef {
    /// The token itself.
    Token(String),
    /// The keyed hash, as 16 hex digits.
    Hash(String),
}

/// A request on the control socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Revoke a token until `until` (unix seconds; default: the JWT's `exp` plus a margin, else never).
    Revoke {
        /// Which token.
        token: TokenRef,
        /// Unix seconds after which the revocation lapses.
        until: Option<u64>,
        /// Why.
        reason: Option<String>,
        /// The token is an API key.
        #[serde(default)]
        api_key: bool,
    },
    /// Lift a revocation.
    Unrevoke {
        /// Which token.
        token: TokenRef,
        /// Why.
        reason: Option<String>,
    },
    /// Daemon, kernel and store status.
    Status,
    /// Stream hit events.
    Events,
    /// Stream lifecycle events of these kinds (all when empty).
    Watch {
        /// Kinds to follow.
        #[serde(default)]
        kinds: Vec<crate::lifecycle::EventKind>,
    },
    /// Turn monitoring on or off at run time (kernel counters and hit events too).
    Monitoring {
        /// On.
        on: bool,
    },
    /// What `tokenwall top` shows: metrics text, top revoked tokens, recent alerts.
    Top,
    /// One token's timeline.
    TokenShow {
        /// By token (fingerprinted by the daemon) or fingerprint.
        token: Option<TokenRef>,
        /// By `jti`.
        jti: Option<String>,
    },
    /// Live and revoked tokens the daemon knows.
    TokensList {
        /// Only tokens expiring within this many seconds.
        expiring_within: Option<u64>,
        /// Only revoked ones.
        #[serde(default)]
        revoked: bool,
        /// Only this subject's.
        sub: Option<String>,
    },
    /// Remove the attachments of an interface.
    Detach {
        /// Interface name.
        iface: String,
    },
    /// The fingerprint of a token under this host's key.
    Fingerprint {
        /// Which token.
        token: TokenRef,
    },
    /// Revoke by rule: a `jti`, a subject, a client or a signing key (see `rules`).
    RevokeBy {
        /// What `name` is.
        kind: crate::rules::RuleKind,
        /// The jti, sub, client id or kid.
        name: String,
        /// Unix seconds after which the rule lapses (default: never, or a jti's token expiry).
        until: Option<u64>,
        /// Why.
        reason: Option<String>,
    },
    /// RFC 7662-style introspection of a token.
    Introspect {
        /// Which token (plaintext needed).
        token: TokenRef,
    },
    /// Register an OAuth client; the reply carries its secret, once.
    ClientsAdd {
        /// Client id.
        id: String,
        /// Scopes it may request.
        scopes: Vec<String>,
    },
    /// List clients.
    ClientsList,
    /// Trust an external issuer's keys (PEM, JWK/JWKS document, or JWKS URL).
    KeysAdd {
        /// The source and the rules bound to it.
        key: crate::tokens::keys::ExternalKey,
    },
    /// List trusted keys.
    KeysList,
    /// Make a new active signing key (the previous one stays trusted through its grace).
    KeysRotate,
    /// Create an API key; the reply carries it, once.
    ApiKeysAdd {
        /// Name.
        name: String,
        /// Scopes.
        scopes: Vec<String>,
    },
    /// List API keys.
    ApiKeysList,
    /// Remove and revoke an API key.
    ApiKeysRemove {
        /// Name.
        name: String,
    },
    /// Stop trusting an external key source (by kid or JWKS URL).
    KeysRemove {
        /// Key id or URL.
        id: String,
    },
    /// Remove a client.
    ClientsRemove {
        /// Client id.
        id: String,
    },
}

impl Request {
    /// The command name (`revoke`, `clients_add`, …), for the admin log.
    pub fn command(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("cmd").and_then(|c| c.as_str()).map(str::to_string))
            .unwrap_or_default()
    }

    /// What an audit record of this request names (rule, client, key and API-key names;
    /// tokens appear only as the fingerprints the caller adds) and its reason.
    pub fn audit_subjects(&self) -> (Vec<String>, String) {
        let r = |x: &Option<String>| x.clone().unwrap_or_default();
        match self {
            Request::Revoke {
                token: TokenRef::Hash(h),
                reason,
                ..
            }
            | Request::Unrevoke {
                token: TokenRef::Hash(h),
                reason,
            } => (vec![h.clone()], r(reason)),
            Request::Revoke { reason, .. } | Request::Unrevoke { reason, .. } => {
                (vec![], r(reason))
            }
            Request::RevokeBy {
                kind, name, reason, ..
            } => (vec![format!("{}:{name}", kind.name())], r(reason)),
            Request::Detach { iface } => (vec![format!("iface:{iface}")], String::new()),
            Request::ClientsAdd { id, .. } | Request::ClientsRemove { id } => {
                (vec![format!("client:{id}")], String::new())
            }
            Request::KeysAdd { key } => (vec![format!("issuer:{}", key.issuer)], String::new()),
            Request::KeysRemove { id } => (vec![format!("key:{id}")], String::new()),
            Request::ApiKeysAdd { name, .. } | Request::ApiKeysRemove { name } => {
                (vec![format!("apikey:{name}")], String::new())
            }
            _ => (vec![], String::new()),
        }
    }

    /// Whether the request only reads state.
    pub fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status
                | Request::Events
                | Request::Watch { .. }
                | Request::TokenShow { .. }
                | Request::TokensList { .. }
                | Request::Top
                | Request::Fingerprint { .. }
                | Request::Introspect { .. }
                | Request::ClientsList
                | Request::KeysList
                | Request::ApiKeysList
        )
    }
}

/// Result of a revoke or unrevoke.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevokeReply {
    /// Fingerprint (keyed hash) of the token.
    pub fingerprint: String,
    /// Whether the state changed (newly revoked / actually unrevoked).
    pub changed: bool,
    /// Unix seconds when the revocation lapses; 0 = never.
    pub expires_at: u64,
    /// Whether the kernel map now holds the entry (revoke) or no longer does (unrevoke).
    pub in_kernel: bool,
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
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReply {
    /// Daemon version.
    pub version: String,
    /// Attached interfaces and hooks.
    pub attachments: Vec<AttachmentInfo>,
    /// `drop`, `reset` or `observe`.
    pub action: String,
    /// Watched ports.
    pub ports: Vec<u16>,
    /// Kernel counters summed over CPUs.
    pub counters: serde_json::Map<String, serde_json::Value>,
    /// Live revocations in the store.
    pub revoked_entries: usize,
    /// Entries in the kernel map.
    pub kernel_entries: usize,
    /// Size of the revocation log in bytes.
    pub store_bytes: u64,
    /// State directory.
    pub state_dir: String,
    /// bpffs pin directory.
    pub bpffs: String,
}

/// A hit event as streamed to clients.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EventLine {
    /// RFC 3339 time of the hit.
    pub time: String,
    /// Token fingerprint.
    pub fingerprint: String,
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

/// Envelope of every reply line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// One-line error when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Reply {
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
