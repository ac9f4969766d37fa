//! Reject end to end: real sockets between two namespaces joined by a veth pair, the rule at
//! the server's ingress or at the client's egress, IPv4 and IPv6. Needs root.
//!
//! Checksum offload is turned off on both veths (`ethtool -K rx off tx off`), so every skb
//! carries a complete checksum and the receiving stack checks it: a veth otherwise passes
//! locally built skbs as checksum-partial (or marks them verified), and the client would take
//! any reply without looking. So a reply is accepted here only if a real host would accept it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::lab;

const TCP_PORT: u16 = 7000;
/// A refusal must come this fast; a silent drop makes `connect()` wait 1 s for the first SYN
/// retransmit at least.
const FAST: Duration = Duration::from_millis(500);

/// A pair with checksum offload off on both sides (see the module documentation).
fn checked_pair() -> (Lab, Netfault, [Host; 2]) {
    let (lab, nf, hosts) = pair();
    for h in &hosts {
        lab::exec_in(
            &h.ns,
            "ethtool",
            &["-K", &h.iface, "rx", "off", "tx", "off"],
        )
        .expect("ethtool -K rx off tx off");
    }
    (lab, nf, hosts)
}

/// `connect()` from `ns` to `dst`, bounded by `limit`: its result and how long it took.
fn connect(ns: &str, dst: SocketAddr, limit: Duration) -> (std::io::Result<TcpStream>, Duration) {
    lab::run_in(ns, move || {
        let t = Instant::now();
        let r = TcpStream::connect_timeout(&dst, limit);
        (r, t.elapsed())
    })
    .unwrap()
}

fn assert_refused_fast(ns: &str, dst: SocketAddr, what: &str) {
    assert_refused_within(ns, dst, FAST, what);
}

fn assert_refused_within(ns: &str, dst: SocketAddr, limit: Duration, what: &str) {
    let (r, took) = connect(ns, dst, Duration::from_secs(3));
    let e = r
        .err()
        .unwrap_or_else(|| panic!("{what}: connected to {dst}"));
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{what}: {e}");
    assert!(took < limit, "{what}: refused only after {took:?}");
}

fn assert_connects(ns: &str, dst: SocketAddr, what: &str) {
    let (r, _) = connect(ns, dst, Duration::from_secs(3));
    r.unwrap_or_else(|e| panic!("{what}: {dst}: {e}"));
}

/// Where the rule sits: on the server (its ingress) or on the client (its egress).
#[derive(Clone, Copy, Debug)]
enum Side {
    ServerIngress,
    ClientEgress,
}

/// Attaches the side's host and adds `rule add NAME --dir .. args..`; returns that host.
fn add<'a>(
    lab: &mut Lab,
    nf: &Netfault,
    [a, b]: &'a [Host; 2],
    side: Side,
    args: &[&str],
) -> &'a Host {
    let (h, dir) = match side {
        Side::ServerIngress => (b, "ingress"),
        Side::ClientEgress => (a, "egress"),
    };
    attach_and_add(lab, nf, h, "rej", dir, args);
    h
}

