//! The kernel against a model: random rule sets (every match shape, priorities, protections,
//! expired and live entries) compiled and published into one loaded object, and random frames
//! (IPv4/IPv6, TCP/UDP/ICMP, VLAN and QinQ, options, extension headers short, long and many,
//! fragments, truncation) run
//! through the real programs with BPF_PROG_TEST_RUN at XDP, tc egress and tc ingress. Each
//! verdict, and each rule's match count, must be what a reference classifier says: the first
//! live entry, in evaluation order, whose spec matches the packet. The reference reads the specs
//! themselves, never `compile`'s output.
//!
//! Fixed seed; `PROPTEST_CASES` sets the number of rule sets (default 1500, 8 frames each).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use common::{Lab, PREFIX};
use ipnet::IpNet;
use netfault::{
    compile::{Input, compile, rule_value},
    control::pipeline,
    dataplane::{self as kernel, Maps},
    spec::{Direction, Kind, PortRange, Prob, Proto, RuleSpec, protection},
};
use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const TC_ACT_SHOT: u32 = 2;
/// An egress drop: a redirect to ifindex 0, which the stack takes for a packet sent (a loss).
const TC_ACT_REDIRECT: u32 = 7;
const TCX_NEXT: u32 = u32::MAX;
/// BPF_PROG_TEST_RUN runs the programs on the namespace's loopback device.
const LO: u32 = 1;
const OTHER_IF: u32 = 999;

// ---- rule sets ----

/// A spec, the interface index it compiles with, and its expiry (0: never).
#[derive(Clone, Debug)]
struct Entry {
    spec: RuleSpec,
    ifindex: Option<u32>,
    expiry: Expiry,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Expiry {
    Never,
    Expired,
    Live,
}

fn v4(d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, d))
}

fn v6(d: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, d))
}

/// Networks over a few addresses, so rules overlap and packets hit them.
fn net(v6_family: bool) -> impl Strategy<Value = IpNet> {
    (
        0u8..8,
        prop::sample::select(vec![0u8, 1, 2, 3, 8]),
        any::<bool>(),
    )
        .prop_map(move |(d, shorten, wide)| {
            let (a, max) = if v6_family && d >= 6 {
                (v6_subnet(u16::from(d - 5), u16::from(d)), 128)
            } else if v6_family {
                (v6(u16::from(d)), 128)
            } else {
                (v4(d), 32)
            };
            let plen = if wide { max / 2 } else { max - shorten };
            IpNet::new(a, plen).expect("valid prefix").trunc()
        })
}

fn ports() -> impl Strategy<Value = PortRange> {
    prop_oneof![
        3 => Just(PortRange::ALL),
        2 => (0u16..8).prop_map(|p| PortRange { lo: p, hi: p }),
        2 => (0u16..8, 0u16..12).prop_map(|(lo, n)| PortRange { lo, hi: lo + n }),
        1 => Just(PortRange { lo: 0, hi: 100 }),
    ]
}

