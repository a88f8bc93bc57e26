//! The per-flow memory (`agent_common::flow`): an LRU map of flows in the middle of a
//! multi-segment body or with lost framing, and a hint array that lets every other segment skip
//! the map lookup. Mirrors `agent_common::scan::flow`.

use agent_common::flow::{FLOW_BODY, FLOW_UNSYNCED, FlowEntry, FlowKey, hint_slot};
use aya_ebpf::bindings::BPF_NOEXIST;
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::{FLOW_HINT, FLOWS, packet::Flow};

/// Where a segment starts, from what is remembered of its flow.
pub enum Position {
    /// Entirely inside a body seen earlier.
    InBody,
    /// The flow's framing was lost.
    Unsynced,
    /// Judge it from payload offset `skip`; `known` when the flow had an entry.
    At {
        /// Bytes of an earlier request's body before the scan start.
        skip: u32,
        /// Whether the flow has an entry to update or remove.
        known: bool,
    },
}

/// The map key of a segment's flow.
#[inline(always)]
pub fn key_of(flow: &Flow) -> FlowKey {
    FlowKey {
        saddr: flow.saddr,
        daddr: flow.daddr,
        sport: flow.sport,
        dport: flow.dport,
    }
}

/// The hint counter of a flow's slot. Every access to it is atomic (`lock xadd` adds;
/// the BPF target has no compare-and-swap, so `core::sync::atomic` offers no `fetch_add`).
struct Hint(*mut u64);

impl Hint {
    #[inline(always)]
    fn of(key: &FlowKey) -> Option<Self> {
        FLOW_HINT.get_ptr_mut(hint_slot(key)).map(Self)
    }

    #[inline(always)]
    fn is_zero(&self) -> bool {
        // SAFETY: the pointer came from a successful array-map lookup: a valid, aligned u64
        // that lives as long as the program. Other CPUs change it only with atomic adds, and
        // an aligned 64-bit load is single-copy atomic (the BPF backend has no atomic-load
        // node), so this volatile load cannot tear.
        unsafe { core::ptr::read_volatile(self.0) == 0 }
    }

    #[inline(always)]
    fn add(&self, n: u64) {
        // SAFETY: a valid, aligned u64 of the array map (as in `is_zero`), and every
        // concurrent access to it is atomic; the result is unused, so this lowers to BPF's
        // plain atomic add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(self.0, n) };
    }
}

/// Where the segment whose payload starts at sequence number `seq` (`payload_len` bytes) sits.
#[inline(always)]
pub fn position(key: &FlowKey, seq: u32, payload_len: u32) -> Position {
    let fresh = Position::At {
        skip: 0,
        known: false,
    };
    if Hint::of(key).is_none_or(|h| h.is_zero()) {
        return fresh;
    }
    // SAFETY: `get` is unsafe because another CPU may update or delete the entry while the
    // returned reference lives. The element is preallocated map memory (an LRU map), valid
    // for as long as the program runs even if it is recycled meanwhile; the value is copied
    // out at once and no reference is kept, and `FlowEntry` is two `u32`s, valid for any
    // bytes a concurrent update could leave.
    let Some(e) = (unsafe { FLOWS.get(key) }).copied() else {
        return fresh;
    };
    if e.state == FLOW_UNSYNCED {
        return Position::Unsynced;
    }
    let ahead = e.body_end.wrapping_sub(seq) as i32;
    if ahead > 0 && ahead as u32 >= payload_len {
        return Position::InBody;
    }
    Position::At {
        skip: if ahead > 0 { ahead as u32 } else { 0 },
        known: true,
    }
}

/// Forgets the flow (a SYN or RST on the tuple, or a segment that ends at a boundary).
#[inline(always)]
pub fn forget(key: &FlowKey) {
    if let Some(h) = Hint::of(key)
        && !h.is_zero()
        && FLOWS.remove(key).is_ok()
    {
        h.add(u64::MAX);
    }
}

/// Remembers that the flow's body ends at `body_end`, or (`None`) that its framing was lost.
/// `known`: the flow already had an entry.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the entry moves to another stack slot and the verified code changes"
)]
pub fn remember(key: &FlowKey, body_end: Option<u32>, known: bool) {
    let entry = FlowEntry {
        state: if body_end.is_some() {
            FLOW_BODY
        } else {
            FLOW_UNSYNCED
        },
        body_end: body_end.unwrap_or(0),
    };
    if known {
        let _ = FLOWS.insert(key, &entry, 0);
        return;
    }
    if FLOWS.insert(key, &entry, BPF_NOEXIST as u64).is_ok()
        && let Some(h) = Hint::of(key)
    {
        h.add(1);
    }
}
