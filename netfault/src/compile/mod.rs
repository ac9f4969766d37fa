//! Compiles an ordered rule set into the data path's tuple space: one mask per distinct match
//! shape, and exact-match flow entries under each. Pure; the kernel writes happen elsewhere.
use std::collections::{BTreeMap, HashMap};

use ipnet::IpNet;
use netfault_common::{
    CFG_CGROUP, CFG_CGROUP_INGRESS, CFG_INGRESS_TC, CgroupSlot, DIR_EGRESS, DIR_INGRESS, FAMILY_V4,
    FAMILY_V6, FlowKey, FlowKey4, FlowRef, KEY_OFF_IFINDEX, KEY_OFF_PORTS, KEY_PORTS, KEY_TCP_SYN,
    MAX_CGROUPS, MAX_CHAIN, MAX_TUPLES, PF_ADDR_TABLES, PF_ADDR_V4, PF_ADDR_V6, PROB_ALWAYS,
    Prefilter, RULE_ACTIVE, RULE_BURST, RULE_BURST_PER_RULE, RULE_CGROUP, RULE_CORRUPT,
    RULE_DUP_DELAY, RULE_HOLD, RULE_NEEDS_SKB, RULE_REORDER, RULE_SEGMENT, RULE_SHAPE, RuleValue,
    Tuple, TupleSet, pf_meta_index,
};

use crate::spec::{
    BurstScope, Conn, Direction, Kind, PortRange, Proto, RuleSpec, reject::DEFAULT_REJECT_RATE,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error(
        "the rule set needs {0} distinct match shapes; the data path holds {max}. Port ranges that are not aligned to powers of two cost one shape per prefix length: prefer single ports, whole ranges or aligned ranges",
        max = MAX_TUPLES
    )]
    TooManyTuples(usize),
    #[error("the rule set compiles to {0} flow entries; the data path holds {1}")]
    TooManyFlows(usize, usize),
    /// More rules with one same match than the data path walks past expired ones: the last
    /// would never apply.
    #[error(
        "{kind} '{name}' has the same match as {earlier} (in evaluation order); the data path holds at most {max} rules with one match",
        earlier = quoted(.earlier),
        max = MAX_CHAIN
    )]
    ChainTooLong {
        kind: &'static str,
        name: String,
        earlier: Vec<String>,
    },
    /// More distinct cgroups than the data path's table holds (`--cgroup`).
    #[error(
        "the rule set names {0} distinct cgroups; the data path matches at most {max} at once",
        max = MAX_CGROUPS
    )]
    TooManyCgroups(usize),
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rule in evaluation order, with the slot its action and counters live in.
pub struct Input<'a> {
    pub slot: u32,
    pub spec: &'a RuleSpec,
    /// Interface index when the rule names one; `None` with a named interface means it is gone.
    pub ifindex: Option<u32>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Compiled {
    /// Rule tuples, then protection tuples, each sorted by `best_prio`: the order the data
    /// path visits them in.
    pub tuples: Vec<Tuple>,
    /// Keys carry their tuple index; `gen_` is set when written.
    pub flows: Vec<(FlowKey, FlowRef)>,
    /// Which tuples a packet may match, by a few bytes of its key (see `Prefilter`).
    pub prefilter: Box<Prefilter>,
    pub config_flags: u32,
    /// The cgroups rules name, by slot (`NF_CGROUPS`); `RuleValue::cgroup_slot` indexes it.
    pub cgroups: Vec<CgroupSlot>,
}

impl Compiled {
    /// The slot of a cgroup in `cgroups` (every cgroup a compiled rule names has one).
    pub fn cgroup_slot(&self, cg: &crate::spec::CgroupMatch) -> Option<u8> {
        self.cgroups
            .iter()
            .position(|s| s.id == cg.id && s.level == cg.level)
            .map(|i| i as u8)
    }

    /// `rule_value`'s value with the slot of the rule's cgroup, if it names one.
    pub fn with_cgroup(&self, spec: &RuleSpec, mut v: RuleValue) -> RuleValue {
        if let Some(slot) = spec.cgroup.as_ref().and_then(|c| self.cgroup_slot(c)) {
            v.cgroup_slot = slot;
        }
        v
    }
}

impl Compiled {
    /// The entries of `NF_FLOWS`: the flows an IPv6 packet can match.
    pub fn flows_v6(&self) -> impl Iterator<Item = (FlowKey, FlowRef)> + '_ {
        self.flows.iter().copied().filter(|(k, _)| k.fits_v6())
    }

    /// The entries of `NF_FLOWS4`: the flows an IPv4 packet can match, on short keys. A flow
    /// of no family is in both.
    pub fn flows_v4(&self) -> impl Iterator<Item = (FlowKey4, FlowRef)> + '_ {
        self.flows
            .iter()
            .filter(|(k, _)| k.fits_v4())
            .map(|(k, r)| (k.short(), *r))
    }
}

/// Splits an inclusive port range into the fewest (value, prefix length) blocks that cover it.
pub fn port_prefixes(r: PortRange) -> Vec<(u16, u8)> {
    let (mut lo, hi) = (u32::from(r.lo), u32::from(r.hi));
    let mut out = Vec::new();
    while lo <= hi {
        let mut k = if lo == 0 {
            16
        } else {
            lo.trailing_zeros().min(16)
        };
        while lo + (1 << k) - 1 > hi {
            k -= 1;
        }
        out.push((lo as u16, 16 - k as u8));
        lo += 1 << k;
    }
    out
}

fn port_mask(plen: u8) -> u16 {
    if plen == 0 {
        0
    } else {
        u16::MAX << (16 - plen)
    }
}

/// Address and mask as the data path stores them: raw network-order bytes in u32 words.
fn addr_words(net: &IpNet) -> ([u32; 4], [u32; 4]) {
    let mut a = [0u8; 16];
    let mut m = [0u8; 16];
    match net {
        IpNet::V4(n) => {
            a[..4].copy_from_slice(&n.network().octets());
            m[..4].copy_from_slice(&n.netmask().octets());
        }
        IpNet::V6(n) => {
            a.copy_from_slice(&n.network().octets());
            m.copy_from_slice(&n.netmask().octets());
        }
    }
    let w = |b: &[u8; 16]| {
        std::array::from_fn(|i| {
            u32::from_ne_bytes([b[4 * i], b[4 * i + 1], b[4 * i + 2], b[4 * i + 3]])
        })
    };
    (w(&a), w(&m))
}

fn family(net: &IpNet) -> u8 {
    match net {
        IpNet::V4(_) => FAMILY_V4,
        IpNet::V6(_) => FAMILY_V6,
    }
}

/// (family, protocol number) alternatives a protocol choice stands for. `Any` is a wildcard
/// (no protocol in the mask), which also matches a packet whose protocol the data path could
/// not read (`PROTO_UNKNOWN`); no choice names that number.
fn proto_alts(p: Proto) -> &'static [(u8, u8)] {
    match p {
        Proto::Any => &[(0, 0)],
        Proto::Tcp => &[(0, 6)],
        Proto::Udp => &[(0, 17)],
        Proto::Icmp => &[(FAMILY_V4, 1), (FAMILY_V6, 58)],
    }
}

/// The src/dst pairs a rule or partition matches, as (src, dst) with `None` meaning any.
fn address_pairs(spec: &RuleSpec) -> Vec<(Option<IpNet>, Option<IpNet>)> {
    let opt = |v: &[IpNet]| -> Vec<Option<IpNet>> {
        if v.is_empty() {
            vec![None]
        } else {
            v.iter().copied().map(Some).collect()
        }
    };
    let mut pairs = Vec::new();
    for s in opt(&spec.src) {
        for d in opt(&spec.dst) {
            pairs.push((s, d));
        }
    }
    if spec.kind == Kind::Partition && !spec.oneway {
        for s in opt(&spec.dst) {
            for d in opt(&spec.src) {
                pairs.push((s, d));
            }
        }
    }
    pairs
}

