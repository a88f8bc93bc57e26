//! The HTTP/1.x framing rules of the scan, matched to what nginx 1.22 accepts
//! (`src/http/ngx_http_parse.c`, `ngx_http_parse_request_line` and
//! `ngx_http_parse_header_line`, checked against nginx 1.22.1 itself): the kernel must judge
//! every request nginx would serve, so where it cannot be exact it accepts more, never less.

use crate::config::{MAX_BODY, MAX_LENGTH_DIGITS, MAX_VERSION_TAIL, tchar_bit};

/// A byte that ends a token: CR, LF, space, tab and every other control byte.
pub const fn ends_token(b: u8) -> bool {
    b <= 0x20
}

/// The first offset at or after `p` that is not CR or LF (nginx skips empty lines before a
/// request line), or `buf.len()`.
pub fn skip_crlf(buf: &[u8], p: usize) -> usize {
    p + buf[p.min(buf.len())..]
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// The first offset at or after `p` that is not a space or a tab, or `buf.len()`: optional
/// whitespace is skipped however long it is.
pub fn skip_ows(buf: &[u8], p: usize) -> usize {
    p + buf[p.min(buf.len())..]
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()
}

/// A request line at the start of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// A request line; the headers start at this offset.
    Complete(usize),
    /// It starts like one (a method and a space) but its LF is not in the buffer.
    Incomplete,
    /// Not a request line.
    Invalid,
}

/// Judges the request line starting at `p` (the first byte after any empty lines).
///
/// Accepted: a method of `tchar` bytes (nginx accepts `[A-Z_-]` of any length; this accepts
/// every byte above 0x20 after a first `tchar`), a space, and a line whose end, without one CR
/// and any trailing spaces, is `HTTP/<digits>.<digits>` preceded by a space that is not the
/// method's (a target is present). nginx also accepts many spaces around the target and
/// leading zeros in the minor version; it answers other versions with an error.
pub fn request_line(buf: &[u8], p: usize) -> Line {
    if !tchar_bit(buf[p]) {
        return Line::Invalid;
    }
    let Some(m) = buf[p..].iter().position(|&b| ends_token(b)).map(|i| p + i) else {
        return Line::Incomplete;
    };
    if buf[m] != b' ' {
        return Line::Invalid;
    }
    let Some(nl) = buf[m..].iter().position(|&b| b == b'\n').map(|i| m + i) else {
        return Line::Incomplete;
    };
    let mut e = nl;
    if buf[e - 1] == b'\r' {
        e -= 1;
    }
    if version_tail(buf, m, e) {
        Line::Complete(nl + 1)
    } else {
        Line::Invalid
    }
}

/// The first offset `j` in `[lo, i]` such that every byte of `j..i` is in the class.
fn back_while(buf: &[u8], i: usize, lo: usize, class: impl Fn(u8) -> bool) -> usize {
    let mut j = i;
    while j > lo && class(buf[j - 1]) {
        j -= 1;
    }
    j
}

/// Reads the request line `..e` backward: trailing spaces, minor digits, `.`, major digits,
/// `HTTP/`, and a space after the method's space at `m`. Only the last
/// [`MAX_VERSION_TAIL`] bytes are read: when spaces or digits run past them, the line is
/// accepted (the kernel errs toward judging); running into the method rejects it.
pub fn version_tail(buf: &[u8], m: usize, e: usize) -> bool {
    let floor = m + 1;
    let lo = e.saturating_sub(MAX_VERSION_TAIL).max(floor);
    let cut = lo > floor;
    let i = back_while(buf, e, lo, |b| b == b' ');
    if i == lo {
        return cut;
    }
    let mut i = i;
    for sep in [b'.', b'/'] {
        let j = back_while(buf, i, lo, |b| b.is_ascii_digit());
        if j == lo {
            return cut;
        }
        if j == i || buf[j - 1] != sep {
            return false;
        }
        i = j - 1;
    }
    if i < lo + 5 {
        return cut;
    }
    &buf[i - 5..i] == b" HTTP"
}

/// When the line at `p` is blank (LF or CR LF: the end of a request's headers), the offset
/// after it.
pub fn blank_line(buf: &[u8], p: usize) -> Option<usize> {
    match (buf.get(p), buf.get(p + 1)) {
        (Some(b'\n'), _) => Some(p + 1),
        (Some(b'\r'), Some(b'\n')) => Some(p + 2),
        _ => None,
    }
}

/// The value of a `Content-Length` header whose value starts at `v` (after the colon): optional
/// whitespace, 1 to [`MAX_LENGTH_DIGITS`] digits worth at most [`MAX_BODY`], optional
/// whitespace, then CR or LF. `None` for anything else (nginx rejects a value that is not
/// digits; a larger body is not followed).
pub fn content_length(buf: &[u8], v: usize) -> Option<u64> {
    let mut i = skip_ows(buf, v);
    let mut n: u64 = 0;
    let mut digits = 0;
    while digits < MAX_LENGTH_DIGITS && i < buf.len() && buf[i].is_ascii_digit() {
        n = n * 10 + u64::from(buf[i] - b'0');
        if n > MAX_BODY {
            return None;
        }
        i += 1;
        digits += 1;
    }
    if digits == 0 {
        return None;
    }
    i = skip_ows(buf, i);
    matches!(buf.get(i), Some(b'\r' | b'\n')).then_some(n)
}
