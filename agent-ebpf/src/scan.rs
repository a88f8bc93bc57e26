//! The header scan: the payload is copied into per-CPU scratch space and walked with
//! `bpf_loop`, one step per line or token. Mirrors `agent_common::scan` (the reference model).
//!
//! Verifier notes (see shared/notes/ebpf-verifier.md and docs/kernel.md): every loop lives in
//! a global BPF function (`tw_*`), which the verifier checks once, on its own, and whose result
//! reaches the caller as an unknown scalar; inside one, an offset that comes out of a
//! data-dependent loop passes through map memory before the next loop. Every buffer index is
//! masked into the buffer. All loads are aligned words, combined with shifts where an offset
//! is not a multiple of eight. Each step keeps its state in the scratch map and the caller
//! reaches `bpf_loop` with nothing else live, so the callback is verified from one state.

use agent_common::{
    SCAN_BUF_LEN, SCAN_PAD,
    config::{
        CONTENT_LENGTH, HeaderNeedle, MAX_BODY, MAX_LENGTH_DIGITS, MAX_LINES, MAX_STEPS,
        MAX_VERSION_TAIL, TRANSFER_ENCODING, tchar_bit,
    },
    counters::Counter,
    event::{EVENT_WINDOW_SHIFT, EVENTS_PER_WINDOW},
};
use aya_ebpf::helpers::generated::bpf_loop;
use core::{ffi::c_void, ptr::null_mut};

use crate::{
    CONFIG, COUNTERS, OPAQUE_OFFSET, SCRATCH,
    swar::{
        Cursor, byte, controls, find_near, newlines, tw_find_control, tw_find_newline,
        tw_skip_crlf, tw_skip_ows,
    },
    token,
};

const WORDS: usize = (SCAN_BUF_LEN + SCAN_PAD) / 8;
/// Mask of a word index inside the buffer.
pub const WORD_MASK: u32 = (SCAN_BUF_LEN as u32 / 8) - 1;

/// Step kinds: between requests (empty lines, then a request line).
const STATE_START: u32 = 0;
/// Step kinds: a header line (or the blank line ending the headers).
const STATE_HEADERS: u32 = 1;
/// Step kinds: hash and look up the token at `Scratch::tok_start`.
const STATE_TOKEN: u32 = 2;

/// Where the segment leaves the stream (`agent_common::scan::StreamEnd`).
pub const END_NOT_REQUEST: u32 = 0;
/// At a request boundary.
pub const END_BOUNDARY: u32 = 1;
/// Inside a body ending `Scratch::body_end` bytes after the scan start.
pub const END_BODY: u32 = 2;
/// The framing was lost.
pub const END_UNSYNCED: u32 = 3;

/// `Scratch::framing`: a `Content-Length` was read.
const LENGTH_SEEN: u32 = 1;
/// `Scratch::framing`: the body cannot be followed (chunked, invalid or repeated length).
const FRAMING_LOST: u32 = 2;