/// Expands one rule into (mask, key) pairs.
pub fn expand(spec: &RuleSpec, ifindex: Option<u32>) -> Vec<(FlowKey, FlowKey)> {
    let mut out = Vec::new();
    let sports = port_prefixes(spec.sport);
    let dports = port_prefixes(spec.dport);
    for (src, dst) in address_pairs(spec) {
        // A pair whose two sides are of different families can never match (partition sets may mix).
        let fam = match (src.as_ref().map(family), dst.as_ref().map(family)) {
            (Some(a), Some(b)) if a != b => continue,
            (Some(a), _) | (_, Some(a)) => a,
            (None, None) => 0,
        };
        for &(pfam, proto) in proto_alts(spec.effective_proto()) {
            if fam != 0 && pfam != 0 && fam != pfam {
                continue;
            }
            let fam = if fam != 0 { fam } else { pfam };
            for &(sp, splen) in &sports {
                for &(dp, dplen) in &dports {
                    let mut m = FlowKey::default();
                    let mut k = FlowKey::default();
                    if let Some(n) = src {
                        (k.src, m.src) = addr_words(&n);
                    }
                    if let Some(n) = dst {
                        (k.dst, m.dst) = addr_words(&n);
                    }
                    if fam != 0 {
                        m.family = 0xff;
                        k.family = fam;
                    }
                    if proto != 0 {
                        m.proto = 0xff;
                        k.proto = proto;
                    }
                    m.sport = port_mask(splen);
                    k.sport = sp & m.sport;
                    m.dport = port_mask(dplen);
                    k.dport = dp & m.dport;
                    if m.sport != 0 || m.dport != 0 {
                        (m.flags, k.flags) = (KEY_PORTS, KEY_PORTS);
                    }
                    // Connection state is one key bit the parser sets on a SYN without ACK:
                    // only these tuples mask it, so no other pays for it.
                    match spec.conn {
                        Conn::Any => {}
                        Conn::New => {
                            (m.flags, k.flags) = (m.flags | KEY_TCP_SYN, k.flags | KEY_TCP_SYN)
                        }
                        Conn::Established => m.flags |= KEY_TCP_SYN,
                    }
                    match spec.dir {
                        Direction::Ingress => (m.dir, k.dir) = (0xff, DIR_INGRESS),
                        Direction::Egress => (m.dir, k.dir) = (0xff, DIR_EGRESS),
                        Direction::Both => {}
                    }
                    if let Some(i) = ifindex {
                        (m.ifindex, k.ifindex) = (u32::MAX, i);
                    }
                    out.push((m, k));
                }
            }
        }
    }
    out
}

/// The action part of a rule, as the data path reads it. `hold_until_ns`: the end of the
/// rule's hold (CLOCK_MONOTONIC; its start plus `--hold`), 0 without one.
pub fn rule_value(spec: &RuleSpec, expires_ns: u64, hold_until_ns: u64) -> RuleValue {
    let (drop, dup) = match spec.kind {
        Kind::Partition => (u32::MAX, 0),
        Kind::Rule => (
            spec.act.effective_drop().threshold(),
            spec.act.duplicate.threshold(),
        ),
        Kind::Protect => (0, 0),
    };
    let mut flags = RULE_ACTIVE;
    // cgroup targets: tc only (only tc can find a packet's socket); the slot is the compiled
    // set's (`Compiled::with_cgroup`).
    if spec.kind != Kind::Protect && spec.cgroup.is_some() {
        flags |= RULE_CGROUP | RULE_NEEDS_SKB;
    }
    if dup != 0 {
        flags |= RULE_NEEDS_SKB;
    }
    // Reject (rules and partitions): replies are built at tc only, where they leave on every
    // kind of device (an XDP_TX on a veth is lost unless its peer runs XDP or GRO).
    let reject = match spec.kind {
        Kind::Protect => None,
        _ => spec.act.reject,
    };
    let reject_rate = spec.act.reject_rate.unwrap_or(DEFAULT_REJECT_RATE);
    if reject.is_some() {
        flags |= RULE_NEEDS_SKB;
    }
    // A draw per packet (an independent probability, or a Gilbert-Elliott chain, whatever its
    // rate): at egress the data path must meet wire packets, as control::features arranges for
    // the same predicate.
    let between = |t: u32| t != 0 && t != PROB_ALWAYS;
    if spec.kind == Kind::Rule && (spec.act.random_loss() || between(dup)) {
        flags |= RULE_SEGMENT;
    }
    let shape = if spec.kind == Kind::Rule {
        spec.act.shape
    } else {
        Default::default()
    };
    if shape.is_some() {
        flags |= RULE_NEEDS_SKB | RULE_SHAPE;
    }
    // A hold stamps departure times as a delay does (and is applied where a delay is).
    let hold = spec.kind == Kind::Rule && spec.act.hold.is_some();
    if hold {
        flags |= RULE_NEEDS_SKB | RULE_SHAPE | RULE_HOLD;
    }
    let late = spec.kind == Kind::Rule && spec.act.late_duplicates();
    if late {
        flags |= RULE_DUP_DELAY;
    }
    if shape.reorder {
        flags |= RULE_REORDER;
    }
    // Corruption: at tc (the checksum helpers need the skb), on wire packets at egress (one bit
    // of one packet, whatever the probability: a bad checksum's seed in a GSO aggregate would
    // spoil every segment cut from it).
    let corrupt = if spec.kind == Kind::Rule && spec.act.corrupts() {
        flags |= RULE_NEEDS_SKB | RULE_CORRUPT | RULE_SEGMENT;
        spec.act.corrupt.threshold()
    } else {
        0
    };
    // Burst loss: the chain's thresholds replace drop_thresh, which stays 0 (a rule without
    // a chain keeps today's draw).
    let chain = if spec.kind == Kind::Rule {
        spec.act.chain()
    } else {
        None
    };
    let [ge_p, ge_r, ge_loss_bad, ge_loss_good] = chain.map_or([0; 4], |g| g.thresholds());
    let drop = if chain.is_some() {
        flags |= RULE_BURST;
        if spec.act.burst_scope == BurstScope::Rule {
            flags |= RULE_BURST_PER_RULE;
        }
        0
    } else {
        drop
    };
    let ns = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_nanos() as u64);
    RuleValue {
        ge_p,
        ge_r,
        ge_loss_bad,
        ge_loss_good,
        flags,
        drop_thresh: drop,
        dup_thresh: dup,
        dist: shape.distribution.code(),
        expires_ns,
        delay_ns: ns(shape.delay),
        jitter_ns: ns(shape.jitter),
        rate_bytes_per_sec: shape.rate.map_or(0, |r| r.bytes_per_sec),
        rate_queue_ns: if shape.rate.is_some() {
            RATE_QUEUE.as_nanos() as u64
        } else {
            0
        },
        corrupt_thresh: corrupt,
        corrupt_mode: spec.act.corrupt_checksum.unwrap_or_default().code(),
        reject: reject.map_or(0, |k| k.code()),
        reject_interval_ns: if reject.is_some() {
            reject_rate.interval_ns()
        } else {
            0
        },
        reject_tolerance_ns: if reject.is_some() {
            reject_rate.tolerance_ns()
        } else {
            0
        },
        hold_until_ns: if hold { hold_until_ns } else { 0 },
        dup_delay_ns: if late {
            ns(spec.act.duplicate_delay)
        } else {
            0
        },
        ..Default::default()
    }
}

/// How long a packet may wait for its rule's rate before it is dropped (a queue drop): a
/// bounded backlog, as tbf's `latency`, instead of one that grows while traffic exceeds the rate.
pub const RATE_QUEUE: std::time::Duration = std::time::Duration::from_millis(100);

