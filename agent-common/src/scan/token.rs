//! Which bytes of a header value are the token, and which of them are hashed.

use super::http::{ends_token, skip_ows};
use crate::{
    MAX_HEADER_SEGMENT,
    config::{BEARER_FOLD, BEARER_KEEP, BEARER_WORD, HeaderNeedle, NEEDLE_BEARER, opens_jws},
};

/// A token found in a header line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenFound {
    /// [`crate::config::NEEDLE_BEARER`] or [`crate::config::NEEDLE_RAW`].
    pub kind: u32,
    /// Offset of its first byte in the scanned bytes.
    pub start: usize,
    /// How many of its bytes its revocation is keyed on (`crate::hash::revocation_key_len`):
    /// `None` when that cannot be known from the scanned bytes (the token runs past them with
    /// no second dot of a JWS before): the token is skipped (fail open, counted).
    pub key_len: Option<usize>,
    /// Length of its JWS header segment (the bytes before its first `.`, at most
    /// [`MAX_HEADER_SEGMENT`]), looked up as a revoked signing key when it exists.
    pub header_len: Option<usize>,
}

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

/// The token of the header line at `p` that matched `needle`: after the colon, optional
/// whitespace, then for a bearer needle `Bearer` (any case) and a space and more optional
/// whitespace. `None` when the value holds no token (another scheme, empty).
pub fn token_at(buf: &[u8], needle: &HeaderNeedle, p: usize) -> Option<TokenFound> {
    let mut v = skip_ows(buf, p + needle.len as usize);
    if needle.kind == NEEDLE_BEARER {
        if v + 7 > buf.len() {
            return None;
        }
        let w = super::load_words(buf, v)[0];
        if (w | BEARER_FOLD) & BEARER_KEEP != BEARER_WORD {
            return None;
        }
        v = skip_ows(buf, v + 7);
    }
    if buf.get(v).is_some_and(|&b| ends_token(b)) {
        return None;
    }
    let (key_len, header_len) = keys(&buf[v..]);
    Some(TokenFound {
        kind: needle.kind,
        start: v,
        key_len,
        header_len,
    })
}

/// The key length and header-segment length of a token starting at `rest[0]` and running to
/// its first [`ends_token`] byte, or past the end of `rest` (the scanned bytes) when it has
/// none. A token keyed on its signing input only needs its second dot to be scanned.
pub fn keys(rest: &[u8]) -> (Option<usize>, Option<usize>) {
    let end = rest.iter().position(|&b| ends_token(b));
    let token = &rest[..end.unwrap_or(rest.len())];
    let mut dots = token
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'.')
        .map(|(i, _)| i);
    let (first, second) = (dots.next(), dots.next());
    let header_len = first.filter(|&d| d > 0 && d <= MAX_HEADER_SEGMENT);
    let jws = token.len() >= 2 && opens_jws(token[0], token[1]);
    let key_len = match (jws, second) {
        (true, Some(d)) => Some(d),
        _ => end,
    };
    (key_len, header_len)
}
