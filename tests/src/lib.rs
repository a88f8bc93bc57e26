//! Test support for tokenwall's privileged integration tests and demo: throwaway network
//! namespaces joined by veth, a real nginx, real curl, the real daemon, and packet builders for
//! `BPF_PROG_TEST_RUN`.

pub mod client;
pub mod daemon;
pub mod http;
pub mod jws;
pub mod legs;
pub mod model;
pub mod nginx;
pub mod nsserver;
pub mod packet;
pub mod progs;
pub mod testbed;
pub mod wire;
pub mod xdp_pass;

pub use client::{CurlResult, Req};
pub use daemon::{Daemon, tokenwall_bin};
pub use nginx::{Gateway, Nginx};
pub use nsserver::NsServer;
pub use testbed::Testbed;
