//! The header scan: copy the payload into per-CPU scratch space, walk header lines with
//! `bpf_loop`, find the token and hash it. Mirrors `agent_common::scan` (the reference model).
//!
//! Verifier notes (see shared/notes/ebpf-verifier.md): every offset that comes out of a
//! data-dependent loop is stored in the scratch map and read back, so the code after the loop
//! sees one unknown scalar instead of one state per exit point, and every buffer index is
//! masked into the buffer. All loads are aligned words, combined with shifts where an offset is
//! not a multiple of eight.

use agent_common::{
    MAX_HEADER_SEGMENT, SCAN_BUF_LEN, SCAN_MASK, SCAN_PAD,
    config::{
        BEARER_FOLD, BEARER_KEEP, BEARER_WORD, HeaderNeedle, MAX_LINES, MAX_OWS, NEEDLE_BEARER,
        tchar_bit,
    },
    event::{EVENT_WINDOW_SHIFT, EVENTS_PER_WINDOW},
    hash::{HashKey, SipState, tail_mask},
};
use aya_ebpf::helpers::generated::bpf_loop;
use core::{ffi::c_void, ptr::null_mut};

use crate::{CONFIG, OPAQUE_OFFSET, SCRATCH};

const WORDS: usize = (SCAN_BUF_LEN + SCAN_PAD) / 8;
const WORD_MASK: u32 = (SCAN_BUF_LEN as u32 / 8) - 1;
const MAX_METHOD: u32 = 20;
const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Per-CPU scan state: the payload copy and the cursor the line callback advances.
#[repr(C)]
pub struct Scratch {
    /// Payload bytes, as aligned words (little-endian byte order).
    pub words: [u64; WORDS],
    /// Bytes copied into `words`.
    pub len: u32,
    /// Start of the next line to examine.
    pub pos: u32,
    /// Offset of the token, once found.
    pub start: u32,
    /// Needle kind of the token; 0 while none was found.
    pub kind: u32,
    /// Token length, once its end was found.
    pub tlen: u32,
    /// Reserved.
    pub _pad: u32,
    /// The event window this CPU last reported a hit in (boot ns >> `EVENT_WINDOW_SHIFT`).
    pub event_window: u64,
    /// Hit events sent in that window.
    pub events_in_window: u32,
    /// Reserved.
    pub _pad2: u32,
}

impl Scratch {
    /// Takes one hit event from this CPU's budget for the window of `now_ns`; false when it
    /// is spent.
    #[inline(always)]
    pub fn take_event(&mut self, now_ns: u64) -> bool {
        let window = now_ns >> EVENT_WINDOW_SHIFT;
        if self.event_window != window {
            self.event_window = window;
            self.events_in_window = 0;
        }
        if self.events_in_window >= EVENTS_PER_WINDOW {
            return false;
        }
        self.events_in_window += 1;
        true
    }
}

/// Passes `v` through map memory: the verifier then sees an unknown scalar, so the code after a
/// data-dependent loop is verified once rather than once per exit. `None` past the buffer.
#[inline(always)]
fn launder(v: u32) -> Option<u32> {
    let p = OPAQUE_OFFSET.get_ptr_mut(0)?;
    let v = unsafe {
        core::ptr::write_volatile(p, v);
        core::ptr::read_volatile(p)
    };
    if v > SCAN_BUF_LEN as u32 {
        None
    } else {
        Some(v)
    }
}

/// A token located in the scratch buffer.
pub struct Found {
    /// `NEEDLE_BEARER` or `NEEDLE_RAW`.
    pub kind: u32,
    /// Keyed hash of the token bytes.
    pub hash: u64,
    /// Offset of the token in the scratch buffer.
    pub start: u32,
}

/// Result of scanning one request.
pub enum Scan {
    /// Not the start of an HTTP/1.x request.
    NotRequest,
    /// A request with no token to check.
    NoToken,
    /// The token did not end inside the scanned bytes.
    Skipped,
    /// A token.
    Token(Found),
}

#[inline(always)]
fn byte(s: &Scratch, i: u32) -> u8 {
    let p = s.words.as_ptr() as *const u8;
    unsafe { *p.add((i & SCAN_MASK) as usize) }
}

