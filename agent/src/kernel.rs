//! Kernel loader: loads the embedded eBPF object, reuses pinned maps and links under the bpffs
//! directory, attaches to interfaces and gives typed access to the maps.
//!
//! Layout under the bpffs directory (default `/sys/fs/bpf/tokenwall`):
//! `maps/REVOKED`, `maps/CONFIG`, `maps/COUNTERS`, `maps/EVENTS` and `links/<hook>@<iface>`.
//! Maps and links outlive the daemon: a restart reuses them, and a new program replaces the old
//! one inside the existing link atomically (`bpf_link_update`), so enforcement never stops.
//!
//! A pinned map whose definition differs from what the programs expect (another
//! `--max-revoked`, or a layout change in an upgrade) is not reused: its pin is removed and a
//! new map created and pinned. The old programs keep the old map until the daemon has filled
//! the new one from the store and swapped the programs in their links, so there is no gap.

use std::{
    fs,
    path::{Path, PathBuf},
};

use agent_common::{
    REVOKED_MAX_ENTRIES, config::Config, counters::Counter, map_names, program_names,
    revoked::RevokedEntry,
};
use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, RingBuf},
    programs::{
        SchedClassifier, TcAttachType, TestRun as _, TestRunOptions, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use serde::{Deserialize, Serialize};

/// The compiled kernel programs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tokenwall"));

/// Where and how a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// Native (driver) XDP.
    Xdp,
    /// Generic (skb) XDP: works on any interface, runs later in the stack.
    XdpGeneric,
    /// TC ingress classifier (tcx link on kernels >= 6.6).
    Tc,
}

impl Hook {
    /// Every hook, for cleaning up pins.
    pub const ALL: [Hook; 3] = [Hook::Xdp, Hook::XdpGeneric, Hook::Tc];

    /// Name used in pin paths and output.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Xdp => "xdp",
            Hook::XdpGeneric => "xdp-generic",
            Hook::Tc => "tc",
        }
    }
}

/// One attachment, as found in the pin directory.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// Hook kind.
    pub hook: Hook,
}

/// Result of [`Kernel::test_run`].
#[derive(Debug)]
pub struct TestRunOutput {
    /// The program's return value (XDP action or TC verdict).
    pub verdict: i32,
    /// Average time per run as the kernel measured it.
    pub per_run: std::time::Duration,
    /// The packet after the program ran.
    pub packet: Vec<u8>,
}

/// The loaded programs, their links, counters and interface slots (everything but the maps
/// userspace writes, which are [`maps::AyaMaps`] and [`maps::AyaConfig`]).
pub struct LoadedPrograms {
    ebpf: Ebpf,
    bpffs: PathBuf,
    counters: PerCpuArray<MapData, u64>,
    iface_slots: Array<MapData, u32>,
    /// Links this process holds (dropping one closes our fd; the pin keeps it attached).
    links: Vec<(Attachment, FdLink)>,
    /// Pinned maps replaced at load.
    replaced: Vec<ReplacedMap>,
}

/// How the programs are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Entries of the revoked-token map (`--max-revoked`).
    pub max_revoked: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            max_revoked: REVOKED_MAX_ENTRIES,
        }
    }
}

/// A pinned map that was replaced because its definition differed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplacedMap {
    /// Map name.
    pub name: String,
    /// Entries of the old map.
    pub old_max_entries: u32,
    /// Entries of the new one.
    pub new_max_entries: u32,
}

/// Removes the pins of maps under `maps_dir` whose type, key, value or size differ from the
/// object's definitions (with `max_revoked` for `REVOKED`), so the loader creates new ones.
fn replace_mismatched_pins(maps_dir: &Path, max_revoked: u32) -> anyhow::Result<Vec<ReplacedMap>> {
    let obj = aya_obj::Object::parse(OBJECT).context("parsing the eBPF object")?;
    let mut replaced = Vec::new();
    for (name, def) in &obj.maps {
        let pin = maps_dir.join(name);
        if def.pinning() != aya_obj::maps::PinningType::ByName || !pin.exists() {
            continue;
        }
        let want = if name == map_names::REVOKED {
            max_revoked
        } else {
            def.max_entries()
        };
        let info = MapInfo::from_pin(&pin)
            .with_context(|| format!("reading the pinned map {}", pin.display()))?;
        let same = info.map_type().map(|t| t as u32).ok() == Some(def.map_type())
            && info.key_size() == def.key_size()
            && info.value_size() == def.value_size()
            && info.max_entries() == want;
        if same {
            continue;
        }
        fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
        log::warn!(
            "pinned map {name} ({} entries, key {} B, value {} B) does not match the programs \
             ({want} entries, key {} B, value {} B): replaced by a new map; the running \
             programs keep the old one until the new one is filled and they are swapped",
            info.max_entries(),
            info.key_size(),
            info.value_size(),
            def.key_size(),
            def.value_size(),
        );
        replaced.push(ReplacedMap {
            name: name.clone(),
            old_max_entries: info.max_entries(),
            new_max_entries: want,
        });
    }
    replaced.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(replaced)
}

