//! User sessions: a trusted login service (a client with the `sessions` scope) opens a session
//! for a subject it has authenticated and gets an access token and a refresh token; renewal goes
//! through `grant_type=refresh_token` with rotation and reuse detection (RFC 9700 section 4.14).
//! Reuse of a retired refresh token ends the whole family and revokes its access tokens, into
//! the kernel map too.
//!
//! Lock order: a renewal holds the sessions lock from the rotation to the recording of the new
//! access token, and takes the authority's lock (to sign) and the revocations' (to check rules)
//! inside it. Nothing takes the sessions lock while holding another.

use agent_common::hash::revocation_hash;
use serde_json::{Value, json};

use super::Service;
use crate::{
    clock::{JWT_EXP_MARGIN, now},
    monitoring::{
        lifecycle::{EventKind, LifecycleEvent},
        metrics::{RevocationKind, RevocationSource},
    },
    oauth::{ClientAuth, NewSession, OAuthError},
    tokens::{
        authority::Issued,
        refresh::{Family, RefreshStore, Rotation},
    },
    types::{RuleKind, TokenHash},
};

/// The scope a client needs to open sessions and set claims.
pub const SESSIONS_SCOPE: &str = "sessions";
/// Claims a login service may not set (the issuer owns them).
const RESERVED: &[&str] = &[
    "iss",
    "sub",
    "aud",
    "exp",
    "nbf",
    "iat",
    "jti",
    "client_id",
    "scope",
    "cnf",
];
/// Largest extra claims, encoded.
const MAX_CLAIMS_BYTES: usize = 2048;

fn check_claims(claims: &Value) -> Result<(), OAuthError> {
    let Value::Object(m) = claims else {
        return Err(OAuthError::InvalidRequest(
            "claims must be a JSON object".into(),
        ));
    };
    if let Some(k) = m.keys().find(|k| RESERVED.contains(&k.as_str())) {
        return Err(OAuthError::InvalidRequest(format!(
            "claim {k} is set by the issuer"
        )));
    }
    if serde_json::to_vec(claims).map_or(0, |v| v.len()) > MAX_CLAIMS_BYTES {
        return Err(OAuthError::InvalidRequest(
            "claims larger than 2 KiB".into(),
        ));
    }
    Ok(())
}

impl Service {
    /// Authenticates a client that may manage sessions; returns its id and allowed scopes.
    fn sessions_client(
        &self,
        auth: Option<ClientAuth>,
    ) -> Result<(String, Vec<String>), OAuthError> {
        let (id, scopes) = self.client(auth)?;
        if !scopes.iter().any(|s| s == SESSIONS_SCOPE) {
            return Err(OAuthError::InsufficientScope(
                "this client may not manage sessions (needs scope sessions)",
            ));
        }
        Ok((id, scopes))
    }

    /// `POST /v1/sessions`: a login service opens a session for a subject it authenticated.
    pub fn create_session(
        &self,
        auth: Option<ClientAuth>,
        body: NewSession,
    ) -> Result<Value, OAuthError> {
        let (client_id, allowed) = self.sessions_client(auth)?;
        let sub = body.sub.as_str();
        if sub.is_empty() || sub.len() > 255 {
            return Err(OAuthError::InvalidRequest(
                "sub (1-255 characters) required".into(),
            ));
        }
        let scopes: Vec<String> = body.scope.split_whitespace().map(str::to_string).collect();
        // A user's token may carry the login service's scopes, except the right to make sessions.
        if let Some(bad) = scopes
            .iter()
            .find(|s| *s == SESSIONS_SCOPE || !allowed.contains(s))
        {
            return Err(OAuthError::InvalidScope(format!(
                "scope {bad} not grantable by this client"
            )));
        }
        if let Some(claims) = &body.claims {
            check_claims(claims)?;
        }
        let mut refresh = self.sessions.transaction();
        if let Some(claims) = body.claims {
            refresh
                .set_claims(sub, claims)
                .map_err(OAuthError::server)?;
        }
        let (family_id, refresh_token) = refresh
            .create(
                sub,
                &client_id,
                scopes.clone(),
                now(),
                self.settings().refresh_ttl,
            )
            .map_err(OAuthError::server)?;
        log::info!("session opened for a subject by client {client_id} (family {family_id})");
        let issued = self.issue_in_family(&mut refresh, &family_id, &client_id, sub, &scopes)?;
        drop(refresh);
        self.report_issued(&family_id, &client_id, issued, refresh_token, "issue")
    }

