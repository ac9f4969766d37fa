//! Held and late packets (issue 15, points 5 and 6), both by departure time as delay is
//! (`shape`): a packet matched during a hold leaves at the hold's end; a late duplicate leaves
//! a fixed time after its original. fq holds both; the program never holds a packet itself.
use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_hash_recalc, bpf_set_hash, bpf_skb_set_tstamp},
    },
    programs::TcContext,
};
use netfault_common::RuleValue;

use crate::shape::TSTAMP_MONO;

/// Raises `at` to the rule's hold end for a packet matched during the hold (`now` before it).
/// Returns whether it was held. Equal departure times keep their arrival order in fq's flow
/// queue, so a flow's held packets leave in the order they came.
#[inline(always)]
pub fn raise(rule: &RuleValue, now: u64, at: &mut u64) -> bool {
    if now >= rule.hold_until_ns {
        return false;
    }
    if *at < rule.hold_until_ns {
        *at = rule.hold_until_ns;
    }
    true
}

/// XORed into the copy's flow hash (the low bits, which fq's `orphan_mask` keeps, included).
const COPY_HASH: u32 = 0x4e46_02a5;

/// Gives the packet, about to be cloned, the departure time `delay_ns` after its own (the
/// departure a delay stamped already, the sender's own EDT, or now), so the clone carries it.
/// Returns the packet's own departure time, for `restore` once the clone is made.
///
/// The clone needs an fq flow of its own: fq holds a whole flow back while its first packet's
/// time lies ahead, so a copy in its original's flow would hold back every later original
/// until the copy leaves. A clone has no socket (skb_clone leaves `sk` out), so fq files it by
/// its flow hash, as it files packets without a local socket or of an unconnected UDP socket;
/// the clone gets the original's hash with `COPY_HASH` XORed in (`restore` gives the original
/// its own back).
/// Not inlined: called from tc's `act`, whose stack frame it would grow.
#[inline(never)]
pub fn stamp_copy(ctx: &TcContext, delay_ns: u64) -> u64 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: the program's own context; the hash fq would compute for it, now set.
    let hash = unsafe { bpf_get_hash_recalc(skb) };
    // SAFETY: as above.
    unsafe { bpf_set_hash(skb, hash ^ COPY_HASH) };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the program's own context.
    let (ts, ts_type) = unsafe { ((*skb).tstamp, (*skb).tstamp_type) };
    let own = if ts_type == TSTAMP_MONO && ts > now {
        ts
    } else {
        now
    };
    // SAFETY: the program's own context; MONO is the kind a redirect (the clone's) keeps.
    unsafe { bpf_skb_set_tstamp(skb, own + delay_ns, TSTAMP_MONO as u32) };
    own
}

/// The original's departure time back, after `stamp_copy` and the clone. Stamped as MONO even
/// where it had none: "now" on the monotonic clock means what no stamp means to fq (leave now).
#[inline(never)]
pub fn restore(ctx: &TcContext, own: u64) {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: the program's own context (its hash is the copy's: XOR gives the original's).
    unsafe {
        bpf_set_hash(skb, (*skb).hash ^ COPY_HASH);
        bpf_skb_set_tstamp(skb, own, TSTAMP_MONO as u32);
    }
}