fn spec() -> impl Strategy<Value = Entry> {
    (
        prop::sample::select(vec![
            Kind::Rule,
            Kind::Rule,
            Kind::Rule,
            Kind::Partition,
            Kind::Protect,
        ]),
        prop::sample::select(vec![Direction::Both, Direction::Ingress, Direction::Egress]),
        any::<bool>(),
        prop::collection::vec(any::<bool>(), 0..3),
        prop::collection::vec(any::<bool>(), 0..3),
        prop::sample::select(vec![Proto::Any, Proto::Tcp, Proto::Udp, Proto::Icmp]),
        (ports(), ports()),
        prop::sample::select(vec![0u8, 0, 0, 1, 2, 3]),
        (0u32..3, any::<bool>(), any::<bool>()),
        prop::sample::select(vec![
            Expiry::Never,
            Expiry::Expired,
            Expiry::Live,
            Expiry::Live,
        ]),
        any::<u64>(),
    )
        .prop_flat_map(
            |(
                kind,
                dir,
                fam6,
                src,
                dst,
                proto,
                (sp, dp),
                iface,
                (prio, drop, oneway),
                expiry,
                seed,
            )| {
                // Rules stay within one family; partitions may mix (their cross pairs never match).
                let fam = |mixed: bool| {
                    if kind == Kind::Partition && mixed {
                        !fam6
                    } else {
                        fam6
                    }
                };
                let src: Vec<_> = src.iter().map(|&m| net(fam(m))).collect();
                let dst: Vec<_> = dst.iter().map(|&m| net(fam(m))).collect();
                (src, dst).prop_map(move |(src, dst)| {
                    let mut s = RuleSpec::new(format!("e{seed}"), kind);
                    s.dir = dir;
                    s.src = src;
                    s.dst = dst;
                    s.proto = proto;
                    // Ports only with TCP or UDP, as validation requires.
                    if matches!(proto, Proto::Tcp | Proto::Udp) {
                        (s.sport, s.dport) = (sp, dp);
                    }
                    s.priority = prio;
                    s.oneway = oneway;
                    s.act.drop = Prob(if drop { 1.0 } else { 0.0 });
                    s.act.duplicate = Prob(0.0);
                    let ifindex = match iface {
                        1 => {
                            s.iface = Some("lo".into());
                            Some(LO)
                        }
                        2 => {
                            s.iface = Some("other".into());
                            Some(OTHER_IF)
                        }
                        3 => {
                            s.iface = Some("gone".into());
                            None
                        }
                        _ => None,
                    };
                    let expiry = if kind == Kind::Protect {
                        Expiry::Never
                    } else {
                        expiry
                    };
                    Entry {
                        spec: s,
                        ifindex,
                        expiry,
                    }
                })
            },
        )
}

/// Up to 8 entries, sometimes repeated (same match, another priority, expiry or action), with
/// the loopback protections and an SSH 4-tuple sometimes.
fn rule_set() -> impl Strategy<Value = Vec<Entry>> {
    (
        prop::collection::vec(spec(), 0..8),
        prop::collection::vec((any::<prop::sample::Index>(), any::<bool>(), 0u32..3), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut v, dups, lo, ssh)| {
            for (i, drop, prio) in dups {
                if !v.is_empty() {
                    let mut e = v[i.index(v.len())].clone();
                    e.spec.act.drop = Prob(if drop { 1.0 } else { 0.0 });
                    e.spec.priority = prio;
                    // Protections never expire (the controller gives them no expiry).
                    if e.spec.kind != Kind::Protect {
                        e.expiry = if drop { Expiry::Live } else { Expiry::Expired };
                    }
                    v.push(e);
                }
            }
            let never = |spec: RuleSpec| Entry {
                spec,
                ifindex: None,
                expiry: Expiry::Never,
            };
            if lo {
                v.extend(
                    pipeline::protections(Vec::new(), |_| false)
                        .into_iter()
                        .map(never),
                );
            }
            if ssh {
                v.extend(
                    protection::ssh("ssh", v4(1), 5, v4(2), 2)
                        .into_iter()
                        .map(never),
                );
            }
            v
        })
}

// ---- frames ----

#[derive(Clone, Debug)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    /// The VLAN tags' EtherTypes, outer first.
    vlan: Vec<u16>,
    /// IPv4 option words, or IPv6 extension headers (type, bytes).
    v4_options: usize,
    v6_ext: Vec<(u8, usize)>,
    frag: Frag,
    /// Frame cut to 14 bytes and this many more (modulo what there is).
    cut: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Frag {
    None,
    First,
    Later,
}

/// 2001:db8:0:`subnet`::`d`: v6 addresses that differ in a byte the prefilter reads.
fn v6_subnet(subnet: u16, d: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, subnet, 0, 0, 0, d))
}

fn addr(v6_family: bool) -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        8 => (0u8..10).prop_map(move |d| if v6_family { v6(u16::from(d)) } else { v4(d) }),
        1 => (1u16..3, 0u16..10).prop_map(move |(s, d)| if v6_family { v6_subnet(s, d) } else { v4(d as u8) }),
        1 => Just(if v6_family { IpAddr::V6(Ipv6Addr::LOCALHOST) } else { IpAddr::V4(Ipv4Addr::LOCALHOST) }),
        1 => any::<u128>().prop_map(move |a| if v6_family { IpAddr::V6(a.into()) } else { IpAddr::V4((a as u32).into()) }),
    ]
}

