//! Header parsing shared by the XDP and TC programs, and the per-hook packet operations.

use agent_common::event::{
    SOCKET_ESTABLISHED, SOCKET_LISTENER, SOCKET_NONE, SOCKET_REQUEST, SOCKET_TIME_WAIT,
};
use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_F_CURRENT_NETNS, bpf_sock_tuple,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 as SockTupleV4,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2 as SockTupleV6,
    },
    helpers::generated::{
        bpf_csum_level, bpf_sk_release, bpf_skb_change_tail, bpf_skb_load_bytes, bpf_skb_pull_data,
        bpf_skc_lookup_tcp, bpf_xdp_adjust_tail, bpf_xdp_get_buff_len, bpf_xdp_load_bytes,
    },
    programs::{TcContext, XdpContext},
};
use core::{
    ffi::c_void,
    mem::{offset_of, size_of},
};

use crate::headers::{
    ETH_HLEN, EthHdr, IPV4_FRAGMENT_MASK, IPV4_MIN_HLEN, IPV4_VERSION, IPV6_HLEN, IPV6_VERSION,
    Ipv4Hdr, Ipv6Hdr, TCP_MIN_HLEN, TcpHdr, VERSION_SHIFT, VLAN_HLEN, VlanHdr, ipv4_header_len,
    tcp_header_len,
};

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
/// Size of the IPv4 part of a `bpf_sock_tuple`, as `bpf_skc_lookup_tcp` wants it.
const SOCK_TUPLE_V4_LEN: u32 = size_of::<SockTupleV4>() as u32;
/// Size of the IPv6 part of a `bpf_sock_tuple`.
const SOCK_TUPLE_V6_LEN: u32 = size_of::<SockTupleV6>() as u32;

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
    /// Copies `dst.len()` packet bytes at `off` into `dst`; false on failure (`dst` is then
    /// unspecified). The verifier wants the length in `[1, size of the destination]`.
    fn load(&self, off: u32, dst: &mut [u8]) -> bool;
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
        // SAFETY: `ctx` is the `xdp_md` pointer the kernel passed to this run of the program
        // (aya keeps it unchanged), so it is valid and aligned for the whole run; the read is
        // volatile only so each bound check loads `data_end` afresh (see `ptr_at`).
        unsafe { core::ptr::read_volatile(&(*self.0.ctx).data_end) as usize }
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `ctx` is the kernel's `xdp_md` for this run (see `data_end`), and
        // `ingress_ifindex` is a plain readable field of it.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn load(&self, off: u32, dst: &mut [u8]) -> bool {
        // SAFETY: helper called with the context pointer the kernel gave this run; it writes
        // at most the `dst.len()` bytes it is told to, all inside the exclusively borrowed
        // `dst` (and fails, writing nothing past them, if the packet is shorter).
        unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                off,
                dst.as_mut_ptr() as *mut c_void,
                dst.len() as u32,
            ) == 0
        }
    }
    #[inline(always)]
    fn trim_to(&self, len: usize) -> bool {
        // SAFETY: helper called with the context pointer the kernel gave this run; it only
        // reads the buffer's length.
        let total = unsafe { bpf_xdp_get_buff_len(self.0.ctx) } as usize;
        if total <= len {
            return true;
        }
        let cut = (total - len) as i32;
        // SAFETY: helper called with this run's context pointer. Shrinking the tail
        // invalidates earlier packet pointers: none is live here, and every later access
        // goes through `ptr_at` with a fresh `data_end`.
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
        // SAFETY: `skb` is the `__sk_buff` pointer the kernel passed to this run of the program
        // (aya keeps it unchanged), valid and aligned for the whole run; volatile only so each
        // bound check loads `data_end` afresh (see `ptr_at`).
        unsafe { core::ptr::read_volatile(&(*self.0.skb.skb).data_end) as usize }
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: `skb` is the kernel's `__sk_buff` for this run (see `data_end`), and
        // `ifindex` is a plain readable field of it.
        unsafe { (*self.0.skb.skb).ifindex }
    }
    #[inline(always)]
    fn load(&self, off: u32, dst: &mut [u8]) -> bool {
        // SAFETY: helper called with the skb pointer the kernel gave this run; it writes at
        // most the `dst.len()` bytes it is told to, all inside the exclusively borrowed `dst`.
        unsafe {
            bpf_skb_load_bytes(
                self.0.skb.skb as *const c_void,
                off,
                dst.as_mut_ptr() as *mut c_void,
                dst.len() as u32,
            ) == 0
        }
    }
    #[inline(always)]
    fn prepare(&self) {
        let len = self.0.len();
        let want = if len < TC_PULL { len } else { TC_PULL };
        if self.data_end() - self.data() < want as usize {
            // SAFETY: helper called with this run's skb pointer. Pulling may move the data
            // and invalidates packet pointers: none exists yet (parsing starts after this).
            unsafe { bpf_skb_pull_data(self.0.skb.skb, want) };
        }
    }
    #[inline(always)]
    fn trim_to(&self, len: usize) -> bool {
        // SAFETY: helper called with this run's skb pointer. It invalidates packet pointers:
        // none is live here, and later accesses go through `ptr_at` with a fresh `data_end`.
        unsafe { bpf_skb_change_tail(self.0.skb.skb, len as u32, 0) == 0 }
    }
    #[inline(always)]
    fn rewritten(&self) {
        // SAFETY: helper called with this run's skb pointer; it only sets the checksum state.
        unsafe { bpf_csum_level(self.0.skb.skb, BPF_CSUM_LEVEL_RESET) };
    }
}

