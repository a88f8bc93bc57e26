//! The token lifecycle on top of [`Service`]: forward-auth decisions (RFC 6750 errors),
//! `client_credentials` issuance (RFC 6749 section 4.4), revocation (RFC 7009) and
//! introspection (RFC 7662). Every revocation goes through the durable store into the kernel.

use std::sync::Arc;

use agent_common::hash::revocation_hash;
use axum::http::{HeaderName, HeaderValue};
use serde_json::{Value, json};

use crate::{
    clock::{JWT_EXP_MARGIN, now},
    control::protocol::{ApiKeyCreated, Introspection, RevokeReply, TokenRef},
    monitoring::lifecycle::{EventKind, LifecycleEvent},
    revocation::hash_key::fingerprint,
    service::Service,
    tokens::validate::Verified,
    types::Refusal,
};

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
    fn of_token(v: &Verified) -> Result<Self, IdentityError> {
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

/// An OAuth error response (RFC 6749 section 5.2).
#[derive(Debug)]
pub struct OAuthError {
    /// HTTP status.
    pub status: u16,
    /// `error` code.
    pub error: &'static str,
    /// `error_description`.
    pub description: String,
}

impl OAuthError {
    pub(crate) fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status,
            error,
            description: description.into(),
        }
    }
}

/// Client credentials as presented (HTTP Basic or form fields).
pub struct ClientAuth {
    /// Client id.
    pub id: String,
    /// Client secret.
    pub secret: String,
}

