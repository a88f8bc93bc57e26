//! Wire layouts of the headers the programs parse and rewrite. Every field is a byte or a byte
//! array in network order, so each struct has alignment 1 and exactly the size of its header:
//! the parser and the reset rewrite take field offsets from them (`offset_of!`) and header
//! lengths from their sizes, rather than numbering bytes.

use core::mem::{align_of, offset_of, size_of};

/// Ethernet address length.
pub const ETH_ALEN: usize = 6;

/// An Ethernet II header.
#[repr(C)]
pub struct EthHdr {
    /// Destination address.
    pub dst: [u8; ETH_ALEN],
    /// Source address.
    pub src: [u8; ETH_ALEN],
    /// EtherType of what follows (or the TPID of a VLAN tag).
    pub ether_type: [u8; 2],
}

/// The rest of an 802.1Q / 802.1ad tag after its TPID (which sits in
/// [`EthHdr::ether_type`]).
#[repr(C)]
pub struct VlanHdr {
    /// Priority, DEI and VLAN id.
    pub tci: [u8; 2],
    /// EtherType of what follows the tag.
    pub ether_type: [u8; 2],
}

/// An IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub version_ihl: u8,
    /// DSCP and ECN.
    pub tos: u8,
    /// Total length of the datagram.
    pub tot_len: [u8; 2],
    /// Identification.
    pub id: [u8; 2],
    /// Flags (high three bits) and fragment offset.
    pub frag_off: [u8; 2],
    /// Time to live.
    pub ttl: u8,
    /// Protocol of the payload.
    pub protocol: u8,
    /// Header checksum.
    pub check: [u8; 2],
    /// Source address.
    pub saddr: [u8; 4],
    /// Destination address.
    pub daddr: [u8; 4],
}

/// An IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    /// Version (high nibble), traffic class and flow label.
    pub version_tc_flow: [u8; 4],
    /// Length of what follows the header.
    pub payload_len: [u8; 2],
    /// Protocol of what follows.
    pub next_header: u8,
    /// Hop limit.
    pub hop_limit: u8,
    /// Source address.
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
}

/// A TCP header without options.
#[repr(C)]
pub struct TcpHdr {
    /// Source port.
    pub source: [u8; 2],
    /// Destination port.
    pub dest: [u8; 2],
    /// Sequence number.
    pub seq: [u8; 4],
    /// Acknowledgement number.
    pub ack_seq: [u8; 4],
    /// Data offset in 32-bit words (high nibble).
    pub doff_res: u8,
    /// Flags (`TCP_*`).
    pub flags: u8,
    /// Receive window.
    pub window: [u8; 2],
    /// Checksum.
    pub check: [u8; 2],
    /// Urgent pointer.
    pub urg_ptr: [u8; 2],
}

// The layouts are the wire formats: no padding anywhere.
const _: () = assert!(size_of::<EthHdr>() == 14 && align_of::<EthHdr>() == 1);
const _: () = assert!(size_of::<VlanHdr>() == 4 && align_of::<VlanHdr>() == 1);
const _: () = assert!(size_of::<Ipv4Hdr>() == 20 && align_of::<Ipv4Hdr>() == 1);
const _: () = assert!(size_of::<Ipv6Hdr>() == 40 && align_of::<Ipv6Hdr>() == 1);
const _: () = assert!(size_of::<TcpHdr>() == 20 && align_of::<TcpHdr>() == 1);
const _: () = assert!(offset_of!(Ipv4Hdr, daddr) + 4 == size_of::<Ipv4Hdr>());
const _: () = assert!(offset_of!(TcpHdr, urg_ptr) + 2 == size_of::<TcpHdr>());

/// Length of an Ethernet header without a tag.
pub const ETH_HLEN: usize = size_of::<EthHdr>();
/// Length a VLAN tag adds.
pub const VLAN_HLEN: usize = size_of::<VlanHdr>();
/// Length of an IPv4 header without options (the smallest valid IHL, in bytes).
pub const IPV4_MIN_HLEN: usize = size_of::<Ipv4Hdr>();
/// Length of an IPv6 header.
pub const IPV6_HLEN: usize = size_of::<Ipv6Hdr>();
/// Length of a TCP header without options (the smallest valid data offset, in bytes).
pub const TCP_MIN_HLEN: usize = size_of::<TcpHdr>();
/// IPv4 and TCP header lengths are counted in 32-bit words.
pub const HLEN_UNIT: usize = size_of::<u32>();
/// [`Ipv4Hdr::version_ihl`]: the header length is the low nibble.
pub const IPV4_IHL_MASK: u8 = 0x0f;
/// The largest IPv4 or TCP header: a 4-bit length field counting 32-bit words.
pub const MAX_HLEN: usize = 0x0f * HLEN_UNIT;

/// Version number of IPv4.
pub const IPV4_VERSION: u8 = 4;
/// Version number of IPv6.
pub const IPV6_VERSION: u8 = 6;
/// IPv4 version in [`Ipv4Hdr::version_ihl`] (and IPv6 in the first byte of
/// [`Ipv6Hdr::version_tc_flow`]): the high nibble.
pub const VERSION_SHIFT: u32 = 4;
/// [`Ipv4Hdr::frag_off`]: the More Fragments flag and the fragment offset (any set bit: a
/// fragment).
pub const IPV4_FRAGMENT_MASK: u16 = 0x3fff;
/// [`TcpHdr::doff_res`]: the data offset is the high nibble.
pub const TCP_DOFF_SHIFT: u32 = 4;

/// Header length in bytes of an IPv4 header whose first byte is `version_ihl`.
#[inline(always)]
pub fn ipv4_header_len(version_ihl: u8) -> usize {
    ((version_ihl & IPV4_IHL_MASK) as usize) * HLEN_UNIT
}

/// Header length in bytes of a TCP header whose [`TcpHdr::doff_res`] is `doff_res`.
#[inline(always)]
pub fn tcp_header_len(doff_res: u8) -> usize {
    ((doff_res >> TCP_DOFF_SHIFT) as usize) * HLEN_UNIT
}

/// The `doff_res` byte of a TCP header of `len` bytes (a multiple of four).
#[inline(always)]
pub const fn tcp_doff_res(len: usize) -> u8 {
    ((len / HLEN_UNIT) as u8) << TCP_DOFF_SHIFT
}
