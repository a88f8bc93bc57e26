//! The service on in-memory kernel maps: revocation rules and their issuer scope, learned drop,
//! signing-key revocation, a full kernel map, sessions with rotation, reuse and parallel
//! refreshes, RFC 7009 revocation and RFC 7662 introspection. No root needed.

use std::sync::{Arc, Barrier};

use serde_json::json;

use super::testing::{ISSUER, TestService, claims, service, service_with};
use crate::{
    control::protocol::TokenRef,
    oauth::{ClientAuth, NewSession, OAuthError, TokenForm, TokenParamForm},
    types::{Refusal, Rejection, RevokedBy, RuleKind, TokenHashes},
};

fn auth(c: &ClientAuth) -> Option<ClientAuth> {
    Some(ClientAuth {
        id: c.id.clone(),
        secret: c.secret.clone(),
    })
}

fn key_of(t: &TestService, token: &str) -> u64 {
    TokenHashes::of(&t.svc.key, token).key
}

#[test]
fn a_revoked_token_is_refused_in_userspace_and_held_by_the_kernel_map() {
    let t = service();
    let c = t.client("svc", &[]);
    let token = t.token(&c);
    assert!(t.svc.check_token(&token).is_ok());
    let reply = t
        .svc
        .revoke(&TokenRef::Token(token.clone()), None, None, false)
        .unwrap();
    assert!(reply.in_kernel && reply.jti_rule.is_some(), "{reply:?}");
    assert_eq!(
        t.svc.check_token(&token).unwrap_err(),
        Refusal::Revoked(RevokedBy::Token)
    );
    assert!(t.svc.revocations.in_kernel(key_of(&t, &token)));
}

#[test]
fn a_rule_refuses_covered_tokens_and_learns_them_into_the_kernel() {
    let t = service();
    let c = t.client("billing", &[]);
    let token = t.token(&c);
    let jti = claims(&token)["jti"].as_str().unwrap().to_string();
    let reply = t
        .svc
        .revoke_by(RuleKind::Jti, &jti, None, None, None)
        .unwrap();
    assert_eq!(reply.issuer, "any");
    assert_eq!(
        reply.tokens_pushed, 1,
        "the indexed token is pushed at once"
    );
    assert!(t.svc.revocations.in_kernel(key_of(&t, &token)));
    // A client rule: a token of that client checked after it is refused and learned.
    let other = t.token(&c);
    t.svc
        .revoke_by(RuleKind::Client, "billing", None, None, None)
        .unwrap();
    let h = key_of(&t, &other);
    assert_eq!(
        t.svc.check_token(&other).unwrap_err(),
        Refusal::Revoked(RevokedBy::Token),
        "pushed by the rule already"
    );
    assert!(t.svc.revocations.in_kernel(h));
}

#[test]
fn a_rule_for_another_issuer_covers_nothing_of_this_host() {
    let t = service();
    let c = t.client("svc", &[]);
    let token = t.token(&c);
    let reply = t
        .svc
        .revoke_by(
            RuleKind::Client,
            "svc",
            Some("https://partner.test"),
            None,
            None,
        )
        .unwrap();
    assert_eq!(
        (reply.issuer.as_str(), reply.tokens_pushed),
        ("https://partner.test", 0)
    );
    assert!(t.svc.check_token(&token).is_ok());
    t.svc
        .revoke_by(RuleKind::Client, "svc", Some(ISSUER), None, None)
        .unwrap();
    assert!(t.svc.check_token(&token).is_err(), "scoped to this issuer");
}

#[test]
fn a_learned_drop_happens_on_first_sight_of_a_token_the_index_never_had() {
    let t = service();
    let c = t.client("svc", &[]);
    let token = t.token(&c);
    let jti = claims(&token)["jti"].as_str().unwrap().to_string();
    // The index forgets (as after a restart); the rule still catches the token when seen.
    t.svc.authority.prune(u64::MAX).unwrap();
    let reply = t
        .svc
        .revoke_by(
            RuleKind::Jti,
            &jti,
            None,
            Some(crate::clock::now() + 600),
            None,
        )
        .unwrap();
    assert_eq!(reply.tokens_pushed, 0);
    assert!(!t.svc.revocations.in_kernel(key_of(&t, &token)));
    assert_eq!(
        t.svc.check_token(&token).unwrap_err(),
        Refusal::Revoked(RevokedBy::Rule(RuleKind::Jti))
    );
    assert!(
        t.svc.revocations.in_kernel(key_of(&t, &token)),
        "learned into the kernel"
    );
}

