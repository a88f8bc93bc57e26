//! `tokenwall run`: bring the kernel path up (reusing pinned state), keep it in step with the
//! store, and serve the control socket until SIGTERM/SIGINT. Stopping leaves enforcement on.

use std::{os::unix::fs::DirBuilderExt as _, sync::Arc, time::Duration};

use agent_common::{
    MAX_PORTS,
    config::{Action, Config, HeaderNeedle, NEEDLE_BEARER, NEEDLE_RAW},
    event::{HIT_PASSED_TO_STACK, HitEvent, MATCH_HEADER_SEGMENT},
    hash::HashKey,
};
use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind};

use crate::{
    alerts::{AlertEngine, AlertRules, Webhook},
    api::EventLine,
    audit::AuditLog,
    cli::{ActionArg, OnOff, RunArgs},
    config_file::ConfigFile,
    control,
    hashkey::{self, fingerprint},
    http,
    kernel::{self, Kernel},
    lifecycle::{EventKind, LifecycleEvent},
    metrics::{Metrics, ResultLabel},
    service::{Parts, Service, Settings, action_name},
    store::RevocationStore,
    tokens::{
        authority::{Authority, Settings as AuthoritySettings},
        jwks::MIN_REFETCH,
        refresh::RefreshStore,
    },
    until::now,
};

/// How often expired entries are purged and the kernel's clock offset refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often remote JWKS are checked for a due refresh.
const JWKS_TICK: Duration = Duration::from_secs(10);

/// CLOCK_REALTIME minus CLOCK_BOOTTIME, in ns: the kernel adds it to `bpf_ktime_get_boot_ns`.
pub fn clock_offset_ns() -> u64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    read(libc::CLOCK_REALTIME).saturating_sub(read(libc::CLOCK_BOOTTIME))
}

/// Builds the kernel configuration from the command line.
pub fn build_config(key: HashKey, args: &RunArgs) -> anyhow::Result<Config> {
    if args.ports.len() > MAX_PORTS {
        bail!(
            "at most {MAX_PORTS} ports can be watched, got {}",
            args.ports.len()
        );
    }
    let mut cfg = Config {
        key,
        clock_offset_ns: clock_offset_ns(),
        action: to_action(args.action) as u32,
        monitoring: u32::from(args.monitoring != Some(OnOff::Off)),
        ..Config::default()
    };
    for (slot, port) in cfg.ports.iter_mut().zip(&args.ports) {
        *slot = *port;
    }
    cfg.needles[0] =
        HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    if let Some(name) = &args.api_key_header {
        cfg.needles[1] = HeaderNeedle::new(name.as_bytes(), NEEDLE_RAW).map_err(|e| {
            anyhow::anyhow!("--api-key-header {name:?} is not a usable header name: {e:?}")
        })?;
    }
    Ok(cfg)
}

fn to_action(a: ActionArg) -> Action {
    match a {
        ActionArg::Drop => Action::Drop,
        ActionArg::Reset => Action::Reset,
        ActionArg::Observe => Action::Observe,
    }
}

