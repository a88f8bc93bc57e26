//! A token in a header value: where it starts, which of its bytes are hashed (its revocation
//! key and its JWS header segment, in one pass), and the lookups.
//! Mirrors `agent_common::scan::token`.

use agent_common::{
    MAX_HEADER_SEGMENT, SCAN_BUF_LEN,
    config::{
        BEARER_FOLD, BEARER_KEEP, BEARER_WORD, Config, HeaderNeedle, NEEDLE_BEARER, opens_jws,
    },
    counters::Counter,
    event::{MATCH_HEADER_SEGMENT, MATCH_TOKEN},
    hash::{SipState, tail_mask},
};
use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, maps::HashMap};

use crate::{
    CONFIG, REVOKED, REVOKED_HEADERS, SCRATCH,
    scan::{Scratch, launder},
    swar::{Cursor, byte, controls, dot_or_end, first_flag, tw_skip_ows},
};

/// Where the token of the header line at `p` (matched by `needle`) starts, if its value holds
/// one (`agent_common::scan::token::token_at`). The offset may equal `len`: a token that
/// starts at the end of the scanned bytes (skipped).
#[inline(always)]
pub fn value_start(s: &Scratch, needle: &HeaderNeedle, p: u32, len: u32) -> Option<u32> {
    let mut v = tw_skip_ows(p + (needle.len & 0x3f), len);
    if needle.kind == NEEDLE_BEARER {
        if v + 7 > len {
            return None;
        }
        let w = Cursor::new(s, v).next(s);
        if (w | BEARER_FOLD) & BEARER_KEEP != BEARER_WORD {
            return None;
        }
        v = tw_skip_ows(v + 7, len);
    }
    if v > len || (v < len && byte(s, v) <= 0x20) {
        return None;
    }
    Some(v)
}

/// The hashes of one token.
struct Keys {
    /// Hash of its revocation key; `None` when that is not inside the scanned bytes.
    key: Option<u64>,
    /// Hash of its JWS header segment, when asked for and present.
    header: Option<u64>,
    /// Where to look for the end of the line.
    resume: u32,
}

/// Where a word search stopped: the word's offset, the word, and the flagged byte in it.
struct Stop {
    q: u32,
    w: u64,
    k: u32,
}

/// Absorbs the words from `from` into `st` until the first word with a byte `flags` marks
/// (lowest flag exact) before `len`, which it returns unabsorbed; `None` when the scanned
/// bytes run out first. One exit per iteration, so the loop is verified once per call site.
#[inline(always)]
fn absorb_until(
    s: &Scratch,
    st: &mut SipState,
    from: u32,
    len: u32,
    flags: impl Fn(u64) -> u64,
) -> Option<Stop> {
    let mut c = Cursor::new(s, from);
    let mut q = from;
    for _ in 0..(SCAN_BUF_LEN / 8 + 1) {
        if q >= len {
            return None;
        }
        let w = c.next(s);
        let t = flags(w);
        if t != 0 {
            let k = first_flag(t);
            return (q + k < len).then_some(Stop { q, w, k });
        }
        if q + 8 > len {
            return None;
        }
        st.compress(w);
        q += 8;
    }
    None
}

/// The flags of `w` above byte `k`.
#[inline(always)]
fn above(t: u64, k: u32) -> u64 {
    t & !((2u64 << (k * 8 + 7)).wrapping_sub(1))
}

/// `tw_hash_token` result bit: `Scratch::key_hash` was written.
const HASHED_KEY: u32 = 1;
/// `tw_hash_token` result bit: `Scratch::header_hash` was written.
const HASHED_HEADER: u32 = 2;
/// `tw_hash_token` argument bit: the header segment is wanted.
const WANT_HEADER: u32 = 1;

/// The key's end in the word of a stop: its hash, and where the line search resumes.
#[inline(always)]
fn key_at(st: &SipState, at: &Stop, start: u32) -> (u64, u32) {
    let end = at.q + at.k;
    let h = st.finish(at.w & tail_mask(at.k as u64), (end - start) as u64);
    (h, end)
}

