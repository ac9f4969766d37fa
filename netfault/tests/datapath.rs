//! Data-path tests through BPF_PROG_TEST_RUN: crafted frames, no traffic.
//!
//! Each test loads its own copy of the programs with maps pinned in a private bpffs directory,
//! inside a private network namespace (so a clone the program makes goes nowhere); its lab
//! removes both when it ends, also when it fails.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{net::IpAddr, sync::atomic::Ordering};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use common::{Lab, PREFIX};
use netfault::{
    compile::{Input, compile, rule_value},
    dataplane::{self as kernel, Maps},
    spec::{
        Actions, BurstScope, Conn, Direction, GeModel, Kind, PortRange, Prob, Proto, RuleSpec,
        parse_net,
    },
};
use netfault_common::{Counters, FlowKey, FlowKey4};
use netfault_lab::burst as runs;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
const TCX_NEXT: u32 = u32::MAX; // TC_ACT_UNSPEC (-1)

/// A loaded data path in its own namespace and pin directory (the lab's, dropped last).
struct Dp {
    ebpf: Ebpf,
    maps: Maps,
    _lab: Lab,
}

impl Dp {
    /// Must run on the test's own thread: it moves that thread into the lab's namespace.
    fn new() -> Dp {
        let mut lab = Lab::new(PREFIX).expect("lab");
        let ns = lab.netns("dp").expect("netns");
        lab.enter(&ns).expect("enter the namespace");
        let pins = lab.pin_dir("dp").expect("pin directory");
        let mut ebpf = kernel::load(&pins).unwrap();
        let maps = Maps::take(&mut ebpf).unwrap();
        for name in ["nf_xdp_ingress", "nf_tc_egress", "nf_tc_ingress"] {
            let p = ebpf.program_mut(name).unwrap();
            match p {
                aya::programs::Program::Xdp(x) => x.load().unwrap(),
                aya::programs::Program::SchedClassifier(c) => c.load().unwrap(),
                _ => unreachable!(),
            }
        }
        Dp {
            ebpf,
            maps,
            _lab: lab,
        }
    }

    /// Publishes `rules` (slot = index) with fresh counters.
    fn set(&mut self, rules: &[RuleSpec]) {
        for i in 0..rules.len() as u32 {
            self.maps.reset_counters(i).unwrap();
        }
        self.publish_at(rules, 0);
    }

    fn publish_at(&mut self, rules: &[RuleSpec], first: u32) {
        publish_at(&mut self.maps, rules, first);
    }

    /// The flow maps' entries of generation `g`: (IPv6 map, IPv4 map), sorted, tags as stored.
    fn flows_of(&self, g: u8) -> (Vec<String>, Vec<String>) {
        (
            entries(self.maps.flows.iter().map(|r| r.unwrap()), |k| k.gen_ == g),
            entries(self.maps.flows4.iter().map(|r| r.unwrap()), |k| k.gen_ == g),
        )
    }

    fn xdp(&self, pkt: &[u8], repeat: u32) -> u32 {
        let p: &Xdp = self
            .ebpf
            .program("nf_xdp_ingress")
            .unwrap()
            .try_into()
            .unwrap();
        p.test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..Default::default()
        })
        .unwrap()
        .return_value
    }

    fn tc(&self, prog: &str, pkt: &[u8], repeat: u32) -> u32 {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        p.test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..Default::default()
        })
        .unwrap()
        .return_value
    }

    fn counters(&self, slot: u32) -> Counters {
        self.maps.counters(slot).unwrap()
    }

    /// One run of a tc program with an `__sk_buff` context: returns the verdict, the `tstamp`
    /// it left, and the monotonic clock just before and just after the run.
    fn tc_stamp(&self, prog: &str, pkt: &[u8], gso_segs: u32) -> (u32, u64, u64, u64) {
        let p: &SchedClassifier = self.ebpf.program(prog).unwrap().try_into().unwrap();
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_IFINDEX..SKB_IFINDEX + 4].copy_from_slice(&1u32.to_ne_bytes());
        ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
        let mut out = [0u8; SKB_CTX_LEN];
        let before = precise_ns();
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                ctx_in: Some(&ctx),
                ctx_out: Some(&mut out),
                ..Default::default()
            })
            .unwrap()
            .return_value;
        let after = precise_ns();
        let ts = u64::from_ne_bytes(out[SKB_TSTAMP..SKB_TSTAMP + 8].try_into().unwrap());
        (r, ts, before, after)
    }
}

/// CLOCK_MONOTONIC, the clock departure times are stamped on (fq compares them with it).
fn precise_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `struct __sk_buff`: its size and the offsets of the fields BPF_PROG_TEST_RUN lets a test set
/// or read (uapi/linux/bpf.h).
const SKB_CTX_LEN: usize = 192;
const SKB_IFINDEX: usize = 40;
const SKB_TSTAMP: usize = 152;
const SKB_GSO_SEGS: usize = 164;
const TC_ACT_REDIRECT: u32 = 7;
/// An injected drop at tc egress: a redirect to ifindex 0, which the kernel frees and reports
/// to the sender's stack as sent, as a packet lost on the wire (not TC_ACT_SHOT, which the
/// stack sees as a local drop and resends at once).
const EGRESS_LOST: u32 = TC_ACT_REDIRECT;

/// Publishes `rules` in slots `first..`, counters untouched; returns what it compiled to.
fn publish_at(maps: &mut Maps, rules: &[RuleSpec], first: u32) -> netfault::compile::Compiled {
    let inputs: Vec<Input<'_>> = rules
        .iter()
        .enumerate()
        .map(|(i, s)| Input {
            slot: first + i as u32,
            spec: s,
            ifindex: s.iface.as_deref().and_then(kernel::ifindex),
        })
        .collect();
    let c = compile(&inputs).unwrap();
    let values: Vec<_> = rules
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // A hold starts now, as a rule's install starts it (control::pipeline::hold_end).
            let hold = s.act.hold.map_or(0, |h| precise_ns() + h.as_nanos() as u64);
            (first + i as u32, rule_value(s, 0, hold))
        })
        .collect();
    maps.publish_set(&c, &values).unwrap();
    c
}

/// A rule that drops everything it matches; tests narrow it.
fn rule(name: &str) -> RuleSpec {
    RuleSpec {
        act: Actions::drops(Prob(1.0)),
        ..RuleSpec::new(name, Kind::Rule)
    }
}

fn net(s: &str) -> ipnet::IpNet {
    parse_net(s).unwrap()
}

// ---- frame builder ----

struct Frame {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    vlan: bool,
    ipv4_options: usize,
    v6_ext: bool,
}

fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Frame {
    Frame {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: 17,
        sport,
        dport,
        vlan: false,
        ipv4_options: 0,
        v6_ext: false,
    }
}

impl Frame {
    fn proto(mut self, p: u8) -> Self {
        self.proto = p;
        self
    }
    fn vlan(mut self) -> Self {
        self.vlan = true;
        self
    }
    fn options(mut self, words: usize) -> Self {
        self.ipv4_options = words;
        self
    }
    fn v6_ext(mut self) -> Self {
        self.v6_ext = true;
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        if self.vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
        }
        let l4 = {
            let mut l4 = Vec::new();
            l4.extend_from_slice(&self.sport.to_be_bytes());
            l4.extend_from_slice(&self.dport.to_be_bytes());
            l4.extend_from_slice(&[0, 8 + 8, 0, 0]); // UDP-ish length/csum, or TCP seq bytes
            l4.extend_from_slice(&[0u8; 12]);
            l4
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let ihl = 5 + self.ipv4_options;
                let total = (ihl * 4 + l4.len()) as u16;
                f.push(0x40 | ihl as u8);
                f.push(0);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 1, 0, 0, 64, self.proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend(std::iter::repeat_n(1u8, self.ipv4_options * 4)); // NOP options
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let ext = if self.v6_ext { 8 } else { 0 };
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&((l4.len() + ext) as u16).to_be_bytes());
                f.push(if self.v6_ext { 60 } else { self.proto });
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                if self.v6_ext {
                    // Destination options: next header, length 0 (8 bytes), PadN.
                    f.extend_from_slice(&[self.proto, 0, 1, 4, 0, 0, 0, 0]);
                }
            }
            _ => panic!("mixed families"),
        }
        f.extend_from_slice(&l4);
        f
    }
}

