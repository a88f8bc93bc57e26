//! tokenwall kernel programs: an XDP program and a TC ingress classifier that find
//! `Authorization: Bearer <token>` (and an API-key header) in HTTP/1.x requests, hash the token
//! with the agent's key and act on revoked ones before the gateway sees the request.
#![no_std]
#![no_main]
// Atomic adds for the flow hints: the BPF target has no compare-and-swap, so
// `core::sync::atomic` has no `fetch_add`; the intrinsic lowers to BPF's atomic add.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod enforce;
mod flows;
mod headers;
mod packet;
mod reset;
mod scan;
mod swar;
mod token;

use agent_common::{
    EVENTS_RING_BYTES, REVOKED_HEADERS_MAX_ENTRIES, REVOKED_MAX_ENTRIES,
    config::Config,
    counters::{COUNTER_SLOTS, IFACE_SLOT_ENTRIES, IFACE_SLOTS},
    flow::{FLOW_ENTRIES, FLOW_HINT_SLOTS, FlowEntry, FlowKey},
    revoked::RevokedEntry,
};
use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::generated::bpf_redirect,
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};

use crate::{
    enforce::Verdict,
    packet::Packet as _,
    packet::{TcPacket, XdpPacket},
    scan::Scratch,
};

/// Revoked token hash -> entry; pinned so it outlives the agent. The agent sizes it
/// (`--max-revoked`) when it loads the programs.
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

/// Flows in the middle of a multi-segment body, or whose framing was lost.
#[map]
static FLOWS: LruHashMap<FlowKey, FlowEntry> = LruHashMap::with_max_entries(FLOW_ENTRIES, 0);

/// Per slot of a hash of the 4-tuple, how many `FLOWS` entries may be there (zero: no lookup).
#[map]
static FLOW_HINT: Array<u64> = Array::with_max_entries(FLOW_HINT_SLOTS, 0);

/// One per-CPU `u32` that offsets pass through so the verifier forgets their exact range.
#[map]
static OPAQUE_OFFSET: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// XDP entry point.
#[xdp]
fn tokenwall_xdp(ctx: XdpContext) -> u32 {
    match enforce::run(&XdpPacket(&ctx)) {
        Verdict::Drop => xdp_action::XDP_DROP,
        Verdict::Pass | Verdict::Rewritten => xdp_action::XDP_PASS,
        Verdict::Bounce => xdp_action::XDP_TX,
    }
}

/// TC ingress entry point.
#[classifier]
fn tokenwall_tc(ctx: TcContext) -> i32 {
    let pkt = TcPacket(&ctx);
    match enforce::run(&pkt) {
        Verdict::Drop => TC_ACT_SHOT,
        Verdict::Rewritten => TC_ACT_OK,
        Verdict::Pass => TC_ACT_UNSPEC,
        // SAFETY: a helper that takes no pointer: it only records the target interface (the
        // one the packet came in on, egress) for the TC_ACT_REDIRECT it returns.
        Verdict::Bounce => unsafe { bpf_redirect(pkt.ifindex(), 0) as i32 },
    }
}

/// Does nothing: the benchmark's baseline for per-packet cost ratios.
#[xdp]
fn tokenwall_baseline(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The license the kernel checks for GPL-only helpers.
// SAFETY: `license` is the section the loader reads the license string from, and nothing
// else in the object is named `LICENSE` or placed there.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
