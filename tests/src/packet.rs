//! Builds raw Ethernet frames for `BPF_PROG_TEST_RUN`: IPv4/IPv6, optional VLAN tag and IP
//! options, TCP with a payload, UDP; and checks Internet checksums of what a program returns.

use std::net::{Ipv4Addr, Ipv6Addr};

/// TCP flags used by the builders.
pub mod flags {
    /// PSH|ACK, a data segment.
    pub const PSH_ACK: u8 = 0x18;
    /// RST|ACK.
    pub const RST_ACK: u8 = 0x14;
    /// SYN.
    pub const SYN: u8 = 0x02;
}

/// A TCP segment to build.
#[derive(Clone, Debug)]
pub struct Segment {
    /// Source address (an IPv4 or IPv6 address of the same family as `dst`).
    pub src: std::net::IpAddr,
    /// Destination address.
    pub dst: std::net::IpAddr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP flags.
    pub flags: u8,
    /// One 802.1Q tag with this VLAN id.
    pub vlan: Option<u16>,
    /// IPv4 option bytes (a multiple of 4, at most 40).
    pub ip_options: Vec<u8>,
    /// TCP option bytes (a multiple of 4, at most 40).
    pub tcp_options: Vec<u8>,
    /// IPv4 fragment offset/flags field.
    pub frag: u16,
}

impl Segment {
    /// A PSH|ACK segment from 198.51.100.7:40000 to 192.0.2.1:`dport`.
    pub fn v4(dport: u16) -> Self {
        Self {
            src: Ipv4Addr::new(198, 51, 100, 7).into(),
            dst: Ipv4Addr::new(192, 0, 2, 1).into(),
            sport: 40000,
            dport,
            seq: 1000,
            ack: 2000,
            flags: flags::PSH_ACK,
            vlan: None,
            ip_options: Vec::new(),
            tcp_options: Vec::new(),
            frag: 0,
        }
    }

    /// The same segment between 2001:db8::7 and 2001:db8::1.
    pub fn v6(dport: u16) -> Self {
        Self {
            src: "2001:db8::7".parse::<Ipv6Addr>().unwrap().into(),
            dst: "2001:db8::1".parse::<Ipv6Addr>().unwrap().into(),
            ..Self::v4(dport)
        }
    }

    /// The Ethernet frame carrying this segment and `payload`.
    pub fn frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut tcp = Vec::new();
        tcp.extend_from_slice(&self.sport.to_be_bytes());
        tcp.extend_from_slice(&self.dport.to_be_bytes());
        tcp.extend_from_slice(&self.seq.to_be_bytes());
        tcp.extend_from_slice(&self.ack.to_be_bytes());
        tcp.push((((20 + self.tcp_options.len()) / 4) as u8) << 4);
        tcp.push(self.flags);
        tcp.extend_from_slice(&64240u16.to_be_bytes());
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        tcp.extend_from_slice(&self.tcp_options);
        tcp.extend_from_slice(payload);
        let csum = l4_checksum(self.src, self.dst, 6, &tcp);
        tcp[16..18].copy_from_slice(&csum.to_be_bytes());
        self.wrap(6, &tcp)
    }

    /// An Ethernet frame with a UDP datagram carrying `payload` between the same endpoints.
    pub fn udp_frame(&self, payload: &[u8]) -> Vec<u8> {
        let mut udp = Vec::new();
        udp.extend_from_slice(&self.sport.to_be_bytes());
        udp.extend_from_slice(&self.dport.to_be_bytes());
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let csum = l4_checksum(self.src, self.dst, 17, &udp);
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
        self.wrap(17, &udp)
    }

    fn wrap(&self, proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        if let Some(id) = self.vlan {
            f.extend_from_slice(&0x8100u16.to_be_bytes());
            f.extend_from_slice(&id.to_be_bytes());
        }
        match (self.src, self.dst) {
            (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
                f.extend_from_slice(&0x0800u16.to_be_bytes());
                let ihl = 20 + self.ip_options.len();
                let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
                ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(&self.frag.to_be_bytes());
                ip.extend_from_slice(&[64, proto, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&self.ip_options);
                let c = checksum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
                f.extend_from_slice(&0x86ddu16.to_be_bytes());
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
                f.extend_from_slice(&[proto, 64]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
            }
            _ => panic!("mixed address families"),
        }
        f.extend_from_slice(l4);
        f
    }
}

fn sum16(data: &[u8], mut sum: u64) -> u64 {
    for c in data.chunks(2) {
        sum += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data` added to `initial`.
pub fn checksum(data: &[u8], initial: u64) -> u16 {
    fold(sum16(data, initial))
}

/// The TCP/UDP checksum over the pseudo-header and `l4`.
pub fn l4_checksum(src: std::net::IpAddr, dst: std::net::IpAddr, proto: u8, l4: &[u8]) -> u16 {
    let mut pseudo = Vec::new();
    match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        }
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => {
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    checksum(l4, sum16(&pseudo, 0))
}

/// A parsed view of a returned frame (untagged IPv4 or IPv6 with TCP), for assertions.
#[derive(Debug)]
pub struct Parsed {
    /// TCP flags.
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// TCP payload length.
    pub payload_len: usize,
    /// Whether the IPv4 header checksum (if any) and the TCP checksum verify.
    pub checksums_ok: bool,
}

/// Parses a frame produced by [`Segment::frame`] (after a program may have rewritten it).
pub fn parse(frame: &[u8]) -> Parsed {
    let et = u16::from_be_bytes([frame[12], frame[13]]);
    let (src, dst, l4, ip_ok): (std::net::IpAddr, std::net::IpAddr, &[u8], bool) = if et == 0x0800 {
        let ihl = usize::from(frame[14] & 0x0f) * 4;
        let tot = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
        let ip = &frame[14..14 + ihl];
        let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        (
            s.into(),
            d.into(),
            &frame[14 + ihl..14 + tot],
            checksum(ip, 0) == 0,
        )
    } else {
        let plen = usize::from(u16::from_be_bytes([frame[18], frame[19]]));
        let s: [u8; 16] = frame[22..38].try_into().unwrap();
        let d: [u8; 16] = frame[38..54].try_into().unwrap();
        (
            Ipv6Addr::from(s).into(),
            Ipv6Addr::from(d).into(),
            &frame[54..54 + plen],
            true,
        )
    };
    let doff = usize::from(l4[12] >> 4) * 4;
    Parsed {
        flags: l4[13],
        seq: u32::from_be_bytes(l4[4..8].try_into().unwrap()),
        ack: u32::from_be_bytes(l4[8..12].try_into().unwrap()),
        payload_len: l4.len() - doff,
        checksums_ok: ip_ok && l4_checksum(src, dst, 6, l4) == 0,
    }
}
