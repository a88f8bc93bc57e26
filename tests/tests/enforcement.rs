//! End to end on real interfaces: the daemon attached to a veth in a namespace this test
//! creates, a real nginx behind it, real curl in front. Needs root.

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tokenwall_tests::{Daemon, Nginx, Req, Testbed, tokenwall_bin};

const PORT: u16 = 8080;
const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(5);

fn setup(hook: &str, action: &str) -> (Testbed, Nginx, Daemon) {
    let tb = Testbed::new().expect("testbed");
    let nginx = tb.start_nginx(PORT).expect("nginx");
    let d = tb
        .start_daemon(&[
            "--hook",
            hook,
            "--action",
            action,
            "--port",
            "8080",
            "--api-key-header",
            "X-Api-Key",
        ])
        .expect("daemon");
    (tb, nginx, d)
}

/// A token-shaped string of exactly `len` bytes.
fn token(tag: &str, len: usize) -> String {
    let mut t = format!("tw-{tag}-");
    while t.len() < len {
        t.push_str("AbCdEfGh0123456789_-");
    }
    t.truncate(len);
    t
}

fn req<'a>(path: &'a str, token: Option<&'a str>) -> Req<'a> {
    Req {
        path,
        token,
        headers: Vec::new(),
    }
}

/// Under `reset`: a good token is served, a revoked one gets a reset within 2 s and never
/// reaches nginx.
fn assert_reset_enforced(tb: &Testbed, nginx: &Nginx, ip6: bool) {
    let (good, bad) = (token("good", 300), token("bad", 300));
    assert!(tb.get(PORT, "/good-before", Some(&good), ip6, LONG).ok());
    assert!(
        tb.get(PORT, "/bad-before", Some(&bad), ip6, LONG).ok(),
        "not yet revoked"
    );
    let reply = tb.revoke(&bad).unwrap();
    assert_eq!(reply["in_kernel"], true);
    let r = tb.get(PORT, "/bad-after", Some(&bad), ip6, LONG);
    assert!(r.was_reset(), "expected a reset, got {r:?}");
    assert!(r.elapsed < SHORT, "reset took {:?}", r.elapsed);
    assert!(tb.get(PORT, "/good-after", Some(&good), ip6, LONG).ok());
    assert!(nginx.saw_path("/good-after") && nginx.saw_path("/bad-before"));
    assert!(
        nginx.never_saw("/bad-after"),
        "the revoked request reached nginx"
    );
    assert!(tb.counter("reset") >= 1);
}

/// Under `drop`: the revoked request never reaches nginx; the client times out.
fn assert_drop_enforced(tb: &Testbed, nginx: &Nginx) {
    let (good, bad) = (token("good", 200), token("bad", 200));
    tb.revoke(&bad).unwrap();
    let r = tb.get(PORT, "/dropped", Some(&bad), false, SHORT);
    assert_eq!(r.exit, 28, "expected a timeout, got {r:?}");
    assert!(tb.get(PORT, "/served", Some(&good), false, LONG).ok());
    assert!(nginx.saw_path("/served"));
    assert!(
        nginx.never_saw("/dropped"),
        "the revoked request reached nginx"
    );
    assert!(tb.counter("dropped") >= 1);
}

#[test]
fn xdp_native_reset() {
    let (tb, nginx, _d) = setup("xdp", "reset");
    assert_reset_enforced(&tb, &nginx, false);
}

#[test]
fn xdp_native_drop_never_reaches_the_server() {
    let (tb, nginx, _d) = setup("xdp", "drop");
    assert_drop_enforced(&tb, &nginx);
}

#[test]
fn xdp_generic_reset_and_drop() {
    let (tb, nginx, _d) = setup("xdp-generic", "reset");
    assert_reset_enforced(&tb, &nginx, false);
    let (tb, nginx, _d) = setup("xdp-generic", "drop");
    assert_drop_enforced(&tb, &nginx);
}

#[test]
fn tc_reset_and_drop() {
    let (tb, nginx, _d) = setup("tc", "reset");
    assert_reset_enforced(&tb, &nginx, false);
    let (tb, nginx, _d) = setup("tc", "drop");
    assert_drop_enforced(&tb, &nginx);
}

#[test]
fn ipv6_reset() {
    let (tb, nginx, _d) = setup("xdp", "reset");
    assert_reset_enforced(&tb, &nginx, true);
}

