//! Tuple-space classification: first match (lowest priority value) wins, and a protection
//! that matches a packet some rule matched wins over every rule.
//!
//! Why tuple space search: every rule is compiled into exact-match entries of a few masks
//! ("tuples": which prefix lengths, port prefixes and fields it cares about). A packet is masked
//! once per tuple and looked up in one hash map (of two: IPv4 packets use keys of half the
//! size), so the cost per packet is one hash lookup per distinct tuple, independent of how many
//! rules share it: 64k host-to-host rules or a large partition cost the same as one. Tuples
//! are kept sorted by the best priority they hold, so the scan stops as soon as no remaining
//! tuple can beat the match in hand (as in Open vSwitch's classifier). A linear scan would be
//! O(rules); an LPM trie handles one field only.
//!
//! Which tuples are scanned at all is decided first, without touching them: the generation's
//! `Prefilter` maps a dozen bytes of the packet's key (family, direction and protocol; address
//! bytes; the interface; later the ports) each to the set of tuples some flow of which has that
//! byte, one bit per tuple, and only the tuples in the AND of those sets are visited. A packet
//! that matches no rule usually gets the empty set after the network header (`prefilter`), and
//! its ports are then not even parsed. Protections live in tuples of their own, visited only
//! after a rule matched: they can only turn a match into a pass, so a packet no rule matches
//! never pays for them.
//!
//! Each tuple also carries a filter, the bits all its flows agree on, checked before its hash
//! lookup. The scan runs under `bpf_loop` (kernel 5.17+), one candidate tuple per iteration: its
//! body is verified once, where an open-coded loop of `MAX_TUPLES` iterations multiplies the
//! verifier's states past its limit.
use aya_ebpf::{
    cty::c_void,
    helpers::generated::{bpf_ktime_get_coarse_ns, bpf_loop},
};
use netfault_common::{
    Config, FAMILY_V4, FlowKey, FlowKey4, KEY_OFF_IFINDEX, KEY_OFF_PORTS, KEY_PORTS, MAX_CHAIN,
    MAX_TUPLES, PF_ADDR_V4, PF_ADDR_V6, Prefilter, RULE_ACTIVE, RULE_CGROUP, RuleValue, TupleSet,
    pf_meta_index, rule_index,
};

use crate::maps::{NF_CONFIG, NF_FLOWS, NF_FLOWS4, NF_PREFILTER, NF_RULES, NF_TUPLES};

pub struct Match {
    pub slot: u32,
    /// The rule's index in `NF_RULES` (its generation's and slot's).
    pub index: u32,
    pub rule: &'static RuleValue,
}

/// The active generation's rule set, when it holds any rule.
pub struct Published {
    generation: u32,
    pf: &'static Prefilter,
}

/// What the prefilter left after the network header: the tuples the packet may still match.
pub struct Candidates {
    generation: u32,
    tuples: TupleSet,
    pf: &'static Prefilter,
}

/// The controller's configuration, read once per packet: its flags and active generation.
#[inline(always)]
pub fn config() -> Option<&'static Config> {
    NF_CONFIG.get(0)
}

/// The active generation's rule set, or None when it has no rule: then nothing of the packet
/// need be parsed.
#[inline(always)]
pub fn published(cfg: &Config) -> Option<Published> {
    // `active` is read once: the prefilter and the tuples read later are that generation's.
    // SAFETY: the pointer comes from a live map value.
    let generation = unsafe { core::ptr::read_volatile(&cfg.active) } & 1;
    let pf = NF_PREFILTER.get(generation)?;
    if pf.rules == 0 {
        return None;
    }
    Some(Published { generation, pf })
}

impl Published {
    /// The generation the packet is classified in.
    #[inline(always)]
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// The tuples the packet (its key filled but for the ports) may match, or None when no rule's
/// can: then nothing further of the packet need be parsed.
#[expect(
    clippy::needless_range_loop,
    reason = "constant indices into two arrays at once; an iterator would hide the constants from the codegen the verifier sees"
)]
#[inline(always)]
pub fn prefilter(set: &Published, key: &FlowKey) -> Option<Candidates> {
    let pf = set.pf;
    let b = key.bytes();
    let mut c = pf.meta[pf_meta_index(key.family, key.dir, key.proto) & 1023];
    if key.family == netfault_common::FAMILY_V6 {
        for j in 0..PF_ADDR_V6.len() {
            c &= pf.addr[j][256 | byte(b, PF_ADDR_V6[j])];
        }
    } else {
        for j in 0..PF_ADDR_V4.len() {
            c &= pf.addr[j][byte(b, PF_ADDR_V4[j])];
        }
    }
    c &= pf.iface[byte(b, KEY_OFF_IFINDEX)];
    if c & pf.rules == 0 {
        return None;
    }
    Some(Candidates {
        generation: set.generation,
        tuples: c,
        pf,
    })
}

