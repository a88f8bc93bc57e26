//! tokenwall agent library: everything the `tokenwall` binary runs, exposed for the
//! integration tests and benchmarks.

pub mod alerts;
pub mod audit;
pub mod cli;
pub mod client;
pub mod config_file;
pub mod control;
pub mod daemon;
pub mod hashkey;
pub mod http;
pub mod kernel;
pub mod lifecycle;
pub mod metrics;
pub mod monitoring;
pub mod oauth;
pub mod rules;
pub mod service;
pub mod sessions;
pub mod store;
pub mod tokens;
pub mod top;
pub mod types;
pub mod until;
