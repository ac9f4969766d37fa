//! Everything that touches BPF: loading the object, attaching and detaching programs, and
//! reading and writing the maps.
use std::{
    ffi::CString,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues},
    programs::{
        LinkOrder, SchedClassifier, TcAttach, TcAttachType, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc,
    },
    util::KernelVersion,
};
use netfault_common::{
    CFG_TC_ONLY, Config, Counters, DistTable, FlowKey, FlowRef, MAX_TUPLES, RuleValue, Tuple,
    maps as names, progs,
};
use serde::{Deserialize, Serialize};

use crate::compile::Compiled;

/// The eBPF object built by build.rs from netfault-ebpf.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfault"));

/// Reference programs (pass, drop, tx) for benchmarks and tests; never attached by netfault.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netfault-bench"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {msg}")]
    Ebpf { what: String, msg: String },
}

/// Flattens an aya error chain into one message. A verifier log is cut to its last lines: the
/// reason is at the end, and thousands of lines help nobody at a terminal.
fn ebpf_err<E: std::error::Error>(what: impl Into<String>) -> impl FnOnce(E) -> KernelError {
    let what = what.into();
    move |e| {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            let t = s.to_string();
            if !msg.contains(&t) {
                msg = format!("{msg}: {t}");
            }
            src = s.source();
        }
        let lines: Vec<&str> = msg.lines().collect();
        if lines.len() > 12 {
            msg = format!("{} [...] {}", lines[0], lines[lines.len() - 8..].join("\n"));
        }
        KernelError::Ebpf { what, msg }
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Io { what, source }
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// Mounts bpffs at /sys/fs/bpf when it is missing.
pub fn ensure_bpffs() -> Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").map_err(io_err("read /proc/self/mounts"))?;
    if mounts.lines().any(|l| {
        l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
            && l.split_whitespace().nth(2) == Some("bpf")
    }) {
        return Ok(());
    }
    let c = |s: &str| CString::new(s).expect("no NUL");
    let (src, dst, ty) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io_err("mount bpffs at /sys/fs/bpf")(
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Loads the object with its maps pinned in (or reused from) `maps_dir`.
pub fn load(maps_dir: &Path) -> Result<Ebpf> {
    std::fs::create_dir_all(maps_dir).map_err(io_err(format!("create {}", maps_dir.display())))?;
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(maps_dir)
        .load(EBPF_OBJECT)
        .map_err(ebpf_err("load the eBPF object"))?;
    write_dist_tables(&mut ebpf)?;
    Ok(ebpf)
}

/// The jitter distributions' tables (constant; rewriting a pinned copy changes nothing).
fn write_dist_tables(ebpf: &mut Ebpf) -> Result<()> {
    let map = ebpf.map_mut(names::DIST).ok_or_else(|| KernelError::Io {
        what: format!("map {}", names::DIST),
        source: io::Error::from(io::ErrorKind::NotFound),
    })?;
    let mut tables: Array<&mut MapData, DistTable> =
        Array::try_from(map).map_err(ebpf_err(format!("map {}", names::DIST)))?;
    for d in crate::dist::Distribution::ALL {
        if let Some(t) = crate::dist::table(d) {
            tables
                .set(u32::from(d.code()) - 1, &DistTable { t: *t }, 0)
                .map_err(ebpf_err("write distribution table"))?;
        }
    }
    Ok(())
}

/// Loads a private copy: maps are pinned only for the instant aya needs a path, then unpinned,
/// so they live exactly as long as this process's fds.
pub fn load_private() -> Result<Ebpf> {
    let dir = PathBuf::from(format!("/sys/fs/bpf/netfault-run-{}", std::process::id()));
    let res = load(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

/// Fingerprint of a generation's content: tuples, flows and the values of the rules they name.
/// Never 0, which means "unknown".
fn digest(c: &Compiled, rules: &[(u32, RuleValue)]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for t in &c.tuples {
        format!("{t:?}").hash(&mut h);
    }
    for (k, r) in &c.flows {
        format!("{k:?}{r:?}").hash(&mut h);
    }
    for (slot, v) in rules {
        format!("{slot}{v:?}").hash(&mut h);
    }
    c.config_flags.hash(&mut h);
    h.finish().max(1)
}

/// The maps, typed.
pub struct Maps {
    pub config: Array<MapData, Config>,
    pub tuples: Array<MapData, Tuple>,
    pub flows: BpfHashMap<MapData, FlowKey, FlowRef>,
    pub rules: Array<MapData, RuleValue>,
    pub counters: PerCpuArray<MapData, Counters>,
    pub tc_only: BpfHashMap<MapData, u32, u32>,
    pub ifb: BpfHashMap<MapData, u32, u32>,
    pub rate: Array<MapData, u64>,
    grace: crate::grace::Grace,
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(m: Map, name: &str) -> Result<T> {
    T::try_from(m).map_err(ebpf_err(format!("map {name}")))
}

impl Maps {
    /// Opens the maps pinned in `maps_dir` by an earlier `attach`.
    pub fn open(maps_dir: &Path) -> Result<Self> {
        Self::build(|name| {
            let p = maps_dir.join(name);
            let d = MapData::from_pin(&p)
                .map_err(ebpf_err(format!("open pinned map {}", p.display())))?;
            Map::from_map_data(d).map_err(ebpf_err(format!("map {name}")))
        })
    }

    /// Takes the maps out of a loaded object (tests, benchmarks, `run`).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self> {
        Self::build(|name| {
            ebpf.take_map(name).ok_or_else(|| KernelError::Io {
                what: format!("map {name}"),
                source: io::Error::from(io::ErrorKind::NotFound),
            })
        })
    }

    fn build(mut get: impl FnMut(&str) -> Result<Map>) -> Result<Self> {
        Ok(Self {
            config: typed(get(names::CONFIG)?, names::CONFIG)?,
            tuples: typed(get(names::TUPLES)?, names::TUPLES)?,
            flows: typed(get(names::FLOWS)?, names::FLOWS)?,
            rules: typed(get(names::RULES)?, names::RULES)?,
            counters: typed(get(names::COUNTERS)?, names::COUNTERS)?,
            tc_only: typed(get(names::TC_ONLY)?, names::TC_ONLY)?,
            ifb: typed(get(names::IFB)?, names::IFB)?,
            rate: typed(get(names::RATE)?, names::RATE)?,
            grace: crate::grace::Grace::new().map_err(io_err("grace map"))?,
        })
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(ebpf_err("read config"))
    }

    /// Publishes a compiled rule set: writes the generation the data path is not reading, then
    /// flips to it in one word. Packets see the old set or the new one, never a mix.
    ///
    /// The retired generation is rewritten only after a grace period (`grace`), so no program
    /// still reading it sees it change; when it already holds exactly this set, it is not
    /// rewritten at all. `rules` are the action values of every live slot.
    pub fn publish_set(&mut self, c: &Compiled, rules: &[(u32, RuleValue)]) -> Result<()> {
        let mut cfg = self.config()?;
        let cur = (cfg.active & 1) as usize;
        let next = cur ^ 1;
        let digest = digest(c, rules);
        if cfg.digest[cur] == digest {
            return Ok(()); // already live
        }
        if cfg.digest[next] != digest {
            // Programs that read `next` before the last flip must be done before it changes.
            self.grace.wait().map_err(io_err("grace period"))?;
            self.write_generation(next as u32, c, rules)?;
            cfg.ntuples[next] = c.tuples.len() as u32;
            cfg.digest[next] = digest;
        }
        // The union of both sets' needs while either may be read; then exactly the new set's.
        cfg.flags |= c.config_flags;
        self.config
            .set(0, &cfg, 0)
            .map_err(ebpf_err("write config"))?;
        // The flip: only `active` changes in this write.
        cfg.active = next as u32;
        self.config
            .set(0, &cfg, 0)
            .map_err(ebpf_err("write config"))?;
        cfg.flags = c.config_flags | (cfg.flags & CFG_TC_ONLY);
        self.config
            .set(0, &cfg, 0)
            .map_err(ebpf_err("write config"))
    }

    /// Points an interface's ingress shaping at its IFB device, or stops it (None).
    pub fn set_ifb(&mut self, ifindex: u32, ifb: Option<u32>) -> Result<()> {
        match ifb {
            Some(i) => self
                .ifb
                .insert(&ifindex, &i, 0)
                .map_err(ebpf_err("write IFB map")),
            None => match self.ifb.remove(&ifindex) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(ebpf_err("clear IFB map")(e)),
            },
        }
    }

    /// Marks an interface whose ingress rules tc applies (XDP is not ours there), or unmarks it.
    pub fn set_tc_only(&mut self, ifindex: u32, on: bool) -> Result<()> {
        if on {
            self.tc_only
                .insert(&ifindex, &1, 0)
                .map_err(ebpf_err("mark tc-only interface"))?;
        } else {
            match self.tc_only.remove(&ifindex) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(ebpf_err("unmark tc-only interface")(e)),
            }
        }
        let any = self.tc_only.keys().next().is_some();
        let mut cfg = self.config()?;
        cfg.flags = if any {
            cfg.flags | CFG_TC_ONLY
        } else {
            cfg.flags & !CFG_TC_ONLY
        };
        self.config
            .set(0, &cfg, 0)
            .map_err(ebpf_err("write config"))
    }

    fn write_generation(&mut self, g: u32, c: &Compiled, rules: &[(u32, RuleValue)]) -> Result<()> {
        // 1. Clear the generation's flows (left over from two publishes ago).
        let stale: Vec<FlowKey> = self
            .flows
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| u32::from(k.gen_) == g)
            .collect();
        for k in &stale {
            match self.flows.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(ebpf_err("clear flows")(e)),
            }
        }
        // 2. Actions of live rules. Slots are stable, and a slot is reused only by a rule the
        //    active generation does not reference, so the active set reads the same values.
        for (slot, v) in rules {
            self.rules
                .set(*slot, v, 0)
                .map_err(ebpf_err("write rule"))?;
        }
        // 3. Flows and tuples.
        for (k, r) in &c.flows {
            let mut k = *k;
            k.gen_ = g as u8;
            self.flows
                .insert(&k, r, 0)
                .map_err(ebpf_err("write flow"))?;
        }
        for (i, t) in c.tuples.iter().enumerate() {
            self.tuples
                .set(g * MAX_TUPLES + i as u32, t, 0)
                .map_err(ebpf_err("write tuple"))?;
        }
        Ok(())
    }

    /// Rewrites one rule's action (its lease, for `run`).
    pub fn set_rule(&mut self, slot: u32, v: &RuleValue) -> Result<()> {
        self.rules.set(slot, v, 0).map_err(ebpf_err("write rule"))
    }

    /// Counters of one slot, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<Counters> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(ebpf_err("read counters"))?;
        let mut s = Counters::default();
        for c in per_cpu.iter() {
            s.matched += c.matched;
            s.dropped += c.dropped;
            s.duplicated += c.duplicated;
            s.passed += c.passed;
            s.bytes += c.bytes;
            s.delayed += c.delayed;
            s.queue_dropped += c.queue_dropped;
        }
        Ok(s)
    }

    pub fn reset_counters(&mut self, slot: u32) -> Result<()> {
        let n = aya::util::nr_cpus()
            .map_err(|(what, e)| io_err(what)(e))?
            .get();
        let zeros = PerCpuValues::try_from(vec![Counters::default(); n as usize])
            .map_err(io_err("per-cpu values"))?;
        self.counters
            .set(slot, zeros, 0)
            .map_err(ebpf_err("reset counters"))?;
        // A new rule's rate starts idle, whatever the slot's last owner left.
        self.rate.set(slot, &0, 0).map_err(ebpf_err("reset rate"))
    }
}

