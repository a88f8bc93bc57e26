//! Per-packet decision: parse, place the segment in its flow, scan, act on the first revoked
//! token, report, and remember where the flow's stream is.

use agent_common::{
    SCAN_BUF_LEN,
    config::{Action, Config, tchar_bit},
    counters::{COUNTER_SLOTS, Counter, IFACE_SLOT_ENTRIES, IFACE_SLOTS},
    event::{HIT_PASSED_TO_STACK, HitEvent, SOCKET_ESTABLISHED, SOCKET_NONE},
    flow::FlowKey,
};
use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use aya_log_ebpf::debug;

use crate::{
    CONFIG, COUNTERS, EVENTS, IFACE_SLOT, SCRATCH,
    flows::{self, Position},
    packet::{self, Flow, Packet, TCP_RST, TCP_SYN, parse, socket_state},
    reset::{reply_reset, rewrite_to_reset},
    scan::{END_BODY, END_UNSYNCED, Scratch, scan},
};

/// What the hook should return.
pub enum Verdict {
    /// Let the packet through unchanged.
    Pass,
    /// Drop it.
    Drop,
    /// The packet was rewritten (into a reset) and must be delivered.
    Rewritten,
    /// The packet was turned into a reset for the client: send it back out.
    Bounce,
}

/// Where this packet's counters go, and whether monitoring is on.
#[derive(Clone, Copy)]
struct Meter {
    base: u32,
    on: bool,
}

impl Meter {
    #[inline(always)]
    fn new<P: Packet>(pkt: &P, cfg: &Config) -> Self {
        let slot = IFACE_SLOT
            .get(pkt.ifindex() & (IFACE_SLOT_ENTRIES - 1))
            .copied()
            .unwrap_or(0);
        let slot = if slot < IFACE_SLOTS { slot } else { 0 };
        Self {
            base: slot * COUNTER_SLOTS,
            on: cfg.monitoring != 0,
        }
    }

    #[inline(always)]
    fn count(self, c: Counter) {
        if self.on
            && let Some(v) = COUNTERS.get_ptr_mut(self.base + c as u32)
        {
            // SAFETY: the pointer came from a successful lookup in a per-CPU array: an aligned
            // u64 of this CPU's copy, valid for this program run, and no other reference to it
            // is live (runs on one CPU do not interleave, see `Scratch`; none is kept here).
            unsafe { *v += 1 };
        }
    }
}

/// The first revoked token of a segment.
struct Hit {
    hash: u64,
    kind: u32,
    matched: u16,
}

/// Sends a hit event; `time_ns` is boot time. The event is written in place in the ring
/// (no copy on the stack, which the TC program has little of to spare).
#[inline(always)]
fn report<P: Packet>(
    pkt: &P,
    flow: &Flow,
    cfg: &Config,
    hit: &Hit,
    (action, socket): (u32, u32),
    time_ns: u64,
) {
    let Some(mut entry) = EVENTS.reserve::<HitEvent>(0) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    let words = if flow.v6 { 4 } else { 1 };
    // SAFETY: `ev` points to a ring-buffer record the kernel reserved with the size of a
    // `HitEvent` at an 8-byte boundary (`reserve` asserts the alignment suffices), owned by
    // this program until `submit`: nothing else reads or writes it meanwhile. Fields are
    // written through raw places, no reference to the unwritten record is made, and the
    // address words go through `&raw mut` pointers with unaligned stores at offsets 0..16 of
    // the two 16-byte arrays. Every field is written before the record is submitted.
    unsafe {
        (*ev).time_ns = time_ns.wrapping_add(cfg.clock_offset_ns);
        (*ev).token_hash = hit.hash;
        (*ev).ifindex = pkt.ifindex();
        (*ev).action = action;
        (*ev).ip_version = if flow.v6 { 6 } else { 4 };
        (*ev).token_kind = hit.kind as u8;
        (*ev).sport = u16::from_be(flow.sport);
        (*ev).dport = u16::from_be(flow.dport);
        (*ev).matched = hit.matched;
        (*ev).socket = socket;
        (*ev)._reserved = 0;
        let (saddr, daddr) = (
            &raw mut (*ev).saddr as *mut u32,
            &raw mut (*ev).daddr as *mut u32,
        );
        for i in 0..4 {
            let (s, d) = if i < words {
                (flow.saddr[i], flow.daddr[i])
            } else {
                (0, 0)
            };
            saddr.add(i).write_unaligned(s);
            daddr.add(i).write_unaligned(d);
        }
    }
    entry.submit(0);
}