/// Runs the daemon.
pub async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    file.fill(&mut args);
    kernel::check_privileges()?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.state_dir)
        .with_context(|| format!("creating state directory {}", args.state_dir.display()))?;
    let key = hashkey::load_or_create(&args.state_dir)?;
    let cfg = build_config(key, &args)?;
    let (store, report) = RevocationStore::open(&args.state_dir, now()).with_context(|| {
        format!(
            "opening the revocation store in {}",
            args.state_dir.display()
        )
    })?;
    log::info!(
        "store: {} records replayed, {} live, {} expired dropped",
        report.records,
        report.live,
        report.expired_dropped
    );
    let mut kernel = Kernel::load_with(
        &args.bpffs,
        log::max_level(),
        kernel::LoadOptions {
            max_revoked: args.max_revoked(),
        },
    )?;
    let replaced = kernel.replaced_maps().to_vec();
    kernel.set_config(&cfg)?;
    let events = kernel.take_events()?;
    let listener = control::bind(&args.control_socket).await?;
    let settings = Settings {
        action: to_action(args.action),
        ports: args.ports.clone(),
        state_dir: args.state_dir.clone(),
        bpffs: args.bpffs.clone(),
        api_key_header: args.api_key_header.clone(),
        refresh_ttl: args.refresh_ttl.unwrap_or(30 * 24 * 3600),
        refresh_grace: args.refresh_grace.unwrap_or(0),
        monitoring: args.monitoring != Some(OnOff::Off),
        admin_token_sha256: match &args.admin_token_file {
            Some(p) => Some(admin_token_digest(p)?),
            None => None,
        },
    };
    let mut authority = Authority::open(
        &args.state_dir,
        AuthoritySettings {
            issuer: args
                .issuer
                .clone()
                .unwrap_or_else(|| format!("http://{}", args.http())),
            audience: args.audience.clone().unwrap_or_else(|| "api".into()),
            access_ttl: args.access_ttl.unwrap_or(900),
            jwks_min_refetch: args.jwks_min_refetch.unwrap_or(MIN_REFETCH),
            signing_alg: args.signing_alg.unwrap_or_default(),
        },
    )?;
    file.apply(
        &mut authority,
        |t| agent_common::hash::token_hash(&key, t.as_bytes()),
        now(),
    )?;
    let refresh = RefreshStore::open(&args.state_dir)?;
    let audit = AuditLog::open(&args.state_dir, crate::audit::DEFAULT_MAX_BYTES)?;
    let metrics = Metrics::new(args.version_claim.clone());
    let defaults = AlertRules::default();
    let alerts = AlertEngine::new(AlertRules {
        replay_sources: args.alert_replay_sources.unwrap_or(defaults.replay_sources),
        hits_per_minute: args
            .alert_hits_per_minute
            .unwrap_or(defaults.hits_per_minute),
        key_rejections_per_minute: args
            .alert_key_rejections_per_minute
            .unwrap_or(defaults.key_rejections_per_minute),
        key_rejection_ratio: args
            .alert_key_rejection_ratio
            .unwrap_or(defaults.key_rejection_ratio),
    });
    let webhook = args.alert_webhook.clone().map(|url| {
        let deliveries = metrics.alert_deliveries.clone();
        Webhook::start(url, args.alert_queue.unwrap_or(256), move |ok| {
            let result = if ok { "delivered" } else { "failed" };
            deliveries
                .get_or_create(&ResultLabel {
                    result: result.into(),
                })
                .inc();
        })
    });
    let parts = Parts {
        store,
        kernel,
        authority,
        refresh,
        audit,
        metrics,
        alerts,
        webhook,
    };
    let service = Arc::new(Service::new(key, settings, parts));
    let (inserted, removed) = service.sync_kernel()?;
    log::info!("kernel map in step with the store: {inserted} entries, {removed} stale removed");
    for r in &replaced {
        // The new map is full before the attach below swaps the programs in their links.
        log::warn!(
            "kernel map {} replaced ({} -> {} entries) and filled from the store before the programs were swapped",
            r.name,
            r.old_max_entries,
            r.new_max_entries
        );
    }
    if let Some(path) = &args.config {
        service.record(
            "system",
            "config_applied",
            vec![path.display().to_string()],
            "",
        )?;
    }
    for iface in &args.ifaces {
        service.with_kernel(|k| k.attach(iface, args.hook))?;
        service.record(
            "system",
            "attach",
            vec![format!("iface:{iface}"), args.hook.name().to_string()],
            "",
        )?;
    }
    tokio::spawn(forward_events(events, service.clone()));
    tokio::spawn(sweep(service.clone()));
    tokio::spawn(refresh_jwks(service.clone()));
    tokio::spawn(control::serve(listener, service.clone()));
    let http_listener = tokio::net::TcpListener::bind(args.http())
        .await
        .with_context(|| format!("binding the HTTP API on {}", args.http()))?;
    tokio::spawn(http::serve(http_listener, service.clone()));
    log::info!(
        "ready: {} on {} ports {:?}, action {}, control socket {}",
        args.hook.name(),
        args.ifaces.join(","),
        args.ports,
        action_name(to_action(args.action)),
        args.control_socket.display()
    );
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    log::info!("stopping; enforcement stays attached (tokenwall detach removes it)");
    let _ = std::fs::remove_file(&args.control_socket);
    Ok(())
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

