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
    /// What the local stack had for the 4-tuple: a `SOCKET_*` value (0: not looked up).
    pub socket: u32,
    /// Zero.
    pub _reserved: u32,
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

/// The local stack had no socket at all for the hit's 4-tuple (a spoofed source, or a
/// connection already gone).
pub const SOCKET_NONE: u32 = 1;
/// A connection (a full socket in any state but LISTEN and TIME-WAIT).
pub const SOCKET_ESTABLISHED: u32 = 2;
/// A request socket: the client's handshake is in progress (SYN received, SYN-ACK sent).
pub const SOCKET_REQUEST: u32 = 3;
/// Only a listener on the port (no handshake seen, or SYN cookies).
pub const SOCKET_LISTENER: u32 = 4;
/// A TIME-WAIT socket.
pub const SOCKET_TIME_WAIT: u32 = 5;

/// Whether a `SOCKET_*` value shows a client behind the hit: a connection or a handshake in
/// progress. Hits without one (possibly spoofed sources) feed no alert and no timeline source.
pub const fn has_connection(socket: u32) -> bool {
    socket == SOCKET_ESTABLISHED || socket == SOCKET_REQUEST
}

/// Action value for a `reset` hit on a connection that no longer existed: the segment was passed
/// and the local stack answered it with a reset.
pub const HIT_PASSED_TO_STACK: u32 = 4;

#[cfg(feature = "user")]
mod user {
    // SAFETY: HitEvent is repr(C), Copy, made only of integers with no padding holes, so any
    // bytes are a valid value and aya may copy it to and from the kernel as plain data.
    unsafe impl aya::Pod for super::HitEvent {}
}