fn wilson(successes: u64, n: u64, z: f64) -> (f64, f64) {
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = z * z;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = z * ((p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt()) / denom;
    (centre - half, centre + half)
}

// ---- tests ----

#[test]
fn no_rules_passes_everything() {
    let mut dp = Dp::new();
    dp.set(&[]);
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    assert_eq!(dp.xdp(&f, 1), XDP_PASS);
    assert_eq!(dp.tc("nf_tc_egress", &f, 1), TCX_NEXT);
}

#[test]
fn each_match_field() {
    let mut dp = Dp::new();
    let hit = udp("192.0.2.1", "198.51.100.2", 1000, 53);
    // (rule, packet that must match, packet that must not)
    let mut cases: Vec<(RuleSpec, Frame, Frame)> = Vec::new();
    let mut r = rule("src");
    r.src = vec![net("192.0.2.0/24")];
    cases.push((
        r,
        udp("192.0.2.9", "203.0.113.1", 1, 2),
        udp("192.0.3.9", "203.0.113.1", 1, 2),
    ));
    let mut r = rule("dst");
    r.dst = vec![net("198.51.100.0/25")];
    cases.push((
        r,
        udp("192.0.2.1", "198.51.100.127", 1, 2),
        udp("192.0.2.1", "198.51.100.128", 1, 2),
    ));
    let mut r = rule("proto");
    r.proto = Proto::Tcp;
    cases.push((
        r,
        udp("192.0.2.1", "192.0.2.2", 1, 2).proto(6),
        udp("192.0.2.1", "192.0.2.2", 1, 2),
    ));
    let mut r = rule("icmp");
    r.proto = Proto::Icmp;
    cases.push((
        r,
        udp("192.0.2.1", "192.0.2.2", 0, 0).proto(1),
        udp("192.0.2.1", "192.0.2.2", 1, 2).proto(6),
    ));
    let mut r = rule("sport");
    r.proto = Proto::Udp;
    r.sport = PortRange { lo: 1000, hi: 1999 };
    cases.push((
        r,
        udp("192.0.2.1", "192.0.2.2", 1999, 2),
        udp("192.0.2.1", "192.0.2.2", 2000, 2),
    ));
    let mut r = rule("dport");
    r.proto = Proto::Udp;
    r.dport = PortRange { lo: 53, hi: 53 };
    cases.push((
        r,
        udp("192.0.2.1", "192.0.2.2", 9, 53),
        udp("192.0.2.1", "192.0.2.2", 9, 54),
    ));
    let mut r = rule("iface");
    r.iface = Some("lo".into()); // test runs see the namespace's loopback as the device
    cases.push((
        r,
        udp("192.0.2.1", "192.0.2.2", 9, 53),
        udp("192.0.2.1", "192.0.2.2", 9, 53),
    ));
    for (r, yes, no) in cases {
        let name = r.name.clone();
        let iface_case = r.iface.is_some();
        dp.set(&[r]);
        assert_eq!(dp.xdp(&yes.bytes(), 1), XDP_DROP, "{name}: should match");
        if !iface_case {
            assert_eq!(dp.xdp(&no.bytes(), 1), XDP_PASS, "{name}: should not match");
        }
    }
    // iface that is not the packet's: a second rule bound to an interface that does not exist
    // compiles to nothing.
    let mut r = rule("other-iface");
    r.iface = Some("nf-no-such0".into());
    dp.set(&[r]);
    assert_eq!(dp.xdp(&hit.bytes(), 1), XDP_PASS);
}

#[test]
fn direction_selects_program() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = rule("in");
    r.dir = Direction::Ingress;
    dp.set(&[r]);
    assert_eq!(dp.xdp(&f, 1), XDP_DROP);
    assert_eq!(dp.tc("nf_tc_egress", &f, 1), TCX_NEXT);
    let mut r = rule("out");
    r.dir = Direction::Egress;
    dp.set(&[r]);
    assert_eq!(dp.xdp(&f, 1), XDP_PASS);
    assert_eq!(dp.tc("nf_tc_egress", &f, 1), EGRESS_LOST);
}

#[test]
fn first_match_wins() {
    let mut dp = Dp::new();
    let mut pass_all = rule("dup-never");
    pass_all.src = vec![net("192.0.2.7")];
    pass_all.act.drop = Prob(0.0);
    pass_all.act.duplicate = Prob(0.0); // matches and counts, acts on nothing
    let mut drop_net = rule("drop-net");
    drop_net.src = vec![net("192.0.2.0/24")];
    dp.set(&[pass_all.clone(), drop_net.clone()]);
    assert_eq!(
        dp.xdp(&udp("192.0.2.7", "192.0.2.2", 1, 2).bytes(), 1),
        XDP_PASS
    );
    assert_eq!(
        dp.xdp(&udp("192.0.2.8", "192.0.2.2", 1, 2).bytes(), 1),
        XDP_DROP
    );
    assert_eq!(dp.counters(0).matched, 1);
    assert_eq!(dp.counters(1).matched, 1);
    // Reversed order: the /24 comes first and takes both.
    dp.set(&[drop_net, pass_all]);
    assert_eq!(
        dp.xdp(&udp("192.0.2.7", "192.0.2.2", 1, 2).bytes(), 1),
        XDP_DROP
    );
    assert_eq!(dp.counters(0).matched, 1);
    assert_eq!(dp.counters(1).matched, 0);
}

/// A change waits for its grace period after its flip, so the next change rewrites the retired
/// generation at once and is on the wire without waiting; only after a change that ended
/// between its flip and its grace (killed) does the next one wait first.
#[test]
fn a_change_settles_the_retired_generation_after_its_flip() {
    let mut dp = Dp::new();
    let mut a = rule("drop-a");
    a.src = vec![net("192.0.2.7")];
    let mut b = rule("drop-b");
    b.src = vec![net("192.0.2.8")];
    let (pa, pb) = (
        udp("192.0.2.7", "192.0.2.2", 1, 2).bytes(),
        udp("192.0.2.8", "192.0.2.2", 1, 2).bytes(),
    );
    for set in [vec![a.clone()], vec![b.clone()], vec![a.clone(), b.clone()]] {
        dp.set(&set);
        assert_eq!(dp.maps.config().unwrap().unsettled, 0, "left unsettled");
    }
    assert_eq!(
        dp.maps.waits_before_flip(),
        0,
        "a change after a settled one waited before its flip"
    );
    assert_eq!(dp.xdp(&pa, 1), XDP_DROP);
    assert_eq!(dp.xdp(&pb, 1), XDP_DROP);
    // As if the last change had been killed between its flip and its grace period.
    let mut cfg = dp.maps.config().unwrap();
    cfg.unsettled = 1;
    dp.maps.config.set(0, &cfg, 0).unwrap();
    // A set the retired generation does not hold yet (it holds [b], which would not be rewritten).
    let mut c = rule("drop-c");
    c.src = vec![net("192.0.2.9")];
    dp.set(&[b, c]);
    assert_eq!(
        dp.maps.waits_before_flip(),
        1,
        "an unsettled generation was rewritten at once"
    );
    assert_eq!(dp.maps.config().unwrap().unsettled, 0);
    assert_eq!(dp.xdp(&pa, 1), XDP_PASS);
    assert_eq!(dp.xdp(&pb, 1), XDP_DROP);
}

#[test]
fn v4_v6_vlan_options_and_extension_headers() {
    let mut dp = Dp::new();
    let mut r4 = rule("v4");
    r4.src = vec![net("192.0.2.0/24")];
    r4.proto = Proto::Udp;
    r4.dport = PortRange { lo: 53, hi: 53 };
    let mut r6 = rule("v6");
    r6.src = vec![net("2001:db8::/32")];
    r6.proto = Proto::Udp;
    r6.dport = PortRange { lo: 53, hi: 53 };
    dp.set(&[r4, r6]);
    let v4 = udp("192.0.2.1", "198.51.100.1", 9, 53);
    assert_eq!(dp.xdp(&v4.bytes(), 1), XDP_DROP);
    assert_eq!(
        dp.xdp(&udp("192.0.2.1", "198.51.100.1", 9, 53).vlan().bytes(), 1),
        XDP_DROP
    );
    assert_eq!(
        dp.xdp(
            &udp("192.0.2.1", "198.51.100.1", 9, 53).options(3).bytes(),
            1
        ),
        XDP_DROP
    );
    assert_eq!(
        dp.xdp(
            &udp("192.0.2.1", "198.51.100.1", 9, 54).options(10).bytes(),
            1
        ),
        XDP_PASS
    );
    let v6 = udp("2001:db8::1", "2001:db8::2", 9, 53);
    assert_eq!(dp.xdp(&v6.bytes(), 1), XDP_DROP);
    assert_eq!(
        dp.xdp(&udp("2001:db8::1", "2001:db8::2", 9, 53).vlan().bytes(), 1),
        XDP_DROP
    );
    assert_eq!(
        dp.xdp(
            &udp("2001:db8::1", "2001:db8::2", 9, 53).v6_ext().bytes(),
            1
        ),
        XDP_DROP
    );
    assert_eq!(
        dp.xdp(&udp("2001:db9::1", "2001:db8::2", 9, 53).bytes(), 1),
        XDP_PASS
    );
    assert_eq!(dp.counters(0).matched, 3);
    assert_eq!(dp.counters(1).matched, 3);
}