/// Keeps remote JWKS fresh (each URL decides whether it is due).
async fn refresh_jwks(service: Arc<Service>) {
    let mut tick = tokio::time::interval(JWKS_TICK);
    loop {
        tick.tick().await;
        let svc = service.clone();
        let _ = tokio::task::spawn_blocking(move || svc.refresh_jwks(None)).await;
    }
}

async fn sweep(service: Arc<Service>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let svc = service.clone();
        let result = tokio::task::spawn_blocking(move || {
            let offset = clock_offset_ns();
            svc.with_kernel(|k| k.update_config(|c| c.clock_offset_ns = offset))?;
            svc.purge_expired()
        })
        .await;
        match result {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => log::info!("purged {n} expired revocations"),
            Ok(Err(e)) => log::warn!("sweep: {e:#}"),
            Err(e) => log::warn!("sweep task: {e}"),
        }
    }
}

fn iface_name(ifindex: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return ifindex.to_string();
    }
    unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .into_owned()
}

/// Turns a kernel hit event into its JSON line.
pub fn event_line(ev: &HitEvent) -> EventLine {
    let addr = |a: &[u8; 16], port: u16| -> String {
        if ev.ip_version == 6 {
            format!("[{}]:{port}", std::net::Ipv6Addr::from(*a))
        } else {
            format!("{}:{port}", std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        }
    };
    let time = std::time::UNIX_EPOCH + Duration::from_nanos(ev.time_ns);
    EventLine {
        time: humantime::format_rfc3339_millis(time).to_string(),
        fingerprint: fingerprint(ev.token_hash),
        kind: if ev.token_kind as u32 == NEEDLE_RAW {
            "api_key"
        } else {
            "bearer"
        }
        .to_string(),
        action: match ev.action {
            HIT_PASSED_TO_STACK => "passed_to_stack".to_string(),
            a => action_name(Action::from_u32(a)).to_string(),
        },
        matched: if ev.matched == MATCH_HEADER_SEGMENT {
            "signing_key"
        } else {
            "token"
        }
        .to_string(),
        iface: iface_name(ev.ifindex),
        source: addr(&ev.saddr, ev.sport),
        destination: addr(&ev.daddr, ev.dport),
        socket: crate::api::socket_name(ev.socket).to_string(),
    }
}

async fn forward_events(ring: RingBuf<MapData>, service: Arc<Service>) {
    // SAFETY: the ring buffer owns its fd for as long as the AsyncFd holds it.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            log::error!("cannot poll the event ring buffer: {e}");
            return;
        }
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<HitEvent>() {
                continue;
            }
            // SAFETY: the kernel wrote a HitEvent; read_unaligned copes with any alignment.
            let ev = unsafe { (item.as_ptr() as *const HitEvent).read_unaligned() };
            let line = event_line(&ev);
            log::debug!(
                "kernel hit: {} {} from {}",
                line.action,
                line.fingerprint,
                line.source
            );
            let mut ev = LifecycleEvent::now(
                EventKind::KernelHit,
                Some(line.fingerprint.clone()),
                format!(
                    "{} on {} ({}, socket: {})",
                    line.action, line.iface, line.matched, line.socket
                ),
            );
            ev.time = line.time.clone();
            ev.source = Some(line.source.clone());
            ev.socket = Some(line.socket.clone());
            service.emit(ev);
            let _ = service.events.send(line);
        }
        guard.clear_ready();
    }
}
