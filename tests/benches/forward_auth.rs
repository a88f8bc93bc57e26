//! Forward-auth throughput of the real daemon (`GET /v1/auth` over keep-alive HTTP/1.1 from
//! the client namespace, one connection, sequential), for a cached token and for never-seen
//! ES256, RS256 and EdDSA tokens, each as a ratio to raw ring verifications per second of the
//! same algorithm measured in the same run (rounds interleaved, median); then the cost of
//! monitoring, on against off with an off-against-off control. Run with `cargo xtask bench`;
//! needs root.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    os::fd::AsRawFd as _,
    time::{Duration, Instant},
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::json;
use tokenwall_tests::{
    Testbed,
    legs::{Legs, leg, median},
};

const TESTDATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../agent/src/tokens/testdata");
const API: &str = "192.0.2.1:7070";
const PER_ROUND: usize = 400;
const ROUNDS: usize = 5;
/// Requests per measurement and rounds for the monitoring on/off comparison: a difference of a
/// few percent needs longer runs than the ratios above.
const OVERHEAD_PER_ROUND: usize = 400;
const OVERHEAD_ROUNDS: usize = 48;
const ISS: &str = "https://bench.test";

struct Family {
    name: &'static str,
    alg: Algorithm,
    private: &'static str,
    public: &'static str,
    ring: &'static dyn VerificationAlgorithm,
    /// Bytes of the SPKI DER before the key ring wants.
    spki_prefix: usize,
}

fn read(name: &str) -> String {
    std::fs::read_to_string(format!("{TESTDATA}/{name}")).unwrap()
}

