//! `netfault-bench retrans`: retransmissions per drop for 10 % TCP loss at the sender's egress
//! and at the receiver's ingress, through the CLI's own code path (the `netfault` binary next to
//! this one: attach, `rule add --drop 10%`, stats). Each row builds a fresh pair of namespaces
//! (lab.rs, documentation addresses only) and sends one bulk TCP flow until the rule has matched
//! the packets asked for (loss.rs). Targets, printed met / not met for each row:
//! - the flow is at least 20,000 wire packets (matched);
//! - dropped/matched inside the Wilson interval around 0.10 (alpha 1e-4);
//! - the sender retransmits at least 0.8 x the dropped packets (TCP RetransSegs of its
//!   namespace): it took the drops for losses.
//!
//!
//! Then the two placements side by side for BBR and CUBIC (the sender's TCP_CONGESTION): one
//! lab with netfault attached on both hosts (and XDP linked on the receiver throughout, so its
//! veth delivers alike: `loss::placements`), flows of a fixed time alternating between the rule
//! at the sender's egress and at the receiver's ingress. Target: goodput and retransmissions
//! per drop within 1.5x of each other, and no more DSACKs per drop at egress than 1.5x those at
//! ingress (a lossy wire is one wire, wherever the rule sits).
//!
//! `--netem` adds a row with `tc netem loss 10%` on the sender's egress for comparison (needs
//! sch_netem: in a VM guest).
use std::time::Duration;

use anyhow::{Context as _, Result};
use netfault_lab::{
    lab::{self, Host, Lab, Netfault},
    loss::{self, LossRun, Side, Until},
};

use crate::sys;

#[derive(clap::Args)]
pub struct Args {
    /// Wire packets per flow (at least 20,000 meets the target).
    #[arg(long, default_value_t = 30_000)]
    packets: u64,
    /// At most this long per flow, in seconds.
    #[arg(long, default_value_t = 120)]
    limit: u64,
    /// Also run `tc netem loss 10%` at the sender's egress (needs sch_netem).
    #[arg(long)]
    netem: bool,
    /// Placement comparison: seconds per flow.
    #[arg(long, default_value_t = 3)]
    placement_secs: u64,
    /// Placement comparison: flows per placement and congestion control.
    #[arg(long, default_value_t = 3)]
    placement_reps: u32,
}

/// Namespaces of this benchmark are `nfbr-<pid>-<n>-<role>` (the lab removes stale ones).
const PREFIX: &str = "nfbr";

impl Default for Args {
    /// What `netfault-bench` runs as its part 4: the flags' defaults.
    fn default() -> Self {
        Self {
            packets: 30_000,
            limit: 120,
            netem: false,
            placement_secs: 3,
            placement_reps: 3,
        }
    }
}
const P: f64 = 0.10;

struct Row {
    what: String,
    run: LossRun,
}

/// A veth pair in a new lab, each end having reached the other (neighbours resolved).
fn reachable_pair() -> Result<(Lab, [Host; 2])> {
    let mut lab = Lab::new(PREFIX)?;
    let [a, b] = lab.pair()?;
    for (from, to) in [(&a, &b), (&b, &a)] {
        let r = lab::ping(&from.ns, to.ip(false), 1)?;
        anyhow::ensure!(r.received == 1, "{} cannot reach {}", from.ns, to.v4);
    }
    Ok((lab, [a, b]))
}

fn measure(nf: &Netfault, side: Option<Side>, args: &Args) -> Result<LossRun> {
    sys::check_stop()?;
    let (mut lab, [a, b]) = reachable_pair()?;
    let limit = Duration::from_secs(args.limit);
    let Some(side) = side else {
        return loss::netem_flow(&a, &b, &["loss", "10%"], limit.min(Duration::from_secs(10)));
    };
    let host = match side {
        Side::SenderEgress => &a,
        Side::ReceiverIngress => &b,
    };
    nf.attach(&mut lab, &host.ns, &host.iface)?;
    loss::run(
        nf,
        &a,
        &b,
        side,
        "bench",
        &["--drop", "10%"],
        Until {
            packets: args.packets,
            limit,
        },
    )
}

pub fn run(args: &Args) -> Result<()> {
    let nf = Netfault::next_to_current_exe().context("the netfault binary")?;
    let mut rows = Vec::new();
    let mut sides = vec![
        (
            Some(Side::SenderEgress),
            "netfault --drop 10%, sender's egress",
        ),
        (
            Some(Side::ReceiverIngress),
            "netfault --drop 10%, receiver's ingress",
        ),
    ];
    if args.netem {
        sides.push((None, "netem loss 10%, sender's egress"));
    }
    for (side, what) in sides {
        eprintln!("netfault-bench retrans: {what}");
        let run = measure(&nf, side, args).with_context(|| what.to_owned())?;
        rows.push(Row {
            what: what.into(),
            run,
        });
    }
    print(&rows);
    let mut compared = Vec::new();
    for cc in CCS {
        eprintln!("netfault-bench retrans: {cc}, both placements");
        compared.push((
            cc,
            placements(&nf, cc, args).with_context(|| cc.to_owned())?,
        ));
    }
    print_placements(&compared);
    Ok(())
}

