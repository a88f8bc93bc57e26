//! A two-instruction XDP program (`return XDP_PASS`) attached to the client's veth, loaded
//! with raw `bpf(2)` calls. A veth only wakes its peer's receive queue for frames a native XDP
//! program sent back (XDP_TX) when the peer has an XDP program too; without one, the resets
//! tokenwall's XDP program sends to the client sit queued until other traffic arrives. A real
//! NIC sends them at once, and this makes the testbed's veth do the same.

use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// `XDP_FLAGS_DRV_MODE`: the driver's (native) hook.
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `r0 = XDP_PASS (2); exit`.
const PASS: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];

/// The `bpf_attr` fields of `BPF_PROG_LOAD` this uses (the rest zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 16],
}

/// The `bpf_attr` fields of `BPF_LINK_CREATE` this uses (the rest zero).
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
    _rest: [u64; 16],
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> anyhow::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr prefix of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("bpf(2)");
    }
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the pass-through program natively to `iface` in network namespace `ns` (by its
/// name under /run/netns); the attachment lasts as long as the returned link fd.
pub fn attach(ns: &str, iface: &str) -> anyhow::Result<OwnedFd> {
    let license = CString::new("GPL")?;
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: PASS.len() as u32,
        insns: PASS.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_XDP,
        ..ProgLoad::default()
    };
    let prog = bpf(BPF_PROG_LOAD, &mut load)?;
    let netns = File::open(format!("/run/netns/{ns}"))?;
    let iface = CString::new(iface)?;
    // The interface index only means something inside its namespace: attach from a thread
    // that has entered it.
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a namespace fd; only this short-lived thread changes namespace.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            // SAFETY: a NUL-terminated interface name.
            let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
            if ifindex == 0 {
                bail!("no interface {iface:?} in {ns}");
            }
            let mut link = LinkCreate {
                prog_fd: prog.as_raw_fd() as u32,
                target_ifindex: ifindex,
                attach_type: BPF_XDP,
                flags: XDP_FLAGS_DRV_MODE,
                ..LinkCreate::default()
            };
            bpf(BPF_LINK_CREATE, &mut link)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the attaching thread panicked"))?
    })
}
