//! Tokens: JWT signing and verification (jsonwebtoken with a ring-backed crypto provider).

pub mod authority;
pub mod ring_provider;
pub mod validate;
