//! Bounds-checked header parsing shared by the XDP and tc programs.
//!
//! Every read is checked against `end`. A frame whose addresses cannot be read (not IP, or cut
//! inside the fixed IP header) returns `None` and the caller passes it untouched; every other
//! one is classified, so a partition cuts every packet whose addresses it can read. Two steps:
//! the network header (`parse`), then, only when the prefilter left some rule that could match
//! it, the ports (`ports`). Transport ports are optional: a packet without them (a later
//! fragment, ICMP, a frame cut short, a malformed IPv4 header) is classified without
//! `KEY_PORTS`, which every port-matching tuple requires. An IPv6 packet whose extension
//! headers cannot be followed to their end (too many, too long, cut short) has neither ports
//! nor a protocol (`PROTO_UNKNOWN`).
use core::ptr::read_unaligned;

use netfault_common::{FAMILY_V4, FAMILY_V6, FlowKey, KEY_PORTS, KEY_TCP_SYN, PROTO_UNKNOWN};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// IPv6 extension headers we skip, at most this many.
const MAX_EXT_HDRS: usize = 6;
/// No header we parse lies beyond this offset; bounding it keeps the verifier's ranges small.
const MAX_L4_OFF: usize = 256;
/// The parser never reads past this many bytes of a frame (the widest read at the last offset
/// is TCP's flags byte, 13 bytes into its header): tc pulls this much into the linear part, so
/// it parses exactly what XDP does.
pub const REACH: usize = MAX_L4_OFF + TCP_FLAGS_OFF + 1;
/// TCP's flags byte in its header, and the bits of it `KEY_TCP_SYN` reads.
const TCP_FLAGS_OFF: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn load<T: Copy>(start: usize, end: usize, off: usize) -> Option<T> {
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds checked above; packet data has no alignment guarantee.
    Some(unsafe { read_unaligned((start + off) as *const T) })
}

/// A 2- or 4-byte field at any alignment, in one load. eBPF packet loads need no alignment
/// where the verifier does not enforce it (hosts with efficient unaligned access, x86 among
/// them), but LLVM's BPF backend splits an unaligned read into byte loads, shifts and ors (10
/// instructions for 4 bytes). Its `allows-misaligned-mem-access` feature would also merge stack
/// stores into unaligned ones, which every verifier refuses, so the load is written out here.
macro_rules! load_word {
    ($name:ident, $t:ty, $insn:literal) => {
        #[inline(always)]
        fn $name(start: usize, end: usize, off: usize) -> Option<$t> {
            let p = start + off;
            if p + core::mem::size_of::<$t>() > end {
                return None;
            }
            let v: u64;
            // SAFETY: bounds checked above; the instruction reads only those bytes.
            unsafe {
                core::arch::asm!($insn, v = out(reg) v, p = in(reg) p,
                    options(pure, readonly, nostack, preserves_flags));
            }
            Some(v as $t)
        }
    };
}
load_word!(load_u16, u16, "{v} = *(u16 *)({p} + 0)");
load_word!(load_u32, u32, "{v} = *(u32 *)({p} + 0)");

#[inline(always)]
fn load_be16(start: usize, end: usize, off: usize) -> Option<u16> {
    load_u16(start, end, off).map(u16::from_be)
}

/// How many bytes of the frame at `start..end` (its linear part, for an skb) the parser will
/// read, through the ports and TCP's flags: from the EtherType, the IPv4 header length or the IPv6 next header,
/// and `REACH` where those are not there or extension headers follow. 0 for a frame it does not
/// parse.
#[inline(always)]
pub fn reach(start: usize, end: usize) -> usize {
    let Some((ethertype, l3)) = link(start, end) else {
        return REACH;
    };
    match ethertype {
        ETH_P_IP => match load::<u8>(start, end, l3) {
            // A header length below 5 words still has its fixed 20 bytes read.
            Some(ver_ihl) => l3 + usize::from(ver_ihl & 0x0f).max(5) * 4 + TCP_FLAGS_OFF + 1,
            None => REACH,
        },
        ETH_P_IPV6 => match load::<u8>(start, end, l3 + 6) {
            Some(IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) => l3 + 40 + TCP_FLAGS_OFF + 1,
            _ => REACH,
        },
        _ => 0,
    }
}

