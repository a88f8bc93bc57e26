//! Serving the HTTP API: hyper's HTTP/1.1 server with keep-alive, a header-read timeout and
//! a connection limit.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::Router;

/// Default time a client has to send a request's headers, from the first byte a request may
/// start with; a kept-alive connection idle this long is closed too.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default most connections served at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Least time between two "connection limit reached" log lines.
const LIMIT_LOG_EVERY: Duration = Duration::from_secs(60);
/// Pause after a failed `accept` (out of file descriptors, say) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Bad HTTP API limits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A zero header-read timeout would close every connection at once.
    #[error("the HTTP header-read timeout must be positive")]
    ZeroTimeout,
    /// Zero connections, or more than a semaphore holds.
    #[error("the HTTP connection limit must be 1 to {max}")]
    Connections {
        /// The largest limit.
        max: usize,
    },
}

/// Limits of the HTTP API: a header-read timeout per request and a connection limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    header_read_timeout: Duration,
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// Checked limits.
    pub fn new(header_read_timeout: Duration, max_connections: usize) -> Result<Self, LimitsError> {
        if header_read_timeout.is_zero() {
            return Err(LimitsError::ZeroTimeout);
        }
        let max = tokio::sync::Semaphore::MAX_PERMITS;
        if max_connections == 0 || max_connections > max {
            return Err(LimitsError::Connections { max });
        }
        Ok(Self {
            header_read_timeout,
            max_connections,
        })
    }

    /// Time a client has to send a request's headers (and most time a connection idles).
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// Most connections served at once.
    pub fn max_connections(&self) -> usize {
        self.max_connections
    }
}

/// One warning per [`LIMIT_LOG_EVERY`] while the connection limit is being hit, counting the
/// hits in between (never one line per connection).
#[derive(Default)]
struct LimitLog {
    last: Option<Instant>,
    unreported: u64,
}

impl LimitLog {
    /// Records a hit at `now`; returns whether a line was logged.
    fn hit(&mut self, now: Instant, max: usize) -> bool {
        self.unreported += 1;
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < LIMIT_LOG_EVERY)
        {
            return false;
        }
        log::warn!(
            "HTTP API: connection limit of {max} reached ({} times since the last report); \
             new connections wait in the listen backlog until one closes",
            self.unreported
        );
        self.last = Some(now);
        self.unreported = 0;
        true
    }
}

/// An HTTP/1.1 server with [`Limits`]: keep-alive, a header-read timeout, and at most
/// `max_connections` connections. When full it stops accepting: new connections wait in the
/// kernel's listen backlog (a full backlog drops SYNs, so clients retry) and are served as
/// others close. A connection that only trickles headers is closed after the timeout, so
/// waiting is bounded by it unless every slot is busy with real requests.
pub struct Server {
    limits: Limits,
    permits: Arc<tokio::sync::Semaphore>,
    limit_hits: AtomicU64,
}

