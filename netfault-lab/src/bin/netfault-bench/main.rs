//! netfault-bench: what netfault's XDP data path costs.
//!
//! 1. ns/packet under BPF_PROG_TEST_RUN: `nf_xdp_ingress` with 1, 1k and 64k rules, for a
//!    matching and a non-matching packet, against a program that only passes.
//! 2. Drop-all packets per second on the receiving end of a veth pair: netfault's drop-all rule
//!    (deployed through the CLI) against an nftables netdev-ingress drop and a trivial XDP
//!    drop, interleaved rounds.
//! 3. TCP goodput (iperf3) across a veth pair, with nothing attached and with netfault attached
//!    on both ends through the CLI, idle and with 1k rules (goodput.rs).
//! 4. Retransmissions per drop for 10 % TCP loss at egress and at ingress, through the CLI
//!    (retrans.rs; alone, with its flags: `netfault-bench retrans`).
//! 5. Command to wire for a 5-node `halves` partition and its heal, per transport (netns,
//!    agent, SSH), next to the same cut made with nft per node; a 32-node namespace lab's
//!    attach and partition (cluster.rs; alone: `--only cluster`).
//!
//! `netfault-bench delay` instead: one-way delay and jitter through netfault against netem
//! (delay.rs; needs sch_fq and sch_netem, so `cargo xtask bench --vm` runs it in a VM).
//!
//! Needs root. Everything it creates (namespaces, veths, pins, nft table, attached programs) is
//! owned by guards that remove it on exit, error, panic, Ctrl-C or SIGTERM; leftovers of a
//! killed run are swept at the next start. `cargo xtask bench` runs it.
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Parser;

mod cluster;
mod delay;
mod droprate;
mod frame;
mod goodput;
mod progrun;
mod report;
mod retrans;
mod rttcost;
mod sockgen;
mod sys;
mod tcacts;
mod topo;

#[derive(Parser)]
#[command(
    name = "netfault-bench",
    about = "Benchmark netfault's XDP data path (needs root)"
)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Sub>,
    /// Smoke run: fewer repeats and shorter, fewer rounds (seconds, not minutes). Numbers are
    /// not for the record.
    #[arg(long)]
    quick: bool,
    /// Rounds of the drop-rate benchmark (default 7, 3 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: Option<u32>,
    /// Cuts and heals per way of the cluster part's 5-node lab (default 10 for netns and
    /// agent and 5 over SSH, 3 with --quick).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100))]
    cluster_runs: Option<u32>,
    /// Run only one part.
    #[arg(long, value_enum)]
    only: Option<Part>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// One-way delay and jitter of UDP datagrams through netfault and through netem (needs
    /// sch_fq and sch_netem: `cargo xtask bench --vm` runs it in a VM).
    Delay(delay::Args),
    /// Retransmissions per drop for 10% TCP loss at the sender's egress and at the receiver's
    /// ingress, deployed through the netfault CLI; targets printed met / not met.
    Retrans(retrans::Args),
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// ns/packet under BPF_PROG_TEST_RUN.
    Progrun,
    /// Drop-all packets per second across a veth pair.
    Veth,
    /// TCP goodput across a veth pair (iperf3).
    Goodput,
    /// Retransmissions per drop for 10% TCP loss, egress and ingress.
    Retrans,
    /// Command to wire of a cluster partition per transport, next to nft per node.
    Cluster,
}

/// How much work each part does.
pub struct Plan {
    pub quick: bool,
    /// BPF_PROG_TEST_RUN iterations per run.
    pub repeat: u32,
    /// Runs per configuration; the median is reported.
    pub runs: usize,
    /// Interleaved rounds of the veth benchmark; the median is reported.
    pub rounds: usize,
    /// Target length of one generator run; under 0.95 s, see `droprate::Bench::size`.
    pub round_secs: f64,
    /// Cuts and heals per way in the cluster part's 5-node lab, netns and agent.
    pub cluster_runs: usize,
    /// The same over SSH, where one takes seconds.
    pub cluster_ssh_runs: usize,
    /// Nodes of the cluster part's large lab (0: none).
    pub cluster_big: usize,
    /// Cuts and heals per way in the large lab.
    pub cluster_big_runs: usize,
}