/// Everything [`Kernel::load`] opened: the programs and the maps, split by
/// [`Kernel::into_parts`] for the daemon, used whole by tests and benchmarks.
pub struct Kernel {
    programs: LoadedPrograms,
    /// The revocation maps.
    pub maps: AyaMaps,
    config: AyaConfig,
}

impl std::ops::Deref for Kernel {
    type Target = LoadedPrograms;
    fn deref(&self) -> &LoadedPrograms {
        &self.programs
    }
}

impl std::ops::DerefMut for Kernel {
    fn deref_mut(&mut self) -> &mut LoadedPrograms {
        &mut self.programs
    }
}

/// What the daemon does with its programs: attach, detach, read counters. The aya
/// implementation is [`LoadedPrograms`]; [`MemoryPrograms`] stands in for tests without root.
pub trait Programs: Send {
    /// Attaches to `iface` (replacing the program inside an existing pinned link).
    fn attach(&mut self, iface: &str, hook: Hook) -> anyhow::Result<()>;
    /// Removes every attachment of `iface`; returns how many.
    fn detach(&mut self, iface: &str) -> anyhow::Result<usize>;
    /// Attachments recorded in the pin directory.
    fn attachments(&self) -> Vec<Attachment>;
    /// Counters summed over CPUs and interfaces, in `Counter::ALL` order.
    fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>>;
    /// Counters summed over CPUs, per attached interface.
    fn counters_by_iface(&self) -> anyhow::Result<Vec<slots::IfaceCounters>>;
    /// Removes the map pins and the pin directory once no attachment is left.
    fn remove_pins_if_unused(&self) -> anyhow::Result<()>;
}

impl Programs for LoadedPrograms {
    fn attach(&mut self, iface: &str, hook: Hook) -> anyhow::Result<()> {
        LoadedPrograms::attach(self, iface, hook)
    }
    fn detach(&mut self, iface: &str) -> anyhow::Result<usize> {
        LoadedPrograms::detach(self, iface)
    }
    fn attachments(&self) -> Vec<Attachment> {
        LoadedPrograms::attachments(self)
    }
    fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>> {
        LoadedPrograms::counters(self)
    }
    fn counters_by_iface(&self) -> anyhow::Result<Vec<slots::IfaceCounters>> {
        LoadedPrograms::counters_by_iface(self)
    }
    fn remove_pins_if_unused(&self) -> anyhow::Result<()> {
        remove_pins_if_unused(&self.bpffs)
    }
}

/// Programs that exist only in memory: attachments are recorded, counters stay zero.
#[derive(Debug, Default)]
pub struct MemoryPrograms {
    attached: Vec<Attachment>,
}

