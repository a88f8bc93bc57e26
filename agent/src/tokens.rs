//! Tokens: JWT signing and verification (jsonwebtoken with a ring-backed crypto provider).

pub mod authority;
pub mod cache;
pub mod index;
pub mod jwks;
pub mod keys;
pub mod private_file;
pub mod refresh;
pub mod ring_provider;
pub mod signing;
pub mod validate;
