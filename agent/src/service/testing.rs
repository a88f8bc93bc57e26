//! A [`Service`] on in-memory kernel maps, programs and configuration, with its state in a
//! temporary directory: the whole daemon minus the kernel, for unit tests that run without
//! root.

use std::sync::Arc;

use agent_common::hash::HashKey;
use serde_json::Value;

use super::{Parts, Service, Settings};
use crate::{
    clock::now,
    kernel::{
        MemoryPrograms,
        maps::{KernelConfig, MemoryConfig, MemoryMaps},
    },
    monitoring::{
        Monitor,
        alerts::{AlertEngine, AlertRules},
        audit::{AuditLog, DEFAULT_MAX_BYTES},
        metrics::Metrics,
    },
    oauth::{ClientAuth, TokenForm},
    revocation::store::RevocationStore,
    tokens::{
        authority::{Authority, Settings as AuthoritySettings},
        refresh::RefreshStore,
        signing::SigningAlg,
    },
};

/// This test host's issuer.
pub const ISSUER: &str = "https://tokenwall.test";

/// A service and the directory holding its state.
pub struct TestService {
    /// The service.
    pub svc: Arc<Service>,
    /// Its state directory (removed on drop; kept alive as long as the service).
    _dir: tempfile::TempDir,
}

/// A service whose kernel maps hold at most `capacity` entries each (`None`: unbounded).
pub fn service_with(capacity: Option<usize>, refresh_grace: u64) -> TestService {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = RevocationStore::open(dir.path(), now()).unwrap();
    let maps = capacity.map_or_else(MemoryMaps::default, MemoryMaps::with_capacity);
    let authority = Authority::open(
        dir.path(),
        AuthoritySettings {
            issuer: ISSUER.into(),
            audience: "api".into(),
            access_ttl: 900,
            jwks_min_refetch: 30,
            signing_alg: SigningAlg::Es256,
        },
    )
    .unwrap();
    let monitor = Monitor::new(
        Metrics::new(None),
        AuditLog::open(dir.path(), DEFAULT_MAX_BYTES).unwrap(),
        AlertEngine::new(AlertRules::default()),
        None,
        true,
    );
    let parts = Parts {
        store,
        maps: Box::new(maps),
        config: Arc::new(KernelConfig::new(Box::new(MemoryConfig::default()))),
        programs: Box::new(MemoryPrograms::default()),
        authority,
        refresh: RefreshStore::open(dir.path()).unwrap(),
        monitor,
    };
    let settings = Settings {
        action: agent_common::config::Action::Reset,
        ports: vec![8080],
        state_dir: dir.path().to_path_buf(),
        bpffs: dir.path().join("bpffs"),
        api_key_header: Some("X-Api-Key".into()),
        refresh_ttl: 3600,
        refresh_grace,
        admin_token_sha256: None,
    };
    let key = HashKey::from_bytes(*b"unit-test-key-16");
    let svc = Arc::new(Service::new(key, settings, parts));
    svc.sync_kernel().unwrap();
    TestService { svc, _dir: dir }
}

/// A service with unbounded maps and no refresh grace.
pub fn service() -> TestService {
    service_with(None, 0)
}

impl TestService {
    /// Registers a client; returns its credentials.
    pub fn client(&self, id: &str, scopes: &[&str]) -> ClientAuth {
        let secret = self
            .svc
            .authority
            .add_client(id, scopes.iter().map(|s| s.to_string()).collect())
            .unwrap();
        ClientAuth {
            id: id.into(),
            secret,
        }
    }

    /// An access token from `client_credentials`.
    pub fn token(&self, auth: &ClientAuth) -> String {
        let reply = self
            .svc
            .token_grant(
                Some(ClientAuth {
                    id: auth.id.clone(),
                    secret: auth.secret.clone(),
                }),
                TokenForm {
                    grant_type: Some("client_credentials".into()),
                    ..TokenForm::default()
                },
            )
            .unwrap();
        reply["access_token"].as_str().unwrap().to_string()
    }
}

/// The claims of a JWT, unverified.
pub fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