impl Plan {
    fn new(a: &Args) -> Self {
        let (repeat, runs, rounds, round_secs) = if a.quick {
            (100_000, 3, 3, 0.2)
        } else {
            (1_000_000, 9, 7, 0.7)
        };
        Self {
            quick: a.quick,
            repeat,
            runs,
            rounds: a.rounds.map_or(rounds, |r| r as usize),
            round_secs,
            cluster_runs: a
                .cluster_runs
                .map_or(if a.quick { 3 } else { 10 }, |r| r as usize),
            cluster_ssh_runs: a
                .cluster_runs
                .map_or(if a.quick { 3 } else { 5 }, |r| r as usize),
            cluster_big: 32,
            cluster_big_runs: if a.quick { 1 } else { 2 },
        }
    }
}

/// Median, sorting in place; NaN for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn run(args: &Args) -> Result<()> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (BPF, namespaces, nftables)");
    }
    sys::install_signal_handlers()?;
    if let Some(Sub::Delay(d)) = &args.cmd {
        report::header(&Plan::new(args));
        return delay::run(d);
    }
    if let Some(Sub::Retrans(r)) = &args.cmd {
        report::header(&Plan::new(args));
        return retrans::run(r);
    }
    // Held to the end: pins and the CLI's attachments live under it.
    let _bpffs = netfault::dataplane::ensure_bpffs()?;
    for what in topo::sweep_leftovers().context("remove leftovers of earlier runs")? {
        eprintln!("netfault-bench: removed leftover {what}");
    }
    let plan = Plan::new(args);
    let pins = topo::PinDir::create()?;
    report::header(&plan);
    let part = |p: Part| args.only.is_none_or(|o| o == p);
    let mut failed = Vec::new();
    if part(Part::Progrun) {
        let r = progrun::run(&plan, pins.path())
            .map(|rows| report::progrun(&plan, &rows))
            .and_then(|()| tcacts::run(&plan, pins.path()))
            .map(|rows| report::tcacts(&plan, &rows))
            .and_then(|()| rttcost::run(&plan))
            .map(|rows| rttcost::report(&plan, &rows));
        not_measured(Part::Progrun, r, &mut failed)?;
    }
    if part(Part::Veth) {
        let r = droprate::run(&plan, pins.path()).map(|outs| report::droprate(&plan, &outs));
        not_measured(Part::Veth, r, &mut failed)?;
    }
    if part(Part::Goodput) {
        let r = goodput::run(&plan).map(|rows| goodput::report(&plan, &rows));
        not_measured(Part::Goodput, r, &mut failed)?;
    }
    if part(Part::Retrans) {
        let r = retrans::run(&retrans::Args::default());
        not_measured(Part::Retrans, r, &mut failed)?;
    }
    if part(Part::Cluster) {
        let r = cluster::run(&plan).and_then(|f| {
            cluster::report(&plan, &f);
            match f.failed.len() {
                0 => Ok(()),
                n => bail!("{n} of its labs or transports (above)"),
            }
        });
        not_measured(Part::Cluster, r, &mut failed)?;
    }
    if !failed.is_empty() {
        bail!("not measured: {}", failed.join(", "));
    }
    Ok(())
}

/// A part that cannot measure here says so in the report, and the others still run; the exit
/// status says at the end that something was not measured. Ctrl-C or SIGTERM stop everything.
fn not_measured(p: Part, r: Result<()>, failed: &mut Vec<&'static str>) -> Result<()> {
    let Err(e) = r else {
        return Ok(());
    };
    sys::check_stop()?;
    let (n, name) = match p {
        Part::Progrun => (1, "progrun"),
        Part::Veth => (2, "veth"),
        Part::Goodput => (3, "goodput"),
        Part::Retrans => (4, "retrans"),
        Part::Cluster => (5, "cluster"),
    };
    println!();
    println!("{n}. {name}: NOT MEASURED here: {e:#}");
    failed.push(name);
    Ok(())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netfault-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
