//! The kernel scan against its reference model, on the real programs through
//! `BPF_PROG_TEST_RUN`. For random requests (single segments), and for random request streams
//! cut into segments on one flow (bodies that look like requests, pipelining, chunked bodies,
//! headers cut short), the XDP and TC programs must find exactly the tokens
//! `agent_common::scan` finds (same keyed hashes), count the same outcome, act only on a
//! revoked one, and keep the same flow state. Needs root.

use std::cell::{Cell, RefCell};

use agent_common::{
    config::{Action, Config, NEEDLE_BEARER},
    hash::token_hash,
    program_names,
    revoked::RevokedEntry,
    scan::{
        StreamEnd,
        flow::{FlowState, Judgement, judge},
        scan_segment,
    },
};
use proptest::{
    prelude::*,
    test_runner::{RngAlgorithm, TestRng, TestRunner},
};
use tokenwall::kernel::Kernel;
use tokenwall_tests::{
    model::{COMPARED, Revoked, expect, next_state},
    packet::{Segment, flags},
    progs::{PORT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS, counters, load},
};

#[derive(Clone, Debug)]
enum Auth {
    None,
    Bearer {
        upper: bool,
        ows: String,
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
        6 => (any::<bool>(), "[ \t]{0,3}|[ \t]{17,40}", prop::sample::select(vec!["Bearer", "bearer", "BEARER", "Bearer  "]))
            .prop_map(|(upper, ows, scheme)| Auth::Bearer { upper, ows, scheme }),
        1 => Just(Auth::Basic),
        2 => Just(Auth::ApiKey),
        2 => Just(Auth::ApiKeyThenBearer),
        1 => Just(Auth::Empty),
    ]
}

fn header_line() -> impl Strategy<Value = String> {
    ("[A-Z][a-z]{1,12}(-[A-Z][a-z]{1,8})?", "[ -~]{0,80}")
        .prop_map(|(n, v)| format!("{n}: {v}\r\n"))
}

/// Tokens: opaque, JWS-shaped (`ey…` with dots, so keyed on the signing input), dotted;
/// `big`: up to 1,800 bytes, else up to about 200.
fn token(big: bool) -> impl Strategy<Value = String> {
    let (opaque, payload, sig) = if big { (1800, 700, 400) } else { (200, 90, 80) };
    prop_oneof![
        3 => proptest::string::string_regex(&format!("[A-Za-z0-9._~+/=-]{{1,{opaque}}}")).unwrap(),
        3 => ("[A-Za-z0-9_-]{2,60}", proptest::string::string_regex(&format!("[A-Za-z0-9_-]{{0,{payload}}}")).unwrap(), proptest::string::string_regex(&format!("[A-Za-z0-9_=-]{{0,{sig}}}")).unwrap(), prop::sample::select(vec!["ey", "ew"]))
            .prop_map(|(h, p, s, e)| format!("{e}{h}.{p}.{s}")),
        1 => "e[yw][A-Za-z0-9.]{0,40}",
    ]
}

/// One request: method, headers, credentials, an optional body (`Content-Length` or
/// chunked); `big`: long tokens and filler headers too.
fn http_request(big: bool) -> impl Strategy<Value = Vec<u8>> {
    (
        (
            prop::sample::select(vec!["GET", "POST", "PUT", "M-SEARCH", "OPTIONS", "M_X"]),
            prop::sample::select(vec![
                " HTTP/1.1",
                " HTTP/1.1",
                " HTTP/1.1",
                " HTTP/1.0",
                " HTTP/1.10",
                " HTTP/1.1   ",
                "",
                " http/1.1",
            ]),
            prop::collection::vec(header_line(), 0..if big { 10 } else { 4 }),
            prop::option::weighted(if big { 0.2 } else { 0.02 }, 900usize..1300),
            any::<bool>(),
            "\r?\n?\r?\n?",
        ),
        (
            auth(),
            token(big),
            prop::collection::vec(header_line(), 0..3),
            prop::option::weighted(
                0.4,
                (
                    prop_oneof![0usize..200, 200usize..3000],
                    prop::bool::weighted(0.3),
                ),
            ),
            "[ -~]{0,40}",
        ),
    )
        .prop_map(
            |(
                (method, version, before, filler, lf_only, lead),
                (auth, token, after, body, text),
            )| {
                let nl = if lf_only { "\n" } else { "\r\n" };
                let mut r =
                    format!("{lead}{method} /api/v1/items?id=7{version}{nl}Host: api.example{nl}");
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
                        r.push_str(&format!("{name}:{ows}{scheme} {ows}{token}{nl}"));
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
                let body = match body {
                    Some((n, false)) => {
                        r.push_str(&format!("Content-Length: {n}{nl}"));
                        let inner = format!(
                            "GET /in-body HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\r\n{text}"
                        );
                        inner.into_bytes().into_iter().cycle().take(n).collect()
                    }
                    Some((n, true)) => {
                        r.push_str(&format!("Transfer-Encoding: chunked{nl}"));
                        format!("{n:x}\r\n{}\r\n0\r\n\r\n", "b".repeat(n)).into_bytes()
                    }
                    None => Vec::new(),
                };
                r.push_str(nl);
                let mut b = r.into_bytes();
                b.extend_from_slice(&body);
                b
            },
        )
}

