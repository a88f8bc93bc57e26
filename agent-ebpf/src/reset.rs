//! The two resets of the `reset` action: a request segment on a live connection is rewritten
//! into a RST toward the local stack (the gateway never reads it); a segment with no
//! connection behind it but a listener, a request socket or a TIME-WAIT socket (one that would
//! complete a handshake and create a connection) is turned around into a RST to the client.

use core::mem::{offset_of, size_of};

use crate::{
    headers::{
        EthHdr, HLEN_UNIT, Ipv4Hdr, Ipv6Hdr, MAX_HLEN, TCP_MIN_HLEN, TcpHdr, ipv4_header_len,
        tcp_doff_res,
    },
    packet::{Flow, IPPROTO_TCP, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, be16, byte, ptr_at},
};

/// TCP header length of the resets the programs write (no options).
const TCP_BARE: usize = TCP_MIN_HLEN;
/// Hop limit of the resets sent back to a client.
const REPLY_TTL: u8 = 64;
/// Index of the 32-bit word of a TCP header that holds `field_offset`.
const fn tcp_word(field_offset: usize) -> usize {
    field_offset / size_of::<u32>()
}
// `reply_reset` writes the header as words: data offset, flags and window share one, and the
// checksum and urgent pointer (both zero) the last.
const _: () = assert!(
    tcp_word(offset_of!(TcpHdr, doff_res)) == tcp_word(offset_of!(TcpHdr, window))
        && offset_of!(TcpHdr, flags) == offset_of!(TcpHdr, doff_res) + 1
        && tcp_word(offset_of!(TcpHdr, check)) == tcp_word(offset_of!(TcpHdr, urg_ptr))
        && tcp_word(offset_of!(TcpHdr, source)) == tcp_word(offset_of!(TcpHdr, dest))
        && offset_of!(TcpHdr, source) % size_of::<u32>() == 0
);

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Sums `len` bytes (even, at most [`MAX_HLEN`]: an IPv4 or TCP header) at `off` as
/// big-endian 16-bit words.
#[inline(always)]
fn sum_words<P: Packet>(pkt: &P, off: usize, len: usize) -> Option<u64> {
    const STEP: usize = size_of::<u16>();
    let mut sum = 0u64;
    for i in 0..MAX_HLEN / STEP {
        if i * STEP >= len {
            break;
        }
        sum += be16(pkt, off + i * STEP)? as u64;
    }
    Some(sum)
}

/// The pseudo-header sum of a TCP segment of `tcp_len` bytes (the order of the addresses
/// does not change it).
#[inline(always)]
fn pseudo_sum(flow: &Flow, tcp_len: usize) -> u64 {
    let mut pseudo: u64 = IPPROTO_TCP as u64 + tcp_len as u64;
    for i in 0..4 {
        if i == 1 && !flow.v6 {
            break;
        }
        let (s, d) = (u32::from_be(flow.saddr[i]), u32::from_be(flow.daddr[i]));
        pseudo += (s >> 16) as u64 + (s & 0xffff) as u64 + (d >> 16) as u64 + (d & 0xffff) as u64;
    }
    pseudo
}

