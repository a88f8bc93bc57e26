//! What an outsider tried against tokenwall, each attack kept as a test: a second ECDSA
//! signature of a revoked token, the same claims signed again, parallel refreshes of one
//! refresh token, and forged headers under a revoked signing key followed by a restart.
//! Needs root.

use std::sync::{Arc, Barrier};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokenwall_tests::{
    Testbed,
    http::{Resp, client_credentials, curl, daemon_behind_gateway, forward_auth, gateway_get},
};

const PORT: u16 = 8080;
const API: &str = "127.0.0.1:7073";
const EC_KEY: &str = include_str!("../../agent/src/tokens/testdata/p256.key.pem");
const EC_PUB: &str = include_str!("../../agent/src/tokens/testdata/p256.pub.pem");
/// Order of the P-256 group (SEC 2, section 2.4.2).
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The same ES256 token with `s` replaced by `n - s`: a second valid signature.
fn flip_s(token: &str) -> String {
    let (input, sig) = token.rsplit_once('.').unwrap();
    let raw = B64.decode(sig).unwrap();
    let (r, s) = raw.split_at(32);
    let mut out = r.to_vec();
    let mut flipped = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = P256_N[i] as i16 - s[i] as i16 - borrow;
        borrow = i16::from(d < 0);
        flipped[i] = d.rem_euclid(256) as u8;
    }
    out.extend_from_slice(&flipped);
    format!("{input}.{}", B64.encode(out))
}

