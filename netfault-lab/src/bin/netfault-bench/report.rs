//! Plain-text tables on stdout; docs/BENCHMARKS.md quotes them verbatim.
use crate::{
    Plan,
    droprate::{Generator, Outcome, Receiver, RxMode, Summary},
    frame, median,
    progrun::{self, Row},
    sys, tcacts,
};

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".into(), |s| s.trim().to_string())
}

/// The 1-minute load average: other work on a 2-vCPU machine moves every number here.
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

pub fn header(plan: &Plan) {
    println!(
        "netfault-bench: kernel {}, {} CPUs, load average {} at start{}",
        kernel_release(),
        sys::online_cpus(),
        load_avg(),
        if plan.quick {
            ", --quick (not for the record)"
        } else {
            ""
        }
    );
}

/// Part 1's second table: each tc action by itself.
pub fn tcacts(plan: &Plan, rows: &[tcacts::ActRow]) {
    println!();
    println!(
        "1b. tc actions, ns/packet, BPF_PROG_TEST_RUN: one rule with the action (after the \
         CLI's protections), {} iterations per run, {} runs each (reject: 1 iteration a run, 200 times the runs: \
         its reply replaces the test packet) after one of a tc program that returns TC_ACT_OK; \"vs drop\" is what the \
         action adds over a plain drop at the same hook (medians of paired differences)",
        plan.repeat, plan.runs
    );
    println!(
        "{:<11} {:<30} {:>7} {:>5} {:>8} {:>8}",
        "hook", "action", "ns/pkt", "pass", "vs pass", "vs drop"
    );
    for r in rows {
        println!(
            "{:<11} {:<30} {:>7.0} {:>5.0} {:>+8.0} {:>8}",
            r.hook,
            r.action,
            r.ns,
            r.pass_ns,
            r.over_pass,
            r.over_drop
                .map_or_else(|| "-".into(), |d| format!("{d:+.0}"))
        );
    }
}

pub fn progrun(plan: &Plan, rows: &[Row]) {
    println!();
    println!(
        "1. ns/packet, BPF_PROG_TEST_RUN: {}-byte UDP/IPv4 frame, {} iterations per run, {} \
         interleaved runs (the kernel's per-run average, whole ns)",
        frame::FRAME_LEN,
        plan.repeat,
        plan.runs
    );
    println!(
        "(each set after the CLI's protections: 4 loopback entries and an SSH 4-tuple; rules \
         with the default TTL. Each run of a set follows one of the trivial program's and, for \
         one shape, one of another instance holding the reference set, 1 rule for a packet that \
         matches none and 2 for a matching one (1 rule is matched without a lookup): \"ns/pkt\" \
         and \"pass\" are medians, \"vs pass\" the median of the paired differences, \"vs ref\" \
         of the paired ratios)"
    );
    println!(
        "{:<16} {:>6} {:>6} {:>6}  {:<13} {:<9} {:>7} {:>5} {:>8} {:>10}  target",
        "program",
        "rules",
        "shapes",
        "tuples",
        "packet",
        "verdict",
        "ns/pkt",
        "pass",
        "vs pass",
        "vs ref"
    );
    for r in rows {
        let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let target = match r.target {
            Some(t) => {
                let what = match t {
                    progrun::Target::OverPass(x, aim) => {
                        let a = if r.over_pass <= aim { "met" } else { "not met" };
                        format!("<= {x:+.0} over pass (aim {aim:+.0}: {a})")
                    }
                    progrun::Target::VsRef(x, n) => {
                        format!("<= {x:.2}x {n} rule{}", if n == 1 { "" } else { "s" })
                    }
                };
                let met = if t.met(r) { "met" } else { "NOT MET" };
                format!("{what}: {met}")
            }
            None => String::new(),
        };
        println!(
            "{:<16} {:>6} {:>6} {:>6}  {:<13} {:<9} {:>7.0} {:>5.0} {:>+8.0} {:>10}  {}",
            r.program,
            opt(r.rules.map(|n| n.to_string())),
            opt(r.shapes.map(|n| n.to_string())),
            opt(r.tuples.map(|n| n.to_string())),
            r.packet,
            progrun::verdict_name(r.verdict),
            r.ns,
            r.pass_ns,
            r.over_pass,
            opt(r.vs_ref.map(|v| format!("{v:.3}x"))),
            target
        );
    }
}

fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    let med = median(&mut s);
    let min = s.first().copied().unwrap_or(f64::NAN);
    let max = s.last().copied().unwrap_or(f64::NAN);
    (med, min, max)
}

fn offered(s: &Summary) -> String {
    let mut v: Vec<f64> = s.offered_mpps.iter().flatten().copied().collect();
    if v.is_empty() {
        "-".into()
    } else {
        format!("{:.2}", median(&mut v))
    }
}

fn rx_median(out: &Outcome, r: Receiver) -> f64 {
    out.summaries
        .iter()
        .find(|s| s.receiver == r)
        .map_or(f64::NAN, |s| stats(&s.rx_mpps).0)
}