/// Acts on a hit. `None`: the packet passes (observe, or a reset left to the stack).
#[inline(always)]
fn act<P: Packet>(
    pkt: &P,
    flow: &Flow,
    cfg: &Config,
    m: Meter,
    s: &mut Scratch,
) -> Option<Verdict> {
    let hit = Hit {
        hash: s.hit_hash,
        kind: s.hit_kind,
        matched: s.hit as u16,
    };
    m.count(Counter::RevokedHits);
    debug!(pkt.ctx(), "revoked token {:x}", hit.hash);
    // SAFETY: a helper that takes no arguments and touches no memory of the program.
    let boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // Events are budgeted per CPU: under a flood the counters stay exact and each dropped
    // packet does not pay for a ring-buffer record and the reader's cache traffic.
    let send = m.on && s.take_event(boot_ns);
    if m.on && !send {
        m.count(Counter::EventsSuppressed);
    }
    let action = Action::from_u32(cfg.action);
    // The socket behind the hit decides a reset and is reported with every event.
    let socket = if action == Action::Reset || send {
        socket_state(pkt, flow)
    } else {
        0
    };
    let report = |code: u32| {
        if send {
            report(pkt, flow, cfg, &hit, (code, socket), boot_ns)
        }
    };
    match action {
        Action::Observe => {
            m.count(Counter::Observed);
            report(Action::Observe as u32);
            None
        }
        Action::Drop => {
            m.count(Counter::Dropped);
            report(Action::Drop as u32);
            Some(Verdict::Drop)
        }
        Action::Reset if socket == SOCKET_NONE => {
            // Nothing would accept the segment: the stack answers it with a reset.
            m.count(Counter::ResetNoSocket);
            report(HIT_PASSED_TO_STACK);
            None
        }
        Action::Reset if socket == SOCKET_ESTABLISHED && flow.flags & TCP_SYN == 0 => {
            report(Action::Reset as u32);
            if rewrite_to_reset(pkt, flow) {
                m.count(Counter::Reset);
                Some(Verdict::Rewritten)
            } else {
                m.count(Counter::Dropped);
                Some(Verdict::Drop)
            }
        }
        Action::Reset => {
            // A listener, a request socket or TIME-WAIT: passed on, the segment would create
            // the connection with the request queued. It never reaches the stack; the client
            // gets the reset.
            report(Action::Reset as u32);
            if reply_reset(pkt, flow) {
                m.count(Counter::ResetSent);
                Some(Verdict::Bounce)
            } else {
                m.count(Counter::Dropped);
                Some(Verdict::Drop)
            }
        }
    }
}

/// Copies the payload from `skip` into the scratch buffer; false when the packet could not
/// be read (it passes). Returns the bytes copied and the bytes to the segment's end.
#[inline(always)]
fn load<P: Packet>(pkt: &P, flow: &Flow, skip: u32, s: &mut Scratch) -> Option<(u32, u32)> {
    let total = flow.payload_len - skip;
    let len = if total > SCAN_BUF_LEN as u32 {
        SCAN_BUF_LEN as u32
    } else {
        total
    };
    // Launder through map memory so LLVM cannot merge this range check with the one above:
    // the verifier must see a size in [1, SCAN_BUF_LEN] on the register passed to the helper.
    // SAFETY: both pointers come from `&mut s.len`, a valid, aligned, initialised u32 of this
    // CPU's scratch slot that nothing else references meanwhile.
    let len = unsafe {
        core::ptr::write_volatile(&mut s.len, len);
        core::ptr::read_volatile(&s.len)
    };
    if len == 0 || len > SCAN_BUF_LEN as u32 {
        return None;
    }
    let dst = s.bytes_mut().get_mut(..len as usize)?;
    pkt.load(flow.payload as u32 + skip, dst)
        .then_some((len, total))
}

/// Records where the flow's stream is after a passed segment.
#[inline(always)]
fn remember(key: &FlowKey, s: &Scratch) {
    let known = s.known != 0;
    match s.end {
        END_BODY => flows::remember(
            key,
            Some(s.stream_seq.wrapping_add(s.skip).wrapping_add(s.body_end)),
            known,
        ),
        END_UNSYNCED => {
            s.count(Counter::Unsynced);
            flows::remember(key, None, known);
        }
        _ if known => flows::forget(key),
        _ => {}
    }
}

