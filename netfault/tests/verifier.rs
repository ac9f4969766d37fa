#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
//! What the kernel's verifier spends on netfault's programs: the instructions it walked
//! (`verified_insns`, from BPF_OBJ_GET_INFO_BY_FD) for each program `attach` loaded, read from
//! the kernel. `attach` pays for them in CPU time (at 0.9 million for tc ingress, attach took
//! 4 s here), and a program that nears the limit of 1 million can take no new action. Needs
//! root, and a kernel that reports the count (5.16+).
mod common;

use common::*;

/// At most this many instructions walked per program. About 60,000 (tc) and 95,000 (XDP) on
/// 6.18 (docs/BENCHMARKS.md, "Verifier cost"); the bound leaves room for other kernels'
/// verifiers, not for the multiplication of states that once took tc ingress to 0.9 million.
const MAX_VERIFIED: u32 = 250_000;

/// The program id status reports for one hook ("xdp-ingress", "tc-ingress", "tc-egress").
fn prog_of(st: &serde_json::Value, hook: &str) -> u32 {
    st["interfaces"][0]["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == hook)
        .unwrap_or_else(|| panic!("no {hook} hook in {st}"))["prog_id"]
        .as_u64()
        .unwrap() as u32
}

/// The verifier's count for the loaded program `id`.
fn verified_insns(id: u32) -> u32 {
    let info = aya::programs::loaded_programs()
        .map(|p| p.expect("list loaded programs"))
        .find(|p| p.id() == id)
        .unwrap_or_else(|| panic!("program {id} is not loaded"));
    info.verified_instruction_count()
        .expect("the kernel reports no verified_insns (before 5.16?)")
}

#[test]
fn each_program_stays_well_below_the_verifiers_limit() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    // An ingress drop rule links the XDP program on the veth too.
    let src = a.ip(false).to_string();
    run(
        &nf,
        &b,
        &[
            "rule", "add", "x", "--dir", "ingress", "--src", &src, "--drop", "10%",
        ],
    );
    let st: serde_json::Value = serde_json::from_str(&run(&nf, &b, &["status", "--json"])).unwrap();
    let mut counts: Vec<(&str, u32)> = ["xdp-ingress", "tc-ingress", "tc-egress"]
        .into_iter()
        .map(|hook| (hook, verified_insns(prog_of(&st, hook))))
        .collect();
    // The cgroup socket-delivery hook, which `attach` loads and pins with the others (every
    // copy loaded now: they are the same program of the same object).
    let cg: Vec<u32> = aya::programs::loaded_programs()
        .map(|p| p.expect("list loaded programs"))
        .filter(|p| p.name_as_str() == Some(netfault_common::progs::CG_INGRESS))
        .map(|p| verified_insns(p.id()))
        .collect();
    assert!(
        !cg.is_empty(),
        "attach loaded no {}",
        netfault_common::progs::CG_INGRESS
    );
    counts.extend(cg.into_iter().map(|n| ("cgroup-ingress", n)));
    eprintln!("verified instructions: {counts:?}");
    for (hook, n) in &counts {
        assert!(
            *n <= MAX_VERIFIED,
            "{hook}: the verifier walked {n} instructions, more than {MAX_VERIFIED} (all: {counts:?})"
        );
    }
}

/// The passive RTT programs (`measure`): bounded far tighter than the fault programs. About
/// 13,300 (egress) and 13,600 (ingress) on 6.18, most of it the bounded walk of the TCP
/// options; the bound leaves room for other verifiers, not for a multiplication of states.
const MAX_VERIFIED_RTT: u32 = 50_000;

#[test]
fn the_passive_rtt_programs_stay_small() {
    let ebpf = netfault::dataplane::rtt_load().expect("load the passive object");
    for name in [
        netfault_common::rtt_names::EGRESS,
        netfault_common::rtt_names::INGRESS,
    ] {
        let p: &aya::programs::SchedClassifier = ebpf.program(name).unwrap().try_into().unwrap();
        let n = verified_insns(p.info().unwrap().id());
        assert!(
            n <= MAX_VERIFIED_RTT,
            "{name}: the verifier walked {n} instructions, more than {MAX_VERIFIED_RTT}"
        );
        eprintln!("{name}: {n} instructions verified");
    }
}