fn cpu_median(out: &Outcome, r: Receiver) -> f64 {
    out.summaries
        .iter()
        .find(|s| s.receiver == r)
        .map_or(f64::NAN, |s| stats(&s.rx_cpu_ns).0)
}

/// Median over rounds of `other`'s receiver CPU ns/pkt over netfault's in the same round: the
/// receivers of a round run back to back, so load that drifts between rounds cancels.
fn paired_cpu_ratio(out: &Outcome, other: Receiver) -> f64 {
    let ns = |r: Receiver| {
        out.summaries
            .iter()
            .find(|s| s.receiver == r)
            .map(|s| s.rx_cpu_ns.clone())
            .unwrap_or_default()
    };
    let (nf, o) = (ns(Receiver::Netfault), ns(other));
    let mut v: Vec<f64> = nf.iter().zip(&o).map(|(n, o)| o / n).collect();
    median(&mut v)
}

/// One table per receive mode; the ratio line comes from the first (softirq, the headline).
pub fn droprate(plan: &Plan, outs: &[Outcome]) {
    println!();
    let generator = outs.first().map_or(Generator::LiveFrames, |o| o.generator);
    if generator == Generator::Socket {
        return socket_droprate(plan, outs);
    }
    println!(
        "2. drop-all across a veth pair: Mpps dropped at the receiving veth (its rx count / generator \
         wall time), median of {} interleaved rounds",
        plan.rounds
    );
    println!(
        "   generator: {}, {}-byte UDP/IPv4 frames, SCHED_FIFO",
        generator.describe(),
        frame::FRAME_LEN
    );
    for out in outs {
        mode_table(plan, out);
    }
    if let Some(main) = outs.first() {
        let nf = rx_median(main, Receiver::Netfault);
        println!();
        println!(
            "   headline: netfault Mpps / nft Mpps in {}",
            main.mode.short()
        );
        println!(
            "ratio netfault/nft drop-all: {:.2}",
            nf / rx_median(main, Receiver::Nft)
        );
    }
}

/// The socket sender's report: in B the receiver's CPU ns per frame is the figure (its rate is
/// the sender's), in A the ns/pkt over the trivial drop.
fn socket_droprate(plan: &Plan, outs: &[Outcome]) {
    println!(
        "2. drop-all across a veth pair, socket sender: median of {} interleaved rounds of {} s",
        plan.rounds, plan.round_secs
    );
    println!(
        "   generator: {}, {}-byte UDP/IPv4 frames, SCHED_FIFO",
        Generator::Socket.describe(),
        frame::FRAME_LEN
    );
    println!(
        "   what this measures: the frames come as skbs, so a veth with XDP first copies each \
         into a page (skb to xdp_buff) before the program runs: the XDP receivers pay that, nft \
         does not. In B, \"rx busy\" is the receiving thread's CPU time over the sender's wall \
         time: near 95% (what RT throttling leaves a SCHED_FIFO thread) with sendmmsg calls cut \
         short by a full ring, the receiver was the limit; well under it, the sender was, and \
         Mpps is the sender's rate. rx ns/pkt is the receiver's cost either way. Not comparable \
         with live frames' ns/pkt"
    );
    for out in outs {
        println!();
        println!("   {}", out.mode.describe_socket());
        match out.mode {
            RxMode::Softirq => {
                lockstep_rows(out);
                checks(out);
                let nf = rx_median(out, Receiver::Netfault);
                println!(
                    "   netfault/nft {:.2}, netfault/trivial XDP drop {:.2} (Mpps, sender's share \
                     included; no target on these)",
                    nf / rx_median(out, Receiver::Nft),
                    nf / rx_median(out, Receiver::XdpDrop)
                );
            }
            RxMode::Threaded => cpu_rows(out),
        }
    }
    let b = outs.iter().find(|o| o.mode == RxMode::Threaded);
    println!();
    match b {
        Some(out) => {
            println!(
                "   headline: nft's receiver CPU ns/pkt / netfault's, socket sender, B (two CPUs), \
                 median of the rounds' own ratios"
            );
            println!(
                "ratio netfault/nft drop-all: {:.2}",
                paired_cpu_ratio(out, Receiver::Nft)
            );
        }
        None => println!(
            "   no headline ratio: the receiver's CPU time needs B (two CPUs, threaded NAPI)"
        ),
    }
}

/// Counter check, leak check and notes, under a table.
fn checks(out: &Outcome) {
    for s in &out.summaries {
        if let Some((dropped, rx)) = s.counter_check {
            println!("   netfault's own counter: {dropped} dropped; veth rx count {rx}");
        }
    }
    if out.leaked == 0 {
        println!("   no frame got past a receiver to the IP layer");
    } else {
        println!(
            "   WARNING: {} frames got past a receiver to the IP layer",
            out.leaked
        );
    }
    for n in &out.notes {
        println!("   note: {n}");
    }
}

