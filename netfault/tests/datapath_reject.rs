//! Reject's replies through BPF_PROG_TEST_RUN: crafted frames in, the reply's bytes out, every
//! field and checksum checked by recomputation here (the harness: tests/common/testrun.rs).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use common::testrun::{
    Dp, IN, OUT, TC_ACT_REDIRECT, TC_ACT_SHOT, TCX_NEXT, XDP_PASS, csum, frame, pseudo, v4, v6,
};
use netfault::spec::{Actions, Kind, Prob, RejectKind, RuleSpec, parse_net};
use netfault_common::Counters;

/// An egress drop: a redirect to ifindex 0 (see datapath.rs).
const EGRESS_LOST: u32 = TC_ACT_REDIRECT;
const CLONE_MARK: u32 = netfault_common::CLONE_MARK;

fn reject_rule(kind: RejectKind) -> RuleSpec {
    RuleSpec {
        src: vec![parse_net("192.0.2.0/24").unwrap()],
        act: Actions {
            reject: Some(kind),
            ..Actions::default()
        },
        ..RuleSpec::new("rej", Kind::Rule)
    }
}

/// The same rule for IPv6 sources.
fn reject_rule6(kind: RejectKind) -> RuleSpec {
    RuleSpec {
        src: vec![parse_net("2001:db8::/64").unwrap()],
        ..reject_rule(kind)
    }
}

// ---- frames ----

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

fn tcp(flags: u8, seq: u32, ack: u32, payload: usize) -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(&40000u16.to_be_bytes());
    t.extend_from_slice(&80u16.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&ack.to_be_bytes());
    // 24-byte header (one MSS option), so the reply's 20 bytes are not a copy of it.
    t.extend_from_slice(&[6 << 4, flags, 0xff, 0xff, 0xab, 0xcd, 0, 0]);
    t.extend_from_slice(&[2, 4, 0x05, 0xb4]);
    t.extend(std::iter::repeat_n(0x5a, payload));
    t
}

fn udp(payload: usize) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&5353u16.to_be_bytes());
    u.extend_from_slice(&4000u16.to_be_bytes());
    u.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    u.extend_from_slice(&[0x12, 0x34]);
    u.extend((0..payload).map(|i| i as u8));
    u
}

// ---- checks ----

