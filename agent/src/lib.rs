//! tokenwall agent library: everything the `tokenwall` binary runs, exposed for the
//! integration tests and benchmarks. One folder per concept: `kernel` (programs and maps),
//! `revocation` (the durable store and rules), `tokens` (validation, issuance, keys),
//! `oauth` (protocol types), `service` (the use cases composing them), `monitoring`
//! (metrics, events, alerts, audit), `http` and `control` (the two APIs), `cli` and `daemon`.

pub mod cli;
pub mod clock;
pub mod control;
pub mod daemon;
pub mod http;
pub mod kernel;
pub mod monitoring;
pub mod oauth;
pub mod revocation;
pub mod service;
pub mod tokens;
pub mod types;
