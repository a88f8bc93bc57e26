//! Keys of external issuers: PEM public keys, JWK and JWKS documents (from files or fetched
//! from a JWKS URL). Each key is bound to exactly one algorithm and one issuer (RFC 8725 3.1):
//! the algorithm comes from the JWK's `alg`, else from the operator, else from the only one the
//! key type allows (EC P-256 -> ES256, P-384 -> ES384, Ed25519 -> EdDSA); an RSA or HMAC key
//! with no `alg` anywhere is refused rather than guessed.

use std::str::FromStr as _;

use anyhow::{Context as _, bail};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, DecodingKey, jwk::Jwk};
use ring::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::validate::TrustedKey;

/// Where an external key comes from, as persisted and as sent over the control socket.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum KeySource {
    /// A PEM public key (SPKI, or PKCS#1 for RSA).
    Pem {
        /// The PEM text.
        pem: String,
    },
    /// A JWK or a JWKS document.
    Jwk {
        /// The JSON document.
        doc: Value,
    },
    /// A JWKS URL, fetched, cached and refreshed.
    JwksUrl {
        /// `https://…` (or `http://` for loopback tests and internal issuers).
        url: String,
    },
}

/// An external issuer's key source with the rules bound to it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExternalKey {
    /// The source.
    #[serde(flatten)]
    pub source: KeySource,
    /// The issuer (`iss`) whose tokens these keys sign.
    pub issuer: String,
    /// Algorithm, when the operator fixes it.
    #[serde(default)]
    pub alg: Option<String>,
    /// Key id, when the operator fixes it (PEM keys and single JWKs without one).
    #[serde(default)]
    pub kid: Option<String>,
    /// Accepted audiences (empty: not checked).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Required `typ` header (e.g. `at+jwt`); none by default, as many issuers send `JWT`.
    #[serde(default)]
    pub typ: Option<String>,
}

impl ExternalKey {
    /// How `keys remove` names this source: the URL of a JWKS, else the key id(s).
    pub fn id(&self) -> anyhow::Result<String> {
        match &self.source {
            KeySource::JwksUrl { url } => Ok(url.clone()),
            _ => Ok(self
                .keys()?
                .iter()
                .map(|k| k.kid.as_str())
                .collect::<Vec<_>>()
                .join(",")),
        }
    }

    /// The keys of a PEM or JWK source (a JWKS URL yields its keys only once fetched).
    pub fn keys(&self) -> anyhow::Result<Vec<TrustedKey>> {
        let alg = self
            .alg
            .as_deref()
            .map(|a| Algorithm::from_str(a).map_err(|_| anyhow::anyhow!("unknown algorithm {a}")))
            .transpose()?;
        match &self.source {
            KeySource::Pem { pem } => Ok(vec![self.pem_key(pem, alg)?]),
            KeySource::Jwk { doc } => self.doc_keys(doc, alg),
            KeySource::JwksUrl { .. } => Ok(Vec::new()),
        }
    }

    fn trusted(&self, kid: String, alg: Algorithm, key: DecodingKey) -> TrustedKey {
        TrustedKey {
            kid,
            alg,
            key,
            issuer: self.issuer.clone(),
            audiences: self.audiences.clone(),
            typ: self.typ.clone(),
        }
    }

    fn pem_key(&self, pem: &str, alg: Option<Algorithm>) -> anyhow::Result<TrustedKey> {
        let alg = alg.context("a PEM key needs --alg")?;
        let raw = pem.as_bytes();
        let key = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => DecodingKey::from_rsa_pem(raw),
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(raw),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(raw),
            _ => bail!("{alg:?} is not a public-key algorithm; give HMAC keys as an oct JWK"),
        }
        .with_context(|| format!("the PEM is not a public key for {alg:?}"))?;
        // Without a kid, name the key by its fingerprint; tokens without a `kid` header still
        // select it when it is the only key of its algorithm.
        let kid = self.kid.clone().unwrap_or_else(|| {
            let d = digest::digest(&digest::SHA256, pem.trim().as_bytes());
            format!("pem-{}", &B64.encode(d)[..16])
        });
        Ok(self.trusted(kid, alg, key))
    }

    /// Keys of a JWK or JWKS document (`use: enc` keys are skipped).
    pub fn doc_keys(&self, doc: &Value, alg: Option<Algorithm>) -> anyhow::Result<Vec<TrustedKey>> {
        let (jwks, single) = match doc.get("keys").and_then(Value::as_array) {
            Some(keys) => (keys.clone(), false),
            None => (vec![doc.clone()], true),
        };
        let mut out = Vec::new();
        for raw in jwks {
            if raw.get("use").and_then(Value::as_str) == Some("enc") {
                continue;
            }
            let jwk: Jwk = serde_json::from_value(raw.clone()).context("not a JWK")?;
            let kid = match (raw.get("kid").and_then(Value::as_str), &self.kid) {
                (Some(k), _) => k.to_string(),
                (None, Some(k)) if single => k.clone(),
                _ => bail!("a JWK in a set has no kid"),
            };
            if let Some(fixed) = &self.kid
                && !single
                && *fixed != kid
            {
                continue;
            }
            let declared = raw
                .get("alg")
                .and_then(Value::as_str)
                .map(|a| {
                    Algorithm::from_str(a)
                        .map_err(|_| anyhow::anyhow!("JWK {kid}: unknown alg {a}"))
                })
                .transpose()?;
            let alg = match (declared, alg) {
                (Some(d), Some(a)) if d != a => bail!("JWK {kid} says alg {d:?}, configured {a:?}"),
                (Some(d), _) => d,
                (None, Some(a)) => a,
                (None, None) => implied_alg(&raw).with_context(|| {
                    format!("JWK {kid} has no alg and its type allows several; give --alg")
                })?,
            };
            let key =
                DecodingKey::from_jwk(&jwk).with_context(|| format!("JWK {kid} is not usable"))?;
            out.push(self.trusted(kid, alg, key));
        }
        if out.is_empty() {
            bail!("no signing key in the document");
        }
        Ok(out)
    }
}

/// The one algorithm a key type allows, if there is only one.
fn implied_alg(jwk: &Value) -> Option<Algorithm> {
    match (
        jwk.get("kty").and_then(Value::as_str),
        jwk.get("crv").and_then(Value::as_str),
    ) {
        (Some("EC"), Some("P-256")) => Some(Algorithm::ES256),
        (Some("EC"), Some("P-384")) => Some(Algorithm::ES384),
        (Some("OKP"), Some("Ed25519")) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