/// The reply's transport part, after checking its Ethernet and IP headers against the
/// original `orig` (addresses swapped) and its transport checksum.
fn check_reply(orig: &[u8], reply: &[u8], proto: u8) -> Vec<u8> {
    assert_eq!(&reply[0..6], &orig[6..12], "destination MAC: the sender's");
    assert_eq!(
        &reply[6..12],
        &orig[0..6],
        "source MAC: the one it was sent to"
    );
    assert_eq!(&reply[12..14], &orig[12..14], "EtherType");
    let ip = &reply[14..];
    let (src, dst, l4) = if orig[12..14] == [0x08, 0x00] {
        assert_eq!(ip[0], 0x45, "IPv4 without options");
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        assert_eq!(total, ip.len(), "total length is the datagram's");
        assert_eq!(ip[9], proto);
        assert!(ip[8] > 0, "TTL");
        assert_eq!(csum(&ip[..20], 0), 0, "IPv4 header checksum");
        assert_eq!(
            &ip[12..16],
            &orig[30..34],
            "source: the original destination"
        );
        assert_eq!(
            &ip[16..20],
            &orig[26..30],
            "destination: the original source"
        );
        (&ip[12..16], &ip[16..20], &ip[20..])
    } else {
        assert_eq!(ip[0] >> 4, 6);
        let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
        assert_eq!(plen + 40, ip.len(), "payload length is the datagram's");
        assert_eq!(ip[6], proto);
        assert!(ip[7] > 0, "hop limit");
        assert_eq!(
            &ip[8..24],
            &orig[38..54],
            "source: the original destination"
        );
        assert_eq!(
            &ip[24..40],
            &orig[22..38],
            "destination: the original source"
        );
        (&ip[8..24], &ip[24..40], &ip[40..])
    };
    // ICMPv4's checksum has no pseudo-header; TCP's and ICMPv6's have.
    let seed = if proto == 1 {
        0
    } else {
        pseudo(src, dst, proto, l4.len())
    };
    assert_eq!(csum(l4, seed), 0, "transport checksum (protocol {proto})");
    l4.to_vec()
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

/// A segment sent: flags, seq, ack, payload length.
type Segment = (u8, u32, u32, usize);
/// The RST expected: flags, seq, ack.
type Reset = (u8, u32, u32);

/// A RST answers `flags/seq/ack/payload` as nf_send_reset does, at both tc hooks, both families.
#[test]
fn rst_numbers_are_the_kernels_for_syn_payload_fin_and_ack() {
    let mut dp = Dp::new();
    dp.set(&[
        reject_rule(RejectKind::TcpReset),
        reject_rule6(RejectKind::TcpReset),
    ]);
    // (flags, seq, ack, payload) -> (reply flags, reply seq, reply ack)
    let cases: [(Segment, Reset); 6] = [
        ((SYN, 1000, 0, 0), (RST | ACK, 0, 1001)),
        // Data on a SYN (TCP Fast Open) is acknowledged too.
        ((SYN, 1000, 0, 5), (RST | ACK, 0, 1006)),
        ((FIN, 7, 0, 10), (RST | ACK, 0, 18)),
        ((0, u32::MAX, 0, 3), (RST | ACK, 0, 2)),
        ((ACK, 5000, 7000, 100), (RST, 7000, 0)),
        ((FIN | ACK, 5000, 7000, 0), (RST, 7000, 0)),
    ];
    let mut sent = 0;
    for (src, dst) in [v4(), v6()] {
        for prog in [IN, OUT] {
            for ((flags, seq, ack, payload), (rf, rseq, rack)) in cases {
                let orig = frame(src, dst, 6, &tcp(flags, seq, ack, payload));
                let r = dp.tc(prog, &orig, 0);
                let what = format!("{prog} {src} flags {flags:#x} payload {payload}");
                assert_eq!(r.verdict, TC_ACT_REDIRECT, "{what}");
                assert_eq!(
                    r.mark, CLONE_MARK,
                    "{what}: replies pass netfault untouched"
                );
                let t = check_reply(&orig, &r.frame, 6);
                assert_eq!(t.len(), 20, "{what}: a bare header");
                assert_eq!(&t[0..2], &80u16.to_be_bytes(), "{what}: ports swapped");
                assert_eq!(&t[2..4], &40000u16.to_be_bytes(), "{what}");
                assert_eq!(be32(&t[4..]), rseq, "{what}: seq");
                assert_eq!(be32(&t[8..]), rack, "{what}: ack");
                assert_eq!(t[12], 5 << 4, "{what}: data offset");
                assert_eq!(t[13], rf, "{what}: flags");
                assert_eq!(&t[14..16], &[0, 0], "{what}: window");
                sent += 1;
            }
        }
    }
    let c = [dp.counters(0), dp.counters(1)];
    for c in c {
        assert_eq!(
            (c.matched, c.dropped, c.rejected, c.reject_limited, c.passed),
            (12, 12, 12, 0, 0),
            "{c:?}"
        );
    }
    assert_eq!(sent, 24);
}

/// Ethernet pads a short frame to 60 bytes: the acknowledged length is the IP header's, not
/// the frame's (the bug that made clients in SYN-SENT ignore Calico's RST).
#[test]
fn rst_to_a_padded_syn_acknowledges_the_syn_only() {
    let mut dp = Dp::new();
    dp.set(&[reject_rule(RejectKind::TcpReset)]);
    let (s, d) = v4();
    let mut orig = frame(s, d, 6, &tcp(SYN, 41, 0, 0));
    orig.extend_from_slice(&[0; 8]);
    let r = dp.tc(IN, &orig, 0);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let t = check_reply(&orig[..orig.len() - 8], &r.frame, 6);
    assert_eq!(be32(&t[8..]), 42);
}

/// UDP gets ICMP port unreachable quoting the whole (small) datagram; each kind gives its code,
/// for TCP too when an ICMP kind is asked for.
#[test]
fn icmp_unreachable_quotes_the_datagram_with_the_code_asked() {
    let mut dp = Dp::new();
    // (kind, v4 code, v6 code)
    let kinds = [
        (RejectKind::TcpReset, 3, 4),
        (RejectKind::IcmpPort, 3, 4),
        (RejectKind::IcmpHost, 1, 3),
        (RejectKind::IcmpAdmin, 13, 1),
    ];
    for (kind, c4, c6) in kinds {
        dp.set(&[reject_rule(kind), reject_rule6(kind)]);
        for (src, dst) in [v4(), v6()] {
            let is_v6 = src.is_ipv6();
            let (icmp, ty, code) = if is_v6 { (58, 1, c6) } else { (1, 3, c4) };
            let mut l4s = vec![(17u8, udp(30))];
            if kind != RejectKind::TcpReset {
                l4s.push((6, tcp(SYN, 9, 0, 0)));
            }
            for prog in [IN, OUT] {
                for (proto, l4) in &l4s {
                    let orig = frame(src, dst, *proto, l4);
                    let r = dp.tc(prog, &orig, 0);
                    let what = format!("{kind} {prog} {src} proto {proto}");
                    assert_eq!(r.verdict, TC_ACT_REDIRECT, "{what}");
                    let m = check_reply(&orig, &r.frame, icmp);
                    assert_eq!((m[0], m[1]), (ty, code), "{what}: type and code");
                    assert_eq!(&m[4..8], &[0; 4], "{what}: unused");
                    assert_eq!(&m[8..], &orig[14..], "{what}: the quote is the datagram");
                }
            }
        }
    }
}

/// An IPv6 quote stops where the reply would pass 1280 bytes (RFC 4443); an IPv4 one at 576.
#[test]
fn long_datagrams_are_quoted_up_to_the_minimum_mtu() {
    let mut dp = Dp::new();
    dp.set(&[
        reject_rule(RejectKind::IcmpPort),
        reject_rule6(RejectKind::IcmpPort),
    ]);
    for ((src, dst), icmp, cap) in [(v4(), 1, 576 - 28), (v6(), 58, 1280 - 48)] {
        for prog in [IN, OUT] {
            // Odd lengths: the checksum's padding byte is exercised.
            let orig = frame(src, dst, 17, &udp(1401));
            let r = dp.tc(prog, &orig, 0);
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "{prog} {src}");
            let m = check_reply(&orig, &r.frame, icmp);
            assert_eq!(m.len(), 8 + cap, "{prog} {src}");
            assert!(m[8..] == orig[14..14 + cap], "{prog} {src}: the quote");
        }
        // One byte short of the cap (odd): quoted whole.
        let ip = if src.is_ipv6() { 40 } else { 20 };
        let orig = frame(src, dst, 17, &udp(cap - 1 - ip - 8));
        let m = check_reply(&orig, &dp.tc(IN, &orig, 0).frame, icmp);
        assert!(m[8..] == orig[14..], "{src}: an odd-length datagram whole");
    }
}