/// Per-CPU scan state: the payload copy, the cursor and what the steps found.
///
/// # Access
///
/// The slot is `SCRATCH[0]`, a per-CPU array: a successful lookup gives this CPU's copy, an
/// aligned `Scratch` valid for the whole program run. A run keeps its CPU (the kernel runs
/// BPF programs with migration disabled) and, on the XDP and TC paths, runs on one CPU do not
/// interleave (softirq context), so a run has the slot to itself.
///
/// Within a run, the code that holds a reference to the slot and the global functions
/// (`tw_*`) it calls both reach it: a global BPF function cannot be passed a map-value
/// pointer, so each one looks the slot up again. The `tw_*` search and parse functions only
/// read it; `tw_hash_token` writes `key_hash`, `header_hash` and `hashed`, which its caller
/// reads back through a fresh lookup. These accesses are confined to the calls, which are
/// `#[inline(never)]` BPF-to-BPF calls that LLVM must assume read and write map memory.
/// Rust's aliasing model asks more (no `&mut Scratch` live across such a call): the step
/// functions still hold one, see `step`.
#[repr(C)]
pub struct Scratch {
    /// Payload bytes, as aligned words (little-endian byte order).
    pub words: [u64; WORDS],
    /// Bytes copied into `words`.
    pub len: u32,
    /// Bytes from the scan start to the end of the segment (`len` or more).
    pub total: u32,
    /// Start of the next line to examine.
    pub pos: u32,
    /// `STATE_*` of the next step.
    pub state: u32,
    /// Lines examined.
    pub lines: u32,
    /// Request lines accepted.
    pub requests: u32,
    /// `END_*` once the steps stopped (`END_UNSYNCED` if they ran out).
    pub end: u32,
    /// For `END_BODY`: where the body ends, from the scan start.
    pub body_end: u32,
    /// `Content-Length` of the current request.
    pub length: u32,
    /// `LENGTH_SEEN` / `FRAMING_LOST` bits of the current request.
    pub framing: u32,
    /// Offset of the token the next `STATE_TOKEN` step hashes.
    pub tok_start: u32,
    /// Its needle kind.
    pub tok_kind: u32,
    /// 0, or what matched (`MATCH_TOKEN` / `MATCH_HEADER_SEGMENT`) on the first hit.
    pub hit: u32,
    /// Needle kind of the hit.
    pub hit_kind: u32,
    /// Hash that hit.
    pub hit_hash: u64,
    /// Output of `tw_hash_token`: the key hash of the current token.
    pub key_hash: u64,
    /// Output of `tw_hash_token`: the header-segment hash of the current token.
    pub header_hash: u64,
    /// Output of `tw_hash_token`: which of the two it wrote.
    pub hashed: u32,
    /// Reserved.
    pub _pad1: u32,
    /// Unix seconds, for expiry checks.
    pub now: u64,
    /// Sequence number of the segment's first payload byte.
    pub stream_seq: u32,
    /// Payload bytes before the scan start (the end of a body seen earlier).
    pub skip: u32,
    /// Non-zero when the flow had an entry in the flow map.
    pub known: u32,
    /// Reserved.
    pub _pad0: u32,
    /// First counter slot of this packet's interface.
    pub meter_base: u32,
    /// Non-zero when monitoring is on.
    pub meter_on: u32,
    /// The event window this CPU last reported a hit in (boot ns >> `EVENT_WINDOW_SHIFT`).
    pub event_window: u64,
    /// Hit events sent in that window.
    pub events_in_window: u32,
    /// Reserved.
    pub _pad: u32,
}

impl Scratch {
    /// The payload buffer as bytes, for `Packet::load` to copy into.
    #[inline(always)]
    pub fn bytes_mut(&mut self) -> &mut [u8; WORDS * 8] {
        // SAFETY: `[u64; WORDS]` and `[u8; WORDS * 8]` have the same size, `u8` needs no
        // alignment, and every byte pattern is a valid `u64` and `u8`; the result reborrows
        // `self.words` exclusively for its lifetime.
        unsafe { &mut *(self.words.as_mut_ptr() as *mut [u8; WORDS * 8]) }
    }

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

    /// Adds one to counter `c` of this packet's interface (when monitoring is on).
    #[inline(always)]
    pub fn count(&self, c: Counter) {
        if self.meter_on != 0
            && let Some(v) = COUNTERS.get_ptr_mut(self.meter_base + c as u32)
        {
            // SAFETY: the pointer came from a successful lookup in a per-CPU array: an aligned
            // u64 of this CPU's copy, valid for this program run, and no other reference to
            // it is live (runs on one CPU do not interleave; see `Scratch`).
            unsafe { *v += 1 };
        }
    }

    #[inline(always)]
    fn stop(&mut self, end: u32) -> i64 {
        self.end = end;
        1
    }

    /// The end when a request line is invalid: before any request the segment is not one.
    #[inline(always)]
    fn invalid(&mut self) -> i64 {
        let end = if self.requests == 0 {
            END_NOT_REQUEST
        } else {
            END_UNSYNCED
        };
        self.stop(end)
    }
}

