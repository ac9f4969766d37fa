//! Reject: the packet a rule drops is answered, as a closed port or a refusing host would,
//! with a TCP RST or an ICMP/ICMPv6 destination unreachable built from it in place.
//!
//! Only tc applies reject rules (`RULE_NEEDS_SKB`): an XDP_TX reply on a veth is lost unless
//! the peer runs XDP or GRO, and a reply that silently never leaves is not what was configured.
//! At ingress the reply leaves by the interface the packet came in on; at egress it is handed
//! to the local stack's ingress, as though the peer had sent it. Replies carry `CLONE_MARK`, so
//! no netfault rule on the way (a partition's other direction) takes them for traffic.
//!
//! Every byte goes through the skb helpers (`bpf_skb_load_bytes` / `store_bytes`), which reach
//! paged data and keep the verifier's work to constant sizes. Checksums are built from scratch:
//! ones' complement sums of native 16-bit words, folded and stored in native order.
use core::{
    intrinsics::{AtomicOrdering, atomic_xadd},
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_csum_diff, bpf_csum_level, bpf_skb_load_bytes, bpf_skb_store_bytes},
    },
    programs::TcContext,
};
use netfault_common::{
    CLONE_MARK, FAMILY_V4, FAMILY_V6, FlowKey, REJECT_ICMP_ADMIN, REJECT_ICMP_HOST,
    REJECT_TCP_RESET, RuleValue,
};

use crate::{
    maps::{NF_REJECT, NF_REJECT_BUF},
    parse,
};

const ETH_HLEN: usize = 14;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
/// RFC 4443 2.4(c): an ICMPv6 error holds as much of the packet as fits in the minimum MTU.
const V6_QUOTE_MAX: usize = 1280 - 40 - 8;
/// RFC 792 asks for the IP header and 8 bytes at least; Linux quotes up to a 576-byte reply
/// (RFC 1812 4.3.2.3), and so does this: a checksum-offloaded skb cannot be cut before its
/// checksum field (bpf_skb_change_tail refuses), which lies past 8 bytes for TCP.
const V4_QUOTE_MAX: usize = 576 - 20 - 8;
/// Chunks of this many bytes are summed from a stack copy; a v6 quote takes at most 20.
const CHUNK: usize = 64;
/// BPF_CSUM_LEVEL_RESET: CHECKSUM_UNNECESSARY becomes CHECKSUM_NONE (the receiver checks).
const CSUM_LEVEL_RESET: u64 = 3;

pub enum Verdict {
    /// The reply is in place: redirect it.
    Sent,
    /// The rule's reply rate is spent: drop without a reply.
    Limited,
    /// Not to be answered (an ICMP error, a RST, a later fragment, multicast) or could not be:
    /// drop.
    Silent,
}

/// GCRA per slot: the slot's next due time moves on by one interval per reply, and a reply is
/// allowed while that time is at most `tolerance` ahead of now (a burst of tolerance /
/// interval + 1). Shared by all CPUs, so the rate is the rule's whatever the CPU count: an
/// atomic add when busy keeps the total exact; CPUs that find the slot idle at the same
/// instant both restart it (one reply too many at most, as in `shape::stamp`).
#[inline(always)]
fn allow(slot: u32, rule: &RuleValue) -> bool {
    let Some(p) = NF_REJECT.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY (all three): a map value lives as long as the map and is u64-aligned.
    let due = unsafe { read_volatile(p) };
    if due > now && due - now > rule.reject_tolerance_ns {
        return false;
    }
    if due <= now {
        unsafe { write_volatile(p, now + rule.reject_interval_ns) };
    } else {
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, rule.reject_interval_ns) };
    }
    true
}

#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    let mut b = [0u8; N];
    // SAFETY: the buffer is N bytes on the stack; the helper checks the offset.
    let r =
        unsafe { bpf_skb_load_bytes(ctx.as_ptr(), off as u32, b.as_mut_ptr() as *mut _, N as u32) };
    (r == 0).then_some(b)
}

