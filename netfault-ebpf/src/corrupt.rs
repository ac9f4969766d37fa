//! Corruption: one random bit of a TCP or UDP payload flipped, with the transport checksum left
//! that of the undamaged packet (`CORRUPT_BAD`: the receiver's stack discards it) or made right
//! for the damaged bytes (`CORRUPT_GOOD`: the application receives them).
//!
//! Applied at tc only (`RULE_NEEDS_SKB`): the skb helpers reach every payload byte, paged data
//! included, so the bit is uniform over the whole payload (the datagram's length by its IP
//! header: an Ethernet pad is not payload), and `bpf_l4_csum_replace` knows the checksum's
//! offload state, which the program cannot read.
//!
//! The checksum field holds one of two things. Usually the full checksum (CHECKSUM_NONE, or a
//! received packet the device checked, CHECKSUM_UNNECESSARY or COMPLETE). On a packet sent with
//! checksum offload (CHECKSUM_PARTIAL: a NIC, or the stack for a device without the offload,
//! completes it after tc; a veth hands it on as it is) only the pseudo-header's sum, to which
//! the completion adds the sum of the bytes as they are then.
//! With δ the flip's change to the ones' complement sum of the data:
//! - good: `bpf_l4_csum_replace` without BPF_F_PSEUDO_HDR takes δ off a full checksum and
//!   leaves a partial one alone, which the completion then makes right by itself;
//! - bad: the same call with BPF_F_PSEUDO_HDR and the words swapped adds δ to a full checksum
//!   and takes it off a partial one (so the completion gives the undamaged packet's checksum);
//!   the plain call after it takes δ off again, which brings a full checksum back to what it
//!   was and leaves the partial one as it now is. Both end as the undamaged packet's.
//!
//! At ingress, a packet from a local sender (a veth peer) can still be CHECKSUM_PARTIAL, and the
//! receiving stack takes such a packet as checked whatever its field says: there `bad` drops
//! it instead (`Flip::Drop`), as the check would have. (At egress the controller turns the
//! device's transmit checksum offload off for a `bad` rule, control::features: the stack then
//! completes the checksum before the packet leaves, and the receiver checks it.)
//!
//! A received packet the device checked (CHECKSUM_UNNECESSARY) is set to CHECKSUM_NONE so that
//! the stack checks it again. For CHECKSUM_COMPLETE the helpers keep `skb->csum` such that the
//! stack's quick check fails for a damaged `bad` packet and it sums the bytes themselves.
//!
//! A UDP datagram over IPv4 sent without a checksum (0) has none to fail: `bad` then delivers the
//! damaged bytes, and `good` leaves it 0 (BPF_F_MARK_MANGLED_0 also keeps a computed 0 from being
//! written as "none").
use aya_ebpf::{
    EbpfContext,
    bindings::__sk_buff,
    helpers::{bpf_get_prandom_u32, generated::bpf_csum_level},
    programs::TcContext,
};
use netfault_common::{CORRUPT_GOOD, DIR_INGRESS, FAMILY_V4, FlowKey, KEY_PORTS, RuleValue};

use crate::parse;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// `bpf_l4_csum_replace` flags: the size of the values replaced, and ...
const CSUM_SIZE_2: u64 = 2;
/// ... that they belong to the pseudo-header (only the partial sum a completion starts from
/// changes, the other way round from a full checksum)...
const BPF_F_PSEUDO_HDR: u64 = 1 << 4;
/// ... and that a UDP checksum of 0 means none (left alone; a result of 0 is written 0xffff).
const BPF_F_MARK_MANGLED_0: u64 = 1 << 5;
/// BPF_CSUM_LEVEL_RESET: CHECKSUM_UNNECESSARY becomes CHECKSUM_NONE (the receiver checks).
const CSUM_LEVEL_RESET: u64 = 3;

/// What `flip` did.
pub enum Flip {
    /// One payload bit flipped, the checksum as asked.
    Done,
    /// `bad` at ingress on a packet whose checksum a local sender left to offload: the stack
    /// would take it unchecked, so it is to be dropped instead (counted as corrupted).
    Drop,
    /// Not touched: no payload, not TCP or UDP, or a helper refused.
    Untouched,
}

/// Flips one uniformly drawn bit of the transport payload of the packet `ctx` holds
/// (classified into `key`, its transport header at `l4`), the checksum as `rule.corrupt_mode`
/// says. A function of its own: its loads and the checksum steps take a small frame, not one
/// in `act`'s, whose call chain to reject's replies has little stack to spare.
#[inline(never)]
pub fn flip(ctx: &TcContext, key: &FlowKey, l4: usize, rule: &RuleValue) -> Flip {
    try_flip(ctx, key, l4, rule).unwrap_or(Flip::Untouched)
}

