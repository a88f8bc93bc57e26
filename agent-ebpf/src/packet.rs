//! Header parsing shared by the XDP and TC programs, and the per-hook packet operations.

use agent_common::event::{
    SOCKET_ESTABLISHED, SOCKET_LISTENER, SOCKET_NONE, SOCKET_REQUEST, SOCKET_TIME_WAIT,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::generated::{
        bpf_csum_level, bpf_sk_release, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
        bpf_skc_lookup_tcp, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
    },
    programs::{TcContext, XdpContext},
};
use core::{ffi::c_void, mem::size_of};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of TCP.
pub(crate) const IPPROTO_TCP: u8 = 6;
/// TCP flag FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag RST.
pub const TCP_RST: u8 = 0x04;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
const TCP_TIME_WAIT: u32 = 6;
const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;

/// `BPF_CSUM_LEVEL_RESET`: mark the skb CHECKSUM_NONE so the stack checks our checksum.
const BPF_CSUM_LEVEL_RESET: u64 = 3;
/// Bytes of headers the TC program needs in the linear area.
const TC_PULL: u32 = 160;

/// A TCP segment to a watched port, as located in the packet.
pub struct Flow {
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP header.
    pub l4: usize,
    /// TCP header length in bytes.
    pub tcp_len: usize,
    /// Offset of the TCP payload.
    pub payload: usize,
    /// TCP payload length according to the IP header.
    pub payload_len: u32,
    /// IPv6 rather than IPv4.
    pub v6: bool,
    /// Source address, network order (IPv4 in word 0).
    pub saddr: [u32; 4],
    /// Destination address, network order (IPv4 in word 0).
    pub daddr: [u32; 4],
    /// Source port, network order.
    pub sport: u16,
    /// Destination port, network order.
    pub dport: u16,
    /// TCP flags.
    pub flags: u8,
    /// Sequence number, host order.
    pub seq: u32,
    /// Acknowledgement number, network order (as on the wire).
    pub ack_be: u32,
}

/// What differs between the hooks: context access, payload copy, reset rewrite.
pub trait Packet {
    /// The aya context (for logging).
    type Ctx: EbpfContext;
    /// The aya context.
    fn ctx(&self) -> &Self::Ctx;
    /// Start of the directly readable packet bytes.
    fn data(&self) -> usize;
    /// End of the directly readable packet bytes.
    fn data_end(&self) -> usize;
    /// Interface index of the receiving device.
    fn ifindex(&self) -> u32;
    /// Copies `len` packet bytes at `off` to `dst`; false on failure.
    fn load(&self, off: u32, dst: *mut u8, len: u32) -> bool;
    /// Makes the headers readable (TC pulls them into the linear area).
    fn prepare(&self) {}
    /// Cuts the packet to its first `len` bytes; false on failure.
    fn trim_to(&self, len: usize) -> bool;
    /// Called after the headers were rewritten.
    fn rewritten(&self) {}
}

/// The XDP hook.
pub struct XdpPacket<'a>(pub &'a XdpContext);

impl Packet for XdpPacket<'_> {
    type Ctx = XdpContext;
    fn ctx(&self) -> &XdpContext {
        self.0
    }
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: the context pointer the kernel passed to the program.
        unsafe { core::ptr::read_volatile(&(*self.0.ctx).data_end) as usize }
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn load(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the verifier checks that `dst` holds `len` writable bytes.
        unsafe { bpf_xdp_load_bytes(self.0.ctx, off, dst as *mut c_void, len) == 0 }
    }
    #[inline(always)]
    fn trim_to(&self, len: usize) -> bool {
        // SAFETY: helpers on this program's own context.
        let total = unsafe { bpf_xdp_get_buff_len(self.0.ctx) } as usize;
        if total <= len {
            return true;
        }
        let cut = (total - len) as i32;
        // SAFETY: as above; the verifier checks the context pointer.
        unsafe { bpf_xdp_adjust_tail(self.0.ctx, -cut) == 0 }
    }
}

