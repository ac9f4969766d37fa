//! netfault's data path: XDP on ingress, tc (tcx or clsact) on egress and, for actions that
//! need an skb, on ingress. Each program is a thin entry around a `try_` function; any failure
//! passes the packet (fail open).
#![no_std]
#![no_main]
// Atomic fetch-add (BPF_ATOMIC | BPF_FETCH) for the rate's shared clock: core's AtomicU64 has
// no read-modify-write on this target.
#![allow(internal_features)]
#![feature(core_intrinsics)]
// Packet loads of any alignment in one instruction (parse::load_word).
#![feature(asm_experimental_arch)]

mod act;
mod burst;
mod cgroup;
mod classify;
mod corrupt;
mod hold;
mod maps;
mod parse;
mod reject;
mod shape;

use aya_ebpf::{
    EbpfContext,
    bindings::{__sk_buff, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, xdp_action},
    helpers::{bpf_get_prandom_u32, generated::bpf_redirect},
    macros::{cgroup_skb, classifier, xdp},
    programs::{SkBuffContext, TcContext, XdpContext},
};
use netfault_common::{
    CFG_CGROUP, CFG_CGROUP_INGRESS, CFG_INGRESS_TC, CFG_TC_ONLY, CLONE_MARK, Counters, DIR_EGRESS,
    DIR_INGRESS, FlowKey, PROB_ALWAYS, RULE_BURST, RULE_CGROUP, RULE_NEEDS_SKB, RuleValue,
    SEGMENT_TC_INDEX,
};

use crate::{
    classify::{Match, Published, classify},
    maps::{NF_COUNTERS, NF_IFACES, NF_TC_ONLY},
};

/// `p` compiled to a threshold: 0 never fires, `PROB_ALWAYS` always does.
#[inline(always)]
fn fires(threshold: u32) -> bool {
    // SAFETY: helper without preconditions.
    threshold != 0 && (threshold == PROB_ALWAYS || unsafe { bpf_get_prandom_u32() } < threshold)
}

/// Is this packet lost? The rule's independent draw, or its Gilbert-Elliott chain's step
/// (counting a run begun). A rule without a chain takes one branch more than before.
/// `APART`: the chain's step is a call (`burst::draw_apart`), not inlined.
#[inline(always)]
fn lost<const APART: bool>(key: &FlowKey, slot: u32, rule: &RuleValue, c: &mut Counters) -> bool {
    if rule.flags & RULE_BURST == 0 {
        return fires(rule.drop_thresh);
    }
    let d = if APART {
        burst::draw_apart(key, slot, rule)
    } else {
        burst::draw(key, slot, rule)
    };
    if d.new_run {
        c.bursts += 1;
    }
    d.lost
}

#[inline(always)]
fn counters(slot: u32) -> Option<&'static mut Counters> {
    // SAFETY: per-CPU slot; BPF programs do not migrate while running.
    NF_COUNTERS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}

/// Classifies the frame at `start..end` (`key` holds its direction and interface): the network
/// header, the prefilter, the ports once some tuple may match, then the
/// candidate tuples. Returns the match and the transport header's offset (0: none).
/// `cgroups`: the packet's cgroup mask (`classify`).
#[inline(always)]
fn classify_frame(
    set: &Published,
    start: usize,
    end: usize,
    key: &mut FlowKey,
    cgroups: impl FnOnce(&FlowKey, u32) -> u32,
) -> Option<(Match, usize)> {
    let l4 = parse::parse(start, end, key)?;
    let c = classify::prefilter(set, key)?;
    // Some tuple may match: the ports are parsed whatever the candidates are. (A branch on
    // whether they need them made the verifier walk the rest twice: attach took 12 s instead of
    // 8 under TCG on 6.12.)
    parse::ports(start, end, l4, key);
    Some((classify(key, &c, cgroups)?, l4))
}

/// `classify_frame` for an skb, whose headers may continue past its linear part into paged
/// data. What the parser will read (`parse::reach`, from a few fixed fields) is pulled into the
/// linear part when it is not all there, so tc parses as deep as XDP; only then, as a pull
/// makes a cloned skb private (a copy), and every TCP transmit is a clone whose headers are
/// linear. (One parse after the pull: a second parse on the failure paths of a first one would
/// multiply what the verifier walks.)
#[inline(always)]
fn classify_skb(
    ctx: &TcContext,
    set: &Published,
    key: &mut FlowKey,
    cgroups: impl FnOnce(&FlowKey, u32) -> u32,
) -> Option<(Match, usize)> {
    let len = ctx.len() as usize;
    let reach = parse::reach(ctx.data(), ctx.data_end());
    let want = if len < reach { len } else { reach };
    if ctx.data() + want > ctx.data_end() {
        ctx.pull_data(want as u32).ok()?;
    }
    classify_frame(set, ctx.data(), ctx.data_end(), key, cgroups)
}

