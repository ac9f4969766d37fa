//! Corruption through BPF_PROG_TEST_RUN: crafted frames in, the frame after the program out,
//! compared bit for bit with what went in and its transport checksum recomputed here
//! (the harness: tests/common/testrun.rs). A test
//! run's skb has CHECKSUM_NONE (the full checksum in the field); a checksum the device
//! completes later (CHECKSUM_PARTIAL) is tested end to end (tests/corrupt.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::net::IpAddr;

use common::testrun::{self, Dp, IN, OUT, Run, TCX_NEXT, XDP_PASS, csum, octets, pseudo, v4, v6};
use netfault::spec::{Actions, CorruptChecksum, Kind, Prob, RuleSpec, parse_net};
use netfault_common::RULE_CORRUPT;
use netfault_lab::lab::{Z_ALPHA_1E4, wilson_interval};

/// One packet through `prog`. At egress a corrupting rule first marks a packet for the
/// segmenting detour and acts when it comes back: two runs on one skb.
fn tc(dp: &Dp, prog: &str, pkt: &[u8]) -> Run {
    dp.tc_runs(prog, pkt, 0, if prog == OUT { 2 } else { 1 })
}

fn corrupt_rule(src: &str, p: f64, checksum: CorruptChecksum) -> RuleSpec {
    let r = RuleSpec {
        src: vec![parse_net(src).unwrap()],
        act: Actions {
            corrupt: Prob(p),
            corrupt_checksum: Some(checksum),
            ..Actions::default()
        },
        ..RuleSpec::new("cor", Kind::Rule)
    };
    if p > 0.0 {
        r.validate().unwrap();
    }
    r
}

// ---- frames ----

const UDP: u8 = 17;
const TCP: u8 = 6;
const ETH: usize = 14;

