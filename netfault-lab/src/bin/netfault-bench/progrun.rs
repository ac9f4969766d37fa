//! Part 1: nanoseconds per packet under BPF_PROG_TEST_RUN, netfault's XDP program against a
//! program that only returns XDP_PASS, with 1, 2, 1k and 64k rules of one shape and with 1, 4,
//! 16 and 64 rules of as many shapes, for a packet that matches one rule and one that matches
//! none.
//!
//! Every set is deployed as the CLI deploys it: after the protections it always carries
//! (loopback, and the SSH connection's 4-tuple), ordered and compiled by the controller's
//! pipeline, each rule with the default TTL (so the data path checks its expiry).
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{Program, ProgramError, TestRun as _, TestRunOptions, Xdp},
};
use netfault::{
    control::{monotonic_ns, pipeline, state::RuleEntry},
    dataplane::{self as kernel, Maps},
    spec::{Actions, Kind, Prob, RuleSpec, Ttl, protection},
};
use netfault_common::progs;

use crate::{Plan, frame, sys, topo};

/// 2: the fewest rules of one shape whose tuple is looked up in a flow map (a tuple of one flow
/// of one rule is matched by its filter alone).
pub const RULE_COUNTS: [u32; 4] = [1, 2, 1 << 10, 1 << 16];
/// The protections take 5 of the 64 tuples (loopback's 4, the SSH 4-tuple's 1): "64" runs the
/// 59 shapes that fit beside them, the most a deployed set can hold.
pub const SHAPE_COUNTS: [u32; 4] = [1, 4, 16, 64];
const PROTECTION_TUPLES: u32 = 5;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// The matching packet's addresses: rule 0 of every set (see `rule_set`).
pub const MATCH_SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// Outside 192.0.2.0/24, so no rule of any set matches it.
const MISS_SRC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

pub struct Row {
    pub program: &'static str,
    pub rules: Option<u32>,
    /// Distinct shapes among the rules (protections not counted).
    pub shapes: Option<u32>,
    pub tuples: Option<usize>,
    pub packet: &'static str,
    pub verdict: u32,
    /// Median over runs of the kernel's own per-run average.
    pub ns: f64,
    /// The trivial program's median over the runs interleaved with this row's.
    pub pass_ns: f64,
    /// Median over runs of (this run - the trivial program's run right before it): a machine
    /// that slows down during the bench (other load, frequency) shifts both of a pair.
    pub over_pass: f64,
    /// Median over runs of (this run / the reference set's run right before it, same packet),
    /// the reference held by another instance of the program so the two interleave: 1 rule
    /// for a packet that matches none, 2 rules for a matching one (`REF_RULES`).
    pub vs_ref: Option<f64>,
    /// The target this figure must meet, if any.
    pub target: Option<Target>,
}

#[derive(Clone, Copy)]
pub enum Target {
    /// At most this many ns over the trivial program; the issue aims at the second figure.
    OverPass(f64, f64),
    /// At most this ratio to the same packet at the reference set (`REF_RULES` rules).
    VsRef(f64, u32),
}

/// The reference a set of one shape is timed against, by packet: for a packet that matches
/// nothing, the 1-rule set; for a matching one, the 2-rule set, the smallest whose tuple is
/// looked up in a flow map as a large set's is (1 rule is cheaper still: no lookup at all).
pub fn ref_rules(packet: &str) -> u32 {
    if packet == "matching" { 2 } else { 1 }
}

impl Target {
    pub fn met(self, r: &Row) -> bool {
        match self {
            Target::OverPass(t, _) => r.over_pass <= t,
            Target::VsRef(t, _) => r.vs_ref.is_some_and(|v| v <= t),
        }
    }
}

/// Targets of issue #9: a packet that matches nothing costs at most +30 ns over a trivial
/// program at 1 rule and +60 ns at 16 shapes (aims: +20 and +40), and at 64k rules what it
/// costs at 1, within 5%. The bench holds a matching packet to the same at 64k rules against 2.
fn target(shapes: u32, rules: u32, packet: &str) -> Option<Target> {
    match (shapes, rules, packet) {
        (1, 1, "non-matching") => Some(Target::OverPass(30.0, 20.0)),
        (1, n, p) if n > 1 << 15 => Some(Target::VsRef(1.05, ref_rules(p))),
        (16, _, "non-matching") => Some(Target::OverPass(60.0, 40.0)),
        _ => None,
    }
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        _ => "other",
    }
}

/// A /32.
fn host(a: Ipv4Addr) -> ipnet::IpNet {
    IpAddr::V4(a).into()
}

/// Rule `k` drops 192.0.2.a -> 198.51.100.b, with a = k/256 + 1 and b = k%256 + 1 (mod 256),
/// both /32: 65,536 distinct host pairs inside the documentation ranges, rule 0 being
/// 192.0.2.1 -> 198.51.100.1. All share one match shape, so they compile to a single tuple and a
/// matching packet matches exactly one rule.
fn rule_set(n: u32) -> Vec<RuleSpec> {
    (0..n)
        .map(|k| {
            let a = ((k >> 8) as u8).wrapping_add(1);
            let b = ((k & 0xff) as u8).wrapping_add(1);
            RuleSpec {
                src: vec![host(Ipv4Addr::new(192, 0, 2, a))],
                dst: vec![host(Ipv4Addr::new(198, 51, 100, b))],
                act: Actions::drops(Prob(1.0)),
                ..RuleSpec::new(format!("bench-{k}"), Kind::Rule)
            }
        })
        .collect()
}

