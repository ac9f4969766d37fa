//! cgroup targets (issue 17, point 2), end to end: two services on one host (one namespace,
//! one address, one interface), each in a cgroup v2 child the test makes, talk to the same
//! peer. `--cgroup A` must cut A and leave B talking. BPF_PROG_TEST_RUN cannot carry a
//! socket, so only real sockets prove it.
//!
//! The services are short Python processes (`SERVICE`), started by a shell that first moves
//! itself into their cgroup (its pid to `cgroup.procs`; outside `ip netns exec`, whose fresh
//! /sys has no cgroup mount) and then execs them: a socket belongs to the cgroup its creator
//! was in when it made it. Needs root, python3 and a cgroup2 mount.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test step that cannot go on fails the test"
)]
mod common;

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::PathBuf,
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use common::*;
use netfault_lab::lab::run_in;

/// One service action; prints one line with its outcome. argv: mode, host, port, arg.
/// - `listen`: a TCP listener on host:port (`ready` once it listens), accepting one
///   connection within `arg` s: `accepted` or `timeout`. It never sends first.
/// - `recv`: a UDP socket bound to host:port that only receives (`ready` once bound): how
///   many datagrams came before `arg` s passed without one.
/// - `tcp`: connect (timeout `arg` s), send 1000 bytes to an echo server, read them back:
///   `ok`, `timeout`, `refused` or `error N`.
/// - `udp`: `arg` datagrams to a UDP echo server, each waiting 300 ms for its echo: how many
///   came back.
/// - `hold`: connect at once, print `connected`; at a line on stdin send one byte and print
///   `sent`; at the next, read what the peer sends (timeout `arg` s): `got N` or `timeout`.
const SERVICE: &str = r#"
import socket, sys
mode, host, port, arg = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
if mode == "tcp":
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(float(arg))
    try:
        s.connect((host, port))
        s.sendall(b"x" * 1000)
        got = b""
        while len(got) < 1000:
            d = s.recv(4096)
            if not d:
                break
            got += d
        print("ok" if got == b"x" * 1000 else "short")
    except socket.timeout:
        print("timeout")
    except ConnectionRefusedError:
        print("refused")
    except OSError as e:
        print("error", e.errno)
elif mode == "udp":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.settimeout(0.3)
    n = 0
    for i in range(int(arg)):
        s.sendto(b"%d" % i, (host, port))
        try:
            s.recvfrom(100)
            n += 1
        except socket.timeout:
            pass
    print(n)
elif mode == "listen":
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(8)
    print("ready", flush=True)
    s.settimeout(float(arg))
    try:
        s.accept()
        print("accepted")
    except socket.timeout:
        print("timeout")
elif mode == "recv":
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((host, port))
    print("ready", flush=True)
    s.settimeout(float(arg))
    n = 0
    try:
        while True:
            s.recvfrom(100)
            n += 1
    except socket.timeout:
        pass
    print(n)
elif mode == "hold":
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    s.connect((host, port))
    print("connected", flush=True)
    sys.stdin.readline()
    s.sendall(b"!")
    print("sent", flush=True)
    sys.stdin.readline()
    s.settimeout(float(arg))
    try:
        print("got", len(s.recv(100)))
    except socket.timeout:
        print("timeout")
"#;

/// A cgroup v2 child of the cgroup2 mount, made for this test and removed on drop (after the
/// processes in it, which the test waits for, are gone).
struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    fn new(role: &str) -> Cgroup {
        let root = netfault::spec::cgroup::cgroup2_root().expect("a cgroup2 mount");
        // Unique per test too: the tests of this file run in parallel in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = root.join(format!("nfcg-{}-{n}-{role}", std::process::id()));
        std::fs::create_dir(&path).expect("make the test's cgroup");
        Cgroup { path }
    }

    fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn procs(&self) -> String {
        self.path.join("cgroup.procs").to_str().unwrap().to_owned()
    }

    fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.procs")).is_ok_and(|s| s.trim().is_empty())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A process lingers in cgroup.procs briefly after it is reaped; bounded retries.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `SERVICE` in namespace `ns` and cgroup `cg`, its stdin and stdout piped.
