//! The maps, typed, and the generation flip.
use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuValues},
};
use netfault_common::{
    BurstState, CFG_TC_ONLY, CgroupSlot, Config, Counters, FlowKey, FlowKey4, FlowRef, MAX_CGROUPS,
    MAX_TUPLES, Prefilter, RuleValue, Tuple, maps as names, rule_index,
};

use super::{KernelError, Result, ebpf_err, flow_index::FlowIndex, io_err};
use crate::compile::Compiled;

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
    format!("{:?}", c.cgroups).hash(&mut h);
    h.finish().max(1)
}

/// Removes the entries of generation `g` (`gen_of` reads a key's) from a flow map: those
/// `known` lists when the generation's index is trusted, else every key the map holds of it
/// (a walk of all its buckets).
fn clear_generation<K: aya::Pod>(
    map: &mut BpfHashMap<MapData, K, FlowRef>,
    g: u32,
    gen_of: impl Fn(&K) -> u8,
    known: Option<&[K]>,
) -> Result<()> {
    let walked: Vec<K>;
    let stale = match known {
        Some(k) => k,
        None => {
            walked = map
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| u32::from(gen_of(k)) == g)
                .collect();
            &walked
        }
    };
    for k in stale {
        absent_ok(map.remove(k)).map_err(ebpf_err("clear flows"))?;
    }
    Ok(())
}

/// The maps, typed.
pub struct Maps {
    pub config: Array<MapData, Config>,
    pub tuples: Array<MapData, Tuple>,
    pub prefilter: Array<MapData, Prefilter>,
    /// Flows IPv6 packets can match.
    pub flows: BpfHashMap<MapData, FlowKey, FlowRef>,
    /// Flows IPv4 packets can match, on short keys (`FlowKey::short`).
    pub flows4: BpfHashMap<MapData, FlowKey4, FlowRef>,
    pub rules: Array<MapData, RuleValue>,
    pub counters: PerCpuArray<MapData, Counters>,
    pub tc_only: BpfHashMap<MapData, u32, u32>,
    pub ifb: BpfHashMap<MapData, u32, u32>,
    pub rate: Array<MapData, u64>,
    /// Reject replies' pacing per slot.
    pub reject: Array<MapData, u64>,
    /// Gilbert-Elliott state per rule slot (`--burst-scope rule`).
    pub burst_rule: Array<MapData, BurstState>,
    /// cgroup slots of each generation.
    pub cgroups: Array<MapData, CgroupSlot>,
    /// The interfaces this state's tc hooks are on (`NF_IFACES`).
    pub ifaces: BpfHashMap<MapData, u32, u32>,
    grace: super::grace::Grace,
    waits_before_flip: u32,
    /// Where each generation's flow keys are kept ([`FlowIndex`]); `None`: walk the maps.
    index_dir: Option<PathBuf>,
}

fn typed<T: TryFrom<Map, Error = aya::maps::MapError>>(m: Map, name: &str) -> Result<T> {
    T::try_from(m).map_err(ebpf_err(format!("map {name}")))
}

impl Maps {
    /// Opens the maps pinned in `maps_dir` by an earlier `attach`.
    pub fn open(maps_dir: &Path) -> Result<Self> {
        Self::build(|name| {
            let p = maps_dir.join(name);
            if maps_dir.is_dir() && !p.exists() {
                // The maps of an older (or newer) netfault: its programs use others.
                return Err(KernelError::Io {
                    what: format!(
                        "map {name} is not pinned in {}: this namespace was attached by another \
                         version of netfault; `netfault detach` it and attach again",
                        maps_dir.display()
                    ),
                    source: io::Error::from(io::ErrorKind::NotFound),
                });
            }
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
            prefilter: typed(get(names::PREFILTER)?, names::PREFILTER)?,
            flows: typed(get(names::FLOWS)?, names::FLOWS)?,
            flows4: typed(get(names::FLOWS4)?, names::FLOWS4)?,
            rules: typed(get(names::RULES)?, names::RULES)?,
            counters: typed(get(names::COUNTERS)?, names::COUNTERS)?,
            tc_only: typed(get(names::TC_ONLY)?, names::TC_ONLY)?,
            ifb: typed(get(names::IFB)?, names::IFB)?,
            rate: typed(get(names::RATE)?, names::RATE)?,
            reject: typed(get(names::REJECT)?, names::REJECT)?,
            burst_rule: typed(get(names::BURST_RULE)?, names::BURST_RULE)?,
            cgroups: typed(get(names::CGROUPS)?, names::CGROUPS)?,
            ifaces: typed(get(names::IFACES)?, names::IFACES)?,
            grace: super::grace::Grace::new().map_err(io_err("grace map"))?,
            waits_before_flip: 0,
            index_dir: None,
        })
    }

