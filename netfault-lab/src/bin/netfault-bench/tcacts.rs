//! Part 1, tc actions: what each action adds per matched packet in netfault's tc programs,
//! under BPF_PROG_TEST_RUN, against a tc program that only returns TC_ACT_OK and against a
//! plain drop at the same hook.
//!
//! Each action is published alone (one rule, after the CLI's protections, as `progrun`
//! deploys sets) and timed on a UDP/IPv4 frame it matches; "no rule matches" times a frame
//! outside it. The loopback device the kernel runs tc test runs on is marked as an interface
//! where tc applies ingress rules (as on a device whose XDP is not netfault's), so tc ingress
//! applies every action there. Loss actions with a probability, and corruption, are timed at
//! ingress: at egress their packets first take the segmenting detour (marked, then drawn when
//! they come back from the IFB device, see `act.rs`), which a test run cannot follow; the draw
//! itself is the same code at either hook. After every run the rule's counters must have risen by exactly the
//! iterations in the way the action says (dropped, duplicated, delayed, rejected, corrupted, held): a figure
//! for a path other than the action's is refused.
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use netfault::{
    dataplane::{self as kernel, Maps},
    spec::ruleset,
};
use netfault_common::{Counters, progs};

use crate::{
    Plan, frame,
    progrun::{self, DST, MATCH_SRC},
    sys, topo,
};

/// Outside 192.0.2.1/32, so the rule never matches it.
const MISS_SRC: std::net::Ipv4Addr = std::net::Ipv4Addr::new(203, 0, 113, 1);
/// The loopback device's ifindex: where the kernel runs a tc test run.
const LO: u32 = 1;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Ingress,
    Egress,
}

/// Which counter the action must raise by one per iteration.
#[derive(Clone, Copy)]
enum Moves {
    Nothing,
    Dropped,
    /// A probability: some of the iterations (its draw is what is timed).
    DroppedSome,
    Duplicated,
    Delayed,
    Rejected,
    /// One payload bit flipped per iteration.
    Corrupted,
    /// Duplicated, the copy given a later departure than its original.
    DuplicatedLate,
    /// Given the hold's end as its departure.
    Held,
}

struct Case {
    hook: Hook,
    action: &'static str,
    /// The rule's action keys, as in a rule-set file.
    keys: &'static str,
    matching: bool,
    moves: Moves,
}

const CASES: &[Case] = &[
    Case {
        hook: Hook::Ingress,
        action: "no rule matches",
        keys: "drop = 1",
        matching: false,
        moves: Moves::Nothing,
    },
    Case {
        hook: Hook::Ingress,
        action: "drop 100%",
        keys: "drop = 1",
        matching: true,
        moves: Moves::Dropped,
    },
    Case {
        hook: Hook::Ingress,
        action: "drop 10%",
        keys: "drop = \"10%\"",
        matching: true,
        moves: Moves::DroppedSome,
    },
    Case {
        hook: Hook::Ingress,
        action: "burst 10%, runs of 4",
        keys: "drop = \"10%\"\nburst = 4",
        matching: true,
        moves: Moves::DroppedSome,
    },
    Case {
        hook: Hook::Ingress,
        action: "reject (ICMP port)",
        keys: "drop = 1\nreject = true\nreject_rate = \"1000000/s\"",
        matching: true,
        moves: Moves::Rejected,
    },
    Case {
        hook: Hook::Ingress,
        action: "duplicate 100%",
        keys: "duplicate = 1",
        matching: true,
        moves: Moves::Duplicated,
    },
    Case {
        hook: Hook::Ingress,
        action: "corrupt 100%, checksum bad",
        keys: "corrupt = 1",
        matching: true,
        moves: Moves::Corrupted,
    },
    Case {
        hook: Hook::Ingress,
        action: "corrupt 100%, checksum good",
        keys: "corrupt = 1\ncorrupt_checksum = \"good\"",
        matching: true,
        moves: Moves::Corrupted,
    },
    Case {
        hook: Hook::Egress,
        action: "no rule matches",
        keys: "drop = 1",
        matching: false,
        moves: Moves::Nothing,
    },
    Case {
        hook: Hook::Egress,
        action: "drop 100%",
        keys: "drop = 1",
        matching: true,
        moves: Moves::Dropped,
    },
    Case {
        hook: Hook::Egress,
        action: "delay 10ms",
        keys: "delay = \"10ms\"",
        matching: true,
        moves: Moves::Delayed,
    },
    Case {
        hook: Hook::Egress,
        action: "delay 10ms, jitter 2ms normal",
        keys: "delay = \"10ms\"\njitter = \"2ms\"\ndistribution = \"normal\"",
        matching: true,
        moves: Moves::Delayed,
    },
    Case {
        hook: Hook::Egress,
        action: "duplicate 100%",
        keys: "duplicate = 1",
        matching: true,
        moves: Moves::Duplicated,
    },
    Case {
        hook: Hook::Egress,
        action: "duplicate 100%, copy 50ms late",
        keys: "duplicate = 1\nduplicate_delay = \"50ms\"",
        matching: true,
        moves: Moves::DuplicatedLate,
    },
    Case {
        hook: Hook::Egress,
        action: "hold 60s (in its window)",
        keys: "hold = \"60s\"",
        matching: true,
        moves: Moves::Held,
    },
];

