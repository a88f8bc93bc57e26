//! Trusting external issuers and API keys, configured from a TOML file, behind a real nginx:
//! a PEM key and a remote JWKS (served inside the namespace) verify tokens tokenwall never
//! issued; a key rotation at the issuer is picked up by the unknown-kid refetch; revoking an
//! external `kid` through the admin HTTP endpoint drops that key's tokens in the kernel, even
//! ones never seen; API keys authorize through the API-key header and, once removed, stop in
//! the kernel; an issuer replacing the key behind a `kid` is followed, old verifications
//! included. Needs root.

use std::{
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokenwall_tests::{
    Testbed,
    http::{curl, daemon_behind_gateway, forward_auth, gateway_get, gateway_get_with},
};

const PORT: u16 = 8080;
const API: &str = "127.0.0.1:7072";
const JWKS_PORT: u16 = 8099;
const EC_KEY: &str = include_str!("../../agent/src/tokens/testdata/p256.key.pem");
const EC_PUB: &str = include_str!("../../agent/src/tokens/testdata/p256.pub.pem");
const ADMIN: &str = "admin-credential-for-the-trust-test-0123456789";
const CONFIG_API_KEY: &str = "twk_from_the_config_file_0123456789";

/// A static file server (python3) inside the server namespace; killed on drop.
struct FileServer(Child);

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The test P-256 key's public JWK under `kid`.
fn jwk(kid: &str) -> Value {
    let body: String = EC_PUB.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap();
    let p = &der[der.len() - 64..];
    json!({ "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
            "x": B64.encode(&p[..32]), "y": B64.encode(&p[32..]) })
}

/// A token of an external issuer, signed with the test key.
fn external_token(kid: &str, iss: &str, sub: &str, typ: Option<&str>) -> String {
    tokenwall::tokens::ring_provider::install();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    h.typ = typ.map(str::to_string);
    let now = tokenwall::clock::now();
    let claims = json!({ "iss": iss, "sub": sub, "aud": "api", "exp": now + 600, "iat": now,
                         "jti": format!("{sub}-{}", now) });
    let key = EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap();
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

fn admin(tb: &Testbed, credential: Option<&str>, body: &Value) -> tokenwall_tests::http::Resp {
    let file = tb.work_dir().join("admin.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let hdr = tb.work_dir().join("admin.hdr");
    std::fs::write(
        &hdr,
        credential
            .map(|c| format!("Authorization: Bearer {c}\n"))
            .unwrap_or_default(),
    )
    .unwrap();
    curl(
        tb.server_ns(),
        &[
            "-H",
            &format!("@{}", hdr.display()),
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("http://{API}/v1/admin"),
        ],
    )
}

#[test]
fn external_issuers_and_api_keys_from_a_config_file_behind_nginx() {
    let tb = Testbed::new().unwrap();
    let dir = tb.work_dir().to_path_buf();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let jwks_dir = dir.join("jwks");
    std::fs::create_dir_all(&jwks_dir).unwrap();
    let set_jwks = |kids: &[&str]| {
        let keys: Vec<Value> = kids.iter().map(|k| jwk(k)).collect();
        std::fs::write(
            jwks_dir.join("jwks.json"),
            json!({ "keys": keys }).to_string(),
        )
        .unwrap();
    };
    set_jwks(&["ext-1"]);
    let _jwks_server = FileServer(
        tb.command_in(tb.server_ns(), "python3".as_ref())
            .args([
                "-m",
                "http.server",
                &JWKS_PORT.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(&jwks_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = format!(
        r#"
[process]
admin_token_file = "{admin}"

[enforcement]
api_key_header = "X-Api-Key"

[tokens]
jwks_min_refetch = 1

[[clients]]
id = "ops"
secret_file = "{secret}"
scopes = ["orders:read"]

[[keys]]
pem = "{pem}"
alg = "ES256"
kid = "pem-1"
issuer = "https://pem.test"

[[keys]]
jwks_url = "http://127.0.0.1:{JWKS_PORT}/jwks.json"
issuer = "https://idp.test"
audiences = ["api"]

[[api_keys]]
name = "partner"
key_file = "{apikey}"
scopes = ["reports:read"]
"#,
        admin = write("admin.token", ADMIN),
        secret = write("ops.secret", "ops-secret-0123456789abcdef"),
        pem = write("pem.pub", EC_PUB),
        apikey = write("partner.key", CONFIG_API_KEY),
    );
    let config_path = write("tokenwall.toml", &config);
    let (_d, gw) = daemon_behind_gateway(&tb, PORT, API, &["--config", &config_path]);
    let get = |path: &str, token: &str| gateway_get(&tb, PORT, path, Some(token));

    // The JWKS is fetched in the background at start.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let keys = tb.cli_json(&["keys", "list", "--json"]);
        let remote = keys
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["url"].is_string());
        if remote.is_some_and(|r| r["kids"] == json!(["ext-1"])) {
            break;
        }
        assert!(Instant::now() < deadline, "JWKS never fetched: {keys}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Tokens of both external issuers pass; a token naming the wrong issuer for its key fails.
    let r = get(
        "/ext-1",
        &external_token("ext-1", "https://idp.test", "eve", None),
    );
    assert_eq!((r.status, r.body.trim()), (200, "hello eve ()"), "{r:?}");
    let r = get(
        "/pem-1",
        &external_token("pem-1", "https://pem.test", "pam", None),
    );
    assert_eq!((r.status, r.body.trim()), (200, "hello pam ()"), "{r:?}");
    let r = get(
        "/wrong-iss",
        &external_token("pem-1", "https://idp.test", "x", None),
    );
    assert_eq!(r.status, 401, "{r:?}");
    // A partner's `sub: admin` is told apart from this host's by X-Auth-Issuer.
    let r = forward_auth(
        &tb,
        API,
        &external_token("ext-1", "https://idp.test", "admin", None),
    );
    assert_eq!(
        (
            r.status,
            r.header("x-auth-subject"),
            r.header("x-auth-issuer")
        ),
        (200, Some("admin"), Some("https://idp.test")),
        "{r:?}"
    );

    // The issuer rotates to ext-2: the first token naming it triggers one refetch and passes.
    set_jwks(&["ext-1", "ext-2"]);
    std::thread::sleep(Duration::from_millis(1100));
    let seen = external_token("ext-2", "https://idp.test", "rita", None);
    assert_eq!(get("/ext-2", &seen).status, 200);

    // Admin over HTTP needs the admin credential.
    let revoke_kid = json!({ "cmd": "revoke_by", "kind": "kid", "name": "ext-2" });
    assert_eq!(admin(&tb, None, &revoke_kid).status, 401);
    assert_eq!(admin(&tb, Some("not-the-admin"), &revoke_kid).status, 401);
    let r = admin(&tb, Some(ADMIN), &revoke_kid);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["data"]["headers_pushed"], 1, "{r:?}");

    // A never-seen token of ext-2 with the same header is dropped in the kernel.
    let hits = tb.counter("revoked_key_hits");
    let fresh = external_token("ext-2", "https://idp.test", "sam", None);
    let r = get("/ext-2-fresh", &fresh);
    assert!(r.was_reset(), "expected a kernel reset, got {r:?}");
    assert!(gw.never_saw("/ext-2-fresh"));
    std::thread::sleep(Duration::from_millis(100));
    assert!(tb.counter("revoked_key_hits") > hits);
    // A header not seen before (typ added) is refused by userspace once, and learned: the
    // next token under that header stops in the kernel.
    let r = get(
        "/ext-2-typ",
        &external_token("ext-2", "https://idp.test", "t1", Some("JWT")),
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = get(
        "/ext-2-typ-again",
        &external_token("ext-2", "https://idp.test", "t2", Some("JWT")),
    );
    assert!(
        r.was_reset(),
        "expected the learned header to drop it, got {r:?}"
    );
    assert!(gw.never_saw("/ext-2-typ-again"));
    // A subject rule learns tokens it has never seen: refused by userspace once, then stopped
    // in the kernel.
    let zed = external_token("ext-1", "https://idp.test", "zed", None);
    tb.cli_json(&["revoke", "--sub", "zed", "--json"]);
    assert_eq!(get("/zed-first", &zed).status, 401);
    let r = get("/zed-second", &zed);
    assert!(
        r.was_reset(),
        "expected the learned token to stop in the kernel, got {r:?}"
    );
    assert!(gw.never_saw("/zed-second"));
    // ext-1 is untouched.
    assert_eq!(
        get(
            "/ext-1-after",
            &external_token("ext-1", "https://idp.test", "eve", None)
        )
        .status,
        200
    );

    // The config's client can get tokens.
    let r = curl(
        tb.server_ns(),
        &[
            "-u",
            "ops:ops-secret-0123456789abcdef",
            "-d",
            "grant_type=client_credentials",
            &format!("http://{API}/oauth2/token"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");

    // API keys: from the config, and from the CLI; a removed key stops in the kernel.
    let with_key =
        |path: &str, key: &str| gateway_get_with(&tb, PORT, path, &[format!("X-Api-Key: {key}")]);
    let r = with_key("/partner", CONFIG_API_KEY);
    assert_eq!(
        (r.status, r.body.trim()),
        (200, "hello partner (reports:read)"),
        "{r:?}"
    );
    assert_eq!(
        with_key("/bogus-key", "twk_not_a_registered_key_000000").status,
        401
    );
    let hdr = tb.work_dir().join("apikey.hdr");
    std::fs::write(&hdr, format!("X-Api-Key: {CONFIG_API_KEY}\n")).unwrap();
    let r = curl(
        tb.server_ns(),
        &[
            "-H",
            &format!("@{}", hdr.display()),
            &format!("http://{API}/v1/auth"),
        ],
    );
    assert_eq!(
        (
            r.status,
            r.header("x-auth-subject"),
            r.header("x-auth-issuer")
        ),
        (200, Some("partner"), Some("tokenwall:api-key")),
        "{r:?}"
    );
    let added = tb.cli_json(&["apikeys", "add", "robot", "--scope", "metrics", "--json"]);
    let robot = added["api_key"].as_str().unwrap().to_string();
    assert!(robot.starts_with("twk_"));
    let r = with_key("/robot", &robot);
    assert_eq!(
        (r.status, r.body.trim()),
        (200, "hello robot (metrics)"),
        "{r:?}"
    );
    let listed = tb.cli_json(&["apikeys", "list", "--json"]).to_string();
    assert!(!listed.contains(&robot), "the list must not show keys");
    tb.cli_json(&["apikeys", "remove", "robot", "--json"]);
    let r = with_key("/robot-removed", &robot);
    assert!(r.was_reset(), "expected a kernel reset, got {r:?}");
    assert!(gw.never_saw("/robot-removed"));

    // Removing the JWKS URL: its keys are no longer trusted.
    tb.cli_json(&[
        "keys",
        "remove",
        &format!("http://127.0.0.1:{JWKS_PORT}/jwks.json"),
        "--json",
    ]);
    let r = get(
        "/ext-1-gone",
        &external_token("ext-1", "https://idp.test", "eve", None),
    );
    assert_eq!(r.status, 401, "{r:?}");
}

/// A fresh P-256 key: its signing key and its public JWK under `kid`.
fn fresh_key(kid: &str) -> (EncodingKey, Value) {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING as ALG, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ALG, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ALG, pkcs8.as_ref(), &rng).unwrap();
    let p = &pair.public_key().as_ref()[1..];
    let jwk = json!({ "kty": "EC", "crv": "P-256", "use": "sig", "kid": kid,
                      "x": B64.encode(&p[..32]), "y": B64.encode(&p[32..]) });
    (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
}

fn signed(key: &EncodingKey, kid: &str, sub: &str) -> String {
    tokenwall::tokens::ring_provider::install();
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    let now = tokenwall::clock::now();
    let claims = json!({ "iss": "https://rot.test", "sub": sub, "exp": now + 600, "iat": now,
                         "jti": format!("{sub}-{now}") });
    jsonwebtoken::encode(&h, &claims, key).unwrap()
}

#[test]
fn a_key_replaced_under_its_kid_at_the_issuer_is_trusted_and_the_old_one_refused_even_cached() {
    const ROT_API: &str = "127.0.0.1:7073";
    let tb = Testbed::new().unwrap();
    let (old_key, old_jwk) = fresh_key("rot");
    let (new_key, new_jwk) = fresh_key("rot");
    let doc = Arc::new(Mutex::new(json!({ "keys": [old_jwk] }).to_string()));
    let served = doc.clone();
    let jwks = tb
        .serve_in(tb.server_ns(), "127.0.0.1:8097", move |_| {
            (200, "application/json", served.lock().unwrap().clone())
        })
        .unwrap();
    let config = tb.work_dir().join("rot.toml");
    std::fs::write(
        &config,
        format!(
            "[tokens]\njwks_min_refetch = 1\n[[keys]]\njwks_url = \"http://{}/jwks.json\"\nissuer = \"https://rot.test\"\n",
            jwks.addr
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let _d = tb
        .start_daemon(&["--http", ROT_API, "--port", "8080", "--config", &config])
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while jwks.heads_for("/jwks.json").is_empty() {
        assert!(Instant::now() < deadline, "the JWKS was never fetched");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Verified with the old key, and cached.
    let before = signed(&old_key, "rot", "before");
    for _ in 0..2 {
        let r = forward_auth(&tb, ROT_API, &before);
        assert_eq!(r.status, 200, "{r:?}");
    }

    // The issuer replaces the key behind `rot`. A token of the new key fails its signature
    // against the old one, which refetches the JWKS (once a second here): poll until it passes.
    *doc.lock().unwrap() = json!({ "keys": [new_jwk] }).to_string();
    let after = signed(&new_key, "rot", "after");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = forward_auth(&tb, ROT_API, &after);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 401, "{r:?}");
        assert!(
            Instant::now() < deadline,
            "the new key was never trusted: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(jwks.heads_for("/jwks.json").len() >= 2);

    // The old key's tokens are refused: the cached one and a fresh one.
    for t in [before, signed(&old_key, "rot", "fresh-old")] {
        let r = forward_auth(&tb, ROT_API, &t);
        assert_eq!(r.status, 401, "{r:?}");
        let challenge = r.header("www-authenticate").unwrap_or_default();
        assert!(challenge.contains("bad signature"), "{r:?}");
    }
}