/// A segment's payload: one or more requests (pipelined), cut anywhere, or junk.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => (prop::collection::vec(http_request(true), 1..3), prop::option::weighted(0.25, 0usize..3400))
            .prop_map(|(reqs, cut)| {
                let mut b = reqs.concat();
                b.truncate(cut.unwrap_or(3400).min(3400));
                b
            }),
        1 => prop::collection::vec(any::<u8>(), 0..300),
        1 => prop::collection::vec(any::<u8>(), 0..300).prop_map(|mut v| { v.splice(0..0, b"GET / HTTP/1.1\r\n".iter().copied()); v }),
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

/// Runs `frame` through both programs and checks each against `want`; `hit_verdicts` are the
/// XDP and TC verdicts of a hit.
fn run_both(
    k: &mut Kernel,
    frames: [&[u8]; 2],
    want: &tokenwall_tests::model::Expect,
    what: &str,
) -> Result<(), TestCaseError> {
    for (prog, frame, hit, miss) in [
        (program_names::XDP, frames[0], XDP_DROP, XDP_PASS),
        (program_names::TC, frames[1], TC_ACT_SHOT, TC_ACT_UNSPEC),
    ] {
        let before = counters(k);
        let out = k.test_run(prog, frame, 1).unwrap();
        let after = counters(k);
        prop_assert_eq!(
            out.verdict,
            if want.hit.is_some() { hit } else { miss },
            "{} verdict for {}",
            prog,
            what
        );
        for c in COMPARED {
            prop_assert_eq!(
                after[c] - before[c],
                want.counts[c],
                "{} counter {} for {}",
                prog,
                c,
                what
            );
        }
    }
    Ok(())
}

/// What a case revokes: nothing, the key of the n-th token, or its JWS header segment.
fn revoke_one(cfg: &Config, payload: &[u8], j: &Judgement, pick: (u8, usize)) -> Revoked {
    let mut r = Revoked::default();
    let Judgement::Scanned { skip, scan } = j else {
        return r;
    };
    let buf = &payload[*skip..];
    if scan.tokens.is_empty() {
        return r;
    }
    let t = &scan.tokens[pick.1 % scan.tokens.len()];
    match (pick.0, t.key_len, t.header_len) {
        (1, Some(n), _) => {
            r.tokens
                .insert(token_hash(&cfg.key, &buf[t.start..t.start + n]));
        }
        (2, _, Some(n)) if t.kind == NEEDLE_BEARER => {
            r.headers
                .insert(token_hash(&cfg.key, &buf[t.start..t.start + n]));
        }
        _ => {}
    }
    r
}

fn apply(k: &mut Kernel, r: &Revoked, insert: bool) {
    for h in &r.tokens {
        if insert {
            k.insert(*h, RevokedEntry::default()).unwrap();
        } else {
            k.remove(*h).unwrap();
        }
    }
    for h in &r.headers {
        if insert {
            k.insert_header(*h, RevokedEntry::default()).unwrap();
        } else {
            k.remove_header(*h).unwrap();
        }
    }
}

