//! `netfault-bench delay`: how close netfault's delay and jitter come to what was configured,
//! next to netem doing the same, on real traffic between two namespaces joined by a veth.
//!
//! Each row builds a fresh pair of namespaces (lab.rs, documentation addresses only), measures a
//! baseline (the same probe with no impairment, 300 datagrams), installs one impairment on the
//! sender's egress and sends timestamped UDP datagrams at a fixed rate (probe.rs): one-way delay
//! from the sender's CLOCK_MONOTONIC to the kernel's receive timestamp. The errors are the
//! measured p50 and p99, less the row's baseline median, minus the configured distribution's p50
//! and p99 (dist.rs: netem's tables, which netfault uses too).
//!
//! Needs `sch_netem` and `sch_fq`: the development host has neither, so `cargo xtask bench --vm`
//! runs this in a QEMU guest (docs/VM.md).
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use netfault::spec::dist::{DelayModel, Distribution, order_kept_median};
use netfault_lab::{
    lab::{self, Lab, Netfault, exec_in},
    probe::{self, UdpProbe},
};

use crate::sys;

#[derive(clap::Args)]
pub struct Args {
    /// Seconds of probing per row.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// The probe's datagrams per second; a second rate adds fixed-delay rows at that rate.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 5000])]
    rates: Vec<u32>,
    /// Probe flows (distinct source ports); datagram i goes out on flow i % flows.
    #[arg(long, default_value_t = 1)]
    flows: u16,
}

/// Namespaces of this benchmark are `nfbd-<pid>-<n>-<role>` (the lab removes stale ones).
const PREFIX: &str = "nfbd";
const PORT: u16 = 4100;
const MS: f64 = 1e6;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Netem,
    Netfault,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Netem => "netem",
            Tool::Netfault => "netfault",
        }
    }
}

struct Case {
    tool: Tool,
    config: &'static str,
    /// Arguments after `tc qdisc add dev IF root netem`, or after netfault's match options.
    args: &'static [&'static str],
    model: DelayModel,
    /// Keeps per-flow order: the expected quantiles are then the simulated order-kept ones.
    order_kept: bool,
    rate: u32,
}

struct Row {
    case: Case,
    sent: u32,
    received: u64,
    p50_err_ms: f64,
    p99_err_ms: f64,
    reordered: u64,
    note: Option<String>,
}

const FIXED: DelayModel = DelayModel {
    delay_ns: 50_000_000,
    jitter_ns: 0,
    dist: Distribution::Uniform,
};
const NORMAL: DelayModel = DelayModel {
    delay_ns: 50_000_000,
    jitter_ns: 20_000_000,
    dist: Distribution::Normal,
};

/// netem's default `limit` is 1000 packets: 5000 pps under 50 ms keeps 250 queued, and 20,000
/// would overflow it, so every netem row raises it out of the way.
const NETEM_FIXED: &[&str] = &["delay", "50ms", "limit", "100000"];
const NETEM_NORMAL: &[&str] = &[
    "delay",
    "50ms",
    "20ms",
    "distribution",
    "normal",
    "limit",
    "100000",
];

fn cases(args: &Args) -> Vec<Case> {
    let mut v = Vec::new();
    for (i, &rate) in args.rates.iter().enumerate() {
        v.push(Case {
            tool: Tool::Netem,
            config: "delay 50ms",
            args: NETEM_FIXED,
            model: FIXED,
            order_kept: false,
            rate,
        });
        v.push(Case {
            tool: Tool::Netfault,
            config: "--delay 50ms",
            args: &["--delay", "50ms"],
            model: FIXED,
            order_kept: false,
            rate,
        });
        if i > 0 {
            continue; // jitter rows at the first rate only
        }
        v.push(Case {
            tool: Tool::Netem,
            config: "delay 50ms 20ms distribution normal",
            args: NETEM_NORMAL,
            model: NORMAL,
            order_kept: false,
            rate,
        });
        v.push(Case {
            tool: Tool::Netfault,
            config: "--delay 50ms --jitter 20ms --distribution normal --reorder",
            args: netfault_lab::probe::NORMAL_JITTER_REORDER_ARGS,
            model: NORMAL,
            order_kept: false,
            rate,
        });
        v.push(Case {
            tool: Tool::Netfault,
            config: "--delay 50ms --jitter 20ms --distribution normal",
            args: netfault_lab::probe::NORMAL_JITTER_ARGS,
            model: NORMAL,
            order_kept: true,
            rate,
        });
    }
    v
}

/// The expected p50 and p99 in ns: the model's, or for order-kept rows a simulation of one
/// flow at the probe's per-flow gap (order keeping moves every quantile up; see dist.rs).
fn expected(case: &Case, gap: Duration) -> (f64, f64, Option<String>) {
    let m = &case.model;
    if !case.order_kept || m.jitter_ns == 0 {
        return (m.median(), m.quantile(0.99), None);
    }
    let kept = order_kept_median(m, gap.as_nanos() as u64, 100_000, 1);
    (
        m.median(),
        m.quantile(0.99),
        Some(format!(
            "order kept, {:.1} ms between a flow's datagrams: the simulated median is {:.2} ms \
             ({:+.2} ms), so the p50 error here is expected",
            gap.as_secs_f64() * 1e3,
            kept / MS,
            (kept - m.median()) / MS
        )),
    )
}

