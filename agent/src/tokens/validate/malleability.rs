//! ECDSA signature malleability: `(r, n - s)` verifies whenever `(r, s)` does, and ring accepts
//! both. A revocation must therefore name the signed content, not the signature bytes: these
//! tests prove the second signature is real and that it (and re-encodings of the signature
//! segment) share the revoked token's revocation key.

use agent_common::hash::HashKey;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, crypto};
use ring::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, KeyPair as _,
};
use serde_json::json;

use super::*;
use crate::{tokens::ring_provider, types::TokenHashes};

const NOW: u64 = 1_800_000_000;
/// Order of the P-256 group (SEC 2, section 2.4.2).
const P256_N: &str = "FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551";
/// Order of the P-384 group (SEC 2, section 2.5.1).
const P384_N: &str = "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `n - s` for big-endian numbers of equal length (`s < n`).
fn sub(n: &[u8], s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; n.len()];
    let mut borrow = 0i16;
    for i in (0..n.len()).rev() {
        let d = n[i] as i16 - s[i] as i16 - borrow;
        borrow = i16::from(d < 0);
        out[i] = d.rem_euclid(256) as u8;
    }
    out
}

/// A token signed with a new key of `alg`, its verification key set, and the order `n`.
fn signed(
    ring_alg: &'static EcdsaSigningAlgorithm,
    alg: Algorithm,
    n: &str,
) -> (String, KeySet, Vec<u8>) {
    ring_provider::install();
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(ring_alg, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(ring_alg, pkcs8.as_ref(), &rng).unwrap();
    let header = json!({"alg": format!("{alg:?}"), "typ": "at+jwt", "kid": "k1"});
    let claims = json!({"iss": "i", "sub": "alice", "aud": "api", "exp": NOW + 600, "iat": NOW, "jti": "j-1"});
    let input = format!(
        "{}.{}",
        b64().encode(header.to_string()),
        b64().encode(claims.to_string())
    );
    let sig = crypto::sign(
        input.as_bytes(),
        &EncodingKey::from_ec_der(pkcs8.as_ref()),
        alg,
    )
    .unwrap();
    let mut keys = KeySet::default();
    keys.insert(TrustedKey {
        kid: "k1".into(),
        alg,
        key: DecodingKey::from_ec_der(pair.public_key().as_ref()),
        issuer: "i".into(),
        audiences: vec!["api".into()],
        typ: None,
    });
    (format!("{input}.{sig}"), keys, hex(n))
}

/// The same token with `s` replaced by `n - s`.
fn flip_s(token: &str, n: &[u8]) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let raw = b64().decode(sig).unwrap();
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut flipped = r.to_vec();
    flipped.extend(sub(n, s));
    format!("{input}.{}", b64().encode(flipped))
}

fn check(ring_alg: &'static EcdsaSigningAlgorithm, alg: Algorithm, n: &str) {
    let (token, keys, n) = signed(ring_alg, alg, n);
    let policy = Policy::default();
    assert!(validate(&token, &keys, &policy, NOW).is_ok());
    let flipped = flip_s(&token, &n);
    assert_ne!(flipped, token);
    assert!(
        validate(&flipped, &keys, &policy, NOW).is_ok(),
        "(r, n - s) must verify too: that is the attack"
    );
    let repadded = format!("{token}==");
    let key = HashKey::from_bytes([7; 16]);
    let revoked = TokenHashes::of(&key, &token);
    for variant in [&flipped, &repadded] {
        let h = TokenHashes::of(&key, variant);
        assert_eq!(
            h.key, revoked.key,
            "same signed content, same revocation key"
        );
        assert_eq!(h.header, revoked.header);
        assert_ne!(
            h.whole, revoked.whole,
            "the cache never serves another signature"
        );
    }
}

#[test]
fn es256_second_signature_shares_the_revocation_key() {
    check(&ECDSA_P256_SHA256_FIXED_SIGNING, Algorithm::ES256, P256_N);
}

#[test]
fn es384_second_signature_shares_the_revocation_key() {
    check(&ECDSA_P384_SHA384_FIXED_SIGNING, Algorithm::ES384, P384_N);
}