/// Byte `off` of a key, as an index: one byte load, which every verifier bounds to 0..=255. (The
/// compiler would otherwise merge neighbouring byte reads into a wider load and shifts, whose
/// bounds 6.1's verifier loses: "unbounded memory access".)
#[inline(always)]
fn byte(b: &[u8; 48], off: usize) -> usize {
    // SAFETY: `off` is a constant below 48; the read is of the caller's own key.
    unsafe { core::ptr::read_volatile(b.as_ptr().add(off)) as usize }
}

/// The scan's state, on the caller's stack, shared with the loop body.
#[repr(C)]
struct Scan {
    /// The caller's key (a pointer, not a copy: the two stack frames share 512 bytes).
    key: *const FlowKey,
    generation: u32,
    /// The cgroup slots the packet's socket is in (`cgroup`): a rule with `RULE_CGROUP`
    /// whose slot is not among them is passed over as an expired one is.
    cgroups: u32,
    /// Tuples left to visit: rule tuples, then protection tuples (they come last).
    todo: TupleSet,
    protects: TupleSet,
    best_prio: u32,
    best_slot: u32,
    now: u64,
    /// The key masked by the tuple being visited, for `NF_FLOWS`, and its short form for
    /// `NF_FLOWS4`: scratch space here rather than on the visitor's stack, which the bpf_loop
    /// callback's frame would add to its caller's (512 bytes in all).
    m: FlowKey,
    m4: FlowKey4,
}

/// Has the rule in `slot` neither expired nor been switched off? Reads the clock only for a
/// rule that can expire, once per packet: the coarse clock, as the controller does
/// (`control::clock` says why).
/// A rule with `RULE_CGROUP` whose slot is not in `cgroups` counts as switched off: as
/// arithmetic on `RULE_ACTIVE`, not a branch of its own, which would multiply the states the
/// verifier walks.
#[inline(always)]
fn live(rule: &RuleValue, now: &mut u64, cgroups: u32) -> bool {
    let outside =
        (rule.flags >> RULE_CGROUP.trailing_zeros()) & !(cgroups >> (rule.cgroup_slot & 31)) & 1;
    if rule.flags & !outside & RULE_ACTIVE == 0 {
        return false;
    }
    if rule.expires_ns == 0 {
        return true;
    }
    if *now == 0 {
        // SAFETY: helper without preconditions.
        *now = unsafe { bpf_ktime_get_coarse_ns() };
    }
    *now < rule.expires_ns
}

/// Visits tuple `i`. Returns the tuples that may still be visited: all (`u64::MAX`), or, when
/// no later tuple can win, the protection tuples after a rule tuple and none after a
/// protection tuple. `V4`: the packet is IPv4, and looks up its short key in `NF_FLOWS4` (half
/// the bytes to hash and compare); a constant, so that no branch on the family is left for the
/// verifier to walk each lookup twice for.
#[inline(always)]
fn visit<const V4: bool>(s: &mut Scan, i: u32) -> TupleSet {
    let Some(t) = NF_TUPLES.get(s.generation * MAX_TUPLES + (i & (MAX_TUPLES - 1))) else {
        return 0;
    };
    // A protection tuple is visited only when a rule matched (`best_prio` is not MAX; it then
    // holds the rule's priority, which every protection's beats). As arithmetic, not a branch
    // on `best_prio`: that would multiply the verifier's states.
    let bound = s.best_prio.wrapping_add(t.protect & 1);
    if t.best_prio >= bound {
        return s.protects & u64::from(t.protect & 1).wrapping_sub(1);
    }
    // SAFETY: `classify`'s key outlives the loop that runs this.
    let key = unsafe { &*s.key };
    if !key.agrees(&t.filter_mask, &t.filter) {
        return u64::MAX;
    }
    if t.one_flow != 0 {
        // The filter was the tuple's only flow, whole: no lookup.
        let (slot, prio) = (t.flow.slot, t.flow.prio);
        take(s, slot, prio);
        return u64::MAX;
    }
    if V4 {
        s.m4 = key.masked(&t.mask).short();
        s.m4.gen_ = s.generation as u8;
        s.m4.tuple = i as u8;
    } else {
        s.m = key.masked(&t.mask);
        s.m.gen_ = s.generation as u8;
        s.m.tuple = i as u8;
    }
    // The chain of rules with this very match, best first: the first live one wins.
    for rank in 0..MAX_CHAIN {
        // SAFETY: read-only lookups; entries are replaced, never mutated in place.
        let found = if V4 {
            s.m4.rank = rank;
            unsafe { NF_FLOWS4.get(&s.m4) }
        } else {
            s.m.rank = rank;
            unsafe { NF_FLOWS.get(&s.m) }
        };
        let Some(r) = found else {
            break;
        };
        let (slot, prio, more) = (r.slot, r.prio, r.more);
        if prio >= s.best_prio || take(s, slot, prio) || more == 0 {
            break;
        }
    }
    u64::MAX
}

