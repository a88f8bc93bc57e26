//! JWT validation by the rules of RFC 8725 (JWT Best Current Practices). Userspace is
//! authoritative: the kernel only ever drops what this has already judged revoked.
//!
//! The order matters: sizes first, then the header (no `none`, no unknown critical extensions,
//! `kid` only selects among configured keys, `alg` must be the one algorithm of that key), then
//! the signature, and only then the claims (`iss`, `aud`, `exp`/`nbf`/`iat` with leeway, `typ`).
//! `jku`, `x5u`, `jwk` and `x5c` headers are never followed: only configured keys verify.

use std::{collections::HashMap, str::FromStr as _};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, crypto};
use serde_json::{Map, Value};

/// A key this host trusts, bound to one algorithm and one issuer.
#[derive(Clone)]
pub struct TrustedKey {
    /// Key id (`kid`).
    pub kid: String,
    /// The only algorithm this key verifies.
    pub alg: Algorithm,
    /// The verification key.
    pub key: DecodingKey,
    /// The issuer whose tokens this key signs.
    pub issuer: String,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Required `typ` for this key's tokens; `None` falls back to the policy's.
    pub typ: Option<String>,
}

impl TrustedKey {
    /// Whether `other` is the same key: id, algorithm, key material and binding (issuer,
    /// audiences, `typ`). Two keys under one `kid` with different material are different.
    pub fn same_key(&self, other: &TrustedKey) -> bool {
        use jsonwebtoken::DecodingKeyKind as K;
        let material = match (self.key.kind(), other.key.kind()) {
            (K::SecretOrDer(a), K::SecretOrDer(b)) => a == b,
            (K::RsaModulusExponent { n, e }, K::RsaModulusExponent { n: n2, e: e2 }) => {
                n == n2 && e == e2
            }
            _ => false,
        };
        material
            && self.kid == other.kid
            && self.alg == other.alg
            && self.key.family() == other.key.family()
            && self.issuer == other.issuer
            && self.audiences == other.audiences
            && self.typ == other.typ
    }
}

/// The configured keys, by `kid`.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, TrustedKey>,
}

impl KeySet {
    /// Adds or replaces a key.
    pub fn insert(&mut self, key: TrustedKey) {
        self.keys.insert(key.kid.clone(), key);
    }

    /// Removes a key; returns whether it existed.
    pub fn remove(&mut self, kid: &str) -> bool {
        self.keys.remove(kid).is_some()
    }

    /// The key with `kid`.
    pub fn get(&self, kid: &str) -> Option<&TrustedKey> {
        self.keys.get(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Picks the key for a header: by `kid`, or the single key of that algorithm when the
    /// token has no `kid` and exactly one such key exists.
    fn select(&self, kid: Option<&str>, alg: Algorithm) -> Option<&TrustedKey> {
        match kid {
            Some(kid) => self.keys.get(kid),
            None => {
                let mut it = self.keys.values().filter(|k| k.alg == alg);
                let only = it.next()?;
                it.next().is_none().then_some(only)
            }
        }
    }
}

/// Limits and clock rules.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Clock-skew allowance for `exp`, `nbf` and `iat`, in seconds.
    pub leeway: u64,
    /// Required `typ` header (e.g. `at+jwt`, RFC 9068), compared case-insensitively, with or
    /// without the `application/` prefix.
    pub required_typ: Option<String>,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Longest decoded header JSON.
    pub max_header_bytes: usize,
    /// Longest decoded claims JSON.
    pub max_claims_bytes: usize,
    /// Whether `exp` must be present.
    pub require_exp: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            leeway: 30,
            required_typ: None,
            max_token_bytes: 8 * 1024,
            max_header_bytes: 1024,
            max_claims_bytes: 6 * 1024,
            require_exp: true,
        }
    }
}

pub use crate::types::Rejection;

/// A token that passed every check.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The selected key's id.
    pub kid: String,
    /// The algorithm.
    pub alg: Algorithm,
    /// The claims.
    pub claims: Map<String, Value>,
    /// `exp`, if present.
    pub exp: Option<u64>,
    /// Length of the first (header) segment: the kernel keys whole-key revocation on it.
    pub header_segment_len: usize,
}

