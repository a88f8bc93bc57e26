//! The `reset` action and hit events against real sockets on loopback, through
//! `BPF_PROG_TEST_RUN`: which reset is written depends on what the stack has for the segment
//! (a connection, a request socket, only a listener, nothing), and every hit event says which
//! it was. Needs root.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

use agent_common::{
    config::{Action, Config},
    event::{HitEvent, SOCKET_ESTABLISHED, SOCKET_LISTENER, SOCKET_NONE, SOCKET_REQUEST},
    hash::token_hash,
    program_names,
    revoked::RevokedEntry,
};
use tokenwall::kernel::Kernel;
use tokenwall_tests::{
    packet::{self, Segment},
    progs::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_UNSPEC, XDP_PASS, XDP_TX, counters, load},
};

const BAD: &str = "tw-gone";
const REQUEST: &[u8] =
    b"POST /x HTTP/1.1\r\nAuthorization: Bearer tw-gone\r\nContent-Length: 3\r\n\r\nabc";

/// A loopback listener watched by the programs; `defer`: TCP_DEFER_ACCEPT, so a connection's
/// final bare ACK leaves a request socket until data arrives.
fn listener(k: &mut Kernel, cfg: &Config, defer: bool) -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    if defer {
        let secs: libc::c_int = 30;
        // SAFETY: a valid socket and a correctly sized option value.
        let rc = unsafe {
            libc::setsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&secs as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "TCP_DEFER_ACCEPT");
    }
    let port = l.local_addr().unwrap().port();
    let mut c = *cfg;
    c.ports[0] = port;
    k.set_config(&c).unwrap();
    (l, port)
}

/// A segment from `from` to 127.0.0.1:`port`.
fn segment(from: SocketAddr, port: u16) -> Segment {
    let mut seg = Segment::v4(port);
    seg.src = from.ip();
    seg.dst = "127.0.0.1".parse().unwrap();
    seg.sport = from.port();
    seg.seq = 0x0101_0101;
    seg.ack = 0x0202_0202;
    seg
}

/// Checks a reset turned around to the client: addresses and ports swapped, `seq` and `ack`
/// and flags as given, valid checksums.
fn assert_reply(frame: &[u8], seg: &Segment, want: (u32, u32, u8), what: &str) {
    let p = packet::parse(frame);
    assert_eq!((p.seq, p.ack, p.flags), want, "{what}");
    assert_eq!(p.payload_len, 0, "{what}");
    assert!(p.checksums_ok, "{what}: checksums");
    assert_eq!(&frame[0..6], &[0x02, 0, 0, 0, 0, 2], "{what}: MACs swapped");
    let sport = u16::from_be_bytes([frame[34], frame[35]]);
    let dport = u16::from_be_bytes([frame[36], frame[37]]);
    assert_eq!(
        (sport, dport),
        (seg.dport, seg.sport),
        "{what}: ports swapped"
    );
    assert_eq!(
        &frame[26..30],
        &[127, 0, 0, 1],
        "{what}: from the server address"
    );
}

