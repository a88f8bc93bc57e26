//! The kernel's per-flow memory (an LRU hash map keyed by the 4-tuple): where a request body
//! that runs past its first segment ends, or that the flow's framing was lost. See
//! `agent_common::scan::flow` for the rules.

/// Entries of the flow map. Only flows in the middle of a multi-segment body or with lost
/// framing have one; the least recently used is evicted first.
pub const FLOW_ENTRIES: u32 = 16_384;
/// Slots of the flow hint array: a count of flow entries per slot of a hash of the 4-tuple,
/// so a segment whose slot is zero skips the map lookup. Evicted entries leave their count
/// behind (a stale hint costs one lookup, never a wrong answer).
pub const FLOW_HINT_SLOTS: u32 = 65_536;

/// The flow's state: the framing was lost.
pub const FLOW_UNSYNCED: u32 = 1;
/// The flow's state: a body ends at [`FlowEntry::body_end`].
pub const FLOW_BODY: u32 = 2;

/// Key of the flow map: the client's address and port, the server's, as on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    /// Client address, network order (IPv4 in word 0).
    pub saddr: [u32; 4],
    /// Server address, network order (IPv4 in word 0).
    pub daddr: [u32; 4],
    /// Client port, network order.
    pub sport: u16,
    /// Server port, network order.
    pub dport: u16,
}

/// Value of the flow map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEntry {
    /// [`FLOW_BODY`] or [`FLOW_UNSYNCED`].
    pub state: u32,
    /// Sequence number where the pending body ends.
    pub body_end: u32,
}

/// The hint slot of a 4-tuple: the top bits of a multiplicative hash of its words.
#[inline(always)]
pub const fn hint_slot(key: &FlowKey) -> u32 {
    let s = key.saddr[0] ^ key.saddr[1] ^ key.saddr[2] ^ key.saddr[3];
    let d = key.daddr[0] ^ key.daddr[1] ^ key.daddr[2] ^ key.daddr[3];
    let ports = ((key.sport as u64) << 16) | key.dport as u64;
    let h = ((((s as u64) << 32) | d as u64) ^ ports).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h >> 48) as u32 & (FLOW_HINT_SLOTS - 1)
}
