//! OAuth 2.0 endpoints' use cases: client authentication, `client_credentials` issuance
//! (RFC 6749 section 4.4), revocation (RFC 7009), introspection (RFC 7662), and API keys.

use agent_common::hash::revocation_hash;
use serde_json::{Value, json};

use super::Service;
use crate::{
    clock::{JWT_EXP_MARGIN, now},
    control::protocol::{ApiKeyCreated, Introspection, RevokeReply, TokenRef},
    monitoring::{
        lifecycle::{EventKind, LifecycleEvent},
        metrics::{RevocationKind, RevocationSource},
    },
    oauth::{ClientAuth, OAuthError, TokenForm, TokenParamForm},
    types::{TokenHash, TokenHashes},
};

/// Claims introspection hands back for an active token (RFC 7662 section 2.2).
const INTROSPECTED: [&str; 9] = [
    "iss",
    "sub",
    "aud",
    "exp",
    "iat",
    "nbf",
    "jti",
    "client_id",
    "scope",
];

impl Service {
    /// Authenticates a client; returns its id and allowed scopes.
    pub(crate) fn client(
        &self,
        auth: Option<ClientAuth>,
    ) -> Result<(String, Vec<String>), OAuthError> {
        let auth = auth.ok_or(OAuthError::InvalidClient("client authentication required"))?;
        self.authority
            .authenticate(&auth.id, &auth.secret)
            .map(|c| (c.id, c.scopes))
            .ok_or(OAuthError::InvalidClient("client authentication failed"))
    }

    /// `POST /oauth2/token`.
    pub fn token_grant(
        &self,
        auth: Option<ClientAuth>,
        form: TokenForm,
    ) -> Result<Value, OAuthError> {
        let (client_id, allowed) = self.client(auth)?;
        match form.grant_type.as_deref() {
            Some("client_credentials") => {}
            Some("refresh_token") => {
                return self.refresh_grant(
                    &client_id,
                    form.refresh_token.as_deref(),
                    form.scope.as_deref(),
                );
            }
            Some(_) => return Err(OAuthError::UnsupportedGrantType),
            None => return Err(OAuthError::InvalidRequest("grant_type missing".into())),
        }
        let scopes: Vec<String> = match &form.scope {
            Some(s) => s.split_whitespace().map(str::to_string).collect(),
            None => allowed.clone(),
        };
        if let Some(bad) = scopes.iter().find(|s| !allowed.contains(s)) {
            return Err(OAuthError::InvalidScope(format!(
                "scope {bad} not allowed for this client"
            )));
        }
        let key = self.key;
        let issued = self
            .authority
            .issue(
                |t| revocation_hash(&key, t.as_bytes()),
                &client_id,
                &client_id,
                &scopes,
                &json!({}),
                now(),
            )
            .map_err(OAuthError::server)?;
        let fp = TokenHash(revocation_hash(&key, issued.token.as_bytes())).to_string();
        self.monitor.metrics.count_issued(&issued.kid);
        log::info!("issued {fp} to client {client_id} (jti {})", issued.jti);
        self.monitor.emit(
            LifecycleEvent::now(
                EventKind::Issued,
                Some(fp.clone()),
                format!("client {client_id}"),
            )
            .with_jti(&issued.jti),
        );
        self.monitor
            .record(
                &format!("client:{client_id}"),
                "issue",
                vec![fp, format!("jti:{}", issued.jti)],
                "client_credentials",
            )
            .map_err(OAuthError::server)?;
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
        form: TokenParamForm,
    ) -> Result<(), OAuthError> {
        let (client_id, _) = self.client(auth)?;
        let token = form
            .token
            .ok_or_else(|| OAuthError::InvalidRequest("token missing".into()))?;
        // The hint only orders the lookups (RFC 7009 section 2.1); both kinds are tried.
        let hint = form.token_type_hint.as_deref();
        if hint != Some("access_token")
            && self
                .revoke_refresh_token(&client_id, &token)
                .map_err(OAuthError::unavailable)?
        {
            return Ok(());
        }
        let hashes = TokenHashes::of(&self.key, &token);
        // Only the client a token was issued to may revoke it; anything else is ignored
        // silently, as RFC 7009 answers unknown tokens with 200 too.
        let v = self
            .authority
            .validate(&token, (hashes.key, hashes.header), now());
        let until = match &v {
            Ok(v) if v.claim_str("client_id") == Some(client_id.as_str()) => {
                v.exp.map(|e| e + JWT_EXP_MARGIN)
            }
            _ if hint == Some("access_token") => {
                self.revoke_refresh_token(&client_id, &token)
                    .map_err(OAuthError::unavailable)?;
                return Ok(());
            }
            _ => return Ok(()),
        };
        self.revoke(
            &TokenRef::Token(token),
            until,
            Some(format!("RFC 7009 by client {client_id}")),
            false,
        )
        .map_err(OAuthError::unavailable)?;
        self.monitor
            .metrics
            .count_revocation(RevocationKind::Token, RevocationSource::Rfc7009);
        self.monitor
            .record(
                &format!("client:{client_id}"),
                "revoke",
                vec![TokenHash(hashes.key).to_string()],
                "RFC 7009",
            )
            .map_err(OAuthError::unavailable)
    }

    /// `POST /oauth2/introspect` (RFC 7662) for an authenticated client.
    pub fn introspect_rfc7662(
        &self,
        auth: Option<ClientAuth>,
        form: TokenParamForm,
    ) -> Result<Introspection, OAuthError> {
        self.client(auth)?;
        let token = form
            .token
            .ok_or_else(|| OAuthError::InvalidRequest("token missing".into()))?;
        Ok(self.introspect(&token))
    }

    /// Introspection: `active` plus claims; inactive for expired, revoked or unknown tokens.
    pub fn introspect(&self, token: &str) -> Introspection {
        let Ok(v) = self.check_token(token) else {
            return Introspection::default();
        };
        let mut claims = serde_json::Map::new();
        claims.insert("token_type".into(), json!("Bearer"));
        for k in INTROSPECTED {
            if let Some(val) = v.claims.get(k) {
                claims.insert(k.into(), val.clone());
            }
        }
        Introspection {
            active: true,
            claims,
        }
    }

    /// `apikeys add`: creates a key and returns it once.
    pub fn add_api_key(&self, name: &str, scopes: Vec<String>) -> anyhow::Result<ApiKeyCreated> {
        let key = self.key;
        let created = self.authority.add_api_key(
            name,
            scopes,
            |k| revocation_hash(&key, k.as_bytes()),
            now(),
        )?;
        log::info!(
            "API key {name} created ({})",
            TokenHash(revocation_hash(&key, created.as_bytes()))
        );
        Ok(ApiKeyCreated {
            name: name.to_string(),
            api_key: created,
        })
    }

    /// `apikeys remove`: forgets the key and revokes it (the kernel drops it from now on).
    pub fn remove_api_key(&self, name: &str) -> anyhow::Result<RevokeReply> {
        let Some(k) = self.authority.remove_api_key(name)? else {
            anyhow::bail!("no API key {name}");
        };
        self.revoke(
            &TokenRef::Hash(TokenHash(k.hash)),
            None,
            Some(format!("API key {name} removed")),
            true,
        )
    }
}
