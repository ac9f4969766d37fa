//! The maps, pinned by name so later controller invocations find them.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use netfault_common::{
    BurstKey, BurstState, Config, Counters, DIST_TABLES, DistTable, FlowKey, FlowKey4, FlowRef,
    GENERATIONS, MAX_BURST_FLOWS, MAX_FLOWS, MAX_IFB, MAX_PACE_FLOWS, MAX_RULES, MAX_TUPLES,
    Prefilter, RuleValue, Tuple,
};

#[map(name = "NF_CONFIG")]
pub static NF_CONFIG: Array<Config> = Array::pinned(1, 0);

/// `GENERATIONS * MAX_TUPLES` entries: generation g's tuples start at `g * MAX_TUPLES`.
#[map(name = "NF_TUPLES")]
pub static NF_TUPLES: Array<Tuple> = Array::pinned(GENERATIONS * MAX_TUPLES, 0);

/// One prefilter per generation (see `Prefilter`).
#[map(name = "NF_PREFILTER")]
pub static NF_PREFILTER: Array<Prefilter> = Array::pinned(GENERATIONS, 0);

/// Masked flow keys of both generations (told apart by `FlowKey::gen_`) that IPv6 packets
/// can match. No prealloc: most rule sets are small, and 512k preallocated entries would pin
/// tens of MiB.
#[map(name = "NF_FLOWS")]
pub static NF_FLOWS: HashMap<FlowKey, FlowRef> = HashMap::pinned(MAX_FLOWS, BPF_F_NO_PREALLOC);

/// The same for IPv4 packets, on keys of half the size (`FlowKey4`). A flow of no family is
/// in both maps.
#[map(name = "NF_FLOWS4")]
pub static NF_FLOWS4: HashMap<FlowKey4, FlowRef> = HashMap::pinned(MAX_FLOWS, BPF_F_NO_PREALLOC);

/// `GENERATIONS * MAX_RULES` entries: generation g's values start at `g * MAX_RULES` (`rule_index`).
#[map(name = "NF_RULES")]
pub static NF_RULES: Array<RuleValue> = Array::pinned(GENERATIONS * MAX_RULES, 0);

#[map(name = "NF_COUNTERS")]
pub static NF_COUNTERS: PerCpuArray<Counters> = PerCpuArray::pinned(MAX_RULES, 0);

/// Interfaces (by index) where tc ingress applies every rule: no netfault XDP program applies
/// them there (another program holds XDP, or the controller chose tc for a virtual device).
/// `nf_xdp_ingress` passes everything on these, so adding or removing XDP counts no packet twice.
#[map(name = "NF_TC_ONLY")]
pub static NF_TC_ONLY: HashMap<u32, u32> = HashMap::pinned(256, 0);

/// Interfaces (by index) this state's tc hooks are on. A cgroup program sees the packets of
/// the cgroup's sockets in every namespace: `nf_cg_ingress` acts only on those that came in
/// through one of these.
#[map(name = "NF_IFACES")]
pub static NF_IFACES: HashMap<u32, u32> = HashMap::pinned(256, 0);

/// Jitter distribution tables (normal, pareto, paretonormal), written by the controller at load.
#[map(name = "NF_DIST")]
pub static NF_DIST: Array<DistTable> = Array::pinned(DIST_TABLES, 0);

/// Last departure time per flow (the packet's own key), so jitter never reorders a flow
/// unless the rule says `--reorder`. LRU: a forgotten idle flow loses nothing.
#[map(name = "NF_PACE")]
pub static NF_PACE: LruHashMap<FlowKey, u64> = LruHashMap::pinned(MAX_PACE_FLOWS, 0);

/// Per rule slot: the time the rate's "link" is free again (monotonic ns).
#[map(name = "NF_RATE")]
pub static NF_RATE: Array<u64> = Array::pinned(MAX_RULES, 0);

/// Interface index to the index of the IFB device whose fq delays its ingress traffic.
#[map(name = "NF_IFB")]
pub static NF_IFB: HashMap<u32, u32> = HashMap::pinned(MAX_IFB, 0);

/// Per rule slot: when the slot's reject replies are next due (GCRA's theoretical arrival
/// time, monotonic ns); see `reject::allow`.
#[map(name = "NF_REJECT")]
pub static NF_REJECT: Array<u64> = Array::pinned(MAX_RULES, 0);

/// Reject's per-CPU scratch space, where replies are composed (not pinned: nothing outside
/// one program run reads it).
#[map(name = "NF_REJECT_BUF")]
pub static NF_REJECT_BUF: PerCpuArray<crate::reject::Scratch> = PerCpuArray::with_max_entries(1, 0);
/// Gilbert-Elliott state per flow and rule (`--burst-scope flow`). LRU: when it is full the
/// least recently seen flow is forgotten, and its chain starts again in the good state.
#[map(name = "NF_BURST_FLOWS")]
pub static NF_BURST_FLOWS: LruHashMap<BurstKey, BurstState> =
    LruHashMap::pinned(MAX_BURST_FLOWS, 0);

/// Gilbert-Elliott state per rule slot (`--burst-scope rule`), shared by every CPU.
#[map(name = "NF_BURST_RULE")]
pub static NF_BURST_RULE: Array<BurstState> = Array::pinned(MAX_RULES, 0);

/// cgroup targets: `MAX_CGROUPS` slots per generation (`generation * MAX_CGROUPS + slot`),
/// each a cgroup some rule of that generation names; id 0: unused.
#[map(name = "NF_CGROUPS")]
pub static NF_CGROUPS: Array<netfault_common::CgroupSlot> =
    Array::pinned(GENERATIONS * netfault_common::MAX_CGROUPS, 0);

/// cgroup targets: flows (as their local socket sees them) and the target cgroups of the
/// socket egress saw send on each. LRU: a forgotten flow is learned again from its next
/// packet out.
#[map(name = "NF_CGROUP_FLOWS")]
pub static NF_CGROUP_FLOWS: LruHashMap<netfault_common::CgroupFlow, netfault_common::CgroupSeen> =
    LruHashMap::pinned(netfault_common::MAX_CGROUP_FLOWS, 0);
