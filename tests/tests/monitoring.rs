//! Monitoring against a live daemon: a known sequence (issue 3, validate 5 of which 2 fail for
//! named reasons, revoke 1, 4 requests dropped in the kernel on a real veth) and the exact
//! counter values it must leave in `GET /metrics`. Needs root.

use std::{process::Stdio, time::Duration};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokenwall_tests::{
    Testbed,
    http::{client_credentials, curl, sample},
};

const PORT: u16 = 8080;
const API: &str = "127.0.0.1:7073";

/// Kills a tmux session when dropped, also when the test fails.
struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = std::process::Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .output();
    }
}

/// Runs `tokenwall top` under tmux at 80x24, captures the screen after a few refreshes, then
/// presses `q` and checks that it exits.
fn top_screen(tb: &Testbed) -> String {
    let session = Tmux(format!("tw-top-{}", std::process::id()));
    let cmd = format!(
        "{} top --control-socket {}",
        tokenwall_tests::tokenwall_bin().unwrap().display(),
        tb.socket().display()
    );
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(args)
            .output()
            .unwrap()
    };
    let out = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "80",
        "-y",
        "24",
        &cmd,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Wait until top has drawn a refresh that shows the counters (its second frame has rates).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let screen = loop {
        let screen =
            String::from_utf8(tmux(&["capture-pane", "-p", "-t", &session.0]).stdout).unwrap();
        if screen.contains("recent alerts") && screen.contains("checks bad_signature") {
            break screen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "top never drew its view:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(screen.lines().count() <= 24 && screen.lines().all(|l| l.chars().count() <= 80));
    tmux(&["send-keys", "-t", &session.0, "q"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while tmux(&["has-session", "-t", &session.0]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "top did not exit on q"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    screen
}

#[test]
fn a_known_sequence_leaves_exact_counters_in_metrics() {
    let tb = Testbed::new().unwrap();
    let _d = tb
        .start_daemon(&["--action", "drop", "--port", "8080", "--http", API])
        .unwrap();
    let nginx = tb.start_nginx(PORT).unwrap();
    let added = tb.cli_json(&["clients", "add", "m", "--scope", "a", "--json"]);
    let basic = format!("m:{}", added["client_secret"].as_str().unwrap());
    let metrics = || curl(tb.server_ns(), &[&format!("http://{API}/metrics")]);
    // Follow the lifecycle from the start of the sequence.
    let watch = std::process::Command::new(tokenwall_tests::tokenwall_bin().unwrap())
        .args(["watch", "--json", "--control-socket"])
        .arg(tb.socket())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    tb.wait_for_followers("watchers", 1);

    // Issue 3.
    let tokens: Vec<String> = (0..3)
        .map(|_| client_credentials(&tb, API, &basic))
        .collect();
    let kid = {
        use base64::Engine as _;
        let h = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(tokens[0].split('.').next().unwrap())
            .unwrap();
        serde_json::from_slice::<serde_json::Value>(&h).unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // Validate 5: the 3 good ones, one with a broken signature, one of an unknown key.
    // A different signature byte in the middle (any base64url character there is canonical).
    let forged = {
        let at = tokens[1].len() - 20;
        let swap = if &tokens[1][at..=at] == "A" { "B" } else { "A" };
        format!("{}{swap}{}", &tokens[1][..at], &tokens[1][at + 1..])
    };
    let unknown = {
        tokenwall::tokens::ring_provider::install();
        let key = tokenwall::tokens::signing::SigningAlg::Es256
            .generate()
            .unwrap();
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some("not-configured".into());
        jsonwebtoken::encode(
            &h,
            &json!({ "iss": "x", "exp": 4_000_000_000u64 }),
            &EncodingKey::from_ec_der(&key),
        )
        .unwrap()
    };
    let hdr = tb.work_dir().join("auth.hdr");
    for (t, want) in tokens
        .iter()
        .map(|t| (t, 200))
        .chain([(&forged, 401), (&unknown, 401)])
    {
        std::fs::write(&hdr, format!("Authorization: Bearer {t}\n")).unwrap();
        let r = curl(
            tb.server_ns(),
            &[
                "-H",
                &format!("@{}", hdr.display()),
                &format!("http://{API}/v1/auth"),
            ],
        );
        assert_eq!(r.status, want, "{r:?}");
    }

    // Revoke 1; then 4 requests with it are dropped in the kernel.
    let file = tb.work_dir().join("t0");
    std::fs::write(&file, &tokens[0]).unwrap();
    tb.cli_json(&[
        "revoke",
        "--token-file",
        &file.display().to_string(),
        "--json",
    ]);
    for _ in 0..4 {
        tb.one_shot("192.0.2.2", PORT, &tokens[0]);
    }
    tb.wait_for_counter("dropped", 4);
    assert!(nginx.never_saw("/dropped"));

    let r = metrics();
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{r:?}"
    );
    let text = r.body;
    let iface = format!("{{iface=\"{}\"}}", tb.server_if());
    for (series, want) in [
        (format!("tokenwall_tokens_issued_total{{kid=\"{kid}\"}}"), 3.0),
        (format!("tokenwall_tokens_validated_total{{outcome=\"ok\",kid=\"{kid}\",version=\"\"}}"), 3.0),
        ("tokenwall_tokens_validated_total{outcome=\"bad_signature\",kid=\"other\",version=\"\"}".into(), 1.0),
        ("tokenwall_tokens_validated_total{outcome=\"unknown_key\",kid=\"other\",version=\"\"}".into(), 1.0),
        ("tokenwall_revocations_total{kind=\"token\",reason=\"operator\"}".into(), 1.0),
        ("tokenwall_validation_seconds_count".into(), 5.0),
        ("tokenwall_revocation_to_kernel_seconds_count".into(), 1.0),
        (format!("tokenwall_kernel_revoked_hits_total{iface}"), 4.0),
        (format!("tokenwall_kernel_dropped_total{iface}"), 4.0),
        // The token and the jti rule recorded with it.
        ("tokenwall_revoked_entries{where=\"store\"}".into(), 2.0),
        ("tokenwall_revoked_entries{where=\"kernel_tokens\"}".into(), 1.0),
        ("tokenwall_cached_tokens".into(), 3.0),
        ("tokenwall_signing_keys{state=\"active\"}".into(), 1.0),
    ] {
        assert_eq!(sample(&text, &series), Some(want), "{series} in\n{text}");
    }
    // Every metric the shipped Grafana dashboard queries exists.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../monitoring/grafana-dashboard.json")).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (i, _) in expr.match_indices("tokenwall_") {
                let name: String = expr[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    text.lines().any(|l| l.starts_with(&format!("{name}{{"))
                        || l.starts_with(&format!("{name} "))),
                    "the dashboard queries {name}, which /metrics does not have"
                );
                queried += 1;
            }
        }
    }
    assert!(queried > 15, "the dashboard queries {queried} metrics");
    // The same sequence, live: every event `watch` saw, by kind, read until the last kernel
    // hit has arrived.
    let mut watch = watch;
    let lines = {
        use std::io::BufRead as _;
        let out = std::io::BufReader::new(watch.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut lines: Vec<String> = Vec::new();
        while lines
            .iter()
            .filter(|l| l.contains("\"kernel_hit\""))
            .count()
            < 4
        {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => panic!("watch saw only {lines:?}"),
            }
        }
        lines
    };
    let _ = watch.kill();
    let _ = watch.wait();
    let seen = lines.join("\n");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let count = |kind: &str| events.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(
        (
            count("issued"),
            count("rejected"),
            count("revoked"),
            count("kernel_hit")
        ),
        // Revoked: the token, and the jti rule recorded with it.
        (3, 2, 2, 4),
        "{seen}"
    );
    assert_eq!(count("validated"), 0, "passing checks are not streamed");
    assert!(
        !seen.contains(&tokens[0]),
        "a token leaked into the event stream"
    );

    // The revoked token's timeline.
    let out = tb.cli(
        &["tokens", "show", "--token", "-", "--json"],
        Some(tokens[0].as_bytes()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(t["issued"].is_string(), "{t}");
    assert_eq!(t["validations"], json!({ "ok": 1 }), "{t}");
    assert!(t["revoked"].is_array(), "{t}");
    assert_eq!(t["kernel_hits"], 4, "{t}");
    assert!(
        t["last_sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.as_str().unwrap().starts_with("192.0.2.2:")),
        "{t}"
    );
    let kinds: Vec<&str> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "issued",
            "revoked",
            "kernel_hit",
            "kernel_hit",
            "kernel_hit",
            "kernel_hit"
        ]
    );
    // The forged token's timeline says why it was refused. A timeline is kept per fingerprint,
    // that is per signed content: the forgery shares the one of the token it was made from,
    // which passed once.
    let out = tb.cli(
        &["tokens", "show", "--token", "-", "--json"],
        Some(forged.as_bytes()),
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        t["validations"],
        json!({ "ok": 1, "bad_signature": 1 }),
        "{t}"
    );
    // What is live and what is revoked.
    let all = tb.cli_json(&["tokens", "list", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let revoked = tb.cli_json(&["tokens", "list", "--revoked", "--json"]);
    assert_eq!(revoked.as_array().unwrap().len(), 1, "{revoked}");
    let soon = tb.cli_json(&["tokens", "list", "--expiring-within", "1m", "--json"]);
    assert_eq!(
        soon.as_array().unwrap().len(),
        0,
        "tokens live 15 minutes: {soon}"
    );

    // `tokenwall top` in an 80x24 terminal (tmux) shows the same counters and the token.
    let screen = top_screen(&tb);
    println!("tokenwall top, as tmux shows it:\n{screen}");
    for want in [
        "tokenwall top",
        "kernel dropped",
        "checks bad_signature",
        "recent alerts",
    ] {
        assert!(screen.contains(want), "{want} missing from\n{screen}");
    }
    let fp = tb.cli_json(&[
        "fingerprint",
        "--token-file",
        &file.display().to_string(),
        "--json",
    ]);
    assert!(
        screen.contains(fp["fingerprint"].as_str().unwrap()),
        "{screen}"
    );
    let dropped_row: Vec<&str> = screen
        .lines()
        .find(|l| l.contains("kernel dropped"))
        .unwrap()
        .split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(
        dropped_row[..4],
        ["kernel", "dropped", "0.0", "4"],
        "{screen}"
    );
    // The per-interface panel: the server interface dropped the 4 requests.
    let iface_row: Vec<&str> = screen
        .lines()
        .find_map(|l| {
            l.rsplit_once("││")
                .filter(|(_, r)| r.starts_with(tb.server_if()))
        })
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no row for {} in\n{screen}", tb.server_if()))
        .split(|c: char| c.is_whitespace() || c == '│')
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(iface_row[2], "4", "{screen}");

    // Monitoring off: a check and a kernel drop leave every counter as it was; on again, they
    // count.
    tb.cli_json(&["monitoring", "off", "--json"]);
    let before = metrics().body;
    std::fs::write(&hdr, format!("Authorization: Bearer {}\n", tokens[1])).unwrap();
    let auth = || {
        curl(
            tb.server_ns(),
            &[
                "-H",
                &format!("@{}", hdr.display()),
                &format!("http://{API}/v1/auth"),
            ],
        )
    };
    assert_eq!(auth().status, 200);
    tb.one_shot("192.0.2.2", PORT, &tokens[0]);
    let off = metrics().body;
    let ok =
        format!("tokenwall_tokens_validated_total{{outcome=\"ok\",kid=\"{kid}\",version=\"\"}}");
    let dropped = format!("tokenwall_kernel_dropped_total{iface}");
    for series in [&ok, &dropped] {
        assert_eq!(
            sample(&off, series),
            sample(&before, series),
            "{series} moved while off"
        );
    }
    tb.cli_json(&["monitoring", "on", "--json"]);
    assert_eq!(auth().status, 200);
    tb.one_shot("192.0.2.2", PORT, &tokens[0]);
    let on = metrics().body;
    assert_eq!(sample(&on, &ok), Some(4.0));
    assert_eq!(sample(&on, &dropped), Some(5.0));

    // Labels never carry tokens or fingerprints.
    for t in &tokens {
        assert!(!text.contains(&t[t.len() - 20..]));
    }
}
