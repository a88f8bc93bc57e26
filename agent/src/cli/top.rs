//! `tokenwall top`: a full-screen view (ratatui) of a live daemon, refreshed once a second:
//! request, validation and kernel rates, revocations, the revoked tokens the kernel hits most
//! (by fingerprint), and recent alerts. Fits 80x24, works over SSH, exits on `q`, Esc or Ctrl-C.

use std::time::{Duration, Instant};

use crate::{
    cli::ClientArgs,
    control::{
        client::call,
        protocol::{self as p, TopSnapshot},
    },
};
use ratatui::{
    Frame,
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};

/// A counter of one interface (0 when absent).
fn counter(s: &TopSnapshot, iface: &str, name: &str) -> u64 {
    s.kernel
        .iter()
        .find(|c| c.iface == iface)
        .and_then(|c| c.counters.get(name))
        .copied()
        .unwrap_or(0)
}

/// A kernel counter summed over interfaces.
fn kernel_total(s: &TopSnapshot, name: &str) -> u64 {
    s.kernel.iter().filter_map(|c| c.counters.get(name)).sum()
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
    top: Vec<p::TopToken>,
    alerts: Vec<crate::monitoring::alerts::Alert>,
}

const KERNEL: [(&str, &str); 6] = [
    ("HTTP requests", "http_requests"),
    ("bearer tokens", "bearer_tokens"),
    ("revoked hits", "revoked_hits"),
    ("dropped", "dropped"),
    ("reset", "reset"),
    ("skipped", "skipped"),
];

/// Interfaces shown in the per-interface panel (the rest are in the totals).
const MAX_IFACE_ROWS: usize = 4;

fn view(now: &TopSnapshot, before: Option<&(Instant, TopSnapshot)>) -> View {
    let secs = before.map_or(1.0, |(t, _)| t.elapsed().as_secs_f64().max(0.001));
    // (total, rate per second) of a value read from a snapshot.
    let rate = |read: &dyn Fn(&TopSnapshot) -> u64| {
        let v = read(now) as f64;
        let prev = before.map_or(v, |(_, p)| read(p) as f64);
        (v, (v - prev).max(0.0) / secs)
    };
    let mut rates = Vec::new();
    for (label, name) in KERNEL {
        let (v, r) = rate(&|s| kernel_total(s, name));
        rates.push((format!("kernel {label}"), r, v));
    }
    for outcome in crate::monitoring::metrics::Outcome::ALL
        .iter()
        .map(|o| o.as_str())
    {
        let (v, r) = rate(&|s| s.checks.get(outcome).copied().unwrap_or(0));
        if v > 0.0 || outcome == "ok" {
            rates.push((format!("checks {outcome}"), r, v));
        }
    }
    for label in ["issued", "renewed", "revocations", "alerts"] {
        let (v, r) = rate(&|s| s.lifecycle.get(label).copied().unwrap_or(0));
        rates.push((label.to_string(), r, v));
    }
    let mut names: Vec<&str> = now.kernel.iter().map(|c| c.iface.as_str()).collect();
    names.sort();
    let per_iface = names
        .into_iter()
        .map(|iface| {
            let ((dv, dr), (rv, rr)) = (
                rate(&|s| counter(s, iface, "dropped")),
                rate(&|s| counter(s, iface, "reset")),
            );
            IfaceRow {
                iface: iface.to_string(),
                dropped: (dr, dv),
                reset: (rr, rv),
            }
        })
        .collect();
    View {
        per_iface,
        ifaces: now.ifaces.join(", "),
        rates,
        top: now.top_revoked.clone(),
        alerts: now.alerts.clone(),
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
            t.fingerprint.clone(),
            t.kernel_hits.to_string(),
            t.last_source.clone().unwrap_or_else(|| "-".into()),
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
                a.time.get(11..19).unwrap_or(""),
                a.rule,
                a.fingerprint.as_deref().unwrap_or("-"),
                a.detail
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
    let mut data = call(&args.control_socket, p::Top {}).await?;
    let mut terminal = ratatui::init();
    let result = async {
        let mut before: Option<(Instant, TopSnapshot)> = None;
        loop {
            let v = view(&data, before.as_ref());
            terminal.draw(|f| draw(f, &v))?;
            before = Some((Instant::now(), data.clone()));
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
            data = call(&args.control_socket, p::Top {}).await?;
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
        let iface = |name: &str, dropped: u64, reset: u64| p::IfaceCounters {
            iface: name.into(),
            counters: [
                ("dropped".to_string(), dropped),
                ("reset".to_string(), reset),
            ]
            .into(),
        };
        let data = TopSnapshot {
            ifaces: vec!["eth0 (xdp)".into()],
            kernel: vec![iface("eth0", 40, 0), iface("eth1", 2, 3)],
            checks: [("ok".to_string(), 7)].into(),
            top_revoked: vec![p::TopToken {
                fingerprint: "0123456789abcdef".into(),
                kernel_hits: 42,
                last_source: Some("192.0.2.2:5000".into()),
            }],
            alerts: vec![crate::monitoring::alerts::Alert {
                rule: crate::monitoring::metrics::AlertRule::TokenTheft,
                fingerprint: Some("0123456789abcdef".into()),
                detail: "x".into(),
                time: "2026-11-24T12:00:00Z".into(),
            }],
            ..TopSnapshot::default()
        };
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
