//! The HTTP API (axum): forward-auth for gateways, the OAuth 2.0 token, revocation (RFC 7009)
//! and introspection (RFC 7662) endpoints, sessions, the JWKS, the admin endpoint and metrics.
//! Bodies are parsed into typed structs; a body that does not parse is answered with an OAuth
//! `invalid_request`, like every other OAuth error ([`OAuthError`] is the response).

mod server;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRequest, Path, Request, State, rejection::FormRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get, post, put},
};
use base64::Engine as _;
use serde::de::DeserializeOwned;

pub use server::{
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Limits, LimitsError, Server,
};

use crate::{
    control::{protocol::Request as ControlRequest, server::Handler},
    oauth::{AuthDecision, ClientAuth, NewSession, OAuthError, TokenForm, TokenParamForm},
    service::Service,
};

type Svc = State<Arc<Service>>;

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
        .route("/v1/sessions/{sub}/claims", put(session_claims))
        .route("/v1/admin", post(admin))
        .route("/metrics", get(metrics))
        .with_state(svc)
}

/// Serves the API on a bound listener with `limits` until the runtime stops.
pub async fn serve(listener: tokio::net::TcpListener, svc: Arc<Service>, limits: Limits) {
    if let Ok(addr) = listener.local_addr() {
        log::info!(
            "HTTP API on http://{addr} (header-read timeout {:?}, at most {} connections)",
            limits.header_read_timeout(),
            limits.max_connections()
        );
    }
    Server::new(limits).run(listener, router(svc)).await;
}

/// Runs `f` on the service on a blocking thread (it may fsync or verify a signature).
async fn blocking<T: Send + 'static>(
    svc: Arc<Service>,
    f: impl FnOnce(&Service) -> Result<T, OAuthError> + Send + 'static,
) -> Result<T, OAuthError> {
    tokio::task::spawn_blocking(move || f(&svc))
        .await
        .map_err(|e| OAuthError::ServerError(format!("request task: {e}")))?
}

/// An `application/x-www-form-urlencoded` body; one that does not parse is `invalid_request`.
struct OAuthForm<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OAuthForm<T> {
    type Rejection = OAuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthError> {
        axum::Form::<T>::from_request(req, state)
            .await
            .map(|axum::Form(v)| OAuthForm(v))
            .map_err(|e: FormRejection| OAuthError::InvalidRequest(e.body_text()))
    }
}

/// A JSON body; one that does not parse is `invalid_request`.
struct OAuthJson<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OAuthJson<T> {
    type Rejection = OAuthError;

    async fn from_request(req: Request, state: &S) -> Result<Self, OAuthError> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| OAuthJson(v))
            .map_err(|e| OAuthError::InvalidRequest(e.body_text()))
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

impl IntoResponse for AuthDecision {
    fn into_response(self) -> Response {
        let (status, error, description) = match self {
            AuthDecision::Allow(identity) => {
                let mut r = StatusCode::OK.into_response();
                for (name, value) in identity.headers() {
                    r.headers_mut().insert(name, value.clone());
                }
                return r;
            }
            AuthDecision::NoCredentials => (StatusCode::UNAUTHORIZED, None, String::new()),
            AuthDecision::InvalidRequest(d) => {
                (StatusCode::BAD_REQUEST, Some("invalid_request"), d)
            }
            AuthDecision::InvalidToken(d) => (StatusCode::UNAUTHORIZED, Some("invalid_token"), d),
        };
        (
            status,
            [(header::WWW_AUTHENTICATE, challenge(error, &description))],
        )
            .into_response()
    }
}

