//! `tokenwall top`: a full-screen view (ratatui) of a live daemon, refreshed once a second:
//! request, validation and kernel rates, revocations, the revoked tokens the kernel hits most
//! (by fingerprint), and recent alerts. Fits 80x24, works over SSH, exits on `q`, Esc or Ctrl-C.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};
use serde_json::Value;

use crate::{api::Request, cli::ClientArgs, control};

/// Every sample of OpenMetrics text, by series (name and labels as written).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of `name` whose labels contain `label` (empty: any).
fn total(s: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    s.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(label)
        })
        .map(|(_, v)| v)
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// The interface names in the `iface` labels of `name`'s series, sorted.
fn iface_labels(s: &HashMap<String, f64>, name: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .keys()
        .filter(|k| k.starts_with(&format!("{name}{{")))
        .filter_map(|k| {
            let rest = &k[k.find("iface=\"")? + 7..];
            Some(rest[..rest.find('"')?].to_string())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Kernel drops and resets of one interface: rate and total of each.
struct IfaceRow {
    iface: String,
    dropped: (f64, f64),
    reset: (f64, f64),
}

/// What one refresh shows.
struct View {
    ifaces: String,
    rates: Vec<(String, f64, f64)>,
    per_iface: Vec<IfaceRow>,
    top: Vec<Value>,
    alerts: Vec<Value>,
}

const KERNEL: [(&str, &str); 6] = [
    ("HTTP requests", "tokenwall_kernel_http_requests_total"),
    ("bearer tokens", "tokenwall_kernel_bearer_tokens_total"),
    ("revoked hits", "tokenwall_kernel_revoked_hits_total"),
    ("dropped", "tokenwall_kernel_dropped_total"),
    ("reset", "tokenwall_kernel_reset_total"),
    ("skipped", "tokenwall_kernel_skipped_total"),
];

/// Interfaces shown in the per-interface panel (the rest are in the totals).
const MAX_IFACE_ROWS: usize = 4;

const OUTCOMES: [&str; 9] = [
    "ok",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "unknown_key",
    "wrong_issuer",
    "wrong_audience",
    "revoked",
    "malformed",
];

fn view(now: &Value, before: Option<&(Instant, HashMap<String, f64>)>) -> View {
    let s = samples(now["metrics"].as_str().unwrap_or(""));
    let secs = before.map_or(1.0, |(t, _)| t.elapsed().as_secs_f64().max(0.001));
    let rate = |name: &str, label: &str| {
        let v = total(&s, name, label);
        let prev = before.map_or(v, |(_, p)| total(p, name, label));
        (v, (v - prev).max(0.0) / secs)
    };
    let mut rates = Vec::new();
    for (label, name) in KERNEL {
        let (v, r) = rate(name, "");
        rates.push((format!("kernel {label}"), r, v));
    }
    for outcome in OUTCOMES {
        let (v, r) = rate(
            "tokenwall_tokens_validated_total",
            &format!("outcome=\"{outcome}\""),
        );
        if v > 0.0 || outcome == "ok" {
            rates.push((format!("checks {outcome}"), r, v));
        }
    }
    for (label, name) in [
        ("issued", "tokenwall_tokens_issued_total"),
        ("renewed", "tokenwall_tokens_renewed_total"),
        ("revocations", "tokenwall_revocations_total"),
        ("alerts", "tokenwall_alerts_total"),
    ] {
        let (v, r) = rate(name, "");
        rates.push((label.to_string(), r, v));
    }
    let dropped = "tokenwall_kernel_dropped_total";
    let per_iface = iface_labels(&s, dropped)
        .into_iter()
        .map(|iface| {
            let label = format!("iface=\"{iface}\"");
            let ((dv, dr), (rv, rr)) = (
                rate(dropped, &label),
                rate("tokenwall_kernel_reset_total", &label),
            );
            IfaceRow {
                iface,
                dropped: (dr, dv),
                reset: (rr, rv),
            }
        })
        .collect();
    let list = |k: &str| now[k].as_array().cloned().unwrap_or_default();
    View {
        per_iface,
        ifaces: list("ifaces")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect::<Vec<_>>()
            .join(", "),
        rates,
        top: list("top_revoked"),
        alerts: list("alerts"),
    }
}

fn draw(f: &mut Frame, v: &View) {
    let [head, body, alerts] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(8),
        Constraint::Length(6),
    ])
    .areas(f.area());
    let title = format!(
        "tokenwall top  {}  {}   q quits",
        if v.ifaces.is_empty() {
            "(not attached)"
        } else {
            &v.ifaces
        },
        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
    );
    f.render_widget(
        Paragraph::new(title).style(Style::default().add_modifier(Modifier::BOLD)),
        head,
    );
    let [left, right] =
        Layout::horizontal([Constraint::Length(40), Constraint::Min(30)]).areas(body);
    let rows = v.rates.iter().map(|(label, rate, total)| {
        Row::new([label.clone(), format!("{rate:.1}"), format!("{total:.0}")])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(20),
                Constraint::Length(7),
                Constraint::Length(9),
            ],
        )
        .header(
            Row::new(["", "per s", "total"]).style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(" rates ")),
        left,
    );
    let [per_iface, right] = Layout::vertical([
        Constraint::Length(3 + v.per_iface.len().clamp(1, MAX_IFACE_ROWS) as u16),
        Constraint::Min(4),
    ])
    .areas(right);
    let rows = v.per_iface.iter().take(MAX_IFACE_ROWS).map(|r| {
        Row::new([
            r.iface.clone(),
            format!("{:.1}", r.dropped.0),
            format!("{:.0}", r.dropped.1),
            format!("{:.1}", r.reset.0),
            format!("{:.0}", r.reset.1),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
                Constraint::Length(6),
            ],
        )
        .header(
            Row::new(["iface", "drop/s", "drops", "rst/s", "resets"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(" kernel per interface ")),
        per_iface,
    );
    let rows = v.top.iter().map(|t| {
        Row::new([
            t["fingerprint"].as_str().unwrap_or("").to_string(),
            t["kernel_hits"].to_string(),
            t["last_source"].as_str().unwrap_or("-").to_string(),
        ])
    });
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(16),
                Constraint::Length(5),
                Constraint::Min(8),
            ],
        )
        .header(
            Row::new(["fingerprint", "hits", "last from"])
                .style(Style::default().add_modifier(Modifier::BOLD)),
        )
        .block(Block::bordered().title(" most hit revoked tokens ")),
        right,
    );
    let lines: Vec<Line> = v
        .alerts
        .iter()
        .rev()
        .take(4)
        .map(|a| {
            Line::from(format!(
                "{} {} {} {}",
                a["time"].as_str().unwrap_or("").get(11..19).unwrap_or(""),
                a["rule"].as_str().unwrap_or(""),
                a["fingerprint"].as_str().unwrap_or("-"),
                a["detail"].as_str().unwrap_or("")
            ))
        })
        .collect();
    f.render_widget(
        Paragraph::new(if lines.is_empty() {
            vec![Line::from("none")]
        } else {
            lines
        })
        .block(Block::bordered().title(" recent alerts ")),
        alerts,
    );
}