/// `connect()` is refused in milliseconds by a RST, both families, both sides. An ICMP port
/// unreachable refuses it too, but on a veth pair the error can arrive while `connect()` still
/// holds its socket (the whole round trip runs in the sender's softirq), and Linux keeps an
/// ICMP error that finds the socket owned as a soft error: then the SYN's retransmit, a second
/// later, is refused. A RST is queued to the socket's backlog instead, so it always acts.
#[test]
fn connect_is_refused_in_milliseconds() {
    for side in [Side::ServerIngress, Side::ClientEgress] {
        for kind in ["tcp-reset", "icmp-port"] {
            let (mut lab, nf, hosts) = checked_pair();
            let [a, b] = &hosts;
            let _servers: Vec<_> = [false, true]
                .map(|v6| TcpEcho::start(&b.ns, b.sock(v6, TCP_PORT)).expect("echo server"))
                .into();
            for v6 in [false, true] {
                assert_connects(&a.ns, b.sock(v6, TCP_PORT), "before the rule");
            }
            let port = TCP_PORT.to_string();
            let h = add(
                &mut lab,
                &nf,
                &hosts,
                side,
                &["--proto", "tcp", "--dport", &port, "--reject", kind],
            );
            for v6 in [false, true] {
                let what = format!("{side:?} {kind} v6={v6}");
                let limit = if kind == "tcp-reset" {
                    FAST
                } else {
                    // The first retransmit, and no later one.
                    Duration::from_millis(1500)
                };
                assert_refused_within(&a.ns, b.sock(v6, TCP_PORT), limit, &what);
            }
            let c = counters(&nf, h, "rej");
            assert!(c.rejected >= 2, "{side:?} {kind}: {c:?}");
            assert_eq!(c.rejected, c.dropped, "{side:?} {kind}: {c:?}");
            assert_eq!(c.reject_limited, 0, "{c:?}");
        }
    }
}

/// A connected UDP socket's next `recv` reports the ICMP port unreachable as ECONNREFUSED,
/// though a server listens.
#[test]
fn a_connected_udp_socket_sees_connection_refused() {
    for side in [Side::ServerIngress, Side::ClientEgress] {
        let (mut lab, nf, hosts) = checked_pair();
        let [a, b] = &hosts;
        let _servers: Vec<UdpSocket> = [false, true]
            .map(|v6| {
                let addr = b.sock(v6, UDP_PORT);
                lab::run_in(&b.ns, move || UdpSocket::bind(addr))
                    .unwrap()
                    .expect("bind the server")
            })
            .into();
        let port = UDP_PORT.to_string();
        let h = add(
            &mut lab,
            &nf,
            &hosts,
            side,
            &["--proto", "udp", "--dport", &port, "--reject"],
        );
        for v6 in [false, true] {
            let dst = b.sock(v6, UDP_PORT);
            let r = lab::run_in(&a.ns, move || -> std::io::Result<()> {
                let any: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
                let s = UdpSocket::bind(any)?;
                s.connect(dst)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.send(b"are you there")?;
                let mut buf = [0u8; 64];
                s.recv(&mut buf).map(drop)
            })
            .unwrap();
            let e = r.expect_err("recv got an answer");
            assert_eq!(
                e.kind(),
                ErrorKind::ConnectionRefused,
                "{side:?} v6={v6}: {e}"
            );
        }
        let c = counters(&nf, h, "rej");
        assert_eq!((c.rejected, c.dropped), (2, 2), "{side:?}: {c:?}");
    }
}

/// An established connection's next segment is answered with a RST the client takes: its
/// next read (or write) fails with ECONNRESET.
#[test]
fn an_established_connection_is_reset() {
    for side in [Side::ServerIngress, Side::ClientEgress] {
        let (mut lab, nf, hosts) = checked_pair();
        let [a, b] = &hosts;
        let _servers: Vec<_> = [false, true]
            .map(|v6| {
                TcpEcho::with_idle(&b.ns, b.sock(v6, TCP_PORT), Duration::from_secs(30))
                    .expect("echo server")
            })
            .into();
        let mut conns: Vec<TcpStream> = [false, true]
            .map(|v6| {
                let (r, _) = connect(&a.ns, b.sock(v6, TCP_PORT), Duration::from_secs(3));
                let mut s = r.expect("connect before the rule");
                s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                s.write_all(b"ping").unwrap();
                let mut buf = [0u8; 4];
                s.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"ping");
                s
            })
            .into();
        let port = TCP_PORT.to_string();
        add(
            &mut lab,
            &nf,
            &hosts,
            side,
            &["--proto", "tcp", "--dport", &port, "--reject"],
        );
        for (v6, s) in [false, true].into_iter().zip(&mut conns) {
            let t = Instant::now();
            // The write itself is queued; the RST for its segment fails the read (or, if it
            // came first, a second write).
            let w = s.write_all(b"again");
            let mut buf = [0u8; 8];
            let e = match w {
                Err(e) => e,
                Ok(()) => s.read(&mut buf).expect_err("read after the reset"),
            };
            assert_eq!(
                e.kind(),
                ErrorKind::ConnectionReset,
                "{side:?} v6={v6}: {e}"
            );
            assert!(t.elapsed() < FAST, "{side:?} v6={v6}: {:?}", t.elapsed());
        }
    }
}

