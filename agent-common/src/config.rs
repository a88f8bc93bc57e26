//! The one configuration record the kernel program reads per packet (array map, index 0).

use crate::{MAX_HEADER_NAME, MAX_PORTS, hash::HashKey};

/// What the kernel does with a request whose token is revoked.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// XDP_DROP / TC_ACT_SHOT.
    Drop = 1,
    /// Rewrite the request segment into a TCP RST toward the local stack.
    Reset = 2,
    /// Count and report, then pass the packet.
    Observe = 3,
}

impl Action {
    /// Decodes the value stored in [`Config::action`]; anything unknown observes (fail open).
    #[inline(always)]
    pub const fn from_u32(v: u32) -> Self {
        match v {
            1 => Action::Drop,
            2 => Action::Reset,
            _ => Action::Observe,
        }
    }
}

/// The header value holds `Bearer <token>` (RFC 6750 section 2.1).
pub const NEEDLE_BEARER: u32 = 1;
/// The header value is the token itself (API-key headers such as `X-Api-Key`).
pub const NEEDLE_RAW: u32 = 2;

/// A header name to find at the start of a line, as four masked little-endian words:
/// a line matches when `((load(p + 8i) | fold[i]) & keep[i]) == words[i]` for every `i`.
/// `words` holds the lowercased name followed by `:`; `fold` has `0x20` on letter bytes (case
/// folding); `keep` has `0xff` on the bytes the needle covers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeaderNeedle {
    /// Lowercased `name:` bytes, zero past `len`.
    pub words: [u64; 4],
    /// Case-folding bits to OR into the loaded words.
    pub fold: [u64; 4],
    /// Which bytes take part in the comparison.
    pub keep: [u64; 4],
    /// Needle length in bytes (name plus colon); 0 disables the needle.
    pub len: u32,
    /// [`NEEDLE_BEARER`] or [`NEEDLE_RAW`].
    pub kind: u32,
}

/// Why a header name cannot become a needle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedleError {
    /// Empty name.
    Empty,
    /// Longer than [`MAX_HEADER_NAME`].
    TooLong,
    /// A byte that is not an RFC 9110 token character.
    BadByte(u8),
}

impl HeaderNeedle {
    /// Builds the needle for header `name` (matched case-insensitively).
    pub fn new(name: &[u8], kind: u32) -> Result<Self, NeedleError> {
        if name.is_empty() {
            return Err(NeedleError::Empty);
        }
        if name.len() > MAX_HEADER_NAME {
            return Err(NeedleError::TooLong);
        }
        if let Some(&b) = name.iter().find(|&&b| !is_tchar(b)) {
            return Err(NeedleError::BadByte(b));
        }
        Ok(Self::of(name, kind))
    }

    /// The needle for a name already known to be valid (a non-empty `tchar` string of at most
    /// [`MAX_HEADER_NAME`] bytes); usable in constants.
    pub const fn of(name: &[u8], kind: u32) -> Self {
        let mut words = [0u64; 4];
        let mut fold = [0u64; 4];
        let mut keep = [0u64; 4];
        let mut i = 0;
        while i <= name.len() {
            let (b, f) = if i < name.len() {
                let b = name[i];
                (
                    b.to_ascii_lowercase(),
                    if b.is_ascii_alphabetic() { 0x20 } else { 0 },
                )
            } else {
                (b':', 0)
            };
            let shift = (i % 8) * 8;
            words[i / 8] |= (b as u64) << shift;
            fold[i / 8] |= (f as u64) << shift;
            keep[i / 8] |= 0xff << shift;
            i += 1;
        }
        Self {
            words,
            fold,
            keep,
            len: name.len() as u32 + 1,
            kind,
        }
    }

    /// Whether the needle matches the four words loaded at a line start.
    #[inline(always)]
    pub fn matches(&self, w: [u64; 4]) -> bool {
        let d = (((w[0] | self.fold[0]) & self.keep[0]) ^ self.words[0])
            | (((w[1] | self.fold[1]) & self.keep[1]) ^ self.words[1])
            | (((w[2] | self.fold[2]) & self.keep[2]) ^ self.words[2])
            | (((w[3] | self.fold[3]) & self.keep[3]) ^ self.words[3]);
        d == 0
    }
}

/// RFC 9110 `tchar`.
pub const fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

const fn tchar_bits(from: u8) -> u64 {
    let mut bits = 0u64;
    let mut i = 0u8;
    while i < 64 {
        if is_tchar(from + i) {
            bits |= 1 << i;
        }
        i += 1;
    }
    bits
}

/// `tchar` membership of bytes 0..64, one bit per byte.
pub const TCHAR_LO: u64 = tchar_bits(0);
/// `tchar` membership of bytes 64..128, one bit per byte.
pub const TCHAR_HI: u64 = tchar_bits(64);

/// Whether `b` is a `tchar`, by bitmap (the form the kernel uses).
#[inline(always)]
pub const fn tchar_bit(b: u8) -> bool {
    let word = if b < 64 {
        TCHAR_LO
    } else if b < 128 {
        TCHAR_HI
    } else {
        0
    };
    (word >> (b & 63)) & 1 == 1
}