/// ICMP errors and RSTs are dropped unanswered (and counted as drops only); an echo request
/// is answered.
#[test]
fn errors_and_resets_are_never_answered() {
    let mut dp = Dp::new();
    dp.set(&[
        reject_rule(RejectKind::TcpReset),
        reject_rule6(RejectKind::TcpReset),
    ]);
    let err4 = [3u8, 3, 0, 0, 0, 0, 0, 0, 0x45, 0, 0, 28];
    let err6 = [1u8, 4, 0, 0, 0, 0, 0, 0, 0x60, 0, 0, 0];
    let (s4, d4) = v4();
    let (s6, d6) = v6();
    let silent = [
        frame(s4, d4, 1, &err4),
        frame(s4, d4, 1, &[11, 0, 0, 0, 0, 0, 0, 0]),
        frame(s6, d6, 58, &err6),
        frame(s4, d4, 6, &tcp(RST, 1, 0, 0)),
        frame(s6, d6, 6, &tcp(RST | ACK, 1, 2, 0)),
    ];
    for (i, f) in silent.iter().enumerate() {
        assert_eq!(dp.tc(IN, f, 0).verdict, TC_ACT_SHOT, "case {i} at ingress");
        assert_eq!(dp.tc(OUT, f, 0).verdict, EGRESS_LOST, "case {i} at egress");
        assert_eq!(dp.tc(OUT, f, 0).mark, 0, "case {i}: nothing built");
    }
    let c = dp.counters(0);
    assert_eq!(
        (c.dropped, c.rejected, c.reject_limited),
        (9, 0, 0),
        "{c:?}"
    );
    let c = dp.counters(1);
    assert_eq!(
        (c.dropped, c.rejected, c.reject_limited),
        (6, 0, 0),
        "{c:?}"
    );
    let echo = frame(s4, d4, 1, &[8, 0, 0xf7, 0xff, 0, 0, 0, 0]);
    let r = dp.tc(IN, &echo, 0);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let m = check_reply(&echo, &r.frame, 1);
    assert_eq!((m[0], m[1]), (3, 3));
}

