//! tokenwall as the authorizer of a real nginx gateway (`auth_request`, the shipped example
//! config), with a real upstream: issue a token with client credentials, call the API through
//! nginx, see RFC 6750 challenges, revoke through RFC 7009 and by `jti`, and see the next request
//! stopped in the kernel before nginx logs it. Needs root.

use std::time::Duration;

use tokenwall_tests::{
    Testbed,
    http::{Resp, curl, daemon_behind_gateway, forward_auth, gateway_get, gateway_get_with},
    nsserver::header_values,
};

const PORT: u16 = 8080;
const API: &str = "127.0.0.1:7070";

fn through_gateway(tb: &Testbed, path: &str, token: Option<&str>) -> Resp {
    gateway_get(tb, PORT, path, token)
}

/// A second copy of the example gateway proxies to a recording upstream written here: a
/// client's own `X-Auth-*` headers never arrive, tokenwall's (with `X-Auth-Issuer`) do, once.
fn identity_headers_reach_the_upstream_only_from_tokenwall(tb: &Testbed, access: &str) {
    const REC_PORT: u16 = 8081;
    let upstream = tb
        .serve_in(tb.server_ns(), "127.0.0.1:9100", |_| {
            (200, "text/plain", "recorded\n".into())
        })
        .unwrap();
    let _gw = tb
        .start_gateway_to(
            REC_PORT,
            API,
            &upstream.addr.to_string(),
            "127.0.0.1:9101",
            "gateway-rec",
        )
        .unwrap();
    let forged = [
        "X-Auth-Subject: admin".to_string(),
        "X-Auth-Issuer: https://evil.test".into(),
        "X-Auth-Scopes: everything".into(),
        "X-Auth-User: root".into(),
    ];
    let mut with_token = forged.to_vec();
    with_token.push(format!("Authorization: Bearer {access}"));
    let r = gateway_get_with(tb, REC_PORT, "/spoof", &with_token);
    assert_eq!((r.status, r.body.trim()), (200, "recorded"), "{r:?}");
    let heads = upstream.heads_for("/spoof");
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = &heads[0];
    assert_eq!(header_values(head, "x-auth-subject"), ["billing"], "{head}");
    assert_eq!(
        header_values(head, "x-auth-issuer"),
        [format!("http://{API}")],
        "{head}"
    );
    assert_eq!(
        header_values(head, "x-auth-scopes"),
        ["orders:read"],
        "{head}"
    );
    assert_eq!(header_values(head, "x-auth-client"), ["billing"], "{head}");
    assert!(header_values(head, "x-auth-user").is_empty(), "{head}");
    assert!(header_values(head, "authorization").is_empty(), "{head}");
    for value in ["admin", "evil.test", "everything", "root"] {
        assert!(
            !head.contains(value),
            "a client value reached the upstream: {head}"
        );
    }
    // Without a token the forged identity is refused before the upstream.
    let r = gateway_get_with(tb, REC_PORT, "/spoof-anon", &forged);
    assert_eq!(r.status, 401, "{r:?}");
    assert!(upstream.heads_for("/spoof-anon").is_empty());
}

