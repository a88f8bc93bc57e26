//! A throwaway two-host network: a server and a client namespace joined by a veth pair, with
//! documentation addresses (192.0.2.0/24, 2001:db8:7477::/64). Everything it creates is removed
//! in `Drop`, also when a test panics; stale namespaces of dead test processes are swept first.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context as _, bail};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Server-side IPv4 address.
pub const SERVER_IP4: &str = "192.0.2.1";
/// Client-side IPv4 address.
pub const CLIENT_IP4: &str = "192.0.2.2";
/// Server-side IPv6 address.
pub const SERVER_IP6: &str = "2001:db8:7477::1";
/// Client-side IPv6 address.
pub const CLIENT_IP6: &str = "2001:db8:7477::2";

/// Runs a command, failing with its stderr when it does not succeed.
pub fn sh(argv: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", argv[0]))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            argv.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A server and a client namespace joined by a veth pair.
pub struct Testbed {
    server_ns: String,
    client_ns: String,
    server_if: String,
    client_if: String,
    work: PathBuf,
    bpffs: PathBuf,
    /// The client veth's pass-through XDP link (see `crate::xdp_pass`).
    client_xdp: Option<std::os::fd::OwnedFd>,
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Deletes `twt-<pid>-…` namespaces whose process is gone (left by a killed run).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("twt-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = sh(&["ip", "netns", "del", &name]);
        }
    }
}

impl Testbed {
    /// Creates the namespaces, the veth pair (MTU 3000 so a 1,500-byte token fits one segment,
    /// segmentation offloads off, a pass-through XDP program on the client end) and the
    /// addresses.
    pub fn new() -> anyhow::Result<Self> {
        // SAFETY: geteuid(2) takes nothing and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            bail!("the integration tests need root (network namespaces, BPF)");
        }
        sweep_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}{n}", pid % 100_000);
        let mut tb = Self {
            server_ns: format!("twt-{pid}-{n}-s"),
            client_ns: format!("twt-{pid}-{n}-c"),
            server_if: format!("tws{tag}"),
            client_if: format!("twc{tag}"),
            work: std::env::temp_dir().join(format!("twt-{pid}-{n}")),
            bpffs: PathBuf::from(format!("/sys/fs/bpf/twt-{pid}-{n}")),
            client_xdp: None,
        };
        std::fs::create_dir_all(&tb.work)?;
        // From here on, Drop cleans up whatever part was made.
        sh(&["ip", "netns", "add", &tb.server_ns])?;
        sh(&["ip", "netns", "add", &tb.client_ns])?;
        sh(&[
            "ip",
            "link",
            "add",
            &tb.server_if,
            "mtu",
            "3000",
            "netns",
            &tb.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &tb.client_if,
            "mtu",
            "3000",
            "netns",
            &tb.client_ns,
        ])?;
        for (ns, ifname, ip4, ip6) in [
            (&tb.server_ns, &tb.server_if, SERVER_IP4, SERVER_IP6),
            (&tb.client_ns, &tb.client_if, CLIENT_IP4, CLIENT_IP6),
        ] {
            let ip = |args: &[&str]| {
                let mut v = vec!["ip", "-n", ns.as_str()];
                v.extend_from_slice(args);
                sh(&v)
            };
            ip(&["link", "set", "lo", "up"])?;
            ip(&["addr", "add", &format!("{ip4}/24"), "dev", ifname])?;
            ip(&["addr", "add", &format!("{ip6}/64"), "dev", ifname, "nodad"])?;
            ip(&["link", "set", ifname, "up"])?;
            let _ = tb.run_in(
                ns,
                &[
                    "ethtool", "-K", ifname, "tso", "off", "gso", "off", "gro", "off",
                ],
            );
        }
        // Like a real NIC, the link delivers what the server's native XDP program sends back
        // (XDP_TX) at once: a veth does only when its peer has an XDP program.
        tb.client_xdp = Some(
            crate::xdp_pass::attach(&tb.client_ns, &tb.client_if)
                .context("attaching the pass-through XDP program to the client veth")?,
        );
        Ok(tb)
    }

    /// Runs `argv` inside namespace `ns` without changing the mount namespace.
    pub fn run_in(&self, ns: &str, argv: &[&str]) -> anyhow::Result<Output> {
        let netns = format!("--net=/run/netns/{ns}");
        let mut v = vec!["nsenter", netns.as_str(), "--"];
        v.extend_from_slice(argv);
        sh(&v)
    }

    /// A `Command` that runs `program` inside namespace `ns`.
    pub fn command_in(&self, ns: &str, program: &Path) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"))
            .arg("--")
            .arg(program);
        c
    }

    /// Server namespace name.
    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }
    /// Client namespace name.
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }
    /// Server-side veth.
    pub fn server_if(&self) -> &str {
        &self.server_if
    }
    /// Client-side veth.
    pub fn client_if(&self) -> &str {
        &self.client_if
    }
    /// Scratch directory of this testbed.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }
    /// bpffs directory for this testbed's pins.
    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.client_xdp.take();
        for ns in [&self.server_ns, &self.client_ns] {
            // Kill anything still running inside, then delete the namespace (and its veth end).
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.bpffs);
        if std::env::var_os("TOKENWALL_KEEP_WORK").is_none() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}
