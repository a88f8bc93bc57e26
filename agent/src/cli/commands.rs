//! Client commands: one typed control call each, printed as text or, with `--json`, as the
//! reply itself.

use std::io::Read as _;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::{
    cli::{ClientArgs, DetachArgs, TokenArgs},
    clock::{now, parse_until},
    control::{
        client::{ControlError, call, stream},
        protocol::{self as p, Request, TokenRef},
    },
    kernel,
    service::MAX_TOKEN_BYTES,
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
        return Ok(TokenRef::Hash(hash.parse()?));
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

/// Prints a reply: itself as JSON with `--json`, else `text`.
pub(crate) fn print<T: Serialize>(args: &ClientArgs, reply: &T, text: impl FnOnce(&T) -> String) {
    if args.json {
        match serde_json::to_string(reply) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("tokenwall: encoding the reply: {e}"),
        }
    } else {
        println!("{}", text(reply));
    }
}

/// `tokenwall revoke`.
pub async fn revoke(args: crate::cli::RevokeArgs) -> anyhow::Result<()> {
    let until = args
        .until
        .as_deref()
        .map(|u| parse_until(u, now()))
        .transpose()?;
    let socket = &args.client.control_socket;
    if let Some((kind, name)) = args.which.rule() {
        let cmd = p::RevokeBy {
            kind,
            name: name.to_string(),
            issuer: args.issuer.clone(),
            until,
            reason: args.reason.clone(),
        };
        let r = call(socket, cmd).await?;
        print(&args.client, &r, |r| {
            format!(
                "revoked {} {} of issuer {}: rule {}, {} live tokens pushed to the kernel, {} sessions ended",
                r.kind.name(),
                r.name,
                r.issuer,
                r.fingerprint,
                r.tokens_pushed,
                r.sessions_revoked
            )
        });
        return Ok(());
    }
    if args.issuer.is_some() {
        bail!("--issuer works with --jti, --sub, --client or --kid");
    }
    let cmd = p::Revoke {
        token: token_ref(&args.which)?,
        until,
        reason: args.reason.clone(),
        api_key: args.api_key,
    };
    let r = call(socket, cmd).await?;
    print(&args.client, &r, |r| {
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
    let cmd = p::Unrevoke {
        token: token_ref(&args.which)?,
        reason: args.reason.clone(),
    };
    let r = call(&args.client.control_socket, cmd).await?;
    print(&args.client, &r, |r| {
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
    let cmd = p::Fingerprint {
        token: token_ref(&args.which)?,
    };
    let r = call(&args.client.control_socket, cmd).await?;
    print(&args.client, &r, |r| r.fingerprint.to_string());
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
    let s = call(&args.control_socket, p::Status {}).await?;
    print(&args, &s, |s| {
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
            "revoked:    {} in store ({} bytes), {} in kernel{}\n",
            s.revoked_entries,
            s.store_bytes,
            s.kernel_entries,
            if s.kernel_overflow > 0 {
                format!(
                    ", {} did not fit (kernel map full: forward-auth enforces them)",
                    s.kernel_overflow
                )
            } else {
                String::new()
            }
        ));
        out.push_str("counters:\n");
        for (k, v) in &s.counters {
            out.push_str(&format!("  {k:<18} {v}\n"));
        }
        out.trim_end().to_string()
    });
    Ok(())
}

/// Opens a streaming request; returns the lines after the daemon's first reply.
pub(crate) async fn open_stream(
    args: &ClientArgs,
    req: &Request,
) -> anyhow::Result<tokio::io::Lines<tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>>> {
    Ok(stream(&args.control_socket, req).await?)
}

/// `tokenwall events`: prints one JSON line per hit until interrupted.
pub async fn events(args: ClientArgs) -> anyhow::Result<()> {
    let mut lines = open_stream(&args, &p::Events {}.into()).await?;
    while let Some(line) = lines.next_line().await? {
        println!("{line}");
    }
    Ok(())
}

/// `tokenwall detach`: through the daemon when it runs, else directly on the pins.
pub async fn detach(args: DetachArgs) -> anyhow::Result<()> {
    let cmd = p::Detach {
        iface: args.iface.clone(),
    };
    let r = match call(&args.client.control_socket, cmd).await {
        Ok(r) => r,
        Err(ControlError::Unreachable { .. }) => {
            let removed = kernel::detach_offline(&args.bpffs, &args.iface)?;
            if removed == 0 {
                bail!(
                    "{} is not attached (no pins under {})",
                    args.iface,
                    args.bpffs.display()
                );
            }
            p::DetachReply {
                iface: args.iface.clone(),
                removed,
                daemon: false,
            }
        }
        Err(e) => return Err(e.into()),
    };
    print(&args.client, &r, |r| format!("detached {}", r.iface));
    Ok(())
}

/// `tokenwall introspect`.
pub async fn introspect(args: crate::cli::FingerprintArgs) -> anyhow::Result<()> {
    let cmd = p::Introspect {
        token: token_ref(&args.which)?,
    };
    let r = call(&args.client.control_socket, cmd).await?;
    print(&args.client, &r, |r| {
        serde_json::to_string_pretty(r).unwrap_or_default()
    });
    Ok(())
}

pub use super::admin::{apikeys, audit, clients, keys, monitoring, tokens, watch};
