use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;
use crate::tokens::validate::{KeySet, Policy, Rejection, validate};

const RSA_KEY: &str = include_str!("../testdata/rsa2048.key.pem");
const RSA_PUB: &str = include_str!("../testdata/rsa2048.pub.pem");
const EC_KEY: &str = include_str!("../testdata/p256.key.pem");
const EC_PUB: &str = include_str!("../testdata/p256.pub.pem");
const ED_KEY: &str = include_str!("../testdata/ed25519.key.pem");
const ED_PUB: &str = include_str!("../testdata/ed25519.pub.pem");
const ISS: &str = "https://idp.example";

fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// The public JWK of the test P-256 key (the point is the SPKI's last 64 bytes).
fn ec_jwk(kid: Option<&str>, alg: Option<&str>) -> Value {
    let d = der(EC_PUB);
    let p = &d[d.len() - 64..];
    let mut j = json!({ "kty": "EC", "crv": "P-256", "x": B64.encode(&p[..32]), "y": B64.encode(&p[32..]) });
    if let Some(k) = kid {
        j["kid"] = json!(k);
    }
    if let Some(a) = alg {
        j["alg"] = json!(a);
    }
    j
}

fn ed_jwk(kid: &str) -> Value {
    let d = der(ED_PUB);
    json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "x": B64.encode(&d[d.len() - 32..]) })
}

fn token(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
    crate::tokens::ring_provider::install();
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    let now = crate::clock::now();
    jsonwebtoken::encode(&h, &json!({ "iss": ISS, "sub": "u", "exp": now + 60 }), key).unwrap()
}

fn external(source: KeySource, alg: Option<&str>, kid: Option<&str>) -> ExternalKey {
    ExternalKey {
        source,
        issuer: ISS.into(),
        alg: alg.map(str::to_string),
        kid: kid.map(str::to_string),
        audiences: vec![],
        typ: None,
    }
}

fn check(keys: Vec<TrustedKey>, token: &str) -> Result<(), Rejection> {
    let mut set = KeySet::default();
    for k in keys {
        set.insert(k);
    }
    validate(token, &set, &Policy::default(), crate::clock::now()).map(|_| ())
}

#[test]
fn pem_keys_of_each_family_verify_their_tokens() {
    for (alg, public, private) in [
        (
            Algorithm::RS256,
            RSA_PUB,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
        ),
        (
            Algorithm::PS256,
            RSA_PUB,
            EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).unwrap(),
        ),
        (
            Algorithm::ES256,
            EC_PUB,
            EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap(),
        ),
        (
            Algorithm::EdDSA,
            ED_PUB,
            EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap(),
        ),
    ] {
        let src = KeySource::Pem { pem: public.into() };
        let keys = external(src, Some(&format!("{alg:?}")), Some("k1"))
            .keys()
            .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(
            check(keys, &token(alg, Some("k1"), &private)),
            Ok(()),
            "{alg:?}"
        );
    }
}

#[test]
fn a_pem_key_without_kid_is_named_by_fingerprint_and_still_selected() {
    let keys = external(KeySource::Pem { pem: EC_PUB.into() }, Some("ES256"), None)
        .keys()
        .unwrap();
    assert!(keys[0].kid.starts_with("pem-"));
    let private = EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap();
    assert_eq!(
        check(keys, &token(Algorithm::ES256, None, &private)),
        Ok(())
    );
}

#[test]
fn pem_needs_an_asymmetric_algorithm_of_its_family() {
    let pem = KeySource::Pem { pem: EC_PUB.into() };
    assert!(
        external(pem.clone(), None, None).keys().is_err(),
        "no --alg"
    );
    assert!(
        external(pem.clone(), Some("HS256"), None).keys().is_err(),
        "HMAC from a PEM"
    );
    assert!(
        external(pem, Some("RS256"), None).keys().is_err(),
        "EC PEM as RSA"
    );
}

#[test]
fn jwk_and_jwks_documents_give_one_algorithm_per_key() {
    let private = EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap();
    // alg implied by the curve.
    let keys = external(
        KeySource::Jwk {
            doc: ec_jwk(Some("e1"), None),
        },
        None,
        None,
    )
    .keys()
    .unwrap();
    assert_eq!(keys[0].alg, Algorithm::ES256);
    assert_eq!(
        check(keys, &token(Algorithm::ES256, Some("e1"), &private)),
        Ok(())
    );
    // A JWKS: the encryption key is skipped, both signing keys kept.
    let mut enc = ec_jwk(Some("enc1"), None);
    enc["use"] = json!("enc");
    let doc = json!({ "keys": [ec_jwk(Some("e1"), Some("ES256")), ed_jwk("d1"), enc] });
    let keys = external(KeySource::Jwk { doc }, None, None).keys().unwrap();
    let mut kids: Vec<_> = keys.iter().map(|k| (k.kid.clone(), k.alg)).collect();
    kids.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        kids,
        vec![
            ("d1".into(), Algorithm::EdDSA),
            ("e1".into(), Algorithm::ES256)
        ]
    );
    let ed = EncodingKey::from_ed_pem(ED_KEY.as_bytes()).unwrap();
    assert_eq!(
        check(keys, &token(Algorithm::EdDSA, Some("d1"), &ed)),
        Ok(())
    );
}

#[test]
fn conflicting_or_missing_algorithms_are_refused() {
    let conflict = external(
        KeySource::Jwk {
            doc: ec_jwk(Some("e1"), Some("ES256")),
        },
        Some("ES384"),
        None,
    );
    assert!(conflict.keys().is_err());
    let rsa_without_alg = json!({ "kty": "RSA", "kid": "r1", "n": "sXch", "e": "AQAB" });
    assert!(
        external(
            KeySource::Jwk {
                doc: rsa_without_alg
            },
            None,
            None
        )
        .keys()
        .is_err()
    );
    let no_kid_in_set = json!({ "keys": [ec_jwk(None, None)] });
    assert!(
        external(KeySource::Jwk { doc: no_kid_in_set }, None, None)
            .keys()
            .is_err()
    );
}

#[test]
fn an_hmac_jwk_verifies_only_tokens_made_with_its_secret() {
    let secret = b"0123456789abcdef0123456789abcdef";
    let doc = json!({ "kty": "oct", "kid": "h1", "alg": "HS256", "k": B64.encode(secret) });
    let keys = external(KeySource::Jwk { doc }, None, None).keys().unwrap();
    let good = token(
        Algorithm::HS256,
        Some("h1"),
        &EncodingKey::from_secret(secret),
    );
    assert_eq!(check(keys.clone(), &good), Ok(()));
    let other = token(
        Algorithm::HS256,
        Some("h1"),
        &EncodingKey::from_secret(b"another secret of 32 bytes......"),
    );
    assert_eq!(check(keys, &other), Err(Rejection::BadSignature));
}
