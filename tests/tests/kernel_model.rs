//! The kernel scan against its reference model, on the real programs through
//! `BPF_PROG_TEST_RUN`: for random requests, the XDP and TC programs must find exactly the token
//! `agent_common::scan` finds (same keyed hash), count the same outcome, and act on it only when
//! it is revoked. Also checks the reset rewrite on a real loopback connection. Needs root.

use std::{cell::RefCell, net::TcpListener, path::PathBuf};

use agent_common::{
    config::{Action, Config, HeaderNeedle, NEEDLE_BEARER, NEEDLE_RAW},
    hash::{HashKey, token_hash},
    program_names,
    revoked::RevokedEntry,
    scan::{ScanOutcome, jws_header_segment, scan_payload},
};
use proptest::{prelude::*, test_runner::TestRunner};
use tokenwall::kernel::Kernel;
use tokenwall_tests::packet::{self, Segment};

const PORT: u16 = 8080;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;

/// Removes the test's pin directory even when an assertion fails.
struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(tag: &str, action: Action) -> (Kernel, Config, Pins) {
    let dir = PathBuf::from(format!("/sys/fs/bpf/twt-{}-{tag}", std::process::id()));
    let pins = Pins(dir.clone());
    let mut kernel =
        Kernel::load(&dir, log::LevelFilter::Off).expect("load the kernel programs (root?)");
    let mut cfg = Config {
        key: HashKey::from_bytes(*b"0123456789abcdef"),
        action: action as u32,
        monitoring: 1,
        ..Config::default()
    };
    cfg.ports[3] = PORT;
    cfg.needles[0] = HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).unwrap();
    cfg.needles[1] = HeaderNeedle::new(b"X-Api-Key", NEEDLE_RAW).unwrap();
    cfg.header_revocations = 1;
    kernel.set_config(&cfg).unwrap();
    (kernel, cfg, pins)
}

fn counters(k: &Kernel) -> std::collections::HashMap<&'static str, u64> {
    k.counters()
        .unwrap()
        .into_iter()
        .map(|(c, v)| (c.name(), v))
        .collect()
}

#[derive(Clone, Debug)]
enum Auth {
    None,
    Bearer {
        upper: bool,
        ows: &'static str,
        scheme: &'static str,
    },
    Basic,
    ApiKey,
    ApiKeyThenBearer,
    Empty,
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        1 => Just(Auth::None),
        6 => (any::<bool>(), prop::sample::select(vec!["", " ", "\t", "  "]), prop::sample::select(vec!["Bearer", "bearer", "BEARER", "Bearer  "]))
            .prop_map(|(upper, ows, scheme)| Auth::Bearer { upper, ows, scheme }),
        1 => Just(Auth::Basic),
        2 => Just(Auth::ApiKey),
        1 => Just(Auth::ApiKeyThenBearer),
        1 => Just(Auth::Empty),
    ]
}

fn header_line() -> impl Strategy<Value = String> {
    ("[A-Z][a-z]{1,12}(-[A-Z][a-z]{1,8})?", "[ -~]{0,80}")
        .prop_map(|(n, v)| format!("{n}: {v}\r\n"))
}

fn http_request() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(vec![
            "GET",
            "POST",
            "PUT",
            "DELETE",
            "PATCH",
            "M-SEARCH",
            "OPTIONS",
            "get",
            "X.Custom~1",
        ]),
        prop::collection::vec(header_line(), 0..12),
        prop::option::weighted(0.2, 900usize..1300),
        auth(),
        "[A-Za-z0-9._~+/=-]{1,1800}",
        prop::collection::vec(header_line(), 0..3),
        prop::option::weighted(0.25, 0usize..3400),
        any::<bool>(),
    )
        .prop_map(
            |(method, before, filler, auth, token, after, cut, lf_only)| {
                let nl = if lf_only { "\n" } else { "\r\n" };
                let mut r =
                    format!("{method} /api/v1/items?id=7 HTTP/1.1{nl}Host: api.example{nl}");
                for h in &before {
                    r.push_str(&h.replace("\r\n", nl));
                }
                if let Some(n) = filler {
                    r.push_str(&format!("X-Filler: {}{nl}", "f".repeat(n)));
                }
                match auth {
                    Auth::None => {}
                    Auth::Bearer { upper, ows, scheme } => {
                        let name = if upper {
                            "AUTHORIZATION"
                        } else {
                            "authorization"
                        };
                        r.push_str(&format!("{name}:{ows}{scheme} {token}{nl}"));
                    }
                    Auth::Basic => r.push_str(&format!("Authorization: Basic {token}{nl}")),
                    Auth::ApiKey => r.push_str(&format!("x-api-key: {token}{nl}")),
                    Auth::ApiKeyThenBearer => r.push_str(&format!(
                        "X-Api-Key: k{token}{nl}Authorization: Bearer {token}{nl}"
                    )),
                    Auth::Empty => r.push_str(&format!("Authorization: Bearer {nl}")),
                }
                for h in &after {
                    r.push_str(&h.replace("\r\n", nl));
                }
                r.push_str(nl);
                let mut b = r.into_bytes();
                b.truncate(cut.unwrap_or(3400).min(3400));
                b
            },
        )
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => http_request(),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|mut v| { v.splice(0..0, b"GET ".iter().copied()); v }),
    ]
}

