//! The tokenwall daemon under test, started inside the server namespace, and its CLI.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::testbed::Testbed;

/// The tokenwall binary: `$TOKENWALL_BIN`, or the workspace's debug build.
pub fn tokenwall_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("TOKENWALL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let p = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/debug/tokenwall"
    ));
    if p.exists() {
        return Ok(p);
    }
    bail!(
        "tokenwall binary not found: run the tests with `cargo xtask test` (or set TOKENWALL_BIN)"
    )
}

/// A running `tokenwall run`.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Testbed {
    /// Control socket of this testbed's daemon.
    pub fn socket(&self) -> PathBuf {
        self.work_dir().join("ctl.sock")
    }

    /// State directory of this testbed's daemon.
    pub fn state_dir(&self) -> PathBuf {
        self.work_dir().join("state")
    }

    /// Starts the daemon on the server veth with `args` added, and waits (at most 20 s) until
    /// `tokenwall status` answers.
    pub fn start_daemon(&self, args: &[&str]) -> anyhow::Result<Daemon> {
        let bin = tokenwall_bin()?;
        let log = self.work_dir().join(format!(
            "daemon-{}.log",
            Instant::now().elapsed().as_nanos() ^ rand_tag()
        ));
        let file = std::fs::File::create(&log)?;
        let child = self
            .command_in(self.server_ns(), &bin)
            .arg("run")
            .args(["--iface", self.server_if()])
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--control-socket")
            .arg(self.socket())
            .arg("--bpffs")
            .arg(self.bpffs_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("starting tokenwall run")?;
        let mut d = Daemon {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.cli(&["status"], None).status.success() {
                return Ok(d);
            }
            if let Some(c) = d.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                bail!("tokenwall run exited with {st}:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("tokenwall run did not answer within 20 s:\n{}", d.log())
    }

    /// Runs a CLI command that must succeed and parses its `--json` output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args, None);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("the CLI printed JSON")
    }

    /// Runs `tokenwall ARGS --control-socket <this testbed's socket>` with optional stdin.
    pub fn cli(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let bin = tokenwall_bin().expect("tokenwall binary");
        let mut child = Command::new(bin)
            .args(args)
            .arg("--control-socket")
            .arg(self.socket())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tokenwall");
        if let Some(input) = stdin {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input)
                .expect("write stdin");
        }
        child.wait_with_output().expect("wait tokenwall")
    }

    /// Revokes `token` through the CLI (token on stdin) and returns the JSON reply.
    pub fn revoke(&self, token: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(
            &["revoke", "--token", "-", "--reason", "test", "--json"],
            Some(token.as_bytes()),
        );
        if !out.status.success() {
            bail!("revoke failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Revokes `token` under its revocation key (`agent_common::hash::revocation_hash` with
    /// the daemon's key from `<state_dir>/hash.key`: a JWS by its signing input) with
    /// `revoke --hash`, and returns the JSON reply.
    pub fn revoke_keyed(&self, token: &str) -> anyhow::Result<serde_json::Value> {
        let raw = std::fs::read(self.state_dir().join("hash.key"))?;
        let raw: [u8; 16] = raw
            .try_into()
            .map_err(|_| anyhow::anyhow!("hash.key is not 16 bytes"))?;
        let key = agent_common::hash::HashKey::from_bytes(raw);
        let hash = agent_common::hash::revocation_hash(&key, token.as_bytes());
        let out = self.cli(
            &[
                "revoke",
                "--hash",
                &format!("{hash:016x}"),
                "--reason",
                "test",
                "--json",
            ],
            None,
        );
        if !out.status.success() {
            bail!("revoke failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `tokenwall status --json`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let out = self.cli(&["status", "--json"], None);
        if !out.status.success() {
            bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits (at most 10 s) until `field` of `status` (`watchers`, `event_followers`) is at
    /// least `n`: a streaming client has subscribed and will see what happens next.
    pub fn wait_for_followers(&self, field: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self
                .status()
                .ok()
                .and_then(|s| s[field].as_u64())
                .unwrap_or(0);
            if now >= n {
                return;
            }
            assert!(Instant::now() < deadline, "{field} never reached {n}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (at most 10 s) until kernel counter `name` is at least `n`; returns it.
    pub fn wait_for_counter(&self, name: &str, n: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.counter(name);
            if now >= n {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "kernel counter {name} stayed at {now}, below {n}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One kernel counter from `status`.
    pub fn counter(&self, name: &str) -> u64 {
        self.status()
            .ok()
            .and_then(|s| s["counters"][name].as_u64())
            .unwrap_or(0)
    }
}

fn rand_tag() -> u128 {
    u128::from(std::process::id()) << 64
        | u128::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        )
}

impl Daemon {
    /// The daemon's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// CPU time the daemon's threads have used so far, in nanoseconds (the first field of
    /// each `/proc/PID/task/*/schedstat`), for measuring work per request.
    pub fn cpu_ns(&self) -> anyhow::Result<u64> {
        let pid = self.child.as_ref().context("the daemon is stopped")?.id();
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let stat = std::fs::read_to_string(task?.path().join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// SIGKILL and wait: the crash case.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (at most 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) with a pid this process spawned and has not reaped; no memory is
            // touched.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}
