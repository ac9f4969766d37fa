//! Types shared by the eBPF data path and the controller.
//!
//! Everything here is `#[repr(C)]` with fixed-width fields and explicit padding, and its size is
//! asserted at compile time: both sides read the same bytes out of BPF maps.
#![no_std]

/// Rule slots: index into `COUNTERS`, and into `RULES` within a generation (`rule_index`).
pub const MAX_RULES: u32 = 65_536;
/// Distinct match shapes (tuples) per generation. Per-packet cost grows with this, not with rules.
pub const MAX_TUPLES: u32 = 64;
/// Flow entries in `FLOWS`, both generations together.
pub const MAX_FLOWS: u32 = 1 << 19;
/// Generations: the data path reads one while the controller writes the other.
pub const GENERATIONS: u32 = 2;

/// Index into `RULES` of a slot's value in generation `generation`: each generation holds its own
/// copy of every value it reads, so a flip back to a generation already written (and not
/// rewritten, `Config::digest`) reads exactly the values it was published with.
#[inline(always)]
pub const fn rule_index(generation: u32, slot: u32) -> u32 {
    ((generation & 1) * MAX_RULES) | (slot & (MAX_RULES - 1))
}

/// `skb->mark` carried by our own clones, so they are never impaired or cloned again.
pub const CLONE_MARK: u32 = 0x4e46_c10e;

pub const DIR_INGRESS: u8 = 1;
pub const DIR_EGRESS: u8 = 2;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// Probability thresholds: an action fires when `bpf_get_prandom_u32() < threshold`, except
/// that `PROB_ALWAYS` always fires; 0 never does.
pub const PROB_ALWAYS: u32 = u32::MAX;

/// `RuleValue::flags`
pub const RULE_ACTIVE: u32 = 1;
/// The rule needs an skb (duplication, delay, rate): on ingress, tc handles it instead of XDP.
pub const RULE_NEEDS_SKB: u32 = 1 << 1;
/// The rule stamps departure times (delay, jitter or rate): an fq qdisc must hold its packets.
pub const RULE_SHAPE: u32 = 1 << 2;
/// Jittered packets may overtake each other; without it departure times per flow only grow.
pub const RULE_REORDER: u32 = 1 << 3;
/// A probability strictly between 0 and 1 (drop or duplicate): at egress such a rule draws per
/// wire packet, so a GSO packet it matches is first segmented (it goes through the interface's
/// segmenting IFB device, marked `SEGMENT_TC_INDEX`, and its segments come back one by one).
pub const RULE_SEGMENT: u32 = 1 << 4;
/// The rule flips one random bit of the transport payload of a fraction of what it passes
/// (`RuleValue::corrupt_thresh`, `corrupt_mode`): applied at tc (it needs the skb's checksum
/// helpers), so it also sets `RULE_NEEDS_SKB`.
pub const RULE_CORRUPT: u32 = 1 << 5;
// ---- burst loss (Gilbert-Elliott) ----
/// The rule's loss is a Gilbert-Elliott chain (`RuleValue::ge_*`), not `drop_thresh`.
pub const RULE_BURST: u32 = 1 << 8;
/// With `RULE_BURST`: one chain for the whole rule (`NF_BURST_RULE`), not one per flow.
pub const RULE_BURST_PER_RULE: u32 = 1 << 9;
// ---- hold and late duplicates (issue 15, points 5 and 6) ----
/// The rule holds what it matches until `RuleValue::hold_until_ns` (with `RULE_SHAPE`: fq
/// holds it, as a delay).
pub const RULE_HOLD: u32 = 1 << 6;
/// The rule's duplicates leave `RuleValue::dup_delay_ns` after their original (egress only).
pub const RULE_DUP_DELAY: u32 = 1 << 7;
// ---- cgroup targets (issue 17, point 2) ----
/// The rule matches only packets of sockets in the cgroup v2 subtree of its slot in
/// `NF_CGROUPS` (`RuleValue::cgroup_slot`); tc only (XDP cannot see sockets).
pub const RULE_CGROUP: u32 = 1 << 10;

