//! Command-line interface (clap derive). Argument errors are reported on one line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::daemon::{
    RunArgs,
    settings::{ActionArg, DEFAULT_BPFFS, DEFAULT_SOCKET, DEFAULT_STATE_DIR, OnOff},
};

/// eBPF-accelerated enforcement of revoked bearer tokens.
#[derive(Debug, Parser)]
#[command(name = "tokenwall", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load or reuse the kernel programs, attach, serve the control socket.
    Run(Box<RunArgs>),
    /// Revoke a token (durable and in the kernel before this returns).
    Revoke(RevokeArgs),
    /// Lift a revocation.
    Unrevoke(UnrevokeArgs),
    /// Show attachments, counters and store size.
    Status(ClientArgs),
    /// Stream kernel hit events as JSON lines.
    Events(ClientArgs),
    /// Print a token's fingerprint under this host's key.
    Fingerprint(FingerprintArgs),
    /// Remove enforcement from an interface, with its pins.
    Detach(DetachArgs),
    /// Manage OAuth clients (secrets are shown once and stored hashed).
    #[command(subcommand)]
    Clients(ClientsCommand),
    /// Whether a token is active, with its claims (RFC 7662 semantics).
    Introspect(FingerprintArgs),
    /// Manage the keys of trusted external issuers.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage API keys (shown once, stored hashed, revoked in the kernel on removal).
    #[command(subcommand)]
    Apikeys(ApiKeysCommand),
    /// A live full-screen view: rates, kernel drops, top revoked tokens, alerts (q quits).
    Top(ClientArgs),
    /// Turn monitoring on or off at run time.
    Monitoring {
        /// `on` or `off`.
        #[arg(value_enum)]
        state: OnOff,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Follow the token lifecycle live (issued, rejected, renewed, revoked, kernel hits…).
    Watch(WatchArgs),
    /// One token's timeline, or the tokens the daemon knows.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Check or print the hash-chained audit trail (reads the state directory directly).
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `tokenwall watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only these kinds (repeatable).
    #[arg(long = "kind", value_enum, value_name = "KIND")]
    pub kinds: Vec<crate::monitoring::lifecycle::EventKind>,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tokenwall tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// A token's timeline: issued or first seen, checks by outcome, renewals, revocation,
    /// kernel hits and their last sources.
    Show {
        /// By `jti`.
        #[arg(long, value_name = "ID", group = "which")]
        jti: Option<String>,
        /// By fingerprint.
        #[arg(long, value_name = "HEX", group = "which")]
        fingerprint: Option<String>,
        /// Read the token from standard input (`-`).
        #[arg(long, value_name = "-", value_parser = stdin_marker, group = "which")]
        token: Option<String>,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Live tokens the daemon has indexed (issued here or seen valid).
    List {
        /// Only those expiring within this duration (`10m`, `2h`).
        #[arg(long, value_name = "DURATION")]
        expiring_within: Option<String>,
        /// Only revoked ones.
        #[arg(long)]
        revoked: bool,
        /// Only this subject's.
        #[arg(long, value_name = "SUB")]
        sub: Option<String>,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `tokenwall audit …`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check the chain; report the first broken line (exit 1).
    Verify {
        /// State directory holding the audit files.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Print the records since a time, as JSON lines.
    Export {
        /// RFC 3339 time, unix seconds, or a duration back from now (`1h`).
        #[arg(long, value_name = "TIME")]
        since: String,
        /// State directory holding the audit files.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

/// Where an external key comes from: exactly one.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct KeySourceArgs {
    /// A PEM public key file (needs --alg).
    #[arg(long, value_name = "FILE")]
    pub pem: Option<PathBuf>,
    /// A JWK or JWKS file.
    #[arg(long, value_name = "FILE")]
    pub jwk: Option<PathBuf>,
    /// A JWKS URL, fetched, cached and refreshed by the daemon.
    #[arg(long, value_name = "URL")]
    pub jwks_url: Option<String>,
}

/// `tokenwall keys …`.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Trust an external issuer's key(s).
    Add {
        /// The source.
        #[command(flatten)]
        source: KeySourceArgs,
        /// The issuer (`iss`) these keys sign for.
        #[arg(long, value_name = "ISS")]
        issuer: String,
        /// The one algorithm of the key (required for PEM and for RSA or HMAC JWKs without `alg`).
        #[arg(long, value_name = "ALG")]
        alg: Option<String>,
        /// Key id (for a PEM key, or a JWK without one).
        #[arg(long, value_name = "KID")]
        kid: Option<String>,
        /// Accepted audience (repeatable; none: `aud` not checked).
        #[arg(long = "audience", value_name = "AUD")]
        audiences: Vec<String>,
        /// Required `typ` header of the issuer's tokens (e.g. `at+jwt`).
        #[arg(long, value_name = "TYP")]
        typ: Option<String>,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List trusted keys (own, external, remote sets).
    List(ClientArgs),
    /// Make a new active signing key; the previous one keeps verifying until its tokens expire.
    Rotate(ClientArgs),
    /// Stop trusting an external key (by kid) or JWKS URL.
    Remove {
        /// Key id or JWKS URL.
        id: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `tokenwall apikeys …`.
#[derive(Debug, Subcommand)]
pub enum ApiKeysCommand {
    /// Create an API key and print it once.
    Add {
        /// Name of the key (its identity: `X-Auth-Subject`).
        name: String,
        /// Scope granted (repeatable).
        #[arg(long = "scope", value_name = "S")]
        scopes: Vec<String>,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List API keys (names, scopes, fingerprints).
    List(ClientArgs),
    /// Remove an API key and revoke it (dropped in the kernel from now on).
    Remove {
        /// Name of the key.
        name: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// `tokenwall clients …`.
#[derive(Debug, Subcommand)]
pub enum ClientsCommand {
    /// Register a client and print its secret once.
    Add {
        /// Client id.
        id: String,
        /// Scope the client may request (repeatable).
        #[arg(long = "scope", value_name = "S")]
        scopes: Vec<String>,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List clients.
    List(ClientArgs),
    /// Remove a client.
    Remove {
        /// Client id.
        id: String,
        /// Client options.
        #[command(flatten)]
        client: ClientArgs,
    },
}

/// Options of every client command.
#[derive(Debug, Args, Clone)]
pub struct ClientArgs {
    /// Control socket of the daemon.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub control_socket: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Which token: exactly one of the forms.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct TokenArgs {
    /// Read the token from standard input (`-`); never pass a token as an argument.
    #[arg(long, value_name = "-", value_parser = stdin_marker)]
    pub token: Option<String>,
    /// Read the token from a file.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// The token's fingerprint (keyed hash, 16 hex digits).
    #[arg(long, value_name = "HEX")]
    pub hash: Option<String>,
    /// Every token with this `jti` (revoke only).
    #[arg(long, value_name = "ID")]
    pub jti: Option<String>,
    /// Every token of this subject issued until now, and its sessions (revoke only).
    #[arg(long, value_name = "SUB")]
    pub sub: Option<String>,
    /// Every token of this OAuth client issued until now, and its sessions (revoke only).
    #[arg(long, value_name = "ID")]
    pub client: Option<String>,
    /// Every token signed by this key, ever; this host's own key is retired (revoke only).
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
}

impl TokenArgs {
    /// The rule named, if revoking by jti, sub, client or kid.
    pub fn rule(&self) -> Option<(crate::types::RuleKind, &str)> {
        use crate::types::RuleKind as K;
        [
            (K::Jti, &self.jti),
            (K::Sub, &self.sub),
            (K::Client, &self.client),
            (K::Kid, &self.kid),
        ]
        .into_iter()
        .find_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

/// `tokenwall revoke`.
#[derive(Debug, Args)]
pub struct RevokeArgs {
    /// Which token.
    #[command(flatten)]
    pub which: TokenArgs,
    /// When the revocation lapses: unix seconds, RFC 3339, or a duration (`12h`). Default: a
    /// JWT's `exp` plus 5 minutes, otherwise never.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Why (kept in the store).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// The token is an API key.
    #[arg(long)]
    pub api_key: bool,
    /// With --jti, --sub, --client or --kid: only tokens of this issuer (`iss`). Default:
    /// tokens of every trusted issuer.
    #[arg(long, value_name = "ISS")]
    pub issuer: Option<String>,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tokenwall unrevoke`.
#[derive(Debug, Args)]
pub struct UnrevokeArgs {
    /// Which token.
    #[command(flatten)]
    pub which: TokenArgs,
    /// Why (kept in the store).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tokenwall fingerprint`.
#[derive(Debug, Args)]
pub struct FingerprintArgs {
    /// Which token.
    #[command(flatten)]
    pub which: TokenArgs,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `tokenwall detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to detach.
    #[arg(long, value_name = "IF")]
    pub iface: String,
    /// bpffs directory (used when no daemon is running).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// Client options.
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Accepts only `-` for `--token`, without echoing anything else (it may be a real token).
fn stdin_marker(v: &str) -> Result<String, &'static str> {
    if v == "-" {
        Ok(v.to_string())
    } else {
        Err(
            "takes '-' and reads the token from standard input (tokens are never accepted as arguments)",
        )
    }
}

/// Parses arguments; on an error returns the exit code and a one-line message (help and
/// version output are returned whole, with exit code 0).
pub fn parse<I, T>(args: I) -> Result<Cli, (i32, String)>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|e| {
        use clap::error::ErrorKind::*;
        match e.kind() {
            DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => (0, e.to_string()),
            // Never echo what was given to --token: it may be a real token.
            ValueValidation
                if e
                    .get(clap::error::ContextKind::InvalidArg)
                    .is_some_and(|a| a.to_string().starts_with("--token ")) =>
            {
                (2, "tokenwall: --token takes '-' and reads the token from standard input (tokens are never accepted as arguments)".to_string())
            }
            _ => {
                let text = e.to_string();
                let first = text.lines().next().unwrap_or("invalid arguments").trim_start_matches("error: ");
                (2, format!("tokenwall: {first} (see tokenwall --help)"))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::Hook;

    fn err(args: &[&str]) -> (i32, String) {
        let mut v = vec!["tokenwall"];
        v.extend_from_slice(args);
        parse(v).expect_err("should be rejected")
    }

    #[test]
    fn bad_arguments_give_one_line_and_exit_2() {
        for args in [
            &["run"][..],
            &["run", "--iface", "eth0", "--hook", "ebpf"],
            &["run", "--iface", "eth0", "--port", "0"],
            &["run", "--iface", "eth0", "--port", "70000"],
            &["run", "--iface", "eth0", "--action", "block"],
            &["revoke"],
            &["revoke", "--token", "-", "--hash", "ab"],
            &["revoke", "--token", "eyJhbGciOi"],
            &["status", "--bogus"],
            &["frobnicate"],
        ] {
            let (code, msg) = err(args);
            assert_eq!(code, 2, "{args:?}");
            assert_eq!(msg.lines().count(), 1, "{args:?}: {msg}");
            assert!(msg.starts_with("tokenwall: "), "{msg}");
        }
    }

    #[test]
    fn a_token_is_never_accepted_on_the_command_line() {
        let (code, msg) = err(&["revoke", "--token", "secret-token-value"]);
        assert_eq!(code, 2);
        assert!(msg.contains("standard input"), "{msg}");
        assert!(
            !msg.contains("secret-token-value"),
            "the token was echoed: {msg}"
        );
    }

    #[test]
    fn run_flags_reach_the_settings_and_repeat() {
        let cli = parse([
            "tokenwall",
            "run",
            "--iface",
            "a",
            "--iface",
            "b",
            "--port",
            "8080",
            "--port",
            "8443",
            "--hook",
            "tc",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        let s = r.settings.resolve().unwrap();
        assert_eq!(s.ifaces, ["a", "b"]);
        assert_eq!(s.ports, [8080, 8443]);
        assert_eq!(s.hook, Hook::Tc);
        assert_eq!(s.control_socket, PathBuf::from(DEFAULT_SOCKET));
    }

    #[test]
    fn a_config_file_may_name_the_interfaces() {
        assert!(
            parse([
                "tokenwall",
                "run",
                "--config",
                "/etc/tokenwall/tokenwall.toml"
            ])
            .is_ok()
        );
    }
}

pub mod admin;
pub mod commands;
pub mod top;