/// The TC ingress hook.
pub struct TcPacket<'a>(pub &'a TcContext);

impl Packet for TcPacket<'_> {
    type Ctx = TcContext;
    fn ctx(&self) -> &TcContext {
        self.0
    }
    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        // SAFETY: the skb pointer the kernel passed to the program.
        unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).data_end) as usize }
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.0.skb.skb).ifindex }
    }
    #[inline(always)]
    fn load(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the verifier checks that `dst` holds `len` writable bytes.
        unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const c_void,
                off,
                dst as *mut c_void,
                len,
            ) == 0
        }
    }
    #[inline(always)]
    fn prepare(&self) {
        let len = self.0.len();
        let want = if len < TC_PULL { len } else { TC_PULL };
        if self.data_end() - self.data() < want as usize {
            // SAFETY: a helper on this program's own skb.
            unsafe { bpf_skb_pull_data(self.0.skb.skb, want) };
        }
    }
    #[inline(always)]
    fn trim_to(&self, len: usize) -> bool {
        // SAFETY: a helper on this program's own skb.
        unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) == 0 }
    }
    #[inline(always)]
    fn rewritten(&self) {
        // SAFETY: a helper on this program's own skb.
        unsafe { bpf_csum_level(self.0.skb.skb, BPF_CSUM_LEVEL_RESET) };
    }
}

/// A checked pointer to a `T` at `off`. `data_end` is re-read (volatile) for every check, so
/// LLVM cannot drop a check as implied by an earlier one: the verifier could not follow that.
#[inline(always)]
pub(crate) fn ptr_at<T, P: Packet>(pkt: &P, off: usize) -> Option<*mut T> {
    let data = pkt.data();
    if data + off + size_of::<T>() > pkt.data_end() {
        return None;
    }
    Some((data + off) as *mut T)
}

/// A big-endian `u16` of the packet.
#[inline(always)]
pub(crate) fn be16<P: Packet>(pkt: &P, off: usize) -> Option<u16> {
    // SAFETY: ptr_at checked the two bytes against data_end.
    ptr_at::<u16, P>(pkt, off).map(|p| u16::from_be(unsafe { p.read_unaligned() }))
}

/// One byte of the packet.
#[inline(always)]
pub(crate) fn byte<P: Packet>(pkt: &P, off: usize) -> Option<u8> {
    // SAFETY: ptr_at checked the byte against data_end.
    ptr_at::<u8, P>(pkt, off).map(|p| unsafe { *p })
}

/// The byte at `off` when the eight bytes from there are directly readable (checking eight
/// keeps LLVM from turning the bound into a form the verifier does not follow).
#[inline(always)]
pub(crate) fn first_byte<P: Packet>(pkt: &P, off: usize) -> Option<u8> {
    // SAFETY: ptr_at checked the eight bytes against data_end.
    ptr_at::<[u8; 8], P>(pkt, off).map(|p| unsafe { (*p)[0] })
}

/// A `u32` of the packet, as on the wire.
#[inline(always)]
pub(crate) fn word<P: Packet>(pkt: &P, off: usize) -> Option<u32> {
    // SAFETY: ptr_at checked the four bytes against data_end.
    ptr_at::<u32, P>(pkt, off).map(|p| unsafe { p.read_unaligned() })
}