/// `RuleValue::dist`: uniform jitter needs no table; the others index `NF_DIST` at `dist - 1`.
pub const DIST_UNIFORM: u8 = 0;
/// Distribution tables (normal, pareto, paretonormal), as netem's.
pub const DIST_TABLES: u32 = 3;
/// Entries per distribution table; a power of two so the index is a mask.
pub const DIST_TABLE_SIZE: usize = 4096;
/// Table entries are in 1/2^DIST_SHIFT standard deviations (netem's NETEM_DIST_SCALE, 8192).
pub const DIST_SHIFT: u32 = 13;
/// Flows whose last departure time is remembered, to keep their order under jitter.
pub const MAX_PACE_FLOWS: u32 = 65_536;
/// Interfaces with ingress shaping (each redirects to its own IFB device).
pub const MAX_IFB: u32 = 256;
/// `NF_IFB` value flag: the kernel (before 6.4) drops what `bpf_redirect` hands an IFB device,
/// so the program marks the packet with `SHAPE_TC_INDEX` instead and a tc filter after it
/// redirects with mirred.
pub const IFB_VIA_MIRRED: u32 = 1 << 31;
/// `skb->tc_index` of ingress packets for the mirred filter to take to the IFB device.
pub const SHAPE_TC_INDEX: u32 = 0x4e46;
/// `skb->tc_index` of egress GSO packets for the segmenting filter to take to the interface's
/// egress IFB device (whose segments come back carrying it, so they are never sent there again).
/// tc_index, not the mark: nothing at egress reads tc_index since dsmark went (6.8), while
/// users' marks select routes, firewall rules and other programs' actions.
pub const SEGMENT_TC_INDEX: u32 = 0x4e53;

/// `Config::flags`: some active rule needs tc ingress.
pub const CFG_INGRESS_TC: u32 = 1;
/// `Config::flags`: some interface has no netfault XDP program (another one holds XDP there),
/// so tc ingress applies every rule on the interfaces listed in `NF_TC_ONLY`.
pub const CFG_TC_ONLY: u32 = 1 << 1;

/// `FlowKey::flags`: the packet has transport ports (TCP, UDP or SCTP, and not a later
/// fragment). Every tuple that matches a port also requires this bit, so a packet without
/// ports (whose port fields read 0) never matches a port range that contains 0.
pub const KEY_PORTS: u8 = 1;
/// `FlowKey::flags`: a TCP segment with SYN set and ACK clear (a connection's first segment),
/// set by the parser with `KEY_PORTS`. Rules with `--conn` put it in their mask (`new`: set,
/// `established`: clear); every other tuple's mask leaves it out, so it costs them nothing.
pub const KEY_TCP_SYN: u8 = 1 << 1;

/// `FlowKey::proto` of a packet whose protocol the parser cannot tell: an IPv6 extension header
/// chain that runs past its reach (more than 6 headers, or beyond byte 256 of the frame) or is
/// cut short. IANA's reserved number, which no rule names (`compile` never asks for it): such a
/// packet matches rules without a protocol, as any protocol does, and none with one. It has no
/// ports either, so it is classified on its addresses, interface and direction.
pub const PROTO_UNKNOWN: u8 = 255;

/// Entries in one chain of same-key flows (see `FlowRef::more`), at most: the walk is a bounded
/// loop in every tuple's body, and a longer one makes 6.1's verifier take seconds more.
pub const MAX_CHAIN: u8 = 4;

/// The fields a packet is classified on. Used three ways: as the packet's own key, as a mask
/// (a tuple's shape), and, masked and tagged with `gen` and `tuple`, as the key of `FLOWS`.
///
/// Addresses are raw network-order bytes in `u32` words (IPv4 in the first word, the rest zero);
/// ports are host order. `gen_`, `tuple` and `rank` tag `FLOWS` keys only.
/// 8-aligned, so masking and comparing take six 64-bit words (`dwords`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub dir: u8,
    /// `KEY_PORTS`, `KEY_TCP_SYN`.
    pub flags: u8,
    pub gen_: u8,
    pub tuple: u8,
    /// Position in the chain of entries that share one masked key (0: the best).
    pub rank: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);
const _: () = assert!(MAX_TUPLES <= 256);