impl Verified {
    /// A string claim.
    pub fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }
}

fn b64_json(
    segment: &str,
    max: usize,
    what: &'static str,
) -> Result<Map<String, Value>, Rejection> {
    // base64url without padding expands 3 bytes to 4 characters.
    if segment.len() > max.div_ceil(3) * 4 {
        return Err(Rejection::TooLarge(what));
    }
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Rejection::Malformed("segment is not base64url"))?;
    if raw.len() > max {
        return Err(Rejection::TooLarge(what));
    }
    match serde_json::from_slice(&raw) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Rejection::Malformed("segment is not a JSON object")),
    }
}

fn number(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, Rejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(Rejection::Malformed(
            "time claim is not a non-negative integer",
        )),
    }
}

fn typ_matches(typ: &str, required: &str) -> bool {
    let norm = |s: &str| {
        let s = s.to_ascii_lowercase();
        s.strip_prefix("application/")
            .map(str::to_string)
            .unwrap_or(s)
    };
    norm(typ) == norm(required)
}

/// Validates `token` against `keys` and `policy` at unix time `now`.
pub fn validate(
    token: &str,
    keys: &KeySet,
    policy: &Policy,
    now: u64,
) -> Result<Verified, Rejection> {
    if token.len() > policy.max_token_bytes {
        return Err(Rejection::TooLarge("token"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed("a JWS has three segments"));
    };
    if h.is_empty() || c.is_empty() {
        return Err(Rejection::Malformed("empty segment"));
    }
    let header = b64_json(h, policy.max_header_bytes, "header")?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(Rejection::Malformed("no alg"))?;
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(Rejection::AlgNone);
    }
    let alg = Algorithm::from_str(alg_name).map_err(|_| Rejection::UnsupportedAlgorithm)?;
    if header.contains_key("crit") {
        return Err(Rejection::UnsupportedCritical);
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.as_str()),
        Some(_) => return Err(Rejection::Malformed("kid is not a string")),
    };
    let key = keys.select(kid, alg).ok_or(Rejection::UnknownKey)?;
    if key.alg != alg {
        return Err(Rejection::AlgorithmMismatch);
    }
    if sig.is_empty() {
        return Err(Rejection::BadSignature);
    }
    let signing_input = &token[..h.len() + 1 + c.len()];
    match crypto::verify(sig, signing_input.as_bytes(), &key.key, alg) {
        Ok(true) => {}
        Ok(false) | Err(_) => return Err(Rejection::BadSignature),
    }
    if let Some(required) = key.typ.as_ref().or(policy.required_typ.as_ref()) {
        let typ = header.get("typ").and_then(Value::as_str).unwrap_or("");
        if !typ_matches(typ, required) {
            return Err(Rejection::WrongType);
        }
    }
    let claims = b64_json(c, policy.max_claims_bytes, "claims")?;
    if claims.get("iss").and_then(Value::as_str) != Some(key.issuer.as_str()) {
        return Err(Rejection::WrongIssuer);
    }
    if !key.audiences.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => key.audiences.iter().any(|x| x == a),
            Some(Value::Array(v)) => v
                .iter()
                .filter_map(Value::as_str)
                .any(|a| key.audiences.iter().any(|x| x == a)),
            _ => false,
        };
        if !ok {
            return Err(Rejection::WrongAudience);
        }
    }
    let exp = number(&claims, "exp").map_err(|_| Rejection::MissingExpiry)?;
    match exp {
        None if policy.require_exp => return Err(Rejection::MissingExpiry),
        Some(exp) if now >= exp.saturating_add(policy.leeway) => return Err(Rejection::Expired),
        _ => {}
    }
    if let Some(nbf) = number(&claims, "nbf")?
        && now.saturating_add(policy.leeway) < nbf
    {
        return Err(Rejection::NotYetValid);
    }
    if let Some(iat) = number(&claims, "iat")?
        && iat > now.saturating_add(policy.leeway)
    {
        return Err(Rejection::IssuedInFuture);
    }
    Ok(Verified {
        kid: key.kid.clone(),
        alg,
        claims,
        exp,
        header_segment_len: h.len(),
    })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod malleability;