#[inline(always)]
fn aligned(s: &Scratch, k: u32) -> u64 {
    s.words[(k & WORD_MASK) as usize]
}

/// Reads consecutive 8-byte words starting at any byte offset, one aligned load per word.
struct Cursor {
    k: u32,
    shift: u32,
    lo: u64,
}

impl Cursor {
    #[inline(always)]
    fn new(s: &Scratch, off: u32) -> Self {
        let off = off & SCAN_MASK;
        Self {
            k: off >> 3,
            shift: (off & 7) * 8,
            lo: aligned(s, off >> 3),
        }
    }

    #[inline(always)]
    fn next(&mut self, s: &Scratch) -> u64 {
        let hi = s.words[((self.k & WORD_MASK) + 1) as usize];
        // (hi << 1) << (63 - shift) is hi << (64 - shift) without a 64-bit shift when shift == 0.
        let w = (self.lo >> self.shift) | ((hi << 1) << (63 - self.shift));
        self.lo = hi;
        self.k += 1;
        w
    }
}

/// Index of the lowest flagged byte of a SWAR mask (flags in bit 7 of each byte).
#[inline(always)]
fn first_flag(t: u64) -> u32 {
    let lowest = t & t.wrapping_neg();
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32
}

/// Flags bytes equal to `\n`; the lowest flag is exact.
#[inline(always)]
fn newlines(w: u64) -> u64 {
    let x = w ^ (ONES * b'\n' as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Flags bytes equal to `.`; the lowest flag is exact.
#[inline(always)]
fn dots(w: u64) -> u64 {
    let x = w ^ (ONES * b'.' as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Flags bytes below 0x21 (space, CR, LF, tab, controls); the lowest flag is exact.
#[inline(always)]
fn token_ends(w: u64) -> u64 {
    w.wrapping_sub(ONES * 0x21) & !w & HIGHS
}

#[inline(always)]
fn skip_ows(s: &Scratch, mut v: u32, len: u32) -> u32 {
    for _ in 0..MAX_OWS {
        if v >= len {
            break;
        }
        let b = byte(s, v);
        if b != b' ' && b != b'\t' {
            break;
        }
        v += 1;
    }
    v
}

/// Where the token of the header matched at `p` starts, if its value holds one.
#[inline(always)]
fn token_start(s: &Scratch, needle: &HeaderNeedle, p: u32, len: u32) -> Option<u32> {
    let mut v = launder(skip_ows(s, p + (needle.len & 0x3f), len))?;
    if needle.kind == NEEDLE_BEARER {
        if v + 7 > len {
            return None;
        }
        let w = Cursor::new(s, v).next(s);
        if (w | BEARER_FOLD) & BEARER_KEEP != BEARER_WORD {
            return None;
        }
        v = launder(skip_ows(s, v + 7, len))?;
    }
    if v < len && byte(s, v) <= 0x20 {
        return None;
    }
    Some(v)
}

/// `bpf_loop` callback: examines the line at `SCRATCH.pos`; returns 1 to stop the loop.
unsafe extern "C" fn scan_line(index: u32, _ctx: *mut c_void) -> i64 {
    let (Some(s), Some(cfg)) = (SCRATCH.get_ptr_mut(0), CONFIG.get(0)) else {
        return 1;
    };
    let s = unsafe { &mut *s };
    let len = s.len;
    let p = s.pos;
    if len > SCAN_BUF_LEN as u32 || p >= len {
        return 1;
    }
    if index > 0 {
        let b = byte(s, p);
        if b == b'\r' || b == b'\n' {
            return 1;
        }
        let mut c = Cursor::new(s, p);
        let w = [c.next(s), c.next(s), c.next(s), c.next(s)];
        for needle in &cfg.needles {
            if needle.len == 0 || p + (needle.len & 0x3f) > len || !needle.matches(w) {
                continue;
            }
            if let Some(start) = token_start(s, needle, p, len) {
                s.start = start;
                s.kind = needle.kind;
                return 1;
            }
        }
    }
    let mut c = Cursor::new(s, p);
    let mut q = p;
    for _ in 0..(SCAN_BUF_LEN / 8) {
        if q >= len {
            return 1;
        }
        let t = newlines(c.next(s));
        if t != 0 {
            let nl = q + first_flag(t);
            if nl >= len {
                return 1;
            }
            s.pos = nl + 1;
            return 0;
        }
        q += 8;
    }
    1
}

/// Whether the buffer starts with a method token and a space (`agent_common::scan::is_request_start`).
#[inline(always)]
fn is_request_start(s: &Scratch, len: u32) -> bool {
    for i in 0..=MAX_METHOD {
        if i >= len {
            return false;
        }
        let b = byte(s, i);
        if b == b' ' {
            return i > 0;
        }
        if !tchar_bit(b) {
            return false;
        }
    }
    false
}

/// Finds the end of the token at `start` and hashes it in the same pass: every word without a
/// terminator is a full SipHash block; the word holding the terminator gives the final block.
/// `None` when the token does not end inside the `len` scanned bytes.
#[inline(always)]
fn hash_token(s: &Scratch, key: &HashKey, start: u32, len: u32) -> Option<u64> {
    let mut st = SipState::new(key);
    let mut c = Cursor::new(s, start);
    let mut q = start;
    for _ in 0..(SCAN_BUF_LEN / 8) {
        if q >= len {
            return None;
        }
        let w = c.next(s);
        let t = token_ends(w);
        if t != 0 {
            let k = first_flag(t);
            let end = q + k;
            if end >= len || end == start {
                return None;
            }
            return Some(st.finish(w & tail_mask(k as u64), (end - start) as u64));
        }
        st.compress(w);
        q += 8;
    }
    None
}

/// Hashes the JWS header segment of the token at `start`: the bytes before its first `.`
/// (`agent_common::scan::jws_header_segment`). `None` when there is no such segment.
#[inline(always)]
pub fn hash_header_segment(key: &HashKey, start: u32) -> Option<u64> {
    let sp = SCRATCH.get_ptr_mut(0)?;
    let s = unsafe { &*sp };
    let len = s.len;
    if start >= len || len > SCAN_BUF_LEN as u32 {
        return None;
    }
    let mut st = SipState::new(key);
    let mut c = Cursor::new(s, start);
    let mut q = start;
    for _ in 0..(MAX_HEADER_SEGMENT / 8 + 1) {
        if q >= len {
            return None;
        }
        let w = c.next(s);
        let d = dots(w);
        let t = d | token_ends(w);
        if t != 0 {
            // The lowest flag of the union is the lowest of the two exact lowest flags.
            let k = first_flag(t);
            let end = q + k;
            let seg = end - start;
            if (d >> (k * 8 + 7)) & 1 == 0
                || end >= len
                || seg == 0
                || seg > MAX_HEADER_SEGMENT as u32
            {
                return None;
            }
            return Some(st.finish(w & tail_mask(k as u64), seg as u64));
        }
        st.compress(w);
        q += 8;
    }
    None
}

/// Scans a payload already copied into `SCRATCH` (`len` bytes).
#[inline(always)]
pub fn scan(s: &mut Scratch, len: u32, key: &HashKey) -> Scan {
    if !is_request_start(s, len) {
        return Scan::NotRequest;
    }
    s.len = len;
    s.pos = 0;
    s.kind = 0;
    s.start = 0;
    unsafe { bpf_loop(MAX_LINES, scan_line as *mut c_void, null_mut(), 0) };
    // Re-read through a fresh lookup: the callback wrote these, the verifier sees unknown scalars.
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return Scan::NoToken;
    };
    let s = unsafe { &*s };
    let kind = s.kind;
    if kind == 0 {
        return Scan::NoToken;
    }
    let (start, len) = (s.start, s.len);
    if start >= len || len > SCAN_BUF_LEN as u32 {
        return Scan::Skipped;
    }
    match hash_token(s, key, start, len) {
        Some(hash) => Scan::Token(Found { kind, hash, start }),
        None => Scan::Skipped,
    }
}