/// The match bytes (40..44: proto to flags) of a key's last 64-bit word; the tags are the rest.
pub const LAST_DWORD_MATCH: u64 = u64::from_ne_bytes([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
const _: () = assert!(core::mem::offset_of!(FlowKey, gen_) == 44);
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);

impl FlowKey {
    /// `self & mask` (the tags, `gen_` to `_pad`, left zero), word by word: on the data
    /// path's every visit, six ANDs where field by field takes twenty.
    #[inline(always)]
    pub fn masked(&self, m: &FlowKey) -> FlowKey {
        let (k, m) = (self.dwords(), m.dwords());
        FlowKey::from_dwords([
            k[0] & m[0],
            k[1] & m[1],
            k[2] & m[2],
            k[3] & m[3],
            k[4] & m[4],
            k[5] & m[5] & LAST_DWORD_MATCH,
        ])
    }

    /// The key as 64-bit words.
    #[inline(always)]
    pub fn dwords(&self) -> &[u64; 6] {
        // SAFETY: repr(C), 48 bytes, 8-aligned, no implicit padding.
        unsafe { &*(self as *const FlowKey as *const [u64; 6]) }
    }

    #[inline(always)]
    pub fn from_dwords(w: [u64; 6]) -> FlowKey {
        // SAFETY: as in `dwords`; every bit pattern of the fields is valid.
        unsafe { core::mem::transmute(w) }
    }

    /// The key as bytes, in memory order (see `PF_*` for the offsets the prefilter reads).
    #[inline(always)]
    pub fn bytes(&self) -> &[u8; 48] {
        // SAFETY: repr(C), 48 bytes, no implicit padding.
        unsafe { &*(self as *const FlowKey as *const [u8; 48]) }
    }

    /// The key as 32-bit words (every bit pattern is a valid key and the reverse).
    #[inline(always)]
    pub fn words(&self) -> &[u32; 12] {
        // SAFETY: repr(C), 48 bytes, 4-aligned, no implicit padding.
        unsafe { &*(self as *const FlowKey as *const [u32; 12]) }
    }

    #[inline(always)]
    pub fn from_words(w: [u32; 12]) -> FlowKey {
        // SAFETY: as in `words`; every bit pattern of the fields is valid.
        unsafe { core::mem::transmute(w) }
    }

    /// Does `self` equal `val` on the bits of `mask`? (Tags are ignored.)
    #[inline(always)]
    pub fn agrees(&self, mask: &FlowKey, val: &FlowKey) -> bool {
        let (k, m, v) = (self.dwords(), mask.dwords(), val.dwords());
        let mut diff = ((k[5] & m[5]) ^ v[5]) & LAST_DWORD_MATCH;
        let mut i = 0;
        while i < 5 {
            diff |= (k[i] & m[i]) ^ v[i];
            i += 1;
        }
        diff == 0
    }
}

/// The key of `NF_FLOWS4`: a masked `FlowKey` of an IPv4 packet without the six address words
/// IPv4 leaves zero. Half the bytes to hash and compare on every lookup of the common family
/// (jhash mixes 12 bytes a round: one round and the final mix, where 48 bytes take three and
/// the final). Its words are the `FlowKey`'s words 0, 4, 8, 9, 10 and 11 (`FlowKey::short`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    pub src: u32,
    pub dst: u32,
    pub ifindex: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub dir: u8,
    pub flags: u8,
    pub gen_: u8,
    pub tuple: u8,
    pub rank: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FlowKey4>() == 24);
const _: () = assert!(core::mem::offset_of!(FlowKey4, gen_) == 20);

impl FlowKey4 {
    /// The key as 32-bit words.
    #[inline(always)]
    pub fn words(&self) -> &[u32; 6] {
        // SAFETY: repr(C), 24 bytes, 8-aligned, no implicit padding.
        unsafe { &*(self as *const FlowKey4 as *const [u32; 6]) }
    }

    #[inline(always)]
    pub fn from_words(w: [u32; 6]) -> FlowKey4 {
        // SAFETY: as in `words`; every bit pattern of the fields is valid.
        unsafe { core::mem::transmute(w) }
    }
}

impl FlowKey {
    /// The words of `NF_FLOWS4`'s key (`FlowKey4`): all of the key for IPv4 and for a flow of
    /// no family, whose address words 1..4 are zero (`fits_v4`).
    #[inline(always)]
    pub fn short(&self) -> FlowKey4 {
        let w = self.words();
        FlowKey4::from_words([w[0], w[4], w[8], w[9], w[10], w[11]])
    }

    /// Can an IPv4 packet match this flow (masked key)? Then `NF_FLOWS4` holds it, as `short`.
    pub fn fits_v4(&self) -> bool {
        (self.family == 0 || self.family == FAMILY_V4)
            && self.src[1..] == [0; 3]
            && self.dst[1..] == [0; 3]
    }

    /// Can an IPv6 packet match this flow? Then `NF_FLOWS` holds it.
    pub fn fits_v6(&self) -> bool {
        self.family == 0 || self.family == FAMILY_V6
    }
}

/// One match shape of a generation: the mask, and the best (lowest) priority among its flows,
/// which lets the lookup stop early once nothing in the remaining tuples can win.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tuple {
    pub mask: FlowKey,
    /// The bits of `mask` on which all the tuple's flows agree, and their value (`filter`): a
    /// packet that differs there matches none of them, and costs a few ALU operations instead
    /// of a hash lookup. Catches family, protocol, direction, ports and shared prefixes.
    pub filter_mask: FlowKey,
    pub filter: FlowKey,
    pub best_prio: u32,
    /// 1: a protection tuple (visited only after a rule matched), 0: a rule tuple.
    pub protect: u32,
    /// 1: the tuple holds one flow, `flow`, with no other rule of the same match: the filter
    /// is then that flow's whole match, and a packet that passes it matches without a hash
    /// lookup (a call, a hash of the key and a compare on every packet). 0: look it up.
    pub one_flow: u32,
    pub flow: FlowRef,
}
const _: () = assert!(core::mem::size_of::<Tuple>() == 168);

