//! Per-interface counters: each attached interface gets a slot of `COUNTERS` through the
//! `IFACE_SLOT` array (indexed by `ifindex & (IFACE_SLOT_ENTRIES - 1)`); slot 0 collects the
//! rest. Slots are assigned at attach, zeroed when (re)assigned, and freed at detach.

use std::collections::HashSet;

use agent_common::counters::{COUNTER_SLOTS, Counter, IFACE_SLOT_ENTRIES, IFACE_SLOTS};
use anyhow::Context as _;
use aya::maps::PerCpuValues;

use super::LoadedPrograms;

/// One interface's counters: its name (or `other`) and each counter summed over CPUs.
pub type IfaceCounters = (String, Vec<(Counter, u64)>);

fn ifindex(iface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(iface).context("interface name with a NUL byte")?;
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(std::io::Error::last_os_error()).with_context(|| format!("no interface {iface}")),
        i => Ok(i),
    }
}

impl LoadedPrograms {
    fn slot_key(iface: &str) -> anyhow::Result<u32> {
        Ok(ifindex(iface)? & (IFACE_SLOT_ENTRIES - 1))
    }

    /// Gives `iface` a counter slot of its own if it has none (keeps an existing one, so a
    /// restart or a hook change keeps its counts).
    pub(super) fn assign_slot(&mut self, iface: &str) -> anyhow::Result<()> {
        let key = Self::slot_key(iface)?;
        if self.iface_slots.get(&key, 0)? != 0 {
            return Ok(());
        }
        let used: HashSet<u32> = (0..IFACE_SLOT_ENTRIES)
            .filter_map(|k| self.iface_slots.get(&k, 0).ok())
            .filter(|s| *s != 0)
            .collect();
        let Some(slot) = (1..IFACE_SLOTS).find(|s| !used.contains(s)) else {
            log::warn!("no counter slot left for {iface}: its counts go to slot 0 (other)");
            return Ok(());
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        for c in 0..COUNTER_SLOTS {
            let zero = PerCpuValues::try_from(vec![0u64; cpus])?;
            self.counters.set(slot * COUNTER_SLOTS + c, zero, 0)?;
        }
        self.iface_slots.set(key, slot, 0)?;
        Ok(())
    }

    /// Frees the slot of a detached interface.
    pub(super) fn free_slot(&mut self, iface: &str) -> anyhow::Result<()> {
        if let Ok(key) = Self::slot_key(iface) {
            self.iface_slots.set(key, 0, 0)?;
        }
        Ok(())
    }

    fn slot_counters(&self, slot: u32) -> anyhow::Result<Vec<(Counter, u64)>> {
        Counter::ALL
            .into_iter()
            .map(|c| {
                let v = self.counters.get(&(slot * COUNTER_SLOTS + c as u32), 0)?;
                Ok((c, v.iter().sum()))
            })
            .collect()
    }

    /// Counters summed over CPUs, per attached interface, plus `other` (slot 0) when it
    /// counted anything.
    pub fn counters_by_iface(&self) -> anyhow::Result<Vec<IfaceCounters>> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for a in self.attachments() {
            if !seen.insert(a.iface.clone()) {
                continue;
            }
            let slot = Self::slot_key(&a.iface)
                .ok()
                .and_then(|k| self.iface_slots.get(&k, 0).ok())
                .unwrap_or(0);
            if slot != 0 {
                out.push((a.iface.clone(), self.slot_counters(slot)?));
            }
        }
        let other = self.slot_counters(0)?;
        if other.iter().any(|(_, v)| *v != 0) {
            out.push(("other".to_string(), other));
        }
        Ok(out)
    }

    /// Counters summed over CPUs and interfaces, in `Counter::ALL` order.
    pub fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>> {
        let mut total = self.slot_counters(0)?;
        for slot in 1..IFACE_SLOTS {
            for (t, (_, v)) in total.iter_mut().zip(self.slot_counters(slot)?) {
                t.1 += v;
            }
        }
        Ok(total)
    }
}
