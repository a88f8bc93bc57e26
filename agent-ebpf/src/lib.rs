//! Host-side placeholder so the agent can list this crate as a build dependency (and rebuild when
//! it changes); the kernel programs are the `tokenwall` binary target, built by `agent/build.rs`.
#![no_std]
