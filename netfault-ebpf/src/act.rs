//! What tc does with a packet whose rule takes an action beyond counting and plain loss:
//! burst loss, reject, delay and rate, duplication, corruption, and the egress detour for
//! segmentation.
//!
//! Why a function of its own, called, not inlined: the verifier walks the code after
//! classification once per distinct state it reaches there, and parsing and classification
//! leave many (each family, transport protocol and header offset the parser told apart). The
//! actions multiplied by those states made tc ingress's verification take 0.9 million
//! instructions of the limit of 1 million, and seconds of `attach`. `nf_act_ingress` and
//! `nf_act_egress` are global functions: the verifier checks each once, with arguments it
//! knows nothing about beyond their types, whatever its callers' states. A rule without an
//! action (`plain`) never calls them: its packets are counted and drawn for inline.
use core::ptr::NonNull;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, BPF_F_INGRESS, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::generated::bpf_redirect,
    programs::TcContext,
};
use netfault_common::{
    CLONE_MARK, DIR_EGRESS, DIR_INGRESS, FlowKey, IFB_VIA_MIRRED, MAX_RULES, RULE_BURST,
    RULE_CORRUPT, RULE_DUP_DELAY, RULE_SEGMENT, RULE_SHAPE, RuleValue, SEGMENT_TC_INDEX,
    SHAPE_TC_INDEX,
};

use crate::{
    corrupt, counters, fires, hold, lost, lost_on_the_wire,
    maps::{NF_IFB, NF_RULES},
    reject,
    shape::{self, Stamp},
};

/// Does the rule only count and drop (or pass)? Then tc applies it inline.
#[inline(always)]
pub fn plain(rule: &RuleValue) -> bool {
    rule.flags & (RULE_BURST | RULE_SHAPE | RULE_SEGMENT | RULE_CORRUPT) == 0
        && rule.reject == 0
        && rule.dup_thresh == 0
}

/// `act` at tc ingress: the packet in `skb`, classified into `key`, its transport header at
/// `l4` (0: none), matched the rule at `index` of `NF_RULES`. Returns the program's verdict.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_act_ingress(
    skb: *mut __sk_buff,
    key: *const FlowKey,
    l4: u32,
    index: u32,
) -> i32 {
    entry(skb, key, l4, index, DIR_INGRESS)
}

/// `act` at tc egress, as `nf_act_ingress`.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_act_egress(
    skb: *mut __sk_buff,
    key: *const FlowKey,
    l4: u32,
    index: u32,
) -> i32 {
    entry(skb, key, l4, index, DIR_EGRESS)
}

#[inline(always)]
fn entry(skb: *mut __sk_buff, key: *const FlowKey, l4: u32, index: u32, dir: u8) -> i32 {
    // A global function's pointer arguments may be null as far as the verifier knows.
    // SAFETY: the callers pass their own key, live for the call.
    let (Some(skb), Some(key)) = (NonNull::new(skb), unsafe { key.as_ref() }) else {
        return TC_ACT_UNSPEC;
    };
    act(&TcContext::new(skb), key, l4 as usize, index, dir).unwrap_or(TC_ACT_UNSPEC)
}

