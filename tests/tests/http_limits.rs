//! The HTTP API's limits on the real daemon, set from a flag and from the config file: a client
//! trickling headers is disconnected after the header-read timeout, and connections beyond the
//! limit wait (unserved) until one closes, with one warning line however often the limit is
//! hit. Needs root.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use tokenwall_tests::Testbed;

const API: &str = "127.0.0.1:7074";
const REQUEST: &[u8] = b"GET /.well-known/jwks.json HTTP/1.1\r\nHost: t\r\n\r\n";
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Generous bound on anything waited for.
const WAIT: Duration = Duration::from_secs(10);

/// Reads one response (the JWKS is JSON ending in `]}`) from a kept-alive connection.
fn response(c: &mut TcpStream) -> String {
    c.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(b"]}") {
        let n = c.read(&mut buf).expect("no response in time");
        assert!(n > 0, "closed before a response");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slow_headers_are_cut_off_and_connections_over_the_limit_wait_for_a_free_slot() {
    let tb = Testbed::new().unwrap();
    let config = tb.work_dir().join("limits.toml");
    std::fs::write(&config, "[process]\nhttp_max_connections = 2\n").unwrap();
    let config = config.display().to_string();
    let timeout = HEADER_TIMEOUT.as_secs().to_string();
    let d = tb
        .start_daemon(&[
            "--http",
            API,
            "--port",
            "8080",
            "--config",
            &config,
            "--http-header-read-timeout",
            &timeout,
        ])
        .unwrap();
    let limit_lines = || {
        d.log()
            .lines()
            .filter(|l| l.contains("connection limit of 2 reached"))
            .count()
    };

    tb.in_ns(tb.server_ns(), || {
        // A client that sends part of its headers and then a byte now and then.
        let started = Instant::now();
        let mut slow = TcpStream::connect(API).unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n").unwrap();
        slow.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(
                Instant::now() < deadline,
                "the slow client was never cut off"
            );
            match slow.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if slow.write_all(b"X").is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let took = started.elapsed();
        assert!(took >= HEADER_TIMEOUT, "cut off too early: {took:?}");
        assert!(
            took < HEADER_TIMEOUT + Duration::from_secs(3),
            "cut off late: {took:?}"
        );

        // Two kept-alive connections take both slots.
        let mut a = TcpStream::connect(API).unwrap();
        let mut b = TcpStream::connect(API).unwrap();
        for c in [&mut a, &mut b] {
            c.write_all(REQUEST).unwrap();
            assert!(response(c).starts_with("HTTP/1.1 200"));
        }
        until("the limit warning", || limit_lines() == 1);
        // A third is connected by the kernel but not served while both are held.
        let mut third = TcpStream::connect(API).unwrap();
        third.write_all(REQUEST).unwrap();
        third.set_nonblocking(true).unwrap();
        assert_eq!(
            third.read(&mut buf).map_err(|e| e.kind()).err(),
            Some(ErrorKind::WouldBlock),
            "served over the limit"
        );
        third.set_nonblocking(false).unwrap();
        // One leaves: the third is served.
        drop(a);
        assert!(response(&mut third).starts_with("HTTP/1.1 200"));
        // The limit is hit again (b and third hold both slots): no second line within the
        // interval. A fourth connection proves the accept loop went round again.
        let mut fourth = TcpStream::connect(API).unwrap();
        fourth.write_all(REQUEST).unwrap();
        drop(third);
        assert!(response(&mut fourth).starts_with("HTTP/1.1 200"));
        drop(b);
    });
    assert_eq!(limit_lines(), 1, "{}", d.log());
}
