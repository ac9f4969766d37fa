//! Burst loss: a Gilbert-Elliott chain per flow or per rule (netfault's `spec::burst` gives the
//! maths and the meaning of the thresholds).
//!
//! Per flow (`NF_BURST_FLOWS`, an LRU keyed by the packet's own key and the rule's slot): each
//! flow moves through its own chain, so one flow's burst never spills onto another's. A flow
//! the LRU forgot starts again in the good state.
//!
//! Per rule (`NF_BURST_RULE`, one entry per slot shared by every CPU): the state is read and
//! written back without a lock. Two CPUs that draw at once both advance from the state they
//! read and the later write wins, so under contention one packet's transition can be lost: the
//! chain's transition probabilities stay as configured, and no packet is lost that its own draw
//! did not lose. A lock (bpf_spin_lock) would serialise every packet of the rule for that.
use core::ptr::{read_volatile, write_volatile};

use netfault_common::{BurstKey, BurstState, FlowKey, KEY_PORTS, RULE_BURST_PER_RULE, RuleValue};

use crate::{
    fires,
    maps::{NF_BURST_FLOWS, NF_BURST_RULE},
};

/// What the chain did with one packet.
pub struct Draw {
    pub lost: bool,
    /// Lost after a packet the same chain passed (or as its first): a new run.
    pub new_run: bool,
}

const PASS: Draw = Draw {
    lost: false,
    new_run: false,
};

/// The chain's state for this packet, created (good) for a flow not seen yet.
#[inline(always)]
fn state(key: &FlowKey, slot: u32, rule: &RuleValue) -> Option<*mut BurstState> {
    if rule.flags & RULE_BURST_PER_RULE != 0 {
        return NF_BURST_RULE.get_ptr_mut(slot);
    }
    let mut k = BurstKey {
        flow: *key,
        slot,
        _pad: 0,
    };
    // The flow, not this segment's flags (a SYN and the rest of its connection are one flow).
    k.flow.flags &= KEY_PORTS;
    if let Some(p) = NF_BURST_FLOWS.get_ptr_mut(&k) {
        return Some(p);
    }
    // BPF_NOEXIST: a CPU that created it first keeps its state.
    let _ = NF_BURST_FLOWS.insert(&k, &BurstState::default(), 1);
    NF_BURST_FLOWS.get_ptr_mut(&k)
}

/// `draw` as a function of its own, for tc's `act`: its key copy and map arguments would
/// grow the caller's stack frame, which adds up along the call chain to reject's replies
/// (BPF's 512 bytes).
#[inline(never)]
pub fn draw_apart(key: &FlowKey, slot: u32, rule: &RuleValue) -> Draw {
    draw(key, slot, rule)
}

/// One step of the rule's chain for this packet: lost with the probability of the state the
/// chain is in, then a move (good to bad with p, bad to good with r). Fails open (passes)
/// when no state can be had.
#[inline(always)]
pub fn draw(key: &FlowKey, slot: u32, rule: &RuleValue) -> Draw {
    let Some(st) = state(key, slot, rule) else {
        return PASS;
    };
    // SAFETY: a live map value; concurrent writers are discussed in the module's text.
    let s = unsafe { read_volatile(st) };
    let bad = s.bad != 0;
    let lost = fires(if bad {
        rule.ge_loss_bad
    } else {
        rule.ge_loss_good
    });
    let moves = fires(if bad { rule.ge_r } else { rule.ge_p });
    let next = BurstState {
        bad: u8::from(bad != moves),
        last_lost: u8::from(lost),
        _pad: [0; 6],
    };
    // SAFETY: as above.
    unsafe { write_volatile(st, next) };
    Draw {
        lost,
        new_run: lost && s.last_lost == 0,
    }
}