/// An Ethernet frame carrying `l4` (protocol `proto`) from `src` to `dst`, its transport
/// checksum computed (`zero_udp`: a UDP/IPv4 datagram without one), padded with `pad` bytes
/// after the datagram (as Ethernet pads short frames).
fn frame(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    mut l4: Vec<u8>,
    zero_udp: bool,
    pad: usize,
) -> Vec<u8> {
    let at = if proto == UDP { 6 } else { 16 };
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let c = csum(&l4, pseudo(&octets(src), &octets(dst), proto, l4.len()));
    let c = if proto == UDP && c == 0 { 0xffff } else { c };
    if !zero_udp {
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut f = testrun::frame(src, dst, proto, &l4);
    f.extend(std::iter::repeat_n(0xee, pad));
    f
}

/// A transport segment of `payload` bytes (a pattern, so a flip is never hidden by a repeat).
fn l4(proto: u8, payload: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&40000u16.to_be_bytes());
    t.extend_from_slice(&4000u16.to_be_bytes());
    if proto == UDP {
        t.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        t.extend_from_slice(&[0, 0]);
    } else {
        t.extend_from_slice(&7u32.to_be_bytes());
        t.extend_from_slice(&9u32.to_be_bytes());
        // A 24-byte header (one MSS option): the payload starts after the options.
        t.extend_from_slice(&[6 << 4, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
        t.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    }
    t.extend((0..payload).map(|i| (i * 7 + 3) as u8));
    t
}

/// Where `f`'s transport header starts and its datagram ends.
fn bounds(f: &[u8]) -> (usize, usize) {
    if f[12..14] == [0x08, 0x00] {
        (
            ETH + 20,
            ETH + usize::from(u16::from_be_bytes([f[16], f[17]])),
        )
    } else {
        (
            ETH + 40,
            ETH + 40 + usize::from(u16::from_be_bytes([f[18], f[19]])),
        )
    }
}

/// Does `f`'s transport checksum hold for its bytes?
fn checksum_holds(f: &[u8]) -> bool {
    let (l4, end) = bounds(f);
    let (src, dst) = if f[12..14] == [0x08, 0x00] {
        (&f[26..30], &f[30..34])
    } else {
        (&f[22..38], &f[38..54])
    };
    let proto = if f[12..14] == [0x08, 0x00] {
        f[23]
    } else {
        f[20]
    };
    csum(&f[l4..end], pseudo(src, dst, proto, end - l4)) == 0
}

fn checksum_field(f: &[u8], proto: u8) -> [u8; 2] {
    let (l4, _) = bounds(f);
    let at = l4 + if proto == UDP { 6 } else { 16 };
    [f[at], f[at + 1]]
}

/// The bits in which `a` and `b` differ (same length), as (byte, bit) positions.
fn diff_bits(a: &[u8], b: &[u8]) -> Vec<(usize, u32)> {
    assert_eq!(a.len(), b.len(), "the frame's length changed");
    let mut out = Vec::new();
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let d = x ^ y;
        for bit in 0..8 {
            if d & (1 << bit) != 0 {
                out.push((i, bit));
            }
        }
    }
    out
}

/// The one payload bit flipped, checked: nothing else differs but the checksum field, which is
/// unchanged (and so fails) for `bad` and right for `good`. Returns the flipped bit's position
/// in the payload (bits from its start).
fn check_flip(orig: &[u8], out: &[u8], proto: u8, mode: CorruptChecksum) -> usize {
    let (l4, end) = bounds(orig);
    let hlen = if proto == UDP {
        8
    } else {
        usize::from(orig[l4 + 12] >> 4) * 4
    };
    let csum_at = l4 + if proto == UDP { 6 } else { 16 };
    let diffs: Vec<_> = diff_bits(orig, out)
        .into_iter()
        .filter(|(i, _)| *i != csum_at && *i != csum_at + 1)
        .collect();
    assert_eq!(
        diffs.len(),
        1,
        "exactly one bit outside the checksum differs: {diffs:?}"
    );
    let (byte, bit) = diffs[0];
    assert!(
        (l4 + hlen..end).contains(&byte),
        "byte {byte} is not in the payload ({}..{end})",
        l4 + hlen
    );
    match mode {
        CorruptChecksum::Bad => {
            assert_eq!(
                checksum_field(out, proto),
                checksum_field(orig, proto),
                "bad: the checksum field is left as it was"
            );
            assert!(!checksum_holds(out), "bad: the checksum no longer holds");
        }
        CorruptChecksum::Good => assert!(checksum_holds(out), "good: the checksum holds"),
    }
    (byte - l4 - hlen) * 8 + (7 - bit as usize)
}

/// p = 1: every packet, both families, TCP and UDP, both checksum modes, at tc ingress and
/// egress (even and odd payload lengths, so both bytes of a checksum word are hit), gets exactly
/// one payload bit flipped and the checksum asked for; each is counted corrupted and passed.
#[test]
fn every_packet_gets_one_bit_flipped_and_the_checksum_asked_for() {
    let mut dp = Dp::new();
    for (fam, (s, d), net) in [("v4", v4(), "192.0.2.0/24"), ("v6", v6(), "2001:db8::/64")] {
        for mode in [CorruptChecksum::Bad, CorruptChecksum::Good] {
            dp.set(&[corrupt_rule(net, 1.0, mode)]);
            let mut n = 0;
            for proto in [UDP, TCP] {
                for payload in [1, 2, 37, 1000] {
                    let pkt = frame(s, d, proto, l4(proto, payload), false, 0);
                    assert!(checksum_holds(&pkt), "the test's own frame");
                    for prog in [IN, OUT] {
                        for _ in 0..8 {
                            let r = tc(&dp, prog, &pkt);
                            let at = format!("{fam} {proto} {mode} {prog} {payload}");
                            assert_eq!(r.verdict, TCX_NEXT, "{at}: passed on");
                            let bit = check_flip(&pkt, &r.frame, proto, mode);
                            assert!(bit < payload * 8, "{at}");
                            n += 1;
                        }
                    }
                }
            }
            let c = dp.counters(0);
            assert_eq!(
                (c.matched, c.passed, c.corrupted, c.dropped),
                (n, n, n, 0),
                "{fam} {mode}: {c:?}"
            );
        }
    }
}

/// The flipped bit is drawn over the whole payload: every bit of a 4-byte payload is hit in
/// 2,000 draws (a bit missed by a uniform draw: 32 x (31/32)^2000, about 1e-26), and a
/// 1400-byte payload has flips in its first and last 100 bytes (each about 1 - 1e-30).
#[test]
fn the_bit_is_drawn_over_the_whole_payload() {
    let mut dp = Dp::new();
    let (s, d) = v4();
    dp.set(&[corrupt_rule("192.0.2.0/24", 1.0, CorruptChecksum::Good)]);
    let pkt = frame(s, d, UDP, l4(UDP, 4), false, 0);
    let mut hit = [0u32; 32];
    for _ in 0..2_000 {
        let r = tc(&dp, IN, &pkt);
        hit[check_flip(&pkt, &r.frame, UDP, CorruptChecksum::Good)] += 1;
    }
    assert!(hit.iter().all(|&h| h > 0), "bits never hit: {hit:?}");
    let big = frame(s, d, TCP, l4(TCP, 1400), false, 0);
    let (mut first, mut last) = (0, 0);
    for _ in 0..500 {
        let r = tc(&dp, OUT, &big);
        let bit = check_flip(&big, &r.frame, TCP, CorruptChecksum::Good);
        first += u32::from(bit < 800);
        last += u32::from(bit >= 1300 * 8);
    }
    assert!(
        first > 0 && last > 0,
        "first 100 bytes {first}, last 100 {last}"
    );
}

/// Ethernet's pad after a short datagram is not payload: a 1-byte UDP payload in a padded
/// 60-byte frame has its one byte hit, never the pad (which no checksum covers).
#[test]
fn the_pad_of_a_short_frame_is_never_hit() {
    let mut dp = Dp::new();
    let (s, d) = v4();
    dp.set(&[corrupt_rule("192.0.2.0/24", 1.0, CorruptChecksum::Bad)]);
    let pkt = frame(s, d, UDP, l4(UDP, 1), false, 17);
    assert_eq!(pkt.len(), 60);
    for _ in 0..64 {
        let r = tc(&dp, IN, &pkt);
        assert!(check_flip(&pkt, &r.frame, UDP, CorruptChecksum::Bad) < 8);
    }
}

/// No payload, nothing to corrupt: a bare TCP segment and an empty UDP datagram pass unchanged
/// and are not counted corrupted. A UDP/IPv4 datagram without a checksum keeps none for `good`
/// (0 stays 0) and, for `bad`, has nothing to fail.
#[test]
fn packets_without_payload_are_untouched_and_a_missing_udp_checksum_stays_missing() {
    let mut dp = Dp::new();
    let (s, d) = v4();
    for mode in [CorruptChecksum::Bad, CorruptChecksum::Good] {
        dp.set(&[corrupt_rule("192.0.2.0/24", 1.0, mode)]);
        for proto in [UDP, TCP] {
            let pkt = frame(s, d, proto, l4(proto, 0), false, 0);
            for prog in [IN, OUT] {
                let r = tc(&dp, prog, &pkt);
                assert_eq!(
                    (r.verdict, &r.frame),
                    (TCX_NEXT, &pkt),
                    "{proto} {prog} {mode}"
                );
            }
        }
        let c = dp.counters(0);
        assert_eq!((c.matched, c.passed, c.corrupted), (4, 4, 0), "{c:?}");
        let none = frame(s, d, UDP, l4(UDP, 100), true, 0);
        let r = tc(&dp, OUT, &none);
        assert_eq!(
            diff_bits(&none, &r.frame).len(),
            1,
            "{mode}: one bit, nothing else"
        );
        assert_eq!(
            checksum_field(&r.frame, UDP),
            [0, 0],
            "{mode}: still no checksum"
        );
    }
}

/// p = 0 is exact: a rule value with the corrupt flag and a zero threshold never flips.
/// 0 < p < 1 flips a fraction within the Wilson interval (alpha 1e-4) of p.
#[test]
fn p0_never_flips_and_a_fraction_flips_within_its_interval() {
    let mut dp = Dp::new();
    let (s, d) = v6();
    let pkt = frame(s, d, UDP, l4(UDP, 64), false, 0);
    let rule = corrupt_rule("2001:db8::/64", 0.5, CorruptChecksum::Bad);
    dp.set_with(std::slice::from_ref(&rule), |_, v| {
        assert_ne!(v.flags & RULE_CORRUPT, 0);
        v.corrupt_thresh = 0;
    });
    for prog in [IN, OUT] {
        for _ in 0..500 {
            assert_eq!(tc(&dp, prog, &pkt).frame, pkt, "p = 0 flipped a bit");
        }
    }
    assert_eq!(dp.counters(0).corrupted, 0);
    let p = 0.3;
    dp.set(&[corrupt_rule("2001:db8::/64", p, CorruptChecksum::Good)]);
    let n = 20_000u64;
    let mut flipped = 0;
    for _ in 0..n {
        let r = tc(&dp, IN, &pkt);
        if r.frame != pkt {
            check_flip(&pkt, &r.frame, UDP, CorruptChecksum::Good);
            flipped += 1;
        }
    }
    let c = dp.counters(0);
    assert_eq!((c.matched, c.passed, c.corrupted), (n, n, flipped), "{c:?}");
    let (lo, hi) = wilson_interval(flipped, n, Z_ALPHA_1E4);
    assert!(
        lo <= p && p <= hi,
        "{flipped} of {n}: [{lo}, {hi}] misses {p}"
    );
}

/// XDP leaves corrupting rules to tc (which has the checksum helpers): it passes such a
/// packet uncounted, and tc ingress acts on it.
#[test]
fn xdp_passes_corrupting_rules_to_tc() {
    let mut dp = Dp::new();
    let (s, d) = v4();
    dp.set(&[corrupt_rule("192.0.2.0/24", 1.0, CorruptChecksum::Bad)]);
    let pkt = frame(s, d, TCP, l4(TCP, 10), false, 0);
    assert_eq!(dp.xdp(&pkt), XDP_PASS);
    assert_eq!(dp.counters(0).matched, 0, "XDP counted nothing");
    check_flip(&pkt, &tc(&dp, IN, &pkt).frame, TCP, CorruptChecksum::Bad);
    // Not matched: untouched.
    let other = frame(
        "203.0.113.1".parse().unwrap(),
        d,
        TCP,
        l4(TCP, 10),
        false,
        0,
    );
    assert_eq!(tc(&dp, IN, &other).frame, other);
    assert_eq!(dp.counters(0).corrupted, 1);
}