/// B with the socket sender: the receiving NAPI thread's CPU ns per frame, and the targets on it.
fn cpu_rows(out: &Outcome) {
    println!(
        "{:<24} {:<28} {:>9} {:>6} {:>6} {:>10} {:>7} {:>8} {:>8}",
        "receiver", "hook", "rx ns/pkt", "min", "max", "vs trivial", "Mpps", "offered", "rx busy"
    );
    let trivial = cpu_median(out, Receiver::XdpDrop);
    for s in &out.summaries {
        let (ns, min, max) = stats(&s.rx_cpu_ns);
        println!(
            "{:<24} {:<28} {:>9.1} {:>6.1} {:>6.1} {:>+10.1} {:>7.2} {:>8} {:>7.0}%",
            s.receiver.label(),
            s.hook,
            ns,
            min,
            max,
            ns - trivial,
            stats(&s.rx_mpps).0,
            offered(s),
            stats(&s.busy).0 * 100.0
        );
    }
    let (sent, received, refusals) = out.summaries.iter().fold((0, 0, 0), |(a, b, c), s| {
        (a + s.sent, b + s.received, c + s.refusals)
    });
    let lost = sent.saturating_sub(received);
    let how = if lost == 0 {
        "none lost".to_string()
    } else {
        format!("{lost} LOST")
    };
    println!(
        "   frames the veth took from the sender {sent}, received and dropped {received}: {how}; \
         sendmmsg calls cut short by a full ring: {refusals}"
    );
    checks(out);
    let (vs_nft, vs_trivial) = (
        paired_cpu_ratio(out, Receiver::Nft),
        paired_cpu_ratio(out, Receiver::XdpDrop),
    );
    println!(
        "   netfault/nft {vs_nft:.2}, netfault/trivial XDP drop {vs_trivial:.2} (frames per receiver \
         CPU second: the other's rx ns/pkt / netfault's, median of the rounds' own ratios)"
    );
    let met = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "   targets (on receiver CPU per frame, socket sender): netfault/nft >= 2.0 (aim 2.5): {}; \
         netfault/trivial >= 0.60 (aim 0.80): {}",
        met(vs_nft >= 2.0),
        met(vs_trivial >= 0.60)
    );
}

fn mode_table(plan: &Plan, out: &Outcome) {
    println!();
    println!("   {}", out.mode.describe());
    let frames: Vec<String> = out.summaries.iter().map(|s| s.frames.to_string()).collect();
    println!(
        "   rounds of about {} s: {} frames per round, in the order below",
        plan.round_secs,
        frames.join(" / ")
    );
    match out.mode {
        RxMode::Softirq => lockstep_rows(out),
        RxMode::Threaded => overrun_rows(out),
    }
    checks(out);
    let nf = rx_median(out, Receiver::Netfault);
    let (vs_nft, vs_trivial) = (
        nf / rx_median(out, Receiver::Nft),
        nf / rx_median(out, Receiver::XdpDrop),
    );
    println!("   netfault/nft {vs_nft:.2}, netfault/trivial XDP drop {vs_trivial:.2}");
    if out.mode == RxMode::Softirq {
        let met = |ok: bool| if ok { "met" } else { "NOT MET" };
        println!(
            "   targets: netfault/nft >= 2.0 (aim 2.5): {}; netfault/trivial >= 0.60 (aim 0.80): {}",
            met(vs_nft >= 2.0),
            met(vs_trivial >= 0.60)
        );
    }
}

/// Lockstep: ns/packet is generator + receiver, so the difference to the trivial drop is what
/// the hook costs beyond it.
fn lockstep_rows(out: &Outcome) {
    println!(
        "{:<24} {:<28} {:>7} {:>6} {:>6} {:>7} {:>10}",
        "receiver", "hook", "Mpps", "min", "max", "ns/pkt", "vs trivial"
    );
    let trivial_ns = 1e3 / rx_median(out, Receiver::XdpDrop);
    for s in &out.summaries {
        let (med, min, max) = stats(&s.rx_mpps);
        println!(
            "{:<24} {:<28} {:>7.2} {:>6.2} {:>6.2} {:>7.1} {:>+10.1}",
            s.receiver.label(),
            s.hook,
            med,
            min,
            max,
            1e3 / med,
            1e3 / med - trivial_ns
        );
    }
    let (sent, received) = out
        .summaries
        .iter()
        .fold((0, 0), |(a, b), s| (a + s.sent, b + s.received));
    let lost = sent.saturating_sub(received);
    let how = if lost == 0 {
        "none lost".to_string()
    } else {
        format!("{lost} LOST at the ring")
    };
    println!("   frames sent {sent}, received and dropped {received}: {how}");
}

fn overrun_rows(out: &Outcome) {
    println!(
        "{:<24} {:<28} {:>7} {:>6} {:>6} {:>8}",
        "receiver", "hook", "Mpps", "min", "max", "offered"
    );
    for s in &out.summaries {
        let (med, min, max) = stats(&s.rx_mpps);
        println!(
            "{:<24} {:<28} {:>7.2} {:>6.2} {:>6.2} {:>8}",
            s.receiver.label(),
            s.hook,
            med,
            min,
            max,
            offered(s)
        );
    }
}