/// Adds `b`'s native 16-bit words to `acc` (`b` has an even length).
#[inline(always)]
fn sum(b: &[u8], mut acc: u64) -> u64 {
    let mut i = 0;
    while i + 1 < b.len() {
        acc += u64::from(u16::from_ne_bytes([b[i], b[i + 1]]));
        i += 2;
    }
    acc
}

#[inline(always)]
fn fold(mut acc: u64) -> [u8; 2] {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    (!(acc as u16)).to_ne_bytes()
}

/// The sum of `len` packet bytes from `off` (at most `V6_QUOTE_MAX`): whole chunks of `CHUNK`
/// bytes, then the rest (fewer) in one load of a bounded length, zero-padded to whole words
/// (an odd last byte is padded with a zero byte, as the checksum's definition says). Each sum
/// is `bpf_csum_diff`'s: a helper call where a loop of adds would make the verifier walk every
/// word, and one tail instead of loops of smaller sizes, whose exits it would walk in every
/// combination.
#[inline(always)]
fn sum_packet(
    ctx: &TcContext,
    chunk: &mut [u8; CHUNK + 4],
    mut off: usize,
    len: usize,
    mut acc: u64,
) -> Option<u64> {
    let stop = off + len;
    for _ in 0..V6_QUOTE_MAX / CHUNK + 1 {
        if off + CHUNK > stop {
            break;
        }
        load_into(ctx, off, &mut chunk[..CHUNK])?;
        acc += csum(&mut chunk[..CHUNK]);
        off += CHUNK;
    }
    if stop > off {
        // 1 to CHUNK by its arithmetic alone: 6.1's verifier learns no lower bound from
        // `n != 0`, and bpf_skb_load_bytes refuses a length that may be 0.
        let n = ((stop - off - 1) & (CHUNK - 1)) + 1;
        chunk.fill(0);
        load_into(ctx, off, &mut chunk[..n])?;
        acc += csum(&mut chunk[..(n + 3) & !3]);
    }
    Some(acc)
}

/// The ones' complement sum of `b` (a multiple of 4 bytes), unfolded, by the kernel.
#[inline(always)]
fn csum(b: &mut [u8]) -> u64 {
    // SAFETY: `b` is valid for its length; no "from" buffer.
    let r = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            b.as_mut_ptr() as *mut _,
            b.len() as u32,
            0,
        )
    };
    // A negative return is an error (never for these sizes); the sum is a u32 otherwise.
    u64::from(r as u32)
}

/// The pseudo-header's sum: addresses from the reply's IP header `ip` (at 12 for IPv4, 8 for
/// IPv6), the protocol and the transport length.
#[inline(always)]
fn pseudo(ip: &[u8], v6: bool, proto: u8, len: usize) -> u64 {
    let mut acc = if v6 {
        sum(&ip[8..40], 0)
    } else {
        sum(&ip[12..20], 0)
    };
    acc = sum(&[0, proto], acc);
    sum(&(len as u32).to_be_bytes(), acc)
}

/// An IPv4 header (20 bytes) from `src` to `dst` carrying `len` bytes of `proto`.
#[inline(always)]
fn ipv4(b: &mut [u8], src: u32, dst: u32, proto: u8, len: usize) {
    let total = ((20 + len) as u16).to_be_bytes();
    b[..12].copy_from_slice(&[0x45, 0, total[0], total[1], 0, 0, 0x40, 0, 64, proto, 0, 0]);
    b[12..16].copy_from_slice(&src.to_ne_bytes());
    b[16..20].copy_from_slice(&dst.to_ne_bytes());
    let c = fold(sum(&b[..20], 0));
    b[10..12].copy_from_slice(&c);
}

