//! `cargo xtask`: set up a machine, build, test, benchmark and demo tokenwall.

mod demo;
mod safety;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

/// Build and drive tokenwall.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what a fresh Debian machine lacks (apt packages, bpf-linker, rust-src, bpffs).
    Setup,
    /// Build target/release/tokenwall with the eBPF object embedded.
    Build,
    /// Setup, then unit tests (with the SAFETY-comment check of the kernel programs) and the
    /// privileged integration tests.
    Test {
        /// Extra arguments for the integration tests (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Setup, build, and run the self-contained demo in throwaway namespaces.
    Demo,
    /// Benchmarks: kernel fast path (BPF_PROG_TEST_RUN, vs an empty XDP program) and
    /// forward-auth throughput (vs raw ring verifications), as ratios measured in one run.
    Bench,
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs a command from the workspace root with inherited stdio; fails naming it.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Build => build(true).map(|p| println!("built {}", p.display())),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => setup::setup()
            .and_then(|()| build(true))
            .and_then(|bin| demo::run(&bin)),
        Cmd::Bench => setup::setup().and_then(|()| bench()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// Builds tokenwall (release or debug) and returns the binary's path.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "-p", "tokenwall"]);
    if release {
        c.arg("--release");
    }
    run(&mut c)?;
    Ok(root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("tokenwall"))
}

fn test(extra: &[String]) -> anyhow::Result<()> {
    setup::setup()?;
    let bin = build(false)?;
    // Both suites always run (and every test binary inside each, --no-fail-fast), so one
    // failure never hides another; the command fails at the end if either did.
    println!("== unit tests");
    // Every `unsafe` of the kernel programs says why it is sound (see safety.rs).
    let safety = safety::check(&root().join("agent-ebpf").join("src"));
    match &safety {
        Ok(()) => println!("agent-ebpf: every unsafe has a SAFETY comment"),
        Err(e) => eprintln!("xtask: {e:#}"),
    }
    let unit = run(cargo().args([
        "test",
        "--no-fail-fast",
        "--workspace",
        "--exclude",
        "tokenwall-tests",
        "--exclude",
        "agent-ebpf",
    ]))
    .and(safety);
    println!("== privileged integration tests (real programs, veth pairs in namespaces, nginx)");
    let privileged = run(cargo()
        .args(["test", "--no-fail-fast", "-p", "tokenwall-tests", "--"])
        .arg("--test-threads=2")
        .args(extra)
        .env("TOKENWALL_BIN", &bin));
    match (unit, privileged) {
        (Ok(()), Ok(())) => {
            println!("xtask test: all test suites passed");
            Ok(())
        }
        (u, p) => {
            let failed: Vec<String> = [("unit", u), ("privileged", p)]
                .into_iter()
                .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e:#}")))
                .collect();
            bail!("test suites failed: {}", failed.join("; "))
        }
    }
}

fn bench() -> anyhow::Result<()> {
    let bin = build(true)?;
    run(cargo().args(["bench", "-p", "tokenwall-tests", "--bench", "kernel_path"]))?;
    run(cargo()
        .args(["bench", "-p", "tokenwall-tests", "--bench", "forward_auth"])
        .env("TOKENWALL_BIN", &bin))
}