/// Parses Ethernet (one 802.1Q/802.1ad tag), IPv4 (options; fragments pass) or IPv6 (no
/// extension headers), and TCP (with or without data); anything else is `None` and passes
/// untouched.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &P) -> Option<Flow> {
    let mut l3 = ETH_HLEN;
    let mut proto = be16(pkt, 12)?;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(pkt, 16)?;
        l3 += 4;
    }
    let mut flow = Flow {
        l3,
        l4: 0,
        tcp_len: 0,
        payload: 0,
        payload_len: 0,
        v6: false,
        saddr: [0; 4],
        daddr: [0; 4],
        sport: 0,
        dport: 0,
        flags: 0,
        seq: 0,
        ack_be: 0,
    };
    let ip_payload: usize;
    if proto == ETH_P_IP {
        let vihl = byte(pkt, l3)?;
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if vihl >> 4 != 4 || ihl < 20 {
            return None;
        }
        let total = be16(pkt, l3 + 2)? as usize;
        let frag = be16(pkt, l3 + 6)?;
        if frag & 0x3fff != 0 || byte(pkt, l3 + 9)? != IPPROTO_TCP || total < ihl {
            return None;
        }
        flow.saddr[0] = word(pkt, l3 + 12)?;
        flow.daddr[0] = word(pkt, l3 + 16)?;
        flow.l4 = l3 + ihl;
        ip_payload = total - ihl;
    } else if proto == ETH_P_IPV6 {
        if byte(pkt, l3)? >> 4 != 6 || byte(pkt, l3 + 6)? != IPPROTO_TCP {
            return None;
        }
        for i in 0..4 {
            flow.saddr[i] = word(pkt, l3 + 8 + 4 * i)?;
            flow.daddr[i] = word(pkt, l3 + 24 + 4 * i)?;
        }
        flow.v6 = true;
        flow.l4 = l3 + 40;
        ip_payload = be16(pkt, l3 + 4)? as usize;
    } else {
        return None;
    }
    let l4 = flow.l4;
    // SAFETY: ptr_at checked both ports against data_end; they stay in network order.
    flow.sport = unsafe { ptr_at::<u16, P>(pkt, l4)?.read_unaligned() };
    // SAFETY: as above.
    flow.dport = unsafe { ptr_at::<u16, P>(pkt, l4 + 2)?.read_unaligned() };
    let tcp_len = ((byte(pkt, l4 + 12)? >> 4) as usize) * 4;
    flow.flags = byte(pkt, l4 + 13)?;
    if tcp_len < 20 || ip_payload < tcp_len {
        return None;
    }
    flow.seq = u32::from_be(word(pkt, l4 + 4)?);
    flow.ack_be = word(pkt, l4 + 8)?;
    flow.tcp_len = tcp_len;
    flow.payload = l4 + tcp_len;
    flow.payload_len = (ip_payload - tcp_len) as u32;
    Some(flow)
}

/// What the local stack has for this segment's 4-tuple (`agent_common::event::SOCKET_*`):
/// a connection, a request socket (a handshake in progress), only a listener, a TIME-WAIT
/// socket, or nothing.
#[inline(always)]
pub fn socket_state<P: Packet>(pkt: &P, flow: &Flow) -> u32 {
    // SAFETY: a plain-data union, zero is a valid value of every variant.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let ctx = pkt.ctx().as_ptr();
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the tuple is initialised for the family passed with its size; the verifier
    // checks the helper call and that the returned socket is released below.
    let sk = unsafe {
        if flow.v6 {
            tuple.__bindgen_anon_1.ipv6.saddr = flow.saddr;
            tuple.__bindgen_anon_1.ipv6.daddr = flow.daddr;
            tuple.__bindgen_anon_1.ipv6.sport = flow.sport;
            tuple.__bindgen_anon_1.ipv6.dport = flow.dport;
            bpf_skc_lookup_tcp(ctx, &mut tuple, 36, netns, 0)
        } else {
            tuple.__bindgen_anon_1.ipv4.saddr = flow.saddr[0];
            tuple.__bindgen_anon_1.ipv4.daddr = flow.daddr[0];
            tuple.__bindgen_anon_1.ipv4.sport = flow.sport;
            tuple.__bindgen_anon_1.ipv4.dport = flow.dport;
            bpf_skc_lookup_tcp(ctx, &mut tuple, 12, netns, 0)
        }
    };
    if sk.is_null() {
        return SOCKET_NONE;
    }
    // SAFETY: a non-null socket from the lookup; `state` is readable on every socket kind.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    match state {
        TCP_LISTEN => SOCKET_LISTENER,
        TCP_NEW_SYN_RECV => SOCKET_REQUEST,
        TCP_TIME_WAIT => SOCKET_TIME_WAIT,
        _ => SOCKET_ESTABLISHED,
    }
}