/// An IPv6 header (40 bytes) from `src` to `dst` carrying `len` bytes of `proto`.
#[inline(always)]
fn ipv6(b: &mut [u8], src: &[u32; 4], dst: &[u32; 4], proto: u8, len: usize) {
    let plen = (len as u16).to_be_bytes();
    b[..8].copy_from_slice(&[0x60, 0, 0, 0, plen[0], plen[1], proto, 64]);
    for i in 0..4 {
        b[8 + 4 * i..12 + 4 * i].copy_from_slice(&src[i].to_ne_bytes());
        b[24 + 4 * i..28 + 4 * i].copy_from_slice(&dst[i].to_ne_bytes());
    }
}

/// Answers the packet `ctx` holds (classified into `key`, transport header at `l4`) as
/// `rule.reject` says, turning the skb into the reply. The builders are not inlined: their
/// buffers get a stack frame of their own instead of growing the classifier's past BPF's 512
/// bytes (frames add up along a call chain, so this stays a thin step between them).
#[inline(always)]
pub fn reply(ctx: &TcContext, key: &FlowKey, l4: usize, slot: u32, rule: &RuleValue) -> Verdict {
    if l4 == 0 || !unicast(key) {
        return Verdict::Silent;
    }
    let tcp = key.proto == IPPROTO_TCP && rule.reject == REJECT_TCP_RESET;
    // Never an error for an error, nor a reset for a reset (RFC 1122 3.2.2, RFC 793).
    let answerable = match key.proto {
        IPPROTO_TCP => match ctx.load::<u8>(l4 + 13) {
            Ok(flags) => flags & TCP_RST == 0,
            Err(_) => false,
        },
        IPPROTO_ICMP if key.family == FAMILY_V4 => {
            matches!(ctx.load::<u8>(l4), Ok(t) if !matches!(t, 3 | 4 | 5 | 11 | 12))
        }
        IPPROTO_ICMPV6 if key.family == FAMILY_V6 => {
            matches!(ctx.load::<u8>(l4), Ok(t) if t >= 128)
        }
        _ => true,
    };
    if !answerable {
        return Verdict::Silent;
    }
    // Untagged frames only: a tag in the data is rare on Linux (the skb carries it aside).
    match parse::link(ctx.data(), ctx.data_end()) {
        Some((_, ETH_HLEN)) => {}
        _ => return Verdict::Silent,
    }
    if !allow(slot, rule) {
        return Verdict::Limited;
    }
    let done = if tcp {
        reset(ctx, key, l4)
    } else {
        unreachable(ctx, key, rule.reject)
    };
    if done.is_none() {
        return Verdict::Silent;
    }
    ctx.set_mark(CLONE_MARK);
    // SAFETY: the program's own context; a failure leaves the checksum state as it was.
    unsafe { bpf_csum_level(ctx.as_ptr() as *mut __sk_buff, CSUM_LEVEL_RESET) };
    Verdict::Sent
}

/// Where replies are composed: BPF's stack (512 bytes along a call chain, half of it the
/// classifier's) is too small for the headers, the original's and a chunk being summed.
#[repr(C)]
pub struct Scratch {
    /// The reply's Ethernet, IP and transport headers, as they will be stored.
    out: [u8; 80],
    /// The original's transport header (TCP: 20 bytes) or Ethernet addresses.
    orig: [u8; 20],
    /// A quote chunk being summed, and room for the verifier's bound on its rounded length
    /// (it cannot tell that rounding 63 up to whole words gives 64).
    chunk: [u8; CHUNK + 4],
}

#[inline(always)]
fn scratch() -> Option<&'static mut Scratch> {
    // SAFETY: per-CPU; a program runs on one CPU to its end without preemption by another
    // netfault program on the same CPU's entry (tc runs in softirq context, not nested).
    NF_REJECT_BUF.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

