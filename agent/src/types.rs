//! Leaf types every part of the agent shares: token hashes and their fingerprints, the kinds of
//! revocation rules, and why a token was refused. This module imports nothing from the crate.

use std::{fmt, str::FromStr};

use agent_common::hash::{HashKey, revocation_hash, revocation_key_len, token_hash};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de::Error as _};

/// A keyed hash naming a token (or a header segment, or a rule) without revealing it. Shown
/// to operators as its *fingerprint*: 16 lowercase hex digits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub u64);

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a fingerprint given by a user is not one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint is up to 16 hex digits (optionally 0x-prefixed), got {len} characters")]
pub struct BadFingerprint {
    /// Length of what was given.
    pub len: usize,
}

impl FromStr for TokenHash {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.strip_prefix("0x").unwrap_or(s);
        let bad = BadFingerprint { len: s.len() };
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad);
        }
        u64::from_str_radix(hex, 16).map(TokenHash).map_err(|_| bad)
    }
}

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// The keyed hashes one token check needs, computed once per check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenHashes {
    /// The revocation key and fingerprint: the hash of a JWS's signing input (every signature
    /// of the same content), of anything else whole. What the kernel looks up.
    pub key: u64,
    /// The hash of the whole token: what the verified-token cache is keyed on (a cached answer
    /// must only ever be served for the exact signature that was verified), and what
    /// revocations recorded before signing-input keying were keyed on.
    pub whole: u64,
    /// The hash of the first segment (a JWS header: every token of one signing key).
    pub header: u64,
}

impl TokenHashes {
    /// Hashes `token` under `key`.
    pub fn of(key: &HashKey, token: &str) -> Self {
        let bytes = token.as_bytes();
        let revocation = revocation_hash(key, bytes);
        let whole = if revocation_key_len(bytes) == bytes.len() {
            revocation
        } else {
            token_hash(key, bytes)
        };
        let header = token.split('.').next().unwrap_or_default();
        Self {
            key: revocation,
            whole,
            header: token_hash(key, header.as_bytes()),
        }
    }
}

/// What a revocation rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RuleKind {
    /// One token id.
    Jti,
    /// A subject (`sub`): every token issued to it until now.
    Sub,
    /// An OAuth client (`client_id`): every token issued to it until now.
    Client,
    /// A signing key (`kid`): every token it signed, ever.
    Kid,
}

impl RuleKind {
    /// Name for output and labels.
    pub const fn name(self) -> &'static str {
        match self {
            RuleKind::Jti => "jti",
            RuleKind::Sub => "sub",
            RuleKind::Client => "client",
            RuleKind::Kid => "kid",
        }
    }
}

/// What revoked a refused token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokedBy {
    /// The token itself (its revocation key).
    Token,
    /// Its JWS header segment: a whole signing key.
    SigningKey,
    /// A rule of this kind.
    Rule(RuleKind),
}

impl fmt::Display for RevokedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RevokedBy::Token => "token",
            RevokedBy::SigningKey => "signing key",
            RevokedBy::Rule(k) => k.name(),
        })
    }
}

/// Why validation refused a token (its `Display` goes into `WWW-Authenticate`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not three base64url JSON segments, or unreadable JSON.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// Over a size limit.
    #[error("token too large: {0}")]
    TooLarge(&'static str),
    /// `alg: none` (any case).
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgNone,
    /// An algorithm jsonwebtoken does not know.
    #[error("unsupported algorithm")]
    UnsupportedAlgorithm,
    /// A `crit` header names extensions this validator does not implement.
    #[error("unsupported critical header parameter")]
    UnsupportedCritical,
    /// No configured key for the token's `kid` (or no unambiguous key without one).
    #[error("unknown signing key")]
    UnknownKey,
    /// The header's `alg` is not the one algorithm of the selected key.
    #[error("algorithm not allowed for this key")]
    AlgorithmMismatch,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `typ` is not the required one.
    #[error("wrong token type")]
    WrongType,
    /// `iss` is missing or not the key's issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` is missing or names none of the accepted audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// `exp` is missing (when required) or not a number.
    #[error("missing or invalid exp")]
    MissingExpiry,
    /// `exp` plus leeway has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` minus leeway is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is further in the future than the leeway allows.
    #[error("token issued in the future")]
    IssuedInFuture,
}

/// Why a checked token was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Revoked, directly or by a rule (the description says which, without names).
    Revoked(RevokedBy),
    /// Failed validation.
    Invalid(Rejection),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Revoked(by) => write!(f, "token revoked ({by})"),
            Refusal::Invalid(r) => r.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_round_trip_and_refuse_anything_else() {
        let h = TokenHash(0xdead_beef);
        assert_eq!(h.to_string(), "00000000deadbeef");
        assert_eq!("00000000deadbeef".parse(), Ok(h));
        assert_eq!("0xdeadbeef".parse(), Ok(h));
        for bad in ["", "xyz", "12345678901234567", "0x"] {
            assert!(bad.parse::<TokenHash>().is_err(), "{bad:?}");
        }
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, "\"00000000deadbeef\"");
        assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), h);
    }
}
