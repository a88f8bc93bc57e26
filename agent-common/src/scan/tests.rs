use proptest::prelude::*;

use super::{
    flow::{FlowState, Judgement, after_pass, judge},
    http::{Line, request_line},
    *,
};
use crate::{
    config::{NEEDLE_BEARER, NEEDLE_RAW},
    hash::revocation_key_len,
};

fn needles() -> [HeaderNeedle; 2] {
    [
        HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).unwrap(),
        HeaderNeedle::new(b"X-Api-Key", NEEDLE_RAW).unwrap(),
    ]
}

/// The keyed bytes of every token in `req`.
fn keys_of(req: &[u8]) -> Vec<&[u8]> {
    scan_segment(req, &needles())
        .tokens
        .iter()
        .filter_map(|t| t.key_len.map(|n| &req[t.start..t.start + n]))
        .collect()
}

fn token_of(req: &[u8]) -> Option<&[u8]> {
    keys_of(req).first().copied()
}

#[test]
fn header_segment_is_the_part_before_the_first_dot() {
    assert_eq!(
        jws_header_segment(b"eyJhbGciOi.eyJzdWIi.c2ln"),
        Some(&b"eyJhbGciOi"[..])
    );
    assert_eq!(jws_header_segment(b"opaque-token"), None);
    assert_eq!(jws_header_segment(b".x.y"), None);
    let long = [b'a'; crate::MAX_HEADER_SEGMENT];
    let mut t = long.to_vec();
    t.push(b'.');
    assert_eq!(jws_header_segment(&t), Some(&long[..]));
    t.insert(0, b'a');
    assert_eq!(jws_header_segment(&t), None, "past the limit");
}

#[test]
fn finds_bearer_token() {
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc.def-ghi\r\n\r\n";
    assert_eq!(token_of(req), Some(&b"abc.def-ghi"[..]));
    assert_eq!(scan_segment(req, &needles()).end, StreamEnd::Boundary);
}

#[test]
fn header_and_scheme_are_case_insensitive_with_optional_whitespace() {
    let req = b"POST / HTTP/1.1\r\nauthorization:\t  bEARER   tok123\r\n\r\n";
    assert_eq!(token_of(req), Some(&b"tok123"[..]));
    let req = b"GET / HTTP/1.0\nAUTHORIZATION:Bearer t\n\n";
    assert_eq!(token_of(req), Some(&b"t"[..]));
}

#[test]
fn any_amount_of_whitespace_around_the_scheme_is_skipped() {
    for n in [17, 40, 600] {
        let ows = " \t".repeat(n / 2) + " ";
        let req = format!("GET / HTTP/1.1\r\nAuthorization:{ows}Bearer{ows}tok-{n}\r\n\r\n");
        assert_eq!(
            token_of(req.as_bytes()),
            Some(format!("tok-{n}").as_bytes()),
            "{n}"
        );
        let req = format!("GET / HTTP/1.1\r\nX-Api-Key:{ows}key-{n}\r\n\r\n");
        assert_eq!(
            token_of(req.as_bytes()),
            Some(format!("key-{n}").as_bytes())
        );
    }
}

#[test]
fn token_ends_at_space_cr_or_lf() {
    let req = b"GET / HTTP/1.1\r\nAuthorization: Bearer aaa bbb\r\n\r\n";
    assert_eq!(token_of(req), Some(&b"aaa"[..]));
}

#[test]
fn every_credential_of_every_request_is_found_in_order() {
    let req = b"GET / HTTP/1.1\r\nX-Api-Key: k-1\r\nAuthorization: Basic dXNlcjpwdw==\r\nauthorization: Bearer b-1\r\n\r\n";
    let s = scan_segment(req, &needles());
    let kinds: Vec<u32> = s.tokens.iter().map(|t| t.kind).collect();
    assert_eq!(kinds, vec![NEEDLE_RAW, NEEDLE_BEARER]);
    assert_eq!(keys_of(req), vec![&b"k-1"[..], b"b-1"]);
}

#[test]
fn empty_lines_before_the_request_line_are_skipped() {
    let req = b"\r\n\n\r\r\nGET / HTTP/1.1\r\nAuthorization: Bearer after-crlf\r\n\r\n";
    assert_eq!(token_of(req), Some(&b"after-crlf"[..]));
    assert_eq!(
        scan_segment(b"\r\n\r\n", &needles()).end,
        StreamEnd::NotRequest
    );
}