/// Loads `dst.len()` packet bytes from `off` into `dst` (a constant length once inlined).
#[inline(always)]
fn load_into(ctx: &TcContext, off: usize, dst: &mut [u8]) -> Option<()> {
    // SAFETY: `dst` is valid for its length; the helper checks the offset.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.as_ptr(),
            off as u32,
            dst.as_mut_ptr() as *mut _,
            dst.len() as u32,
        )
    };
    (r == 0).then_some(())
}

/// Stores `src` at packet offset `off`.
#[inline(always)]
fn store(ctx: &TcContext, off: usize, src: &[u8]) -> Option<()> {
    // SAFETY: `src` is valid for its length; the helper checks the offset.
    let r = unsafe {
        bpf_skb_store_bytes(
            ctx.as_ptr() as *mut __sk_buff,
            off as u32,
            src.as_ptr() as *const _,
            src.len() as u32,
            0,
        )
    };
    (r == 0).then_some(())
}

/// The reply's Ethernet header into `out[..14]`: the frame's addresses swapped (back to where
/// it came from), its EtherType kept.
#[inline(always)]
fn ethernet(ctx: &TcContext, b: &mut Scratch) -> Option<()> {
    load_into(ctx, 0, &mut b.orig[..14])?;
    b.out[..6].copy_from_slice(&b.orig[6..12]);
    b.out[6..12].copy_from_slice(&b.orig[..6]);
    b.out[12..14].copy_from_slice(&b.orig[12..14]);
    Some(())
}

/// The IP datagram's length by its header (not the frame's: Ethernet pads short frames), at
/// most what the skb holds.
#[inline(always)]
fn datagram_len(ctx: &TcContext, key: &FlowKey) -> Option<usize> {
    let held = (ctx.len() as usize).checked_sub(ETH_HLEN)?;
    let by_header = if key.family == FAMILY_V4 {
        usize::from(u16::from_be_bytes(load::<2>(ctx, ETH_HLEN + 2)?))
    } else {
        40 + usize::from(u16::from_be_bytes(load::<2>(ctx, ETH_HLEN + 4)?))
    };
    // 0 in IPv4's total length: a BIG TCP aggregate; its skb length is the datagram's.
    Some(if by_header == 0 || by_header > held {
        held
    } else {
        by_header
    })
}

/// A RST as the kernel's nf_send_reset builds it: to a segment with ACK, seq = its ack and no
/// ACK; to one without (a SYN), seq 0, ACK, ack = its seq + SYN + FIN + payload length.
#[inline(never)]
fn reset(ctx: &TcContext, key: &FlowKey, l4: usize) -> Option<()> {
    let b = scratch()?;
    let v6 = key.family == FAMILY_V6;
    let payload = datagram_len(ctx, key)?.checked_sub(l4 - ETH_HLEN)?;
    ethernet(ctx, b)?;
    load_into(ctx, l4, &mut b.orig)?;
    let th = &b.orig;
    let flags = th[13];
    let payload = payload.checked_sub(usize::from(th[12] >> 4) * 4)?;
    let ip = ETH_HLEN;
    let t = if v6 { ip + 40 } else { ip + 20 };
    b.out[t..t + 20].fill(0);
    b.out[t..t + 2].copy_from_slice(&th[2..4]);
    b.out[t + 2..t + 4].copy_from_slice(&th[0..2]);
    if flags & TCP_ACK != 0 {
        b.out[t + 4..t + 8].copy_from_slice(&th[8..12]);
        b.out[t + 13] = TCP_RST;
    } else {
        let seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
        let n = u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        let ack = seq.wrapping_add(n).wrapping_add(payload as u32);
        b.out[t + 8..t + 12].copy_from_slice(&ack.to_be_bytes());
        b.out[t + 13] = TCP_RST | TCP_ACK;
    }
    b.out[t + 12] = 5 << 4;
    if v6 {
        ipv6(&mut b.out[ip..ip + 40], &key.dst, &key.src, IPPROTO_TCP, 20);
    } else {
        ipv4(
            &mut b.out[ip..ip + 20],
            key.dst[0],
            key.src[0],
            IPPROTO_TCP,
            20,
        );
    }
    let acc = pseudo(&b.out[ip..], v6, IPPROTO_TCP, 20);
    let c = fold(sum(&b.out[t..t + 20], acc));
    b.out[t + 16..t + 18].copy_from_slice(&c);
    if v6 {
        store(ctx, 0, &b.out[..ETH_HLEN + 60])?;
        ctx.change_tail((ETH_HLEN + 60) as u32, 0).ok()
    } else {
        store(ctx, 0, &b.out[..ETH_HLEN + 40])?;
        ctx.change_tail((ETH_HLEN + 40) as u32, 0).ok()
    }
}