/// The EtherType after the Ethernet header and its VLAN tags, and the network header's offset:
/// no tag, one (802.1Q or 802.1ad), or two (QinQ: an 802.1ad or 802.1Q outer tag, then an
/// 802.1Q inner one). None when the frame ends first (a tagged frame shorter than two tags
/// holds no IP header).
///
/// An untagged frame takes one branch, as before QinQ. One tag or two are told apart without
/// a branch: the verifier then walks what follows once for tagged frames, with the offset a
/// range, where a branch per tag count had it walk the whole parse and classification once
/// more (on 6.18, tc ingress's verification took more than twice the instructions).
#[inline(always)]
pub fn link(start: usize, end: usize) -> Option<(u16, usize)> {
    let outer = load_be16(start, end, 12)?;
    if outer != ETH_P_8021Q && outer != ETH_P_8021AD {
        return Some((outer, ETH_HLEN));
    }
    if start + ETH_HLEN + 8 > end {
        return None;
    }
    let second = u64::from(load_u16(start, end, ETH_HLEN + 2)?);
    let third = u64::from(load_u16(start, end, ETH_HLEN + 6)?);
    let qinq = eq(second, u64::from(ETH_P_8021Q.to_be()));
    let ethertype = second ^ ((second ^ third) & qinq.wrapping_neg());
    let l3 = ETH_HLEN + 4 + (qinq as usize) * 4;
    Some((u16::from_be(ethertype as u16), l3))
}

/// 1 when `a == b`, else 0, for values below 2^63, in ALU instructions the compiler cannot
/// turn into a branch.
#[inline(always)]
fn eq(a: u64, b: u64) -> u64 {
    let r: u64;
    // SAFETY: register arithmetic only.
    unsafe {
        core::arch::asm!("{r} = {a}", "{r} ^= {b}", "{r} -= 1", "{r} >>= 63",
            r = out(reg) r, a = in(reg) a, b = in(reg) b,
            options(pure, nomem, nostack, preserves_flags));
    }
    r
}

/// Fills `key`'s family, address and protocol fields from an Ethernet frame at `start..end`.
/// Returns the transport header's offset in the frame (0 when there is none, as in a later
/// fragment).
#[inline(always)]
pub fn parse(start: usize, end: usize, key: &mut FlowKey) -> Option<usize> {
    let (ethertype, l3) = link(start, end)?;
    match ethertype {
        ETH_P_IP => parse_v4(start, end, l3, key),
        ETH_P_IPV6 => parse_v6(start, end, l3, key),
        _ => None,
    }
}

/// [`parse`] for a packet that starts at its network header (a cgroup program's view), of
/// the EtherType `ethertype`.
#[inline(always)]
pub fn parse_l3(start: usize, end: usize, ethertype: u16, key: &mut FlowKey) -> Option<usize> {
    match ethertype {
        ETH_P_IP => parse_v4(start, end, 0, key),
        ETH_P_IPV6 => parse_v6(start, end, 0, key),
        _ => None,
    }
}

