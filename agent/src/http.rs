//! The HTTP API (axum): forward-auth for gateways, OAuth 2.0 token, revocation (RFC 7009) and
//! introspection (RFC 7662) endpoints, and the JWKS.

use std::sync::Arc;

use axum::{
    Form, Json, Router,
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get, post, put},
};
use base64::Engine as _;

use crate::{
    oauth::{AuthDecision, ClientAuth, OAuthError},
    service::Service,
};

type Svc = State<Arc<Service>>;
type FormPairs = Form<Vec<(String, String)>>;

/// The routes.
pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/auth", any(forward_auth))
        // Envoy's ext_authz HTTP service appends the original path to its `path_prefix`.
        .route("/v1/auth/{*original}", any(forward_auth))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/oauth2/token", post(token))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/introspect", post(introspect))
        .route("/v1/sessions", post(create_session))
        .route("/v1/admin", post(admin))
        .route("/metrics", get(metrics))
        .route("/v1/sessions/{sub}/claims", put(session_claims))
        .with_state(svc)
}

/// Serves the API on a bound listener until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, svc: Arc<Service>) {
    if let Ok(addr) = listener.local_addr() {
        log::info!("HTTP API on http://{addr}");
    }
    if let Err(e) = axum::serve(listener, router(svc)).await {
        log::error!("HTTP API stopped: {e}");
    }
}

/// RFC 6750 challenge text; descriptions never contain the token.
fn challenge(error: Option<&str>, description: &str) -> HeaderValue {
    let clean: String = description
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect();
    let v = match error {
        Some(e) => {
            format!("Bearer realm=\"tokenwall\", error=\"{e}\", error_description=\"{clean}\"")
        }
        None => "Bearer realm=\"tokenwall\"".to_string(),
    };
    HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Bearer"))
}

async fn forward_auth(State(svc): Svc, headers: HeaderMap) -> Response {
    let authz = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let api_key = svc
        .settings()
        .api_key_header
        .as_deref()
        .and_then(|name| headers.get(name))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // Revoked and cached tokens are answered here; anything that may wait (a signature
    // check, a JWKS fetch, a learned revocation's fsync) goes to a blocking thread.
    let decision = match svc.forward_auth_now(authz.as_deref(), api_key.as_deref()) {
        Some(d) => Ok(d),
        None => {
            tokio::task::spawn_blocking(move || {
                svc.forward_auth(authz.as_deref(), api_key.as_deref())
            })
            .await
        }
    };
    match decision {
        Ok(AuthDecision::Allow(identity)) => {
            let mut r = StatusCode::OK.into_response();
            for (name, value) in identity.headers() {
                r.headers_mut().insert(name, value.clone());
            }
            r
        }
        Ok(AuthDecision::NoCredentials) => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge(None, ""))],
        )
            .into_response(),
        Ok(AuthDecision::InvalidRequest(d)) => (
            StatusCode::BAD_REQUEST,
            [(
                header::WWW_AUTHENTICATE,
                challenge(Some("invalid_request"), &d),
            )],
        )
            .into_response(),
        Ok(AuthDecision::InvalidToken(d)) => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                challenge(Some("invalid_token"), &d),
            )],
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn jwks(State(svc): Svc) -> Response {
    match svc.authority().jwks() {
        Ok(v) => Json(v).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Client credentials from HTTP Basic, else from the form (RFC 6749 section 2.3.1).
fn client_auth(headers: &HeaderMap, form: &[(String, String)]) -> Option<ClientAuth> {
    if let Some(basic) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (id, secret) = text.split_once(':')?;
        return Some(ClientAuth {
            id: id.into(),
            secret: secret.into(),
        });
    }
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    Some(ClientAuth {
        id: get("client_id")?,
        secret: get("client_secret")?,
    })
}

fn oauth_error(e: OAuthError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    let body = Json(serde_json::json!({ "error": e.error, "error_description": e.description }));
    let mut r = (status, body).into_response();
    if e.status == 401 {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"tokenwall\""),
        );
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn token(State(svc): Svc, headers: HeaderMap, Form(form): FormPairs) -> Response {
    let auth = client_auth(&headers, &form);
    match tokio::task::spawn_blocking(move || svc.token_grant(auth, &form)).await {
        Ok(Ok(v)) => ([(header::CACHE_CONTROL, "no-store")], Json(v)).into_response(),
        Ok(Err(e)) => oauth_error(e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn revoke(State(svc): Svc, headers: HeaderMap, Form(form): FormPairs) -> Response {
    let auth = client_auth(&headers, &form);
    match tokio::task::spawn_blocking(move || svc.revoke_rfc7009(auth, &form)).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => oauth_error(e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn introspect(State(svc): Svc, headers: HeaderMap, Form(form): FormPairs) -> Response {
    let auth = client_auth(&headers, &form);
    match tokio::task::spawn_blocking(move || svc.introspect_rfc7662(auth, &form)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => oauth_error(e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn create_session(
    State(svc): Svc,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let auth = client_auth(&headers, &[]);
    match tokio::task::spawn_blocking(move || svc.create_session(auth, &body)).await {
        Ok(Ok(v)) => ([(header::CACHE_CONTROL, "no-store")], Json(v)).into_response(),
        Ok(Err(e)) => oauth_error(e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn session_claims(
    State(svc): Svc,
    Path(sub): Path<String>,
    headers: HeaderMap,
    Json(claims): Json<serde_json::Value>,
) -> Response {
    let auth = client_auth(&headers, &[]);
    match tokio::task::spawn_blocking(move || svc.set_session_claims(auth, &sub, &claims)).await {
        Ok(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Ok(Err(e)) => oauth_error(e),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `POST /v1/admin`: a control-socket request (JSON) authorized by the admin bearer credential.
async fn admin(State(svc): Svc, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(expected) = svc.settings().admin_token_sha256.clone() else {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "ok": false, "error": "admin over HTTP is disabled (no --admin-token-file)" })),
        )
            .into_response();
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| crate::tokens::private_file::sha256_b64(t.trim()));
    // Digests of fixed length, compared without an early exit.
    let ok = presented.is_some_and(|p| {
        p.len() == expected.len()
            && p.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                challenge(Some("invalid_token"), "admin credential required"),
            )],
        )
            .into_response();
    }
    let req: crate::api::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "ok": false, "error": format!("bad request: {e}") })),
            )
                .into_response();
        }
    };
    if matches!(
        req,
        crate::api::Request::Events | crate::api::Request::Watch { .. }
    ) {
        let msg = "events is a stream: use the control socket (tokenwall events)";
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "ok": false, "error": msg })),
        )
            .into_response();
    }
    if !req.is_read_only() {
        log::info!("admin: {} by the admin credential over HTTP", req.command());
    }
    match tokio::task::spawn_blocking(move || svc.handle_as(req, "admin")).await {
        Ok(reply) => {
            let status = if reply.ok {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            (status, Json(reply)).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// `GET /metrics` (OpenMetrics text).
async fn metrics(State(svc): Svc) -> Response {
    match tokio::task::spawn_blocking(move || svc.metrics_text()).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