/// `a - b` in ones' complement arithmetic (mod 0xffff) of 16-bit values.
#[inline(always)]
fn minus(a: u32, b: u32) -> u32 {
    (a + 0xffff - b % 0xffff) % 0xffff
}

#[inline(always)]
fn try_flip(ctx: &TcContext, key: &FlowKey, l4: usize, rule: &RuleValue) -> Option<Flip> {
    // A later fragment (no KEY_PORTS) has no transport header to find the payload after.
    if l4 == 0 || key.flags & KEY_PORTS == 0 {
        return None;
    }
    let (_, l3) = parse::link(ctx.data(), ctx.data_end())?;
    let skb_len = ctx.len() as usize;
    // The datagram's end by its IP header (not the frame's: Ethernet pads short frames), at
    // most what the skb holds. A length of 0 (IPv4's total, or IPv6's payload with a jumbo
    // option) is a BIG TCP aggregate's: the skb's length is the datagram's.
    let (len_off, fixed) = if key.family == FAMILY_V4 {
        (l3 + 2, 0)
    } else {
        (l3 + 4, 40)
    };
    let total = usize::from(u16::from_be(ctx.load::<u16>(len_off).ok()?));
    let mut end = if total == 0 {
        skb_len
    } else {
        (l3 + fixed + total).min(skb_len)
    };
    let (hlen, csum_off, mangled_0) = match key.proto {
        IPPROTO_UDP => {
            let ulen = usize::from(u16::from_be(ctx.load::<u16>(l4 + 4).ok()?));
            // The checksum covers the UDP length's bytes.
            if ulen >= 8 && l4 + ulen < end {
                end = l4 + ulen;
            }
            (8, l4 + 6, BPF_F_MARK_MANGLED_0)
        }
        IPPROTO_TCP => {
            let doff = ctx.load::<u8>(l4 + 12).ok()?;
            (usize::from(doff >> 4) * 4, l4 + 16, 0)
        }
        _ => return None,
    };
    let start = l4 + hlen;
    if hlen < 8 || end <= start {
        return None;
    }
    // Bounded for the verifier (and far above any payload an skb carries).
    let bits = ((end - start) as u64 * 8) & 0x7_ffff_ffff;
    // SAFETY: helper without preconditions.
    let r = u64::from(unsafe { bpf_get_prandom_u32() });
    // Multiply and shift: uniform within 2^-32 of exact for any count of bits.
    let bit = (r * bits) >> 32;
    let off = start + (bit >> 3) as usize;
    let old: u8 = ctx.load(off).ok()?;
    let new = old ^ (1u8 << (bit & 7));
    // The byte's place in its 16-bit checksum word (words start at the transport header);
    // the other byte of the word is 0 in both values, so only the difference counts.
    let (from, to) = if (off - l4) & 1 == 0 {
        (u16::from_ne_bytes([old, 0]), u16::from_ne_bytes([new, 0]))
    } else {
        (u16::from_ne_bytes([0, old]), u16::from_ne_bytes([0, new]))
    };
    let (from, to) = (u64::from(from), u64::from(to));
    if key.dir == DIR_INGRESS {
        // SAFETY: the program's own context; a failure leaves the checksum state as it was.
        unsafe { bpf_csum_level(ctx.as_ptr() as *mut __sk_buff, CSUM_LEVEL_RESET) };
    }
    let size = CSUM_SIZE_2 | mangled_0;
    // No BPF_F_RECOMPUTE_CSUM on the store: skb->csum (CHECKSUM_COMPLETE) follows the checksum
    // calls alone (see the module's text).
    if rule.corrupt_mode == CORRUPT_GOOD {
        ctx.store(off, &new, 0).ok()?;
        ctx.l4_csum_replace(csum_off, from, to, size).ok()?;
        return Some(Flip::Done);
    }
    // The pseudo-header step first: what it did to the field tells a full checksum (+δ) from
    // a partial one (-δ).
    let before: u16 = ctx.load(csum_off).ok()?;
    ctx.l4_csum_replace(csum_off, to, from, size | BPF_F_PSEUDO_HDR)
        .ok()?;
    let after: u16 = ctx.load(csum_off).ok()?;
    let delta = minus(to as u32, from as u32);
    let moved = minus(u32::from(after), u32::from(before));
    if key.dir == DIR_INGRESS && moved != delta && moved == minus(0, delta) {
        // A local sender's offloaded checksum, which the receiving stack never checks: a
        // damaged packet would be delivered. Dropped instead, as the check would have.
        return Some(Flip::Drop);
    }
    ctx.store(off, &new, 0).ok()?;
    ctx.l4_csum_replace(csum_off, from, to, size).ok()?;
    Some(Flip::Done)
}