/// How one hook of an interface is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookKind {
    /// XDP through a bpf_link, native (driver) mode.
    XdpNative,
    /// XDP through a bpf_link, generic (skb) mode.
    XdpGeneric,
    /// tc through a tcx bpf_link (kernel 6.6+).
    Tcx,
    /// tc through a cls_bpf filter on a clsact qdisc (older kernels).
    Clsact,
    /// No XDP of ours: another program holds XDP here, tc ingress applies the ingress rules.
    TcFallback,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    XdpIngress,
    TcIngress,
    TcEgress,
}

impl Hook {
    pub const ALL: [Hook; 3] = [Hook::XdpIngress, Hook::TcIngress, Hook::TcEgress];

    fn prog(self) -> &'static str {
        match self {
            Hook::XdpIngress => progs::XDP_INGRESS,
            Hook::TcIngress => progs::TC_INGRESS,
            Hook::TcEgress => progs::TC_EGRESS,
        }
    }

    fn tc_type(self) -> TcAttachType {
        match self {
            Hook::TcEgress => TcAttachType::Egress,
            _ => TcAttachType::Ingress,
        }
    }

    pub fn pin_name(self, iface: &str) -> String {
        let h = match self {
            Hook::XdpIngress => "xdp",
            Hook::TcIngress => "tc_ingress",
            Hook::TcEgress => "tc_egress",
        };
        // bpffs refuses names with a dot, and interface names may have one (eth0.100).
        let enc = iface.replace('%', "%25").replace('.', "%2e");
        format!("{enc}_{h}")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookState {
    pub hook: Hook,
    pub kind: HookKind,
    pub prog_id: u32,
    /// We added the clsact qdisc, so we remove it on detach.
    #[serde(default)]
    pub created_clsact: bool,
    /// Why the hook is not what was asked for (a fallback), for status and warnings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

pub fn ifindex(iface: &str) -> Option<u32> {
    let c = CString::new(iface).ok()?;
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Attaches all three programs to `iface`, pinning links under `links_dir`. On failure, detaches
/// what it attached so far.
pub fn attach(
    ebpf: &mut Ebpf,
    iface: &str,
    links_dir: &Path,
    xdp_mode: Option<XdpMode>,
) -> Result<Vec<HookState>> {
    std::fs::create_dir_all(links_dir)
        .map_err(io_err(format!("create {}", links_dir.display())))?;
    attach_all(ebpf, iface, Some(links_dir), xdp_mode).map(|(h, _)| h)
}

/// Attaches without pinning: the links live as long as the returned handles (and this process).
pub fn attach_held(
    ebpf: &mut Ebpf,
    iface: &str,
    xdp_mode: Option<XdpMode>,
) -> Result<(Vec<HookState>, Vec<FdLink>)> {
    attach_all(ebpf, iface, None, xdp_mode)
}

fn attach_all(
    ebpf: &mut Ebpf,
    iface: &str,
    links_dir: Option<&Path>,
    xdp_mode: Option<XdpMode>,
) -> Result<(Vec<HookState>, Vec<FdLink>)> {
    let cname = CString::new(iface)
        .map_err(|_| io_err("interface name")(io::ErrorKind::InvalidInput.into()))?;
    let mut done: Vec<HookState> = Vec::new();
    let mut held = Vec::new();
    let res = (|| -> Result<()> {
        for hook in Hook::ALL {
            let pin = links_dir.map(|d| d.join(hook.pin_name(iface)));
            let (h, l) = attach_one(ebpf, hook, &cname, iface, pin.as_deref(), xdp_mode)?;
            done.push(h);
            held.extend(l);
        }
        Ok(())
    })();
    if let Err(e) = res {
        drop(held);
        let _ = detach_all(iface, &done, links_dir);
        return Err(e);
    }
    Ok((done, held))
}

/// Pins `link` at `pin`, or hands it back to be held when there is no pin path.
fn keep(link: FdLink, pin: Option<&Path>) -> Result<Option<FdLink>> {
    match pin {
        Some(p) => pin_link(link, p).map(|()| None),
        None => Ok(Some(link)),
    }
}

fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    let _ = std::fs::remove_file(path);
    link.pin(path)
        .map_err(ebpf_err(format!("pin link {}", path.display())))?;
    Ok(())
}

fn attach_one(
    ebpf: &mut Ebpf,
    hook: Hook,
    cname: &CString,
    iface: &str,
    pin: Option<&Path>,
    xdp_mode: Option<XdpMode>,
) -> Result<(HookState, Option<FdLink>)> {
    let prog = ebpf
        .program_mut(hook.prog())
        .ok_or_else(|| KernelError::Io {
            what: format!("program {}", hook.prog()),
            source: io::ErrorKind::NotFound.into(),
        })?;
    match hook {
        Hook::XdpIngress => {
            let p: &mut Xdp = prog.try_into().map_err(ebpf_err("xdp program"))?;
            if p.info().is_err() {
                p.load().map_err(ebpf_err("load XDP program (verifier)"))?;
            }
            let prog_id = p.info().map_err(ebpf_err("xdp info"))?.id();
            // Native first: it runs before the skb exists. Generic where the driver has no XDP.
            let modes: &[(XdpMode, HookKind)] = match xdp_mode {
                Some(XdpMode::Skb) => &[(XdpMode::Skb, HookKind::XdpGeneric)],
                Some(_) => &[(XdpMode::Driver, HookKind::XdpNative)],
                None => &[
                    (XdpMode::Driver, HookKind::XdpNative),
                    (XdpMode::Skb, HookKind::XdpGeneric),
                ],
            };
            let mut last = None;
            for &(mode, kind) in modes {
                match p.attach(cname.as_c_str(), mode) {
                    Ok(id) => {
                        let link = p.take_link(id).map_err(ebpf_err("xdp link"))?;
                        let fd: FdLink = link.try_into().map_err(|_| KernelError::Io {
                            what: format!(
                                "XDP on {iface}: the kernel gave no bpf_link (needs 5.9+)"
                            ),
                            source: io::ErrorKind::Unsupported.into(),
                        })?;
                        let held = keep(fd, pin)?;
                        return Ok((
                            HookState {
                                hook,
                                kind,
                                prog_id,
                                created_clsact: false,
                                note: None,
                            },
                            held,
                        ));
                    }
                    Err(e) => last = Some(e),
                }
            }
            let err = last.expect("one mode tried");
            match xdp_holder(iface) {
                // Someone else's program: never replace it. Unless a mode was demanded, drop
                // at tc ingress instead (after the skb exists, but dropped all the same).
                Some(holder) if xdp_mode.is_none() => Ok((
                    HookState {
                        hook,
                        kind: HookKind::TcFallback,
                        prog_id: 0,
                        created_clsact: false,
                        note: Some(format!("XDP on {iface} is held by {holder}")),
                    },
                    None,
                )),
                Some(holder) => Err(KernelError::Io {
                    what: format!("attach XDP to {iface}: it is held by {holder}"),
                    source: io::ErrorKind::AlreadyExists.into(),
                }),
                None => Err(ebpf_err(format!("attach XDP to {iface}"))(err)),
            }
        }
        Hook::TcIngress | Hook::TcEgress => {
            let p: &mut SchedClassifier = prog.try_into().map_err(ebpf_err("tc program"))?;
            if p.info().is_err() {
                p.load().map_err(ebpf_err("load tc program (verifier)"))?;
            }
            let prog_id = p.info().map_err(ebpf_err("tc info"))?.id();
            if KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0)) {
                // First in the chain, so another tool's TC_ACT_OK cannot hide packets from us.
                let id = p
                    .attach(
                        cname.as_c_str(),
                        TcAttach::Tcx {
                            attach_type: hook.tc_type(),
                            order: LinkOrder::first(),
                        },
                    )
                    .map_err(ebpf_err(format!("attach tcx {} to {iface}", hook.prog())))?;
                let link = p.take_link(id).map_err(ebpf_err("tc link"))?;
                let fd: FdLink = link.try_into().map_err(ebpf_err("tcx link"))?;
                let held = keep(fd, pin)?;
                Ok((
                    HookState {
                        hook,
                        kind: HookKind::Tcx,
                        prog_id,
                        created_clsact: false,
                        note: None,
                    },
                    held,
                ))
            } else {
                let created = match tc::qdisc_add_clsact(cname.as_c_str()) {
                    Ok(()) => true,
                    Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {
                        false
                    }
                    Err(e) => return Err(ebpf_err(format!("add clsact qdisc to {iface}"))(e)),
                };
                let id = p
                    .attach(cname.as_c_str(), hook.tc_type())
                    .map_err(ebpf_err(format!("attach tc {} to {iface}", hook.prog())))?;
                // A netlink filter outlives the process by itself; detach finds it by name.
                let link = p.take_link(id).map_err(ebpf_err("tc link"))?;
                std::mem::forget(link);
                Ok((
                    HookState {
                        hook,
                        kind: HookKind::Clsact,
                        prog_id,
                        created_clsact: created,
                        note: None,
                    },
                    None,
                ))
            }
        }
    }
}

