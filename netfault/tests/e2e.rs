//! End to end: the real `netfault` binary (`--netns`) against real traffic between network
//! namespaces. Needs root.
//!
//! Every test builds a lab of its own (namespace names carry the pid and a counter), so the
//! tests run in parallel. The lab is the cleanup guard: on drop, passed or panicked, it runs
//! `netfault --netns NS detach` for every attached namespace, then deletes its namespaces.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::lab::{self, Z_ALPHA_1E4, wilson_interval};

/// 30 % loss on 20 000 datagrams: statistically right, and counted packet for packet.
#[test]
fn loss_matches_probability_and_counters_match_receiver() {
    const N: u32 = 20_000;
    const P: f64 = 0.3;
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    // On the receiver, ingress: XDP drops. UDP to one port only, so the rule sees exactly the
    // burst (no neighbour discovery, no other flow).
    run(
        &nf,
        &b,
        &[
            "rule", "add", "loss", "--dir", "ingress", "--proto", "udp", "--dport", "4000",
            "--drop", "30%",
        ],
    );
    let r = UdpBurst::new(N)
        .rate(40_000)
        .run(&a.ns, &b.ns, b.sock(false, UDP_PORT))
        .expect("burst");
    let c = counters(&nf, &b, "loss");
    assert_eq!(
        r.rcvbuf_errors, 0,
        "the sink's socket overflowed: counts below are not comparable"
    );
    assert_eq!((r.sent, r.duplicates(), r.stray), (N, 0, 0), "{r}");

    // Packet for packet: every datagram sent was matched once, and the receiver saw exactly
    // the ones netfault passed.
    assert_eq!(c.matched, u64::from(N), "matched != sent; {r}; {c:?}");
    assert_eq!(c.passed, r.received(), "passed != received; {r}; {c:?}");
    assert_eq!(
        c.dropped,
        u64::from(N) - r.received(),
        "dropped != sent - received; {r}; {c:?}"
    );
    assert_eq!(c.duplicated, 0);

    // The observed loss fraction must be consistent with p = 0.3: 0.3 lies inside the Wilson
    // score interval of the observation at alpha = 1e-4 (z = 3.8906), i.e. with 99.99 %
    // confidence. A correct data path fails this about once in 10 000 runs.
    let (lo, hi) = wilson_interval(r.lost(), u64::from(N), Z_ALPHA_1E4);
    let observed = r.lost() as f64 / f64::from(N);
    assert!(
        lo <= P && P <= hi,
        "observed loss {observed:.4}: 99.99 % Wilson interval [{lo:.4}, {hi:.4}] excludes {P}"
    );
}

/// Asserts a 100 % duplicate rule doubled every datagram, and counted it so.
fn assert_doubled(r: &UdpReport, c: &lab::Counters, bursts: u64) {
    assert_eq!(r.rcvbuf_errors, 0, "the sink's socket overflowed");
    assert!(
        r.every_seq_exactly(2),
        "expected every datagram exactly twice; {r}"
    );
    let sent = u64::from(r.sent) * bursts;
    // p = 0 (no --drop) never fires; p = 1 always does.
    assert_eq!(
        (c.matched, c.passed, c.duplicated, c.dropped),
        (sent, sent, sent, 0),
        "{c:?}"
    );
}

#[test]
fn duplicate_on_sender_egress_doubles_every_datagram() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &a);
    run(
        &nf,
        &a,
        &[
            "rule",
            "add",
            "dup",
            "--dir",
            "egress",
            "--proto",
            "udp",
            "--dport",
            "4000",
            "--duplicate",
            "100%",
        ],
    );
    for (i, v6) in [false, true].into_iter().enumerate() {
        let r = udp(&a, &b, v6, 2000);
        assert_doubled(&r, &counters(&nf, &a, "dup"), i as u64 + 1);
    }
}

#[test]
fn duplicate_on_receiver_ingress_doubles_every_datagram() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    run(
        &nf,
        &b,
        &[
            "rule",
            "add",
            "dup",
            "--dir",
            "ingress",
            "--proto",
            "udp",
            "--dport",
            "4000",
            "--duplicate",
            "100%",
        ],
    );
    for (i, v6) in [false, true].into_iter().enumerate() {
        let r = udp(&a, &b, v6, 2000);
        assert_doubled(&r, &counters(&nf, &b, "dup"), i as u64 + 1);
    }
}

