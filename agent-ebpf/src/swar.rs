//! Word-at-a-time byte classification ("SIMD within a register") over the scratch buffer.
//!
//! A mask flags a byte by setting its bit 7. The cheap detectors (`x - 0x01.. & !x & 0x80..`)
//! are exact only for the lowest flagged byte (a borrow can set a false flag above a true
//! one), which is all a "find the first" search needs. The `exact` ones flag every byte
//! correctly (no carry crosses a byte), for when more than the first flag is used.

use agent_common::SCAN_MASK;

use agent_common::SCAN_BUF_LEN;

use crate::{
    SCRATCH,
    scan::{Scratch, WORD_MASK},
};

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;
const LOWS: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// Index of the lowest flagged byte of a mask (flags in bit 7 of each byte).
#[inline(always)]
pub fn first_flag(t: u64) -> u32 {
    let lowest = t & t.wrapping_neg();
    ((lowest >> 7).wrapping_mul(0x0001_0203_0405_0607) >> 56) as u32
}

/// Flags bytes equal to `\n`; the lowest flag is exact.
#[inline(always)]
pub fn newlines(w: u64) -> u64 {
    let x = w ^ (ONES * b'\n' as u64);
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Flags bytes below 0x21 (space, CR, LF, tab, controls); the lowest flag is exact.
#[inline(always)]
pub fn controls(w: u64) -> u64 {
    w.wrapping_sub(ONES * 0x21) & !w & HIGHS
}

/// Flags every byte equal to `c`, exactly.
#[inline(always)]
pub fn exact_eq(w: u64, c: u8) -> u64 {
    let x = w ^ (ONES * c as u64);
    !(((x & LOWS) + LOWS) | x) & HIGHS
}

/// Flags every byte that is neither CR nor LF, exactly.
#[inline(always)]
pub fn not_crlf(w: u64) -> u64 {
    !(exact_eq(w, b'\r') | exact_eq(w, b'\n')) & HIGHS
}

/// Flags every byte that is neither a space nor a tab, exactly.
#[inline(always)]
pub fn not_ows(w: u64) -> u64 {
    !(exact_eq(w, b' ') | exact_eq(w, b'\t')) & HIGHS
}

/// One byte of the buffer. The index passes through the stack (volatile) so LLVM cannot drop
/// the mask as implied by an earlier check the verifier may not have seen on this register.
#[inline(always)]
pub fn byte(s: &Scratch, i: u32) -> u8 {
    // SAFETY: `&i` is a valid, aligned, initialised local; volatile only to hide its value.
    let i = unsafe { core::ptr::read_volatile(&i) };
    let p = s.words.as_ptr() as *const u8;
    // SAFETY: `i & SCAN_MASK` is below `SCAN_BUF_LEN`, inside the `SCAN_BUF_LEN + SCAN_PAD`
    // bytes of `words` that `s` borrows; any byte of a `u64` is a valid `u8`.
    unsafe { *p.add((i & SCAN_MASK) as usize) }
}

#[inline(always)]
fn aligned(s: &Scratch, k: u32) -> u64 {
    s.words[(k & WORD_MASK) as usize]
}

/// Reads consecutive 8-byte words starting at any byte offset, one aligned load per word.
pub struct Cursor {
    k: u32,
    shift: u32,
    lo: u64,
}

impl Cursor {
    /// A cursor at byte offset `off` (masked into the buffer; the offset passes through the
    /// stack so LLVM cannot drop the mask as implied by a check the verifier may not share).
    #[inline(always)]
    pub fn new(s: &Scratch, off: u32) -> Self {
        // SAFETY: `&off` is a valid, aligned, initialised local; volatile only to hide its value.
        let off = unsafe { core::ptr::read_volatile(&off) } & SCAN_MASK;
        Self {
            k: off >> 3,
            shift: (off & 7) * 8,
            lo: aligned(s, off >> 3),
        }
    }

    /// The next eight bytes, little-endian.
    #[inline(always)]
    pub fn next(&mut self, s: &Scratch) -> u64 {
        let hi = s.words[((self.k & WORD_MASK) + 1) as usize];
        // (hi << 1) << (63 - shift) is hi << (64 - shift) without a 64-bit shift when shift == 0.
        let w = (self.lo >> self.shift) | ((hi << 1) << (63 - self.shift));
        self.lo = hi;
        self.k += 1;
        w
    }
}

/// The offset of the first byte in `[from, len)` that `flags` marks (exact for the lowest
/// flag is enough), or `len` when there is none.
#[inline(always)]
fn find(s: &Scratch, from: u32, len: u32, flags: impl Fn(u64) -> u64) -> u32 {
    let mut c = Cursor::new(s, from);
    let mut q = from;
    for _ in 0..(agent_common::SCAN_BUF_LEN / 8) {
        if q >= len {
            return len;
        }
        let t = flags(c.next(s));
        if t != 0 {
            let k = q + first_flag(t);
            return if k < len { k } else { len };
        }
        q += 8;
    }
    len
}

/// Words a search looks at inline before it calls its global function.
const INLINE_WORDS: u32 = 4;

/// The first byte in `[from, len)` that `flags` marks, or `len`: the first
/// [`INLINE_WORDS`] words are tested inline (most header lines and methods end there), the
/// rest by `rest`, the global function of the same search.
#[inline(always)]
pub fn find_near(
    s: &Scratch,
    from: u32,
    len: u32,
    flags: impl Fn(u64) -> u64,
    rest: extern "C" fn(u32, u32) -> u32,
) -> u32 {
    let mut c = Cursor::new(s, from);
    let mut q = from;
    for _ in 0..INLINE_WORDS {
        if q >= len {
            return len;
        }
        let t = flags(c.next(s));
        if t != 0 {
            let k = q + first_flag(t);
            return if k < len { k } else { len };
        }
        q += 8;
    }
    rest(q, len)
}

/// Flags dots and token terminators; the lowest flag is exact.
#[inline(always)]
pub fn dot_or_end(w: u64) -> u64 {
    exact_eq(w, b'.') | controls(w)
}

/// Defines a search of the scratch buffer as a global BPF function: the verifier checks it
/// once, on its own, instead of at every place a step searches; its result reaches the caller
/// as an unknown value in `[0, SCAN_BUF_LEN]` (`len` when nothing is found).
macro_rules! global_find {
    ($(#[$doc:meta] $name:ident => $flags:ident;)*) => {$(
        #[$doc]
        // SAFETY: each `tw_` name is unique in the object, so the unmangled symbol (a global
        // BPF function needs one) clashes with no other.
        #[unsafe(no_mangle)]
        #[inline(never)]
        pub extern "C" fn $name(from: u32, len: u32) -> u32 {
            let len = if len > SCAN_BUF_LEN as u32 { SCAN_BUF_LEN as u32 } else { len };
            let Some(s) = SCRATCH.get_ptr(0) else {
                return len;
            };
            // SAFETY: this CPU's `Scratch` from a successful per-CPU array lookup, valid for
            // the run; only read while `s` lives, and the search calls nothing that writes it.
            let s = unsafe { &*s };
            find(s, from, len, $flags)
        }
    )*};
}

global_find! {
    /// The first LF in `[from, len)`, or `len`.
    tw_find_newline => newlines;
    /// The first byte below 0x21 in `[from, len)`, or `len`.
    tw_find_control => controls;
    /// The first byte that is not CR or LF in `[from, len)`, or `len`.
    tw_skip_crlf => not_crlf;
    /// The first byte that is not a space or a tab in `[from, len)`, or `len`.
    tw_skip_ows => not_ows;
}