/// Hashes the token at `start` in one pass (`agent_common::scan::token::keys`): the words up
/// to its key's end (a JWS, `ey`/`ew`, at its second dot; anything else at its end) are
/// absorbed as they are searched; at the first dot a copy of the state finishes the header
/// segment when `WANT_HEADER` is set. A global BPF function, verified once, on its own: the
/// searches are single-exit loops with the offset laundered between them. Writes
/// `Scratch::key_hash` / `header_hash` / `hashed` (`HASHED_*`) and returns where the line
/// search resumes (the key's end, or `len`).
// SAFETY: the `tw_` name is unique in the object, so the unmangled symbol (a global BPF
// function needs one) clashes with no other.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tw_hash_token(start: u32, len: u32, want: u32) -> u32 {
    let (Some(sp), Some(cfg)) = (SCRATCH.get_ptr_mut(0), CONFIG.get(0)) else {
        return len;
    };
    // SAFETY: this CPU's `Scratch` from a successful per-CPU array lookup, valid for the
    // run; no other reference to it is used while `s` lives (the calling step's `&mut` is not
    // touched until this returns, and reads these outputs back through a fresh lookup; see
    // `Scratch`), and nothing called here reaches the slot.
    let s = unsafe { &mut *sp };
    s.hashed = 0;
    let len = if len > SCAN_BUF_LEN as u32 {
        SCAN_BUF_LEN as u32
    } else {
        len
    };
    if start >= len {
        return len;
    }
    let jws = start + 1 < len && opens_jws(byte(s, start), byte(s, start + 1));
    let header = want & WANT_HEADER != 0;
    let mut st = SipState::new(&cfg.key);
    if !jws && !header {
        let Some(end) = absorb_until(s, &mut st, start, len, controls) else {
            return len;
        };
        let (h, resume) = key_at(&st, &end, start);
        s.key_hash = h;
        s.hashed = HASHED_KEY;
        return resume;
    }
    let Some(first) = absorb_until(s, &mut st, start, len, dot_or_end) else {
        return len;
    };
    if byte(s, first.q + first.k) != b'.' {
        // The token ends before any dot: keyed whole.
        let (h, resume) = key_at(&st, &first, start);
        s.key_hash = h;
        s.hashed = HASHED_KEY;
        return resume;
    }
    let seg = first.q + first.k - start;
    if header && seg > 0 && seg <= MAX_HEADER_SEGMENT as u32 {
        s.header_hash = st.finish(first.w & tail_mask(first.k as u64), seg as u64);
        s.hashed = HASHED_HEADER;
    }
    // The key ends at the next flag: a JWS's second dot or the token's end. The lowest flag
    // above the dot is exact (no byte below it is a terminator to borrow from).
    let next = |w: u64| if jws { dot_or_end(w) } else { controls(w) };
    let rest = above(next(first.w), first.k);
    let stop = if rest != 0 {
        let k = first_flag(rest);
        (first.q + k < len).then_some(Stop {
            q: first.q,
            w: first.w,
            k,
        })
    } else if first.q + 8 > len {
        None
    } else {
        st.compress(first.w);
        let Some(from) = launder(first.q + 8) else {
            return len;
        };
        absorb_until(s, &mut st, from, len, next)
    };
    let Some(stop) = stop else {
        return len;
    };
    let (h, resume) = key_at(&st, &stop, start);
    s.key_hash = h;
    s.hashed |= HASHED_KEY;
    resume
}

/// Hashes the token at `start` (see `tw_hash_token`).
#[inline(always)]
fn hash_token(start: u32, len: u32, header: bool) -> Keys {
    let resume = tw_hash_token(start, len, if header { WANT_HEADER } else { 0 });
    // Re-read through a fresh lookup: tw_hash_token wrote these.
    let Some(sp) = SCRATCH.get_ptr(0) else {
        return Keys {
            key: None,
            header: None,
            resume: len,
        };
    };
    // SAFETY: this CPU's `Scratch` from a successful per-CPU array lookup, valid for the
    // run; only read, and only until the fields are copied out below.
    let s = unsafe { &*sp };
    Keys {
        key: (s.hashed & HASHED_KEY != 0).then_some(s.key_hash),
        header: (s.hashed & HASHED_HEADER != 0).then_some(s.header_hash),
        resume,
    }
}

/// Looks `hash` up in `map`; counts an expired entry. True on a live entry.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "by value, the key moves to another stack slot and the verified code changes"
)]
fn revoked(
    s: &mut Scratch,
    cfg: &Config,
    map: &HashMap<u64, agent_common::revoked::RevokedEntry>,
    hash: u64,
) -> bool {
    // SAFETY: `get` is unsafe because the agent may update or delete the entry while the
    // returned reference lives. The element's memory stays valid for the whole run (the
    // kernel frees hash-map elements after an RCU grace period; an update swaps in a new
    // element), the value is copied out at once and no reference is kept, and
    // `RevokedEntry` is plain integers.
    let Some(e) = (unsafe { map.get(&hash) }).copied() else {
        return false;
    };
    if e.expires_at != 0 && s.now == 0 {
        // The wall clock, read only for an entry that can expire.
        // SAFETY: a helper that takes no arguments and touches no memory of the program.
        let boot_ns = unsafe { bpf_ktime_get_boot_ns() };
        s.now = boot_ns.wrapping_add(cfg.clock_offset_ns) / 1_000_000_000;
    }
    if e.is_live(s.now) {
        return true;
    }
    s.count(Counter::ExpiredIgnored);
    false
}

/// The token step: hashes the token at `Scratch::tok_start`, counts it, looks it up and
/// records the first hit. Returns where to look for the end of its line.
#[inline(always)]
pub fn token_step(s: &mut Scratch, cfg: &Config) -> u32 {
    let len = s.len;
    let start = s.tok_start;
    if len > SCAN_BUF_LEN as u32 || start > len {
        return len;
    }
    let bearer = s.tok_kind == NEEDLE_BEARER;
    let header = bearer && cfg.header_revocations != 0;
    let k = hash_token(start, len, header);
    match k.key {
        Some(hash) => {
            s.count(if bearer {
                Counter::BearerTokens
            } else {
                Counter::ApiKeys
            });
            if revoked(s, cfg, &REVOKED, hash) {
                s.hit = MATCH_TOKEN as u32;
                s.hit_hash = hash;
                s.hit_kind = s.tok_kind;
            }
        }
        None => s.count(Counter::Skipped),
    }
    if s.hit == 0
        && let Some(hash) = k.header
        && revoked(s, cfg, &REVOKED_HEADERS, hash)
    {
        s.count(Counter::RevokedKeyHits);
        s.hit = MATCH_HEADER_SEGMENT as u32;
        s.hit_hash = hash;
        s.hit_kind = s.tok_kind;
    }
    k.resume
}