    /// `PUT /v1/sessions/{sub}/claims`: replaces the extra claims of later tokens for `sub`.
    pub fn set_session_claims(
        &self,
        auth: Option<ClientAuth>,
        sub: &str,
        claims: Value,
    ) -> Result<(), OAuthError> {
        self.sessions_client(auth)?;
        check_claims(&claims)?;
        self.sessions
            .set_claims(sub, claims)
            .map_err(OAuthError::server)
    }

    /// Issues an access token in a family and records it there, in the caller's critical
    /// section on the sessions: a concurrent reuse that ends the family finds the token in it
    /// and revokes it with the rest.
    fn issue_in_family(
        &self,
        refresh: &mut RefreshStore,
        family_id: &str,
        client_id: &str,
        sub: &str,
        scopes: &[String],
    ) -> Result<Issued, OAuthError> {
        let key = self.key;
        let extra = refresh.claims(sub);
        let now = now();
        let issued = self
            .authority
            .issue(
                |t| revocation_hash(&key, t.as_bytes()),
                client_id,
                sub,
                scopes,
                &extra,
                now,
            )
            .map_err(OAuthError::server)?;
        let hash = revocation_hash(&key, issued.token.as_bytes());
        refresh
            .record_access(family_id, hash, issued.exp, now)
            .map_err(OAuthError::server)?;
        Ok(issued)
    }

    /// Reports an access token issued in a family (metrics, event, audit record) and builds
    /// the token response.
    fn report_issued(
        &self,
        family_id: &str,
        client_id: &str,
        issued: Issued,
        refresh_token: String,
        action: &str,
    ) -> Result<Value, OAuthError> {
        let now = now();
        let fp = TokenHash(revocation_hash(&self.key, issued.token.as_bytes())).to_string();
        self.monitor.metrics.count_issued(&issued.kid);
        let kind = if action == "renew" {
            self.monitor.metrics.renewed.inc();
            EventKind::Renewed
        } else {
            EventKind::Issued
        };
        self.monitor.emit(
            LifecycleEvent::now(kind, Some(fp.clone()), format!("family {family_id}"))
                .with_jti(&issued.jti),
        );
        self.monitor
            .record(
                &format!("client:{client_id}"),
                action,
                vec![
                    fp,
                    format!("jti:{}", issued.jti),
                    format!("family:{family_id}"),
                ],
                "",
            )
            .map_err(OAuthError::server)?;
        Ok(json!({
            "access_token": issued.token, "token_type": "Bearer",
            "expires_in": issued.exp.saturating_sub(now), "scope": issued.scope,
            "refresh_token": refresh_token,
        }))
    }

