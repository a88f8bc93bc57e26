//! The client side: real curl in the client namespace, and raw TCP/UDP senders.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::testbed::{SERVER_IP4, SERVER_IP6, Testbed};

/// What one curl run did.
#[derive(Debug)]
pub struct CurlResult {
    /// curl's exit code (0 ok, 28 timeout, 52 empty reply, 56 receive error / reset, 7 refused).
    pub exit: i32,
    /// HTTP statuses of the responses received (one per request curl completed).
    pub statuses: Vec<u16>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// curl's stderr.
    pub stderr: String,
}

impl CurlResult {
    /// Whether the first (or only) request got `200`.
    pub fn ok(&self) -> bool {
        self.exit == 0 && self.statuses.first() == Some(&200)
    }
    /// Whether curl saw the connection reset (exit 56, "Connection reset by peer" / recv failure).
    pub fn was_reset(&self) -> bool {
        self.exit == 56 || self.stderr.contains("reset")
    }
}

/// One request of a curl run.
pub struct Req<'a> {
    /// Request path.
    pub path: &'a str,
    /// Bearer token, if any.
    pub token: Option<&'a str>,
    /// Other header lines (`Name: value`).
    pub headers: Vec<String>,
}

impl Testbed {
    fn url(&self, port: u16, path: &str, ip6: bool) -> String {
        if ip6 {
            format!("http://[{SERVER_IP6}]:{port}{path}")
        } else {
            format!("http://{SERVER_IP4}:{port}{path}")
        }
    }

    /// Runs curl in the client namespace for `reqs`, all on one keep-alive connection
    /// (`--next`), giving up after `max_time`.
    pub fn curl(&self, port: u16, reqs: &[Req<'_>], ip6: bool, max_time: Duration) -> CurlResult {
        let mut args: Vec<String> = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            if i > 0 {
                args.push("--next".into());
            }
            let hdr_file = self
                .work_dir()
                .join(format!("hdr-{}-{i}", std::process::id()));
            let mut lines = r.headers.clone();
            if let Some(t) = r.token {
                lines.push(format!("Authorization: Bearer {t}"));
            }
            // Headers from a file keep tokens off the command line.
            std::fs::write(&hdr_file, lines.join("\n") + "\n").expect("write header file");
            args.extend([
                "-sS".into(),
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_code}\\n".into(),
                "--max-time".into(),
                format!("{:.1}", max_time.as_secs_f64()),
                "-H".into(),
                format!("@{}", hdr_file.display()),
                self.url(port, r.path, ip6),
            ]);
        }
        let start = Instant::now();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_ns()))
            .arg("--")
            .arg("curl")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        CurlResult {
            exit: out.status.code().unwrap_or(-1),
            statuses: String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .filter(|&s| s != 0)
                .collect(),
            elapsed: start.elapsed(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// One GET of `path` with a bearer token.
    pub fn get(
        &self,
        port: u16,
        path: &str,
        token: Option<&str>,
        ip6: bool,
        max_time: Duration,
    ) -> CurlResult {
        self.curl(
            port,
            &[Req {
                path,
                token,
                headers: Vec::new(),
            }],
            ip6,
            max_time,
        )
    }

    /// Sends raw bytes over a fresh TCP connection from the client and returns what came back
    /// within `wait` (python3; bounded).
    pub fn raw_tcp(&self, port: u16, payload: &[u8], wait: Duration) -> anyhow::Result<Vec<u8>> {
        let script = format!(
            "import socket,sys\ns=socket.create_connection(('{SERVER_IP4}',{port}),timeout={t})\ns.sendall(sys.stdin.buffer.read())\ndata=b''\ntry:\n  while True:\n    b=s.recv(4096)\n    if not b: break\n    data+=b\nexcept Exception: pass\nsys.stdout.buffer.write(data)\n",
            t = wait.as_secs_f64()
        );
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_ns()))
            .args(["--", "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(payload)?;
        let out = child.wait_with_output()?;
        Ok(out.stdout)
    }

    /// Sends one HTTP request carrying `token` from source address `src` (any client
    /// address) and closes with a reset after 50 ms, under the 200 ms minimum retransmission
    /// timeout: a dropped segment is never retransmitted, so each call is exactly one packet
    /// for the kernel to judge.
    pub fn one_shot(&self, src: &str, port: u16, token: &str) {
        let script = format!(
            "import socket,struct,sys,time\n\
             s=socket.create_connection(('{SERVER_IP4}',{port}),timeout=2,source_address=('{src}',0))\n\
             s.sendall(sys.stdin.buffer.read())\n\
             time.sleep(0.05)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\n\
             s.close()\n"
        );
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_ns()))
            .args(["--", "python3", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()
            .expect("python3");
        let req = format!("GET /x HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {token}\r\n\r\n");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(req.as_bytes())
            .expect("writing the request");
        assert!(child.wait().expect("python3").success(), "one_shot failed");
    }

    /// Sends one UDP datagram from the client to the server address.
    pub fn send_udp(&self, port: u16, payload: &[u8]) -> anyhow::Result<()> {
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.sendto(sys.stdin.buffer.read(),('{SERVER_IP4}',{port}))\n"
        );
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.client_ns()))
            .args(["--", "python3", "-c", &script])
            .stdin(Stdio::piped())
            .spawn()?;
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(payload)?;
        anyhow::ensure!(child.wait()?.success(), "sending UDP failed");
        Ok(())
    }

    /// Receives one UDP datagram on the server side within `wait`, if any arrives, while `send`
    /// runs; returns its bytes.
    pub fn udp_roundtrip(
        &self,
        port: u16,
        payload: &[u8],
        wait: Duration,
    ) -> anyhow::Result<Option<Vec<u8>>> {
        let script = format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{SERVER_IP4}',{port}))\ns.settimeout({t})\nprint('ready',flush=True)\ntry:\n  d,_=s.recvfrom(65535)\n  sys.stdout.buffer.write(d)\nexcept Exception: pass\n",
            t = wait.as_secs_f64()
        );
        let mut rx = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.server_ns()))
            .args(["--", "python3", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut out = rx.stdout.take().expect("stdout");
        let mut ready = [0u8; 6];
        use std::io::Read as _;
        out.read_exact(&mut ready)?;
        self.send_udp(port, payload)?;
        let mut got = Vec::new();
        out.read_to_end(&mut got)?;
        rx.wait()?;
        Ok(if got.is_empty() { None } else { Some(got) })
    }
}
