//! OAuth 2.0 and RFC 6750 protocol types: what a forward-auth request presents and the
//! decision it gets (with the identity headers handed to the upstream), the typed error every
//! OAuth endpoint answers with (RFC 6749 section 5.2, `IntoResponse`), and the typed request
//! bodies. The use cases that produce them are the service's.

use std::sync::Arc;

use axum::{
    Json,
    http::{HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use crate::{tokens::validate::Verified, types::Refusal};

/// `X-Auth-Issuer` of a request authorized by an API key (API keys have no `iss`).
pub const API_KEY_ISSUER: &str = "tokenwall:api-key";
/// Longest identity header value, in bytes.
pub const MAX_IDENTITY_VALUE_BYTES: usize = 1024;

/// Why a claim cannot be handed on as an identity header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not visible ASCII with inner spaces (control bytes, non-ASCII, leading or trailing
    /// whitespace).
    #[error("claim {claim} is not a valid HTTP header value")]
    NotAHeaderValue {
        /// The claim's name (never its value).
        claim: &'static str,
    },
    /// Longer than [`MAX_IDENTITY_VALUE_BYTES`].
    #[error("claim {claim} is longer than {MAX_IDENTITY_VALUE_BYTES} bytes")]
    TooLong {
        /// The claim's name (never its value).
        claim: &'static str,
    },
}

/// One identity header's value: empty, or visible ASCII (0x21-0x7e) with inner spaces, at most
/// [`MAX_IDENTITY_VALUE_BYTES`] long. Anything else is refused, never dropped or rewritten.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityValue(HeaderValue);

impl IdentityValue {
    /// The value of `claim`, if it is a valid identity header value.
    pub fn new(claim: &'static str, value: &str) -> Result<Self, IdentityError> {
        if value.len() > MAX_IDENTITY_VALUE_BYTES {
            return Err(IdentityError::TooLong { claim });
        }
        let visible = |b: &u8| (0x21..=0x7e).contains(b);
        let bytes = value.as_bytes();
        let ok = bytes.iter().all(|b| visible(b) || *b == b' ')
            && bytes.first().is_none_or(visible)
            && bytes.last().is_none_or(visible);
        if !ok {
            return Err(IdentityError::NotAHeaderValue { claim });
        }
        HeaderValue::from_str(value)
            .map(Self)
            .map_err(|_| IdentityError::NotAHeaderValue { claim })
    }

    /// The header value.
    pub fn header(&self) -> &HeaderValue {
        &self.0
    }
}

/// Who an allowed request is, as handed to the upstream in the `X-Auth-*` headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `sub` (an API key's name).
    pub subject: IdentityValue,
    /// `client_id` (empty for API keys).
    pub client: IdentityValue,
    /// `scope`.
    pub scopes: IdentityValue,
    /// `jti` (an API key's fingerprint).
    pub token_id: IdentityValue,
    /// `iss` ([`API_KEY_ISSUER`] for API keys): upstreams must not trust a subject without it.
    pub issuer: IdentityValue,
}

impl Identity {
    /// From the claims of a verified token.
    pub fn of_token(v: &Verified) -> Result<Self, IdentityError> {
        let claim = |name: &'static str| IdentityValue::new(name, v.claim_str(name).unwrap_or(""));
        Ok(Self {
            subject: claim("sub")?,
            client: claim("client_id")?,
            scopes: claim("scope")?,
            token_id: claim("jti")?,
            issuer: claim("iss")?,
        })
    }

    /// The response headers, lower-case names.
    pub fn headers(&self) -> [(HeaderName, &HeaderValue); 5] {
        [
            (
                HeaderName::from_static("x-auth-subject"),
                self.subject.header(),
            ),
            (
                HeaderName::from_static("x-auth-client"),
                self.client.header(),
            ),
            (
                HeaderName::from_static("x-auth-scopes"),
                self.scopes.header(),
            ),
            (
                HeaderName::from_static("x-auth-token-id"),
                self.token_id.header(),
            ),
            (
                HeaderName::from_static("x-auth-issuer"),
                self.issuer.header(),
            ),
        ]
    }
}

