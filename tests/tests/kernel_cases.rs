//! The kernel programs on hand-made segments through `BPF_PROG_TEST_RUN`: what passes
//! untouched, expiry, revoked signing keys, the event budget, JWS keying against ECDSA
//! malleability, the request shapes nginx accepts that the old scan missed, bodies that look
//! like requests, and TCP Fast Open data. Needs root.

use agent_common::{
    config::Action,
    hash::{revocation_hash, token_hash},
    program_names,
    revoked::RevokedEntry,
    scan::scan_segment,
};
use tokenwall::kernel::Kernel;
use tokenwall_tests::{
    jws::{Alg, signed},
    packet::{self, Segment},
    progs::{PORT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS, counters, load},
};

fn req(t: &str) -> Vec<u8> {
    format!("GET / HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {t}\r\n\r\n").into_bytes()
}

/// The XDP and TC verdicts for `payload` on a fresh flow (source port `sport`).
fn verdicts(k: &mut Kernel, sport: u16, payload: &[u8]) -> (i32, i32) {
    let mut seg = Segment::v4(PORT);
    seg.sport = sport;
    let x = k
        .test_run(program_names::XDP, &seg.frame(payload), 1)
        .unwrap();
    seg.sport = sport.wrapping_add(1);
    let t = k
        .test_run(program_names::TC, &seg.frame(payload), 1)
        .unwrap();
    (x.verdict, t.verdict)
}

const DROPPED: (i32, i32) = (XDP_DROP, TC_ACT_SHOT);
const PASSED: (i32, i32) = (XDP_PASS, TC_ACT_UNSPEC);

