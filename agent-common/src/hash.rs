//! The keyed token hash: SipHash-1-3 with a 128-bit secret key, 64-bit output.
//!
//! The kernel and the agent must agree bit for bit, so both use [`SipState`]: the kernel feeds it
//! little-endian words read from its scan buffer, the agent feeds it a byte slice through
//! [`token_hash`]. SipHash is a PRF: without the key, a hash reveals nothing about the token and
//! nobody can craft a token that lands on a chosen hash.

/// SipHash-1-3 state (one compression round per word, three finalization rounds).
#[derive(Clone, Copy, Debug)]
pub struct SipState {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

/// A 128-bit hash key as two little-endian words, the layout SipHash specifies.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashKey {
    /// Key bytes 0..8, little-endian.
    pub k0: u64,
    /// Key bytes 8..16, little-endian.
    pub k1: u64,
}

impl HashKey {
    /// Builds a key from 16 raw bytes.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        let mut lo = [0u8; 8];
        let mut hi = [0u8; 8];
        let mut i = 0;
        while i < 8 {
            lo[i] = b[i];
            hi[i] = b[8 + i];
            i += 1;
        }
        Self {
            k0: u64::from_le_bytes(lo),
            k1: u64::from_le_bytes(hi),
        }
    }
}

impl SipState {
    /// Starts a hash under `key`.
    #[inline(always)]
    pub const fn new(key: &HashKey) -> Self {
        Self {
            v0: key.k0 ^ 0x736f_6d65_7073_6575,
            v1: key.k1 ^ 0x646f_7261_6e64_6f6d,
            v2: key.k0 ^ 0x6c79_6765_6e65_7261,
            v3: key.k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Absorbs one full 8-byte block (little-endian).
    #[inline(always)]
    pub fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.v0 ^= m;
    }

    /// Absorbs the final block: the `len % 8` trailing bytes (little-endian, zero-filled) and
    /// the total length, then returns the 64-bit hash.
    #[inline(always)]
    pub fn finish(mut self, tail: u64, total_len: u64) -> u64 {
        self.compress(tail | (total_len << 56));
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// Masks a little-endian word down to its first `n` bytes (`n < 8`).
#[inline(always)]
pub const fn tail_mask(n: u64) -> u64 {
    (1u64 << (n * 8)).wrapping_sub(1)
}

/// Hashes a whole token; the agent uses this to compute the kernel map keys.
#[cfg(not(target_arch = "bpf"))]
pub fn token_hash(key: &HashKey, token: &[u8]) -> u64 {
    let mut st = SipState::new(key);
    let mut blocks = token.chunks_exact(8);
    for b in &mut blocks {
        st.compress(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    }
    let rest = blocks.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    st.finish(u64::from_le_bytes(tail), token.len() as u64)
}

/// How many leading bytes of `token` its revocation is keyed on.
///
/// A JWS (RFC 7515 compact form) is keyed on its *signing input*, the bytes before its second
/// `.` (`header.payload`): every signature of the same signed content, including the second
/// ECDSA signature `(r, n - s)` and any re-encoding of the signature segment, has the same key,
/// so revoking one revokes them all. A token counts as a JWS when it starts with `ey` or `ew`
/// (the base64url of `{` followed by `"` or JSON whitespace: the start of every JOSE header)
/// and contains at least two dots. Every other token (opaque tokens, API keys) is keyed whole.
/// The kernel implements the same rule; the differential tests hold both to it.
pub fn revocation_key_len(token: &[u8]) -> usize {
    if !(token.starts_with(b"ey") || token.starts_with(b"ew")) {
        return token.len();
    }
    let mut dots = token.iter().enumerate().filter(|(_, b)| **b == b'.');
    match (dots.next(), dots.next()) {
        (Some(_), Some((second, _))) => second,
        _ => token.len(),
    }
}

/// The keyed hash a token is revoked under (its fingerprint): the hash of its first
/// [`revocation_key_len`] bytes.
#[cfg(not(target_arch = "bpf"))]
pub fn revocation_hash(key: &HashKey, token: &[u8]) -> u64 {
    token_hash(key, &token[..revocation_key_len(token)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::hash::Hasher;
    use proptest::prelude::*;

    fn oracle(key: &[u8; 16], data: &[u8]) -> u64 {
        let mut h = siphasher::sip::SipHasher13::new_with_key(key);
        h.write(data);
        h.finish()
    }

    #[test]
    fn matches_siphash13_on_every_length_up_to_64() {
        let key: [u8; 16] = core::array::from_fn(|i| i as u8);
        let data: [u8; 64] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        for n in 0..=64 {
            assert_eq!(
                token_hash(&HashKey::from_bytes(key), &data[..n]),
                oracle(&key, &data[..n]),
                "length {n}"
            );
        }
    }

    #[test]
    fn key_changes_the_hash() {
        let a = token_hash(&HashKey::from_bytes([1; 16]), b"same-token");
        let b = token_hash(&HashKey::from_bytes([2; 16]), b"same-token");
        assert_ne!(a, b);
    }

    #[test]
    fn a_jws_is_keyed_on_its_signing_input_and_anything_else_whole() {
        assert_eq!(revocation_key_len(b"eyJhbGci.eyJzdWIi.c2ln"), 17);
        assert_eq!(revocation_key_len(b"ewogImFsZyI.e30.sig.extra"), 15);
        assert_eq!(revocation_key_len(b"eyJh..sig"), 5, "an empty payload");
        assert_eq!(revocation_key_len(b"eyJhbGci.only-one-dot"), 21);
        assert_eq!(
            revocation_key_len(b"sk.live.secret"),
            14,
            "opaque tokens stay whole"
        );
        assert_eq!(revocation_key_len(b"e.x.y"), 5);
        assert_eq!(revocation_key_len(b""), 0);
        let key = HashKey::from_bytes([9; 16]);
        assert_eq!(
            revocation_hash(&key, b"eyJh.eyJz.sig-one"),
            revocation_hash(&key, b"eyJh.eyJz.other-signature=="),
        );
        assert_ne!(
            revocation_hash(&key, b"sk.live.one"),
            revocation_hash(&key, b"sk.live.two"),
        );
    }

    proptest! {
        #[test]
        fn equals_reference_siphash13(key in any::<[u8; 16]>(), data in proptest::collection::vec(any::<u8>(), 0..3000)) {
            prop_assert_eq!(token_hash(&HashKey::from_bytes(key), &data), oracle(&key, &data));
        }

        #[test]
        fn word_feeding_equals_slice_feeding(key in any::<[u8; 16]>(), data in proptest::collection::vec(any::<u8>(), 0..600)) {
            // The kernel reads whole words past the token end and masks the tail; do the same.
            let key = HashKey::from_bytes(key);
            let mut padded = data.clone();
            padded.extend_from_slice(&[0xAA; 8]);
            let mut st = SipState::new(&key);
            let blocks = data.len() / 8;
            for i in 0..blocks {
                st.compress(u64::from_le_bytes(padded[i * 8..i * 8 + 8].try_into().unwrap()));
            }
            let tail = u64::from_le_bytes(padded[blocks * 8..blocks * 8 + 8].try_into().unwrap())
                & tail_mask((data.len() % 8) as u64);
            prop_assert_eq!(st.finish(tail, data.len() as u64), token_hash(&key, &data));
        }
    }
}
