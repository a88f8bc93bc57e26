//! Reference model of the kernel's HTTP scan.
//!
//! This is the specification the eBPF program implements with word loads and bounded loops;
//! the differential tests compare the two on random and attacker-shaped segments (through
//! `BPF_PROG_TEST_RUN`), and the unit and property tests below pin the model itself down.
//!
//! One TCP segment is judged at a time. [`flow`] decides where in the client's byte stream the
//! segment starts (inside a body seen earlier, or at a request boundary); [`scan_segment`] then
//! walks the requests that start in the first [`SCAN_BUF_LEN`] bytes the way nginx 1.22 parses
//! them, finds every bearer token and API key, and says where the segment leaves the stream.
//! [`token`] defines which bytes of a token are hashed.

pub mod flow;
pub mod http;
#[cfg(test)]
mod tests;
pub mod token;

use alloc::vec::Vec;

use crate::{
    SCAN_BUF_LEN,
    config::{CONTENT_LENGTH, HeaderNeedle, MAX_BODY, MAX_LINES, TRANSFER_ENCODING},
};

pub use token::{TokenFound, jws_header_segment};

/// Where the scanned segment leaves the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamEnd {
    /// The segment does not start an HTTP/1.x request: it passes unexamined.
    NotRequest,
    /// It ends at a request boundary (every request in it is complete).
    Boundary,
    /// It ends inside a request body that ends this many bytes after the scan start.
    Body(u64),
    /// The kernel cannot follow the framing any further (headers that do not complete in the
    /// segment, a chunked or otherwise unknown body, a request past the scan buffer, more than
    /// [`MAX_LINES`] lines, a request nginx rejects): later segments of the flow pass unjudged.
    Unsynced,
}

/// What the scan found in one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Request lines accepted.
    pub requests: u32,
    /// Every token, in order.
    pub tokens: Vec<TokenFound>,
    /// Where the segment leaves the stream.
    pub end: StreamEnd,
}

/// Loads the four little-endian words at `p` (zero past the end), as the kernel's needle
/// match does.
pub(crate) fn load_words(buf: &[u8], p: usize) -> [u64; 4] {
    let mut b = [0u8; 32];
    let end = buf.len().min(p + 32);
    b[..end - p].copy_from_slice(&buf[p..end]);
    core::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])))
}

/// Whether a header line at `p` starts with `needle`.
pub(crate) fn line_matches(buf: &[u8], p: usize, needle: &HeaderNeedle) -> bool {
    needle.len != 0 && p + needle.len as usize <= buf.len() && needle.matches(load_words(buf, p))
}

/// Scans the client bytes of one segment from a request boundary: `payload` runs from there
/// to the end of the segment; the kernel reads its first [`SCAN_BUF_LEN`] bytes.
pub fn scan_segment(payload: &[u8], needles: &[HeaderNeedle; 2]) -> SegmentScan {
    let total = payload.len();
    let buf = &payload[..total.min(SCAN_BUF_LEN)];
    let len = buf.len();
    let mut out = SegmentScan {
        requests: 0,
        tokens: Vec::new(),
        end: StreamEnd::Unsynced,
    };
    let mut p = 0;
    let mut lines = 0;
    out.end = 'stream: loop {
        // Between requests: nginx skips empty lines (any CR and LF bytes).
        p = http::skip_crlf(buf, p);
        if p >= len {
            break if out.requests == 0 {
                StreamEnd::NotRequest
            } else if len == total {
                StreamEnd::Boundary
            } else {
                StreamEnd::Unsynced
            };
        }
        if lines >= MAX_LINES {
            break StreamEnd::Unsynced;
        }
        match http::request_line(buf, p) {
            http::Line::Complete(next) => p = next,
            http::Line::Incomplete => break StreamEnd::Unsynced,
            http::Line::Invalid if out.requests == 0 => break StreamEnd::NotRequest,
            http::Line::Invalid => break StreamEnd::Unsynced,
        }
        out.requests += 1;
        lines += 1;
        let mut length: Option<u64> = None;
        let mut framing_lost = false;
        loop {
            if p >= len || lines >= MAX_LINES {
                break 'stream StreamEnd::Unsynced;
            }
            lines += 1;
            if let Some(after) = http::blank_line(buf, p) {
                if framing_lost {
                    break 'stream StreamEnd::Unsynced;
                }
                let body_end = (after as u64) + length.unwrap_or(0);
                if body_end == total as u64 {
                    break 'stream StreamEnd::Boundary;
                }
                if body_end > total as u64 {
                    break 'stream StreamEnd::Body(body_end);
                }
                if body_end >= len as u64 {
                    break 'stream StreamEnd::Unsynced;
                }
                p = body_end as usize;
                continue 'stream;
            }
            if buf[p] == b'\r' {
                // A line starting with CR but not CR LF: nginx rejects the request.
                break 'stream StreamEnd::Unsynced;
            }
            if let Some(needle) = needles.iter().find(|n| line_matches(buf, p, n)) {
                if let Some(t) = token::token_at(buf, needle, p) {
                    out.tokens.push(t);
                }
            } else if line_matches(buf, p, &CONTENT_LENGTH) {
                match http::content_length(buf, p + CONTENT_LENGTH.len as usize) {
                    Some(n) if length.is_none() => length = Some(n),
                    _ => framing_lost = true,
                }
            } else if line_matches(buf, p, &TRANSFER_ENCODING) {
                framing_lost = true;
            }
            match buf[p..].iter().position(|&b| b == b'\n') {
                Some(i) => p += i + 1,
                None => break 'stream StreamEnd::Unsynced,
            }
        }
    };
    debug_assert!(!matches!(out.end, StreamEnd::Body(n) if n > MAX_BODY + total as u64));
    out
}