/// A frame whose addresses cannot be read passes untouched; one whose addresses can is
/// classified on them, without ports where it is cut short or malformed.
#[test]
fn truncated_and_malformed_frames() {
    let mut dp = Dp::new();
    let mut port = rule("port");
    port.proto = Proto::Udp;
    port.dport = PortRange { lo: 0, hi: 2 };
    let mut r = rule("all");
    r.src = vec![net("0.0.0.0/0")];
    let mut r6 = rule("all6");
    r6.src = vec![net("::/0")];
    dp.set(&[port, r, r6]);
    let good = udp("192.0.2.1", "192.0.2.2", 1, 2);
    let full = good.bytes();
    assert_eq!(
        dp.xdp(&full, 1),
        XDP_DROP,
        "control: the whole frame matches"
    );
    assert_eq!(dp.counters(0).matched, 1);
    // Every truncation of a UDP frame before the end of its IP header passes untouched.
    for len in [14usize, 20, 33] {
        assert_eq!(dp.xdp(&full[..len], 1), XDP_PASS, "truncated to {len}");
    }
    // Cut inside its ports, it has none: only rules without ports match it.
    for len in [34usize, 35, 37] {
        assert_eq!(dp.xdp(&full[..len], 1), XDP_DROP, "truncated to {len}");
    }
    assert_eq!(dp.counters(0).matched, 1);
    assert_eq!(dp.counters(1).matched, 3);
    // Malformed or cut inside its options, the header still gives the addresses: no ports.
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x43; // IHL 3 < 5
    assert_eq!(dp.xdp(&bad_ihl, 1), XDP_DROP);
    let mut long_ihl = full.clone();
    long_ihl[14] = 0x4f; // 60-byte header, frame too short for it
    assert_eq!(dp.xdp(&long_ihl, 1), XDP_DROP);
    assert_eq!(dp.counters(0).matched, 1);
    assert_eq!(dp.counters(1).matched, 5);
    let mut bad_ver = full.clone();
    bad_ver[14] = 0x55; // version 5
    assert_eq!(dp.xdp(&bad_ver, 1), XDP_PASS);
    let arp = {
        let mut a = full.clone();
        a[12] = 0x08;
        a[13] = 0x06;
        a
    };
    assert_eq!(dp.xdp(&arp, 1), XDP_PASS);
    let v6 = udp("2001:db8::1", "2001:db8::2", 1, 2).v6_ext().bytes();
    assert_eq!(
        dp.xdp(&v6, 1),
        XDP_DROP,
        "control: the whole v6 frame matches"
    );
    assert_eq!(dp.counters(0).matched, 2);
    // Cut in the fixed header: unparseable.
    for len in [40usize, 53] {
        assert_eq!(dp.xdp(&v6[..len], 1), XDP_PASS, "v6 truncated to {len}");
    }
    // Cut at or in the extension header: no protocol, no ports; in the ports: no ports.
    for len in [54usize, 60, 61, 63, 64] {
        assert_eq!(dp.xdp(&v6[..len], 1), XDP_DROP, "v6 truncated to {len}");
    }
    assert_eq!(dp.counters(0).matched, 2);
    assert_eq!(dp.counters(2).matched, 5);
}

/// Publishes `rules` in slots 0.. with fresh counters, each with its own expiry.
fn set_expiring(dp: &mut Dp, rules: &[(RuleSpec, u64)]) {
    let specs: Vec<RuleSpec> = rules.iter().map(|(s, _)| s.clone()).collect();
    let inputs: Vec<Input<'_>> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| Input {
            slot: i as u32,
            spec: s,
            ifindex: None,
        })
        .collect();
    let c = compile(&inputs).unwrap();
    let values: Vec<_> = rules
        .iter()
        .enumerate()
        .map(|(i, (s, e))| (i as u32, rule_value(s, *e, 0)))
        .collect();
    for i in 0..rules.len() as u32 {
        dp.maps.reset_counters(i).unwrap();
    }
    dp.maps.publish_set(&c, &values).unwrap();
}

#[test]
fn an_expired_rule_never_hides_a_live_one_with_the_same_match() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.7", "198.51.100.1", 9, 53).bytes();
    let mut pass = rule("pass");
    pass.src = vec![net("192.0.2.7")];
    pass.act.drop = Prob(0.0);
    pass.act.duplicate = Prob(0.0);
    let mut drop = rule("drop");
    drop.src = vec![net("192.0.2.7")];
    let later = netfault::control::monotonic_ns() + 600_000_000_000;
    // Both live: the first wins.
    set_expiring(&mut dp, &[(drop.clone(), later), (pass.clone(), 0)]);
    assert_eq!(dp.xdp(&f, 1), XDP_DROP);
    assert_eq!(dp.tc("nf_tc_egress", &f, 1), EGRESS_LOST);
    // The first has expired: the second, with the very same match, takes over, at both hooks.
    set_expiring(&mut dp, &[(drop.clone(), 1), (pass.clone(), 0)]);
    assert_eq!(dp.xdp(&f, 1), XDP_PASS);
    assert_eq!(dp.tc("nf_tc_egress", &f, 1), TCX_NEXT);
    assert_eq!(dp.counters(0).matched, 0);
    assert_eq!(dp.counters(1).matched, 2);
    // Two expired ahead of a live one.
    set_expiring(
        &mut dp,
        &[(pass.clone(), 1), (pass.clone(), 1), (drop, later)],
    );
    assert_eq!(dp.xdp(&f, 1), XDP_DROP);
    assert_eq!(dp.counters(2).matched, 1);
}

/// The data path and the controller keep lifetimes on one clock: a rule is live right up to
/// the instant the controller's clock reaches its expiry, and not one packet after.
#[test]
fn a_rule_ends_when_the_controllers_clock_says() {
    // Its publish must land well within the 200 ms lifetime: a spinning program elsewhere would
    // hold its grace period for a run's length.
    let _busy = BUSY_CORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut dp = Dp::new();
    let f = udp("192.0.2.7", "198.51.100.1", 9, 53).bytes();
    let mut drop = rule("drop");
    drop.src = vec![net("192.0.2.7")];
    let clock = netfault::control::monotonic_ns;
    let expiry = clock() + 200_000_000;
    set_expiring(&mut dp, &[(drop, expiry)]);
    let mut live = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // Packets until the controller's clock passes the expiry (bounded: 5 s).
    while clock() < expiry {
        assert!(
            std::time::Instant::now() < deadline,
            "the clock stood still"
        );
        // The clock is read after the run: if it has not reached the expiry then, the data
        // path's reading, taken earlier, had not either.
        let verdict = dp.xdp(&f, 1);
        if clock() < expiry {
            assert_eq!(verdict, XDP_DROP, "live on the controller's clock");
            live += 1;
        }
        std::thread::sleep(std::time::Duration::from_micros(500));
    }
    // Read before the run: the data path's reading, taken later, is past the expiry too.
    assert_eq!(dp.xdp(&f, 1), XDP_PASS, "expired on the controller's clock");
    assert!(live >= 3, "only {live} packets before the expiry");
}

/// IPv4 `frame` marked as a fragment at `offset` (8-byte units) with more to come.
fn v4_fragment(mut frame: Vec<u8>, offset: u16) -> Vec<u8> {
    frame[20..22].copy_from_slice(&(0x2000 | offset).to_be_bytes());
    frame
}

/// An IPv6 UDP frame from 2001:db8::1 to 2001:db8::2 behind the extension headers `ext`, each
/// (type, length in bytes, a multiple of 8), then 20 bytes of transport header whose first
/// four are the ports `sport` and `dport`.
fn v6_chain(ext: &[(u8, usize)], proto: u8, sport: u16, dport: u16) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x86, 0xdd];
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0u8; 16]);
    let total: usize = ext.iter().map(|e| e.1).sum::<usize>() + l4.len();
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.push(ext.first().map_or(proto, |e| e.0));
    f.push(64);
    f.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    f.extend_from_slice(
        &"2001:db8::2"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    for (i, &(ty, len)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |e| e.0);
        let mut h = vec![0u8; len];
        h[0] = next;
        match ty {
            44 => {} // fragment header: offset and flags set by the caller
            51 => h[1] = (len / 4 - 2) as u8,
            _ => h[1] = (len / 8 - 1) as u8,
        }
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(&l4);
    f
}