#[test]
fn reset_paths_follow_the_socket_behind_the_segment() {
    let (mut k, cfg, _pins) = load("reset", Action::Reset);
    k.insert(
        token_hash(&cfg.key, BAD.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();

    // A connection: the segment becomes a RST toward the stack (same sequence numbers).
    let (l, port) = listener(&mut k, &cfg, false);
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _server = l.accept().unwrap();
    let mut seg = segment(client.local_addr().unwrap(), port);
    seg.ip_options = vec![1; 4];
    for (prog, verdict) in [
        (program_names::XDP, XDP_PASS),
        (program_names::TC, TC_ACT_OK),
    ] {
        let out = k.test_run(prog, &seg.frame(REQUEST), 1).unwrap();
        assert_eq!(out.verdict, verdict, "{prog}");
        let p = packet::parse(&out.packet);
        assert_eq!(
            (p.flags, p.seq, p.ack, p.payload_len),
            (packet::flags::RST_ACK, seg.seq, seg.ack, 0),
            "{prog}"
        );
        assert!(p.checksums_ok, "{prog}: checksums of the rewritten segment");
    }
    assert_eq!(counters(&k)["reset"], 2);

    // Only the listener (no connection on this tuple, e.g. SYN cookies): a RST to the client.
    let mut stray = segment("127.0.0.1:9".parse().unwrap(), port);
    stray.sport = client.local_addr().unwrap().port().wrapping_add(1);
    for (prog, verdict) in [
        (program_names::XDP, XDP_TX),
        (program_names::TC, TC_ACT_REDIRECT),
    ] {
        let out = k.test_run(prog, &stray.frame(REQUEST), 1).unwrap();
        assert_eq!(out.verdict, verdict, "{prog}: listener only");
        assert_reply(&out.packet, &stray, (stray.ack, 0, 0x04), prog);
    }

    // A SYN with data (TCP Fast Open) to the listener: RST|ACK acknowledging SYN and data.
    let mut syn = stray.clone();
    syn.flags = packet::flags::SYN;
    let out = k
        .test_run(program_names::XDP, &syn.frame(REQUEST), 1)
        .unwrap();
    assert_eq!(out.verdict, XDP_TX);
    let acked = syn.seq.wrapping_add(1 + REQUEST.len() as u32);
    assert_reply(
        &out.packet,
        &syn,
        (0, acked, packet::flags::RST_ACK),
        "SYN data",
    );

    // A request socket: the client's handshake-completing segment never reaches the stack.
    let (dl, dport) = listener(&mut k, &cfg, true);
    let deferred = TcpStream::connect(("127.0.0.1", dport)).unwrap();
    let seg = segment(deferred.local_addr().unwrap(), dport);
    for (prog, verdict) in [
        (program_names::XDP, XDP_TX),
        (program_names::TC, TC_ACT_REDIRECT),
    ] {
        let out = k.test_run(prog, &seg.frame(REQUEST), 1).unwrap();
        assert_eq!(out.verdict, verdict, "{prog}: request socket");
        assert_reply(&out.packet, &seg, (seg.ack, 0, 0x04), prog);
    }
    drop(dl);
    assert_eq!(counters(&k)["reset_sent"], 5);

    // No socket at all (nothing listens): passed untouched for the stack to reset.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let nport = closed.local_addr().unwrap().port();
    drop(closed);
    let mut c = cfg;
    c.ports[0] = nport;
    k.set_config(&c).unwrap();
    let frame = segment("127.0.0.1:4242".parse().unwrap(), nport).frame(REQUEST);
    for (prog, verdict) in [
        (program_names::XDP, XDP_PASS),
        (program_names::TC, TC_ACT_UNSPEC),
    ] {
        let out = k.test_run(prog, &frame, 1).unwrap();
        assert_eq!(
            (out.verdict, &out.packet),
            (verdict, &frame),
            "{prog}: no socket"
        );
    }
    let c = counters(&k);
    assert_eq!(
        (c["reset_no_socket"], c["reset"], c["reset_sent"]),
        (2, 2, 5)
    );
}

fn next_event(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> HitEvent {
    let item = ring.next().expect("a hit event");
    assert!(item.len() >= size_of::<HitEvent>());
    // SAFETY: the kernel wrote a HitEvent; read_unaligned copes with any alignment.
    unsafe { (item.as_ptr() as *const HitEvent).read_unaligned() }
}

/// Under `observe` (no lookup needed to act) every reported hit still says what socket was
/// behind it: a connection, a request socket, only a listener, or nothing (a spoofed source).
#[test]
fn hit_events_say_which_socket_was_behind_the_hit() {
    let (mut k, cfg, _pins) = load("events", Action::Observe);
    k.insert(
        token_hash(&cfg.key, BAD.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    let mut ring = k.take_events().unwrap();
    let (l, port) = listener(&mut k, &cfg, false);
    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _server = l.accept().unwrap();
    let live = segment(client.local_addr().unwrap(), port);
    let mut stray = live.clone();
    stray.sport = live.sport.wrapping_add(1);
    let spoofed = {
        let mut s = Segment::v4(port);
        s.dst = "127.0.0.2".parse().unwrap();
        s
    };
    for (seg, socket) in [
        (&live, SOCKET_ESTABLISHED),
        (&stray, SOCKET_LISTENER),
        (&spoofed, SOCKET_NONE),
    ] {
        let out = k
            .test_run(program_names::XDP, &seg.frame(REQUEST), 1)
            .unwrap();
        assert_eq!(out.verdict, XDP_PASS);
        let ev = next_event(&mut ring);
        assert_eq!((ev.socket, ev.sport), (socket, seg.sport));
    }
    let (dl, dport) = listener(&mut k, &cfg, true);
    let deferred = TcpStream::connect(("127.0.0.1", dport)).unwrap();
    let seg = segment(deferred.local_addr().unwrap(), dport);
    k.test_run(program_names::XDP, &seg.frame(REQUEST), 1)
        .unwrap();
    assert_eq!(next_event(&mut ring).socket, SOCKET_REQUEST);
    drop(dl);
}
