//! The outsider's attacks on tokenwall with real nginx in front, end to end: the daemon on a
//! veth in namespaces this test creates, nginx behind it, clients that control what goes on
//! the wire. Needs root.

use std::{
    io::BufRead as _,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use tokenwall_tests::{
    Daemon, Nginx, Testbed,
    http::{curl, sample},
    jws::{Alg, signed},
    testbed::sh,
    tokenwall_bin,
    wire::Outcome,
};

const PORT: u16 = 8080;
const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(5);
const OK: &str = "HTTP/1.1 200 OK";

fn setup(hook: &str, action: &str, extra: &[&str]) -> (Testbed, Nginx, Daemon) {
    let tb = Testbed::new().expect("testbed");
    let nginx = tb.start_nginx(PORT).expect("nginx");
    let mut args = vec![
        "--hook",
        hook,
        "--action",
        action,
        "--port",
        "8080",
        "--api-key-header",
        "X-Api-Key",
    ];
    args.extend_from_slice(extra);
    let d = tb.start_daemon(&args).expect("daemon");
    (tb, nginx, d)
}

/// Polls `f` every 50 ms until it holds or `within` passes.
fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 1: ES256 and ES384 tokens revoked by fingerprint stay revoked when the signature is
/// replaced by the other valid ECDSA signature or re-encoded: reset, never served.
#[test]
fn a_revoked_jws_is_reset_in_every_signature_form_through_nginx() {
    let (tb, nginx, _d) = setup("xdp", "reset", &[]);
    for alg in [Alg::Es256, Alg::Es384] {
        let s = signed(alg, r#"{"sub":"mallory","jti":"j-7","exp":4102444800}"#);
        assert!(s.both_verify, "{alg:?}");
        let before = format!("/{alg:?}-before");
        assert!(tb.get(PORT, &before, Some(&s.token), false, LONG).ok());
        tb.revoke_keyed(&s.token).unwrap();
        let forms = [
            Some(&s.token),
            Some(&s.malleated),
            Some(&s.padded),
            s.reencoded.as_ref(),
        ];
        for (i, form) in forms.into_iter().flatten().enumerate() {
            let path = format!("/{alg:?}-form-{i}");
            let r = tb.get(PORT, &path, Some(form), false, LONG);
            assert!(
                r.was_reset() && r.elapsed < SHORT,
                "{alg:?} form {i}: {r:?}"
            );
            assert!(nginx.never_saw(&path), "{alg:?} form {i} reached nginx");
        }
        assert!(nginx.saw_path(&before));
    }
}

/// Item 2: request shapes nginx 1.22 serves that the old scan missed; each carries the revoked
/// token and is dropped before nginx.
#[test]
fn request_shapes_that_slipped_past_the_old_scan_never_reach_nginx() {
    let (tb, nginx, _d) = setup("xdp", "drop", &[]);
    let bad = "tw-shape-revoked-0123456789";
    tb.revoke(bad).unwrap();
    let ows = " ".repeat(40);
    let shapes = [
        (
            "/ows",
            format!("GET /ows HTTP/1.1\r\nHost: a\r\nAuthorization:{ows}Bearer{ows}{bad}\r\n\r\n"),
        ),
        (
            "/crlf",
            format!("\r\n\r\nGET /crlf HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {bad}\r\n\r\n"),
        ),
        (
            "/pipe-b",
            format!(
                "GET /pipe-a HTTP/1.1\r\nHost: a\r\n\r\nGET /pipe-b HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {bad}\r\n\r\n"
            ),
        ),
        (
            "/key-first",
            format!(
                "GET /key-first HTTP/1.1\r\nHost: a\r\nX-Api-Key: some-valid-key\r\nAuthorization: Bearer {bad}\r\n\r\n"
            ),
        ),
        (
            "/long-method",
            format!(
                "{} /long-method HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {bad}\r\n\r\n",
                "A".repeat(40)
            ),
        ),
    ];
    for (path, payload) in &shapes {
        let back = tb.raw_tcp(PORT, payload.as_bytes(), SHORT).unwrap();
        assert!(
            back.is_empty(),
            "{path}: {:?}",
            String::from_utf8_lossy(&back)
        );
        assert!(nginx.never_saw(path), "{path} reached nginx");
    }
    assert!(nginx.never_saw("/pipe-a"), "the segment is dropped whole");
    assert!(tb.counter("dropped") >= shapes.len() as u64);
}

/// Item 2: under `reset`, a request segment that completes the TCP handshake (the client's
/// last ACK carries the request) finds no connection, only a request socket or, with SYN
/// cookies, only the listener. It must not reach the stack (which would create the connection
/// with the request queued): the client gets a reset and nginx never sees the request.
#[test]
fn a_request_that_completes_the_handshake_never_reaches_nginx() {
    for hook in ["xdp", "tc"] {
        for cookies in [false, true] {
            let (tb, nginx, _d) = setup(hook, "reset", &[]);
            if cookies {
                tb.in_server(&["sysctl", "-qw", "net.ipv4.tcp_syncookies=2"])
                    .unwrap();
            }
            let what = format!("{hook}, syncookies {cookies}");
            let (good, bad) = ("tw-handshake-good-0123456", "tw-handshake-bad-01234567");
            tb.revoke(bad).unwrap();
            let req = |path: &str, t: &str| {
                format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n")
            };
            assert_eq!(
                tb.handshake_request(PORT, req("/hs-good", good).as_bytes(), LONG),
                Outcome::Response(OK.into()),
                "{what}: the same client with a valid token is served"
            );
            let started = Instant::now();
            assert_eq!(
                tb.handshake_request(PORT, req("/hs-bad", bad).as_bytes(), LONG),
                Outcome::Reset,
                "{what}"
            );
            assert!(started.elapsed() < SHORT, "{what}: {:?}", started.elapsed());
            assert!(
                nginx.never_saw("/hs-bad"),
                "{what}: the request reached nginx"
            );
            assert!(nginx.saw_path("/hs-good"));
            assert!(tb.counter("reset_sent") >= 1, "{what}");
            assert_eq!(tb.counter("reset_no_socket"), 0, "{what}");
        }
    }
}

/// Item 2: a request carried in the SYN (TCP Fast Open) is scanned like any first segment:
/// with a revoked token it never reaches nginx, under `drop` (XDP) and `reset` (TC).
#[test]
fn a_request_in_the_syn_is_judged() {
    for (hook, action) in [("xdp", "drop"), ("tc", "reset")] {
        let (tb, nginx, _d) = setup(hook, action, &[]);
        // Fast Open without cookies: the client puts data in its SYN, the server takes it.
        tb.in_client(&["sysctl", "-qw", "net.ipv4.tcp_fastopen=5"])
            .unwrap();
        tb.in_server(&["sysctl", "-qw", "net.ipv4.tcp_fastopen=1538"])
            .unwrap();
        let what = format!("{hook} {action}");
        let (good, bad) = ("tw-tfo-good-0123456789", "tw-tfo-bad-01234567890");
        tb.revoke(bad).unwrap();
        let req = |path: &str, t: &str| {
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {t}\r\n\r\n")
        };
        assert_eq!(
            tb.fast_open_request(PORT, req("/tfo-good", good).as_bytes(), LONG),
            Outcome::Response(OK.into()),
            "{what}"
        );
        assert!(
            tb.counter("syn_data") >= 1,
            "{what}: the request was in the SYN"
        );
        let got = tb.fast_open_request(PORT, req("/tfo-bad", bad).as_bytes(), SHORT);
        assert_ne!(got, Outcome::Response(OK.into()), "{what}");
        assert!(nginx.saw_path("/tfo-good"), "{what}");
        assert!(
            nginx.never_saw("/tfo-bad"),
            "{what}: the request reached nginx"
        );
        assert!(tb.counter("revoked_hits") >= 1, "{what}");
    }
}

/// Item 3: an upload with a valid token whose second segment starts like a request carrying a
/// revoked token is body, not a request: it is served whole, under `drop` (XDP) and `reset`
/// (TC).
#[test]
fn an_upload_whose_body_looks_like_a_revoked_request_is_served() {
    for (hook, action) in [("xdp", "drop"), ("tc", "reset")] {
        let (tb, nginx, _d) = setup(hook, action, &[]);
        let _sink = tb.start_upload_sink();
        let bad = "tw-upload-revoked-0123456789";
        tb.revoke(bad).unwrap();
        let second = format!(
            "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {bad}\r\n\r\n{}",
            "z".repeat(500)
        );
        let body_len = 10 + second.len();
        let first = format!(
            "POST /upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer tw-valid-uploader\r\nContent-Length: {body_len}\r\n\r\n0123456789"
        );
        let got = tb.two_segments(PORT, first.as_bytes(), second.as_bytes(), LONG);
        assert_eq!(got, Outcome::Response(OK.into()), "{hook} {action}");
        assert!(nginx.saw_path("/upload"), "{hook} {action}");
        assert!(
            tb.counter("body_segments") >= 1,
            "{hook} {action}: the second segment travelled alone"
        );
        assert_eq!(tb.counter("revoked_hits"), 0, "{hook} {action}");
    }
}

/// Item 4: hits on segments with no connection behind them (forged sources) are counted and
/// streamed with their socket (`listener`: no connection) but raise no theft alert and name no timeline source; the
/// same token from real clients does.
#[test]
fn hits_from_forged_sources_are_streamed_but_raise_no_alert() {
    const API: &str = "127.0.0.1:7075";
    let (tb, _nginx, _d) = setup(
        "xdp",
        "drop",
        &["--http", API, "--alert-replay-sources", "1"],
    );
    sh(&[
        "ip",
        "-n",
        tb.client_ns(),
        "addr",
        "add",
        "192.0.2.3/24",
        "dev",
        tb.client_if(),
    ])
    .unwrap();
    let bad = "tw-forged-0123456789abcdef";
    tb.revoke(bad).unwrap();
    let mut events = Command::new(tokenwall_bin().unwrap())
        .args(["events", "--control-socket"])
        .arg(tb.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = events.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let request = format!("GET /f HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {bad}\r\n\r\n");
    // The stream is up once it reports a first forged hit.
    let mut lines = Vec::new();
    assert!(eventually(LONG, || {
        tb.forged_segment("198.51.100.1", PORT, request.as_bytes());
        lines.extend(rx.try_iter());
        !lines.is_empty()
    }));
    for src in ["198.51.100.2", "198.51.100.3"] {
        tb.forged_segment(src, PORT, request.as_bytes());
    }
    let hits = tb.counter("revoked_hits");
    let deadline = Instant::now() + LONG;
    while lines.len() < hits as usize && Instant::now() < deadline {
        lines.extend(rx.recv_timeout(Duration::from_millis(100)));
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(hits >= 3, "{hits}");
    for l in &lines {
        let ev: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(ev["socket"], "listener", "{ev}: no connection behind it");
        assert!(
            ev["source"].as_str().unwrap().starts_with("198.51.100."),
            "{ev}"
        );
    }
    let metrics = || curl(tb.server_ns(), &[&format!("http://{API}/metrics")]).body;
    let theft =
        |text: &str| sample(text, "tokenwall_alerts_total{rule=\"token_theft\"}").unwrap_or(0.0);
    assert_eq!(theft(&metrics()), 0.0, "forged sources framed a theft");
    let show = || {
        let out = tb.cli(
            &["tokens", "show", "--token", "-", "--json"],
            Some(bad.as_bytes()),
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let t = show();
    assert_eq!(t["kernel_hits"].as_u64(), Some(hits), "{t}");
    assert_eq!(t["last_sources"], serde_json::json!([]), "{t}");
    // The same token from two real clients (connections behind the hits): a theft.
    for src in ["192.0.2.2", "192.0.2.3"] {
        tb.one_shot(src, PORT, bad);
    }
    assert!(
        eventually(LONG, || theft(&metrics()) == 1.0),
        "{}",
        metrics()
    );
    let t = show();
    let sources: Vec<&str> = t["last_sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(sources.len(), 2, "{t}");
    assert!(sources.iter().all(|s| s.starts_with("192.0.2.")), "{t}");
}

/// The pinned REVOKED map's size, as bpftool shows it.
fn pinned_max_entries(tb: &Testbed) -> u64 {
    let pin = tb.bpffs_dir().join("maps/REVOKED");
    let out = sh(&[
        "bpftool",
        "-j",
        "map",
        "show",
        "pinned",
        &pin.display().to_string(),
    ])
    .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["max_entries"].as_u64().unwrap()
}

/// Item 5: a restart with another `--max-revoked` replaces the pinned map (logged) instead of
/// reusing it, fills the new one from the store before the programs are swapped, and the
/// revoked token stays blocked throughout.
#[test]
fn a_new_max_revoked_replaces_the_pinned_map_without_a_gap() {
    let (tb, nginx, mut d) = setup("xdp", "reset", &[]);
    assert_eq!(pinned_max_entries(&tb), 1 << 20);
    let bad = "tw-resize-0123456789abcdef";
    tb.revoke(bad).unwrap();
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = AtomicBool::new(false);
    let probes = AtomicUsize::new(0);
    // Waits until the prober has made `n` more probes, at most 30 s.
    let wait_probes = |n: usize| {
        let target = probes.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while probes.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the prober stalled");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (results, _d2) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let mut results = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            // Bounded in count and time; paced so the restart falls among the probes.
            for i in 0..400 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let path = format!("/resize-{i}");
                let r = tb.get(PORT, &path, Some(bad), false, SHORT);
                results.push((path, r.was_reset()));
                probes.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            results
        });
        wait_probes(3);
        d.stop();
        let d2 = tb
            .start_daemon(&[
                "--hook",
                "xdp",
                "--action",
                "reset",
                "--port",
                "8080",
                "--max-revoked",
                "4096",
            ])
            .expect("restart");
        wait_probes(3);
        stop.store(true, Ordering::Relaxed);
        let log = d2.log();
        assert!(log.contains("REVOKED") && log.contains("replaced"), "{log}");
        (prober.join().unwrap(), d2)
    });
    assert!(results.len() >= 5, "too few probes: {}", results.len());
    for (path, reset) in &results {
        assert!(*reset, "{path} was not reset");
        assert!(
            nginx.never_saw(path),
            "{path} reached nginx while the map was replaced"
        );
    }
    assert_eq!(pinned_max_entries(&tb), 4096);
    assert_eq!(tb.status().unwrap()["kernel_entries"], 1);
    assert!(
        tb.get(PORT, "/after-resize", Some(bad), false, LONG)
            .was_reset()
    );
}
