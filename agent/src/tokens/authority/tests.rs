use super::*;

fn settings(alg: SigningAlg) -> Settings {
    Settings {
        issuer: "https://tw.test".into(),
        audience: "api".into(),
        access_ttl: 600,
        jwks_min_refetch: 30,
        signing_alg: alg,
    }
}

fn kids(a: &Authority) -> Vec<String> {
    a.jwks().unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_string())
        .collect()
}

fn issue(a: &mut Authority, now: u64) -> String {
    a.issue(|_| 0, "c", "s", &[], &json!({}), now)
        .unwrap()
        .token
}

#[test]
fn rotation_keeps_the_previous_key_through_its_grace_then_drops_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Authority::open(dir.path(), settings(SigningAlg::Es256)).unwrap();
    let now = crate::clock::now();
    let first = a.active_kid().unwrap();
    let old_token = issue(&mut a, now);
    let second = a.rotate_key(now).unwrap();
    assert_eq!(a.active_kid().unwrap(), second);
    assert_eq!(
        kids(&a),
        [first.clone(), second.clone()],
        "the JWKS keeps the previous key"
    );
    assert!(
        a.validate(&old_token, (1, 2), now).is_ok(),
        "its tokens still verify"
    );
    assert!(issue(&mut a, now).starts_with(&a.header_segment(&second).unwrap()));
    let grace = 600 + crate::clock::JWT_EXP_MARGIN;
    assert!(a.prune_keys(now + grace - 1).unwrap().is_empty());
    assert_eq!(state_count(&a, "grace"), 1);
    assert_eq!(a.prune_keys(now + grace).unwrap(), [first]);
    assert_eq!(kids(&a), [second]);
    assert_eq!(
        (state_count(&a, "grace"), state_count(&a, "retired")),
        (0, 1)
    );
    let reopened = Authority::open(dir.path(), settings(SigningAlg::Es256)).unwrap();
    assert_eq!(
        state_count(&reopened, "retired"),
        1,
        "retired keys are kept"
    );
    assert_eq!(
        a.validate(&old_token, (1, 2), now).unwrap_err(),
        Rejection::UnknownKey
    );
}

#[test]
fn a_new_signing_algorithm_rotates_at_start_and_each_algorithm_issues_valid_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let now = crate::clock::now();
    let mut previous = None;
    for alg in [SigningAlg::Es256, SigningAlg::EdDsa, SigningAlg::Es384] {
        let mut a = Authority::open(dir.path(), settings(alg)).unwrap();
        let kid = a.active_kid().unwrap();
        assert_ne!(Some(&kid), previous.as_ref(), "{alg:?} must rotate");
        let t = issue(&mut a, now);
        let v = a.validate(&t, (1, 2), now).unwrap();
        assert_eq!(v.alg, alg.jwt());
        let jwk = &a.jwks().unwrap()["keys"];
        assert!(
            jwk.as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == kid.as_str())
        );
        previous = Some(kid);
    }
    // Reopening with the same algorithm keeps the key.
    let a = Authority::open(dir.path(), settings(SigningAlg::Es384)).unwrap();
    assert_eq!(Some(a.active_kid().unwrap()), previous);
}

#[test]
fn retiring_the_active_key_makes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Authority::open(dir.path(), settings(SigningAlg::Es256)).unwrap();
    let first = a.active_kid().unwrap();
    let now = crate::clock::now();
    let next = a.retire_key(&first, now).unwrap();
    assert_ne!(next, first);
    assert!(!a.owns_key(&first));
    assert_eq!(kids(&a), [next]);
    assert_eq!(state_count(&a, "retired"), 1);
    let listed = a.keys_list().unwrap();
    assert!(
        listed
            .iter()
            .any(|k| k.kid.as_deref() == Some(first.as_str())
                && k.state.as_deref() == Some("retired")),
        "{listed:?}"
    );
}

fn state_count(a: &Authority, state: &str) -> u64 {
    a.key_counts()
        .into_iter()
        .find(|(s, _)| *s == state)
        .map_or(0, |(_, n)| n)
}

#[test]
fn a_key_replaced_under_its_kid_at_a_jwks_url_replaces_the_trusted_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Authority::open(dir.path(), settings(SigningAlg::Es256)).unwrap();
    let url = "http://127.0.0.1:9/jwks.json";
    let source = ExternalKey {
        source: KeySource::JwksUrl { url: url.into() },
        issuer: "https://idp.test".into(),
        alg: None,
        kid: None,
        audiences: vec![],
        typ: None,
    };
    a.add_external(source.clone()).unwrap();
    let now = crate::clock::now();
    // Two throwaway P-256 keys, published under one kid one after the other.
    let keys: Vec<(jsonwebtoken::EncodingKey, Value)> = (0..2)
        .map(|_| {
            use ring::signature::{
                ECDSA_P256_SHA256_FIXED_SIGNING as ALG, EcdsaKeyPair, KeyPair as _,
            };
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap();
            let p = &pair.public_key().as_ref()[1..];
            let jwk = json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "rot",
                "x": B64.encode(&p[..32]), "y": B64.encode(&p[32..]) }] });
            (jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
        })
        .collect();
    let token = |key: &jsonwebtoken::EncodingKey| {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        h.kid = Some("rot".into());
        let claims = json!({ "iss": "https://idp.test", "sub": "s", "exp": now + 600 });
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    let install = |a: &mut Authority, doc: &Value| {
        let keys = source.doc_keys(doc, None);
        a.install_jwks(url, keys, now).unwrap()
    };
    assert_eq!(install(&mut a, &keys[0].1).added, ["rot"]);
    assert!(a.validate(&token(&keys[0].0), (1, 2), now).is_ok());
    let changes = install(&mut a, &keys[1].1);
    assert_eq!(changes.replaced, ["rot"]);
    assert!(a.validate(&token(&keys[1].0), (3, 4), now).is_ok());
    assert_eq!(
        a.validate(&token(&keys[0].0), (5, 6), now).unwrap_err(),
        Rejection::BadSignature
    );
}