async fn forward_auth(State(svc): Svc, headers: HeaderMap) -> Response {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let authz = value(header::AUTHORIZATION.as_str());
    let api_key = svc.settings().api_key_header.as_deref().and_then(value);
    // Revoked and cached tokens are answered here; anything that may wait (a signature
    // check, a JWKS fetch, a learned revocation's fsync) goes to a blocking thread.
    if let Some(d) = svc.forward_auth_now(authz.as_deref(), api_key.as_deref()) {
        return d.into_response();
    }
    let decided = blocking(svc, move |s| {
        Ok(s.forward_auth(authz.as_deref(), api_key.as_deref()))
    })
    .await;
    match decided {
        Ok(d) => d.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn jwks(State(svc): Svc) -> Result<Response, OAuthError> {
    let keys = svc.authority.jwks().map_err(OAuthError::server)?;
    Ok(Json(keys).into_response())
}

/// Client credentials from HTTP Basic, else from the form (RFC 6749 section 2.3.1).
fn client_auth(
    headers: &HeaderMap,
    id: Option<String>,
    secret: Option<String>,
) -> Option<ClientAuth> {
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
    Some(ClientAuth {
        id: id?,
        secret: secret?,
    })
}

/// A token response: JSON, never cached (RFC 6749 section 5.1).
fn no_store(v: impl serde::Serialize) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(v)).into_response()
}

async fn token(
    State(svc): Svc,
    headers: HeaderMap,
    OAuthForm(form): OAuthForm<TokenForm>,
) -> Result<Response, OAuthError> {
    let auth = client_auth(&headers, form.client_id.clone(), form.client_secret.clone());
    blocking(svc, move |s| s.token_grant(auth, form))
        .await
        .map(no_store)
}

async fn revoke(
    State(svc): Svc,
    headers: HeaderMap,
    OAuthForm(form): OAuthForm<TokenParamForm>,
) -> Result<StatusCode, OAuthError> {
    let auth = client_auth(&headers, form.client_id.clone(), form.client_secret.clone());
    blocking(svc, move |s| s.revoke_rfc7009(auth, form)).await?;
    Ok(StatusCode::OK)
}

async fn introspect(
    State(svc): Svc,
    headers: HeaderMap,
    OAuthForm(form): OAuthForm<TokenParamForm>,
) -> Result<Response, OAuthError> {
    let auth = client_auth(&headers, form.client_id.clone(), form.client_secret.clone());
    blocking(svc, move |s| s.introspect_rfc7662(auth, form))
        .await
        .map(|v| Json(v).into_response())
}

async fn create_session(
    State(svc): Svc,
    headers: HeaderMap,
    OAuthJson(body): OAuthJson<NewSession>,
) -> Result<Response, OAuthError> {
    let auth = client_auth(&headers, None, None);
    blocking(svc, move |s| s.create_session(auth, body))
        .await
        .map(no_store)
}

async fn session_claims(
    State(svc): Svc,
    Path(sub): Path<String>,
    headers: HeaderMap,
    OAuthJson(claims): OAuthJson<serde_json::Value>,
) -> Result<StatusCode, OAuthError> {
    let auth = client_auth(&headers, None, None);
    blocking(svc, move |s| s.set_session_claims(auth, &sub, claims)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// An admin reply: the control protocol's envelope as JSON.
fn admin_reply(status: StatusCode, error: &str) -> Response {
    (
        status,
        Json(serde_json::json!({ "ok": false, "error": error })),
    )
        .into_response()
}

/// `POST /v1/admin`: a control-socket request (JSON) authorized by the admin bearer credential.
async fn admin(State(svc): Svc, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let Some(expected) = svc.settings().admin_token_sha256.clone() else {
        return admin_reply(
            StatusCode::FORBIDDEN,
            "admin over HTTP is disabled (no --admin-token-file)",
        );
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
    let req: ControlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return admin_reply(StatusCode::BAD_REQUEST, &format!("bad request: {e}")),
    };
    if req.is_stream() {
        return admin_reply(
            StatusCode::BAD_REQUEST,
            "events is a stream: use the control socket (tokenwall events)",
        );
    }
    if !req.is_read_only() {
        log::info!("admin: {} by the admin credential over HTTP", req.command());
    }
    match tokio::task::spawn_blocking(move || svc.handle(req, "admin")).await {
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
async fn metrics(State(svc): Svc) -> Result<Response, OAuthError> {
    let text = blocking(svc, |s| s.metrics_text().map_err(OAuthError::server)).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

#[cfg(test)]
mod tests;
