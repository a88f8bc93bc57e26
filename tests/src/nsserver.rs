//! A small HTTP/1.1 server written in the test, run on a thread that has joined a test
//! namespace's network namespace: a recording upstream behind the gateway, or a JWKS whose
//! answer the test changes. Every request head is recorded; every answer closes the connection.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use crate::Testbed;

/// Longest request head read.
const MAX_HEAD: usize = 64 * 1024;
/// The server stops by itself after this long, whatever the test does.
const LIFETIME: Duration = Duration::from_secs(300);

/// The answer to one request: status, content type, body.
pub type Answer = (u16, &'static str, String);

/// A running in-namespace server; stopped on drop.
pub struct NsServer {
    /// The bound address (inside the namespace).
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Testbed {
    /// Serves HTTP on `addr` inside namespace `ns`, answering each request head with
    /// `answer(head)`.
    pub fn serve_in(
        &self,
        ns: &str,
        addr: &str,
        answer: impl Fn(&str) -> Answer + Send + 'static,
    ) -> anyhow::Result<NsServer> {
        let addr: SocketAddr = addr.parse()?;
        let ns = ns.to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (bound_tx, bound_rx) = mpsc::channel();
        let (h, s) = (heads.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            if let Err(e) = enter(&ns) {
                let _ = bound_tx.send(Err(e));
                return;
            }
            let listener = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound_tx.send(Err(anyhow::anyhow!("binding {addr}: {e}")));
                    return;
                }
            };
            let _ = bound_tx.send(Ok(listener.local_addr().expect("bound address")));
            let deadline = Instant::now() + LIFETIME;
            while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => serve_one(conn, &answer, &h),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        let addr = bound_rx
            .recv_timeout(Duration::from_secs(5))
            .context("the server thread did not start")??;
        Ok(NsServer {
            addr,
            heads,
            stop,
            thread: Some(thread),
        })
    }
}

/// Moves the calling thread into namespace `ns`.
fn enter(ns: &str) -> anyhow::Result<()> {
    let netns = std::fs::File::open(format!("/run/netns/{ns}"))
        .with_context(|| format!("opening namespace {ns}"))?;
    // SAFETY: `netns` is an open namespace file for the duration of the call; setns with
    // CLONE_NEWNET moves only the calling thread into that network namespace.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    anyhow::ensure!(rc == 0, "setns: {}", std::io::Error::last_os_error());
    Ok(())
}

impl Testbed {
    /// Runs `f` on a thread inside namespace `ns` (sockets it opens live there) and returns
    /// its result; a panic in `f` is raised here.
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(ns).expect("entering the namespace");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

fn serve_one(
    mut conn: std::net::TcpStream,
    answer: &impl Fn(&str) -> Answer,
    heads: &Mutex<Vec<String>>,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let (status, content_type, body) = answer(&head);
    heads.lock().expect("heads").push(head);
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

impl NsServer {
    /// The request heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().expect("heads").clone()
    }

    /// The heads of requests for `path`.
    pub fn heads_for(&self, path: &str) -> Vec<String> {
        let line = format!(" {path} HTTP/");
        self.heads()
            .into_iter()
            .filter(|h| h.lines().next().is_some_and(|l| l.contains(&line)))
            .collect()
    }
}

/// The values of header `name` (case-insensitive) in a request head, in order.
pub fn header_values<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

impl Drop for NsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