/// The answer to a forward-auth request.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthDecision {
    /// 200 with the identity headers.
    Allow(Identity),
    /// 401 without an error code: no bearer credentials at all (RFC 6750 section 3.1).
    NoCredentials,
    /// 400 `invalid_request`: a malformed `Authorization` header.
    InvalidRequest(String),
    /// 401 `invalid_token` with a description (never the token, nor a claim's value).
    InvalidToken(String),
}

/// An OAuth error response (RFC 6749 section 5.2; RFC 6750 section 3.1 for
/// `insufficient_scope`): each variant knows its status and error code.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// 400 `invalid_request`: a parameter is missing, repeated or malformed.
    #[error("{0}")]
    InvalidRequest(String),
    /// 401 `invalid_client`: no client credentials, or wrong ones.
    #[error("{0}")]
    InvalidClient(&'static str),
    /// 400 `invalid_grant`: the refresh token is unknown, expired, revoked or reused.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// 400 `unsupported_grant_type`.
    #[error("grant_type not supported")]
    UnsupportedGrantType,
    /// 400 `invalid_scope`.
    #[error("{0}")]
    InvalidScope(String),
    /// 403 `insufficient_scope`: the client may not do this.
    #[error("{0}")]
    InsufficientScope(&'static str),
    /// 503 `temporarily_unavailable`: the change could not be made durable now.
    #[error("{0}")]
    TemporarilyUnavailable(String),
    /// 500 `server_error`.
    #[error("{0}")]
    ServerError(String),
}

impl OAuthError {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            OAuthError::InvalidClient(_) => StatusCode::UNAUTHORIZED,
            OAuthError::InsufficientScope(_) => StatusCode::FORBIDDEN,
            OAuthError::TemporarilyUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            OAuthError::ServerError(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::InvalidGrant(_) => "invalid_grant",
            OAuthError::UnsupportedGrantType => "unsupported_grant_type",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::InsufficientScope(_) => "insufficient_scope",
            OAuthError::TemporarilyUnavailable(_) => "temporarily_unavailable",
            OAuthError::ServerError(_) => "server_error",
        }
    }

    /// A failure inside the server (its causes on one line).
    pub fn server(e: anyhow::Error) -> Self {
        OAuthError::ServerError(format!("{e:#}"))
    }

    /// A change that could not be made durable.
    pub fn unavailable(e: anyhow::Error) -> Self {
        OAuthError::TemporarilyUnavailable(format!("{e:#}"))
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = Json(serde_json::json!({
            "error": self.code(), "error_description": self.to_string(),
        }));
        let mut r = (status, body).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tokenwall\""),
            );
        }
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}

/// `POST /oauth2/token` (RFC 6749 sections 4.4 and 6).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenForm {
    /// `client_credentials` or `refresh_token`.
    pub grant_type: Option<String>,
    /// The scope asked for (space-separated).
    pub scope: Option<String>,
    /// For `refresh_token`.
    pub refresh_token: Option<String>,
    /// Client credentials in the body (RFC 6749 section 2.3.1), when not HTTP Basic.
    pub client_id: Option<String>,
    /// See `client_id`.
    pub client_secret: Option<String>,
}

/// `POST /oauth2/revoke` (RFC 7009) and `POST /oauth2/introspect` (RFC 7662).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct TokenParamForm {
    /// The token.
    pub token: Option<String>,
    /// `access_token` or `refresh_token`: only orders the lookups.
    pub token_type_hint: Option<String>,
    /// Client credentials in the body, when not HTTP Basic.
    pub client_id: Option<String>,
    /// See `client_id`.
    pub client_secret: Option<String>,
}

/// `POST /v1/sessions`.
#[derive(Clone, Debug, Deserialize)]
pub struct NewSession {
    /// The subject the login service authenticated.
    pub sub: String,
    /// Scopes for the session's tokens (space-separated).
    #[serde(default)]
    pub scope: String,
    /// Extra claims for the subject's tokens.
    #[serde(default)]
    pub claims: Option<serde_json::Value>,
}

/// Client credentials as presented (HTTP Basic or form fields).
pub struct ClientAuth {
    /// Client id.
    pub id: String,
    /// Client secret.
    pub secret: String,
}