/// Runs the view until `q`.
pub async fn run(args: ClientArgs) -> anyhow::Result<()> {
    // Fail before taking over the terminal when the daemon is not there.
    let mut data = control::call(&args.control_socket, &Request::Top).await?;
    let mut terminal = ratatui::init();
    let result = async {
        let mut before: Option<(Instant, HashMap<String, f64>)> = None;
        loop {
            let v = view(&data, before.as_ref());
            terminal.draw(|f| draw(f, &v))?;
            before = Some((
                Instant::now(),
                samples(data["metrics"].as_str().unwrap_or("")),
            ));
            let deadline = Instant::now() + Duration::from_secs(1);
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if event::poll(left)?
                    && let Event::Key(k) = event::read()?
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc)
                        || (k.code == KeyCode::Char('c')
                            && k.modifiers.contains(KeyModifiers::CONTROL)))
                {
                    return Ok(());
                }
            }
            data = control::call(&args.control_socket, &Request::Top).await?;
        }
    }
    .await;
    ratatui::restore();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_fits_80x24_and_shows_counters_tokens_and_alerts() {
        let metrics = "tokenwall_kernel_dropped_total{iface=\"eth0\"} 40\n\
                       tokenwall_kernel_dropped_total{iface=\"eth1\"} 2\n\
                       tokenwall_kernel_reset_total{iface=\"eth0\"} 0\n\
                       tokenwall_kernel_reset_total{iface=\"eth1\"} 3\n\
                       tokenwall_tokens_validated_total{outcome=\"ok\",kid=\"k\",version=\"\"} 7\n# EOF\n";
        let data = serde_json::json!({
            "metrics": metrics, "ifaces": ["eth0 (xdp)"],
            "top_revoked": [{ "fingerprint": "0123456789abcdef", "kernel_hits": 42, "last_source": "192.0.2.2:5000" }],
            "alerts": [{ "rule": "token_theft", "fingerprint": "0123456789abcdef", "detail": "x", "time": "2026-11-24T12:00:00Z" }],
        });
        let v = view(&data, None);
        let backend = ratatui::backend::TestBackend::new(80, 24);
        let mut t = ratatui::Terminal::new(backend).unwrap();
        t.draw(|f| draw(f, &v)).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .chunks(80)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>() + "\n")
            .collect();
        for want in [
            "eth0 (xdp)",
            "kernel dropped",
            "42",
            "checks ok",
            "kernel per interface",
            "0123456789abcdef",
            "token_theft",
        ] {
            assert!(screen.contains(want), "{want} missing from\n{screen}");
        }
        // Per interface: eth0 dropped 40 and reset none, eth1 dropped 2 and reset 3.
        let row = |iface: &str| -> Vec<String> {
            let line = screen
                .lines()
                .find(|l| l.contains(&format!("│{iface} ")))
                .unwrap();
            let panel = line.rsplit_once("││").map_or(line, |(_, r)| r);
            panel
                .split(|c: char| c.is_whitespace() || c == '│')
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        assert_eq!(row("eth0"), ["eth0", "0.0", "40", "0.0", "0"], "{screen}");
        assert_eq!(row("eth1"), ["eth1", "0.0", "2", "0.0", "3"], "{screen}");
    }
}
