//! Corruption end to end: real sockets between two namespaces joined by a veth pair, the rule
//! at the sender's egress or at the receiver's ingress, with the sender's checksum offload on
//! (a veth's default: its skbs leave CHECKSUM_PARTIAL, the checksum completed after tc) and off
//! (`ethtool -K tx off`: the stack computes it before tc). Needs root.
//!
//! - `bad`: every corrupted datagram is discarded by the receiving stack as a checksum error
//!   (its InCsumErrors rise by exactly the rule's `corrupted`) and every other one arrives
//!   intact; TCP still delivers every byte right (the sender retransmits what was discarded).
//!   One exception, by design: at the receiver's ingress, a packet whose sender left its
//!   checksum to offload (a veth peer with transmit offload on) is taken by the stack without
//!   a check, so netfault drops it instead: `corrupted` = InCsumErrors + those drops there.
//! - `good`: every datagram arrives, those corrupted (as many as `corrupted`, a fraction within
//!   the Wilson interval of P) differing from what was sent in exactly one bit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::lab::{self, Z_ALPHA_1E4, wilson_interval};

const UDP_PORT: u16 = 5001;
const TCP_PORT: u16 = 5002;

/// Where the rule sits.
#[derive(Clone, Copy, Debug)]
enum Side {
    SenderEgress,
    ReceiverIngress,
}

const SIDES: [Side; 2] = [Side::SenderEgress, Side::ReceiverIngress];

/// A pair whose sender (`a`) has transmit checksum offload on (the veth default) or off.
fn pair_with_offload(tx_offload: bool) -> (Lab, Netfault, [Host; 2]) {
    let (lab, nf, hosts) = pair();
    if !tx_offload {
        lab::exec_in(
            &hosts[0].ns,
            "ethtool",
            &["-K", &hosts[0].iface, "tx", "off"],
        )
        .expect("ethtool -K tx off");
    }
    (lab, nf, hosts)
}

/// Attaches the side's host and adds rule `c` there; returns that host.
fn add<'a>(
    lab: &mut Lab,
    nf: &Netfault,
    [a, b]: &'a [Host; 2],
    side: Side,
    args: &[&str],
) -> &'a Host {
    let (h, dir) = match side {
        Side::SenderEgress => (a, "egress"),
        Side::ReceiverIngress => (b, "ingress"),
    };
    attach_and_add(lab, nf, h, "c", dir, args);
    h
}

/// A counter of the receiver's namespace: `Udp:`/`Tcp:` fields of /proc/net/snmp, or an
/// /proc/net/snmp6 field (`Udp6InCsumErrors`).
fn snmp(ns: &str, proto: &str, field: &str) -> u64 {
    let (v4, v6) = lab::run_in(ns, || {
        (
            std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap(),
            std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap(),
        )
    })
    .unwrap();
    if proto == "snmp6" {
        let line = v6
            .lines()
            .find(|l| l.split_whitespace().next() == Some(field))
            .unwrap_or_else(|| panic!("no {field} in snmp6"));
        return line.split_whitespace().nth(1).unwrap().parse().unwrap();
    }
    let mut lines = v4.lines().filter(|l| l.starts_with(proto));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no {proto} {field} in snmp"));
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

fn udp_csum_errors(ns: &str, v6: bool) -> u64 {
    if v6 {
        snmp(ns, "snmp6", "Udp6InCsumErrors")
    } else {
        snmp(ns, "Udp:", "InCsumErrors")
    }
}

/// Datagram `i`: its number, then a pattern that differs from every other datagram's.
fn datagram(i: u32, len: usize) -> Vec<u8> {
    let mut d = i.to_be_bytes().to_vec();
    d.extend((0..len - 4).map(|k| (k as u32 * 31 + i * 7) as u8));
    d
}

/// Sends `n` datagrams of `len` bytes from `a` to `b` (paced, so the receiver's buffer never
/// overflows) and returns what arrived, as received, in order of arrival.
fn udp_exchange(a: &Host, b: &Host, v6: bool, n: u32, len: usize) -> Vec<Vec<u8>> {
    let dst = b.sock(v6, UDP_PORT);
    let rx = lab::run_in(&b.ns, || UdpSocket::bind(dst).expect("bind")).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let any: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
    let tx = lab::run_in(&a.ns, || UdpSocket::bind(any).expect("bind")).unwrap();
    let receiver = thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(k) = rx.recv(&mut buf) {
            got.push(buf[..k].to_vec());
        }
        got
    });
    for i in 0..n {
        tx.send_to(&datagram(i, len), dst).expect("send");
        if i % 32 == 31 {
            thread::sleep(Duration::from_millis(1));
        }
    }
    receiver.join().unwrap()
}

