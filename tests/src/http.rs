//! HTTP calls with curl inside a test namespace, for the OAuth and gateway tests.

use crate::{Daemon, Gateway, Testbed};

/// An HTTP response as curl saw it.
#[derive(Debug)]
pub struct Resp {
    /// curl's exit code (56: connection reset).
    pub exit: i32,
    /// HTTP status (0 when none arrived).
    pub status: u16,
    /// Header lines.
    pub headers: Vec<String>,
    /// Body.
    pub body: String,
}

impl Resp {
    /// Whether the connection was reset (the kernel's verdict) rather than answered.
    pub fn was_reset(&self) -> bool {
        self.exit == 56 || self.status == 0
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        let prefix = format!("{}:", name.to_ascii_lowercase());
        self.headers
            .iter()
            .find(|h| h.to_ascii_lowercase().starts_with(&prefix))
            .map(|h| h[prefix.len()..].trim())
    }
}

/// curl in namespace `ns`; `-i` output split into status, headers and body.
pub fn curl(ns: &str, args: &[&str]) -> Resp {
    let mut argv = vec![
        "nsenter".to_string(),
        format!("--net=/run/netns/{ns}"),
        "--".into(),
        "curl".into(),
        "-sS".into(),
        "-i".into(),
        "--max-time".into(),
        "3".into(),
    ];
    argv.extend(args.iter().map(|s| s.to_string()));
    let out = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Resp {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers: lines.map(str::to_string).collect(),
        body: body.to_string(),
    }
}

/// GET `path` through the gateway on `port`, from the client namespace, with a bearer token.
pub fn gateway_get(tb: &Testbed, port: u16, path: &str, token: Option<&str>) -> Resp {
    let headers: Vec<String> = token
        .map(|t| format!("Authorization: Bearer {t}"))
        .into_iter()
        .collect();
    gateway_get_with(tb, port, path, &headers)
}

/// GET `path` through the gateway with these header lines (kept in a file: a token never
/// appears on a command line).
pub fn gateway_get_with(tb: &Testbed, port: u16, path: &str, headers: &[String]) -> Resp {
    let hdr = tb
        .work_dir()
        .join(format!("gw-hdr-{}", path.trim_start_matches('/')));
    let text: String = headers.iter().map(|h| format!("{h}\n")).collect();
    std::fs::write(&hdr, text).unwrap();
    curl(
        tb.client_ns(),
        &[
            "-H",
            &format!("@{}", hdr.display()),
            &format!("http://192.0.2.1:{port}{path}"),
        ],
    )
}

/// Asks the daemon's forward-auth endpoint (`GET /v1/auth` on `api`) directly from the server
/// namespace, past the kernel path (the API port is not watched).
pub fn forward_auth(tb: &Testbed, api: &str, token: &str) -> Resp {
    let hdr = tb.work_dir().join("fa-hdr");
    std::fs::write(&hdr, format!("Authorization: Bearer {token}\n")).unwrap();
    curl(
        tb.server_ns(),
        &[
            "-H",
            &format!("@{}", hdr.display()),
            &format!("http://{api}/v1/auth"),
        ],
    )
}

/// The daemon (XDP, reset, watching `port`, HTTP API on `api`) and nginx on `port` using it
/// as its `auth_request` authorizer.
/// `extra` goes to `tokenwall run` too.
pub fn daemon_behind_gateway(
    tb: &Testbed,
    port: u16,
    api: &str,
    extra: &[&str],
) -> (Daemon, Gateway) {
    let port_arg = port.to_string();
    let mut args = vec![
        "--hook", "xdp", "--action", "reset", "--port", &port_arg, "--http", api,
    ];
    args.extend_from_slice(extra);
    let daemon = tb.start_daemon(&args).unwrap();
    let gateway = tb.start_gateway(port, api).unwrap();
    (daemon, gateway)
}

/// The value of the sample `series` (name with its labels as written) in OpenMetrics text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A kernel counter in OpenMetrics text (its one series carries the `iface` label).
pub fn kernel_counter(text: &str, name: &str) -> f64 {
    let prefix = format!("tokenwall_kernel_{name}_total{{");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An access token from `POST /oauth2/token` (client credentials, HTTP Basic `id:secret`).
pub fn client_credentials(tb: &Testbed, api: &str, basic: &str) -> String {
    let r = curl(
        tb.server_ns(),
        &[
            "-u",
            basic,
            "-d",
            "grant_type=client_credentials",
            &format!("http://{api}/oauth2/token"),
        ],
    );
    r.json()["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access token: {r:?}"))
        .to_string()
}