#[test]
fn a_packet_without_ports_never_matches_a_port_rule() {
    let mut dp = Dp::new();
    let mut low = rule("low-ports");
    low.proto = Proto::Udp;
    low.dport = PortRange { lo: 0, hi: 100 };
    let mut any = rule("any-udp");
    any.proto = Proto::Udp;
    any.act.drop = Prob(0.0);
    any.act.duplicate = Prob(0.0);
    dp.set(&[low, any]);
    let first = v4_fragment(udp("192.0.2.1", "198.51.100.1", 9, 53).bytes(), 0);
    assert_eq!(dp.xdp(&first, 1), XDP_DROP, "a first fragment has ports");
    // A later fragment's "ports" are payload, here zero: it has none.
    let mut later = v4_fragment(udp("192.0.2.1", "198.51.100.1", 0, 0).bytes(), 185);
    assert_eq!(dp.xdp(&later, 1), XDP_PASS);
    assert_eq!(dp.tc("nf_tc_egress", &later, 1), TCX_NEXT);
    later[21] = 0; // offset 0x2000 -> last fragment at offset 0 is a whole packet again
    later[20] = 0;
    assert_eq!(dp.xdp(&later, 1), XDP_DROP);
    // IPv6: a fragment header with a non-zero offset.
    let mut frag6 = v6_chain(&[(44, 8)], 17, 0, 0);
    frag6[54 + 2..54 + 4].copy_from_slice(&(185u16 << 3).to_be_bytes());
    assert_eq!(dp.xdp(&frag6, 1), XDP_PASS);
    assert_eq!(dp.tc("nf_tc_egress", &frag6, 1), TCX_NEXT);
    let first6 = v6_chain(&[(44, 8)], 17, 0, 0);
    assert_eq!(dp.xdp(&first6, 1), XDP_DROP);
    assert_eq!(dp.counters(0).matched, 2 + 1);
    assert_eq!(dp.counters(1).matched, 4);
}

#[test]
fn tc_parses_as_deep_as_xdp() {
    let mut dp = Dp::new();
    let mut r = rule("deep");
    r.proto = Proto::Udp;
    r.dport = PortRange { lo: 53, hi: 53 };
    dp.set(&[r]);
    // Hop-by-hop, routing, destination options and AH: the transport header at 14 + 40 + 200,
    // past the 128 bytes tc used to pull; and one byte further than the parser reaches.
    let deep = v6_chain(&[(0, 64), (43, 56), (60, 48), (51, 32)], 17, 9, 53);
    assert_eq!(deep.len(), 14 + 40 + 200 + 20);
    assert_eq!(dp.xdp(&deep, 1), XDP_DROP);
    assert_eq!(dp.tc("nf_tc_egress", &deep, 1), EGRESS_LOST);
    // With a VLAN tag, to within 2 bytes of the parser's bound (transport header at 254).
    let vlan_deep = {
        let mut f = v6_chain(&[(0, 64), (43, 56), (60, 48), (51, 28)], 17, 9, 53);
        f.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        f
    };
    assert_eq!(dp.xdp(&vlan_deep, 1), XDP_DROP);
    assert_eq!(dp.tc("nf_tc_egress", &vlan_deep, 1), EGRESS_LOST);
    let too_deep = v6_chain(&[(0, 64), (43, 64), (60, 64), (51, 64)], 17, 9, 53);
    assert_eq!(dp.xdp(&too_deep, 1), XDP_PASS);
    assert_eq!(dp.tc("nf_tc_egress", &too_deep, 1), TCX_NEXT);
    assert_eq!(dp.counters(0).matched, 4);
}

/// `frame` with two VLAN tags (QinQ): `outer` (802.1ad or 802.1Q), then an 802.1Q one.
fn qinq(mut frame: Vec<u8>, outer: u16) -> Vec<u8> {
    let [hi, lo] = outer.to_be_bytes();
    frame.splice(12..12, [hi, lo, 0x00, 0x64, 0x81, 0x00, 0x00, 0xc8]);
    frame
}

/// A partition of 2001:db8::1 and 2001:db8::2 and a rule on their addresses alone cut every
/// packet between them, also one whose headers the parser cannot follow past the IPv6 header;
/// such a packet has no protocol and no ports, so rules naming either pass it. At XDP and tc.
/// (Every case is run and every wrong verdict reported, not only the first.)
#[test]
fn a_packet_unreadable_past_the_ip_header_is_cut_by_its_addresses() {
    let mut dp = Dp::new();
    let small =
        |n: usize| -> Vec<(u8, usize)> { (0..n).map(|i| ([0u8, 60, 43][i % 3], 8)).collect() };
    // All UDP 9 -> 53 behind their extension headers.
    let mut cut = v6_chain(&[(0, 8), (60, 64)], 17, 9, 53);
    cut.truncate(14 + 40 + 8 + 32);
    let unreadable = [
        (
            "one 2 KB destination-options header",
            v6_chain(&[(60, 2048)], 17, 9, 53),
        ),
        ("8 extension headers", v6_chain(&small(8), 17, 9, 53)),
        ("7 extension headers", v6_chain(&small(7), 17, 9, 53)),
        ("an extension header cut short", cut),
        // Not a header the parser skips: it is the protocol, one no rule names.
        ("an unknown next header", v6_chain(&[(253, 8)], 17, 9, 53)),
    ];
    let mut wrong = Vec::new();
    let mut check = |dp: &Dp, what: &str, rules: &str, f: &[u8], drop: bool| {
        let (xdp, tc) = if drop {
            (XDP_DROP, EGRESS_LOST)
        } else {
            (XDP_PASS, TCX_NEXT)
        };
        let got = (dp.xdp(f, 1), dp.tc("nf_tc_egress", f, 1));
        if got != (xdp, tc) {
            wrong.push(format!(
                "{what} under {rules}: (XDP, tc) gave {got:?}, want {:?}",
                (xdp, tc)
            ));
        }
    };
    let pair = |mut r: RuleSpec| {
        r.src = vec![net("2001:db8::1")];
        r.dst = vec![net("2001:db8::2")];
        r
    };
    let mut port = pair(rule("port"));
    port.proto = Proto::Udp;
    port.dport = PortRange { lo: 53, hi: 53 };
    let mut proto = pair(rule("proto"));
    proto.proto = Proto::Udp;
    dp.set(&[port, proto]);
    // Controls: both rules match these addresses where the headers can be followed (six
    // extension headers are as many as the parser skips).
    let rules = "a port and a protocol rule";
    check(
        &dp,
        "no extension header",
        rules,
        &v6_chain(&[], 17, 9, 53),
        true,
    );
    check(
        &dp,
        "6 extension headers",
        rules,
        &v6_chain(&small(6), 17, 9, 53),
        true,
    );
    check(&dp, "another port", rules, &v6_chain(&[], 17, 9, 54), true);
    for (what, f) in &unreadable {
        check(&dp, what, rules, f, false);
    }
    let counted = (dp.counters(0).matched, dp.counters(1).matched);
    let mut partition = RuleSpec::new("cut", Kind::Partition);
    partition.src = vec![net("2001:db8::1")];
    partition.dst = vec![net("2001:db8::2")];
    let address = pair(rule("addresses"));
    let mut cut_counts = Vec::new();
    for r in [partition, address] {
        let rules = format!("{:?} {}", r.kind, r.name);
        dp.set(&[r]);
        for (what, f) in &unreadable {
            check(&dp, what, &rules, f, true);
        }
        cut_counts.push(dp.counters(0).matched);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(counted, (4, 2));
    assert_eq!(cut_counts, [2 * unreadable.len() as u64; 2]);
}

/// Frames with two VLAN tags (802.1ad or 802.1Q, then 802.1Q) are parsed through: their
/// addresses and ports match, at XDP and tc. (Every wrong verdict is reported.)
#[test]
fn qinq_frames_are_parsed() {
    let mut dp = Dp::new();
    let pairs = [("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2")];
    let frames = |dport: u16| -> Vec<(String, Vec<u8>)> {
        let mut v = Vec::new();
        for outer in [0x88a8u16, 0x8100] {
            for (src, dst) in pairs {
                let f = qinq(udp(src, dst, 9, dport).bytes(), outer);
                v.push((format!("{outer:#06x} outer tag, {src} -> {dst}:{dport}"), f));
            }
        }
        v
    };
    let mut wrong = Vec::new();
    let mut check = |dp: &Dp, what: &str, rules: &str, f: &[u8], drop: bool| {
        let want = if drop {
            (XDP_DROP, EGRESS_LOST)
        } else {
            (XDP_PASS, TCX_NEXT)
        };
        let got = (dp.xdp(f, 1), dp.tc("nf_tc_egress", f, 1));
        if got != want {
            wrong.push(format!(
                "{what} under {rules}: (XDP, tc) gave {got:?}, want {want:?}"
            ));
        }
    };
    let mut partition = RuleSpec::new("cut", Kind::Partition);
    partition.src = vec![net("192.0.2.1"), net("2001:db8::1")];
    partition.dst = vec![net("192.0.2.2"), net("2001:db8::2")];
    dp.set(&[partition]);
    for (what, f) in frames(53) {
        check(&dp, &what, "a partition", &f, true);
    }
    let cut = dp.counters(0).matched;
    let mut port = rule("port");
    port.proto = Proto::Udp;
    port.dport = PortRange { lo: 53, hi: 53 };
    dp.set(&[port]);
    for (what, f) in frames(53) {
        check(&dp, &what, "a port 53 rule", &f, true);
    }
    for (what, f) in frames(54) {
        check(&dp, &what, "a port 53 rule", &f, false);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!((cut, dp.counters(0).matched), (8, 8));
}

#[test]
fn probability_zero_and_one_are_exact() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut never = rule("never");
    never.act.drop = Prob(0.0);
    never.act.duplicate = Prob(0.0);
    dp.set(&[never]);
    dp.xdp(&f, 100_000);
    let c = dp.counters(0);
    assert_eq!((c.matched, c.dropped, c.passed), (100_000, 0, 100_000));
    dp.set(&[rule("always")]);
    dp.xdp(&f, 100_000);
    let c = dp.counters(0);
    assert_eq!((c.matched, c.dropped, c.passed), (100_000, 100_000, 0));
    assert_eq!(c.bytes, 100_000 * f.len() as u64);
}

#[test]
fn drop_probability_within_wilson_interval() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = rule("p30");
    r.act.drop = Prob(0.3);
    dp.set(&[r]);
    let n = 100_000u64;
    dp.xdp(&f, n as u32);
    let c = dp.counters(0);
    assert_eq!(c.matched, n);
    assert_eq!(c.dropped + c.passed, n);
    // Two-sided Wilson score interval at alpha = 1e-4 (z = 3.8906): a correct data path fails
    // this one run in 10,000.
    let (lo, hi) = wilson(c.dropped, n, 3.8906);
    assert!(
        lo <= 0.3 && 0.3 <= hi,
        "dropped {} of {n}: [{lo:.4}, {hi:.4}]",
        c.dropped
    );
}