fn pkt() -> impl Strategy<Value = Pkt> {
    any::<bool>().prop_flat_map(|fam6| {
        (
            addr(fam6),
            addr(fam6),
            prop::sample::select(vec![6u8, 6, 17, 17, 1, 58, 47]),
            (
                0u16..10,
                prop::sample::select(vec![0u16, 1, 2, 5, 7, 9, 53, 100, 101]),
            ),
            prop::sample::select(vec![
                vec![],
                vec![],
                vec![0x8100],
                vec![0x88a8],
                vec![0x8100, 0x8100],
                vec![0x88a8, 0x8100],
            ]),
            0usize..3,
            prop_oneof![
                6 => ext_headers(0..3),
                // More than the parser skips, and one longer than it reaches.
                1 => ext_headers(5..9),
                1 => ext_headers(0..2).prop_map(|mut v| {
                    v.push((60, 2048));
                    v
                }),
            ],
            prop::sample::select(vec![
                Frag::None,
                Frag::None,
                Frag::None,
                Frag::First,
                Frag::Later,
            ]),
            prop::option::weighted(0.15, 0usize..400),
        )
            .prop_map(
                |(src, dst, proto, (sport, dport), vlan, v4_options, v6_ext, frag, cut)| Pkt {
                    src,
                    dst,
                    proto,
                    sport,
                    dport,
                    vlan,
                    v4_options,
                    v6_ext,
                    frag,
                    cut,
                },
            )
    })
}

fn ext_headers(n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<(u8, usize)>> {
    prop::collection::vec(
        prop::sample::select(vec![(0u8, 8usize), (0, 16), (60, 8), (43, 24), (51, 16)]),
        n,
    )
}

impl Pkt {
    /// The frame, and where its network headers end.
    fn bytes(&self) -> (Vec<u8>, usize) {
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        for (i, t) in self.vlan.iter().enumerate() {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&(100 + i as u16).to_be_bytes());
        }
        let mut l4 = Vec::new();
        l4.extend_from_slice(&self.sport.to_be_bytes());
        l4.extend_from_slice(&self.dport.to_be_bytes());
        l4.extend_from_slice(&[0u8; 16]);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&[0x08, 0x00]);
                let ihl = 5 + self.v4_options;
                let total = (ihl * 4 + l4.len()) as u16;
                let frag: u16 = match self.frag {
                    Frag::None => 0,
                    Frag::First => 0x2000,
                    Frag::Later => 0x2000 | 185,
                };
                f.extend_from_slice(&[0x40 | ihl as u8, 0]);
                f.extend_from_slice(&total.to_be_bytes());
                f.extend_from_slice(&[0, 1]);
                f.extend_from_slice(&frag.to_be_bytes());
                f.extend_from_slice(&[64, self.proto, 0, 0]);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                f.extend(std::iter::repeat_n(1u8, self.v4_options * 4));
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&[0x86, 0xdd]);
                let mut ext = self.v6_ext.clone();
                if self.frag != Frag::None {
                    ext.push((44, 8)); // last: the parser stops at a later fragment's header
                }
                let total: usize = ext.iter().map(|e| e.1).sum::<usize>() + l4.len();
                f.extend_from_slice(&[0x60, 0, 0, 0]);
                f.extend_from_slice(&(total as u16).to_be_bytes());
                f.push(ext.first().map_or(self.proto, |e| e.0));
                f.push(64);
                f.extend_from_slice(&s.octets());
                f.extend_from_slice(&d.octets());
                for (i, &(ty, len)) in ext.iter().enumerate() {
                    let mut h = vec![0u8; len];
                    h[0] = ext.get(i + 1).map_or(self.proto, |e| e.0);
                    match ty {
                        44 => {
                            let off: u16 = if self.frag == Frag::Later {
                                185 << 3
                            } else {
                                0
                            };
                            h[2..4].copy_from_slice(&(off | 1).to_be_bytes());
                        }
                        51 => h[1] = (len / 4 - 2) as u8,
                        _ => h[1] = (len / 8 - 1) as u8,
                    }
                    f.extend_from_slice(&h);
                }
            }
            _ => unreachable!("one family per packet"),
        }
        let hdr_end = f.len();
        f.extend_from_slice(&l4);
        // BPF_PROG_TEST_RUN refuses less than an Ethernet header.
        if let Some(c) = self.cut {
            f.truncate(14 + c % (f.len() - 14 + 1));
        }
        (f, hdr_end)
    }
}

