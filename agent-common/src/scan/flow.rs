//! Where a segment sits in its flow's byte stream, from the little the kernel remembers per
//! flow (a map entry keyed by the 4-tuple, [`crate::flow::FlowEntry`]): nothing (at a request
//! boundary, as far as it knows), the end of a body that runs past the segment that started it,
//! or that the framing was lost.

use super::{SegmentScan, StreamEnd, scan_segment};
use crate::config::HeaderNeedle;

/// What the kernel remembers about one client-to-server flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// Nothing: the next segment is judged from its first byte.
    Fresh,
    /// A request body ends at this sequence number: bytes before it are body.
    Body(u32),
    /// The framing was lost: every segment passes unjudged until a SYN or RST on the tuple.
    Unsynced,
}

/// How the kernel treats one data segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Entirely inside a body seen earlier: passed unjudged.
    Body,
    /// The flow is unsynced: passed unjudged (counted).
    Unjudged,
    /// Scanned from payload offset `skip` (where a body seen earlier ends).
    Scanned {
        /// Bytes of body before the scan start.
        skip: usize,
        /// What the scan found.
        scan: SegmentScan,
    },
}

/// Judges a data segment whose payload starts at sequence number `seq`.
pub fn judge(state: FlowState, seq: u32, payload: &[u8], needles: &[HeaderNeedle; 2]) -> Judgement {
    let skip = match state {
        FlowState::Unsynced => return Judgement::Unjudged,
        FlowState::Body(end) => {
            let ahead = end.wrapping_sub(seq) as i32;
            if ahead > 0 && ahead as usize >= payload.len() {
                return Judgement::Body;
            }
            ahead.max(0) as usize
        }
        FlowState::Fresh => 0,
    };
    Judgement::Scanned {
        skip,
        scan: scan_segment(&payload[skip..], needles),
    }
}

/// The flow's state after a segment judged `j` was passed to the stack (a dropped or reset
/// segment changes nothing; a SYN or RST makes it [`FlowState::Fresh`]).
pub fn after_pass(state: FlowState, seq: u32, j: &Judgement) -> FlowState {
    match j {
        Judgement::Body | Judgement::Unjudged => state,
        Judgement::Scanned { skip, scan } => match scan.end {
            StreamEnd::NotRequest | StreamEnd::Boundary => FlowState::Fresh,
            StreamEnd::Unsynced => FlowState::Unsynced,
            StreamEnd::Body(off) => {
                FlowState::Body(seq.wrapping_add(*skip as u32).wrapping_add(off as u32))
            }
        },
    }
}
