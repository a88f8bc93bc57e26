//! Client commands: talk to the daemon over the control socket and print the result.

use std::io::Read as _;

use anyhow::{Context as _, bail};

use crate::{
    api::{Request, RevokeReply, StatusReply, TokenRef},
    cli::{ClientArgs, DetachArgs, TokenArgs},
    control, kernel,
    service::MAX_TOKEN_BYTES,
    until::{now, parse_until},
};

/// Reads the token named by the arguments (stdin, a file, or a hash).
pub fn token_ref(which: &TokenArgs) -> anyhow::Result<TokenRef> {
    let raw = if which.token.is_some() {
        let mut s = String::new();
        std::io::stdin()
            .take(MAX_TOKEN_BYTES as u64 + 1)
            .read_to_string(&mut s)
            .context("reading the token from standard input")?;
        s
    } else if let Some(path) = &which.token_file {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
    } else if let Some(hash) = &which.hash {
        return Ok(TokenRef::Hash(hash.clone()));
    } else if let Some((kind, _)) = which.rule() {
        bail!("--{} works with revoke only", kind.name());
    } else {
        bail!("give --token -, --token-file FILE or --hash HEX");
    };
    let tok = raw.trim();
    // Accept a pasted header value too: "Bearer <token>".
    let tok = tok
        .strip_prefix("Bearer ")
        .or_else(|| tok.strip_prefix("bearer "))
        .unwrap_or(tok)
        .trim();
    if tok.is_empty() {
        bail!("no token given");
    }
    Ok(TokenRef::Token(tok.to_string()))
}

fn print(args: &ClientArgs, data: &serde_json::Value, text: impl FnOnce() -> String) {
    if args.json {
        println!("{data}");
    } else {
        println!("{}", text());
    }
}

/// `tokenwall revoke`.
pub async fn revoke(args: crate::cli::RevokeArgs) -> anyhow::Result<()> {
    let until = args
        .until
        .as_deref()
        .map(|u| parse_until(u, now()))
        .transpose()?;
    if let Some((kind, name)) = args.which.rule() {
        let req = Request::RevokeBy {
            kind,
            name: name.to_string(),
            issuer: args.issuer.clone(),
            until,
            reason: args.reason.clone(),
        };
        let data = control::call(&args.client.control_socket, &req).await?;
        print(&args.client, &data, || {
            format!(
                "revoked {} {name} of issuer {}: rule {}, {} live tokens pushed to the kernel, {} sessions ended",
                kind.name(),
                data["issuer"].as_str().unwrap_or("?"),
                data["fingerprint"].as_str().unwrap_or("?"),
                data["tokens_pushed"],
                data["sessions_revoked"]
            )
        });
        return Ok(());
    }
    if args.issuer.is_some() {
        bail!("--issuer works with --jti, --sub, --client or --kid");
    }
    let req = Request::Revoke {
        token: token_ref(&args.which)?,
        until,
        reason: args.reason.clone(),
        api_key: args.api_key,
    };
    let data = control::call(&args.client.control_socket, &req).await?;
    let r: RevokeReply = serde_json::from_value(data.clone())?;
    print(&args.client, &data, || {
        format!(
            "revoked {}{} (until {}; in kernel: {}{}){}",
            r.fingerprint,
            if r.changed { "" } else { " (already revoked)" },
            until_text(r.expires_at),
            r.in_kernel,
            if r.in_kernel {
                ""
            } else {
                ", the map is full: forward-auth still refuses it"
            },
            r.jti_rule
                .as_deref()
                .map(|j| format!("; jti {j} revoked too"))
                .unwrap_or_default()
        )
    });
    Ok(())
}

/// `tokenwall unrevoke`.
pub async fn unrevoke(args: crate::cli::UnrevokeArgs) -> anyhow::Result<()> {
    let req = Request::Unrevoke {
        token: token_ref(&args.which)?,
        reason: args.reason.clone(),
    };
    let data = control::call(&args.client.control_socket, &req).await?;
    let r: RevokeReply = serde_json::from_value(data.clone())?;
    print(&args.client, &data, || {
        format!(
            "unrevoked {}{}",
            r.fingerprint,
            if r.changed { "" } else { " (was not revoked)" }
        )
    });
    Ok(())
}

