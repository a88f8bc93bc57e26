//! `tokenwall run --config FILE`: daemon settings, OAuth clients, trusted external keys and API
//! keys in TOML. Flags given on the command line win over the file. Entries are applied at
//! start and are idempotent: an entry already in the state directory is left alone, one that
//! differs from the stored one is an error (remove it with the CLI first), and entries removed
//! from the file stay until removed with the CLI (the state directory is authoritative).
//! Secrets are read from files named here; only their hashes are stored.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use crate::{
    cli::RunArgs,
    tokens::{
        authority::Authority,
        keys::{ExternalKey, KeySource},
    },
};

/// The file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `--http`.
    pub http: Option<std::net::SocketAddr>,
    /// `--issuer`.
    pub issuer: Option<String>,
    /// `--audience`.
    pub audience: Option<String>,
    /// `--access-ttl`.
    pub access_ttl: Option<u64>,
    /// `--refresh-ttl`.
    pub refresh_ttl: Option<u64>,
    /// `--refresh-grace`.
    pub refresh_grace: Option<u64>,
    /// `--jwks-min-refetch`.
    pub jwks_min_refetch: Option<u64>,
    /// `--api-key-header`.
    pub api_key_header: Option<String>,
    /// `--admin-token-file`.
    pub admin_token_file: Option<PathBuf>,
    /// `--signing-alg`.
    pub signing_alg: Option<crate::tokens::signing::SigningAlg>,
    /// `--version-claim`.
    pub version_claim: Option<String>,
    /// `--monitoring`.
    pub monitoring: Option<crate::cli::OnOff>,
    /// `--max-revoked`.
    pub max_revoked: Option<u32>,
    /// `--alert-webhook`.
    pub alert_webhook: Option<String>,
    /// `--alert-queue`.
    pub alert_queue: Option<usize>,
    /// `--alert-replay-sources`.
    pub alert_replay_sources: Option<usize>,
    /// `--alert-hits-per-minute`.
    pub alert_hits_per_minute: Option<u64>,
    /// `--alert-key-rejections-per-minute`.
    pub alert_key_rejections_per_minute: Option<u64>,
    /// `--alert-key-rejection-ratio`.
    pub alert_key_rejection_ratio: Option<f64>,
    /// OAuth clients.
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
    /// Trusted external keys.
    #[serde(default)]
    pub keys: Vec<KeyEntry>,
    /// API keys.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyEntry>,
}

/// `[[clients]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    /// Client id.
    pub id: String,
    /// File holding the client secret.
    pub secret_file: PathBuf,
    /// Allowed scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// `[[keys]]`: exactly one of `pem`, `jwk`, `jwks_url`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    /// PEM public key file.
    pub pem: Option<PathBuf>,
    /// JWK or JWKS file.
    pub jwk: Option<PathBuf>,
    /// JWKS URL.
    pub jwks_url: Option<String>,
    /// Issuer.
    pub issuer: String,
    /// Algorithm.
    pub alg: Option<String>,
    /// Key id.
    pub kid: Option<String>,
    /// Accepted audiences.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Required `typ`.
    pub typ: Option<String>,
}

/// `[[api_keys]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyEntry {
    /// Name.
    pub name: String,
    /// File holding the key.
    pub key_file: PathBuf,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(s.trim().to_string())
}

