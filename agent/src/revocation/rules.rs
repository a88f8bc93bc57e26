//! Revocation rules: by `jti`, subject, client or signing key, optionally for one issuer. A
//! rule is stored as a keyed hash of its kind, name and issuer, domain-separated from token
//! hashes, and matched against the claims of a verified token.

use agent_common::hash::{HashKey, token_hash};

use super::store::{Revocation, RevocationStore, Scope};
use crate::types::RuleKind;

/// Learned JWS header segments kept per signing key: an issuer signs every token of one key
/// under one header (a few when it changes `typ` or `alg` spelling), so more than this is
/// not learned (and counted).
pub const MAX_LEARNED_HEADERS_PER_KEY: usize = 16;

/// The store scope of a rule of this kind.
pub fn scope(kind: RuleKind) -> Scope {
    match kind {
        RuleKind::Jti => Scope::Jti,
        RuleKind::Sub => Scope::Subject,
        RuleKind::Client => Scope::Client,
        RuleKind::Kid => Scope::Kid,
    }
}

/// The stored hash of a rule: domain-separated from token hashes, from other kinds, and
/// between issuers. `issuer: None` covers every issuer (and keeps the form rules had before
/// they could be scoped, so stored rules keep working); `Some(iss)` covers tokens whose `iss`
/// claim is exactly `iss`.
pub fn rule_hash(key: &HashKey, kind: RuleKind, issuer: Option<&str>, name: &str) -> u64 {
    let text = match issuer {
        None => format!("tokenwall-rule\0{}\0{name}", kind.name()),
        Some(iss) => format!("tokenwall-rule\0{}\0{name}\0iss\0{iss}", kind.name()),
    };
    token_hash(key, text.as_bytes())
}

/// The claims of a verified token a rule can match.
#[derive(Clone, Copy, Debug, Default)]
pub struct RuleFacts<'a> {
    /// `jti`.
    pub jti: &'a str,
    /// The key that verified it.
    pub kid: &'a str,
    /// `sub`.
    pub sub: &'a str,
    /// `client_id`.
    pub client_id: &'a str,
    /// `iss`.
    pub iss: &'a str,
    /// `iat` (0 when absent).
    pub iat: u64,
}

/// The rule of `kind` naming `name` that applies to tokens of `iss`: one for every issuer or
/// one scoped to `iss`.
pub fn find<'s>(
    store: &'s RevocationStore,
    key: &HashKey,
    kind: RuleKind,
    iss: &str,
    name: &str,
) -> Option<&'s Revocation> {
    if name.is_empty() {
        return None;
    }
    [None, Some(iss)]
        .into_iter()
        .filter_map(|issuer| store.get(rule_hash(key, kind, issuer, name)))
        .find(|r| r.scope == scope(kind))
}

/// The kind of the first rule covering a token: its `jti`, its key, or its subject or client
/// when it was issued at or before the rule.
pub fn covering(store: &RevocationStore, key: &HashKey, f: &RuleFacts<'_>) -> Option<RuleKind> {
    if find(store, key, RuleKind::Jti, f.iss, f.jti).is_some() {
        return Some(RuleKind::Jti);
    }
    if find(store, key, RuleKind::Kid, f.iss, f.kid).is_some() {
        return Some(RuleKind::Kid);
    }
    [(RuleKind::Sub, f.sub), (RuleKind::Client, f.client_id)]
        .into_iter()
        .find(|(kind, name)| {
            find(store, key, *kind, f.iss, name).is_some_and(|r| f.iat <= r.revoked_at)
        })
        .map(|(kind, _)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_hashes_separate_kinds_issuers_and_names() {
        let key = HashKey::from_bytes([3; 16]);
        let all = [
            rule_hash(&key, RuleKind::Sub, None, "alice"),
            rule_hash(&key, RuleKind::Client, None, "alice"),
            rule_hash(&key, RuleKind::Sub, Some("https://a"), "alice"),
            rule_hash(&key, RuleKind::Sub, Some("https://b"), "alice"),
            rule_hash(&key, RuleKind::Sub, None, "bob"),
            token_hash(&key, b"alice"),
        ];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }
}