/// A checked pointer to a `T` at `off`. `data_end` is re-read (volatile) for every check, so
/// LLVM cannot drop a check as implied by an earlier one: the verifier could not follow that.
///
/// A returned pointer satisfies `data + off + size_of::<T>() <= data_end`: its
/// `size_of::<T>()` bytes are inside the directly accessible packet (and the verifier proves
/// the same bound before it lets the program touch them). It stays valid until the packet is
/// resized or pulled ([`Packet::trim_to`], [`Packet::prepare`]); it need not be aligned for
/// `T`. The packet bytes are not Rust-owned memory: no reference to them outlives a statement.
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
    ptr_at::<u16, P>(pkt, off).map(|p| {
        // SAFETY: `ptr_at` returned `p` only after checking `data + off + 2 <= data_end`
        // (the bound the verifier tracks), so both bytes are inside the packet and no other
        // reference to them is live; unaligned because headers have no alignment.
        u16::from_be(unsafe { p.read_unaligned() })
    })
}

/// One byte of the packet.
#[inline(always)]
pub(crate) fn byte<P: Packet>(pkt: &P, off: usize) -> Option<u8> {
    ptr_at::<u8, P>(pkt, off).map(|p| {
        // SAFETY: `ptr_at` checked `data + off + 1 <= data_end`: the byte is in the packet.
        unsafe { *p }
    })
}

/// The byte at `off` when the eight bytes from there are directly readable (checking eight
/// keeps LLVM from turning the bound into a form the verifier does not follow).
#[inline(always)]
pub(crate) fn first_byte<P: Packet>(pkt: &P, off: usize) -> Option<u8> {
    ptr_at::<[u8; 8], P>(pkt, off).map(|p| {
        // SAFETY: `ptr_at` checked `data + off + 8 <= data_end`; `[u8; 8]` has alignment 1.
        unsafe { (*p)[0] }
    })
}

/// A `u32` of the packet, as on the wire.
#[inline(always)]
pub(crate) fn word<P: Packet>(pkt: &P, off: usize) -> Option<u32> {
    ptr_at::<u32, P>(pkt, off).map(|p| {
        // SAFETY: `ptr_at` checked `data + off + 4 <= data_end`: the four bytes are in the
        // packet; unaligned because headers have no alignment.
        unsafe { p.read_unaligned() }
    })
}