#[test]
fn duplicate_at_tc_counts_and_marks_clones() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = rule("dup");
    r.act.drop = Prob(0.0);
    r.act.duplicate = Prob(1.0);
    dp.set(&[r]);
    assert_eq!(dp.tc("nf_tc_egress", &f, 1000), TCX_NEXT);
    let c = dp.counters(0);
    assert_eq!(
        (c.matched, c.duplicated, c.passed, c.dropped),
        (1000, 1000, 1000, 0)
    );
    // On ingress the rule needs an skb: XDP leaves it to tc ingress, which does it all.
    assert_eq!(dp.xdp(&f, 10), XDP_PASS);
    assert_eq!(dp.counters(0).matched, 1000);
    assert_eq!(dp.tc("nf_tc_ingress", &f, 10), TCX_NEXT);
    let c = dp.counters(0);
    assert_eq!((c.matched, c.duplicated), (1010, 1010));
}

#[test]
fn generations_flip_cleanly() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    for round in 0..20 {
        if round % 2 == 0 {
            dp.set(&[rule("drop")]);
            assert_eq!(dp.xdp(&f, 1), XDP_DROP, "round {round}");
        } else {
            let mut r = rule("other");
            r.src = vec![net("203.0.113.0/24")];
            dp.set(&[r]);
            assert_eq!(dp.xdp(&f, 1), XDP_PASS, "round {round}");
        }
    }
}

/// Flow-map entries (those `keep` keeps) as sorted text, to compare sets of them.
fn entries<K: std::fmt::Debug>(
    it: impl Iterator<Item = (K, netfault_common::FlowRef)>,
    keep: impl Fn(&K) -> bool,
) -> Vec<String> {
    let mut v: Vec<String> = it
        .filter(|(k, _)| keep(k))
        .map(|(k, r)| format!("{k:?} {r:?}"))
        .collect();
    v.sort();
    v
}

/// Each publish leaves in the flow maps exactly the flows of the two generations it keeps:
/// the one it wrote (IPv4 flows in `flows4`, IPv6 ones in `flows`, flows of no family in both)
/// and the one before; the one from two publishes ago is cleared from both maps.
#[test]
fn a_publish_keeps_exactly_two_generations_of_flows() {
    let mut dp = Dp::new();
    let host = |name: &str, a: &str| {
        let mut r = rule(name);
        r.src = vec![net(a)];
        r
    };
    let port = |name: &str, p: u16| {
        let mut r = rule(name);
        r.proto = Proto::Tcp;
        r.dport = PortRange { lo: p, hi: p };
        r
    };
    let sets = [
        vec![
            host("a", "192.0.2.1"),
            host("b", "192.0.2.2"),
            port("c", 80),
        ],
        vec![
            host("d", "2001:db8::1"),
            host("e", "2001:db8::2"),
            port("f", 81),
            port("g", 82),
        ],
        vec![host("h", "192.0.2.3"), host("i", "2001:db8::3")],
    ];
    // Per publish: its generation, and its flows as (IPv6 map, IPv4 map) entries.
    type Written = (u8, (Vec<String>, Vec<String>));
    let mut written: Vec<Written> = Vec::new();
    for set in sets.iter().cycle().take(5) {
        let c = publish_at(&mut dp.maps, set, 0);
        let g = (dp.maps.config().unwrap().active & 1) as u8;
        let v6 = entries(
            c.flows_v6().map(|(k, r)| (FlowKey { gen_: g, ..k }, r)),
            |_| true,
        );
        let v4 = entries(
            c.flows_v4().map(|(k, r)| (FlowKey4 { gen_: g, ..k }, r)),
            |_| true,
        );
        assert!(!v6.is_empty() || !v4.is_empty());
        written.push((g, (v6, v4)));
        for (g, want) in written.iter().rev().take(2) {
            assert_eq!(&dp.flows_of(*g), want, "generation {g}");
        }
        let entries = dp.maps.flows.iter().count() + dp.maps.flows4.iter().count();
        let kept: usize = (written.iter().rev().take(2))
            .map(|(_, (v6, v4))| v6.len() + v4.len())
            .sum();
        assert_eq!(entries, kept, "entries of an older generation are left");
    }
}

/// Pushes `pkt` through XDP from several threads until `stop`; returns (runs, passes).
fn hammer(ebpf: &Ebpf, pkt: &[u8], stop: &std::sync::atomic::AtomicBool) -> (u64, u64) {
    let prog: &Xdp = ebpf.program("nf_xdp_ingress").unwrap().try_into().unwrap();
    std::thread::scope(|sc| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(|| {
                    let (mut runs, mut passes) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        let r = prog
                            .test_run(TestRunOptions {
                                data_in: Some(pkt),
                                repeat: 1,
                                ..Default::default()
                            })
                            .unwrap();
                        runs += 1;
                        passes += u64::from(r.return_value == XDP_PASS);
                    }
                    (runs, passes)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    })
}

/// Two sets that both drop P, shaped so that any mix of them passes P: set A matches P in its
/// only tuple; set B only in its fourth. Reading A's tuple count with B's tuples, B's count with
/// A's flows, or a generation being rewritten, all miss and pass. The tuples that match P hold
/// two flows each, so that P's match is a lookup in the flow map, not a tuple's own flow.
/// `mixed_sets` and a third set that also drops P (`udp` 192.0.2.1 -> 198.51.100.1:53): a
/// publish cycling through the three always rewrites the retired generation.
fn three_sets() -> [Vec<RuleSpec>; 3] {
    let (a, b) = mixed_sets();
    let mut c = rule("c");
    c.dst = vec![net("198.51.100.1")];
    [a, b, vec![c]]
}

fn mixed_sets() -> (Vec<RuleSpec>, Vec<RuleSpec>) {
    let mut a = rule("a");
    a.src = vec![net("192.0.2.1"), net("192.0.2.9")];
    let mut b0 = rule("b0");
    b0.dst = vec![net("203.0.113.0/24")];
    let mut b1 = rule("b1");
    b1.proto = Proto::Udp;
    b1.sport = PortRange { lo: 7, hi: 7 };
    let mut b2 = rule("b2");
    b2.src = vec![net("198.51.100.0/24")];
    let mut b3 = rule("b3");
    b3.proto = Proto::Udp;
    b3.dport = PortRange { lo: 53, hi: 53 };
    let mut b4 = b3.clone();
    b4.name = "b4".into();
    b4.dport = PortRange { lo: 54, hi: 54 };
    (vec![a], vec![b0, b1, b2, b3, b4])
}

