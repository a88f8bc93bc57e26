use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde_json::json;

use super::*;

/// A loopback HTTP server answering every request with the current (status, body).
struct JwksServer {
    url: String,
    answer: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(body: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new((200, body)));
        let hits = Arc::new(AtomicUsize::new(0));
        let (a, h) = (answer.clone(), hits.clone());
        std::thread::spawn(move || {
            // Bounded: a test makes a handful of requests.
            for conn in listener.incoming().take(32) {
                let Ok(mut c) = conn else { continue };
                let mut buf = [0u8; 4096];
                let _ = c.read(&mut buf);
                h.fetch_add(1, Ordering::SeqCst);
                let (status, body) = a.lock().unwrap().clone();
                let _ = write!(
                    c,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Self { url, answer, hits }
    }

    fn set(&self, status: u16, body: String) {
        *self.answer.lock().unwrap() = (status, body);
    }
}

/// The test key's public point (x || y).
fn testdata_point() -> Vec<u8> {
    let pem = include_str!("../testdata/p256.pub.pem");
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let d = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    d[d.len() - 64..].to_vec()
}

/// A JWKS of P-256 keys: (kid, public point x || y).
fn jwks_of(keys: &[(&str, &[u8])]) -> String {
    let keys: Vec<_> = keys
        .iter()
        .map(|(k, p)| {
            json!({ "kty": "EC", "crv": "P-256", "kid": k, "use": "sig",
                         "x": B64.encode(&p[..32]), "y": B64.encode(&p[32..]) })
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

fn jwks(kids: &[&str]) -> String {
    let p = testdata_point();
    let keys: Vec<(&str, &[u8])> = kids.iter().map(|k| (*k, p.as_slice())).collect();
    jwks_of(&keys)
}

/// A fresh P-256 key: (PKCS#8 DER, public point x || y).
fn fresh_p256() -> (Vec<u8>, Vec<u8>) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING as ALG, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap();
    (
        pkcs8.as_ref().to_vec(),
        pair.public_key().as_ref()[1..].to_vec(),
    )
}

/// A token of `https://idp.example` under `kid`, signed with `key`.
fn token(kid: &str, key: &jsonwebtoken::EncodingKey, now: u64) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(kid.into());
    let claims = json!({ "iss": "https://idp.example", "sub": "s", "exp": now + 600 });
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

fn key_set(r: &RemoteJwks) -> crate::tokens::validate::KeySet {
    let mut ks = crate::tokens::validate::KeySet::default();
    for k in r.keys() {
        ks.insert(k.clone());
    }
    ks
}

fn source(url: &str) -> ExternalKey {
    ExternalKey {
        source: KeySource::JwksUrl { url: url.into() },
        issuer: "https://idp.example".into(),
        alg: None,
        kid: None,
        audiences: vec![],
        typ: None,
    }
}

fn kids(r: &RemoteJwks) -> Vec<String> {
    let mut v: Vec<String> = r.keys().iter().map(|k| k.kid.clone()).collect();
    v.sort();
    v
}

#[test]
fn a_fetch_installs_the_set_and_a_rotation_is_seen_on_refetch() {
    let server = JwksServer::start(jwks(&["k1"]));
    let mut r = RemoteJwks::new(source(&server.url), MIN_REFETCH);
    assert!(r.due(1000) && r.may_fetch(1000));
    r.mark_attempt(1000);
    assert_eq!(r.install(fetch(&r.source), 1000).added, ["k1"]);
    assert_eq!(kids(&r), ["k1"]);
    assert_eq!(r.keys()[0].alg, jsonwebtoken::Algorithm::ES256);
    server.set(200, jwks(&["k1", "k2"]));
    assert!(
        !r.may_fetch(1000 + MIN_REFETCH - 1),
        "refetch is rate-limited"
    );
    assert!(r.may_fetch(1000 + MIN_REFETCH));
    r.mark_attempt(1000 + MIN_REFETCH);
    let changes = r.install(fetch(&r.source), 1000 + MIN_REFETCH);
    assert_eq!(
        changes,
        KeyChanges {
            added: vec!["k2".into()],
            ..Default::default()
        }
    );
    assert_eq!(kids(&r), ["k1", "k2"]);
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
}

#[test]
fn a_failed_fetch_keeps_the_last_good_set() {
    let server = JwksServer::start(jwks(&["k1"]));
    let mut r = RemoteJwks::new(source(&server.url), MIN_REFETCH);
    r.install(fetch(&r.source), 10);
    for (status, body) in [
        (500, "oops".to_string()),
        (200, "not json".into()),
        (200, "{}".into()),
    ] {
        server.set(status, body);
        let result = fetch(&r.source);
        assert!(result.is_err());
        assert!(r.install(result, 20).is_empty());
        assert_eq!(kids(&r), ["k1"], "the last good set is kept");
        assert!(r.last_error.is_some());
    }
    assert_eq!(r.fetched_at(), Some(10));
}

#[test]
fn background_refresh_is_due_after_the_interval_only() {
    let server = JwksServer::start(jwks(&["k1"]));
    let mut r = RemoteJwks::new(source(&server.url), MIN_REFETCH);
    r.mark_attempt(100);
    r.install(fetch(&r.source), 100);
    assert!(!r.due(100 + REFRESH_EVERY - 1));
    assert!(r.due(100 + REFRESH_EVERY));
}

#[test]
fn an_unreachable_url_is_an_error_not_a_hang() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    drop(listener);
    assert!(fetch(&source(&url)).is_err());
}

#[test]
fn new_material_under_an_old_kid_is_installed_and_reported_replaced() {
    crate::tokens::ring_provider::install();
    let now = crate::clock::now();
    let old_key =
        jsonwebtoken::EncodingKey::from_ec_pem(include_bytes!("../testdata/p256.key.pem")).unwrap();
    let (new_pkcs8, new_point) = fresh_p256();
    let new_key = jsonwebtoken::EncodingKey::from_ec_der(&new_pkcs8);
    let policy = crate::tokens::validate::Policy::default();
    let check =
        |r: &RemoteJwks, t: &str| crate::tokens::validate::validate(t, &key_set(r), &policy, now);

    let server = JwksServer::start(jwks(&["rot", "steady"]));
    let mut r = RemoteJwks::new(source(&server.url), MIN_REFETCH);
    r.install(fetch(&r.source), 10);
    assert!(check(&r, &token("rot", &old_key, now)).is_ok());

    // The issuer replaces the key behind `rot`; `steady` stays as it was.
    let old_point = testdata_point();
    server.set(200, jwks_of(&[("rot", &new_point), ("steady", &old_point)]));
    let changes = r.install(fetch(&r.source), 10 + MIN_REFETCH);
    assert_eq!(
        changes,
        KeyChanges {
            replaced: vec!["rot".into()],
            ..Default::default()
        },
        "the same kids, but one key is new"
    );
    assert_eq!(changes.stale().collect::<Vec<_>>(), ["rot"]);
    assert!(check(&r, &token("rot", &new_key, now)).is_ok());
    assert_eq!(
        check(&r, &token("rot", &old_key, now)).unwrap_err(),
        crate::tokens::validate::Rejection::BadSignature,
        "the old key no longer verifies"
    );
    // The same document again changes nothing.
    assert!(r.install(fetch(&r.source), 10 + 2 * MIN_REFETCH).is_empty());
    // A removed kid is stale too.
    server.set(200, jwks_of(&[("rot", &new_point)]));
    let changes = r.install(fetch(&r.source), 10 + 3 * MIN_REFETCH);
    assert_eq!(changes.removed, ["steady"]);
    assert_eq!(changes.stale().collect::<Vec<_>>(), ["steady"]);
}

#[test]
fn same_key_compares_material_and_algorithm_not_only_the_kid() {
    crate::tokens::ring_provider::install();
    let (_, other) = fresh_p256();
    let parse = |doc: String| {
        source("http://unused")
            .doc_keys(&serde_json::from_str(&doc).unwrap(), None)
            .unwrap()
            .remove(0)
    };
    let a = parse(jwks(&["k"]));
    assert!(a.same_key(&parse(jwks(&["k"]))));
    assert!(!a.same_key(&parse(jwks_of(&[("k", &other)]))));
    assert!(!a.same_key(&parse(jwks(&["k2"]))));
    let mut es384 = a.clone();
    es384.alg = jsonwebtoken::Algorithm::ES384;
    assert!(!a.same_key(&es384));
}