fn der(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

fn sign(f: &Family, kid: &str, n: usize, seed: &str) -> Vec<String> {
    let key = match f.alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(read(f.private).as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(read(f.private).as_bytes()),
        _ => EncodingKey::from_ed_pem(read(f.private).as_bytes()),
    }
    .unwrap();
    let mut h = Header::new(f.alg);
    h.kid = Some(kid.into());
    let now = tokenwall::clock::now();
    (0..n)
        .map(|i| {
            let claims = json!({ "iss": ISS, "sub": format!("user-{i}"), "aud": "api",
                                 "exp": now + 3600, "iat": now, "jti": format!("{seed}-{i}") });
            jsonwebtoken::encode(&h, &claims, &key).unwrap()
        })
        .collect()
}

/// One keep-alive connection to the daemon's HTTP API from inside the client namespace.
struct Conn(BufReader<TcpStream>);

impl Conn {
    fn open(tb: &Testbed) -> Self {
        let ns = std::fs::File::open(format!("/run/netns/{}", tb.client_ns())).unwrap();
        let stream = std::thread::scope(|s| {
            s.spawn(|| {
                // setns affects this thread only; the socket keeps its namespace afterwards.
                // SAFETY: setns(2) with an open namespace fd; it touches no memory of ours.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0);
                TcpStream::connect(API).unwrap()
            })
            .join()
            .unwrap()
        });
        stream.set_nodelay(true).unwrap();
        Conn(BufReader::new(stream))
    }

    /// One forward-auth request; returns the status.
    fn auth(&mut self, token: &str) -> u16 {
        write!(
            self.0.get_mut(),
            "GET /v1/auth HTTP/1.1\r\nHost: tokenwall\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        let mut status = 0;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.0.read_line(&mut line).unwrap();
            if status == 0 {
                status = line.split_whitespace().nth(1).unwrap().parse().unwrap();
            } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            } else if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).unwrap();
        status
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn ring_rate(f: &Family, token: &str) -> f64 {
    use base64::Engine as _;
    let spki = der(&read(f.public));
    let key = UnparsedPublicKey::new(f.ring, spki[f.spki_prefix..].to_vec());
    let (input, sig) = token.rsplit_once('.').unwrap();
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(sig)
        .unwrap();
    let start = Instant::now();
    for _ in 0..PER_ROUND {
        key.verify(input.as_bytes(), &sig).unwrap();
    }
    per_second(PER_ROUND, start.elapsed())
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    tokenwall::tokens::ring_provider::install();
    let families = [
        Family {
            name: "ES256",
            alg: Algorithm::ES256,
            private: "p256.key.pem",
            public: "p256.pub.pem",
            ring: &signature::ECDSA_P256_SHA256_FIXED,
            spki_prefix: 26,
        },
        Family {
            name: "RS256",
            alg: Algorithm::RS256,
            private: "rsa2048.key.pem",
            public: "rsa2048.pub.pem",
            ring: &signature::RSA_PKCS1_2048_8192_SHA256,
            spki_prefix: 24,
        },
        Family {
            name: "EdDSA",
            alg: Algorithm::EdDSA,
            private: "ed25519.key.pem",
            public: "ed25519.pub.pem",
            ring: &signature::ED25519,
            spki_prefix: 12,
        },
    ];
    let tb = Testbed::new()?;
    let daemon = tb.start_daemon(&["--http", API])?;
    for f in &families {
        let out = tb.cli(
            &[
                "keys",
                "add",
                "--pem",
                &format!("{TESTDATA}/{}", f.public),
                "--alg",
                f.name,
                "--kid",
                f.name,
                "--issuer",
                ISS,
                "--audience",
                "api",
            ],
            None,
        );
        anyhow::ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eprintln!("signing {} tokens per algorithm…", PER_ROUND * ROUNDS);
    let tokens: Vec<Vec<String>> = families
        .iter()
        .map(|f| sign(f, f.name, PER_ROUND * ROUNDS, f.name))
        .collect();
    let cached = sign(&families[0], "ES256", 1, "cached").remove(0);
    let mut conn = Conn::open(&tb);
    assert_eq!(conn.auth(&cached), 200, "the cached token must pass");

    let mut cached_rps = Vec::new();
    let mut uncached_rps = vec![Vec::new(); families.len()];
    let mut ring_rps = vec![Vec::new(); families.len()];
    for round in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..PER_ROUND {
            assert_eq!(conn.auth(&cached), 200);
        }
        cached_rps.push(per_second(PER_ROUND, start.elapsed()));
        for (i, f) in families.iter().enumerate() {
            let batch = &tokens[i][round * PER_ROUND..(round + 1) * PER_ROUND];
            let start = Instant::now();
            for t in batch {
                assert_eq!(conn.auth(t), 200, "{} token refused", f.name);
            }
            uncached_rps[i].push(per_second(PER_ROUND, start.elapsed()));
            ring_rps[i].push(ring_rate(f, &batch[0]));
        }
    }
    let overhead = monitoring_overhead(&tb, &daemon, &mut conn, &cached, &families[0])?;
    let ring: Vec<f64> = ring_rps.into_iter().map(median).collect();
    let cached_rps = median(cached_rps);
    println!(
        "| forward-auth (`GET /v1/auth`, one keep-alive connection) | requests/s | raw ring verifications/s | ratio |"
    );
    println!("|---|---:|---:|---:|");
    println!(
        "| cached token (vs ES256 verify) | {:.0} | {:.0} | {:.2} |",
        cached_rps,
        ring[0],
        cached_rps / ring[0]
    );
    for (i, f) in families.iter().enumerate() {
        let rps = median(uncached_rps[i].iter().copied());
        println!(
            "| never-seen {} token | {rps:.0} | {:.0} | {:.2} |",
            f.name,
            ring[i],
            rps / ring[i]
        );
    }
    println!();
    println!("| forward-auth, monitoring | on | off | on / off | off / off again (noise) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, legs) in overhead {
        let digits = if name.ends_with("requests/s") { 0 } else { 1 };
        println!("{}", legs.row(name, digits));
    }
    Ok(())
}

/// Monitoring on against off, switched at run time, for the cached token and for never-seen
/// ES256 tokens, in [`Legs`] (on, off, off again). Returns, per measure, the legs' samples:
/// requests per second, and the daemon's CPU time per request (all its threads, from
/// schedstat).
fn monitoring_overhead(
    tb: &Testbed,
    daemon: &tokenwall_tests::Daemon,
    conn: &mut Conn,
    cached: &str,
    es256: &Family,
) -> anyhow::Result<Vec<(&'static str, Legs)>> {
    const LEGS: [&str; 3] = ["on", "off", "off"];
    let n = OVERHEAD_PER_ROUND;
    let fresh = sign(es256, "ES256", n * OVERHEAD_ROUNDS * 3, "overhead");
    let mut fresh = fresh.iter();
    eprintln!("monitoring on/off: {OVERHEAD_ROUNDS} rounds…");
    // [cached rps, never-seen rps, cached cpu, never-seen cpu][leg]
    let mut m: [Legs; 4] = Default::default();
    for round in 0..OVERHEAD_ROUNDS {
        for i in 0..3 {
            let leg = leg(round, i);
            let out = tb.cli(&["monitoring", LEGS[leg]], None);
            anyhow::ensure!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let never_seen: Vec<&str> = fresh.by_ref().take(n).map(String::as_str).collect();
            for (case, batch) in [vec![cached; n], never_seen].into_iter().enumerate() {
                let (start, cpu0) = (Instant::now(), daemon.cpu_ns()?);
                for t in batch {
                    assert_eq!(conn.auth(t), 200);
                }
                let (took, cpu1) = (start.elapsed(), daemon.cpu_ns()?);
                m[case].push(leg, per_second(n, took));
                m[2 + case].push(leg, cpu1.saturating_sub(cpu0) as f64 / n as f64 / 1000.0);
            }
        }
    }
    let [a, b, c, d] = m;
    Ok(vec![
        ("cached token: requests/s", a),
        ("never-seen ES256 token: requests/s", b),
        ("cached token: daemon CPU µs per request", c),
        ("never-seen ES256 token: daemon CPU µs per request", d),
    ])
}
