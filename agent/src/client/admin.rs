//! Administration commands: OAuth clients, trusted external keys, API keys.

use anyhow::Context as _;

use super::print;
use crate::{
    api::Request,
    cli::{ApiKeysCommand, ClientArgs, KeysCommand},
    control,
    tokens::keys::{ExternalKey, KeySource},
};

/// Sends one request and prints the reply (JSON with --json, else `text`).
async fn call_and_print(
    client: &ClientArgs,
    req: &Request,
    text: impl FnOnce(&serde_json::Value) -> String,
) -> anyhow::Result<()> {
    let data = control::call(&client.control_socket, req).await?;
    print(client, &data, || text(&data));
    Ok(())
}

/// One line per entry of a JSON array, or nothing.
fn lines(data: &serde_json::Value, line: impl Fn(&serde_json::Value) -> String) -> String {
    data.as_array()
        .map(|a| a.iter().map(line).collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// `tokenwall clients …`.
pub async fn clients(cmd: crate::cli::ClientsCommand) -> anyhow::Result<()> {
    use crate::cli::ClientsCommand as C;
    match cmd {
        C::Add { id, scopes, client } => {
            call_and_print(
                &client,
                &Request::ClientsAdd {
                    id: id.clone(),
                    scopes,
                },
                |data| {
                    format!(
                        "client {id} added; its secret is shown only now:\n{}",
                        data["client_secret"].as_str().unwrap_or_default()
                    )
                },
            )
            .await?;
        }
        C::List(client) => {
            call_and_print(&client, &Request::ClientsList, |data| {
                lines(data, |c| {
                    format!(
                        "{}  scopes: {}",
                        c["client_id"].as_str().unwrap_or(""),
                        c["scopes"]
                    )
                })
            })
            .await?;
        }
        C::Remove { id, client } => {
            call_and_print(&client, &Request::ClientsRemove { id: id.clone() }, |_| {
                format!("client {id} removed")
            })
            .await?;
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
            call_and_print(&client, &Request::KeysAdd { key }, |data| {
                format!("trusted {} for issuer {}", data["id"], data["issuer"])
            })
            .await?;
        }
        KeysCommand::List(client) => {
            call_and_print(&client, &Request::KeysList, |data| {
                lines(data, |k| match k["url"].as_str() {
                    Some(url) => format!(
                        "{url}  issuer {}  kids {}  fetched_at {}  error {}",
                        k["issuer"], k["kids"], k["fetched_at"], k["last_error"]
                    ),
                    None => format!(
                        "{}  {}  issuer {}  {}",
                        k["kid"].as_str().unwrap_or(""),
                        k["alg"].as_str().unwrap_or("-"),
                        k["issuer"],
                        k["state"].as_str().or(k["source"].as_str()).unwrap_or("")
                    ),
                })
            })
            .await?;
        }
        KeysCommand::Rotate(client) => {
            call_and_print(&client, &Request::KeysRotate, |data| {
                format!(
                    "active signing key {} (previous {} stays trusted through its grace period)",
                    data["active_kid"], data["previous"]
                )
            })
            .await?;
        }
        KeysCommand::Remove { id, client } => {
            call_and_print(&client, &Request::KeysRemove { id: id.clone() }, |_| {
                format!("no longer trusted: {id}")
            })
            .await?;
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
            let req = Request::ApiKeysAdd {
                name: name.clone(),
                scopes,
            };
            call_and_print(&client, &req, |data| {
                format!(
                    "API key {name} created; it is shown only now:\n{}",
                    data["api_key"].as_str().unwrap_or_default()
                )
            })
            .await?;
        }
        ApiKeysCommand::List(client) => {
            call_and_print(&client, &Request::ApiKeysList, |data| {
                lines(data, |k| {
                    format!(
                        "{}  {}  scopes: {}",
                        k["name"].as_str().unwrap_or(""),
                        k["fingerprint"].as_str().unwrap_or(""),
                        k["scopes"]
                    )
                })
            })
            .await?;
        }
        ApiKeysCommand::Remove { name, client } => {
            let req = Request::ApiKeysRemove { name: name.clone() };
            call_and_print(&client, &req, |data| {
                format!(
                    "API key {name} removed and revoked ({})",
                    data["fingerprint"].as_str().unwrap_or("")
                )
            })
            .await?;
        }
    }
    Ok(())
}

/// `tokenwall audit …` (no daemon needed).
pub fn audit(cmd: crate::cli::AuditCommand) -> anyhow::Result<()> {
    use crate::cli::AuditCommand as A;
    match cmd {
        A::Verify { state_dir } => match crate::audit::verify(&state_dir)? {
            Ok(n) => {
                println!("audit chain intact: {n} records");
                Ok(())
            }
            Err(broken) => anyhow::bail!("audit chain broken at {broken}"),
        },
        A::Export { since, state_dir } => {
            let now = crate::until::now();
            // A duration counts back from now; times and unix seconds are taken as given.
            let since = match humantime::parse_duration(&since) {
                Ok(d) => now.saturating_sub(d.as_secs()),
                Err(_) => crate::until::parse_until(&since, 0)?,
            };
            let since = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(since),
            )
            .to_string();
            for r in crate::audit::export(&state_dir, &since)? {
                println!("{}", serde_json::to_string(&r)?);
            }
            Ok(())
        }
    }
}

/// `tokenwall watch`: one line per lifecycle event until interrupted.
pub async fn watch(args: crate::cli::WatchArgs) -> anyhow::Result<()> {
    let req = Request::Watch { kinds: args.kinds };
    let mut lines = super::open_stream(&args.client, &req).await?;
    while let Some(line) = lines.next_line().await? {
        if args.client.json {
            println!("{line}");
            continue;
        }
        let Ok(ev) = serde_json::from_str::<crate::lifecycle::LifecycleEvent>(&line) else {
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
                (Some(_), _) => Some(super::token_ref(&crate::cli::TokenArgs {
                    token: Some("-".into()),
                    token_file: None,
                    hash: None,
                    jti: None,
                    sub: None,
                    client: None,
                    kid: None,
                })?),
                (None, Some(fp)) => Some(crate::api::TokenRef::Hash(fp)),
                (None, None) => None,
            };
            if token.is_none() && jti.is_none() {
                anyhow::bail!("give --jti ID, --fingerprint HEX or --token -");
            }
            call_and_print(&client, &Request::TokenShow { token, jti }, |t| {
                let mut out = format!(
                    "token {}  jti {}\n  issued     {}\n  first seen {}\n  checks     {}\n  renewals   {}\n  revoked    {}\n  kernel hits {} (last from {})\n",
                    t["fingerprint"].as_str().unwrap_or(""),
                    t["jti"].as_str().unwrap_or("-"),
                    t["issued"].as_str().unwrap_or("-"),
                    t["first_seen"].as_str().unwrap_or("-"),
                    t["validations"],
                    t["renewals"],
                    t["revoked"],
                    t["kernel_hits"],
                    t["last_sources"],
                );
                for e in t["events"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  {}  {}  {}\n",
                        e["time"].as_str().unwrap_or(""),
                        e["kind"].as_str().unwrap_or(""),
                        e["detail"].as_str().unwrap_or("")
                    ));
                }
                out.trim_end().to_string()
            })
            .await?;
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
            let req = Request::TokensList {
                expiring_within,
                revoked,
                sub,
            };
            call_and_print(&client, &req, |data| {
                lines(data, |t| {
                    format!(
                        "{}  jti {}  sub {}  client {}  expires in {}s{}",
                        t["fingerprint"].as_str().unwrap_or(""),
                        t["jti"].as_str().unwrap_or(""),
                        t["sub"].as_str().unwrap_or(""),
                        t["client_id"].as_str().unwrap_or(""),
                        t["expires_in"],
                        if t["revoked"].is_null() {
                            ""
                        } else {
                            "  REVOKED"
                        }
                    )
                })
            })
            .await?;
        }
    }
    Ok(())
}

/// `tokenwall monitoring on|off`.
pub async fn monitoring(state: crate::cli::OnOff, client: ClientArgs) -> anyhow::Result<()> {
    let on = state == crate::cli::OnOff::On;
    call_and_print(&client, &Request::Monitoring { on }, |_| {
        format!("monitoring {}", if on { "on" } else { "off" })
    })
    .await
}