fn service(ns: &str, cg: &Cgroup, mode: &str, dst: SocketAddr, arg: &str) -> Child {
    let (host, port) = (dst.ip().to_string(), dst.port().to_string());
    Command::new("sh")
        .args(["-c", r#"echo $$ > "$0" && exec "$@""#, &cg.procs()])
        .args(["ip", "netns", "exec", ns, "python3", "-c", SERVICE])
        .args([mode, &host, &port, arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3 for the test's services")
}

/// Runs one service action to its end (bounded): its output line.
fn once(ns: &str, cg: &Cgroup, mode: &str, dst: SocketAddr, arg: &str) -> String {
    let mut c = service(ns, cg, mode, dst, arg);
    let end = Instant::now() + Duration::from_secs(20);
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = c.kill();
            let _ = c.wait();
            panic!("service {mode} to {dst} in {} ran past 20 s", cg.arg());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    out.trim().to_owned()
}

/// A `hold` service, connected.
struct Held {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Held {
    fn connect(ns: &str, cg: &Cgroup, dst: SocketAddr, wait_s: &str) -> Held {
        let mut child = service(ns, cg, "hold", dst, wait_s);
        let stdin = child.stdin.take().unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "connected", "hold in {}", cg.arg());
        Held {
            child,
            stdin,
            stdout,
        }
    }

    /// Lets it send its byte.
    fn send(&mut self) {
        writeln!(self.stdin).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "sent");
    }

    /// Lets it read; its outcome.
    fn read(mut self) -> String {
        writeln!(self.stdin).unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line.trim().to_owned()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP echo server in a namespace until dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, addr: SocketAddr) -> UdpEcho {
        let sock = run_in(ns, || UdpSocket::bind(addr)).unwrap().unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            let end = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Acquire) && Instant::now() < end {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `listen` or `recv` service, ready.
struct Server {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Server {
    fn start(ns: &str, cg: &Cgroup, mode: &str, at: SocketAddr, wait_s: &str) -> Server {
        let mut child = service(ns, cg, mode, at, wait_s);
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "{mode} at {at} in {}", cg.arg());
        Server { child, stdout }
    }

    /// Its outcome (the service ends on its own within its wait).
    fn outcome(mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        line.trim().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From `ns`: `count` datagrams to `to`, 5 ms apart.
fn send_datagrams(ns: &str, to: SocketAddr, count: u32) {
    run_in(ns, || {
        let any: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).unwrap();
        for i in 0..count {
            s.send_to(format!("{i}").as_bytes(), to).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
    })
    .unwrap();
}

/// From `ns`: does a TCP connection to `to` open within `within`?
fn connects(ns: &str, to: SocketAddr, within: Duration) -> bool {
    run_in(ns, || {
        std::net::TcpStream::connect_timeout(&to, within).is_ok()
    })
    .unwrap()
}

/// The names of the programs attached to the cgroup (bpftool), netfault's among them.
fn cgroup_programs(cg: &Cgroup) -> String {
    let out = Command::new("bpftool")
        .args(["cgroup", "show", cg.arg()])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "bpftool cgroup show {}", cg.arg());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const TCP_PORT: u16 = 5100;
const PUSH_PORT: u16 = 5101;
const UDP_ECHO_PORT: u16 = 5102;

#[test]
fn a_cgroup_is_cut_both_ways_while_its_neighbour_keeps_talking() {
    let (mut lab, nf, [h, peer]) = pair();
    let (a, b) = (Cgroup::new("a"), Cgroup::new("b"));
    let _tcp = TcpEcho::start(&peer.ns, peer.sock(false, TCP_PORT)).unwrap();
    let _udp = UdpEcho::start(&peer.ns, peer.sock(false, UDP_ECHO_PORT));
    let _udp6 = UdpEcho::start(&peer.ns, peer.sock(true, UDP_ECHO_PORT));
    let push = run_in(&peer.ns, || TcpListener::bind(peer.sock(false, PUSH_PORT)))
        .unwrap()
        .unwrap();
    let (echo, uecho) = (peer.sock(false, TCP_PORT), peer.sock(false, UDP_ECHO_PORT));
    let uecho6 = peer.sock(true, UDP_ECHO_PORT);
    // Before any rule both talk: what fails later fails because of netfault.
    for cg in [&a, &b] {
        assert_eq!(
            once(&h.ns, cg, "tcp", echo, "3"),
            "ok",
            "before: {}",
            cg.arg()
        );
        assert_eq!(once(&h.ns, cg, "udp", uecho, "10"), "10", "before");
    }
    attach(&mut lab, &nf, &h);

    // Connections open before the partition, to see the peer's packets to them at ingress.
    let held_a = Held::connect(&h.ns, &a, peer.sock(false, PUSH_PORT), "1.5");
    let (mut to_a, _) = push.accept().unwrap();
    let held_b = Held::connect(&h.ns, &b, peer.sock(false, PUSH_PORT), "3");
    let (mut to_b, _) = push.accept().unwrap();

    run(
        &nf,
        &h,
        &[
            "partition",
            &h.set(),
            &peer.set(),
            "--cgroup",
            a.arg(),
            "--name",
            "cg",
        ],
    );
    // A's new connection: its SYN dropped at egress; B's goes through.
    assert_eq!(once(&h.ns, &a, "tcp", echo, "1.5"), "timeout");
    assert_eq!(once(&h.ns, &b, "tcp", echo, "3"), "ok");
    assert_eq!(once(&h.ns, &a, "udp", uecho, "10"), "0");
    assert_eq!(once(&h.ns, &b, "udp", uecho, "10"), "10");
    // Both services send a byte on their established connections (A's is dropped at egress,
    // and its flow learned there); then the peer writes to both: A's socket gets nothing
    // (dropped at its host's ingress), B's gets it all.
    let (mut held_a, mut held_b) = (held_a, held_b);
    held_a.send();
    held_b.send();
    to_a.write_all(&[7; 100]).unwrap();
    to_b.write_all(&[7; 100]).unwrap();
    assert_eq!(held_a.read(), "timeout");
    assert_eq!(held_b.read(), "got 100");
    let c = counters(&nf, &h, "cg");
    assert!(c.matched > 0 && c.dropped == c.matched, "{c:?}");
    run(&nf, &h, &["heal", "cg"]);
    drop((to_a, to_b));

    // With --reject, A's connect is refused at once (a RST handed back to its stack).
    run(
        &nf,
        &h,
        &[
            "partition",
            &h.set(),
            &peer.set(),
            "--cgroup",
            a.arg(),
            "--name",
            "cgr",
            "--reject",
            "tcp-reset",
        ],
    );
    let t = Instant::now();
    assert_eq!(once(&h.ns, &a, "tcp", echo, "3"), "refused");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(once(&h.ns, &b, "tcp", echo, "3"), "ok");
    run(&nf, &h, &["heal", "cgr"]);

    // Ingress only: the echoes to A's sockets are dropped, its datagrams still leave; B's
    // are untouched. Exact counts: the rule matches A's 20 echoes in each family and nothing
    // else (no address in the rule: the cgroup is its only match).
    run(
        &nf,
        &h,
        &[
            "rule",
            "add",
            "cg-in",
            "--cgroup",
            a.arg(),
            "--dir",
            "ingress",
            "--drop",
            "1",
        ],
    );
    assert_eq!(once(&h.ns, &a, "udp", uecho, "20"), "0");
    assert_eq!(once(&h.ns, &a, "udp", uecho6, "20"), "0");
    assert_eq!(once(&h.ns, &b, "udp", uecho, "20"), "20");
    assert_eq!(once(&h.ns, &b, "udp", uecho6, "20"), "20");
    let c = counters(&nf, &h, "cg-in");
    assert_eq!((c.matched, c.dropped, c.passed), (40, 40, 0), "{c:?}");
    assert_eq!(once(&h.ns, &b, "tcp", echo, "3"), "ok");
    run(&nf, &h, &["rule", "del", "cg-in"]);
    assert_eq!(once(&h.ns, &a, "tcp", echo, "3"), "ok", "after the rule");

    // Nothing stays: no rule, and the cgroups are empty and removable.
    let left = nf.rule_names(&h.ns).unwrap();
    assert!(left.is_empty(), "{left:?}");
    for cg in [&a, &b] {
        assert!(cg.is_empty(), "{} still has processes", cg.arg());
    }
    let paths = [a.path.clone(), b.path.clone()];
    drop((a, b));
    for p in paths {
        assert!(!p.exists(), "{} was not removed", p.display());
    }
}

/// A socket that only receives, and a listener, see nothing of the cut peer from the first
/// packet on: tc ingress cannot tell their flows apart before they send, so the hook at
/// socket delivery (linked to the cgroup while an entry needs it) drops those first packets,
/// and the entry's counters count them with tc's. B, beside A on the same address and
/// interface, gets every packet. On main the receive-only socket got all 20 datagrams.
#[test]
fn a_cgroup_that_only_receives_or_listens_is_cut_from_the_first_packet() {
    const LISTEN_PORT: u16 = 5110;
    const RECV_PORT: u16 = 5111;
    let (mut lab, nf, [h, peer]) = pair();
    let (a, b) = (Cgroup::new("a"), Cgroup::new("b"));
    attach(&mut lab, &nf, &h);
    // Before any rule: A receives and accepts (what fails later fails because of netfault),
    // and no netfault program is on the cgroup.
    let r = Server::start(&h.ns, &a, "recv", h.sock(false, RECV_PORT), "1");
    send_datagrams(&peer.ns, h.sock(false, RECV_PORT), 20);
    assert_eq!(r.outcome(), "20", "before");
    assert!(!cgroup_programs(&a).contains("nf_cg_ingress"));

    run(
        &nf,
        &h,
        &[
            "partition",
            &h.set(),
            &peer.set(),
            "--cgroup",
            a.arg(),
            "--name",
            "cg",
        ],
    );
    assert!(
        cgroup_programs(&a).contains("nf_cg_ingress"),
        "{}",
        cgroup_programs(&a)
    );
    assert!(!cgroup_programs(&b).contains("nf_cg_ingress"));
    let st: serde_json::Value = serde_json::from_str(&run(&nf, &h, &["status", "--json"])).unwrap();
    let hooks = st["cgroup_hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 1, "{st}");
    assert_eq!(hooks[0]["path"].as_str(), Some(a.arg()), "{st}");
    for v6 in [false, true] {
        let ra = Server::start(&h.ns, &a, "recv", h.sock(v6, RECV_PORT), "1");
        let rb = Server::start(&h.ns, &b, "recv", h.sock(v6, RECV_PORT + 1), "1");
        send_datagrams(&peer.ns, h.sock(v6, RECV_PORT), 20);
        send_datagrams(&peer.ns, h.sock(v6, RECV_PORT + 1), 20);
        assert_eq!(ra.outcome(), "0", "A's receive-only socket, v6 {v6}");
        assert_eq!(rb.outcome(), "20", "B's receive-only socket, v6 {v6}");
        let la = Server::start(&h.ns, &a, "listen", h.sock(v6, LISTEN_PORT), "3");
        let lb = Server::start(&h.ns, &b, "listen", h.sock(v6, LISTEN_PORT + 1), "3");
        assert!(
            !connects(
                &peer.ns,
                h.sock(v6, LISTEN_PORT),
                Duration::from_millis(1500)
            ),
            "a connection to A's listener opened, v6 {v6}"
        );
        assert!(
            connects(
                &peer.ns,
                h.sock(v6, LISTEN_PORT + 1),
                Duration::from_secs(3)
            ),
            "B's listener, v6 {v6}"
        );
        assert_eq!(la.outcome(), "timeout", "A's listener, v6 {v6}");
        assert_eq!(lb.outcome(), "accepted", "B's listener, v6 {v6}");
    }
    let c = counters(&nf, &h, "cg");
    assert!(c.matched >= 40 && c.dropped == c.matched, "{c:?}");
    run(&nf, &h, &["heal", "cg"]);
    assert!(
        !cgroup_programs(&a).contains("nf_cg_ingress"),
        "unlinked with the last entry"
    );
    let st: serde_json::Value = serde_json::from_str(&run(&nf, &h, &["status", "--json"])).unwrap();
    assert_eq!(st["cgroup_hooks"], serde_json::json!([]), "{st}");

    // Exact counts across both hooks: 20 datagrams to A's socket, the first dropped at the
    // socket (its flow learned there), the 19 others at tc ingress.
    run(
        &nf,
        &h,
        &[
            "rule",
            "add",
            "cg-in",
            "--cgroup",
            a.arg(),
            "--dir",
            "ingress",
            "--drop",
            "1",
        ],
    );
    let ra = Server::start(&h.ns, &a, "recv", h.sock(false, RECV_PORT + 2), "1");
    let rb = Server::start(&h.ns, &b, "recv", h.sock(false, RECV_PORT + 3), "1");
    send_datagrams(&peer.ns, h.sock(false, RECV_PORT + 2), 20);
    send_datagrams(&peer.ns, h.sock(false, RECV_PORT + 3), 20);
    assert_eq!(ra.outcome(), "0");
    assert_eq!(rb.outcome(), "20");
    let c = counters(&nf, &h, "cg-in");
    assert_eq!((c.matched, c.dropped, c.passed), (20, 20, 0), "{c:?}");
    run(&nf, &h, &["rule", "del", "cg-in"]);

    // A rejecting entry: the first SYN to A's listener is dropped at the socket (no reply can
    // be built there), its retransmission a second later is refused at tc ingress.
    run(
        &nf,
        &h,
        &[
            "rule",
            "add",
            "cg-rej",
            "--cgroup",
            a.arg(),
            "--dir",
            "ingress",
            "--reject",
            "tcp-reset",
        ],
    );
    let la = Server::start(&h.ns, &a, "listen", h.sock(false, LISTEN_PORT + 2), "4");
    let t = Instant::now();
    let refused = run_in(&peer.ns, || {
        std::net::TcpStream::connect_timeout(
            &h.sock(false, LISTEN_PORT + 2),
            Duration::from_secs(3),
        )
        .map_err(|e| e.kind())
    })
    .unwrap();
    let took = t.elapsed();
    assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused));
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "refused after {took:?}: the first SYN should go unanswered, the second be refused"
    );
    assert_eq!(la.outcome(), "timeout");
    // Detach with the entry live: the hook leaves the cgroup with everything else.
    nf.run(&h.ns, &["detach"]).unwrap();
    assert!(
        !cgroup_programs(&a).contains("nf_cg_ingress"),
        "left after detach"
    );
    drop(lab);
    for cg in [&a, &b] {
        assert!(cg.is_empty(), "{} still has processes", cg.arg());
    }
}

/// `netfault run` holds the socket-delivery hook like its other links: on while it runs (a
/// socket that only receives gets nothing), gone with the process however it ends (kill -9).
#[test]
fn run_holds_the_cgroup_hook_for_its_life_only() {
    const RECV_PORT: u16 = 5120;
    let (_lab, nf, [h, peer]) = pair();
    let a = Cgroup::new("a");
    let file = std::env::temp_dir().join(format!("nf-cgroup-run-{}.toml", std::process::id()));
    std::fs::write(
        &file,
        format!(
            "[[rule]]\nname = \"in\"\ncgroup = \"{}\"\ndir = \"ingress\"\ndrop = 1\n",
            a.arg()
        ),
    )
    .unwrap();
    let f = file.to_string_lossy().into_owned();
    let mut child = nf
        .spawn(
            &h.ns,
            &["run", &f, "--iface", &h.iface, "--duration", "60s"],
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cgroup_programs(&a).contains("nf_cg_ingress") {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_file(&file);
            panic!("run never linked the hook to {}", a.arg());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&file);
    // The rules are published right after the link: give that a moment.
    std::thread::sleep(Duration::from_millis(500));
    let r = Server::start(&h.ns, &a, "recv", h.sock(false, RECV_PORT), "1");
    send_datagrams(&peer.ns, h.sock(false, RECV_PORT), 20);
    let got = r.outcome();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(got, "0", "while run held the rule");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cgroup_programs(&a).contains("nf_cg_ingress") {
        assert!(Instant::now() < deadline, "the hook outlived run (kill -9)");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = Server::start(&h.ns, &a, "recv", h.sock(false, RECV_PORT), "1");
    send_datagrams(&peer.ns, h.sock(false, RECV_PORT), 20);
    assert_eq!(r.outcome(), "20", "after run");
}

#[test]
fn bad_cgroups_are_refused_by_flag_and_key_path() {
    let (mut lab, nf, [h, _]) = pair();
    attach(&mut lab, &nf, &h);
    let root = netfault::spec::cgroup::cgroup2_root().unwrap();
    let root = root.to_str().unwrap();
    for (path, why) in [
        ("/proc", "not under the cgroup2 mount"),
        (root, "root cgroup"),
        ("cgroup.procs", "not a cgroup v2 directory"),
        ("nfcg-no-such-cgroup", "No such file"),
    ] {
        let out = nf
            .output(
                &h.ns,
                &["rule", "add", "r", "--cgroup", path, "--drop", "1"],
            )
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{path}: {err}");
        assert!(
            err.contains("--cgroup") && err.contains(why),
            "{path}: {err}"
        );
        let out = nf
            .output(
                &h.ns,
                &["partition", "192.0.2.1", "192.0.2.2", "--cgroup", path],
            )
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "partition {path}");
    }
    // Delay at ingress is not a cgroup's (egress only).
    let cg = Cgroup::new("bad");
    let out = nf
        .output(
            &h.ns,
            &["rule", "add", "r", "--cgroup", cg.arg(), "--delay", "10ms"],
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--cgroup") && err.contains("egress"), "{err}");
    // What a cgroup entry cannot do at ingress to a flow's first packet is said when such an
    // entry is given (and only then): drops and partitions do it all.
    for (args, noted) in [
        (
            &["rule", "add", "n-out", "--dir", "egress", "--drop", "1"][..],
            None,
        ),
        (
            &["rule", "add", "n-in", "--dir", "ingress", "--drop", "1"][..],
            None,
        ),
        (
            &["partition", "192.0.2.1", "192.0.2.2", "--name", "n-cut"][..],
            None,
        ),
        (
            &[
                "rule",
                "add",
                "n-rej",
                "--dir",
                "ingress",
                "--drop",
                "1",
                "--reject",
                "icmp-port",
            ][..],
            Some("reject replies start"),
        ),
        (
            &[
                "rule",
                "add",
                "n-dup",
                "--duplicate",
                "0.5",
                "--corrupt",
                "0.1",
            ][..],
            Some("duplicates and corruption start"),
        ),
    ] {
        let mut a = args.to_vec();
        a.extend(["--cgroup", cg.arg()]);
        let out = nf.output(&h.ns, &a).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{a:?}: {err}");
        match noted {
            Some(what) => assert!(
                err.contains("can only be dropped") && err.contains(what),
                "{a:?}: {err}"
            ),
            None => assert!(!err.contains("can only be dropped"), "{a:?}: {err}"),
        }
    }
    run(
        &nf,
        &h,
        &["rule", "del", "n-out", "n-in", "n-cut", "n-rej", "n-dup"],
    );
    // A rule-set file names the key path.
    let f = temp_file(
        "toml",
        &format!(
            "[[rule]]\nname = \"ok\"\ncgroup = \"{}\"\ndrop = 1\n[[rule]]\nname = \"bad\"\ncgroup = \"{root}\"\ndrop = 1\n",
            cg.arg()
        ),
    );
    let out = nf.output(&h.ns, &["apply", f.arg()]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rule[1].cgroup"), "{err}");
    let f = temp_file(
        "toml",
        "[[partition]]\nname = \"p\"\na = [\"192.0.2.1\"]\nb = [\"192.0.2.2\"]\ncgroup = \"/proc\"\n",
    );
    let out = nf.output(&h.ns, &["apply", f.arg()]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("partition[0].cgroup"), "{err}");
    // Nothing was added.
    assert!(nf.rule_names(&h.ns).unwrap().is_empty());
}
