//! The client side of the control socket: one typed call per command, or a stream of lines.

use std::path::{Path, PathBuf};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines},
    net::{UnixStream, unix::OwnedReadHalf},
};

use super::protocol::{Command, Envelope, Request};

/// Why a control call failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Nothing answers at the socket (no daemon, or no permission to connect).
    #[error("daemon not reachable at {}: {source}", path.display())]
    Unreachable {
        /// The socket.
        path: PathBuf,
        /// Why connecting failed.
        source: std::io::Error,
    },
    /// The daemon refused or failed the request; its one-line reason.
    #[error("{0}")]
    Refused(String),
    /// The connection broke or the daemon's answer could not be read.
    #[error("control protocol: {0}")]
    Protocol(String),
}

impl ControlError {
    fn protocol(e: impl std::fmt::Display) -> Self {
        ControlError::Protocol(e.to_string())
    }
}

/// Sends one command and returns its typed reply.
pub async fn call<C: Command>(path: &Path, cmd: C) -> Result<C::Reply, ControlError> {
    let req: Request = cmd.into();
    let mut lines = open(path, &req).await?;
    let data = first_reply(&mut lines).await?;
    serde_json::from_value(data).map_err(ControlError::protocol)
}

/// Sends a streaming command (`events`, `watch`), checks the daemon's first reply and returns
/// the lines that follow.
pub async fn stream(
    path: &Path,
    req: &Request,
) -> Result<Lines<BufReader<OwnedReadHalf>>, ControlError> {
    let mut lines = open(path, req).await?;
    first_reply(&mut lines).await?;
    Ok(lines)
}

async fn open(path: &Path, req: &Request) -> Result<Lines<BufReader<OwnedReadHalf>>, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ControlError::Unreachable {
            path: path.to_path_buf(),
            source,
        })?;
    let (rd, mut wr) = stream.into_split();
    let mut line = serde_json::to_vec(req).map_err(ControlError::protocol)?;
    line.push(b'\n');
    wr.write_all(&line).await.map_err(ControlError::protocol)?;
    wr.flush().await.map_err(ControlError::protocol)?;
    Ok(BufReader::new(rd).lines())
}

async fn first_reply(
    lines: &mut Lines<BufReader<OwnedReadHalf>>,
) -> Result<serde_json::Value, ControlError> {
    let first = lines
        .next_line()
        .await
        .map_err(ControlError::protocol)?
        .ok_or_else(|| {
            ControlError::protocol("the daemon closed the connection without replying")
        })?;
    let envelope: Envelope = serde_json::from_str(&first).map_err(ControlError::protocol)?;
    if !envelope.ok {
        return Err(ControlError::Refused(
            envelope.error.unwrap_or_else(|| "request failed".into()),
        ));
    }
    Ok(envelope.data.unwrap_or(serde_json::Value::Null))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Status;

    #[tokio::test]
    async fn an_unreachable_daemon_is_its_own_error() {
        let err = call(Path::new("/nonexistent/tokenwall.sock"), Status {})
            .await
            .unwrap_err();
        assert!(matches!(err, ControlError::Unreachable { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("daemon not reachable at /nonexistent/tokenwall.sock")
        );
    }
}
