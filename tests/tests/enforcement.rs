//! End to end on real interfaces: the daemon attached to a veth in a namespace this test
//! creates, a real nginx behind it, real curl in front. Needs root.

use std::time::{Duration, Instant};

use tokenwall_tests::{Daemon, Nginx, Req, Testbed};

const PORT: u16 = 8080;
const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(5);

fn setup(hook: &str, action: &str, extra: &[&str]) -> (Testbed, Nginx, Daemon) {
    let tb = Testbed::new().expect("testbed");
    let nginx = tb.start_nginx(PORT).expect("nginx");
    let mut args = vec!["--hook", hook, "--action", action, "--port", "8080"];
    args.extend_from_slice(extra);
    let d = tb.start_daemon(&args).expect("daemon");
    (tb, nginx, d)
}

fn token(tag: &str, len: usize) -> String {
    let mut t = format!("tw-{tag}-");
    while t.len() < len {
        t.push_str("AbCdEfGh0123456789_-");
    }
    t.truncate(len);
    t
}

#[test]
fn reset_turns_a_revoked_request_into_a_reset_within_2s() {
    let (tb, nginx, _d) = setup("xdp", "reset", &[]);
    let (good, bad) = (token("good", 300), token("bad", 300));
    assert!(tb.get(PORT, "/good-before", Some(&good), false, LONG).ok());
    assert!(
        tb.get(PORT, "/bad-before", Some(&bad), false, LONG).ok(),
        "not yet revoked"
    );
    let reply = tb.revoke(&bad).unwrap();
    assert_eq!(reply["in_kernel"], true);
    let r = tb.get(PORT, "/bad-after", Some(&bad), false, LONG);
    assert!(r.was_reset(), "expected a reset, got {r:?}");
    assert!(r.elapsed < SHORT, "reset took {:?}", r.elapsed);
    assert!(tb.get(PORT, "/good-after", Some(&good), false, LONG).ok());
    assert!(nginx.saw_path("/good-after") && nginx.saw_path("/bad-before"));
    assert!(
        !nginx.saw_path("/bad-after"),
        "the revoked request reached nginx"
    );
    assert!(tb.counter("reset") >= 1);
}
