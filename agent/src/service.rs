//! The service: a thin facade that composes the components (revocations, the token authority,
//! the verified-token cache, sessions, monitoring, the kernel programs) into the daemon's use
//! cases. Each component owns its state and its lock; a use case calls them one after another,
//! so the order in which locks are taken is visible in that one function. The only nesting is
//! a renewal, which holds the sessions lock while the authority signs (see `sessions.rs`).

mod admin;
mod check;
mod dispatch;
mod grants;
mod revoke;
pub mod sessions;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
};

use agent_common::{config::Action, hash::HashKey};

use crate::{
    kernel::{
        Programs,
        maps::{KernelConfig, RevocationMaps},
    },
    monitoring::Monitor,
    revocation::{Revocations, store::RevocationStore},
    tokens::{
        authority::{Authority, TokenAuthority},
        cache::{DEFAULT_CAPACITY, TokenCache, VerifiedCache},
        refresh::{RefreshStore, Sessions},
        validate::Policy,
    },
};

pub use check::MAX_TOKEN_BYTES;

/// Fixed settings of a running daemon.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What the kernel does on a hit.
    pub action: Action,
    /// Watched ports.
    pub ports: Vec<u16>,
    /// State directory.
    pub state_dir: PathBuf,
    /// Pin directory.
    pub bpffs: PathBuf,
    /// Header carrying API keys, if any.
    pub api_key_header: Option<String>,
    /// Lifetime of a refresh-token family, in seconds.
    pub refresh_ttl: u64,
    /// Seconds a retired refresh token still rotates once (a lost response); 0 = never.
    pub refresh_grace: u64,
    /// SHA-256 (base64url) of the admin bearer credential, if one is configured.
    pub admin_token_sha256: Option<String>,
}

/// Name of an action for output.
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Drop => "drop",
        Action::Reset => "reset",
        Action::Observe => "observe",
    }
}

/// The opened parts a [`Service`] is made of.
pub struct Parts {
    /// The durable revocation store.
    pub store: RevocationStore,
    /// The kernel's revocation maps.
    pub maps: Box<dyn RevocationMaps>,
    /// The kernel's configuration record, shared with the daemon's tasks.
    pub config: Arc<KernelConfig>,
    /// The kernel programs.
    pub programs: Box<dyn Programs>,
    /// Keys, clients, API keys and the token index.
    pub authority: Authority,
    /// Refresh-token families.
    pub refresh: RefreshStore,
    /// Metrics, events, alerts and the audit trail.
    pub monitor: Monitor,
}

/// The daemon's service.
pub struct Service {
    key: HashKey,
    settings: Settings,
    /// Revocations: store, kernel maps, rules.
    pub revocations: Revocations,
    /// Keys, clients, API keys, the token index.
    pub authority: TokenAuthority,
    /// Verified tokens by hash.
    pub cache: TokenCache,
    /// Refresh-token families.
    pub sessions: Sessions,
    /// Metrics, events, alerts, the audit trail.
    pub monitor: Monitor,
    /// The kernel's configuration record.
    pub config: Arc<KernelConfig>,
    programs: Mutex<Box<dyn Programs>>,
}

impl Service {
    /// Composes the opened parts; call [`Service::sync_kernel`] next.
    pub fn new(key: HashKey, settings: Settings, parts: Parts) -> Self {
        let Parts {
            store,
            maps,
            config,
            programs,
            authority,
            refresh,
            monitor,
        } = parts;
        Self {
            key,
            settings,
            revocations: Revocations::new(key, store, maps, config.clone()),
            authority: TokenAuthority::new(authority),
            cache: TokenCache::new(VerifiedCache::new(
                DEFAULT_CAPACITY,
                Policy::default().leeway,
            )),
            sessions: Sessions::new(refresh),
            monitor,
            config,
            programs: Mutex::new(programs),
        }
    }

    /// The daemon's fixed settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The kernel programs (attach, detach, counters).
    pub fn programs(&self) -> MutexGuard<'_, Box<dyn Programs>> {
        self.programs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Attaches to `iface` (and audits it).
    pub fn attach(&self, iface: &str, hook: crate::kernel::Hook) -> anyhow::Result<()> {
        self.programs().attach(iface, hook)?;
        self.monitor.record(
            "system",
            "attach",
            vec![format!("iface:{iface}"), hook.name().to_string()],
            "",
        )
    }
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests;