    /// `grant_type=refresh_token` for an authenticated client.
    pub(crate) fn refresh_grant(
        &self,
        client_id: &str,
        token: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Value, OAuthError> {
        let unknown = OAuthError::InvalidGrant("refresh token unknown, expired or revoked");
        let token =
            token.ok_or_else(|| OAuthError::InvalidRequest("refresh_token missing".into()))?;
        // The sessions stay locked from the rotation to the recording of the new access token:
        // two parallel refreshes of one token are one rotation and one reuse, and the reuse
        // always finds (and revokes) the token the rotation issued.
        let mut refresh = self.sessions.transaction();
        // A token of another client is not rotated (and not treated as reuse either); a scope
        // beyond the session is refused before anything rotates.
        let family_scopes = match refresh.family_of(token) {
            Some((_, f)) if f.client_id == client_id => f.scopes.clone(),
            _ => return Err(unknown),
        };
        let scopes = match scope {
            // RFC 6749 section 6: a narrower scope may be asked for.
            Some(s) => {
                let asked: Vec<String> = s.split_whitespace().map(str::to_string).collect();
                if let Some(bad) = asked.iter().find(|a| !family_scopes.contains(a)) {
                    return Err(OAuthError::InvalidScope(format!(
                        "scope {bad} exceeds the session"
                    )));
                }
                asked
            }
            None => family_scopes,
        };
        let rotation = refresh
            .rotate(token, now(), self.settings().refresh_grace)
            .map_err(OAuthError::server)?;
        match rotation {
            Rotation::Unknown => Err(unknown),
            Rotation::Reused { family_id, family } => {
                drop(refresh);
                log::warn!("refresh-token reuse detected: family {family_id} revoked");
                self.monitor.metrics.reuse_detected.inc();
                self.monitor.emit(LifecycleEvent::now(
                    EventKind::ReuseDetected,
                    None,
                    format!("family {family_id} revoked"),
                ));
                self.monitor
                    .metrics
                    .count_revocation(RevocationKind::Family, RevocationSource::Reuse);
                self.revoke_family_access(&family, "refresh token reuse")
                    .map_err(OAuthError::server)?;
                self.monitor
                    .record(
                        &format!("client:{client_id}"),
                        "reuse_detected",
                        vec![format!("family:{family_id}")],
                        "retired refresh token presented",
                    )
                    .map_err(OAuthError::server)?;
                Err(OAuthError::InvalidGrant(
                    "refresh token reused; the session is revoked",
                ))
            }
            Rotation::Rotated {
                family_id,
                family,
                refresh_token,
            } => {
                if let Some(kind) = self.session_rule(&family) {
                    refresh.end(&family_id).map_err(OAuthError::server)?;
                    drop(refresh);
                    self.monitor
                        .metrics
                        .count_revocation(RevocationKind::Family, RevocationSource::SessionEnd);
                    self.revoke_family_access(&family, kind.name())
                        .map_err(OAuthError::server)?;
                    return Err(OAuthError::InvalidGrant(
                        "the session's subject or client is revoked",
                    ));
                }
                let issued = self.issue_in_family(
                    &mut refresh,
                    &family_id,
                    client_id,
                    &family.sub,
                    &scopes,
                )?;
                drop(refresh);
                self.report_issued(&family_id, client_id, issued, refresh_token, "renew")
            }
        }
    }

    /// A sub or client rule (for every issuer, or this host's) made after the session began.
    fn session_rule(&self, f: &Family) -> Option<RuleKind> {
        let issuer = self.authority.issuer();
        [
            (RuleKind::Sub, f.sub.as_str()),
            (RuleKind::Client, f.client_id.as_str()),
        ]
        .into_iter()
        .find(|(kind, name)| {
            self.revocations
                .rule(*kind, &issuer, name)
                .is_some_and(|r| r.revoked_at >= f.created_at)
        })
        .map(|(kind, _)| kind)
    }

    /// Revokes every live access token of an ended family: all are recorded in the store
    /// first, then pushed to the kernel.
    fn revoke_family_access(&self, f: &Family, why: &str) -> anyhow::Result<usize> {
        let batch: Vec<(u64, u64)> = f
            .access
            .iter()
            .map(|(hash, exp)| (*hash, exp + JWT_EXP_MARGIN))
            .collect();
        self.revoke_hashes(&batch, &format!("family revoked: {why}"))
    }

    /// RFC 7009 for a refresh token: ends its family if `client_id` owns it. Returns whether
    /// the token was a known refresh token.
    pub(crate) fn revoke_refresh_token(
        &self,
        client_id: &str,
        token: &str,
    ) -> anyhow::Result<bool> {
        let family_id = match self.sessions.owner(token) {
            Some((id, owner)) if owner == client_id => id,
            Some(_) => return Ok(true),
            None => return Ok(false),
        };
        if let Some(f) = self.sessions.end(&family_id)? {
            self.revoke_family_access(&f, "refresh token revoked (RFC 7009)")?;
            self.monitor
                .metrics
                .count_revocation(RevocationKind::Family, RevocationSource::Rfc7009);
            self.monitor.record(
                &format!("client:{client_id}"),
                "revoke_session",
                vec![format!("family:{family_id}")],
                "RFC 7009",
            )?;
        }
        Ok(true)
    }

    /// Ends the sessions a sub or client rule covers; returns how many.
    pub(crate) fn revoke_sessions_by(
        &self,
        kind: RuleKind,
        name: &str,
        why: &str,
    ) -> anyhow::Result<usize> {
        let ended = match kind {
            RuleKind::Sub => self.sessions.end_where(|f| f.sub == name)?,
            RuleKind::Client => self.sessions.end_where(|f| f.client_id == name)?,
            RuleKind::Jti | RuleKind::Kid => return Ok(0),
        };
        for f in &ended {
            self.revoke_family_access(f, why)?;
        }
        Ok(ended.len())
    }
}
