//! The real kernel programs loaded for `BPF_PROG_TEST_RUN` tests, with their own pins.

use std::{collections::HashMap, path::PathBuf};

use agent_common::{
    config::{Action, Config, HeaderNeedle, NEEDLE_BEARER, NEEDLE_RAW},
    hash::HashKey,
};
use tokenwall::kernel::Kernel;

/// The watched port of these tests.
pub const PORT: u16 = 8080;
/// XDP_DROP.
pub const XDP_DROP: i32 = 1;
/// XDP_PASS.
pub const XDP_PASS: i32 = 2;
/// XDP_TX.
pub const XDP_TX: i32 = 3;
/// TC_ACT_OK.
pub const TC_ACT_OK: i32 = 0;
/// TC_ACT_SHOT.
pub const TC_ACT_SHOT: i32 = 2;
/// TC_ACT_REDIRECT.
pub const TC_ACT_REDIRECT: i32 = 7;
/// TC_ACT_UNSPEC.
pub const TC_ACT_UNSPEC: i32 = -1;

/// Removes a test's pin directory even when an assertion fails.
pub struct Pins(pub PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Loads the programs with pins under `/sys/fs/bpf/twt-<pid>-<tag>`, watching [`PORT`] with the
/// `Authorization` bearer needle and `X-Api-Key`, header revocations on, monitoring on.
pub fn load(tag: &str, action: Action) -> (Kernel, Config, Pins) {
    let dir = PathBuf::from(format!("/sys/fs/bpf/twt-{}-{tag}", std::process::id()));
    let pins = Pins(dir.clone());
    let mut kernel =
        Kernel::load(&dir, log::LevelFilter::Off).expect("load the kernel programs (root?)");
    let mut cfg = Config {
        key: HashKey::from_bytes(*b"0123456789abcdef"),
        action: action as u32,
        monitoring: 1,
        ..Config::default()
    };
    cfg.ports[3] = PORT;
    cfg.needles[0] = HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).expect("needle");
    cfg.needles[1] = HeaderNeedle::new(b"X-Api-Key", NEEDLE_RAW).expect("needle");
    cfg.header_revocations = 1;
    kernel.set_config(&cfg).expect("config");
    (kernel, cfg, pins)
}

/// Every counter by name, summed over CPUs and interfaces.
pub fn counters(k: &Kernel) -> HashMap<&'static str, u64> {
    k.counters()
        .expect("counters")
        .into_iter()
        .map(|(c, v)| (c.name(), v))
        .collect()
}