/// Passes `v` through map memory: the verifier then sees an unknown scalar, so the code after a
/// data-dependent loop is verified once rather than once per exit. `None` past the buffer.
#[inline(always)]
pub fn launder(v: u32) -> Option<u32> {
    let p = OPAQUE_OFFSET.get_ptr_mut(0)?;
    // SAFETY: the pointer came from a successful lookup of a per-CPU array: an aligned u32
    // of this CPU's copy, valid for the run, and no reference to it exists (every access is
    // this pair of volatile operations, which keeps the store and the load).
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

/// Whether the line at `p` starts with `needle`, given its first four words `w`.
#[inline(always)]
fn line_matches(needle: &HeaderNeedle, p: u32, len: u32, w: [u64; 4]) -> bool {
    needle.len != 0 && p + (needle.len & 0x3f) <= len && needle.matches(w)
}

/// Reads the request line `..e` backward (`agent_common::scan::http::version_tail`); 1 when
/// it ends in an HTTP version. A global BPF function: verified once, on its own.
// SAFETY: the `tw_` name is unique in the object, so the unmangled symbol (a global BPF
// function needs one) clashes with no other.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tw_version_tail(m: u32, e: u32) -> u32 {
    let Some(s) = SCRATCH.get_ptr(0) else {
        return 0;
    };
    // SAFETY: this CPU's `Scratch` from a successful per-CPU array lookup, valid for the
    // run; only read while `s` lives, and this function calls nothing that writes it.
    let s = unsafe { &*s };
    u32::from(version_tail(s, m, e) == Some(true))
}

/// The first offset `j` in `[lo, i]` with every byte of `j..i` in the class (at most
/// `MAX_VERSION_TAIL` steps); the result passes through map memory so the next phase is
/// verified once.
#[inline(always)]
fn back_while(s: &Scratch, i: u32, lo: u32, class: impl Fn(u8) -> bool) -> Option<u32> {
    let mut j = i;
    for _ in 0..MAX_VERSION_TAIL {
        if j <= lo || !class(byte(s, j - 1)) {
            break;
        }
        j -= 1;
    }
    launder(j)
}

#[inline(always)]
fn version_tail(s: &Scratch, m: u32, e: u32) -> Option<bool> {
    let floor = m + 1;
    let lo = if e > floor + MAX_VERSION_TAIL as u32 {
        e - MAX_VERSION_TAIL as u32
    } else {
        floor
    };
    let cut = lo > floor;
    let mut i = back_while(s, e, lo, |b| b == b' ')?;
    if i <= lo {
        return Some(cut);
    }
    for sep in *b"./" {
        let j = back_while(s, i, lo, |b| b.is_ascii_digit())?;
        if j <= lo {
            return Some(cut);
        }
        if j == i || byte(s, j - 1) != sep {
            return Some(false);
        }
        i = j - 1;
    }
    if i < lo + 5 {
        return Some(cut);
    }
    Some(
        byte(s, i - 5) == b' '
            && byte(s, i - 4) == b'H'
            && byte(s, i - 3) == b'T'
            && byte(s, i - 2) == b'T'
            && byte(s, i - 1) == b'P',
    )
}

/// `" HTTP/1.0"` or `" HTTP/1.1"` as one masked comparison of the nine bytes before `e`.
const HTTP_1X: u64 = u64::from_le_bytes(*b"HTTP/1.0");
/// The minor version's bit that tells `0` from `1`.
const HTTP_1X_MINOR: u64 = 1 << 56;

/// Whether the request line `..e` ends in ` HTTP/1.0` or ` HTTP/1.1` after the method's space
/// at `m`: the common case, which `tw_version_tail` (the general rule) also accepts.
#[inline(always)]
fn common_version(s: &Scratch, m: u32, e: u32) -> bool {
    e >= m + 10
        && (Cursor::new(s, e - 8).next(s) | HTTP_1X_MINOR) == HTTP_1X | HTTP_1X_MINOR
        && byte(s, e - 9) == b' '
}

