//! Trusting external issuers and API keys, configured from a TOML file, behind a real nginx:
//! a PEM key and a remote JWKS (served inside the namespace) verify tokens tokenwall never
//! issued; a key rotation at the issuer is picked up by the unknown-kid refetch; revoking an
//! external `kid` through the admin HTTP endpoint drops that key's tokens in the kernel, even
//! ones never seen; API keys authorize through the API-key header and, once removed, stop in
//! the kernel. Needs root.

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokenwall_tests::{
    Testbed,
    http::{curl, daemon_behind_gateway, gateway_get, gateway_get_with},
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
    let now = tokenwall::until::now();
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
api_key_header = "X-Api-Key"
admin_token_file = "{admin}"
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
