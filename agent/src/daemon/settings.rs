//! Every setting of `tokenwall run`, defined once: one field (with its doc, type and flag) in
//! one of four groups, read from the command line (clap) and from the TOML file (serde, one
//! table per group), merged (the command line wins) and resolved with the named defaults
//! below. Enforcement settings (what the kernel and forward-auth do) are apart from process
//! settings (paths, addresses, sizes): they are what a policy generation will hold.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use agent_common::config::Action;
use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::{
    http::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_CONNECTIONS, Limits},
    kernel::Hook,
    monitoring::alerts::AlertRules,
    tokens::{authority::Settings as AuthoritySettings, jwks::MIN_REFETCH, signing::SigningAlg},
};

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/tokenwall/control.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tokenwall";
/// Default bpffs pin directory.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/tokenwall";
/// Default hook.
pub const DEFAULT_HOOK: Hook = Hook::Xdp;
/// Default watched port.
pub const DEFAULT_PORT: u16 = 80;
/// Default action on a revoked token.
pub const DEFAULT_ACTION: ActionArg = ActionArg::Reset;
/// Default address of the HTTP API.
pub const DEFAULT_HTTP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 7070);
/// Default `aud` of issued tokens.
pub const DEFAULT_AUDIENCE: &str = "api";
/// Default lifetime of issued access tokens, seconds.
pub const DEFAULT_ACCESS_TTL: u64 = 900;
/// Default lifetime of a session's refresh-token family, seconds (30 days).
pub const DEFAULT_REFRESH_TTL: u64 = 30 * 24 * 3600;
/// Default seconds a retired refresh token still rotates once (none).
pub const DEFAULT_REFRESH_GRACE: u64 = 0;
/// Default alerts queued for the webhook.
pub const DEFAULT_ALERT_QUEUE: usize = 256;
/// Default entries of the kernel's revoked-token map.
pub const DEFAULT_MAX_REVOKED: u32 = agent_common::REVOKED_MAX_ENTRIES;

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOff {
    /// On.
    On,
    /// Off.
    Off,
}

/// What the kernel does with a revoked token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionArg {
    /// Drop the request segment (the client hangs until it times out).
    Drop,
    /// Turn the request into a TCP reset toward the gateway; the client gets a reset.
    Reset,
    /// Count and report only.
    Observe,
}

impl From<ActionArg> for Action {
    fn from(a: ActionArg) -> Self {
        match a {
            ActionArg::Drop => Action::Drop,
            ActionArg::Reset => Action::Reset,
            ActionArg::Observe => Action::Observe,
        }
    }
}

/// Process settings: where things are and how big they may grow (`[process]` in the file).
#[derive(Clone, Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSettings {
    /// Interface to enforce on (repeatable).
    #[arg(long = "iface", value_name = "IF", required_unless_present = "config")]
    pub ifaces: Option<Vec<String>>,
    /// Hook: native XDP, generic XDP, or TC ingress [default: xdp].
    #[arg(long, value_enum)]
    pub hook: Option<Hook>,
    /// Durable state: hash key, revocation log, keys, sessions, audit trail
    /// [default: /var/lib/tokenwall].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Control socket to serve [default: /run/tokenwall/control.sock].
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/tokenwall].
    #[arg(long, value_name = "DIR")]
    pub bpffs: Option<PathBuf>,
    /// Address of the HTTP API (forward-auth, OAuth endpoints, JWKS) [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Seconds a client has to send a request's headers; also how long a kept-alive
    /// connection may idle [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub http_header_read_timeout: Option<u64>,
    /// Most HTTP API connections at once; more wait in the listen backlog [default: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub http_max_connections: Option<u64>,
    /// File holding the admin bearer credential for `POST /v1/admin` (none: admin over the
    /// control socket only).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Entries of the kernel's revoked-token map; a pinned map of another size is replaced,
    /// filled from the store before the programs are swapped [default: 1048576].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_revoked: Option<u32>,
}

/// Enforcement settings: what the kernel and forward-auth do (`[enforcement]`).
#[derive(Clone, Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementSettings {
    /// TCP destination port to inspect (repeatable, at most 16) [default: 80].
    #[arg(long = "port", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Option<Vec<u16>>,
    /// Action on a revoked token [default: reset].
    #[arg(long, value_enum)]
    pub action: Option<ActionArg>,
    /// Header carrying API keys (matched like the bearer token, without a scheme).
    #[arg(long, value_name = "NAME")]
    pub api_key_header: Option<String>,
    /// Monitoring (kernel counters and hit events, metrics, events, timelines, alerts); the
    /// audit trail is always on [default: on].
    #[arg(long, value_enum, value_name = "on|off")]
    pub monitoring: Option<OnOff>,
}