/// How many bits `a` and `b` differ in (same length).
fn bits_apart(a: &[u8], b: &[u8]) -> u32 {
    assert_eq!(a.len(), b.len(), "a datagram's length changed");
    a.iter().zip(b).map(|(x, y)| (x ^ y).count_ones()).sum()
}

/// `bad`: the receiver's stack discards exactly the corrupted datagrams (UDP InCsumErrors rise
/// by `corrupted`), and every other one arrives intact. Both families, both sides, the
/// sender's checksum offload on and off.
#[test]
fn bad_checksums_are_discarded_by_the_receiver_as_checksum_errors() {
    for tx_offload in [true, false] {
        for side in SIDES {
            let (mut lab, nf, hosts) = pair_with_offload(tx_offload);
            let [a, b] = &hosts;
            let port = UDP_PORT.to_string();
            let h = add(
                &mut lab,
                &nf,
                &hosts,
                side,
                &["--proto", "udp", "--dport", &port, "--corrupt", "50%"],
            );
            let (mut corrupted, mut dropped) = (0, 0);
            for v6 in [false, true] {
                let what = format!("offload {tx_offload}, {side:?}, v6 {v6}");
                let before = udp_csum_errors(&b.ns, v6);
                let n = 400;
                let got = udp_exchange(a, b, v6, n, 200);
                let errors = udp_csum_errors(&b.ns, v6) - before;
                let c = counters(&nf, h, "c");
                let (now, drops) = (c.corrupted - corrupted, c.dropped - dropped);
                (corrupted, dropped) = (c.corrupted, c.dropped);
                assert!(now > 0 && now < u64::from(n), "{what}: {c:?}");
                // Only an offloaded checksum at ingress is dropped rather than left to fail.
                if !tx_offload || matches!(side, Side::SenderEgress) {
                    assert_eq!(drops, 0, "{what}: {c:?}");
                } else {
                    assert_eq!(
                        errors, 0,
                        "{what}: the stack checked an offloaded checksum?"
                    );
                }
                assert_eq!(
                    errors + drops,
                    now,
                    "{what}: InCsumErrors and drops against corrupted"
                );
                assert_eq!(
                    got.len() as u64,
                    u64::from(n) - now,
                    "{what}: the rest arrive"
                );
                for d in &got {
                    let i = u32::from_be_bytes(d[..4].try_into().unwrap());
                    assert_eq!(d, &datagram(i, 200), "{what}: datagram {i} arrived damaged");
                }
            }
            if tx_offload && matches!(side, Side::SenderEgress) {
                assert!(!tx_checksum_on(a), "netfault turned transmit checksums off");
                run(&nf, a, &["rule", "del", "c"]);
                assert!(tx_checksum_on(a), "and back on once the rule is gone");
            }
        }
    }
}

/// Is transmit checksum offload for TCP and UDP on at `h`'s interface (`ethtool -k`; a
/// veth's is the generic one)?
fn tx_checksum_on(h: &Host) -> bool {
    let out = lab::exec_in(&h.ns, "ethtool", &["-k", &h.iface]).expect("ethtool -k");
    out.lines()
        .find_map(|l| l.trim().strip_prefix("tx-checksum-ip-generic:"))
        .expect("tx-checksum-ip-generic in ethtool -k")
        .trim()
        .starts_with("on")
}

