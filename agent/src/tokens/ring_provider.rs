//! A `jsonwebtoken` [`CryptoProvider`] in which ring does all signing and verifying.
//!
//! jsonwebtoken 11 has no ring backend of its own; it takes one process-wide provider
//! ([`install`]). A verifier is built only when the key's family matches the algorithm's, so a
//! public key can never be used as an HMAC secret (the RFC 8725 algorithm-confusion attack).

use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey,
    crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils},
    errors::{ErrorKind, Result, new_error},
    jwk::{EllipticCurve, ThumbprintHash},
};
use ring::{
    digest, hmac,
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair},
};

/// The provider; install it once with [`install`].
pub static RING_PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rsa_components_from_private_key,
        rsa_pub_components_from_public_key: rsa_components_from_public_key,
        ec_pub_components_from_private_key: ec_components_from_private_key,
        ed_pub_components_from_private_key: ed_component_from_private_key,
        compute_digest,
    },
};

/// Makes [`RING_PROVIDER`] the process-wide provider (idempotent).
pub fn install() {
    // Err means a provider is already installed: ours, since nothing else installs one.
    let _ = RING_PROVIDER.install_default();
}

fn family_of(alg: Algorithm) -> jsonwebtoken::AlgorithmFamily {
    alg.family()
}

/// What a verifier holds, per algorithm family.
enum VerifyKey {
    Hmac(hmac::Key),
    /// ECDSA (fixed-size r||s), Ed25519, or RSA from a PKCS#1 `RSAPublicKey`.
    Public(&'static dyn signature::VerificationAlgorithm, Vec<u8>),
    /// RSA from JWK `n`/`e`.
    RsaComponents(&'static signature::RsaParameters, Vec<u8>, Vec<u8>),
}

struct RingVerifier {
    alg: Algorithm,
    key: VerifyKey,
}

impl signature_trait::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature_trait::Error> {
        let ok = match &self.key {
            VerifyKey::Hmac(k) => hmac::verify(k, msg, sig).is_ok(),
            VerifyKey::Public(alg, key) => signature::UnparsedPublicKey::new(*alg, key)
                .verify(msg, sig)
                .is_ok(),
            VerifyKey::RsaComponents(params, n, e) => signature::RsaPublicKeyComponents { n, e }
                .verify(params, msg, sig)
                .is_ok(),
        };
        if ok {
            Ok(())
        } else {
            Err(signature_trait::Error::new())
        }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn hmac_alg(alg: Algorithm) -> hmac::Algorithm {
    match alg {
        Algorithm::HS384 => hmac::HMAC_SHA384,
        Algorithm::HS512 => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    }
}

fn rsa_params(alg: Algorithm) -> &'static signature::RsaParameters {
    match alg {
        Algorithm::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
        _ => &signature::RSA_PSS_2048_8192_SHA512,
    }
}

fn new_verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let alg = *alg;
    if key.family() != family_of(alg) {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    use jsonwebtoken::DecodingKeyKind as K;
    let key = match (alg, key.kind()) {
        (Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512, K::SecretOrDer(secret)) => {
            VerifyKey::Hmac(hmac::Key::new(hmac_alg(alg), secret))
        }
        (Algorithm::ES256, K::SecretOrDer(point)) => {
            VerifyKey::Public(&signature::ECDSA_P256_SHA256_FIXED, point.clone())
        }
        (Algorithm::ES384, K::SecretOrDer(point)) => {
            VerifyKey::Public(&signature::ECDSA_P384_SHA384_FIXED, point.clone())
        }
        (Algorithm::EdDSA, K::SecretOrDer(raw)) => {
            VerifyKey::Public(&signature::ED25519, raw.clone())
        }
        (_, K::SecretOrDer(der)) => VerifyKey::Public(rsa_params(alg), der.clone()),
        (_, K::RsaModulusExponent { n, e }) => {
            VerifyKey::RsaComponents(rsa_params(alg), n.clone(), e.clone())
        }
    };
    Ok(Box::new(RingVerifier { alg, key }))
}

/// What a signer holds, per algorithm family.
enum SignKey {
    Hmac(hmac::Key),
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ed25519(Ed25519KeyPair),
}

struct RingSigner {
    alg: Algorithm,
    key: SignKey,
}

impl signature_trait::Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature_trait::Error> {
        let rng = SystemRandom::new();
        match &self.key {
            SignKey::Hmac(k) => Ok(hmac::sign(k, msg).as_ref().to_vec()),
            SignKey::Ecdsa(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature_trait::Error::new()),
            SignKey::Rsa(k, padding) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(*padding, &rng, msg, &mut sig)
                    .map_err(|_| signature_trait::Error::new())?;
                Ok(sig)
            }
            SignKey::Ed25519(k) => Ok(k.sign(msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

fn rsa_key_pair(der: &[u8]) -> Result<RsaKeyPair> {
    RsaKeyPair::from_der(der)
        .or_else(|_| RsaKeyPair::from_pkcs8(der))
        .map_err(|_| {
            new_error(ErrorKind::InvalidRsaKey(
                "not a usable RSA private key".into(),
            ))
        })
}

fn ecdsa_key_pair(alg: Algorithm, pkcs8: &[u8]) -> Result<EcdsaKeyPair> {
    let signing = if alg == Algorithm::ES384 {
        &signature::ECDSA_P384_SHA384_FIXED_SIGNING
    } else {
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING
    };
    EcdsaKeyPair::from_pkcs8(signing, pkcs8, &SystemRandom::new())
        .map_err(|_| new_error(ErrorKind::InvalidEcdsaKey))
}

fn new_signer(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let alg = *alg;
    if key.family() != family_of(alg) {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    let bytes = key.as_bytes();
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            SignKey::Hmac(hmac::Key::new(hmac_alg(alg), bytes))
        }
        Algorithm::ES256 | Algorithm::ES384 => SignKey::Ecdsa(ecdsa_key_pair(alg, bytes)?),
        Algorithm::EdDSA => SignKey::Ed25519(
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(bytes)
                .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?,
        ),
        Algorithm::RS256 => SignKey::Rsa(rsa_key_pair(bytes)?, &signature::RSA_PKCS1_SHA256),
        Algorithm::RS384 => SignKey::Rsa(rsa_key_pair(bytes)?, &signature::RSA_PKCS1_SHA384),
        Algorithm::RS512 => SignKey::Rsa(rsa_key_pair(bytes)?, &signature::RSA_PKCS1_SHA512),
        Algorithm::PS256 => SignKey::Rsa(rsa_key_pair(bytes)?, &signature::RSA_PSS_SHA256),
        Algorithm::PS384 => SignKey::Rsa(rsa_key_pair(bytes)?, &signature::RSA_PSS_SHA384),
        Algorithm::PS512 => SignKey::Rsa(rsa_key_pair(bytes)?, &signature::RSA_PSS_SHA512),
        _ => return Err(new_error(ErrorKind::InvalidAlgorithm)),
    };
    Ok(Box::new(RingSigner { alg, key }))
}

fn rsa_components_from_private_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    // ring's public key is the DER `RSAPublicKey`.
    rsa_components_from_public_key(rsa_key_pair(der)?.public().as_ref())
}

/// Reads one DER element at the start of `b`: (tag, contents, rest).
fn der_element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | usize::from(x));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017).
fn rsa_components_from_public_key(der: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let bad = || new_error(ErrorKind::InvalidRsaKey("not a PKCS#1 RSAPublicKey".into()));
    let (0x30, seq, _) = der_element(der).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x02, n, rest) = der_element(seq).ok_or_else(bad)? else {
        return Err(bad());
    };
    let (0x02, e, _) = der_element(rest).ok_or_else(bad)? else {
        return Err(bad());
    };
    let strip = |v: &[u8]| {
        v.iter()
            .position(|&x| x != 0)
            .map_or_else(Vec::new, |i| v[i..].to_vec())
    };
    Ok((strip(n), strip(e)))
}

