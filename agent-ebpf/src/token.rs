//! A token in a header value: where it starts, which of its bytes are hashed (its revocation
//! key and its JWS header segment, in one pass), and the lookups.
//! Mirrors `agent_common::scan::token`.

use agent_common::{
    MAX_HEADER_SEGMENT, SCAN_BUF_LEN, SCAN_MASK,
    config::{
        BEARER_FOLD, BEARER_KEEP, BEARER_WORD, Config, HeaderNeedle, NEEDLE_BEARER, opens_jws,
    },
    counters::Counter,
    event::{MATCH_HEADER_SEGMENT, MATCH_TOKEN},
    hash::{SipState, tail_mask},
};
use aya_ebpf::maps::HashMap;

use crate::{
    CONFIG, REVOKED, REVOKED_HEADERS, SCRATCH,
    scan::{Scratch, launder},
    swar::{Cursor, byte, tw_find_control, tw_find_dot_or_end, tw_skip_ows},
};

/// Where the token of the header line at `p` (matched by `needle`) starts, if its value holds
/// one (`agent_common::scan::token::token_at`). The offset may equal `len`: a token that
/// starts at the end of the scanned bytes (skipped).
#[inline(always)]
pub fn value_start(s: &Scratch, needle: &HeaderNeedle, p: u32, len: u32) -> Option<u32> {
    let v = launder(p + (needle.len & 0x3f))?;
    let mut v = launder(tw_skip_ows(v, len))?;
    if needle.kind == NEEDLE_BEARER {
        if v + 7 > len {
            return None;
        }
        let w = Cursor::new(s, v).next(s);
        if (w | BEARER_FOLD) & BEARER_KEEP != BEARER_WORD {
            return None;
        }
        let after = launder(v + 7)?;
        v = launder(tw_skip_ows(after, len))?;
    }
    if v < len && byte(s, v) <= 0x20 {
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

/// Compresses `n` full words starting at `off` into `st` (bounded loop).
#[inline(always)]
fn absorb<const MAX: usize>(s: &Scratch, st: &mut SipState, off: u32, n: u32) {
    let mut c = Cursor::new(s, off);
    for i in 0..MAX as u32 {
        if i >= n {
            break;
        }
        st.compress(c.next(s));
    }
}

/// Hashes `len` bytes at `off` after the `done` full words `st` already holds.
#[inline(always)]
fn finish(s: &Scratch, mut st: SipState, off: u32, done: u32, len: u32) -> u64 {
    absorb::<{ SCAN_BUF_LEN / 8 }>(s, &mut st, off + 8 * done, len / 8 - done);
    let w = Cursor::new(s, off + 8 * (len / 8)).next(s);
    st.finish(w & tail_mask((len % 8) as u64), len as u64)
}

/// `tw_hash` result bit: `Scratch::key_hash` was written.
const HASHED_KEY: u32 = 1;
/// `tw_hash` result bit: `Scratch::header_hash` was written.
const HASHED_HEADER: u32 = 2;

/// Hashes the token at `start`: its header segment (the first `seg` bytes, when `seg` is not
/// zero) and its key (the first `key_len` bytes, when not `u32::MAX`), sharing one SipHash
/// state over the header's full words. A global BPF function: verified once, on its own.
/// Writes `Scratch::key_hash` / `header_hash` and returns the `HASHED_*` bits written.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn tw_hash(start: u32, seg: u32, key_len: u32) -> u32 {
    let (Some(sp), Some(cfg)) = (SCRATCH.get_ptr_mut(0), CONFIG.get(0)) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot; the caller holds no reference across this call.
    let s = unsafe { &mut *sp };
    let (start, seg) = (start & SCAN_MASK, seg & SCAN_MASK);
    let mut st = SipState::new(&cfg.key);
    let mut done = 0;
    let mut out = 0;
    if seg != 0 && seg <= MAX_HEADER_SEGMENT as u32 {
        absorb::<{ MAX_HEADER_SEGMENT / 8 }>(s, &mut st, start, seg / 8);
        done = seg / 8;
        s.header_hash = finish(s, st, start, done, seg);
        out |= HASHED_HEADER;
    }
    if key_len <= SCAN_BUF_LEN as u32 && key_len >= seg {
        s.key_hash = finish(s, st, start, done, key_len);
        out |= HASHED_KEY;
    }
    out
}

/// Hashes the token at `start` (`agent_common::scan::token::keys`). Word searches find where
/// its key ends (a JWS, `ey`/`ew`, at its second dot; anything else at its end) and its first
/// dot; then one SipHash state absorbs the key's full words, and when the header segment is
/// asked for, a copy of the state after the header's full words finishes it at the first dot.
#[inline(always)]
fn hash_token(s: &Scratch, start: u32, len: u32, header: bool) -> Keys {
    let jws = start + 1 < len && opens_jws(byte(s, start), byte(s, start + 1));
    let mut dot = len;
    let cut = if jws || header {
        let p = tw_find_dot_or_end(start, len);
        if p < len && byte(s, p) == b'.' {
            dot = p;
            if jws {
                tw_find_dot_or_end(p + 1, len)
            } else {
                tw_find_control(p + 1, len)
            }
        } else {
            p
        }
    } else {
        tw_find_control(start, len)
    };
    let seg = if header && dot < len { dot - start } else { 0 };
    let key_len = if cut < len { cut - start } else { u32::MAX };
    let done = tw_hash(start, seg, key_len);
    // Re-read through a fresh lookup: tw_hash wrote these.
    let Some(sp) = SCRATCH.get_ptr(0) else {
        return Keys {
            key: None,
            header: None,
            resume: len,
        };
    };
    // SAFETY: this CPU's scratch slot, read only.
    let s = unsafe { &*sp };
    Keys {
        key: (done & HASHED_KEY != 0).then_some(s.key_hash),
        header: (done & HASHED_HEADER != 0).then_some(s.header_hash),
        resume: cut,
    }
}

/// Looks `hash` up in `map`; counts an expired entry. True on a live entry.
#[inline(always)]
fn revoked(
    s: &Scratch,
    map: &HashMap<u64, agent_common::revoked::RevokedEntry>,
    hash: u64,
) -> bool {
    // SAFETY: a read-only lookup; the value is copied out before the map can change it.
    match unsafe { map.get(&hash) } {
        Some(e) if e.is_live(s.now) => true,
        Some(_) => {
            s.count(Counter::ExpiredIgnored);
            false
        }
        None => false,
    }
}

/// The token step: hashes the token at `Scratch::tok_start`, counts it, looks it up and
/// records the first hit. Returns where to look for the end of its line.
#[inline(always)]
pub fn token_step(s: &mut Scratch, cfg: &Config) -> u32 {
    let len = s.len;
    let Some(start) = launder(s.tok_start) else {
        return len;
    };
    if len > SCAN_BUF_LEN as u32 {
        return len;
    }
    let bearer = s.tok_kind == NEEDLE_BEARER;
    let header = bearer && cfg.header_revocations != 0;
    let k = hash_token(s, start, len, header);
    match k.key {
        Some(hash) => {
            s.count(if bearer {
                Counter::BearerTokens
            } else {
                Counter::ApiKeys
            });
            if revoked(s, &REVOKED, hash) {
                s.hit = MATCH_TOKEN as u32;
                s.hit_hash = hash;
                s.hit_kind = s.tok_kind;
            }
        }
        None => s.count(Counter::Skipped),
    }
    if s.hit == 0
        && let Some(hash) = k.header
        && revoked(s, &REVOKED_HEADERS, hash)
    {
        s.count(Counter::RevokedKeyHits);
        s.hit = MATCH_HEADER_SEGMENT as u32;
        s.hit_hash = hash;
        s.hit_kind = s.tok_kind;
    }
    k.resume
}