/// Byte offsets in a `FlowKey` (`FlowKey::bytes`) of the fields the prefilter reads.
pub const KEY_OFF_IFINDEX: usize = 32;
/// sport's low and high byte (host order), then dport's.
pub const KEY_OFF_PORTS: [usize; 4] = [36, 37, 38, 39];
/// The address bytes the prefilter's address tables read, for IPv4: all of src, all of dst.
pub const PF_ADDR_V4: [usize; PF_ADDR_TABLES] = [0, 1, 2, 3, 16, 17, 18, 19];
/// For IPv6, per address: the low bytes of the site and subnet IDs (bits 40..48 and 56..64)
/// and the last two bytes, where prefixes and hosts of one network most often differ.
pub const PF_ADDR_V6: [usize; PF_ADDR_TABLES] = [5, 7, 14, 15, 21, 23, 30, 31];
pub const PF_ADDR_TABLES: usize = 8;

/// One bit per tuple of a generation (bit i: tuple i).
pub type TupleSet = u64;
const _: () = assert!(MAX_TUPLES as usize <= TupleSet::BITS as usize);

/// The prefilter of one generation (bit-vector classification over the tuples): for each of a
/// few fields of the packet's key, a table from the field's value to the tuples some flow of
/// which has that value there. A packet can match only tuples in the AND of its tables' sets;
/// most packets that match nothing get the empty set from a dozen array reads, before their
/// ports are even parsed, and the tuples that remain are the only ones scanned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefilter {
    /// Tuples that hold rules and partitions: scanned first.
    pub rules: TupleSet,
    /// Tuples that hold protections: scanned only for a packet a rule matched.
    pub protects: TupleSet,
    /// Tuples whose flows all need `KEY_PORTS`.
    pub ports: TupleSet,
    pub _pad: u64,
    /// By `pf_meta_index(family, dir, proto)`.
    pub meta: [TupleSet; 1024],
    /// Table j, by `family bit << 8 | byte` (the byte at `PF_ADDR_V4[j]` or `PF_ADDR_V6[j]`).
    pub addr: [[TupleSet; 512]; PF_ADDR_TABLES],
    /// By the interface index's low byte.
    pub iface: [TupleSet; 256],
    /// By the bytes at `KEY_OFF_PORTS`; read only for a packet with ports.
    pub port: [[TupleSet; 256]; 4],
}
const _: () =
    assert!(core::mem::size_of::<Prefilter>() == 32 + 8 * (1024 + 8 * 512 + 256 + 4 * 256));

impl Default for Prefilter {
    fn default() -> Self {
        Prefilter {
            rules: 0,
            protects: 0,
            ports: 0,
            _pad: 0,
            meta: [0; 1024],
            addr: [[0; 512]; PF_ADDR_TABLES],
            iface: [0; 256],
            port: [[0; 256]; 4],
        }
    }
}

impl Prefilter {
    /// The tuples a packet with this key (ports included when it has them) may match: the
    /// data path's two steps in one.
    pub fn candidates(&self, key: &FlowKey) -> TupleSet {
        let b = key.bytes();
        let f = pf_family_bit(key.family);
        let mut c = self.meta[pf_meta_index(key.family, key.dir, key.proto) & 1023];
        let pos = if f == 1 { &PF_ADDR_V6 } else { &PF_ADDR_V4 };
        let mut j = 0;
        while j < PF_ADDR_TABLES {
            c &= self.addr[j][(f << 8) | b[pos[j]] as usize];
            j += 1;
        }
        c &= self.iface[b[KEY_OFF_IFINDEX] as usize];
        if key.flags & KEY_PORTS != 0 {
            let mut j = 0;
            while j < KEY_OFF_PORTS.len() {
                c &= self.port[j][b[KEY_OFF_PORTS[j]] as usize];
                j += 1;
            }
        } else {
            c &= !self.ports;
        }
        c
    }
}

/// 1 for IPv6, 0 otherwise (`FAMILY_V4`).
#[inline(always)]
pub fn pf_family_bit(family: u8) -> usize {
    ((family >> 1) & 1) as usize
}

/// Index of `Prefilter::meta`.
#[inline(always)]
pub fn pf_meta_index(family: u8, dir: u8, proto: u8) -> usize {
    (pf_family_bit(family) << 9) | (((dir & 1) as usize) << 8) | proto as usize
}

