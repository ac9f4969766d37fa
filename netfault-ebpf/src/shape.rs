//! Delay, jitter and rate by earliest departure time (EDT): the packet's `tstamp` is set to when
//! it may leave, on the monotonic clock, and the fq qdisc netfault installs holds it until then.
//! The program never holds a packet itself.
use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::MaybeUninit,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, generated::bpf_skb_set_tstamp},
    programs::TcContext,
};
use netfault_common::{
    DIST_SHIFT, DIST_TABLE_SIZE, DIST_UNIFORM, FlowKey, RULE_REORDER, RuleValue,
};

use crate::{
    hold,
    maps::{NF_DIST, NF_PACE, NF_RATE},
};

/// BPF_SKB_TSTAMP_DELIVERY_MONO (BPF_SKB_CLOCK_MONOTONIC since 6.11): aya's bindings do not export it.
pub const TSTAMP_MONO: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

pub enum Stamp {
    /// Stamped; `true` when the departure lies in the future.
    Sent(bool),
    /// Matched during the rule's hold: stamped with the hold's end (or later).
    Held,
    /// The rate's backlog is full: drop.
    QueueFull,
}

/// The rule's delay plus a jitter draw; netem's meaning (see netfault's `dist` module, which
/// mirrors this computation for tests).
#[inline(always)]
fn draw(rule: &RuleValue) -> u64 {
    if rule.jitter_ns == 0 {
        return rule.delay_ns;
    }
    let j = rule.jitter_ns as i64;
    // SAFETY: helper without preconditions.
    let r1 = unsafe { bpf_get_prandom_u32() };
    let off = if rule.dist == DIST_UNIFORM {
        // SAFETY: as above.
        let r2 = unsafe { bpf_get_prandom_u32() };
        let r = ((r1 as u64) << 32) | r2 as u64;
        // checked: a panic path would end the program without an exit, which the verifier refuses.
        r.checked_rem(rule.jitter_ns.wrapping_mul(2)).unwrap_or(0) as i64 - j
    } else {
        let Some(t) = NF_DIST.get(rule.dist as u32 - 1) else {
            return rule.delay_ns;
        };
        let v = t.t[r1 as usize & (DIST_TABLE_SIZE - 1)] as i64;
        (j * v) >> DIST_SHIFT
    };
    let d = rule.delay_ns as i64 + off;
    if d < 0 { 0 } else { d as u64 }
}

/// Bytes the packet occupies on the wire: a GSO packet counts every segment's headers, as the
/// kernel's qdisc_pkt_len_init does.
#[inline(always)]
fn wire_len(ctx: &TcContext, skb: *const __sk_buff, proto: u8, l4: usize) -> u64 {
    let len = ctx.len() as u64;
    // SAFETY: the program's own context.
    let segs = unsafe { (*skb).gso_segs } as u64;
    if segs <= 1 || l4 == 0 {
        return len;
    }
    let hdr = match proto {
        IPPROTO_TCP => match ctx.load::<u8>(l4 + 12) {
            Ok(doff) => l4 as u64 + ((doff >> 4) as u64) * 4,
            Err(_) => return len,
        },
        IPPROTO_UDP => l4 as u64 + 8,
        _ => return len,
    };
    len + (segs - 1) * hdr
}

/// `key` copied into `out`, one 64-bit word at a time, each stored as soon as it is read:
/// volatile, so the copy is not elided, and word by word, because a volatile read of the
/// whole key loads all its fields first and spills them (48 bytes more of this frame, over
/// the 512 the verifier allows the call chain from tc's `act`).
#[inline(always)]
fn copy_key<'a>(key: &FlowKey, out: &'a mut MaybeUninit<FlowKey>) -> &'a FlowKey {
    const WORDS: usize = core::mem::size_of::<FlowKey>() / 8;
    let (src, dst) = (
        key as *const FlowKey as *const u64,
        out.as_mut_ptr() as *mut u64,
    );
    for i in 0..WORDS {
        // SAFETY: FlowKey is 8-aligned and 48 bytes, both pointers valid for all its words.
        unsafe { write_volatile(dst.add(i), read_volatile(src.add(i))) };
    }
    // SAFETY: every word was written.
    unsafe { out.assume_init_ref() }
}

/// Not inlined: called from tc's `act`, whose stack frame it would grow (see `burst::draw_apart`).
#[inline(never)]
pub fn stamp(ctx: &TcContext, key: &FlowKey, slot: u32, rule: &RuleValue, l4: usize) -> Stamp {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: the program's own context.
    let (ts, ts_type) = unsafe { ((*skb).tstamp, (*skb).tstamp_type) };
    // A hold alone, after its window: nothing to stamp (the sender's own time stands).
    if rule.delay_ns == 0 && rule.rate_bytes_per_sec == 0 && now >= rule.hold_until_ns {
        return Stamp::Sent(false);
    }
    // A departure time the sender chose already (TCP pacing) is where the delay starts.
    let base = if ts_type == TSTAMP_MONO && ts > now {
        ts
    } else {
        now
    };
    let mut at = base + draw(rule);
    if rule.rate_bytes_per_sec != 0
        && let Some(p) = NF_RATE.get_ptr_mut(slot)
    {
        let cost = wire_len(ctx, skb, key.proto, l4) * 1_000_000_000 / rule.rate_bytes_per_sec;
        // SAFETY (all three below): a map value lives as long as the map and is u64-aligned.
        let prev = unsafe { read_volatile(p) };
        if prev > at && prev - at > rule.rate_queue_ns {
            return Stamp::QueueFull;
        }
        if prev <= at {
            // The link is idle: start now. CPUs racing here both start at once, a burst of two.
            unsafe { write_volatile(p, at + cost) };
        } else {
            // Busy: reserve the next interval with an atomic add, so the total is exact under
            // concurrency. (Fetch-add would give each CPU its own start, but needs BPF CPU v3,
            // which aya-build's flags do not reach; racing CPUs may share a start instead.)
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, cost) };
            let t = unsafe { read_volatile(p) } - cost;
            if t > at {
                at = t;
            }
        }
    }
    // Before the flow's order is kept: the pace map then remembers the raised time.
    let held = hold::raise(rule, now, &mut at);
    if rule.jitter_ns != 0 && rule.flags & RULE_REORDER == 0 {
        // A copy on this stack: `key` may lie in a global function's argument memory, which
        // 6.1's verifier does not take for a map key.
        let mut copy = MaybeUninit::<FlowKey>::uninit();
        let key = copy_key(key, &mut copy);
        // SAFETY: read-only lookup; the value is copied out at once.
        if let Some(last) = unsafe { NF_PACE.get(key) }
            && *last > at
        {
            at = *last;
        }
        let _ = NF_PACE.insert(key, &at, 0);
    }
    // SAFETY: the program's own context; MONO is the kind that survives a redirect.
    unsafe { bpf_skb_set_tstamp(skb, at, TSTAMP_MONO as u32) };
    if held {
        return Stamp::Held;
    }
    Stamp::Sent(at > now)
}