/// Between requests: skip empty lines, then accept a request line or stop.
#[inline(always)]
fn start_step(s: &mut Scratch) -> i64 {
    let len = s.len;
    if len > SCAN_BUF_LEN as u32 {
        return s.stop(END_UNSYNCED);
    }
    let mut p = s.pos;
    if p < len && matches!(byte(s, p), b'\r' | b'\n') {
        p = tw_skip_crlf(p, len);
    }
    if p >= len {
        let end = if s.requests == 0 {
            END_NOT_REQUEST
        } else if len == s.total {
            END_BOUNDARY
        } else {
            END_UNSYNCED
        };
        return s.stop(end);
    }
    if s.lines >= MAX_LINES {
        return s.stop(END_UNSYNCED);
    }
    if !tchar_bit(byte(s, p)) {
        return s.invalid();
    }
    let m = find_near(s, p, len, controls, tw_find_control);
    if m >= len {
        return s.stop(END_UNSYNCED);
    }
    if byte(s, m) != b' ' {
        return s.invalid();
    }
    let nl = find_near(s, m, len, newlines, tw_find_newline);
    if nl >= len || nl <= m {
        return s.stop(END_UNSYNCED);
    }
    let e = if byte(s, nl - 1) == b'\r' { nl - 1 } else { nl };
    if !common_version(s, m, e) && tw_version_tail(m, e) == 0 {
        return s.invalid();
    }
    s.requests += 1;
    s.lines += 1;
    s.count(Counter::HttpRequests);
    s.pos = nl + 1;
    s.state = STATE_HEADERS;
    s.length = 0;
    s.framing = 0;
    0
}

/// Moves to the line after the LF at or after `from`; stops (unsynced) when there is none.
#[inline(always)]
fn next_line(s: &mut Scratch, from: u32) -> i64 {
    let nl = find_near(s, from, s.len, newlines, tw_find_newline);
    if nl >= s.len {
        return s.stop(END_UNSYNCED);
    }
    s.pos = nl + 1;
    0
}

/// `tw_content_length` result for a value that is not a length the kernel follows.
const LENGTH_INVALID: u32 = u32::MAX;

/// Reads the `Content-Length` value at `v` (`agent_common::scan::http::content_length`);
/// `LENGTH_INVALID` for anything but a length the kernel follows. A global BPF function:
/// verified once, on its own.
// SAFETY: the `tw_` name is unique in the object, so the unmangled symbol (a global BPF
// function needs one) clashes with no other.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tw_content_length(v: u32, len: u32) -> u32 {
    let len = if len > SCAN_BUF_LEN as u32 {
        SCAN_BUF_LEN as u32
    } else {
        len
    };
    let mut i = tw_skip_ows(v, len);
    let Some(sp) = SCRATCH.get_ptr(0) else {
        return LENGTH_INVALID;
    };
    // SAFETY: this CPU's `Scratch` from a successful per-CPU array lookup, valid for the
    // run; only read while `s` lives (`tw_skip_ows` below also only reads it).
    let s = unsafe { &*sp };
    let mut n: u64 = 0;
    let mut digits = 0;
    for _ in 0..MAX_LENGTH_DIGITS {
        if i >= len {
            break;
        }
        let b = byte(s, i);
        if !b.is_ascii_digit() {
            break;
        }
        n = n * 10 + (b - b'0') as u64;
        if n > MAX_BODY {
            return LENGTH_INVALID;
        }
        i += 1;
        digits += 1;
    }
    let i = tw_skip_ows(i, len);
    if digits == 0 || i >= len || !matches!(byte(s, i), b'\r' | b'\n') {
        return LENGTH_INVALID;
    }
    n as u32
}

/// Records the `Content-Length` value at `v`.
#[inline(always)]
fn content_length(s: &mut Scratch, v: u32) {
    let n = tw_content_length(v, s.len);
    if n == LENGTH_INVALID || s.framing & LENGTH_SEEN != 0 {
        s.framing |= FRAMING_LOST;
        return;
    }
    s.length = n;
    s.framing |= LENGTH_SEEN;
}