/// Every kind of traffic between `x` and `y`, both ways: UDP and ICMP in both families, TCP
/// to echo servers on both. Returns what worked, keyed by a readable name.
fn probe_all(x: &Host, y: &Host, port: u16, timeout: Duration) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for (from, to) in [(x, y), (y, x)] {
        for v6 in [false, true] {
            let dir = format!("{} -> {}", from.ns, to.ip(v6));
            let r = udp(from, to, v6, 200);
            out.insert(format!("udp {dir}"), r.received() > 0);
            out.insert(format!("icmp {dir}"), ping_received(from, to, v6, 2) > 0);
            out.insert(
                format!("tcp {dir}"),
                tcp(from, to.sock(v6, port), timeout).ok(),
            );
        }
    }
    out
}

fn assert_all(results: &BTreeMap<String, bool>, want: bool, when: &str) {
    let wrong: Vec<_> = results
        .iter()
        .filter(|(_, ok)| **ok != want)
        .map(|(k, _)| k)
        .collect();
    assert!(
        wrong.is_empty(),
        "{when}: expected every probe to {}: {wrong:?}",
        if want { "work" } else { "fail" }
    );
}

/// Echo servers on both families of a host.
fn echo_servers(h: &Host, port: u16) -> [TcpEcho; 2] {
    [false, true].map(|v6| TcpEcho::start(&h.ns, h.sock(v6, port)).expect("echo server"))
}

#[test]
fn partition_cuts_both_ways_and_heal_restores() {
    const PORT: u16 = 5000;
    let (mut lab, nf, [a, b]) = pair();
    let _servers = [echo_servers(&a, PORT), echo_servers(&b, PORT)];
    assert_all(
        &probe_all(&a, &b, PORT, TCP_OK),
        true,
        "before the partition",
    );

    // One side is enough: b drops a's packets on ingress and its own to a on egress.
    attach(&mut lab, &nf, &b);
    run(&nf, &b, &["partition", &a.set(), &b.set(), "--name", "cut"]);
    assert_all(&probe_all(&a, &b, PORT, TCP_BLOCKED), false, "partitioned");
    let c = counters(&nf, &b, "cut");
    // p = 1: every matched packet dropped (at least the 4 x 200 datagrams of the probes).
    assert!(
        c.matched >= 800 && c.dropped == c.matched && c.passed == 0,
        "{c:?}"
    );

    run(&nf, &b, &["heal", "cut"]);
    // Neighbour entries may have failed during the cut: a ping re-resolves them first.
    warm(&a, &b);
    assert_all(&probe_all(&a, &b, PORT, TCP_OK), true, "healed");
    let left = nf.rule_names(&b.ns).expect("rule list");
    assert!(left.is_empty(), "heal left rules behind: {left:?}");
}

#[test]
fn oneway_partition_cuts_one_direction_only() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    run(
        &nf,
        &b,
        &[
            "partition",
            &a.set(),
            &b.set(),
            "--name",
            "oneway",
            "--oneway",
        ],
    );

    let cut = udp(&a, &b, false, 500);
    let open = udp(&b, &a, false, 500);
    assert_eq!(cut.received(), 0, "a -> b must be cut; {cut}");
    assert!(open.every_seq_exactly(1), "b -> a must flow; {open}");
    assert_udp_cut(&a, &b, true);
    // p = 1, exactly: the v4 burst a -> b was matched and dropped datagram for datagram (the v6
    // one adds its own 200); b -> a was never matched.
    let c = counters(&nf, &b, "oneway");
    assert_eq!((c.matched, c.dropped, c.passed), (700, 700, 0), "{c:?}");

    run(&nf, &b, &["heal", "oneway"]);
    assert_udp_flows(&a, &b, false);
}

