//! Reference model of the kernel's HTTP header scan.
//!
//! This is the specification the eBPF program implements with word loads and bounded loops;
//! the agent's tests compare the two on random requests (through `BPF_PROG_TEST_RUN`), and the
//! property tests below pin the model itself down. It works on the TCP payload of one segment.

use crate::{
    MAX_HEADER_SEGMENT, SCAN_BUF_LEN,
    config::{
        BEARER_FOLD, BEARER_KEEP, BEARER_WORD, HeaderNeedle, MAX_LINES, MAX_OWS, NEEDLE_BEARER,
        tchar_bit,
    },
};

/// The JWS header segment of a token: the bytes before its first `.`, when that is a non-empty
/// prefix of at most [`MAX_HEADER_SEGMENT`] bytes. A JWT's header segment is the same for every
/// token signed with one `(alg, typ, kid)` header, so revoking its hash revokes the whole key.
pub fn jws_header_segment(token: &[u8]) -> Option<&[u8]> {
    let dot = token
        .iter()
        .take(MAX_HEADER_SEGMENT + 1)
        .position(|&b| b == b'.')?;
    (dot > 0 && dot <= MAX_HEADER_SEGMENT).then(|| &token[..dot])
}

/// Longest HTTP method token the kernel accepts at the start of a segment.
pub const MAX_METHOD: usize = 20;

/// What the scan found in one TCP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanOutcome {
    /// The payload does not start an HTTP/1.x request; the packet passes unexamined.
    NotRequest,
    /// A request without a token the kernel can check.
    NoToken,
    /// A token at `payload[start..start + len]`, from needle `kind`.
    Token {
        /// [`crate::config::NEEDLE_BEARER`] or [`crate::config::NEEDLE_RAW`].
        kind: u32,
        /// Offset of the first token byte in the payload.
        start: usize,
        /// Token length in bytes.
        len: usize,
    },
    /// A token started but did not end inside the scanned bytes (fail open, counted).
    Skipped,
}

/// Whether a payload begins like an HTTP/1.x request line: a method token of 1 to 20 RFC 9110
/// `tchar` bytes followed by a space.
pub fn is_request_start(buf: &[u8]) -> bool {
    for (i, &b) in buf.iter().enumerate().take(MAX_METHOD + 1) {
        if b == b' ' {
            return i > 0;
        }
        if !tchar_bit(b) {
            return false;
        }
    }
    false
}

/// A byte that ends a token: CR, LF, space, tab and every other control byte.
pub const fn ends_token(b: u8) -> bool {
    b <= 0x20
}

fn load_words(buf: &[u8], p: usize) -> [u64; 4] {
    let mut b = [0u8; 32];
    let end = buf.len().min(p + 32);
    b[..end - p].copy_from_slice(&buf[p..end]);
    core::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])))
}

fn skip_ows(buf: &[u8], mut v: usize) -> usize {
    let mut i = 0;
    while i < MAX_OWS && v < buf.len() && (buf[v] == b' ' || buf[v] == b'\t') {
        v += 1;
        i += 1;
    }
    v
}

/// Where the token of a matched header starts, or `None` when the value is not a token
/// (another scheme, empty, too much whitespace).
fn token_start(buf: &[u8], needle: &HeaderNeedle, p: usize) -> Option<usize> {
    let mut v = skip_ows(buf, p + needle.len as usize);
    if needle.kind == NEEDLE_BEARER {
        if v + 7 > buf.len() {
            return None;
        }
        let w = load_words(buf, v)[0];
        if (w | BEARER_FOLD) & BEARER_KEEP != BEARER_WORD {
            return None;
        }
        v = skip_ows(buf, v + 7);
    }
    match buf.get(v) {
        Some(&b) if !ends_token(b) => Some(v),
        Some(_) => None,
        None => Some(v),
    }
}

