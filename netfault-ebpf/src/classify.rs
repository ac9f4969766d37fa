//! Tuple-space classification: first match (lowest priority value) wins.
//!
//! Why tuple space search: every rule is compiled into exact-match entries of a few masks
//! ("tuples": which prefix lengths, port prefixes and fields it cares about). A packet is masked
//! once per tuple and looked up in one hash map, so the cost per packet is one hash lookup per
//! distinct tuple, independent of how many rules share it: 64k host-to-host rules or a large
//! partition cost the same as one. Tuples are kept sorted by the best priority they hold, so the
//! scan stops as soon as no remaining tuple can beat the match in hand (as in Open vSwitch's
//! classifier). A linear scan would be O(rules); an LPM trie handles one field only.
//!
//! Each tuple carries a filter, the bits all its flows agree on: most tuples a packet cannot
//! match (another family, protocol or direction, another prefix) cost a few ALU operations,
//! not a hash lookup, so cost grows slowly with the number of shapes.
//!
//! The scan runs under `bpf_loop` (kernel 5.17+): its body is verified once, where an open-coded
//! loop of `MAX_TUPLES` iterations multiplies the verifier's states past its limit.
use aya_ebpf::{
    cty::c_void,
    helpers::{bpf_ktime_get_ns, generated::bpf_loop},
};
use netfault_common::{FlowKey, MAX_CHAIN, MAX_TUPLES, RULE_ACTIVE, RuleValue};

use crate::maps::{NF_CONFIG, NF_FLOWS, NF_RULES, NF_TUPLES};

pub struct Match {
    pub slot: u32,
    pub rule: &'static RuleValue,
}

#[inline(always)]
pub fn config_flags() -> u32 {
    NF_CONFIG.get(0).map(|c| c.flags).unwrap_or(0)
}

/// The scan's state, on the caller's stack, shared with the loop body.
#[repr(C)]
struct Scan {
    key: FlowKey,
    generation: u32,
    ntuples: u32,
    best_prio: u32,
    best_slot: u32,
    now: u64,
}

/// Has the rule in `slot` neither expired nor been switched off? Reads the clock only for a
/// rule that can expire, once per packet.
#[inline(always)]
fn live(rule: &RuleValue, now: &mut u64) -> bool {
    if rule.flags & RULE_ACTIVE == 0 {
        return false;
    }
    if rule.expires_ns == 0 {
        return true;
    }
    if *now == 0 {
        // SAFETY: helper without preconditions.
        *now = unsafe { bpf_ktime_get_ns() };
    }
    *now < rule.expires_ns
}

/// One tuple: returns 1 to stop the scan, 0 to go on.
extern "C" fn scan_tuple(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer `classify` passed: a live `Scan` on its stack.
    let s = unsafe { &mut *(ctx as *mut Scan) };
    let i = i as u32;
    if i >= s.ntuples || i >= MAX_TUPLES {
        return 1;
    }
    let Some(t) = NF_TUPLES.get(s.generation * MAX_TUPLES + i) else {
        return 1;
    };
    if t.best_prio >= s.best_prio {
        return 1;
    }
    if !s.key.agrees(&t.filter_mask, &t.filter) {
        return 0;
    }
    let mut m = s.key.masked(&t.mask);
    m.gen_ = s.generation as u8;
    m.tuple = i as u8;
    // The chain of rules with this very match, best first: the first live one wins.
    for rank in 0..MAX_CHAIN {
        m.rank = rank;
        // SAFETY: read-only lookup; entries are replaced, never mutated in place.
        let Some(r) = (unsafe { NF_FLOWS.get(&m) }) else {
            break;
        };
        let (slot, prio, more) = (r.slot, r.prio, r.more);
        if prio >= s.best_prio {
            break;
        }
        if let Some(rule) = NF_RULES.get(slot)
            && live(rule, &mut s.now)
        {
            s.best_prio = prio;
            s.best_slot = slot;
            break;
        }
        if more == 0 {
            break;
        }
    }
    0
}

#[inline(always)]
pub fn classify(key: &FlowKey) -> Option<Match> {
    let cfg = NF_CONFIG.get(0)?;
    // `active` first, then the count of that generation through an address that depends on it:
    // neither the compiler (volatile) nor the CPU (address dependency) can read the count first,
    // so a flip never pairs one generation's index with the other's count.
    // SAFETY: both pointers come from a live map value.
    let generation = unsafe { core::ptr::read_volatile(&cfg.active) } & 1;
    let ntuples = unsafe { core::ptr::read_volatile(&cfg.ntuples[generation as usize]) };
    if ntuples == 0 {
        return None;
    }
    let mut s = Scan {
        key: *key,
        generation,
        ntuples,
        best_prio: u32::MAX,
        best_slot: 0,
        now: 0,
    };
    // SAFETY: callback and context follow bpf_loop's contract.
    unsafe {
        bpf_loop(
            MAX_TUPLES,
            scan_tuple as *mut c_void,
            &mut s as *mut Scan as *mut c_void,
            0,
        )
    };
    if s.best_prio == u32::MAX {
        return None;
    }
    let rule = NF_RULES.get(s.best_slot)?;
    Some(Match {
        slot: s.best_slot,
        rule,
    })
}