#[inline(always)]
fn act(ctx: &TcContext, key: &FlowKey, l4: usize, index: u32, dir: u8) -> Option<i32> {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let rule = NF_RULES.get(index)?;
    let slot = index & (MAX_RULES - 1);
    // `mark` and `ifindex` are read where they are used: held from here, they would take stack
    // slots in this frame, which the call chain to reject's replies has no room for.
    // A probability draws per wire packet: a packet such a rule matches at egress is neither
    // counted nor acted on here. Marked, it goes on to the segmenting filter after this
    // program, which sends it through the interface's egress IFB device (no GSO features: the
    // kernel segments an aggregate there); each segment comes back out of this interface and
    // meets the rule as one packet, still marked, so it is never sent there twice. Every
    // packet of the rule takes the detour, one-segment ones too: those sent past the queue
    // would overtake the aggregates in it, and TCP would take the reordering for loss.
    // (control::segment sets the device and the filter up before such a rule is published.)
    // SAFETY: skb is the program's own context; tc_index is a writable field of it.
    if dir == DIR_EGRESS
        && rule.flags & RULE_SEGMENT != 0
        && unsafe { (*skb).tc_index } != SEGMENT_TC_INDEX
    {
        unsafe { (*skb).tc_index = SEGMENT_TC_INDEX };
        return None;
    }
    let c = counters(slot)?;
    // SAFETY: skb is the program's own context.
    let segs = u64::from(unsafe { (*skb).gso_segs }.max(1));
    c.matched += segs;
    c.bytes += ctx.len() as u64;
    if lost::<true>(key, slot, rule, c) {
        c.dropped += segs;
        if rule.reject != 0 {
            match reject::reply(ctx, key, l4, slot, rule) {
                reject::Verdict::Sent => {
                    // One reply, however many wire packets the skb carried (counted as those).
                    c.rejected += segs;
                    // At ingress back out where it came in; at egress up to the local stack.
                    let flags = if dir == DIR_EGRESS {
                        BPF_F_INGRESS as u64
                    } else {
                        0
                    };
                    // SAFETY: helper without preconditions; the verdict makes it take effect;
                    // skb is the program's own context.
                    unsafe { bpf_redirect((*skb).ifindex, flags) };
                    return Some(TC_ACT_REDIRECT);
                }
                reject::Verdict::Limited => c.reject_limited += segs,
                reject::Verdict::Silent => {}
            }
        }
        if dir == DIR_EGRESS {
            return Some(lost_on_the_wire());
        }
        // At ingress the sender is elsewhere: a plain drop.
        return Some(TC_ACT_SHOT);
    }
    // Ingress shaping needs a queue: the IFB device's fq, reached by redirect. Without one
    // (not set up yet, or gone) the packet passes undelayed.
    // SAFETY: read-only lookup.
    let ifb = if dir == DIR_INGRESS && rule.flags & RULE_SHAPE != 0 {
        let ifindex = unsafe { (*skb).ifindex };
        unsafe { NF_IFB.get(&ifindex) }.copied()
    } else {
        None
    };
    if rule.flags & RULE_SHAPE != 0 && (dir == DIR_EGRESS || ifb.is_some()) {
        // Stamped before duplication, so a duplicate leaves with its original.
        match shape::stamp(ctx, key, slot, rule, l4) {
            Stamp::QueueFull => {
                // A full local queue, as a qdisc's: the sender's stack is told (NET_XMIT_DROP at
                // egress) and backs off, as it would before a full fq or netem limit.
                c.queue_dropped += segs;
                return Some(TC_ACT_SHOT);
            }
            Stamp::Held => {
                c.delayed += segs;
                c.held += segs;
            }
            Stamp::Sent(true) => c.delayed += segs,
            Stamp::Sent(false) => {}
        }
    }
    if fires(rule.dup_thresh) {
        // The clone carries CLONE_MARK, so it passes this program untouched when it re-enters.
        // SAFETY: skb is the program's own context.
        let (mark, ifindex) = unsafe { ((*skb).mark, (*skb).ifindex) };
        // A late copy (egress only, spec): the clone takes a departure time `dup_delay_ns`
        // after the original's, which gets its own back once the clone is made. fq holds it.
        let late = dir == DIR_EGRESS && rule.flags & RULE_DUP_DELAY != 0;
        let own = if late {
            hold::stamp_copy(ctx, rule.dup_delay_ns)
        } else {
            0
        };
        ctx.set_mark(CLONE_MARK);
        let flags = if dir == DIR_INGRESS {
            BPF_F_INGRESS as u64
        } else {
            0
        };
        let ok = ctx.clone_redirect(ifindex, flags).is_ok();
        ctx.set_mark(mark);
        if late {
            hold::restore(ctx, own);
        }
        if ok {
            c.duplicated += segs;
            if late {
                c.dup_delayed += segs;
            }
        }
    }
    // Corruption last, after the clone: a duplicate (sharing the data until one side writes)
    // leaves undamaged, and the write makes this skb's bytes its own (a TCP segment's are the
    // retransmit queue's, which a retransmission must find intact).
    if rule.flags & RULE_CORRUPT != 0 && fires(rule.corrupt_thresh) {
        match corrupt::flip(ctx, key, l4, rule) {
            corrupt::Flip::Done => c.corrupted += 1,
            corrupt::Flip::Drop => {
                c.corrupted += 1;
                c.dropped += segs;
                return Some(TC_ACT_SHOT);
            }
            corrupt::Flip::Untouched => {}
        }
    }
    c.passed += segs;
    if let Some(ifb) = ifb {
        if ifb & IFB_VIA_MIRRED != 0 {
            // The mirred filter after this program takes it from here.
            // SAFETY: tc_index is a writable field of a tc program's context.
            unsafe { (*skb).tc_index = SHAPE_TC_INDEX };
            return None;
        }
        // SAFETY: helper without preconditions; the verdict below makes it take effect.
        unsafe { bpf_redirect(ifb, 0) };
        return Some(TC_ACT_REDIRECT);
    }
    None
}
