//! tokenwall kernel programs: an XDP program and a TC ingress classifier that find
//! `Authorization: Bearer <token>` (and an API-key header) in HTTP/1.x requests, hash the token
//! with the agent's key and act on revoked ones before the gateway sees the request.
#![no_std]
#![no_main]

mod enforce;
mod packet;
mod scan;

use agent_common::{
    EVENTS_RING_BYTES, REVOKED_HEADERS_MAX_ENTRIES, REVOKED_MAX_ENTRIES,
    config::Config,
    counters::{COUNTER_SLOTS, IFACE_SLOT_ENTRIES, IFACE_SLOTS},
    revoked::RevokedEntry,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};

use crate::{
    enforce::Verdict,
    packet::{TcPacket, XdpPacket},
    scan::Scratch,
};

/// Revoked token hash -> entry; pinned so it outlives the agent.
#[map]
static REVOKED: HashMap<u64, RevokedEntry> =
    HashMap::pinned(REVOKED_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// Revoked JWS header-segment hash -> entry: every token of a revoked signing key.
#[map]
static REVOKED_HEADERS: HashMap<u64, RevokedEntry> =
    HashMap::pinned(REVOKED_HEADERS_MAX_ENTRIES, BPF_F_NO_PREALLOC);

/// The agent's configuration, index 0.
#[map]
static CONFIG: Array<Config> = Array::pinned(1, 0);

/// Per-CPU counters, `slot * COUNTER_SLOTS + agent_common::counters::Counter`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS * IFACE_SLOTS, 0);

/// Interface slot by `ifindex & (IFACE_SLOT_ENTRIES - 1)` (0: no slot of its own).
#[map]
static IFACE_SLOT: Array<u32> = Array::pinned(IFACE_SLOT_ENTRIES, 0);

/// Hit events for the agent.
#[map]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

/// Per-CPU copy of the payload being scanned, and the scan cursor.
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// One per-CPU `u32` that offsets pass through so the verifier forgets their exact range.
#[map]
static OPAQUE_OFFSET: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// XDP entry point.
#[xdp]
pub fn tokenwall_xdp(ctx: XdpContext) -> u32 {
    match enforce::run(&XdpPacket(&ctx)) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass | Verdict::Rewritten => xdp_action::XDP_PASS,
    }
}

/// TC ingress entry point.
#[classifier]
pub fn tokenwall_tc(ctx: TcContext) -> i32 {
    match enforce::run(&TcPacket(&ctx)) {
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Rewritten => TC_ACT_OK,
        Verdict::Pass => TC_ACT_UNSPEC,
    }
}

/// Does nothing: the benchmark's baseline for per-packet cost ratios.
#[xdp]
pub fn tokenwall_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
