//! Passive round-trip times (`netfault measure` without `--probe`): an object of its own, with
//! two tc classifiers that `measure` attaches only while it runs, so the fault programs pay
//! nothing for it and their verifier budget is untouched. Both always pass the packet
//! (TC_ACT_UNSPEC: TCX_NEXT under tcx) and never change it.
//!
//! - Egress: the first segment of a connection carrying a new TSval is stamped (connection,
//!   TSval) -> now; a SYN is stamped (connection, ISN + 1) -> now.
//! - Ingress: a segment of the reverse direction whose TSecr matches a stamp, or a SYN-ACK
//!   whose ack matches a SYN's, is one sample: the stamp is deleted (only its first echo
//!   counts) and the peer's histogram bucket (`rtt_bucket`) counted, per CPU.
//!
//! SYN and SYN-ACK timestamps are left out of the TSval matching: a handshake is one sample
//! ("handshake"), not two.
#![no_std]
#![no_main]
// Packet loads of any alignment in one instruction (parse::load_word).
#![feature(asm_experimental_arch)]

#[expect(
    dead_code,
    reason = "the fault programs' parser, of which only the network header's part is used here"
)]
mod parse;

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{LruHashMap, PerCpuHashMap},
    programs::TcContext,
};
use netfault_common::{
    FlowKey, RTT_MAX_FLOWS, RTT_MAX_HIST, RTT_MAX_PENDING, RTT_PENDING_SYN, RTT_PENDING_TS,
    RTT_SRC_HANDSHAKE, RTT_SRC_TCP_TS, RttFlow, RttHistKey, RttPending, rtt_bucket,
};

/// Segments waiting for their echo -> when they left (monotonic ns).
#[map(name = "NF_RTT_PENDING")]
static NF_RTT_PENDING: LruHashMap<RttPending, u64> =
    LruHashMap::with_max_entries(RTT_MAX_PENDING, 0);

/// The last TSval stamped per connection: a TSval is stamped once, by the first segment that
/// carries it (the kernel's clock ticks every millisecond, many segments share one).
#[map(name = "NF_RTT_LAST")]
static NF_RTT_LAST: LruHashMap<RttFlow, u32> = LruHashMap::with_max_entries(RTT_MAX_FLOWS, 0);

/// Samples per (peer, source, bucket), per CPU.
#[map(name = "NF_RTT_HIST")]
static NF_RTT_HIST: PerCpuHashMap<RttHistKey, u64> =
    PerCpuHashMap::with_max_entries(RTT_MAX_HIST, 0);

const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_TIMESTAMP: u8 = 8;
/// Options walked before giving up (Linux sends NOP, NOP, TS first; SACK blocks may precede).
const MAX_OPTIONS: usize = 10;
/// Linear bytes wanted before parsing: Ethernet, an IPv6 header (or IPv4 with options) and a
/// TCP header with options. Deeper headers (IPv6 extension headers) are parsed when linear.
const WANT: usize = 128;
/// No transport header is looked for past this offset (the parser's own bound).
const MAX_L4: usize = 256;

#[inline(always)]
fn load<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked above; packet data has no alignment guarantee.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

#[inline(always)]
fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// A TCP segment's fields this module reads.
struct Seg {
    key: FlowKey,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    /// (TSval, TSecr), if the segment has the option.
    ts: Option<(u32, u32)>,
}