/// Takes the rule in `slot` as the best match so far if it is live. (Callers know that `prio`
/// beats the best so far.)
#[inline(always)]
fn take(s: &mut Scan, slot: u32, prio: u32) -> bool {
    let Some(rule) = NF_RULES.get(rule_index(s.generation, slot)) else {
        return false;
    };
    if !live(rule, &mut s.now, s.cgroups) {
        return false;
    }
    s.best_prio = prio;
    s.best_slot = slot;
    true
}

/// One candidate tuple: returns 1 to stop the scan, 0 to go on.
///
/// Protection tuples have the highest indices and the lowest priorities (`compile` puts
/// protections first): they are reached only after the rule tuples, and visited only when a
/// rule matched, which any protection that matches then beats. (No phase variable: a constant
/// written here would multiply the states the verifier walks the body with.)
extern "C" fn scan_tuple<const V4: bool>(_: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `classify` passed: a live `Scan` on its stack.
    let s = unsafe { &mut *(ctx as *mut Scan) };
    if s.todo == 0 {
        return 1;
    }
    next::<V4>(s);
    0
}

/// Visits the lowest tuple left to visit.
#[inline(always)]
fn next<const V4: bool>(s: &mut Scan) {
    let i = s.todo.trailing_zeros();
    s.todo &= s.todo - 1;
    s.todo &= visit::<V4>(s, i);
}

/// Visits the candidate tuples: the first here, the rest under bpf_loop. Most packets some
/// rule matches have one candidate, and each bpf_loop iteration is a call and a return, what
/// costs most on hosts with return-thunk mitigations (measured: about 15 ns each on AMD with
/// Safe RET, against a whole visit's hash lookup).
#[inline(always)]
fn scan<const V4: bool>(s: &mut Scan) {
    next::<V4>(s);
    if s.todo != 0 {
        // SAFETY: callback and context follow bpf_loop's contract.
        unsafe {
            bpf_loop(
                MAX_TUPLES,
                scan_tuple::<V4> as *mut c_void,
                s as *mut Scan as *mut c_void,
                0,
            )
        };
    }
}

/// Classifies a packet the prefilter let through, its ports parsed. `cgroups` gives the mask
/// of the generation's cgroup slots the packet's socket is in; it is asked only when some rule
/// tuple is a candidate.
#[expect(
    clippy::needless_range_loop,
    reason = "constant indices into two arrays at once; an iterator would hide the constants from the codegen the verifier sees"
)]
#[inline(always)]
pub fn classify(
    key: &FlowKey,
    c: &Candidates,
    cgroups: impl FnOnce(&FlowKey, u32) -> u32,
) -> Option<Match> {
    let pf = c.pf;
    let mut tuples = c.tuples;
    if key.flags & KEY_PORTS != 0 {
        let b = key.bytes();
        for j in 0..KEY_OFF_PORTS.len() {
            tuples &= pf.port[j][byte(b, KEY_OFF_PORTS[j])];
        }
    } else {
        tuples &= !pf.ports;
    }
    let rules = tuples & pf.rules;
    if rules == 0 {
        return None;
    }
    let protects = tuples & pf.protects;
    let mut s = Scan {
        key: key as *const FlowKey,
        generation: c.generation,
        cgroups: cgroups(key, c.generation),
        todo: rules | protects,
        protects,
        best_prio: u32::MAX,
        best_slot: 0,
        now: 0,
        m: FlowKey::default(),
        m4: FlowKey4::default(),
    };
    if key.family == FAMILY_V4 {
        scan::<true>(&mut s);
    } else {
        scan::<false>(&mut s);
    }
    if s.best_prio == u32::MAX {
        return None;
    }
    let index = rule_index(c.generation, s.best_slot);
    let rule = NF_RULES.get(index)?;
    Some(Match {
        slot: s.best_slot,
        index,
        rule,
    })
}
