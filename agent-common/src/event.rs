//! Hit events the kernel sends to the agent through the ring buffer.

/// A revoked token seen by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitEvent {
    /// CLOCK_REALTIME in ns (derived from boot time plus the configured offset).
    pub time_ns: u64,
    /// Keyed hash of the token.
    pub token_hash: u64,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// The [`crate::config::Action`] taken; `ResetNoSocket` is reported as [`HIT_PASSED_TO_STACK`].
    pub action: u32,
    /// 4 or 6.
    pub ip_version: u8,
    /// [`crate::config::NEEDLE_BEARER`] or [`crate::config::NEEDLE_RAW`].
    pub token_kind: u8,
    /// Source port, host order.
    pub sport: u16,
    /// Destination port, host order.
    pub dport: u16,
    /// What matched: [`MATCH_TOKEN`] or [`MATCH_HEADER_SEGMENT`].
    pub matched: u16,
    /// Source address (IPv4 in the first four bytes).
    pub saddr: [u8; 16],
    /// Destination address (IPv4 in the first four bytes).
    pub daddr: [u8; 16],
}

/// The whole token's hash matched.
pub const MATCH_TOKEN: u16 = 1;
/// The JWS header segment's hash matched (a revoked signing key).
pub const MATCH_HEADER_SEGMENT: u16 = 2;

/// Hit events one CPU may send per window of 2^[`EVENT_WINDOW_SHIFT`] ns (about 1 ms); further
/// hits in that window are only counted (`events_suppressed`). Up to this rate (64,000 a
/// second per CPU) every hit is reported; under a flood the reader and the ring are not what
/// the flood costs, and each dropped packet stays cheap.
pub const EVENTS_PER_WINDOW: u32 = 64;
/// Log2 of the event window in nanoseconds.
pub const EVENT_WINDOW_SHIFT: u32 = 20;

/// Action value for a `reset` hit on a connection that no longer existed: the segment was passed
/// and the local stack answered it with a reset.
pub const HIT_PASSED_TO_STACK: u32 = 4;

#[cfg(feature = "user")]
mod user {
    // SAFETY: HitEvent is repr(C), Copy, made only of integers with no padding holes, so any
    // bytes are a valid value and aya may copy it to and from the kernel as plain data.
    unsafe impl aya::Pod for super::HitEvent {}
}