fn introspect(tb: &Testbed, token: &str) -> Value {
    let out = tb.cli(
        &["introspect", "--token", "-", "--json"],
        Some(token.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn revoked(r: &Resp) -> bool {
    r.status == 401
        && r.header("www-authenticate")
            .is_some_and(|h| h.contains("revoked"))
}

#[test]
fn a_second_signature_or_a_re_signing_of_a_revoked_token_is_refused() {
    let tb = Testbed::new().unwrap();
    let (_d, _gw) = daemon_behind_gateway(&tb, PORT, API, &[]);
    let secret = tb.cli_json(&["clients", "add", "svc", "--json"])["client_secret"]
        .as_str()
        .unwrap()
        .to_string();
    let token = client_credentials(&tb, API, &format!("svc:{secret}"));
    let flipped = flip_s(&token);
    assert_eq!(
        forward_auth(&tb, API, &flipped).status,
        200,
        "the second signature is valid"
    );
    let reply = tb.revoke(&token).unwrap();
    assert_eq!(reply["in_kernel"], true, "{reply}");
    assert!(
        reply["jti_rule"].is_string(),
        "a JWT's jti is revoked too: {reply}"
    );
    for (name, variant) in [
        ("original", token.clone()),
        ("(r, n - s)", flipped.clone()),
        ("padded signature", format!("{token}==")),
    ] {
        let r = forward_auth(&tb, API, &variant);
        assert!(revoked(&r), "{name}: {r:?}");
        assert_eq!(introspect(&tb, &variant)["active"], false, "{name}");
    }
    // Every variant has the revoked token's fingerprint.
    let fp = |t: &str| {
        let out = tb.cli(
            &["fingerprint", "--token", "-", "--json"],
            Some(t.as_bytes()),
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["fingerprint"].clone()
    };
    assert_eq!(fp(&flipped), reply["fingerprint"]);

    // The same claims signed again by a trusted issuer (another signature input): the jti rule
    // refuses it, for that issuer only.
    let pem = tb.work_dir().join("ext.pem");
    std::fs::write(&pem, EC_PUB).unwrap();
    for (kid, iss) in [
        ("ext-1", "https://partner.example"),
        ("ext-2", "https://other.example"),
    ] {
        let out = tb.cli(
            &[
                "keys",
                "add",
                "--pem",
                &pem.display().to_string(),
                "--issuer",
                iss,
                "--alg",
                "ES256",
                "--kid",
                kid,
                "--audience",
                "api",
            ],
            None,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    tokenwall::tokens::ring_provider::install();
    let now = tokenwall::clock::now();
    let sign = |kid: &str, iss: &str, iat: u64| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        let claims = json!({ "iss": iss, "sub": "bob", "aud": "api", "exp": now + 600,
                             "iat": iat, "jti": "partner-jti-1" });
        jsonwebtoken::encode(
            &h,
            &claims,
            &EncodingKey::from_ec_pem(EC_KEY.as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let first = sign("ext-1", "https://partner.example", now);
    let again = sign("ext-1", "https://partner.example", now - 1);
    let other_issuer = sign("ext-2", "https://other.example", now);
    assert_eq!(forward_auth(&tb, API, &again).status, 200);
    tb.revoke(&first).unwrap();
    assert!(
        revoked(&forward_auth(&tb, API, &again)),
        "re-signed claims pass"
    );
    let r = forward_auth(&tb, API, &other_issuer);
    assert_eq!(
        r.status, 200,
        "another issuer's jti is another token: {r:?}"
    );
}

/// A login service: sessions and refreshes with HTTP Basic credentials.
struct Login<'a> {
    tb: &'a Testbed,
    basic: String,
}

impl Login<'_> {
    fn session(&self, sub: &str) -> Value {
        let file = self.tb.work_dir().join(format!("session-{sub}.json"));
        std::fs::write(
            &file,
            json!({ "sub": sub, "scope": "orders:read" }).to_string(),
        )
        .unwrap();
        let r = curl(
            self.tb.server_ns(),
            &[
                "-u",
                &self.basic,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &format!("@{}", file.display()),
                &format!("http://{API}/v1/sessions"),
            ],
        );
        assert_eq!(r.status, 200, "{r:?}");
        r.json()
    }

    fn refresh(&self, refresh_token: &str) -> Resp {
        curl(
            self.tb.server_ns(),
            &[
                "-u",
                &self.basic,
                "-d",
                "grant_type=refresh_token",
                "--data-urlencode",
                &format!("refresh_token={refresh_token}"),
                &format!("http://{API}/oauth2/token"),
            ],
        )
    }
}

fn login(tb: &Testbed) -> Login<'_> {
    let added = tb.cli_json(&[
        "clients",
        "add",
        "login",
        "--scope",
        "sessions",
        "--scope",
        "orders:read",
        "--json",
    ]);
    Login {
        tb,
        basic: format!("login:{}", added["client_secret"].as_str().unwrap()),
    }
}

#[test]
fn parallel_refreshes_of_one_token_never_leave_a_live_access_token() {
    let tb = Testbed::new().unwrap();
    let (_d, _gw) = daemon_behind_gateway(&tb, PORT, API, &[]);
    let login = Arc::new(login(&tb));
    for round in 0..100 {
        let session = login.session(&format!("user-{round}"));
        let refresh = session["refresh_token"].as_str().unwrap().to_string();
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<Resp> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let (barrier, refresh, login) = (barrier.clone(), refresh.clone(), &login);
                    s.spawn(move || {
                        barrier.wait();
                        login.refresh(&refresh)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let ok: Vec<&Resp> = answers.iter().filter(|r| r.status == 200).collect();
        let reused = answers
            .iter()
            .filter(|r| r.status == 400 && r.body.contains("reused"))
            .count();
        assert_eq!((ok.len(), reused), (1, 1), "round {round}: {answers:?}");
        // The rotation's access token belongs to a family the reuse ended: refused, and so is
        // the session's first access token and the rotation's refresh token.
        let rotated = ok[0].json();
        for token in [&rotated["access_token"], &session["access_token"]] {
            let r = forward_auth(&tb, API, token.as_str().unwrap());
            assert!(
                revoked(&r),
                "round {round}: a live token survived the reuse: {r:?}"
            );
        }
        let r = login.refresh(rotated["refresh_token"].as_str().unwrap());
        assert_eq!(r.status, 400, "round {round}: {r:?}");
    }
}

#[test]
fn the_grace_window_allows_one_extra_rotation_and_no_more() {
    let tb = Testbed::new().unwrap();
    let (_d, _gw) = daemon_behind_gateway(&tb, PORT, API, &["--refresh-grace", "60"]);
    let login = login(&tb);
    let session = login.session("carol");
    let first = session["refresh_token"].as_str().unwrap();
    assert_eq!(login.refresh(first).status, 200);
    // The response was lost: the retry with the retired token rotates once more.
    let retry = login.refresh(first);
    assert_eq!(retry.status, 200, "{retry:?}");
    let r = login.refresh(first);
    assert!(
        r.status == 400 && r.body.contains("reused"),
        "a third use: {r:?}"
    );
    let r = forward_auth(&tb, API, retry.json()["access_token"].as_str().unwrap());
    assert!(revoked(&r), "{r:?}");
}

/// Sends `n` forward-auth requests with forged headers (`{"alg":"ES256","kid":K,"n":i}`) over
/// one keep-alive connection from the server namespace; returns the status counts.
fn forged_flood(tb: &Testbed, kid: &str, n: usize) -> Value {
    let script = format!(
        r#"
import base64, http.client, json, collections
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
c = http.client.HTTPConnection("{API}", timeout=10)
seen = collections.Counter()
for i in range({n}):
    h = b64(json.dumps({{"alg": "ES256", "kid": "{kid}", "n": i}}).encode())
    c.request("GET", "/v1/auth", headers={{"Authorization": "Bearer " + h + ".e30.AAAA"}})
    r = c.getresponse(); r.read(); seen[str(r.status)] += 1
print(json.dumps(seen))
"#
    );
    let out = tb
        .run_in(tb.server_ns(), &["python3", "-c", &script])
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metric(tb: &Testbed, series: &str) -> f64 {
    let r = curl(tb.server_ns(), &[&format!("http://{API}/metrics")]);
    tokenwall_tests::http::sample(&r.body, series).unwrap_or(0.0)
}

#[test]
fn forged_headers_under_a_revoked_kid_learn_nothing_and_the_daemon_restarts() {
    let tb = Testbed::new().unwrap();
    let (mut d, gw) = daemon_behind_gateway(&tb, PORT, API, &[]);
    let secret = tb.cli_json(&["clients", "add", "svc", "--json"])["client_secret"]
        .as_str()
        .unwrap()
        .to_string();
    // A genuine token of the key, never presented anywhere before the key is revoked.
    let genuine = client_credentials(&tb, API, &format!("svc:{secret}"));
    let header: Value =
        serde_json::from_slice(&B64.decode(genuine.split('.').next().unwrap()).unwrap()).unwrap();
    let kid = header["kid"].as_str().unwrap().to_string();
    tb.cli_json(&["revoke", "--kid", &kid, "--json"]);
    let headers_before = metric(&tb, "tokenwall_revoked_entries{where=\"kernel_headers\"}");
    let seen = forged_flood(&tb, &kid, 5_000);
    assert_eq!(
        seen,
        json!({ "401": 5000 }),
        "every forged token is refused"
    );
    assert_eq!(
        metric(&tb, "tokenwall_revoked_entries{where=\"kernel_headers\"}"),
        headers_before,
        "nothing was learned from unverified tokens"
    );
    d.stop();
    let _d = tb
        .start_daemon(&[
            "--hook", "xdp", "--action", "reset", "--port", "8080", "--http", API,
        ])
        .expect("the daemon restarts");
    let r = gateway_get(&tb, PORT, "/genuine-of-revoked-key", Some(&genuine));
    assert!(r.was_reset(), "expected a kernel reset, got {r:?}");
    assert!(gw.never_saw("/genuine-of-revoked-key"));
    // Userspace refuses it too, by its header segment.
    let r = forward_auth(&tb, API, &genuine);
    assert!(revoked(&r), "{r:?}");
}

/// Sends one control request over the daemon's socket and returns the reply's `data`.
fn control(tb: &Testbed, req: &Value) -> Value {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(tb.socket()).unwrap();
    writeln!(s, "{req}").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply["ok"], true, "{reply}");
    reply["data"].clone()
}

#[test]
fn a_full_kernel_map_keeps_the_daemon_running_and_restarting_and_userspace_refuses_the_overflow() {
    const SIZE: usize = 1024;
    let tb = Testbed::new().unwrap();
    let size = SIZE.to_string();
    let args = [
        "--hook",
        "xdp",
        "--action",
        "reset",
        "--port",
        "8080",
        "--http",
        API,
        "--max-revoked",
        &size,
    ];
    let mut d = tb.start_daemon(&args).unwrap();
    let _gw = tb.start_gateway(PORT, API).unwrap();
    let tokens: Vec<String> = (0..SIZE + 40)
        .map(|i| format!("tw-full-{i:05}-abcdef"))
        .collect();
    let mut in_kernel = 0;
    for t in &tokens {
        let r = control(
            &tb,
            &json!({ "cmd": "revoke", "token": { "token": t }, "reason": "fill" }),
        );
        in_kernel += usize::from(r["in_kernel"] == true);
    }
    assert_eq!(in_kernel, SIZE, "the map takes exactly its size");
    let status = tb.status().unwrap();
    assert_eq!(status["kernel_overflow"], 40, "{status}");
    assert_eq!(
        metric(&tb, "tokenwall_alerts_total{rule=\"kernel_map_full\"}"),
        1.0
    );
    assert_eq!(metric(&tb, "tokenwall_kernel_overflow"), 40.0);
    let (first, last) = (&tokens[0], tokens.last().unwrap());
    let check = |t: &str| forward_auth(&tb, API, t);
    assert!(revoked(&check(last)), "userspace refuses the overflow");
    // The first is dropped in the kernel; the last reaches the gateway, which refuses it.
    assert!(gateway_get(&tb, PORT, "/first", Some(first)).was_reset());
    let r = gateway_get(&tb, PORT, "/last", Some(last));
    assert_eq!(r.status, 401, "{r:?}");
    // A restart over the full map starts, reports the same overflow, and still refuses.
    d.stop();
    let _d = tb
        .start_daemon(&args)
        .expect("the daemon restarts over a full map");
    let status = tb.status().unwrap();
    assert_eq!(status["kernel_overflow"], 40, "{status}");
    assert_eq!(status["kernel_entries"], SIZE as u64, "{status}");
    assert!(revoked(&check(last)));
    assert!(gateway_get(&tb, PORT, "/first-again", Some(first)).was_reset());
}
