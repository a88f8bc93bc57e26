//! Per-packet decision: parse, scan, look the token up, count, report and act.

use agent_common::{
    SCAN_BUF_LEN,
    config::{Action, Config},
    counters::Counter,
    event::{HIT_PASSED_TO_STACK, HitEvent},
};
use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use aya_log_ebpf::debug;

use crate::{
    CONFIG, COUNTERS, EVENTS, REVOKED, SCRATCH,
    packet::{Flow, Packet, connection_exists, parse, rewrite_to_reset},
    scan::{Scan, scan},
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

#[inline(always)]
fn count(c: Counter) {
    if let Some(v) = COUNTERS.get_ptr_mut(c as u32) {
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn report<P: Packet>(pkt: &P, flow: &Flow, cfg: &Config, hash: u64, kind: u32, action: u32) {
    let Some(mut entry) = EVENTS.reserve::<HitEvent>(0) else {
        return;
    };
    let mut ev = HitEvent {
        time_ns: unsafe { bpf_ktime_get_boot_ns() }.wrapping_add(cfg.clock_offset_ns),
        token_hash: hash,
        ifindex: pkt.ifindex(),
        action,
        ip_version: if flow.v6 { 6 } else { 4 },
        token_kind: kind as u8,
        sport: u16::from_be(flow.sport),
        dport: u16::from_be(flow.dport),
        _pad: 0,
        saddr: [0; 16],
        daddr: [0; 16],
    };
    let words = if flow.v6 { 4 } else { 1 };
    for i in 0..4 {
        if i < words {
            ev.saddr[i * 4..i * 4 + 4].copy_from_slice(&flow.saddr[i].to_ne_bytes());
            ev.daddr[i * 4..i * 4 + 4].copy_from_slice(&flow.daddr[i].to_ne_bytes());
        }
    }
    entry.write(ev);
    entry.submit(0);
}

/// Runs the whole fast path for one packet.
#[inline(always)]
pub fn run<P: Packet>(pkt: &P) -> Verdict {
    count(Counter::Packets);
    pkt.prepare();
    let Some(cfg) = CONFIG.get(0) else {
        return Verdict::Pass;
    };
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
            count(Counter::HttpRequests);
            return Verdict::Pass;
        }
        Scan::Skipped => {
            count(Counter::HttpRequests);
            count(Counter::Skipped);
            return Verdict::Pass;
        }
        Scan::Token(found) => {
            count(Counter::HttpRequests);
            found
        }
    };
    count(if found.kind == agent_common::config::NEEDLE_BEARER {
        Counter::BearerTokens
    } else {
        Counter::ApiKeys
    });
    let Some(entry) = (unsafe { REVOKED.get(&found.hash) }) else {
        return Verdict::Pass;
    };
    let now = unsafe { bpf_ktime_get_boot_ns() }.wrapping_add(cfg.clock_offset_ns) / 1_000_000_000;
    if !entry.is_live(now) {
        count(Counter::ExpiredIgnored);
        return Verdict::Pass;
    }
    count(Counter::RevokedHits);
    debug!(pkt.ctx(), "revoked token {:x}", found.hash);
    let action = Action::from_u32(cfg.action);
    match action {
        Action::Observe => {
            count(Counter::Observed);
            report(
                pkt,
                &flow,
                cfg,
                found.hash,
                found.kind,
                Action::Observe as u32,
            );
            Verdict::Pass
        }
        Action::Drop => {
            count(Counter::Dropped);
            report(pkt, &flow, cfg, found.hash, found.kind, Action::Drop as u32);
            Verdict::Drop
        }
        Action::Reset => {
            if !connection_exists(pkt, &flow) {
                count(Counter::ResetNoSocket);
                report(pkt, &flow, cfg, found.hash, found.kind, HIT_PASSED_TO_STACK);
                return Verdict::Pass;
            }
            report(
                pkt,
                &flow,
                cfg,
                found.hash,
                found.kind,
                Action::Reset as u32,
            );
            if rewrite_to_reset(pkt, &flow) {
                count(Counter::Reset);
                Verdict::Rewritten
            } else {
                count(Counter::Dropped);
                Verdict::Drop
            }
        }
    }
}