/// What a forward-auth request presents, before any lookup.
pub(crate) enum Presented<'a> {
    /// A bearer token.
    Token(&'a str),
    /// An API key (no bearer token).
    ApiKey(&'a str),
    /// Nothing to look up: the answer is already known.
    Decided(AuthDecision),
}

/// Reads the `Authorization` header value, or failing a bearer token, the API-key header's.
pub(crate) fn presented<'a>(
    authorization: Option<&'a str>,
    api_key: Option<&'a str>,
) -> Presented<'a> {
    let bearer = authorization.filter(|v| {
        v.split_whitespace()
            .next()
            .is_some_and(|s| s.eq_ignore_ascii_case("bearer"))
    });
    let Some(value) = bearer else {
        return match api_key {
            Some(k) => Presented::ApiKey(k.trim()),
            None => Presented::Decided(AuthDecision::NoCredentials),
        };
    };
    let mut parts = value.trim().splitn(2, ' ');
    let (scheme, rest) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or("").trim(),
    );
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Decided(AuthDecision::NoCredentials);
    }
    if rest.is_empty() || rest.contains(char::is_whitespace) {
        return Presented::Decided(AuthDecision::InvalidRequest(
            "malformed bearer credentials".into(),
        ));
    }
    Presented::Token(rest)
}

/// The decision for a checked token.
/// A claim that cannot be an identity header refuses the token (an upstream must never see a
/// request without, or with a rewritten, identity).
pub(crate) fn token_decision(checked: Result<Arc<Verified>, Refusal>) -> AuthDecision {
    match checked {
        Ok(v) => match Identity::of_token(&v) {
            Ok(id) => AuthDecision::Allow(id),
            Err(e) => AuthDecision::InvalidToken(e.to_string()),
        },
        Err(r) => AuthDecision::InvalidToken(r.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn verified(claims: Value) -> Result<Arc<Verified>, Refusal> {
        let Value::Object(claims) = claims else {
            unreachable!()
        };
        Ok(Arc::new(Verified {
            kid: "k".into(),
            alg: jsonwebtoken::Algorithm::ES256,
            claims,
            exp: None,
            header_segment_len: 10,
        }))
    }

    #[test]
    fn allow_carries_the_issuer_with_the_other_identity_headers() {
        let d = token_decision(verified(json!({
            "iss": "https://partner.test", "sub": "admin", "client_id": "c",
            "scope": "a b", "jti": "j1",
        })));
        let AuthDecision::Allow(id) = d else {
            panic!("{d:?}")
        };
        let headers: Vec<(String, &str)> = id
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("x-auth-subject".to_string(), "admin"),
                ("x-auth-client".into(), "c"),
                ("x-auth-scopes".into(), "a b"),
                ("x-auth-token-id".into(), "j1"),
                ("x-auth-issuer".into(), "https://partner.test"),
            ]
        );
        // Absent claims are empty headers (the gateways then send none).
        let AuthDecision::Allow(id) = token_decision(verified(json!({ "iss": "i" }))) else {
            panic!()
        };
        assert_eq!(id.subject.header(), "");
    }

    #[test]
    fn a_claim_that_is_not_a_header_value_refuses_the_token_naming_the_claim_not_the_value() {
        let long = "a".repeat(MAX_IDENTITY_VALUE_BYTES + 1);
        for (claim, value) in [
            ("sub", "admin\r\nx-auth-subject: root"),
            ("sub", "tab\there"),
            ("sub", "del\u{7f}"),
            ("sub", "Jos\u{e9}"),
            ("sub", " padded"),
            ("sub", "padded "),
            ("scope", long.as_str()),
            ("iss", "https://idp.test/\u{0}"),
            ("jti", "\u{1b}[31m"),
            ("client_id", "c\u{85}"),
        ] {
            let mut claims =
                json!({ "iss": "i", "sub": "s", "scope": "x", "jti": "j", "client_id": "c" });
            claims[claim] = json!(value);
            match token_decision(verified(claims)) {
                AuthDecision::InvalidToken(d) => {
                    assert!(d.contains(&format!("claim {claim} ")), "{d}");
                    assert!(!d.contains(value), "the value must not be echoed: {d}");
                }
                other => panic!("{claim}={value:?} was not refused: {other:?}"),
            }
        }
        let at_limit = "a".repeat(MAX_IDENTITY_VALUE_BYTES);
        assert!(matches!(
            token_decision(verified(
                json!({ "iss": "i", "scope": at_limit, "sub": "a b" })
            )),
            AuthDecision::Allow(_)
        ));
    }
}