fn segment() -> impl Strategy<Value = Segment> {
    (
        any::<bool>(),
        prop::option::of(1u16..4000),
        prop::sample::select(vec![0usize, 4, 12]),
        prop::sample::select(vec![0usize, 12]),
    )
        .prop_map(|(v6, vlan, ipopt, tcpopt)| {
            let mut s = if v6 {
                Segment::v6(PORT)
            } else {
                Segment::v4(PORT)
            };
            s.vlan = vlan;
            if !v6 {
                s.ip_options = vec![1; ipopt];
            }
            s.tcp_options = [vec![1, 1, 8, 10], vec![0; 8]].concat()[..tcpopt].to_vec();
            s
        })
}

#[test]
fn xdp_and_tc_agree_with_the_reference_model() {
    let (kernel, cfg, _pins) = load("model", Action::Drop);
    let kernel = RefCell::new(kernel);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 400,
        ..ProptestConfig::default()
    });
    let key_cases = std::cell::Cell::new(0u32);
    // What each case revokes: 0 nothing, 1 the token, 2 its JWS header segment (a whole key).
    let result = runner.run(&(segment(), payload(), 0u8..3), |(seg, payload, revoke)| {
        let mut k = kernel.borrow_mut();
        let model = scan_payload(&payload, &cfg.needles);
        let frame = seg.frame(&payload);
        let token = match model {
            ScanOutcome::Token { start, len, kind } => Some((&payload[start..start + len], kind)),
            _ => None,
        };
        let mut inserted = None;
        if let Some((t, kind)) = token {
            if revoke == 1 {
                let h = token_hash(&cfg.key, t);
                k.insert(h, RevokedEntry::default()).unwrap();
                inserted = Some((h, false));
            } else if revoke == 2
                && kind == NEEDLE_BEARER
                && let Some(seg) = jws_header_segment(t)
            {
                let h = token_hash(&cfg.key, seg);
                k.insert_header(h, RevokedEntry::default()).unwrap();
                inserted = Some((h, true));
            }
        }
        let expect_hit = inserted.is_some();
        let expect_key_hit = matches!(inserted, Some((_, true)));
        key_cases.set(key_cases.get() + u32::from(expect_key_hit));
        for (prog, hit, miss) in [
            (program_names::XDP, XDP_DROP, XDP_PASS),
            (program_names::TC, TC_ACT_SHOT, TC_ACT_UNSPEC),
        ] {
            let before = counters(&k);
            let out = k.test_run(prog, &frame, 1).unwrap();
            let after = counters(&k);
            let delta = |name: &str| after[name] - before[name];
            prop_assert_eq!(
                out.verdict,
                if expect_hit { hit } else { miss },
                "{} verdict for {:?}",
                prog,
                model
            );
            let (http, bearer, api, skipped) = match model {
                ScanOutcome::NotRequest => (0, 0, 0, 0),
                ScanOutcome::NoToken => (1, 0, 0, 0),
                ScanOutcome::Skipped => (1, 0, 0, 1),
                ScanOutcome::Token { kind, .. } => (
                    1,
                    u64::from(kind == NEEDLE_BEARER),
                    u64::from(kind == NEEDLE_RAW),
                    0,
                ),
            };
            prop_assert_eq!(
                (
                    delta("http_requests"),
                    delta("bearer_tokens"),
                    delta("api_keys"),
                    delta("skipped")
                ),
                (http, bearer, api, skipped),
                "{} counters for {:?}",
                prog,
                model
            );
            prop_assert_eq!(
                (delta("revoked_hits"), delta("revoked_key_hits")),
                (u64::from(expect_hit), u64::from(expect_key_hit)),
                "{} hit counters for {:?}",
                prog,
                model
            );
        }
        match inserted {
            Some((h, false)) => k.remove(h).unwrap(),
            Some((h, true)) => k.remove_header(h).unwrap(),
            None => {}
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("kernel and model disagree: {e}");
    }
    assert!(
        key_cases.get() >= 10,
        "only {} whole-key cases were exercised",
        key_cases.get()
    );
}

#[test]
fn unwatched_ports_udp_fragments_and_syns_pass_untouched() {
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
        syn.frame(req),
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
    let req = |t: &str| {
        Segment::v4(PORT)
            .frame(format!("GET / HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\r\n").as_bytes())
    };
    k.insert(
        token_hash(&cfg.key, b"past"),
        RevokedEntry {
            expires_at: now - 5,
            ..Default::default()
        },
    )
    .unwrap();
    k.insert(
        token_hash(&cfg.key, b"future"),
        RevokedEntry {
            expires_at: now + 600,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        k.test_run(program_names::XDP, &req("past"), 1)
            .unwrap()
            .verdict,
        XDP_PASS
    );
    assert_eq!(
        k.test_run(program_names::XDP, &req("future"), 1)
            .unwrap()
            .verdict,
        XDP_DROP
    );
    assert_eq!(counters(&k)["expired_ignored"], 1);
}

/// On a live loopback connection, `reset` rewrites the request into a bare RST|ACK with the
/// same sequence numbers and valid checksums; without a connection it passes the segment.
#[test]
fn reset_rewrites_only_live_connections() {
    let (mut k, cfg, _pins) = load("reset", Action::Reset);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut c = cfg;
    c.ports[0] = port;
    k.set_config(&c).unwrap();
    let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _server = listener.accept().unwrap();
    let local = client.local_addr().unwrap();
    let mut seg = Segment::v4(port);
    seg.src = local.ip();
    seg.dst = "127.0.0.1".parse().unwrap();
    seg.sport = local.port();
    seg.ip_options = vec![1; 4];
    let req = b"POST /x HTTP/1.1\r\nAuthorization: Bearer gone\r\nContent-Length: 3\r\n\r\nabc";
    k.insert(token_hash(&cfg.key, b"gone"), RevokedEntry::default())
        .unwrap();
    for prog in [program_names::XDP, program_names::TC] {
        let out = k.test_run(prog, &seg.frame(req), 1).unwrap();
        let p = packet::parse(&out.packet);
        assert_eq!(p.flags, packet::flags::RST_ACK, "{prog}");
        assert_eq!(
            (p.seq, p.ack, p.payload_len),
            (seg.seq, seg.ack, 0),
            "{prog}"
        );
        assert!(p.checksums_ok, "{prog}: checksums of the rewritten segment");
    }
    assert_eq!(counters(&k)["reset"], 2);
    seg.sport = seg.sport.wrapping_add(1); // no such connection
    let frame = seg.frame(req);
    let out = k.test_run(program_names::XDP, &frame, 1).unwrap();
    assert_eq!((out.verdict, &out.packet), (XDP_PASS, &frame));
    assert_eq!(counters(&k)["reset_no_socket"], 1);
}

#[test]
fn a_revoked_signing_key_drops_tokens_never_seen_before() {
    let (mut k, cfg, _pins) = load("key", Action::Drop);
    let header = "eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCIsImtpZCI6ImsxIn0";
    let req = |t: &str| {
        Segment::v4(PORT)
            .frame(format!("GET / HTTP/1.1\r\nAuthorization: Bearer {t}\r\n\r\n").as_bytes())
    };
    k.insert_header(
        token_hash(&cfg.key, header.as_bytes()),
        RevokedEntry::default(),
    )
    .unwrap();
    for fresh in [
        format!("{header}.eyJzdWIiOiJhIn0.c2lnMQ"),
        format!("{header}.eyJzdWIiOiJiIn0.c2lnMg"),
    ] {
        assert_eq!(
            k.test_run(program_names::XDP, &req(&fresh), 1)
                .unwrap()
                .verdict,
            XDP_DROP
        );
    }
    let other_key = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsyIn0.eyJzdWIiOiJhIn0.c2ln";
    assert_eq!(
        k.test_run(program_names::XDP, &req(other_key), 1)
            .unwrap()
            .verdict,
        XDP_PASS
    );
    assert_eq!(counters(&k)["revoked_key_hits"], 2);
    // With no header revocation announced in the config, the kernel skips the header hash.
    let mut off = cfg;
    off.header_revocations = 0;
    k.set_config(&off).unwrap();
    assert_eq!(
        k.test_run(program_names::XDP, &req(&format!("{header}.x.y")), 1)
            .unwrap()
            .verdict,
        XDP_PASS
    );
}

#[test]
fn a_flood_of_hits_is_counted_exactly_and_its_events_are_budgeted() {
    use agent_common::event::{EVENT_WINDOW_SHIFT, EVENTS_PER_WINDOW};
    let (mut k, cfg, _pins) = load("budget", Action::Drop);
    k.insert(token_hash(&cfg.key, b"flooded"), RevokedEntry::default())
        .unwrap();
    let mut events = k.take_events().unwrap();
    let frame = Segment::v4(PORT).frame(b"GET / HTTP/1.1\r\nAuthorization: Bearer flooded\r\n\r\n");
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
    // A single hit afterwards, in a new window, is reported again.
    std::thread::sleep(std::time::Duration::from_millis(3));
    k.test_run(program_names::XDP, &frame, 1).unwrap();
    assert!(events.next().is_some(), "a hit after the flood is reported");
}
