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

/// Waits until the wall clock's unix second is past `second` (at most 2 s): for assertions
/// about "issued after" a moment recorded to the second.
pub fn wait_for_next_second(second: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while tokenwall_now() <= second {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock did not advance"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn tokenwall_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