/// Value of `FLOWS`: which rule a masked key belongs to, and its priority (lower wins).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRef {
    pub slot: u32,
    pub prio: u32,
    /// 1: a later rule has the same masked key, at `rank + 1`; the data path looks there when
    /// this one has expired, so an expired rule never hides a live one.
    pub more: u32,
}
const _: () = assert!(core::mem::size_of::<FlowRef>() == 12);

/// What a rule does. `RULES` holds one per generation and slot (`rule_index`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleValue {
    pub flags: u32,
    pub drop_thresh: u32,
    pub dup_thresh: u32,
    /// Jitter distribution: `DIST_UNIFORM` or 1 + a table index.
    pub dist: u8,
    pub _pad0: [u8; 3],
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) nanoseconds after which the rule passes traffic; 0: never.
    pub expires_ns: u64,
    pub delay_ns: u64,
    /// Standard deviation (table distributions) or half-width (uniform); 0: none.
    pub jitter_ns: u64,
    /// 0: no pacing.
    pub rate_bytes_per_sec: u64,
    /// Pacing backlog bound: a packet that would wait longer than this for the rate is dropped
    /// (and counted as a queue drop) rather than queued without bound.
    pub rate_queue_ns: u64,
    // ---- Corruption (issue 15, point 3), read only when `flags & RULE_CORRUPT` ----
    /// Threshold (as `drop_thresh`) of flipping one payload bit of a packet that passes.
    pub corrupt_thresh: u32,
    /// `CORRUPT_BAD` or `CORRUPT_GOOD`.
    pub corrupt_mode: u8,
    pub _corrupt_pad: [u8; 3],
    // ---- end of Corruption ----
    // ---- burst loss (Gilbert-Elliott), read only when `flags & RULE_BURST` ----
    /// Thresholds (as `drop_thresh`) of the chain: p, good to bad; r, bad to good; the loss
    /// probability in the bad state (netem's 1-h) and in the good state (netem's 1-k).
    pub ge_p: u32,
    pub ge_r: u32,
    pub ge_loss_bad: u32,
    pub ge_loss_good: u32,
    // ---- end of burst loss ----
    // ---- Reject (issue 15, point 1): answer what the rule drops. ----
    /// `REJECT_*`; 0: drop silently.
    pub reject: u8,
    pub _reject_pad: [u8; 7],
    /// Replies are paced by GCRA per slot (`NF_REJECT`): one per interval on average ...
    pub reject_interval_ns: u64,
    /// ... and up to `tolerance / interval + 1` at once (the burst).
    pub reject_tolerance_ns: u64,
    // ---- end of Reject ----
    // ---- hold and late duplicates (issue 15, points 5 and 6) ----
    /// CLOCK_MONOTONIC ns: a packet matched before this leaves no earlier than this (its
    /// departure time is raised to it). 0: no hold.
    pub hold_until_ns: u64,
    /// A duplicate's departure time is its original's plus this; 0: they leave together.
    pub dup_delay_ns: u64,
    // ---- end of hold and late duplicates ----
    // ---- cgroup targets (issue 17, point 2), read only when `flags & RULE_CGROUP` ----
    /// The rule's cgroup: bit `cgroup_slot` of the packet's cgroup mask (`NF_CGROUPS`).
    pub cgroup_slot: u8,
    pub _cgroup_pad: [u8; 7],
    // ---- end of cgroup targets ----
}
const _: () = assert!(core::mem::size_of::<RuleValue>() == 128);
const _: () = assert!(core::mem::offset_of!(RuleValue, cgroup_slot) == 120);

/// `RuleValue::reject`: a TCP RST for TCP, ICMP port unreachable for the rest.
pub const REJECT_TCP_RESET: u8 = 1;
/// ICMP (type 3) or ICMPv6 (type 1) destination unreachable, with the code for a closed port
/// (3; v6: 4), an unreachable host (1; v6: 3) or a prohibition (13; v6: 1), for every protocol.
pub const REJECT_ICMP_PORT: u8 = 2;
pub const REJECT_ICMP_HOST: u8 = 3;
pub const REJECT_ICMP_ADMIN: u8 = 4;

/// `RuleValue::corrupt_mode`: the transport checksum stays that of the undamaged packet, so the
/// receiver's stack discards it (a checksum error).
pub const CORRUPT_BAD: u8 = 0;
/// The transport checksum is made right for the damaged bytes: the application receives them.
pub const CORRUPT_GOOD: u8 = 1;