/// Detaches every hook of one interface, then removes the clsact qdisc if we added it. Links
/// are unpinned from `links_dir`; without one they are held by the caller, who drops them.
/// Missing links (interface gone, already detached) are not errors.
pub fn detach_all(iface: &str, hooks: &[HookState], links_dir: Option<&Path>) -> Result<()> {
    let mut first_err = None;
    for h in hooks {
        if let Err(e) = detach_hook(iface, h, links_dir) {
            first_err.get_or_insert(e);
        }
    }
    if hooks.iter().any(|h| h.created_clsact) && ifindex(iface).is_some() {
        remove_clsact(iface);
    }
    first_err.map_or(Ok(()), Err)
}

fn detach_hook(iface: &str, h: &HookState, links_dir: Option<&Path>) -> Result<()> {
    match h.kind {
        HookKind::TcFallback => Ok(()),
        HookKind::XdpNative | HookKind::XdpGeneric | HookKind::Tcx => match links_dir {
            Some(d) => unpin_link(&d.join(h.hook.pin_name(iface))),
            None => Ok(()),
        },
        HookKind::Clsact => {
            let Ok(cname) = CString::new(iface) else {
                return Ok(());
            };
            if ifindex(iface).is_none() {
                return Ok(());
            }
            match tc::qdisc_detach_program(cname.as_c_str(), h.hook.tc_type().into(), h.hook.prog())
            {
                Ok(()) => {}
                Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ebpf_err(format!("detach tc from {iface}"))(e)),
            }
            Ok(())
        }
    }
}