impl Programs for MemoryPrograms {
    fn attach(&mut self, iface: &str, hook: Hook) -> anyhow::Result<()> {
        self.attached.retain(|a| a.iface != iface);
        self.attached.push(Attachment {
            iface: iface.into(),
            hook,
        });
        Ok(())
    }
    fn detach(&mut self, iface: &str) -> anyhow::Result<usize> {
        let before = self.attached.len();
        self.attached.retain(|a| a.iface != iface);
        Ok(before - self.attached.len())
    }
    fn attachments(&self) -> Vec<Attachment> {
        self.attached.clone()
    }
    fn counters(&self) -> anyhow::Result<Vec<(Counter, u64)>> {
        Ok(Counter::ALL.into_iter().map(|c| (c, 0)).collect())
    }
    fn counters_by_iface(&self) -> anyhow::Result<Vec<slots::IfaceCounters>> {
        Ok(Vec::new())
    }
    fn remove_pins_if_unused(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Pin path of a link: `links/<hook>@<iface>`. bpffs refuses names containing `.`, which
/// interface names may have (`eth0.100`), so dots are written as `%2E`.
fn link_pin(bpffs: &Path, iface: &str, hook: Hook) -> PathBuf {
    bpffs
        .join("links")
        .join(format!("{}@{}", hook.name(), iface.replace('.', "%2E")))
}

impl Kernel {
    /// Loads the programs, creating or reusing the pinned maps under `bpffs` (the revoked map
    /// with its default size).
    pub fn load(bpffs: &Path, kernel_log_level: log::LevelFilter) -> anyhow::Result<Self> {
        Self::load_with(bpffs, kernel_log_level, LoadOptions::default())
    }

    /// Loads the programs with `opts`, creating or reusing the pinned maps under `bpffs`; a
    /// pinned map of another definition is replaced ([`LoadedPrograms::replaced_maps`]).
    pub fn load_with(
        bpffs: &Path,
        kernel_log_level: log::LevelFilter,
        opts: LoadOptions,
    ) -> anyhow::Result<Self> {
        if opts.max_revoked == 0 {
            bail!("the revoked-token map needs at least one entry");
        }
        let maps_dir = bpffs.join("maps");
        fs::create_dir_all(&maps_dir)
            .and_then(|()| fs::create_dir_all(bpffs.join("links")))
            .with_context(|| {
                format!(
                    "creating {} (is bpffs mounted at /sys/fs/bpf?)",
                    bpffs.display()
                )
            })?;
        let replaced = replace_mismatched_pins(&maps_dir, opts.max_revoked)?;
        let level = kernel_log_level as u8;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(map_names::REVOKED, opts.max_revoked)
            .override_global(aya_log::LEVEL, &level, false)
            .load(OBJECT)
            .context("loading the eBPF object (are you root, with bpffs mounted?)")?;
        // Kernel log records are forwarded only inside the daemon's runtime (tests and benches
        // load without one).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => spawn_kernel_logger(&rt, logger),
                Err(e) => log::debug!("kernel logging unavailable: {e}"),
            }
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::XDP)
            .ok_or_else(|| anyhow!("program {} missing", program_names::XDP))?
            .try_into()?;
        xdp.load().context("loading the XDP program")?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(program_names::TC)
            .ok_or_else(|| anyhow!("program {} missing", program_names::TC))?
            .try_into()?;
        tc.load().context("loading the TC program")?;
        let baseline: &mut Xdp = ebpf
            .program_mut(program_names::BASELINE)
            .ok_or_else(|| anyhow!("program {} missing", program_names::BASELINE))?
            .try_into()?;
        baseline.load().context("loading the baseline program")?;
        let maps = AyaMaps {
            tokens: HashMap::try_from(take_map(&mut ebpf, map_names::REVOKED)?)?,
            headers: HashMap::try_from(take_map(&mut ebpf, map_names::REVOKED_HEADERS)?)?,
        };
        let config = AyaConfig(Array::try_from(take_map(&mut ebpf, map_names::CONFIG)?)?);
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, map_names::COUNTERS)?)?;
        let iface_slots = Array::try_from(take_map(&mut ebpf, map_names::IFACE_SLOT)?)?;
        Ok(Self {
            programs: LoadedPrograms {
                ebpf,
                bpffs: bpffs.to_path_buf(),
                counters,
                iface_slots,
                links: Vec::new(),
                replaced,
            },
            maps,
            config,
        })
    }

    /// The programs, the revocation maps and the configuration record, for their owners.
    pub fn into_parts(self) -> (LoadedPrograms, AyaMaps, AyaConfig) {
        (self.programs, self.maps, self.config)
    }

    /// Writes the configuration if it differs from what the kernel has.
    pub fn set_config(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let current = self.config.read()?;
        if maps::bytes_of(&current) != maps::bytes_of(cfg) {
            self.config.write(cfg)?;
        }
        Ok(())
    }

    /// Changes the kernel's configuration in place (read, modify, write if changed).
    pub fn update_config(&mut self, f: impl FnOnce(&mut Config)) -> anyhow::Result<()> {
        let mut cfg = self.config.read()?;
        f(&mut cfg);
        self.set_config(&cfg)
    }

    /// Inserts or replaces a revoked token entry ([`MapError::Full`] when the map is full).
    pub fn insert(&mut self, hash: u64, entry: RevokedEntry) -> Result<(), MapError> {
        self.maps.insert(MapKind::Tokens, hash, entry)
    }

    /// Removes a revoked token entry; absent entries are fine.
    pub fn remove(&mut self, hash: u64) -> anyhow::Result<()> {
        Ok(self.maps.remove(MapKind::Tokens, hash)?)
    }

    /// Inserts or replaces a revoked JWS header segment (every token of one signing key;
    /// [`MapError::Full`] when the map is full).
    pub fn insert_header(&mut self, hash: u64, entry: RevokedEntry) -> Result<(), MapError> {
        self.maps.insert(MapKind::Headers, hash, entry)
    }

    /// Removes a revoked header segment; absent entries are fine.
    pub fn remove_header(&mut self, hash: u64) -> anyhow::Result<()> {
        Ok(self.maps.remove(MapKind::Headers, hash)?)
    }

    /// Whether the token map holds `hash`.
    pub fn contains(&self, hash: u64) -> bool {
        self.maps.contains(MapKind::Tokens, hash)
    }

    /// Every hash in the token map.
    pub fn revoked_hashes(&self) -> Vec<u64> {
        self.maps.hashes(MapKind::Tokens)
    }
}