/// Fixes the IP length (and, for IPv4, the header checksum) for a TCP segment of `tcp_len`
/// bytes; `ttl` replaces the TTL / hop limit when given.
#[inline(always)]
fn finish_ip<P: Packet>(pkt: &P, flow: &Flow, tcp_len: usize, ttl: Option<u8>) -> Option<()> {
    let l3 = flow.l3;
    if flow.v6 {
        let plen = ptr_at::<u16, P>(pkt, l3 + offset_of!(Ipv6Hdr, payload_len))?;
        let hops = ptr_at::<u8, P>(pkt, l3 + offset_of!(Ipv6Hdr, hop_limit))?;
        // SAFETY: `ptr_at` checked `data + off + size <= data_end` for both pointers and the
        // packet has not been resized since, so the bytes are inside it; the 16-bit store is
        // unaligned because headers have no alignment.
        unsafe {
            plen.write_unaligned((tcp_len as u16).to_be());
            if let Some(t) = ttl {
                *hops = t;
            }
        }
        return Some(());
    }
    let ihl = ipv4_header_len(byte(pkt, l3 + offset_of!(Ipv4Hdr, version_ihl))?);
    let tot = ptr_at::<u16, P>(pkt, l3 + offset_of!(Ipv4Hdr, tot_len))?;
    let ttl_at = ptr_at::<u8, P>(pkt, l3 + offset_of!(Ipv4Hdr, ttl))?;
    let check = ptr_at::<u16, P>(pkt, l3 + offset_of!(Ipv4Hdr, check))?;
    // SAFETY: `ptr_at` checked each pointer's bytes against `data_end` and the packet has
    // not been resized since; the 16-bit stores are unaligned (headers have no alignment).
    unsafe {
        tot.write_unaligned(((ihl + tcp_len) as u16).to_be());
        if let Some(t) = ttl {
            *ttl_at = t;
        }
        check.write_unaligned(0);
    }
    let sum = sum_words(pkt, l3, ihl)?;
    let check = ptr_at::<u16, P>(pkt, l3 + offset_of!(Ipv4Hdr, check))?;
    // SAFETY: `ptr_at` checked `data + off + 2 <= data_end`; an unaligned store.
    unsafe { check.write_unaligned(fold(sum).to_be()) };
    Some(())
}

/// Writes the TCP checksum of the `tcp_len`-byte segment.
#[inline(always)]
fn finish_tcp<P: Packet>(pkt: &P, flow: &Flow, tcp_len: usize) -> Option<()> {
    let sum = sum_words(pkt, flow.l4, tcp_len)?;
    let check = ptr_at::<u16, P>(pkt, flow.l4 + offset_of!(TcpHdr, check))?;
    // SAFETY: `ptr_at` checked `data + off + 2 <= data_end`; an unaligned store.
    unsafe { check.write_unaligned(fold(sum + pseudo_sum(flow, tcp_len)).to_be()) };
    Some(())
}

/// Writes a `u32` (as on the wire) at `off`.
#[inline(always)]
fn put32<P: Packet>(pkt: &P, off: usize, v: u32) -> Option<()> {
    let p = ptr_at::<u32, P>(pkt, off)?;
    // SAFETY: `ptr_at` checked `data + off + 4 <= data_end`: the four bytes are in the
    // packet; an unaligned store (headers have no alignment).
    unsafe { p.write_unaligned(v) };
    Some(())
}

/// Swaps the IP source and destination addresses.
#[inline(always)]
fn swap_addresses<P: Packet>(pkt: &P, flow: &Flow) -> Option<()> {
    if flow.v6 {
        for i in 0..4 {
            let at = i * size_of::<u32>();
            put32(
                pkt,
                flow.l3 + offset_of!(Ipv6Hdr, saddr) + at,
                flow.daddr[i],
            )?;
            put32(
                pkt,
                flow.l3 + offset_of!(Ipv6Hdr, daddr) + at,
                flow.saddr[i],
            )?;
        }
    } else {
        put32(pkt, flow.l3 + offset_of!(Ipv4Hdr, saddr), flow.daddr[0])?;
        put32(pkt, flow.l3 + offset_of!(Ipv4Hdr, daddr), flow.saddr[0])?;
    }
    Some(())
}

