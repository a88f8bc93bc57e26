//! User sessions through a real nginx gateway (`auth_request` to tokenwall): a login service
//! opens a session, the API answers through nginx, a refresh rotates the pair, reuse of the old
//! refresh token revokes the whole family (stopped in the kernel, never logged by nginx), a
//! subject revocation ends every session of that subject, and revoking a signing key drops a
//! token of that key that was never presented before, by its header segment alone. Needs root.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use serde_json::{Value, json};
use tokenwall_tests::{
    Testbed,
    http::{Resp, curl, daemon_behind_gateway, gateway_get},
};

const PORT: u16 = 8080;
const API: &str = "127.0.0.1:7071";

struct Login<'a> {
    tb: &'a Testbed,
    basic: String,
}

impl Login<'_> {
    fn post_json(&self, method: &str, path: &str, body: &Value) -> Resp {
        let file = self.tb.work_dir().join("body.json");
        std::fs::write(&file, body.to_string()).unwrap();
        curl(
            self.tb.server_ns(),
            &[
                "-X",
                method,
                "-u",
                &self.basic,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &format!("@{}", file.display()),
                &format!("http://{API}{path}"),
            ],
        )
    }

    fn session(&self, sub: &str) -> Value {
        let r = self.post_json(
            "POST",
            "/v1/sessions",
            &json!({ "sub": sub, "scope": "orders:read", "claims": { "tier": "gold" } }),
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

fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

fn kid(jwt: &str) -> String {
    let header = jwt.split('.').next().unwrap();
    let h: Value = serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
    h["kid"].as_str().unwrap().to_string()
}

#[test]
fn sessions_refresh_reuse_subject_and_key_revocation_through_nginx() {
    let tb = Testbed::new().unwrap();
    let (_d, gw) = daemon_behind_gateway(&tb, PORT, API, &[]);
    let get = |path: &str, token: &str| gateway_get(&tb, PORT, path, Some(token));

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
    let login = Login {
        tb: &tb,
        basic: format!("login:{}", added["client_secret"].as_str().unwrap()),
    };
    let plain = tb.cli_json(&["clients", "add", "reports", "--json"]);
    let not_login = Login {
        tb: &tb,
        basic: format!("reports:{}", plain["client_secret"].as_str().unwrap()),
    };

    // Only a client with the sessions scope may open sessions; issuer claims are reserved.
    let r = not_login.post_json("POST", "/v1/sessions", &json!({ "sub": "mallory" }));
    assert_eq!(r.status, 403, "{r:?}");
    let r = login.post_json(
        "POST",
        "/v1/sessions",
        &json!({ "sub": "a", "claims": { "sub": "b" } }),
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = login.post_json(
        "POST",
        "/v1/sessions",
        &json!({ "sub": "a", "scope": "sessions" }),
    );
    assert!(r.body.contains("invalid_scope"), "{r:?}");

    // A session: access + refresh token; the API answers through nginx.
    let s1 = login.session("alice");
    let (access1, refresh1) = (
        s1["access_token"].as_str().unwrap().to_string(),
        s1["refresh_token"].as_str().unwrap().to_string(),
    );
    assert_eq!(claims(&access1)["tier"], "gold");
    assert_eq!(
        claims(&access1)["typ"],
        Value::Null,
        "typ is a header, not a claim"
    );
    let r = get("/alice-1", &access1);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.trim(), "hello alice (orders:read)");

    // The login service updates the subject's claims; the next refresh carries them.
    let r = login.post_json(
        "PUT",
        "/v1/sessions/alice/claims",
        &json!({ "tier": "platinum" }),
    );
    assert_eq!(r.status, 204, "{r:?}");

    // Refresh: a new pair; both access tokens still work.
    let r = login.refresh(&refresh1);
    assert_eq!(r.status, 200, "{r:?}");
    let s2 = r.json();
    let (access2, refresh2) = (
        s2["access_token"].as_str().unwrap().to_string(),
        s2["refresh_token"].as_str().unwrap().to_string(),
    );
    assert_ne!(refresh2, refresh1);
    assert_ne!(access2, access1);
    assert_eq!(claims(&access2)["tier"], "platinum");
    assert_eq!(claims(&access2)["sub"], "alice");
    assert_eq!(get("/alice-2", &access2).status, 200);

    // Another client cannot use alice's refresh token (and does not end her session by trying).
    let r = not_login.refresh(&refresh2);
    assert!(r.body.contains("invalid_grant"), "{r:?}");

    // Reuse of the retired refresh token: invalid_grant, and the whole family is revoked.
    let r = login.refresh(&refresh1);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("invalid_grant") && r.body.contains("reused"),
        "{r:?}"
    );
    let r = login.refresh(&refresh2);
    assert!(
        r.body.contains("invalid_grant"),
        "the family's live token must die too: {r:?}"
    );
    for (path, token) in [("/alice-reused-1", &access1), ("/alice-reused-2", &access2)] {
        let r = get(path, token);
        assert!(
            r.was_reset(),
            "expected a kernel reset for {path}, got {r:?}"
        );
        assert!(gw.never_saw(path), "{path} reached nginx");
    }

    // RFC 7009 with a refresh token ends its session: the family's access token stops in the
    // kernel and the refresh token is dead.
    let s3 = login.session("olga");
    let olga_access = s3["access_token"].as_str().unwrap().to_string();
    let olga_refresh = s3["refresh_token"].as_str().unwrap().to_string();
    let r = curl(
        tb.server_ns(),
        &[
            "-u",
            &login.basic,
            "--data-urlencode",
            &format!("token={olga_refresh}"),
            "-d",
            "token_type_hint=refresh_token",
            &format!("http://{API}/oauth2/revoke"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(login.refresh(&olga_refresh).body.contains("invalid_grant"));
    assert!(get("/olga-after", &olga_access).was_reset());
    assert!(gw.never_saw("/olga-after"));

    // Revocation by subject ends every session of bob, into the kernel at once.
    let b1 = login.session("bob");
    let b2 = login.session("bob");
    let carol = login.session("carol");
    let bob_access = b1["access_token"].as_str().unwrap().to_string();
    assert_eq!(get("/bob-1", &bob_access).status, 200);
    let out = tb.cli_json(&[
        "revoke",
        "--sub",
        "bob",
        "--reason",
        "password reset",
        "--json",
    ]);
    assert_eq!(out["sessions_revoked"], 2, "{out}");
    assert!(out["tokens_pushed"].as_u64().unwrap() >= 2, "{out}");
    assert!(get("/bob-after", &bob_access).was_reset());
    assert!(gw.never_saw("/bob-after"));
    let r = login.refresh(b2["refresh_token"].as_str().unwrap());
    assert!(r.body.contains("invalid_grant"), "{r:?}");
    // A new login for bob afterwards works: the rule covers tokens issued until it was made
    // (to the second), so the new session starts in the next second.
    tokenwall_tests::wait_for_next_second(tokenwall::clock::now());
    let b3 = login.session("bob");
    assert_eq!(
        get("/bob-new", b3["access_token"].as_str().unwrap()).status,
        200
    );

    // Revoke the signing key. carol's token was issued under it and never presented: the kernel
    // drops it by its header segment alone.
    let carol_access = carol["access_token"].as_str().unwrap().to_string();
    let old_kid = kid(&carol_access);
    let hits_before = tb.counter("revoked_key_hits");
    let out = tb.cli_json(&["revoke", "--kid", &old_kid, "--json"]);
    assert_ne!(out["active_kid"], old_kid.as_str(), "{out}");
    let r = get("/carol-never-seen", &carol_access);
    assert!(r.was_reset(), "expected a kernel reset, got {r:?}");
    assert!(gw.never_saw("/carol-never-seen"));
    // The drop must come from the header-segment map.
    tb.wait_for_counter("revoked_key_hits", hits_before + 1);
    // The JWKS no longer publishes the key; new sessions are signed with the new one and work.
    let jwks = curl(
        tb.server_ns(),
        &[&format!("http://{API}/.well-known/jwks.json")],
    )
    .json();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["kid"] != old_kid.as_str())
    );
    let d = login.session("dave");
    let dave_access = d["access_token"].as_str().unwrap();
    assert_ne!(kid(dave_access), old_kid);
    assert_eq!(get("/dave", dave_access).status, 200);

    // A planned rotation: both keys are published and dave's token keeps working.
    let out = tb.cli_json(&["keys", "rotate", "--json"]);
    assert_eq!(out["previous"], kid(dave_access).as_str());
    let jwks = curl(
        tb.server_ns(),
        &[&format!("http://{API}/.well-known/jwks.json")],
    )
    .json();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2, "{jwks}");
    assert_eq!(get("/dave-after-rotation", dave_access).status, 200);
    let e = login.session("erin");
    assert_eq!(
        kid(e["access_token"].as_str().unwrap()),
        out["active_kid"].as_str().unwrap()
    );

    // Every change above is in the hash-chained audit trail, with its actor, and no token.
    let state = tb.state_dir().display().to_string();
    let offline = |args: &[&str]| {
        std::process::Command::new(tokenwall_tests::tokenwall_bin().unwrap())
            .args(args)
            .output()
            .unwrap()
    };
    let verify = offline(&["audit", "verify", "--state-dir", &state]);
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let export = offline(&["audit", "export", "--since", "1h", "--state-dir", &state]);
    let text = String::from_utf8_lossy(&export.stdout).into_owned();
    let actions: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (action, actor) in [
        ("attach", "system"),
        ("clients_add", "uid:0"),
        ("issue", "client:login"),
        ("renew", "client:login"),
        ("reuse_detected", "client:login"),
        ("revoke_session", "client:login"),
        ("revoke_by", "uid:0"),
        ("keys_rotate", "uid:0"),
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a["action"] == action && a["actor"] == actor),
            "no {action} by {actor} in the audit trail:\n{text}"
        );
    }
    for secret in [&access1, &refresh1, &carol_access] {
        assert!(
            !text.contains(secret.as_str()),
            "a token leaked into the audit trail"
        );
    }
}