/// ICMP type 3 / ICMPv6 type 1 quoting the packet: as much as fits in 576 bytes for IPv4
/// (RFC 792's IP header and 8 bytes at least), in 1280 bytes for IPv6 (RFC 4443). The skb grows
/// at its head by the new headers, so the quote is the original datagram where it already lies.
#[inline(never)]
fn unreachable(ctx: &TcContext, key: &FlowKey, kind: u8) -> Option<()> {
    let b = scratch()?;
    let v6 = key.family == FAMILY_V6;
    let dlen = datagram_len(ctx, key)?;
    let (hdr, quote) = if v6 {
        (
            48,
            if dlen < V6_QUOTE_MAX {
                dlen
            } else {
                V6_QUOTE_MAX
            },
        )
    } else {
        (
            28,
            if dlen < V4_QUOTE_MAX {
                dlen
            } else {
                V4_QUOTE_MAX
            },
        )
    };
    let code = match (kind, v6) {
        (REJECT_ICMP_HOST, false) => 1,
        (REJECT_ICMP_ADMIN, false) => 13,
        (_, false) => 3,
        (REJECT_ICMP_HOST, true) => 3,
        (REJECT_ICMP_ADMIN, true) => 1,
        (_, true) => 4,
    };
    ethernet(ctx, b)?;
    ctx.change_head(hdr as u32, 0).ok()?;
    ctx.change_tail((ETH_HLEN + hdr + quote) as u32, 0).ok()?;
    let ip = ETH_HLEN;
    let m = if v6 { ip + 40 } else { ip + 20 };
    b.out[m..m + 8].fill(0);
    b.out[m] = if v6 { 1 } else { 3 };
    b.out[m + 1] = code;
    let mut acc = sum(&b.out[m..m + 8], 0);
    acc = sum_packet(ctx, &mut b.chunk, ETH_HLEN + hdr, quote, acc)?;
    let icmp_len = 8 + quote;
    if v6 {
        ipv6(
            &mut b.out[ip..ip + 40],
            &key.dst,
            &key.src,
            IPPROTO_ICMPV6,
            icmp_len,
        );
        acc += pseudo(&b.out[ip..], true, IPPROTO_ICMPV6, icmp_len);
    } else {
        ipv4(
            &mut b.out[ip..ip + 20],
            key.dst[0],
            key.src[0],
            IPPROTO_ICMP,
            icmp_len,
        );
    }
    let c = fold(acc);
    b.out[m + 2..m + 4].copy_from_slice(&c);
    if v6 {
        store(ctx, 0, &b.out[..ETH_HLEN + 48])
    } else {
        store(ctx, 0, &b.out[..ETH_HLEN + 28])
    }
}

/// Neither source nor destination multicast or broadcast (RFC 1122 3.2.2, RFC 4443 2.4(e)).
#[inline(always)]
fn unicast(key: &FlowKey) -> bool {
    let (s, d) = (key.src[0].to_ne_bytes()[0], key.dst[0].to_ne_bytes()[0]);
    if key.family == FAMILY_V4 {
        s < 224 && d < 224
    } else {
        s != 0xff && d != 0xff
    }
}
