//! The operator is never cut off: the SSH connection of whoever installs a partition, loopback,
//! and `protect add` entries pass before any rule.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use common::{Host, Netfault, TcpEcho, attach, counters, pair, ping_received};
use netfault_lab::lab::tcp_connect_from;

/// The SSH session: the operator's end on A, the server (standing in for sshd) on B.
const SSH_CLIENT_PORT: u16 = 50022;
const SSH_SERVER_PORT: u16 = 2222;
/// Connects and reads time out after this.
const SSH_TIMEOUT: Duration = Duration::from_secs(2);

/// `SSH_CONNECTION` as sshd sets it for that session.
fn ssh_connection(a: &Host, b: &Host) -> String {
    format!("{} {SSH_CLIENT_PORT} {} {SSH_SERVER_PORT}", a.v4, b.v4)
}

/// One ICMP echo (v4) that waits at most a second: true if it came back.
fn pings(from: &Host, to: &Host) -> bool {
    ping_received(from, to, false, 1) == 1
}

/// A command that must succeed; its whole output (the warning is on stderr).
fn nf_ok(nf: &Netfault, h: &Host, args: &[&str]) -> std::process::Output {
    nf.run_output(&h.ns, args).expect("netfault command")
}

fn echo_once(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    s.read_exact(&mut buf).is_ok() && buf == msg
}

#[test]
fn ssh_connection_survives_a_partition_that_covers_it() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &a);
    attach(&mut lab, &nf, &b);
    // An echo server on B standing in for sshd; the session pauses between exchanges.
    let server_addr = b.sock(false, SSH_SERVER_PORT);
    let _server =
        TcpEcho::with_idle(&b.ns, server_addr, Duration::from_secs(5)).expect("echo server");
    let ssh_local = a.sock(false, SSH_CLIENT_PORT);
    let mut conn = tcp_connect_from(&a.ns, ssh_local, server_addr, SSH_TIMEOUT)
        .expect("connect")
        .expect("control: the connection is made");
    assert!(
        echo_once(&mut conn, b"before"),
        "control: the connection works"
    );
    assert!(pings(&a, &b), "control: ICMP works before the partition");

    // The operator, logged in over that connection, partitions A from B on both hosts.
    let operator = nf.with_env("SSH_CONNECTION", &ssh_connection(&a, &b));
    for h in [&a, &b] {
        let out = nf_ok(
            &operator,
            h,
            &[
                "partition",
                &a.v4.to_string(),
                &b.v4.to_string(),
                "--name",
                "cut",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("covers protected traffic"),
            "no warning: {err}"
        );
    }
    assert!(
        echo_once(&mut conn, b"during"),
        "the protected connection was cut"
    );
    // Everything else between A and B is cut: a new connection from another port gets no
    // answer at all (a timed-out connect, not a refusal or a local error), and the partition
    // counted what it dropped (A's egress drops the SYNs: B never sees them).
    let dropped_before = counters(&nf, &a, "cut").dropped;
    let other = a.sock(false, SSH_CLIENT_PORT + 1);
    let fresh = tcp_connect_from(&a.ns, other, server_addr, SSH_TIMEOUT).expect("connect");
    match fresh {
        Ok(_) => panic!("an unprotected connection got through the partition"),
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::EINPROGRESS | libc::ETIMEDOUT)),
            "the unprotected connection failed, but not by a timeout: {e}"
        ),
    }
    assert!(
        counters(&nf, &a, "cut").dropped > dropped_before,
        "the partition dropped none of the unprotected connection's SYNs"
    );
    assert!(!pings(&a, &b), "ICMP got through the partition");
    let v = nf.json(&b.ns, &["protect", "list", "--json"]).unwrap();
    let ssh = v["protected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["label"] == format!("ssh:{}:{SSH_CLIENT_PORT}", a.v4))
        .expect("ssh protection listed");
    assert!(
        ssh["packets"].as_u64().unwrap() >= 2,
        "protection counters: {ssh}"
    );
}

#[test]
fn no_protect_means_no_protection_and_protect_add_protects() {
    let (mut lab, nf, [a, b]) = pair();
    attach(&mut lab, &nf, &b);
    assert!(pings(&a, &b), "control: ICMP works before the partition");
    let operator = nf.with_env("SSH_CONNECTION", &ssh_connection(&a, &b));
    nf_ok(
        &operator,
        &b,
        &[
            "partition",
            &a.v4.to_string(),
            &b.v4.to_string(),
            "--name",
            "cut",
            "--no-protect",
        ],
    );
    let v = nf.json(&b.ns, &["protect", "list", "--json"]).unwrap();
    let labels: Vec<_> = v["protected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels, ["loopback"]);
    assert!(!pings(&a, &b));
    nf_ok(&nf, &b, &["protect", "add", &a.v4.to_string()]);
    assert!(pings(&a, &b), "protect add did not win over the partition");
    nf_ok(&nf, &b, &["protect", "del", &a.v4.to_string()]);
    assert!(!pings(&a, &b));
}