fn token_for(tb: &Testbed, id: &str, secret: &str) -> serde_json::Value {
    let r = curl(
        tb.server_ns(),
        &[
            "-u",
            &format!("{id}:{secret}"),
            "-d",
            "grant_type=client_credentials",
            &format!("http://{API}/oauth2/token"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("cache-control"), Some("no-store"));
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn nginx_authorizes_through_tokenwall_and_a_revoked_token_stops_in_the_kernel() {
    let tb = Testbed::new().unwrap();
    let (_d, gw) = daemon_behind_gateway(&tb, PORT, API, &[]);

    let out = tb.cli(
        &[
            "clients",
            "add",
            "billing",
            "--scope",
            "orders:read",
            "--json",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let secret = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["client_secret"]
        .as_str()
        .unwrap()
        .to_string();

    // Client authentication and grant errors (RFC 6749 section 5.2).
    let bad = curl(
        tb.server_ns(),
        &[
            "-u",
            "billing:wrong",
            "-d",
            "grant_type=client_credentials",
            &format!("http://{API}/oauth2/token"),
        ],
    );
    assert_eq!(bad.status, 401);
    assert!(bad.body.contains("invalid_client"));
    let bad = curl(
        tb.server_ns(),
        &[
            "-u",
            &format!("billing:{secret}"),
            "-d",
            "grant_type=password",
            &format!("http://{API}/oauth2/token"),
        ],
    );
    assert!(bad.body.contains("unsupported_grant_type"), "{bad:?}");
    let bad = curl(
        tb.server_ns(),
        &[
            "-u",
            &format!("billing:{secret}"),
            "-d",
            "grant_type=client_credentials",
            "-d",
            "scope=admin",
            &format!("http://{API}/oauth2/token"),
        ],
    );
    assert!(bad.body.contains("invalid_scope"), "{bad:?}");

    let grant = token_for(&tb, "billing", &secret);
    assert_eq!(grant["token_type"], "Bearer");
    assert!(
        grant.get("refresh_token").is_none(),
        "client_credentials issues no refresh token"
    );
    let access = grant["access_token"].as_str().unwrap().to_string();

    // Through nginx: served, and the upstream got the identity.
    let r = through_gateway(&tb, "/orders", Some(&access));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.trim(), "hello billing (orders:read)");

    identity_headers_reach_the_upstream_only_from_tokenwall(&tb, &access);

    // RFC 6750: no credentials -> 401 with a bare challenge; a bad token -> invalid_token.
    let r = through_gateway(&tb, "/anon", None);
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer realm=\"tokenwall\"")
    );
    let forged = format!("{}x", &access[..access.len() - 1]);
    let r = through_gateway(&tb, "/forged", Some(&forged));
    assert_eq!(r.status, 401);
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains("bad signature"),
        "{challenge}"
    );
    assert!(
        !challenge.contains(&forged[..20]),
        "the challenge must not echo the token"
    );

    // Envoy's ext_authz HTTP service calls `/v1/auth` + the original path with the original
    // method; Traefik's ForwardAuth calls `/v1/auth` with GET. Both get the identity headers.
    let hdr = tb.work_dir().join("direct.hdr");
    std::fs::write(&hdr, format!("Authorization: Bearer {access}\n")).unwrap();
    for (method, path) in [("POST", "/v1/auth/orders/42?x=1"), ("GET", "/v1/auth")] {
        let r = curl(
            tb.server_ns(),
            &[
                "-X",
                method,
                "-H",
                &format!("@{}", hdr.display()),
                &format!("http://{API}{path}"),
            ],
        );
        assert_eq!(r.status, 200, "{method} {path}: {r:?}");
        assert_eq!(r.header("x-auth-client"), Some("billing"));
        assert_eq!(r.header("x-auth-scopes"), Some("orders:read"));
    }

    // Introspection (RFC 7662) says active.
    let intro = |t: &str| {
        let r = curl(
            tb.server_ns(),
            &[
                "-u",
                &format!("billing:{secret}"),
                "--data-urlencode",
                &format!("token={t}"),
                &format!("http://{API}/oauth2/introspect"),
            ],
        );
        serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
    };
    let before = intro(&access);
    assert_eq!(
        (before["active"].as_bool(), before["client_id"].as_str()),
        (Some(true), Some("billing"))
    );

    // Revoke through RFC 7009; unknown tokens are answered 200 too.
    let r = curl(
        tb.server_ns(),
        &[
            "-u",
            &format!("billing:{secret}"),
            "--data-urlencode",
            "token=not-a-token",
            &format!("http://{API}/oauth2/revoke"),
        ],
    );
    assert_eq!(r.status, 200);
    let r = curl(
        tb.server_ns(),
        &[
            "-u",
            &format!("billing:{secret}"),
            "--data-urlencode",
            &format!("token={access}"),
            "-d",
            "token_type_hint=access_token",
            &format!("http://{API}/oauth2/revoke"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(intro(&access)["active"], false);

    // The next request is stopped in the kernel: reset, and nginx never logs it.
    let r = through_gateway(&tb, "/after-revoke", Some(&access));
    assert!(r.exit == 56 || r.status == 0, "expected a reset, got {r:?}");
    assert!(gw.saw_path("/orders"));
    assert!(
        gw.never_saw("/after-revoke"),
        "the revoked request reached nginx"
    );

    // Revocation by jti: a fresh token, revoked from the CLI by its id.
    let second = token_for(&tb, "billing", &secret)["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(through_gateway(&tb, "/second", Some(&second)).status, 200);
    let r = forward_auth(&tb, API, &second);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-auth-client"), Some("billing"));
    let jti = intro(&second)["jti"].as_str().unwrap().to_string();
    let out = tb.cli(&["revoke", "--jti", &jti, "--json"], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = through_gateway(&tb, "/second-after", Some(&second));
    assert!(r.exit == 56 || r.status == 0, "expected a reset, got {r:?}");
    assert!(gw.never_saw("/second-after"));
    // Asked directly, past the kernel, the daemon refuses the token too, although its
    // verification is cached: the cached answer is never served past a revocation.
    let r = forward_auth(&tb, API, &second);
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.contains("error=\"invalid_token\"") && challenge.contains("revoked"),
        "{r:?}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(tb.counter("reset") >= 2);

    // The JWKS publishes the signing key the tokens name.
    let jwks = curl(
        tb.server_ns(),
        &[&format!("http://{API}/.well-known/jwks.json")],
    );
    let jwks: serde_json::Value = serde_json::from_str(&jwks.body).unwrap();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert_eq!(jwks["keys"][0]["kty"], "EC");
}