/// The TCP segment in the skb, if it is one (v4 or v6, bounds-checked; its first `WANT` bytes
/// pulled into the linear part when they are not there).
#[inline(always)]
fn segment(ctx: &TcContext) -> Option<Seg> {
    let len = ctx.len() as usize;
    let want = if len < WANT { len } else { WANT };
    if ctx.data() + want > ctx.data_end() {
        ctx.pull_data(want as u32).ok()?;
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let mut key = FlowKey::default();
    let l4 = parse::parse(start, end, &mut key)?;
    if key.proto != IPPROTO_TCP || l4 == 0 || l4 > MAX_L4 {
        return None;
    }
    let h: [u8; 20] = load(start, end, l4)?;
    let doff = usize::from(h[12] >> 4) * 4;
    let flags = h[13];
    Some(Seg {
        key,
        sport: u16::from_be_bytes([h[0], h[1]]),
        dport: u16::from_be_bytes([h[2], h[3]]),
        seq: be32([h[4], h[5], h[6], h[7]]),
        ack: be32([h[8], h[9], h[10], h[11]]),
        flags,
        ts: if doff > 20 {
            timestamps(start, end, l4, doff)
        } else {
            None
        },
    })
}

/// The timestamp option among the options of the TCP header at `l4` (`doff` bytes long),
/// walked with a bounded loop.
#[inline(always)]
fn timestamps(start: usize, end: usize, l4: usize, doff: usize) -> Option<(u32, u32)> {
    let opt_end = l4 + doff;
    let mut off = l4 + 20;
    for _ in 0..MAX_OPTIONS {
        // A constant bound the verifier sees, beside the header's own.
        if off >= opt_end || off > MAX_L4 + 60 {
            return None;
        }
        // Kind and length in one 2-byte load: a 1-byte bounds check compiles to `p >= end`,
        // which the verifier does not take as a bound. (An option list ending in a lone NOP
        // at the packet's end has no timestamp after it anyway.)
        let [kind, l] = load::<[u8; 2]>(start, end, off)?;
        match kind {
            TCPOPT_EOL => return None,
            TCPOPT_NOP => off += 1,
            TCPOPT_TIMESTAMP => {
                if off + 10 > opt_end {
                    return None;
                }
                let o: [u8; 10] = load(start, end, off)?;
                if o[1] != 10 {
                    return None;
                }
                return Some((
                    be32([o[2], o[3], o[4], o[5]]),
                    be32([o[6], o[7], o[8], o[9]]),
                ));
            }
            _ => {
                if l < 2 {
                    return None;
                }
                off += usize::from(l);
            }
        }
    }
    None
}

#[classifier]
fn nf_rtt_egress(ctx: TcContext) -> i32 {
    let _ = try_egress(&ctx);
    TC_ACT_UNSPEC
}

#[classifier]
fn nf_rtt_ingress(ctx: TcContext) -> i32 {
    let _ = try_ingress(&ctx);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn try_egress(ctx: &TcContext) -> Option<()> {
    let s = segment(ctx)?;
    let flow = RttFlow {
        local: s.key.src,
        remote: s.key.dst,
        lport: s.sport,
        rport: s.dport,
        family: s.key.family,
        _pad: [0; 3],
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if s.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        // A retransmitted SYN keeps the first one's time (NOEXIST).
        let p = RttPending {
            flow,
            val: s.seq.wrapping_add(1),
            kind: RTT_PENDING_SYN,
            _pad: [0; 3],
        };
        let _ = NF_RTT_PENDING.insert(&p, &now, u64::from(BPF_NOEXIST));
        return None;
    }
    if s.flags & TCP_SYN != 0 {
        return None;
    }
    let (tsval, _) = s.ts?;
    match NF_RTT_LAST.get_ptr_mut(&flow) {
        // SAFETY: a map value; a racing writer on another CPU writes the same kind of value.
        Some(last) => unsafe {
            if *last == tsval {
                return None;
            }
            *last = tsval;
        },
        None => {
            let _ = NF_RTT_LAST.insert(&flow, &tsval, 0);
        }
    }
    let p = RttPending {
        flow,
        val: tsval,
        kind: RTT_PENDING_TS,
        _pad: [0; 3],
    };
    let _ = NF_RTT_PENDING.insert(&p, &now, u64::from(BPF_NOEXIST));
    None
}

#[inline(always)]
fn try_ingress(ctx: &TcContext) -> Option<()> {
    let s = segment(ctx)?;
    if s.flags & TCP_ACK == 0 {
        return None;
    }
    // The reverse direction: this segment's destination is the local end.
    let flow = RttFlow {
        local: s.key.dst,
        remote: s.key.src,
        lport: s.dport,
        rport: s.sport,
        family: s.key.family,
        _pad: [0; 3],
    };
    let (kind, val, source) = if s.flags & TCP_SYN != 0 {
        (RTT_PENDING_SYN, s.ack, RTT_SRC_HANDSHAKE)
    } else {
        let (_, tsecr) = s.ts?;
        (RTT_PENDING_TS, tsecr, RTT_SRC_TCP_TS)
    };
    let p = RttPending {
        flow,
        val,
        kind,
        _pad: [0; 3],
    };
    // SAFETY: read-only lookup; the value is copied at once.
    let sent = *unsafe { NF_RTT_PENDING.get(&p) }?;
    // Whoever deletes the stamp counts it: an echo seen twice (two CPUs) is one sample.
    NF_RTT_PENDING.remove(&p).ok()?;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let us = now.wrapping_sub(sent) / 1000;
    let k = RttHistKey {
        peer: flow.remote,
        family: flow.family,
        source,
        _pad: 0,
        bucket: rtt_bucket(us),
    };
    count(&k);
    None
}

#[inline(always)]
fn count(k: &RttHistKey) {
    for _ in 0..2 {
        if let Some(c) = NF_RTT_HIST.get_ptr_mut(k) {
            // SAFETY: this CPU's copy of the value.
            unsafe { *c += 1 };
            return;
        }
        // A new entry holds 1 on this CPU and 0 on the others; if another CPU made it first,
        // the lookup again finds it.
        if NF_RTT_HIST.insert(k, &1, u64::from(BPF_NOEXIST)).is_ok() {
            return;
        }
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