/// Parses Ethernet (one 802.1Q/802.1ad tag), IPv4 (options; fragments pass) or IPv6 (no
/// extension headers), and TCP (with or without data); anything else is `None` and passes
/// untouched.
#[inline(always)]
pub fn parse<P: Packet>(pkt: &P) -> Option<Flow> {
    let mut l3 = ETH_HLEN;
    let mut proto = be16(pkt, offset_of!(EthHdr, ether_type))?;
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        proto = be16(pkt, ETH_HLEN + offset_of!(VlanHdr, ether_type))?;
        l3 += VLAN_HLEN;
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
        let vihl = byte(pkt, l3 + offset_of!(Ipv4Hdr, version_ihl))?;
        let ihl = ipv4_header_len(vihl);
        if vihl >> VERSION_SHIFT != IPV4_VERSION || ihl < IPV4_MIN_HLEN {
            return None;
        }
        let total = be16(pkt, l3 + offset_of!(Ipv4Hdr, tot_len))? as usize;
        let frag = be16(pkt, l3 + offset_of!(Ipv4Hdr, frag_off))?;
        if frag & IPV4_FRAGMENT_MASK != 0
            || byte(pkt, l3 + offset_of!(Ipv4Hdr, protocol))? != IPPROTO_TCP
            || total < ihl
        {
            return None;
        }
        flow.saddr[0] = word(pkt, l3 + offset_of!(Ipv4Hdr, saddr))?;
        flow.daddr[0] = word(pkt, l3 + offset_of!(Ipv4Hdr, daddr))?;
        flow.l4 = l3 + ihl;
        ip_payload = total - ihl;
    } else if proto == ETH_P_IPV6 {
        if byte(pkt, l3 + offset_of!(Ipv6Hdr, version_tc_flow))? >> VERSION_SHIFT != IPV6_VERSION
            || byte(pkt, l3 + offset_of!(Ipv6Hdr, next_header))? != IPPROTO_TCP
        {
            return None;
        }
        for i in 0..4 {
            let at = i * size_of::<u32>();
            flow.saddr[i] = word(pkt, l3 + offset_of!(Ipv6Hdr, saddr) + at)?;
            flow.daddr[i] = word(pkt, l3 + offset_of!(Ipv6Hdr, daddr) + at)?;
        }
        flow.v6 = true;
        flow.l4 = l3 + IPV6_HLEN;
        ip_payload = be16(pkt, l3 + offset_of!(Ipv6Hdr, payload_len))? as usize;
    } else {
        return None;
    }
    let l4 = flow.l4;
    let sport = ptr_at::<u16, P>(pkt, l4 + offset_of!(TcpHdr, source))?;
    // SAFETY: `ptr_at` checked `data + off + 2 <= data_end`, so the port is in the packet;
    // an unaligned read, and the port stays in network order.
    flow.sport = unsafe { sport.read_unaligned() };
    let dport = ptr_at::<u16, P>(pkt, l4 + offset_of!(TcpHdr, dest))?;
    // SAFETY: as for the source port: checked by `ptr_at` against `data_end`.
    flow.dport = unsafe { dport.read_unaligned() };
    let tcp_len = tcp_header_len(byte(pkt, l4 + offset_of!(TcpHdr, doff_res))?);
    flow.flags = byte(pkt, l4 + offset_of!(TcpHdr, flags))?;
    if tcp_len < TCP_MIN_HLEN || ip_payload < tcp_len {
        return None;
    }
    flow.seq = u32::from_be(word(pkt, l4 + offset_of!(TcpHdr, seq))?);
    flow.ack_be = word(pkt, l4 + offset_of!(TcpHdr, ack_seq))?;
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
    // SAFETY: a `repr(C)` union of structs of integers: all-zero bytes are a valid value of
    // every variant.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let ctx = pkt.ctx().as_ptr();
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: the union's fields are plain integers, so writing either variant is sound; the
    // helper is called with the context pointer the kernel gave this run and a pointer to the
    // local tuple with the size of the variant just written (it reads only those bytes). The
    // socket it returns is a counted reference, released below on every path.
    let sk = unsafe {
        if flow.v6 {
            tuple.__bindgen_anon_1.ipv6.saddr = flow.saddr;
            tuple.__bindgen_anon_1.ipv6.daddr = flow.daddr;
            tuple.__bindgen_anon_1.ipv6.sport = flow.sport;
            tuple.__bindgen_anon_1.ipv6.dport = flow.dport;
            bpf_skc_lookup_tcp(ctx, &mut tuple, SOCK_TUPLE_V6_LEN, netns, 0)
        } else {
            tuple.__bindgen_anon_1.ipv4.saddr = flow.saddr[0];
            tuple.__bindgen_anon_1.ipv4.daddr = flow.daddr[0];
            tuple.__bindgen_anon_1.ipv4.sport = flow.sport;
            tuple.__bindgen_anon_1.ipv4.dport = flow.dport;
            bpf_skc_lookup_tcp(ctx, &mut tuple, SOCK_TUPLE_V4_LEN, netns, 0)
        }
    };
    if sk.is_null() {
        return SOCKET_NONE;
    }
    // SAFETY: `sk` is non-null, so it is the referenced socket the lookup returned, live
    // until the release below; `state` is in the common part that every socket kind
    // (full, request, TIME-WAIT) has.
    let state = unsafe { (*sk).state };
    // SAFETY: releases exactly the one reference the lookup took; `sk` is not used after.
    unsafe { bpf_sk_release(sk as *mut c_void) };
    match state {
        TCP_LISTEN => SOCKET_LISTENER,
        TCP_NEW_SYN_RECV => SOCKET_REQUEST,
        TCP_TIME_WAIT => SOCKET_TIME_WAIT,
        _ => SOCKET_ESTABLISHED,
    }
}
