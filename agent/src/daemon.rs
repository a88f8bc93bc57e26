//! `tokenwall run`: resolve the settings, open the state, bring the kernel path up (reusing
//! pinned state), keep it in step with the store, and serve the control socket and the HTTP API
//! until SIGTERM/SIGINT. Stopping leaves enforcement on.

pub mod config_file;
pub mod settings;
pub mod tasks;

use std::{os::unix::fs::DirBuilderExt as _, path::PathBuf, sync::Arc};

use agent_common::{
    config::{Config, HeaderNeedle, NEEDLE_BEARER, NEEDLE_RAW},
    hash::HashKey,
};
use anyhow::{Context as _, bail};
use tokio::signal::unix::SignalKind;

use crate::{
    clock::{clock_offset_ns, now},
    control, http,
    kernel::{self, Kernel, maps::KernelConfig},
    monitoring::{
        Monitor,
        alerts::{AlertEngine, DELIVERY_TIMEOUT, Webhook},
        audit::AuditLog,
        metrics::{DeliveryResult, Metrics},
    },
    revocation::{hash_key, store::RevocationStore},
    service::{Parts, Service, Settings, action_name},
    tokens::{authority::Authority, refresh::RefreshStore},
};
use config_file::ConfigFile;
use settings::{Resolved, RunSettings};

/// `tokenwall run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Settings, clients, trusted keys and API keys in TOML (flags given here win).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Every setting.
    #[command(flatten)]
    pub settings: RunSettings,
}

/// Builds the kernel configuration.
pub fn build_config(key: HashKey, s: &Resolved) -> anyhow::Result<Config> {
    let mut cfg = Config {
        key,
        clock_offset_ns: clock_offset_ns(),
        action: s.action as u32,
        monitoring: u32::from(s.monitoring),
        ..Config::default()
    };
    for (slot, port) in cfg.ports.iter_mut().zip(&s.ports) {
        *slot = *port;
    }
    cfg.needles[0] =
        HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if let Some(name) = &s.api_key_header {
        cfg.needles[1] = HeaderNeedle::new(name.as_bytes(), NEEDLE_RAW).map_err(|e| {
            anyhow::anyhow!("--api-key-header {name:?} is not a usable header name: {e:?}")
        })?;
    }
    Ok(cfg)
}

/// SHA-256 of the admin bearer credential in `path` (at least 32 characters).
fn admin_token_digest(path: &std::path::Path) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token file {}", path.display()))?;
    let token = token.trim();
    if token.len() < 32 {
        bail!(
            "the admin token in {} must have at least 32 characters",
            path.display()
        );
    }
    Ok(crate::tokens::private_file::sha256_b64(token))
}

/// Monitoring: metrics, audit trail, alert rules and webhook.
fn open_monitor(s: &Resolved) -> anyhow::Result<Monitor> {
    let audit = AuditLog::open(&s.state_dir, crate::monitoring::audit::DEFAULT_MAX_BYTES)?;
    let metrics = Metrics::new(s.version_claim.clone());
    let webhook = s.alert_webhook.clone().map(|url| {
        let deliveries = metrics.alert_deliveries.clone();
        Webhook::start(url, s.alert_queue, DELIVERY_TIMEOUT, move |ok| {
            let result = if ok {
                DeliveryResult::Delivered
            } else {
                DeliveryResult::Failed
            };
            deliveries
                .get_or_create(&crate::monitoring::metrics::ResultLabel { result })
                .inc();
        })
    });
    let alerts = AlertEngine::new(s.alert_rules.clone());
    Ok(Monitor::new(metrics, audit, alerts, webhook, s.monitoring))
}

/// Runs the daemon.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let s = args.settings.over(file.settings())?.resolve()?;
    kernel::check_privileges()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&s.state_dir)
        .with_context(|| format!("creating state directory {}", s.state_dir.display()))?;
    let key = hash_key::load_or_create(&s.state_dir)?;
    let cfg = build_config(key, &s)?;
    let (store, report) = RevocationStore::open(&s.state_dir, now())
        .with_context(|| format!("opening the revocation store in {}", s.state_dir.display()))?;
    log::info!(
        "store: {} records replayed, {} live, {} expired dropped",
        report.records,
        report.live,
        report.expired_dropped
    );
    let mut kernel = Kernel::load_with(
        &s.bpffs,
        log::max_level(),
        crate::kernel::LoadOptions {
            max_revoked: s.max_revoked,
        },
    )?;
    let replaced = kernel.replaced_maps().to_vec();
    kernel.set_config(&cfg)?;
    let events = kernel.take_events()?;
    let (programs, maps, config) = kernel.into_parts();
    let listener = control::server::bind(&s.control_socket).await?;
    let mut authority = Authority::open(&s.state_dir, s.authority.clone())?;
    file.apply(
        &mut authority,
        |t| agent_common::hash::revocation_hash(&key, t.as_bytes()),
        now(),
    )?;
    let settings = Settings {
        action: s.action,
        ports: s.ports.clone(),
        state_dir: s.state_dir.clone(),
        bpffs: s.bpffs.clone(),
        api_key_header: s.api_key_header.clone(),
        refresh_ttl: s.refresh_ttl,
        refresh_grace: s.refresh_grace,
        admin_token_sha256: s
            .admin_token_file
            .as_deref()
            .map(admin_token_digest)
            .transpose()?,
    };
    let parts = Parts {
        store,
        maps: Box::new(maps),
        config: Arc::new(KernelConfig::new(Box::new(config))),
        programs: Box::new(programs),
        authority,
        refresh: RefreshStore::open(&s.state_dir)?,
        monitor: open_monitor(&s)?,
    };
    let service = Arc::new(Service::new(key, settings, parts));
    let (inserted, removed, overflow) = service.sync_kernel()?;
    log::info!(
        "kernel maps in step with the store: {inserted} entries, {removed} stale removed{}",
        if overflow > 0 {
            format!(", {overflow} did not fit (enforced by forward-auth)")
        } else {
            String::new()
        }
    );
    for r in &replaced {
        // The new map is filled before the attach below swaps the programs in their links.
        log::warn!(
            "kernel map {} replaced ({} -> {} entries) and filled from the store before the programs were swapped",
            r.name,
            r.old_max_entries,
            r.new_max_entries
        );
    }
    if let Some(path) = &args.config {
        service.monitor.record(
            "system",
            "config_applied",
            vec![path.display().to_string()],
            "",
        )?;
    }
    for iface in &s.ifaces {
        service.attach(iface, s.hook)?;
    }
    tokio::spawn(tasks::forward_events(events, service.clone()));
    tokio::spawn(tasks::sweep(service.clone()));
    tokio::spawn(tasks::refresh_jwks(service.clone()));
    tokio::spawn(control::server::serve(listener, service.clone()));
    let http_listener = tokio::net::TcpListener::bind(s.http)
        .await
        .with_context(|| format!("binding the HTTP API on {}", s.http))?;
    tokio::spawn(http::serve(http_listener, service.clone(), s.http_limits));
    log::info!(
        "ready: {} on {} ports {:?}, action {}, control socket {}",
        s.hook.name(),
        s.ifaces.join(","),
        s.ports,
        action_name(s.action),
        s.control_socket.display()
    );
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    log::info!("stopping; enforcement stays attached (tokenwall detach removes it)");
    let _ = std::fs::remove_file(&s.control_socket);
    Ok(())
}
