//! Kernel counters: a per-CPU array of `u64`, one slot per [`Counter`].

/// Slots of the per-CPU counter map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Packets the program saw.
    Packets = 0,
    /// TCP segments to a watched port whose payload starts an HTTP/1.x request.
    HttpRequests = 1,
    /// `Authorization: Bearer` tokens hashed.
    BearerTokens = 2,
    /// API-key header values hashed.
    ApiKeys = 3,
    /// Tokens found in the revoked map (live entries only).
    RevokedHits = 4,
    /// Requests dropped.
    Dropped = 5,
    /// Requests turned into a TCP reset.
    Reset = 6,
    /// Requests observed and passed.
    Observed = 7,
    /// Tokens not checked: the token ran past the packet or the scan limit (fail open).
    Skipped = 8,
    /// Revoked entries found but already expired (ignored).
    ExpiredIgnored = 9,
    /// `reset` hits whose connection was already gone: passed so the stack answers with a reset.
    ResetNoSocket = 10,
    /// Hits on a revoked JWS header segment (a whole signing key) rather than a single token.
    RevokedKeyHits = 11,
    /// Hits counted but not sent as events: the CPU's event budget for the window was spent
    /// (see [`crate::event::EVENTS_PER_WINDOW`]).
    EventsSuppressed = 12,
    /// Flows whose framing the kernel lost (request headers not complete in one segment, a
    /// chunked or unparsable body, a request past the scan buffer or the line budget): their
    /// later segments pass unjudged (fail open) until the connection is reopened.
    Unsynced = 13,
    /// Segments passed unjudged because their flow's framing was lost.
    Unjudged = 14,
    /// Segments passed as the body of a request seen in an earlier segment.
    BodySegments = 15,
    /// `reset` hits with no connection but a socket that would create one (listener, request
    /// socket, TIME-WAIT): the segment was dropped and a RST sent back to the client.
    ResetSent = 16,
    /// SYN segments carrying data (TCP Fast Open) that were scanned.
    SynData = 17,
}

/// Counter slots per interface.
pub const COUNTER_SLOTS: u32 = 32;
/// Interface slots: 0 collects interfaces without a slot of their own, 1.. are assigned to
/// attached interfaces by the agent. `COUNTERS` holds `IFACE_SLOTS * COUNTER_SLOTS` values,
/// indexed `slot * COUNTER_SLOTS + counter`.
pub const IFACE_SLOTS: u32 = 16;
/// Entries of the `IFACE_SLOT` map, indexed by `ifindex & (IFACE_SLOT_ENTRIES - 1)`: an array
/// lookup (inlined by the verifier) instead of a hash lookup on every packet. Two attached
/// interfaces whose indexes collide share slot 0.
pub const IFACE_SLOT_ENTRIES: u32 = 1024;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 18] = [
        Counter::Packets,
        Counter::HttpRequests,
        Counter::BearerTokens,
        Counter::ApiKeys,
        Counter::RevokedHits,
        Counter::Dropped,
        Counter::Reset,
        Counter::Observed,
        Counter::Skipped,
        Counter::ExpiredIgnored,
        Counter::ResetNoSocket,
        Counter::RevokedKeyHits,
        Counter::EventsSuppressed,
        Counter::Unsynced,
        Counter::Unjudged,
        Counter::BodySegments,
        Counter::ResetSent,
        Counter::SynData,
    ];

    /// Stable snake_case name used in status output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Packets => "packets",
            Counter::HttpRequests => "http_requests",
            Counter::BearerTokens => "bearer_tokens",
            Counter::ApiKeys => "api_keys",
            Counter::RevokedHits => "revoked_hits",
            Counter::Dropped => "dropped",
            Counter::Reset => "reset",
            Counter::Observed => "observed",
            Counter::Skipped => "skipped",
            Counter::ExpiredIgnored => "expired_ignored",
            Counter::ResetNoSocket => "reset_no_socket",
            Counter::RevokedKeyHits => "revoked_key_hits",
            Counter::EventsSuppressed => "events_suppressed",
            Counter::Unsynced => "unsynced",
            Counter::Unjudged => "unjudged",
            Counter::BodySegments => "body_segments",
            Counter::ResetSent => "reset_sent",
            Counter::SynData => "syn_data",
        }
    }
}