impl Server {
    /// A server with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            permits: Arc::new(tokio::sync::Semaphore::new(limits.max_connections)),
            limit_hits: AtomicU64::new(0),
        }
    }

    /// Connection slots free now (the accept loop takes one before it waits for the next
    /// connection).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// How often the accept loop found every connection slot taken.
    pub fn limit_hits(&self) -> u64 {
        self.limit_hits.load(Ordering::Relaxed)
    }

    /// Serves `app` on `listener` until the runtime stops.
    pub async fn run(&self, listener: tokio::net::TcpListener, app: Router) {
        let mut limit_log = LimitLog::default();
        let mut accept_errors = LimitLog::default();
        loop {
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.limit_hits.fetch_add(1, Ordering::Relaxed);
                    limit_log.hit(Instant::now(), self.limits.max_connections);
                    match self.permits.clone().acquire_owned().await {
                        Ok(p) => p,
                        Err(_) => return, // closed: never, the semaphore is ours
                    }
                }
            };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if accept_errors
                        .last
                        .is_none_or(|t| t.elapsed() >= LIMIT_LOG_EVERY)
                    {
                        log::warn!("HTTP API: accept failed: {e}");
                        accept_errors.last = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            // Forward-auth answers are small and latency-bound.
            let _ = stream.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            let timeout = self.limits.header_read_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeout)
                    .keep_alive(true)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    log::debug!("HTTP API connection: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        time::timeout,
    };

    /// Generous bound on anything the tests wait for.
    const WAIT: Duration = Duration::from_secs(5);

    async fn start(limits: Limits) -> (Arc<Server>, std::net::SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let server = Arc::new(Server::new(limits));
        let s = server.clone();
        tokio::spawn(async move { s.run(listener, app).await });
        (server, addr)
    }

    /// One GET on `c`; the response text (the body is `ok`, so it ends with it).
    async fn get_ok(c: &mut TcpStream) -> String {
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        timeout(WAIT, async {
            while !got.ends_with(b"\r\n\r\nok") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before a response");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("no response");
        String::from_utf8(got).unwrap()
    }

    /// Waits (bounded) until `cond` holds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_client_trickling_headers_is_disconnected_after_the_header_read_timeout() {
        let header_timeout = Duration::from_millis(300);
        let (_server, addr) = start(Limits::new(header_timeout, 8).unwrap()).await;
        let started = Instant::now();
        let c = TcpStream::connect(addr).await.unwrap();
        let (mut rx, mut tx) = c.into_split();
        // One header byte every 20 ms, never the end of the headers (bounded: 200 bytes).
        let trickle = tokio::spawn(async move {
            let head = format!("GET / HTTP/1.1\r\nHost: t\r\nX-Slow: {}", "a".repeat(200));
            for b in head.bytes().take(200) {
                if tx.write_all(&[b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let mut buf = [0u8; 1024];
        let closed = timeout(WAIT, async {
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {} // whatever hyper says before closing
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the slow client was never disconnected");
        assert!(
            started.elapsed() >= header_timeout,
            "closed before the timeout: {:?}",
            started.elapsed()
        );
        trickle.abort();
        // Others are still served.
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert!(get_ok(&mut c).await.starts_with("HTTP/1.1 200"));
    }

    #[tokio::test]
    async fn keep_alive_serves_several_requests_on_one_connection() {
        let (_server, addr) = start(Limits::default()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        for _ in 0..3 {
            let r = get_ok(&mut c).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{r}");
            assert!(!r.to_ascii_lowercase().contains("connection: close"), "{r}");
        }
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_and_are_served_when_one_closes() {
        let (server, addr) = start(Limits::new(Duration::from_secs(30), 2).unwrap()).await;
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        get_ok(&mut a).await;
        get_ok(&mut b).await;
        until("both slots taken", || server.available() == 0).await;
        until("the accept loop to wait for a slot", || {
            server.limit_hits() >= 1
        })
        .await;
        // The third connection is made (the kernel's backlog holds it) but not served:
        // tokenwall accepts nothing while every slot is taken.
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(
            c.try_read(&mut buf).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::WouldBlock),
            "served beyond the limit"
        );
        assert_eq!(server.available(), 0);
        // One leaves: the waiting connection is accepted and answered.
        drop(a);
        let mut got = Vec::new();
        timeout(WAIT, async {
            while !got.ends_with(b"\r\n\r\nok") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before a response");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("the waiting connection was never served");
        assert!(got.starts_with(b"HTTP/1.1 200"));
        // The one that stayed is still served too.
        assert!(get_ok(&mut b).await.starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn the_limit_warning_is_logged_once_per_interval_not_per_connection() {
        let mut log = LimitLog::default();
        let t0 = Instant::now();
        assert!(log.hit(t0, 2));
        for ms in [1, 500, 59_999] {
            assert!(!log.hit(t0 + Duration::from_millis(ms), 2));
        }
        assert_eq!(log.unreported, 3);
        assert!(log.hit(t0 + LIMIT_LOG_EVERY, 2));
        assert_eq!(log.unreported, 0);
    }

    #[test]
    fn limits_refuse_zero() {
        assert_eq!(
            Limits::new(Duration::ZERO, 1).unwrap_err(),
            LimitsError::ZeroTimeout
        );
        assert!(matches!(
            Limits::new(Duration::from_secs(1), 0),
            Err(LimitsError::Connections { .. })
        ));
    }
}