/// `partition A B --reject`: "the port is closed" in milliseconds, where a silent partition
/// leaves `connect()` waiting for SYN retransmits.
#[test]
fn a_rejecting_partition_refuses_where_a_silent_one_times_out() {
    let (mut lab, nf, hosts) = checked_pair();
    let [a, b] = &hosts;
    let _server = TcpEcho::start(&b.ns, b.sock(false, TCP_PORT)).expect("echo server");
    attach(&mut lab, &nf, b);
    let (sa, sb) = (a.v4.to_string(), b.v4.to_string());
    run(&nf, b, &["partition", &sa, &sb, "--name", "quiet"]);
    let (r, took) = connect(&a.ns, b.sock(false, TCP_PORT), TCP_BLOCKED);
    assert!(r.is_err(), "connected through a partition");
    assert!(
        took >= TCP_BLOCKED,
        "a silent partition answered after {took:?}"
    );
    run(&nf, b, &["heal", "quiet"]);
    run(
        &nf,
        b,
        &["partition", &sa, &sb, "--name", "closed", "--reject"],
    );
    assert_refused_fast(&a.ns, b.sock(false, TCP_PORT), "partition --reject");
    let c = counters(&nf, b, "closed");
    assert!(c.rejected >= 1, "{c:?}");
}

/// Bad input exits 2 naming the flag, and adds nothing.
#[test]
fn bad_reject_input_exits_2_and_names_the_flag() {
    let (mut lab, nf, [a, _b]) = pair();
    attach(&mut lab, &nf, &a);
    let cases: &[(&[&str], &str)] = &[
        (
            &["rule", "add", "r", "--proto", "tcp", "--reject", "rst"],
            "--reject",
        ),
        (
            &["rule", "add", "r", "--proto", "tcp", "--reject-rate", "5/s"],
            "--reject-rate",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--proto",
                "tcp",
                "--reject",
                "--reject-rate",
                "0/s",
            ],
            "--reject-rate",
        ),
        (
            &[
                "rule",
                "add",
                "r",
                "--proto",
                "tcp",
                "--reject",
                "--duplicate",
                "10%",
            ],
            "--reject",
        ),
        (
            &[
                "rule", "add", "r", "--proto", "tcp", "--reject", "--delay", "10ms",
            ],
            "--reject",
        ),
        (
            &[
                "partition",
                "192.0.2.1",
                "192.0.2.2",
                "--reject-rate",
                "5/s",
            ],
            "--reject-rate",
        ),
    ];
    for (args, field) in cases {
        let out = nf.output(&a.ns, args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(field), "{args:?} does not name {field}: {err}");
    }
    assert!(nf.rule_names(&a.ns).unwrap().is_empty());
    // And what is accepted is listed as given.
    run(
        &nf,
        &a,
        &[
            "rule",
            "add",
            "ok",
            "--proto",
            "udp",
            "--reject",
            "icmp-admin",
            "--reject-rate",
            "7/s,burst=2",
        ],
    );
    let v = nf.json(&a.ns, &["rule", "list", "--json"]).unwrap();
    let r = &v["rules"][0];
    assert_eq!(r["reject"], "icmp-admin", "{v}");
    assert_eq!(r["reject_rate"], "7/s,burst=2", "{v}");
}