/// What the packet is to a classifier: None when its addresses cannot be read.
struct Fields {
    src: IpAddr,
    dst: IpAddr,
    /// None: unknown (IPv6 extension headers the parser cannot follow to their end).
    proto: Option<u8>,
    ports: Option<(u16, u16)>,
}

/// The parser's bounds: extension headers it skips, and the offset in the frame no header it
/// reads may start beyond.
const MAX_EXT_HDRS: usize = 6;
const MAX_L4_OFF: usize = 256;

fn fields(p: &Pkt) -> Option<Fields> {
    let (f, hdr_end) = p.bytes();
    let (len, l3) = (f.len(), 14 + 4 * p.vlan.len());
    // The protocol, and whether the transport header is where the network headers end.
    let (proto, l4) = if p.src.is_ipv4() {
        if len < l3 + 20 {
            return None;
        }
        // Options cut short leave the protocol read and no ports.
        (Some(p.proto), len >= hdr_end && p.frag != Frag::Later)
    } else {
        if len < l3 + 40 {
            return None;
        }
        v6_chain(p, l3, len)
    };
    let has_ports = l4 && matches!(proto, Some(6 | 17)) && len >= hdr_end + 4;
    Some(Fields {
        src: p.src,
        dst: p.dst,
        proto,
        ports: has_ports.then_some((p.sport, p.dport)),
    })
}

/// An IPv6 packet's extension headers followed as far as the parser does, in a frame of `len`
/// bytes: the protocol (None: unknown) and whether the transport header follows.
fn v6_chain(p: &Pkt, l3: usize, len: usize) -> (Option<u8>, bool) {
    let mut ext = p.v6_ext.clone();
    if p.frag != Frag::None {
        ext.push((44, 8));
    }
    let mut off = l3 + 40;
    for (i, &(ty, hlen)) in ext.iter().enumerate() {
        if i == MAX_EXT_HDRS {
            return (None, false);
        }
        if ty == 44 && p.frag == Frag::Later {
            // The last header: a later fragment's protocol, and no transport header.
            return if len < off + 8 {
                (None, false)
            } else {
                (Some(p.proto), false)
            };
        }
        off += hlen;
        if off > MAX_L4_OFF || len < off {
            return (None, false);
        }
    }
    (Some(p.proto), true)
}

// ---- the reference ----

fn band(k: Kind) -> u8 {
    match k {
        Kind::Protect => 0,
        Kind::Partition => 1,
        Kind::Rule => 2,
    }
}

fn in_nets(nets: &[IpNet], a: IpAddr) -> bool {
    nets.is_empty() || nets.iter().any(|n| n.contains(&a))
}

fn in_range(r: PortRange, p: Option<u16>) -> bool {
    r.is_all() || p.is_some_and(|p| r.lo <= p && p <= r.hi)
}

fn matches(e: &Entry, f: &Fields, ingress: bool) -> bool {
    let s = &e.spec;
    if !s.dir.includes(ingress) {
        return false;
    }
    if s.iface.is_some() && e.ifindex != Some(LO) {
        return false;
    }
    let v6_family = f.src.is_ipv6();
    let proto = match s.proto {
        Proto::Any => true,
        Proto::Tcp => f.proto == Some(6),
        Proto::Udp => f.proto == Some(17),
        Proto::Icmp => f.proto == Some(if v6_family { 58 } else { 1 }),
    };
    let ports = in_range(s.sport, f.ports.map(|p| p.0)) && in_range(s.dport, f.ports.map(|p| p.1));
    let forward = in_nets(&s.src, f.src) && in_nets(&s.dst, f.dst);
    let reverse =
        s.kind == Kind::Partition && !s.oneway && in_nets(&s.dst, f.src) && in_nets(&s.src, f.dst);
    proto && ports && (forward || reverse)
}