#[test]
fn bridge_partition_on_every_host_isolates_one_host() {
    let (mut lab, nf, hosts) = star(3);
    let [a, b, c] = [&hosts[0], &hosts[1], &hosts[2]];
    let others = format!("{},{}", b.set(), c.set());
    for h in [a, b, c] {
        attach(&mut lab, &nf, h);
        run(&nf, h, &["partition", &a.set(), &others, "--name", "iso"]);
    }
    for v6 in [false, true] {
        for (x, y) in [(a, b), (a, c)] {
            assert_udp_cut(x, y, v6);
            assert_udp_cut(y, x, v6);
            assert_eq!(
                ping_received(x, y, v6, 2),
                0,
                "{} -> {} must be cut",
                x.ns,
                y.ip(v6)
            );
        }
        // The cut is clean: the other side still talks among itself.
        assert_udp_flows(b, c, v6);
        assert_udp_flows(c, b, v6);
        assert_eq!(ping_received(b, c, v6, 5), 5, "b <-> c must still work");
    }
    for h in [a, b, c] {
        let k = counters(&nf, h, "iso");
        assert!(
            k.matched > 0 && k.passed == 0 && k.dropped == k.matched,
            "{}: {k:?}",
            h.ns
        );
        run(&nf, h, &["heal"]);
    }
    warm(a, b);
    warm(a, c);
    for v6 in [false, true] {
        assert_udp_flows(a, b, v6);
        assert_udp_flows(c, a, v6);
    }
}

/// A rule on one family never touches the other: `(drop_net, v6)` is a 100 % drop on
/// `drop_net`, whose family is v6 or not.
fn assert_family_isolated(drop_net: &str, v6: bool) {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    run(
        &nf,
        &b,
        &[
            "rule", "add", "fam", "--dir", "ingress", "--dst", drop_net, "--drop", "100%",
        ],
    );

    let other = udp(&a, &b, !v6, 500);
    assert!(
        other.every_seq_exactly(1),
        "the other family must flow untouched; {other}"
    );
    assert_eq!(
        counters(&nf, &b, "fam"),
        lab::Counters::default(),
        "the rule matched the other family"
    );

    let same = udp(&a, &b, v6, 500);
    assert_eq!(
        same.received(),
        0,
        "the rule's family must be dropped; {same}"
    );
    let c = counters(&nf, &b, "fam");
    assert!(
        c.matched >= 500 && c.dropped == c.matched && c.passed == 0,
        "{c:?}"
    );
}

#[test]
fn v6_rule_leaves_v4_untouched() {
    assert_family_isolated("2001:db8::/32", true);
}

#[test]
fn v4_rule_leaves_v6_untouched() {
    assert_family_isolated("192.0.2.0/24", false);
}

#[test]
fn tcp_dport_rule_blocks_that_port_only() {
    const BLOCKED: u16 = 5001;
    const OPEN: u16 = 5002;
    let (mut lab, nf, [a, b]) = pair();
    let _servers = [echo_servers(&b, BLOCKED), echo_servers(&b, OPEN)];
    for v6 in [false, true] {
        assert!(
            tcp(&a, b.sock(v6, BLOCKED), TCP_OK).ok(),
            "port {BLOCKED} before the rule"
        );
    }
    attach(&mut lab, &nf, &b);
    run(
        &nf,
        &b,
        &[
            "rule",
            "add",
            "tcp",
            "--proto",
            "tcp",
            "--dport",
            &BLOCKED.to_string(),
            "--drop",
            "100%",
        ],
    );
    for v6 in [false, true] {
        assert_eq!(
            tcp(&a, b.sock(v6, BLOCKED), TCP_BLOCKED),
            TcpOutcome::TimedOut,
            "port {BLOCKED}, v6 {v6}"
        );
        let open = tcp(&a, b.sock(v6, OPEN), TCP_OK);
        assert!(open.ok(), "port {OPEN}, v6 {v6}: {open:?}");
    }
    let c = counters(&nf, &b, "tcp");
    assert!(
        c.matched >= 2 && c.dropped == c.matched,
        "at least one SYN per family dropped: {c:?}"
    );
}

/// `prog/xdp id N` in `ip link show`, if any.
fn xdp_prog_id(ns: &str, iface: &str) -> Option<u32> {
    let out = lab::exec_in(ns, "ip", &["link", "show", "dev", iface]).expect("ip link");
    let words: Vec<&str> = out.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "prog/xdp")?;
    words.get(i + 2)?.parse().ok()
}

