//! Administration commands: OAuth clients, trusted external keys, API keys, tokens, watch.

use anyhow::Context as _;

use super::commands::print;
use crate::{
    cli::{ApiKeysCommand, KeysCommand},
    control::{
        client::call,
        protocol::{self as p, TokenRef},
    },
    tokens::keys::{ExternalKey, KeySource},
};

/// One line per entry, or nothing.
fn lines<T>(items: &[T], line: impl Fn(&T) -> String) -> String {
    items.iter().map(line).collect::<Vec<_>>().join("\n")
}

/// `tokenwall clients …`.
pub async fn clients(cmd: crate::cli::ClientsCommand) -> anyhow::Result<()> {
    use crate::cli::ClientsCommand as C;
    match cmd {
        C::Add { id, scopes, client } => {
            let r = call(&client.control_socket, p::ClientsAdd { id, scopes }).await?;
            print(&client, &r, |r| {
                format!(
                    "client {} added; its secret is shown only now:\n{}",
                    r.client_id, r.client_secret
                )
            });
        }
        C::List(client) => {
            let r = call(&client.control_socket, p::ClientsList {}).await?;
            print(&client, &r, |r| {
                lines(r, |c| format!("{}  scopes: {:?}", c.client_id, c.scopes))
            });
        }
        C::Remove { id, client } => {
            let r = call(&client.control_socket, p::ClientsRemove { id }).await?;
            print(&client, &r, |r| format!("client {} removed", r.removed));
        }
    }
    Ok(())
}

/// `tokenwall keys …`.
pub async fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    match cmd {
        KeysCommand::Add {
            source,
            issuer,
            alg,
            kid,
            audiences,
            typ,
            client,
        } => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
            };
            let source = match (source.pem, source.jwk, source.jwks_url) {
                (Some(p), _, _) => KeySource::Pem { pem: read(&p)? },
                (_, Some(p), _) => KeySource::Jwk {
                    doc: serde_json::from_str(&read(&p)?)
                        .with_context(|| format!("{} is not JSON", p.display()))?,
                },
                (_, _, Some(url)) => KeySource::JwksUrl { url },
                _ => anyhow::bail!("give --pem FILE, --jwk FILE or --jwks-url URL"),
            };
            let key = ExternalKey {
                source,
                issuer,
                alg,
                kid,
                audiences,
                typ,
            };
            let r = call(&client.control_socket, p::KeysAdd { key }).await?;
            print(&client, &r, |r| {
                format!("trusted {} for issuer {}", r.id, r.issuer)
            });
        }
        KeysCommand::List(client) => {
            let r = call(&client.control_socket, p::KeysList {}).await?;
            print(&client, &r, |r| {
                lines(r, |k| match &k.url {
                    Some(url) => format!(
                        "{url}  issuer {}  kids {:?}  fetched_at {:?}  error {:?}",
                        k.issuer, k.kids, k.fetched_at, k.last_error
                    ),
                    None => format!(
                        "{}  {}  issuer {}  {}",
                        k.kid.as_deref().unwrap_or(""),
                        k.alg.as_deref().unwrap_or("-"),
                        k.issuer,
                        k.state.as_deref().unwrap_or(&k.source)
                    ),
                })
            });
        }
        KeysCommand::Rotate(client) => {
            let r = call(&client.control_socket, p::KeysRotate {}).await?;
            print(&client, &r, |r| {
                format!(
                    "active signing key {} (previous {} stays trusted through its grace period)",
                    r.active_kid,
                    r.previous.as_deref().unwrap_or("none")
                )
            });
        }
        KeysCommand::Remove { id, client } => {
            let r = call(&client.control_socket, p::KeysRemove { id }).await?;
            print(&client, &r, |r| format!("no longer trusted: {}", r.removed));
        }
    }
    Ok(())
}

/// `tokenwall apikeys …`.
pub async fn apikeys(cmd: ApiKeysCommand) -> anyhow::Result<()> {
    match cmd {
        ApiKeysCommand::Add {
            name,
            scopes,
            client,
        } => {
            let r = call(&client.control_socket, p::ApiKeysAdd { name, scopes }).await?;
            print(&client, &r, |r| {
                format!(
                    "API key {} created; it is shown only now:\n{}",
                    r.name, r.api_key
                )
            });
        }
        ApiKeysCommand::List(client) => {
            let r = call(&client.control_socket, p::ApiKeysList {}).await?;
            print(&client, &r, |r| {
                lines(r, |k| {
                    format!("{}  {}  scopes: {:?}", k.name, k.fingerprint, k.scopes)
                })
            });
        }
        ApiKeysCommand::Remove { name, client } => {
            let r = call(
                &client.control_socket,
                p::ApiKeysRemove { name: name.clone() },
            )
            .await?;
            print(&client, &r, |r| {
                format!("API key {name} removed and revoked ({})", r.fingerprint)
            });
        }
    }
    Ok(())
}

