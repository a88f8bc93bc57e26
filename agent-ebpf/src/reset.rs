//! The two resets of the `reset` action: a request segment on a live connection is rewritten
//! into a RST toward the local stack (the gateway never reads it); a segment with no
//! connection behind it but a listener, a request socket or a TIME-WAIT socket (one that would
//! complete a handshake and create a connection) is turned around into a RST to the client.

use crate::packet::{
    Flow, IPPROTO_TCP, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, be16, byte, ptr_at,
};

/// TCP header length of the resets the programs write (no options).
const TCP_BARE: usize = 20;
/// Hop limit of the resets sent back to a client.
const REPLY_TTL: u8 = 64;
/// Ethernet address length.
const ETH_ALEN: usize = 6;

#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Sums `len` bytes (even, at most 60) at `off` as big-endian 16-bit words.
#[inline(always)]
fn sum_words<P: Packet>(pkt: &P, off: usize, len: usize) -> Option<u64> {
    let mut sum = 0u64;
    for i in 0..30 {
        if i * 2 >= len {
            break;
        }
        sum += be16(pkt, off + i * 2)? as u64;
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
        let plen = ptr_at::<u16, P>(pkt, l3 + 4)?;
        let hops = ptr_at::<u8, P>(pkt, l3 + 7)?;
        // SAFETY: both pointers were checked against data_end by ptr_at.
        unsafe {
            plen.write_unaligned((tcp_len as u16).to_be());
            if let Some(t) = ttl {
                *hops = t;
            }
        }
        return Some(());
    }
    let ihl = ((byte(pkt, l3)? & 0x0f) as usize) * 4;
    let tot = ptr_at::<u16, P>(pkt, l3 + 2)?;
    let ttl_at = ptr_at::<u8, P>(pkt, l3 + 8)?;
    let check = ptr_at::<u16, P>(pkt, l3 + 10)?;
    // SAFETY: the pointers were checked against data_end by ptr_at.
    unsafe {
        tot.write_unaligned(((ihl + tcp_len) as u16).to_be());
        if let Some(t) = ttl {
            *ttl_at = t;
        }
        check.write_unaligned(0);
    }
    let sum = sum_words(pkt, l3, ihl)?;
    let check = ptr_at::<u16, P>(pkt, l3 + 10)?;
    // SAFETY: checked by ptr_at.
    unsafe { check.write_unaligned(fold(sum).to_be()) };
    Some(())
}

/// Writes the TCP checksum of the `tcp_len`-byte segment.
#[inline(always)]
fn finish_tcp<P: Packet>(pkt: &P, flow: &Flow, tcp_len: usize) -> Option<()> {
    let sum = sum_words(pkt, flow.l4, tcp_len)?;
    let check = ptr_at::<u16, P>(pkt, flow.l4 + 16)?;
    // SAFETY: checked by ptr_at.
    unsafe { check.write_unaligned(fold(sum + pseudo_sum(flow, tcp_len)).to_be()) };
    Some(())
}

/// Writes a `u32` (as on the wire) at `off`.
#[inline(always)]
fn put32<P: Packet>(pkt: &P, off: usize, v: u32) -> Option<()> {
    let p = ptr_at::<u32, P>(pkt, off)?;
    // SAFETY: the four bytes were checked against data_end by ptr_at.
    unsafe { p.write_unaligned(v) };
    Some(())
}

/// Swaps the IP source and destination addresses.
#[inline(always)]
fn swap_addresses<P: Packet>(pkt: &P, flow: &Flow) -> Option<()> {
    if flow.v6 {
        for i in 0..4 {
            put32(pkt, flow.l3 + 8 + 4 * i, flow.daddr[i])?;
            put32(pkt, flow.l3 + 24 + 4 * i, flow.saddr[i])?;
        }
    } else {
        put32(pkt, flow.l3 + 12, flow.daddr[0])?;
        put32(pkt, flow.l3 + 16, flow.saddr[0])?;
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
    let tcp_len = flow.tcp_len & 0x3c;
    let Some(tcp) = ptr_at::<[u8; 20], P>(pkt, flow.l4) else {
        return false;
    };
    // SAFETY: the 20 bytes were checked against data_end by ptr_at.
    unsafe {
        (*tcp)[13] = TCP_RST | TCP_ACK;
        (*tcp)[14] = 0; // window
        (*tcp)[15] = 0;
        (*tcp)[16] = 0; // checksum, filled below
        (*tcp)[17] = 0;
        (*tcp)[18] = 0; // urgent pointer
        (*tcp)[19] = 0;
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
    let Some(eth) = ptr_at::<[u8; 2 * ETH_ALEN], P>(pkt, 0) else {
        return false;
    };
    // SAFETY: the 12 address bytes were checked against data_end by ptr_at.
    unsafe {
        let a = *eth;
        for i in 0..ETH_ALEN {
            (*eth)[i] = a[ETH_ALEN + i];
            (*eth)[ETH_ALEN + i] = a[i];
        }
    }
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
    let Some(tcp) = ptr_at::<[u8; TCP_BARE], P>(pkt, flow.l4) else {
        return false;
    };
    // Ports swapped: the old destination (the low half in memory order) comes first.
    let ports = (flow.sport as u32) << 16 | flow.dport as u32;
    let head = u32::from_be_bytes([(TCP_BARE as u8 / 4) << 4, flags, 0, 0]).to_be();
    let words = [ports, seq, ack, head, 0];
    let base = tcp as *mut u32;
    for (i, w) in words.iter().enumerate() {
        // SAFETY: the 20 header bytes were checked against data_end by ptr_at; unaligned
        // stores because the header need not be 4-byte aligned.
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