/// Our program ids, as `netfault status --json` reports them.
fn status_prog_ids(nf: &Netfault, h: &Host) -> Vec<u64> {
    let v: serde_json::Value =
        serde_json::from_str(&run(nf, h, &["status", "--json"])).expect("status json");
    let mut ids: Vec<u64> = v["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["hooks"].as_array().into_iter().flatten())
        .filter_map(|h| h["prog_id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids
}

/// (link id, program id) of every bpf_link running one of `progs`. The link table is global
/// (bpftool 7.1 cannot name tcx links' devices), so only links of our own programs count:
/// other tests' programs have other ids.
fn links_of(progs: &[u64]) -> Vec<(u64, u64)> {
    let out = bpftool(&["-j", "link", "show"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    let mut links: Vec<(u64, u64)> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| Some((l["id"].as_u64()?, l["prog_id"].as_u64()?)))
        .filter(|(_, p)| progs.contains(p))
        .collect();
    links.sort_unstable();
    links
}

fn bpftool(args: &[&str]) -> String {
    let out = std::process::Command::new("bpftool")
        .args(args)
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kernel frees programs after an RCU grace period: wait briefly for each to go.
fn prog_gone(id: u64) -> bool {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let gone = !std::process::Command::new("bpftool")
            .args(["prog", "show", "id", &id.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("bpftool")
            .success();
        if gone || Instant::now() >= end {
            return gone;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn attach_twice_is_a_noop_and_detach_leaves_nothing() {
    let (mut lab, nf, [a, b]) = pair();
    let qdiscs_before = lab::exec_in(&b.ns, "tc", &["qdisc", "show"]).expect("tc");

    // (The lab's teardown detaches again at the end: a harmless no-op when this test passed.)
    let first = nf.attach(&mut lab, &b.ns, &b.iface).expect("attach");
    // A veth with no drop rule: tc ingress and egress only (tests/hooks.rs has XDP coming and
    // going with the rules that need it).
    assert_eq!(
        xdp_prog_id(&b.ns, &b.iface),
        None,
        "XDP with no rule ({first})"
    );
    let progs = status_prog_ids(&nf, &b);
    let links = links_of(&progs);
    // tcx attaches through bpf_links; clsact filters (kernels before 6.6) have none.
    let clsact = nf
        .status(&b.ns)
        .expect("status")
        .iter()
        .flat_map(|i| &i.hooks)
        .any(|h| h.kind == "clsact");
    let want_links = if clsact { 0 } else { 2 };
    assert_eq!(
        (progs.len(), links.len()),
        (2, want_links),
        "tc ingress, tc egress: {progs:?} {links:?} ({first})"
    );

    let second = run(&nf, &b, &["attach", &b.iface]);
    assert!(second.contains("already attached"), "{second}");
    assert_eq!(xdp_prog_id(&b.ns, &b.iface), None, "XDP added");
    assert_eq!(status_prog_ids(&nf, &b), progs, "programs changed");
    assert_eq!(links_of(&progs), links, "links changed or added");

    // A drop rule brings XDP, through a link of its own.
    run(
        &nf,
        &b,
        &["rule", "add", "block", "--proto", "udp", "--drop", "100%"],
    );
    let xdp = xdp_prog_id(&b.ns, &b.iface).expect("XDP for the drop rule");
    let progs = status_prog_ids(&nf, &b);
    assert!(
        progs.contains(&u64::from(xdp)),
        "status {progs:?} does not name the XDP program {xdp}"
    );
    assert_eq!(links_of(&progs).len(), want_links + 1, "{progs:?}");
    assert_udp_cut(&a, &b, false);
    let out = run(&nf, &b, &["detach"]);
    assert!(out.contains("detached"), "{out}");

    for d in netfault_dirs(&b.ns) {
        assert!(!d.exists(), "{} left behind", d.display());
    }
    assert_eq!(xdp_prog_id(&b.ns, &b.iface), None, "XDP still attached");
    assert_eq!(links_of(&progs), vec![], "links still exist");
    assert_eq!(
        lab::exec_in(&b.ns, "tc", &["qdisc", "show"]).expect("tc"),
        qdiscs_before
    );
    for id in progs {
        assert!(prog_gone(id), "program {id} still loaded after detach");
    }
    // And the drop rule went with it.
    assert_udp_flows(&a, &b, false);
}