/// Scans one TCP payload the way the kernel does.
pub fn scan_payload(payload: &[u8], needles: &[HeaderNeedle; 2]) -> ScanOutcome {
    let buf = &payload[..payload.len().min(SCAN_BUF_LEN)];
    if !is_request_start(buf) {
        return ScanOutcome::NotRequest;
    }
    let mut p = 0usize;
    for line in 0..MAX_LINES {
        if p >= buf.len() {
            break;
        }
        if line > 0 {
            if buf[p] == b'\r' || buf[p] == b'\n' {
                break;
            }
            let words = load_words(buf, p);
            for needle in needles {
                if needle.len == 0 || p + needle.len as usize > buf.len() || !needle.matches(words)
                {
                    continue;
                }
                let Some(start) = token_start(buf, needle, p) else {
                    continue;
                };
                return match buf[start..].iter().position(|&b| ends_token(b)) {
                    Some(len) => ScanOutcome::Token {
                        kind: needle.kind,
                        start,
                        len,
                    },
                    None => ScanOutcome::Skipped,
                };
            }
        }
        match buf[p..].iter().position(|&b| b == b'\n') {
            Some(i) => p += i + 1,
            None => break,
        }
    }
    ScanOutcome::NoToken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NEEDLE_RAW;
    use proptest::prelude::*;

    fn needles() -> [HeaderNeedle; 2] {
        [
            HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).unwrap(),
            HeaderNeedle::new(b"X-Api-Key", NEEDLE_RAW).unwrap(),
        ]
    }

    fn token_of(req: &[u8]) -> Option<&[u8]> {
        match scan_payload(req, &needles()) {
            ScanOutcome::Token { start, len, .. } => Some(&req[start..start + len]),
            _ => None,
        }
    }

    #[test]
    fn header_segment_is_the_part_before_the_first_dot() {
        assert_eq!(
            jws_header_segment(b"eyJhbGciOi.eyJzdWIi.c2ln"),
            Some(&b"eyJhbGciOi"[..])
        );
        assert_eq!(jws_header_segment(b"opaque-token"), None);
        assert_eq!(jws_header_segment(b".x.y"), None);
        let long = [b'a'; MAX_HEADER_SEGMENT];
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
    }

    #[test]
    fn header_and_scheme_are_case_insensitive_with_optional_whitespace() {
        let req = b"POST / HTTP/1.1\r\nauthorization:\t  bEARER   tok123\r\n\r\n";
        assert_eq!(token_of(req), Some(&b"tok123"[..]));
        let req = b"GET / HTTP/1.0\nAUTHORIZATION:Bearer t\n\n";
        assert_eq!(token_of(req), Some(&b"t"[..]));
    }

    #[test]
    fn token_ends_at_space_cr_or_lf() {
        let req = b"GET / HTTP/1.1\r\nAuthorization: Bearer aaa bbb\r\n\r\n";
        assert_eq!(token_of(req), Some(&b"aaa"[..]));
    }

    #[test]
    fn other_schemes_are_not_tokens_but_api_key_still_is() {
        let req = b"GET / HTTP/1.1\r\nAuthorization: Basic dXNlcjpwdw==\r\nx-api-key: k-1\r\n\r\n";
        assert_eq!(
            scan_payload(req, &needles()),
            ScanOutcome::Token {
                kind: NEEDLE_RAW,
                start: 62,
                len: 3
            }
        );
        assert_eq!(token_of(req), Some(&b"k-1"[..]));
    }

    #[test]
    fn headers_in_the_body_and_the_request_line_are_ignored() {
        let req = b"GET /Authorization: Bearer x HTTP/1.1\r\nHost: a\r\n\r\nAuthorization: Bearer body\r\n";
        assert_eq!(scan_payload(req, &needles()), ScanOutcome::NoToken);
    }

    #[test]
    fn a_name_with_a_prefix_or_suffix_does_not_match() {
        let req =
            b"GET / HTTP/1.1\r\nX-Authorization: Bearer a\r\nAuthorizationX: Bearer b\r\n\r\n";
        assert_eq!(scan_payload(req, &needles()), ScanOutcome::NoToken);
    }

    #[test]
    fn a_token_running_past_the_packet_is_skipped() {
        let req = b"GET / HTTP/1.1\r\nAuthorization: Bearer abcdef";
        assert_eq!(scan_payload(req, &needles()), ScanOutcome::Skipped);
        let mut big = b"GET / HTTP/1.1\r\nAuthorization: Bearer ".to_vec();
        big.extend(std::iter::repeat_n(b'a', SCAN_BUF_LEN));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(scan_payload(&big, &needles()), ScanOutcome::Skipped);
    }

    #[test]
    fn non_requests_are_not_scanned() {
        for p in [
            &b"HTTP/1.1 200 OK\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"GET(/ HTTP/1.1\r\n",
            b" GET /",
            b"GET",
            b"",
        ] {
            assert_eq!(
                scan_payload(p, &needles()),
                ScanOutcome::NotRequest,
                "{p:?}"
            );
        }
        assert!(is_request_start(b"M-SEARCH * HTTP/1.1"));
        assert!(
            is_request_start(b"get / HTTP/1.1"),
            "methods are any token, not only upper case"
        );
        assert!(!is_request_start(b"ABCDEFGHIJKLMNOPQRSTU /"));
    }

    fn header_line() -> impl Strategy<Value = Vec<u8>> {
        ("[A-Za-z][A-Za-z0-9-]{0,20}", "[ -~]{0,60}")
            .prop_map(|(n, v)| format!("{n}: {v}\r\n").into_bytes())
    }

    proptest! {
        #[test]
        fn finds_the_token_wherever_the_header_sits(
            before in proptest::collection::vec(header_line(), 0..20),
            after in proptest::collection::vec(header_line(), 0..5),
            token in "[A-Za-z0-9._~+/=-]{1,1600}",
            upper in any::<bool>(),
            ows in "[ \t]{0,3}",
        ) {
            let before: Vec<Vec<u8>> = before.into_iter().filter(|l| !l.to_ascii_lowercase().starts_with(b"authorization:") && !l.to_ascii_lowercase().starts_with(b"x-api-key:")).collect();
            let name = if upper { "AUTHORIZATION" } else { "authorization" };
            let mut req = b"GET /p HTTP/1.1\r\n".to_vec();
            for l in &before { req.extend_from_slice(l); }
            req.extend_from_slice(format!("{name}:{ows}Bearer {token}\r\n").as_bytes());
            for l in &after { req.extend_from_slice(l); }
            req.extend_from_slice(b"\r\n");
            let lines = 1 + before.len();
            if req.len() <= SCAN_BUF_LEN && (lines as u32) < MAX_LINES {
                prop_assert_eq!(token_of(&req), Some(token.as_bytes()));
            }
        }

        #[test]
        fn never_reports_a_token_outside_the_payload(payload in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let ScanOutcome::Token { start, len, .. } = scan_payload(&payload, &needles()) {
                prop_assert!(len > 0 && start + len <= payload.len());
                prop_assert!(!payload[start..start + len].iter().any(|&b| ends_token(b)));
            }
        }
    }
}
