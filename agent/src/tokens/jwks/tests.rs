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

fn jwks(kids: &[&str]) -> String {
    let d = {
        let pem = include_str!("../testdata/p256.pub.pem");
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
    };
    let p = &d[d.len() - 64..];
    let keys: Vec<_> = kids
        .iter()
        .map(|k| {
            json!({ "kty": "EC", "crv": "P-256", "kid": k, "use": "sig",
                         "x": B64.encode(&p[..32]), "y": B64.encode(&p[32..]) })
        })
        .collect();
    json!({ "keys": keys }).to_string()
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
    assert!(r.install(fetch(&r.source), 1000));
    assert_eq!(kids(&r), ["k1"]);
    assert_eq!(r.keys()[0].alg, jsonwebtoken::Algorithm::ES256);
    server.set(200, jwks(&["k1", "k2"]));
    assert!(
        !r.may_fetch(1000 + MIN_REFETCH - 1),
        "refetch is rate-limited"
    );
    assert!(r.may_fetch(1000 + MIN_REFETCH));
    r.mark_attempt(1000 + MIN_REFETCH);
    assert!(r.install(fetch(&r.source), 1000 + MIN_REFETCH));
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
        assert!(!r.install(result, 20));
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
