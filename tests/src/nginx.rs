//! A real nginx as the HTTP server in the server namespace, with its own access log.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::testbed::{SERVER_IP4, SERVER_IP6, Testbed};

/// Port of the upload sink `/upload` is proxied to (see [`Testbed::start_upload_sink`]).
pub const UPLOAD_SINK_PORT: u16 = 9009;

/// A running nginx; killed on drop.
pub struct Nginx {
    child: Child,
    access_log: PathBuf,
    marker: Marker,
    /// Port it listens on (IPv4 and IPv6 server addresses).
    pub port: u16,
}

impl Testbed {
    /// Starts nginx answering `200 ok` on `port` (and proxying `/upload` to the upload sink,
    /// which reads whole bodies first) and waits until it accepts connections.
    pub fn start_nginx(&self, port: u16) -> anyhow::Result<Nginx> {
        let dir = self.work_dir().join("nginx");
        std::fs::create_dir_all(dir.join("logs"))?;
        let access_log = dir.join("logs/access.log");
        let conf = format!(
            r#"daemon off;
master_process on;
worker_processes 1;
user root;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format tw '$remote_addr "$request" $status';
    access_log {log} tw;
    client_body_temp_path {dir}/body;
    keepalive_timeout 30s;
    server {{
        listen {SERVER_IP4}:{port};
        listen [{SERVER_IP6}]:{port};
        location / {{ return 200 "ok\n"; }}
        location = /upload {{ proxy_pass http://127.0.0.1:{UPLOAD_SINK_PORT}; }}
    }}
}}
"#,
            dir = dir.display(),
            log = access_log.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = self
            .command_in(self.server_ns(), "nginx".as_ref())
            .args([
                "-p",
                &dir.display().to_string(),
                "-c",
                &conf_path.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (is it installed? cargo xtask setup)")?;
        let nginx = Nginx {
            child,
            access_log,
            port,
            marker: Marker::new(self.server_ns(), port),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let probe = Command::new("nsenter")
                .args([
                    format!("--net=/run/netns/{}", self.client_ns()),
                    "--".into(),
                ])
                .args([
                    "bash",
                    "-c",
                    &format!("exec 3<>/dev/tcp/{SERVER_IP4}/{port}"),
                ])
                .stderr(Stdio::null())
                .status()?;
            if probe.success() {
                return Ok(nginx);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("nginx did not start listening on {SERVER_IP4}:{port} within 10 s")
    }
}

impl Nginx {
    /// Lines of the access log so far, without the marker requests of [`Nginx::never_saw`].
    pub fn access_log_lines(&self) -> Vec<String> {
        let marker = format!(" {MARKER_PREFIX}");
        self.all_log_lines()
            .into_iter()
            .filter(|l| !l.contains(&marker))
            .collect()
    }

    /// Lines of the access log so far, marker requests included.
    fn all_log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.access_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn logged(&self, path: &str) -> bool {
        let needle = format!(" {path} HTTP/");
        self.all_log_lines().iter().any(|l| l.contains(&needle))
    }

    /// Whether a request for `path` reached nginx. nginx writes the line after it sent the
    /// response, so a client can finish first: this waits up to 2 s for the line to appear.
    pub fn saw_path(&self, path: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if self.logged(path) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `path` is absent from the log. nginx first serves a marker request sent after
    /// everything the test sent (over loopback inside the server namespace, past the kernel
    /// path), and logs it: what reached nginx before is in the log by then.
    pub fn never_saw(&self, path: &str) -> bool {
        let marker = self.marker.send();
        assert!(
            self.saw_path(&marker),
            "nginx never logged its marker request"
        );
        !self.logged(path)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// nginx as a gateway using tokenwall for `auth_request`, from the shipped example config.
pub struct Gateway {
    child: Child,
    logs: PathBuf,
    marker: Marker,
}

/// Path prefix of the marker requests.
const MARKER_PREFIX: &str = "/__tw-marker-";

/// Marker requests to an nginx from inside its own namespace, over loopback (so past any kernel
/// program on the veth), each with a path of its own.
struct Marker {
    ns: String,
    port: u16,
    next: std::sync::atomic::AtomicU32,
}

impl Marker {
    fn new(ns: &str, port: u16) -> Self {
        Self {
            ns: ns.to_string(),
            port,
            next: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Sends one marker request and returns its path (whatever the answer).
    fn send(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = format!("{MARKER_PREFIX}{n}");
        let _ = Command::new("nsenter")
            .args([format!("--net=/run/netns/{}", self.ns), "--".into()])
            .args([
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "5",
                &format!("http://{SERVER_IP4}:{}{path}", self.port),
            ])
            .status();
        path
    }
}

/// The shipped example config (tests/gateways/nginx-auth-request.conf).
pub const GATEWAY_CONF: &str = include_str!("../gateways/nginx-auth-request.conf");

/// The stand-in upstream's address in the example config.
pub const STAND_IN: &str = "127.0.0.1:9000";

impl Testbed {
    /// Starts the example gateway on `port` (server addresses), authorizing through tokenwall at
    /// `tokenwall` and proxying to a stand-in upstream on [`STAND_IN`].
    pub fn start_gateway(&self, port: u16, tokenwall: &str) -> anyhow::Result<Gateway> {
        self.start_gateway_to(port, tokenwall, STAND_IN, STAND_IN, "gateway")
    }

    /// Starts the example gateway on `port` proxying to `upstream`, with its stand-in upstream
    /// on `stand_in` and its logs in the work directory's `name`.
    pub fn start_gateway_to(
        &self,
        port: u16,
        tokenwall: &str,
        upstream: &str,
        stand_in: &str,
        name: &str,
    ) -> anyhow::Result<Gateway> {
        let logs = self.work_dir().join(name);
        std::fs::create_dir_all(&logs)?;
        let conf = GATEWAY_CONF
            .replace(
                "@LISTEN@",
                &format!("listen {SERVER_IP4}:{port}; listen [{SERVER_IP6}]:{port};"),
            )
            .replace("@TOKENWALL@", tokenwall)
            .replace("@UPSTREAM@", upstream)
            .replace("@STANDIN@", stand_in)
            .replace("@LOGS@", &logs.display().to_string());
        let path = logs.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = self
            .command_in(self.server_ns(), "nginx".as_ref())
            .args([
                "-p",
                &logs.display().to_string(),
                "-c",
                &path.display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        let gw = Gateway {
            child,
            logs,
            marker: Marker::new(self.server_ns(), port),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .run_in(
                    self.client_ns(),
                    &[
                        "bash",
                        "-c",
                        &format!("exec 3<>/dev/tcp/{SERVER_IP4}/{port}"),
                    ],
                )
                .is_ok()
            {
                return Ok(gw);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the gateway did not start listening within 10 s")
    }
}

impl Gateway {
    /// Lines of the gateway's access log.
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.logs.join("gateway.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Whether the gateway logged a request for `path` (waits up to 2 s for the line).
    pub fn saw_path(&self, path: &str) -> bool {
        let needle = format!(" {path} HTTP/");
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self.log_lines().iter().any(|l| l.contains(&needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether `path` is absent from the gateway log, checked once the gateway has logged a
    /// marker request sent after everything the test sent (see [`Nginx::never_saw`]).
    pub fn never_saw(&self, path: &str) -> bool {
        let marker = self.marker.send();
        assert!(
            self.saw_path(&marker),
            "the gateway never logged its marker request"
        );
        let needle = format!(" {path} HTTP/");
        !self.log_lines().iter().any(|l| l.contains(&needle))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
