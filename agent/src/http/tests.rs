//! The router, driven with `tower::ServiceExt::oneshot` over a service on in-memory kernel
//! maps: forward-auth answers and headers, OAuth errors for bad bodies, RFC 7009 and 7662 over
//! HTTP, sessions, metrics, the admin endpoint.

use axum::{
    body::{Body, to_bytes},
    http::{Request, StatusCode, header},
    response::Response,
};
use base64::Engine as _;
use serde_json::Value;
use tower::ServiceExt as _;

use super::router;
use crate::{
    oauth::ClientAuth,
    service::testing::{ISSUER, TestService, service},
};

async fn call(t: &TestService, req: Request<Body>) -> Response {
    router(t.svc.clone()).oneshot(req).await.unwrap()
}

async fn json(r: Response) -> Value {
    let bytes = to_bytes(r.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

fn basic(c: &ClientAuth) -> String {
    let raw = format!("{}:{}", c.id, c.secret);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn form(path: &str, c: &ClientAuth, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::AUTHORIZATION, basic(c))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn auth_request(path: &str, authorization: Option<&str>) -> Request<Body> {
    let mut r = Request::get(path);
    if let Some(a) = authorization {
        r = r.header(header::AUTHORIZATION, a);
    }
    r.body(Body::empty()).unwrap()
}

fn challenge(r: &Response) -> &str {
    r.headers()
        .get(header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn forward_auth_answers_with_identity_headers_or_an_rfc6750_challenge() {
    let t = service();
    let c = t.client("svc", &["orders:read"]);
    let token = t.token(&c);
    let r = call(&t, auth_request("/v1/auth", None)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenge(&r), "Bearer realm=\"tokenwall\"");
    let r = call(&t, auth_request("/v1/auth", Some("Bearer a b"))).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(challenge(&r).contains("error=\"invalid_request\""));
    // Envoy appends the original path; any method works.
    let r = call(
        &t,
        auth_request("/v1/auth/orders/7", Some(&format!("Bearer {token}"))),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-auth-subject"], "svc");
    assert_eq!(r.headers()["x-auth-scopes"], "orders:read");
    assert_eq!(r.headers()["x-auth-issuer"], ISSUER);
    let r = call(&t, auth_request("/v1/auth", Some("Bearer not.a.jwt"))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).contains("error=\"invalid_token\""));
    assert!(!challenge(&r).contains("not.a.jwt"), "never echo the token");
}

#[tokio::test]
async fn a_body_that_does_not_parse_is_an_oauth_invalid_request() {
    let t = service();
    let c = t.client("svc", &["sessions"]);
    // A JSON body where a form is expected.
    let r = call(
        &t,
        Request::post("/oauth2/token")
            .header(header::AUTHORIZATION, basic(&c))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(json(r).await["error"], "invalid_request");
    // Malformed JSON for a session.
    let r = call(
        &t,
        Request::post("/v1/sessions")
            .header(header::AUTHORIZATION, basic(&c))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"sub\":"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(r).await["error"], "invalid_request");
}

#[tokio::test]
async fn the_token_endpoint_authenticates_clients_and_names_every_error() {
    let t = service();
    let c = t.client("svc", &["a"]);
    let wrong = ClientAuth {
        id: "svc".into(),
        secret: "wrong-secret-0123456789".into(),
    };
    let r = call(
        &t,
        form("/oauth2/token", &wrong, "grant_type=client_credentials"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(challenge(&r).starts_with("Basic"));
    assert_eq!(json(r).await["error"], "invalid_client");
    let r = call(&t, form("/oauth2/token", &c, "grant_type=password")).await;
    assert_eq!(json(r).await["error"], "unsupported_grant_type");
    let r = call(
        &t,
        form("/oauth2/token", &c, "grant_type=client_credentials&scope=b"),
    )
    .await;
    assert_eq!(json(r).await["error"], "invalid_scope");
    let r = call(
        &t,
        form("/oauth2/token", &c, "grant_type=client_credentials"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    let body = json(r).await;
    assert_eq!(body["token_type"], "Bearer");
    assert!(body.get("refresh_token").is_none(), "RFC 6749 4.4.3");
}

#[tokio::test]
async fn revocation_and_introspection_over_http() {
    let t = service();
    let c = t.client("svc", &[]);
    let token = t.token(&c);
    let r = call(
        &t,
        form("/oauth2/introspect", &c, &format!("token={token}")),
    )
    .await;
    assert_eq!(json(r).await["active"], true);
    let r = call(&t, form("/oauth2/revoke", &c, &format!("token={token}"))).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = call(
        &t,
        form("/oauth2/introspect", &c, &format!("token={token}")),
    )
    .await;
    assert_eq!(json(r).await, serde_json::json!({ "active": false }));
    let r = call(
        &t,
        auth_request("/v1/auth", Some(&format!("Bearer {token}"))),
    )
    .await;
    assert!(challenge(&r).contains("revoked"));
    let r = call(
        &t,
        form("/oauth2/revoke", &c, "token_type_hint=access_token"),
    )
    .await;
    assert_eq!(json(r).await["error"], "invalid_request", "token missing");
}

#[tokio::test]
async fn sessions_need_the_sessions_scope() {
    let t = service();
    let plain = t.client("plain", &[]);
    let login = t.client("login", &["sessions"]);
    let post = |c: &ClientAuth, body: &str| {
        Request::post("/v1/sessions")
            .header(header::AUTHORIZATION, basic(c))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let r = call(&t, post(&plain, r#"{"sub":"a"}"#)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(json(r).await["error"], "insufficient_scope");
    let r = call(&t, post(&login, r#"{"sub":"a","claims":{"iss":"x"}}"#)).await;
    assert_eq!(json(r).await["error"], "invalid_request");
    let r = call(&t, post(&login, r#"{"sub":"a"}"#)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(json(r).await["refresh_token"].is_string());
}

#[tokio::test]
async fn metrics_jwks_and_a_disabled_admin_endpoint() {
    let t = service();
    let r = call(&t, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let r = call(
        &t,
        Request::get("/.well-known/jwks.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(json(r).await["keys"].as_array().unwrap().len(), 1);
    let r = call(
        &t,
        Request::post("/v1/admin")
            .body(Body::from(r#"{"cmd":"status"}"#))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