/// What a forward-auth request presents, before any lookup.
enum Presented<'a> {
    /// A bearer token.
    Token(&'a str),
    /// An API key (no bearer token).
    ApiKey(&'a str),
    /// Nothing to look up: the answer is already known.
    Decided(AuthDecision),
}

/// Reads the `Authorization` header value, or failing a bearer token, the API-key header's.
fn presented<'a>(authorization: Option<&'a str>, api_key: Option<&'a str>) -> Presented<'a> {
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
fn token_decision(checked: Result<Arc<Verified>, Refusal>) -> AuthDecision {
    match checked {
        Ok(v) => match Identity::of_token(&v) {
            Ok(id) => AuthDecision::Allow(id),
            Err(e) => AuthDecision::InvalidToken(e.to_string()),
        },
        Err(r) => AuthDecision::InvalidToken(r.to_string()),
    }
}

impl Service {
    /// Decides a forward-auth request from its `Authorization` header value, or failing a
    /// bearer token, from the API-key header's value.
    pub fn forward_auth(&self, authorization: Option<&str>, api_key: Option<&str>) -> AuthDecision {
        match presented(authorization, api_key) {
            Presented::Token(t) => token_decision(self.check_token(t)),
            Presented::ApiKey(k) => self.api_key_auth(k),
            Presented::Decided(d) => d,
        }
    }

    /// [`forward_auth`](Self::forward_auth) for an async worker: answers only what needs no
    /// wait (see [`check_token_now`](Self::check_token_now)); `None` means: call
    /// `forward_auth` on a blocking thread.
    pub fn forward_auth_now(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
    ) -> Option<AuthDecision> {
        match presented(authorization, api_key) {
            Presented::Token(t) => self.check_token_now(t).map(token_decision),
            Presented::ApiKey(_) => None,
            Presented::Decided(d) => Some(d),
        }
    }

    fn api_key_auth(&self, presented: &str) -> AuthDecision {
        let hash = revocation_hash(&self.key, presented.as_bytes());
        if self.lock().store.get(hash).is_some() {
            return AuthDecision::InvalidToken("API key revoked".into());
        }
        let identity = match self.authority().api_key(presented) {
            Some(k) => (|| {
                Ok::<_, IdentityError>(Identity {
                    subject: IdentityValue::new("name", &k.name)?,
                    client: IdentityValue::new("client", "")?,
                    scopes: IdentityValue::new("scopes", &k.scopes.join(" "))?,
                    token_id: IdentityValue::new("fingerprint", &fingerprint(hash))?,
                    issuer: IdentityValue::new("iss", API_KEY_ISSUER)?,
                })
            })(),
            None => return AuthDecision::InvalidToken("unknown API key".into()),
        };
        match identity {
            Ok(id) => AuthDecision::Allow(id),
            Err(e) => AuthDecision::InvalidToken(format!("API key: {e}")),
        }
    }

    /// `apikeys add`: creates a key and returns it once.
    pub fn add_api_key(&self, name: &str, scopes: Vec<String>) -> anyhow::Result<ApiKeyCreated> {
        let key = self.key;
        let created = self.authority().add_api_key(
            name,
            scopes,
            |k| revocation_hash(&key, k.as_bytes()),
            now(),
        )?;
        log::info!(
            "API key {name} created ({})",
            fingerprint(revocation_hash(&key, created.as_bytes()))
        );
        Ok(ApiKeyCreated {
            name: name.to_string(),
            api_key: created,
        })
    }

    /// `apikeys remove`: forgets the key and revokes it (the kernel drops it from now on).
    pub fn remove_api_key(&self, name: &str) -> anyhow::Result<RevokeReply> {
        let removed = self.authority().remove_api_key(name)?;
        let Some(k) = removed else {
            anyhow::bail!("no API key {name}");
        };
        self.revoke(
            &TokenRef::Hash(crate::types::TokenHash(k.hash)),
            None,
            Some(format!("API key {name} removed")),
            true,
        )
    }

    pub(crate) fn client(&self, auth: &ClientAuth) -> Result<(String, Vec<String>), OAuthError> {
        self.authority()
            .authenticate(&auth.id, &auth.secret)
            .map(|c| (c.id.clone(), c.scopes.clone()))
            .ok_or_else(|| OAuthError::new(401, "invalid_client", "client authentication failed"))
    }

    /// `POST /oauth2/token`.
    pub fn token_grant(
        &self,
        auth: Option<ClientAuth>,
        form: &[(String, String)],
    ) -> Result<Value, OAuthError> {
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let auth = auth.ok_or_else(|| {
            OAuthError::new(401, "invalid_client", "client authentication required")
        })?;
        let (client_id, allowed) = self.client(&auth)?;
        match get("grant_type") {
            Some("client_credentials") => {}
            Some("refresh_token") => return self.refresh_grant(&client_id, form),
            Some(_) => {
                return Err(OAuthError::new(
                    400,
                    "unsupported_grant_type",
                    "grant_type not supported",
                ));
            }
            None => {
                return Err(OAuthError::new(
                    400,
                    "invalid_request",
                    "grant_type missing",
                ));
            }
        }
        let scopes: Vec<String> = match get("scope") {
            Some(s) => s.split_whitespace().map(str::to_string).collect(),
            None => allowed.clone(),
        };
        if let Some(bad) = scopes.iter().find(|s| !allowed.contains(s)) {
            return Err(OAuthError::new(
                400,
                "invalid_scope",
                format!("scope {bad} not allowed for this client"),
            ));
        }
        let key = self.key;
        let issued = self
            .authority()
            .issue(
                |t| revocation_hash(&key, t.as_bytes()),
                &client_id,
                &client_id,
                &scopes,
                &json!({}),
                now(),
            )
            .map_err(|e| OAuthError::new(500, "server_error", e.to_string()))?;
        let fp = fingerprint(revocation_hash(&key, issued.token.as_bytes()));
        self.metrics.count_issued(&issued.kid);
        log::info!("issued {fp} to client {client_id} (jti {})", issued.jti);
        self.emit(
            LifecycleEvent::now(
                EventKind::Issued,
                Some(fp.clone()),
                format!("client {client_id}"),
            )
            .with_jti(&issued.jti),
        );
        self.record(
            &format!("client:{client_id}"),
            "issue",
            vec![fp, format!("jti:{}", issued.jti)],
            "client_credentials",
        )
        .map_err(|e| OAuthError::new(500, "server_error", format!("{e:#}")))?;
        // RFC 6749 section 4.4.3: an access token only, no refresh token.
        Ok(json!({
            "access_token": issued.token, "token_type": "Bearer",
            "expires_in": issued.exp.saturating_sub(now()), "scope": issued.scope,
        }))
    }

    /// `POST /oauth2/revoke` (RFC 7009): 200 whether or not the token was known.
    pub fn revoke_rfc7009(
        &self,
        auth: Option<ClientAuth>,
        form: &[(String, String)],
    ) -> Result<(), OAuthError> {
        let auth = auth.ok_or_else(|| {
            OAuthError::new(401, "invalid_client", "client authentication required")
        })?;
        let (client_id, _) = self.client(&auth)?;
        let Some((_, token)) = form.iter().find(|(n, _)| n == "token") else {
            return Err(OAuthError::new(400, "invalid_request", "token missing"));
        };
        let unavailable =
            |e: anyhow::Error| OAuthError::new(503, "temporarily_unavailable", format!("{e:#}"));
        // The hint only orders the lookups (RFC 7009 section 2.1); both kinds are tried.
        let hint = form
            .iter()
            .find(|(n, _)| n == "token_type_hint")
            .map(|(_, v)| v.as_str());
        if hint != Some("access_token")
            && self
                .revoke_refresh_token(&client_id, token)
                .map_err(unavailable)?
        {
            return Ok(());
        }
        let hashes = crate::revocation::hash_key::TokenHashes::of(&self.key, token);
        let hash = hashes.key;
        // Only the client a token was issued to may revoke it; anything else is ignored
        // silently, as RFC 7009 answers unknown tokens with 200 too.
        let v = self
            .authority()
            .validate(token, (hashes.key, hashes.header), now());
        let until = match &v {
            Ok(v) if v.claim_str("client_id") == Some(client_id.as_str()) => {
                v.exp.map(|e| e + JWT_EXP_MARGIN)
            }
            _ if hint == Some("access_token") => {
                self.revoke_refresh_token(&client_id, token)
                    .map_err(unavailable)?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.revoke(
            &TokenRef::Token(token.clone()),
            until,
            Some(format!("RFC 7009 by client {client_id}")),
            false,
        )
        .map_err(unavailable)?;
        self.metrics.count_revocation("token", "rfc7009");
        self.record(
            &format!("client:{client_id}"),
            "revoke",
            vec![fingerprint(hash)],
            "RFC 7009",
        )
        .map_err(unavailable)
    }

    /// `POST /oauth2/introspect` (RFC 7662) for an authenticated client.
    pub fn introspect_rfc7662(
        &self,
        auth: Option<ClientAuth>,
        form: &[(String, String)],
    ) -> Result<Introspection, OAuthError> {
        let auth = auth.ok_or_else(|| {
            OAuthError::new(401, "invalid_client", "client authentication required")
        })?;
        self.client(&auth)?;
        let Some((_, token)) = form.iter().find(|(n, _)| n == "token") else {
            return Err(OAuthError::new(400, "invalid_request", "token missing"));
        };
        Ok(self.introspect(token))
    }

    /// Introspection: `active` plus claims; inactive for expired, revoked or unknown tokens.
    pub fn introspect(&self, token: &str) -> Introspection {
        let Ok(v) = self.check_token(token) else {
            return Introspection::default();
        };
        let mut claims = serde_json::Map::new();
        claims.insert("token_type".into(), json!("Bearer"));
        for k in [
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "nbf",
            "jti",
            "client_id",
            "scope",
        ] {
            if let Some(val) = v.claims.get(k) {
                claims.insert(k.into(), val.clone());
            }
        }
        Introspection {
            active: true,
            claims,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
