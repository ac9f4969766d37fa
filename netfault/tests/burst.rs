//! Burst loss end to end: `rule add --drop 5% --burst 4` with the real binary, 100,000 UDP
//! datagrams of one flow between two namespaces, the runs read from the receiver's sequence
//! numbers. Needs root.
//!
//! The lab is the cleanup guard (see tests/common): it detaches and deletes its namespaces on
//! drop, passed or panicked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use common::*;
use netfault::spec::GeModel;
use netfault_lab::burst as runs;

/// Normal quantiles for alpha = 1e-4: two-sided (intervals) and one-sided (chi-square).
const Z2: f64 = 3.8906;
const Z1: f64 = 3.719;

#[test]
fn burst_loss_on_the_wire_has_its_rate_runs_and_counters() {
    const N: u32 = 100_000;
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    // At the receiver's ingress (XDP): one flow, only the burst.
    run(
        &nf,
        &b,
        &[
            "rule", "add", "bursty", "--dir", "ingress", "--proto", "udp", "--dport", "4000",
            "--drop", "5%", "--burst", "4",
        ],
    );
    let r = UdpBurst::new(N)
        .rate(50_000)
        .run(&a.ns, &b.ns, b.sock(false, UDP_PORT))
        .expect("burst");
    assert_eq!(
        r.rcvbuf_errors, 0,
        "the sink's socket overflowed: the runs below would not be netfault's alone"
    );
    assert_eq!((r.sent, r.duplicates(), r.stray), (N, 0, 0), "{r}");
    let lost: Vec<bool> = r.copies.iter().map(|&c| c == 0).collect();
    let g = GeModel::simple(0.05, 4.0).unwrap();
    let (ok, (lo, hi)) = runs::loss_rate_holds(&lost, &g, Z2);
    assert!(ok, "{r}: interval [{lo:.4}, {hi:.4}] misses 0.05");
    let seen = runs::runs(&lost);
    let (ok, got, (lo, hi)) = runs::mean_run_holds(&seen, 4.0, Z2);
    assert!(ok, "mean run {got:.3}, interval [{lo:.3}, {hi:.3}]");
    let (chi, dof) = runs::chi_square_geometric(&seen, 4.0);
    let crit = runs::chi_square_critical(dof, Z1);
    assert!(
        chi <= crit,
        "chi-square {chi:.1} > {crit:.1} ({dof} dof): {:?}",
        runs::histogram(&seen)
    );
    assert!(runs::ks_geometric(&seen, 4.0) > 1e-4);
    // Packet for packet: the receiver's gaps are exactly what netfault counted.
    let c = counters(&nf, &b, "bursty");
    assert_eq!(c.matched, u64::from(N), "{c:?}");
    assert_eq!(c.dropped, u64::from(N) - r.received(), "{c:?}; {r}");
    assert_eq!(c.bursts, runs::runs_begun(&lost), "{c:?}");
    let listed = nf.json(&b.ns, &["rule", "list", "--json"]).expect("list");
    assert_eq!(listed["rules"][0]["burst"], 4.0, "{listed}");
    assert_eq!(listed["rules"][0]["burst_scope"], "flow", "{listed}");
}
