//! Connection state end to end: `partition A B --conn new` refuses new TCP connections and
//! leaves established ones flowing, with the real binary between two namespaces. Needs root.
//!
//! The lab is the cleanup guard (see tests/common): it detaches and deletes its namespaces on
//! drop, passed or panicked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::lab;

const PORT: u16 = 5100;

/// One request and its echo on an open connection, within `limit`.
fn echo_once(s: &mut TcpStream, round: u32, limit: Duration) -> std::io::Result<()> {
    s.set_read_timeout(Some(limit))?;
    let msg = [round as u8; 1000];
    s.write_all(&msg)?;
    let mut back = [0u8; 1000];
    s.read_exact(&mut back)?;
    assert_eq!(back, msg, "echo of round {round} differs");
    Ok(())
}

#[test]
fn conn_new_partition_keeps_established_connections_and_refuses_new_ones() {
    let (mut lab, nf, [a, b]) = pair();
    let idle = Duration::from_secs(20);
    let _servers = [false, true].map(|v6| {
        [&a, &b].map(|h| TcpEcho::with_idle(&h.ns, h.sock(v6, PORT), idle).expect("echo"))
    });
    // Connections opened before the partition, one per family and direction.
    let mut open: Vec<(String, TcpStream)> = Vec::new();
    for v6 in [false, true] {
        for (from, to) in [(&a, &b), (&b, &a)] {
            let dst = to.sock(v6, PORT);
            let s = lab::run_in(&from.ns, || TcpStream::connect_timeout(&dst, TCP_OK))
                .expect("namespace")
                .expect("connect before the partition");
            open.push((format!("{} -> {dst}", from.ns), s));
        }
    }
    for (i, (what, s)) in open.iter_mut().enumerate() {
        echo_once(s, i as u32, TCP_OK).unwrap_or_else(|e| panic!("{what} before: {e}"));
    }

    attach(&mut lab, &nf, &b);
    run(
        &nf,
        &b,
        &[
            "partition",
            &a.set(),
            &b.set(),
            "--name",
            "nonew",
            "--conn",
            "new",
        ],
    );

    // New connections fail both ways and in both families: their SYNs are cut, so connect()
    // times out (bounded by TCP_BLOCKED) instead of completing in milliseconds.
    for v6 in [false, true] {
        for (from, to) in [(&a, &b), (&b, &a)] {
            let t = Instant::now();
            let r = tcp(from, to.sock(v6, PORT), TCP_BLOCKED);
            assert!(
                matches!(r, TcpOutcome::TimedOut),
                "{} -> {}: new connection should time out, got {r:?} after {:?}",
                from.ns,
                to.ip(v6),
                t.elapsed()
            );
        }
    }
    // Meanwhile the connections opened before keep exchanging data, for a second and more.
    let until = Instant::now() + Duration::from_millis(1500);
    let mut rounds = 0u32;
    while Instant::now() < until && rounds < 1000 {
        for (what, s) in &mut open {
            echo_once(s, rounds, TCP_OK).unwrap_or_else(|e| panic!("{what} during: {e}"));
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(rounds >= 10, "only {rounds} rounds");
    let c = counters(&nf, &b, "nonew");
    // Only SYNs matched (at least the first of each of the four attempts; retransmits add
    // more), all dropped; none of the established segments.
    assert!(
        c.matched >= 4 && c.dropped == c.matched && c.passed == 0,
        "{c:?}"
    );
    assert!(c.matched <= 4 * 3, "more than SYNs matched: {c:?}");

    run(&nf, &b, &["heal", "nonew"]);
    warm(&a, &b);
    for v6 in [false, true] {
        let r = tcp(&a, b.sock(v6, PORT), TCP_OK);
        assert!(matches!(r, TcpOutcome::Transferred(_)), "healed: {r:?}");
    }
}

/// `--conn` on a rule needs `--proto tcp`: refused (exit 2) with the flag named, nothing
/// applied. Burst flags are checked the same way.
#[test]
fn conn_and_burst_misuse_is_refused_by_flag() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    let cases: [(&[&str], &str); 4] = [
        (
            &["--proto", "udp", "--conn", "new", "--drop", "100%"],
            "--conn",
        ),
        (
            &["--proto", "tcp", "--gemodel", "1%", "--drop", "5%"],
            "--gemodel",
        ),
        (&["--proto", "tcp", "--burst", "4"], "--burst"),
        (
            &["--proto", "tcp", "--drop", "5%", "--burst-scope", "rule"],
            "--burst-scope",
        ),
    ];
    let src = a.v4.to_string();
    for (args, flag) in cases {
        let mut all = vec!["rule", "add", "bad", "--src", src.as_str()];
        all.extend_from_slice(args);
        let out = nf.output(&b.ns, &all).expect("netfault");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(flag),
            "{args:?}: stderr does not name {flag}: {err}"
        );
    }
    assert!(nf.rule_names(&b.ns).expect("rule list").is_empty());
}
