//! Build script of the eBPF crate: reruns the build when `bpf-linker` changes.
use which::which;

/// Rebuild the eBPF object when bpf-linker changes (it is not a Cargo dependency).
fn main() {
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
}
