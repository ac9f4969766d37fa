//! Issue #3, end to end: delay, jitter, reordering and rate by EDT marking (the data path stamps
//! `skb->tstamp`; an `fq` root qdisc, or on ingress an IFB device whose root qdisc is fq, holds
//! each packet until then). Real traffic between two namespaces joined by a veth, netfault
//! driven through its CLI with `--netns` where `tc` and `ip` do not exist (`without_iproute2`),
//! measured with `netfault_lab::probe`.
//!
//! These need `sch_fq` (and `ifb`), which the development host's kernel lacks, so every test is
//! ignored by default; `cargo xtask vm-test` runs them with `--ignored --test-threads=1` in QEMU
//! guests with Debian's 6.1 and 6.12 kernels (docs/VM.md). One at a time: under TCG with one
//! vCPU, parallel tests would skew each other's timings.
//!
//! Tolerances are from the issue: a delay is right within max(1 ms, 5 %). Each measured delay
//! has the same test's baseline (the same probe before any rule) subtracted, so what is compared
//! is what the impairment added, not the guest's own latency. Every probabilistic assertion
//! states its confidence level.
//!
//! `NETFAULT_SHAPING_BACKEND=netem` runs the same measurements with `tc qdisc ... netem` in
//! place of netfault (on ingress through an IFB, which needs `NETFAULT_VM_MODULES=act_mirred,
//! cls_matchall`): the check that the probes measure right, independent of netfault. Assertions
//! that only netfault promises (per-flow order, its counters, the qdisc policy) are skipped there.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{net::SocketAddr, time::Duration};

use common::*;
use netfault::spec::dist::{DelayModel, Distribution, order_kept_median};
use netfault_lab::{
    ks,
    lab::exec_in,
    probe::{self, Spread, UdpEcho, UdpProbe},
};
use serde_json::Value;

/// The probes' UDP port (the RTT echo listens on the next one); rules match exactly these.
const PROBE_PORT: u16 = 4100;
const ECHO_PORT: u16 = 4101;
const TCP_PORT: u16 = 5001;
const MS: f64 = 1e6;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Netfault,
    Netem,
}

fn backend() -> Backend {
    match std::env::var("NETFAULT_SHAPING_BACKEND").as_deref() {
        Ok("netem") => Backend::Netem,
        Ok("netfault") | Err(_) => Backend::Netfault,
        Ok(other) => panic!("NETFAULT_SHAPING_BACKEND={other}: want netfault or netem"),
    }
}

/// True (and says so) when the test's subject is netfault-only and netem stands in.
fn netem_skips(what: &str) -> bool {
    let skip = backend() == Backend::Netem;
    if skip {
        eprintln!("NETFAULT_SHAPING_BACKEND=netem: skipping {what} (netfault only)");
    }
    skip
}

/// An impairment as netfault's rule options and as the equivalent netem parameters.
struct Impairment<'a> {
    /// `--dir` of the rule; for netem, egress is the interface's root qdisc and ingress goes
    /// through an IFB.
    dir: &'a str,
    /// Match options of the rule (netem matches everything on the interface).
    matcher: &'a [&'a str],
    netfault: &'a [&'a str],
    netem: &'a [&'a str],
}

/// Two hosts on a veth pair, and netfault run where `tc` and `ip` do not exist
/// ([`Netfault::without_iproute2`]): it must install and remove its queues by netlink alone.
/// The tests themselves use `ip` for the lab and `tc` to check the kernel and for netem.
fn shaping_pair() -> (Lab, Netfault, [Host; 2]) {
    let (lab, nf, hosts) = pair();
    (lab, nf.without_iproute2(), hosts)
}

/// The rule every test adds.
const RULE: &str = "shaped";

/// Installs `imp` on `h`'s interface with the selected backend.
fn impair(lab: &mut Lab, nf: &Netfault, h: &Host, imp: &Impairment) {
    match backend() {
        Backend::Netfault => {
            attach(lab, nf, h);
            let mut args = vec!["rule", "add", RULE, "--dir", imp.dir];
            args.extend_from_slice(imp.matcher);
            args.extend_from_slice(imp.netfault);
            run(nf, h, &args);
        }
        Backend::Netem => {
            // netem's default limit is 1000 packets: far more here, so it never drops.
            let mut netem = imp.netem.to_vec();
            netem.extend_from_slice(&["limit", "100000"]);
            let dev = match imp.dir {
                "egress" => h.iface.clone(),
                "ingress" => {
                    let ifb = "nfifbtest";
                    tc(
                        h,
                        &[
                            "qdisc", "add", "dev", &h.iface, "handle", "ffff:", "ingress",
                        ],
                    );
                    exec_in(&h.ns, "ip", &["link", "add", ifb, "type", "ifb"]).expect("add ifb");
                    exec_in(&h.ns, "ip", &["link", "set", ifb, "up"]).expect("ifb up");
                    tc(
                        h,
                        &[
                            "filter", "add", "dev", &h.iface, "parent", "ffff:", "matchall",
                            "action", "mirred", "egress", "redirect", "dev", ifb,
                        ],
                    );
                    ifb.to_owned()
                }
                other => panic!("no netem equivalent for --dir {other}"),
            };
            let mut args = vec!["qdisc", "add", "dev", &dev, "root", "netem"];
            args.extend_from_slice(&netem);
            tc(h, &args);
        }
    }
}

fn tc(h: &Host, args: &[&str]) -> String {
    exec_in(&h.ns, "tc", args).unwrap_or_else(|e| panic!("tc {}: {e:#}", args.join(" ")))
}