impl ConfigFile {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))
    }

    /// Fills the run settings the command line left unset.
    pub fn fill(&self, args: &mut RunArgs) {
        macro_rules! fill {
            ($($f:ident),*) => { $( if args.$f.is_none() { args.$f = self.$f.clone(); } )* };
        }
        fill!(
            http,
            issuer,
            audience,
            access_ttl,
            refresh_ttl,
            refresh_grace,
            jwks_min_refetch,
            api_key_header,
            admin_token_file,
            signing_alg,
            version_claim,
            monitoring,
            max_revoked,
            alert_webhook,
            alert_queue,
            alert_replay_sources,
            alert_hits_per_minute,
            alert_key_rejections_per_minute,
            alert_key_rejection_ratio
        );
    }

    /// Registers the file's clients, keys and API keys (idempotently).
    pub fn apply(
        &self,
        authority: &mut Authority,
        hash_of: impl Fn(&str) -> u64,
        now: u64,
    ) -> anyhow::Result<()> {
        for c in &self.clients {
            authority
                .import_client(&c.id, &read_secret(&c.secret_file)?, c.scopes.clone())
                .with_context(|| format!("config client {}", c.id))?;
        }
        for k in &self.keys {
            let source = match (&k.pem, &k.jwk, &k.jwks_url) {
                (Some(p), None, None) => KeySource::Pem {
                    pem: std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                },
                (None, Some(p), None) => KeySource::Jwk {
                    doc: serde_json::from_str(
                        &std::fs::read_to_string(p)
                            .with_context(|| format!("reading {}", p.display()))?,
                    )
                    .with_context(|| format!("{} is not JSON", p.display()))?,
                },
                (None, None, Some(url)) => KeySource::JwksUrl { url: url.clone() },
                _ => anyhow::bail!(
                    "config key for {}: give exactly one of pem, jwk, jwks_url",
                    k.issuer
                ),
            };
            authority
                .add_external(ExternalKey {
                    source,
                    issuer: k.issuer.clone(),
                    alg: k.alg.clone(),
                    kid: k.kid.clone(),
                    audiences: k.audiences.clone(),
                    typ: k.typ.clone(),
                })
                .with_context(|| format!("config key for {}", k.issuer))?;
        }
        for a in &self.api_keys {
            authority
                .import_api_key(
                    &a.name,
                    &read_secret(&a.key_file)?,
                    a.scopes.clone(),
                    &hash_of,
                    now,
                )
                .with_context(|| format!("config API key {}", a.name))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_and_bad_types_are_errors() {
        assert!(toml::from_str::<ConfigFile>("htp = \"127.0.0.1:1\"").is_err());
        assert!(toml::from_str::<ConfigFile>("access_ttl = \"long\"").is_err());
        assert!(toml::from_str::<ConfigFile>("[[clients]]\nid = \"a\"").is_err());
    }

    #[test]
    fn the_command_line_wins_over_the_file() {
        let file: ConfigFile = toml::from_str(
            "http = \"127.0.0.1:9000\"\naudience = \"orders\"\naccess_ttl = 60\n\
             [[clients]]\nid = \"billing\"\nsecret_file = \"/etc/tw/billing\"\nscopes = [\"a\"]\n",
        )
        .unwrap();
        let mut args =
            match crate::cli::parse(["tokenwall", "run", "--iface", "eth0", "--audience", "cli"])
                .unwrap()
                .command
            {
                crate::cli::Command::Run(a) => *a,
                _ => unreachable!(),
            };
        file.fill(&mut args);
        assert_eq!(args.http(), "127.0.0.1:9000".parse().unwrap());
        assert_eq!(args.audience.as_deref(), Some("cli"));
        assert_eq!(args.access_ttl, Some(60));
        assert_eq!(file.clients[0].scopes, ["a"]);
    }

    #[test]
    fn max_revoked_comes_from_the_flag_the_file_or_the_default() {
        let run = |argv: &[&str]| match crate::cli::parse(argv.iter().copied()).unwrap().command {
            crate::cli::Command::Run(a) => *a,
            _ => unreachable!(),
        };
        let file: ConfigFile = toml::from_str("max_revoked = 5000").unwrap();
        let mut args = run(&["tokenwall", "run", "--iface", "eth0"]);
        assert_eq!(args.max_revoked(), agent_common::REVOKED_MAX_ENTRIES);
        file.fill(&mut args);
        assert_eq!(args.max_revoked(), 5000);
        let mut args = run(&["tokenwall", "run", "--iface", "eth0", "--max-revoked", "70"]);
        file.fill(&mut args);
        assert_eq!(args.max_revoked(), 70);
        assert!(
            crate::cli::parse(["tokenwall", "run", "--iface", "e", "--max-revoked", "0"]).is_err()
        );
    }
}