/// Per-rule, per-CPU counters. Summed over CPUs by the controller.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub matched: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub passed: u64,
    pub bytes: u64,
    /// Packets given a departure time in the future.
    pub delayed: u64,
    /// Packets dropped because the queue could not hold them (rate backlog), not by `--drop`.
    pub queue_dropped: u64,
    pub _reserved: u64,
    // ---- burst loss ----
    /// Runs of lost packets begun by a Gilbert-Elliott chain (a drop after a packet the same
    /// chain passed, or a chain's first packet lost): `dropped / bursts` is the mean run.
    pub bursts: u64,
    // ---- end of burst loss ----
    // ---- Reject (issue 15, point 1) ----
    /// Dropped packets answered with a RST or an ICMP error (also counted in `dropped`).
    pub rejected: u64,
    /// Dropped packets left unanswered because the rule's reply rate was spent (also in `dropped`).
    pub reject_limited: u64,
    // ---- end of Reject ----
    // ---- Corruption (issue 15, point 3) ----
    /// Packets passed with one payload bit flipped (also counted in `passed`).
    pub corrupted: u64,
    // ---- end of Corruption ----
    // ---- hold and late duplicates (issue 15, points 5 and 6) ----
    /// Packets matched during a hold, given its end as their departure (also in `delayed`).
    pub held: u64,
    /// Duplicates sent with a departure time later than their original's (also in `duplicated`).
    pub dup_delayed: u64,
    // ---- end of hold and late duplicates ----
    pub _reserved2: [u64; 2],
}
const _: () = assert!(core::mem::size_of::<Counters>() == 128);

/// Flows whose Gilbert-Elliott state `NF_BURST_FLOWS` keeps (an LRU: an evicted flow's chain
/// starts again in the good state).
pub const MAX_BURST_FLOWS: u32 = 65_536;

/// Key of `NF_BURST_FLOWS`: the packet's own key (flags reduced to `KEY_PORTS`) and the rule's
/// slot, so two rules never share a flow's chain.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct BurstKey {
    pub flow: FlowKey,
    pub slot: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<BurstKey>() == 56);

/// One Gilbert-Elliott chain's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BurstState {
    /// 1: the bad state; 0: good (where every chain starts).
    pub bad: u8,
    /// 1: the chain's last packet was lost (a drop now continues a run rather than starting one).
    pub last_lost: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<BurstState>() == 8);

/// The single entry of `CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Generation the data path reads (0 or 1).
    pub active: u32,
    pub flags: u32,
    /// Tuples in use per generation.
    pub ntuples: [u32; 2],
    /// Controller-side fingerprint of each generation's content; 0: unknown. Lets a flip back to
    /// a set that is already in the other buffer skip the rewrite (and its grace period).
    pub digest: [u64; 2],
    /// Controller only (no program reads it): 1 from a flip until the grace period after it
    /// has passed, so programs may still be reading the retired generation; 0 (as the kernel
    /// creates the map) once none can. A change waits before rewriting the retired generation
    /// only while this is 1 (its predecessor ended between its flip and its grace).
    pub unsettled: u32,
    pub _pad: u32,
    pub _reserved: [u64; 1],
}
const _: () = assert!(core::mem::size_of::<Config>() == 48);

/// One jitter distribution (`NF_DIST` value).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DistTable {
    pub t: [i16; DIST_TABLE_SIZE],
}
const _: () = assert!(core::mem::size_of::<DistTable>() == 8192);

/// Map names, shared so the controller opens exactly what the programs declare.
pub mod maps {
    pub const CONFIG: &str = "NF_CONFIG";
    pub const TUPLES: &str = "NF_TUPLES";
    pub const FLOWS: &str = "NF_FLOWS";
    pub const FLOWS4: &str = "NF_FLOWS4";
    pub const RULES: &str = "NF_RULES";
    pub const COUNTERS: &str = "NF_COUNTERS";
    pub const TC_ONLY: &str = "NF_TC_ONLY";
    pub const DIST: &str = "NF_DIST";
    pub const PACE: &str = "NF_PACE";
    pub const RATE: &str = "NF_RATE";
    pub const IFB: &str = "NF_IFB";
    pub const PREFILTER: &str = "NF_PREFILTER";
    /// Reject: each slot's reply pacing (GCRA's theoretical arrival time, monotonic ns).
    pub const REJECT: &str = "NF_REJECT";
    pub const BURST_FLOWS: &str = "NF_BURST_FLOWS";
    pub const BURST_RULE: &str = "NF_BURST_RULE";
    /// cgroup targets: each generation's cgroup slots (`CgroupSlot`).
    pub const CGROUPS: &str = "NF_CGROUPS";
    /// cgroup targets: the flows egress saw each cgroup's sockets send on.
    pub const CGROUP_FLOWS: &str = "NF_CGROUP_FLOWS";
    /// cgroup targets: the interfaces this state's tc hooks are on, by index (value 1), for
    /// the socket-delivery hook (`progs::CG_INGRESS`), which sees every namespace's packets.
    pub const IFACES: &str = "NF_IFACES";
    pub const ALL: [&str; 18] = [
        CONFIG,
        TUPLES,
        FLOWS,
        FLOWS4,
        RULES,
        COUNTERS,
        TC_ONLY,
        DIST,
        PACE,
        RATE,
        IFB,
        PREFILTER,
        REJECT,
        BURST_FLOWS,
        BURST_RULE,
        CGROUPS,
        CGROUP_FLOWS,
        IFACES,
    ];
}