#[test]
fn unwatched_ports_udp_fragments_and_bare_syns_pass_untouched() {
    let (mut k, cfg, _pins) = load("pass", Action::Drop);
    let req = b"GET / HTTP/1.1\r\nAuthorization: Bearer revoked-one\r\n\r\n";
    k.insert(
        token_hash(&cfg.key, b"revoked-one"),
        RevokedEntry::default(),
    )
    .unwrap();
    let mut other_port = Segment::v4(9090);
    let mut frag = Segment::v4(PORT);
    frag.frag = 0x2000; // more fragments
    let mut syn = Segment::v4(PORT);
    syn.flags = packet::flags::SYN;
    let frames = [
        other_port.frame(req),
        Segment::v4(PORT).udp_frame(req),
        frag.frame(req),
        syn.frame(b""),
        Segment::v4(PORT).frame(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"),
        vec![0u8; 14],
    ];
    other_port.vlan = Some(5);
    for f in frames.iter().chain([&other_port.frame(req)]) {
        let before = counters(&k);
        let out = k.test_run(program_names::XDP, f, 1).unwrap();
        assert_eq!(out.verdict, XDP_PASS);
        assert_eq!(&out.packet, f, "a passed packet must be untouched");
        assert_eq!(counters(&k)["http_requests"], before["http_requests"]);
    }
    let out = k
        .test_run(program_names::XDP, &Segment::v4(PORT).frame(req), 1)
        .unwrap();
    assert_eq!(
        out.verdict, XDP_DROP,
        "the same request on the watched port is dropped"
    );
}

#[test]
fn expired_entries_are_ignored() {
    let (mut k, cfg, _pins) = load("expiry", Action::Drop);
    let mut live_cfg = cfg;
    live_cfg.clock_offset_ns = tokenwall::clock::clock_offset_ns();
    k.set_config(&live_cfg).unwrap();
    let now = tokenwall::clock::now();
    for (t, expires_at) in [("past", now - 5), ("future", now + 600)] {
        let e = RevokedEntry {
            expires_at,
            ..Default::default()
        };
        k.insert(token_hash(&cfg.key, t.as_bytes()), e).unwrap();
    }
    assert_eq!(verdicts(&mut k, 1000, &req("past")), PASSED);
    assert_eq!(verdicts(&mut k, 1010, &req("future")), DROPPED);
    assert_eq!(counters(&k)["expired_ignored"], 2);
}

#[test]
fn a_revoked_signing_key_drops_tokens_never_seen_before() {
    let (mut k, cfg, _pins) = load("key", Action::Drop);
    let header = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsxIn0";
    k.insert_header(
        token_hash(&cfg.key, header.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    for (i, fresh) in [
        format!("{header}.eyJzdWIiOiJhIn0.c2lnMQ"),
        format!("{header}.eyJzdWIiOiJiIn0.c2lnMg"),
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(verdicts(&mut k, 100 + 2 * i as u16, &req(fresh)), DROPPED);
    }
    let other_key = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsyIn0.eyJzdWIiOiJhIn0.c2ln";
    assert_eq!(verdicts(&mut k, 110, &req(other_key)), PASSED);
    assert_eq!(counters(&k)["revoked_key_hits"], 4);
    // With no header revocation announced in the config, the kernel skips the header hash.
    let mut off = cfg;
    off.header_revocations = 0;
    k.set_config(&off).unwrap();
    assert_eq!(
        verdicts(&mut k, 120, &req(&format!("{header}.x.y"))),
        PASSED
    );
}

#[test]
fn a_flood_of_hits_is_counted_exactly_and_its_events_are_budgeted() {
    use agent_common::event::{EVENT_WINDOW_SHIFT, EVENTS_PER_WINDOW};
    let (mut k, cfg, _pins) = load("budget", Action::Drop);
    k.insert(token_hash(&cfg.key, b"flooded"), RevokedEntry::default())
        .unwrap();
    let mut events = k.take_events().unwrap();
    let frame = Segment::v4(PORT).frame(&req("flooded"));
    // One test run repeats on one CPU, so one budget applies.
    const FLOOD: u32 = 20_000;
    let started = std::time::Instant::now();
    let out = k.test_run(program_names::XDP, &frame, FLOOD).unwrap();
    let windows = (started.elapsed().as_nanos() as u64 >> EVENT_WINDOW_SHIFT) + 2;
    assert_eq!(out.verdict, XDP_DROP);
    let mut sent = 0u64;
    while events.next().is_some() {
        sent += 1;
    }
    let c = counters(&k);
    assert_eq!(c["dropped"], u64::from(FLOOD), "the counters stay exact");
    assert_eq!(c["revoked_hits"], u64::from(FLOOD));
    assert_eq!(
        sent + c["events_suppressed"],
        u64::from(FLOOD),
        "each hit is either sent or counted as suppressed"
    );
    assert!(
        sent >= u64::from(EVENTS_PER_WINDOW),
        "the first window's budget is sent: {sent}"
    );
    assert!(
        sent <= u64::from(EVENTS_PER_WINDOW) * windows,
        "{sent} events in at most {windows} windows"
    );
    // A single hit afterwards, in a new window, is reported again: wait until the boot clock
    // the kernel budgets by has entered a later window.
    let boot_ns = || {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid timespec for clock_gettime to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let window = boot_ns() >> EVENT_WINDOW_SHIFT;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while boot_ns() >> EVENT_WINDOW_SHIFT <= window {
        assert!(
            std::time::Instant::now() < deadline,
            "the boot clock stood still"
        );
        std::hint::spin_loop();
    }
    k.test_run(program_names::XDP, &frame, 1).unwrap();
    assert!(events.next().is_some(), "a hit after the flood is reported");
}

/// ES256 and ES384: after the original token is revoked (by its fingerprint), the second
/// valid ECDSA signature `(r, n - s)` and re-encoded signature segments are dropped too,
/// because the kernel keys a JWS on its signing input, exactly like `revocation_hash`.
#[test]
fn malleated_and_reencoded_signatures_of_a_revoked_jws_are_dropped() {
    let (mut k, cfg, _pins) = load("malleable", Action::Drop);
    let mut sport = 2000;
    for alg in [Alg::Es256, Alg::Es384] {
        let s = signed(alg, r#"{"sub":"alice","jti":"j-1","exp":4102444800}"#);
        assert!(
            s.both_verify,
            "{alg:?}: (r, n - s) is a second valid signature"
        );
        let variants: Vec<&String> = [&s.malleated, &s.padded]
            .into_iter()
            .chain(s.reencoded.as_ref())
            .collect();
        // The model: every variant has the original's key, which is its signing input.
        let input = &s.token[..s.token.rfind('.').unwrap()];
        for v in variants.iter().chain([&&s.token]) {
            assert_eq!(
                revocation_hash(&cfg.key, v.as_bytes()),
                revocation_hash(&cfg.key, s.token.as_bytes())
            );
            let r = req(v);
            let scan = scan_segment(&r, &cfg.needles);
            let t = scan.tokens[0];
            assert_eq!(&r[t.start..t.start + t.key_len.unwrap()], input.as_bytes());
        }
        assert_eq!(
            verdicts(&mut k, sport, &req(&s.token)),
            PASSED,
            "not yet revoked"
        );
        k.insert(
            revocation_hash(&cfg.key, s.token.as_bytes()),
            RevokedEntry::default(),
        )
        .unwrap();
        for v in variants.iter().chain([&&s.token]) {
            sport += 2;
            assert_eq!(verdicts(&mut k, sport, &req(v)), DROPPED, "{alg:?}: {v}");
        }
        sport += 2;
    }
}

/// A JWS whose signature runs past the segment: its signing input is complete, so it is
/// looked up (the old scan skipped any token that did not end in the segment).
#[test]
fn a_jws_cut_off_in_its_signature_is_still_judged() {
    let (mut k, cfg, _pins) = load("cutjws", Action::Drop);
    let s = signed(Alg::Es256, r#"{"sub":"bob"}"#);
    k.insert(
        revocation_hash(&cfg.key, s.token.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    let full = req(&s.token);
    let cut = &full[..full.len() - 30];
    assert_eq!(verdicts(&mut k, 3000, cut), DROPPED);
    let c = counters(&k);
    assert_eq!((c["skipped"], c["bearer_tokens"]), (0, 2));
}

/// Request shapes nginx 1.22 serves, each carrying the revoked token somewhere the old scan
/// did not look: all are dropped by both programs.
#[test]
fn request_shapes_nginx_accepts_are_judged() {
    let (mut k, cfg, _pins) = load("shapes", Action::Drop);
    let bad = "tw-revoked-shape";
    k.insert(
        token_hash(&cfg.key, bad.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    let ows = " \t".repeat(20);
    let cases: Vec<(&str, String)> = vec![
        (
            "40 bytes of whitespace around the scheme",
            format!("GET / HTTP/1.1\r\nAuthorization:{ows}Bearer{ows}{bad}\r\n\r\n"),
        ),
        (
            "empty lines before the request line",
            format!("\r\n\r\n\nGET / HTTP/1.1\r\nAuthorization: Bearer {bad}\r\n\r\n"),
        ),
        (
            "a pipelined second request",
            format!(
                "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nAuthorization: Bearer {bad}\r\n\r\n"
            ),
        ),
        (
            "a request pipelined after a body",
            format!(
                "POST /a HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world\r\nGET /b HTTP/1.1\r\nAuthorization: Bearer {bad}\r\n\r\n"
            ),
        ),
        (
            "an API key before the Authorization header",
            format!(
                "GET / HTTP/1.1\r\nX-Api-Key: a-valid-key\r\nAuthorization: Bearer {bad}\r\n\r\n"
            ),
        ),
        (
            "a 200-byte method",
            format!(
                "{} / HTTP/1.1\r\nAuthorization: Bearer {bad}\r\n\r\n",
                "A".repeat(200)
            ),
        ),
        (
            "HTTP/1.10 and trailing spaces",
            format!("GET / HTTP/1.10   \r\nAuthorization: Bearer {bad}\r\n\r\n"),
        ),
    ];
    for (i, (what, payload)) in cases.iter().enumerate() {
        assert_eq!(
            verdicts(&mut k, 4000 + 2 * i as u16, payload.as_bytes()),
            DROPPED,
            "{what}"
        );
    }
}

/// An upload with a valid token whose second segment starts like a request carrying a
/// revoked token is body: it passes. A SYN on the tuple starts over.
#[test]
fn a_body_that_looks_like_a_request_passes() {
    let (mut k, cfg, _pins) = load("bodies", Action::Drop);
    let bad = "tw-revoked-in-body";
    k.insert(
        token_hash(&cfg.key, bad.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    let second = format!("GET /x HTTP/1.1\r\nAuthorization: Bearer {bad}\r\n\r\n");
    let first = format!(
        "POST /upload HTTP/1.1\r\nAuthorization: Bearer a-valid-token\r\nContent-Length: {}\r\n\r\n{}",
        20 + second.len(),
        "0123456789abcdefghij"
    );
    for (prog, pass, drop) in [
        (program_names::XDP, XDP_PASS, XDP_DROP),
        (program_names::TC, TC_ACT_UNSPEC, TC_ACT_SHOT),
    ] {
        let mut seg = Segment::v4(PORT);
        seg.sport = if prog == program_names::XDP {
            5000
        } else {
            5001
        };
        seg.seq = 1;
        assert_eq!(
            k.test_run(prog, &seg.frame(first.as_bytes()), 1)
                .unwrap()
                .verdict,
            pass
        );
        seg.seq = 1 + first.len() as u32;
        let body = seg.frame(second.as_bytes());
        assert_eq!(
            k.test_run(prog, &body, 1).unwrap().verdict,
            pass,
            "{prog}: body"
        );
        // A new connection on the same tuple: the same bytes are a request again.
        let mut syn = seg.clone();
        syn.flags = packet::flags::SYN;
        k.test_run(prog, &syn.frame(b""), 1).unwrap();
        assert_eq!(
            k.test_run(prog, &body, 1).unwrap().verdict,
            drop,
            "{prog}: after a SYN"
        );
    }
    let c = counters(&k);
    assert_eq!((c["body_segments"], c["revoked_hits"]), (2, 2));
}

/// A chunked body, or headers cut short, lose the framing: the flow's later segments pass
/// unjudged and are counted (the kernel does not guess where the body ends).
#[test]
fn framing_the_kernel_cannot_follow_fails_open_and_is_counted() {
    let (mut k, cfg, _pins) = load("unsynced", Action::Drop);
    let bad = "tw-revoked-after-chunked";
    k.insert(
        token_hash(&cfg.key, bad.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    for (i, first) in [
        "POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        "GET /long HTTP/1.1\r\nHost: api\r\nX-Cut: the headers go on in the next segment",
    ]
    .iter()
    .enumerate()
    {
        let mut seg = Segment::v4(PORT);
        seg.sport = 6000 + i as u16;
        seg.seq = 1;
        assert_eq!(
            k.test_run(program_names::XDP, &seg.frame(first.as_bytes()), 1)
                .unwrap()
                .verdict,
            XDP_PASS
        );
        seg.seq = 1 + first.len() as u32;
        let later = req(bad);
        assert_eq!(
            k.test_run(program_names::XDP, &seg.frame(&later), 1)
                .unwrap()
                .verdict,
            XDP_PASS
        );
    }
    let c = counters(&k);
    assert_eq!((c["unsynced"], c["unjudged"], c["revoked_hits"]), (2, 2, 0));
}

/// TCP Fast Open: a request in a SYN's data is scanned like any first segment.
#[test]
fn syn_data_is_scanned() {
    let (mut k, cfg, _pins) = load("tfo", Action::Drop);
    let bad = "tw-revoked-in-syn";
    k.insert(
        token_hash(&cfg.key, bad.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    let mut syn = Segment::v4(PORT);
    syn.flags = packet::flags::SYN;
    for (prog, drop, pass) in [
        (program_names::XDP, XDP_DROP, XDP_PASS),
        (program_names::TC, TC_ACT_SHOT, TC_ACT_UNSPEC),
    ] {
        assert_eq!(
            k.test_run(prog, &syn.frame(&req(bad)), 1).unwrap().verdict,
            drop
        );
        assert_eq!(
            k.test_run(prog, &syn.frame(&req("fine")), 1)
                .unwrap()
                .verdict,
            pass
        );
    }
    assert_eq!(counters(&k)["syn_data"], 4);
}