/// `tokenwall audit …` (no daemon needed).
pub fn audit(cmd: crate::cli::AuditCommand) -> anyhow::Result<()> {
    use crate::cli::AuditCommand as A;
    match cmd {
        A::Verify { state_dir } => match crate::monitoring::audit::verify(&state_dir)? {
            Ok(n) => {
                println!("audit chain intact: {n} records");
                Ok(())
            }
            Err(broken) => anyhow::bail!("audit chain broken at {broken}"),
        },
        A::Export { since, state_dir } => {
            let now = crate::clock::now();
            // A duration counts back from now; times and unix seconds are taken as given.
            let since = match humantime::parse_duration(&since) {
                Ok(d) => now.saturating_sub(d.as_secs()),
                Err(_) => crate::clock::parse_until(&since, 0)?,
            };
            let since = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(since),
            )
            .to_string();
            for r in crate::monitoring::audit::export(&state_dir, &since)? {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
    }
}

/// `tokenwall watch`: one line per lifecycle event until interrupted.
pub async fn watch(args: crate::cli::WatchArgs) -> anyhow::Result<()> {
    let req = p::Watch { kinds: args.kinds }.into();
    let mut lines = super::commands::open_stream(&args.client, &req).await?;
    while let Some(line) = lines.next_line().await? {
        if args.client.json {
            println!("{line}");
            continue;
        }
        let Ok(ev) = serde_json::from_str::<crate::monitoring::lifecycle::LifecycleEvent>(&line)
        else {
            println!("{line}");
            continue;
        };
        println!(
            "{}  {:<14} {:<16} {}{}",
            ev.time,
            serde_json::to_value(ev.kind)?.as_str().unwrap_or(""),
            ev.fingerprint.as_deref().unwrap_or("-"),
            ev.detail,
            ev.source.map(|s| format!(" from {s}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// `tokenwall tokens …`.
pub async fn tokens(cmd: crate::cli::TokensCommand) -> anyhow::Result<()> {
    use crate::cli::TokensCommand as T;
    match cmd {
        T::Show {
            jti,
            fingerprint,
            token,
            client,
        } => {
            let token = match (token, fingerprint) {
                (Some(_), _) => Some(super::commands::token_ref(&crate::cli::TokenArgs {
                    token: Some("-".into()),
                    token_file: None,
                    hash: None,
                    jti: None,
                    sub: None,
                    client: None,
                    kid: None,
                })?),
                (None, Some(fp)) => Some(TokenRef::Hash(fp.parse()?)),
                (None, None) => None,
            };
            if token.is_none() && jti.is_none() {
                anyhow::bail!("give --jti ID, --fingerprint HEX or --token -");
            }
            let t = call(&client.control_socket, p::TokenShow { token, jti }).await?;
            print(&client, &t, |t| {
                let mut out = format!(
                    "token {}  jti {}\n  issued     {}\n  first seen {}\n  checks     {:?}\n  renewals   {}\n  revoked    {}\n  kernel hits {} (last from {:?})\n",
                    t.fingerprint,
                    t.jti.as_deref().unwrap_or("-"),
                    t.issued.as_deref().unwrap_or("-"),
                    t.first_seen,
                    t.validations,
                    t.renewals,
                    t.revoked
                        .as_ref()
                        .map(|(at, why)| format!("{at} ({why})"))
                        .unwrap_or_else(|| "no".into()),
                    t.kernel_hits,
                    t.last_sources,
                );
                for e in &t.events {
                    out.push_str(&format!("  {}  {:?}  {}\n", e.time, e.kind, e.detail));
                }
                out.trim_end().to_string()
            });
        }
        T::List {
            expiring_within,
            revoked,
            sub,
            client,
        } => {
            let expiring_within = expiring_within
                .map(|d| {
                    humantime::parse_duration(&d)
                        .map(|d| d.as_secs())
                        .with_context(|| {
                            format!("--expiring-within {d:?} is not a duration like 10m")
                        })
                })
                .transpose()?;
            let cmd = p::TokensList {
                expiring_within,
                revoked,
                sub,
            };
            let r = call(&client.control_socket, cmd).await?;
            print(&client, &r, |r| {
                lines(r, |t| {
                    format!(
                        "{}  jti {}  iss {}  sub {}  client {}  expires in {}s{}",
                        t.fingerprint,
                        t.jti,
                        t.iss,
                        t.sub,
                        t.client_id,
                        t.expires_in,
                        if t.revoked.is_some() { "  REVOKED" } else { "" }
                    )
                })
            });
        }
    }
    Ok(())
}

/// `tokenwall monitoring on|off`.
pub async fn monitoring(
    state: crate::cli::OnOff,
    client: crate::cli::ClientArgs,
) -> anyhow::Result<()> {
    let on = state == crate::cli::OnOff::On;
    let r = call(&client.control_socket, p::Monitoring { on }).await?;
    print(&client, &r, |r| {
        format!("monitoring {}", if r.monitoring { "on" } else { "off" })
    });
    Ok(())
}