#[test]
fn observe_serves_counts_and_streams_the_event() {
    let (tb, nginx, _d) = setup("xdp", "observe");
    let bad = token("watched", 250);
    let fp = tb.revoke(&bad).unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let mut events = Command::new(tokenwall_bin().unwrap())
        .args(["events", "--control-socket"])
        .arg(tb.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tb.wait_for_followers("event_followers", 1);
    assert!(
        tb.get(PORT, "/observed", Some(&bad), false, LONG).ok(),
        "observe must serve"
    );
    assert!(nginx.saw_path("/observed"));
    assert_eq!(tb.counter("observed"), 1);
    assert_eq!(tb.counter("revoked_hits"), 1);
    let (tx, rx) = std::sync::mpsc::channel();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(LONG).expect("an event line");
    let _ = events.kill();
    let _ = events.wait();
    let ev: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(ev["fingerprint"], fp.as_str());
    assert_eq!(ev["action"], "observe");
    assert_eq!(ev["kind"], "bearer");
    assert_eq!(ev["matched"], "token");
    assert!(
        ev["source"].as_str().unwrap().starts_with("192.0.2.2:"),
        "{ev}"
    );
    assert_eq!(ev["destination"], "192.0.2.1:8080");
    assert!(!line.contains(&bad), "an event must never carry the token");
}

#[test]
fn lowercase_header_long_prefix_big_token_and_api_key_are_matched() {
    let (tb, nginx, _d) = setup("xdp", "reset");
    let lower = token("lower", 120);
    let after_1k = token("after1k", 400);
    let big = token("big", 1500);
    let key = token("apikey", 40);
    for t in [&lower, &after_1k, &big] {
        tb.revoke(t).unwrap();
    }
    let out = tb.cli(
        &["revoke", "--token", "-", "--api-key", "--json"],
        Some(key.as_bytes()),
    );
    assert!(out.status.success());
    let cases = [
        ("/lower", vec![format!("authorization: bearer {lower}")]),
        (
            "/after-1k",
            vec![
                format!("X-Filler: {}", "f".repeat(1100)),
                format!("Authorization: Bearer {after_1k}"),
            ],
        ),
        ("/big", vec![format!("Authorization: Bearer {big}")]),
        ("/apikey", vec![format!("x-api-key: {key}")]),
    ];
    for (path, headers) in cases {
        let r = tb.curl(
            PORT,
            &[Req {
                path,
                token: None,
                headers,
            }],
            false,
            LONG,
        );
        assert!(r.was_reset() && r.elapsed < SHORT, "{path}: {r:?}");
        assert!(nginx.never_saw(path), "{path} reached nginx");
    }
    assert_eq!(tb.counter("skipped"), 0);
    assert!(tb.counter("api_keys") >= 1);
    // The request's retransmission finds only the listener (the reset closed the connection):
    // it never reaches the stack, the client gets the reset.
    assert!(
        tb.counter("reset_sent") >= 1,
        "a retransmission is answered with a reset"
    );
    assert_eq!(tb.counter("reset_no_socket"), 0);
}

#[test]
fn keepalive_only_the_revoked_second_request_is_stopped() {
    let (tb, nginx, _d) = setup("xdp", "reset");
    let (good, bad) = (token("ka-good", 200), token("ka-bad", 200));
    tb.revoke(&bad).unwrap();
    let r = tb.curl(
        PORT,
        &[req("/ka-1", Some(&good)), req("/ka-2", Some(&bad))],
        false,
        LONG,
    );
    assert_eq!(r.statuses, vec![200], "{r:?}");
    assert!(r.was_reset(), "{r:?}");
    assert!(nginx.saw_path("/ka-1"));
    assert!(nginx.never_saw("/ka-2"));
    let lines = nginx.access_log_lines();
    assert_eq!(
        lines.len(),
        1,
        "one connection, one request served: {lines:?}"
    );
}

#[test]
fn non_http_tcp_and_udp_pass_untouched() {
    let (tb, nginx, _d) = setup("xdp", "drop");
    let bad = token("nonhttp", 100);
    tb.revoke(&bad).unwrap();
    // Not a request line: passes, and nginx answers it (400) itself.
    let payload = format!("\x16\x03\x01 hello\r\nAuthorization: Bearer {bad}\r\n\r\n");
    let back = tb.raw_tcp(PORT, payload.as_bytes(), SHORT).unwrap();
    assert!(
        String::from_utf8_lossy(&back).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&back)
    );
    // UDP with an HTTP-looking payload carrying a revoked token is delivered.
    let dgram = format!("GET / HTTP/1.1\r\nAuthorization: Bearer {bad}\r\n\r\n");
    let got = tb.udp_roundtrip(9999, dgram.as_bytes(), LONG).unwrap();
    assert_eq!(got.as_deref(), Some(dgram.as_bytes()));
    assert_eq!(tb.counter("revoked_hits"), 0);
    assert!(
        nginx
            .access_log_lines()
            .iter()
            .all(|l| !l.contains("GET /"))
    );
}