/// Program names in the object file.
pub mod progs {
    pub const XDP_INGRESS: &str = "nf_xdp_ingress";
    pub const TC_INGRESS: &str = "nf_tc_ingress";
    pub const TC_EGRESS: &str = "nf_tc_egress";
    /// The segmenting filter's classifier (cls_bpf, not direct-action): selects what
    /// `nf_tc_egress` marked `SEGMENT_TC_INDEX`, for the filter's mirred action.
    pub const TC_SEGMENT: &str = "nf_tc_segment";
    /// cgroup targets: at socket delivery (cgroup_skb/ingress, attached to each cgroup an
    /// ingress entry names), the packets of flows tc ingress could not tell apart yet.
    pub const CG_INGRESS: &str = "nf_cg_ingress";
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowKey4 {}
    unsafe impl aya::Pod for Tuple {}
    unsafe impl aya::Pod for FlowRef {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for DistTable {}
    unsafe impl aya::Pod for Prefilter {}
    unsafe impl aya::Pod for BurstKey {}
    unsafe impl aya::Pod for BurstState {}
    unsafe impl aya::Pod for CgroupSlot {}
    unsafe impl aya::Pod for CgroupFlow {}
    unsafe impl aya::Pod for CgroupSeen {}
}

// ---- round-trip-time histograms (`netfault measure`, `netfault advise`) ----
/// Sub-buckets per power of two: a bucket is at most 1/128 of its values wide (under 1 %
/// relative error), log-linear as HdrHistogram's.
pub const RTT_SUB_BITS: u32 = 7;
/// Values above 60 s count in the last bucket.
pub const RTT_MAX_US: u64 = 60_000_000;
/// Buckets from 0 to `RTT_MAX_US` µs.
pub const RTT_BUCKETS: u32 = rtt_bucket(RTT_MAX_US) + 1;

/// The bucket of a value in µs: values below 256 have one each (exact), then 128 per power of
/// two. No loop and no division, so the data path can use it as is.
#[inline(always)]
pub const fn rtt_bucket(us: u64) -> u32 {
    let v = if us > RTT_MAX_US { RTT_MAX_US } else { us };
    if v < (2 << RTT_SUB_BITS) {
        return v as u32;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - RTT_SUB_BITS;
    let mantissa = (v >> shift) as u32; // in [128, 256)
    (shift + 1) * (1 << RTT_SUB_BITS) + mantissa - (1 << RTT_SUB_BITS)
}

/// The first value (µs) past bucket `b`: its values are `[rtt_bucket_upper(b - 1),
/// rtt_bucket_upper(b))`.
#[inline(always)]
pub const fn rtt_bucket_upper(b: u32) -> u64 {
    if b < (2 << RTT_SUB_BITS) {
        return b as u64 + 1;
    }
    let shift = b / (1 << RTT_SUB_BITS) - 1;
    let mantissa = (b % (1 << RTT_SUB_BITS) + (1 << RTT_SUB_BITS)) as u64;
    (mantissa + 1) << shift
}

const _: () = assert!(RTT_BUCKETS == 2_533);

// ---- passive round-trip times (`netfault measure` without `--probe`) ----
// The `netfault-rtt` object's maps and programs: separate from the fault programs, attached
// only while `measure` runs.

/// `RttHistKey::source`: a TCP timestamp's echo (TSval out, TSecr back).
pub const RTT_SRC_TCP_TS: u8 = 1;
/// `RttHistKey::source`: a handshake (SYN out, SYN-ACK back).
pub const RTT_SRC_HANDSHAKE: u8 = 2;
/// `RttPending::kind`: the value is a TSval.
pub const RTT_PENDING_TS: u8 = 1;
/// `RttPending::kind`: the value is a SYN's sequence number plus one (the SYN-ACK's ack).
pub const RTT_PENDING_SYN: u8 = 2;
/// Segments waiting for their echo (LRU: an echo that never comes is forgotten).
pub const RTT_MAX_PENDING: u32 = 65_536;
/// Connections whose last TSval sent is remembered (LRU).
pub const RTT_MAX_FLOWS: u32 = 65_536;
/// (peer, source, bucket) entries of the histograms.
pub const RTT_MAX_HIST: u32 = 65_536;

/// A TCP connection as it leaves this host: local address and port, then the peer's.
/// Addresses as they are in the packet (an IPv4 one in word 0), ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RttFlow {
    pub local: [u32; 4],
    pub remote: [u32; 4],
    pub lport: u16,
    pub rport: u16,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RttFlow>() == 40);

/// `NF_RTT_PENDING` key: a segment sent on `flow` whose echo is awaited; the value is the
/// time it left (monotonic ns).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RttPending {
    pub flow: RttFlow,
    /// TSval (`RTT_PENDING_TS`) or ISN + 1 (`RTT_PENDING_SYN`).
    pub val: u32,
    pub kind: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<RttPending>() == 48);