/// Compiles rules given in evaluation order (first wins) into tuples and flows.
///
/// Protections get tuples of their own, after the rules' (the highest indices), which the data
/// path visits only for a packet some live rule or partition matched: a protection that
/// matches it then wins, wherever it stands in `rules` (the controller puts them first; here
/// they are taken first, in their order), and counts the packet.
///
/// Rules with the same match (same mask and masked key) form a chain in evaluation order, at
/// most `MAX_CHAIN` long: the data path walks it past expired rules, so the first live one wins.
/// A chain of protections is one long: they never expire.
pub fn compile(rules: &[Input<'_>]) -> Result<Compiled, CompileError> {
    // (protection?, mask) -> (best prio, masked key -> chain, whether it is closed)
    type Chains = BTreeMap<KeyOrd, (Vec<FlowRef>, bool)>;
    let mut shapes: HashMap<(bool, FlowKey), (u32, Chains)> = HashMap::new();
    let mut config_flags = 0;
    // cgroup slots, in evaluation order, for every entry that names one (also those that
    // match nothing now, whose values still carry a slot).
    let mut cgroups: Vec<CgroupSlot> = Vec::new();
    for r in rules.iter().filter(|r| r.spec.kind != Kind::Protect) {
        let Some(cg) = &r.spec.cgroup else { continue };
        config_flags |= CFG_CGROUP;
        if r.spec.dir.includes(true) {
            config_flags |= CFG_CGROUP_INGRESS;
        }
        if !cgroups.iter().any(|s| s.id == cg.id && s.level == cg.level) {
            cgroups.push(CgroupSlot {
                id: cg.id,
                level: cg.level,
                _pad: 0,
            });
        }
    }
    if cgroups.len() > MAX_CGROUPS as usize {
        return Err(CompileError::TooManyCgroups(cgroups.len()));
    }
    let protections = rules.iter().filter(|r| r.spec.kind == Kind::Protect);
    let others = rules.iter().filter(|r| r.spec.kind != Kind::Protect);
    for (prio, input) in protections.chain(others).enumerate() {
        let prio = prio as u32;
        if input.spec.iface.is_some() && input.ifindex.is_none() {
            continue; // its interface is gone: the rule cannot match anything
        }
        let shaping = input.spec.kind == Kind::Rule && input.spec.act.needs_fq();
        let rejecting = input.spec.kind != Kind::Protect && input.spec.act.reject.is_some();
        let act = &input.spec.act;
        if ((input.spec.kind == Kind::Rule && (act.duplicate.0 > 0.0 || shaping || act.corrupts()))
            || rejecting)
            && input.spec.dir.includes(true)
        {
            config_flags |= CFG_INGRESS_TC;
        }
        let protect = input.spec.kind == Kind::Protect;
        for (mask, key) in expand(input.spec, input.ifindex) {
            let entry = shapes
                .entry((protect, mask))
                .or_insert((prio, BTreeMap::new()));
            entry.0 = entry.0.min(prio);
            let (chain, closed) = entry.1.entry(KeyOrd(key)).or_default();
            if *closed || chain.last().is_some_and(|r| r.slot == input.slot) {
                continue;
            }
            if chain.len() >= MAX_CHAIN as usize {
                let name_of = |slot: u32| {
                    rules
                        .iter()
                        .find(|r| r.slot == slot)
                        .map_or_else(|| format!("slot {slot}"), |r| r.spec.name.clone())
                };
                return Err(CompileError::ChainTooLong {
                    kind: if input.spec.kind == Kind::Partition {
                        "partition"
                    } else {
                        "rule"
                    },
                    name: input.spec.name.clone(),
                    earlier: chain.iter().map(|r| name_of(r.slot)).collect(),
                });
            }
            chain.push(FlowRef {
                slot: input.slot,
                prio,
                more: 0,
            });
            *closed = protect;
        }
    }
    if shapes.len() > MAX_TUPLES as usize {
        return Err(CompileError::TooManyTuples(shapes.len()));
    }
    let mut shapes: Vec<_> = shapes.into_iter().collect();
    shapes.sort_by_key(|((protect, mask), (best, _))| (*protect, *best, KeyOrd(*mask)));
    let mut out = Compiled {
        config_flags,
        cgroups,
        ..Default::default()
    };
    for (i, ((protect, mask), (best, flows))) in shapes.into_iter().enumerate() {
        let (filter_mask, filter) = filter(&mask, flows.keys().map(|k| &k.0));
        prefilter_add(
            &mut out.prefilter,
            i,
            protect,
            &mask,
            flows.keys().map(|k| &k.0),
        );
        // One flow of one rule: the filter is its whole match (see `Tuple::one_flow`).
        let (one_flow, flow) = match flows.values().next() {
            Some((chain, _)) if flows.len() == 1 && chain.len() == 1 => (1, chain[0]),
            _ => (0, FlowRef::default()),
        };
        out.tuples.push(Tuple {
            mask,
            filter_mask,
            filter,
            best_prio: best,
            protect: u32::from(protect),
            one_flow,
            flow,
        });
        for (KeyOrd(mut k), (chain, _)) in flows {
            k.tuple = i as u8;
            for (rank, r) in chain.iter().enumerate() {
                k.rank = rank as u8;
                let more = u32::from(rank + 1 < chain.len());
                out.flows.push((k, FlowRef { more, ..*r }));
            }
        }
    }
    let cap = (netfault_common::MAX_FLOWS / netfault_common::GENERATIONS) as usize;
    if out.flows.len() > cap {
        return Err(CompileError::TooManyFlows(out.flows.len(), cap));
    }
    Ok(out)
}

/// Adds tuple `i` (with `mask`, holding the masked `keys`) to the prefilter: for each table,
/// the values some key accepts there. Each table is a projection of the tuple's flows, so the
/// AND of a packet's tables holds every tuple it matches a flow of.
fn prefilter_add<'a>(
    pf: &mut Prefilter,
    i: usize,
    protect: bool,
    mask: &FlowKey,
    keys: impl Iterator<Item = &'a FlowKey>,
) {
    let bit: TupleSet = 1 << i;
    if protect {
        pf.protects |= bit;
    } else {
        pf.rules |= bit;
    }
    if mask.flags & KEY_PORTS != 0 {
        pf.ports |= bit;
    }
    let m = mask.bytes();
    // Distinct values per table: (family, dir, proto); and per byte offset.
    let mut meta = std::collections::BTreeSet::new();
    let mut seen = vec![[false; 256]; 48];
    let mut fams = [false; 2];
    for k in keys {
        meta.insert((k.family, k.dir, k.proto));
        for (off, &b) in k.bytes().iter().enumerate() {
            seen[off][usize::from(b)] = true;
        }
        for (f, fam) in [FAMILY_V4, FAMILY_V6].into_iter().enumerate() {
            fams[f] |= fam & mask.family == k.family;
        }
    }
    for (family, dir, proto) in meta {
        for fam in [FAMILY_V4, FAMILY_V6] {
            for d in [DIR_INGRESS, DIR_EGRESS] {
                if fam & mask.family != family || d & mask.dir != dir {
                    continue;
                }
                for p in 0..=255u8 {
                    if p & mask.proto == proto {
                        pf.meta[pf_meta_index(fam, d, p)] |= bit;
                    }
                }
            }
        }
    }
    // The values `v` a table at byte `off` accepts: those some key's byte equals under the mask.
    let accepts = |off: usize, v: u8| seen[off][usize::from(v & m[off])];
    for j in 0..PF_ADDR_TABLES {
        for (f, pos) in [PF_ADDR_V4[j], PF_ADDR_V6[j]].into_iter().enumerate() {
            if !fams[f] {
                continue;
            }
            for v in 0..=255u8 {
                if accepts(pos, v) {
                    pf.addr[j][(f << 8) | usize::from(v)] |= bit;
                }
            }
        }
    }
    for v in 0..=255u8 {
        if accepts(KEY_OFF_IFINDEX, v) {
            pf.iface[usize::from(v)] |= bit;
        }
        for (j, &off) in KEY_OFF_PORTS.iter().enumerate() {
            if accepts(off, v) {
                pf.port[j][usize::from(v)] |= bit;
            }
        }
    }
}

/// The bits of `mask` on which all `keys` agree, and their value.
fn filter<'a>(mask: &FlowKey, keys: impl Iterator<Item = &'a FlowKey>) -> (FlowKey, FlowKey) {
    let mut all = [u32::MAX; 12];
    let mut any = [0u32; 12];
    for k in keys {
        for (i, w) in k.words().iter().enumerate() {
            all[i] &= w;
            any[i] |= w;
        }
    }
    let m = mask.words();
    let fm: [u32; 12] = std::array::from_fn(|i| m[i] & !(all[i] ^ any[i]));
    let fv: [u32; 12] = std::array::from_fn(|i| all[i] & fm[i]);
    (FlowKey::from_words(fm), FlowKey::from_words(fv))
}

/// Total order on keys, for deterministic output.
#[derive(PartialEq, Eq)]
struct KeyOrd(FlowKey);
impl KeyOrd {
    fn tuple(&self) -> ([u32; 4], [u32; 4], u32, u16, u16, u8, u8, u8, u8) {
        let k = &self.0;
        (
            k.src, k.dst, k.ifindex, k.sport, k.dport, k.proto, k.family, k.dir, k.flags,
        )
    }
}
impl PartialOrd for KeyOrd {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for KeyOrd {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.tuple().cmp(&o.tuple())
    }
}