/// The burst is answered, the next packet is dropped and counted apart; exactly.
#[test]
fn reply_rate_allows_the_burst_and_not_one_more() {
    let mut dp = Dp::new();
    let mut r = reject_rule(RejectKind::TcpReset);
    // 1/s: the next reply falls due a second later, far beyond this test's few microseconds.
    r.act.reject_rate = Some("1/s,burst=5".parse().unwrap());
    dp.set(&[r]);
    let (s, d) = v4();
    let syn = frame(s, d, 6, &tcp(SYN, 1, 0, 0));
    for i in 0..5 {
        assert_eq!(dp.tc(IN, &syn, 0).verdict, TC_ACT_REDIRECT, "reply {i}");
    }
    assert_eq!(dp.tc(IN, &syn, 0).verdict, TC_ACT_SHOT, "the sixth");
    assert_eq!(dp.tc(OUT, &syn, 0).verdict, EGRESS_LOST, "the seventh");
    let c = dp.counters(0);
    assert_eq!(
        (c.matched, c.dropped, c.rejected, c.reject_limited),
        (7, 7, 5, 2),
        "{c:?}"
    );
}

/// With --drop, only the dropped share is answered; the rest passes.
#[test]
fn reject_answers_what_drop_drops() {
    let mut dp = Dp::new();
    let mut r = reject_rule(RejectKind::TcpReset);
    r.act.drop = Prob(0.5);
    dp.set(&[r]);
    let (s, d) = v4();
    let syn = frame(s, d, 6, &tcp(SYN, 1, 0, 0));
    let n = 400;
    for _ in 0..n {
        dp.tc(IN, &syn, 0);
    }
    let c = dp.counters(0);
    assert_eq!(c.matched, n);
    assert_eq!(c.rejected, c.dropped, "{c:?}");
    assert_eq!(c.dropped + c.passed, n, "{c:?}");
    // 400 draws at p = 0.5: 4.5 standard deviations is 155..245.
    assert!((155..=245).contains(&c.dropped), "{c:?}");
}