/// `NF_RTT_HIST` key (per-CPU count of samples): a peer, where its samples came from, and the
/// `rtt_bucket` of the round trip in µs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RttHistKey {
    pub peer: [u32; 4],
    pub family: u8,
    pub source: u8,
    pub _pad: u16,
    pub bucket: u32,
}
const _: () = assert!(core::mem::size_of::<RttHistKey>() == 24);

/// The `netfault-rtt` object's names.
pub mod rtt_names {
    pub const EGRESS: &str = "nf_rtt_egress";
    pub const INGRESS: &str = "nf_rtt_ingress";
    pub const PENDING: &str = "NF_RTT_PENDING";
    pub const LAST: &str = "NF_RTT_LAST";
    pub const HIST: &str = "NF_RTT_HIST";
}

#[cfg(feature = "user")]
mod rtt_pod {
    use super::*;
    // SAFETY: repr(C), Copy, explicit padding, no pointers.
    unsafe impl aya::Pod for RttFlow {}
    unsafe impl aya::Pod for RttPending {}
    unsafe impl aya::Pod for RttHistKey {}
}

// ---- cgroup targets (issue 17, point 2) ----
/// Distinct cgroups one generation's rules may name: the data path asks the kernel once per
/// slot in use for each packet, so the table stays small.
pub const MAX_CGROUPS: u32 = 8;
/// `Config::flags`: some live rule names a cgroup: tc computes each packet's cgroup mask
/// (a bit per `NF_CGROUPS` slot its socket is in). Without it nothing is asked.
/// (Bits 8 and up, away from the low bits other work takes.)
pub const CFG_CGROUP: u32 = 1 << 8;
/// `Config::flags`: some live cgroup rule can match ingress. XDP cannot see the socket a
/// packet is for, so it passes everything and tc ingress applies every rule (as on a tc-only
/// interface): no rule is ever applied by both, or by XDP in place of a cgroup rule.
pub const CFG_CGROUP_INGRESS: u32 = 1 << 9;

/// One cgroup a generation's rules name: its cgroup v2 id (the inode number of its directory)
/// and its level (depth below the root, which is level 0). A socket is in the subtree when its
/// cgroup's ancestor at `level` has `id`. `NF_CGROUPS` holds `MAX_CGROUPS` per generation, at
/// `generation * MAX_CGROUPS + slot`; id 0: unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupSlot {
    pub id: u64,
    pub level: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<CgroupSlot>() == 16);
const _: () = assert!(MAX_CGROUPS <= 32);

/// Deepest cgroup level a rule may name (`CgroupSeen` keeps one id per level).
pub const MAX_CGROUP_LEVEL: u32 = 8;
/// Flows whose cgroup `NF_CGROUP_FLOWS` remembers (an LRU).
pub const MAX_CGROUP_FLOWS: u32 = 65_536;

/// Key of `NF_CGROUP_FLOWS`: a TCP or UDP flow as its local socket sees it (addresses as in
/// `FlowKey`, ports host order). tc cannot ask which cgroup the socket an ingress packet is for
/// belongs to (`bpf_sk_ancestor_cgroup_id` is not a tc helper), so egress, which can, records
/// each flow its sockets send on, and ingress looks the reversed packet up here.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupFlow {
    pub local: [u32; 4],
    pub remote: [u32; 4],
    pub lport: u16,
    pub rport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<CgroupFlow>() == 40);

/// Value of `NF_CGROUP_FLOWS`: the ids of the sending socket's ancestors at the levels rules
/// name (`ids[level - 1]`), kept only where they are a rule's cgroup (0 elsewhere). By level,
/// not by slot, so a new rule set's slots read it as they are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupSeen {
    pub ids: [u64; MAX_CGROUP_LEVEL as usize],
}
const _: () = assert!(core::mem::size_of::<CgroupSeen>() == 64);
// ---- end of cgroup targets ----