/// `tokenwall fingerprint`.
pub async fn fingerprint(args: crate::cli::FingerprintArgs) -> anyhow::Result<()> {
    let req = Request::Fingerprint {
        token: token_ref(&args.which)?,
    };
    let data = control::call(&args.client.control_socket, &req).await?;
    print(&args.client, &data, || {
        data["fingerprint"].as_str().unwrap_or_default().to_string()
    });
    Ok(())
}

fn until_text(t: u64) -> String {
    if t == 0 {
        "never".into()
    } else {
        humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
            .to_string()
    }
}

/// `tokenwall status`.
pub async fn status(args: ClientArgs) -> anyhow::Result<()> {
    let data = control::call(&args.control_socket, &Request::Status).await?;
    let s: StatusReply = serde_json::from_value(data.clone())?;
    print(&args, &data, || {
        let mut out = format!("tokenwall {}\n", s.version);
        if s.attachments.is_empty() {
            out.push_str("attached:   (nothing)\n");
        }
        for a in &s.attachments {
            out.push_str(&format!("attached:   {} ({})\n", a.iface, a.hook));
        }
        out.push_str(&format!(
            "action:     {} on ports {:?}\n",
            s.action, s.ports
        ));
        out.push_str(&format!(
            "revoked:    {} in store ({} bytes), {} in kernel\n",
            s.revoked_entries, s.store_bytes, s.kernel_entries
        ));
        out.push_str("counters:\n");
        for (k, v) in &s.counters {
            out.push_str(&format!("  {k:<16} {v}\n"));
        }
        out.trim_end().to_string()
    });
    Ok(())
}

/// Opens a streaming request and checks the daemon's first reply; returns the lines after it.
pub(crate) async fn open_stream(
    args: &ClientArgs,
    req: &Request,
) -> anyhow::Result<tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>> {
    let (mut lines, _) = control::open(&args.control_socket, req).await?;
    let first = lines
        .next_line()
        .await?
        .context("daemon closed the connection")?;
    let reply: crate::api::Reply = serde_json::from_str(&first)?;
    if !reply.ok {
        bail!("{}", reply.error.unwrap_or_default());
    }
    Ok(lines)
}

/// `tokenwall events`: prints one JSON line per hit until interrupted.
pub async fn events(args: ClientArgs) -> anyhow::Result<()> {
    let mut lines = open_stream(&args, &Request::Events).await?;
    while let Some(line) = lines.next_line().await? {
        println!("{line}");
    }
    Ok(())
}

/// `tokenwall detach`: through the daemon when it runs, else directly on the pins.
pub async fn detach(args: DetachArgs) -> anyhow::Result<()> {
    let req = Request::Detach {
        iface: args.iface.clone(),
    };
    let data = match control::call(&args.client.control_socket, &req).await {
        Ok(d) => d,
        Err(e) if format!("{e:#}").starts_with("daemon not reachable") => {
            let n = kernel::detach_offline(&args.bpffs, &args.iface)?;
            if n == 0 {
                bail!(
                    "{} is not attached (no pins under {})",
                    args.iface,
                    args.bpffs.display()
                );
            }
            serde_json::json!({ "iface": args.iface, "removed": n, "daemon": false })
        }
        Err(e) => return Err(e),
    };
    print(&args.client, &data, || format!("detached {}", args.iface));
    Ok(())
}

/// `tokenwall introspect`.
pub async fn introspect(args: crate::cli::FingerprintArgs) -> anyhow::Result<()> {
    let req = Request::Introspect {
        token: token_ref(&args.which)?,
    };
    let data = control::call(&args.client.control_socket, &req).await?;
    print(&args.client, &data, || {
        serde_json::to_string_pretty(&data).unwrap_or_default()
    });
    Ok(())
}

mod admin;
pub use admin::{apikeys, audit, clients, keys, monitoring, tokens, watch};