impl LoadedPrograms {
    /// Pinned maps this load replaced because their definition differed.
    pub fn replaced_maps(&self) -> &[ReplacedMap] {
        &self.replaced
    }

    /// Takes the hit-event ring buffer (call once).
    pub fn take_events(&mut self) -> anyhow::Result<RingBuf<MapData>> {
        Ok(RingBuf::try_from(take_map(
            &mut self.ebpf,
            map_names::EVENTS,
        )?)?)
    }

    /// Attaches to `iface` with `hook`, replacing the program inside an existing pinned link
    /// atomically, then removes pins of other hooks on the same interface.
    pub fn attach(&mut self, iface: &str, hook: Hook) -> anyhow::Result<()> {
        let pin = link_pin(&self.bpffs, iface, hook);
        let reused = pin.exists();
        let link = match hook {
            Hook::Xdp | Hook::XdpGeneric => {
                let prog: &mut Xdp = self.program(program_names::XDP)?;
                let id = if reused {
                    let old = XdpLink::try_from(FdLink::from(PinnedLink::from_pin(&pin)?))?;
                    prog.attach_to_link(old)?
                } else {
                    let mode = if hook == Hook::Xdp {
                        XdpMode::Driver
                    } else {
                        XdpMode::Skb
                    };
                    prog.attach(iface, mode).with_context(|| {
                        format!("attaching {} to {iface} (native XDP needs driver support; try --hook xdp-generic)", hook.name())
                    })?
                };
                FdLink::try_from(prog.take_link(id)?)?
            }
            Hook::Tc => {
                let prog: &mut SchedClassifier = self.program(program_names::TC)?;
                let id = if reused {
                    let old =
                        SchedClassifierLink::try_from(FdLink::from(PinnedLink::from_pin(&pin)?))?;
                    prog.attach_to_link(old)?
                } else {
                    prog.attach(iface, TcAttachType::Ingress)
                        .with_context(|| format!("attaching tc ingress to {iface}"))?
                };
                FdLink::try_from(prog.take_link(id)?).map_err(|_| {
                    anyhow!("tc attach on {iface} did not give a bpf_link (kernel < 6.6?)")
                })?
            }
        };
        let link = if reused {
            link
        } else {
            FdLink::from(
                link.pin(&pin)
                    .with_context(|| format!("pinning {}", pin.display()))?,
            )
        };
        log::info!(
            "{} {} on {iface}",
            if reused {
                "replaced program in pinned link"
            } else {
                "attached"
            },
            hook.name()
        );
        let att = Attachment {
            iface: iface.to_string(),
            hook,
        };
        self.links.retain(|(a, _)| a != &att);
        self.links.push((att, link));
        for other in Hook::ALL.into_iter().filter(|h| *h != hook) {
            self.detach_one(iface, other)?;
        }
        self.assign_slot(iface)
    }