fn nets_meet(a: &[IpNet], b: &[IpNet]) -> bool {
    a.is_empty()
        || b.is_empty()
        || a.iter().any(|x| {
            b.iter()
                .any(|y| x.contains(&y.network()) || y.contains(&x.network()))
        })
}

/// Could some packet match both `a` and `b`? Used to warn when a rule covers a protected flow.
pub fn overlaps(a: &RuleSpec, b: &RuleSpec) -> bool {
    let dirs = a.dir == Direction::Both || b.dir == Direction::Both || a.dir == b.dir;
    let protos = a.proto == Proto::Any || b.proto == Proto::Any || a.proto == b.proto;
    let ports = |x: PortRange, y: PortRange| x.lo <= y.hi && y.lo <= x.hi;
    let pairs = |r: &RuleSpec| {
        let mut v = vec![(r.src.clone(), r.dst.clone())];
        if r.kind == Kind::Partition && !r.oneway {
            v.push((r.dst.clone(), r.src.clone()));
        }
        v
    };
    dirs && protos
        && ports(a.sport, b.sport)
        && ports(a.dport, b.dport)
        && pairs(a).iter().any(|(s1, d1)| {
            pairs(b)
                .iter()
                .any(|(s2, d2)| nets_meet(s1, s2) && nets_meet(d1, d2))
        })
}

/// Classifies a packet key against compiled output exactly as the data path does, every rule
/// live. Used by tests to compare the kernel's verdicts with the model's.
pub fn classify(c: &Compiled, key: &FlowKey) -> Option<FlowRef> {
    classify_live(c, key, |_| true)
}

/// As `classify`, with `live` saying which slots have not expired.
pub fn classify_live(c: &Compiled, key: &FlowKey, live: impl Fn(u32) -> bool) -> Option<FlowRef> {
    let flows = FlowMaps::of(c);
    let get = |m: &FlowKey| flows.get(key, m);
    let cand = c.prefilter.candidates(key);
    let rule = scan(c, &get, key, cand & c.prefilter.rules, &live, true)?;
    scan(c, &get, key, cand & c.prefilter.protects, &live, true).or(Some(rule))
}

/// The two flow maps as the data path holds them (`Compiled::flows_v6`, `flows_v4`).
struct FlowMaps {
    v6: HashMap<FlowKey, FlowRef>,
    v4: HashMap<FlowKey4, FlowRef>,
}

impl FlowMaps {
    fn of(c: &Compiled) -> FlowMaps {
        FlowMaps {
            v6: c.flows_v6().collect(),
            v4: c.flows_v4().collect(),
        }
    }

    /// The data path's lookup of a masked, tagged key: IPv4 packets in the short-key map.
    fn get(&self, packet: &FlowKey, m: &FlowKey) -> Option<FlowRef> {
        if packet.family == FAMILY_V4 {
            self.v4.get(&m.short()).copied()
        } else {
            self.v6.get(m).copied()
        }
    }
}

