//! BPF_PROG_TEST_RUN of netfault's own programs on crafted frames: the object loaded with its
//! maps pinned in a namespace of the test's, rules published as the CLI would, and the frames
//! those tests build (Ethernet, IPv4 or IPv6, checksums computed here).
use std::net::IpAddr;

use aya::{
    Ebpf,
    programs::{Program, SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use netfault::{
    compile::{Input, compile, rule_value},
    dataplane::{self as kernel, Maps},
    spec::RuleSpec,
};
use netfault_common::{Counters, RuleValue};

use super::{Lab, PREFIX};

pub const XDP: &str = "nf_xdp_ingress";
pub const IN: &str = "nf_tc_ingress";
pub const OUT: &str = "nf_tc_egress";
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;
pub const TCX_NEXT: u32 = u32::MAX;
/// `struct __sk_buff` as a test run takes it, and the offsets of the fields tests set or read.
pub const SKB_CTX_LEN: usize = 192;
pub const SKB_MARK: usize = 8;
pub const SKB_GSO_SEGS: usize = 164;

/// The programs, loaded once per test, and their maps.
pub struct Dp {
    pub ebpf: Ebpf,
    pub maps: Maps,
    _lab: Lab,
}

/// What a run gave: the verdict, the frame after it, and the mark the program left.
pub struct Run {
    pub verdict: u32,
    pub frame: Vec<u8>,
    pub mark: u32,
}

impl Dp {
    pub fn new() -> Dp {
        let mut lab = Lab::new(PREFIX).expect("lab");
        let ns = lab.netns("dp").expect("netns");
        lab.enter(&ns).expect("enter the namespace");
        let pins = lab.pin_dir("dp").expect("pin directory");
        let mut ebpf = kernel::load(&pins).expect("load the object");
        let maps = Maps::take(&mut ebpf).expect("the maps");
        for name in [XDP, OUT, IN] {
            match ebpf.program_mut(name).expect("a program of netfault's") {
                Program::Xdp(x) => x.load().expect("verified"),
                Program::SchedClassifier(c) => c.load().expect("verified"),
                _ => panic!("{name} is neither XDP nor tc"),
            }
        }
        Dp {
            ebpf,
            maps,
            _lab: lab,
        }
    }

    /// Publishes `rules` in slots 0.. with fresh counters.
    pub fn set(&mut self, rules: &[RuleSpec]) {
        self.set_with(rules, |_, _| {});
    }

    /// [`Dp::set`], each value changed by `edit(slot, value)` first (to reach values
    /// `rule_value` never gives).
    pub fn set_with(&mut self, rules: &[RuleSpec], edit: impl Fn(u32, &mut RuleValue)) {
        for i in 0..rules.len() as u32 {
            self.maps.reset_counters(i).expect("reset counters");
        }
        let inputs: Vec<Input<'_>> = rules
            .iter()
            .enumerate()
            .map(|(i, s)| Input {
                slot: i as u32,
                spec: s,
                ifindex: None,
            })
            .collect();
        let c = compile(&inputs).expect("the rules compile");
        let values: Vec<_> = rules
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut v = rule_value(s, 0, 0);
                edit(i as u32, &mut v);
                (i as u32, v)
            })
            .collect();
        self.maps.publish_set(&c, &values).expect("publish");
    }

    /// One run of tc program `prog` on `pkt`.
    pub fn tc(&self, prog: &str, pkt: &[u8], gso_segs: u32) -> Run {
        self.tc_runs(prog, pkt, gso_segs, 1)
    }

    /// `repeat` runs of tc program `prog` on one skb (`gso_segs` as the stack set it): what a
    /// run leaves in it (the segmentation mark) the next sees.
    pub fn tc_runs(&self, prog: &str, pkt: &[u8], gso_segs: u32, repeat: u32) -> Run {
        let p: &SchedClassifier = self
            .ebpf
            .program(prog)
            .expect("a program of netfault's")
            .try_into()
            .expect("a tc program");
        let mut ctx = [0u8; SKB_CTX_LEN];
        ctx[SKB_GSO_SEGS..SKB_GSO_SEGS + 4].copy_from_slice(&gso_segs.to_ne_bytes());
        let mut ctx_out = [0u8; SKB_CTX_LEN];
        let mut out = vec![0u8; 4096];
        let r = p
            .test_run(TestRunOptions {
                data_in: Some(pkt),
                data_out: Some(&mut out),
                ctx_in: Some(&ctx),
                ctx_out: Some(&mut ctx_out),
                repeat,
                ..Default::default()
            })
            .expect("test run");
        out.truncate(r.data_size_out as usize);
        let mut mark = [0u8; 4];
        mark.copy_from_slice(&ctx_out[SKB_MARK..SKB_MARK + 4]);
        Run {
            verdict: r.return_value,
            frame: out,
            mark: u32::from_ne_bytes(mark),
        }
    }

    pub fn xdp(&self, pkt: &[u8]) -> u32 {
        let p: &Xdp = self
            .ebpf
            .program(XDP)
            .expect("the XDP program")
            .try_into()
            .expect("XDP");
        p.test_run(TestRunOptions {
            data_in: Some(pkt),
            ..Default::default()
        })
        .expect("test run")
        .return_value
    }

    pub fn counters(&self, slot: u32) -> Counters {
        self.maps.counters(slot).expect("counters")
    }
}

pub fn v4() -> (IpAddr, IpAddr) {
    (
        "192.0.2.1".parse().expect("an address"),
        "198.51.100.2".parse().expect("an address"),
    )
}

pub fn v6() -> (IpAddr, IpAddr) {
    (
        "2001:db8::1".parse().expect("an address"),
        "2001:db8:1::2".parse().expect("an address"),
    )
}

pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

pub fn octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// An Ethernet frame carrying `l4` (protocol `proto`, taken as it is) from `src` to `dst`.
pub fn frame(src: IpAddr, dst: IpAddr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    let (s, d) = (octets(src), octets(dst));
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let total = (20 + l4.len()) as u16;
            let mut h = vec![0x45, 0];
            h.extend_from_slice(&total.to_be_bytes());
            h.extend_from_slice(&[0x12, 0x34, 0x40, 0, 63, proto, 0, 0]);
            h.extend_from_slice(&s);
            h.extend_from_slice(&d);
            let c = csum(&h, 0);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&h);
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => {
            f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
            f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            f.extend_from_slice(&[proto, 63]);
            f.extend_from_slice(&s);
            f.extend_from_slice(&d);
        }
        _ => panic!("mixed families"),
    }
    f.extend_from_slice(l4);
    f
}

/// The Internet checksum of `b` seeded with `acc` (already folded or not).
pub fn csum(b: &[u8], mut acc: u64) -> u16 {
    for c in b.chunks(2) {
        acc += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The unfolded sum of the pseudo-header of a transport segment `len` bytes long.
pub fn pseudo(src: &[u8], dst: &[u8], proto: u8, len: usize) -> u64 {
    let mut p = Vec::new();
    p.extend_from_slice(src);
    p.extend_from_slice(dst);
    if src.len() == 4 {
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    }
    p.chunks(2)
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum()
}
