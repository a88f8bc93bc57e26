//! `tokenwall run --config FILE`: daemon settings (one table per group, the same names as the
//! flags), OAuth clients, trusted external keys and API keys in TOML. Flags given on the
//! command line win over the file. Entries are applied at
//! start and are idempotent: an entry already in the state directory is left alone, one that
//! differs from the stored one is an error (remove it with the CLI first), and entries removed
//! from the file stay until removed with the CLI (the state directory is authoritative).
//! Secrets are read from files named here; only their hashes are stored.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

use super::settings::{
    AlertSettings, EnforcementSettings, ProcessSettings, RunSettings, TokenSettings,
};
use crate::tokens::{
    authority::Authority,
    keys::{ExternalKey, KeySource},
};

/// The file's contents: the settings tables (see [`super::settings`]) and the state it
/// imports.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[process]`.
    #[serde(default)]
    pub process: ProcessSettings,
    /// `[enforcement]`.
    #[serde(default)]
    pub enforcement: EnforcementSettings,
    /// `[tokens]`.
    #[serde(default)]
    pub tokens: TokenSettings,
    /// `[alerts]`.
    #[serde(default)]
    pub alerts: AlertSettings,
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

    /// The file's settings tables.
    pub fn settings(&self) -> RunSettings {
        RunSettings {
            process: self.process.clone(),
            enforcement: self.enforcement.clone(),
            tokens: self.tokens.clone(),
            alerts: self.alerts.clone(),
        }
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
    fn the_file_holds_settings_tables_and_imports() {
        let file: ConfigFile = toml::from_str(
            "[process]\nhttp = \"127.0.0.1:9000\"\n[tokens]\naccess_ttl = 60\n\
             [[clients]]\nid = \"billing\"\nsecret_file = \"/etc/tw/billing\"\nscopes = [\"a\"]\n",
        )
        .unwrap();
        assert_eq!(file.settings().tokens.access_ttl, Some(60));
        assert_eq!(file.clients[0].scopes, ["a"]);
    }

    #[test]
    fn unknown_tables_fields_and_bad_types_are_errors() {
        assert!(
            toml::from_str::<ConfigFile>("http = \"127.0.0.1:1\"").is_err(),
            "not in a table"
        );
        assert!(toml::from_str::<ConfigFile>("[tokens]\naccess_ttl = \"long\"").is_err());
        assert!(toml::from_str::<ConfigFile>("[[clients]]\nid = \"a\"").is_err());
        assert!(toml::from_str::<ConfigFile>("[policy]\nx = 1").is_err());
    }
}