/// A runner with a fixed seed: the same cases on every run, so the coverage checks hold.
fn runner(cases: u32) -> TestRunner {
    TestRunner::new_with_rng(
        ProptestConfig {
            cases,
            failure_persistence: None,
            ..ProptestConfig::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    )
}

#[test]
fn xdp_and_tc_agree_with_the_reference_model() {
    let (kernel, cfg, _pins) = load("model", Action::Drop);
    let kernel = RefCell::new(kernel);
    let mut runner = runner(400);
    let (key_cases, pipelined, unsynced) = (Cell::new(0u32), Cell::new(0u32), Cell::new(0u32));
    let sport = Cell::new(20_000u16);
    let result = runner.run(
        &(segment(), payload(), 0u8..3, any::<usize>()),
        |(mut seg, payload, revoke, which)| {
            let mut k = kernel.borrow_mut();
            // A fresh flow per case: nothing carries over between cases.
            sport.set(sport.get().wrapping_add(1).max(20_000));
            seg.sport = sport.get();
            let j = judge(FlowState::Fresh, seg.seq, &payload, &cfg.needles);
            let r = revoke_one(&cfg, &payload, &j, (revoke, which));
            apply(&mut k, &r, true);
            let want = expect(&cfg, &r, &payload, &j, false);
            if let Judgement::Scanned { scan, .. } = &j {
                pipelined.set(pipelined.get() + u32::from(scan.requests > 1));
                unsynced.set(unsynced.get() + u32::from(scan.end == StreamEnd::Unsynced));
            }
            key_cases.set(key_cases.get() + u32::from(!r.headers.is_empty() && want.hit.is_some()));
            let frame = seg.frame(&payload);
            let mut tc_seg = seg.clone();
            tc_seg.sport = seg.sport.wrapping_add(30_000);
            let tc_frame = tc_seg.frame(&payload);
            let what = format!("{:?}", String::from_utf8_lossy(&payload));
            let res = run_both(&mut k, [&frame, &tc_frame], &want, &what);
            apply(&mut k, &r, false);
            res
        },
    );
    if let Err(e) = result {
        panic!("kernel and model disagree: {e}");
    }
    assert!(
        key_cases.get() >= 10,
        "only {} whole-key cases",
        key_cases.get()
    );
    assert!(
        pipelined.get() >= 20,
        "only {} pipelined cases",
        pipelined.get()
    );
    assert!(
        unsynced.get() >= 20,
        "only {} unsynced cases",
        unsynced.get()
    );
}

/// A stream of requests (with bodies that hold request-shaped text carrying revoked tokens,
/// chunked bodies, pipelining) cut into segments at random points and sent in order on one
/// flow: segment by segment, verdicts and counters follow the model, whose flow state follows
/// what the kernel keeps (a dropped segment changes nothing).
#[test]
fn flows_agree_with_the_reference_model_segment_by_segment() {
    let (kernel, cfg, _pins) = load("flows", Action::Drop);
    let kernel = RefCell::new(kernel);
    let mut runner = runner(250);
    let sport = Cell::new(40_000u16);
    let (bodies, drops) = (Cell::new(0u32), Cell::new(0u32));
    let stream = prop::collection::vec(http_request(false), 1..6);
    let cuts = prop::collection::vec(any::<prop::sample::Index>(), 0..16);
    let result = runner.run(
        &(
            stream,
            cuts,
            any::<bool>(),
            prop::option::of(any::<prop::sample::Index>()),
        ),
        |(reqs, cuts, v6, revoke)| {
            let mut k = kernel.borrow_mut();
            let stream = reqs.concat();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            // Cut at every request's end of headers too (a client that sends the body later).
            let mut at = 0;
            for r in &reqs {
                if let Some(i) = r.windows(4).position(|w| w == b"\r\n\r\n") {
                    // And inside its body, if it has one.
                    points.extend([at + i + 4, at + (i + 4 + r.len()) / 2]);
                }
                at += r.len();
            }
            points.extend([0, stream.len()]);
            // Segments small enough for BPF_PROG_TEST_RUN (a page).
            points.extend((0..stream.len()).step_by(3000));
            points.sort_unstable();
            points.dedup();
            // Revoke one token of the whole stream as the model reads it unsegmented: every
            // copy of it (in headers or in bodies) is then revoked.
            let whole = scan_segment(&stream, &cfg.needles);
            let mut r = Revoked::default();
            let keyed: Vec<_> = whole
                .tokens
                .iter()
                .filter_map(|t| t.key_len.map(|n| &stream[t.start..t.start + n]))
                .collect();
            if let Some(pick) = revoke
                && !keyed.is_empty()
            {
                r.tokens
                    .insert(token_hash(&cfg.key, keyed[pick.index(keyed.len())]));
            }
            apply(&mut k, &r, true);
            sport.set(sport.get().wrapping_add(1).max(40_000));
            let mut seg = if v6 {
                Segment::v6(PORT)
            } else {
                Segment::v4(PORT)
            };
            seg.sport = sport.get();
            let mut tc_seg = seg.clone();
            tc_seg.sport = seg.sport.wrapping_add(20_000);
            // Open both flows: a SYN clears whatever an earlier run left on the tuple.
            let isn = 5000u32;
            for s in [&mut seg, &mut tc_seg] {
                s.flags = flags::SYN;
                s.seq = isn;
            }
            k.test_run(program_names::XDP, &seg.frame(b""), 1).unwrap();
            k.test_run(program_names::TC, &tc_seg.frame(b""), 1)
                .unwrap();
            let mut state = FlowState::Fresh;
            let mut res = Ok(());
            for w in points.windows(2) {
                let seq = isn.wrapping_add(1).wrapping_add(w[0] as u32);
                let payload = &stream[w[0]..w[1]];
                for s in [&mut seg, &mut tc_seg] {
                    s.flags = flags::PSH_ACK;
                    s.seq = seq;
                }
                let j = judge(state, seq, payload, &cfg.needles);
                let want = expect(&cfg, &r, payload, &j, false);
                bodies.set(bodies.get() + u32::from(j == Judgement::Body));
                drops.set(drops.get() + u32::from(want.hit.is_some()));
                let what = format!(
                    "segment {w:?} of {:?} (state {state:?})",
                    String::from_utf8_lossy(&stream)
                );
                res = run_both(
                    &mut k,
                    [&seg.frame(payload), &tc_seg.frame(payload)],
                    &want,
                    &what,
                );
                if res.is_err() {
                    break;
                }
                state = next_state(state, seq, &j, want.hit.is_none());
            }
            apply(&mut k, &r, false);
            res
        },
    );
    if let Err(e) = result {
        panic!("kernel and model disagree: {e}");
    }
    assert!(bodies.get() >= 50, "only {} body segments", bodies.get());
    assert!(drops.get() >= 20, "only {} drops", drops.get());
}
