//! ES256 and ES384 compact JWS for the malleability tests: a signed token, the same token
//! with the other valid ECDSA signature `(r, n - s)`, and re-encodings of its signature
//! segment that lenient base64url decoders accept.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64};
use ring::{
    rand::SystemRandom,
    signature::{self, EcdsaKeyPair, KeyPair as _},
};

/// The order `n` of the P-256 group, big-endian.
const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
/// The order `n` of the P-384 group, big-endian.
const P384_N: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973";

/// An ECDSA JWS algorithm.
#[derive(Clone, Copy, Debug)]
pub enum Alg {
    /// P-256 with SHA-256.
    Es256,
    /// P-384 with SHA-384.
    Es384,
}

impl Alg {
    fn params(
        self,
    ) -> (
        &'static signature::EcdsaSigningAlgorithm,
        &'static signature::EcdsaVerificationAlgorithm,
        &'static str,
        &'static str,
    ) {
        match self {
            Alg::Es256 => (
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &signature::ECDSA_P256_SHA256_FIXED,
                P256_N,
                "ES256",
            ),
            Alg::Es384 => (
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &signature::ECDSA_P384_SHA384_FIXED,
                P384_N,
                "ES384",
            ),
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// `n - s` for big-endian numbers of equal length (`s < n`).
fn sub(n: &[u8], s: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; n.len()];
    let mut borrow = 0i16;
    for i in (0..n.len()).rev() {
        let d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        out[i] = (d + 256 * borrow) as u8;
    }
    out
}

/// A signed token and what the malleability tests derive from it.
pub struct Signed {
    /// `header.payload.signature`.
    pub token: String,
    /// The same signing input with `(r, n - s)`: also a valid signature.
    pub malleated: String,
    /// The signature segment with base64 padding appended.
    pub padded: String,
    /// The signature segment with its last character's unused low bits set (when the
    /// encoding has unused bits: ES256, not ES384).
    pub reencoded: Option<String>,
    /// Whether each of `token` and `malleated` verifies under the key.
    pub both_verify: bool,
}

/// Signs `claims` (JSON) with a fresh key of `alg` and derives the variants.
pub fn signed(alg: Alg, claims: &str) -> Signed {
    let (sign_alg, verify_alg, n, name) = alg.params();
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(sign_alg, &rng).expect("key");
    let key = EcdsaKeyPair::from_pkcs8(sign_alg, pkcs8.as_ref(), &rng).expect("key");
    let header = B64.encode(format!(r#"{{"alg":"{name}","typ":"at+jwt","kid":"k1"}}"#));
    let input = format!("{header}.{}", B64.encode(claims));
    let sig = key.sign(&rng, input.as_bytes()).expect("sign");
    let sig = sig.as_ref();
    let half = sig.len() / 2;
    let other = [&sig[..half], &sub(&hex(n), &sig[half..])[..]].concat();
    let public = signature::UnparsedPublicKey::new(verify_alg, key.public_key().as_ref().to_vec());
    let both_verify = public.verify(input.as_bytes(), sig).is_ok()
        && public.verify(input.as_bytes(), &other).is_ok()
        && other != sig;
    let enc = B64.encode(sig);
    // In an unpadded encoding of 64 bytes the last character carries 4 unused bits (96 bytes
    // have none): flipping the lowest one changes the text, not the bytes a lenient decoder
    // reads.
    let reencoded = (sig.len() % 3 != 0).then(|| {
        let mut last = enc.clone();
        let tail = last.pop().expect("a signature");
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let v = alphabet
            .iter()
            .position(|&c| c == tail as u8)
            .expect("base64url");
        last.push(alphabet[v ^ 1] as char);
        format!("{input}.{last}")
    });
    Signed {
        token: format!("{input}.{enc}"),
        malleated: format!("{input}.{}", B64.encode(&other)),
        padded: format!("{input}.{enc}=="),
        reencoded,
        both_verify,
    }
}
