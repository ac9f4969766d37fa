//! Part 1b, passive measurement: what `measure`'s programs cost per packet, under
//! BPF_PROG_TEST_RUN, against a tc program that only returns TC_ACT_OK. They are programs of
//! their own, attached only while `measure` runs: with measurement off, the fault programs
//! run exactly as in the rows above (nothing of measurement is in them), so "off" costs
//! nothing and "on" costs these rows, on every TCP segment of the interfaces measured.
//!
//! The frames are TCP/IPv4 with the timestamp option (NOP, NOP, TS, as Linux sends). Egress
//! times the common case: a TSval already stamped (every segment after the first in a 1 ms
//! tick) costs the parse, the option walk and one lookup. Ingress: an echo no stamp awaits
//! (every ACK after the first of a TSval) costs the same and one lookup. The histograms must
//! hold exactly one sample afterwards (the first egress run's stamp, echoed by the first
//! ingress run): a figure for another path is refused.
use anyhow::{Context as _, Result, ensure};
use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use netfault_common::rtt_names;

use crate::{Plan, progrun, sys, topo};

pub struct RttRow {
    pub program: &'static str,
    pub case: &'static str,
    pub ns: f64,
    pub pass_ns: f64,
    pub over_pass: f64,
}

/// An Ethernet + IPv4 + TCP frame (ACK, options NOP NOP TS) from 192.0.2.1:40000 to
/// 198.51.100.1:5201, or the reverse; checksums are not read by the programs.
fn tcp4(reverse: bool, tsval: u32, tsecr: u32) -> Vec<u8> {
    let (mut a, mut b) = ([192, 0, 2, 1], [198, 51, 100, 1]);
    let (mut pa, mut pb) = (40_000u16, 5201u16);
    if reverse {
        std::mem::swap(&mut a, &mut b);
        std::mem::swap(&mut pa, &mut pb);
    }
    let mut f = Vec::new();
    f.extend_from_slice(&topo::RX_MAC);
    f.extend_from_slice(&topo::TX_MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 52, 0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&a);
    f.extend_from_slice(&b);
    f.extend_from_slice(&pa.to_be_bytes());
    f.extend_from_slice(&pb.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1, 0x80, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(&[1, 1, 8, 10]);
    f.extend_from_slice(&tsval.to_be_bytes());
    f.extend_from_slice(&tsecr.to_be_bytes());
    f
}

fn test_run(prog: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<f64> {
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(r.duration.as_nanos() as f64)
}

pub fn run(plan: &Plan) -> Result<Vec<RttRow>> {
    let mut bench = EbpfLoader::new()
        .load(netfault_lab::BENCH_OBJECT)
        .context("load the bench object")?;
    let pass: &SchedClassifier = progrun::loaded(&mut bench, "bench_tc_pass")?;
    let rtt = netfault::dataplane::rtt_load().context("load the passive RTT object")?;
    let prog = |name: &str| -> Result<&SchedClassifier> {
        Ok(rtt.program(name).context("no such program")?.try_into()?)
    };
    let (egress, ingress) = (prog(rtt_names::EGRESS)?, prog(rtt_names::INGRESS)?);
    let out = tcp4(false, 1000, 7);
    let back = tcp4(true, 8, 1000);
    let mut rows = Vec::new();
    for (program, case, p, frame) in [
        (rtt_names::EGRESS, "TSval already stamped", egress, &out),
        (
            rtt_names::INGRESS,
            "echo of nothing awaited",
            ingress,
            &back,
        ),
    ] {
        let (mut ns, mut base, mut over) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..plan.runs {
            sys::check_stop()?;
            let b = test_run(pass, frame, plan.repeat)?;
            let t = test_run(p, frame, plan.repeat)?;
            ns.push(t);
            base.push(b);
            over.push(t - b);
        }
        rows.push(RttRow {
            program,
            case,
            ns: crate::median(&mut ns),
            pass_ns: crate::median(&mut base),
            over_pass: crate::median(&mut over),
        });
    }
    let samples: u64 = netfault::dataplane::rtt_samples(&rtt)?
        .iter()
        .map(|(_, n)| n)
        .sum();
    ensure!(
        samples == 1,
        "the runs gave {samples} samples, not the one of the first stamp: not the paths timed"
    );
    Ok(rows)
}

pub fn report(plan: &Plan, rows: &[RttRow]) {
    println!();
    println!(
        "1b. passive measurement (`measure`), ns/packet, BPF_PROG_TEST_RUN: TCP/IPv4 with \
         timestamps, {} iterations per run, {} runs each after one of a tc program that returns \
         TC_ACT_OK. Separate programs, attached only while `measure` runs: off, the fault \
         programs above are unchanged (cost 0); on, each TCP segment pays these",
        plan.repeat, plan.runs
    );
    println!(
        "{:<15} {:<26} {:>7} {:>5} {:>8}",
        "program", "case", "ns/pkt", "pass", "vs pass"
    );
    for r in rows {
        println!(
            "{:<15} {:<26} {:>7.0} {:>5.0} {:>+8.0}",
            r.program, r.case, r.ns, r.pass_ns, r.over_pass
        );
    }
}
