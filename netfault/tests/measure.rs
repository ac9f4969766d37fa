//! `netfault measure --probe` on a veth pair: every probe of each family is answered and
//! counted; under a netfault drop rule on the peer's ingress, the probes lost are exactly the
//! rule's drops, and their rate lies in its Wilson interval; bad input exits 2.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use common::*;

/// `measure --json` from `from` to `peers`: the `peers` array.
fn measure(nf: &Netfault, from: &Host, peers: &str, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec![
        "measure",
        "--peer",
        peers,
        "--probe",
        "--interval",
        "10ms",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = run(nf, from, &args);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["peers"].as_array().unwrap().clone()
}

#[test]
fn probes_are_answered_and_losses_are_the_rules_drops() {
    let (mut lab, nf, [a, b]) = pair();
    let peers = format!("{},{}", b.v4, b.v6);
    // 1.5 s every 10 ms: 150 probes per peer, all answered on a clean link.
    let got = measure(&nf, &a, &peers, &["--duration", "1500ms"]);
    assert_eq!(got.len(), 2, "{got:?}");
    for p in &got {
        assert_eq!(p["source"], "probe");
        assert_eq!(p["samples"], 150, "{p}");
        assert_eq!(p["loss"], 0.0, "{p}");
        let rtt = &p["rtt_us"];
        // A veth round trip: microseconds, not milliseconds, and ordered percentiles.
        let (min, p50, max) = (
            rtt["min"].as_f64().unwrap(),
            rtt["p50"].as_f64().unwrap(),
            rtt["max"].as_f64().unwrap(),
        );
        assert!(
            0.0 < min && min <= p50 && p50 <= max && p50 < 5_000.0,
            "{rtt}"
        );
        assert!(p["advice"]["phi"].is_array(), "{p}");
    }

    // 30 % of the ICMP reaching b dropped: the echo requests (b's replies leave by egress).
    attach(&mut lab, &nf, &b);
    for (name, addr) in [("probe4", a.v4.to_string()), ("probe6", a.v6.to_string())] {
        run(
            &nf,
            &b,
            &[
                "rule", "add", name, "--dir", "ingress", "--proto", "icmp", "--src", &addr,
                "--drop", "30%",
            ],
        );
    }
    let got = measure(&nf, &a, &peers, &["--duration", "3s"]);
    for (p, rule) in got.iter().zip(["probe4", "probe6"]) {
        let sent = 300u64;
        let samples = p["samples"].as_u64().unwrap();
        let dropped = counters(&nf, &b, rule).dropped;
        // Every probe the rule dropped is lost, and nothing else is. For IPv6 the rule also
        // matches neighbour discovery from a (ICMPv6: a unicast solicitation when a's entry
        // for b turns stale, 15 s or more after it was resolved), a few frames at most.
        let lost = sent - samples;
        let extra = if rule == "probe6" { 3 } else { 0 };
        assert!(
            lost <= dropped && dropped <= lost + extra,
            "{rule}: {lost} probes lost, {dropped} dropped: {p}"
        );
        let loss = p["loss"].as_f64().unwrap();
        assert!((loss - lost as f64 / sent as f64).abs() < 1e-9, "{p}");
        let (lo, hi) =
            netfault_lab::lab::wilson_interval(dropped, sent, netfault_lab::lab::Z_ALPHA_1E4);
        assert!(
            lo <= 0.3 && 0.3 <= hi,
            "{rule}: {dropped} of {sent} dropped, interval [{lo}, {hi}]"
        );
    }
}

#[test]
fn measure_refuses_what_it_cannot_do() {
    let (_lab, nf, [a, b]) = pair();
    let peer = b.v4.to_string();
    for (args, names) in [
        // Passive: an interface that is not there, a duration of nothing; probes: no peer,
        // an interface (probes go by the routing table).
        (vec!["measure", "--iface", "nosuch0"], "--iface"),
        (vec!["measure", "--duration", "0s"], "--duration"),
        (vec!["measure", "--probe"], "--peer"),
        (
            vec![
                "measure",
                "--peer",
                peer.as_str(),
                "--probe",
                "--iface",
                "lo",
            ],
            "--iface",
        ),
        (
            vec!["measure", "--peer", peer.as_str(), "--probe", "udp:9000"],
            "--probe",
        ),
        (
            vec!["measure", "--peer", "192.0.2.0/23", "--probe"],
            "--peer",
        ),
        (
            vec![
                "measure",
                "--peer",
                peer.as_str(),
                "--probe",
                "--interval",
                "1ms",
                "--duration",
                "2m",
            ],
            "--duration",
        ),
    ] {
        let out = nf.output(&a.ns, &args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
    }
}