pub struct ActRow {
    pub hook: &'static str,
    pub action: &'static str,
    /// Median over runs of the kernel's own per-run average.
    pub ns: f64,
    /// The trivial tc program's median over the runs interleaved with this row's.
    pub pass_ns: f64,
    /// Median over runs of (this run - the trivial program's run right before it).
    pub over_pass: f64,
    /// `over_pass` minus the plain drop's at the same hook: what the action adds to a matched
    /// packet beyond matching and counting it.
    pub over_drop: Option<f64>,
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    crate::progrun::loaded(ebpf, name)
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

/// The counter `moves` names, and whether `after - before` is what `n` iterations must move.
fn moved(moves: Moves, before: &Counters, after: &Counters, n: u64) -> Result<()> {
    let d = |f: fn(&Counters) -> u64| f(after) - f(before);
    let ok = match moves {
        Moves::Nothing => d(|c| c.matched) == 0,
        Moves::Dropped => d(|c| c.dropped) == n,
        Moves::DroppedSome => d(|c| c.matched) == n && d(|c| c.dropped) > 0,
        Moves::Duplicated => d(|c| c.duplicated) == n,
        Moves::Delayed => d(|c| c.delayed) == n,
        Moves::Rejected => d(|c| c.rejected) == n,
        Moves::Corrupted => d(|c| c.corrupted) == n,
        Moves::DuplicatedLate => d(|c| c.duplicated) == n && d(|c| c.dup_delayed) == n,
        Moves::Held => d(|c| c.held) == n,
    };
    ensure!(
        ok,
        "{n} iterations moved the rule's counters from {before:?} to {after:?}: not the action's path"
    );
    Ok(())
}

pub fn run(plan: &Plan, pins: &Path) -> Result<Vec<ActRow>> {
    let hit = frame::udp4(topo::RX_MAC, topo::TX_MAC, MATCH_SRC, DST);
    let miss = frame::udp4(topo::RX_MAC, topo::TX_MAC, MISS_SRC, DST);
    let mut bench = EbpfLoader::new()
        .load(netfault_lab::BENCH_OBJECT)
        .context("load the bench object")?;
    let pass = &*classifier(&mut bench, "bench_tc_pass")?;
    let mut nf = kernel::load(&pins.join("tcacts")).context("load netfault's object")?;
    let mut maps = Maps::take(&mut nf)?;
    maps.set_tc_only(LO, true)?;
    classifier(&mut nf, progs::TC_INGRESS)?;
    classifier(&mut nf, progs::TC_EGRESS)?;
    let ingress: &SchedClassifier = nf
        .program(progs::TC_INGRESS)
        .context("no tc ingress program")?
        .try_into()?;
    let egress: &SchedClassifier = nf
        .program(progs::TC_EGRESS)
        .context("no tc egress program")?
        .try_into()?;
    let mut rows: Vec<ActRow> = Vec::new();
    for case in CASES {
        sys::check_stop()?;
        let (hook, prog) = match case.hook {
            Hook::Ingress => ("tc ingress", ingress),
            Hook::Egress => ("tc egress", egress),
        };
        let dir = if case.hook == Hook::Ingress {
            "ingress"
        } else {
            "egress"
        };
        let text = format!(
            "[[rule]]\nname = \"act\"\ndir = \"{dir}\"\nproto = \"udp\"\nsrc = [\"{MATCH_SRC}/32\"]\ndst = [\"{DST}/32\"]\n{}\n",
            case.keys
        );
        let specs: Vec<_> = ruleset::parse(&text)
            .with_context(|| format!("{}: the rule", case.action))?
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        let (_, _, slot) = progrun::publish_at(&mut maps, specs)?;
        let frame = if case.matching { &hit } else { &miss };
        // A reply is built in the test run's own packet, so the next iteration would meet the
        // reply, not the frame: one iteration a run, many runs (each paired with one of the
        // trivial program, so the per-run overhead cancels). The rule's pacing (1,000,000 a
        // second, a burst of as many) answers every one.
        let (repeat, runs) = match case.moves {
            Moves::Rejected => (1, plan.runs * 200),
            _ => (plan.repeat, plan.runs),
        };
        let (mut ns, mut base, mut over) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            sys::check_stop()?;
            let b = test_run(pass, frame, repeat)?;
            let before = maps.counters(slot)?;
            let t = test_run(prog, frame, repeat)?;
            let after = maps.counters(slot)?;
            moved(case.moves, &before, &after, u64::from(repeat))
                .with_context(|| format!("{hook}, {}", case.action))?;
            ns.push(t);
            base.push(b);
            over.push(t - b);
        }
        let over_pass = crate::median(&mut over);
        let over_drop = rows
            .iter()
            .find(|r| r.hook == hook && r.action == "drop 100%")
            .filter(|_| case.matching && case.action != "drop 100%")
            .map(|d| over_pass - d.over_pass);
        rows.push(ActRow {
            hook,
            action: case.action,
            ns: crate::median(&mut ns),
            pass_ns: crate::median(&mut base),
            over_pass,
            over_drop,
        });
    }
    if rows.is_empty() {
        bail!("no tc action was timed");
    }
    maps.set_tc_only(LO, false)?;
    Ok(rows)
}
