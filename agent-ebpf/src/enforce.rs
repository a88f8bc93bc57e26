//! Per-packet decision: parse, scan, look the token up, count, report and act.

use agent_common::{
    SCAN_BUF_LEN,
    config::NEEDLE_BEARER,
    config::{Action, Config},
    counters::{COUNTER_SLOTS, Counter, IFACE_SLOT_ENTRIES, IFACE_SLOTS},
    event::{HIT_PASSED_TO_STACK, HitEvent, MATCH_HEADER_SEGMENT, MATCH_TOKEN},
};
use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use aya_log_ebpf::debug;

use crate::{
    CONFIG, COUNTERS, EVENTS, IFACE_SLOT, REVOKED, REVOKED_HEADERS, SCRATCH,
    packet::{Flow, Packet, connection_exists, parse, rewrite_to_reset},
    scan::{Found, Scan, hash_header_segment, scan},
};

/// What the hook should return.
pub enum Verdict {
    /// Let the packet through unchanged.
    Pass,
    /// Drop it.
    Drop,
    /// The packet was rewritten (into a reset) and must be delivered.
    Rewritten,
}

/// Where this packet's counters go, and whether monitoring is on.
#[derive(Clone, Copy)]
struct Meter {
    base: u32,
    on: bool,
}

impl Meter {
    #[inline(always)]
    fn new<P: Packet>(pkt: &P, cfg: &Config) -> Self {
        let slot = IFACE_SLOT
            .get(pkt.ifindex() & (IFACE_SLOT_ENTRIES - 1))
            .copied()
            .unwrap_or(0);
        let slot = if slot < IFACE_SLOTS { slot } else { 0 };
        Self {
            base: slot * COUNTER_SLOTS,
            on: cfg.monitoring != 0,
        }
    }

    #[inline(always)]
    fn count(self, c: Counter) {
        if self.on
            && let Some(v) = COUNTERS.get_ptr_mut(self.base + c as u32)
        {
            unsafe { *v += 1 };
        }
    }
}

/// Sends a hit event; `time_ns` is boot time. The event is written in place in the ring
/// (no copy on the stack, which the TC program has little of to spare).
#[inline(always)]
fn report<P: Packet>(
    pkt: &P,
    flow: &Flow,
    cfg: &Config,
    found: &Found,
    (action, matched): (u32, u16),
    time_ns: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<HitEvent>(0) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    let words = if flow.v6 { 4 } else { 1 };
    unsafe {
        (*ev).time_ns = time_ns.wrapping_add(cfg.clock_offset_ns);
        (*ev).token_hash = found.hash;
        (*ev).ifindex = pkt.ifindex();
        (*ev).action = action;
        (*ev).ip_version = if flow.v6 { 6 } else { 4 };
        (*ev).token_kind = found.kind as u8;
        (*ev).sport = u16::from_be(flow.sport);
        (*ev).dport = u16::from_be(flow.dport);
        (*ev).matched = matched;
        let (saddr, daddr) = (
            (*ev).saddr.as_mut_ptr() as *mut u32,
            (*ev).daddr.as_mut_ptr() as *mut u32,
        );
        for i in 0..4 {
            let (s, d) = if i < words {
                (flow.saddr[i], flow.daddr[i])
            } else {
                (0, 0)
            };
            saddr.add(i).write_unaligned(s);
            daddr.add(i).write_unaligned(d);
        }
    }
    entry.submit(0);
}