/// `good`: every datagram arrives, and those corrupted differ from what was sent in exactly
/// one bit; their number equals `corrupted`, a fraction within the Wilson interval (alpha
/// 1e-4) of P. Both sides, the sender's checksum offload on and off, IPv4 and IPv6.
#[test]
fn good_checksums_deliver_datagrams_one_bit_apart() {
    let p = 0.2;
    for tx_offload in [true, false] {
        for side in SIDES {
            let (mut lab, nf, hosts) = pair_with_offload(tx_offload);
            let [a, b] = &hosts;
            let port = UDP_PORT.to_string();
            let h = add(
                &mut lab,
                &nf,
                &hosts,
                side,
                &[
                    "--proto",
                    "udp",
                    "--dport",
                    &port,
                    "--corrupt",
                    "20%",
                    "--corrupt-checksum",
                    "good",
                ],
            );
            let mut corrupted = 0;
            for v6 in [false, true] {
                let what = format!("offload {tx_offload}, {side:?}, v6 {v6}");
                let before = udp_csum_errors(&b.ns, v6);
                let n = 1_500;
                let got = udp_exchange(a, b, v6, n, 300);
                assert_eq!(got.len() as u32, n, "{what}: every datagram arrives");
                let mut damaged = 0u64;
                let mut seen = vec![false; n as usize];
                for d in &got {
                    // The number itself may be the bit hit: find the datagram by the rest.
                    let i = (0..n)
                        .find(|&i| !seen[i as usize] && bits_apart(d, &datagram(i, 300)) <= 1)
                        .unwrap_or_else(|| panic!("{what}: a datagram more than one bit off"));
                    seen[i as usize] = true;
                    damaged += u64::from(bits_apart(d, &datagram(i, 300)));
                }
                let c = counters(&nf, h, "c");
                let now = c.corrupted - corrupted;
                corrupted = c.corrupted;
                assert_eq!(damaged, now, "{what}: damaged datagrams against corrupted");
                assert_eq!(
                    udp_csum_errors(&b.ns, v6),
                    before,
                    "{what}: no checksum error"
                );
                let (lo, hi) = wilson_interval(damaged, u64::from(n), Z_ALPHA_1E4);
                assert!(
                    lo <= p && p <= hi,
                    "{what}: {damaged} of {n} damaged, [{lo}, {hi}] misses {p}"
                );
            }
        }
    }
}

/// TCP with `bad`: the receiver discards the corrupted segments (TCP InCsumErrors rise) and
/// the sender retransmits them: every byte arrives right. Both sides, offload on and off.
#[test]
fn tcp_delivers_every_byte_right_through_bad_corruption() {
    for tx_offload in [true, false] {
        for side in SIDES {
            let (mut lab, nf, hosts) = pair_with_offload(tx_offload);
            let [a, b] = &hosts;
            let what = format!("offload {tx_offload}, {side:?}");
            let port = TCP_PORT.to_string();
            let h = add(
                &mut lab,
                &nf,
                &hosts,
                side,
                &["--proto", "tcp", "--dport", &port, "--corrupt", "2%"],
            );
            let before = snmp(&b.ns, "Tcp:", "InCsumErrors");
            let dst = b.sock(false, TCP_PORT);
            let listener = lab::run_in(&b.ns, || TcpListener::bind(dst).expect("listen")).unwrap();
            let data: Vec<u8> = (0..2_000_000u32)
                .map(|i| (i * 13 + i / 1000) as u8)
                .collect();
            let server = thread::spawn(move || {
                let (mut s, _) = listener.accept().expect("accept");
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).expect("read");
                got
            });
            let mut c = lab::run_in(&a.ns, || TcpStream::connect(dst).expect("connect")).unwrap();
            let t = Instant::now();
            c.write_all(&data).expect("write");
            drop(c);
            let got = server.join().unwrap();
            assert!(
                got == data,
                "{what}: {} bytes arrived, not the {} sent right",
                got.len(),
                data.len()
            );
            assert!(t.elapsed() < Duration::from_secs(20), "{what}");
            let errors = snmp(&b.ns, "Tcp:", "InCsumErrors") - before;
            let cnt = counters(&nf, h, "c");
            assert!(cnt.corrupted > 0, "{what}: {cnt:?}");
            // As for UDP: an offloaded checksum at ingress is dropped rather than left to fail.
            if !tx_offload || matches!(side, Side::SenderEgress) {
                assert_eq!(cnt.dropped, 0, "{what}: {cnt:?}");
            }
            assert_eq!(
                errors + cnt.dropped,
                cnt.corrupted,
                "{what}: InCsumErrors and drops against corrupted"
            );
        }
    }
}