/// The congestion controls the placements are compared under.
const CCS: [&str; 2] = ["bbr", "cubic"];

/// (sender's egress, receiver's ingress) for `cc`, in one lab with netfault on both hosts.
fn placements(nf: &Netfault, cc: &str, args: &Args) -> Result<(LossRun, LossRun)> {
    sys::check_stop()?;
    let (mut lab, [a, b]) = reachable_pair()?;
    nf.attach(&mut lab, &a.ns, &a.iface)?;
    nf.attach(&mut lab, &b.ns, &b.iface)?;
    loss::placements(
        nf,
        &a,
        &b,
        &["--drop", "10%"],
        cc,
        args.placement_reps,
        Duration::from_secs(args.placement_secs),
    )
}

fn print_placements(compared: &[(&str, (LossRun, LossRun))]) {
    println!();
    println!(
        "4b. the same 10% loss at the sender's egress and at the receiver's ingress, side by side \
         (netfault on both hosts, flows alternating; sums over the flows)"
    );
    println!(
        "{:<26} {:>8} {:>8} {:>8} {:>12} {:>11} {:>5} {:>9} {:>6}",
        "cc, placement",
        "matched",
        "dropped",
        "retrans",
        "retrans/drop",
        "DSACK/drop",
        "RTOs",
        "Mbit/s",
        "secs"
    );
    for (cc, (egress, ingress)) in compared {
        for (what, r) in [("sender's egress", egress), ("receiver's ingress", ingress)] {
            let c = &r.counters;
            println!(
                "{:<26} {:>8} {:>8} {:>8} {:>12.2} {:>11.3} {:>5} {:>9.1} {:>6.1}",
                format!("{cc}, {what}"),
                c.matched,
                c.dropped,
                r.retrans,
                r.retrans_per_drop(),
                r.dsacks_per_drop(),
                r.timeouts,
                r.goodput_bits / 1e6,
                r.secs
            );
        }
    }
    println!("targets:");
    for (cc, (egress, ingress)) in compared {
        let failures = loss::placement_failures(egress, ingress, 1.5);
        println!(
            "   {cc}: goodput {:.2}x, retransmits/drop {:.2}x apart (<= 1.5x), DSACKs/drop {:.3} \
             at egress vs {:.3} at ingress: {}{}",
            loss::spread(egress.goodput_bits, ingress.goodput_bits),
            loss::spread(egress.retrans_per_drop(), ingress.retrans_per_drop()),
            egress.dsacks_per_drop(),
            ingress.dsacks_per_drop(),
            met(failures.is_empty()),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({})", failures.join("; "))
            }
        );
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT MET" }
}

fn print(rows: &[Row]) {
    println!();
    println!(
        "4. retransmissions per drop for 10% TCP loss (one bulk flow across a veth pair; \
         retransmissions are the sender's TCP RetransSegs)"
    );
    println!(
        "{:<42} {:>8} {:>8} {:>7} {:>8} {:>12} {:>9} {:>6}",
        "config", "matched", "dropped", "ratio", "retrans", "retrans/drop", "Mbit/s", "secs"
    );
    for r in rows {
        let c = &r.run.counters;
        println!(
            "{:<42} {:>8} {:>8} {:>7.4} {:>8} {:>12.2} {:>9.1} {:>6.1}",
            r.what,
            c.matched,
            c.dropped,
            r.run.ratio(c.dropped),
            r.run.retrans,
            r.run.retrans_per_drop(),
            r.run.goodput_bits / 1e6,
            r.run.secs
        );
    }
    println!("targets:");
    for r in rows.iter().filter(|r| r.what.starts_with("netfault")) {
        let c = &r.run.counters;
        let (wilson, (lo, hi)) = r.run.wilson_holds(c.dropped, P);
        println!(
            "   {}: flow >= 20,000 wire packets ({}): {}; dropped/matched in Wilson [{lo:.4}, \
             {hi:.4}] around 0.10: {}; retransmits >= 0.8 x dropped ({:.2}): {}; counters = \
             packets the sender sent ({} / {}): {}",
            r.what,
            c.matched,
            met(c.matched >= 20_000),
            met(wilson),
            r.run.retrans_per_drop(),
            met(r.run.retrans as f64 >= 0.8 * c.dropped as f64),
            c.matched,
            r.run.sent(),
            met(c.matched == r.run.sent())
        );
    }
}