/// A header line, or the blank line that ends the headers (then the body is skipped).
#[inline(always)]
fn header_step(s: &mut Scratch, needles: &[HeaderNeedle; 2]) -> i64 {
    let (len, p) = (s.len, s.pos);
    if len > SCAN_BUF_LEN as u32 || p >= len || s.lines >= MAX_LINES {
        return s.stop(END_UNSYNCED);
    }
    s.lines += 1;
    let b = byte(s, p);
    if b == b'\n' || (b == b'\r' && p + 1 < len && byte(s, p + 1) == b'\n') {
        let after = p + if b == b'\n' { 1 } else { 2 };
        if s.framing & FRAMING_LOST != 0 {
            return s.stop(END_UNSYNCED);
        }
        let body_end = after as u64 + s.length as u64;
        let total = s.total as u64;
        if body_end == total {
            return s.stop(END_BOUNDARY);
        }
        if body_end > total {
            s.body_end = body_end as u32;
            return s.stop(END_BODY);
        }
        if body_end >= len as u64 {
            return s.stop(END_UNSYNCED);
        }
        s.pos = body_end as u32;
        s.state = STATE_START;
        return 0;
    }
    if b == b'\r' {
        return s.stop(END_UNSYNCED);
    }
    let mut c = Cursor::new(s, p);
    let w = [c.next(s), c.next(s), c.next(s), c.next(s)];
    // After a hit the scan only follows the framing: tokens are no longer located.
    let which = if s.hit != 0 {
        2
    } else if line_matches(&needles[0], p, len, w) {
        0
    } else if line_matches(&needles[1], p, len, w) {
        1
    } else {
        2
    };
    if which < 2 {
        let needle = &needles[which & 1];
        if let Some(v) = token::value_start(s, needle, p, len) {
            s.tok_start = v;
            s.tok_kind = needle.kind;
            s.state = STATE_TOKEN;
            return 0;
        }
    } else {
        // Most header names start with neither letter: two comparisons saved per line.
        let first = (w[0] as u8) | 0x20;
        if first == b'c' && line_matches(&CONTENT_LENGTH, p, len, w) {
            content_length(s, p + CONTENT_LENGTH.len);
        } else if first == b't' && line_matches(&TRANSFER_ENCODING, p, len, w) {
            s.framing |= FRAMING_LOST;
        }
    }
    next_line(s, p)
}

/// `bpf_loop` callback: one step; returns 1 to stop the loop. It ignores its arguments (the
/// state is in the scratch slot), so it is safe to call.
extern "C" fn step(_index: u32, _ctx: *mut c_void) -> i64 {
    let (Some(s), Some(cfg)) = (SCRATCH.get_ptr_mut(0), CONFIG.get(0)) else {
        return 1;
    };
    // SAFETY: this CPU's `Scratch` from a successful per-CPU array lookup, valid for the
    // run; `scan`, which calls `bpf_loop`, holds no reference to it, and no other Rust
    // reference to it is live during the step. The step calls `tw_*` global functions while
    // `s` is live; they reach the slot through their own lookup, inside the call (see
    // `Scratch`): the `tw_find_*`/`tw_skip_*`/`tw_version_tail`/`tw_content_length` ones only
    // read bytes the step does not change meanwhile, and what `tw_hash_token` writes is read
    // back through a fresh lookup, never through `s`.
    let s = unsafe { &mut *s };
    match s.state {
        STATE_START => start_step(s),
        STATE_HEADERS => header_step(s, &cfg.needles),
        STATE_TOKEN => {
            let resume = token::token_step(s, cfg);
            s.state = STATE_HEADERS;
            next_line(s, resume)
        }
        _ => s.stop(END_UNSYNCED),
    }
}

/// Scans the `len` bytes already copied into `SCRATCH` (of `total` to the segment's end).
/// The results are left in the scratch slot. Not inlined, and nothing but the scratch slot
/// carries over: the caller then reaches `bpf_loop` in one verifier state whatever path the
/// packet took, so the callback is verified once.
#[inline(never)]
pub fn scan(len: u32, total: u32) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's `Scratch` from a successful per-CPU array lookup, valid for the
    // run; the only reference to it (the caller's is dead), and dead before `bpf_loop` runs
    // the steps, which take their own.
    let s = unsafe { &mut *s };
    s.len = len;
    s.total = total;
    s.pos = 0;
    s.state = STATE_START;
    s.lines = 0;
    s.requests = 0;
    s.end = END_UNSYNCED;
    s.hit = 0;
    // SAFETY: `step` has the callback signature `bpf_loop` calls (`extern "C" fn(u32, *mut
    // c_void) -> i64`) and ignores the context argument, which is null; the helper calls it
    // at most `MAX_STEPS` times on this CPU and touches no other memory of the program.
    unsafe { bpf_loop(MAX_STEPS, step as *mut c_void, null_mut(), 0) };
}