/// The root qdisc of `h`'s interface: (kind, handle), from `tc -j qdisc show`.
fn root_qdisc(h: &Host) -> (String, String) {
    let out = tc(h, &["-j", "qdisc", "show", "dev", &h.iface, "root"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let q = &v[0];
    (
        q["kind"].as_str().unwrap_or_default().to_owned(),
        q["handle"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Packets every qdisc on `h`'s interface dropped (`tc -s`), summed.
fn qdisc_drops(h: &Host) -> u64 {
    let out = tc(h, &["-s", "-j", "qdisc", "show", "dev", &h.iface]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .map(|qs| qs.iter().filter_map(|q| q["drops"].as_u64()).sum())
        .unwrap_or(0)
}

fn probe_dst(h: &Host, v6: bool) -> SocketAddr {
    h.sock(v6, PROBE_PORT)
}

/// Runs a probe from `a` to `b` that must lose nothing, and returns it.
fn probe_all(a: &Host, b: &Host, v6: bool, p: &UdpProbe, what: &str) -> probe::ProbeReport {
    let r = p
        .run(&a.ns, &b.ns, probe_dst(b, v6))
        .unwrap_or_else(|e| panic!("{what}: probe: {e:#}"));
    eprintln!("{what}: {r}");
    assert_eq!(
        (r.lost(), r.duplicates, r.stray, r.rcvbuf_errors),
        (0, 0, 0, 0),
        "{what}: every datagram must arrive exactly once; {r}"
    );
    // The kernel stamps a datagram when it enters the receiving stack; were that before a
    // delay (an IFB path keeping the first stamp), the receiver would wake tens of ms after it.
    assert!(
        r.rx_lag_ms().p50 < 10.0,
        "{what}: the receiver woke {:.3} ms (median) after the kernel's receive stamps",
        r.rx_lag_ms().p50
    );
    assert!(
        r.clock_drift_ns.abs() < 100_000,
        "{what}: REALTIME moved against MONOTONIC by {} ns during the probe: timings are off",
        r.clock_drift_ns
    );
    r
}

/// The sender wakes every millisecond; its schedule slipping by more than this means the whole
/// guest stalled (under TCG: the host preempted QEMU), and any timer due meanwhile, fq's
/// included, fired that much late. Unstalled runs here slip by 0.1-1 ms.
const STALL: Duration = Duration::from_millis(2);

/// [`probe_all`], repeated (at most 3 times in all) while the guest stalled during it: for
/// assertions on the tail, which a stall of the emulator would decide instead of netfault. A
/// systematic tail shows in every attempt; the last one is returned whatever it saw, with the
/// number of datagrams all attempts sent (and [`stall_ms`] says how much it may be off by).
fn probe_unstalled(a: &Host, b: &Host, p: &UdpProbe, what: &str) -> (probe::ProbeReport, u64) {
    let (mut attempt, mut sent) = (1, 0);
    loop {
        let r = probe_all(a, b, false, p, what);
        sent += u64::from(r.sent);
        if r.max_send_lag <= STALL || attempt == 3 {
            return (r, sent);
        }
        eprintln!(
            "{what}: the guest stalled for {:?} during attempt {attempt}: probing again",
            r.max_send_lag
        );
        attempt += 1;
    }
}

/// How much later than netfault made them a stall of the guest may have delivered a probe's
/// datagrams, in ms: a stall delays every timer due during it, fq's included, by at most its
/// length, which the sender's own schedule (a wake-up every millisecond) measures. 0 for a run
/// without a stall.
fn stall_ms(r: &probe::ProbeReport) -> f64 {
    if r.max_send_lag <= STALL {
        0.0
    } else {
        r.max_send_lag.as_secs_f64() * 1e3
    }
}

/// The baseline: the same probe before any rule. Its median is what the guest itself adds.
fn baseline(a: &Host, b: &Host, v6: bool) -> Spread {
    let r = probe_all(a, b, v6, &UdpProbe::new(300, 1000), "baseline");
    r.spread_ms()
}

/// max(1 ms, 5 %) of a delay, in ms.
fn tolerance_ms(expected_ms: f64) -> f64 {
    (0.05 * expected_ms).max(1.0)
}

fn assert_close(what: &str, measured_ms: f64, expected_ms: f64, detail: &dyn std::fmt::Display) {
    let tol = tolerance_ms(expected_ms);
    assert!(
        (measured_ms - expected_ms).abs() <= tol,
        "{what}: {measured_ms:.3} ms, expected {expected_ms:.3} ± {tol:.3} ms; {detail}"
    );
}

/// Test 1: A fixed 50 ms on the sender's egress: one-way p50 and p99, and RTT p50, shift by
/// 50 ms. (A deterministic delay: no confidence level applies; the tail is measured on runs
/// without a stall of the emulated guest, see [`STALL`].)
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn egress_delay_shifts_p50_and_p99() {
    let (mut lab, nf, [a, b]) = shaping_pair();
    let one_way = UdpProbe::new(500, 1000);
    let rtt = UdpProbe::new(200, 500);
    let echo = UdpEcho::start(&b.ns, b.sock(false, ECHO_PORT)).expect("echo");
    let (base_run, _) = probe_unstalled(&a, &b, &one_way, "baseline one-way");
    let base = base_run.spread_ms();
    let base_rtt = probe::rtt(&a.ns, echo.addr, &rtt).expect("baseline rtt");
    eprintln!("baseline rtt: {base_rtt}");
    assert_eq!(base_rtt.lost(), 0, "baseline rtt: {base_rtt}");

    let port_range = format!("{PROBE_PORT}-{ECHO_PORT}");
    impair(
        &mut lab,
        &nf,
        &a,
        &Impairment {
            dir: "egress",
            matcher: &["--proto", "udp", "--dport", &port_range],
            netfault: &["--delay", "50ms"],
            netem: &["delay", "50ms"],
        },
    );
    let (r, one_way_sent) = probe_unstalled(&a, &b, &one_way, "delayed one-way");
    let d = r.spread_ms();
    assert_close("one-way p50 shift", d.p50 - base.p50, 50.0, &r);
    // The tail of a run the guest stalled in all three attempts may be later by the stall, and
    // the baseline's (which lowers the shift) too: only that much, and only that way, is let
    // through beside the usual tolerance.
    let (late, early) = (stall_ms(&r), stall_ms(&base_run));
    let shift = d.p99 - base.p99;
    let tol = tolerance_ms(50.0);
    assert!(
        shift >= 50.0 - tol - early && shift <= 50.0 + tol + late,
        "one-way p99 shift: {shift:.3} ms, expected 50.000 ms, -{:.3} / +{:.3} ms (the usual \
         {tol:.3} ms, and the stalls of the baseline's run and of this one); {r}",
        tol + early,
        tol + late
    );

    let r = probe::rtt(&a.ns, echo.addr, &rtt).expect("delayed rtt");
    eprintln!("delayed rtt: {r}");
    assert_eq!(r.lost(), 0, "delayed rtt: {r}");
    // Only the way out crosses the rule (the echo's replies come back on A's ingress).
    let shift = r.spread_ms().p50 - base_rtt.spread_ms().p50;
    assert_close("rtt p50 shift", shift, 50.0, &r);
    if backend() == Backend::Netfault {
        let c = counters(&nf, &a, RULE);
        let n = one_way_sent + u64::from(rtt.count);
        assert_eq!((c.matched, c.delayed), (n, n), "{c:?}");
    }
}

/// The configured jitter: 50 ms ± 20 ms, netem's `normal` table.
const JITTER: DelayModel = DelayModel {
    delay_ns: 50_000_000,
    jitter_ns: 20_000_000,
    dist: Distribution::Normal,
};

/// Test 2: Normal jitter with `--reorder`: the delays follow the configured distribution, and
/// packets overtake each other.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn jitter_with_reorder_follows_the_distribution() {
    const N: u32 = 2000;
    const ALPHA: f64 = 1e-4;
    let (mut lab, nf, [a, b]) = shaping_pair();
    let base = baseline(&a, &b, false);
    impair(
        &mut lab,
        &nf,
        &a,
        &Impairment {
            dir: "egress",
            matcher: &["--proto", "udp", "--dport", &PROBE_PORT.to_string()],
            netfault: netfault_lab::probe::NORMAL_JITTER_REORDER_ARGS,
            netem: &["delay", "50ms", "20ms", "distribution", "normal"],
        },
    );
    // 8 flows, one datagram every 8 ms each: flows are independent draws either way.
    let r = probe_all(&a, &b, false, &UdpProbe::new(N, 1000).flows(8), "jitter");
    // What the impairment added: each delay less the baseline's median (its spread, tens of
    // µs, is negligible against a 20 ms sigma).
    let added: Vec<f64> = r
        .delays_ns()
        .iter()
        .map(|&d| d as f64 - base.p50 * MS)
        .collect();
    // Kolmogorov-Smirnov against the configured distribution at alpha = 1e-4: a correct data
    // path fails this once in 10,000 runs (99.99 % confidence).
    let d = ks::statistic(&added, |x| JITTER.cdf(x));
    let crit = ks::critical_value(added.len(), ALPHA);
    let got = Spread::of(&added.iter().map(|x| x / MS).collect::<Vec<_>>());
    assert!(
        d <= crit,
        "KS: D = {d:.4} > {crit:.4} (p = {:.2e}); added delay ms: {got}; configured p1 {:.3} \
         p50 {:.3} p99 {:.3}",
        ks::p_value(d, added.len()),
        JITTER.quantile(0.01) / MS,
        JITTER.median() / MS,
        JITTER.quantile(0.99) / MS
    );
    // Consecutive datagrams of a flow are 8 ms apart against a 20 ms sigma: each pair swaps
    // with probability P(N(0, 2 * 20^2) > 8) = 0.39, so among 1,992 pairs zero swaps is
    // impossible in practice (0.61^1992, far below 1e-100).
    assert!(
        r.reordered_total() > 0,
        "--reorder: no datagram overtook another; {r}"
    );
}

/// Test 3: The same jitter without `--reorder`: no flow sees reordering, and the median stays
/// where it was configured, because each flow's datagrams are far enough apart.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn jitter_keeps_per_flow_order() {
    const N: u32 = 3000;
    const FLOWS: u16 = 64;
    const INTERVAL: Duration = Duration::from_millis(1);
    // Keeping order holds a datagram back behind a slower predecessor of its flow, which skews
    // delays up when a flow's datagrams are close against the jitter. With 64 flows at one
    // datagram a millisecond, a flow's datagrams are 64 ms apart (3.2 sigma): only a
    // predecessor that drew over 114 ms can push a datagram across the median, and the skew of
    // the median simulated over 200,000 datagrams is nil. It must stay far below the 5 %
    // tolerance (asserted: under 1 %).
    let gap = INTERVAL * u32::from(FLOWS);
    let kept = order_kept_median(&JITTER, gap.as_nanos() as u64, 200_000, 3);
    let skew = (kept - JITTER.median()) / JITTER.median();
    assert!(
        skew.abs() < 0.01,
        "a {gap:?} per-flow gap skews the median by {:.2} %: too close for this test",
        skew * 100.0
    );
    if netem_skips("per-flow order (netem's jitter reorders)") {
        return;
    }
    let (mut lab, nf, [a, b]) = shaping_pair();
    let base = baseline(&a, &b, false);
    impair(
        &mut lab,
        &nf,
        &a,
        &Impairment {
            dir: "egress",
            matcher: &["--proto", "udp", "--dport", &PROBE_PORT.to_string()],
            netfault: netfault_lab::probe::NORMAL_JITTER_ARGS,
            netem: &[],
        },
    );
    let p = UdpProbe::new(N, 1000).interval(INTERVAL).flows(FLOWS);
    let r = probe_all(&a, &b, false, &p, "order-kept jitter");
    assert_eq!(
        r.reordered_total(),
        0,
        "without --reorder no flow may be reordered; per flow: {:?}; {r}; {:?}",
        r.reordered,
        counters(&nf, &a, RULE)
    );
    // The median of 3,000 draws has a standard error of 1.2533 * 20 / sqrt(3000) = 0.46 ms;
    // the tolerance (2.5 ms) less the order-keeping skew (nil, above) and the guest's own
    // added latency (0.1-0.2 ms at the median, test 1) leaves 5 standard errors: a correct data
    // path fails this about once in 2 million runs (two-sided, 99.9999 %).
    let median = r.spread_ms().p50 - base.p50;
    eprintln!(
        "order-kept median {median:.3} ms (configured {:.3} ms, simulated skew {:+.3} %)",
        JITTER.median() / MS,
        skew * 100.0
    );
    assert_close(
        "order-kept median",
        median,
        JITTER.median() / MS,
        &format_args!("order-keeping skew simulated {:.3} %; {r}", skew * 100.0),
    );
}

/// Ethernet (14) + IPv4 (20) + TCP with the timestamp option (32) around each segment's payload
/// of up to 1448 bytes on a 1500-byte MTU: the wire frame the rate counts is 1514 bytes.
const TCP_PAYLOAD: f64 = 1448.0;
const TCP_FRAME: f64 = 1514.0;

/// Test 4: `--rate 10mbit` paces a TCP transfer. The rate counts L2 bytes of the wire frames;
/// goodput is payload only, so full-sized segments give at most 10 Mbit/s * 1448 / 1514.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn rate_paces_tcp_goodput() {
    const RATE: f64 = 10e6;
    let (mut lab, nf, [a, b]) = shaping_pair();
    impair(
        &mut lab,
        &nf,
        &a,
        &Impairment {
            dir: "egress",
            matcher: &["--proto", "tcp", "--dport", &TCP_PORT.to_string()],
            netfault: &["--rate", "10mbit"],
            netem: &["rate", "10mbit"],
        },
    );
    // 3 s, of which the first 0.5 s (slow start, the first burst) is not counted. The
    // measurement is deterministic pacing, not a draw: no confidence level applies, and the
    // 10 % absorbs ACK timing and the partial last segment of each write.
    let g = probe::tcp_goodput(
        &a.ns,
        &b.ns,
        b.sock(false, TCP_PORT),
        Duration::from_secs(3),
        Duration::from_millis(500),
    )
    .expect("tcp goodput");
    eprintln!("goodput: {g}");
    let expected = RATE * TCP_PAYLOAD / TCP_FRAME;
    let err = (g.bits_per_sec - expected) / expected;
    assert!(
        err.abs() <= 0.10,
        "goodput {:.3} Mbit/s is {:+.1} % off {:.3} Mbit/s (10 Mbit/s of 1514-byte frames \
         carrying 1448 bytes each); {g}",
        g.bits_per_sec / 1e6,
        err * 100.0,
        expected / 1e6
    );
}

/// Test 5: 1,000 datagrams per second of one flow under 200 ms: 200 in flight at any time, more
/// than fq's default per-flow limit of 100. Nothing may be dropped, by the qdisc or by netfault.
/// (Deterministic: no confidence level applies.)
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn long_delay_at_1000pps_drops_nothing() {
    const N: u32 = 3000;
    let (mut lab, nf, [a, b]) = shaping_pair();
    impair(
        &mut lab,
        &nf,
        &a,
        &Impairment {
            dir: "egress",
            matcher: &["--proto", "udp", "--dport", &PROBE_PORT.to_string()],
            netfault: &["--delay", "200ms"],
            netem: &["delay", "200ms"],
        },
    );
    let p = UdpProbe::new(N, 1000).max_delay(Duration::from_millis(500));
    let r = probe_all(&a, &b, false, &p, "200 ms at 1000 pps");
    assert_close("p50", r.spread_ms().p50, 200.0, &r);
    assert_eq!(qdisc_drops(&a), 0, "the qdisc dropped packets");
    if backend() == Backend::Netfault {
        let c = counters(&nf, &a, RULE);
        assert_eq!(c.queue_dropped, 0, "{c:?}");
        assert_eq!(
            (c.matched, c.delayed, c.dropped),
            (u64::from(N), u64::from(N), 0),
            "{c:?}"
        );
    }
}

/// Test 6: Ingress delay on the receiver's interface (through the IFB) works as egress does.
/// IPv6, so that family crosses a delaying rule too. (A fixed delay: no confidence level
/// applies.)
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn ingress_delay_on_receiver() {
    let (mut lab, nf, [a, b]) = shaping_pair();
    let base = baseline(&a, &b, true);
    impair(
        &mut lab,
        &nf,
        &b,
        &Impairment {
            dir: "ingress",
            matcher: &["--proto", "udp", "--dport", &PROBE_PORT.to_string()],
            netfault: &["--delay", "50ms"],
            netem: &["delay", "50ms"],
        },
    );
    let r = probe_all(&a, &b, true, &UdpProbe::new(500, 1000), "ingress delay");
    assert_close("ingress p50 shift", r.spread_ms().p50 - base.p50, 50.0, &r);
    if backend() == Backend::Netfault {
        let c = counters(&nf, &b, RULE);
        assert_eq!((c.matched, c.delayed), (500, 500), "{c:?}");
    }
}

/// Test 7: A root qdisc netfault did not install is not replaced behind the operator's back: a
/// delaying rule is refused (exit 1, naming the qdisc) and the qdisc stays; `--replace-qdisc`
/// replaces it; `detach` leaves the kernel's default root qdisc.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn foreign_root_qdisc_is_kept_unless_replaced() {
    if netem_skips("netfault's qdisc policy") {
        return;
    }
    let (mut lab, nf, [a, _b]) = shaping_pair();
    let default = root_qdisc(&a);
    assert_eq!(default.1, "0:", "a fresh veth has the default root qdisc");
    tc(
        &a,
        &[
            "qdisc", "add", "dev", &a.iface, "root", "handle", "1:", "htb",
        ],
    );
    attach(&mut lab, &nf, &a);
    let port = PROBE_PORT.to_string();
    let rule = [
        "rule", "add", RULE, "--dir", "egress", "--proto", "udp", "--dport", &port, "--delay",
        "50ms",
    ];
    let out = nf.output(&a.ns, &rule).expect("run netfault");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a delay over a foreign root qdisc must be refused with exit 1; stderr: {stderr}"
    );
    assert!(
        stderr.contains("htb"),
        "the refusal must name the qdisc: {stderr}"
    );
    assert_eq!(
        root_qdisc(&a),
        ("htb".to_owned(), "1:".to_owned()),
        "the refused rule must leave the qdisc in place"
    );
    let rules = nf.stats(&a.ns).expect("stats");
    assert!(
        rules.iter().all(|r| r.name != RULE),
        "the refused rule must not exist: {rules:?}"
    );

    let mut replace = rule.to_vec();
    replace.push("--replace-qdisc");
    run(&nf, &a, &replace);
    assert_eq!(root_qdisc(&a).0, "fq", "--replace-qdisc installs fq");

    run(&nf, &a, &["detach"]);
    assert_eq!(
        root_qdisc(&a),
        default,
        "after detach the root qdisc is the kernel's default again"
    );
}

/// The probe behind ingress shaping: does bpf_redirect from tc ingress reach an IFB device on
/// this kernel (6.4+, or a kernel with "bpf: Set skb redirect and from_ingress info in
/// __bpf_tx_skb")? Printed for the report, and checked against the kernel's version: a stable
/// kernel carrying the fix would answer yes below 6.4 and is reported rather than failed.
#[test]
#[ignore = "run by cargo xtask vm-test (needs only IFB: also runs on the host with --ignored)"]
fn ifb_redirect_probe_answers() {
    let t = std::time::Instant::now();
    let works = netfault::control::shaping::probe::bpf_redirect_to_ifb_works().expect("probe");
    let by_version = netfault::control::shaping::probe::redirect_works_by_version();
    eprintln!(
        "ifb probe: bpf_redirect to IFB works: {works} (by version: {by_version}), {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    if by_version {
        assert!(
            works,
            "6.4+ has the fix, yet the probe says IFB drops redirects"
        );
    } else if works {
        eprintln!("ifb probe: this pre-6.4 kernel carries the fix (backported)");
    }
}

/// `cluster impair --delay 20ms --verify` (issue #16 point 4) on three namespaces: the
/// coordinator probes every pair before the change (the baseline) and after it, and each round
/// trip the impairment crosses (n1 -> n2 and back, both ways, both families) shows its p50
/// shifted by the delay within the tolerance (1 ms + 10 % on a quiet guest, plus the round
/// trips' own scatter). Then the sender's IPv4 entry is deleted behind the coordinator's back:
/// `cluster verify --baseline` (a `cluster measure --json` taken before) names exactly the two
/// IPv4 round trips and exits 3. A guest starved by its host scatters its round trips by tens
/// of ms: verify then says the delay cannot be told (never that it is right or wrong), and this
/// test checks that it said so only with that much scatter.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn cluster_verify_sees_a_delay_as_its_p50_shift() {
    if netem_skips("cluster verify (netfault's coordinator)") {
        return;
    }
    let limit = Duration::from_secs(240);
    let (mut lab, nf, hosts) = star(3);
    detach_on_teardown(&mut lab, &nf, &hosts);
    let file = temp_file("toml", &netfault_lab::cluster::netns_cluster_text(&hosts));
    let base = run_cluster_ok(
        None,
        &file.0,
        &[
            "measure",
            "--duration",
            "3s",
            "--interval",
            "20ms",
            "--json",
        ],
        limit,
    );
    let base_file = temp_file("json", &base);
    let out = run_cluster(
        None,
        &file.0,
        &[
            "impair", "--from", "n1", "--to", "n2", "--delay", "20ms", "--name", "slow", "--ttl",
            "5m", "--json", "--verify",
        ],
        limit,
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stderr));
    });
    assert_eq!(out.status.code(), Some(0), "{doc:#}");
    let f = &doc["verify"]["faults"][0];
    assert_eq!(f["pairs"].as_array().unwrap().len(), 4, "{f:#}");
    // Each pair's delay verdict: Some(ok), or None with the scatter that hid it.
    let delay = |p: &Value| -> Option<bool> {
        let d = &p["delay"];
        let (shift, tol, scatter) = (
            d["p50_shift_ms"].as_f64().unwrap(),
            d["tolerance_ms"].as_f64().unwrap(),
            d["scatter_ms"].as_f64().unwrap(),
        );
        eprintln!(
            "{} -> {} {}: p50 shift {shift:.2} ms ± {tol:.2} (scatter {scatter:.2}; p90 {:.2}, p99 {:.2}): {}",
            p["from"], p["to"], p["family"], d["p90_shift_ms"], d["p99_shift_ms"], d["ok"]
        );
        assert_eq!(d["configured_ms"].as_f64(), Some(20.0), "{p}");
        let ok = d["ok"].as_bool();
        match ok {
            None => assert!(
                tol >= 20.0,
                "not verifiable only when the scatter hides 20 ms: {p}"
            ),
            Some(true) => assert!((shift - 20.0).abs() <= tol, "{p}"),
            Some(false) => assert!((shift - 20.0).abs() > tol, "{p}"),
        }
        ok
    };
    for p in f["pairs"].as_array().unwrap() {
        assert_ne!(delay(p), Some(false), "the delay is on: {p}");
    }
    nf.run(&hosts[0].ns, &["rule", "del", "slow.to-n2.v4"])
        .expect("delete the sender's v4 entry");
    let out = run_cluster(
        None,
        &file.0,
        &["verify", "slow", "--json", "--baseline", base_file.arg()],
        limit,
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut mismatched = 0;
    for p in doc["faults"][0]["pairs"].as_array().unwrap() {
        let v4 = p["family"] == "v4";
        match delay(p) {
            Some(true) => assert!(!v4, "a deleted delay verified as on: {p}"),
            Some(false) => {
                assert!(v4, "a delay still on found off: {p}");
                mismatched += 1;
            }
            None => {}
        }
    }
    let code = if mismatched > 0 { 3 } else { 0 };
    assert_eq!(out.status.code(), Some(code), "{doc:#}");
    run_cluster_ok(None, &file.0, &["heal", "slow"], limit);
}