/// Token settings: issuance, validation of remote keys, sessions (`[tokens]`).
#[derive(Clone, Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    /// `iss` of the tokens this host issues [default: http://<http address>].
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// `aud` of the tokens this host issues (and requires) [default: api].
    #[arg(long, value_name = "AUD")]
    pub audience: Option<String>,
    /// Lifetime of issued access tokens, in seconds [default: 900].
    #[arg(long, value_name = "SECONDS")]
    pub access_ttl: Option<u64>,
    /// Lifetime of a session's refresh-token family, in seconds [default: 2592000].
    #[arg(long, value_name = "SECONDS")]
    pub refresh_ttl: Option<u64>,
    /// Seconds a just-retired refresh token still rotates once (a lost response) [default: 0].
    #[arg(long, value_name = "SECONDS")]
    pub refresh_grace: Option<u64>,
    /// Least seconds between two fetches of one JWKS URL, for unknown-kid refetches
    /// [default: 30].
    #[arg(long, value_name = "SECONDS")]
    pub jwks_min_refetch: Option<u64>,
    /// Algorithm of this host's signing keys; a change rotates to a new key at start
    /// [default: ES256].
    #[arg(long, value_enum, value_name = "ALG")]
    pub signing_alg: Option<SigningAlg>,
    /// Claim carrying a token's deployment version, used as the `version` metrics label.
    #[arg(long, value_name = "CLAIM")]
    pub version_claim: Option<String>,
}

/// Alert settings (`[alerts]`; flags are prefixed `--alert-`).
#[derive(Clone, Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Where to POST alerts (JSON); none: log, event stream and metric only.
    #[arg(long = "alert-webhook", value_name = "URL")]
    pub webhook: Option<String>,
    /// Alerts queued for the webhook before new ones are dropped [default: 256].
    #[arg(long = "alert-queue", value_name = "N")]
    pub queue: Option<usize>,
    /// Alert when a revoked token is replayed from more than N addresses [default: 3].
    #[arg(long = "alert-replay-sources", value_name = "N")]
    pub replay_sources: Option<usize>,
    /// Alert when one token has more kernel hits than this per minute [default: 600].
    #[arg(long = "alert-hits-per-minute", value_name = "N")]
    pub hits_per_minute: Option<u64>,
    /// Alert on more bad-signature/unknown-key rejections per minute than this [default: 100].
    #[arg(long = "alert-key-rejections-per-minute", value_name = "N")]
    pub key_rejections_per_minute: Option<u64>,
    /// …or on a larger share of the minute's checks than this [default: 0.5].
    #[arg(long = "alert-key-rejection-ratio", value_name = "RATIO")]
    pub key_rejection_ratio: Option<f64>,
}

/// Every setting, as given (on the command line or in the file's tables).
#[derive(Clone, Debug, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSettings {
    /// `[process]`.
    #[command(flatten)]
    #[serde(default)]
    pub process: ProcessSettings,
    /// `[enforcement]`.
    #[command(flatten)]
    #[serde(default)]
    pub enforcement: EnforcementSettings,
    /// `[tokens]`.
    #[command(flatten)]
    #[serde(default)]
    pub tokens: TokenSettings,
    /// `[alerts]`.
    #[command(flatten)]
    #[serde(default)]
    pub alerts: AlertSettings,
}

