//! Kernel fast-path cost per packet, measured with `BPF_PROG_TEST_RUN` on the real programs,
//! each as a ratio to an XDP program that only returns XDP_PASS, measured in the same run
//! (rounds interleaved, median of the rounds). Run with `cargo xtask bench`; needs root.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use agent_common::{
    config::{Action, Config, HeaderNeedle, NEEDLE_BEARER},
    hash::{HashKey, revocation_hash},
    program_names,
    revoked::RevokedEntry,
};
use tokenwall::kernel::Kernel;
use tokenwall_tests::{
    legs::{Legs, leg, median},
    packet::Segment,
};

const PORT: u16 = 8080;
const REPEAT: u32 = 200_000;
const ROUNDS: usize = 7;
/// Repeats per measurement and rounds for the monitoring on/off comparison.
const OVERHEAD_REPEAT: u32 = 100_000;
const OVERHEAD_ROUNDS: usize = 15;

struct Pins(PathBuf);
impl Drop for Pins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jwt_like(seed: u8) -> String {
    // An RS256-sized JWT: header.claims.signature, ~ 600 bytes of base64url.
    let body: String = (0..560)
        .map(|i| (b'A' + ((i as u8).wrapping_mul(7).wrapping_add(seed)) % 26) as char)
        .collect();
    format!(
        "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9.{}.{}",
        &body[..300],
        &body[300..]
    )
}