    /// Keeps each generation's flow keys in `dir` (the state's run directory), so that a
    /// rewrite deletes exactly those instead of walking the flow maps ([`FlowIndex`]).
    pub fn with_flow_index(mut self, dir: PathBuf) -> Self {
        self.index_dir = Some(dir);
        self
    }

    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(ebpf_err("read config"))
    }

    /// Publishes a compiled rule set: writes the generation the data path is not reading, then
    /// flips to it in one word. Packets see the old set or the new one, never a mix.
    ///
    /// No program may still be reading the retired generation when it is rewritten, so each
    /// flip is followed by a grace period (`grace`) before this returns, and `unsettled` in the
    /// config says whether it passed. The wait is after the flip, not before the next rewrite:
    /// a change is on the wire as soon as its flip lands, and the next change (its predecessor
    /// settled) rewrites at once. When the retired generation already holds exactly this set,
    /// it is not rewritten at all. `rules` are the action values of every live slot; they are
    /// part of the generation (`rule_index`), so what a generation's digest says it holds is
    /// all that it holds.
    pub fn publish_set(&mut self, c: &Compiled, rules: &[(u32, RuleValue)]) -> Result<()> {
        let mut cfg = self.config()?;
        let cur = (cfg.active & 1) as usize;
        let next = cur ^ 1;
        let digest = digest(c, rules);
        if cfg.digest[cur] == digest {
            return Ok(()); // already live
        }
        if cfg.digest[next] != digest {
            if cfg.unsettled != 0 {
                // The change before this one ended between its flip and its grace period:
                // programs that read `next` before that flip must be done before it changes.
                self.grace.wait().map_err(io_err("grace period"))?;
                self.waits_before_flip += 1;
            }
            // The index of `next` is trusted only for the digest the config records; from
            // here until the rewrite is recorded, that digest is 0, so neither a crash nor
            // another writer leaves an index that lies.
            let known = self
                .index_dir
                .as_deref()
                .and_then(|d| FlowIndex::read(d, next as u32))
                .filter(|i| cfg.digest[next] != 0 && i.digest == cfg.digest[next]);
            cfg.digest[next] = 0;
            self.config
                .set(0, &cfg, 0)
                .map_err(ebpf_err("write config"))?;
            let written = self.write_generation(next as u32, c, rules, known.as_ref())?;
            cfg.ntuples[next] = c.tuples.len() as u32;
            cfg.digest[next] = digest;
            if let Some(d) = &self.index_dir {
                let (v6, v4) = written;
                let index = FlowIndex { digest, v6, v4 };
                // Written before the digest that makes it trusted: without it, a walk.
                if let Err(e) = index.write(d, next as u32) {
                    log::warn!("keep the flow index in {}: {e}", d.display());
                }
            }
        }
        // The union of both sets' needs while either may be read; then exactly the new set's.
        cfg.flags |= c.config_flags;
        cfg.unsettled = 1;
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
            .map_err(ebpf_err("write config"))?;
        // The change is on the wire; settle the retired generation for the next one.
        self.grace.wait().map_err(io_err("grace period"))?;
        let mut cfg = self.config()?;
        cfg.unsettled = 0;
        self.config
            .set(0, &cfg, 0)
            .map_err(ebpf_err("write config"))
    }

    /// Publishes that had to wait for a grace period before their flip, since these maps were
    /// opened: each one follows a change that ended between its flip and its grace period.
    pub fn waits_before_flip(&self) -> u32 {
        self.waits_before_flip
    }

    /// Points an interface's ingress shaping at its IFB device, or stops it (None).
    pub fn set_ifb(&mut self, ifindex: u32, ifb: Option<u32>) -> Result<()> {
        match ifb {
            Some(i) => self
                .ifb
                .insert(&ifindex, &i, 0)
                .map_err(ebpf_err("write IFB map")),
            None => absent_ok(self.ifb.remove(&ifindex)).map_err(ebpf_err("clear IFB map")),
        }
    }

    /// Makes `NF_IFACES` hold exactly `ifindexes` (the state's attached interfaces), writing
    /// only what differs.
    pub fn set_ifaces(&mut self, ifindexes: &[u32]) -> Result<()> {
        let stale: Vec<u32> = self
            .ifaces
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ifindexes.contains(k))
            .collect();
        for k in stale {
            absent_ok(self.ifaces.remove(&k)).map_err(ebpf_err("clear interface map"))?;
        }
        for i in ifindexes {
            if self.ifaces.get(i, 0).is_err() {
                self.ifaces
                    .insert(i, &1, 0)
                    .map_err(ebpf_err("write interface map"))?;
            }
        }
        Ok(())
    }

    /// Marks an interface whose ingress rules tc applies (XDP is not ours there), or unmarks it.
    pub fn set_tc_only(&mut self, ifindex: u32, on: bool) -> Result<()> {
        if on {
            self.tc_only
                .insert(&ifindex, &1, 0)
                .map_err(ebpf_err("mark tc-only interface"))?;
        } else {
            absent_ok(self.tc_only.remove(&ifindex))
                .map_err(ebpf_err("unmark tc-only interface"))?;
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

    /// Writes generation `g` (its old flows deleted: those of `known`, or found by a walk);
    /// returns the flow keys written, IPv6 then IPv4.
    fn write_generation(
        &mut self,
        g: u32,
        c: &Compiled,
        rules: &[(u32, RuleValue)],
        known: Option<&FlowIndex>,
    ) -> Result<(Vec<FlowKey>, Vec<FlowKey4>)> {
        // 1. Clear the generation's flows (left over from two publishes ago).
        clear_generation(&mut self.flows, g, |k| k.gen_, known.map(|i| &i.v6[..]))?;
        clear_generation(&mut self.flows4, g, |k| k.gen_, known.map(|i| &i.v4[..]))?;
        // 2. Actions of live rules, in the generation's own copy: the other generation keeps
        //    reading the values it was published with, and a later flip back to this one (its
        //    digest unchanged) reads these.
        for (slot, v) in rules {
            self.rules
                .set(rule_index(g, *slot), v, 0)
                .map_err(ebpf_err("write rule"))?;
        }
        // 3. cgroup slots (unused ones zeroed: the data path stops at the first), before the
        //    flows whose rules name them.
        for i in 0..MAX_CGROUPS {
            let s = c.cgroups.get(i as usize).copied().unwrap_or_default();
            self.cgroups
                .set(g * MAX_CGROUPS + i, &s, 0)
                .map_err(ebpf_err("write cgroup slot"))?;
        }
        // 4. Flows and tuples.
        // Each flow goes where the packets that can match it look it up: IPv6 packets in
        // `flows`, IPv4 packets in `flows4` (short keys); a flow of no family in both.
        let (mut v6, mut v4) = (Vec::new(), Vec::new());
        for (mut k, r) in c.flows_v6() {
            k.gen_ = g as u8;
            self.flows
                .insert(&k, &r, 0)
                .map_err(ebpf_err("write flow"))?;
            v6.push(k);
        }
        for (mut k, r) in c.flows_v4() {
            k.gen_ = g as u8;
            self.flows4
                .insert(&k, &r, 0)
                .map_err(ebpf_err("write flow"))?;
            v4.push(k);
        }
        for (i, t) in c.tuples.iter().enumerate() {
            self.tuples
                .set(g * MAX_TUPLES + i as u32, t, 0)
                .map_err(ebpf_err("write tuple"))?;
        }
        // 5. The prefilter, which names the tuples above (and no stale one).
        self.prefilter
            .set(g, &*c.prefilter, 0)
            .map_err(ebpf_err("write prefilter"))?;
        Ok((v6, v4))
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
            s.rejected += c.rejected;
            s.reject_limited += c.reject_limited;
            s.corrupted += c.corrupted;
            s.bursts += c.bursts;
            s.held += c.held;
            s.dup_delayed += c.dup_delayed;
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
        // A new rule's rate starts idle and its per-rule burst chain good, whatever the slot's
        // last owner left.
        self.burst_rule
            .set(slot, &BurstState::default(), 0)
            .map_err(ebpf_err("reset burst state"))?;
        self.rate.set(slot, &0, 0).map_err(ebpf_err("reset rate"))?;
        // And its reject replies start with a full burst.
        self.reject
            .set(slot, &0, 0)
            .map_err(ebpf_err("reset reject pacing"))
    }
}

/// A delete that found no such key did what was asked. aya reports the kernel's ENOENT on
/// `bpf_map_delete_elem` as a syscall error, not as `KeyNotFound` (which only lookups return).
fn absent_ok(
    r: std::result::Result<(), aya::maps::MapError>,
) -> std::result::Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        r => r,
    }
}
