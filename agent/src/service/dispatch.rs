//! The service as the control socket's [`Handler`]: each request of the typed protocol calls
//! one service method, and every change is audited before it is acknowledged.

use serde_json::Value;
use tokio::sync::broadcast;

use super::Service;
use crate::{
    control::{
        protocol::{self as p, Command, Envelope, EventLine, Request, TokenRef},
        server::Handler,
    },
    monitoring::{
        lifecycle::LifecycleEvent,
        metrics::{RevocationKind, RevocationSource},
    },
};

impl Handler for Service {
    fn handle(&self, req: Request, actor: &str) -> Envelope {
        handle_as(self, req, actor)
    }

    fn hit_events(&self) -> broadcast::Receiver<EventLine> {
        self.monitor.hit_events()
    }

    fn lifecycle_events(&self) -> broadcast::Receiver<LifecycleEvent> {
        self.monitor.lifecycle_events()
    }
}

/// Answers one request for `actor` (`uid:N`, `admin`): a state change is in the audit log
/// (fsynced) before the reply. Streams are answered by the socket server, not here.
fn handle_as(svc: &Service, req: Request, actor: &str) -> Envelope {
    let audited = (!req.is_read_only()).then(|| (req.command(), req.audit_subjects()));
    let token_fp = match &req {
        Request::Revoke(p::Revoke {
            token: t @ TokenRef::Token(_),
            ..
        })
        | Request::Unrevoke(p::Unrevoke {
            token: t @ TokenRef::Token(_),
            ..
        }) => svc.hash_of(t).ok().map(|h| h.to_string()),
        _ => None,
    };
    let counted = match &req {
        Request::Revoke(r) => Some(if r.api_key {
            RevocationKind::ApiKey
        } else {
            RevocationKind::Token
        }),
        Request::RevokeBy(r) => Some(r.kind.into()),
        Request::ApiKeysRemove(_) => Some(RevocationKind::ApiKey),
        _ => None,
    };
    let unrevoke = matches!(req, Request::Unrevoke(_));
    let mut result = dispatch(svc, req);
    if result.is_ok() {
        if let Some(kind) = counted {
            svc.monitor
                .metrics
                .count_revocation(kind, RevocationSource::Operator);
        }
        if unrevoke {
            svc.monitor.metrics.unrevoked.inc();
        }
    }
    if let (Ok(_), Some((action, (mut subjects, reason)))) = (&result, audited) {
        subjects.extend(token_fp);
        if let Err(e) = svc.monitor.record(actor, &action, subjects, &reason) {
            result = Err(e.context("the change was made, but writing the audit record failed"));
        }
    }
    match result {
        Ok(data) => Envelope {
            ok: true,
            error: None,
            data: Some(data),
        },
        Err(e) => Envelope::err(format!("{e:#}")),
    }
}

/// The reply of command `C`, as JSON: the type checks that each arm answers what the CLI reads.
fn reply<C: Command>(r: anyhow::Result<C::Reply>) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(r?)?)
}

fn dispatch(svc: &Service, req: Request) -> anyhow::Result<Value> {
    match req {
        Request::Revoke(c) => {
            reply::<p::Revoke>(svc.revoke(&c.token, c.until, c.reason, c.api_key))
        }
        Request::Unrevoke(c) => reply::<p::Unrevoke>(svc.unrevoke(&c.token, c.reason)),
        Request::RevokeBy(c) => reply::<p::RevokeBy>(svc.revoke_by(
            c.kind,
            &c.name,
            c.issuer.as_deref(),
            c.until,
            c.reason,
        )),
        Request::Status(_) => reply::<p::Status>(svc.status()),
        Request::Detach(c) => reply::<p::Detach>(svc.detach(&c.iface)),
        Request::Fingerprint(c) => reply::<p::Fingerprint>(
            svc.hash_of(&c.token)
                .map(|fingerprint| p::FingerprintReply { fingerprint }),
        ),
        Request::TokenShow(c) => reply::<p::TokenShow>(svc.token_show(c)),
        Request::Top(_) => reply::<p::Top>(svc.top()),
        Request::Monitoring(c) => reply::<p::Monitoring>(svc.set_monitoring(c.on)),
        Request::TokensList(c) => reply::<p::TokensList>(Ok(svc.tokens_list(
            c.expiring_within,
            c.revoked,
            c.sub.as_deref(),
        ))),
        Request::Introspect(c) => reply::<p::Introspect>(match &c.token {
            TokenRef::Token(t) => svc.hash_of(&c.token).map(|_| svc.introspect(t.trim())),
            TokenRef::Hash(_) => Err(anyhow::anyhow!("introspection needs the token itself")),
        }),
        Request::ClientsAdd(c) => reply::<p::ClientsAdd>(svc.clients_add(&c.id, c.scopes)),
        Request::ClientsList(_) => reply::<p::ClientsList>(Ok(svc.clients_list())),
        Request::ClientsRemove(c) => reply::<p::ClientsRemove>(svc.clients_remove(&c.id)),
        Request::KeysAdd(c) => reply::<p::KeysAdd>(svc.keys_add(c.key)),
        Request::KeysList(_) => reply::<p::KeysList>(svc.keys_list()),
        Request::KeysRotate(_) => reply::<p::KeysRotate>(svc.keys_rotate()),
        Request::KeysRemove(c) => reply::<p::KeysRemove>(svc.keys_remove(&c.id)),
        Request::ApiKeysAdd(c) => reply::<p::ApiKeysAdd>(svc.add_api_key(&c.name, c.scopes)),
        Request::ApiKeysList(_) => reply::<p::ApiKeysList>(Ok(svc.api_keys_list())),
        Request::ApiKeysRemove(c) => reply::<p::ApiKeysRemove>(svc.remove_api_key(&c.name)),
        Request::Events(_) | Request::Watch(_) => {
            Err(anyhow::anyhow!("a stream: answered by the socket server"))
        }
    }
}