#[test]
fn revoking_an_own_key_retires_it_and_forged_headers_under_it_learn_nothing() {
    let t = service();
    let c = t.client("svc", &[]);
    let token = t.token(&c);
    let kid = {
        use base64::Engine as _;
        let header = token.split('.').next().unwrap();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let reply = t
        .svc
        .revoke_by(RuleKind::Kid, &kid, None, None, None)
        .unwrap();
    assert_ne!(reply.active_kid.as_deref(), Some(kid.as_str()));
    assert_eq!(reply.headers_pushed, 1);
    assert_eq!(
        t.svc.check_token(&token).unwrap_err(),
        Refusal::Revoked(RevokedBy::SigningKey)
    );
    let before = t.svc.revocations.counts();
    for n in 0..50 {
        use base64::Engine as _;
        let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let forged = format!(
            "{}.e30.AAAA",
            b64(json!({ "alg": "ES256", "kid": kid, "n": n }).to_string())
        );
        assert_eq!(
            t.svc.check_token(&forged).unwrap_err(),
            Refusal::Invalid(Rejection::UnknownKey)
        );
    }
    assert_eq!(t.svc.revocations.counts(), before, "nothing learned");
    // A new token is signed by the new key and passes.
    assert!(t.svc.check_token(&t.token(&c)).is_ok());
}

#[test]
fn a_full_kernel_map_never_fails_a_revocation_and_userspace_still_refuses_the_overflow() {
    let t = service_with(Some(2), 0);
    let c = t.client("svc", &[]);
    let tokens: Vec<String> = (0..4).map(|_| t.token(&c)).collect();
    let mut in_kernel = Vec::new();
    for tok in &tokens {
        let r = t
            .svc
            .revoke(&TokenRef::Token(tok.clone()), None, None, false)
            .unwrap();
        in_kernel.push(r.in_kernel);
    }
    // Each revoke also records a jti rule (userspace only), so the map fills with tokens.
    assert_eq!(in_kernel, [true, true, false, false]);
    for tok in &tokens {
        assert!(t.svc.check_token(tok).is_err());
    }
    let status = t.svc.status().unwrap();
    assert_eq!(status.kernel_overflow, 2);
    assert!(
        t.svc
            .metrics_text()
            .unwrap()
            .contains("tokenwall_kernel_overflow 2")
    );
}

fn login(t: &TestService) -> ClientAuth {
    t.client("login", &["sessions", "orders:read"])
}

fn session(t: &TestService, c: &ClientAuth, sub: &str) -> (String, String) {
    let s = t
        .svc
        .create_session(
            auth(c),
            NewSession {
                sub: sub.into(),
                scope: "orders:read".into(),
                claims: Some(json!({ "tier": "gold" })),
            },
        )
        .unwrap();
    (
        s["access_token"].as_str().unwrap().into(),
        s["refresh_token"].as_str().unwrap().into(),
    )
}

fn refresh(t: &TestService, c: &ClientAuth, token: &str) -> Result<serde_json::Value, OAuthError> {
    t.svc.token_grant(
        auth(c),
        TokenForm {
            grant_type: Some("refresh_token".into()),
            refresh_token: Some(token.into()),
            ..TokenForm::default()
        },
    )
}

#[test]
fn a_session_rotates_and_a_reused_refresh_token_ends_the_family() {
    let t = service();
    let c = login(&t);
    let (access1, refresh1) = session(&t, &c, "alice");
    assert_eq!(claims(&access1)["tier"], "gold");
    let r2 = refresh(&t, &c, &refresh1).unwrap();
    let access2 = r2["access_token"].as_str().unwrap().to_string();
    assert!(t.svc.check_token(&access2).is_ok());
    let reused = refresh(&t, &c, &refresh1).unwrap_err();
    assert!(matches!(reused, OAuthError::InvalidGrant(m) if m.contains("reused")));
    for a in [&access1, &access2] {
        assert_eq!(
            t.svc.check_token(a).unwrap_err(),
            Refusal::Revoked(RevokedBy::Token)
        );
        assert!(t.svc.revocations.in_kernel(key_of(&t, a)));
    }
    let r = refresh(&t, &c, r2["refresh_token"].as_str().unwrap()).unwrap_err();
    assert!(matches!(r, OAuthError::InvalidGrant(_)), "{r:?}");
}

#[test]
fn a_scope_beyond_the_session_is_refused_before_anything_rotates() {
    let t = service();
    let c = login(&t);
    let (_, refresh1) = session(&t, &c, "bob");
    let r = t.svc.token_grant(
        auth(&c),
        TokenForm {
            grant_type: Some("refresh_token".into()),
            refresh_token: Some(refresh1.clone()),
            scope: Some("admin".into()),
            ..TokenForm::default()
        },
    );
    assert!(matches!(r, Err(OAuthError::InvalidScope(_))), "{r:?}");
    assert!(
        refresh(&t, &c, &refresh1).is_ok(),
        "the token still rotates"
    );
}

#[test]
fn parallel_refreshes_are_one_rotation_and_one_reuse_and_leave_no_live_token() {
    let t = service();
    let c = Arc::new(login(&t));
    for round in 0..50 {
        let (_, refresh1) = session(&t, &c, &format!("user-{round}"));
        let barrier = Arc::new(Barrier::new(2));
        let results: Vec<Result<serde_json::Value, OAuthError>> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let (barrier, c, t, refresh1) = (barrier.clone(), c.clone(), &t, &refresh1);
                    s.spawn(move || {
                        barrier.wait();
                        refresh(t, &c, refresh1)
                    })
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(ok.len(), 1, "round {round}: {results:?}");
        let access = ok[0]["access_token"].as_str().unwrap();
        assert!(
            t.svc.check_token(access).is_err(),
            "round {round}: the rotation's token outlived the reuse"
        );
    }
}

#[test]
fn rfc7009_revokes_only_the_clients_own_tokens_and_a_refresh_token_ends_its_session() {
    let t = service();
    let a = t.client("a", &[]);
    let b = t.client("b", &[]);
    let token_a = t.token(&a);
    let form = |token: &str| TokenParamForm {
        token: Some(token.into()),
        ..TokenParamForm::default()
    };
    // Another client's revocation is answered 200 and ignored.
    t.svc.revoke_rfc7009(auth(&b), form(&token_a)).unwrap();
    assert!(t.svc.check_token(&token_a).is_ok());
    t.svc.revoke_rfc7009(auth(&a), form(&token_a)).unwrap();
    assert!(t.svc.check_token(&token_a).is_err());
    // Unknown tokens too are 200.
    t.svc.revoke_rfc7009(auth(&a), form("not-a-token")).unwrap();
    // No client credentials: invalid_client.
    assert!(matches!(
        t.svc.revoke_rfc7009(None, form(&token_a)),
        Err(OAuthError::InvalidClient(_))
    ));
    let c = login(&t);
    let (access, refresh_token) = session(&t, &c, "carol");
    t.svc
        .revoke_rfc7009(auth(&c), form(&refresh_token))
        .unwrap();
    assert!(
        t.svc.check_token(&access).is_err(),
        "the session's access token"
    );
    assert!(refresh(&t, &c, &refresh_token).is_err());
}

#[test]
fn rfc7662_introspection_is_active_with_claims_only_for_a_valid_unrevoked_token() {
    let t = service();
    let c = t.client("svc", &["orders:read"]);
    let token = t.token(&c);
    let form = |token: &str| TokenParamForm {
        token: Some(token.into()),
        ..TokenParamForm::default()
    };
    let i = t.svc.introspect_rfc7662(auth(&c), form(&token)).unwrap();
    assert!(i.active);
    assert_eq!(i.claims["client_id"], "svc");
    assert_eq!(i.claims["scope"], "orders:read");
    assert_eq!(i.claims["token_type"], "Bearer");
    t.svc
        .revoke(&TokenRef::Token(token.clone()), None, None, false)
        .unwrap();
    let i = t.svc.introspect_rfc7662(auth(&c), form(&token)).unwrap();
    assert!(!i.active && i.claims.is_empty());
    assert!(matches!(
        t.svc
            .introspect_rfc7662(auth(&c), TokenParamForm::default()),
        Err(OAuthError::InvalidRequest(_))
    ));
}