fn request(filler: usize, token: Option<&str>) -> Vec<u8> {
    let mut r =
        String::from("GET /api/v1/orders/42 HTTP/1.1\r\nHost: api.example.com\r\nAccept: */*\r\n");
    if filler > 0 {
        r.push_str(&format!("X-Filler: {}\r\n", "f".repeat(filler)));
    }
    if let Some(t) = token {
        r.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    r.push_str("User-Agent: bench\r\n\r\n");
    r.into_bytes()
}

fn median_ns(v: &[Duration]) -> f64 {
    median(v.iter().map(|d| d.as_nanos() as f64))
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let dir = PathBuf::from(format!("/sys/fs/bpf/twt-bench-{}", std::process::id()));
    let _pins = Pins(dir.clone());
    let started = std::time::Instant::now();
    let mut k = Kernel::load(&dir, log::LevelFilter::Off)?;
    let load_time = started.elapsed();
    println!(
        "Loading the object (XDP, TC and the baseline program, verified): {:.0} ms",
        load_time.as_secs_f64() * 1000.0
    );
    println!("| program | verified instructions | translated bytes |");
    println!("| --- | ---: | ---: |");
    // The newest program of each name is this process's (ids only grow).
    let infos: Vec<_> = aya::programs::loaded_programs().flatten().collect();
    for name in [program_names::XDP, program_names::TC] {
        if let Some(info) = infos
            .iter()
            .filter(|i| i.name_as_str() == Some(name))
            .max_by_key(|i| i.id())
        {
            println!(
                "| {name} | {} | {} |",
                info.verified_instruction_count().unwrap_or(0),
                info.size_translated().unwrap_or(0)
            );
        }
    }
    println!();
    let mut cfg = Config {
        key: HashKey::from_bytes(*b"bench-key-16-byt"),
        action: Action::Drop as u32,
        monitoring: 1,
        ..Config::default()
    };
    cfg.ports[0] = PORT;
    cfg.needles[0] =
        HeaderNeedle::new(b"Authorization", NEEDLE_BEARER).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    k.set_config(&cfg)?;
    let (good, bad) = (jwt_like(1), jwt_like(2));
    k.insert(
        revocation_hash(&cfg.key, bad.as_bytes()),
        RevokedEntry::default(),
    )?;
    let seg = Segment::v4(PORT);
    let header_100 = 100 - request(0, None).len().min(99);
    let opaque: String = good.chars().filter(|c| *c != '.').collect();
    // An upload on its own flow: its first segment leaves a body of 1 MB pending, so the
    // next segments are body.
    let mut body_seg = Segment::v4(PORT);
    body_seg.sport = 41000;
    body_seg.seq = 1;
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer {good}\r\nContent-Length: 1000000\r\n\r\n"
    );
    k.test_run(program_names::XDP, &body_seg.frame(head.as_bytes()), 1)?;
    k.test_run(program_names::TC, &body_seg.frame(head.as_bytes()), 1)?;
    body_seg.seq = 1 + head.len() as u32;
    let body = vec![b'x'; 1200];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "non-HTTP TCP payload (TLS record) to the watched port",
            seg.frame(&[0x16, 3, 1, 2, 0, 1, 0, 1, 0xfc, 3, 3].repeat(40)),
        ),
        ("GET without Authorization", seg.frame(&request(0, None))),
        (
            "valid token (600 B) after ~100 B of headers",
            seg.frame(&request(header_100, Some(&good))),
        ),
        (
            "valid token (600 B) after ~1 KiB of headers",
            seg.frame(&request(1000, Some(&good))),
        ),
        (
            "revoked token (600 B) after ~100 B of headers: dropped",
            seg.frame(&request(header_100, Some(&bad))),
        ),
        (
            "valid opaque token (600 B, hashed whole) after ~100 B of headers",
            seg.frame(&request(header_100, Some(&opaque))),
        ),
        (
            "two pipelined requests, the token in the second",
            seg.frame(&[request(0, None), request(0, Some(&good))].concat()),
        ),
        ("a segment inside an upload's body", body_seg.frame(&body)),
    ];
    let mut base = Vec::new();
    let mut xdp: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    let mut tc: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    for _ in 0..ROUNDS {
        base.push(
            k.test_run(program_names::BASELINE, &cases[0].1, REPEAT)?
                .per_run,
        );
        for (i, (_, frame)) in cases.iter().enumerate() {
            xdp[i].push(k.test_run(program_names::XDP, frame, REPEAT)?.per_run);
            tc[i].push(k.test_run(program_names::TC, frame, REPEAT)?.per_run);
        }
    }
    let b = median_ns(&base).max(1.0);
    println!(
        "BPF_PROG_TEST_RUN, {REPEAT} repeats x {ROUNDS} interleaved rounds, median ns per packet"
    );
    println!("| packet | XDP ns | XDP / empty XDP | TC ns | TC / empty XDP |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    println!("| empty XDP program (baseline) | {b:.0} | 1.0 | | |");
    for (i, (name, _)) in cases.iter().enumerate() {
        let (x, t) = (median_ns(&xdp[i]), median_ns(&tc[i]));
        println!("| {name} | {x:.0} | {:.1} | {t:.0} | {:.1} |", x / b, t / b);
    }

    // Monitoring overhead in the kernel: per-interface counters and hit events on versus off,
    // XDP, in `Legs` (on, off, off again).
    // A reader drains the hit events as the daemon does, so every dropped packet pays for
    // a full reserve and submit, not for a ring that is already full.
    let mut events = k.take_events()?;
    let stop = Arc::new(AtomicBool::new(false));
    let drain = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while events.next().is_some() {
                    n += 1;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
            n
        })
    };
    const MONITORING: [u32; 3] = [1, 0, 0];
    let mut legs = vec![Legs::default(); cases.len()];
    for round in 0..OVERHEAD_ROUNDS {
        for (i, (_, frame)) in cases.iter().enumerate() {
            for j in 0..3 {
                let leg = leg(round + i, j);
                cfg.monitoring = MONITORING[leg];
                k.set_config(&cfg)?;
                let ns = k
                    .test_run(program_names::XDP, frame, OVERHEAD_REPEAT)?
                    .per_run;
                legs[i].push(leg, ns.as_nanos() as f64);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let drained = drain
        .join()
        .map_err(|_| anyhow::anyhow!("the event reader panicked"))?;
    println!();
    println!(
        "Monitoring on versus off, {OVERHEAD_REPEAT} repeats x {OVERHEAD_ROUNDS} rounds, a reader draining the ring ({drained} hit events read)"
    );
    println!("| packet (XDP) | monitoring on ns | off ns | on / off | off / off again (noise) |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for ((name, _), l) in cases.iter().zip(&legs) {
        println!("{}", l.row(name, 0));
    }
    Ok(())
}
