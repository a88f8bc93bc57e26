//! Types and functions shared by the tokenwall kernel programs (`agent-ebpf`) and the agent.
//!
//! Everything that crosses the user/kernel boundary lives here as a `#[repr(C)]` type, so both
//! sides agree on the layout. The `user` feature adds the `aya::Pod` impls the agent needs.
#![cfg_attr(not(test), no_std)]

#[cfg(not(target_arch = "bpf"))]
extern crate alloc;

pub mod config;
pub mod counters;
pub mod event;
pub mod flow;
pub mod hash;
pub mod revoked;
#[cfg(not(target_arch = "bpf"))]
pub mod scan;

/// Bytes of TCP payload the kernel copies and scans per packet; a header or token that ends
/// after this is skipped (fail open) and counted.
pub const SCAN_BUF_LEN: usize = 4096;
/// Mask that keeps an offset inside the scan buffer (`SCAN_BUF_LEN` is a power of two).
pub const SCAN_MASK: u32 = (SCAN_BUF_LEN as u32) - 1;
/// Slack after the scan buffer so that an 8-byte load at any in-buffer offset stays in bounds.
pub const SCAN_PAD: usize = 64;
/// Longest JWS header segment (bytes before the first `.`) the kernel hashes.
pub const MAX_HEADER_SEGMENT: usize = 512;
/// Most TCP destination ports the kernel program watches.
pub const MAX_PORTS: usize = 16;
/// Longest header name (without the colon) a needle can hold.
pub const MAX_HEADER_NAME: usize = 31;
/// Default size of the revoked-token map.
pub const REVOKED_MAX_ENTRIES: u32 = 1 << 20;
/// Size of the revoked header-segment map.
pub const REVOKED_HEADERS_MAX_ENTRIES: u32 = 4096;
/// Bytes of ring buffer for hit events.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// Map names, as the kernel object defines them and the agent opens them.
pub mod map_names {
    /// Revoked token hash -> [`crate::revoked::RevokedEntry`].
    pub const REVOKED: &str = "REVOKED";
    /// Revoked JWS header-segment hash -> [`crate::revoked::RevokedEntry`] (whole keys).
    pub const REVOKED_HEADERS: &str = "REVOKED_HEADERS";
    /// One [`crate::config::Config`] at index 0.
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU `u64` counters indexed by [`crate::counters::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `u32` interface slot indexed by `ifindex & (IFACE_SLOT_ENTRIES - 1)`.
    pub const IFACE_SLOT: &str = "IFACE_SLOT";
    /// Ring buffer of [`crate::event::HitEvent`].
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU scratch space for the payload copy (never pinned).
    pub const SCRATCH: &str = "SCRATCH";
    /// Flow 4-tuple -> [`crate::flow::FlowEntry`] (LRU, never pinned).
    pub const FLOWS: &str = "FLOWS";
}

/// Program names in the kernel object.
pub mod program_names {
    /// The XDP program.
    pub const XDP: &str = "tokenwall_xdp";
    /// The TC ingress classifier.
    pub const TC: &str = "tokenwall_tc";
    /// An XDP program that only passes: the benchmark baseline.
    pub const BASELINE: &str = "tokenwall_baseline";
}
