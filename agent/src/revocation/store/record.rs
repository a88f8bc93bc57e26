//! The record format of `revocations.log`: `u32 LE payload length | u32 LE CRC-32 | payload`,
//! the payload one JSON object.

use serde::{Deserialize, Serialize};

use super::{MAX_PAYLOAD, Revocation};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Record {
    Revoke(Revocation),
    Unrevoke {
        #[serde(with = "hex_u64")]
        hash: u64,
        reason: String,
        at: u64,
    },
}

pub(crate) mod hex_u64 {
    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:016x}"))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        u64::from_str_radix(&s, 16).map_err(D::Error::custom)
    }
}

pub(super) fn encode(rec: &Record) -> Vec<u8> {
    let payload = serde_json::to_vec(rec).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Parses one record at the start of `b`: the record and its length, or why it is bad and where
/// the bad record claims to end.
pub(super) fn parse_record(b: &[u8]) -> Result<(Record, usize), (String, usize)> {
    if b.len() < 8 {
        return Err(("short record header".into(), 8));
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    if len == 0 || len > MAX_PAYLOAD {
        return Err((format!("impossible length {len}"), 8));
    }
    let end = 8 + len;
    let Some(payload) = b.get(8..end) else {
        return Err(("payload runs past the end of the file".into(), end));
    };
    if crc32fast::hash(payload) != crc {
        return Err(("checksum mismatch".into(), end));
    }
    match serde_json::from_slice(payload) {
        Ok(rec) => Ok((rec, end)),
        Err(e) => Err((format!("unreadable record: {e}"), end)),
    }
}
