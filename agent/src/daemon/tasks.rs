//! The daemon's background tasks: the expiry sweep (which also keeps the kernel's clock offset
//! current), the remote JWKS refresh, and the reader of the kernel's hit events.

use std::{sync::Arc, time::Duration};

use agent_common::{
    config::{Action, NEEDLE_RAW},
    event::{HIT_PASSED_TO_STACK, HitEvent, MATCH_HEADER_SEGMENT},
};
use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

use crate::{
    clock::clock_offset_ns,
    control::protocol::EventLine,
    monitoring::lifecycle::{EventKind, LifecycleEvent},
    service::{Service, action_name},
    types::TokenHash,
};

/// How often expired entries are purged and the kernel's clock offset refreshed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often remote JWKS are checked for a due refresh.
const JWKS_TICK: Duration = Duration::from_secs(10);

/// Keeps remote JWKS fresh (each URL decides whether it is due).
pub async fn refresh_jwks(service: Arc<Service>) {
    let mut tick = tokio::time::interval(JWKS_TICK);
    loop {
        tick.tick().await;
        let svc = service.clone();
        let _ = tokio::task::spawn_blocking(move || svc.refresh_jwks(None)).await;
    }
}

/// Purges what expired and refreshes the kernel's clock offset, every [`SWEEP_EVERY`].
pub async fn sweep(service: Arc<Service>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let svc = service.clone();
        let result = tokio::task::spawn_blocking(move || {
            let offset = clock_offset_ns();
            svc.config.update(|c| c.clock_offset_ns = offset)?;
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
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return ifindex.to_string();
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
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
        fingerprint: TokenHash(ev.token_hash),
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
        socket: crate::monitoring::socket_name(ev.socket).to_string(),
    }
}

/// Reads the kernel's hit events: to `events` clients, timelines and the alert rules.
pub async fn forward_events(ring: RingBuf<MapData>, service: Arc<Service>) {
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
            // SAFETY: the kernel wrote a HitEvent of this size; read_unaligned copes with any
            // alignment of the ring's bytes.
            let ev = unsafe { (item.as_ptr() as *const HitEvent).read_unaligned() };
            let line = event_line(&ev);
            log::debug!(
                "kernel hit: {} {} from {}",
                line.action,
                line.fingerprint,
                line.source
            );
            let mut lifecycle = LifecycleEvent::now(
                EventKind::KernelHit,
                Some(line.fingerprint.to_string()),
                format!(
                    "{} on {} ({}, socket: {})",
                    line.action, line.iface, line.matched, line.socket
                ),
            );
            lifecycle.time = line.time.clone();
            lifecycle.source = Some(line.source.clone());
            lifecycle.socket = Some(line.socket.clone());
            service.monitor.kernel_hit(line, lifecycle);
        }
        guard.clear_ready();
    }
}