/// `n` rules (at most the tuples the protections leave) of `n` shapes: rule `k` drops 192.0.2.1/(32 - k%16) ->
/// 198.51.100.1/(32 - k/16). Rule 0 is 192.0.2.1 -> 198.51.100.1 and comes first, so the
/// matching packet matches it; the non-matching one (from 203.0.113.1) is inside none.
fn shape_set(n: u32) -> Vec<RuleSpec> {
    (0..n.min(netfault_common::MAX_TUPLES - PROTECTION_TUPLES))
        .map(|k| {
            let net = |a: Ipv4Addr, plen: u32| {
                // plen is 17..=32 here; a bad one would be clamped to /32, never panic.
                let n = ipnet::Ipv4Net::new(a, plen as u8).unwrap_or_else(|_| a.into());
                ipnet::IpNet::from(n.trunc())
            };
            RuleSpec {
                src: vec![net(MATCH_SRC, 32 - k % 16)],
                dst: vec![net(DST, 32 - k / 16)],
                act: Actions::drops(Prob(1.0)),
                ..RuleSpec::new(format!("shape-{k}"), Kind::Rule)
            }
        })
        .collect()
}

/// The SSH connection the bench pretends to run over: the CLI protects its 4-tuple.
const SSH_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 200);
const SSH_SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

/// Publishes `specs` as the CLI would: with the protections (loopback and an SSH 4-tuple, as
/// `pipeline::protections` adds them from SSH_CONNECTION), in the pipeline's order, each rule
/// expiring after the default TTL. Rules that would not fit the slots left by the protections
/// are left out. Returns the number of tuples and of rules.
pub fn publish(maps: &mut Maps, specs: Vec<RuleSpec>) -> Result<(usize, u32)> {
    publish_at(maps, specs).map(|(tuples, rules, _)| (tuples, rules))
}

/// [`publish`], and the slot of the first of `specs` (after the protections').
pub fn publish_at(maps: &mut Maps, specs: Vec<RuleSpec>) -> Result<(usize, u32, u32)> {
    let mut all = pipeline::protections(Vec::new(), |_| false);
    all.extend(protection::ssh(
        &format!("ssh:{SSH_CLIENT}:50022"),
        SSH_CLIENT.into(),
        50022,
        SSH_SERVER.into(),
        22,
    ));
    let first = all.len() as u32;
    let room = netfault_common::MAX_RULES as usize - all.len();
    let rules = specs.len().min(room);
    all.extend(specs.into_iter().take(room));
    let now = monotonic_ns();
    let entries: Vec<RuleEntry> = all
        .into_iter()
        .enumerate()
        .map(|(i, spec)| RuleEntry {
            expires_mono_ns: pipeline::expiry(spec.kind, Ttl::default(), now),
            hold_until_mono_ns: pipeline::hold_end(&spec, now),
            spec,
            slot: i as u32,
            seq: i as u64,
        })
        .collect();
    let (compiled, values) = pipeline::compile(&pipeline::ordered(&entries), |r| r.expires_mono_ns)
        .context("compile the benchmark rules")?;
    maps.publish_set(&compiled, &values)
        .context("publish the benchmark rules")?;
    Ok((compiled.tuples.len(), rules as u32, first))
}

/// One program of an object as its kind `P` (XDP or tc), loaded and verified on first use.
pub fn loaded<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?;
    kernel::ensure_loaded(prog).with_context(|| format!("load {name}"))?;
    prog.try_into()
        .with_context(|| format!("{name} is not of the kind the bench needs"))
}

/// Loads and verifies one XDP program of an object.
pub fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    loaded(ebpf, name)
}

pub fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not XDP"))
}

/// One BPF_PROG_TEST_RUN call of `repeat` iterations: ns per packet, and the verdict.
fn test_run(prog: &Xdp, frame: &[u8], repeat: u32) -> Result<(f64, u32)> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok((r.duration.as_nanos() as f64, r.return_value))
}

/// What `runs` interleaved rounds of BPF_PROG_TEST_RUN calls (`repeat` iterations each) gave:
/// each round runs the trivial program, then the reference (if any), then `prog`.
struct Timing {
    ns: f64,
    verdict: u32,
    pass_ns: f64,
    over_pass: f64,
    vs_ref: Option<f64>,
}

