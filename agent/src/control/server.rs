//! The daemon's side of the control socket: binds it (0600), checks each peer's credentials,
//! streams events, and hands every other request of [`super::protocol`] to a [`Handler`] (on a
//! blocking thread: state changes fsync).

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use tokio::sync::broadcast;

use super::protocol::{self as p, Envelope, EventLine, Request, Streaming};
use crate::monitoring::lifecycle::LifecycleEvent;

/// What answers the control socket (the daemon's service).
pub trait Handler: Send + Sync + 'static {
    /// Answers one request that is not a stream, for `actor` (`uid:N`, `admin`).
    fn handle(&self, req: Request, actor: &str) -> Envelope;
    /// Subscribes to kernel hit events (`events`).
    fn hit_events(&self) -> broadcast::Receiver<EventLine>;
    /// Subscribes to lifecycle events (`watch`).
    fn lifecycle_events(&self) -> broadcast::Receiver<LifecycleEvent>;
}

/// Longest request line accepted.
const MAX_REQUEST: usize = 256 * 1024;

/// Whether a peer with `uid` may use the socket: root, or the user that owns the socket.
pub fn peer_allowed(uid: u32, owner: u32) -> bool {
    uid == 0 || uid == owner
}

/// Binds the socket at `path` (0600), refusing to steal it from a live daemon.
pub async fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another tokenwall daemon is already listening on {}",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts clients until the runtime stops.
pub async fn serve<H: Handler>(listener: UnixListener, service: Arc<H>) {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    let owner = unsafe { libc::geteuid() };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, service, owner).await {
                log::debug!("control client: {e:#}");
            }
        });
    }
}

async fn write_line(
    w: &mut (impl AsyncWriteExt + Unpin),
    reply: &impl Serialize,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(reply)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    w.flush().await?;
    Ok(())
}

async fn handle<H: Handler>(stream: UnixStream, service: Arc<H>, owner: u32) -> anyhow::Result<()> {
    let cred = stream.peer_cred()?;
    let (rd, mut wr) = stream.into_split();
    if !peer_allowed(cred.uid(), owner) {
        log::warn!(
            "refused control client uid {} pid {:?}",
            cred.uid(),
            cred.pid()
        );
        return write_line(
            &mut wr,
            &Envelope::err("permission denied: root or the socket owner only"),
        )
        .await;
    }
    let mut line = Vec::new();
    let mut rd = BufReader::new(rd).take(MAX_REQUEST as u64);
    rd.read_until(b'\n', &mut line).await?;
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => return write_line(&mut wr, &Envelope::err(format!("bad request: {e}"))).await,
    };
    if let Request::Watch(p::Watch { kinds }) = &req {
        let rx = service.lifecycle_events();
        return stream_lines(&mut wr, rx, |ev: &LifecycleEvent| {
            kinds.is_empty() || kinds.contains(&ev.kind)
        })
        .await;
    }
    if let Request::Events(_) = req {
        return stream_lines(&mut wr, service.hit_events(), |_| true).await;
    }
    if !req.is_read_only() {
        log::info!(
            "admin: {} by uid {} over the control socket",
            req.command(),
            cred.uid()
        );
    }
    let actor = format!("uid:{}", cred.uid());
    let reply = tokio::task::spawn_blocking(move || service.handle(req, &actor)).await?;
    write_line(&mut wr, &reply).await
}

/// Streams a broadcast channel as JSON lines (after an `ok` reply) until the client goes.
async fn stream_lines<T: Clone + Serialize>(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    mut rx: tokio::sync::broadcast::Receiver<T>,
    keep: impl Fn(&T) -> bool,
) -> anyhow::Result<()> {
    use tokio::sync::broadcast::error::RecvError;
    write_line(wr, &Envelope::ok(&Streaming { streaming: true })).await?;
    loop {
        match rx.recv().await {
            Ok(ev) if keep(&ev) => write_line(wr, &ev).await?,
            Ok(_) => {}
            Err(RecvError::Lagged(n)) => {
                write_line(wr, &serde_json::json!({ "lagged": n })).await?
            }
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_or_the_owner_may_connect() {
        assert!(peer_allowed(0, 1000));
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1001, 1000));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 0));
    }

    #[tokio::test]
    async fn socket_is_0600_and_not_stolen_from_a_live_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let l = bind(&path).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let err = bind(&path).await.unwrap_err().to_string();
        assert!(err.contains("already listening"), "{err}");
        drop(l);
        bind(&path).await.expect("a stale socket is replaced");
    }
}