/// `hold_until_mono_ns` of rule `RULE` on `h`, from `rule list --json`: the end of its hold on
/// CLOCK_MONOTONIC, the clock the probe's send and receive times are on.
fn hold_until(nf: &Netfault, h: &Host) -> i64 {
    let out = run(nf, h, &["rule", "list", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let r = v["rules"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["name"] == RULE))
        .unwrap_or_else(|| panic!("no rule {RULE}: {out}"));
    let t = r["hold_until_mono_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("no hold_until_mono_ns: {out}"));
    i64::try_from(t).expect("a monotonic time fits i64")
}

/// Issue 15, point 5: `--hold 2s`. Every datagram sent during the hold (4 flows, 100 per
/// second) arrives within 20 ms after its end, none lost, each flow in order; every datagram
/// sent after it goes through undelayed. Deterministic (a departure time, no draw): no
/// confidence level applies.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn hold_releases_everything_at_its_end_in_order() {
    const WINDOW_MS: f64 = 20.0;
    if netem_skips("--hold (netem has no hold)") {
        return;
    }
    let (mut lab, nf, [a, b]) = shaping_pair();
    attach(&mut lab, &nf, &a);
    let port = PROBE_PORT.to_string();
    run(
        &nf,
        &a,
        &[
            "rule", "add", RULE, "--dir", "egress", "--proto", "udp", "--dport", &port, "--hold",
            "2s",
        ],
    );
    let end = hold_until(&nf, &a);
    // 3 s of sending: up to 2 s inside the hold, the rest after it.
    let p = UdpProbe::new(300, 100)
        .flows(4)
        .max_delay(Duration::from_secs(3));
    let r = probe_all(&a, &b, false, &p, "hold 2s");
    assert_eq!(
        r.reordered_total(),
        0,
        "a flow's held datagrams leave in order; {r}"
    );
    let (mut before, mut after) = (Vec::new(), Vec::new());
    for s in &r.samples {
        let arrival = s.sent_ns + s.delay_ns;
        if s.sent_ns < end {
            before.push((arrival - end) as f64 / MS);
        } else {
            after.push(s.delay_ns as f64 / MS);
        }
    }
    let (held, free) = (Spread::of(&before), Spread::of(&after));
    eprintln!(
        "hold: {} sent during it, arrived after its end (ms): {held}",
        before.len()
    );
    eprintln!("hold: {} sent after it, delay (ms): {free}", after.len());
    // The probe starts when the rule is in place and read back, which takes up to half a
    // second of the hold under TCG (149 of 300 sent during it in one CI run): enough on each
    // side is what the test needs, not a fixed share.
    assert!(
        before.len() >= 50 && after.len() >= 50,
        "the probe must straddle the hold's end: {} before, {} after; {r}",
        before.len(),
        after.len()
    );
    // -0.1 ms: the receive stamps are converted from CLOCK_REALTIME, with an offset measured
    // to a few µs (probe::realtime_offset_ns); fq releases nothing before its time.
    assert!(
        held.min >= -0.1 && held.max <= WINDOW_MS,
        "every datagram sent during the hold arrives within {WINDOW_MS} ms after its end: \
         {held}; {r}"
    );
    // Nothing sent after the hold is held: its delay is the guest's own (0.1-0.2 ms at the
    // median, test 1), far below what any hold adds.
    assert!(
        free.max < 10.0 && free.p50 < 2.0,
        "datagrams sent after the hold are not delayed: {free}; {r}"
    );
    let c = counters(&nf, &a, RULE);
    // A datagram is held when the program sees it before the end: after its send time, so
    // never one sent after the end, and all but those sent in the last instant before it.
    let late = r
        .samples
        .iter()
        .filter(|s| {
            s.sent_ns < end && s.sent_ns >= end - 5_000_000 - r.max_send_lag.as_nanos() as i64
        })
        .count() as u64;
    let sent_before = before.len() as u64;
    assert!(
        c.held <= sent_before && c.held + late >= sent_before,
        "held {} of {sent_before} sent during the hold ({late} in its last instant); {c:?}",
        c.held
    );
    assert_eq!(
        (c.matched, c.delayed, c.dropped, c.queue_dropped),
        (300, c.held, 0, 0),
        "{c:?}"
    );
    assert_eq!(qdisc_drops(&a), 0, "the queue dropped held packets");
}

/// Issue 15, point 6: `--duplicate 100% --duplicate-delay 100ms`: each copy arrives 100 ms after
/// its original, within 5 ms at p99 (200 datagrams, 1,000 a second); the originals are not
/// delayed.
/// Deterministic (departure times, p = 1): no confidence level applies.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn late_duplicates_arrive_their_delay_after_the_original() {
    const N: u32 = 200;
    const D_MS: f64 = 100.0;
    if netem_skips("--duplicate-delay (netem's duplicate is back to back)") {
        return;
    }
    let (mut lab, nf, [a, b]) = shaping_pair();
    attach(&mut lab, &nf, &a);
    let port = PROBE_PORT.to_string();
    run(
        &nf,
        &a,
        &[
            "rule",
            "add",
            RULE,
            "--dir",
            "egress",
            "--proto",
            "udp",
            "--dport",
            &port,
            "--duplicate",
            "100%",
            "--duplicate-delay",
            "100ms",
        ],
    );
    // 1,000 a second, as the delay tests: a guest idle for milliseconds between packets wakes
    // for a timer late under TCG (seen: copies 8-12 ms late at 100 a second).
    let p = UdpProbe::new(N, 1000).copies(2);
    let r = p
        .run(&a.ns, &b.ns, probe_dst(&b, false))
        .expect("late duplicate probe");
    eprintln!("late duplicates: {r}");
    assert_eq!(
        (r.lost(), r.duplicates, r.stray, r.rcvbuf_errors),
        (0, u64::from(N), 0, 0),
        "every datagram and its copy arrive; {r}"
    );
    let first: std::collections::HashMap<(u16, u32), i64> = r
        .samples
        .iter()
        .map(|s| ((s.flow, s.seq), s.delay_ns))
        .collect();
    // How much later than its original each copy arrived, less the configured delay.
    let off: Vec<f64> = r
        .duplicate_samples
        .iter()
        .map(|c| (c.delay_ns - first[&(c.flow, c.seq)]) as f64 / MS - D_MS)
        .collect();
    let abs: Vec<f64> = off.iter().map(|x| x.abs()).collect();
    let spread = Spread::of(&off);
    let p99 = probe::percentiles(&abs, &[0.99])[0];
    eprintln!("late duplicates: copy - original - {D_MS} ms: {spread}; |.| p99 {p99:.3} ms");
    let mut worst: Vec<(f64, &probe::Sample)> =
        off.iter().copied().zip(&r.duplicate_samples).collect();
    worst.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
    for (o, c) in worst.iter().take(5) {
        eprintln!(
            "late duplicates: seq {} off by {o:.3} ms (copy delay {:.3} ms)",
            c.seq,
            c.delay_ns as f64 / MS
        );
    }
    assert!(
        p99 <= 5.0,
        "a copy arrives {D_MS} ms after its original within 5 ms at p99: |error| p99 \
         {p99:.3} ms; {spread}; {r}"
    );
    let orig = r.spread_ms();
    assert!(orig.p50 < 2.0, "the originals are not delayed: {orig}; {r}");
    let c = counters(&nf, &a, RULE);
    assert_eq!(
        (c.matched, c.duplicated, c.dup_delayed, c.delayed),
        (u64::from(N), u64::from(N), u64::from(N), 0),
        "{c:?}"
    );
}