fn ec_components_from_private_key(
    pkcs8: &[u8],
    alg: Algorithm,
) -> Result<(EllipticCurve, Vec<u8>, Vec<u8>)> {
    let pair = ecdsa_key_pair(alg, pkcs8)?;
    let point = pair.public_key().as_ref();
    let (curve, half) = match point.len() {
        65 => (EllipticCurve::P256, 32),
        97 => (EllipticCurve::P384, 48),
        _ => return Err(new_error(ErrorKind::InvalidEcdsaKey)),
    };
    Ok((
        curve,
        point[1..1 + half].to_vec(),
        point[1 + half..].to_vec(),
    ))
}

fn ed_component_from_private_key(pkcs8: &[u8], curve: &EllipticCurve) -> Result<Vec<u8>> {
    if *curve != EllipticCurve::Ed25519 {
        return Err(new_error(ErrorKind::InvalidEddsaKey));
    }
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .map_err(|_| new_error(ErrorKind::InvalidEddsaKey))?;
    Ok(pair.public_key().as_ref().to_vec())
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Result<Vec<u8>> {
    let alg = match hash {
        ThumbprintHash::SHA256 => &digest::SHA256,
        ThumbprintHash::SHA384 => &digest::SHA384,
        ThumbprintHash::SHA512 => &digest::SHA512,
        _ => return Err(new_error(ErrorKind::InvalidAlgorithm)),
    };
    Ok(digest::digest(alg, data).as_ref().to_vec())
}

/// The `signature` crate's traits, which jsonwebtoken's signer and verifier traits extend.
mod signature_trait {
    pub use jsonwebtoken::signature::{Error, Signer, Verifier};
}

#[cfg(test)]
mod tests;