#[xdp]
pub fn nf_xdp_ingress(ctx: XdpContext) -> u32 {
    try_xdp_ingress(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

fn try_xdp_ingress(ctx: &XdpContext) -> Option<u32> {
    // SAFETY: ctx is the program's own context. One 4-byte load: the compiler would narrow
    // it to the byte the prefilter reads, an XDP context access 6.1's verifier refuses.
    let ifindex = unsafe { core::ptr::read_volatile(&(*ctx.ctx).ingress_ifindex) };
    let cfg = classify::config()?;
    // On a tc-only interface tc ingress applies every rule: this program passes, so a packet
    // is never counted twice while the controller adds or removes XDP there. The same
    // everywhere while a cgroup rule can match ingress: only tc can look up the socket.
    // SAFETY: read-only lookup.
    if cfg.flags & CFG_CGROUP_INGRESS != 0
        || (cfg.flags & CFG_TC_ONLY != 0 && unsafe { NF_TC_ONLY.get(&ifindex) }.is_some())
    {
        return None;
    }
    // No rule at all: nothing is parsed.
    let set = classify::published(cfg)?;
    let mut key = FlowKey {
        dir: DIR_INGRESS,
        ifindex,
        ..FlowKey::default()
    };
    // No cgroup rule can match here (`CFG_CGROUP_INGRESS` above): an empty mask.
    let (m, _) = classify_frame(&set, ctx.data(), ctx.data_end(), &mut key, |_, _| 0)?;
    if m.rule.flags & RULE_NEEDS_SKB != 0 {
        // XDP cannot clone: tc ingress applies this rule, counters included.
        return None;
    }
    let c = counters(m.slot)?;
    c.matched += 1;
    c.bytes += (ctx.data_end() - ctx.data()) as u64;
    if lost::<false>(&key, m.slot, m.rule, c) {
        c.dropped += 1;
        return Some(xdp_action::XDP_DROP);
    }
    c.passed += 1;
    None
}

#[classifier]
fn nf_tc_egress(ctx: TcContext) -> i32 {
    try_tc(&ctx, DIR_EGRESS).unwrap_or(TC_ACT_UNSPEC)
}

#[classifier]
fn nf_tc_ingress(ctx: TcContext) -> i32 {
    try_tc(&ctx, DIR_INGRESS).unwrap_or(TC_ACT_UNSPEC)
}

/// An egress drop the sender's stack takes for a packet sent, as it would a loss on the wire.
/// TC_ACT_SHOT would report NET_XMIT_DROP, and TCP would queue the data again at once instead
/// of seeing a loss (measured: 6,121 drops, 400 retransmits). TC_ACT_STOLEN reports success
/// but only under clsact: tcx takes any verdict but PASS, DROP and REDIRECT for TCX_NEXT, and
/// the packet would go out. A redirect to ifindex 0, which no device has, is freed by the
/// kernel (skb_do_redirect) and reported as sent (NET_XMIT_SUCCESS) under both.
#[inline(always)]
fn lost_on_the_wire() -> i32 {
    // SAFETY: helper without preconditions; the verdict makes it take effect.
    unsafe { bpf_redirect(0, 0) };
    TC_ACT_REDIRECT
}

/// Untouched packets return TC_ACT_UNSPEC, which is TCX_NEXT: later programs still see them.
/// Inlined into each entry: a BPF-to-BPF call and return per packet cost more than the copy
/// (return thunks), and `dir` becomes a constant there.
#[inline(always)]
fn try_tc(ctx: &TcContext, dir: u8) -> Option<i32> {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: skb is the program's own context.
    let (mark, ifindex) = unsafe { ((*skb).mark, (*skb).ifindex) };
    if mark == CLONE_MARK {
        return None;
    }
    let cfg = classify::config()?;
    let flags = cfg.flags;
    // SAFETY: read-only lookup.
    let tc_only = dir == DIR_INGRESS
        && (flags & CFG_CGROUP_INGRESS != 0
            || (flags & CFG_TC_ONLY != 0 && unsafe { NF_TC_ONLY.get(&ifindex) }.is_some()));
    if dir == DIR_INGRESS && !tc_only && flags & CFG_INGRESS_TC == 0 {
        return None;
    }
    // No rule at all: nothing is parsed or pulled.
    let set = classify::published(cfg)?;
    let mut key = FlowKey {
        dir,
        ifindex,
        ..FlowKey::default()
    };
    // The cgroup mask is asked of the kernel only when some rule names a cgroup.
    let cgroups = |k: &FlowKey, generation: u32| {
        if flags & CFG_CGROUP == 0 {
            0
        } else if dir == DIR_EGRESS {
            cgroup::nf_cgroups_egress(skb, generation)
        } else {
            cgroup::nf_cgroups_ingress(k, generation)
        }
    };
    // Ingress cgroup rules see a flow once egress saw its socket send on it.
    if dir == DIR_EGRESS && flags & CFG_CGROUP_INGRESS != 0 {
        cgroup::nf_cgroup_learn(skb, set.generation());
    }
    let (m, l4) = classify_skb(ctx, &set, &mut key, cgroups)?;
    if dir == DIR_INGRESS && !tc_only && m.rule.flags & RULE_NEEDS_SKB == 0 {
        // XDP already applied and counted this rule.
        return None;
    }
    if !act::plain(m.rule) {
        // A rule with an action: applied by `act`, which the verifier checks once (its module
        // says why), at the price of a call. `l4` is below `parse::REACH`.
        return Some(if dir == DIR_INGRESS {
            act::nf_act_ingress(skb, &key, l4 as u32, m.index)
        } else {
            act::nf_act_egress(skb, &key, l4 as u32, m.index)
        });
    }
    let c = counters(m.slot)?;
    // Counters count wire packets: a GSO or GRO skb carries gso_segs of them (0 for a plain
    // one). Where a probability applies, aggregates are segmented first at egress
    // (`act`) and not built at ingress (control::features), so a draw below is per wire
    // packet there.
    // SAFETY: skb is the program's own context.
    let segs = u64::from(unsafe { (*skb).gso_segs }.max(1));
    c.matched += segs;
    c.bytes += ctx.len() as u64;
    if fires(m.rule.drop_thresh) {
        c.dropped += segs;
        if dir == DIR_EGRESS {
            return Some(lost_on_the_wire());
        }
        // At ingress the sender is elsewhere: a plain drop.
        return Some(TC_ACT_SHOT);
    }
    c.passed += segs;
    None
}

/// cgroup targets at socket delivery, attached to each cgroup an entry matching ingress names
/// (the controller adds and removes it with them). tc ingress ran before the stack found the
/// packet's socket, and knows its cgroup only for flows the table holds (`cgroup`): the first
/// packet of any other flow (a SYN to a listener, a datagram to a socket that only receives)
/// got there as a packet of no cgroup. Here the socket is known: such a packet is classified
/// again with its socket's cgroups, and if a cgroup entry matches it first, its loss applies
/// (drop, partition, the drop of a reject: no reply can be built here; duplication and
/// corruption start at tc with the next packet), counted in the entry's counters. A flow the
/// table holds passes: tc ingress applied the rules to it.
#[cgroup_skb(ingress)]
fn nf_cg_ingress(ctx: SkBuffContext) -> i32 {
    // 1: deliver, 0: drop.
    if try_cg_ingress(ctx.as_ptr() as *mut __sk_buff) == Some(false) {
        0
    } else {
        1
    }
}

/// Whether the packet goes on (None: no opinion, it does).
#[inline(always)]
fn try_cg_ingress(skb: *mut __sk_buff) -> Option<bool> {
    let cfg = classify::config()?;
    if cfg.flags & CFG_CGROUP_INGRESS == 0 {
        return None;
    }
    // SAFETY: skb is the program's own context.
    let (ifindex, proto, len, segs) =
        unsafe { ((*skb).ifindex, (*skb).protocol, (*skb).len, (*skb).gso_segs) };
    // A cgroup program sees every namespace's packets: only those of this state's interfaces.
    // SAFETY: read-only lookup.
    unsafe { NF_IFACES.get(&ifindex) }?;
    let set = classify::published(cfg)?;
    let mut key = FlowKey {
        dir: DIR_INGRESS,
        ifindex,
        ..FlowKey::default()
    };
    // SAFETY: skb is the program's own context; the packet starts at its network header.
    let (start, end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    let l4 = parse::parse_l3(start, end, u16::from_be(proto as u16), &mut key)?;
    let c = classify::prefilter(&set, &key)?;
    parse::ports(start, end, l4, &mut key);
    let mask = cgroup::nf_cgroup_socket(skb, &key, set.generation());
    if mask == 0 {
        return None;
    }
    let m = classify(&key, &c, |_, _| mask)?;
    if m.rule.flags & RULE_CGROUP == 0 {
        // No cgroup entry comes first: tc ingress found this match too.
        return None;
    }
    let c = counters(m.slot)?;
    let segs = u64::from(segs.max(1));
    c.matched += segs;
    c.bytes += u64::from(len);
    if lost::<true>(&key, m.slot, m.rule, c) {
        c.dropped += segs;
        return Some(false);
    }
    c.passed += segs;
    None
}

/// The segmenting filter's classifier (cls_bpf without direct action, so the filter's mirred
/// action runs on a match): -1 selects a packet `nf_tc_egress` marked for segmentation, 0
/// passes it on. The segments that come back from the IFB device are selected too: the kernel
/// then skips the action for them (the IFB device set `tc_skip_classify`, which
/// `tcf_action_exec` consumes, so it does not reach the receiver's stack over a veth) and
/// they go on out.
#[classifier]
fn nf_tc_segment(ctx: TcContext) -> i32 {
    let skb = ctx.as_ptr() as *mut __sk_buff;
    // SAFETY: skb is the program's own context.
    if unsafe { (*skb).tc_index } == SEGMENT_TC_INDEX {
        -1
    } else {
        0
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