#[test]
fn ten_thousand_flips_never_mix_two_sets() {
    let mut dp = Dp::new();
    let (a, b) = mixed_sets();
    let p = udp("192.0.2.1", "198.51.100.1", 1000, 53).bytes();
    dp.publish_at(&a, 0);
    assert_eq!(dp.xdp(&p, 1), XDP_DROP);
    dp.publish_at(&b, 1);
    assert_eq!(dp.xdp(&p, 1), XDP_DROP);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ebpf, maps) = (&dp.ebpf, &mut dp.maps);
    let (runs, passes) = std::thread::scope(|sc| {
        let h = sc.spawn(|| hammer(ebpf, &p, &stop));
        // The real publish path: both sets already sit in a buffer, so each publish is a flip.
        for _ in 0..5_000 {
            publish_at(maps, &a, 0);
            publish_at(maps, &b, 1);
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    assert!(runs > 1_000, "too few packets overlapped the flips: {runs}");
    assert_eq!(passes, 0, "{passes} of {runs} verdicts matched neither set");
    // A went to generation 1 and B to 0 (the first flip leaves 0); the run ends on B.
    let cfg = dp.maps.config().unwrap();
    assert_eq!((cfg.active, cfg.ntuples), (0, [4, 1]));
    eprintln!("{runs} verdicts across 10,000 flips, none mixed");
}

/// Held by the tests that keep a core busy (a hammer, a spinning program): two of them at once
/// on a 2-core machine would starve each other's overlap. A running `lab_spin` also holds every
/// grace period (so every rewriting publish) for up to a run's length: tests that time a
/// publish hold this too.
static BUSY_CORE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn rewrites_under_load_wait_for_readers() {
    let _busy = BUSY_CORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut dp = Dp::new();
    let [a, b, c] = three_sets();
    let p = udp("192.0.2.1", "198.51.100.1", 1000, 53).bytes();
    let stop = std::sync::atomic::AtomicBool::new(false);
    dp.publish_at(&a, 0);
    let (ebpf, maps) = (&dp.ebpf, &mut dp.maps);
    let (runs, passes) = std::thread::scope(|sc| {
        let h = sc.spawn(|| hammer(ebpf, &p, &stop));
        for _ in 0..10 {
            publish_at(maps, &b, 1);
            publish_at(maps, &c, 5);
            publish_at(maps, &a, 0);
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap()
    });
    assert!(
        runs > 100,
        "too few packets overlapped the rewrites: {runs}"
    );
    assert_eq!(passes, 0, "{passes} of {runs} verdicts matched neither set");
}

/// A publish that rewrites the generation retired before returns only once every program that
/// may still read that generation has finished. netfault-lab's `lab_spin` counts its start,
/// spins for milliseconds and counts its end; a thread runs it back to back. Each round catches
/// a run in progress and publishes a set held by neither generation (so the retired one is
/// rewritten): when the publish returns, that run has finished. Without the grace period in
/// `publish_set`, the publish returns within the run. (`rewrites_under_load_wait_for_readers`
/// shows the verdicts under load; its window is too narrow to catch a missing wait.)
#[test]
fn a_rewriting_publish_waits_for_running_programs() {
    use aya::{maps::Array, programs::Xdp};
    let _busy = BUSY_CORE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut dp = Dp::new();
    let [a, b, c] = three_sets();
    let sets = [(a, 0), (b, 1), (c, 5)];
    let mut spin = aya::Ebpf::load(netfault_lab::BENCH_OBJECT).unwrap();
    let p: &mut Xdp = spin.program_mut("lab_spin").unwrap().try_into().unwrap();
    p.load().unwrap();
    let p: &Xdp = spin.program("lab_spin").unwrap().try_into().unwrap();
    let runs: Array<_, u64> = Array::try_from(spin.map("SPIN_RUNS").unwrap()).unwrap();
    let runs = || (runs.get(&0, 0).unwrap(), runs.get(&1, 0).unwrap());
    let frame = [0u8; 64];
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut seen = Vec::new();
    std::thread::scope(|sc| {
        let runner = sc.spawn(|| {
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed)
                && n < 10_000
                && std::time::Instant::now() < deadline
            {
                p.test_run(TestRunOptions {
                    data_in: Some(&frame),
                    ..Default::default()
                })
                .unwrap();
                n += 1;
            }
        });
        for round in 0..12 {
            let started = loop {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never caught a run in progress"
                );
                let (started, finished) = runs();
                if started > finished {
                    break started;
                }
                std::hint::spin_loop();
            };
            let (set, first) = &sets[round % 3];
            publish_at(&mut dp.maps, set, *first);
            seen.push((started, runs().1));
        }
        stop.store(true, Ordering::Relaxed);
        runner.join().unwrap();
    });
    let early: Vec<_> = seen.iter().filter(|(s, f)| f < s).collect();
    assert!(
        early.is_empty(),
        "a rewriting publish returned while a program that started before it still ran \
         (started, finished): {early:?} of {seen:?}"
    );
}

// ---- shaping: departure times, read back from the context ----

fn shaper(name: &str) -> RuleSpec {
    RuleSpec {
        act: Actions::drops(Prob(0.0)),
        ..rule(name)
    }
}

#[test]
fn delay_stamps_the_departure_time_exactly() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = shaper("delay");
    r.dst = vec![net("192.0.2.2")];
    r.act.shape.delay = Some(std::time::Duration::from_millis(50));
    dp.set(&[r]);
    for _ in 0..100 {
        let (v, ts, before, after) = dp.tc_stamp("nf_tc_egress", &f, 1);
        assert_eq!(v, TCX_NEXT);
        assert!(
            (before + 50_000_000..=after + 50_000_000).contains(&ts),
            "tstamp {ts} not within [{before}, {after}] + 50 ms"
        );
    }
    let c = dp.counters(0);
    assert_eq!(
        (c.matched, c.delayed, c.passed, c.queue_dropped),
        (100, 100, 100, 0)
    );
    // Traffic the rule does not match is not stamped.
    let other = udp("192.0.2.1", "192.0.2.3", 1000, 53).bytes();
    let (_, ts, ..) = dp.tc_stamp("nf_tc_egress", &other, 1);
    assert_eq!(ts, 0);
}

#[test]
fn ingress_delay_redirects_to_the_ifb_device_only_when_one_is_set() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = shaper("delay");
    r.act.shape.delay = Some(std::time::Duration::from_millis(20));
    r.dir = Direction::Ingress;
    dp.set(&[r]);
    // XDP leaves shaping to tc ingress, which needs the skb.
    assert_eq!(dp.xdp(&f, 1), XDP_PASS);
    assert_eq!(dp.counters(0).matched, 0);
    // No IFB device: passes unstamped (fail open).
    let (v, ts, ..) = dp.tc_stamp("nf_tc_ingress", &f, 1);
    assert_eq!((v, ts), (TCX_NEXT, 0));
    dp.maps.set_ifb(1, Some(1)).unwrap();
    let (v, ts, before, after) = dp.tc_stamp("nf_tc_ingress", &f, 1);
    assert_eq!(v, TC_ACT_REDIRECT);
    assert!((before + 20_000_000..=after + 20_000_000).contains(&ts));
    assert_eq!(dp.counters(0).delayed, 1);
}

/// `--hold`: a packet matched during the hold is stamped with its end exactly (counted held
/// and delayed), beside a delay the later of the two; after the hold a hold-only rule leaves
/// the packet unstamped and counts nothing more.
#[test]
fn hold_stamps_the_end_of_the_hold_then_nothing() {
    use std::time::Duration;
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = shaper("hold");
    r.dir = Direction::Egress;
    r.act.hold = Some(Duration::from_millis(300));
    let start = precise_ns();
    dp.set(&[r.clone()]);
    let published = precise_ns();
    let mut stamps = Vec::new();
    for _ in 0..50 {
        let (v, ts, ..) = dp.tc_stamp("nf_tc_egress", &f, 1);
        assert_eq!(v, TCX_NEXT);
        stamps.push(ts);
    }
    let held_until = stamps[0];
    assert!(
        (start + 300_000_000..=published + 300_000_000).contains(&held_until),
        "tstamp {held_until} is not the hold's end ({start}..{published} + 300 ms)"
    );
    assert!(
        stamps.iter().all(|&t| t == held_until),
        "every held packet leaves at the hold's end: {stamps:?}"
    );
    let c = dp.counters(0);
    assert_eq!(
        (c.matched, c.held, c.delayed, c.passed),
        (50, 50, 50, 50),
        "{c:?}"
    );
    // After the hold: untouched, and not counted as held or delayed.
    while precise_ns() <= held_until + 1_000_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..10 {
        let (v, ts, ..) = dp.tc_stamp("nf_tc_egress", &f, 1);
        assert_eq!((v, ts), (TCX_NEXT, 0), "after the hold nothing is stamped");
    }
    let c = dp.counters(0);
    assert_eq!((c.matched, c.held, c.delayed), (60, 50, 50), "{c:?}");

    // A hold beside a delay: the later of the two departures (the hold's end while it lasts,
    // then the delay).
    r.act.hold = Some(Duration::from_millis(200));
    r.act.shape.delay = Some(Duration::from_millis(50));
    let start = precise_ns();
    dp.set(&[r]);
    let (_, ts, before, _) = dp.tc_stamp("nf_tc_egress", &f, 1);
    assert!(
        (start + 200_000_000..=before + 200_000_000).contains(&ts),
        "during the hold its end wins over the delay: {ts} vs {start}..{before} + 200 ms"
    );
    while precise_ns() <= ts + 1_000_000 {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, ts, before, after) = dp.tc_stamp("nf_tc_egress", &f, 1);
    assert!(
        (before + 50_000_000..=after + 50_000_000).contains(&ts),
        "{ts}"
    );
    let c = dp.counters(0);
    assert_eq!((c.matched, c.held, c.delayed), (2, 1, 2), "{c:?}");
}

