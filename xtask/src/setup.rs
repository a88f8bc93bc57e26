//! `cargo xtask setup`: make a fresh Debian machine able to build and test tokenwall.
//! Every step checks first and installs only what is missing, saying what it does.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run;

/// Debian packages: LLVM 22 for bpf-linker, bpftool, and the test parts (nginx as the gateway,
/// curl as the client, iproute2/util-linux/ethtool for namespaces, python3 for raw sockets and
/// test servers, tmux to run `tokenwall top` in a terminal).
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "bpftool",
    "nginx-light",
    "curl",
    "iproute2",
    "util-linux",
    "ethtool",
    "python3",
    "tmux",
];
const BPF_LINKER: &str = "0.13";

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn dpkg_installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_some_and(|s| s.contains("install ok installed"))
}

/// Installs what is missing; idempotent.
pub fn setup() -> anyhow::Result<()> {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("setup needs root (apt-get, bpffs, and the tests use BPF and network namespaces)");
    }
    if output("apt-get", &["--version"]).is_none() {
        bail!("apt-get not found: tokenwall's setup supports Debian-family machines only");
    }
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: apt packages present ({})", APT_PACKAGES.join(" "));
    } else {
        println!("setup: installing {}", missing.join(" "));
        run(Command::new("apt-get").args(["update", "-q"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    match output("bpf-linker", &["--version"]) {
        Some(v) if v.contains(&format!(" {BPF_LINKER}.")) => {
            println!("setup: {} present", v.trim())
        }
        _ => {
            println!("setup: building bpf-linker {BPF_LINKER} against LLVM 22 (about a minute)");
            run(Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--version",
                    &format!("^{BPF_LINKER}"),
                    "--locked",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"))?;
        }
    }
    let nightly = output("rustc", &["+nightly", "-vV"]).context(
        "no nightly toolchain: the eBPF crate needs one with LLVM 22 (rustup toolchain install of a nightly from before Rust 1.99)",
    )?;
    if let Some(llvm) = nightly
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        && !llvm.starts_with("22.")
    {
        println!(
            "setup: warning: nightly uses LLVM {llvm}; bpf-linker built for LLVM 22 may not read its bitcode"
        );
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )
    .unwrap_or_default();
    if components.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src present for nightly");
    } else {
        println!("setup: adding rust-src to the nightly toolchain");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    let mounted = output("findmnt", &["-n", "-t", "bpf", "/sys/fs/bpf"])
        .is_some_and(|s| !s.trim().is_empty());
    if mounted {
        println!("setup: bpffs mounted at /sys/fs/bpf");
    } else {
        println!("setup: mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}
