//! Part 1: nanoseconds per packet under BPF_PROG_TEST_RUN, netfault's XDP program against a
//! program that only returns XDP_PASS, with 1, 1k and 64k rules, for a packet that matches one
//! rule and one that matches none.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use netfault::{
    compile::{Input, compile, rule_value},
    dataplane::{self as kernel, Maps},
    spec::{Kind, Prob, RuleSpec},
};
use netfault_common::{RuleValue, progs};

use crate::{Plan, frame, sys, topo};

pub const RULE_COUNTS: [u32; 3] = [1, 1 << 10, 1 << 16];
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
    pub tuples: Option<usize>,
    pub packet: &'static str,
    pub verdict: u32,
    /// Median over runs of the kernel's own per-run average.
    pub ns: f64,
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
                drop: Prob(1.0),
                ..RuleSpec::new(format!("bench-{k}"), Kind::Rule)
            }
        })
        .collect()
}

/// Compiles `specs` (slot = position) and publishes them; returns the number of tuples.
pub fn publish(maps: &mut Maps, specs: &[RuleSpec]) -> Result<usize> {
    let inputs: Vec<Input<'_>> = specs
        .iter()
        .enumerate()
        .map(|(i, spec)| Input {
            slot: i as u32,
            spec,
            ifindex: None,
        })
        .collect();
    let compiled = compile(&inputs).context("compile the benchmark rules")?;
    let values: Vec<(u32, RuleValue)> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| (i as u32, rule_value(s, 0)))
        .collect();
    maps.publish_set(&compiled, &values)
        .context("publish the benchmark rules")?;
    Ok(compiled.tuples.len())
}

/// Loads and verifies one XDP program of an object.
pub fn xdp_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not XDP"))?;
    if p.info().is_err() {
        p.load().with_context(|| format!("load {name}"))?;
    }
    Ok(p)
}

pub fn xdp<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp> {
    ebpf.program(name)
        .with_context(|| format!("no program {name}"))?
        .try_into()
        .with_context(|| format!("{name} is not XDP"))
}

/// Median of `runs` BPF_PROG_TEST_RUN calls of `repeat` iterations each, in ns per packet, and
/// the verdict. The kernel's figure (time in the program loop divided by iterations) excludes
/// the syscall and the time the loop was scheduled out, which makes it steadier than a
/// wall clock on a shared 2-vCPU machine.
fn time_prog(prog: &Xdp, frame: &[u8], repeat: u32, runs: usize) -> Result<(f64, u32)> {
    let mut ns = Vec::with_capacity(runs);
    let mut verdict = None;
    for _ in 0..runs {
        sys::check_stop()?;
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..Default::default()
            })
            .context("BPF_PROG_TEST_RUN")?;
        if verdict.is_some_and(|v| v != r.return_value) {
            bail!("verdict changed between runs");
        }
        verdict = Some(r.return_value);
        ns.push(r.duration.as_nanos() as f64);
    }
    Ok((crate::median(&mut ns), verdict.unwrap_or(u32::MAX)))
}

pub fn run(plan: &Plan, pins: &Path) -> Result<Vec<Row>> {
    let hit = frame::udp4(topo::RX_MAC, topo::TX_MAC, MATCH_SRC, DST);
    let miss = frame::udp4(topo::RX_MAC, topo::TX_MAC, MISS_SRC, DST);
    let mut rows = Vec::new();

    let mut bench = EbpfLoader::new()
        .load(netfault_lab::BENCH_OBJECT)
        .context("load the bench object")?;
    let pass = xdp_mut(&mut bench, "bench_pass")?;
    let (ns, verdict) = time_prog(pass, &hit, plan.repeat, plan.runs)?;
    rows.push(Row {
        program: "bench_pass",
        rules: None,
        tuples: None,
        packet: "any",
        verdict,
        ns,
    });

    let mut nf = kernel::load(&pins.join("progrun")).context("load netfault's object")?;
    let mut maps = Maps::take(&mut nf)?;
    let prog = xdp_mut(&mut nf, progs::XDP_INGRESS)?;
    // No rules published: the program parses, reads the config and passes.
    let (ns, verdict) = time_prog(prog, &hit, plan.repeat, plan.runs)?;
    rows.push(Row {
        program: progs::XDP_INGRESS,
        rules: Some(0),
        tuples: Some(0),
        packet: "any",
        verdict,
        ns,
    });
    for n in RULE_COUNTS {
        sys::check_stop()?;
        let tuples = publish(&mut maps, &rule_set(n))?;
        for (packet, f, want) in [
            ("matching", &hit, XDP_DROP),
            ("non-matching", &miss, XDP_PASS),
        ] {
            let (ns, verdict) = time_prog(prog, f, plan.repeat, plan.runs)?;
            if verdict != want {
                bail!(
                    "{n} rules, {packet} packet: verdict {verdict}, expected {want}: the rules did not load as meant"
                );
            }
            rows.push(Row {
                program: progs::XDP_INGRESS,
                rules: Some(n),
                tuples: Some(tuples),
                packet,
                verdict,
                ns,
            });
        }
    }
    Ok(rows)
}