/// `--duplicate-delay`: the copy is made (counted duplicated and dup_delayed) and the original
/// keeps its own departure, now, not the copy's later one. (The copy's own stamp leaves with
/// it, into the namespace's loopback: the VM tests measure when it arrives.)
#[test]
fn late_duplicates_count_and_leave_the_original_on_time() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = shaper("late");
    r.dir = Direction::Egress;
    r.act.duplicate = Prob(1.0);
    r.act.duplicate_delay = Some(std::time::Duration::from_millis(100));
    dp.set(&[r]);
    for _ in 0..20 {
        let (v, ts, before, after) = dp.tc_stamp("nf_tc_egress", &f, 1);
        assert_eq!(v, TCX_NEXT);
        assert!(
            (before..=after).contains(&ts),
            "the original leaves now: tstamp {ts} not within [{before}, {after}]"
        );
    }
    let c = dp.counters(0);
    assert_eq!(
        (c.matched, c.duplicated, c.dup_delayed, c.passed, c.delayed),
        (20, 20, 20, 20, 0),
        "{c:?}"
    );
}

/// Normal jitter with --reorder: the stamped delays follow the configured distribution. KS test
/// at alpha 1e-4 (one false failure in 10,000 runs); the clock bracket of each run (a few µs)
/// is far below the distribution's scale (20 ms).
#[test]
fn jitter_follows_the_configured_distribution() {
    use netfault::spec::dist::Distribution;
    use netfault_lab::ks;
    let mut dp = Dp::new();
    for (dist, reorder) in [
        (Distribution::Normal, true),
        (Distribution::Pareto, true),
        (Distribution::Uniform, true),
        (Distribution::Paretonormal, false),
    ] {
        let mut r = shaper("jitter");
        r.act.shape.delay = Some(std::time::Duration::from_millis(50));
        r.act.shape.jitter = Some(std::time::Duration::from_millis(20));
        r.act.shape.distribution = dist;
        r.act.shape.reorder = reorder;
        dp.set(&[r.clone()]);
        let n = 3000;
        let mut delays = Vec::with_capacity(n);
        let mut last = 0;
        let mut backwards = 0;
        for i in 0..n {
            // With order kept, one flow's departures never go backwards: use one flow. With
            // --reorder, give every packet its own flow so no state links them.
            let sport = if reorder { 1000 + i as u16 } else { 1000 };
            let f = udp("192.0.2.1", "192.0.2.2", sport, 53).bytes();
            let (_, ts, before, _) = dp.tc_stamp("nf_tc_egress", &f, 1);
            delays.push(ts.saturating_sub(before) as f64);
            backwards += u32::from(ts < last);
            last = ts;
        }
        if reorder {
            let model = r.act.shape.model();
            let d = ks::statistic(&delays, |x| model.cdf(x));
            let crit = ks::critical_value(n, 1e-4);
            assert!(d < crit, "{dist}: KS D={d:.4} >= {crit:.4}");
        } else {
            assert_eq!(backwards, 0, "{dist}: a flow's departures went backwards");
        }
    }
}

#[test]
fn rate_spaces_departures_and_bounds_the_backlog() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = shaper("rate");
    r.act.shape.rate = Some("1mbit".parse().unwrap());
    dp.set(&[r]);
    // 1 Mbit/s is 8 µs a byte.
    let cost = f.len() as u64 * 8_000;
    let (_, first, before, _) = dp.tc_stamp("nf_tc_egress", &f, 1);
    assert!(
        first >= before && first < before + 1_000_000,
        "an idle rate starts now"
    );
    let mut prev = first;
    for _ in 0..20 {
        let (v, ts, ..) = dp.tc_stamp("nf_tc_egress", &f, 1);
        assert_eq!(v, TCX_NEXT);
        assert_eq!(
            ts - prev,
            cost,
            "back-to-back packets leave one packet time apart"
        );
        prev = ts;
    }
    // A GSO packet pays for every segment's headers: 4 segments of this UDP frame.
    let (_, ts, ..) = dp.tc_stamp("nf_tc_egress", &f, 4);
    assert_eq!(ts - prev, cost);
    let (_, next, ..) = dp.tc_stamp("nf_tc_egress", &f, 1);
    assert_eq!(next - ts, (f.len() as u64 + 3 * (14 + 20 + 8)) * 8_000);
    // The backlog is bounded (compile::RATE_QUEUE): past it, packets are queue drops.
    let mut shot = 0;
    for _ in 0..400 {
        let (v, ..) = dp.tc_stamp("nf_tc_egress", &f, 1);
        shot += u32::from(v == TC_ACT_SHOT);
    }
    let c = dp.counters(0);
    assert!(shot > 0 && u64::from(shot) == c.queue_dropped, "{c:?}");
    assert_eq!(c.dropped, 0, "queue drops are not injected drops");
    let backlog = netfault::compile::RATE_QUEUE.as_nanos() as u64;
    assert!(c.passed <= backlog / cost + 2 + 25, "{c:?}");
}

/// Counters count wire packets: a GSO skb of 5 segments is 5 matched, 5 dropped (or passed),
/// and the egress drop is reported as sent (EGRESS_LOST), not as a local drop.
#[test]
fn counters_count_the_segments_of_an_aggregate() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = rule("gso");
    r.dir = Direction::Egress;
    dp.set(&[r.clone()]);
    let (v, ..) = dp.tc_stamp("nf_tc_egress", &f, 5);
    assert_eq!(v, EGRESS_LOST);
    let (v, ..) = dp.tc_stamp("nf_tc_egress", &f, 0);
    assert_eq!(v, EGRESS_LOST, "gso_segs 0 is a plain packet");
    let c = dp.counters(0);
    assert_eq!((c.matched, c.dropped, c.passed), (6, 6, 0), "{c:?}");
    r.act.drop = Prob(0.0);
    r.act.duplicate = Prob(1.0);
    dp.set(&[r]);
    let (v, ..) = dp.tc_stamp("nf_tc_egress", &f, 5);
    assert_eq!(v, TCX_NEXT);
    let c = dp.counters(0);
    assert_eq!((c.matched, c.passed), (5, 5), "{c:?}");
}

// ---- burst loss ----

/// Normal quantiles for alpha = 1e-4: two-sided (intervals) and one-sided (chi-square).
const Z2: f64 = 3.8906;
const Z1: f64 = 3.719;

fn burst_rule(name: &str, loss: f64, burst: f64, scope: BurstScope) -> RuleSpec {
    let mut r = rule(name);
    r.act.drop = Prob(loss);
    r.act.burst = Some(burst);
    r.act.burst_scope = scope;
    r.validate().unwrap();
    r
}

fn xdp_prog(dp: &Dp) -> &Xdp {
    dp.ebpf
        .program("nf_xdp_ingress")
        .unwrap()
        .try_into()
        .unwrap()
}

/// Every check of one flow's verdicts against a chain whose runs are geometric with `mean`.
fn assert_chain(what: &str, lost: &[bool], g: &GeModel, mean: f64) {
    let (ok, (lo, hi)) = runs::loss_rate_holds(lost, g, Z2);
    let n_lost = lost.iter().filter(|&&l| l).count();
    assert!(
        ok,
        "{what}: lost {n_lost} of {}: interval [{lo:.4}, {hi:.4}] misses {:.4}",
        lost.len(),
        g.mean_loss()
    );
    let r = runs::runs(lost);
    assert!(r.len() > 500, "{what}: only {} runs", r.len());
    let (ok, got, (lo, hi)) = runs::mean_run_holds(&r, mean, Z2);
    assert!(ok, "{what}: mean run {got:.3}, interval [{lo:.3}, {hi:.3}]");
    let (chi, dof) = runs::chi_square_geometric(&r, mean);
    let crit = runs::chi_square_critical(dof, Z1);
    assert!(
        chi <= crit,
        "{what}: chi-square {chi:.1} > {crit:.1} ({dof} dof); runs {:?}",
        runs::histogram(&r)
    );
    let p = runs::ks_geometric(&r, mean);
    assert!(p > 1e-4, "{what}: KS p = {p:e}");
}

