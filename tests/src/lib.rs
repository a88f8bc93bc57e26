//! Test support for the privileged integration tests.

pub mod packet;
