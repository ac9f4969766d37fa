//! cgroup targets: which of the generation's cgroup slots (`NF_CGROUPS`) the socket of a
//! packet is in, as a mask (bit i: slot i), for `classify` to test rules with `RULE_CGROUP`.
//!
//! - Egress: the packet's own socket (`skb->sk`; for a SYN-ACK the listener),
//!   `bpf_skb_ancestor_cgroup_id`. A packet without one (forwarded, or sent by the kernel's
//!   control socket: RSTs for closed ports, time-wait ACKs) is in no slot.
//! - Ingress: tc runs before the stack has found the packet's socket, and although tc can look
//!   it up (`bpf_sk_lookup_tcp`), it cannot ask that socket's cgroup (`bpf_sk_cgroup_id` and
//!   `bpf_sk_ancestor_cgroup_id` are not tc helpers; the verifier refuses them). So egress
//!   records each TCP and UDP flow a target cgroup's socket sends on (`learn`, while some
//!   ingress rule names a cgroup), and ingress looks its packet up reversed: a packet of a
//!   flow the socket has not sent on since (a SYN to a listener, the first datagram to a
//!   socket that only receives) is in no slot at tc ...
//! - ... but at socket delivery (`nf_cg_ingress`, cgroup_skb/ingress on each cgroup an ingress entry
//!   names): the receiving socket is known, so a flow the table does not hold yet is told
//!   apart there, for its first packet, and learned (`nf_cgroup_socket`).
//!
//! Global functions, called from the tc entries only when `CFG_CGROUP` says some rule names a
//! cgroup (and from `nf_cg_ingress` while an ingress one does): the verifier checks each once (`act` says why that matters), and their stack frame
//! is not part of the entry's chain of calls into `act` (6.1 allows 512 bytes in all).
use core::ptr::NonNull;

use aya_ebpf::{
    bindings::__sk_buff, helpers::generated::bpf_skb_ancestor_cgroup_id, programs::TcContext,
};
use netfault_common::{CgroupFlow, CgroupSeen, FlowKey, KEY_PORTS, MAX_CGROUP_LEVEL, MAX_CGROUPS};

use crate::{
    maps::{NF_CGROUP_FLOWS, NF_CGROUPS},
    parse,
};

/// Calls `$f(i)` for each slot index, written out: 6.1's verifier refuses the loop LLVM
/// leaves otherwise ("back-edge from insn"), which 6.12's accepts.
macro_rules! each_slot {
    ($f:ident) => {
        $f(0);
        $f(1);
        $f(2);
        $f(3);
        $f(4);
        $f(5);
        $f(6);
        $f(7);
    };
}
const _: () = assert!(MAX_CGROUPS == 8, "each_slot writes out MAX_CGROUPS calls");

/// Slot `i` of `generation` when it is in use (id 0: unused).
#[inline(always)]
fn slot(generation: u32, i: u32) -> Option<&'static netfault_common::CgroupSlot> {
    NF_CGROUPS
        .get((generation & 1) * MAX_CGROUPS + i)
        .filter(|s| s.id != 0)
}

/// The mask of the slots of `generation` whose cgroup holds the socket that sent this
/// egress packet.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_cgroups_egress(skb: *mut __sk_buff, generation: u32) -> u32 {
    if skb.is_null() {
        return 0;
    }
    let mut mask = 0;
    let mut one = |i: u32| {
        let Some(s) = slot(generation, i) else {
            return;
        };
        // SAFETY: skb is the program's context; the helper checks for a socket itself.
        if unsafe { bpf_skb_ancestor_cgroup_id(skb, s.level as i32) } == s.id {
            mask |= 1 << i;
        }
    };
    each_slot!(one);
    mask
}