/// Passive `measure` (TCP timestamps, in the data path) sees a 20 ms egress delay configured
/// by netfault as the shift of its p50, within 1 ms: the egress program stamps a segment at tc,
/// before fq holds it, so the delay is inside the round trip it measures. Baseline first (the
/// same flow, no rule), then with the rule; each run's p50 from about a second of exchanges.
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn passive_measure_sees_a_delay_as_its_p50_shift() {
    use common::passive::{Measuring, entry, p50, ping_pong};
    if netem_skips("passive measurement of a netfault delay") {
        return;
    }
    let (mut lab, nf, [a, b]) = shaping_pair();
    let echo = TcpEcho::with_idle(&b.ns, b.sock(false, 5003), Duration::from_secs(30)).unwrap();
    let peer = b.v4.to_string();
    let passive_p50 = |what: &str| {
        let m = Measuring::start(
            &nf,
            &a.ns,
            &["--iface", &a.iface, "--peer", &peer, "--duration", "3s"],
        );
        let (_s, n) = ping_pong(&a, echo.addr, Duration::from_millis(1500));
        let peers = m.finish();
        let r = entry(&peers, b.v4.into(), "tcp-ts");
        eprintln!("{what}: {n} exchanges, {r}");
        assert!(r["samples"].as_u64().unwrap() >= 20, "{what}: {r}");
        p50(r) / 1e3
    };
    let base = passive_p50("baseline");
    impair(
        &mut lab,
        &nf,
        &a,
        &Impairment {
            dir: "egress",
            matcher: &["--proto", "tcp", "--dport", "5003"],
            netfault: &["--delay", "20ms"],
            netem: &["delay", "20ms"],
        },
    );
    let delayed = passive_p50("delayed");
    let shift = delayed - base;
    assert!(
        (shift - 20.0).abs() <= 1.0,
        "passive p50 shift {shift:.3} ms (baseline {base:.3} ms, delayed {delayed:.3} ms), \
         expected 20 ms within 1 ms"
    );
}