/// At egress a rule that draws (here a burst chain) meets wire packets: an aggregate is only
/// marked for the segmenting device, uncounted and unanswered; each segment that comes back
/// (still marked: the second run on the same skb) is drawn on and, when lost, answered with a
/// RST of its own.
#[test]
fn a_drawing_reject_rule_answers_segments_at_egress() {
    let mut dp = Dp::new();
    let mut r = reject_rule(RejectKind::TcpReset);
    (r.act.drop, r.act.burst) = (Prob(0.3), Some(3.0));
    r.validate().unwrap();
    dp.set(&[r]);
    let (s, d) = v4();
    let seg = frame(s, d, 6, &tcp(ACK, 100, 200, 1000));
    assert_eq!(
        dp.tc(OUT, &seg, 4).verdict,
        TCX_NEXT,
        "marked and passed on"
    );
    assert_eq!(
        dp.counters(0),
        Counters::default(),
        "nothing counted before segmenting"
    );
    let n = 400;
    let mut answered = 0;
    for _ in 0..n {
        let r = dp.tc_runs(OUT, &seg, 0, 2);
        if r.verdict == TC_ACT_REDIRECT {
            let t = check_reply(&seg, &r.frame, 6);
            assert_eq!((t[13], be32(&t[4..])), (RST, 200));
            answered += 1;
        } else {
            assert_eq!(r.verdict, TCX_NEXT);
        }
    }
    let c = dp.counters(0);
    assert_eq!(
        (c.matched, c.dropped, c.rejected, c.passed, c.reject_limited),
        (n, answered, answered, n - answered, 0),
        "{c:?}"
    );
    // Runs of 3 on average at 30 %: about 40 runs in 120 losses; far from none and from all.
    assert!((40..=240).contains(&answered), "{c:?}");
    assert!(c.bursts > 5 && c.bursts < answered, "{c:?}");
}

/// XDP leaves reject rules to tc (which can send a reply out of any device); a GSO skb at
/// egress gets one RST and is counted per wire packet.
#[test]
fn xdp_passes_reject_rules_and_a_gso_skb_gets_one_reset() {
    let mut dp = Dp::new();
    dp.set(&[reject_rule(RejectKind::TcpReset)]);
    let (s, d) = v4();
    let seg = frame(s, d, 6, &tcp(ACK, 100, 200, 1000));
    assert_eq!(dp.xdp(&seg), XDP_PASS);
    assert_eq!(dp.counters(0).matched, 0, "XDP counted nothing");
    let r = dp.tc(OUT, &seg, 4);
    assert_eq!(r.verdict, TC_ACT_REDIRECT);
    let t = check_reply(&seg, &r.frame, 6);
    assert_eq!((t[13], be32(&t[4..])), (RST, 200));
    let c = dp.counters(0);
    assert_eq!((c.matched, c.dropped, c.rejected), (4, 4, 4), "{c:?}");
    // Not matched: untouched.
    let other = frame("203.0.113.1".parse().unwrap(), d, 6, &tcp(SYN, 1, 0, 0));
    assert_eq!(dp.tc(IN, &other, 0).verdict, TCX_NEXT);
}

/// A partition with reject answers both ways; without it, it stays silent.
#[test]
fn a_rejecting_partition_answers_both_ways() {
    let mut dp = Dp::new();
    let mut p = RuleSpec {
        src: vec![parse_net("192.0.2.1/32").unwrap()],
        dst: vec![parse_net("198.51.100.2/32").unwrap()],
        ..RuleSpec::new("p", Kind::Partition)
    };
    p.act.reject = Some(RejectKind::TcpReset);
    dp.set(&[p.clone()]);
    let (s, d) = v4();
    for (a, b) in [(s, d), (d, s)] {
        let syn = frame(a, b, 6, &tcp(SYN, 1, 0, 0));
        for prog in [IN, OUT] {
            let r = dp.tc(prog, &syn, 0);
            assert_eq!(r.verdict, TC_ACT_REDIRECT, "{a} -> {b} {prog}");
            check_reply(&syn, &r.frame, 6);
        }
        assert_eq!(dp.xdp(&syn), XDP_PASS, "tc applies a rejecting partition");
    }
    p.act.reject = None;
    dp.set(&[p]);
    let syn = frame(s, d, 6, &tcp(SYN, 1, 0, 0));
    assert_eq!(dp.tc(OUT, &syn, 0).verdict, EGRESS_LOST);
    assert_eq!(dp.counters(0).rejected, 0);
}