/// Overlays `over` on `under`: every field `over` sets wins, tables merge field by field.
fn overlay(under: &mut serde_json::Value, over: serde_json::Value) {
    match (under, over) {
        (serde_json::Value::Object(u), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                overlay(u.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (_, serde_json::Value::Null) => {}
        (u, o) => *u = o,
    }
}

impl RunSettings {
    /// These settings (the command line) over `file`'s.
    pub fn over(self, file: RunSettings) -> anyhow::Result<RunSettings> {
        let mut merged = serde_json::to_value(file)?;
        overlay(&mut merged, serde_json::to_value(self)?);
        Ok(serde_json::from_value(merged)?)
    }

    /// Every setting with its default filled in, checked.
    pub fn resolve(self) -> anyhow::Result<Resolved> {
        let (p, e, t, a) = (self.process, self.enforcement, self.tokens, self.alerts);
        let ifaces = p.ifaces.unwrap_or_default();
        if ifaces.is_empty() {
            bail!("give --iface IF (or ifaces in the [process] table of the config file)");
        }
        let ports = e.ports.unwrap_or_else(|| vec![DEFAULT_PORT]);
        if ports.is_empty() || ports.len() > agent_common::MAX_PORTS {
            bail!(
                "watch 1 to {} ports, got {}",
                agent_common::MAX_PORTS,
                ports.len()
            );
        }
        if ports.contains(&0) {
            bail!("port 0 cannot be watched");
        }
        let http = p.http.unwrap_or(DEFAULT_HTTP);
        let http_limits = Limits::new(
            p.http_header_read_timeout
                .map_or(DEFAULT_HEADER_READ_TIMEOUT, Duration::from_secs),
            p.http_max_connections
                .map_or(Ok(DEFAULT_MAX_CONNECTIONS), usize::try_from)
                .context("the HTTP connection limit is too large")?,
        )?;
        let max_revoked = p.max_revoked.unwrap_or(DEFAULT_MAX_REVOKED);
        if max_revoked == 0 {
            bail!("the revoked-token map needs at least one entry (max_revoked)");
        }
        let defaults = AlertRules::default();
        Ok(Resolved {
            ifaces,
            hook: p.hook.unwrap_or(DEFAULT_HOOK),
            state_dir: p.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            control_socket: p.control_socket.unwrap_or_else(|| DEFAULT_SOCKET.into()),
            bpffs: p.bpffs.unwrap_or_else(|| DEFAULT_BPFFS.into()),
            http,
            http_limits,
            admin_token_file: p.admin_token_file,
            max_revoked,
            ports,
            action: e.action.unwrap_or(DEFAULT_ACTION).into(),
            api_key_header: e.api_key_header,
            monitoring: e.monitoring != Some(OnOff::Off),
            authority: AuthoritySettings {
                issuer: t.issuer.unwrap_or_else(|| format!("http://{http}")),
                audience: t.audience.unwrap_or_else(|| DEFAULT_AUDIENCE.into()),
                access_ttl: t.access_ttl.unwrap_or(DEFAULT_ACCESS_TTL),
                jwks_min_refetch: t.jwks_min_refetch.unwrap_or(MIN_REFETCH),
                signing_alg: t.signing_alg.unwrap_or_default(),
            },
            refresh_ttl: t.refresh_ttl.unwrap_or(DEFAULT_REFRESH_TTL),
            refresh_grace: t.refresh_grace.unwrap_or(DEFAULT_REFRESH_GRACE),
            version_claim: t.version_claim,
            alert_rules: AlertRules {
                replay_sources: a.replay_sources.unwrap_or(defaults.replay_sources),
                hits_per_minute: a.hits_per_minute.unwrap_or(defaults.hits_per_minute),
                key_rejections_per_minute: a
                    .key_rejections_per_minute
                    .unwrap_or(defaults.key_rejections_per_minute),
                key_rejection_ratio: a
                    .key_rejection_ratio
                    .unwrap_or(defaults.key_rejection_ratio),
            },
            alert_webhook: a.webhook,
            alert_queue: a.queue.unwrap_or(DEFAULT_ALERT_QUEUE),
        })
    }
}

/// The settings a daemon runs with.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// Interfaces to enforce on.
    pub ifaces: Vec<String>,
    /// The hook.
    pub hook: Hook,
    /// State directory.
    pub state_dir: PathBuf,
    /// Control socket.
    pub control_socket: PathBuf,
    /// bpffs pin directory.
    pub bpffs: PathBuf,
    /// HTTP API address.
    pub http: SocketAddr,
    /// HTTP API limits.
    pub http_limits: Limits,
    /// Admin credential file.
    pub admin_token_file: Option<PathBuf>,
    /// Entries of the kernel's revoked-token map.
    pub max_revoked: u32,
    /// Watched ports.
    pub ports: Vec<u16>,
    /// Kernel action.
    pub action: Action,
    /// API-key header.
    pub api_key_header: Option<String>,
    /// Monitoring at start.
    pub monitoring: bool,
    /// Issuance and key settings.
    pub authority: AuthoritySettings,
    /// Refresh-family lifetime.
    pub refresh_ttl: u64,
    /// Refresh grace.
    pub refresh_grace: u64,
    /// Deployment-version claim.
    pub version_claim: Option<String>,
    /// Alert thresholds.
    pub alert_rules: AlertRules,
    /// Alert webhook.
    pub alert_webhook: Option<String>,
    /// Alert queue bound.
    pub alert_queue: usize,
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cmd {
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        settings: RunSettings,
    }

    fn flags(args: &[&str]) -> RunSettings {
        let mut v = vec!["run"];
        v.extend_from_slice(args);
        Cmd::try_parse_from(v).unwrap().settings
    }

    #[test]
    fn defaults_fill_what_nothing_sets() {
        let r = flags(&["--iface", "eth0"]).resolve().unwrap();
        assert_eq!(r.hook, DEFAULT_HOOK);
        assert_eq!(r.ports, [DEFAULT_PORT]);
        assert_eq!(r.action, Action::Reset);
        assert_eq!(r.control_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(r.http, DEFAULT_HTTP);
        assert_eq!(r.authority.issuer, "http://127.0.0.1:7070");
        assert_eq!(r.refresh_ttl, DEFAULT_REFRESH_TTL);
        assert!(r.monitoring);
    }

    #[test]
    fn the_command_line_wins_over_the_file_field_by_field() {
        let file: RunSettings = toml::from_str(
            "[process]\nifaces = [\"eth9\"]\nhttp = \"127.0.0.1:9000\"\n\
             [enforcement]\nports = [8080, 8443]\naction = \"drop\"\n\
             [tokens]\naudience = \"orders\"\naccess_ttl = 60\n\
             [alerts]\nwebhook = \"http://127.0.0.1:1/hook\"\n",
        )
        .unwrap();
        let r = flags(&["--iface", "eth0", "--audience", "cli"])
            .over(file)
            .unwrap()
            .resolve()
            .unwrap();
        assert_eq!(r.ifaces, ["eth0"]);
        assert_eq!(r.http, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(r.ports, [8080, 8443]);
        assert_eq!(r.action, Action::Drop);
        assert_eq!(r.authority.audience, "cli");
        assert_eq!(r.authority.access_ttl, 60);
        assert_eq!(r.alert_webhook.as_deref(), Some("http://127.0.0.1:1/hook"));
    }

    #[test]
    fn max_revoked_comes_from_the_flag_the_file_or_the_default() {
        assert_eq!(
            flags(&["--iface", "e"]).resolve().unwrap().max_revoked,
            DEFAULT_MAX_REVOKED
        );
        let file: RunSettings = toml::from_str("[process]\nmax_revoked = 5000").unwrap();
        let r = |args: &[&str]| flags(args).over(file.clone()).unwrap().resolve().unwrap();
        assert_eq!(r(&["--iface", "e"]).max_revoked, 5000);
        assert_eq!(r(&["--iface", "e", "--max-revoked", "70"]).max_revoked, 70);
        assert!(Cmd::try_parse_from(["run", "--iface", "e", "--max-revoked", "0"]).is_err());
        let zero: RunSettings =
            toml::from_str("[process]\nifaces = [\"e\"]\nmax_revoked = 0").unwrap();
        assert!(zero.resolve().is_err());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        for text in [
            "htp = 1",
            "[process]\nhtp = \"127.0.0.1:1\"",
            "[tokens]\naccess_ttl = \"long\"",
            "[enforcement]\naction = \"block\"",
        ] {
            assert!(toml::from_str::<RunSettings>(text).is_err(), "{text}");
        }
        let zero: RunSettings =
            toml::from_str("[process]\nifaces = [\"e\"]\nhttp_header_read_timeout = 0").unwrap();
        assert!(
            zero.resolve().is_err(),
            "a zero timeout from the file is refused"
        );
        let ports: RunSettings =
            toml::from_str("[process]\nifaces = [\"e\"]\n[enforcement]\nports = [0]").unwrap();
        assert!(ports.resolve().is_err());
    }

    #[test]
    fn the_help_text_states_the_defaults_the_code_uses() {
        let help = <Cmd as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        for want in [
            format!("[default: {DEFAULT_PORT}]"),
            format!("[default: {DEFAULT_STATE_DIR}]"),
            format!("[default: {DEFAULT_SOCKET}]"),
            format!("[default: {DEFAULT_BPFFS}]"),
            format!("[default: {DEFAULT_HTTP}]"),
            format!("[default: {DEFAULT_AUDIENCE}]"),
            format!("[default: {DEFAULT_ACCESS_TTL}]"),
            format!("[default: {DEFAULT_REFRESH_TTL}]"),
            format!("[default: {DEFAULT_REFRESH_GRACE}]"),
            format!("[default: {MIN_REFETCH}]"),
            format!("[default: {DEFAULT_ALERT_QUEUE}]"),
            format!("[default: {DEFAULT_MAX_REVOKED}]"),
            format!("[default: {}]", DEFAULT_HEADER_READ_TIMEOUT.as_secs()),
            format!("[default: {DEFAULT_MAX_CONNECTIONS}]"),
            format!("[default: {}]", AlertRules::default().replay_sources),
            format!("[default: {}]", AlertRules::default().hits_per_minute),
            format!(
                "[default: {}]",
                AlertRules::default().key_rejections_per_minute
            ),
            format!("[default: {}]", AlertRules::default().key_rejection_ratio),
            "[default: reset]".to_string(),
            "[default: xdp]".to_string(),
        ] {
            assert!(
                help.contains(&want),
                "{want} missing from the help:\n{help}"
            );
        }
    }
}