#[test]
fn sigkill_and_restart_keep_the_revoked_token_blocked_throughout() {
    let (tb, nginx, mut d) = setup("xdp", "reset");
    let bad = token("restart", 220);
    tb.revoke(&bad).unwrap();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = AtomicBool::new(false);
    let probes = AtomicUsize::new(0);
    // Waits until the prober has made `n` more probes (each a full request), at most 30 s.
    let wait_probes = |n: usize| {
        let target = probes.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while probes.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the prober stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let prober = {
        let tb = &tb;
        let bad = bad.clone();
        let (stop, probes) = (&stop, &probes);
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                let mut results = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                // Bounded in count and time; paced so the restart falls among the probes.
                for i in 0..400 {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    let path = format!("/during-{i}");
                    let r = tb.get(PORT, &path, Some(&bad), false, SHORT);
                    results.push((path, r.was_reset()));
                    probes.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
                results
            });
            // Probes before the kill, while no daemon runs, and after the restart.
            wait_probes(3);
            d.kill9();
            wait_probes(2);
            let d2 = tb
                .start_daemon(&["--hook", "xdp", "--action", "reset", "--port", "8080"])
                .expect("restart");
            wait_probes(3);
            stop.store(true, Ordering::Relaxed);
            (h.join().unwrap(), d2)
        })
    };
    let (results, d2) = prober;
    assert!(results.len() >= 5, "too few probes: {}", results.len());
    assert!(nginx.never_saw(&results[0].0));
    let log = nginx.access_log_lines();
    for (path, reset) in &results {
        assert!(*reset, "{path} was not reset");
        assert!(
            !log.iter().any(|l| l.contains(&format!(" {path} HTTP/"))),
            "{path} reached nginx while the daemon restarted"
        );
    }
    assert!(
        d2.log().contains("replaced program in pinned link"),
        "{}",
        d2.log()
    );
    let after = token("after-restart", 220);
    tb.revoke(&after).unwrap();
    let r = tb.get(PORT, "/after-restart", Some(&after), false, LONG);
    assert!(r.was_reset(), "{r:?}");
    assert!(nginx.never_saw("/after-restart"));
    assert_eq!(tb.status().unwrap()["revoked_entries"], 2);
}

#[test]
fn expired_revocations_lapse_and_are_purged() {
    let (tb, nginx, _d) = setup("xdp", "reset");
    let t = token("short-lived", 150);
    let out = tb.cli(
        &["revoke", "--token", "-", "--until", "3s", "--json"],
        Some(t.as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tb.get(PORT, "/while-revoked", Some(&t), false, LONG)
            .was_reset()
    );
    // Once its time has passed the entry no longer blocks (the kernel compares expiry
    // itself, before any purge): ask until a request passes, at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while !tb
        .get(PORT, &format!("/after-expiry-{n}"), Some(&t), false, LONG)
        .ok()
    {
        assert!(Instant::now() < deadline, "an expired entry must not block");
        n += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let passed = format!("/after-expiry-{n}");
    assert!(nginx.saw_path(&passed) && nginx.never_saw("/while-revoked"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while tb.status().unwrap()["kernel_entries"] != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    let st = tb.status().unwrap();
    assert_eq!(
        (
            st["kernel_entries"].as_u64(),
            st["revoked_entries"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

#[test]
fn unrevoke_and_detach_restore_traffic_and_remove_pins() {
    let (tb, nginx, _d) = setup("tc", "reset");
    let t = token("undo", 150);
    tb.revoke(&t).unwrap();
    assert!(tb.get(PORT, "/revoked", Some(&t), false, LONG).was_reset());
    let out = tb.cli(&["unrevoke", "--token", "-"], Some(t.as_bytes()));
    assert!(out.status.success());
    assert!(tb.get(PORT, "/unrevoked", Some(&t), false, LONG).ok());
    tb.revoke(&t).unwrap();
    let out = tb.cli(&["detach", "--iface", tb.server_if(), "--bpffs"], None);
    assert!(!out.status.success(), "--bpffs needs a value");
    let bpffs = tb.bpffs_dir().display().to_string();
    let out = tb.cli(
        &["detach", "--iface", tb.server_if(), "--bpffs", &bpffs],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        tb.get(PORT, "/detached", Some(&t), false, LONG).ok(),
        "detached: no enforcement"
    );
    assert!(nginx.saw_path("/detached"));
    assert!(!tb.bpffs_dir().exists(), "pins left behind");
}

#[test]
fn client_commands_without_a_daemon_fail_on_one_line() {
    for args in [&["status"][..], &["events"], &["revoke", "--hash", "00ff"]] {
        let out = Command::new(tokenwall_bin().unwrap())
            .args(args)
            .args(["--control-socket", "/nonexistent/tokenwall.sock"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("tokenwall: daemon not reachable at /nonexistent/tokenwall.sock"),
            "{err}"
        );
    }
    let out = Command::new(tokenwall_bin().unwrap())
        .args(["run", "--hook", "bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr)
            .trim_end()
            .lines()
            .count(),
        1
    );
}