/// Index of the entry that wins, if any: the first live rule or partition, in evaluation
/// order, that matches; unless a protection matches too, when the first such protection wins
/// (it passes the packet and counts it). A packet only a protection matches matches nothing.
fn reference(set: &[Entry], order: &[usize], f: &Fields, ingress: bool) -> Option<usize> {
    let first = |protect: bool| {
        order.iter().copied().find(|&i| {
            (set[i].spec.kind == Kind::Protect) == protect
                && set[i].expiry != Expiry::Expired
                && matches(&set[i], f, ingress)
        })
    };
    let rule = first(false)?;
    first(true).or(Some(rule))
}

fn drops(e: &Entry) -> bool {
    match e.spec.kind {
        Kind::Partition => true,
        Kind::Protect => false,
        Kind::Rule => e.spec.act.drop.0 >= 1.0,
    }
}

// ---- the kernel ----

struct Kernel {
    ebpf: aya::Ebpf,
    maps: Maps,
    /// Rule sets published, and refused as the controller refuses them (too many shapes, too
    /// many rules with one match): a generator whose sets are mostly refused tests nothing.
    published: u32,
    refused: u32,
    /// Whether the loopback is marked tc-only: the mark is written only when it changes (a
    /// second unmark is an error, and a case that failed between two hooks leaves either).
    tc_only: bool,
    _lab: Lab,
}

impl Kernel {
    fn new() -> Kernel {
        let mut lab = Lab::new(PREFIX).expect("lab");
        let ns = lab.netns("model").expect("netns");
        lab.enter(&ns).expect("enter the namespace");
        let pins = lab.pin_dir("model").expect("pin directory");
        let mut ebpf = kernel::load(&pins).expect("load");
        let mut maps = Maps::take(&mut ebpf).expect("maps");
        for name in ["nf_xdp_ingress", "nf_tc_egress", "nf_tc_ingress"] {
            match ebpf.program_mut(name).expect("program") {
                aya::programs::Program::Xdp(x) => x.load().expect("load XDP"),
                aya::programs::Program::SchedClassifier(c) => c.load().expect("load tc"),
                _ => unreachable!(),
            }
        }
        // tc ingress applies every rule on the loopback (as where XDP is not netfault's); `run`
        // lifts the mark for XDP, which passes everything on a tc-only interface.
        maps.set_tc_only(LO, true).expect("tc-only");
        Kernel {
            ebpf,
            maps,
            published: 0,
            refused: 0,
            tc_only: true,
            _lab: lab,
        }
    }

    /// Publishes the set; false when it does not fit (too many shapes), as the controller refuses.
    fn publish(&mut self, set: &[Entry], order: &[usize]) -> bool {
        let now = netfault::control::monotonic_ns();
        let inputs: Vec<Input<'_>> = order
            .iter()
            .map(|&i| Input {
                slot: i as u32,
                spec: &set[i].spec,
                ifindex: set[i].ifindex,
            })
            .collect();
        let c = match compile(&inputs) {
            Ok(c) => c,
            Err(
                netfault::compile::CompileError::TooManyTuples(_)
                | netfault::compile::CompileError::ChainTooLong { .. },
            ) => {
                self.refused += 1;
                return false;
            }
            Err(e) => panic!("compile: {e}"),
        };
        self.published += 1;
        let values: Vec<_> = order
            .iter()
            .map(|&i| {
                let e = &set[i];
                let exp = match e.expiry {
                    Expiry::Never => 0,
                    Expiry::Expired => 1,
                    Expiry::Live => now + 600_000_000_000,
                };
                (i as u32, rule_value(&e.spec, exp, 0))
            })
            .collect();
        for i in 0..set.len() as u32 {
            self.maps.reset_counters(i).expect("reset counters");
        }
        // Slots here are reused by any entry at once; each generation holds its own values, so
        // nothing is written again here (a set already in a buffer is not rewritten).
        self.maps.publish_set(&c, &values).expect("publish");
        true
    }

