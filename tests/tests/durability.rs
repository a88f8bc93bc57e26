//! Durability on a real filesystem that fills up (a size-limited tmpfs): a revocation or audit
//! record that does not fit fails with a clear error and is cut back off, so both files reopen
//! holding exactly what was acknowledged and take appends again once space is freed; the daemon
//! restarts over such a disk. A damaged audit line does not stop the daemon, is kept, and is
//! reported by `tokenwall audit verify`. Needs root (mount, namespaces).

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use tokenwall::{
    monitoring::audit::{self, AuditLog, Entry},
    revocation::store::{Revocation, RevocationStore, Scope, StoreError},
};
use tokenwall_tests::{Testbed, tokenwall_bin};

const PAGE: u64 = 4096;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A size-limited tmpfs, unmounted (and its scratch directory removed) on drop, even when the
/// test fails.
struct Tmpfs {
    mnt: PathBuf,
    /// The scratch directory holding the mount point, when this guard made it.
    scratch: Option<PathBuf>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`) on a new mount point under a temp dir.
    fn scratch(size: &str) -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let scratch =
            std::env::temp_dir().join(format!("tw-durability-{}-{n}", std::process::id()));
        let mnt = scratch.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut fs = Self {
            mnt: mnt.clone(),
            scratch: Some(scratch),
        };
        fs.mount(size);
        fs
    }

    /// Mounts a tmpfs of `size` on `mnt`, creating it.
    fn at(mnt: &Path, size: &str) -> Self {
        std::fs::create_dir_all(mnt).unwrap();
        let mut fs = Self {
            mnt: mnt.to_path_buf(),
            scratch: None,
        };
        fs.mount(size);
        fs
    }

    fn mount(&mut self, size: &str) {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tw-durability")
            .arg(&self.mnt)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mounting a tmpfs on {} (the durability tests need root): {}",
            self.mnt.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // A process forked by a parallel test may hold a descriptor for a moment (until its
        // exec closes it); a lazy unmount then detaches the mount anyway.
        let unmounted = Command::new("umount")
            .arg(&self.mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        if let Some(scratch) = &self.scratch {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

/// One-page files that fill a filesystem, to be freed later.
struct Ballast(Vec<PathBuf>);

impl Ballast {
    /// Writes one-page files into `dir` until the filesystem is full.
    fn fill(dir: &Path) -> Self {
        let mut files = Vec::new();
        loop {
            let p = dir.join(format!("ballast-{}", files.len()));
            match std::fs::write(&p, [0u8; PAGE as usize]) {
                Ok(()) => files.push(p),
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => {
                    let _ = std::fs::remove_file(&p);
                    break;
                }
                Err(e) => panic!("{}: {e}", p.display()),
            }
            assert!(files.len() < 10_000, "{} never fills", dir.display());
        }
        assert!(files.len() >= 2, "too little room for ballast");
        Self(files)
    }

    /// Frees `n` pages.
    fn free(&mut self, n: usize) {
        for p in self.0.drain(self.0.len() - n..) {
            std::fs::remove_file(p).unwrap();
        }
    }

    fn free_all(&mut self) {
        self.free(self.0.len());
    }
}

fn rev(hash: u64) -> Revocation {
    Revocation {
        hash,
        expires_at: 0,
        // Fixed width: every record is the same size.
        reason: format!("durability test record {hash:05}"),
        revoked_at: 1_700_000_000,
        api_key: false,
        scope: Scope::Token,
    }
}

fn hashes(s: &RevocationStore) -> Vec<u64> {
    let mut v: Vec<u64> = s.entries().map(|r| r.hash).collect();
    v.sort();
    v
}

#[test]
fn durability_a_full_disk_fails_a_revocation_clearly_and_the_log_keeps_exactly_the_acknowledged_ones()
 {
    let disk = Tmpfs::scratch("64k");
    let dir = disk.path();
    let log = dir.join("revocations.log");
    let (mut s, _) = RevocationStore::open(dir, 0).unwrap();
    let mut ballast = Ballast::fill(dir);
    ballast.free(2);
    let mut acked = Vec::new();
    let err = loop {
        let h = acked.len() as u64 + 1;
        match s.revoke(rev(h)) {
            Ok(_) => acked.push(h),
            Err(e) => break e,
        }
        assert!(h < 1000, "two pages never filled");
    };
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Append { .. }), "{msg}");
    assert!(
        msg.contains("No space left on device") && msg.contains("nothing was recorded"),
        "{msg}"
    );
    let len = std::fs::metadata(&log).unwrap().len();
    assert_eq!(len, s.log_bytes(), "the partial record was cut back off");
    assert_ne!(
        len % PAGE,
        0,
        "the failed append was a real partial write (the kernel wrote what fit)"
    );
    // Still full: the next one fails the same way and leaves the file as it is.
    let err = s.revoke(rev(5000)).expect_err("still full");
    assert!(matches!(err, StoreError::Append { .. }), "{err}");
    assert_eq!(std::fs::metadata(&log).unwrap().len(), len);
    // Compaction on the full disk fails too, and leaves no partial copy taking space.
    assert!(matches!(s.compact(0), Err(StoreError::Io { .. })));
    assert!(!dir.join("revocations.log.compact").exists());
    drop(s);

    let (mut s, report) = RevocationStore::open(dir, 0).expect("reopens on the full disk");
    assert_eq!(hashes(&s), acked);
    assert_eq!(report.torn_tail_bytes, 0, "nothing was left to repair");
    ballast.free_all();
    s.revoke(rev(9999)).expect("space was freed");
    drop(s);
    let (s, report) = RevocationStore::open(dir, 0).unwrap();
    acked.push(9999);
    assert_eq!(hashes(&s), acked);
    assert_eq!(report.records as usize, acked.len());
}

fn entry(i: usize) -> Entry {
    Entry {
        actor: "uid:0".into(),
        action: "revoke".into(),
        subjects: vec![format!("{i:016x}")],
        reason: "durability test".into(),
    }
}

fn time(i: usize) -> String {
    format!("2026-11-24T12:{:02}:{:02}Z", (i / 60) % 60, i % 60)
}

#[test]
fn durability_a_full_disk_fails_an_audit_record_clearly_and_the_chain_stays_verifiable() {
    let disk = Tmpfs::scratch("64k");
    let dir = disk.path();
    let file = dir.join("audit.log");
    let mut log = AuditLog::open(dir, audit::DEFAULT_MAX_BYTES).unwrap();
    let mut ballast = Ballast::fill(dir);
    ballast.free(2);
    let mut acked = 0;
    let err = loop {
        match log.append(entry(acked), time(acked)) {
            Ok(_) => acked += 1,
            Err(e) => break e,
        }
        assert!(acked < 1000, "two pages never filled");
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains("No space left on device") && msg.contains("nothing was written"),
        "{msg}"
    );
    assert_eq!(
        audit::verify(dir).unwrap(),
        Ok(acked as u64),
        "the partial line was cut back off"
    );
    let len = std::fs::metadata(&file).unwrap().len();
    assert_ne!(
        len % PAGE,
        0,
        "the failed append was a real partial write (the kernel wrote what fit)"
    );
    ballast.free_all();
    log.append(entry(acked), time(acked))
        .expect("space was freed");
    assert_eq!(audit::verify(dir).unwrap(), Ok(acked as u64 + 1));
    drop(log);
    let mut log = AuditLog::open(dir, audit::DEFAULT_MAX_BYTES).unwrap();
    log.append(entry(acked + 1), time(acked + 1)).unwrap();
    assert_eq!(audit::verify(dir).unwrap(), Ok(acked as u64 + 2));
}

const DAEMON_ARGS: &[&str] = &["--port", "8080"];

/// `tokenwall audit verify` on `state`, without a daemon.
fn audit_verify(state: &Path) -> std::process::Output {
    Command::new(tokenwall_bin().unwrap())
        .args(["audit", "verify", "--state-dir"])
        .arg(state)
        .output()
        .unwrap()
}

#[test]
fn durability_the_daemon_fails_revocations_on_a_full_state_disk_and_restarts_with_every_acknowledged_one()
 {
    let tb = Testbed::new().unwrap();
    let state = tb.state_dir();
    let disk = Tmpfs::at(&state, "1m");
    let mut d = tb.start_daemon(DAEMON_ARGS).unwrap();
    let mut ballast = Ballast::fill(disk.path());
    ballast.free(2);
    // Revoke until the revocation log itself is full. An audit failure first is possible (the
    // revocation is then made, and the reply says so); keep going until the store fails.
    let token = |i: usize| format!("durability-daemon-token-{i:05}-abcdefghijklmnopqrstuvwxyz");
    let (mut acked, mut made) = (Vec::new(), 0);
    let store_err = loop {
        let i = acked.len() + made;
        assert!(i < 500, "the revocation log never filled");
        match tb.revoke(&token(i)) {
            Ok(v) => acked.push(v["fingerprint"].as_str().unwrap().to_string()),
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("No space left on device"), "{e}");
                if e.contains("the change was made") {
                    made += 1;
                } else {
                    break e;
                }
            }
        }
    };
    assert!(
        store_err.contains("recording the revocation")
            && store_err.contains("nothing was recorded"),
        "{store_err}"
    );
    ballast.free_all();
    let after = tb.revoke(&token(9999)).expect("space was freed");
    acked.push(after["fingerprint"].as_str().unwrap().to_string());
    d.stop();

    let mut d = tb
        .start_daemon(DAEMON_ARGS)
        .expect("restarts: no append landed after a partial record");
    assert_eq!(
        tb.status().unwrap()["revoked_entries"].as_u64(),
        Some((acked.len() + made) as u64),
        "every acknowledged revocation (and each one made before its audit record failed), not the refused one"
    );
    d.stop();
    let (s, report) = RevocationStore::open(&state, tokenwall::clock::now()).unwrap();
    assert_eq!(report.torn_tail_bytes, 0);
    for fp in &acked {
        let h = u64::from_str_radix(fp, 16).unwrap();
        assert!(s.get(h).is_some(), "acknowledged {fp} is missing");
    }
    let verify = audit_verify(&state);
    assert!(
        verify.status.success(),
        "a failed audit append left no partial line: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn durability_the_daemon_starts_over_a_damaged_audit_line_keeps_appending_and_verify_reports_the_line()
 {
    let tb = Testbed::new().unwrap();
    let state = tb.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let mut log = AuditLog::open(&state, audit::DEFAULT_MAX_BYTES).unwrap();
    for i in 0..5 {
        log.append(entry(i), time(i)).unwrap();
    }
    drop(log);
    let file = state.join("audit.log");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let half = lines[2].len() / 2;
    lines[2].truncate(half); // line 3 no longer parses
    let damaged = lines.join("\n") + "\n";
    std::fs::write(&file, &damaged).unwrap();

    let mut d = tb
        .start_daemon(DAEMON_ARGS)
        .expect("the daemon starts over a damaged audit line");
    tb.revoke("durability-after-the-damaged-audit-line-0123456789")
        .unwrap();
    d.stop();
    assert!(
        d.log()
            .contains("audit.log: 1 damaged line(s), first line 3"),
        "the damage is logged with its file and line:\n{}",
        d.log()
    );
    let after = std::fs::read_to_string(&file).unwrap();
    assert!(
        after.starts_with(&damaged),
        "every line, damaged or not, is kept"
    );
    let new: Vec<&str> = after[damaged.len()..].lines().collect();
    assert!(!new.is_empty(), "the daemon kept appending");
    let first: serde_json::Value = serde_json::from_str(new[0]).unwrap();
    assert_eq!(
        first["prev"].as_str(),
        Some(sha256_hex(lines[4].as_bytes()).as_str()),
        "the chain continues from the last line"
    );
    assert!(new.iter().any(|l| l.contains("\"action\":\"revoke\"")));
    let verify = audit_verify(&state);
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert!(!verify.status.success(), "verify must fail: {stderr}");
    assert!(stderr.contains("audit.log:3"), "{stderr}");
}