/// Times `prog` on `frame`, interleaved with `pass` and the reference `one`. The kernel's figure (time in the
/// program loop divided by iterations) excludes the syscall and the time the loop was
/// scheduled out, which makes it steadier than a wall clock on a shared 2-vCPU machine; the
/// pairing takes out what drifts between rounds.
fn time_prog(
    prog: &Xdp,
    pass: &Xdp,
    one: Option<&Xdp>,
    frame: &[u8],
    plan: &Plan,
) -> Result<Timing> {
    let mut ns = Vec::with_capacity(plan.runs);
    let mut base = Vec::with_capacity(plan.runs);
    let mut over = Vec::with_capacity(plan.runs);
    let mut ratio = Vec::with_capacity(plan.runs);
    let mut verdict = None;
    for _ in 0..plan.runs {
        sys::check_stop()?;
        let b = test_run(pass, frame, plan.repeat)?.0;
        let o = one.map(|p| test_run(p, frame, plan.repeat)).transpose()?;
        let (t, v) = test_run(prog, frame, plan.repeat)?;
        if verdict.is_some_and(|w| w != v) || o.is_some_and(|(_, w)| w != v) {
            bail!("verdict changed between runs");
        }
        verdict = Some(v);
        ns.push(t);
        base.push(b);
        over.push(t - b);
        if let Some((o, _)) = o {
            ratio.push(t / o);
        }
    }
    Ok(Timing {
        ns: crate::median(&mut ns),
        verdict: verdict.unwrap_or(u32::MAX),
        pass_ns: crate::median(&mut base),
        over_pass: crate::median(&mut over),
        vs_ref: one.map(|_| crate::median(&mut ratio)),
    })
}

pub fn run(plan: &Plan, pins: &Path) -> Result<Vec<Row>> {
    let hit = frame::udp4(topo::RX_MAC, topo::TX_MAC, MATCH_SRC, DST);
    let miss = frame::udp4(topo::RX_MAC, topo::TX_MAC, MISS_SRC, DST);
    let mut rows = Vec::new();

    let mut bench = EbpfLoader::new()
        .load(netfault_lab::BENCH_OBJECT)
        .context("load the bench object")?;
    xdp_mut(&mut bench, "bench_pass")?;
    let pass = xdp(&bench, "bench_pass")?;
    let t = time_prog(pass, pass, None, &hit, plan)?;
    rows.push(Row {
        program: "bench_pass",
        rules: None,
        shapes: None,
        tuples: None,
        packet: "any",
        verdict: t.verdict,
        ns: t.ns,
        pass_ns: t.pass_ns,
        over_pass: t.over_pass,
        vs_ref: None,
        target: None,
    });

    // Two more instances (maps of their own) hold the reference sets throughout, 1 rule and 2
    // rules, so every set of one shape is timed interleaved with its reference.
    let mut one = kernel::load(&pins.join("progrun-one")).context("load netfault's object")?;
    // Held to the end: the program's maps close with it.
    let mut one_maps = Maps::take(&mut one)?;
    publish(&mut one_maps, rule_set(1))?;
    let one = xdp_mut(&mut one, progs::XDP_INGRESS)?;
    let mut two = kernel::load(&pins.join("progrun-two")).context("load netfault's object")?;
    let mut two_maps = Maps::take(&mut two)?;
    publish(&mut two_maps, rule_set(2))?;
    let two = xdp_mut(&mut two, progs::XDP_INGRESS)?;
    let mut nf = kernel::load(&pins.join("progrun")).context("load netfault's object")?;
    let mut maps = Maps::take(&mut nf)?;
    let prog = xdp_mut(&mut nf, progs::XDP_INGRESS)?;
    // No rules published: the program parses, reads the config and passes.
    let t = time_prog(prog, pass, None, &hit, plan)?;
    rows.push(Row {
        program: progs::XDP_INGRESS,
        rules: Some(0),
        shapes: Some(0),
        tuples: Some(0),
        packet: "any",
        verdict: t.verdict,
        ns: t.ns,
        pass_ns: t.pass_ns,
        over_pass: t.over_pass,
        vs_ref: None,
        target: None,
    });
    let sets = RULE_COUNTS
        .iter()
        .map(|&n| (1, n))
        .chain(SHAPE_COUNTS.iter().skip(1).map(|&n| {
            let n = n.min(netfault_common::MAX_TUPLES - PROTECTION_TUPLES);
            (n, n)
        }));
    for (shapes, n) in sets {
        sys::check_stop()?;
        let specs = if shapes == 1 {
            rule_set(n)
        } else {
            shape_set(n)
        };
        let (tuples, n) = publish(&mut maps, specs)?;
        for (packet, f, want) in [
            ("matching", &hit, XDP_DROP),
            ("non-matching", &miss, XDP_PASS),
        ] {
            let reference =
                (shapes == 1).then_some(if ref_rules(packet) == 2 { &*two } else { &*one });
            let t = time_prog(prog, pass, reference, f, plan)?;
            if t.verdict != want {
                bail!(
                    "{n} rules, {packet} packet: verdict {}, expected {want}: the rules did not load as meant",
                    t.verdict
                );
            }
            rows.push(Row {
                program: progs::XDP_INGRESS,
                rules: Some(n),
                shapes: Some(shapes),
                tuples: Some(tuples),
                packet,
                verdict: t.verdict,
                ns: t.ns,
                pass_ns: t.pass_ns,
                over_pass: t.over_pass,
                vs_ref: t.vs_ref,
                target: target(shapes, n, packet),
            });
        }
    }
    Ok(rows)
}
