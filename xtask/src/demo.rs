//! `cargo xtask demo`: a self-contained tour on throwaway namespaces: a real nginx, the real
//! daemon on a veth, a good and a revoked token, and what happened to each.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use tokenwall_tests::{Testbed, testbed};

const PORT: u16 = 8080;

fn random_token(tag: &str) -> anyhow::Result<String> {
    let mut raw = [0u8; 30];
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    Ok(format!(
        "{tag}.{}",
        raw.iter()
            .map(|b| ALPHABET[(*b & 63) as usize] as char)
            .collect::<String>()
    ))
}

/// Only a prefix of a token is ever shown.
fn short(t: &str) -> String {
    format!("{}…", &t[..8.min(t.len())])
}

/// Runs the demo with the given tokenwall binary.
pub fn run(bin: &Path) -> anyhow::Result<()> {
    // SAFETY: set before any thread is spawned; the testbed reads it to find the binary.
    unsafe { std::env::set_var("TOKENWALL_BIN", bin) };
    println!("\n== tokenwall demo: a revoked bearer token stopped in the kernel ==\n");
    let tb = Testbed::new()?;
    println!(
        "[1/6] two throwaway hosts: namespace {} (server {}) and {} (client {}), joined by a veth pair",
        tb.server_ns(),
        testbed::SERVER_IP4,
        tb.client_ns(),
        testbed::CLIENT_IP4
    );
    let nginx = tb.start_nginx(PORT)?;
    println!(
        "[2/6] nginx (the gateway) listening on {}:{PORT} in the server namespace",
        testbed::SERVER_IP4
    );
    let daemon = tb.start_daemon(&["--hook", "xdp", "--action", "reset", "--port", "8080"])?;
    println!(
        "[3/6] tokenwall attached: native XDP on {}, port {PORT}, action reset",
        tb.server_if()
    );
    let (good, bad) = (random_token("good")?, random_token("stolen")?);
    let r = tb.get(
        PORT,
        "/orders?who=alice",
        Some(&good),
        false,
        Duration::from_secs(5),
    );
    ensure!(r.ok(), "the good token was not served: {r:?}");
    println!(
        "[4/6] GET with token {} -> HTTP {} in {:?}",
        short(&good),
        r.statuses[0],
        r.elapsed
    );
    let r = tb.get(
        PORT,
        "/orders?who=mallory-before",
        Some(&bad),
        false,
        Duration::from_secs(5),
    );
    ensure!(
        r.ok(),
        "the second token was not served before revocation: {r:?}"
    );
    println!(
        "      GET with token {} -> HTTP {} (not revoked yet)",
        short(&bad),
        r.statuses[0]
    );
    let out = tb.cli(
        &[
            "revoke",
            "--token",
            "-",
            "--reason",
            "demo: token reported stolen",
        ],
        Some(bad.as_bytes()),
    );
    ensure!(
        out.status.success(),
        "revoke failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "[5/6] tokenwall revoke --token - : {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    let start = Instant::now();
    let r = tb.get(
        PORT,
        "/orders?who=mallory-after",
        Some(&bad),
        false,
        Duration::from_secs(5),
    );
    if !r.was_reset() {
        bail!("the revoked token was not reset: {r:?}");
    }
    println!(
        "      GET with token {} -> connection reset after {:?} (curl: {})",
        short(&bad),
        start.elapsed(),
        r.stderr.trim()
    );
    let reached = !nginx.never_saw("/orders?who=mallory-after");
    println!(
        "      nginx access log: {} lines; the revoked request {}",
        nginx.access_log_lines().len(),
        if reached {
            "REACHED nginx"
        } else {
            "never reached nginx"
        }
    );
    ensure!(!reached, "the revoked request reached nginx");
    let st = tb.status().context("status")?;
    let c = &st["counters"];
    println!(
        "[6/6] kernel counters: packets={} http_requests={} bearer_tokens={} revoked_hits={} reset={} reset_no_socket={}",
        c["packets"],
        c["http_requests"],
        c["bearer_tokens"],
        c["revoked_hits"],
        c["reset"],
        c["reset_no_socket"]
    );
    drop(daemon);
    drop(nginx);
    drop(tb);
    println!("\ndone: namespaces, pins and processes cleaned up.");
    Ok(())
}