/// `netfault measure --probe` from `a` to `b`'s IPv4 address, 500 ICMP probes 10 ms apart:
/// the peer's report.
fn measured(nf: &Netfault, a: &Host, b: &Host, what: &str) -> Value {
    let out = run(
        nf,
        a,
        &[
            "measure",
            "--peer",
            &b.v4.to_string(),
            "--probe",
            "--interval",
            "10ms",
            "--duration",
            "5s",
            "--json",
        ],
    );
    let doc: Value = serde_json::from_str(&out).unwrap();
    let p = doc["peers"][0].clone();
    eprintln!("{what}: {} samples, rtt_us {}", p["samples"], p["rtt_us"]);
    assert_eq!(p["samples"], 500, "{what}: every probe answered: {p}");
    p
}

/// Issue #16's measurement under netfault's delay: with 20 ms on our egress (the echo
/// requests), `measure`'s p50 shifts by 20 ms within 1 ms; with 50 ms ± 10 ms of normal jitter
/// and `--reorder` (per-packet draws: without it a flow's departures never go backwards, which
/// at 10 ms between probes against a 10 ms sigma would move the distribution up, see README
/// "Delay, jitter and rate"), the round trips less the baseline's median pass a one-sample
/// Kolmogorov-Smirnov test against N(50 ms, 10 ms) at alpha 1e-4.
///
/// The report gives the histogram, not the samples: the empirical CDF is exact at each
/// bucket's edges (the share of round trips below them), so D is taken over the edges. That D is
/// at most the samples' own, so the test rejects a right data path at most as often as alpha
/// says (it only loses some power, the buckets being 1/128 of their value wide: 0.4 ms here).
#[test]
#[ignore = "needs sch_fq: run by cargo xtask vm-test"]
fn measure_sees_a_delay_as_its_p50_shift_and_jitter_as_its_distribution() {
    use statrs::distribution::{ContinuousCDF, Normal};
    if netem_skips("netfault measure under netfault's own rules") {
        return;
    }
    const ALPHA: f64 = 1e-4;
    let (mut lab, nf, [a, b]) = shaping_pair();
    attach(&mut lab, &nf, &a);
    let base = measured(&nf, &a, &b, "baseline");
    let base_p50 = base["rtt_us"]["p50"].as_f64().unwrap();

    // ICMP to b's IPv4 address only: the probes, not a's ICMPv6 neighbour discovery.
    let dst = b.v4.to_string();
    let rule = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "rule", "add", name, "--dir", "egress", "--proto", "icmp", "--dst", &dst,
        ];
        args.extend_from_slice(extra);
        run(&nf, &a, &args);
    };
    rule("d20", &["--delay", "20ms"]);
    let p = measured(&nf, &a, &b, "20 ms");
    let shift_ms = (p["rtt_us"]["p50"].as_f64().unwrap() - base_p50) / 1e3;
    assert!(
        (shift_ms - 20.0).abs() <= 1.0,
        "p50 shift {shift_ms:.3} ms, configured 20 ms ± 1 ms: {p}"
    );
    assert_eq!(counters(&nf, &a, "d20").delayed, 500);
    run(&nf, &a, &["rule", "del", "d20"]);

    rule(
        "j50",
        &[
            "--delay",
            "50ms",
            "--jitter",
            "10ms",
            "--distribution",
            "normal",
            "--reorder",
        ],
    );
    let p = measured(&nf, &a, &b, "50 ms ± 10 ms");
    let n = p["samples"].as_u64().unwrap();
    let normal = Normal::new(50.0, 10.0).unwrap();
    let (mut below, mut d) = (0u64, 0.0f64);
    let mut worst = 0.0;
    for bucket in p["histogram"].as_array().unwrap() {
        let (upper_us, count) = (bucket[0].as_f64().unwrap(), bucket[1].as_u64().unwrap());
        // The bucket's lower edge (the first value of its bucket) and its upper edge, where
        // the shares below are exact.
        let b = netfault_common::rtt_bucket(upper_us as u64 - 1);
        let lower_us = if b == 0 {
            0.0
        } else {
            netfault_common::rtt_bucket_upper(b - 1) as f64
        };
        for (edge_us, share) in [(lower_us, below), (upper_us, below + count)] {
            let x_ms = (edge_us - base_p50) / 1e3;
            let gap = (share as f64 / n as f64 - normal.cdf(x_ms)).abs();
            if gap > d {
                (d, worst) = (gap, x_ms);
            }
        }
        below += count;
    }
    assert_eq!(below, n);
    let crit = ks::critical_value(n as usize, ALPHA);
    assert!(
        d <= crit,
        "KS over the bucket edges: D = {d:.4} at {worst:.3} ms > {crit:.4} (p = {:.2e}): {p}",
        ks::p_value(d, n as usize)
    );
    assert_eq!(counters(&nf, &a, "j50").delayed, 500);
}