#[test]
fn request_lines_follow_nginx() {
    let ok = |l: &[u8]| matches!(request_line(l, 0), Line::Complete(_));
    for line in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"GET /a HTTP/1.10\r\n",
        b"GET /a HTTP/1.000000001\n",
        b"GET /a HTTP/1.1   \r\n",
        b"GET   /a    HTTP/1.1\r\n",
        b"M_-X /a HTTP/1.1\r\n",
        b"GET http://x/a HTTP/1.1\r\n",
        b"HEAD /a HTTP/1.0\n",
    ] {
        assert!(ok(line), "{:?}", String::from_utf8_lossy(line));
    }
    let long_method = [b"A".repeat(300), b" /a HTTP/1.1\r\n".to_vec()].concat();
    assert!(ok(&long_method), "nginx accepts methods of any length");
    let many_spaces = [
        b"GET /a HTTP/1.1".to_vec(),
        b" ".repeat(200),
        b"\r\n".to_vec(),
    ]
    .concat();
    assert!(ok(&many_spaces), "trailing spaces past the tail budget");
    for line in [
        &b"GET /a\r\n"[..],
        b"GET HTTP/1.1\r\n",
        b"GET /a HTTP/1.1\r\r\n",
        b"GET /a HTTP/1.\r\n",
        b"GET /a HTTP/.1\r\n",
        b"GET /a http/1.1\r\n",
        b"GET\t/a HTTP/1.1\r\n",
        b"{\"a\": 1} HTTP/1.1\r\n",
        b"\x16\x03\x01 HTTP/1.1\n",
    ] {
        assert_eq!(
            request_line(line, 0),
            Line::Invalid,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
    assert_eq!(request_line(b"GET /a-long-url", 0), Line::Incomplete);
    assert_eq!(request_line(b"GET", 0), Line::Incomplete);
}

#[test]
fn headers_in_the_body_and_the_request_line_are_ignored() {
    let req =
        b"GET /Authorization: Bearer x HTTP/1.1\r\nHost: a\r\n\r\nAuthorization: Bearer body\r\n";
    let s = scan_segment(req, &needles());
    assert!(s.tokens.is_empty());
    assert_eq!(s.end, StreamEnd::Unsynced, "garbage after a request");
}

#[test]
fn a_name_with_a_prefix_or_suffix_does_not_match() {
    let req = b"GET / HTTP/1.1\r\nX-Authorization: Bearer a\r\nAuthorizationX: Bearer b\r\n\r\n";
    assert!(scan_segment(req, &needles()).tokens.is_empty());
}

#[test]
fn a_token_running_past_the_packet_is_skipped_unless_its_signing_input_is_in() {
    let req = b"GET / HTTP/1.1\r\nAuthorization: Bearer abcdef";
    let s = scan_segment(req, &needles());
    assert_eq!(s.tokens[0].key_len, None);
    assert_eq!(s.end, StreamEnd::Unsynced);
    let mut big = b"GET / HTTP/1.1\r\nAuthorization: Bearer ".to_vec();
    big.extend(std::iter::repeat_n(b'a', SCAN_BUF_LEN));
    big.extend_from_slice(b"\r\n\r\n");
    assert_eq!(scan_segment(&big, &needles()).tokens[0].key_len, None);
    let jws = b"GET / HTTP/1.1\r\nAuthorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln";
    assert_eq!(
        token_of(jws),
        Some(&b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0"[..])
    );
}

#[test]
fn keys_follow_revocation_key_len_for_whole_tokens() {
    for t in [
        &b"eyJh.eyJz.sig"[..],
        b"ewogIm.e30.sig.more",
        b"eyJh..sig",
        b"eyJh.one-dot",
        b"sk.live.secret",
        b"e.x.y",
        b"ey",
        b"a",
    ] {
        let mut rest = t.to_vec();
        rest.extend_from_slice(b"\r\n");
        assert_eq!(token::keys(&rest).0, Some(revocation_key_len(t)), "{t:?}");
    }
}

#[test]
fn non_requests_are_not_scanned() {
    for p in [
        &b"HTTP/1.1 200 OK\r\n"[..],
        b"\x16\x03\x01\x02\x00",
        b"GET(/ HTTP/1.1\r\n",
        b" GET / HTTP/1.1\r\n",
        b"",
        b"{\"k\": \"GET / HTTP/1.1\"}\r\n",
    ] {
        assert_eq!(
            scan_segment(p, &needles()).end,
            StreamEnd::NotRequest,
            "{p:?}"
        );
    }
}

#[test]
fn pipelined_requests_are_all_scanned_and_bodies_skipped() {
    let req = b"POST /a HTTP/1.1\r\nContent-Length: 40\r\n\r\nGET /b HTTP/1.1\r\nAuthorization: Bearer x\r\nGET /c HTTP/1.1\r\nAuthorization: Bearer second\r\n\r\n";
    let s = scan_segment(req, &needles());
    assert_eq!(
        s.requests, 2,
        "the body is skipped, the next request scanned"
    );
    assert_eq!(keys_of(req), vec![&b"second"[..]]);
    assert_eq!(s.end, StreamEnd::Boundary);
    let short =
        b"POST /a HTTP/1.1\r\ncontent-length:  0005 \r\n\r\nhello\r\nGET /b HTTP/1.1\r\n\r\n";
    let s = scan_segment(short, &needles());
    assert_eq!((s.requests, s.end), (2, StreamEnd::Boundary));
}

#[test]
fn a_body_running_past_the_segment_is_remembered() {
    let req =
        b"POST /up HTTP/1.1\r\nAuthorization: Bearer ok\r\nContent-Length: 100\r\n\r\n0123456789";
    let s = scan_segment(req, &needles());
    let header_end = req.len() - 10;
    assert_eq!(s.end, StreamEnd::Body(header_end as u64 + 100));
}

#[test]
fn framing_the_kernel_cannot_follow_is_unsynced() {
    for req in [
        &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\rX: b\r\n\r\n",
        b"GET /a-url-that-does-not-end",
    ] {
        assert_eq!(
            scan_segment(req, &needles()).end,
            StreamEnd::Unsynced,
            "{:?}",
            String::from_utf8_lossy(req)
        );
    }
    let mut lines = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..MAX_LINES {
        lines.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    lines.extend_from_slice(b"\r\n");
    assert_eq!(scan_segment(&lines, &needles()).end, StreamEnd::Unsynced);
}

#[test]
fn a_body_segment_that_looks_like_a_request_passes_unjudged() {
    let n = needles();
    let first = b"POST /up HTTP/1.1\r\nAuthorization: Bearer good\r\nContent-Length: 60\r\n\r\n";
    let second = b"GET /x HTTP/1.1\r\nAuthorization: Bearer revoked-in-body\r\n\r\n";
    let j = judge(FlowState::Fresh, 1000, first, &n);
    let state = after_pass(FlowState::Fresh, 1000, &j);
    assert_eq!(state, FlowState::Body(1000 + first.len() as u32 + 60));
    let j2 = judge(state, 1000 + first.len() as u32, second, &n);
    assert_eq!(j2, Judgement::Body);
    // A segment that holds the end of the body and a pipelined request: scanned from there.
    let tail = [
        &second[..second.len() - 4],
        b"\r\n\r\nGET /n HTTP/1.1\r\nX-Api-Key: k\r\n\r\n",
    ]
    .concat();
    let j3 = judge(state, 1000 + first.len() as u32 + 4, &tail, &n);
    let Judgement::Scanned { skip, scan } = &j3 else {
        panic!("{j3:?}")
    };
    assert_eq!(*skip, 56);
    assert_eq!(scan.tokens.len(), 1);
    assert_eq!(after_pass(state, 0, &j3), FlowState::Fresh);
    assert_eq!(
        judge(FlowState::Unsynced, 5, second, &n),
        Judgement::Unjudged
    );
}

fn header_line() -> impl Strategy<Value = Vec<u8>> {
    ("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,60}")
        .prop_map(|(n, v)| format!("{n}: {v}\r\n").into_bytes())
}

fn plain_header(l: &[u8]) -> bool {
    let l = l.to_ascii_lowercase();
    ![
        &b"authorization:"[..],
        b"x-api-key:",
        b"content-length:",
        b"transfer-encoding:",
    ]
    .iter()
    .any(|p| l.starts_with(p))
}

/// A request with `token` in its Authorization header and `body` after it.
fn request(before: &[Vec<u8>], token: &str, body: &[u8]) -> Vec<u8> {
    let mut r = b"POST /p HTTP/1.1\r\n".to_vec();
    for l in before.iter().filter(|l| plain_header(l)) {
        r.extend_from_slice(l);
    }
    r.extend_from_slice(format!("Authorization: Bearer {token}\r\n").as_bytes());
    r.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    r.extend_from_slice(body);
    r
}

proptest! {
    #[test]
    fn finds_the_token_wherever_the_header_sits(
        before in proptest::collection::vec(header_line(), 0..20),
        after in proptest::collection::vec(header_line(), 0..5),
        token in "[A-Za-z0-9_~+/=-]{1,1600}",
        upper in any::<bool>(),
        ows in "[ \t]{0,40}",
    ) {
        let name = if upper { "AUTHORIZATION" } else { "authorization" };
        let mut req = b"GET /p HTTP/1.1\r\n".to_vec();
        let before: Vec<_> = before.into_iter().filter(|l| plain_header(l)).collect();
        for l in &before { req.extend_from_slice(l); }
        req.extend_from_slice(format!("{name}:{ows}Bearer {ows}{token}\r\n").as_bytes());
        for l in after.iter().filter(|l| plain_header(l)) { req.extend_from_slice(l); }
        req.extend_from_slice(b"\r\n");
        if req.len() <= SCAN_BUF_LEN && before.len() + 2 < MAX_LINES as usize {
            prop_assert_eq!(token_of(&req), Some(token.as_bytes()));
        }
    }

    #[test]
    fn never_reports_a_token_outside_the_payload(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
        for t in scan_segment(&payload, &needles()).tokens {
            if let Some(len) = t.key_len {
                prop_assert!(len > 0 && t.start + len <= payload.len());
                prop_assert!(!payload[t.start..t.start + len].iter().any(|&b| http::ends_token(b)));
            }
        }
    }

    /// A stream of uploads whose bodies hold request-shaped text with their own tokens, cut
    /// into segments anywhere outside the headers: every header token is found, and nothing
    /// in a body ever is.
    #[test]
    fn bodies_are_never_judged_and_headers_always_are(
        reqs in proptest::collection::vec((proptest::collection::vec(header_line(), 0..4), "[a-z0-9]{4,12}", 0usize..3, "[ -~]{0,300}"), 1..5),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let n = needles();
        let mut stream = Vec::new();
        let mut header_ranges = Vec::new();
        let mut header_tokens = Vec::new();
        for (i, (before, token, shape, text)) in reqs.iter().enumerate() {
            let inner = format!("GET /x HTTP/1.1\r\nAuthorization: Bearer body-{i}\r\n\r\n");
            let body = match shape { 0 => inner.clone().into_bytes(), 1 => format!("{text}{inner}{text}").into_bytes(), _ => text.clone().into_bytes() };
            let token = format!("hdr-{i}-{token}");
            let r = request(before, &token, &body);
            let hdr_len = r.len() - body.len();
            header_ranges.push(stream.len()..stream.len() + hdr_len);
            header_tokens.push(token);
            stream.extend_from_slice(&r);
        }
        // Cut points outside every request's headers.
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).filter(|&c| header_ranges.iter().all(|r| c <= r.start || c >= r.end)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();
        let mut state = FlowState::Fresh;
        let mut found = Vec::new();
        for w in points.windows(2) {
            let seq = 7u32.wrapping_add(w[0] as u32);
            let seg = &stream[w[0]..w[1]];
            if seg.len() > SCAN_BUF_LEN { return Ok(()); }
            let j = judge(state, seq, seg, &n);
            if let Judgement::Scanned { skip, scan } = &j {
                for t in &scan.tokens {
                    found.push(String::from_utf8_lossy(&seg[skip + t.start..skip + t.start + t.key_len.unwrap()]).into_owned());
                }
            }
            state = after_pass(state, seq, &j);
        }
        prop_assert!(found.iter().all(|t| t.starts_with("hdr-")), "a body token was judged: {:?}", found);
        prop_assert_eq!(found, header_tokens);
        let end = 7u32.wrapping_add(stream.len() as u32);
        prop_assert!(state == FlowState::Fresh || state == FlowState::Body(end), "{:?}", state);
    }
}
