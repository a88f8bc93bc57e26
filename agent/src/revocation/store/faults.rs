//! Failures injected into the store's file operations by unit tests; empty (and free)
//! otherwise.

use std::{
    fs::File,
    io::{self, Write as _},
    path::Path,
};

/// A file operation of the store, named so that unit tests can make it fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Op {
    /// Writing a record (fails with ENOSPC after writing half of it).
    Write,
    /// `fdatasync` after writing a record (EIO).
    Sync,
    /// Cutting a failed append back off the log (EIO).
    Truncate,
    /// Compaction's rename (EIO reported after the rename happened, as over a network).
    Rename,
    /// Syncing the directory after compaction's rename (EIO).
    DirSync,
    /// Opening the new log after compaction's rename (EIO).
    Reopen,
}

/// Failures injected into the store's file operations; empty (and free) outside unit tests.
#[derive(Debug, Default)]
pub(super) struct Faults {
    /// Each planned operation fails this many more times.
    #[cfg(test)]
    pub(super) planned: Vec<(Op, u32)>,
}

impl Faults {
    /// Fails if a test planned a failure of `op`.
    pub(super) fn check(&mut self, op: Op) -> io::Result<()> {
        #[cfg(test)]
        if let Some(slot) = self.planned.iter_mut().find(|(o, n)| *o == op && *n > 0) {
            slot.1 -= 1;
            let errno = if op == Op::Write {
                libc::ENOSPC
            } else {
                libc::EIO
            };
            return Err(io::Error::from_raw_os_error(errno));
        }
        let _ = op;
        Ok(())
    }

    /// `write_all`; a planned `Write` failure writes half of `buf` first, as a full disk does.
    pub(super) fn write(&mut self, file: &mut File, buf: &[u8]) -> io::Result<()> {
        if let Err(e) = self.check(Op::Write) {
            file.write_all(&buf[..buf.len() / 2])?;
            return Err(e);
        }
        file.write_all(buf)
    }

    /// `rename`; a planned `Rename` failure is reported after the rename happened.
    pub(super) fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)?;
        self.check(Op::Rename)
    }
}