    /// Removes every attachment of `iface`; returns how many were removed.
    pub fn detach(&mut self, iface: &str) -> anyhow::Result<usize> {
        let mut n = 0;
        for hook in Hook::ALL {
            n += usize::from(self.detach_one(iface, hook)?);
        }
        self.free_slot(iface)?;
        Ok(n)
    }

    fn detach_one(&mut self, iface: &str, hook: Hook) -> anyhow::Result<bool> {
        self.links
            .retain(|(a, _)| !(a.iface == iface && a.hook == hook));
        remove_link_pin(&self.bpffs, iface, hook)
    }

    /// Runs one of the loaded programs on `packet` with `BPF_PROG_TEST_RUN` (`repeat` times)
    /// and returns its verdict, the average time per run and the packet it left.
    pub fn test_run(
        &mut self,
        program: &str,
        packet: &[u8],
        repeat: u32,
    ) -> anyhow::Result<TestRunOutput> {
        let mut out = vec![0u8; packet.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let p = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing"))?;
        let r = match p {
            aya::programs::Program::Xdp(x) => x.test_run(opts)?,
            aya::programs::Program::SchedClassifier(c) => c.test_run(opts)?,
            _ => bail!("{program} cannot be test-run"),
        };
        out.truncate(r.data_size_out as usize);
        Ok(TestRunOutput {
            verdict: r.return_value as i32,
            per_run: r.duration,
            packet: out,
        })
    }

    /// Attachments recorded in the pin directory.
    pub fn attachments(&self) -> Vec<Attachment> {
        attachments(&self.bpffs)
    }

    fn program<'a, T>(&'a mut self, name: &str) -> anyhow::Result<&'a mut T>
    where
        &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        let p = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("program {name} missing"))?;
        Ok(p.try_into()?)
    }
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> anyhow::Result<aya::maps::Map> {
    ebpf.take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the object"))
}

fn spawn_kernel_logger(
    rt: &tokio::runtime::Handle,
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
) {
    rt.spawn(async move {
        // SAFETY: the logger owns its ring-buffer fd for as long as the AsyncFd holds it.
        let Ok(mut fd) = (unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        }) else {
            return;
        };
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}

fn remove_link_pin(bpffs: &Path, iface: &str, hook: Hook) -> anyhow::Result<bool> {
    let pin = link_pin(bpffs, iface, hook);
    match fs::remove_file(&pin) {
        Ok(()) => {
            log::info!("detached {} from {iface}", hook.name());
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", pin.display())),
    }
}

/// Attachments recorded under `bpffs/links`.
pub fn attachments(bpffs: &Path) -> Vec<Attachment> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(bpffs.join("links")) else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((hook, iface)) = name.split_once('@') else {
            continue;
        };
        if let Some(hook) = Hook::ALL.into_iter().find(|h| h.name() == hook) {
            out.push(Attachment {
                iface: iface.replace("%2E", "."),
                hook,
            });
        }
    }
    out.sort_by(|a, b| (&a.iface, a.hook.name()).cmp(&(&b.iface, b.hook.name())));
    out
}

/// Detaches `iface` without a daemon (pins only). When no attachment remains, removes the
/// map pins and the directory too. Returns how many attachments were removed.
pub fn detach_offline(bpffs: &Path, iface: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    for hook in Hook::ALL {
        n += usize::from(remove_link_pin(bpffs, iface, hook)?);
    }
    remove_pins_if_unused(bpffs)?;
    Ok(n)
}

/// Removes the map pins and the pin directory once no link is pinned any more.
pub fn remove_pins_if_unused(bpffs: &Path) -> anyhow::Result<()> {
    if !attachments(bpffs).is_empty() || !bpffs.exists() {
        return Ok(());
    }
    fs::remove_dir_all(bpffs).with_context(|| format!("removing {}", bpffs.display()))?;
    log::info!("no attachment left: removed {}", bpffs.display());
    Ok(())
}

/// Fails early with a clear message when the process cannot use BPF.
pub fn check_privileges() -> anyhow::Result<()> {
    // SAFETY: geteuid(2) takes nothing and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("tokenwall run needs root (CAP_BPF and CAP_NET_ADMIN)");
    }
    Ok(())
}

pub mod maps;
pub mod slots;

use maps::{AyaConfig, AyaMaps, ConfigMap as _, MapError, MapKind, RevocationMaps as _};