/// The first live flow, by priority, among the tuples in `set` (in index order, as the data
/// path visits them). `one_flow`: take a tuple's only flow from the tuple, as the data path
/// does, rather than from the maps.
fn scan(
    c: &Compiled,
    get: &impl Fn(&FlowKey) -> Option<FlowRef>,
    key: &FlowKey,
    mut set: TupleSet,
    live: &impl Fn(u32) -> bool,
    one_flow: bool,
) -> Option<FlowRef> {
    let mut best: Option<FlowRef> = None;
    while set != 0 {
        let i = set.trailing_zeros() as usize;
        set &= set - 1;
        let t = &c.tuples[i];
        if best.is_some_and(|b| t.best_prio >= b.prio) {
            break;
        }
        if !key.agrees(&t.filter_mask, &t.filter) {
            continue;
        }
        if t.one_flow != 0 && one_flow {
            // The filter was the flow's whole match.
            if live(t.flow.slot) {
                best = Some(t.flow);
            }
            continue;
        }
        let mut m = key.masked(&t.mask);
        m.tuple = i as u8;
        for rank in 0..MAX_CHAIN {
            m.rank = rank;
            let Some(r) = get(&m) else { break };
            if best.is_some_and(|b| r.prio >= b.prio) {
                break;
            }
            if live(r.slot) {
                best = Some(r);
                break;
            }
            if r.more == 0 {
                break;
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use netfault_common::PROTO_UNKNOWN;
    use proptest::prelude::*;

    use super::*;
    use crate::spec::{Actions, Prob, parse_net};

    fn rule(name: &str) -> RuleSpec {
        RuleSpec {
            act: Actions::drops(Prob(1.0)),
            ..RuleSpec::new(name, Kind::Rule)
        }
    }

    fn pkt(src: &str, dst: &str, proto: u8, sport: u16, dport: u16, dir: u8) -> FlowKey {
        let s: IpNet = parse_net(src).unwrap();
        let d: IpNet = parse_net(dst).unwrap();
        FlowKey {
            src: addr_words(&s).0,
            dst: addr_words(&d).0,
            family: family(&s),
            proto,
            sport,
            dport,
            dir,
            ifindex: 7,
            flags: if matches!(proto, 6 | 17) {
                KEY_PORTS
            } else {
                0
            },
            ..Default::default()
        }
    }

    /// Inputs in slots 0.., a named interface at index 7.
    fn inputs(specs: &[RuleSpec]) -> Vec<Input<'_>> {
        specs
            .iter()
            .enumerate()
            .map(|(i, s)| Input {
                slot: i as u32,
                spec: s,
                ifindex: s.iface.as_ref().map(|_| 7),
            })
            .collect()
    }

    fn compile_specs(specs: &[RuleSpec]) -> Compiled {
        compile(&inputs(specs)).unwrap()
    }

    #[test]
    fn prefixes_of_known_ranges() {
        assert_eq!(port_prefixes(PortRange::ALL), vec![(0, 0)]);
        assert_eq!(port_prefixes(PortRange { lo: 80, hi: 80 }), vec![(80, 16)]);
        assert_eq!(
            port_prefixes(PortRange { lo: 1024, hi: 2047 }),
            vec![(1024, 6)]
        );
        assert_eq!(
            port_prefixes(PortRange {
                lo: 65535,
                hi: 65535
            }),
            vec![(65535, 16)]
        );
        assert_eq!(port_prefixes(PortRange { lo: 0, hi: 1 }), vec![(0, 15)]);
    }

    proptest! {
        /// The prefixes cover exactly [lo, hi], without overlap.
        #[test]
        fn prefixes_cover_the_range_exactly(lo in any::<u16>(), len in any::<u16>(), probe in any::<u16>()) {
            let hi = lo.saturating_add(len);
            let ps = port_prefixes(PortRange { lo, hi });
            let hits = ps.iter().filter(|(v, l)| probe & port_mask(*l) == *v).count();
            prop_assert_eq!(hits, usize::from(probe >= lo && probe <= hi));
            prop_assert!(ps.len() <= 30);
        }

        /// A v4 CIDR rule matches exactly the addresses inside it.
        #[test]
        fn cidr_edges_v4(base in any::<u32>(), plen in 0u8..=32, probe in any::<u32>()) {
            let net = ipnet::Ipv4Net::new(base.into(), plen).unwrap().trunc();
            let mut r = rule("r");
            r.src = vec![IpNet::V4(net)];
            let c = compile_specs(&[r]);
            let p = pkt(&std::net::Ipv4Addr::from(probe).to_string(), "192.0.2.1", 17, 1, 2, DIR_INGRESS);
            prop_assert_eq!(classify(&c, &p).is_some(), net.contains(&std::net::Ipv4Addr::from(probe)));
        }

        /// Same for v6, and a v6 rule never matches v4 traffic.
        #[test]
        fn cidr_edges_v6(base in any::<u128>(), plen in 0u8..=128, probe in any::<u128>(), v4 in any::<u32>()) {
            let net = ipnet::Ipv6Net::new(base.into(), plen).unwrap().trunc();
            let mut r = rule("r");
            r.dst = vec![IpNet::V6(net)];
            let c = compile_specs(&[r]);
            let a = std::net::Ipv6Addr::from(probe);
            let p = pkt("2001:db8::1", &a.to_string(), 6, 1, 2, DIR_EGRESS);
            prop_assert_eq!(classify(&c, &p).is_some(), net.contains(&a));
            let p4 = pkt("192.0.2.1", &std::net::Ipv4Addr::from(v4).to_string(), 6, 1, 2, DIR_EGRESS);
            prop_assert!(classify(&c, &p4).is_none());
        }

        /// Port ranges match exactly their members.
        #[test]
        fn port_range_edges(lo in any::<u16>(), len in 0u16..5000, probe in any::<u16>()) {
            let hi = lo.saturating_add(len);
            let mut r = rule("r");
            r.proto = Proto::Udp;
            r.dport = PortRange { lo, hi };
            let c = compile_specs(&[r]);
            let p = pkt("192.0.2.1", "192.0.2.2", 17, 9, probe, DIR_INGRESS);
            prop_assert_eq!(classify(&c, &p).is_some(), probe >= lo && probe <= hi);
            let tcp = pkt("192.0.2.1", "192.0.2.2", 6, 9, probe, DIR_INGRESS);
            prop_assert!(classify(&c, &tcp).is_none());
        }
    }

    /// The same as `classify_live`, but visiting every tuple: what the prefilter must not change.
    /// Every tuple visited, each flow looked up in one map of full keys: what neither the
    /// prefilter, the maps' split by family nor one-flow tuples may change.
    fn classify_unfiltered(c: &Compiled, key: &FlowKey) -> Option<FlowRef> {
        let flows: HashMap<FlowKey, FlowRef> = c.flows.iter().copied().collect();
        let get = |m: &FlowKey| flows.get(m).copied();
        let rule = scan(c, &get, key, c.prefilter.rules, &|_| true, false)?;
        scan(c, &get, key, c.prefilter.protects, &|_| true, false).or(Some(rule))
    }

    /// A tuple of one flow of one rule carries it (the data path then needs no lookup); one of
    /// two flows, or of a chain of two rules with one match, does not.
    #[test]
    fn a_tuple_of_one_flow_carries_it() {
        let host = |name: &str, a: &str| {
            let mut r = rule(name);
            r.src = vec![parse_net(a).unwrap()];
            r
        };
        let c = compile_specs(&[host("a", "192.0.2.1")]);
        assert_eq!(c.tuples.len(), 1);
        assert_eq!((c.tuples[0].one_flow, c.tuples[0].flow), (1, c.flows[0].1));
        assert_eq!(c.tuples[0].filter_mask, c.tuples[0].mask);
        let c = compile_specs(&[host("a", "192.0.2.1"), host("b", "192.0.2.2")]);
        assert_eq!((c.tuples.len(), c.tuples[0].one_flow), (1, 0));
        let c = compile_specs(&[host("a", "192.0.2.1"), host("b", "192.0.2.1")]);
        assert_eq!(
            (c.tuples.len(), c.flows.len(), c.tuples[0].one_flow),
            (1, 2, 0)
        );
        // With the first rule expired, the second matches: the chain is looked up.
        let p = pkt("192.0.2.1", "198.51.100.1", 6, 1, 2, DIR_INGRESS);
        assert_eq!(classify_live(&c, &p, |slot| slot != 0).unwrap().slot, 1);
    }

    /// Each flow is in the map of every family whose packets can match it, and only there.
    #[test]
    fn flows_are_split_by_the_family_that_can_match_them() {
        let mut v4 = rule("v4");
        v4.src = vec![parse_net("192.0.2.0/24").unwrap()];
        let mut v6 = rule("v6");
        v6.dst = vec![parse_net("2001:db8::/32").unwrap()];
        let mut any = rule("any");
        any.proto = Proto::Tcp;
        any.dport = PortRange { lo: 80, hi: 80 };
        let mut icmp = rule("icmp");
        icmp.proto = Proto::Icmp;
        let c = compile_specs(&[v4, v6, any, icmp]);
        let slots = |it: &mut dyn Iterator<Item = FlowRef>| {
            let mut s: Vec<u32> = it.map(|r| r.slot).collect();
            s.sort();
            s.dedup();
            s
        };
        // icmp is two flows: ICMP (v4) and ICMPv6 (v6), one per map.
        assert_eq!(slots(&mut c.flows_v4().map(|(_, r)| r)), [0, 2, 3]);
        assert_eq!(slots(&mut c.flows_v6().map(|(_, r)| r)), [1, 2, 3]);
        assert_eq!(
            c.flows_v4().count() + c.flows_v6().count(),
            c.flows.len() + 1,
            "only the flow of no family is in both"
        );
        // The short key is the full key's words 0, 4, 8..12; v4 flows leave the rest zero.
        for (k, _) in c.flows.iter().filter(|(k, _)| k.fits_v4()) {
            let w = k.words();
            let s = k.short();
            assert_eq!(s.words(), &[w[0], w[4], w[8], w[9], w[10], w[11]]);
            assert_eq!((s.src, s.dst, s.ifindex), (k.src[0], k.dst[0], k.ifindex));
            assert_eq!((s.sport, s.dport, s.proto), (k.sport, k.dport, k.proto));
            assert_eq!((s.family, s.dir, s.flags), (k.family, k.dir, k.flags));
            assert_eq!((s.tuple, s.rank), (k.tuple, k.rank));
        }
    }

    fn arb_rule() -> impl Strategy<Value = RuleSpec> {
        let net = (any::<bool>(), 0u8..4, 0u8..4, 0u8..=128).prop_map(|(v6, sub, host, plen)| {
            if v6 {
                let a = std::net::Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0,
                    u16::from(sub),
                    0,
                    0,
                    0,
                    u16::from(host),
                );
                IpNet::V6(ipnet::Ipv6Net::new(a, plen).unwrap().trunc())
            } else {
                let a = std::net::Ipv4Addr::new(192, 0, 2 + sub % 2, host);
                IpNet::V4(ipnet::Ipv4Net::new(a, plen % 33).unwrap().trunc())
            }
        });
        (
            prop::option::of(net.clone()),
            prop::option::of(net),
            prop::sample::select(vec![Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp]),
            prop::option::of((0u16..6, 0u16..300)),
            prop::sample::select(vec![Direction::Both, Direction::Ingress, Direction::Egress]),
            prop::sample::select(vec![Kind::Rule, Kind::Rule, Kind::Partition, Kind::Protect]),
            prop::sample::select(vec![Conn::Any, Conn::Any, Conn::New, Conn::Established]),
        )
            .prop_map(|(src, dst, proto, dport, dir, kind, conn)| {
                let mut r = rule("r");
                r.kind = kind;
                r.src = src.into_iter().collect();
                // One family per rule.
                r.dst = dst
                    .into_iter()
                    .filter(|d| {
                        r.src
                            .iter()
                            .all(|s| s.addr().is_ipv6() == d.addr().is_ipv6())
                    })
                    .collect();
                r.proto = proto;
                if let (Some((lo, n)), Proto::Tcp | Proto::Udp) = (dport, proto) {
                    r.dport = PortRange { lo, hi: lo + n };
                }
                r.dir = dir;
                if kind == Kind::Partition || (kind == Kind::Rule && proto == Proto::Tcp) {
                    r.conn = conn;
                }
                r
            })
    }

    fn arb_key() -> impl Strategy<Value = FlowKey> {
        (
            any::<bool>(),
            (0u8..4, 0u8..4),
            (0u8..4, 0u8..4),
            prop::sample::select(vec![1u8, 6, 17, 58]),
            (0u16..400, any::<bool>()),
            prop::sample::select(vec![DIR_INGRESS, DIR_EGRESS]),
            any::<bool>(),
        )
            .prop_map(|(v6, (s1, s2), (d1, d2), proto, (port, ports), dir, syn)| {
                let a = |sub: u8, host: u8| {
                    if v6 {
                        format!("2001:db8:0:{sub}::{host}")
                    } else {
                        format!("192.0.{}.{host}", 2 + sub % 2)
                    }
                };
                let mut k = pkt(&a(s1, s2), &a(d1, d2), proto, 1, port, dir);
                if !ports {
                    (k.sport, k.dport, k.flags) = (0, 0, 0);
                } else if syn && proto == 6 {
                    k.flags |= KEY_TCP_SYN;
                }
                k
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        /// The prefilter only skips tuples that cannot match: with it, every packet gets the
        /// verdict a visit of every tuple gives, with up to 64 tuples (every bit of the set).
        #[test]
        fn the_prefilter_never_hides_a_match(
            rules in prop::collection::vec(arb_rule(), 1..80),
            keys in prop::collection::vec(arb_key(), 32),
        ) {
            let inputs: Vec<_> = rules
                .iter()
                .enumerate()
                .map(|(i, s)| Input { slot: i as u32, spec: s, ifindex: None })
                .collect();
            let Ok(c) = compile(&inputs) else { return Ok(()) };
            for k in &keys {
                prop_assert_eq!(classify(&c, k), classify_unfiltered(&c, k), "{:?}", k);
            }
        }
    }

    #[test]
    fn conn_matches_the_syn_bit_of_tcp_only() {
        let mut new = RuleSpec::new("new", Kind::Partition);
        new.src = vec![parse_net("192.0.2.1").unwrap()];
        new.dst = vec![parse_net("192.0.2.2").unwrap()];
        new.conn = Conn::New;
        let mut est = new.clone();
        est.name = "est".into();
        est.conn = Conn::Established;
        let syn = |p: u8, syn: bool| {
            let mut k = pkt("192.0.2.1", "192.0.2.2", p, 1, 80, DIR_EGRESS);
            if syn {
                k.flags |= KEY_TCP_SYN;
            }
            k
        };
        let c = compile_specs(&[new]);
        assert!(classify(&c, &syn(6, true)).is_some());
        assert!(classify(&c, &syn(6, false)).is_none());
        assert!(
            classify(&c, &syn(17, false)).is_none(),
            "a --conn partition is TCP's"
        );
        // Both ways, as any partition.
        let mut back = pkt("192.0.2.2", "192.0.2.1", 6, 80, 1, DIR_EGRESS);
        back.flags |= KEY_TCP_SYN;
        assert!(classify(&c, &back).is_some());
        let c = compile_specs(&[est]);
        assert!(classify(&c, &syn(6, true)).is_none());
        assert!(classify(&c, &syn(6, false)).is_some());
        let mut frag = syn(6, false);
        (frag.sport, frag.dport, frag.flags) = (0, 0, 0);
        assert!(
            classify(&c, &frag).is_some(),
            "a later fragment is established"
        );
        // Without --conn the bit is ignored.
        let mut any = RuleSpec::new("any", Kind::Partition);
        any.src = vec![parse_net("192.0.2.1").unwrap()];
        let c = compile_specs(&[any]);
        assert!(classify(&c, &syn(6, true)).is_some());
        assert!(classify(&c, &syn(6, false)).is_some());
        assert_eq!(c.tuples[0].mask.flags & KEY_TCP_SYN, 0);
    }

    fn cg(id: u64, level: u32) -> crate::spec::CgroupMatch {
        crate::spec::CgroupMatch {
            path: format!("/sys/fs/cgroup/t{id}").into(),
            id,
            level,
        }
    }

    #[test]
    fn cgroup_rules_get_slots_flags_and_never_hide_a_rule_behind_them() {
        // r0 (cgroup 7) and r1 (cgroup 9) share one match with r2 (no cgroup), which comes
        // last; r3 (cgroup 7 again, egress only) shares its slot.
        let mut specs: Vec<RuleSpec> = (0..4).map(|i| rule(&format!("r{i}"))).collect();
        for s in &mut specs {
            s.dst = vec![parse_net("192.0.2.1").unwrap()];
        }
        specs[0].cgroup = Some(cg(7, 1));
        specs[1].cgroup = Some(cg(9, 2));
        specs[3].cgroup = Some(cg(7, 1));
        specs[3].dir = Direction::Egress;
        specs[3].dst = vec![parse_net("192.0.2.2").unwrap()];
        let c = compile_specs(&specs);
        assert_eq!(
            c.cgroups,
            vec![
                CgroupSlot {
                    id: 7,
                    level: 1,
                    _pad: 0
                },
                CgroupSlot {
                    id: 9,
                    level: 2,
                    _pad: 0
                }
            ]
        );
        assert_eq!(
            c.config_flags & (CFG_CGROUP | CFG_CGROUP_INGRESS),
            CFG_CGROUP | CFG_CGROUP_INGRESS
        );
        let v = |i: usize| c.with_cgroup(&specs[i], rule_value(&specs[i], 0, 0));
        assert_eq!(
            (v(0).flags & RULE_CGROUP, v(0).cgroup_slot),
            (RULE_CGROUP, 0)
        );
        assert_eq!(
            (v(1).flags & RULE_CGROUP, v(1).cgroup_slot),
            (RULE_CGROUP, 1)
        );
        assert_eq!(
            (v(3).flags & RULE_CGROUP, v(3).cgroup_slot),
            (RULE_CGROUP, 0)
        );
        assert_eq!(v(2).flags & RULE_CGROUP, 0);
        // XDP passes cgroup rules on to tc.
        assert_ne!(v(0).flags & RULE_NEEDS_SKB, 0);
        // The data path passes over a rule whose cgroup the packet's socket is not in, as
        // over an expired one: the model with `live` saying which cgroups matched.
        let p = pkt("198.51.100.1", "192.0.2.1", 17, 1, 2, DIR_EGRESS);
        let in_cg = |mask: u32| {
            let vals: Vec<RuleValue> = (0..4).map(v).collect();
            move |slot: u32| {
                let r = &vals[slot as usize];
                r.flags & RULE_CGROUP == 0 || (mask >> r.cgroup_slot) & 1 != 0
            }
        };
        let slot = |mask: u32| classify_live(&c, &p, in_cg(mask)).map(|f| f.slot);
        assert_eq!(slot(0b01), Some(0));
        assert_eq!(slot(0b10), Some(1));
        assert_eq!(slot(0b11), Some(0));
        assert_eq!(slot(0), Some(2), "no cgroup: the rule without one");
        // Only egress cgroup rules: XDP keeps its work.
        let c = compile_specs(&specs[3..]);
        assert_eq!(
            c.config_flags & (CFG_CGROUP | CFG_CGROUP_INGRESS),
            CFG_CGROUP
        );
        // Nine distinct cgroups do not fit. (Each its own address: the cgroup is not part of
        // the match key, so entries that differ only by cgroup share one chain of 4.)
        let many: Vec<RuleSpec> = (0..9)
            .map(|i| {
                let mut r = rule(&format!("m{i}"));
                r.dst = vec![parse_net(&format!("192.0.2.{}", 10 + i)).unwrap()];
                r.cgroup = Some(cg(100 + i, 1));
                r
            })
            .collect();
        assert_eq!(
            compile(&inputs(&many)).unwrap_err(),
            CompileError::TooManyCgroups(9)
        );
        assert!(compile(&inputs(&many[..8])).is_ok());
    }

    #[test]
    fn a_burst_rule_carries_its_chain_and_no_plain_drop() {
        let mut r = rule("b");
        r.act.drop = crate::spec::Prob(0.05);
        r.act.burst = Some(4.0);
        let v = rule_value(&r, 0, 0);
        assert_eq!(v.flags & (RULE_BURST | RULE_BURST_PER_RULE), RULE_BURST);
        // A chain draws per packet: at egress it must meet wire packets, as a plain 5 % does.
        assert_ne!(
            v.flags & RULE_SEGMENT,
            0,
            "a burst rule is not segmented at egress"
        );
        assert_eq!(
            (v.drop_thresh, v.ge_r, v.ge_loss_bad, v.ge_loss_good),
            (0, 1 << 30, u32::MAX, 0)
        );
        r.act.burst_scope = BurstScope::Rule;
        assert_ne!(rule_value(&r, 0, 0).flags & RULE_BURST_PER_RULE, 0);
        r.act.burst = Some(1.0);
        r.act.burst_scope = BurstScope::Flow;
        let v = rule_value(&r, 0, 0);
        assert_eq!(v.flags & RULE_BURST, 0, "--burst 1 is independent loss");
        assert_eq!(v.drop_thresh, crate::spec::Prob(0.05).threshold());
        assert_ne!(v.flags & RULE_SEGMENT, 0);
        r.act.drop = crate::spec::Prob(1.0);
        assert_eq!(
            rule_value(&r, 0, 0).flags & RULE_SEGMENT,
            0,
            "p=1 is exact on aggregates"
        );
    }

    #[test]
    fn first_match_wins() {
        let mut a = rule("a");
        a.src = vec![parse_net("192.0.2.0/24").unwrap()];
        let mut b = rule("b");
        b.src = vec![parse_net("192.0.2.7").unwrap()];
        let c = compile_specs(&[a.clone(), b.clone()]);
        let p = pkt("192.0.2.7", "198.51.100.1", 6, 1, 2, DIR_INGRESS);
        assert_eq!(classify(&c, &p).unwrap().slot, 0);
        let c = compile_specs(&[b, a]);
        assert_eq!(classify(&c, &p).unwrap().slot, 0);
        let p = pkt("192.0.2.8", "198.51.100.1", 6, 1, 2, DIR_INGRESS);
        assert_eq!(classify(&c, &p).unwrap().slot, 1);
    }

    #[test]
    fn an_expired_rule_never_hides_a_live_one_with_the_same_match() {
        let mut a = rule("a");
        a.src = vec![parse_net("192.0.2.7").unwrap()];
        let b = RuleSpec {
            name: "b".into(),
            ..a.clone()
        };
        let c2 = RuleSpec {
            name: "c".into(),
            ..a.clone()
        };
        let c = compile_specs(&[a, b, c2]);
        assert_eq!(c.tuples.len(), 1);
        assert_eq!(c.flows.len(), 3, "one chain of three");
        let p = pkt("192.0.2.7", "198.51.100.1", 6, 1, 2, DIR_INGRESS);
        assert_eq!(classify_live(&c, &p, |_| true).unwrap().slot, 0);
        assert_eq!(classify_live(&c, &p, |s| s != 0).unwrap().slot, 1);
        assert_eq!(classify_live(&c, &p, |s| s == 2).unwrap().slot, 2);
        assert!(classify_live(&c, &p, |_| false).is_none());
        // Protections have tuples of their own; one closes its chain (it never expires).
        let mut guard = rule("g");
        guard.kind = Kind::Protect;
        guard.src = vec![parse_net("192.0.2.7").unwrap()];
        let mut r = rule("r");
        r.src = guard.src.clone();
        let c = compile_specs(&[guard.clone(), guard.clone(), r]);
        assert_eq!((c.tuples.len(), c.flows.len()), (2, 2));
        assert_eq!(classify(&c, &p).unwrap().slot, 0, "the protection wins");
    }

    #[test]
    fn a_packet_without_ports_never_matches_a_port_rule() {
        let mut low = rule("low");
        low.proto = Proto::Udp;
        low.dport = PortRange { lo: 0, hi: 100 };
        let mut any = rule("any-udp");
        any.proto = Proto::Udp;
        let c = compile_specs(&[low, any]);
        let mut frag = pkt("192.0.2.1", "192.0.2.2", 17, 0, 0, DIR_INGRESS);
        frag.flags = 0; // a later fragment: no ports
        assert_eq!(classify(&c, &frag).unwrap().slot, 1);
        frag.flags = KEY_PORTS;
        assert_eq!(classify(&c, &frag).unwrap().slot, 0);
        // The port tuple is the data path's reason to parse the ports.
        assert_ne!(c.prefilter.ports, 0);
        assert_eq!(compile_specs(&[rule("r")]).prefilter.ports, 0);
    }

    #[test]
    fn a_packet_of_unknown_protocol_matches_rules_on_its_addresses_only() {
        for p in [Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp] {
            assert!(
                proto_alts(p).iter().all(|&(_, n)| n != PROTO_UNKNOWN),
                "{p:?}"
            );
        }
        let a = "2001:db8::1";
        let b = "2001:db8::2";
        let mut udp = rule("udp");
        udp.proto = Proto::Udp;
        udp.src = vec![parse_net(a).unwrap()];
        let mut port = udp.clone();
        port.name = "port".into();
        port.dport = PortRange { lo: 0, hi: 100 };
        let mut cut = rule("cut");
        cut.kind = Kind::Partition;
        cut.src = vec![parse_net(a).unwrap()];
        cut.dst = vec![parse_net(b).unwrap()];
        let mut addr = rule("addresses");
        addr.src = vec![parse_net(a).unwrap()];
        // What the data path makes of a packet whose extension headers it cannot follow.
        let unknown = pkt(a, b, PROTO_UNKNOWN, 0, 0, DIR_INGRESS);
        assert_eq!(unknown.flags, 0);
        let c = compile_specs(&[port.clone(), udp.clone()]);
        assert!(classify(&c, &unknown).is_none());
        assert_eq!(
            classify(&c, &pkt(a, b, 17, 1, 53, DIR_INGRESS))
                .unwrap()
                .slot,
            0
        );
        let c = compile_specs(&[port, udp, addr]);
        assert_eq!(classify(&c, &unknown).unwrap().slot, 2);
        let c = compile_specs(&[cut]);
        assert_eq!(classify(&c, &unknown).unwrap().slot, 0);
        let back = pkt(b, a, PROTO_UNKNOWN, 0, 0, DIR_EGRESS);
        assert_eq!(classify(&c, &back).unwrap().slot, 0);
    }

    #[test]
    fn filters_reject_what_no_flow_of_a_tuple_matches() {
        let mut r = rule("r");
        r.proto = Proto::Tcp;
        r.src = vec![parse_net("192.0.2.0/24").unwrap()];
        let mut s = rule("s");
        s.proto = Proto::Tcp;
        s.src = vec![parse_net("192.0.3.0/24").unwrap()];
        let c = compile_specs(&[r, s]);
        assert_eq!(c.tuples.len(), 1);
        let t = &c.tuples[0];
        let yes = pkt("192.0.3.9", "198.51.100.1", 6, 1, 2, DIR_INGRESS);
        assert!(yes.agrees(&t.filter_mask, &t.filter));
        // 192.0.2/24 and 192.0.3/24 share 192.0.2/23; UDP and v6 differ in shared fields.
        for no in [
            pkt("192.0.4.9", "198.51.100.1", 6, 1, 2, DIR_INGRESS),
            pkt("192.0.3.9", "198.51.100.1", 17, 1, 2, DIR_INGRESS),
            pkt("2001:db8::1", "2001:db8::2", 6, 1, 2, DIR_INGRESS),
        ] {
            assert!(!no.agrees(&t.filter_mask, &t.filter), "{no:?}");
        }
    }

    #[test]
    fn direction_iface_and_icmp() {
        let mut r = rule("r");
        r.dir = Direction::Egress;
        r.proto = Proto::Icmp;
        r.iface = Some("veth0".into());
        let c = compile_specs(&[r]);
        assert_eq!(c.tuples.len(), 1);
        assert_eq!(c.flows.len(), 2); // icmp and icmpv6
        assert!(classify(&c, &pkt("192.0.2.1", "192.0.2.2", 1, 0, 0, DIR_EGRESS)).is_some());
        assert!(classify(&c, &pkt("2001:db8::1", "2001:db8::2", 58, 0, 0, DIR_EGRESS)).is_some());
        assert!(classify(&c, &pkt("192.0.2.1", "192.0.2.2", 58, 0, 0, DIR_EGRESS)).is_none());
        assert!(classify(&c, &pkt("192.0.2.1", "192.0.2.2", 1, 0, 0, DIR_INGRESS)).is_none());
        let mut other_if = pkt("192.0.2.1", "192.0.2.2", 1, 0, 0, DIR_EGRESS);
        other_if.ifindex = 8;
        assert!(classify(&c, &other_if).is_none());
    }

    #[test]
    fn corruption_goes_to_tc_on_wire_packets_with_its_threshold_and_mode() {
        let mut r = rule("c");
        r.act = Actions::default();
        r.act.corrupt = crate::spec::Prob(0.25);
        let v = rule_value(&r, 0, 0);
        let want = RULE_NEEDS_SKB | RULE_CORRUPT | RULE_SEGMENT;
        assert_eq!(v.flags & want, want);
        assert_eq!(v.corrupt_thresh, crate::spec::Prob(0.25).threshold());
        assert_eq!(v.corrupt_mode, netfault_common::CORRUPT_BAD);
        assert_eq!(v.drop_thresh, 0);
        assert!(compile_specs(&[r.clone()]).config_flags & CFG_INGRESS_TC != 0);
        r.act.corrupt = crate::spec::Prob(1.0);
        r.act.corrupt_checksum = Some(crate::spec::CorruptChecksum::Good);
        let v = rule_value(&r, 0, 0);
        assert_eq!(v.corrupt_thresh, PROB_ALWAYS);
        assert_eq!(v.corrupt_mode, netfault_common::CORRUPT_GOOD);
        // No corruption: no flag, no threshold (the data path's cheap path stays as it was).
        let mut d = rule("d");
        d.act.drop = crate::spec::Prob(0.5);
        let v = rule_value(&d, 0, 0);
        assert_eq!((v.flags & RULE_CORRUPT, v.corrupt_thresh), (0, 0));
    }

    #[test]
    fn reject_goes_to_tc_with_its_kind_and_pace() {
        let mut r = rule("r");
        r.act = Actions {
            reject: Some(crate::spec::RejectKind::IcmpAdmin),
            reject_rate: Some("10/s,burst=4".parse().unwrap()),
            ..Actions::default()
        };
        let v = rule_value(&r, 0, 0);
        assert_eq!(
            v.flags & RULE_NEEDS_SKB,
            RULE_NEEDS_SKB,
            "tc builds replies"
        );
        assert_eq!(
            v.drop_thresh,
            u32::MAX,
            "--reject alone drops all it matches"
        );
        assert_eq!(v.reject, netfault_common::REJECT_ICMP_ADMIN);
        assert_eq!(v.reject_interval_ns, 100_000_000);
        assert_eq!(v.reject_tolerance_ns, 300_000_000);
        assert!(compile_specs(&[r.clone()]).config_flags & CFG_INGRESS_TC != 0);
        // The default pace, and a partition rejects as a rule does.
        let mut p = rule("p");
        p.kind = Kind::Partition;
        p.src = vec![parse_net("192.0.2.1").unwrap()];
        p.act.reject = Some(crate::spec::RejectKind::TcpReset);
        let v = rule_value(&p, 0, 0);
        assert_eq!(v.reject, netfault_common::REJECT_TCP_RESET);
        assert_eq!(v.reject_interval_ns, 1_000_000);
        assert_eq!(v.reject_tolerance_ns, 999_000_000);
        assert!(compile_specs(&[p]).config_flags & CFG_INGRESS_TC != 0);
        // Without reject, nothing of it.
        let v = rule_value(&rule("plain"), 0, 0);
        assert_eq!(
            (v.reject, v.reject_interval_ns, v.flags & RULE_NEEDS_SKB),
            (0, 0, 0)
        );
    }

    /// A hold stamps as a delay does (tc, fq) and carries its end; a late duplicate carries its
    /// delay; neither is set where not asked, nor on a partition.
    #[test]
    fn hold_and_late_duplicates_compile_to_their_fields() {
        let mut r = rule("h");
        r.dir = Direction::Egress;
        r.act.hold = Some(std::time::Duration::from_secs(2));
        let v = rule_value(&r, 0, 5_000_000_000);
        let want = RULE_NEEDS_SKB | RULE_SHAPE | RULE_HOLD;
        assert_eq!(v.flags & want, want);
        assert_eq!((v.hold_until_ns, v.dup_delay_ns), (5_000_000_000, 0));
        assert_eq!(v.flags & RULE_DUP_DELAY, 0);
        r.act.hold = None;
        r.act.duplicate = crate::spec::Prob(1.0);
        r.act.duplicate_delay = Some(std::time::Duration::from_millis(100));
        let v = rule_value(&r, 0, 5_000_000_000);
        assert_eq!((v.hold_until_ns, v.dup_delay_ns), (0, 100_000_000));
        assert_eq!(v.flags & (RULE_DUP_DELAY | RULE_HOLD), RULE_DUP_DELAY);
        let mut p = rule("p");
        p.kind = Kind::Partition;
        p.act.hold = Some(std::time::Duration::from_secs(2));
        let v = rule_value(&p, 0, 5_000_000_000);
        assert_eq!((v.hold_until_ns, v.flags & RULE_HOLD), (0, 0));
    }

    #[test]
    fn partition_is_both_ways_unless_oneway() {
        let mut p = rule("p");
        p.kind = Kind::Partition;
        p.src = vec![parse_net("192.0.2.1").unwrap()];
        p.dst = vec![
            parse_net("192.0.2.2").unwrap(),
            parse_net("2001:db8::2").unwrap(),
        ];
        let c = compile_specs(&[p.clone()]);
        // The v4/v6 cross pairs are skipped.
        assert_eq!(c.flows.len(), 2);
        let ab = pkt("192.0.2.1", "192.0.2.2", 6, 1, 2, DIR_EGRESS);
        let ba = pkt("192.0.2.2", "192.0.2.1", 6, 2, 1, DIR_INGRESS);
        assert!(classify(&c, &ab).is_some());
        assert!(classify(&c, &ba).is_some());
        p.oneway = true;
        let c = compile_specs(&[p]);
        assert!(classify(&c, &ab).is_some());
        assert!(classify(&c, &ba).is_none());
    }

    #[test]
    fn many_host_rules_share_one_tuple() {
        let specs: Vec<_> = (0..5000u32)
            .map(|i| {
                let mut r = rule(&format!("r{i}"));
                r.src = vec![IpNet::from(std::net::IpAddr::from(
                    std::net::Ipv4Addr::from(0xc633_0000 + i),
                ))];
                r
            })
            .collect();
        let c = compile_specs(&specs);
        assert_eq!(c.tuples.len(), 1);
        assert_eq!(c.flows.len(), 5000);
    }

    #[test]
    fn overlap_detection() {
        let mut ssh = rule("ssh");
        ssh.kind = Kind::Protect;
        ssh.proto = Proto::Tcp;
        ssh.src = vec![parse_net("192.0.2.9").unwrap()];
        ssh.sport = PortRange {
            lo: 50022,
            hi: 50022,
        };
        ssh.dst = vec![parse_net("192.0.2.1").unwrap()];
        ssh.dport = PortRange { lo: 22, hi: 22 };
        let mut part = rule("p");
        part.kind = Kind::Partition;
        part.src = vec![parse_net("192.0.2.1").unwrap()];
        part.dst = vec![parse_net("192.0.2.0/24").unwrap()];
        assert!(
            overlaps(&part, &ssh),
            "reverse orientation of a partition covers it"
        );
        part.oneway = true;
        assert!(!overlaps(&part, &ssh));
        let mut udp = rule("u");
        udp.proto = Proto::Udp;
        assert!(!overlaps(&udp, &ssh));
        let mut other = rule("o");
        other.src = vec![parse_net("198.51.100.0/24").unwrap()];
        assert!(!overlaps(&other, &ssh));
        assert!(overlaps(&rule("all"), &ssh));
    }

    #[test]
    fn a_fifth_rule_with_one_match_is_refused_by_name() {
        let specs: Vec<_> = (0..=MAX_CHAIN).map(|i| rule(&format!("r{i}"))).collect();
        let all = inputs(&specs);
        let n = MAX_CHAIN as usize;
        assert!(compile(&all[..n]).is_ok(), "{n} rules with one match fit");
        let e = compile(&all).unwrap_err();
        assert_eq!(
            e,
            CompileError::ChainTooLong {
                kind: "rule",
                name: format!("r{n}"),
                earlier: (0..n).map(|i| format!("r{i}")).collect(),
            }
        );
        assert!(e.to_string().contains(&format!("at most {n} rules")), "{e}");
        // One address in common is one match in common too.
        let mut wide = rule("wide");
        wide.dst = vec![
            parse_net("198.51.100.1").unwrap(),
            parse_net("198.51.100.2").unwrap(),
        ];
        let mut narrow: Vec<_> = (0..n)
            .map(|i| {
                let mut r = rule(&format!("n{i}"));
                r.dst = vec![parse_net("198.51.100.2").unwrap()];
                r
            })
            .collect();
        narrow.insert(0, wide);
        assert!(matches!(
            compile(&inputs(&narrow)),
            Err(CompileError::ChainTooLong { ref name, .. }) if name == &format!("n{}", n - 1)
        ));
    }

    #[test]
    fn too_many_shapes_is_refused() {
        let mut r = rule("r");
        r.proto = Proto::Tcp;
        r.sport = PortRange { lo: 1, hi: 65534 };
        r.dport = PortRange { lo: 1, hi: 65534 };
        let inputs = [Input {
            slot: 0,
            spec: &r,
            ifindex: None,
        }];
        assert!(matches!(
            compile(&inputs),
            Err(CompileError::TooManyTuples(_))
        ));
    }
}