/// Records the flow of this egress packet (TCP or UDP, headers in the linear part) with its
/// socket's ancestors that are `generation`'s target cgroups; forgets it when there are none.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_cgroup_learn(skb: *mut __sk_buff, generation: u32) -> i32 {
    let Some(p) = NonNull::new(skb) else {
        return 0;
    };
    let ctx = TcContext::new(p);
    let (start, end) = (ctx.data(), ctx.data_end());
    let mut key = FlowKey::default();
    let Some(l4) = parse::parse(start, end, &mut key) else {
        return 0;
    };
    parse::ports(start, end, l4, &mut key);
    if key.flags & KEY_PORTS == 0 || (key.proto != 6 && key.proto != 17) {
        return 0;
    }
    let mut seen = CgroupSeen::default();
    let mut any = false;
    let mut one = |i: u32| {
        let Some(s) = slot(generation, i) else {
            return;
        };
        if s.level == 0 || s.level > MAX_CGROUP_LEVEL {
            return;
        }
        // SAFETY: skb is the program's context; the helper checks for a socket itself.
        if unsafe { bpf_skb_ancestor_cgroup_id(skb, s.level as i32) } == s.id {
            seen.ids[((s.level - 1) & (MAX_CGROUP_LEVEL - 1)) as usize] = s.id;
            any = true;
        }
    };
    each_slot!(one);
    let flow = CgroupFlow {
        local: key.src,
        remote: key.dst,
        lport: key.sport,
        rport: key.dport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    // SAFETY: read-only lookup; the value is compared, then replaced whole.
    let known = unsafe { NF_CGROUP_FLOWS.get(&flow) };
    match (known, any) {
        // Most packets: nothing new, no write.
        (Some(k), true) if *k == seen => {}
        (None, false) => {}
        (_, true) => {
            let _ = NF_CGROUP_FLOWS.insert(&flow, &seen, 0);
        }
        // The 4-tuple is now another socket's, outside every target.
        (Some(_), false) => {
            let _ = NF_CGROUP_FLOWS.remove(&flow);
        }
    }
    0
}

/// The mask of the slots of `generation` whose cgroup holds the local socket that egress saw
/// send on this ingress packet's flow (`key`, ports parsed).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_cgroups_ingress(key: *const FlowKey, generation: u32) -> u32 {
    // A global function's pointer arguments may be null as far as the verifier knows.
    // SAFETY: the caller passes its own key, live for the call.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return 0;
    };
    if key.flags & KEY_PORTS == 0 || (key.proto != 6 && key.proto != 17) {
        return 0;
    }
    let flow = CgroupFlow {
        local: key.dst,
        remote: key.src,
        lport: key.dport,
        rport: key.sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    // SAFETY: read-only lookup.
    let Some(seen) = (unsafe { NF_CGROUP_FLOWS.get(&flow) }) else {
        return 0;
    };
    let mut mask = 0;
    let mut one = |i: u32| {
        let Some(s) = slot(generation, i) else {
            return;
        };
        if s.level == 0 || s.level > MAX_CGROUP_LEVEL {
            return;
        }
        if seen.ids[((s.level - 1) & (MAX_CGROUP_LEVEL - 1)) as usize] == s.id {
            mask |= 1 << i;
        }
    };
    each_slot!(one);
    mask
}

/// At socket delivery (`nf_cg_ingress`): the mask of the slots of `generation` whose cgroup
/// holds the socket this ingress packet (`key`, ports parsed) is delivered to, when tc ingress
/// could not know it: its flow was not in the table. The flow is learned here, so that tc
/// ingress applies the rules to the flow's next packets itself. 0 when tc ingress knew the
/// flow (it applied the rules already) or the socket is in no slot.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn nf_cgroup_socket(
    skb: *mut __sk_buff,
    key: *const FlowKey,
    generation: u32,
) -> u32 {
    // SAFETY: the caller passes its own key, live for the call.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return 0;
    };
    if skb.is_null() || key.flags & KEY_PORTS == 0 || (key.proto != 6 && key.proto != 17) {
        return 0;
    }
    // As `nf_cgroups_ingress` builds it, written out: a helper returning the flow as an
    // Option changed that tc function's code (its spills), which 6.1's stack budget watches.
    let flow = CgroupFlow {
        local: key.dst,
        remote: key.src,
        lport: key.dport,
        rport: key.sport,
        proto: key.proto,
        family: key.family,
        _pad: [0; 2],
    };
    // SAFETY: read-only lookup.
    if unsafe { NF_CGROUP_FLOWS.get(&flow) }.is_some() {
        return 0;
    }
    let mut seen = CgroupSeen::default();
    let mut mask = 0;
    let mut one = |i: u32| {
        let Some(s) = slot(generation, i) else {
            return;
        };
        if s.level == 0 || s.level > MAX_CGROUP_LEVEL {
            return;
        }
        // SAFETY: skb is the program's context; its socket is the one it is delivered to.
        if unsafe { bpf_skb_ancestor_cgroup_id(skb, s.level as i32) } == s.id {
            seen.ids[((s.level - 1) & (MAX_CGROUP_LEVEL - 1)) as usize] = s.id;
            mask |= 1 << i;
        }
    };
    each_slot!(one);
    if mask != 0 {
        let _ = NF_CGROUP_FLOWS.insert(&flow, &seen, 0);
    }
    mask
}
