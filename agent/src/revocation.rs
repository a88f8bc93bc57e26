//! Revocations: the durable store, the keyed hash that names tokens in it, and the kernel maps
//! kept in step with it.

pub mod hash_key;
pub mod store;