fn measure(nf: &Netfault, case: Case, args: &Args) -> Result<Row> {
    sys::check_stop()?;
    let mut lab = Lab::new(PREFIX)?;
    let [a, b] = lab.pair()?;
    // Resolve neighbours first, so no datagram waits for ARP.
    for (from, to) in [(&a, &b), (&b, &a)] {
        let r = lab::ping(&from.ns, to.ip(false), 1)?;
        if r.received != 1 {
            bail!("{} cannot reach {}", from.ns, to.v4);
        }
    }
    let dst = b.sock(false, PORT);
    let base = UdpProbe::new(300, 1000).run(&a.ns, &b.ns, dst)?;
    let base_p50 = probe::median(&base.delays_ms());
    match case.tool {
        Tool::Netem => {
            let mut tc = vec!["qdisc", "add", "dev", &a.iface, "root", "netem"];
            tc.extend_from_slice(case.args);
            exec_in(&a.ns, "tc", &tc)?;
        }
        Tool::Netfault => {
            nf.attach(&mut lab, &a.ns, &a.iface)?;
            let port = PORT.to_string();
            let mut rule = vec![
                "rule", "add", "bench", "--dir", "egress", "--proto", "udp", "--dport", &port,
            ];
            rule.extend_from_slice(case.args);
            nf.run(&a.ns, &rule)?;
        }
    }
    let count = (args.secs * f64::from(case.rate)).round().max(1.0) as u32;
    let p = UdpProbe::new(count, case.rate)
        .flows(args.flows)
        .max_delay(Duration::from_millis(500));
    let r = p.run(&a.ns, &b.ns, dst)?;
    log::debug!(
        "{} {} at {} pps: {r}",
        case.tool.name(),
        case.config,
        case.rate
    );
    let q = probe::percentiles(&r.delays_ms(), &[0.5, 0.99]);
    let (e50, e99, note) = expected(&case, p.interval * u32::from(args.flows));
    Ok(Row {
        sent: r.sent,
        received: r.received(),
        p50_err_ms: q[0] - base_p50 - e50 / MS,
        p99_err_ms: q[1] - base_p50 - e99 / MS,
        reordered: r.reordered_total(),
        note,
        case,
    })
}

pub fn run(args: &Args) -> Result<()> {
    if args.rates.is_empty() || args.rates.iter().any(|&r| !(1..=20_000).contains(&r)) {
        bail!("--rates: 1 to 20000 datagrams per second each");
    }
    if !(0.1..=60.0).contains(&args.secs) || args.flows == 0 {
        bail!("--secs 0.1 to 60, --flows at least 1");
    }
    let nf = Netfault::next_to_current_exe().context("the netfault binary")?;
    let mut rows = Vec::new();
    for case in cases(args) {
        let what = format!("{} {} at {} pps", case.tool.name(), case.config, case.rate);
        eprintln!("netfault-bench delay: {what}");
        rows.push(measure(&nf, case, args).with_context(|| what)?);
    }
    print(args, &rows);
    Ok(())
}

fn print(args: &Args, rows: &[Row]) {
    println!();
    println!(
        "delay: one-way delay of UDP datagrams ({} s per row, {} flow(s)) through an impairment \
         on the sender's egress of a veth",
        args.secs, args.flows
    );
    println!(
        "   error = measured quantile - baseline median (same row, no impairment) - the \
         configured distribution's quantile; configured 50ms: p50 = p99 = 50 ms; 50ms ± 20ms \
         normal: p50 {:.2} ms, p99 {:.2} ms",
        NORMAL.median() / MS,
        NORMAL.quantile(0.99) / MS
    );
    println!(
        "   under QEMU's TCG (cargo xtask bench --vm) CPU figures would mean nothing; only the \
         wall-clock delays are meaningful, and their tails include the emulator's timer latency"
    );
    println!(
        "{:<9} {:<60} {:>5} {:>6} {:>8} {:>5} {:>9} {:>9} {:>9}",
        "tool", "config", "pps", "sent", "received", "drops", "p50 err", "p99 err", "reordered"
    );
    for r in rows {
        println!(
            "{:<9} {:<60} {:>5} {:>6} {:>8} {:>5} {:>+6.2} ms {:>+6.2} ms {:>9}",
            r.case.tool.name(),
            r.case.config,
            r.case.rate,
            r.sent,
            r.received,
            u64::from(r.sent) - r.received,
            r.p50_err_ms,
            r.p99_err_ms,
            r.reordered
        );
    }
    for r in rows.iter().filter(|r| r.note.is_some()) {
        println!(
            "   {} {}: {}",
            r.case.tool.name(),
            r.case.config,
            r.note.as_deref().unwrap_or_default()
        );
    }
}