#[inline(always)]
fn parse_v4(start: usize, end: usize, l3: usize, key: &mut FlowKey) -> Option<usize> {
    // Fixed part first, with a constant size: the verifier then knows every field below is in
    // bounds (a check with the variable header length alone does not tell it that).
    if start + l3 + 20 > end {
        return None;
    }
    let ver_ihl: u8 = load(start, end, l3)?;
    if ver_ihl >> 4 != 4 {
        return None;
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    let frag = load_be16(start, end, l3 + 6)?;
    key.proto = load(start, end, l3 + 9)?;
    key.src[0] = load_u32(start, end, l3 + 12)?;
    key.dst[0] = load_u32(start, end, l3 + 16)?;
    key.family = FAMILY_V4;
    // A header length below the fixed part's, or a frame cut inside the options: malformed,
    // but its addresses are read; no ports.
    if ihl < 20 || start + l3 + ihl > end {
        return Some(0);
    }
    if frag & 0x1fff != 0 {
        // A later fragment has no L4 header: it matches rules without port fields only.
        return Some(0);
    }
    Some(l3 + ihl)
}

#[inline(always)]
fn parse_v6(start: usize, end: usize, l3: usize, key: &mut FlowKey) -> Option<usize> {
    if start + l3 + 40 > end {
        return None;
    }
    let ver: u8 = load(start, end, l3)?;
    if ver >> 4 != 6 {
        return None;
    }
    let mut next: u8 = load(start, end, l3 + 6)?;
    for i in 0..4 {
        key.src[i] = load_u32(start, end, l3 + 8 + 4 * i)?;
        key.dst[i] = load_u32(start, end, l3 + 24 + 4 * i)?;
    }
    key.family = FAMILY_V6;
    let mut off = l3 + 40;
    // Where the chain cannot be followed (a header cut short, or past the parser's reach), the
    // packet is classified on what is known: its addresses (`unknown`).
    for _ in 0..MAX_EXT_HDRS {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-octet units, not counting the first.
            // (Each header is read with one load, so one bounds check covers all its bytes.)
            0 | 43 | 60 => {
                let Some(h) = load::<[u8; 2]>(start, end, off) else {
                    return unknown(key);
                };
                next = h[0];
                off += (h[1] as usize + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                // All 8 bytes, as every header must be whole.
                let Some(h) = load::<[u8; 8]>(start, end, off) else {
                    return unknown(key);
                };
                let frag_off = u16::from_be_bytes([h[2], h[3]]) & 0xfff8;
                next = h[0];
                off += 8;
                if frag_off != 0 {
                    key.proto = next;
                    return Some(0);
                }
            }
            // Authentication header: length in 4-octet units, not counting the first two.
            51 => {
                let Some(h) = load::<[u8; 2]>(start, end, off) else {
                    return unknown(key);
                };
                next = h[0];
                off += (h[1] as usize + 2) * 4;
            }
            // The upper-layer header: the common path (no extension header) ends here at once.
            _ => {
                key.proto = next;
                return Some(off);
            }
        }
        // Every extension header must be there whole.
        if off > MAX_L4_OFF || start + off > end {
            return unknown(key);
        }
    }
    // MAX_EXT_HDRS headers skipped: the protocol is the next header unless that is one more
    // extension header.
    if matches!(next, 0 | 43 | 44 | 51 | 60) {
        return unknown(key);
    }
    key.proto = next;
    Some(off)
}

/// An IPv6 packet whose extension headers cannot be followed to their end: no protocol, no ports.
#[inline(always)]
fn unknown(key: &mut FlowKey) -> Option<usize> {
    key.proto = PROTO_UNKNOWN;
    Some(0)
}

/// Fills `key`'s ports, and sets `KEY_PORTS`, when the packet has them: TCP, UDP or SCTP with
/// the transport header at `l4` (0: none, as in a later fragment). Ports cut off (a truncated
/// frame) leave the packet without ports, matching only rules without them.
#[inline(always)]
pub fn ports(start: usize, end: usize, l4: usize, key: &mut FlowKey) {
    if l4 == 0 || l4 > MAX_L4_OFF {
        return;
    }
    if matches!(key.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP)
        && let Some(p) = load_u32(start, end, l4)
    {
        // The two ports, in network order, read as one little-endian word.
        key.sport = u16::from_be(p as u16);
        key.dport = u16::from_be((p >> 16) as u16);
        key.flags = KEY_PORTS;
        // A connection's first segment (SYN without ACK), for rules with `--conn`. One load
        // and no branch beyond the bounds check; a segment cut before its flags counts as
        // established.
        if key.proto == IPPROTO_TCP
            && let Some(f) = load::<u8>(start, end, l4 + TCP_FLAGS_OFF)
        {
            key.flags |= u8::from(f & (TCP_SYN | TCP_ACK) == TCP_SYN) * KEY_TCP_SYN;
        }
    }
}