/// Runs the whole fast path for one packet.
#[inline(always)]
pub fn run<P: Packet>(pkt: &P) -> Verdict {
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
    let m = Meter::new(pkt, cfg);
    m.count(Counter::Packets);
    pkt.prepare();
    let Some(flow) = parse(pkt) else {
        return Verdict::Pass;
    };
    if !cfg.watches(u16::from_be(flow.dport)) {
        return Verdict::Pass;
    }
    let Some(sp) = SCRATCH.get_ptr_mut(0) else {
        return Verdict::Pass;
    };
    let s = unsafe { &mut *sp };
    let len = if flow.payload_len > SCAN_BUF_LEN as u32 {
        SCAN_BUF_LEN as u32
    } else {
        flow.payload_len
    };
    // Launder through map memory so LLVM cannot merge this range check with the one above:
    // the verifier must see a size in [1, SCAN_BUF_LEN] on the register passed to the helper.
    let len = unsafe {
        core::ptr::write_volatile(&mut s.len, len);
        core::ptr::read_volatile(&s.len)
    };
    if len == 0 || len > SCAN_BUF_LEN as u32 {
        return Verdict::Pass;
    }
    if !pkt.load(flow.payload as u32, s.words.as_mut_ptr() as *mut u8, len) {
        return Verdict::Pass;
    }
    let found = match scan(s, len, &cfg.key) {
        Scan::NotRequest => return Verdict::Pass,
        Scan::NoToken => {
            m.count(Counter::HttpRequests);
            return Verdict::Pass;
        }
        Scan::Skipped => {
            m.count(Counter::HttpRequests);
            m.count(Counter::Skipped);
            return Verdict::Pass;
        }
        Scan::Token(found) => {
            m.count(Counter::HttpRequests);
            found
        }
    };
    m.count(if found.kind == NEEDLE_BEARER {
        Counter::BearerTokens
    } else {
        Counter::ApiKeys
    });
    let boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    let now = boot_ns.wrapping_add(cfg.clock_offset_ns) / 1_000_000_000;
    let mut hit = None;
    match unsafe { REVOKED.get(&found.hash) } {
        Some(e) if e.is_live(now) => hit = Some((found.hash, MATCH_TOKEN)),
        Some(_) => m.count(Counter::ExpiredIgnored),
        None => {}
    }
    // A whole revoked signing key: the token's JWS header segment is revoked.
    if hit.is_none()
        && cfg.header_revocations != 0
        && found.kind == NEEDLE_BEARER
        && let Some(h) = hash_header_segment(&cfg.key, found.start)
    {
        match unsafe { REVOKED_HEADERS.get(&h) } {
            Some(e) if e.is_live(now) => {
                m.count(Counter::RevokedKeyHits);
                hit = Some((h, MATCH_HEADER_SEGMENT));
            }
            Some(_) => m.count(Counter::ExpiredIgnored),
            None => {}
        }
    }
    let Some((hash, matched)) = hit else {
        return Verdict::Pass;
    };
    m.count(Counter::RevokedHits);
    debug!(pkt.ctx(), "revoked token {:x}", hash);
    // Events are budgeted per CPU: under a flood the counters stay exact and each dropped
    // packet does not pay for a ring-buffer record and the reader's cache traffic.
    let send = m.on && s.take_event(boot_ns);
    if m.on && !send {
        m.count(Counter::EventsSuppressed);
    }
    let report = |action: u32| {
        if send {
            report(
                pkt,
                &flow,
                cfg,
                &Found { hash, ..found },
                (action, matched),
                boot_ns,
            )
        }
    };
    match Action::from_u32(cfg.action) {
        Action::Observe => {
            m.count(Counter::Observed);
            report(Action::Observe as u32);
            Verdict::Pass
        }
        Action::Drop => {
            m.count(Counter::Dropped);
            report(Action::Drop as u32);
            Verdict::Drop
        }
        Action::Reset => {
            if !connection_exists(pkt, &flow) {
                m.count(Counter::ResetNoSocket);
                report(HIT_PASSED_TO_STACK);
                return Verdict::Pass;
            }
            report(Action::Reset as u32);
            if rewrite_to_reset(pkt, &flow) {
                m.count(Counter::Reset);
                Verdict::Rewritten
            } else {
                m.count(Counter::Dropped);
                Verdict::Drop
            }
        }
    }
}