    /// The verdict; None when the kernel refuses to run tc on a frame this short (test runs of
    /// skb programs want more than the Ethernet header).
    fn run(&mut self, hook: Hook, frame: &[u8]) -> Option<u32> {
        // XDP's test runs arrive on the loopback: it applies the rules only while that is not
        // tc-only, and tc ingress applies every rule only while it is.
        let tc_only = hook != Hook::Xdp;
        if tc_only != self.tc_only {
            self.maps.set_tc_only(LO, tc_only).expect("tc-only mark");
            self.tc_only = tc_only;
        }
        let opts = TestRunOptions {
            data_in: Some(frame),
            ..Default::default()
        };
        let r = match hook {
            Hook::Xdp => {
                let p: &Xdp = self
                    .ebpf
                    .program("nf_xdp_ingress")
                    .unwrap()
                    .try_into()
                    .unwrap();
                p.test_run(opts)
            }
            Hook::TcEgress | Hook::TcIngress => {
                let name = if hook == Hook::TcEgress {
                    "nf_tc_egress"
                } else {
                    "nf_tc_ingress"
                };
                let p: &SchedClassifier = self.ebpf.program(name).unwrap().try_into().unwrap();
                p.test_run(opts)
            }
        };
        match r {
            Ok(r) => Some(r.return_value),
            Err(_) if hook != Hook::Xdp && frame.len() < 64 => None,
            Err(e) => panic!("BPF_PROG_TEST_RUN {hook:?}, {} bytes: {e}", frame.len()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Hook {
    Xdp,
    TcEgress,
    TcIngress,
}

fn check(k: &mut Kernel, set: &[Entry], pkts: &[Pkt]) -> Result<(), TestCaseError> {
    // Evaluation order as the controller's: band, priority, age (here: position).
    let mut order: Vec<usize> = (0..set.len()).collect();
    order.sort_by_key(|&i| (band(set[i].spec.kind), set[i].spec.priority, i));
    if !k.publish(set, &order) {
        return Ok(());
    }
    let mut want = vec![0u64; set.len()];
    for p in pkts {
        let (frame, _) = p.bytes();
        let f = fields(p);
        for hook in [Hook::Xdp, Hook::TcEgress, Hook::TcIngress] {
            let ingress = hook != Hook::TcEgress;
            let Some(got) = k.run(hook, &frame) else {
                continue;
            };
            let win = f.as_ref().and_then(|f| reference(set, &order, f, ingress));
            if let Some(w) = win {
                want[w] += 1;
            }
            let drop = win.is_some_and(|w| drops(&set[w]));
            let expect = match (hook, drop) {
                (Hook::Xdp, true) => XDP_DROP,
                (Hook::Xdp, false) => XDP_PASS,
                (Hook::TcEgress, true) => TC_ACT_REDIRECT,
                (_, true) => TC_ACT_SHOT,
                (_, false) => TCX_NEXT,
            };
            prop_assert_eq!(
                got,
                expect,
                "{:?} on {:?}: winner {:?}",
                hook,
                p,
                win.map(|w| &set[w])
            );
        }
    }
    for (i, w) in want.iter().enumerate() {
        let got = k.maps.counters(i as u32).expect("counters").matched;
        prop_assert_eq!(got, *w, "matches of entry {} ({:?})", i, set[i]);
    }
    Ok(())
}

#[test]
fn kernel_matches_the_reference_classifier() {
    let k = std::cell::RefCell::new(Kernel::new());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[0x4e; 32]);
    let mut runner = TestRunner::new_with_rng(config, rng);
    let start = std::time::Instant::now();
    let res = runner.run(
        &(rule_set(), prop::collection::vec(pkt(), 8)),
        |(set, pkts)| check(&mut k.borrow_mut(), &set, &pkts),
    );
    let k = k.borrow();
    eprintln!(
        "{cases} rule sets in {:.1} s: {} published, {} refused",
        start.elapsed().as_secs_f64(),
        k.published,
        k.refused
    );
    if let Err(e) = res {
        panic!("{e}");
    }
    // Every case ran, and at most 1 in 20 was refused.
    assert_eq!(k.published + k.refused, cases, "rule sets not checked");
    assert!(
        k.refused * 20 <= cases,
        "{} of {cases} rule sets were refused: the generator tests too little",
        k.refused
    );
}