/// `--drop 5% --burst 4` over 200,000 packets of one flow: the loss rate (Wilson interval at
/// the chain's effective sample size), the mean run, and the run lengths against the geometric
/// law (chi-square and KS, alpha 1e-4). `dropped` and `bursts` count exactly what was seen.
#[test]
fn burst_loss_has_its_rate_mean_run_and_geometric_runs() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    dp.set(&[burst_rule("b", 0.05, 4.0, BurstScope::Flow)]);
    let n = 200_000;
    let v = runs::xdp_verdicts(xdp_prog(&dp), std::slice::from_ref(&f), n).unwrap();
    let g = GeModel::simple(0.05, 4.0).unwrap();
    assert_chain("one flow", &v[0], &g, 4.0);
    let c = dp.counters(0);
    let lost = v[0].iter().filter(|&&l| l).count() as u64;
    assert_eq!(
        (c.matched, c.dropped, c.passed),
        (n as u64, lost, n as u64 - lost)
    );
    assert_eq!(c.bursts, runs::runs_begun(&v[0]));
    // The demo's histogram comes from the same verdicts.
    let text = runs::histogram_text(&runs::runs(&v[0]), 12, 40);
    assert!(text.lines().count() > 5, "{text}");
}

/// netem's full model: loss in both states, so runs are no longer a stay in the bad state;
/// the loss rate still follows the chain (at tc egress this time).
#[test]
fn gemodel_loss_rate_at_tc_egress() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let mut r = rule("ge");
    r.act.drop = Prob(0.0);
    r.act.gemodel = Some("2%,20%,80%,1%".parse().unwrap());
    r.validate().unwrap();
    dp.set(&[r.clone()]);
    // A chain is a draw, so its packets are first marked for the segmenting device, passed on
    // and not counted; each segment comes back marked and meets the rule. A run of 2 on one skb
    // is that: the mark stays on it.
    assert_eq!(dp.tc("nf_tc_egress", &f, 1), TCX_NEXT);
    assert_eq!(dp.counters(0).matched, 0);
    let n = 100_000;
    let lost: Vec<bool> = (0..n)
        .map(|_| dp.tc("nf_tc_egress", &f, 2) == EGRESS_LOST)
        .collect();
    let g = r.act.gemodel.unwrap();
    let (ok, (lo, hi)) = runs::loss_rate_holds(&lost, &g, Z2);
    assert!(ok, "[{lo:.4}, {hi:.4}] misses {:.4}", g.mean_loss());
    // Losses in the good state (1 %) alone would be independent: runs far shorter than these.
    let r = runs::runs(&lost);
    let mean = r.iter().sum::<u64>() as f64 / r.len() as f64;
    assert!(mean > 2.0, "mean run {mean}");
    let c = dp.counters(0);
    assert_eq!(
        (c.matched, c.dropped),
        (n as u64, lost.iter().filter(|&&l| l).count() as u64)
    );
}

/// Per flow (the default), two interleaved flows run separate chains: each sees runs of the
/// configured mean (a shared chain would halve them), and their losses coincide about as
/// often as independent chains' do (L^2), not as one chain's (about L).
#[test]
fn burst_chains_are_per_flow_by_default() {
    let mut dp = Dp::new();
    let a = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let b = udp("192.0.2.1", "192.0.2.2", 1001, 53).bytes();
    dp.set(&[burst_rule("b", 0.2, 10.0, BurstScope::Flow)]);
    let n = 100_000;
    let v = runs::xdp_verdicts(xdp_prog(&dp), &[a, b], n).unwrap();
    let g = GeModel::simple(0.2, 10.0).unwrap();
    assert_chain("flow a", &v[0], &g, 10.0);
    assert_chain("flow b", &v[1], &g, 10.0);
    let both = v[0].iter().zip(&v[1]).filter(|(x, y)| **x && **y).count() as f64 / n as f64;
    assert!(
        both < 0.1,
        "flows lost together {both:.3} of rounds: independent chains give 0.04, one chain about 0.2"
    );
}

/// `--burst-scope rule`: one chain for all the rule's flows. The interleaved stream is that
/// chain, runs and all, and the flows lose together.
#[test]
fn burst_scope_rule_shares_one_chain() {
    let mut dp = Dp::new();
    let a = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    let b = udp("192.0.2.1", "192.0.2.2", 1001, 53).bytes();
    dp.set(&[burst_rule("b", 0.2, 10.0, BurstScope::Rule)]);
    let n = 100_000;
    let v = runs::xdp_verdicts(xdp_prog(&dp), &[a, b], n).unwrap();
    let stream: Vec<bool> = (0..n).flat_map(|i| [v[0][i], v[1][i]]).collect();
    let g = GeModel::simple(0.2, 10.0).unwrap();
    assert_chain("the rule's stream", &stream, &g, 10.0);
    let both = v[0].iter().zip(&v[1]).filter(|(x, y)| **x && **y).count() as f64 / n as f64;
    assert!(both > 0.15, "flows lost together only {both:.3} of rounds");
}

/// `--burst 1` is independent loss: the plain draw, runs geometric with mean 1 / (1 - L),
/// the plain Wilson interval, and no chain (no `bursts`).
#[test]
fn burst_one_is_independent_loss() {
    let mut dp = Dp::new();
    let f = udp("192.0.2.1", "192.0.2.2", 1000, 53).bytes();
    dp.set(&[burst_rule("b", 0.3, 1.0, BurstScope::Flow)]);
    let n = 100_000;
    let v = runs::xdp_verdicts(xdp_prog(&dp), std::slice::from_ref(&f), n).unwrap();
    // Independent loss is the chain with p = L and r = 1 - L.
    let ind = GeModel {
        p: 0.3,
        r: 0.7,
        loss_bad: 1.0,
        loss_good: 0.0,
    };
    assert!((runs::variance_factor(&ind) - 1.0).abs() < 1e-12);
    assert_chain("independent", &v[0], &ind, 1.0 / 0.7);
    assert_eq!(dp.counters(0).bursts, 0);
}

// ---- connection state ----

/// A TCP segment with these flags (the frame builder's TCP header is the frame's last 20
/// bytes; its flags byte is 13 into it).
fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = udp(src, dst, sport, dport).proto(6).bytes();
    let n = f.len();
    f[n - 20 + 13] = flags;
    f
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;

/// `partition --conn new` cuts a SYN without ACK and nothing else, both ways, v4 and v6, at
/// XDP and tc; `--conn established` the reverse; neither touches UDP.
#[test]
fn conn_new_and_established_match_syn_without_ack() {
    let mut dp = Dp::new();
    for (a, b) in [("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2")] {
        let mut p = RuleSpec::new("p", Kind::Partition);
        p.src = vec![net(a)];
        p.dst = vec![net(b)];
        p.conn = Conn::New;
        dp.set(&[p.clone()]);
        let cases = [
            (SYN, true),
            (SYN | ACK, false),
            (ACK, false),
            (ACK | FIN, false),
            (RST, false),
            (SYN | FIN, true),
        ];
        for (flags, new) in cases {
            for (s, d) in [(a, b), (b, a)] {
                let f = tcp(s, d, 40000, 80, flags);
                let want = if new { XDP_DROP } else { XDP_PASS };
                assert_eq!(dp.xdp(&f, 1), want, "{s}->{d} flags {flags:#x} new");
                let want = if new { EGRESS_LOST } else { TCX_NEXT };
                assert_eq!(dp.tc("nf_tc_egress", &f, 1), want, "tc {flags:#x} new");
            }
        }
        assert_eq!(
            dp.xdp(&udp(a, b, 1, 2).bytes(), 1),
            XDP_PASS,
            "UDP is not TCP"
        );
        p.conn = Conn::Established;
        dp.set(&[p]);
        for (flags, new) in cases {
            let f = tcp(a, b, 40000, 80, flags);
            let want = if new { XDP_PASS } else { XDP_DROP };
            assert_eq!(dp.xdp(&f, 1), want, "flags {flags:#x} established");
        }
        assert_eq!(dp.xdp(&udp(a, b, 1, 2).bytes(), 1), XDP_PASS);
    }
    // A rule: --proto tcp --conn new --drop 100%, with a port.
    let mut r = rule("r");
    r.proto = Proto::Tcp;
    r.dport = PortRange { lo: 80, hi: 80 };
    r.conn = Conn::New;
    r.validate().unwrap();
    dp.set(&[r]);
    assert_eq!(
        dp.xdp(&tcp("192.0.2.1", "192.0.2.2", 4, 80, SYN), 1),
        XDP_DROP
    );
    assert_eq!(
        dp.xdp(&tcp("192.0.2.1", "192.0.2.2", 4, 81, SYN), 1),
        XDP_PASS
    );
    assert_eq!(
        dp.xdp(&tcp("192.0.2.1", "192.0.2.2", 4, 80, ACK), 1),
        XDP_PASS
    );
    assert_eq!(dp.counters(0).matched, 1);
}