/// Removes the clsact qdisc we created (our filters are gone by then).
fn remove_clsact(iface: &str) {
    let _ = std::process::Command::new("tc")
        .args(["qdisc", "del", "dev", iface, "clsact"])
        .stderr(std::process::Stdio::null())
        .status();
}

pub fn unpin_link(path: &Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(l) => {
            let fd = l
                .unpin()
                .map_err(io_err(format!("unpin {}", path.display())))?;
            drop(fd); // last reference: the kernel detaches the program
            Ok(())
        }
        Err(_) if !path.exists() => Ok(()),
        Err(e) => Err(ebpf_err(format!("open pinned link {}", path.display()))(e)),
    }
}

/// The XDP program another tool attached to `iface`, as "program ID (NAME)", if any.
pub fn xdp_holder(iface: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "-d", "link", "show", "dev", iface])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let xdp = &v[0]["xdp"];
    let prog = if xdp["prog"].is_object() {
        &xdp["prog"]
    } else {
        &xdp["attached"][0]["prog"]
    };
    let id = prog["id"].as_u64()?;
    Some(match prog["name"].as_str() {
        Some(n) => format!("program {id} ({n})"),
        None => format!("program {id}"),
    })
}

/// Is the pinned link still attached to a live interface with this index?
pub fn link_alive(path: &Path) -> bool {
    PinnedLink::from_pin(path).is_ok()
}

/// Removes a pin directory tree (maps, links) entirely.
pub fn remove_pins(dir: &PathBuf) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io_err(format!("remove {}", dir.display())))?;
    }
    Ok(())
}