/// Turns the request segment into a bare RST|ACK with the same sequence numbers, so the local
/// stack resets the connection and the gateway never reads the request.
#[inline(always)]
pub fn rewrite_to_reset<P: Packet>(pkt: &P, flow: &Flow) -> bool {
    if !pkt.trim_to(flow.payload) {
        return false;
    }
    // The header length as the data offset can express it (a multiple of four, at most
    // `MAX_HLEN`), which tells the verifier its range.
    let tcp_len = flow.tcp_len & MAX_HLEN & !(HLEN_UNIT - 1);
    let Some(tcp) = ptr_at::<TcpHdr, P>(pkt, flow.l4) else {
        return false;
    };
    // SAFETY: `ptr_at` checked `data + l4 + size_of::<TcpHdr>() <= data_end` after the trim,
    // so the whole option-less header is in the packet; `TcpHdr` has alignment 1 and only
    // byte fields, and the place is written through without a reference being kept.
    unsafe {
        (*tcp).flags = TCP_RST | TCP_ACK;
        (*tcp).window = [0; 2];
        (*tcp).check = [0; 2]; // filled below
        (*tcp).urg_ptr = [0; 2];
    }
    if finish_ip(pkt, flow, tcp_len, None).is_none() || finish_tcp(pkt, flow, tcp_len).is_none() {
        return false;
    }
    pkt.rewritten();
    true
}

/// Turns the segment around into the RST the client's stack accepts for it (RFC 9293
/// section 3.10.7.1, as Linux writes it): to a segment with ACK, `seq = SEG.ACK` and RST
/// alone; to a SYN, `seq = 0`, `ack = SEG.SEQ + SEG.LEN` and RST|ACK. Addresses and ports are
/// swapped, options and payload cut. The caller sends it back out of the same interface.
#[inline(always)]
pub fn reply_reset<P: Packet>(pkt: &P, flow: &Flow) -> bool {
    if !pkt.trim_to(flow.l4 + TCP_BARE) {
        return false;
    }
    let Some(eth) = ptr_at::<EthHdr, P>(pkt, 0) else {
        return false;
    };
    // SAFETY: `ptr_at` checked `data + size_of::<EthHdr>() <= data_end` after the trim, so
    // the header is in the packet; `EthHdr` has alignment 1, and the two fields are disjoint.
    unsafe { core::mem::swap(&mut (*eth).dst, &mut (*eth).src) };
    if swap_addresses(pkt, flow).is_none() {
        return false;
    }
    let (seq, ack, flags) = if flow.flags & TCP_ACK != 0 {
        (flow.ack_be, 0, TCP_RST)
    } else {
        let len = flow.payload_len
            + u32::from(flow.flags & TCP_SYN != 0)
            + u32::from(flow.flags & TCP_FIN != 0);
        (0, flow.seq.wrapping_add(len).to_be(), TCP_RST | TCP_ACK)
    };
    let Some(tcp) = ptr_at::<TcpHdr, P>(pkt, flow.l4) else {
        return false;
    };
    // The header as 32-bit words, in memory order.
    let mut words = [0u32; TCP_BARE / size_of::<u32>()];
    // Ports swapped: the old destination (the low half in memory order) comes first.
    words[tcp_word(offset_of!(TcpHdr, source))] = (flow.sport as u32) << 16 | flow.dport as u32;
    words[tcp_word(offset_of!(TcpHdr, seq))] = seq;
    words[tcp_word(offset_of!(TcpHdr, ack_seq))] = ack;
    // Data offset, flags, a zero window.
    words[tcp_word(offset_of!(TcpHdr, doff_res))] =
        u32::from_be_bytes([tcp_doff_res(TCP_BARE), flags, 0, 0]).to_be();
    let base = tcp as *mut u32;
    for (i, w) in words.iter().enumerate() {
        // SAFETY: `ptr_at` checked that the `TCP_BARE` header bytes at `l4` are inside the
        // packet, and `i` indexes the `TCP_BARE / 4` words of that header; unaligned stores
        // because the header need not be 4-byte aligned.
        unsafe { base.add(i).write_unaligned(*w) };
    }
    if finish_ip(pkt, flow, TCP_BARE, Some(REPLY_TTL)).is_none()
        || finish_tcp(pkt, flow, TCP_BARE).is_none()
    {
        return false;
    }
    pkt.rewritten();
    true
}