/// Runs the whole fast path for one packet: the part before the scan, the scan, and the part
/// after it (which starts from the packet and the scratch slot alone). Three subprograms, so
/// their stack frames are never live at once (the verifier allows 512 bytes for the deepest
/// chain of calls).
#[inline(always)]
pub fn run<P: Packet>(pkt: &P) -> Verdict {
    let Some((len, total)) = before_scan(pkt) else {
        return Verdict::Pass;
    };
    scan(len, total);
    after_scan(pkt)
}

/// Parses the packet, places it in its flow and copies the payload to scan; `None` when
/// there is nothing to scan (the packet passes).
#[inline(never)]
fn before_scan<P: Packet>(pkt: &P) -> Option<(u32, u32)> {
    let cfg = CONFIG.get(0)?;
    let m = Meter::new(pkt, cfg);
    m.count(Counter::Packets);
    pkt.prepare();
    let flow = parse(pkt)?;
    if !cfg.watches(u16::from_be(flow.dport)) {
        return None;
    }
    let key = flows::key_of(&flow);
    let syn = flow.flags & TCP_SYN != 0;
    if syn || flow.flags & TCP_RST != 0 {
        // A new connection (or the end of one) on the tuple: nothing carries over.
        flows::forget(&key);
        if !syn || flow.payload_len == 0 {
            return None;
        }
        m.count(Counter::SynData);
    }
    if flow.payload_len == 0 {
        return None;
    }
    // TCP Fast Open: the data of a SYN starts one sequence number after it.
    let stream_seq = flow.seq.wrapping_add(u32::from(syn));
    let (skip, known) = match flows::position(&key, stream_seq, flow.payload_len) {
        Position::InBody => {
            m.count(Counter::BodySegments);
            return None;
        }
        Position::Unsynced => {
            m.count(Counter::Unjudged);
            return None;
        }
        Position::At { skip, known } => (skip, known),
    };
    // Most segments that are not requests (TLS, bodies of flows started before the programs
    // were) are told by their first byte: neither an empty line nor a method.
    if skip == 0
        && !known
        && let Some(b) = packet::first_byte(pkt, flow.payload)
        && b != b'\r'
        && b != b'\n'
        && !tchar_bit(b)
    {
        return None;
    }
    let sp = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the pointer came from a successful lookup of a per-CPU array: this CPU's
    // `Scratch`, valid for this program run and used by no other run meanwhile (see
    // `Scratch`); no other reference to the slot is live while `s` is (the subprograms
    // called later take their own after this one is dead).
    let s = unsafe { &mut *sp };
    s.meter_base = m.base;
    s.meter_on = u32::from(m.on);
    // Read on the first lookup of an entry that can expire.
    s.now = 0;
    s.stream_seq = stream_seq;
    s.skip = skip;
    s.known = u32::from(known);
    load(pkt, &flow, skip, s)
}

/// Acts on what the scan found and remembers the flow's position.
#[inline(never)]
fn after_scan<P: Packet>(pkt: &P) -> Verdict {
    let (Some(cfg), Some(sp)) = (CONFIG.get(0), SCRATCH.get_ptr_mut(0)) else {
        return Verdict::Pass;
    };
    // SAFETY: as in `before_scan`: this CPU's `Scratch` from a successful per-CPU array
    // lookup, valid for the run, and the only reference to it while `s` lives (`scan` and its
    // callbacks have returned).
    let s = unsafe { &mut *sp };
    if s.hit == 0 && s.known == 0 && s.end != END_BODY && s.end != END_UNSYNCED {
        // A request boundary and nothing remembered: nothing to do.
        return Verdict::Pass;
    }
    let Some(flow) = parse(pkt) else {
        return Verdict::Pass;
    };
    let m = Meter {
        base: s.meter_base,
        on: s.meter_on != 0,
    };
    if s.hit != 0 {
        match act(pkt, &flow, cfg, m, s) {
            Some(v) => return v,
            None if Action::from_u32(cfg.action) != Action::Observe => return Verdict::Pass,
            None => {}
        }
    }
    remember(&flows::key_of(&flow), s);
    Verdict::Pass
}