/// The `Bearer ` scheme prefix as a masked word: `(load(v) | BEARER_FOLD) & BEARER_KEEP == BEARER_WORD`.
pub const BEARER_WORD: u64 = u64::from_le_bytes(*b"bearer \0");
/// Case folding for the six scheme letters (not for the space).
pub const BEARER_FOLD: u64 = 0x0000_2020_2020_2020;
/// The seven bytes the scheme prefix covers.
pub const BEARER_KEEP: u64 = 0x00ff_ffff_ffff_ffff;
/// Most lines (request lines, header lines and the blank lines ending headers, over every
/// request in the segment) the kernel examines per segment; past them it loses the framing.
pub const MAX_LINES: u32 = 128;
/// Steps of the kernel's line loop: a line or a token each, plus the last step that sees the
/// end of the buffer. Never the binding limit (lines are).
pub const MAX_STEPS: u32 = 2 * MAX_LINES + 2;
/// Longest body (`Content-Length`) the kernel follows through sequence space; a larger one
/// loses the framing (fail open).
pub const MAX_BODY: u64 = 1 << 30;
/// Most digits of a `Content-Length` value the kernel reads (leading zeros included).
pub const MAX_LENGTH_DIGITS: usize = 24;
/// Bytes from the end of a request line the kernel reads backward to check its
/// `HTTP/<digits>.<digits>` version; a line whose trailing spaces or digits run longer is
/// taken as a request (the kernel errs toward judging).
pub const MAX_VERSION_TAIL: usize = 64;
/// Internal needle kind: `Content-Length`.
pub const NEEDLE_CONTENT_LENGTH: u32 = 3;
/// Internal needle kind: `Transfer-Encoding`.
pub const NEEDLE_TRANSFER_ENCODING: u32 = 4;
/// `Content-Length:`, case-insensitively.
pub const CONTENT_LENGTH: HeaderNeedle = HeaderNeedle::of(b"Content-Length", NEEDLE_CONTENT_LENGTH);
/// `Transfer-Encoding:`, case-insensitively.
pub const TRANSFER_ENCODING: HeaderNeedle =
    HeaderNeedle::of(b"Transfer-Encoding", NEEDLE_TRANSFER_ENCODING);

/// Whether a token's first two bytes open a JOSE header (`ey` or `ew`: the base64url of `{`
/// followed by `"` or JSON whitespace), so that its revocation is keyed on its signing input
/// (`crate::hash::revocation_key_len`).
#[inline(always)]
pub const fn opens_jws(first: u8, second: u8) -> bool {
    first == b'e' && (second == b'y' || second == b'w')
}

/// Configuration shared with the kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Config {
    /// Key of the token hash.
    pub key: HashKey,
    /// CLOCK_REALTIME minus CLOCK_BOOTTIME in ns, so the kernel can compare expiry times.
    pub clock_offset_ns: u64,
    /// Watched TCP destination ports, host order; 0 marks an unused slot.
    pub ports: [u16; MAX_PORTS],
    /// An [`Action`] as `u32`.
    pub action: u32,
    /// Non-zero when header-segment revocations exist, so the kernel hashes JWS header segments.
    pub header_revocations: u32,
    /// Non-zero: count per interface and report hits (monitoring on).
    pub monitoring: u32,
    /// Zero.
    pub _reserved: u32,
    /// `[0]` is `Authorization` with the bearer scheme; `[1]` the optional API-key header.
    pub needles: [HeaderNeedle; 2],
}

impl Config {
    /// Whether `port` (host order) is watched.
    #[inline(always)]
    pub fn watches(&self, port: u16) -> bool {
        let mut i = 0;
        while i < MAX_PORTS {
            if self.ports[i] != 0 && self.ports[i] == port {
                return true;
            }
            i += 1;
        }
        false
    }
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: Config is repr(C), Copy, made only of integers with no padding holes, so any
    // bytes are a valid value and aya may copy it to and from the kernel as plain data.
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[u8]) -> [u64; 4] {
        let mut b = [0u8; 40];
        b[..s.len()].copy_from_slice(s);
        core::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()))
    }

    #[test]
    fn needle_matches_any_case_and_nothing_else() {
        let n = HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).unwrap();
        assert_eq!(n.len, 14);
        assert!(n.matches(words(b"Authorization: Bearer x")));
        assert!(n.matches(words(b"aUTHORIZATION:x")));
        assert!(!n.matches(words(b"Authorizatio: x")));
        assert!(!n.matches(words(b"Authorization : x")));
        assert!(!n.matches(words(b"Authorizationx x")));
        assert!(!n.matches(words(b"Authori\x1aation:")));
    }

    #[test]
    fn needle_rejects_bad_names() {
        assert_eq!(HeaderNeedle::new(b"", NEEDLE_RAW), Err(NeedleError::Empty));
        assert_eq!(
            HeaderNeedle::new(b"a b", NEEDLE_RAW),
            Err(NeedleError::BadByte(b' '))
        );
        assert_eq!(
            HeaderNeedle::new(&[b'x'; 32], NEEDLE_RAW),
            Err(NeedleError::TooLong)
        );
        assert!(HeaderNeedle::new(&[b'x'; 31], NEEDLE_RAW).is_ok());
    }

    #[test]
    fn tchar_bitmap_equals_the_definition() {
        for b in 0..=255u8 {
            assert_eq!(tchar_bit(b), is_tchar(b), "byte {b}");
        }
    }

    #[test]
    fn bearer_word_is_case_insensitive() {
        for s in [b"Bearer x", b"BEARER x", b"bEaReR x"] {
            let w = u64::from_le_bytes(*s);
            assert_eq!((w | BEARER_FOLD) & BEARER_KEEP, BEARER_WORD);
        }
        let w = u64::from_le_bytes(*b"Bearer\tx");
        assert_ne!((w | BEARER_FOLD) & BEARER_KEEP, BEARER_WORD);
    }
}
